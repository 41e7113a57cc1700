"""Assemble the stack from validated settings and produce its outputs (`infra/outputs.py`).

One host (instances 1): the host takes HTTPS itself and `url` is its Elastic IP's DNS name.
Several: they go round-robin into the public subnets of both zones behind an Application
Load Balancer, which alone takes HTTPS from the world, and `url` is the load balancer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra.alarms import Alarms
from infra.compute import Server, ServerAccess
from infra.database import Database
from infra.domain import HostRecord, LoadBalancerCertificate
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
    alarms: Alarms
    load_balancer: LoadBalancer | None = None  # only with several hosts
    # With `domain` and `hostedZoneId`: the A record (one host) or the ACM certificate (several).
    host_record: HostRecord | None = None
    lb_certificate: LoadBalancerCertificate | None = None
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
            self.alarms,
            *([self.load_balancer] if self.load_balancer else []),
            *([self.host_record] if self.host_record else []),
            *([self.lb_certificate] if self.lb_certificate else []),
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
        backup_retention_days=settings.backup_retention_days,
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
    tls = settings.tls
    load_balancer: LoadBalancer | None = None
    lb_certificate: LoadBalancerCertificate | None = None
    host_record: HostRecord | None = None
    if security.lb is not None:  # settings.load_balanced
        certificate_arn: pulumi.Input[str] | None = settings.certificate_arn
        if tls.domain and tls.hosted_zone_id:
            lb_certificate = LoadBalancerCertificate(
                naming, domain=tls.domain, zone_id=tls.hosted_zone_id
            )
            certificate_arn = lb_certificate.certificate_arn
        load_balancer = LoadBalancer(
            naming,
            vpc_id=network.vpc.id,
            subnet_ids=[s.id for s in subnets],
            security_group_id=security.lb.id,
            instance_ids=[s.instance.id for s in servers],
            certificate_arn=certificate_arn,
            deletion_protection=settings.deletion_protection,
        )
        if lb_certificate is not None:
            lb_certificate.alias(
                naming,
                domain=str(tls.domain),
                zone_id=str(tls.hosted_zone_id),
                alb=load_balancer.alb,
            )
    elif tls.domain and tls.hosted_zone_id:
        host_record = HostRecord(
            naming,
            domain=tls.domain,
            zone_id=tls.hosted_zone_id,
            public_ip=servers[0].elastic_ip.public_ip,
        )

    alarms = Alarms(
        naming,
        settings=settings,
        hosts=[(s.host_name, s.instance.id) for s in servers],
        db_identifier=database.instance.identifier,
        load_balancer=(
            (load_balancer.alb.arn_suffix, load_balancer.target_group.arn_suffix)
            if load_balancer is not None
            else None
        ),
    )

    stack = MlflowStack(
        network,
        security,
        artifacts,
        database,
        access,
        servers,
        alarms,
        load_balancer,
        host_record=host_record,
        lb_certificate=lb_certificate,
    )
    stack.outputs = stack_outputs(settings, stack)
    return stack


def host_tls_output(settings: StackSettings) -> dict[str, str]:
    """Output `tls`: the hosts' certificate settings, which the inventory passes to the roles.

    Behind a load balancer the hosts keep self-signed certificates (the load balancer has the
    trusted one and does not verify its targets'); files stays the operator's choice.
    """
    tls = settings.tls
    mode = "self-signed" if settings.load_balanced and tls.mode == "acme" else tls.mode
    output: dict[str, str] = {"mode": mode}
    if mode == "acme":
        output |= {
            "domain": tls.domain or "",
            "acme_directory_url": tls.acme_directory_url,
            "acme_email": tls.acme_email,
            "acme_profile": tls.acme_profile,
        }
    return output


def stack_outputs(settings: StackSettings, stack: MlflowStack) -> dict[str, Any]:
    """The outputs of infra/outputs.py this stack has; the secret ones as Pulumi secrets."""
    tls = settings.tls
    eip = stack.servers[0].elastic_ip
    if tls.domain:
        url: pulumi.Input[str] = f"https://{tls.domain}"
    elif tls.mode == "acme":
        # The ACME certificate is for the IP address: clients must use it, not the DNS name.
        url = eip.public_ip.apply(lambda ip: f"https://{ip}")
    else:
        url = eip.public_dns.apply(lambda dns: f"https://{dns}")
    outputs: dict[str, Any] = {
        "hosts": pulumi.Output.all(*[s.host_entry() for s in stack.servers]),
        "ssh_user": settings.ssh_user,
        "db_dsn": stack.database.dsn,
        "artifacts_destination": stack.artifacts.bucket.bucket.apply(
            lambda bucket: f"s3://{bucket}/{settings.artifact_prefix}"
        ),
        "region": settings.region,
        "url": url,
        "alarm_topic_arn": stack.alarms.topic.arn,
        "tls": host_tls_output(settings),
    }
    if stack.load_balancer is not None:
        outputs["url"] = f"https://{tls.domain}" if tls.domain else stack.load_balancer.url
        outputs["drain_seconds"] = DRAIN_SECONDS
        if stack.load_balancer.certificate_pem is not None:
            outputs["ca_certificate"] = stack.load_balancer.certificate_pem
    if stack.access.generated_key is not None:
        outputs["ssh_private_key"] = stack.access.generated_key.private_key_openssh
    return {
        name: pulumi.Output.secret(value) if OUTPUTS[name].secret else value
        for name, value in check_names(outputs).items()
    }
