"""The VPC of one environment in one region, in a workload account: created, or adopted as it is.

A created VPC spans two availability zones, the minimum an application load balancer accepts and enough for tasks
to survive the loss of one zone. Each zone gets a public subnet (load balancer, NAT gateway) and a private subnet
(Fargate tasks, which never get a public address).

Subnet layout of a created VPC with range ``/N`` (N is 16 to 24), computed by :func:`subnet_layout`::

    quarter 0   private-0 (first zone)     /N+2
    quarter 1   private-1 (second zone)    /N+2
    quarter 2   public-0  (first zone)     /N+3   first half of the quarter
                public-1  (second zone)    /N+3   second half
    quarter 3   unallocated

    10.0.0.0/16  private 10.0.0.0/18, 10.0.64.0/18     public 10.0.128.0/19, 10.0.160.0/19     free 10.0.192.0/18
    10.0.0.0/24  private 10.0.0.0/26, 10.0.0.64/26     public 10.0.0.128/27, 10.0.0.160/27     free 10.0.0.192/26

Private subnets are the big ones because every task takes an address there (awsvpc networking), and a rolling or
blue/green deployment briefly runs old and new tasks side by side. Public subnets hold only load balancer and NAT
interfaces; even from a /24 they get a /27, the smallest subnet a load balancer accepts. The last quarter is left
free so later subnets (databases, VPC endpoints) need no renumbering, which would replace every subnet.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.config import ExistingVpcConfig

NAT_MODES = ("per-az", "single")
ZONE_COUNT = 2
MIN_PREFIX, MAX_PREFIX = 16, 24
_CIDR_SHAPE = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$"


def subnet_layout(cidr: str) -> tuple[list[str], list[str]]:
    """(public, private) subnet ranges of a created VPC, one per availability zone, in zone order."""
    quarters = list(ipaddress.IPv4Network(cidr).subnets(prefixlen_diff=2))
    private = quarters[:ZONE_COUNT]
    public = list(quarters[2].subnets(prefixlen_diff=1))
    return [str(n) for n in public], [str(n) for n in private]


def pick_zones(names: list[str]) -> list[str]:
    """The first two zone names in sorted order; fails when the region offers fewer."""
    if len(names) < ZONE_COUNT:
        raise ValueError(f"the region offers {len(names)} availability zone(s) without opt-in ({names}); a load "
                         f"balancer needs {ZONE_COUNT}")
    return sorted(names)[:ZONE_COUNT]


@dataclass(frozen=True)
class NetworkArgs:
    provider: aws.Provider
    """The workload account's provider in this region. Required."""
    cidr: str = "10.0.0.0/16"
    """Range of the created VPC, /16 to /24. Default ``10.0.0.0/16``. Ignored with ``existing``."""
    nat_gateways: str = "per-az"
    """``per-az`` (default): a NAT gateway in each zone, so a zone outage does not cut the other zone's tasks off
    ECR, Secrets Manager and Logs. ``single``: one, in the first zone, for about half the NAT cost (non-production)."""
    existing: ExistingVpcConfig | None = None
    """A VPC to adopt instead: nothing is created or modified, the outputs are its ids. Default: create one."""
    name: str = ""
    """Prefix of the ``Name`` tags, e.g. ``crossdeploy-prod-prod``. Default: the component's resource name."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags on every created resource, besides the provider's default tags and ``Name``. Default: none."""

    def __post_init__(self) -> None:
        if self.nat_gateways not in NAT_MODES:
            raise ValueError(f"NetworkArgs.nat_gateways: expected one of {', '.join(NAT_MODES)}, got "
                             f"{self.nat_gateways!r}")
        if not isinstance(self.cidr, str) or not re.match(_CIDR_SHAPE, self.cidr):
            raise ValueError(f"NetworkArgs.cidr: expected an IPv4 range like 10.0.0.0/16, got {self.cidr!r}")
        try:
            network = ipaddress.IPv4Network(self.cidr, strict=False)
        except ValueError as exc:
            raise ValueError(f"NetworkArgs.cidr: {self.cidr!r} is not an IPv4 range ({exc})") from None
        if str(network) != self.cidr:
            raise ValueError(f"NetworkArgs.cidr: {self.cidr!r} has host bits set; did you mean {str(network)!r}?")
        if not MIN_PREFIX <= network.prefixlen <= MAX_PREFIX:
            raise ValueError(f"NetworkArgs.cidr: AWS accepts VPC ranges from /{MIN_PREFIX} to /{MAX_PREFIX}, and "
                             f"crossdeploy needs at least a /{MAX_PREFIX} for its four subnets; got {self.cidr!r}")
        if self.existing is not None:
            self._check_existing(self.existing)

    @staticmethod
    def _check_existing(vpc: ExistingVpcConfig) -> None:
        public, private = list(vpc.public_subnet_ids), list(vpc.private_subnet_ids)
        if len(public) < ZONE_COUNT:
            raise ValueError(f"NetworkArgs.existing.public_subnet_ids: a load balancer needs subnets in at least "
                             f"{ZONE_COUNT} availability zones, got {len(public)}: {public}")
        if not private:
            raise ValueError("NetworkArgs.existing.private_subnet_ids: at least one subnet for the tasks is required")
        for label, ids in (("public_subnet_ids", public), ("private_subnet_ids", private)):
            if len(set(ids)) != len(ids):
                raise ValueError(f"NetworkArgs.existing.{label}: duplicate subnet ids in {ids}")
        both = sorted(set(public) & set(private))
        if both:
            # A subnet routed to an internet gateway gives tasks without public addresses no way out to ECR.
            raise ValueError(f"NetworkArgs.existing: {', '.join(both)} listed as both public and private")


class Network(pulumi.ComponentResource):
    """A two-zone VPC for one environment's workloads in one region, or an adopted one.

    Outputs: ``vpc_id``, ``public_subnet_ids`` (load balancer), ``private_subnet_ids`` (tasks) and ``vpc_cidr``
    (the created VPC's range; ``None`` when adopted, since knowing it would take a lookup).
    """

    vpc_id: pulumi.Output[str]
    public_subnet_ids: list[pulumi.Input[str]]
    private_subnet_ids: list[pulumi.Input[str]]
    vpc_cidr: str | None

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:network:Network", name, None, opts)
        if args.existing is not None:
            self.vpc_id = pulumi.Output.from_input(args.existing.vpc_id)
            self.public_subnet_ids = list(args.existing.public_subnet_ids)
            self.private_subnet_ids = list(args.existing.private_subnet_ids)
            self.vpc_cidr = None
        else:
            self._create(name, args)
        self.register_outputs({
            "vpcId": self.vpc_id,
            "publicSubnetIds": self.public_subnet_ids,
            "privateSubnetIds": self.private_subnet_ids,
        })

    def _create(self, name: str, args: NetworkArgs) -> None:
        opts = pulumi.ResourceOptions(parent=self, provider=args.provider)
        prefix = args.name or name

        def tags(role: str | pulumi.Output[str]) -> dict[str, pulumi.Input[str]]:
            return {**args.tags, "Name": pulumi.Output.concat(prefix, "-", role)}

        # Zone letters differ per account and region (us-west-1 often has only b and c), so ask; the opt-in filter
        # keeps Local and Wavelength Zones out, where load balancers and NAT gateways are not all available.
        zones = aws.get_availability_zones_output(
            state="available",
            filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
            opts=pulumi.InvokeOutputOptions(provider=args.provider),
        ).names.apply(pick_zones)
        zone_names = [zones.apply(lambda z, i=i: z[i]) for i in range(ZONE_COUNT)]

        vpc = aws.ec2.Vpc(
            f"{name}-vpc", cidr_block=args.cidr,
            # Interface endpoints' private DNS names (ECR, Secrets Manager, Logs) resolve only with both enabled.
            enable_dns_support=True, enable_dns_hostnames=True,
            tags=tags("vpc"), opts=opts,
        )
        # Adopting the default group strips its allow-all-within-the-group rules: anything launched without an
        # explicit group gets no traffic at all, instead of silently sharing one open group.
        aws.ec2.DefaultSecurityGroup(
            f"{name}-default-sg", vpc_id=vpc.id, ingress=[], egress=[], tags=tags("default-unused"), opts=opts,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags("igw"), opts=opts)

        public_ranges, private_ranges = subnet_layout(args.cidr)
        public = [
            aws.ec2.Subnet(
                f"{name}-public-{i}", vpc_id=vpc.id, cidr_block=cidr, availability_zone=zone_names[i],
                # The load balancer gets its addresses regardless; nothing else here should be reachable directly.
                map_public_ip_on_launch=False,
                tags=tags(pulumi.Output.concat("public-", zone_names[i])), opts=opts,
            )
            for i, cidr in enumerate(public_ranges)
        ]
        private = [
            aws.ec2.Subnet(
                f"{name}-private-{i}", vpc_id=vpc.id, cidr_block=cidr, availability_zone=zone_names[i],
                map_public_ip_on_launch=False,
                tags=tags(pulumi.Output.concat("private-", zone_names[i])), opts=opts,
            )
            for i, cidr in enumerate(private_ranges)
        ]

        public_routes = aws.ec2.RouteTable(
            f"{name}-public-rt", vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags=tags("public"), opts=opts,
        )
        for i, subnet in enumerate(public):
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}-rta", subnet_id=subnet.id, route_table_id=public_routes.id, opts=opts,
            )

        # Each NAT gateway costs an hourly fee plus per-GB processing; per-az doubles the fee but keeps each zone's
        # way out inside that zone, so losing one zone cannot strand the tasks of the other.
        nat_count = ZONE_COUNT if args.nat_gateways == "per-az" else 1
        # A NAT gateway only forwards once the VPC's internet gateway is attached.
        nat_opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[igw]))
        nats = []
        for i in range(nat_count):
            eip = aws.ec2.Eip(f"{name}-nat-{i}-eip", domain="vpc", tags=tags(f"nat-{i}"), opts=opts)
            nats.append(aws.ec2.NatGateway(
                f"{name}-nat-{i}", allocation_id=eip.allocation_id, subnet_id=public[i].id,
                connectivity_type="public", tags=tags(f"nat-{i}"), opts=nat_opts,
            ))

        # One private route table per zone even with a single NAT gateway: switching to per-az later only changes
        # routes, never subnet associations.
        for i, subnet in enumerate(private):
            nat = nats[i] if args.nat_gateways == "per-az" else nats[0]
            routes = aws.ec2.RouteTable(
                f"{name}-private-{i}-rt", vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)],
                tags=tags(f"private-{i}"), opts=opts,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}-rta", subnet_id=subnet.id, route_table_id=routes.id, opts=opts,
            )

        self.vpc_id = vpc.id
        self.public_subnet_ids = [s.id for s in public]
        self.private_subnet_ids = [s.id for s in private]
        self.vpc_cidr = args.cidr
