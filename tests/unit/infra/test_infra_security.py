"""Security groups: what is reachable from where (FSBP EC2.2, EC2.13, EC2.19)."""

from __future__ import annotations

import pulumi
from infra_mocks import OPERATOR_CIDR, Resources, after_registration, fresh_stack, rules

# FSBP EC2.19: high-risk ports that must not be open to the internet.
HIGH_RISK_PORTS = (20, 21, 22, 23, 25, 110, 135, 143, 445, 1433, 1434, 3000, 3306, 3389,
                   4333, 5000, 5432, 5500, 5601, 8080, 8088, 8888, 9200, 9300)  # fmt: skip


def _group_id(res: Resources, name_suffix: str) -> str:
    (group,) = [
        r
        for r in res.of_type("aws:ec2/securityGroup:SecurityGroup")
        if r.name.endswith(name_suffix)
    ]
    return group.id


@pulumi.runtime.test
def test_ssh_only_from_operator_cidrs_fsbp_ec2_13():
    def check(res: Resources) -> None:
        ssh = [r for r in rules(res, "ingress") if r.covers(22)]
        assert ssh, "no SSH rule at all: the operators could not configure the host"
        for rule in ssh:
            assert not rule.from_anywhere, f"SSH open to the world: {rule}"
            assert rule.cidr == OPERATOR_CIDR, f"SSH from outside the operator CIDRs: {rule}"

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_ssh_rule_per_operator_cidr():
    cidrs = ["198.51.100.7/32", "192.0.2.0/28"]

    def check(res: Resources) -> None:
        ssh = sorted(r.cidr for r in rules(res, "ingress") if r.covers(22))
        assert ssh == sorted(cidrs)

    return after_registration(fresh_stack(sshAllowedCidrs=cidrs), check)


@pulumi.runtime.test
def test_no_high_risk_port_open_to_the_world_fsbp_ec2_19():
    def check(res: Resources) -> None:
        for rule in rules(res, "ingress"):
            if rule.from_anywhere:
                opened = [p for p in HIGH_RISK_PORTS if rule.covers(p)]
                assert not opened, f"ports {opened} open to the world by {rule}"

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_only_http_and_https_open_to_the_world():
    def check(res: Resources) -> None:
        world = {
            (r.protocol, r.from_port, r.to_port) for r in rules(res, "ingress") if r.from_anywhere
        }
        assert world == {("tcp", 443, 443), ("tcp", 80, 80)}

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_mlflow_port_5000_open_nowhere():
    def check(res: Resources) -> None:
        opened = [r for r in rules(res, "ingress") if r.covers(5000)]
        assert not opened, f"port 5000 (MLflow behind nginx) reachable via {opened}"

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_database_reachable_only_from_web_group():
    def check(res: Resources) -> None:
        web, db = _group_id(res, "-web"), _group_id(res, "-db")
        db_rules = [r for r in rules(res, "ingress") if r.group_id == db]
        assert len(db_rules) == 1, db_rules
        (rule,) = db_rules
        assert (rule.protocol, rule.from_port, rule.to_port) == ("tcp", 5432, 5432)
        assert rule.source_group == web
        assert rule.cidr is None

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_nothing_else_inbound():
    def check(res: Resources) -> None:
        web, db = _group_id(res, "-web"), _group_id(res, "-db")
        found = sorted(
            (r.group_id, r.protocol, r.from_port, r.to_port, r.cidr or "", r.source_group or "")
            for r in rules(res, "ingress")
        )
        assert found == sorted(
            [
                (web, "tcp", 443, 443, "0.0.0.0/0", ""),
                (web, "tcp", 80, 80, "0.0.0.0/0", ""),
                (web, "tcp", 22, 22, OPERATOR_CIDR, ""),
                (db, "tcp", 5432, 5432, "", web),
            ]
        )

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_egress_is_limited_and_database_has_none():
    def check(res: Resources) -> None:
        web, db = _group_id(res, "-web"), _group_id(res, "-db")
        egress = rules(res, "egress")
        assert not [r for r in egress if r.group_id == db], "the database needs no outbound rule"
        assert not [r for r in egress if r.protocol == "-1"], "no all-protocol egress"
        found = sorted((r.protocol, r.from_port, r.cidr or r.source_group) for r in egress)
        assert found == sorted(
            [("tcp", 443, "0.0.0.0/0"), ("tcp", 80, "0.0.0.0/0"), ("udp", 123, "0.0.0.0/0"),
             ("tcp", 5432, db)]
        )  # fmt: skip
        assert all(r.group_id == web for r in egress)

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_default_security_group_is_emptied_fsbp_ec2_2():
    def check(res: Resources) -> None:
        default = res.one("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
        vpc = res.one("aws:ec2/vpc:Vpc")
        assert default.inputs["vpcId"] == vpc.id
        assert default.inputs.get("ingress", []) == []
        assert default.inputs.get("egress", []) == []

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_server_uses_only_the_web_group():
    def check(res: Resources) -> None:
        instance = res.one("aws:ec2/instance:Instance")
        assert instance.inputs["vpcSecurityGroupIds"] == [_group_id(res, "-web")]
        rds = res.one("aws:rds/instance:Instance")
        assert rds.inputs["vpcSecurityGroupIds"] == [_group_id(res, "-db")]

    return after_registration(fresh_stack(), check)
