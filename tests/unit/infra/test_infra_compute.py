"""The server: IMDSv2, encrypted disk, image choice, SSH key, IAM scope (FSBP EC2.8, EBS)."""

from __future__ import annotations

import json

import pulumi
import pytest
import yaml
from infra_mocks import (
    AMI_ID,
    BUCKET_NAME,
    GENERATED_PRIVATE_KEY,
    GENERATED_PUBLIC_KEY,
    Resources,
    after_registration,
    fresh_stack,
)

GET_AMI = "aws:ec2/getAmi:getAmi"
SECRET_SIG, SECRET_MARKER = "4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270"
OPERATOR_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAblW2M0gfe7BylX6rzxEMly6GaRw8/tq+CIAkv/5C8j op@laptop"
)


@pulumi.runtime.test
def test_imdsv2_required_fsbp_ec2_8():
    def check(res: Resources) -> None:
        metadata = res.one("aws:ec2/instance:Instance").inputs["metadataOptions"]
        assert metadata["httpTokens"] == "required", "IMDSv1 allowed"
        assert metadata["httpEndpoint"] == "enabled"
        # 1: only the host itself can use the token (no container, no forwarded request).
        assert metadata["httpPutResponseHopLimit"] == 1

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_root_volume_is_encrypted_gp3_ebs_encryption():
    def check(res: Resources) -> None:
        instance = res.one("aws:ec2/instance:Instance").inputs
        root = instance["rootBlockDevice"]
        assert root["encrypted"] is True, "root volume not encrypted"
        assert root["volumeType"] == "gp3"
        assert root["volumeSize"] == 30
        # No other volumes that could be unencrypted.
        assert not instance.get("ebsBlockDevices")
        assert not res.of_type("aws:ebs/volume:Volume")

    return after_registration(fresh_stack(rootVolumeSize=30), check)


@pytest.mark.parametrize(
    ("os_name", "instance_type", "owner", "name_filter", "arch", "ssh_user"),
    [
        (
            "debian-13",
            "t3.medium",
            "136693071363",
            "debian-13-amd64-*",
            "x86_64",
            "admin",
        ),
        (
            "debian-13",
            "t4g.medium",
            "136693071363",
            "debian-13-arm64-*",
            "arm64",
            "admin",
        ),
        (
            "ubuntu-24.04",
            "t3.medium",
            "099720109477",
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
            "x86_64",
            "ubuntu",
        ),
        (
            "debian-12",
            "t3.medium",
            "136693071363",
            "debian-12-amd64-*",
            "x86_64",
            "admin",
        ),
        (
            "ubuntu-24.04",
            "t4g.medium",
            "099720109477",
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-*",
            "arm64",
            "ubuntu",
        ),
        (
            "debian-12",
            "m7g.large",
            "136693071363",
            "debian-12-arm64-*",
            "arm64",
            "admin",
        ),
    ],
)
@pulumi.runtime.test
def test_image_lookup_and_ssh_user(os_name, instance_type, owner, name_filter, arch, ssh_user):
    stack = fresh_stack(os=os_name, instanceType=instance_type)

    def check(res: Resources) -> None:
        (call,) = res.calls_to(GET_AMI)
        assert call.args["owners"] == [owner], "official publisher only"
        assert call.args["mostRecent"] is True
        filters = {f["name"]: f["values"] for f in call.args["filters"]}
        assert filters["name"] == [name_filter]
        assert filters["architecture"] == [arch]
        instance = res.one("aws:ec2/instance:Instance").inputs
        assert instance["ami"] == AMI_ID
        assert instance["instanceType"] == instance_type
        assert stack.outputs["ssh_user"] == ssh_user

    return after_registration(stack, check)


@pulumi.runtime.test
def test_default_os_is_debian_13_the_os_the_tests_boot():
    """No `os` setting: Debian 13 from the Debian cloud team, SSH user admin."""

    def check(res: Resources) -> None:
        (call,) = res.calls_to(GET_AMI)
        assert call.args["owners"] == ["136693071363"]
        filters = {f["name"]: f["values"] for f in call.args["filters"]}
        assert filters["name"] == ["debian-13-amd64-*"]
        assert stack.outputs["ssh_user"] == "admin"

    stack = fresh_stack()
    return after_registration(stack, check)


@pulumi.runtime.test
def test_newer_ami_does_not_replace_the_server():
    def check(res: Resources) -> None:
        instance = res.one("aws:ec2/instance:Instance")
        assert "ami" in instance.options["ignoreChanges"]

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_server_in_public_subnet_behind_elastic_ip():
    def check(res: Resources) -> None:
        instance = res.one("aws:ec2/instance:Instance")
        subnet = res.by_id(instance.inputs["subnetId"])
        assert "-public-" in subnet.name
        eip = res.one("aws:ec2/eip:Eip")
        assert eip.inputs["instance"] == instance.id
        assert eip.inputs["domain"] == "vpc"

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_instance_role_allows_only_the_artifact_bucket():
    bucket_arn = f"arn:aws:s3:::{BUCKET_NAME}"

    def check(res: Resources) -> None:
        # Exactly one inline policy; no managed policy attached to the role.
        (policy,) = res.of_type("aws:iam/rolePolicy:RolePolicy")
        assert not res.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        assert not res.of_type("aws:iam/policyAttachment:PolicyAttachment")
        statements = json.loads(policy.inputs["policy"])["Statement"]
        granted = {
            (action, resource)
            for s in statements
            for action in _as_list(s["Action"])
            for resource in _as_list(s["Resource"])
        }
        assert all(s["Effect"] == "Allow" for s in statements)
        assert granted == {
            ("s3:ListBucket", bucket_arn),
            ("s3:GetObject", f"{bucket_arn}/team/mlflow/*"),
            ("s3:PutObject", f"{bucket_arn}/team/mlflow/*"),
            ("s3:DeleteObject", f"{bucket_arn}/team/mlflow/*"),
            # Database backups: written before migrations, never read back or deleted by the host.
            ("s3:PutObject", f"{bucket_arn}/backups/*"),
        }
        assert not [g for g in granted if "*" in g[0] or g[1] in ("*", "arn:aws:s3:::*")]

    return after_registration(fresh_stack(artifactPrefix="team/mlflow"), check)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


@pulumi.runtime.test
def test_instance_profile_carries_the_ec2_role():
    def check(res: Resources) -> None:
        role = res.one("aws:iam/role:Role")
        trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
        assert [s["Principal"] for s in trust] == [{"Service": "ec2.amazonaws.com"}]
        profile = res.one("aws:iam/instanceProfile:InstanceProfile")
        assert profile.inputs["role"] == role.state["name"]
        instance = res.one("aws:ec2/instance:Instance")
        assert instance.inputs["iamInstanceProfile"] == profile.state["name"]

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_operator_public_key_is_used_when_given():
    def check(res: Resources) -> None:
        login_keys = [
            key
            for key in res.of_type("tls:index/privateKey:PrivateKey")
            if "host-key" not in key.name
        ]
        assert not login_keys, "no login key to generate"
        key_pair = res.one("aws:ec2/keyPair:KeyPair")
        assert key_pair.inputs["publicKey"] == OPERATOR_KEY
        instance = res.one("aws:ec2/instance:Instance")
        assert instance.inputs["keyName"] == key_pair.state["keyName"]

    return after_registration(fresh_stack(sshPublicKey=OPERATOR_KEY), check)


@pulumi.runtime.test
def test_ed25519_key_is_generated_without_operator_key():
    def check(res: Resources) -> None:
        (generated,) = [
            key
            for key in res.of_type("tls:index/privateKey:PrivateKey")
            if "host-key" not in key.name
        ]
        assert generated.inputs["algorithm"] == "ED25519"
        assert res.one("aws:ec2/keyPair:KeyPair").inputs["publicKey"] == GENERATED_PUBLIC_KEY

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_each_host_gets_a_generated_ssh_host_key_installed_by_cloud_init():
    """The operator's first connection verifies the host key the stack made (SECURITY.md)."""

    def check(res: Resources) -> None:
        instances = res.of_type("aws:ec2/instance:Instance")
        host_keys = [
            key for key in res.of_type("tls:index/privateKey:PrivateKey") if "host-key" in key.name
        ]
        names = sorted(key.name for key in host_keys)
        assert names == ["mlflow-test-1-host-key", "mlflow-test-2-host-key"]
        assert {key.inputs["algorithm"] for key in host_keys} == {"ED25519"}
        for instance in instances:
            # Secret in the state (Pulumi's secret marker on the wire): it holds the private key.
            wrapped = instance.inputs["userData"]
            assert wrapped[SECRET_SIG] == SECRET_MARKER, "user data would be stored in plain text"
            user_data = wrapped["value"]
            assert user_data.startswith("#cloud-config\n")
            config = yaml.safe_load(user_data)
            assert config["ssh_keys"] == {
                "ed25519_private": GENERATED_PRIVATE_KEY,
                "ed25519_public": GENERATED_PUBLIC_KEY,
            }
            # No other host key is generated or kept from the image.
            assert config["ssh_deletekeys"] is True
            assert config["ssh_genkeytypes"] == []
            # A key change means a new instance: cloud-init installs keys at first boot only.
            assert instance.inputs["userDataReplaceOnChange"] is True

    return after_registration(fresh_stack(instances=2), check)
