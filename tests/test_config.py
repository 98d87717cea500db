"""Stack config validation: every broken case is named by its key path and bad value, all at once, before any
resource is registered, as a Pulumi RunError (printed without a traceback)."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest
import yaml
from conftest import BASE_CONFIG, PROD, QA, ROOT, TOOLS, config

from components.config import ConfigError, parse
from offline.mocks import AwsMocks, run_program


def problems_of(cfg: dict) -> list[str]:
    raw = {k.split(":", 1)[1]: v for k, v in cfg.items() if k.startswith("crossdeploy:")}
    with pytest.raises(ConfigError) as exc:
        parse(raw, project="crossdeploy", stack="t", aws_region=cfg.get("aws:region"))
    return exc.value.problems


def env(**kw: object) -> dict:
    return {"name": "qa", "accountId": QA, "regions": ["us-east-2"], **kw}


BROKEN = {
    "unquoted account id": (
        {"crossdeploy:tools": {"accountId": 111111111111}}, "tools.accountId", "quote it"),
    "short account id": (
        {"crossdeploy:environments": [env(accountId="12345")]}, "environments[0].accountId", "'12345'"),
    "typo in environment key": (
        {"crossdeploy:environments": [env(requireApprovel=True)]}, "environments[0].requireApprovel", "unknown key"),
    "typo in top-level key": (
        {"crossdeploy:service": [{"name": "x"}]}, "crossdeploy:service", "unknown key"),
    "bad region": (
        {"crossdeploy:environments": [env(regions=["us-east-2", "us-mars-1"])]}, "environments[0].regions[1]",
        "not an AWS region name (e.g. us-east-2), got 'us-mars-1'"),
    "duplicate region": (
        {"crossdeploy:environments": [env(regions=["us-east-2", "us-east-2"])]}, "environments[0].regions[1]",
        "already listed at environments[0].regions[0]; regions must be unique"),
    "no regions": ({"crossdeploy:environments": [env(regions=[])]}, "environments[0].regions", "must not be empty"),
    "upper-case environment name": (
        {"crossdeploy:environments": [env(name="QA")]}, "environments[0].name", "'QA'"),
    "duplicate environment": (
        {"crossdeploy:environments": [env(), env(accountId=PROD)]}, "environments[1].name", "duplicate"),
    "environment in tools account": (
        {"crossdeploy:environments": [env(accountId=TOOLS)]}, "environments[0].accountId", "tools account"),
    "unknown strategy": (
        {"crossdeploy:environments": [env(strategy="blue_green")]}, "environments[0].strategy", "'blue_green'"),
    "blueGreen settings on a rolling environment": (
        {"crossdeploy:environments": [env(blueGreen={"terminationWaitMinutes": 1})]}, "environments[0].blueGreen",
        "got strategy 'rolling'"),
    "canary percent out of range": (
        {"crossdeploy:environments": [env(strategy="canary", blueGreen={"trafficShift": {"percent": 100}})]},
        "environments[0].blueGreen.trafficShift.percent", "100"),
    "linear step below ECS's minimum": (
        {"crossdeploy:environments": [env(strategy="linear", blueGreen={"trafficShift": {"percent": 2}})]},
        "environments[0].blueGreen.trafficShift.percent", "at least 3 percent"),
    "native bake beyond ECS's day": (
        {"crossdeploy:environments": [env(strategy="blue-green", blueGreen={"terminationWaitMinutes": 1500})]},
        "environments[0].blueGreen.terminationWaitMinutes", "at most 1440"),
    "native step bake beyond ECS's day": (
        {"crossdeploy:environments": [env(strategy="canary", blueGreen={"trafficShift": {"intervalMinutes": 2000}})]},
        "environments[0].blueGreen.trafficShift.intervalMinutes", "at most 1440"),
    "shift type contradicting a native strategy": (
        {"crossdeploy:environments": [env(strategy="canary", blueGreen={"trafficShift": {"type": "linear"}})]},
        "environments[0].blueGreen.trafficShift.type", "'linear' instead"),
    "percent with native blue-green": (
        {"crossdeploy:environments": [env(strategy="blue-green", blueGreen={"trafficShift": {"percent": 10}})]},
        "environments[0].blueGreen.trafficShift.percent", "only for canary and linear"),
    "native strategy for a service without a crossdeploy route": (
        {"crossdeploy:environments": [env(strategy="linear")],
         "crossdeploy:services": [{"name": "orders", "existing": True, "executionRoleName": "r"}]},
        "services[0].existing", "linear environment 'qa'"),
    "timeout shorter than the strategy's course": (
        {"crossdeploy:environments": [env(strategy="canary", deploymentTimeoutMinutes=10)]},
        "environments[0].deploymentTimeoutMinutes", "about 15 minutes"),
    "native course beyond the pipeline action's day": (
        {"crossdeploy:environments": [env(strategy="blue-green", blueGreen={"terminationWaitMinutes": 1400})]},
        "environments[0].blueGreen", "1380 minutes"),
    "timeout beyond the pipeline action's day": (
        {"crossdeploy:environments": [env(deploymentTimeoutMinutes=1440)]},
        "environments[0].deploymentTimeoutMinutes", "1440"),
    "timeout below five minutes": (
        {"crossdeploy:environments": [env(deploymentTimeoutMinutes=1)]},
        "environments[0].deploymentTimeoutMinutes", "1"),
    "push into a native environment longer than a Lambda invocation": (
        {"crossdeploy:environments": [env(strategy="linear")],
         "crossdeploy:services": [{"name": "orders", "delivery": "push"}]},
        "environments[0].strategy", "delivery: pipeline"),
    "release shorter than a native canary": (
        {"crossdeploy:environments": [env(strategy="canary", blueGreen={"trafficShift": {"intervalMinutes": 20}})],
         "crossdeploy:release": {"source": {"provider": "codecommit", "repository": "r"}}},
        "release.serviceTimeoutMinutes", "about 30 minutes"),
    "approval as string": (
        {"crossdeploy:environments": [env(requireApproval="yes")]}, "environments[0].requireApproval", "'yes'"),
    "bad provision role": (
        {"crossdeploy:environments": [env(provisionRoleName="has space")]}, "environments[0].provisionRoleName",
        "IAM role name"),
    "two roles for one account": (
        {"crossdeploy:environments": [env(), env(name="qa2", provisionRoleName="Other")]},
        "environments[1].provisionRoleName", "same account"),
    "cross-partition region": (
        {"crossdeploy:environments": [env(regions=["cn-north-1"])]}, "environments[0].regions[0]", "partition"),
    "no environments": ({"crossdeploy:environments": []}, "environments", "must not be empty"),
    "environments not a list": ({"crossdeploy:environments": "qa"}, "environments", "expected a list"),
    "no services": ({"crossdeploy:services": []}, "services", "must not be empty"),
    "bad repository name": ({"crossdeploy:services": [{"name": "Orders!"}]}, "services[0].name", "'Orders!'"),
    "one-letter repository": ({"crossdeploy:services": [{"name": "o"}]}, "services[0].name", "at least 2"),
    "duplicate service": (
        {"crossdeploy:services": [{"name": "orders"}, {"name": "orders"}]}, "services[1].name", "duplicate"),
    "two services, one ECS service": (
        {"crossdeploy:services": [{"name": "orders"}, {"name": "orders2", "serviceName": "orders"}]},
        "services[1].serviceName", "already deployed"),
    "bad trigger tag": ({"crossdeploy:services": [{"name": "orders", "triggerTag": "-x"}]},
                        "services[0].triggerTag", "'-x'"),
    "bad container name": ({"crossdeploy:services": [{"name": "orders", "containerName": "a b"}]},
                           "services[0].containerName", "'a b'"),
    "unknown service key": ({"crossdeploy:services": [{"name": "orders", "image": "x"}]},
                            "services[0].image", "unknown key"),
    "namespaced repository without ECS names": (
        {"crossdeploy:services": [{"name": "team/api", "containerName": "api"}]}, "services[0].serviceName",
        "not a valid ECS name"),
    "dotted repository without ECS names": (
        {"crossdeploy:services": [{"name": "my.app"}]}, "services[0].containerName", "not a valid ECS name"),
    "codestar release without connection": (
        {"crossdeploy:release": {"source": {"provider": "codestar", "repository": "acme/releases"}}},
        "release.source.connectionArn", "required"),
    "unbounded release": (
        {"crossdeploy:release": {"source": {"provider": "codecommit", "repository": "r"}, "maxConcurrency": 0}},
        "release.maxConcurrency", "got 0"),
    "release typo": (
        {"crossdeploy:release": {"source": {"provider": "codecommit", "repository": "r"}, "requireAproval": True}},
        "release.requireAproval", "unknown key"),
    "bad email": ({"crossdeploy:notifications": {"emails": ["not-an-address"]}}, "notifications.emails",
                  "'not-an-address'"),
    # --- workloads and blue/green
    "two environments in one account and region": (
        {"crossdeploy:environments": [env(), env(name="qa2")]}, "environments[1].regions[0]",
        "used by both environment 'qa2' and environment 'qa' (environments[0].regions[0])"),
    "Fargate cpu": ({"crossdeploy:services": [{"name": "orders", "cpu": 300}]}, "services[0].cpu", "300"),
    "Fargate memory for cpu": ({"crossdeploy:services": [{"name": "orders", "cpu": 1024, "memory": 512}]},
                               "services[0].memory", "with cpu 1024"),
    "port out of range": ({"crossdeploy:services": [{"name": "orders", "port": 70000}]}, "services[0].port",
                          "70000"),
    "secret value that is no name": (
        {"crossdeploy:services": [{"name": "orders", "secrets": {"DB": "has space"}}]}, "services[0].secrets",
        "'has space'"),
    "bad environment variable name": (
        {"crossdeploy:services": [{"name": "orders", "environment": {"1X": "v"}}]}, "services[0].environment",
        "'1X'"),
    "autoscaling min above max": (
        {"crossdeploy:services": [{"name": "orders", "autoscaling": {"min": 5, "max": 2}}]},
        "services[0].autoscaling.min", "above max"),
    "retention CloudWatch refuses": (
        {"crossdeploy:services": [{"name": "orders", "logRetentionDays": 10}]}, "services[0].logRetentionDays",
        "10"),
    "too many routing values": (
        {"crossdeploy:services": [{"name": "orders", "routing": {"paths": ["/a", "/b", "/c", "/d"],
                                                                 "hosts": ["x.example.com", "y.example.com"]}}]},
        "services[0].routing", "at most 5"),
    "duplicate rule priority": (
        {"crossdeploy:services": [{"name": "orders"}, {"name": "billing", "routing": {"priority": 10}}]},
        "services[1].routing.priority", "services[0]"),
    "health check command kind": (
        {"crossdeploy:services": [{"name": "orders", "healthCheck": {"command": ["curl", "x"]}}]},
        "services[0].healthCheck.command", "CMD-SHELL"),
    "existing service without its execution role": (
        {"crossdeploy:services": [{"name": "orders", "existing": True}]}, "services[0].executionRoleName",
        "required with existing"),
    "existing service with workload keys": (
        {"crossdeploy:services": [{"name": "orders", "existing": True, "executionRoleName": "r", "port": 80}]},
        "services[0].port", "existing: true"),
    "role names on a created service": (
        {"crossdeploy:services": [{"name": "orders", "executionRoleName": "r"}]}, "services[0].executionRoleName",
        "only for existing"),
    "existing service in a codedeploy environment": (
        {"crossdeploy:environments": [env(strategy="codedeploy")],
         "crossdeploy:services": [{"name": "orders", "existing": True, "executionRoleName": "r"}]},
        "services[0].existing", "codedeploy environments (qa)"),
    "push delivery into codedeploy": (
        {"crossdeploy:environments": [env(strategy="codedeploy")],
         "crossdeploy:services": [{"name": "orders", "delivery": "push"}]}, "services[0].delivery", "CodeDeploy"),
    "certificate of another region": (
        {"crossdeploy:environments": [env(certificateArns={
            "us-east-2": f"arn:aws:acm:us-west-2:{QA}:certificate/abc"})]},
        "environments[0].certificateArns.us-east-2", "in us-west-2"),
    "certificate for a region the environment lacks": (
        {"crossdeploy:environments": [env(certificateArns={
            "eu-west-1": f"arn:aws:acm:eu-west-1:{QA}:certificate/abc"})]},
        "environments[0].certificateArns.eu-west-1", "not a region of this environment"),
    "not a certificate ARN": (
        {"crossdeploy:environments": [env(certificateArns={"us-east-2": "my-cert"})]},
        "environments[0].certificateArns.us-east-2", "'my-cert'"),
    "existing VPC with one public subnet": (
        {"crossdeploy:environments": [env(network={"existingVpcs": {"us-east-2": {
            "vpcId": "vpc-0123456789abcdef0", "publicSubnetIds": ["subnet-0123456789abcdef0"],
            "privateSubnetIds": ["subnet-0123456789abcdef1"]}}})]},
        "environments[0].network.existingVpcs.us-east-2.publicSubnetIds", "at least 2"),
    "existing VPC in another region": (
        {"crossdeploy:environments": [env(network={"existingVpcs": {"eu-west-1": {
            "vpcId": "vpc-0123456789abcdef0",
            "publicSubnetIds": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef2"],
            "privateSubnetIds": ["subnet-0123456789abcdef1"]}}})]},
        "environments[0].network.existingVpcs.eu-west-1", "not a region of this environment"),
    "VPC range too small": (
        {"crossdeploy:environments": [env(network={"cidr": "10.0.0.0/26"})]}, "environments[0].network.cidr",
        "/16 to /24"),
    "VPC range with host bits": (
        {"crossdeploy:environments": [env(network={"cidr": "10.0.0.1/16"})]}, "environments[0].network.cidr",
        "10.0.0.0/16"),
    "NAT option": ({"crossdeploy:environments": [env(network={"natGateways": "none"})]},
                   "environments[0].network.natGateways", "'none'"),
    "percent with all-at-once": (
        {"crossdeploy:environments": [env(strategy="codedeploy", blueGreen={"trafficShift": {"percent": 10}})]},
        "environments[0].blueGreen.trafficShift.percent", "only for canary and linear"),
    "test listener on a production port": (
        {"crossdeploy:environments": [env(strategy="codedeploy", blueGreen={"testListenerPort": 443})]},
        "environments[0].blueGreen.testListenerPort", "production listener port"),
    "test traffic range": (
        {"crossdeploy:environments": [env(strategy="codedeploy", blueGreen={"testTrafficCidrs": ["anywhere"]})]},
        "environments[0].blueGreen.testTrafficCidrs", "'anywhere'"),
    "termination wait beyond CodeDeploy's two days": (
        {"crossdeploy:environments": [env(strategy="codedeploy", blueGreen={"terminationWaitMinutes": 3000})]},
        "environments[0].blueGreen.terminationWaitMinutes", "3000"),
    "one service name in two clusters with blue/green": (
        {"crossdeploy:environments": [env(strategy="codedeploy")],
         "crossdeploy:services": [{"name": "orders"}, {"name": "orders2", "serviceName": "orders", "cluster": "b",
                                                       "routing": {"priority": 99}}]},
        "services[1].serviceName", "deployment groups"),
    "release shorter than a blue/green deployment": (
        {"crossdeploy:environments": [env(strategy="codedeploy", blueGreen={
            "trafficShift": {"type": "linear", "percent": 25, "intervalMinutes": 3}, "terminationWaitMinutes": 10})],
         "crossdeploy:release": {"source": {"provider": "codecommit", "repository": "r"}}},
        "release.serviceTimeoutMinutes", "about 24 minutes"),
    "created service in an existing service's cluster": (
        {"crossdeploy:services": [{"name": "legacy", "existing": True, "executionRoleName": "r", "cluster": "main"},
                                  {"name": "orders", "cluster": "main"}]},
        "services[1].cluster", "cluster of existing services[0]"),
    "missing tools account": ({"crossdeploy:tools": {"region": "us-east-2"}}, "tools.accountId", "required"),
    "no region anywhere": ({"aws:region": None, "crossdeploy:tools": {"accountId": TOOLS}}, "tools.region",
                           "not set"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_case_names_its_path_and_value(case: str) -> None:
    overrides, path, fragment = BROKEN[case]
    problems = problems_of(config(**overrides))
    matching = [p for p in problems if p.startswith(f"{path}:")]
    assert matching, f"no problem reported for {path}: {problems}"
    assert any(fragment in p for p in matching), matching


def test_every_problem_is_reported_at_once() -> None:
    cfg = config(**{
        "crossdeploy:tools": {"accountId": "1"},
        "crossdeploy:environments": [env(name="Bad"), env(name="ok", regions=["nowhere-1"], colour="red")],
        "crossdeploy:services": [{"name": "A"}, {"name": "ok", "triggerTag": ""}],
    })
    paths = {p.split(":")[0] for p in problems_of(cfg)}
    assert {"tools.accountId", "environments[0].name", "environments[1].regions[0]", "environments[1].colour",
            "services[0].name", "services[1].triggerTag"} <= paths


def test_defaults_are_applied() -> None:
    cfg = parse({"tools": {"accountId": TOOLS}, "environments": [env()], "services": [{"name": "orders"}]},
                project="crossdeploy", stack="s", aws_region="us-west-2")
    assert cfg.tools_region == "us-west-2"
    service, environment = cfg.services[0], cfg.environments[0]
    assert (service.container, service.service, service.cluster, service.trigger_tag) == (
        "orders", "orders", "crossdeploy", "latest")
    assert (environment.strategy, environment.require_approval, environment.provision_role_name) == (
        "rolling", False, "OrganizationAccountAccessRole")
    assert cfg.emails == ()


def test_bad_config_registers_nothing_and_is_a_run_error() -> None:
    mocks_seen: list[AwsMocks] = []
    original = AwsMocks.__init__

    def spy(self: AwsMocks) -> None:
        original(self)
        mocks_seen.append(self)

    AwsMocks.__init__ = spy  # type: ignore[method-assign]
    try:
        with pytest.raises(ConfigError) as exc:
            run_program(config(**{"crossdeploy:services": [{"name": "orders", "triggerTagg": "x"}]}))
    finally:
        AwsMocks.__init__ = original  # type: ignore[method-assign]
    assert isinstance(exc.value, pulumi.RunError)  # Pulumi prints RunError's message without a stack trace
    assert "services[0].triggerTagg" in str(exc.value)
    assert mocks_seen and mocks_seen[0].run.resources == []


def test_base_config_is_valid() -> None:
    assert problems_of_ok(BASE_CONFIG)


def problems_of_ok(cfg: dict) -> bool:
    raw = {k.split(":", 1)[1]: v for k, v in cfg.items() if k.startswith("crossdeploy:")}
    parse(raw, project="crossdeploy", stack="t", aws_region=cfg["aws:region"])
    return True


@pytest.mark.parametrize("stack_file", ["Pulumi.dev.yaml", "Pulumi.prod.yaml"])
def test_stack_files_are_valid_and_disable_the_default_provider(stack_file: str) -> None:
    data = yaml.safe_load((ROOT / stack_file).read_text())["config"]
    assert data["pulumi:disable-default-providers"] == ["aws"]
    assert problems_of_ok(data)


def test_stack_files_have_the_documented_shape() -> None:
    dev = yaml.safe_load(Path(ROOT / "Pulumi.dev.yaml").read_text())["config"]
    prod = yaml.safe_load(Path(ROOT / "Pulumi.prod.yaml").read_text())["config"]
    assert len(dev["crossdeploy:environments"]) == 1 and len(dev["crossdeploy:services"]) == 1
    assert len(dev["crossdeploy:environments"][0]["regions"]) == 1
    names = [e["name"] for e in prod["crossdeploy:environments"]]
    assert names == ["test", "prod"]
    assert prod["crossdeploy:environments"][1]["requireApproval"] is True
    assert len(prod["crossdeploy:environments"][1]["regions"]) == 2
    assert len(prod["crossdeploy:services"]) == 3
    assert yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["name"] == "crossdeploy"


@pytest.mark.parametrize(("strategy", "settings", "timeout", "minutes"), [
    ("rolling", None, None, 15),
    ("blue-green", None, None, 10),  # start 5 + bake 5
    ("canary", {"trafficShift": {"percent": 20, "intervalMinutes": 7}, "terminationWaitMinutes": 15}, None, 27),
    ("linear", {"trafficShift": {"percent": 25, "intervalMinutes": 3}}, None, 19),  # 3 more steps of 3 minutes
    ("codedeploy", {"trafficShift": {"type": "linear", "percent": 25, "intervalMinutes": 3}}, None, 19),
    ("canary", None, 60, 60),  # an explicit timeout may lengthen the derived one
])
def test_native_strategies_parse_with_derived_timeouts(strategy, settings, timeout, minutes) -> None:
    extra = {"blueGreen": settings} if settings else {}
    if timeout:
        extra["deploymentTimeoutMinutes"] = timeout
    raw = config(**{"crossdeploy:environments": [env(strategy=strategy, **extra)]})
    cfg = parse({k.split(":", 1)[1]: v for k, v in raw.items() if k.startswith("crossdeploy:")},
                project="crossdeploy", stack="t", aws_region=raw.get("aws:region"))
    (environment,) = cfg.environments
    assert environment.strategy == strategy
    assert environment.native == (strategy in ("blue-green", "canary", "linear"))
    assert environment.deploy_timeout_minutes == minutes


# --- region names: one wording, each bad value once, at its own key ------------------------------------------------

BAD = "'us-mars-1'"
_VPC = {"vpcId": "vpc-12345678", "publicSubnetIds": ["subnet-12345678", "subnet-12345679"],
        "privateSubnetIds": ["subnet-12345670"]}


@pytest.mark.parametrize(("overrides", "path"), [
    ({"crossdeploy:environments": [env(regions=["us-east-2", "us-mars-1"])]}, "environments[0].regions[1]"),
    ({"crossdeploy:tools": {"accountId": TOOLS, "region": "us-mars-1"}}, "tools.region"),
    ({"aws:region": "us-mars-1", "crossdeploy:tools": {"accountId": TOOLS}}, "aws:region"),
    ({"crossdeploy:environments": [env(certificateArns={
        "us-mars-1": f"arn:aws:acm:us-mars-1:{QA}:certificate/abc"})]}, "environments[0].certificateArns.us-mars-1"),
    ({"crossdeploy:environments": [env(network={"existingVpcs": {"us-mars-1": _VPC}})]},
     "environments[0].network.existingVpcs.us-mars-1"),
], ids=["regions", "tools.region", "aws:region", "certificateArns", "existingVpcs"])
def test_a_bad_region_name_is_reported_once_in_one_wording(overrides, path) -> None:
    problems = problems_of(config(**overrides))
    assert problems == [f"{path}: not an AWS region name (e.g. us-east-2), got {BAD}"]


def test_a_repeated_bad_region_is_one_problem_per_key_and_no_collision() -> None:
    # The same typo twice in one environment and once in another environment of the same account: three keys,
    # three messages, and no "regions must be unique" or "used by both" about a name that is not a region.
    problems = problems_of(config(**{"crossdeploy:environments": [
        env(regions=["us-mars-1", "us-east-2", "us-mars-1"]), env(name="qa2", regions=["us-mars-1", "us-west-2"])]}))
    assert problems == [f"environments[{i}].regions[{j}]: not an AWS region name (e.g. us-east-2), got {BAD}"
                        for i, j in ((0, 0), (0, 2), (1, 0))]


def test_a_bad_and_a_repeated_region_are_reported_together() -> None:
    problems = problems_of(config(**{"crossdeploy:environments": [env(regions=["us-east-2", "us-mars-1",
                                                                               "us-east-2"])]}))
    assert problems == [
        f"environments[0].regions[1]: not an AWS region name (e.g. us-east-2), got {BAD}",
        "environments[0].regions[2]: 'us-east-2' is already listed at environments[0].regions[0]; regions must be "
        "unique",
    ]


def test_a_region_used_twice_in_one_account_names_both_environments() -> None:
    problems = problems_of(config(**{"crossdeploy:environments": [
        env(name="test"), env(name="prod", accountId=PROD, regions=["eu-west-1", "us-east-2"]),
        env(name="staging", accountId=PROD)]}))
    assert problems == [
        f"environments[2].regions[0]: 'us-east-2' of account '{PROD}' is used by both environment 'staging' and "
        "environment 'prod' (environments[1].regions[1]); each account and region holds one environment (its "
        "services, load balancer and VPC would collide)"]


def test_tools_that_is_no_mapping_still_falls_back_to_aws_region() -> None:
    problems = problems_of(config(**{"crossdeploy:tools": "111111111111"}))
    assert problems == ["tools: expected a mapping of keys, got '111111111111'"]


def test_a_tools_region_of_the_wrong_type_is_a_problem_not_a_crash() -> None:
    problems = problems_of(config(**{"crossdeploy:tools": {"accountId": TOOLS, "region": ["us-east-2"]}}))
    assert problems == ["tools.region: expected a string, got ['us-east-2']"]
