"""Stack settings: read from Pulumi config, validated before any resource is declared.

`StackSettings.from_mapping()` takes a plain mapping keyed by config name (`sshAllowedCidrs`,
`aws:region`, ...), so tests and the preflight check use the same validation as `pulumi up`.
Every error is a `SettingsError` whose message names the key and what is allowed.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PROJECT = "mlflow-aws"

# Defaults of the optional settings. Pulumi.yaml declares the same defaults (a unit test
# keeps the two equal); they are repeated here so the program also works from a mapping.
DEFAULTS: dict[str, Any] = {
    "sshPublicKey": "",
    "instanceType": "t3.medium",
    "os": "debian-13",
    "rootVolumeSize": 20,
    "instances": 1,
    "certificateArn": "",
    "vpcCidr": "10.0.0.0/16",
    "dbInstanceClass": "db.t4g.micro",
    "dbEngineVersion": "17",
    "dbAllocatedStorage": 20,
    "dbBackupRetentionDays": 7,
    "dbMaxAllocatedStorage": 100,
    "dbMultiAz": False,
    "deletionProtection": False,
    "artifactPrefix": "mlflow-artifacts",
    "noncurrentVersionExpiryDays": 30,
    "forceDestroyArtifacts": False,
    "backupRetentionDays": 35,
    "alarmEmail": "",
    "tlsMode": "acme",
    "domain": "",
    "hostedZoneId": "",
    "acmeDirectoryUrl": "https://acme-v02.api.letsencrypt.org/directory",
    "acmeEmail": "",
    "acmeProfile": "shortlived",
}
# No default: the operator must choose these.
REQUIRED: tuple[str, ...] = ("aws:region", "sshAllowedCidrs")
KNOWN_KEYS: tuple[str, ...] = (*REQUIRED, *DEFAULTS)

# Measured: MLflow with 1 worker ~552 MB RSS, plus nginx and the OS. 2 GiB leaves headroom.
MIN_MEMORY_GIB = 2.0

# Burstable families: memory by size (GiB), from the EC2 instance type tables.
_T_SIZES: dict[str, float] = {
    "nano": 0.5,
    "micro": 1,
    "small": 2,
    "medium": 4,
    "large": 8,
    "xlarge": 16,
    "2xlarge": 32,
}
_T_FAMILIES = ("t2", "t3", "t3a", "t4g")
# Current general purpose (m), compute (c) and memory (r) families: GiB per vCPU.
_GIB_PER_VCPU = {"m": 4, "c": 2, "r": 8}
_MCR_FAMILY = re.compile(r"^(?P<kind>[mcr])(?P<gen>\d+)(?P<suffix>[a-z]*)(?:-flex)?$")
_SIZE_VCPUS = {"medium": 1, "large": 2, "xlarge": 4}

# More hosts than this is a different architecture (autoscaling group, bigger database).
MAX_INSTANCES = 10

# RDS for PostgreSQL: majors in standard support for new instances.
DB_ENGINE_VERSIONS = ("15", "16", "17", "18")
_DB_FAMILIES = (
    "t3",
    "t4g",
    "m5",
    "m5d",
    "m6g",
    "m6gd",
    "m6i",
    "m6id",
    "m7g",
    "m7i",
    "m8g",
    "r5",
    "r5d",
    "r6g",
    "r6gd",
    "r6i",
    "r6id",
    "r7g",
    "r7i",
    "r8g",
)
_DB_CLASS = re.compile(r"^db\.(?P<family>[a-z0-9]+)\.(?P<size>micro|small|medium|large|\d*xlarge)$")

_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d+$")
_CERTIFICATE_ARN = re.compile(
    r"^arn:aws(?:-[a-z]+)*:acm:(?P<region>[a-z0-9-]+):\d{12}:certificate/[0-9a-f-]{36}$"
)
# One address, no display name: what SNS's email protocol takes as its endpoint.
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
TLS_MODES = ("acme", "self-signed", "files")
# Lowercase DNS name, at least two labels, the last one not numeric (an IP is not a domain).
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
)
_HOSTED_ZONE_ID = re.compile(r"^Z[A-Z0-9]{1,31}$")
_HTTPS_URL = re.compile(r"^https://[A-Za-z0-9.-]+(:[0-9]+)?(/\S*)?$")
_PROFILE = re.compile(r"^[a-z0-9-]*$")
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
# Key prefix of the database backups in the artifact bucket (ansible role mlflow).
BACKUP_PREFIX = "backups"
_SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")  # what EC2 ImportKeyPair accepts
_RFC1918 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)


class SettingsError(ValueError):
    """A setting the program cannot use; the message names the key and what is allowed."""


@dataclass(frozen=True)
class OsImage:
    """Where an OS's official AMIs come from and who logs in."""

    owner: str  # AWS account that publishes the official images
    name_pattern: str  # AMI name filter; {arch} is amd64 or arm64
    ssh_user: str


OS_IMAGES: dict[str, OsImage] = {
    # The default: the OS the local tests boot (standin builds Debian 13 hosts).
    "debian-13": OsImage(
        owner="136693071363",  # Debian cloud team
        name_pattern="debian-13-{arch}-*",
        ssh_user="admin",
    ),
    "ubuntu-24.04": OsImage(
        owner="099720109477",  # Canonical
        name_pattern="ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*",
        ssh_user="ubuntu",
    ),
    "debian-12": OsImage(
        owner="136693071363",  # Debian cloud team
        name_pattern="debian-12-{arch}-*",
        ssh_user="admin",
    ),
}


@dataclass(frozen=True)
class InstanceSpec:
    """What the program needs to know about an EC2 instance type."""

    memory_gib: float
    arch: str  # EC2 architecture: x86_64 or arm64


@dataclass(frozen=True)
class TlsSettings:
    """Where the HTTPS certificate comes from (hosts: tlsMode; load balancer: domain)."""

    mode: str = "acme"
    domain: str | None = None
    hosted_zone_id: str | None = None
    acme_directory_url: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_email: str = ""
    acme_profile: str = "shortlived"


@dataclass(frozen=True)
class StackSettings:
    """Validated settings of one stack."""

    region: str
    ssh_allowed_cidrs: tuple[str, ...]
    ssh_public_key: str | None
    instance_type: str
    os: str
    root_volume_size: int
    vpc_cidr: str
    db_instance_class: str
    db_engine_version: str
    db_allocated_storage: int
    db_backup_retention_days: int
    deletion_protection: bool
    artifact_prefix: str
    noncurrent_version_expiry_days: int
    force_destroy_artifacts: bool
    # Defaults here too, so code that builds StackSettings by hand keeps today's one-host stack.
    instances: int = 1
    certificate_arn: str | None = None  # ACM certificate of the load balancer; None: self-signed
    db_max_allocated_storage: int = 0  # RDS storage autoscaling ceiling in GiB; 0: off
    db_multi_az: bool = False
    backup_retention_days: int = 35  # database dumps under backups/ in the bucket
    alarm_email: str | None = None  # subscribed to the alarm topic; None: no subscription
    tls: TlsSettings = field(default_factory=lambda: TlsSettings())

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StackSettings:
        """Validate config values keyed by config name; unset (None) values take defaults."""
        unknown = sorted(set(values) - set(KNOWN_KEYS))
        if unknown:
            raise SettingsError(
                f"unknown setting {', '.join(unknown)}: known settings are {', '.join(KNOWN_KEYS)}"
            )
        v = {**DEFAULTS, **{k: val for k, val in values.items() if val is not None}}
        instance_type = parse_instance_type("instanceType", v["instanceType"])
        region = parse_region("aws:region", v.get("aws:region"))
        instances = parse_int("instances", v["instances"], 1, MAX_INSTANCES)
        # gp3 on RDS: 20 GiB minimum, 64 TiB maximum.
        db_allocated_storage = parse_int("dbAllocatedStorage", v["dbAllocatedStorage"], 20, 65536)
        return cls(
            region=region,
            ssh_allowed_cidrs=parse_ssh_cidrs("sshAllowedCidrs", v.get("sshAllowedCidrs")),
            ssh_public_key=parse_ssh_public_key("sshPublicKey", v["sshPublicKey"]),
            instance_type=instance_type,
            os=parse_choice("os", v["os"], tuple(OS_IMAGES)),
            root_volume_size=parse_int("rootVolumeSize", v["rootVolumeSize"], 10, 16384),
            vpc_cidr=parse_vpc_cidr("vpcCidr", v["vpcCidr"]),
            db_instance_class=parse_db_instance_class("dbInstanceClass", v["dbInstanceClass"]),
            db_engine_version=parse_choice(
                "dbEngineVersion", str(v["dbEngineVersion"]), DB_ENGINE_VERSIONS
            ),
            db_allocated_storage=db_allocated_storage,
            # RDS automated backups: 1..35 days (0 would disable them).
            db_backup_retention_days=parse_int(
                "dbBackupRetentionDays", v["dbBackupRetentionDays"], 1, 35
            ),
            deletion_protection=parse_bool("deletionProtection", v["deletionProtection"]),
            artifact_prefix=parse_artifact_prefix("artifactPrefix", v["artifactPrefix"]),
            noncurrent_version_expiry_days=parse_int(
                "noncurrentVersionExpiryDays", v["noncurrentVersionExpiryDays"], 1, 3650
            ),
            force_destroy_artifacts=parse_bool("forceDestroyArtifacts", v["forceDestroyArtifacts"]),
            instances=instances,
            certificate_arn=parse_certificate_arn(
                "certificateArn", v["certificateArn"], region=region, instances=instances
            ),
            db_max_allocated_storage=parse_db_max_allocated_storage(
                "dbMaxAllocatedStorage", v["dbMaxAllocatedStorage"], allocated=db_allocated_storage
            ),
            db_multi_az=parse_bool("dbMultiAz", v["dbMultiAz"]),
            # S3 lifecycle days; ten years is beyond any sensible dump retention.
            backup_retention_days=parse_int(
                "backupRetentionDays", v["backupRetentionDays"], 1, 3650
            ),
            alarm_email=parse_email("alarmEmail", v["alarmEmail"]),
            tls=parse_tls(v, instances=instances),
        )

    @property
    def load_balanced(self) -> bool:
        """More than one host: they sit behind an Application Load Balancer."""
        return self.instances > 1

    @property
    def image(self) -> OsImage:
        return OS_IMAGES[self.os]

    @property
    def ssh_user(self) -> str:
        return self.image.ssh_user

    @property
    def arch(self) -> str:
        """EC2 architecture of the instance type: x86_64 or arm64."""
        return instance_spec(self.instance_type).arch

    @property
    def ami_name_pattern(self) -> str:
        return self.image.name_pattern.format(arch="arm64" if self.arch == "arm64" else "amd64")


def load_settings() -> StackSettings:
    """Read and validate this stack's settings from Pulumi config."""
    import pulumi  # only needed under the Pulumi runtime

    config = pulumi.Config()
    values: dict[str, Any] = {key: config.get(key) for key in DEFAULTS}
    values["sshAllowedCidrs"] = config.get("sshAllowedCidrs")
    values["aws:region"] = pulumi.Config("aws").get("region")
    for key in _configured_project_keys(pulumi.get_project()):
        values.setdefault(key, "")  # an unknown key: from_mapping reports it
    return StackSettings.from_mapping(values)


def _configured_project_keys(project: str) -> list[str]:
    """Names of the keys set under this project's namespace (to catch typos in stack config)."""
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = f"{project}:"
    return sorted(k[len(prefix) :] for k in keys if k.startswith(prefix))


# --- parsers: each takes the config key (for the message) and the raw value ----------------


def parse_region(key: str, value: Any) -> str:
    if value in (None, ""):
        raise SettingsError(
            f"{key} is required: the AWS region to deploy to, e.g. "
            f"`pulumi config set {key} eu-west-1`"
        )
    if not isinstance(value, str) or not _REGION.match(value):
        raise SettingsError(f"{key} {value!r} is not an AWS region name such as eu-west-1")
    return value


def parse_ssh_cidrs(key: str, value: Any) -> tuple[str, ...]:
    """Operator networks allowed to SSH: IPv4 CIDRs, never the whole internet."""
    items = _as_list(key, value)
    if not items:
        raise SettingsError(
            f"{key} is required: the IPv4 networks allowed to SSH to the server, e.g. your "
            f"public address as 198.51.100.7/32 (`pulumi config set --path '{key}[0]' "
            f"198.51.100.7/32`)"
        )
    if len(items) > 50:
        raise SettingsError(f"{key} has {len(items)} entries: at most 50 are allowed")
    cidrs: list[str] = []
    for item in items:
        cidr = _ssh_cidr(key, item)
        if cidr not in cidrs:
            cidrs.append(cidr)
    return tuple(cidrs)


def _ssh_cidr(key: str, item: Any) -> str:
    text = str(item).strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        loose = _loose_network(text)
        if loose:
            raise SettingsError(
                f"{key}: {text!r} has host bits set; did you mean {loose}?"
            ) from None
        raise SettingsError(
            f"{key}: {text!r} is not a CIDR such as 198.51.100.7/32 ({err})"
        ) from None
    if net.version != 4:
        raise SettingsError(f"{key}: {text!r} is IPv6; the VPC is IPv4-only, give IPv4 CIDRs")
    if net.prefixlen == 0:
        raise SettingsError(
            f"{key}: {text!r} opens SSH to the whole internet; give your own networks, "
            f"e.g. 198.51.100.7/32"
        )
    if net.prefixlen < 8:
        raise SettingsError(f"{key}: {text!r} is too broad for SSH; use a /8 or narrower prefix")
    return str(net)


def _loose_network(text: str) -> str | None:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None


def parse_ssh_public_key(key: str, value: Any) -> str | None:
    """An OpenSSH public key line (ed25519 or RSA, what EC2 imports), or None to generate one."""
    text = str(value).strip()
    if not text:
        return None
    parts = text.split()
    if text.startswith(("/", "~")) or text.endswith(".pub"):
        raise SettingsError(
            f"{key} must be the key itself, not a path: "
            f'`pulumi config set {key} "$(cat ~/.ssh/id_ed25519.pub)"`'
        )
    if len(parts) < 2 or parts[0] not in _SSH_KEY_TYPES or _key_blob_type(parts[1]) != parts[0]:
        raise SettingsError(
            f"{key} is not an OpenSSH public key line of type {' or '.join(_SSH_KEY_TYPES)} "
            f"(e.g. the content of ~/.ssh/id_ed25519.pub); leave it empty to generate a key"
        )
    return " ".join(parts[:3])


def _key_blob_type(blob: str) -> str | None:
    """The key type written inside the base64 blob (it must match the line's prefix)."""
    try:
        raw = base64.b64decode(blob, validate=True)
        (length,) = struct.unpack(">I", raw[:4])
        return raw[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        return None


def instance_spec(instance_type: str) -> InstanceSpec:
    """Memory and architecture of an EC2 instance type, or SettingsError if unknown."""
    key = "instanceType"
    family, _, size = str(instance_type).partition(".")
    allowed = (
        f"use {'/'.join(_T_FAMILIES)}.<{'|'.join(_T_SIZES)}>, or a current m/c/r family "
        f"(generation 5 or newer, e.g. m7i.large, c7g.xlarge, r6i.large)"
    )
    if family in _T_FAMILIES:
        if size not in _T_SIZES:
            raise SettingsError(f"{key} {instance_type!r}: unknown size {size!r}; {allowed}")
        return InstanceSpec(_T_SIZES[size], "arm64" if family == "t4g" else "x86_64")
    match = _MCR_FAMILY.match(family)
    if not match or int(match["gen"]) < 5:
        raise SettingsError(
            f"{key} {instance_type!r}: unknown instance family {family!r}; {allowed}"
        )
    vcpus = _size_vcpus(size)
    if vcpus is None:
        raise SettingsError(f"{key} {instance_type!r}: unknown size {size!r}; {allowed}")
    arch = "arm64" if "g" in match["suffix"] else "x86_64"  # m7g, c6gn, r8gd: Graviton
    return InstanceSpec(_GIB_PER_VCPU[match["kind"]] * vcpus, arch)


def _size_vcpus(size: str) -> int | None:
    if size in _SIZE_VCPUS:
        return _SIZE_VCPUS[size]
    match = re.fullmatch(r"(\d+)xlarge", size)
    return 4 * int(match[1]) if match else None


def parse_instance_type(key: str, value: Any) -> str:
    spec = instance_spec(str(value))
    if spec.memory_gib < MIN_MEMORY_GIB:
        raise SettingsError(
            f"{key} {value!r} has {spec.memory_gib:g} GiB of memory; MLflow, nginx and the OS "
            f"need at least {MIN_MEMORY_GIB:g} GiB (e.g. t3.small, t3.medium, t4g.medium)"
        )
    return str(value)


def parse_choice(key: str, value: Any, allowed: Iterable[str]) -> str:
    options = tuple(allowed)
    if value not in options:
        raise SettingsError(f"{key} {value!r} is not allowed: choose one of {', '.join(options)}")
    return str(value)


def parse_int(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        number = int(text) if re.fullmatch(r"[+-]?\d+", text) else None
    if number is None or not lo <= number <= hi:
        raise SettingsError(f"{key} {value!r} is not allowed: a whole number from {lo} to {hi}")
    return number


def parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise SettingsError(f"{key} {value!r} is not allowed: true or false")


def parse_vpc_cidr(key: str, value: Any) -> str:
    text = str(value).strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        raise SettingsError(f"{key} {text!r} is not a CIDR such as 10.0.0.0/16 ({err})") from None
    if not isinstance(net, ipaddress.IPv4Network) or not any(net.subnet_of(r) for r in _RFC1918):
        raise SettingsError(
            f"{key} {text!r} must be a private IPv4 range inside 10.0.0.0/8, 172.16.0.0/12 "
            f"or 192.168.0.0/16"
        )
    if not 16 <= net.prefixlen <= 24:
        raise SettingsError(
            f"{key} {text!r} has prefix /{net.prefixlen}: AWS allows /16 to /28 and the program "
            f"needs room for four subnets, so use /16 to /24"
        )
    return str(net)


def parse_db_instance_class(key: str, value: Any) -> str:
    text = str(value)
    match = _DB_CLASS.match(text)
    if not match or match["family"] not in _DB_FAMILIES:
        raise SettingsError(
            f"{key} {text!r} is not an RDS for PostgreSQL class: use db.<family>.<size> with "
            f"family one of {', '.join(_DB_FAMILIES)} (small burstable: db.t4g.micro, "
            f"db.t4g.small, db.t3.micro)"
        )
    if match["size"] in ("micro", "small", "medium") and match["family"] not in ("t3", "t4g"):
        raise SettingsError(
            f"{key} {text!r}: size {match['size']!r} exists only for db.t3 and db.t4g; "
            f"other families start at large"
        )
    return text


def parse_certificate_arn(key: str, value: Any, *, region: str, instances: int) -> str | None:
    """An ACM certificate ARN for the load balancer's HTTPS listener, or None (self-signed)."""
    text = str(value).strip()
    if not text:
        return None
    if instances == 1:
        # Only the load balancer can use an ACM certificate (ACM never hands out its key).
        raise SettingsError(
            f"{key} is used only by the load balancer, which exists when instances is 2 or "
            f"more: set instances, or unset {key} for one host with its own certificate"
        )
    match = _CERTIFICATE_ARN.match(text)
    if not match:
        raise SettingsError(
            f"{key} {text!r} is not an ACM certificate ARN such as "
            f"arn:aws:acm:{region}:123456789012:certificate/"
            f"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
        )
    if match["region"] != region:
        raise SettingsError(
            f"{key} {text!r} is in region {match['region']}: the load balancer in aws:region "
            f"{region} can only use an ACM certificate of the same region"
        )
    return text


def parse_db_max_allocated_storage(key: str, value: Any, *, allocated: int) -> int:
    """RDS storage autoscaling ceiling in GiB, or 0 (off). RDS wants at least 10% headroom."""
    number = parse_int(key, value, 0, 65536)
    least = -(-allocated * 11 // 10)  # 110%, rounded up, in integers (no float error)
    if number and number < least:
        raise SettingsError(
            f"{key} {value!r} is not allowed: RDS storage autoscaling needs a ceiling at least "
            f"10% above dbAllocatedStorage ({allocated} GiB), so {least} to 65536, or 0 to turn "
            f"autoscaling off"
        )
    return number


def parse_email(key: str, value: Any) -> str | None:
    """One e-mail address for the alarm topic's subscription, or None."""
    text = str(value).strip()
    if not text:
        return None
    if len(text) > 254 or not _EMAIL.match(text):
        raise SettingsError(
            f"{key} {text!r} is not allowed: one e-mail address such as ops@example.com "
            f"(no name, no list), or empty for no e-mail subscription"
        )
    return text


def parse_tls(values: Mapping[str, Any], *, instances: int) -> TlsSettings:
    """tlsMode, domain, hostedZoneId and the ACME settings, checked together."""
    mode = parse_choice("tlsMode", values["tlsMode"], TLS_MODES)
    domain = str(values["domain"]).strip()
    if domain and not _DOMAIN.match(domain):
        raise SettingsError(
            f"domain {domain!r} is not allowed: a lowercase DNS name such as mlflow.example.com "
            f"(dot-separated labels of letters, digits and '-'), or empty for the host's IP"
        )
    zone = str(values["hostedZoneId"]).strip()
    if zone and not _HOSTED_ZONE_ID.match(zone):
        raise SettingsError(
            f"hostedZoneId {zone!r} is not a Route 53 hosted zone ID such as Z0123456789ABCDEFGHIJ"
        )
    if zone and not domain:
        raise SettingsError("hostedZoneId needs domain: the record it creates is for the domain")
    if domain and instances > 1:
        if not zone:
            raise SettingsError(
                "domain with instances 2 or more needs hostedZoneId: the load balancer's ACM "
                "certificate is validated through DNS records in that Route 53 zone (or leave "
                "domain empty and give certificateArn)"
            )
        if str(values["certificateArn"]).strip():
            raise SettingsError(
                "domain and certificateArn are alternatives for the load balancer's "
                "certificate: set one of them"
            )
    url = str(values["acmeDirectoryUrl"]).strip()
    if not _HTTPS_URL.match(url):
        raise SettingsError(
            f"acmeDirectoryUrl {url!r} is not allowed: an https:// URL of an ACME directory, e.g. "
            f"https://acme-v02.api.letsencrypt.org/directory (Let's Encrypt) or "
            f"https://acme-staging-v02.api.letsencrypt.org/directory (its staging)"
        )
    email = str(values["acmeEmail"]).strip()
    if email and not _EMAIL.match(email):
        raise SettingsError(f"acmeEmail {email!r} is not an e-mail address (or leave it empty)")
    profile = str(values["acmeProfile"]).strip()
    if not _PROFILE.match(profile):
        raise SettingsError(
            f"acmeProfile {profile!r} is not a profile name such as shortlived or classic"
        )
    return TlsSettings(mode, domain or None, zone or None, url, email, profile)


def parse_artifact_prefix(key: str, value: Any) -> str:
    """Key prefix inside the bucket: path segments of letters, digits, '.', '_' and '-'."""
    text = str(value)
    segments = text.split("/")
    valid = 0 < len(text) <= 200 and all(
        _PREFIX_SEGMENT.match(s) and s not in (".", "..") for s in segments
    )
    if not valid:
        raise SettingsError(
            f"{key} {text!r} is not allowed: 1-200 characters, path segments of letters, digits, "
            f"'.', '_' and '-' separated by single '/', no leading or trailing '/' "
            f"(e.g. mlflow-artifacts or team-a/mlflow)"
        )
    if segments[0] == BACKUP_PREFIX:
        raise SettingsError(
            f"{key} {text!r} is not allowed: {BACKUP_PREFIX}/ holds the database backups, which "
            f"the server may add but never delete; choose another prefix (e.g. mlflow-artifacts)"
        )
    return text


def _as_list(key: str, value: Any) -> list[Any]:
    """A list from YAML (a list), Pulumi config (a JSON string) or a comma-separated string."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as err:
            raise SettingsError(f"{key} is not a valid list ({err})") from None
        if not isinstance(parsed, list):
            raise SettingsError(f"{key} must be a list of strings")
        return parsed
    return [part for part in (p.strip() for p in text.split(",")) if part]
