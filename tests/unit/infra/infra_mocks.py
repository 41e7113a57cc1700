"""Pulumi mocks and helpers for the infra unit tests (no CLI, no AWS).

Style of pulumi/examples `testing-unit-py`: mocks are set BEFORE the program is imported;
each test is a `@pulumi.runtime.test` function that builds the stack and returns an Output
whose apply asserts. Two guards keep an assertion from silently never running:
- `after_registration()` waits on the URN of every resource in the stack before checking,
  so the mock has recorded every resource when the check looks at them;
- an autouse fixture fails the test if a check it scheduled never ran, or if a resource was
  registered after the check looked.
"""

from __future__ import annotations

import itertools
import re
import runpy
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `import infra` without installing the project

REGION = "eu-west-1"
ZONES = [f"{REGION}a", f"{REGION}b", f"{REGION}c"]
EIP_PUBLIC_IP = "203.0.113.10"
EIP_PUBLIC_DNS = f"ec2-203-0-113-10.{REGION}.compute.amazonaws.com"
INSTANCE_PRIVATE_IP = "10.0.0.10"
DB_ADDRESS = f"mlflow-aws-test-db.abcdefghijkl.{REGION}.rds.amazonaws.com"
DB_IDENTIFIER = "mlflow-aws-test-db-3f2a1b0"  # what Pulumi's auto-naming gives the instance
DB_PASSWORD = "Abc123def456ghi789jkl012mno345pq"
BUCKET_NAME = "mlflow-aws-test-20260101000000000000000001"
GENERATED_PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nMOCK\n-----END OPENSSH PRIVATE KEY-----\n"
)
GENERATED_PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMOCKMOCKMOCKMOCKMOCKMOCKMOCKMOCKMOCKMOCKMOCK"
)
AMI_ID = "ami-0123456789abcdef0"
ACCOUNT_ID = "123456789012"
ALB_DNS = f"mlflow-aws-test-alb-123456789.{REGION}.elb.amazonaws.com"
ALB_ZONE_ID = "Z32O12XQLNTSW2"
VALIDATION_TOKEN = "a79865eb4cd1a6ab990a45779b4e0b96"
SELF_SIGNED_PEM = "-----BEGIN CERTIFICATE-----\nMOCK-LB\n-----END CERTIFICATE-----\n"
# What CloudWatch's LoadBalancer and TargetGroup dimensions take: the ARNs' last parts.
_ALB_SUFFIX = "app/{}/50dc6c495c0c9188"
_TG_SUFFIX = "targetgroup/{}/73e2d6bc24d8a067"
_HOST = re.compile(r"^mlflow-test-(\d+)")


def host_addresses(index: int) -> dict[str, str]:
    """The mock's addresses of host `index` (1-based); host 1 has the constants above."""
    last = 9 + index
    return {
        "public_ip": f"203.0.113.{last}",
        "private_ip": f"10.0.0.{last}",
        "public_dns": f"ec2-203-0-113-{last}.{REGION}.compute.amazonaws.com",
    }


@dataclass(frozen=True)
class Registered:
    """One resource as the program declared it (inputs use the wire names: camelCase)."""

    type: str
    name: str
    inputs: dict[str, Any]
    id: str
    state: dict[str, Any]
    options: dict[str, list[str]]  # resource options the mock monitor saw (ignoreChanges, ...)


@dataclass(frozen=True)
class Invoked:
    token: str
    args: dict[str, Any]


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers with fixed, known values and records every resource and function call."""

    offered_zones: list[str] = ZONES  # zones offering the instance type (a test may narrow it)

    def __init__(self) -> None:
        self.resources: list[Registered] = []
        self.calls: list[Invoked] = []
        self.options: dict[tuple[str, str], dict[str, list[str]]] = {}

    def reset(self) -> None:
        self.resources.clear()
        self.calls.clear()
        self.options.clear()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        resource_id = f"{args.name}-id"
        state = {**args.inputs, **_computed(args.typ, args.name, args.inputs)}
        options = self.options.get((args.typ, args.name), {})
        self.resources.append(
            Registered(args.typ, args.name, dict(args.inputs), resource_id, state, options)
        )
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        self.calls.append(Invoked(args.token, dict(args.args)))
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": ZONES, "zoneIds": ["euw1-az1", "euw1-az2", "euw1-az3"]}, []
        if args.token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            zones = self.offered_zones
            return {"locations": zones, "locationTypes": ["availability-zone"] * len(zones)}, []
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/op"}, []
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": AMI_ID, "imageId": AMI_ID, "architecture": "x86_64"}, []
        return {}, []


def _computed(typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Provider-computed outputs the program reads, with known values."""
    if typ == "aws:s3/bucket:Bucket":
        return {"bucket": BUCKET_NAME, "arn": f"arn:aws:s3:::{BUCKET_NAME}"}
    if typ == "aws:ec2/instance:Instance":
        host = host_addresses(_host_index(name))
        return {"privateIp": host["private_ip"], "arn": f"arn:aws:ec2:{REGION}:1:instance/{name}"}
    if typ == "aws:ec2/eip:Eip":
        host = host_addresses(_host_index(name))
        return {"publicIp": host["public_ip"], "publicDns": host["public_dns"]}
    if typ == "aws:lb/loadBalancer:LoadBalancer":
        return {
            "dnsName": ALB_DNS,
            "arn": f"arn:aws:elasticloadbalancing:{REGION}:1:loadbalancer/"
            + _ALB_SUFFIX.format(name),
            "arnSuffix": _ALB_SUFFIX.format(name),
            "zoneId": ALB_ZONE_ID,
        }
    if typ == "aws:lb/targetGroup:TargetGroup":
        return {
            "arn": f"arn:aws:elasticloadbalancing:{REGION}:1:{_TG_SUFFIX.format(name)}",
            "arnSuffix": _TG_SUFFIX.format(name),
        }
    if typ == "aws:lb/listener:Listener":
        return {"arn": f"arn:aws:elasticloadbalancing:{REGION}:1:{name}"}
    if typ == "aws:kms/key:Key":
        return {"arn": f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/{name}", "keyId": f"{name}-key-id"}
    if typ == "aws:sns/topic:Topic":
        return {"arn": f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:{name}"}
    if typ == "aws:acm/certificate:Certificate":
        computed: dict[str, Any] = {"arn": f"arn:aws:acm:{REGION}:1:certificate/{name}"}
        if inputs.get("validationMethod") == "DNS":
            computed["domainValidationOptions"] = [{
                "domainName": inputs["domainName"],
                "resourceRecordName": f"_{VALIDATION_TOKEN}.{inputs['domainName']}.",
                "resourceRecordType": "CNAME",
                "resourceRecordValue": f"_{VALIDATION_TOKEN}.acm-validations.aws.",
            }]  # fmt: skip
        return computed
    if typ == "aws:acm/certificateValidation:CertificateValidation":
        return {"certificateArn": inputs["certificateArn"]}
    if typ == "aws:route53/record:Record":
        return {"fqdn": str(inputs["name"]).rstrip(".")}
    if typ == "tls:index/selfSignedCert:SelfSignedCert":
        return {"certPem": SELF_SIGNED_PEM}
    if typ == "aws:rds/instance:Instance":
        return {
            "address": DB_ADDRESS,
            "endpoint": f"{DB_ADDRESS}:5432",
            "identifier": DB_IDENTIFIER,
        }
    if typ == "random:index/randomPassword:RandomPassword":
        return {"result": DB_PASSWORD}
    if typ == "random:index/randomId:RandomId":
        return {"hex": "a1b2c3d4"}
    if typ == "tls:index/privateKey:PrivateKey":
        return {
            "privateKeyOpenssh": GENERATED_PRIVATE_KEY,
            "publicKeyOpenssh": GENERATED_PUBLIC_KEY,
            "privateKeyPem": "-----BEGIN PRIVATE KEY-----\nMOCK\n-----END PRIVATE KEY-----\n",
        }
    if typ == "aws:iam/role:Role":
        return {"arn": f"arn:aws:iam::1:role/{name}", "name": name}
    if typ == "aws:iam/instanceProfile:InstanceProfile":
        return {"arn": f"arn:aws:iam::1:instance-profile/{name}", "name": name}
    if typ == "aws:ec2/keyPair:KeyPair":
        return {"keyName": name}
    if typ == "aws:rds/subnetGroup:SubnetGroup":
        return {"name": name}
    return {}


def _host_index(name: str) -> int:
    match = _HOST.match(name)
    assert match, f"unexpected host resource name {name}"
    return int(match[1])


class OptionsRecordingMonitor(MockMonitor):
    """The stock mock monitor, also keeping the resource options the mocks are not given."""

    def RegisterResource(self, request: Any) -> Any:
        MOCKS.options[(request.type, request.name)] = {
            "ignoreChanges": list(request.ignoreChanges),
            "dependencies": list(request.dependencies),
        }
        return super().RegisterResource(request)


MOCKS = RecordingMocks()
pulumi.runtime.set_mocks(
    MOCKS,
    project="mlflow-aws",
    stack="test",
    preview=False,
    monitor=OptionsRecordingMonitor(MOCKS),
)

# Imported only now: the program must see the mocks.
from infra.settings import StackSettings  # noqa: E402
from infra.stack import MlflowStack, build_stack  # noqa: E402

OPERATOR_CIDR = "198.51.100.0/24"


def make_settings(**overrides: Any) -> StackSettings:
    """Valid settings for tests: the defaults plus the required keys, then `overrides`."""
    values: dict[str, Any] = {"aws:region": REGION, "sshAllowedCidrs": [OPERATOR_CIDR]}
    values.update(overrides)
    return StackSettings.from_mapping(values)


def fresh_stack(**overrides: Any) -> MlflowStack:
    """Build the whole program with `make_settings(**overrides)`, recording from scratch."""
    MOCKS.reset()
    return build_stack(make_settings(**overrides))


def run_program() -> None:
    """Run `__main__.py` as Pulumi does (with the config a test set through `stack_config`)."""
    runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")


class Resources:
    """The resources and calls recorded for one build, with small query helpers."""

    def __init__(self, resources: list[Registered], calls: list[Invoked]) -> None:
        self.all = resources
        self.calls = calls

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.all if r.type == typ]

    def one(self, typ: str) -> Registered:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, found {len(found)}"
        return found[0]

    def by_id(self, resource_id: str) -> Registered:
        (found,) = [r for r in self.all if r.id == resource_id]
        return found

    def calls_to(self, token: str) -> list[Invoked]:
        return [c for c in self.calls if c.token == token]


pending_checks: list[str] = []
checked_counts: list[int] = []
_check_ids = itertools.count(1)


def _walk(resource: pulumi.Resource) -> Iterator[pulumi.Resource]:
    yield resource
    for child in resource._childResources:  # the SDK's own parent -> children record
        yield from _walk(child)


def after_registration(stack: MlflowStack, check: Callable[[Resources], None]) -> pulumi.Output:
    """An Output that runs `check` once every resource of `stack` is registered with the mocks."""
    resources = [r for c in stack.components for r in _walk(c)]
    token = f"{check.__name__}#{next(_check_ids)}"
    pending_checks.append(token)

    def run(_: list[Any]) -> None:
        pending_checks.remove(token)
        snapshot = Resources(list(MOCKS.resources), list(MOCKS.calls))
        checked_counts.append(len(snapshot.all))
        check(snapshot)

    return pulumi.Output.all(*[r.urn for r in resources]).apply(run)


# --- security group rules, whatever form they are declared in -------------------------------

ANYWHERE = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class Rule:
    """One security group rule, normalised from any of the provider's forms."""

    group_id: str
    direction: str  # ingress | egress
    protocol: str  # tcp, udp, icmp or -1 (all)
    from_port: int
    to_port: int
    cidr: str | None = None
    source_group: str | None = None

    def covers(self, port: int) -> bool:
        return self.protocol in ("-1", "all") or self.from_port <= port <= self.to_port

    @property
    def from_anywhere(self) -> bool:
        return self.cidr in ANYWHERE


def rules(res: Resources, direction: str) -> list[Rule]:
    """Every rule in every form: vpc.SecurityGroup*Rule, ec2.SecurityGroupRule, inline."""
    found: list[Rule] = []
    kind = "Ingress" if direction == "ingress" else "Egress"
    for r in res.of_type(f"aws:vpc/securityGroup{kind}Rule:SecurityGroup{kind}Rule"):
        i = r.inputs
        cidrs = [c for c in (i.get("cidrIpv4"), i.get("cidrIpv6")) if c] or [None]
        for cidr in cidrs:
            found.append(
                Rule(
                    i["securityGroupId"],
                    direction,
                    str(i["ipProtocol"]),
                    int(i.get("fromPort", 0)),
                    int(i.get("toPort", 65535)),
                    cidr,
                    i.get("referencedSecurityGroupId"),
                )
            )
    for r in res.of_type("aws:ec2/securityGroupRule:SecurityGroupRule"):
        if r.inputs["type"] == direction:
            found.extend(_rules_of_block(r.inputs["securityGroupId"], direction, r.inputs))
    for typ in (
        "aws:ec2/securityGroup:SecurityGroup",
        "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup",
    ):
        for r in res.of_type(typ):
            for block in r.inputs.get(direction, []):
                found.extend(_rules_of_block(r.id, direction, block))
    return found


def _rules_of_block(group_id: str, direction: str, block: dict[str, Any]) -> list[Rule]:
    sources: list[tuple[str | None, str | None]] = [
        (c, None) for c in [*block.get("cidrBlocks", []), *block.get("ipv6CidrBlocks", [])]
    ]
    sources += [(None, g) for g in block.get("securityGroups", [])]
    if block.get("sourceSecurityGroupId"):
        sources.append((None, block["sourceSecurityGroupId"]))
    if block.get("self"):
        sources.append((None, group_id))
    return [
        Rule(
            group_id,
            direction,
            str(block["protocol"]),
            int(block["fromPort"]),
            int(block["toPort"]),
            cidr,
            group,
        )
        for cidr, group in sources or [(None, None)]
    ]
