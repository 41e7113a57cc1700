"""Assemble the stack from validated settings and produce its outputs.

The outputs are the contract with the inventory plugin (see /work/contracts.md):
`hosts`, `ssh_user`, `ssh_private_key` (secret, only when generated), `db_dsn` (secret),
`artifacts_destination`, `region`, `url`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra.compute import Server, ServerAccess
from infra.database import Database
from infra.naming import Naming
from infra.network import Network, choose_azs
from infra.security import SecurityGroups
from infra.settings import Settings
from infra.storage import ArtifactStore

HOST_COUNT = 1  # [scale] makes this a setting; `hosts` is already a list


@dataclass
class MlflowStack:
    """The components of one stack and the outputs to export."""

    network: Network
    security: SecurityGroups
    artifacts: ArtifactStore
    database: Database
    access: ServerAccess
    servers: list[Server]
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def components(self) -> list[pulumi.ComponentResource]:
        return [
            self.network,
            self.security,
            self.artifacts,
            self.database,
            self.access,
            *self.servers,
        ]


def build_stack(settings: Settings) -> MlflowStack:
    """Declare every resource of the stack; returns its components and outputs."""
    naming = Naming.current()
    azs, host_az = choose_azs(settings.region, settings.instance_type)

    network = Network(naming, cidr=settings.vpc_cidr, azs=azs)
    security = SecurityGroups(
        naming, vpc_id=network.vpc.id, ssh_allowed_cidrs=settings.ssh_allowed_cidrs
    )
    artifacts = ArtifactStore(
        naming,
        noncurrent_version_expiry_days=settings.noncurrent_version_expiry_days,
        force_destroy=settings.force_destroy_artifacts,
    )
    database = Database(
        naming,
        settings=settings,
        subnet_ids=[s.id for s in network.private_subnets],
        security_group_id=security.db.id,
    )
    access = ServerAccess(
        naming,
        ssh_public_key=settings.ssh_public_key,
        bucket_arn=artifacts.bucket.arn,
        artifact_prefix=settings.artifact_prefix,
    )
    host_subnet = network.public_subnets[azs.index(host_az)]
    servers = [
        Server(
            naming,
            naming.host_name(i),
            settings=settings,
            subnet_id=host_subnet.id,
            security_group_id=security.web.id,
            access=access,
            internet_gateway=network.internet_gateway,
        )
        for i in range(1, HOST_COUNT + 1)
    ]

    stack = MlflowStack(network, security, artifacts, database, access, servers)
    stack.outputs = stack_outputs(settings, stack)
    return stack


def stack_outputs(settings: Settings, stack: MlflowStack) -> dict[str, Any]:
    outputs: dict[str, Any] = {
        "hosts": pulumi.Output.all(*[s.host_entry() for s in stack.servers]),
        "ssh_user": settings.ssh_user,
        "db_dsn": stack.database.dsn,
        "artifacts_destination": stack.artifacts.bucket.bucket.apply(
            lambda bucket: f"s3://{bucket}/{settings.artifact_prefix}"
        ),
        "region": settings.region,
        "url": stack.servers[0].elastic_ip.public_dns.apply(lambda dns: f"https://{dns}"),
    }
    if stack.access.generated_key is not None:
        outputs["ssh_private_key"] = pulumi.Output.secret(
            stack.access.generated_key.private_key_openssh
        )
    return outputs
