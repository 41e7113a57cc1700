"""Network: a VPC over two availability zones, public subnets for the server, private for the DB."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from infra.naming import Naming
from infra.settings import SettingsError

AZ_COUNT = 2  # RDS needs a subnet group spanning at least two AZs


def choose_azs(region: str, instance_type: str, host_zones: int = 1) -> list[str]:
    """Pick AZ_COUNT zones of the region; the first `host_zones` of them offer the instance type.

    Hosts go into the first zone (one host) or round-robin over all of them (several hosts),
    so those zones must offer the type. Looked up, never hard-coded. Local Zones and
    Wavelength Zones (opt-in) are left out.
    """
    zones = aws.get_availability_zones(
        state="available",
        filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
    )
    offered = set(
        aws.ec2.get_instance_type_offerings(
            location_type="availability-zone",
            filters=[{"name": "instance-type", "values": [instance_type]}],
        ).locations
    )
    names = sorted(zones.names)
    # Zones offering the instance type first, so the hosts can go into the first zones.
    ordered = [z for z in names if z in offered] + [z for z in names if z not in offered]
    if len(ordered) < AZ_COUNT:
        raise SettingsError(
            f"aws:region {region!r} has {len(ordered)} available zone(s); "
            f"the program needs {AZ_COUNT}"
        )
    if ordered[0] not in offered:
        raise SettingsError(
            f"instanceType {instance_type!r} is not offered in any zone of aws:region {region!r}; "
            f"choose another type"
        )
    azs = ordered[:AZ_COUNT]
    if not set(azs[:host_zones]) <= offered:
        raise SettingsError(
            f"instanceType {instance_type!r} is offered in only one zone of aws:region "
            f"{region!r}; instances above 1 spread the servers over {AZ_COUNT} zones: choose "
            f"another type"
        )
    return azs


def plan_subnets(vpc_cidr: str, count: int) -> tuple[list[str], list[str]]:
    """Public CIDRs from the bottom of the VPC range, private ones from the middle.

    /16 -> /24 subnets (10.0.0.0/24, 10.0.1.0/24 public; 10.0.128.0/24, ... private);
    a /24 VPC gets /26 subnets. Leaves room to add zones later without renumbering.
    """
    net = ipaddress.IPv4Network(vpc_cidr)
    subnets = list(net.subnets(new_prefix=min(net.prefixlen + 8, 26)))
    half = len(subnets) // 2
    if count > half:
        raise ValueError(f"{vpc_cidr} has room for {half} subnet pairs, not {count}")
    return [str(s) for s in subnets[:count]], [str(s) for s in subnets[half : half + count]]


class Network(pulumi.ComponentResource):
    """VPC, internet gateway, route tables and subnets."""

    vpc: aws.ec2.Vpc
    internet_gateway: aws.ec2.InternetGateway
    public_subnets: list[aws.ec2.Subnet]
    private_subnets: list[aws.ec2.Subnet]

    def __init__(
        self,
        naming: Naming,
        *,
        cidr: str,
        azs: Sequence[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        name = naming.name("net")
        super().__init__("mlflow-aws:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        self.vpc = aws.ec2.Vpc(
            naming.name("vpc"),
            cidr_block=cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,  # the Elastic IP gets a public DNS name
            tags=naming.tags(naming.name("vpc")),
            opts=child,
        )
        # Adopt the VPC's default security group and strip its rules (FSBP EC2.2):
        # nothing can accidentally be placed in an open group.
        aws.ec2.DefaultSecurityGroup(
            naming.name("default-sg"),
            vpc_id=self.vpc.id,
            ingress=[],
            egress=[],
            tags=naming.tags(naming.name("default-sg-unused")),
            opts=child,
        )
        self.internet_gateway = aws.ec2.InternetGateway(
            naming.name("igw"),
            vpc_id=self.vpc.id,
            tags=naming.tags(naming.name("igw")),
            opts=child,
        )

        public_rt = aws.ec2.RouteTable(
            naming.name("public-rt"),
            vpc_id=self.vpc.id,
            tags=naming.tags(naming.name("public-rt")),
            opts=child,
        )
        aws.ec2.Route(
            naming.name("public-default-route"),
            route_table_id=public_rt.id,
            destination_cidr_block="0.0.0.0/0",
            gateway_id=self.internet_gateway.id,
            opts=child,
        )
        # Private subnets get their own table with only the implicit local route:
        # the database has no path to or from the internet.
        private_rt = aws.ec2.RouteTable(
            naming.name("private-rt"),
            vpc_id=self.vpc.id,
            tags=naming.tags(naming.name("private-rt")),
            opts=child,
        )

        public_cidrs, private_cidrs = plan_subnets(cidr, len(azs))
        self.public_subnets = [
            self._subnet(naming, f"public-{i + 1}", az, block, public_rt, child)
            for i, (az, block) in enumerate(zip(azs, public_cidrs, strict=True))
        ]
        self.private_subnets = [
            self._subnet(naming, f"private-{i + 1}", az, block, private_rt, child)
            for i, (az, block) in enumerate(zip(azs, private_cidrs, strict=True))
        ]
        self.register_outputs({"vpc_id": self.vpc.id})

    def _subnet(
        self,
        naming: Naming,
        suffix: str,
        az: str,
        cidr: str,
        route_table: aws.ec2.RouteTable,
        opts: pulumi.ResourceOptions,
    ) -> aws.ec2.Subnet:
        subnet = aws.ec2.Subnet(
            naming.name(suffix),
            vpc_id=self.vpc.id,
            availability_zone=az,
            cidr_block=cidr,
            # No automatic public IPs (FSBP EC2.15): the server gets an Elastic IP instead.
            map_public_ip_on_launch=False,
            tags=naming.tags(naming.name(suffix)),
            opts=opts,
        )
        aws.ec2.RouteTableAssociation(
            naming.name(f"{suffix}-rta"),
            subnet_id=subnet.id,
            route_table_id=route_table.id,
            opts=opts,
        )
        return subnet
