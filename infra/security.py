"""Security groups: the web server's and the database's; nothing else is let in.

Inbound
- web: 443 and 80 (80 only redirects to HTTPS) from anywhere; 22 only from the operator CIDRs.
- db: 5432 only from the web group (a group reference, not a CIDR).

Outbound (AWS's default allow-all egress rule is removed when the group is created)
- web: 443 and 80 (OS packages, PyPI, S3 and other AWS APIs: there is no NAT or VPC endpoint,
  so these go over the internet gateway), 123/udp (NTP when the OS uses public pools), and
  5432 to the db group. DNS, the instance metadata service and the Amazon Time Sync service
  are link-local and not filtered by security groups.
- db: none. RDS needs no outbound connection; replies to allowed inbound traffic pass
  because security groups are stateful.

Rules are separate `aws.vpc.SecurityGroup{Ingress,Egress}Rule` resources (one CIDR each), the
provider's recommended form: one changed rule is one changed resource.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from infra.naming import Naming

ANYWHERE_V4 = "0.0.0.0/0"
POSTGRES_PORT = 5432


class SecurityGroups(pulumi.ComponentResource):
    """The web and database security groups and all their rules."""

    web: aws.ec2.SecurityGroup
    db: aws.ec2.SecurityGroup

    def __init__(
        self,
        naming: Naming,
        *,
        vpc_id: pulumi.Input[str],
        ssh_allowed_cidrs: Sequence[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-aws:infra:SecurityGroups", naming.name("sg"), None, opts)
        self._naming = naming
        self._child = pulumi.ResourceOptions(parent=self)

        self.web = aws.ec2.SecurityGroup(
            naming.name("web"),
            vpc_id=vpc_id,
            description=f"MLflow server of {naming.prefix}: HTTPS, HTTP redirect, operator SSH",
            tags=naming.tags(naming.name("web")),
            opts=self._child,
        )
        self.db = aws.ec2.SecurityGroup(
            naming.name("db"),
            vpc_id=vpc_id,
            description=f"PostgreSQL of {naming.prefix}: only from the web server group",
            tags=naming.tags(naming.name("db")),
            opts=self._child,
        )

        self._ingress("web-https", self.web, 443, cidr=ANYWHERE_V4, why="HTTPS from anywhere")
        self._ingress("web-http", self.web, 80, cidr=ANYWHERE_V4, why="HTTP, redirects to HTTPS")
        for i, cidr in enumerate(ssh_allowed_cidrs, start=1):
            self._ingress(f"web-ssh-{i}", self.web, 22, cidr=cidr, why="SSH from operators")
        self._ingress(
            "db-postgres",
            self.db,
            POSTGRES_PORT,
            source_group=self.web,
            why="PostgreSQL from the web server group only",
        )

        self._egress("web-out-https", 443, "tcp", cidr=ANYWHERE_V4, why="packages, PyPI, S3")
        self._egress("web-out-http", 80, "tcp", cidr=ANYWHERE_V4, why="OS package mirrors")
        self._egress("web-out-ntp", 123, "udp", cidr=ANYWHERE_V4, why="NTP")
        self._egress(
            "web-out-postgres", POSTGRES_PORT, "tcp", dest_group=self.db, why="the database"
        )
        self.register_outputs({"web_id": self.web.id, "db_id": self.db.id})

    def _ingress(
        self,
        suffix: str,
        group: aws.ec2.SecurityGroup,
        port: int,
        *,
        why: str,
        cidr: str | None = None,
        source_group: aws.ec2.SecurityGroup | None = None,
    ) -> aws.vpc.SecurityGroupIngressRule:
        return aws.vpc.SecurityGroupIngressRule(
            self._naming.name(suffix),
            security_group_id=group.id,
            ip_protocol="tcp",
            from_port=port,
            to_port=port,
            cidr_ipv4=cidr,
            referenced_security_group_id=source_group.id if source_group else None,
            description=why,
            tags=self._naming.tags(self._naming.name(suffix)),
            opts=self._child,
        )

    def _egress(
        self,
        suffix: str,
        port: int,
        protocol: str,
        *,
        why: str,
        cidr: str | None = None,
        dest_group: aws.ec2.SecurityGroup | None = None,
    ) -> aws.vpc.SecurityGroupEgressRule:
        return aws.vpc.SecurityGroupEgressRule(
            self._naming.name(suffix),
            security_group_id=self.web.id,
            ip_protocol=protocol,
            from_port=port,
            to_port=port,
            cidr_ipv4=cidr,
            referenced_security_group_id=dest_group.id if dest_group else None,
            description=why,
            tags=self._naming.tags(self._naming.name(suffix)),
            opts=self._child,
        )
