"""The MLflow server: SSH key, instance role scoped to the artifact bucket, instance, Elastic IP."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls
import yaml

from infra.naming import Naming
from infra.settings import BACKUP_PREFIX, StackSettings

EC2_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def artifact_access_policy(bucket_arn: str, prefix: str) -> dict[str, Any]:
    """The server's only permissions: list the artifact bucket, read/write/delete its prefix,
    and add database backups, which it can neither read back nor delete."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListArtifactBucket",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [bucket_arn],
            },
            {
                "Sid": "ReadWriteArtifacts",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": [f"{bucket_arn}/{prefix}/*"],
            },
            {
                "Sid": "WriteDatabaseBackups",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [f"{bucket_arn}/{BACKUP_PREFIX}/*"],
            },
        ],
    }


class ServerAccess(pulumi.ComponentResource):
    """How operators and the server authenticate: SSH key pair, instance role and profile."""

    key_pair: aws.ec2.KeyPair
    generated_key: tls.PrivateKey | None
    instance_profile: aws.iam.InstanceProfile

    def __init__(
        self,
        naming: Naming,
        *,
        ssh_public_key: str | None,
        bucket_arn: pulumi.Input[str],
        artifact_prefix: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-aws:infra:ServerAccess", naming.name("access"), None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # The operator's key when given; else a generated ED25519 key whose private half
        # leaves the program only as a secret stack output.
        self.generated_key = None
        public_key: pulumi.Input[str]
        if ssh_public_key:
            public_key = ssh_public_key
        else:
            self.generated_key = tls.PrivateKey(
                naming.name("ssh-key"), algorithm="ED25519", opts=child
            )
            public_key = self.generated_key.public_key_openssh
        self.key_pair = aws.ec2.KeyPair(
            naming.name("key"),
            public_key=public_key,
            tags=naming.tags(naming.name("key")),
            opts=child,
        )

        role = aws.iam.Role(
            naming.name("server"),
            description=f"MLflow server of {naming.prefix}: artifact bucket access only",
            assume_role_policy=json.dumps(EC2_TRUST_POLICY),
            tags=naming.tags(naming.name("server")),
            opts=child,
        )
        aws.iam.RolePolicy(
            naming.name("server-artifacts"),
            role=role.id,
            policy=pulumi.Output.from_input(bucket_arn).apply(
                lambda arn: json.dumps(artifact_access_policy(arn, artifact_prefix))
            ),
            opts=child,
        )
        self.instance_profile = aws.iam.InstanceProfile(
            naming.name("server"),
            role=role.name,
            tags=naming.tags(naming.name("server")),
            opts=child,
        )
        self.register_outputs({"key_name": self.key_pair.key_name})


def find_ami(settings: StackSettings) -> pulumi.Output[aws.ec2.GetAmiResult]:
    """Newest official image of the chosen OS for the instance's architecture."""
    return aws.ec2.get_ami_output(
        owners=[settings.image.owner],
        most_recent=True,
        filters=[
            {"name": "name", "values": [settings.ami_name_pattern]},
            {"name": "architecture", "values": [settings.arch]},
            {"name": "virtualization-type", "values": ["hvm"]},
            {"name": "root-device-type", "values": ["ebs"]},
        ],
    )


def host_key_cloud_config(private_key: str, public_key: str) -> str:
    """cloud-init user data installing the host's SSH host key instead of generating new ones."""
    config = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {"ed25519_private": private_key, "ed25519_public": public_key.strip()},
    }
    return "#cloud-config\n" + yaml.safe_dump(config, default_flow_style=False)


class Server(pulumi.ComponentResource):
    """One MLflow host: an EC2 instance in a public subnet behind an Elastic IP."""

    instance: aws.ec2.Instance
    elastic_ip: aws.ec2.Eip
    host_key: tls.PrivateKey

    def __init__(
        self,
        naming: Naming,
        host_name: str,
        *,
        settings: StackSettings,
        subnet_id: pulumi.Input[str],
        security_group_id: pulumi.Input[str],
        access: ServerAccess,
        internet_gateway: pulumi.Resource,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-aws:infra:Server", host_name, None, opts)
        ami = find_ami(settings)
        self.host_name = host_name

        # The host's SSH host key is made here and installed by cloud-init at first boot, so the
        # operator's first connection verifies it against the stack outputs instead of trusting
        # whatever answers (SECURITY.md: the private half is in the state, as a secret, and in
        # the user data). A replaced instance gets the same key; a new host, its own.
        self.host_key = tls.PrivateKey(
            f"{host_name}-host-key", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=self)
        )
        cloud_config: pulumi.Output[str] = pulumi.Output.all(
            self.host_key.private_key_openssh, self.host_key.public_key_openssh
        ).apply(lambda keys: host_key_cloud_config(keys[0], keys[1]))
        user_data: pulumi.Output[str] = pulumi.Output.secret(cloud_config)

        self.instance = aws.ec2.Instance(
            host_name,
            ami=ami.id,
            instance_type=settings.instance_type,
            subnet_id=subnet_id,
            vpc_security_group_ids=[security_group_id],
            key_name=access.key_pair.key_name,
            iam_instance_profile=access.instance_profile.name,
            user_data=user_data,
            # cloud-init installs host keys at an instance's first boot only: new user data
            # means a new instance, never a running one whose key would no longer match.
            user_data_replace_on_change=True,
            # IMDSv2 only (FSBP EC2.8). Hop limit 1: the token cannot travel past the host's
            # own network stack, so a container or a forwarded request cannot fetch the role's
            # credentials. MLflow runs directly on the host; raise to 2 only for containers.
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",
                "http_put_response_hop_limit": 1,
                "instance_metadata_tags": "disabled",
            },
            root_block_device={
                "volume_type": "gp3",
                "volume_size": settings.root_volume_size,
                "encrypted": True,  # with the account's aws/ebs key
                "delete_on_termination": True,
                "tags": naming.tags(f"{host_name}-root"),
            },
            monitoring=False,  # basic 5-minute CloudWatch metrics are free; detailed are not
            tags=naming.tags(host_name),
            # A newer AMI release must not replace the running server: OS updates come from
            # the package manager; rebuild deliberately with `pulumi up --replace`.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["ami"]),
        )
        self.elastic_ip = aws.ec2.Eip(
            f"{host_name}-eip",
            domain="vpc",
            instance=self.instance.id,
            tags=naming.tags(f"{host_name}-eip"),
            # An EIP can only be associated once the VPC has an internet gateway.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[internet_gateway]),
        )
        self.register_outputs({"public_ip": self.elastic_ip.public_ip})

    def host_entry(self) -> pulumi.Output[dict[str, str]]:
        """This server as an entry of the `hosts` stack output."""
        return pulumi.Output.all(
            public_ip=self.elastic_ip.public_ip,
            private_ip=self.instance.private_ip,
            public_dns=self.elastic_ip.public_dns,
            ssh_host_key=self.host_key.public_key_openssh.apply(lambda key: key.strip()),
        ).apply(lambda v: {"name": self.host_name, **v})
