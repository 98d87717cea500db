"""Smoke-test hooks in the workload accounts: the hook function each native or codedeploy environment gets per region,
its network path to the test listener, its roles, the ECS lifecycle hooks of native services, and the AppSpec hook
and CodeDeploy role grant of codedeploy services. Asserted on what AWS would receive from the real program under the
offline mocks (and, for the AppSpec, on what the real build handler writes)."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_least_privilege as least_privilege
import yaml
from conftest import PROD, QA, ROOT, TOOLS, config, role_policy
from iam import allows, statements

from components import naming
from components.config import parse
from components.pipeline import blue_green_artifact, blue_green_targets
from components.workload import (
    SMOKE_HOOK_MODULES,
    SmokeHookSettings,
    WorkloadArgs,
    codedeploy_hook_arns,
    smoke_hook_settings,
    smoke_hook_timeout_seconds,
    workload_services,
)
from handlers import image_definitions as idf
from handlers import smoke_test
from offline.mocks import ProgramRun, Recorded, run_program

sys.path.insert(0, str(ROOT / "policy"))
# The policy pack's own checks, imported as the Pulumi CLI imports them (from the pack's directory).
import crossdeploy_checks as pack_checks

FUNCTION_T = "aws:lambda/function:Function"
SERVICE_T = "aws:ecs/service:Service"
ROLE_T = "aws:iam/role:Role"
SG_T = "aws:ec2/securityGroup:SecurityGroup"
INGRESS_T = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS_T = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
LOG_GROUP_T = "aws:cloudwatch/logGroup:LogGroup"
GROUP_T = "aws:codedeploy/deploymentGroup:DeploymentGroup"
CERT = f"arn:aws:acm:us-east-2:{PROD}:certificate/0f1e2d3c-aaaa-bbbb-cccc-111122223333"
PROD_REGIONS = ("us-east-2", "eu-west-1")
SMOKE_PATH = "/crossdeploy/test/smoke-test/"
SERVICES = [
    {"name": "orders", "port": 3000, "smokeTest": {"path": "/orders/health", "expectStatus": "200"}},
    # Routed by host: the test sends that Host header. Worst case 5 x 20 s + 4 pauses of 5 s = 120 s.
    {"name": "team/payments", "containerName": "app", "serviceName": "payments", "cluster": "core",
     "routing": {"hosts": ["pay.example.com"], "priority": 5},
     "smokeTest": {"path": "/ready", "timeoutSeconds": 20, "attempts": 5}},
    {"name": "reports"},  # no smoke test: no hook for it
]
TESTED = ("orders", "payments")
TIMEOUT = 5 * 20 + 4 * smoke_test.ATTEMPT_DELAY_SECONDS + 30
PROD_ENV = {"name": "prod", "accountId": PROD, "regions": list(PROD_REGIONS), "requireApproval": True,
            "certificateArns": {"us-east-2": CERT}}
NATIVE_CONFIG = config(**{
    "crossdeploy:environments": [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2"]},  # rolling: the engine's smoke test, no hook
        {**PROD_ENV, "strategy": "canary",
         "blueGreen": {"testListenerPort": 9443, "testTrafficCidrs": ["10.8.0.0/16"]}},
    ],
    "crossdeploy:services": SERVICES,
})
CODEDEPLOY_CONFIG = config(**{
    "crossdeploy:environments": [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2"]},
        {"name": "stage", "accountId": QA, "regions": ["us-west-2"], "strategy": "codedeploy"},
        # tests/test_alarms.py shares this stack (one program run): its alarms follow these settings.
        {**PROD_ENV, "strategy": "codedeploy",
         "blueGreen": {"rollbackAlarm": {"threshold": 3, "evaluationPeriods": 4}}},
    ],
    "crossdeploy:services": SERVICES,
})


def parsed(raw_config: dict):
    raw = {k.split(":", 1)[1]: v for k, v in raw_config.items() if k.startswith("crossdeploy:")}
    return parse(raw, project="crossdeploy", stack="test", aws_region="us-east-2")


@pytest.fixture(scope="module")
def native_run() -> ProgramRun:
    return run_program(NATIVE_CONFIG, stack="test")


@pytest.fixture(scope="module")
def codedeploy_run(smoke_codedeploy_run) -> ProgramRun:
    return smoke_codedeploy_run


@pytest.fixture(scope="module", params=["native", "codedeploy"])
def case(request, native_run, codedeploy_run) -> tuple[str, ProgramRun, dict]:
    if request.param == "native":
        return request.param, native_run, NATIVE_CONFIG
    return request.param, codedeploy_run, CODEDEPLOY_CONFIG


def at(run: ProgramRun, type_: str, account: str, region: str) -> list[Recorded]:
    return [r for r in run.of_type(type_) if r.account == account and r.region == region]


def one(items: list[Recorded]) -> Recorded:
    assert len(items) == 1, [r.name for r in items]
    return items[0]


def hook_function(run: ProgramRun, account: str, region: str) -> Recorded:
    return one([f for f in at(run, FUNCTION_T, account, region)
                if f.inputs["handler"] == "handlers.smoke_test.handler"])


def ecs_service(run: ProgramRun, region: str, name: str) -> Recorded:
    return one([s for s in at(run, SERVICE_T, PROD, region) if s.inputs["name"] == name])


def by_arn(run: ProgramRun, arn: str) -> Recorded:
    return one([r for r in run.custom() if r.outputs.get("arn") == arn])


def by_id(run: ProgramRun, type_: str, id_: str) -> Recorded:
    return one([r for r in run.of_type(type_) if r.outputs.get("id") == id_])


def alb_sg(run: ProgramRun, region: str) -> str:
    (lb,) = at(run, "aws:lb/loadBalancer:LoadBalancer", PROD, region)
    return lb.inputs["securityGroups"][0]


def hook_sg(run: ProgramRun, region: str) -> str:
    (group,) = hook_function(run, PROD, region).inputs["vpcConfig"]["securityGroupIds"]
    return group


def waits_for(resource: Recorded, other: Recorded) -> bool:
    return any(dep.endswith(f"::{other.name}") for dep in resource.dependencies)


# ------------------------------------------------------------------------------------------------ native services


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_native_services_with_a_smoke_test_run_it_as_a_post_test_traffic_lifecycle_hook(native_run, region) -> None:
    cfg = parsed(NATIVE_CONFIG)
    env = cfg.environments[1]
    function = hook_function(native_run, PROD, region)
    assert function.outputs["arn"] == naming.smoke_hook_function_arn(cfg, env, region)
    for svc in cfg.workload_services:
        hooks = ecs_service(native_run, region, svc.service).inputs["deploymentConfiguration"].get("lifecycleHooks")
        if svc.service not in TESTED:
            assert hooks is None
            continue
        (hook,) = hooks
        invoke_role = by_arn(native_run, hook["roleArn"])
        assert hook == {"hookTargetArn": function.outputs["arn"], "roleArn": invoke_role.outputs["arn"],
                        "lifecycleStages": ["POST_TEST_TRAFFIC_SHIFT"], "hookDetails": hook["hookDetails"]}
        assert json.loads(hook["hookDetails"]) == svc.smoke_spec()
        # What the hook itself reads from hookDetails: the same spec, host included where routed by host.
        parsed_spec = smoke_test.SmokeSpec.from_json(json.loads(hook["hookDetails"]))
        assert parsed_spec.host == ("pay.example.com" if svc.service == "payments" else None)
        assert invoke_role.inputs["path"] == SMOKE_PATH and f":role{SMOKE_PATH}" in hook["roleArn"]


def test_rolling_environments_get_no_hook(native_run) -> None:
    assert not [f for f in native_run.of_type(FUNCTION_T) if f.account == QA]
    for svc in at(native_run, SERVICE_T, QA, "us-east-2"):
        assert "deploymentConfiguration" not in svc.inputs
    assert not [r for r in native_run.of_type(ROLE_T) if r.account == QA and r.inputs["path"] == SMOKE_PATH]


def test_native_services_wait_for_the_hook_function_and_its_invoke_role_policy(native_run) -> None:
    for region in PROD_REGIONS:
        function = hook_function(native_run, PROD, region)
        for name in TESTED:
            service = ecs_service(native_run, region, name)
            (hook,) = service.inputs["deploymentConfiguration"]["lifecycleHooks"]
            invoke_role = by_arn(native_run, hook["roleArn"])
            (invoke_policy,) = [p for p in native_run.of_type("aws:iam/rolePolicy:RolePolicy")
                                if p.inputs["role"] == invoke_role.outputs["name"]]
            assert waits_for(service, function) and waits_for(service, invoke_policy), service.dependencies


def test_invoke_role_is_trusted_by_ecs_of_its_account_and_invokes_exactly_its_regions_hook(native_run) -> None:
    cfg = parsed(NATIVE_CONFIG)
    env = cfg.environments[1]
    for region in PROD_REGIONS:
        (hook,) = ecs_service(native_run, region, "orders").inputs["deploymentConfiguration"]["lifecycleHooks"]
        role = by_arn(native_run, hook["roleArn"])
        trust = role.inputs["assumeRolePolicy"]
        assert allows(trust, "sts:AssumeRole", service="ecs.amazonaws.com", context={"aws:SourceAccount": PROD})
        assert not allows(trust, "sts:AssumeRole", service="ecs.amazonaws.com", context={"aws:SourceAccount": QA})
        assert not allows(trust, "sts:AssumeRole", service="lambda.amazonaws.com", context={"aws:SourceAccount": PROD})
        policy = role_policy(native_run, role)
        (statement,) = statements(policy)
        assert statement["Action"] == ["lambda:InvokeFunction"]
        assert statement["Resource"] == [naming.smoke_hook_function_arn(cfg, env, region)]
        other = next(r for r in PROD_REGIONS if r != region)
        assert not allows(policy, "lambda:InvokeFunction", naming.smoke_hook_function_arn(cfg, env, other))


# ------------------------------------------------------------------------------------------------ the function


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_hook_function_runs_in_the_private_subnets_with_its_own_security_group(case, region) -> None:
    _, run, _ = case
    function = hook_function(run, PROD, region)
    vpc = function.inputs["vpcConfig"]
    task_subnets = {tuple(s.inputs["networkConfiguration"]["subnets"]) for s in at(run, SERVICE_T, PROD, region)}
    assert task_subnets == {tuple(vpc["subnetIds"])}, "the tasks' (private) subnets"
    public = set(one(at(run, "aws:lb/loadBalancer:LoadBalancer", PROD, region)).inputs["subnets"])
    assert not public & set(vpc["subnetIds"])
    task_sgs = {g for s in at(run, SERVICE_T, PROD, region) for g in s.inputs["networkConfiguration"]["securityGroups"]}
    (group,) = vpc["securityGroupIds"]
    assert group not in task_sgs and group != alb_sg(run, region)
    assert by_id(run, SG_T, group).region == region


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_hook_function_settings_and_environment(case, region) -> None:
    kind, run, raw = case
    cfg = parsed(raw)
    env = cfg.environments[-1]
    function = hook_function(run, PROD, region)
    assert function.inputs["name"] == naming.smoke_hook_function_name(cfg, "prod")
    assert function.inputs["runtime"] == "python3.12" and function.inputs["timeout"] == TIMEOUT
    (lb,) = at(run, "aws:lb/loadBalancer:LoadBalancer", PROD, region)
    variables = function.inputs["environment"]["variables"]
    expected = {"LOAD_BALANCER": lb.outputs["arnSuffix"], "TEST_PORT": "9443" if kind == "native" else "8443",
                "PROTOCOL": "HTTPS" if region == "us-east-2" else "HTTP", "ACCOUNT_ID": PROD}
    if kind == "codedeploy":
        expected["CODEDEPLOY_APPLICATION"] = naming.codedeploy_application_name(cfg, "prod")
        expected["SMOKE_TESTS"] = variables["SMOKE_TESTS"]
        tests = json.loads(variables["SMOKE_TESTS"])
        assert tests == {naming.deployment_group_name(cfg, s): s.smoke_spec()
                         for s in cfg.workload_services if s.smoke_test}
        groups = {g.inputs["deploymentGroupName"] for g in at(run, GROUP_T, PROD, region)}
        assert set(tests) < groups, "a test per smoke-tested deployment group, none for the others"
        assert all(g.inputs["appName"] == expected["CODEDEPLOY_APPLICATION"] for g in at(run, GROUP_T, PROD, region))
    assert variables == expected
    # What the handler reads, it accepts.
    listener = smoke_test.listener_from_env(variables)
    assert (listener.port, listener.protocol) == (int(expected["TEST_PORT"]), expected["PROTOCOL"])
    for group in (json.loads(variables["SMOKE_TESTS"]) if kind == "codedeploy" else {}):
        assert smoke_test.spec_for_group(group, variables)
    assert naming.smoke_hook_function_arn(cfg, env, region) == function.outputs["arn"]


def test_hook_package_is_the_tested_code_byte_for_byte(native_run, tmp_path) -> None:
    function = hook_function(native_run, PROD, "us-east-2")
    assets = function.inputs["code"].assets
    assert set(assets) == {f"handlers/{m}" for m in SMOKE_HOOK_MODULES}
    for name, asset in assets.items():
        assert Path(asset.path).read_bytes() == (ROOT / name).read_bytes(), f"{name} differs from the repository file"
    # Every handlers module smoke_test imports is packaged ...
    tree = ast.parse((ROOT / "handlers" / "smoke_test.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {f"handlers/{m.split('.', 1)[1]}.py" for m in imported if m.startswith("handlers.")} <= set(assets)
    # ... and the entry point imports with nothing else beside it, as Lambda unpacks the package.
    for name, asset in assets.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(Path(asset.path).read_bytes())
    module, _, attribute = function.inputs["handler"].rpartition(".")
    code = f"import {module} as m; print(callable(m.{attribute}), m.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.stdout.split() == ["True", str(tmp_path / "handlers" / "smoke_test.py")]


def test_hook_log_group_has_a_retention_and_exists_before_the_function(case) -> None:
    _, run, _ = case
    for region in PROD_REGIONS:
        function = hook_function(run, PROD, region)
        (logs,) = [g for g in at(run, LOG_GROUP_T, PROD, region)
                   if g.inputs["name"] == f"/aws/lambda/{function.inputs['name']}"]
        assert logs.inputs["retentionInDays"] == 30
        assert waits_for(function, logs)


def test_hook_timeout_covers_the_slowest_smoke_test() -> None:
    assert smoke_hook_timeout_seconds([{"path": "/"}]) == 3 * 10 + 2 * 5 + 30
    slowest = {"path": "/", "timeoutSeconds": smoke_test.MAX_TIMEOUT_SECONDS, "attempts": smoke_test.MAX_ATTEMPTS}
    timeout = smoke_hook_timeout_seconds([{"path": "/"}, slowest])
    assert smoke_test.worst_case_seconds(smoke_test.SmokeSpec.from_json(slowest)) < timeout <= 900


# ------------------------------------------------------------------------------------------------ network path


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_only_the_hook_reaches_the_test_listener_besides_the_configured_ranges(case, region) -> None:
    kind, run, _ = case
    port = 9443 if kind == "native" else 8443
    into_alb = [r for r in at(run, INGRESS_T, PROD, region) if r.inputs["securityGroupId"] == alb_sg(run, region)
                and r.inputs["fromPort"] == port]
    assert all(r.inputs["toPort"] == port and r.inputs["ipProtocol"] == "tcp" for r in into_alb)
    (from_hook,) = [r for r in into_alb if "referencedSecurityGroupId" in r.inputs]
    assert from_hook.inputs["referencedSecurityGroupId"] == hook_sg(run, region) and "cidrIpv4" not in from_hook.inputs
    cidrs = [r.inputs["cidrIpv4"] for r in into_alb if r is not from_hook]
    assert cidrs == (["10.8.0.0/16"] if kind == "native" else []), "testTrafficCidrs unchanged"
    # Nothing else admits the hook's group anywhere.
    assert [r for r in run.of_type(INGRESS_T) if r.inputs.get("referencedSecurityGroupId") == hook_sg(run, region)] \
        == [from_hook]


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_hook_egress_is_the_test_listener_and_https_for_aws_apis(case, region) -> None:
    kind, run, _ = case
    port = 9443 if kind == "native" else 8443
    rules = [r.inputs for r in at(run, EGRESS_T, PROD, region) if r.inputs["securityGroupId"] == hook_sg(run, region)]
    assert sorted(rules, key=lambda r: r["fromPort"]) == sorted([
        {"securityGroupId": hook_sg(run, region), "ipProtocol": "tcp", "fromPort": port, "toPort": port,
         "referencedSecurityGroupId": alb_sg(run, region), "description": "to the test listener"},
        {"securityGroupId": hook_sg(run, region), "ipProtocol": "tcp", "fromPort": 443, "toPort": 443,
         "cidrIpv4": "0.0.0.0/0", "description": "AWS APIs"},
    ], key=lambda r: r["fromPort"])
    assert not [r for r in at(run, INGRESS_T, PROD, region) if r.inputs["securityGroupId"] == hook_sg(run, region)]


# ------------------------------------------------------------------------------------------------ IAM


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_hook_role_writes_its_own_logs_and_manages_only_its_own_network_interfaces(case, region) -> None:
    kind, run, _ = case
    function = hook_function(run, PROD, region)
    role = by_arn(run, function.inputs["role"])
    assert role.inputs["path"] == SMOKE_PATH
    trust = role.inputs["assumeRolePolicy"]
    assert allows(trust, "sts:AssumeRole", service="lambda.amazonaws.com", context={"aws:SourceAccount": PROD})
    assert not allows(trust, "sts:AssumeRole", service="ecs.amazonaws.com", context={"aws:SourceAccount": PROD})
    policy = role_policy(run, role)
    arn = f"arn:aws:logs:{region}:{PROD}:log-group:/aws/lambda/{function.inputs['name']}"
    assert allows(policy, "logs:PutLogEvents", f"{arn}:log-stream:2026/12/01/[$LATEST]abc")
    assert not allows(policy, "logs:PutLogEvents", f"arn:aws:logs:{region}:{PROD}:log-group:/ecs/other:log-stream:x")
    assert not allows(policy, "logs:CreateLogGroup", arn)
    ec2 = f"arn:aws:ec2:{region}:{PROD}"
    subnets = function.inputs["vpcConfig"]["subnetIds"]
    for resource in [*(f"{ec2}:subnet/{s}" for s in subnets), f"{ec2}:security-group/{hook_sg(run, region)}",
                     f"{ec2}:network-interface/eni-0123456789abcdef0"]:
        assert allows(policy, "ec2:CreateNetworkInterface", resource), resource
    public = one(at(run, "aws:lb/loadBalancer:LoadBalancer", PROD, region)).inputs["subnets"][0]
    for resource in (f"{ec2}:subnet/{public}", f"{ec2}:security-group/{alb_sg(run, region)}",
                     f"arn:aws:ec2:us-west-2:{PROD}:network-interface/eni-0123456789abcdef0",
                     f"arn:aws:ec2:{region}:{QA}:network-interface/eni-0123456789abcdef0"):
        assert not allows(policy, "ec2:CreateNetworkInterface", resource), resource
    for action in ("ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"):
        assert allows(policy, action, f"{ec2}:network-interface/eni-0123456789abcdef0")
        assert not allows(policy, action, f"arn:aws:ec2:us-west-2:{PROD}:network-interface/eni-0123456789abcdef0")
        assert not allows(policy, action, f"{ec2}:subnet/{subnets[0]}")
    assert allows(policy, "ec2:DescribeNetworkInterfaces", "*")
    codedeploy = [s for s in statements(policy) if any(a.startswith("codedeploy:") for a in s["Action"])]
    assert bool(codedeploy) == (kind == "codedeploy")


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_codedeploy_hook_answers_exactly_the_deployment_groups_it_tests(codedeploy_run, region) -> None:
    cfg = parsed(CODEDEPLOY_CONFIG)
    role = by_arn(codedeploy_run, hook_function(codedeploy_run, PROD, region).inputs["role"])
    policy = role_policy(codedeploy_run, role)
    application = naming.codedeploy_application_name(cfg, "prod")
    for svc in cfg.workload_services:
        group = f"arn:aws:codedeploy:{region}:{PROD}:deploymentgroup:{application}/{svc.service}"
        for action in ("codedeploy:GetDeployment", "codedeploy:PutLifecycleEventHookExecutionStatus"):
            assert allows(policy, action, group) == (svc.service in TESTED), (action, group)
    other_region = next(r for r in PROD_REGIONS if r != region)
    elsewhere = (f"arn:aws:codedeploy:{other_region}:{PROD}:deploymentgroup:{application}/orders",
                 f"arn:aws:codedeploy:{region}:{PROD}:deploymentgroup:{application}-x/orders",
                 f"arn:aws:codedeploy:{region}:{QA}:deploymentgroup:{application}/orders")
    assert not any(allows(policy, "codedeploy:PutLifecycleEventHookExecutionStatus", arn) for arn in elsewhere)
    # The groups it may answer are the ones that exist.
    for statement in statements(policy):
        if "codedeploy:GetDeployment" in statement["Action"]:
            existing = {g.outputs["arn"] for g in at(codedeploy_run, GROUP_T, PROD, region)}
            assert set(statement["Resource"]) <= existing


def test_codedeploy_environments_need_no_invoke_role(codedeploy_run) -> None:
    smoke_roles = [r for r in codedeploy_run.of_type(ROLE_T) if r.inputs["path"] == SMOKE_PATH]
    assert len(smoke_roles) == 3  # an execution role per hook: stage (us-west-2), prod (two regions)
    assert all(statements(r.inputs["assumeRolePolicy"])[0]["Principal"] == {"Service": "lambda.amazonaws.com"}
               for r in smoke_roles)
    hooks = [f for f in codedeploy_run.of_type(FUNCTION_T) if f.account != TOOLS]
    assert sorted((f.account, f.region) for f in hooks) == [(QA, "us-west-2"), (PROD, "eu-west-1"),
                                                            (PROD, "us-east-2")]


@pytest.mark.parametrize("account", [QA, PROD])
def test_codedeploy_role_may_invoke_exactly_the_hooks_of_its_account(codedeploy_run, account) -> None:
    cfg = parsed(CODEDEPLOY_CONFIG)
    (role,) = [r for r in codedeploy_run.of_type(ROLE_T) if r.account == account
               and r.inputs["path"] == "/crossdeploy/test/codedeploy/"]
    # AWSCodeDeployRoleForECS stays attached; it only covers functions named CodeDeployHook_*.
    assert any(a.inputs["role"] == role.outputs["name"] and a.account == account
               for a in codedeploy_run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment"))
    policy = role_policy(codedeploy_run, role)
    hooks = {f.outputs["arn"] for f in codedeploy_run.of_type(FUNCTION_T) if f.account == account}
    assert hooks == set(codedeploy_hook_arns(cfg, account)) and len(hooks) == (1 if account == QA else 2)
    (statement,) = statements(policy)
    assert statement["Action"] == ["lambda:InvokeFunction"] and set(statement["Resource"]) == hooks
    others = {f.outputs["arn"] for f in codedeploy_run.of_type(FUNCTION_T)} - hooks
    assert others and not any(allows(policy, "lambda:InvokeFunction", arn) for arn in others)
    assert not allows(policy, "lambda:InvokeFunction",
                      f"arn:aws:lambda:us-east-2:{account}:function:CodeDeployHook_other")


def test_every_new_iam_document_passes_the_least_privilege_checks(case) -> None:
    _, run, _ = case
    least_privilege.test_no_wildcard_actions_are_allowed(run)
    least_privilege.test_resource_star_only_for_actions_aws_cannot_scope(run)
    least_privilege.test_service_roles_trust_only_their_service_in_this_account(run)
    least_privilege.test_every_inline_policy_fits_iam_limit(run)
    assert least_privilege.check_agreement(run) == []
    # The policy pack's own rules, on every resource the hooks add.
    new = [r for r in run.custom() if SMOKE_PATH in str(r.inputs.get("path", "")) or "smoke" in r.name
           or (r.type == "aws:iam/rolePolicy:RolePolicy" and "codedeploy-hooks" in r.name)]
    assert len([r for r in new if r.type == "aws:iam/rolePolicy:RolePolicy"]) >= 3
    for r in new:
        for check in (pack_checks.wildcard_action_violations, pack_checks.resource_star_violations,
                      pack_checks.pass_role_violations):
            assert check(r.type, r.name, r.inputs) == [], r.name


# ------------------------------------------------------------------------------------------------ CodeDeploy AppSpec


def test_blue_green_targets_carry_the_hook_only_for_services_with_a_smoke_test() -> None:
    cfg = parsed(CODEDEPLOY_CONFIG)
    qa, stage, prod = cfg.environments
    for svc in cfg.workload_services:
        assert blue_green_targets(cfg, qa, svc) == ()
        for env in (stage, prod):
            hooks = [t.smoke_hook_arn for t in blue_green_targets(cfg, env, svc)]
            assert hooks == [naming.smoke_hook_function_arn(cfg, env, r) if svc.smoke_test else None
                             for r in env.regions]


def _build_targets(run: ProgramRun) -> list[dict]:
    targets = []
    for project in run.of_type("aws:codebuild/project:Project"):
        spec = yaml.safe_load(project.inputs["source"]["buildspec"])
        targets.extend(json.loads(spec["env"]["variables"].get("BLUE_GREEN_TARGETS", "[]")))
    return targets


def test_the_appspec_the_build_writes_runs_the_hook_after_test_traffic(codedeploy_run, tmp_path,
                                                                        monkeypatch) -> None:
    """The BLUE_GREEN_TARGETS of the program's build projects, through the real build handler: prod's home-region
    artifacts (no replica to wait for), each AppSpec as CodeDeploy reads it."""
    for name in ("BLUE_GREEN_TARGETS", "CODEBUILD_SRC_DIR", "IMAGE_DETAIL_FILE", "OUTPUT_DIR"):
        monkeypatch.delenv(name, raising=False)
    cfg = parsed(CODEDEPLOY_CONFIG)
    prod = cfg.environments[2]
    artifact = blue_green_artifact("prod", "us-east-2")
    targets = [t for t in _build_targets(codedeploy_run) if t["artifact"] == artifact]
    assert sorted(t["containerName"] for t in targets) == ["app", "orders", "reports"]
    digest = "sha256:" + "ab" * 32
    for target in targets:
        repository = next(s.name for s in cfg.services if s.container == target["containerName"])
        detail = {"ImageURI": f"{TOOLS}.dkr.ecr.us-east-2.amazonaws.com/{repository}@{digest}",
                  "ImageDigest": digest, "RepositoryName": repository}
        (tmp_path / "imageDetail.json").write_text(json.dumps(detail))
        out = tmp_path / repository.replace("/", "-")
        assert idf.main([f"--image-detail={tmp_path / 'imageDetail.json'}", "--home-region=us-east-2",
                         f"--output-dir={out}", f"--blue-green-targets={json.dumps([target])}"]) == 0
        appspec = yaml.safe_load((out / artifact / "appspec.yaml").read_text())
        if target["containerName"] == "reports":
            assert "Hooks" not in appspec
        else:
            assert appspec["Hooks"] == [{"AfterAllowTestTraffic": naming.smoke_hook_function_arn(cfg, prod,
                                                                                                  "us-east-2")}]
            assert by_arn(codedeploy_run, appspec["Hooks"][0]["AfterAllowTestTraffic"]).type == FUNCTION_T


# ------------------------------------------------------------------------------------------------ planner, validation


def test_smoke_hook_settings_only_where_a_hook_runs_a_smoke_test() -> None:
    native, codedeploy = parsed(NATIVE_CONFIG), parsed(CODEDEPLOY_CONFIG)
    assert smoke_hook_settings(native, native.environments[0], "us-east-2") is None  # rolling
    hook = smoke_hook_settings(native, native.environments[1], "eu-west-1")
    assert hook is not None and hook.invoke_role_name and hook.role_path == SMOKE_PATH
    assert hook.timeout_seconds == TIMEOUT
    bg = smoke_hook_settings(codedeploy, codedeploy.environments[2], "eu-west-1")
    assert bg is not None and bg.invoke_role_name is None
    # Roles are global: unique per environment and region.
    for cfg, places in ((native, 2), (codedeploy, 3)):
        hooks = [h for env in cfg.environments for r in env.regions if (h := smoke_hook_settings(cfg, env, r))]
        names = [n for h in hooks for n in (h.role_name, h.invoke_role_name) if n]
        assert len(hooks) == places and len(set(names)) == len(names) == places * (2 if cfg is native else 1)
    untested = parsed(config(**{**CODEDEPLOY_CONFIG, "crossdeploy:services": [{"name": "reports"}]}))
    assert all(smoke_hook_settings(untested, env, env.regions[0]) is None for env in untested.environments)
    assert codedeploy_hook_arns(untested, PROD) == ()


def _args(raw: dict, env_index: int = -1, **changes) -> dict:
    cfg = parsed(raw)
    env = cfg.environments[env_index]
    region = env.regions[0]
    return {"provider": None, "environment": env.name, "region": region, "network": None,
            "services": workload_services(cfg, env, region), "smoke_hook": smoke_hook_settings(cfg, env, region),
            "blue_green": None, "native": None, "rollback_alarm": env.blue_green_settings.rollback_alarm, **changes}


def _native(raw: dict) -> dict:
    from components.workload import NativeSettings

    env = parsed(raw).environments[-1]
    return {"native": NativeSettings(strategy=env.strategy, traffic_shift=naming.traffic_shift(env),
                                     settings=env.blue_green_settings,
                                     infrastructure_role_arn=f"arn:aws:iam::{PROD}:role/x")}


def test_workload_args_refuse_smoke_tests_without_a_hook_and_hooks_without_tests() -> None:
    WorkloadArgs(**_args(NATIVE_CONFIG, **_native(NATIVE_CONFIG)))  # consistent
    with pytest.raises(ValueError, match="have smoke tests, which run in the hook"):
        WorkloadArgs(**_args(NATIVE_CONFIG, smoke_hook=None, **_native(NATIVE_CONFIG)))
    untested = tuple(dataclasses.replace(s, smoke_spec=None) for s in _args(NATIVE_CONFIG)["services"])
    with pytest.raises(ValueError, match="no service has a smoke test"):
        WorkloadArgs(**_args(NATIVE_CONFIG, services=untested, **_native(NATIVE_CONFIG)))
    with pytest.raises(ValueError, match="only native and codedeploy environments run the hook"):
        WorkloadArgs(**_args(NATIVE_CONFIG))  # rolling
    hook = _args(NATIVE_CONFIG)["smoke_hook"]
    with pytest.raises(ValueError, match="ECS needs a role to invoke"):
        WorkloadArgs(**_args(NATIVE_CONFIG, smoke_hook=dataclasses.replace(hook, invoke_role_name=None),
                             **_native(NATIVE_CONFIG)))


def test_smoke_hook_settings_refuse_what_lambda_would() -> None:
    base = {"function_name": "f", "partition": "aws", "account_id": PROD, "role_name": "r", "role_path": "/x/"}
    with pytest.raises(ValueError, match="timeout_seconds: Lambda allows 1-900"):
        SmokeHookSettings(**base, timeout_seconds=901)
    with pytest.raises(ValueError, match="role_path"):
        SmokeHookSettings(**{**base, "role_path": "x"}, timeout_seconds=60)
    with pytest.raises(ValueError, match="two roles"):
        SmokeHookSettings(**base, timeout_seconds=60, invoke_role_name="r")


def test_the_codedeploy_hook_environment_must_fit_lambdas_limit() -> None:
    # Refused when the config is loaded, before any resource (tests/test_limits.py has the exact threshold).
    from components.config import ConfigError

    services = [{"name": f"service-{i:02d}", "routing": {"paths": [f"/s{i}", f"/s{i}/*"], "priority": i + 1},
                 "smokeTest": {"path": f"/s{i}/health-with-a-longer-path", "expectStatus": "200-299,301"}}
                for i in range(40)]
    raw = config(**{"crossdeploy:environments": [{**PROD_ENV, "strategy": "codedeploy"}],
                    "crossdeploy:services": services})
    with pytest.raises(ConfigError, match=r"smoke-test hook's environment .* would be \d+ bytes, over Lambda's limit "
                                          r"of 4096"):
        parsed(raw)
    parsed(config(**{"crossdeploy:environments": [{**PROD_ENV, "strategy": "codedeploy"}],
                     "crossdeploy:services": services[:10]}))
