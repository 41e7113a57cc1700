"""StackSettings validation: every bad value gets an error naming the key and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest
from infra_mocks import OPERATOR_CIDR, REGION, make_settings

from infra.settings import DEFAULTS, SettingsError, StackSettings, instance_spec, load_settings

ED25519_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAblW2M0gfe7BylX6rzxEMly6GaRw8/tq+CIAkv/5C8j op@laptop"
)
RSA_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAABQDDESIz"
# An ed25519 blob behind an ssh-rsa label: the line lies about its type.
MISLABELLED_KEY = "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAblW2M0gfe7BylX6rzxEMly6GaRw8/tq+CIAkv/5C8j"

CERT_ARN = f"arn:aws:acm:{REGION}:123456789012:certificate/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

# (overrides, the key the message must name, a fragment saying what is wrong or allowed)
BAD_SETTINGS: list[tuple[dict[str, Any], str, str]] = [
    ({"aws:region": None}, "aws:region", "is required"),
    ({"aws:region": "Europe"}, "aws:region", "not an AWS region name"),
    ({"sshAllowedCidrs": None}, "sshAllowedCidrs", "is required"),
    ({"sshAllowedCidrs": []}, "sshAllowedCidrs", "is required"),
    ({"sshAllowedCidrs": "[]"}, "sshAllowedCidrs", "is required"),
    ({"sshAllowedCidrs": ["0.0.0.0/0"]}, "sshAllowedCidrs", "whole internet"),
    ({"sshAllowedCidrs": [OPERATOR_CIDR, "0.0.0.0/0"]}, "sshAllowedCidrs", "whole internet"),
    ({"sshAllowedCidrs": ["0.0.0.0/1"]}, "sshAllowedCidrs", "too broad"),
    ({"sshAllowedCidrs": ["10.0.0.0/7"]}, "sshAllowedCidrs", "too broad"),
    ({"sshAllowedCidrs": ["::/0"]}, "sshAllowedCidrs", "IPv6"),
    ({"sshAllowedCidrs": ["2001:db8::/32"]}, "sshAllowedCidrs", "IPv6"),
    ({"sshAllowedCidrs": ["198.51.100.7/24"]}, "sshAllowedCidrs", "did you mean 198.51.100.0/24"),
    ({"sshAllowedCidrs": ["my-office"]}, "sshAllowedCidrs", "not a CIDR"),
    ({"sshAllowedCidrs": ["198.51.100.0/33"]}, "sshAllowedCidrs", "not a CIDR"),
    ({"sshAllowedCidrs": '["198.51.100.0/24"'}, "sshAllowedCidrs", "not a valid list"),
    ({"sshAllowedCidrs": [f"10.0.{i}.0/24" for i in range(51)]}, "sshAllowedCidrs", "at most 50"),
    ({"sshPublicKey": "~/.ssh/id_ed25519.pub"}, "sshPublicKey", "not a path"),
    ({"sshPublicKey": "ssh-dss AAAAB3NzaC1kc3M="}, "sshPublicKey", "ssh-ed25519 or ssh-rsa"),
    ({"sshPublicKey": "ssh-ed25519 not-base64!"}, "sshPublicKey", "ssh-ed25519 or ssh-rsa"),
    ({"sshPublicKey": MISLABELLED_KEY}, "sshPublicKey", "ssh-ed25519 or ssh-rsa"),
    ({"sshPublicKey": "ssh-ed25519"}, "sshPublicKey", "ssh-ed25519 or ssh-rsa"),
    ({"instanceType": "t2.micro"}, "instanceType", "1 GiB of memory"),
    ({"instanceType": "t3.nano"}, "instanceType", "at least 2 GiB"),
    ({"instanceType": "t4g.micro"}, "instanceType", "at least 2 GiB"),
    ({"instanceType": "t3.huge"}, "instanceType", "unknown size 'huge'"),
    ({"instanceType": "m5.metal"}, "instanceType", "unknown size 'metal'"),
    ({"instanceType": "x2iedn.xlarge"}, "instanceType", "unknown instance family 'x2iedn'"),
    ({"instanceType": "c4.large"}, "instanceType", "unknown instance family 'c4'"),
    ({"instanceType": "medium"}, "instanceType", "unknown instance family"),
    ({"os": "centos-7"}, "os", "choose one of debian-13, ubuntu-24.04, debian-12"),
    ({"os": "ubuntu-22.04"}, "os", "choose one of debian-13, ubuntu-24.04, debian-12"),
    ({"rootVolumeSize": 8}, "rootVolumeSize", "from 10 to 16384"),
    ({"rootVolumeSize": 20000}, "rootVolumeSize", "from 10 to 16384"),
    ({"rootVolumeSize": "big"}, "rootVolumeSize", "whole number"),
    ({"rootVolumeSize": True}, "rootVolumeSize", "whole number"),
    ({"rootVolumeSize": 20.5}, "rootVolumeSize", "whole number"),
    ({"instances": 0}, "instances", "a whole number from 1 to 10"),
    ({"instances": 11}, "instances", "a whole number from 1 to 10"),
    ({"instances": "x"}, "instances", "a whole number from 1 to 10"),
    ({"instances": "2.5"}, "instances", "a whole number from 1 to 10"),
    ({"instances": True}, "instances", "a whole number from 1 to 10"),
    ({"certificateArn": CERT_ARN}, "certificateArn", "only by the load balancer"),
    (
        {"certificateArn": "arn:aws:acm:eu-west-1:123456789012:cert/x", "instances": 3},
        "certificateArn",
        "not an ACM certificate ARN",
    ),
    (
        {"certificateArn": CERT_ARN.replace(REGION, "us-east-1"), "instances": 3},
        "certificateArn",
        "same region",
    ),
    ({"vpcCidr": "10.0.0.0"}, "vpcCidr", "/16 to /24"),
    ({"vpcCidr": "10.0.0.0/8"}, "vpcCidr", "/16 to /24"),
    ({"vpcCidr": "10.0.0.0/25"}, "vpcCidr", "/16 to /24"),
    ({"vpcCidr": "10.0.0.1/16"}, "vpcCidr", "not a CIDR"),
    ({"vpcCidr": "8.8.0.0/16"}, "vpcCidr", "private IPv4 range"),
    ({"vpcCidr": "fd00::/48"}, "vpcCidr", "private IPv4 range"),
    ({"vpcCidr": "ten"}, "vpcCidr", "not a CIDR"),
    ({"dbInstanceClass": "t4g.micro"}, "dbInstanceClass", "db.<family>.<size>"),
    ({"dbInstanceClass": "db.x9.large"}, "dbInstanceClass", "db.<family>.<size>"),
    ({"dbInstanceClass": "db.t4g.huge"}, "dbInstanceClass", "db.<family>.<size>"),
    ({"dbInstanceClass": "db.m7g.micro"}, "dbInstanceClass", "only for db.t3 and db.t4g"),
    ({"dbEngineVersion": "13"}, "dbEngineVersion", "choose one of 15, 16, 17, 18"),
    ({"dbEngineVersion": "17.4"}, "dbEngineVersion", "choose one of 15, 16, 17, 18"),
    ({"dbAllocatedStorage": 10}, "dbAllocatedStorage", "from 20 to 65536"),
    ({"dbAllocatedStorage": 70000}, "dbAllocatedStorage", "from 20 to 65536"),
    ({"dbBackupRetentionDays": 0}, "dbBackupRetentionDays", "from 1 to 35"),
    ({"dbBackupRetentionDays": 36}, "dbBackupRetentionDays", "from 1 to 35"),
    ({"dbBackupRetentionDays": "-1"}, "dbBackupRetentionDays", "from 1 to 35"),
    ({"deletionProtection": "yes"}, "deletionProtection", "true or false"),
    ({"deletionProtection": 1}, "deletionProtection", "true or false"),
    ({"artifactPrefix": ""}, "artifactPrefix", "no leading or trailing '/'"),
    ({"artifactPrefix": "/artifacts"}, "artifactPrefix", "no leading or trailing '/'"),
    ({"artifactPrefix": "artifacts/"}, "artifactPrefix", "no leading or trailing '/'"),
    ({"artifactPrefix": "a//b"}, "artifactPrefix", "single '/'"),
    ({"artifactPrefix": "a/../b"}, "artifactPrefix", "path segments"),
    ({"artifactPrefix": "my artifacts"}, "artifactPrefix", "letters, digits"),
    ({"artifactPrefix": "x" * 201}, "artifactPrefix", "1-200 characters"),
    ({"noncurrentVersionExpiryDays": 0}, "noncurrentVersionExpiryDays", "from 1 to 3650"),
    ({"forceDestroyArtifacts": "maybe"}, "forceDestroyArtifacts", "true or false"),
    ({"sshAllowedCidr": [OPERATOR_CIDR]}, "sshAllowedCidr", "unknown setting"),
    ({"dbMaxAllocatedStorage": 20}, "dbMaxAllocatedStorage", "at least 10% above"),
    ({"dbMaxAllocatedStorage": 21}, "dbMaxAllocatedStorage", "22 to 65536, or 0"),
    (
        {"dbAllocatedStorage": 200},  # the default ceiling (100) is now below the storage
        "dbMaxAllocatedStorage",
        "220 to 65536, or 0 to turn autoscaling off",
    ),
    ({"dbMaxAllocatedStorage": -1}, "dbMaxAllocatedStorage", "from 0 to 65536"),
    ({"dbMaxAllocatedStorage": 70000}, "dbMaxAllocatedStorage", "from 0 to 65536"),
    ({"dbMaxAllocatedStorage": "lots"}, "dbMaxAllocatedStorage", "whole number"),
    ({"dbMultiAz": "yes"}, "dbMultiAz", "true or false"),
    ({"dbMultiAz": 2}, "dbMultiAz", "true or false"),
    ({"backupRetentionDays": 0}, "backupRetentionDays", "from 1 to 3650"),
    ({"backupRetentionDays": 4000}, "backupRetentionDays", "from 1 to 3650"),
    ({"backupRetentionDays": "a month"}, "backupRetentionDays", "whole number"),
    ({"alarmEmail": "ops"}, "alarmEmail", "one e-mail address"),
    ({"alarmEmail": "ops@localhost"}, "alarmEmail", "one e-mail address"),
    ({"alarmEmail": "a@example.com,b@example.com"}, "alarmEmail", "no list"),
    ({"alarmEmail": "Ops <ops@example.com>"}, "alarmEmail", "no name"),
    ({"alarmEmail": "ops@exa mple.com"}, "alarmEmail", "one e-mail address"),
    ({"tlsMode": "letsencrypt"}, "tlsMode", "choose one of acme, self-signed, files"),
    ({"domain": "mlflow..example.com"}, "domain", "a lowercase DNS name"),
    ({"hostedZoneId": "Z123"}, "hostedZoneId", "needs domain"),
    ({"acmeDirectoryUrl": "http://acme.test/dir"}, "acmeDirectoryUrl", "an https:// URL"),
    ({"acmeEmail": "ops at example"}, "acmeEmail", "not an e-mail address"),
    ({"acmeProfile": "Short"}, "acmeProfile", "not a profile name"),
]


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    BAD_SETTINGS,
    ids=[f"{key}={next(iter(o.values()))!r}"[:60] for o, key, _ in BAD_SETTINGS],
)
def test_bad_setting_is_rejected_with_its_name(overrides, key, fragment):
    with pytest.raises(SettingsError) as err:
        make_settings(**overrides)
    message = str(err.value)
    assert key in message
    assert fragment in message
    assert "\n" not in message, "one line"


def test_every_setting_has_an_error_case():
    covered = {key for _, key, _ in BAD_SETTINGS}
    assert covered >= {"aws:region", "sshAllowedCidrs", *DEFAULTS}


def test_defaults():
    settings = make_settings()
    assert settings == StackSettings(
        region=REGION,
        ssh_allowed_cidrs=(OPERATOR_CIDR,),
        ssh_public_key=None,
        instance_type="t3.medium",
        os="debian-13",
        root_volume_size=20,
        vpc_cidr="10.0.0.0/16",
        db_instance_class="db.t4g.micro",
        db_engine_version="17",
        db_allocated_storage=20,
        db_backup_retention_days=7,
        deletion_protection=False,
        artifact_prefix="mlflow-artifacts",
        noncurrent_version_expiry_days=30,
        force_destroy_artifacts=False,
        db_max_allocated_storage=100,
        db_multi_az=False,
        backup_retention_days=35,
        alarm_email=None,
    )
    assert (settings.arch, settings.ssh_user) == ("x86_64", "admin")


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        make_settings().instance_type = "t3.small"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("instance_type", "memory_gib", "arch"),
    [
        ("t3.small", 2, "x86_64"),
        ("t3.medium", 4, "x86_64"),
        ("t3a.large", 8, "x86_64"),
        ("t2.2xlarge", 32, "x86_64"),
        ("t4g.medium", 4, "arm64"),
        ("m5.large", 8, "x86_64"),
        ("m7i-flex.large", 8, "x86_64"),
        ("m5zn.large", 8, "x86_64"),
        ("m7g.xlarge", 16, "arm64"),
        ("c7g.medium", 2, "arm64"),
        ("c6gn.xlarge", 8, "arm64"),
        ("c5.large", 4, "x86_64"),
        ("r6i.2xlarge", 64, "x86_64"),
        ("r8gd.large", 16, "arm64"),
    ],
)
def test_instance_memory_and_architecture(instance_type, memory_gib, arch):
    spec = instance_spec(instance_type)
    assert (spec.memory_gib, spec.arch) == (memory_gib, arch)
    assert make_settings(instanceType=instance_type).arch == arch


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["198.51.100.7"], ("198.51.100.7/32",)),
        (["198.51.100.0/24", "198.51.100.0/24"], ("198.51.100.0/24",)),
        ('["198.51.100.0/24", "192.0.2.1/32"]', ("198.51.100.0/24", "192.0.2.1/32")),
        ("198.51.100.0/24, 192.0.2.1/32", ("198.51.100.0/24", "192.0.2.1/32")),
    ],
)
def test_ssh_cidr_forms(given, expected):
    assert make_settings(sshAllowedCidrs=given).ssh_allowed_cidrs == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"dbMaxAllocatedStorage": 0, "dbAllocatedStorage": 500}, 0),
        ({"dbMaxAllocatedStorage": 22}, 22),  # 10% above 20, rounded up
        ({"dbMaxAllocatedStorage": "65536", "dbAllocatedStorage": 65536}, None),
    ],
)
def test_storage_autoscaling_ceiling(values, expected):
    if expected is None:
        with pytest.raises(SettingsError, match="dbMaxAllocatedStorage"):
            make_settings(**values)
    else:
        assert make_settings(**values).db_max_allocated_storage == expected


def test_alarm_email_and_multi_az_from_config_strings():
    settings = make_settings(alarmEmail="  ops+mlflow@example.co.uk ", dbMultiAz="true")
    assert settings.alarm_email == "ops+mlflow@example.co.uk"
    assert settings.db_multi_az is True
    assert make_settings(alarmEmail="").alarm_email is None


@pytest.mark.parametrize("key", [ED25519_KEY, RSA_KEY, f"  {ED25519_KEY}\n"])
def test_operator_public_key_accepted(key):
    assert make_settings(sshPublicKey=key).ssh_public_key == key.strip()


def test_values_from_pulumi_config_strings():
    """Pulumi hands the program strings: numbers, booleans and lists arrive as text."""
    settings = make_settings(
        rootVolumeSize="40",
        deletionProtection="true",
        dbEngineVersion=18,
        sshAllowedCidrs='["192.0.2.0/28"]',
    )
    assert settings.root_volume_size == 40
    assert settings.deletion_protection is True
    assert settings.db_engine_version == "18"
    assert settings.ssh_allowed_cidrs == ("192.0.2.0/28",)


def test_load_settings_reads_pulumi_config(stack_config):
    stack_config(
        {
            "aws:region": "us-east-1",
            "mlflow-aws:sshAllowedCidrs": '["203.0.113.0/24"]',
            "mlflow-aws:os": "debian-12",
            "mlflow-aws:dbBackupRetentionDays": "14",
        }
    )
    settings = load_settings()
    assert settings.region == "us-east-1"
    assert settings.ssh_allowed_cidrs == ("203.0.113.0/24",)
    assert (settings.os, settings.ssh_user) == ("debian-12", "admin")
    assert settings.db_backup_retention_days == 14


def test_load_settings_rejects_a_misspelt_key(stack_config):
    stack_config(
        {
            "aws:region": "us-east-1",
            "mlflow-aws:sshAllowedCidrs": '["203.0.113.0/24"]',
            "mlflow-aws:instancetype": "t3.large",
        }
    )
    with pytest.raises(SettingsError, match="unknown setting instancetype"):
        load_settings()


def test_load_settings_requires_the_operator_cidrs(stack_config):
    stack_config({"aws:region": "us-east-1"})
    with pytest.raises(SettingsError, match="sshAllowedCidrs is required"):
        load_settings()
