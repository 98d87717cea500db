"""Domains (``environments[].domain``): ACM certificates per region validated through DNS records created once, the
HTTPS listener on the validated certificate, alias records (plain with one region, latency-based with several), how
``certificateArns`` combines with a domain, the config errors, and the plan. Asserted on the inputs AWS would get
from the real program under the offline mocks."""

from __future__ import annotations

import pytest
from conftest import PROD, QA, config

from components.config import ConfigError, parse
from components.domain import DomainRecordsArgs, LoadBalancerTarget, record_types
from offline.mocks import PROVIDER_TYPE, ProgramRun, Recorded, acm_validation_record, run_program
from offline.plan import build_plan, deploy_documents, domains, render_domains_mermaid, render_text

CERT = "aws:acm/certificate:Certificate"
VALIDATION = "aws:acm/certificateValidation:CertificateValidation"
RECORD = "aws:route53/record:Record"
LISTENER = "aws:lb/listener:Listener"
ALB = "aws:lb/loadBalancer:LoadBalancer"

PROD_ZONE = "Z0PROD1234567890ABCD"
QA_ZONE = "Z0QA1234567890"
GIVEN = f"arn:aws:acm:eu-west-1:{PROD}:certificate/0f1e2d3c-aaaa-bbbb-cccc-111122223333"
PROD_REGIONS = ["us-east-2", "us-west-2", "eu-west-1"]
ENVIRONMENTS = [
    {"name": "qa", "accountId": QA, "regions": ["us-east-2"],
     # As the Route 53 API prints it: accepted, and the prefix removed.
     "domain": {"name": "qa.shop.example.org", "hostedZoneId": f"/hostedzone/{QA_ZONE}"}},
    {"name": "prod", "accountId": PROD, "regions": PROD_REGIONS, "requireApproval": True,
     "domain": {"name": "shop.example.org", "hostedZoneId": PROD_ZONE},
     "certificateArns": {"eu-west-1": GIVEN}},
]
SERVICES = [
    {"name": "orders", "smokeTest": {"path": "/orders/health", "expectStatus": "200"}},
    # api.shop.example.org is under prod's domain (certificate and records); other.example.com is not.
    {"name": "payments", "routing": {"hosts": ["api.shop.example.org", "other.example.com"]}},
]
DOMAIN_CONFIG = config(**{"crossdeploy:environments": ENVIRONMENTS, "crossdeploy:services": SERVICES})
PROD_NAMES = ("shop.example.org", "api.shop.example.org")


@pytest.fixture(scope="module")
def run() -> ProgramRun:
    return run_program(DOMAIN_CONFIG, stack="test")


def of(run: ProgramRun, type_: str, account: str, region: str | None = None) -> list[Recorded]:
    return [r for r in run.of_type(type_) if r.account == account and (region is None or r.region == region)]


def one(items: list[Recorded]) -> Recorded:
    assert len(items) == 1, [r.name for r in items]
    return items[0]


def provider_region(run: ProgramRun, resource: Recorded) -> tuple[str | None, str | None]:
    """(account, region) of the provider a resource was registered with."""
    provider = one([p for p in run.of_type(PROVIDER_TYPE) if f"{p.name}-id" == resource.provider])
    return provider.account, provider.region


def alb(run: ProgramRun, account: str, region: str) -> Recorded:
    return one(of(run, ALB, account, region))


def https_listener(run: ProgramRun, account: str, region: str) -> Recorded:
    arn = alb(run, account, region).outputs["arn"]
    return one([r for r in of(run, LISTENER, account, region)
                if r.inputs["loadBalancerArn"] == arn and r.inputs["port"] == 443])


def aliases(run: ProgramRun, account: str) -> list[Recorded]:
    return [r for r in of(run, RECORD, account) if r.inputs.get("aliases")]


def cnames(run: ProgramRun, account: str) -> list[Recorded]:
    return [r for r in of(run, RECORD, account) if r.inputs["type"] == "CNAME"]


# ------------------------------------------------------------------------------------------------ certificates


def test_a_certificate_per_region_in_the_environment_account_except_where_one_is_given(run) -> None:
    for region in ("us-east-2", "us-west-2"):
        cert = one(of(run, CERT, PROD, region))
        assert provider_region(run, cert) == (PROD, region)
        assert cert.inputs["domainName"] == "shop.example.org"
        assert cert.inputs["subjectAlternativeNames"] == ["api.shop.example.org"]
        assert cert.inputs["validationMethod"] == "DNS"
    assert of(run, CERT, PROD, "eu-west-1") == []  # certificateArns wins there: nothing requested
    qa = one(of(run, CERT, QA, "us-east-2"))
    assert qa.inputs["domainName"] == "qa.shop.example.org" and not qa.inputs.get("subjectAlternativeNames")
    assert len(run.of_type(CERT)) == 3


def test_validation_records_are_created_once_per_name_in_the_environment_zone(run) -> None:
    records = cnames(run, PROD)
    assert len(records) == len(PROD_NAMES)  # not once per region
    certs = of(run, CERT, PROD)
    for name in PROD_NAMES:
        # Both regions' certificates ask for the same record (ACM: per account and name), and it is that one.
        options = {(o["resourceRecordName"], o["resourceRecordValue"])
                   for c in certs for o in c.outputs["domainValidationOptions"] if o["domainName"] == name}
        assert len(options) == 1
        ((record_name, value),) = options
        record = one([r for r in records if r.inputs["name"] == record_name])
        assert record.inputs["records"] == [value] and record.inputs["zoneId"] == PROD_ZONE
        assert record.account == PROD and provider_region(run, record) == (PROD, "us-east-2")  # first region
        assert record.inputs["allowOverwrite"] is True and "retainOnDelete" in record.lifecycle
    qa = one(cnames(run, QA))
    assert qa.inputs["zoneId"] == QA_ZONE  # the /hostedzone/ prefix is gone
    assert qa.inputs["name"] == acm_validation_record("aws", QA, "qa.shop.example.org")[0]


def test_every_requested_region_waits_for_its_certificate_through_the_shared_records(run) -> None:
    fqdns = sorted(r.outputs["fqdn"] for r in cnames(run, PROD))
    validations = of(run, VALIDATION, PROD)
    assert sorted(v.region for v in validations) == ["us-east-2", "us-west-2"]
    for validation in validations:
        cert = one(of(run, CERT, PROD, validation.region))
        assert validation.inputs["certificateArn"] == cert.outputs["arn"]
        assert provider_region(run, validation) == (PROD, validation.region)
        assert sorted(validation.inputs["validationRecordFqdns"]) == fqdns
        # The provider's own check: every name the certificate must validate has its record among these.
        for option in cert.outputs["domainValidationOptions"]:
            assert option["resourceRecordName"].rstrip(".") in fqdns


@pytest.mark.parametrize("region", ["us-east-2", "us-west-2"])
def test_the_https_listener_serves_the_validated_certificate_and_waits_for_it(run, region) -> None:
    validation = one(of(run, VALIDATION, PROD, region))
    listener = https_listener(run, PROD, region)
    assert listener.inputs["protocol"] == "HTTPS"
    assert listener.inputs["certificateArn"] == validation.outputs["certificateArn"]
    assert any(urn.endswith(f"::{validation.name}") for urn in listener.dependencies)


def test_certificate_arns_win_in_their_region(run) -> None:
    listener = https_listener(run, PROD, "eu-west-1")
    assert listener.inputs["certificateArn"] == GIVEN
    assert not any(VALIDATION in urn for urn in listener.dependencies)
    assert len([r for r in aliases(run, PROD) if r.inputs.get("setIdentifier") == "eu-west-1"]) == len(PROD_NAMES)


@pytest.mark.parametrize("account,region", [(QA, "us-east-2"), *((PROD, r) for r in PROD_REGIONS)])
def test_http_redirects_to_https(run, account, region) -> None:
    arn = alb(run, account, region).outputs["arn"]
    http = one([r for r in of(run, LISTENER, account, region)
                if r.inputs["loadBalancerArn"] == arn and r.inputs["port"] == 80])
    (action,) = http.inputs["defaultActions"]
    assert action["type"] == "redirect"
    assert (action["redirect"]["protocol"], action["redirect"]["port"]) == ("HTTPS", "443")


def test_the_engine_smoke_tests_rolling_environments_with_a_domain_over_https(run) -> None:
    # Port 80 only redirects there: a smoke test over HTTP would judge the 301, never the service.
    (document,) = [d for name, d in deploy_documents(run).items() if name == "orders"]
    targets = [t for e in document["environments"] for t in e["targets"]]
    assert len(targets) == 1 + len(PROD_REGIONS)
    for target in targets:
        assert (target["smokeTest"]["protocol"], target["smokeTest"]["port"]) == ("HTTPS", 443), target["region"]


# ------------------------------------------------------------------------------------------------------ records


def test_one_region_gets_a_plain_alias_record_to_its_load_balancer(run) -> None:
    record = one(aliases(run, QA))
    target = alb(run, QA, "us-east-2")
    assert (record.inputs["name"], record.inputs["type"], record.inputs["zoneId"]) == (
        "qa.shop.example.org", "A", QA_ZONE)
    assert record.inputs["aliases"] == [{"name": target.outputs["dnsName"], "zoneId": target.outputs["zoneId"],
                                         "evaluateTargetHealth": True}]
    assert "setIdentifier" not in record.inputs and "latencyRoutingPolicies" not in record.inputs
    assert provider_region(run, record) == (QA, "us-east-2")


def test_several_regions_get_a_latency_record_per_region_and_name_to_that_region_load_balancer(run) -> None:
    records = aliases(run, PROD)
    assert len(records) == len(PROD_NAMES) * len(PROD_REGIONS)
    for name in PROD_NAMES:
        for region in PROD_REGIONS:
            record = one([r for r in records if r.inputs["name"] == name and r.inputs["setIdentifier"] == region])
            target = alb(run, PROD, region)
            assert record.inputs["type"] == "A" and record.inputs["zoneId"] == PROD_ZONE
            assert record.inputs["latencyRoutingPolicies"] == [{"region": region}]
            assert record.inputs["aliases"] == [{"name": target.outputs["dnsName"],
                                                 "zoneId": target.outputs["zoneId"], "evaluateTargetHealth": True}]
            assert provider_region(run, record) == (PROD, "us-east-2")  # Route 53 is global: the first region's
    # The load balancers' zones differ per region: each record names its own region's.
    assert len({r.inputs["aliases"][0]["zoneId"] for r in records}) == len(PROD_REGIONS)
    # Hosts outside the domain get no record.
    assert not any(r.inputs["name"] == "other.example.com" for r in run.of_type(RECORD))


def test_records_never_overwrite_and_later_regions_wait_for_the_first(run) -> None:
    records = aliases(run, PROD)
    first = {f"::{r.name}" for r in records if r.inputs["setIdentifier"] == "us-east-2"}
    for record in records:
        assert not record.inputs.get("allowOverwrite")
        assert "deleteBeforeReplace" in record.lifecycle
        if record.inputs["setIdentifier"] != "us-east-2":
            assert first <= {"::" + urn.rsplit("::", 1)[-1] for urn in record.dependencies}


def test_ipv4_load_balancers_get_a_records_only(run) -> None:
    assert {r.inputs["ipAddressType"] for r in run.of_type(ALB)} == {"ipv4"}
    assert {r.inputs["type"] for r in run.of_type(RECORD) if r.inputs.get("aliases")} == {"A"}
    assert record_types("dualstack") == ("A", "AAAA") and record_types("ipv4") == ("A",)
    with pytest.raises(ValueError, match="ip_address_type"):
        DomainRecordsArgs(names=("shop.example.org",), hosted_zone_id=PROD_ZONE, provider=None,  # type: ignore[arg-type]
                          load_balancers={"us-east-2": LoadBalancerTarget("x", "Z1", ip_address_type="ipv6")})


# ------------------------------------------------------------------------------------- the prod stack (done when)


def test_prod_stack_serves_its_domain_from_both_regions_by_latency_with_https(prod_run) -> None:
    regions = ["us-east-2", "us-west-2"]
    records = aliases(prod_run, "777788889999")
    assert sorted(r.inputs["setIdentifier"] for r in records) == regions
    for region in regions:
        record = one([r for r in records if r.inputs["setIdentifier"] == region])
        assert record.inputs["latencyRoutingPolicies"] == [{"region": region}]
        assert record.inputs["aliases"][0]["evaluateTargetHealth"] is True
        assert record.inputs["aliases"][0]["name"] == alb(prod_run, "777788889999", region).outputs["dnsName"]
        listener = https_listener(prod_run, "777788889999", region)
        validation = one(of(prod_run, VALIDATION, "777788889999", region))
        assert listener.inputs["certificateArn"] == validation.outputs["certificateArn"]
    assert len(cnames(prod_run, "777788889999")) == 1  # one name, validated once for both regions
    assert of(prod_run, CERT, "444455556666") == []  # test has no domain


# --------------------------------------------------------------------------------------------------------- plan


def test_plan_shows_domain_routing_and_certificate_per_region(run) -> None:
    text = render_text(build_plan(run, "crossdeploy", "test"))
    assert "shop.example.org (+ api.shop.example.org)  environment prod, account 777788889999, zone " \
           f"{PROD_ZONE}" in text
    assert "latency-based alias records across eu-west-1, us-east-2, us-west-2 (health-evaluated" in text
    assert (f"certificates  eu-west-1 given {GIVEN}; us-east-2 ACM, DNS-validated; us-west-2 ACM, DNS-validated"
            in text)
    assert "validation    2 CNAME record(s)" in text
    assert f"qa.shop.example.org  environment qa, account {QA}, zone {QA_ZONE}" in text
    assert "alias record to us-east-2 (health-evaluated" in text
    diagram = render_domains_mermaid(domains(run))
    assert diagram.count('-->|"latency, health-evaluated"|') == 3 and diagram.count('-->|"alias"|') == 1


# ------------------------------------------------------------------------------------------------------ config


def raw(environments: list, services: list | None = None) -> dict:
    return {"tools": {"accountId": "111111111111", "region": "us-east-2"}, "environments": environments,
            "services": services or [{"name": "orders"}]}


def env(domain: dict | None = None, **extra) -> dict:
    out = {"name": "prod", "accountId": PROD, "regions": ["us-east-2"], **extra}
    if domain is not None:
        out["domain"] = domain
    return out


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(data, project="crossdeploy", stack="test", aws_region="us-east-2")
    return caught.value.problems


def domain(name: str = "shop.example.org", zone: str = PROD_ZONE) -> dict:
    return {"name": name, "hostedZoneId": zone}


@pytest.mark.parametrize("name,why", [
    ("Shop.Example.org", "lower case ('shop.example.org')"),
    ("shop.example.org.", "without the final dot ('shop.example.org')"),
    ("localhost", "not a fully qualified DNS name"),
    ("-shop.example.org", "not a fully qualified DNS name"),
    ("shop-.example.org", "not a fully qualified DNS name"),
    ("shop..example.org", "not a fully qualified DNS name"),
    ("shop_1.example.org", "not a fully qualified DNS name"),
    ("shop.example.o", "not a fully qualified DNS name"),
    ("a" * 64 + ".example.org", "not a fully qualified DNS name"),
    (".".join(["a" * 63] * 4), "255 characters; a DNS name has at most 253"),
    ("*.example.org", "a wildcard is not a host name"),
])
def test_a_bad_domain_name_names_its_key_path_and_value(name, why) -> None:
    (problem,) = problems(raw([env(domain(name))]))
    assert problem.startswith("environments[0].domain.name: ") and why in problem and repr(name) in problem


@pytest.mark.parametrize("zone", ["z0123456789", "0123456789", "Z0123-456", "Z" + "A" * 32, "/hostedzone/",
                                  "hostedzone/Z0123456789"])
def test_a_hosted_zone_id_of_the_wrong_shape_names_its_key_path_and_value(zone) -> None:
    (problem,) = problems(raw([env(domain(zone=zone))]))
    assert problem.startswith("environments[0].domain.hostedZoneId: not a Route 53 hosted zone id")
    assert repr(zone) in problem


@pytest.mark.parametrize("name", ["shop.example.org", "a.io", "xn--bcher-kva.example", "1-2.example.org",
                                  ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])])
def test_valid_names_and_zone_ids_are_accepted(name) -> None:
    cfg = parse(raw([env(domain(name, f"/hostedzone/{PROD_ZONE}"))]), project="crossdeploy", stack="test",
                aws_region="us-east-2")
    assert cfg.environments[0].domain.name == name and cfg.environments[0].domain.hosted_zone_id == PROD_ZONE


@pytest.mark.parametrize("public", [None, []])
def test_a_domain_on_an_adopted_vpc_without_public_subnets_is_refused(public) -> None:
    vpc = {"vpcId": "vpc-0123456789abcdef0", "privateSubnetIds": ["subnet-0bbbbbbbbbbbbbbb1"]}
    if public is not None:
        vpc["publicSubnetIds"] = public
    found = problems(raw([env(domain(), network={"existingVpcs": {"us-east-2": vpc}})]))
    expected = "missing" if public is None else "[]"
    assert any(p.startswith("environments[0].domain: 'shop.example.org' points at the internet-facing load "
                            "balancer") and f"network.existingVpcs.us-east-2.publicSubnetIds is {expected}" in p
               for p in found), found
    # Adopting a VPC with public subnets is fine.
    vpc["publicSubnetIds"] = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"]
    parse(raw([env(domain(), network={"existingVpcs": {"us-east-2": vpc}})]), project="crossdeploy", stack="test",
          aws_region="us-east-2")


def test_every_domain_problem_is_reported_at_once_before_any_resource() -> None:
    services = [{"name": "orders", "routing": {"hosts": ["*.shop.example.org"]}},
                {"name": "legacy", "existing": True, "executionRoleName": "ecsTaskExecutionRole"}]
    environments = [env(domain("Shop.example.org", "zzz")),
                    {"name": "qa", "accountId": QA, "regions": ["us-east-2"], "domain": domain()},
                    {"name": "dev", "accountId": "222233334444", "regions": ["us-east-2"], "domain": domain()}]
    found = problems(raw(environments, services))
    expected = [
        "environments[0].domain.name: write the name in lower case ('shop.example.org')",
        "environments[0].domain.hostedZoneId: not a Route 53 hosted zone id",
        "environments[2].domain.name: 'shop.example.org' is also the domain of environments[1]",
        "services[0].routing.hosts: '*.shop.example.org' is a pattern under environments[1].domain",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in found), (start, found)
    with pytest.raises(ConfigError):  # the program stops before registering anything
        run_program(config(**{"crossdeploy:environments": [
            {"name": "prod", "accountId": PROD, "regions": ["us-east-2"], "domain": domain("shop")}]}))


def test_a_domain_needs_services_crossdeploy_creates() -> None:
    services = [{"name": "legacy", "existing": True, "executionRoleName": "ecsTaskExecutionRole"}]
    found = problems(raw([env(domain())], services))
    assert any(p.startswith("environments[0].domain: 'shop.example.org' would point at the load balancer") and
               "existing: true" in p for p in found), found


def test_a_certificate_holds_at_most_ten_names() -> None:
    services = [{"name": f"svc{i}", "routing": {"hosts": [f"h{i}a.shop.example.org", f"h{i}b.shop.example.org"]}}
                for i in range(5)]
    (problem,) = problems(raw([env(domain())], services))
    assert problem.startswith("environments[0].domain: 'shop.example.org' and the hosts under it")
    assert "11 names" in problem
