"""Security groups: the web servers', the database's and the load balancer's; nothing else.

Inbound
- web, one host: 443 and 80 (80 only redirects to HTTPS) from anywhere.
- web, several hosts: 443 only from the load balancer's group (a group reference, not a CIDR);
  the load balancer answers port 80 itself with a redirect and never forwards it.
- web, always: 22 only from the operator CIDRs.
- lb (several hosts only): 443 and 80 from anywhere.
- db: 5432 only from the web group (a group reference, not a CIDR).

Outbound (AWS's default allow-all egress rule is removed when the group is created)
- web: 443 and 80 (OS packages, PyPI, S3 and other AWS APIs: there is no NAT or VPC endpoint,
  so these go over the internet gateway), 123/udp (NTP when the OS uses public pools), and
  5432 to the db group. DNS, the instance metadata service and the Amazon Time Sync service
  are link-local and not filtered by security groups.
- db: none. RDS needs no outbound connection; replies to allowed inbound traffic pass
  because security groups are stateful.
- lb: 443 to the web group only (the targets' port and their health checks).

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
    """The web and database security groups (and the load balancer's) and all their rules."""

    web: aws.ec2.SecurityGroup
    db: aws.ec2.SecurityGroup
    lb: aws.ec2.SecurityGroup | None  # only with a load balancer

    def __init__(
        self,
        naming: Naming,
        *,
        vpc_id: pulumi.Input[str],
        ssh_allowed_cidrs: Sequence[str],
        load_balancer: bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-aws:infra:SecurityGroups", naming.name("sg"), None, opts)
        self._naming = naming
        self._child = pulumi.ResourceOptions(parent=self)

        # A group's description cannot change without replacing the group: the same text in
        # both shapes, so scaling out or in never replaces it (the rules say what is allowed).
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

        self.lb = None
        if load_balancer:
            self.lb = self._load_balancer_group(vpc_id)
        else:
            self._ingress("web-https", self.web, 443, cidr=ANYWHERE_V4, why="HTTPS from anywhere")
            self._ingress(
                "web-http", self.web, 80, cidr=ANYWHERE_V4, why="HTTP, redirects to HTTPS"
            )
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

    def _load_balancer_group(self, vpc_id: pulumi.Input[str]) -> aws.ec2.SecurityGroup:
        """The load balancer's group: the world reaches it, and only it reaches the servers."""
        naming = self._naming
        lb = aws.ec2.SecurityGroup(
            naming.name("lb"),
            vpc_id=vpc_id,
            description=f"Load balancer of {naming.prefix}: HTTPS and HTTP redirect from anywhere",
            tags=naming.tags(naming.name("lb")),
            opts=self._child,
        )
        self._ingress("lb-https", lb, 443, cidr=ANYWHERE_V4, why="HTTPS from anywhere")
        self._ingress("lb-http", lb, 80, cidr=ANYWHERE_V4, why="HTTP, redirected to HTTPS")
        self._egress(
            "lb-out-https",
            443,
            "tcp",
            group=lb,
            dest_group=self.web,
            why="requests and health checks to the servers",
        )
        self._ingress(
            "web-https-from-lb",
            self.web,
            443,
            source_group=lb,
            why="HTTPS from the load balancer only",
        )
        return lb

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
        group: aws.ec2.SecurityGroup | None = None,
    ) -> aws.vpc.SecurityGroupEgressRule:
        return aws.vpc.SecurityGroupEgressRule(
            self._naming.name(suffix),
            security_group_id=(group or self.web).id,
            ip_protocol=protocol,
            from_port=port,
            to_port=port,
            cidr_ipv4=cidr,
            referenced_security_group_id=dest_group.id if dest_group else None,
            description=why,
            tags=self._naming.tags(self._naming.name(suffix)),
            opts=self._child,
        )
