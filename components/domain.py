"""Domains: the name users reach an environment's services by (``environments[].domain``).

Two components, because the load balancers sit between them: the HTTPS listeners need the certificates, the records
need the load balancers.

:class:`DomainCertificates` (one per environment with a domain, before its workloads)
    per region without a ``certificateArns`` entry: an ACM certificate (``validation_method="DNS"``) for the domain
    and every exact host under it that a service routes on (:func:`components.config.domain_hosts`), and an
    ``aws.acm.CertificateValidation`` that waits until ACM has issued it. Its ``certificate_arn`` output is what the
    HTTPS listener gets (:func:`listener_certificate_arn`), so the listener is created only once the certificate is
    issued. Where ``certificateArns`` names a certificate for the region, that one wins: no ACM request there.

    The validation records: ACM asks for one CNAME per name, and the CNAME depends on the account and the name only,
    not on the region, so every region's certificate in the account is validated by the same record. It is created
    once, from the first region's certificate, and every region's ``CertificateValidation`` names it
    (``validation_record_fqdns``). Should ACM ever ask a region for another record, that validation fails at once
    (the provider checks each name it must validate is among the records named) instead of waiting for a record
    nobody creates.

:class:`DomainRecords` (one per environment with a domain, after its workloads)
    alias records for each name to the load balancers: one region, a plain alias record; several regions, one
    latency-based alias record per region (``set_identifier`` = the region), so Route 53 answers with the region
    nearest the client. ``evaluate_target_health`` is on in both cases: a load balancer with no healthy targets
    drops out, and Route 53 answers with the next-nearest region. A records only: the load balancers are IPv4
    (:data:`components.workload.ALB_IP_ADDRESS_TYPE`); a dual-stack load balancer would get AAAA records as well.

Route 53 is global: the records go through the provider of the environment's first region, in its account, where the
hosted zone must be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.config import HOSTED_ZONE_PREFIX, EnvironmentConfig, StackConfig, domain_hosts, domain_name_problem
from components.providers import Providers
from components.workload import ALB_IP_ADDRESS_TYPE, Workload

VALIDATION_RECORD_TTL = 300  # seconds; ACM only needs the record to exist, nobody else resolves it
IP_ADDRESS_TYPES = ("ipv4", "dualstack")


@dataclass(frozen=True)
class DomainCertificatesArgs:
    names: tuple[str, ...]
    """The certificate's names: the domain first (the certificate's subject), then the hosts under it."""
    hosted_zone_id: str
    """The public hosted zone the validation records go in (``Z...``), in the account of the providers."""
    providers: Mapping[str, aws.Provider]
    """Region -> the environment account's provider there, in the environment's region order. Every region gets a
    certificate unless it is in ``given_arns``."""
    dns_provider: aws.Provider
    """The provider the validation records go through (Route 53 is global): the first region's."""
    given_arns: Mapping[str, str] | None = None
    """Region -> a certificate ARN the environment gives (``certificateArns``): used as it is, nothing requested
    there. Default: none."""

    def __post_init__(self) -> None:
        problems = []
        if not self.names:
            problems.append("names: at least the domain name")
        for name in self.names:
            problem = domain_name_problem(name)
            if problem:
                problems.append(f"names: {name!r}: {problem}")
        if len(set(self.names)) != len(self.names):
            problems.append(f"names: must be unique, got {list(self.names)}")
        if self.hosted_zone_id.startswith(HOSTED_ZONE_PREFIX) or not self.hosted_zone_id.startswith("Z"):
            problems.append(f"hosted_zone_id: a zone id (Z...), got {self.hosted_zone_id!r}")
        if not self.providers:
            problems.append("providers: at least one region")
        for region in self.given_arns or {}:
            if region not in self.providers:
                problems.append(f"given_arns: {region} is not one of the regions ({', '.join(self.providers)})")
        if problems:
            raise ValueError("DomainCertificatesArgs: " + "; ".join(problems))

    @property
    def requested_regions(self) -> tuple[str, ...]:
        """The regions where ACM issues a certificate: every region without a given one."""
        return tuple(r for r in self.providers if r not in (self.given_arns or {}))


class DomainCertificates(pulumi.ComponentResource):
    """Per region the certificate the HTTPS listener uses: validated through DNS, or given.

    ``certificate_arns``: region -> the ARN for the listener (a ``CertificateValidation``'s ``certificate_arn``,
    known once the certificate is issued, or the given ARN). ``validation_records``: the CNAME records, one per name.
    """

    def __init__(self, name: str, args: DomainCertificatesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:domain:DomainCertificates", name, None, opts)
        given = dict(args.given_arns or {})
        self.certificate_arns: dict[str, pulumi.Input[str]] = {}
        self.validation_records: list[aws.route53.Record] = []
        certificates = {
            region: aws.acm.Certificate(
                f"{name}-{region}-certificate", domain_name=args.names[0],
                subject_alternative_names=list(args.names[1:]) or None, validation_method="DNS",
                opts=pulumi.ResourceOptions(parent=self, provider=args.providers[region]))
            for region in args.requested_regions
        }
        if certificates:
            first = certificates[args.requested_regions[0]]
            dns = pulumi.ResourceOptions(
                parent=self, provider=args.dns_provider,
                # The record is the same for every ACM certificate of this name in the account, including ones
                # crossdeploy does not own (a certificateArns entry validated by hand): an existing record is taken
                # over rather than refused (allow_overwrite, same value), and left in place when the stack no longer
                # needs it (retain_on_delete), so those certificates keep renewing.
                retain_on_delete=True)
            for i, host in enumerate(args.names):
                option = first.domain_validation_options.apply(lambda options, host=host: _option_for(options, host))
                self.validation_records.append(aws.route53.Record(
                    f"{name}-validation-{i}", zone_id=args.hosted_zone_id,
                    name=option.apply(lambda o: o.resource_record_name),
                    type=option.apply(lambda o: o.resource_record_type),
                    records=[option.apply(lambda o: o.resource_record_value)],
                    ttl=VALIDATION_RECORD_TTL, allow_overwrite=True, opts=dns))
        fqdns = [record.fqdn for record in self.validation_records]
        for region in args.providers:
            if region in given:
                self.certificate_arns[region] = given[region]
                continue
            validation = aws.acm.CertificateValidation(
                f"{name}-{region}-validation", certificate_arn=certificates[region].arn,
                validation_record_fqdns=fqdns,
                opts=pulumi.ResourceOptions(parent=self, provider=args.providers[region]))
            self.certificate_arns[region] = validation.certificate_arn
        self.register_outputs({"certificateArns": self.certificate_arns})


def _option_for(options: list, host: str) -> aws.acm.outputs.CertificateDomainValidationOption:
    found = [o for o in options or [] if o.domain_name == host]
    if len(found) != 1:
        raise ValueError(f"ACM reported {len(found)} DNS validation options for {host}")
    return found[0]


@dataclass(frozen=True)
class LoadBalancerTarget:
    """What a record needs of one region's load balancer."""

    dns_name: pulumi.Input[str]
    zone_id: pulumi.Input[str]
    """The load balancer's canonical hosted zone (ELB's per region, not the domain's)."""
    ip_address_type: str = "ipv4"
    """``ipv4`` or ``dualstack``: a dual-stack load balancer also gets AAAA records."""


@dataclass(frozen=True)
class DomainRecordsArgs:
    names: tuple[str, ...]
    """The names that get records: the domain and the hosts under it (the certificate's names)."""
    hosted_zone_id: str
    provider: aws.Provider
    """The environment account's provider the records go through (Route 53 is global): the first region's."""
    load_balancers: Mapping[str, LoadBalancerTarget]
    """Region -> its load balancer, in the environment's region order. One region: plain alias records; several:
    latency-based ones."""

    def __post_init__(self) -> None:
        problems = []
        if not self.names:
            problems.append("names: at least the domain name")
        if not self.load_balancers:
            problems.append("load_balancers: at least one region")
        for region, target in self.load_balancers.items():
            if target.ip_address_type not in IP_ADDRESS_TYPES:
                problems.append(f"load_balancers.{region}.ip_address_type: one of {', '.join(IP_ADDRESS_TYPES)}, "
                                f"got {target.ip_address_type!r}")
        if problems:
            raise ValueError("DomainRecordsArgs: " + "; ".join(problems))

    @property
    def latency(self) -> bool:
        return len(self.load_balancers) > 1


def record_types(ip_address_type: str) -> tuple[str, ...]:
    """The alias record types a load balancer can answer: an AAAA alias to an IPv4-only one resolves to nothing."""
    return ("A", "AAAA") if ip_address_type == "dualstack" else ("A",)


class DomainRecords(pulumi.ComponentResource):
    """Alias records from the domain (and the hosts under it) to the environment's load balancers."""

    def __init__(self, name: str, args: DomainRecordsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:domain:DomainRecords", name, None, opts)
        self.records: list[aws.route53.Record] = []
        # Route 53 refuses a plain and a latency record of the same name and type side by side: when a second region
        # turns the plain record into latency records, the old one must go before the new ones come.
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, delete_before_replace=True)
        first: list[aws.route53.Record] = []
        for position, (region, target) in enumerate(args.load_balancers.items()):
            # Records are never allow_overwrite: a record of this name that someone else made (the site the name
            # serves today) stops the update instead of being silently repointed.
            opts = child if position == 0 else pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=first))
            for i, host in enumerate(args.names):
                for record_type in record_types(target.ip_address_type):
                    record = aws.route53.Record(
                        f"{name}-{i}-{region}-{record_type.lower()}", zone_id=args.hosted_zone_id, name=host,
                        type=record_type,
                        aliases=[aws.route53.RecordAliasArgs(name=target.dns_name, zone_id=target.zone_id,
                                                             evaluate_target_health=True)],
                        set_identifier=region if args.latency else None,
                        latency_routing_policies=[aws.route53.RecordLatencyRoutingPolicyArgs(region=region)]
                        if args.latency else None,
                        opts=opts)
                    self.records.append(record)
                    if position == 0:
                        first.append(record)
        self.register_outputs({"names": list(args.names)})


# ------------------------------------------------------------------------------------- from the stack config


def domain_certificates(cfg: StackConfig, providers: Providers) -> dict[str, DomainCertificates]:
    """Environment name -> its certificates, for every environment with a domain (and services crossdeploy creates:
    without them there is no load balancer to serve the name)."""
    out = {}
    for env in cfg.environments:
        if env.domain is None or not cfg.workload_services:
            continue
        regional = {region: providers.get(env.account_id, region) for region in env.regions}
        out[env.name] = DomainCertificates(f"domain-{env.name}", DomainCertificatesArgs(
            names=domain_hosts(env.domain.name, cfg.workload_services),
            hosted_zone_id=env.domain.hosted_zone_id,
            providers=regional,
            dns_provider=regional[env.regions[0]],
            given_arns=dict(env.certificate_arns)))
    return out


def load_balancer_target(workload: Workload) -> LoadBalancerTarget:
    alb = workload.load_balancer
    return LoadBalancerTarget(dns_name=alb.dns_name, zone_id=alb.zone_id, ip_address_type=ALB_IP_ADDRESS_TYPE)


def listener_certificate_arn(env: EnvironmentConfig, region: str,
                             certificates: Mapping[str, DomainCertificates]) -> pulumi.Input[str] | None:
    """The certificate of `env`'s HTTPS listener in `region`: its domain's (validated, or given) or the given
    ``certificateArns`` entry; None for HTTP only."""
    if env.name in certificates:
        return certificates[env.name].certificate_arns[region]
    return env.certificate_arns.get(region)


def domain_records(cfg: StackConfig, providers: Providers,
                   workloads: Mapping[tuple[str, str], Workload]) -> dict[str, DomainRecords]:
    """Environment name -> its records, for every environment with a domain; `workloads`: (environment, region) ->
    the workload whose load balancer serves the name there."""
    out = {}
    for env in cfg.environments:
        if env.domain is None or not cfg.workload_services:
            continue
        out[env.name] = DomainRecords(f"domain-{env.name}-records", DomainRecordsArgs(
            names=domain_hosts(env.domain.name, cfg.workload_services),
            hosted_zone_id=env.domain.hosted_zone_id,
            provider=providers.get(env.account_id, env.regions[0]),
            load_balancers={region: load_balancer_target(workloads[(env.name, region)]) for region in env.regions}))
    return out
