"""Assemble the stack from validated settings and produce its outputs (`infra/outputs.py`).

One host (instances 1): the host takes HTTPS itself and `url` is its Elastic IP's DNS name.
Several: they go round-robin into the public subnets of both zones behind an Application
Load Balancer, which alone takes HTTPS from the world, and `url` is the load balancer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra.compute import Server, ServerAccess
from infra.database import Database
from infra.loadbalancer import DRAIN_SECONDS, LoadBalancer
from infra.naming import Naming
from infra.network import AZ_COUNT, Network, choose_azs
from infra.outputs import OUTPUTS, check_names
from infra.security import SecurityGroups
from infra.settings import StackSettings
from infra.storage import ArtifactStore


@dataclass
class MlflowStack:
    """The components of one stack and the outputs to export."""

    network: Network
    security: SecurityGroups
    artifacts: ArtifactStore
    database: Database
    access: ServerAccess
    servers: list[Server]
    load_balancer: LoadBalancer | None = None  # only with several hosts
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
            *([self.load_balancer] if self.load_balancer else []),
        ]


def build_stack(settings: StackSettings) -> MlflowStack:
    """Declare every resource of the stack; returns its components and outputs."""
    naming = Naming.current()
    azs = choose_azs(
        settings.region, settings.instance_type, host_zones=min(settings.instances, AZ_COUNT)
    )

    network = Network(naming, cidr=settings.vpc_cidr, azs=azs)
    security = SecurityGroups(
        naming,
        vpc_id=network.vpc.id,
        ssh_allowed_cidrs=settings.ssh_allowed_cidrs,
        load_balancer=settings.load_balanced,
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
    # Round-robin over the zones: host 1 in the first (the only one with instances 1).
    subnets = network.public_subnets
    servers = [
        Server(
            naming,
            naming.host_name(i),
            settings=settings,
            subnet_id=subnets[(i - 1) % len(subnets)].id,
            security_group_id=security.web.id,
            access=access,
            internet_gateway=network.internet_gateway,
        )
        for i in range(1, settings.instances + 1)
    ]
    load_balancer = None
    if security.lb is not None:  # settings.load_balanced
        load_balancer = LoadBalancer(
            naming,
            vpc_id=network.vpc.id,
            subnet_ids=[s.id for s in subnets],
            security_group_id=security.lb.id,
            instance_ids=[s.instance.id for s in servers],
            certificate_arn=settings.certificate_arn,
            deletion_protection=settings.deletion_protection,
        )

    stack = MlflowStack(network, security, artifacts, database, access, servers, load_balancer)
    stack.outputs = stack_outputs(settings, stack)
    return stack


def stack_outputs(settings: StackSettings, stack: MlflowStack) -> dict[str, Any]:
    """The outputs of infra/outputs.py this stack has; the secret ones as Pulumi secrets."""
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
    if stack.load_balancer is not None:
        outputs["url"] = stack.load_balancer.url
        outputs["drain_seconds"] = DRAIN_SECONDS
        if stack.load_balancer.certificate_pem is not None:
            outputs["ca_certificate"] = stack.load_balancer.certificate_pem
    if stack.access.generated_key is not None:
        outputs["ssh_private_key"] = stack.access.generated_key.private_key_openssh
    return {
        name: pulumi.Output.secret(value) if OUTPUTS[name].secret else value
        for name, value in check_names(outputs).items()
    }
