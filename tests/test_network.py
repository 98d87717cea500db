"""The VPC of one environment and region (components/network.py), run for real under the offline mocks."""

from __future__ import annotations

import ipaddress
from itertools import combinations
from pathlib import Path

import pytest

from components.config import ExistingVpcConfig
from components.network import NetworkArgs
from offline import mocks
from offline.mocks import ProgramRun, Recorded, run_program

PROGRAM = Path(__file__).resolve().parent / "programs" / "network_program.py"
ACCOUNT = "444455556666"
REGION = "eu-west-1"
SUBNET = "aws:ec2/subnet:Subnet"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"
NAT = "aws:ec2/natGateway:NatGateway"
EIP = "aws:ec2/eip:Eip"
VPC = "aws:ec2/vpc:Vpc"
IGW = "aws:ec2/internetGateway:InternetGateway"
DEFAULT_SG = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"
EXISTING = {"vpcId": "vpc-0a1b2c3d4e5f60718", "publicSubnetIds": ["subnet-0aaa1111", "subnet-0bbb2222"],
            "privateSubnetIds": ["subnet-0ccc3333", "subnet-0ddd4444", "subnet-0eee5555"]}


def network(region: str = REGION, **values: object) -> ProgramRun:
    # aws:region differs from the provider's region, so anything falling back to it shows up.
    config = {"aws:region": "us-east-1", "crossdeploy:account": ACCOUNT, "crossdeploy:region": region,
              **{f"crossdeploy:{key}": value for key, value in values.items()}}
    return run_program(config, stack="test", program=PROGRAM)


@pytest.fixture(scope="module")
def per_az() -> ProgramRun:
    return network(cidr="10.20.0.0/16", name="crossdeploy-prod-prod", tags={"team": "platform"})


@pytest.fixture(scope="module")
def single() -> ProgramRun:
    return network(cidr="172.16.8.0/24", natGateways="single")


@pytest.fixture(scope="module")
def existing() -> ProgramRun:
    return network(existing=EXISTING)


def by_id(run: ProgramRun, type_: str, resource_id: str) -> Recorded:
    """The resource of a type whose id (as another resource's input references it) is ``resource_id``."""
    found = [r for r in run.of_type(type_) if r.outputs["id"] == resource_id]
    assert len(found) == 1, f"{len(found)} {type_} with id {resource_id}"
    return found[0]


def subnet_id(subnet: Recorded) -> str:
    return subnet.outputs["id"]


def default_route(run: ProgramRun, subnet: Recorded) -> dict:
    """The 0.0.0.0/0 route of the route table explicitly associated with a subnet."""
    [association] = [a for a in run.of_type(ASSOCIATION) if a.inputs["subnetId"] == subnet_id(subnet)]
    table = by_id(run, ROUTE_TABLE, association.inputs["routeTableId"])
    [route] = [r for r in table.inputs["routes"] if r["cidrBlock"] == "0.0.0.0/0"]
    return route


def split(run: ProgramRun) -> tuple[list[Recorded], list[Recorded]]:
    """(public, private) subnets, told apart by where their default route goes, not by their names."""
    igw_id = run.of_type(IGW)[0].outputs["id"]
    subnets = run.of_type(SUBNET)
    public = [s for s in subnets if default_route(run, s).get("gatewayId") == igw_id]
    private = [s for s in subnets if default_route(run, s).get("natGatewayId")]
    assert len(public) + len(private) == len(subnets)
    return public, private


def test_two_zones_from_the_lookup_in_the_providers_region(per_az) -> None:
    public, private = split(per_az)
    assert len(public) == len(private) == 2
    assert {s.inputs["availabilityZone"] for s in public} == {"eu-west-1a", "eu-west-1b"}
    assert {s.inputs["availabilityZone"] for s in private} == {"eu-west-1a", "eu-west-1b"}
    [invoke] = per_az.invokes
    assert invoke.token == "aws:index/getAvailabilityZones:getAvailabilityZones"
    assert (invoke.account, invoke.region) == (ACCOUNT, REGION)
    assert invoke.args["state"] == "available"
    assert invoke.args["filters"] == [{"name": "opt-in-status", "values": ["opt-in-not-required"]}]


def test_zone_letters_are_never_assumed(monkeypatch) -> None:
    # Listed out of order and without "a", as an account in us-west-1 may see them.
    monkeypatch.setitem(mocks.AVAILABILITY_ZONE_LETTERS, "us-west-1", "dcb")
    run = network("us-west-1")
    public, private = split(run)
    assert sorted(s.inputs["availabilityZone"] for s in public) == ["us-west-1b", "us-west-1c"]
    assert sorted(s.inputs["availabilityZone"] for s in private) == ["us-west-1b", "us-west-1c"]


def test_a_region_with_one_zone_fails_clearly(monkeypatch) -> None:
    monkeypatch.setitem(mocks.AVAILABILITY_ZONE_LETTERS, "eu-west-3", "a")
    with pytest.raises(ValueError, match=r"1 availability zone.*needs 2"):
        network("eu-west-3")


@pytest.mark.parametrize("run_name", ["per_az", "single"])
def test_subnets_lie_inside_the_vpc_without_overlapping(run_name, request) -> None:
    run: ProgramRun = request.getfixturevalue(run_name)
    [vpc] = run.of_type(VPC)
    vpc_range = ipaddress.ip_network(vpc.inputs["cidrBlock"])
    assert str(vpc_range) == {"per_az": "10.20.0.0/16", "single": "172.16.8.0/24"}[run_name]
    assert run.outputs["vpcCidr"] == str(vpc_range)
    public, private = split(run)
    ranges = {s.name: ipaddress.ip_network(s.inputs["cidrBlock"]) for s in public + private}
    assert all(r.subnet_of(vpc_range) for r in ranges.values())
    assert not [(a, b) for a, b in combinations(ranges, 2) if ranges[a].overlaps(ranges[b])]
    assert all(s.inputs["vpcId"] == vpc.outputs["id"] for s in public + private)
    # Tasks live in the private subnets: each is bigger than any public one.
    assert min(ranges[s.name].num_addresses for s in private) > max(ranges[s.name].num_addresses for s in public)
    # A load balancer needs at least a /27 in each of its subnets (ELB user guide).
    assert all(ranges[s.name].prefixlen <= 27 for s in public)
    # One public and one private subnet per zone.
    zones = {s.inputs["availabilityZone"] for s in public}
    assert len(zones) == 2 and zones == {s.inputs["availabilityZone"] for s in private}


def test_documented_layout_of_a_slash_16(per_az) -> None:
    public, private = split(per_az)
    assert sorted(s.inputs["cidrBlock"] for s in private) == ["10.20.0.0/18", "10.20.64.0/18"]
    assert sorted(s.inputs["cidrBlock"] for s in public) == ["10.20.128.0/19", "10.20.160.0/19"]


def test_outputs_name_the_public_and_private_subnets(per_az) -> None:
    public, private = split(per_az)
    assert sorted(per_az.outputs["publicSubnetIds"]) == sorted(subnet_id(s) for s in public)
    assert sorted(per_az.outputs["privateSubnetIds"]) == sorted(subnet_id(s) for s in private)
    [vpc] = per_az.of_type(VPC)
    assert per_az.outputs["vpcId"] == vpc.outputs["id"]


def test_public_subnets_route_to_the_vpcs_internet_gateway(per_az) -> None:
    [vpc], [igw] = per_az.of_type(VPC), per_az.of_type(IGW)
    assert igw.inputs["vpcId"] == vpc.outputs["id"]
    public, private = split(per_az)
    assert all("natGatewayId" not in default_route(per_az, s) for s in public)
    assert all("gatewayId" not in default_route(per_az, s) for s in private)


def test_per_az_gives_each_zone_its_own_nat_gateway(per_az) -> None:
    nats, eips = per_az.of_type(NAT), per_az.of_type(EIP)
    assert len(nats) == len(eips) == 2
    assert sorted(n.inputs["allocationId"] for n in nats) == sorted(e.outputs["allocationId"] for e in eips)
    assert all(e.inputs["domain"] == "vpc" for e in eips)
    public, private = split(per_az)
    public_by_id = {subnet_id(s): s for s in public}
    nat_zones = set()
    for subnet in private:
        nat = by_id(per_az, NAT, default_route(per_az, subnet)["natGatewayId"])
        # The NAT gateway sits in a public subnet of the same zone as the tasks that use it.
        assert public_by_id[nat.inputs["subnetId"]].inputs["availabilityZone"] == subnet.inputs["availabilityZone"]
        nat_zones.add(subnet.inputs["availabilityZone"])
    assert len(nat_zones) == 2


def test_nat_gateways_wait_for_the_internet_gateway(per_az, single) -> None:
    # Not through any input: only an explicit dependency orders them after the gateway's attachment.
    for run in (per_az, single):
        [igw] = run.of_type(IGW)
        assert all(any(urn.endswith(f"::{igw.name}") for urn in n.dependencies) for n in run.of_type(NAT))


def test_single_nat_gateway_serves_both_private_route_tables(single) -> None:
    nats, eips = single.of_type(NAT), single.of_type(EIP)
    assert len(nats) == len(eips) == 1
    assert nats[0].inputs["allocationId"] == eips[0].outputs["allocationId"]
    public, private = split(single)
    assert nats[0].inputs["subnetId"] in {subnet_id(s) for s in public}
    nat_id = nats[0].outputs["id"]
    assert [default_route(single, s)["natGatewayId"] for s in private] == [nat_id, nat_id]
    # Still one route table per private subnet, so moving to per-az only changes routes.
    tables = {a.inputs["routeTableId"] for a in single.of_type(ASSOCIATION)
              if a.inputs["subnetId"] in {subnet_id(s) for s in private}}
    assert len(tables) == 2


def test_existing_vpc_is_adopted_without_creating_anything(existing) -> None:
    assert [r for r in existing.custom() if r.service == "ec2"] == []
    assert existing.custom() == []
    assert existing.invokes == []  # nothing to look up either
    assert existing.outputs == {"vpcId": EXISTING["vpcId"], "publicSubnetIds": EXISTING["publicSubnetIds"],
                                "privateSubnetIds": EXISTING["privateSubnetIds"], "vpcCidr": None}


def test_everything_lands_on_the_workload_provider(per_az, single) -> None:
    # VPC, default group, gateway, 4 subnets, 3 route tables, 4 associations, and 2 or 1 NAT gateways with EIPs.
    for run, count in ((per_az, 18), (single, 16)):
        [provider] = run.of_type("pulumi:providers:aws")
        assert (provider.account, provider.region) == (ACCOUNT, REGION)
        resources = run.custom()
        assert len(resources) == count
        for r in resources:
            assert (r.provider, r.account, r.region) == (f"{provider.name}-id", ACCOUNT, REGION), r.name
            assert r.outputs.get("arn", "").startswith(f"arn:aws:ec2:{REGION}:{ACCOUNT}:") or r.type == ASSOCIATION
        [component] = [r for r in run.resources if r.type == "crossdeploy:network:Network"]
        assert all((r.parent or "").endswith(f"${component.type}::{component.name}")
                   for r in resources), "every resource is a child of the component"


def test_the_default_security_group_is_taken_over_with_no_rules(per_az) -> None:
    [vpc], [group] = per_az.of_type(VPC), per_az.of_type(DEFAULT_SG)
    assert group.inputs["vpcId"] == vpc.outputs["id"]
    # Explicitly empty (an omitted block would leave rules added later unmanaged).
    assert group.inputs["ingress"] == [] and group.inputs["egress"] == []
    assert group.outputs["id"] == vpc.outputs["defaultSecurityGroupId"]


def test_no_subnet_hands_out_public_addresses_and_dns_is_on(per_az, single) -> None:
    for run in (per_az, single):
        assert all(s.inputs["mapPublicIpOnLaunch"] is False for s in run.of_type(SUBNET))
        [vpc] = run.of_type(VPC)
        assert vpc.inputs["enableDnsSupport"] is True and vpc.inputs["enableDnsHostnames"] is True


def test_tags_name_every_taggable_resource(per_az, single) -> None:
    taggable = [r for r in per_az.custom() if r.type != ASSOCIATION]
    assert all(r.inputs["tags"]["team"] == "platform" for r in taggable)
    assert all(r.inputs["tags"]["Name"].startswith("crossdeploy-prod-prod-") for r in taggable)
    names = [r.inputs["tags"]["Name"] for r in taggable if r.type == SUBNET]
    assert len(set(names)) == len(names)
    # Without a prefix, the component's resource name stands in.
    assert all(r.inputs["tags"]["Name"].startswith("net-") for r in single.custom() if r.type != ASSOCIATION)


def test_invalid_config_stops_the_program_before_anything_is_registered() -> None:
    with pytest.raises(ValueError, match="nat_gateways"):
        network(natGateways="per-region")


def _existing(public: list[str], private: list[str]) -> ExistingVpcConfig:
    # model_construct skips the config model's own checks: NetworkArgs must not rely on them.
    return ExistingVpcConfig.model_construct(vpc_id="vpc-0a1b2c3d", public_subnet_ids=public,
                                             private_subnet_ids=private)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cidr": "10.0.0.0/8"}, r"cidr: .*/16 to /24.*'10\.0\.0\.0/8'"),
    ({"cidr": "10.0.0.0/25"}, r"cidr: .*/16 to /24"),
    ({"cidr": "10.0.3.0/16"}, r"host bits set; did you mean '10\.0\.0\.0/16'"),
    ({"cidr": "10.0.0/16"}, r"cidr: expected an IPv4 range"),
    ({"cidr": "300.0.0.0/16"}, r"not an IPv4 range"),
    ({"cidr": "fd00::/56"}, r"cidr: expected an IPv4 range"),
    ({"cidr": 16}, r"cidr: expected an IPv4 range"),
    ({"nat_gateways": "none"}, r"nat_gateways: expected one of per-az, single, got 'none'"),
    ({"existing": _existing(["subnet-0aaa1111"], ["subnet-0ccc3333"])}, r"public_subnet_ids: .*at least 2.*got 1"),
    ({"existing": _existing(["subnet-0aaa1111", "subnet-0bbb2222"], [])}, r"private_subnet_ids: at least one"),
    ({"existing": _existing(["subnet-0aaa1111", "subnet-0aaa1111"], ["subnet-0ccc3333"])},
     r"public_subnet_ids: duplicate"),
    ({"existing": _existing(["subnet-0aaa1111", "subnet-0bbb2222"], ["subnet-0bbb2222"])},
     r"subnet-0bbb2222 listed as both public and private"),
])
def test_network_args_reject_bad_values(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        NetworkArgs(provider=None, **kwargs)


@pytest.mark.parametrize("cidr", ["10.0.0.0/16", "192.168.4.0/24", "172.31.128.0/20"])
def test_network_args_accept_the_supported_range_sizes(cidr) -> None:
    assert NetworkArgs(provider=None, cidr=cidr).cidr == cidr
    NetworkArgs(provider=None, existing=_existing(["subnet-0aaa1111", "subnet-0bbb2222"], ["subnet-0ccc3333"]))
