"""The network: zones looked up, public and private subnets, routes."""

from __future__ import annotations

import ipaddress

import pulumi
import pytest
from infra_mocks import ZONES, Resources, after_registration, fresh_stack

from infra.network import plan_subnets

SUBNET = "aws:ec2/subnet:Subnet"


@pulumi.runtime.test
def test_two_zones_taken_from_the_region():
    def check(res: Resources) -> None:
        (call,) = res.calls_to("aws:index/getAvailabilityZones:getAvailabilityZones")
        assert call.args["state"] == "available"
        zones = sorted({s.inputs["availabilityZone"] for s in res.of_type(SUBNET)})
        assert zones == ZONES[:2]

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_vpc_cidr_and_subnets_inside_it():
    def check(res: Resources) -> None:
        vpc = res.one("aws:ec2/vpc:Vpc").inputs
        assert vpc["cidrBlock"] == "172.20.0.0/20"
        assert vpc["enableDnsHostnames"] is True
        net = ipaddress.ip_network("172.20.0.0/20")
        blocks = [ipaddress.ip_network(s.inputs["cidrBlock"]) for s in res.of_type(SUBNET)]
        assert len(blocks) == 4
        assert all(b.subnet_of(net) for b in blocks)
        assert not any(a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1 :])

    return after_registration(fresh_stack(vpcCidr="172.20.0.0/20"), check)


@pulumi.runtime.test
def test_public_subnets_route_to_internet_gateway():
    def check(res: Resources) -> None:
        vpc = res.one("aws:ec2/vpc:Vpc")
        igw = res.one("aws:ec2/internetGateway:InternetGateway")
        assert igw.inputs["vpcId"] == vpc.id
        (route,) = res.of_type("aws:ec2/route:Route")
        assert route.inputs["destinationCidrBlock"] == "0.0.0.0/0"
        assert route.inputs["gatewayId"] == igw.id
        public = [s for s in res.of_type(SUBNET) if "-public-" in s.name]
        assert len(public) == 2
        associations = {
            a.inputs["subnetId"]: a.inputs["routeTableId"]
            for a in res.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")
        }
        assert len(associations) == 4, "every subnet has an explicit route table"
        assert {associations[s.id] for s in public} == {route.inputs["routeTableId"]}

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_no_public_ip_on_launch_fsbp_ec2_15():
    def check(res: Resources) -> None:
        assert all(s.inputs["mapPublicIpOnLaunch"] is False for s in res.of_type(SUBNET))

    return after_registration(fresh_stack(), check)


@pytest.mark.parametrize(
    ("vpc", "public", "private"),
    [
        ("10.0.0.0/16", ["10.0.0.0/24", "10.0.1.0/24"], ["10.0.128.0/24", "10.0.129.0/24"]),
        ("192.168.0.0/24", ["192.168.0.0/26", "192.168.0.64/26"],
         ["192.168.0.128/26", "192.168.0.192/26"]),
    ],
)  # fmt: skip
def test_subnet_plan(vpc, public, private):
    assert plan_subnets(vpc, 2) == (public, private)
