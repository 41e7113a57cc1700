"""Scaling out: `instances` 2..10 puts the servers behind an Application Load Balancer.

instances 1 is exactly the one-host stack; instances 3 spreads three servers over two zones
behind an internet-facing ALB that alone takes HTTPS from the world (security-group chaining).
"""

from __future__ import annotations

from collections import Counter

import pulumi
import pytest
from infra_mocks import (
    ALB_DNS,
    EIP_PUBLIC_IP,
    GENERATED_PUBLIC_KEY,
    MOCKS,
    OPERATOR_CIDR,
    REGION,
    SELF_SIGNED_PEM,
    ZONES,
    Registered,
    Resources,
    after_registration,
    fresh_stack,
    host_addresses,
    rules,
    run_program,
)
from pulumi.runtime import rpc

from infra.loadbalancer import common_name
from infra.settings import SettingsError

INSTANCE = "aws:ec2/instance:Instance"
SUBNET = "aws:ec2/subnet:Subnet"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
ALB = "aws:lb/loadBalancer:LoadBalancer"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
LISTENER = "aws:lb/listener:Listener"
ATTACHMENT = "aws:lb/targetGroupAttachment:TargetGroupAttachment"
ACM_CERT = "aws:acm/certificate:Certificate"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"
LOAD_BALANCER_TYPES = {ALB, TARGET_GROUP, LISTENER, ATTACHMENT, ACM_CERT, SELF_SIGNED}
CONTRACT_KEYS = {
    "hosts",
    "ssh_user",
    "db_dsn",
    "artifacts_destination",
    "region",
    "url",
    "alarm_topic_arn",
    "tls",
}
CERT_ARN = f"arn:aws:acm:{REGION}:123456789012:certificate/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

# Every resource type of the one-host stack and how many of each (57 resources): the stack
# before `instances` existed, plus its alarms. Scaling must not add to, or take from, the
# default deployment.
ONE_HOST_STACK = {
    "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": 1,
    "aws:ec2/eip:Eip": 1,
    "aws:ec2/instance:Instance": 1,
    "aws:ec2/internetGateway:InternetGateway": 1,
    "aws:ec2/keyPair:KeyPair": 1,
    "aws:ec2/route:Route": 1,
    "aws:ec2/routeTable:RouteTable": 2,
    "aws:ec2/routeTableAssociation:RouteTableAssociation": 4,
    "aws:ec2/securityGroup:SecurityGroup": 2,
    "aws:ec2/subnet:Subnet": 4,
    "aws:ec2/vpc:Vpc": 1,
    "aws:iam/instanceProfile:InstanceProfile": 1,
    "aws:iam/role:Role": 1,
    "aws:iam/rolePolicy:RolePolicy": 1,
    "aws:rds/instance:Instance": 1,
    "aws:rds/subnetGroup:SubnetGroup": 1,
    "aws:s3/bucket:Bucket": 1,
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": 1,
    "aws:s3/bucketOwnershipControls:BucketOwnershipControls": 1,
    "aws:s3/bucketPolicy:BucketPolicy": 1,
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": 1,
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": 1,
    "aws:s3/bucketVersioning:BucketVersioning": 1,
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": 4,
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": 4,
    "mlflow-aws:infra:ArtifactStore": 1,
    # Alarms: topic, its key, alias and policy; two host checks, free storage, CPU credits.
    "aws:cloudwatch/metricAlarm:MetricAlarm": 4,
    "aws:kms/alias:Alias": 1,
    "aws:kms/key:Key": 1,
    "aws:sns/topic:Topic": 1,
    "aws:sns/topicPolicy:TopicPolicy": 1,
    "mlflow-aws:infra:Alarms": 1,
    "mlflow-aws:infra:Database": 1,
    "mlflow-aws:infra:Network": 1,
    "mlflow-aws:infra:SecurityGroups": 1,
    "mlflow-aws:infra:Server": 1,
    "mlflow-aws:infra:ServerAccess": 1,
    "random:index/randomId:RandomId": 1,
    "random:index/randomPassword:RandomPassword": 1,
    "tls:index/privateKey:PrivateKey": 2,  # the login key and the host's SSH host key
}


def _group_id(res: Resources, name_suffix: str) -> str:
    (group,) = [r for r in res.of_type(SECURITY_GROUP) if r.name.endswith(name_suffix)]
    return group.id


def _listener(res: Resources, port: int) -> Registered:
    (found,) = [r for r in res.of_type(LISTENER) if r.inputs["port"] == port]
    return found


def _secret(value: object) -> object:
    """The value inside a secret input as the mock monitor sees it; fails if it is not secret."""
    assert isinstance(value, dict), f"not a secret: {value!r}"
    assert value.get(rpc._special_sig_key) == rpc._special_secret_sig, "not a secret"
    return value["value"]


def _public_subnets(res: Resources) -> list[Registered]:
    return [s for s in res.of_type(SUBNET) if "-public-" in s.name]


# --- instances 1: today's stack ----------------------------------------------------------------


@pytest.mark.parametrize("instances", [None, 1, "1"])
@pulumi.runtime.test
def test_one_instance_is_the_one_host_stack_without_load_balancer(instances):
    stack = fresh_stack(instances=instances)

    def check(res: Resources) -> None:
        assert dict(Counter(r.type for r in res.all)) == ONE_HOST_STACK
        assert not [r for r in res.all if r.type in LOAD_BALANCER_TYPES]
        assert stack.load_balancer is None
        world = {(r.group_id, r.from_port) for r in rules(res, "ingress") if r.from_anywhere}
        web = _group_id(res, "-web")
        assert world == {(web, 443), (web, 80)}, "one host takes HTTPS and HTTP itself"

    def check_url(url: str) -> None:
        assert url == f"https://{EIP_PUBLIC_IP}"  # tlsMode acme: the certificate's address

    assert set(stack.outputs) == CONTRACT_KEYS | {"ssh_private_key"}
    return pulumi.Output.all(
        after_registration(stack, check), stack.outputs["url"].apply(check_url)
    )


# --- instances 3: hosts ------------------------------------------------------------------------


@pulumi.runtime.test
def test_hosts_round_robin_over_two_zones_public_subnets():
    def check(res: Resources) -> None:
        instances = sorted(res.of_type(INSTANCE), key=lambda r: r.name)
        assert [i.name for i in instances] == ["mlflow-test-1", "mlflow-test-2", "mlflow-test-3"]
        subnets = [res.by_id(i.inputs["subnetId"]) for i in instances]
        assert all("-public-" in s.name for s in subnets)
        zones = [s.inputs["availabilityZone"] for s in subnets]
        assert zones == [ZONES[0], ZONES[1], ZONES[0]], "round-robin, host 1 in the first zone"
        assert len({s.id for s in subnets}) == 2

    return after_registration(fresh_stack(instances=3), check)


@pulumi.runtime.test
def test_every_host_has_the_one_host_launch_settings():
    def check(res: Resources) -> None:
        instances = res.of_type(INSTANCE)
        assert len(instances) == 3
        web = _group_id(res, "-web")
        (profile,) = res.of_type("aws:iam/instanceProfile:InstanceProfile")
        (key_pair,) = res.of_type("aws:ec2/keyPair:KeyPair")
        for instance in instances:
            i = instance.inputs
            assert i["instanceType"] == "t3.large"
            assert i["metadataOptions"]["httpTokens"] == "required"
            assert i["metadataOptions"]["httpPutResponseHopLimit"] == 1
            assert i["rootBlockDevice"]["encrypted"] is True
            assert i["rootBlockDevice"]["volumeType"] == "gp3"
            assert i["vpcSecurityGroupIds"] == [web]
            assert i["iamInstanceProfile"] == profile.state["name"], "one shared role"
            assert i["keyName"] == key_pair.state["keyName"]
            assert "ami" in instance.options["ignoreChanges"]
        # One Elastic IP per host: SSH and the hosts' own outbound traffic (no NAT gateway).
        eips = res.of_type("aws:ec2/eip:Eip")
        assert sorted(e.inputs["instance"] for e in eips) == sorted(i.id for i in instances)
        assert len(res.of_type("aws:iam/role:Role")) == 1

    return after_registration(fresh_stack(instances=3, instanceType="t3.large"), check)


def test_instance_type_must_be_offered_in_both_zones(monkeypatch):
    monkeypatch.setattr(MOCKS, "offered_zones", ZONES[1:2])
    with pytest.raises(SettingsError, match=r"^instanceType 't3.medium' is offered in only one"):
        fresh_stack(instances=2)
    assert not MOCKS.resources, "nothing declared"


# --- instances 3: the load balancer ------------------------------------------------------------


@pytest.mark.parametrize("protected", [False, True])
@pulumi.runtime.test
def test_alb_is_internet_facing_in_both_public_subnets(protected):
    def check(res: Resources) -> None:
        alb = res.one(ALB).inputs
        assert alb["loadBalancerType"] == "application"
        assert alb["internal"] is False
        public = _public_subnets(res)
        assert sorted(alb["subnets"]) == sorted(s.id for s in public)
        assert len({s.inputs["availabilityZone"] for s in public}) == 2
        assert alb["securityGroups"] == [_group_id(res, "-lb")]
        assert alb["dropInvalidHeaderFields"] is True
        # Follows deletionProtection, like the database: off by default so destroy works.
        assert alb["enableDeletionProtection"] is protected

    return after_registration(fresh_stack(instances=3, deletionProtection=protected), check)


@pulumi.runtime.test
def test_https_listener_with_self_signed_certificate_imported_into_acm():
    def check(res: Resources) -> None:
        https = _listener(res, 443).inputs
        assert https["protocol"] == "HTTPS"
        assert https["sslPolicy"].startswith("ELBSecurityPolicy-TLS13-1-2-"), "TLS 1.2+ only"
        acm = res.one(ACM_CERT)
        assert https["certificateArn"] == acm.state["arn"]
        (action,) = https["defaultActions"]
        assert action["type"] == "forward"
        assert action["targetGroupArn"] == res.one(TARGET_GROUP).state["arn"]
        cert = res.one(SELF_SIGNED)
        assert cert.inputs["dnsNames"] == [ALB_DNS], "valid for the URL clients use"
        assert "server_auth" in cert.inputs["allowedUses"]
        assert cert.inputs.get("isCaCertificate") is False
        assert acm.inputs["certificateBody"] == SELF_SIGNED_PEM
        key = next(
            k
            for k in res.of_type("tls:index/privateKey:PrivateKey")
            if k.inputs["algorithm"] == "ECDSA"
        )
        assert key.inputs["ecdsaCurve"] == "P256"
        # The key reaches ACM as a secret (encrypted in the state), and it is the cert's key.
        pem = _secret(acm.inputs["privateKey"])
        assert pem == _secret(cert.inputs["privateKeyPem"]) == key.state["privateKeyPem"]

    return after_registration(fresh_stack(instances=3), check)


@pulumi.runtime.test
def test_operator_certificate_arn_is_used_and_nothing_self_signed():
    stack = fresh_stack(instances=3, certificateArn=CERT_ARN)

    def check(res: Resources) -> None:
        assert _listener(res, 443).inputs["certificateArn"] == CERT_ARN
        assert not res.of_type(ACM_CERT)
        assert not res.of_type(SELF_SIGNED)
        assert "ca_certificate" not in stack.outputs, "a CA-signed certificate needs no pinning"

    return after_registration(stack, check)


@pulumi.runtime.test
def test_http_listener_only_redirects_to_https_301():
    def check(res: Resources) -> None:
        http = _listener(res, 80).inputs
        assert http["protocol"] == "HTTP"
        assert not http.get("certificateArn")
        (action,) = http["defaultActions"]
        assert action["type"] == "redirect"
        assert action["redirect"] == {"protocol": "HTTPS", "port": "443", "statusCode": "HTTP_301"}
        assert len(res.of_type(LISTENER)) == 2

    return after_registration(fresh_stack(instances=3), check)


@pulumi.runtime.test
def test_target_group_checks_health_over_https():
    def check(res: Resources) -> None:
        tg = res.one(TARGET_GROUP).inputs
        assert (tg["protocol"], tg["port"], tg["targetType"]) == ("HTTPS", 443, "instance")
        assert tg["vpcId"] == res.one("aws:ec2/vpc:Vpc").id
        health = tg["healthCheck"]
        assert health["path"] == "/health"
        assert health["matcher"] == "200"
        assert health["protocol"] == "HTTPS"
        assert health["interval"] <= 10
        assert (health["healthyThreshold"], health["unhealthyThreshold"]) == (2, 2)
        assert tg["deregistrationDelay"] <= 30, "rolling restarts move on quickly"

    return after_registration(fresh_stack(instances=3), check)


@pulumi.runtime.test
def test_every_host_is_attached_to_the_target_group():
    def check(res: Resources) -> None:
        attachments = res.of_type(ATTACHMENT)
        tg_arn = res.one(TARGET_GROUP).state["arn"]
        assert sorted(a.inputs["targetId"] for a in attachments) == sorted(
            i.id for i in res.of_type(INSTANCE)
        )
        assert all(a.inputs["targetGroupArn"] == tg_arn for a in attachments)
        assert all(a.inputs["port"] == 443 for a in attachments)
        assert len(attachments) == 3

    return after_registration(fresh_stack(instances=3), check)


# --- instances 3: security-group chaining ------------------------------------------------------


@pulumi.runtime.test
def test_hosts_take_web_traffic_only_from_the_load_balancer_group():
    def check(res: Resources) -> None:
        web, lb = _group_id(res, "-web"), _group_id(res, "-lb")
        web_in = [r for r in rules(res, "ingress") if r.group_id == web]
        for rule in web_in:
            if rule.covers(443) or rule.covers(80):
                assert rule.cidr is None, f"web port open to a CIDR: {rule}"
                assert rule.source_group == lb, f"web port open to another group: {rule}"
        assert [(r.from_port, r.source_group) for r in web_in if r.covers(443)] == [(443, lb)]
        assert not [r for r in web_in if r.covers(80)], "the ALB redirects 80 itself"
        ssh = [r for r in web_in if r.covers(22)]
        assert [(r.cidr, r.source_group) for r in ssh] == [(OPERATOR_CIDR, None)]

    return after_registration(fresh_stack(instances=3), check)


@pulumi.runtime.test
def test_only_the_load_balancer_is_open_to_the_world():
    def check(res: Resources) -> None:
        lb = _group_id(res, "-lb")
        world = {
            (r.group_id, r.protocol, r.from_port, r.to_port)
            for r in rules(res, "ingress")
            if r.from_anywhere
        }
        assert world == {(lb, "tcp", 443, 443), (lb, "tcp", 80, 80)}

    return after_registration(fresh_stack(instances=3), check)


@pulumi.runtime.test
def test_load_balancer_reaches_only_the_hosts_https():
    def check(res: Resources) -> None:
        web, lb, db = (_group_id(res, s) for s in ("-web", "-lb", "-db"))
        lb_out = [(r.protocol, r.from_port, r.to_port, r.cidr, r.source_group)
                  for r in rules(res, "egress") if r.group_id == lb]  # fmt: skip
        assert lb_out == [("tcp", 443, 443, None, web)]
        # The database still answers the web group only, and the ALB is nowhere near it.
        db_in = [(r.from_port, r.cidr, r.source_group)
                 for r in rules(res, "ingress") if r.group_id == db]  # fmt: skip
        assert db_in == [(5432, None, web)]

    return after_registration(fresh_stack(instances=3), check)


@pulumi.runtime.test
def test_scaled_resources_are_tagged_and_named_for_the_stack():
    untaggable = {
        ATTACHMENT,
        "aws:ec2/route:Route",
        "aws:ec2/routeTableAssociation:RouteTableAssociation",
        "aws:iam/rolePolicy:RolePolicy",
    }

    def check(res: Resources) -> None:
        for r in res.all:
            assert r.name.startswith(("mlflow-aws-test-", "mlflow-test-")), r.name
            if r.type.startswith("aws:") and r.type in LOAD_BALANCER_TYPES - untaggable:
                assert r.inputs["tags"]["Stack"] == "test", r.name
        assert {r.type for r in res.all} >= LOAD_BALANCER_TYPES

    return after_registration(fresh_stack(instances=3), check)


# --- instances 3: outputs ----------------------------------------------------------------------


@pulumi.runtime.test
def test_outputs_url_is_the_load_balancer_and_hosts_lists_every_host():
    outputs = fresh_stack(instances=3).outputs
    assert set(outputs) == CONTRACT_KEYS | {"ssh_private_key", "ca_certificate", "drain_seconds"}

    def check(values: list) -> None:
        url, hosts, pem = values
        assert url == f"https://{ALB_DNS}"
        assert hosts == [
            {"name": f"mlflow-test-{i}", **host_addresses(i), "ssh_host_key": GENERATED_PUBLIC_KEY}
            for i in (1, 2, 3)
        ]
        assert pem == SELF_SIGNED_PEM

    # Two failed health checks 10 s apart and a margin: what the playbook waits around restarts.
    assert outputs["drain_seconds"] == 25
    names = ("url", "hosts", "ca_certificate")
    return pulumi.Output.all(*[outputs[n] for n in names]).apply(check)


@pulumi.runtime.test
def test_scaled_outputs_the_inventory_reads_are_plain_and_secrets_stay_secret():
    outputs = fresh_stack(instances=3).outputs

    async def check() -> None:
        for name in ("url", "hosts", "ca_certificate"):
            assert not await outputs[name].is_secret(), name
        assert await outputs["db_dsn"].is_secret()
        assert await outputs["ssh_private_key"].is_secret()

    return check()


@pytest.mark.parametrize(
    ("dns", "expected"),
    [(ALB_DNS, ALB_DNS), ("x" * 65, "mlflow")],
)
def test_certificate_common_name_fits_x509(dns, expected):
    assert common_name(dns) == expected


# --- the setting through Pulumi config ---------------------------------------------------------

CONFIG = {"aws:region": REGION, "mlflow-aws:sshAllowedCidrs": f'["{OPERATOR_CIDR}"]'}


@pytest.mark.parametrize("value", ["0", "11", "x", "-1", "2.5", ""])
def test_bad_instances_is_a_clean_error_before_any_resource(stack_config, value):
    stack_config({**CONFIG, "mlflow-aws:instances": value})
    MOCKS.reset()
    with pytest.raises(
        pulumi.RunError,
        match=r"^invalid stack configuration: instances .* a whole number from 1 to 10$",
    ):
        run_program()
    assert not MOCKS.resources, "no resource declared before the settings are valid"


def test_instances_from_pulumi_config_exports_the_load_balancer_url(stack_config, monkeypatch):
    exported: dict[str, object] = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.setdefault(name, value))
    stack_config({**CONFIG, "mlflow-aws:instances": "3"})
    MOCKS.reset()
    pulumi.runtime.test(run_program)()
    assert len([r for r in MOCKS.resources if r.type == INSTANCE]) == 3
    assert len([r for r in MOCKS.resources if r.type == ALB]) == 1
    assert set(exported) == CONTRACT_KEYS | {"ssh_private_key", "ca_certificate", "drain_seconds"}
