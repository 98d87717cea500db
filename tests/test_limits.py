"""AWS size and count limits are checked when the config is loaded (components/limits.py), and the figures checked
are the ones the program deploys.

Each limit: a config just under it loads, one just over it is refused with the key path, the actual value and the
limit (the threshold is found by measuring, not hard-coded). Then the program is run under the mocks and each
figure is compared with the input AWS would receive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import yaml
from conftest import PROD, QA, TOOLS, config, pipelines, role_policy

from components import limits, naming, push_deploy
from components import policies as p
from components.config import ConfigError, StackConfig, parse
from components.lambda_code import handler_files
from components.pipeline import blue_green_artifact
from handlers import smoke_test
from offline.mocks import ProgramRun, run_program

AWS_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "eu-west-1", "eu-west-2",
               "eu-west-3", "eu-central-1", "eu-north-1", "ap-south-1", "ap-northeast-1", "ap-northeast-2",
               "ap-northeast-3", "ap-southeast-1", "ap-southeast-2", "sa-east-1", "af-south-1", "ap-east-1",
               "eu-south-1", "me-south-1", "ap-southeast-3", "me-central-1", "eu-central-2", "eu-south-2",
               "ap-south-2", "il-central-1", "ca-west-1", "ap-southeast-4")


def _raw(raw_config: dict[str, Any]) -> dict[str, Any]:
    return {k.split(":", 1)[1]: v for k, v in raw_config.items() if k.startswith("crossdeploy:")}


def load(raw_config: dict[str, Any]) -> StackConfig:
    """Parse a config (``_stack``: the stack name, default test), limits checked."""
    return parse(_raw(raw_config), project="crossdeploy", stack=raw_config.get("_stack", "test"),
                 aws_region=raw_config.get("aws:region"))


def unchecked(raw_config: dict[str, Any]) -> StackConfig:
    """The config as the program would see it if the limits were not checked: to measure what is over them."""
    with mock.patch.object(limits, "problems", return_value=[]):
        return load(raw_config)


def refusal(raw_config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(raw_config)
    return exc.value.problems


def threshold(make: Callable[[int], dict[str, Any]], measure: Callable[[StackConfig], int], limit: int,
              low: int, high: int) -> tuple[int, int]:
    """The largest n in [low, high) whose config measures at most `limit`, and its measure; the config of n + 1
    measures over it (asserted)."""
    assert measure(unchecked(make(low))) <= limit < measure(unchecked(make(high))), "widen the search range"
    while high - low > 1:
        mid = (low + high) // 2
        if measure(unchecked(make(mid))) <= limit:
            low = mid
        else:
            high = mid
    return low, measure(unchecked(make(low)))


def assert_refused(problems: list[str], key_path: str, actual: int, limit: int, service: str) -> None:
    """One problem names `key_path`, the actual value and the limit, in the documented shape."""
    found = [m for m in problems if m.startswith(f"{key_path}: ")]
    assert len(found) == 1, problems
    shape = rf" would be {actual}( characters| bytes)?, over {service}'s limit of {limit}; \w"
    assert re.search(shape, found[0]), found[0]


# ------------------------------------------------------------------------------------------- the limits one by one


def test_the_constants_agree_with_the_components() -> None:
    from components import buildspec, pipeline, workload

    assert pipeline.MAX_USER_PARAMETERS == limits.CODEPIPELINE_USER_PARAMETERS_CHARS == 1000
    assert buildspec.MAX_BUILDSPEC_CHARS == limits.CODEBUILD_INLINE_BUILDSPEC_CHARS == 25600
    assert workload.LAMBDA_ENVIRONMENT_LIMIT == limits.LAMBDA_ENVIRONMENT_BYTES == 4096
    assert push_deploy.MAX_PATTERN_CHARS == limits.EVENTBRIDGE_PATTERN_CHARS == 2048


LONG_REGIONS = ("ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2",
                "ap-southeast-3", "ap-southeast-4", "ap-southeast-5", "ap-southeast-6", "ap-southeast-7",
                "ca-central-1", "eu-central-1", "eu-central-2", "il-central-1")


def _bake(n: int) -> dict[str, Any]:
    # Every alarm name holds the service name (each capped at 255 characters), every region is listed, and the
    # deploy role's ARN holds the stack name. The deploy role's own policy caps an account at about 16 regions.
    return {**config(**{
        "crossdeploy:environments": [{"name": "p" * 32, "accountId": PROD, "regions": list(LONG_REGIONS),
                                      "bakeMinutes": 10}],
        "crossdeploy:services": [{"name": "s" * n}]}), "_stack": "x" * 40}


def test_a_bake_over_codepipelines_user_parameters_limit_is_a_config_error() -> None:
    def measure(cfg: StackConfig) -> int:
        return limits.bake_user_parameters_chars(cfg, cfg.environments[0], cfg.services[0])

    n, _ = threshold(_bake, measure, 1000, 2, 230)
    load(_bake(n))
    over = measure(unchecked(_bake(n + 1)))
    assert_refused(refusal(_bake(n + 1)), "environments[0].bakeMinutes", over, 1000, "CodePipeline")


def _hook(n: int) -> dict[str, Any]:
    services = [{"name": f"service-{i:02d}", "routing": {"paths": [f"/s{i}", f"/s{i}/*"], "priority": i + 1},
                 "smokeTest": {"path": f"/s{i}/health" + ("x" * n if i == 0 else "")}} for i in range(41)]
    return config(**{"crossdeploy:environments": [{"name": "prod", "accountId": PROD, "regions": ["us-east-2"],
                                                   "strategy": "codedeploy"}],
                     "crossdeploy:services": services})


def test_a_codedeploy_hooks_environment_over_lambdas_limit_is_a_config_error() -> None:
    def measure(cfg: StackConfig) -> int:
        return limits.lambda_environment_bytes(limits.smoke_hook_environment(cfg, cfg.environments[0], "us-east-2"))

    n, _ = threshold(_hook, measure, 4096, 0, 110)
    load(_hook(n))
    over = measure(unchecked(_hook(n + 1)))
    problems = refusal(_hook(n + 1))
    assert_refused(problems, "services", over, 4096, "Lambda")
    assert "environments[0] ('prod'; us-east-2)" in problems[0] and "bytes" in problems[0]


def _buildspec(n: int) -> dict[str, Any]:
    return config(**{"crossdeploy:environments": [{"name": "prod", "accountId": PROD, "regions": ["us-east-2"],
                                                   "strategy": "codedeploy"}],
                     "crossdeploy:services": [{"name": "orders", "environment": {"NOTES": "x" * n}}]})


def test_a_blue_green_target_too_large_for_codebuild_alone_is_a_config_error() -> None:
    def measure(cfg: StackConfig) -> int:
        return limits.blue_green_buildspec_chars(cfg, cfg.environments[0], cfg.services[0])["us-east-2"]

    n, _ = threshold(_buildspec, measure, 25600, 0, 8000)
    load(_buildspec(n))
    over = measure(unchecked(_buildspec(n + 1)))
    problems = refusal(_buildspec(n + 1))
    assert_refused(problems, "services[0]", over, 25600, "CodeBuild")
    assert "environments[0] ('prod') in us-east-2" in problems[0]


def _builds(rolling: bool) -> dict[str, Any]:
    # Targets too large to share a build: one build each, 5 x 10 (the deploy role's policy caps a codedeploy
    # account at about 12 regions), and the image definitions build for a rolling environment makes 51.
    envs = [{"name": f"e{i}", "accountId": f"{300000000000 + i}", "regions": list(AWS_REGIONS[:10]),
             "strategy": "codedeploy"} for i in range(5)]
    if rolling:
        envs.insert(0, {"name": "dev", "accountId": "222233334444", "regions": ["us-east-2"]})
    return config(**{"crossdeploy:environments": envs,
                     "crossdeploy:services": [{"name": "orders", "environment": {"NOTES": "x" * 3000}}]})


def test_a_build_stage_over_codepipelines_action_limit_is_a_config_error() -> None:
    cfg = load(_builds(rolling=False))
    assert limits.build_action_count(cfg, cfg.services[0]) == 50
    problems = refusal(_builds(rolling=True))
    found = [m for m in problems if m.startswith("services[0]: ")]
    assert len(found) == 1 and "would be 51, over CodePipeline's limit of 50; " in found[0], found


def _stages(approvals: int) -> dict[str, Any]:
    envs = [{"name": f"e{i}", "accountId": f"{300000000000 + i}", "regions": ["us-east-2"], "requireApproval": True}
            for i in range(approvals)]
    return config(**{"crossdeploy:environments": [*envs, {"name": "last", "accountId": QA, "regions": ["us-east-2"]}]})


def test_a_pipeline_over_codepipelines_stage_limit_is_a_config_error() -> None:
    assert limits.pipeline_stage_count(load(_stages(23))) == 2 + 23 * 2 + 1 == 49
    assert limits.pipeline_stage_count(unchecked(_stages(24))) == 51
    problems = refusal(_stages(24))
    assert_refused(problems, "environments", 51, 50, "CodePipeline")
    assert "the stages of each service pipeline" in problems[0]


def _push(n: int) -> dict[str, Any]:
    tags = [f"v{i}-" + "x" * 100 + "*" for i in range(15)] + ["r-" + "y" * n]
    return config(**{"crossdeploy:environments": [{"name": "qa", "accountId": QA, "regions": ["us-east-2"],
                                                   "pushTags": tags}],
                     "crossdeploy:services": [{"name": "web-a", "delivery": "push", "pushMode": "force"},
                                              {"name": "web-b", "delivery": "push", "pushMode": "force"}]})


def test_push_tag_patterns_over_eventbridges_limit_are_a_config_error() -> None:
    def measure(cfg: StackConfig) -> int:
        return min(limits.push_pattern_chars(cfg, s) for s in cfg.push_services)

    n, _ = threshold(_push, measure, 2048, 0, 126)
    load(_push(n))
    over = measure(unchecked(_push(n + 1)))
    # Both repositories are over: the tag patterns are named, with the shortest repository's figure.
    assert_refused(refusal(_push(n + 1)), "environments[].pushTags", over, 2048, "EventBridge")


def test_a_push_repository_name_over_eventbridges_limit_is_a_config_error() -> None:
    cfg = unchecked(_push(0))
    room = 2048 - limits.push_pattern_chars(cfg, cfg.push_services[0])
    raw = _push(0)
    raw["crossdeploy:services"][0]["name"] = "web-a" + "w" * (room + 1)
    problems = refusal(raw)
    assert_refused(problems, "services[0].name", 2049, 2048, "EventBridge")
    raw["crossdeploy:services"][0]["name"] = "web-a" + "w" * room
    load(raw)


def _existing(n: int, count: int = 30) -> dict[str, Any]:
    # Existing services are granted one by one (their own service ARN in every region, and their roles).
    services = [{"name": f"legacy-{i:02d}" + ("z" * n if i == 0 else ""), "existing": True, "cluster": "legacy",
                 "executionRoleName": "ecsTaskExecutionRole"} for i in range(count)]
    return config(**{"crossdeploy:environments": [{"name": "prod", "accountId": PROD,
                                                   "regions": ["us-east-2", "eu-west-1"]}],
                     "crossdeploy:services": services})


def test_a_deploy_role_policy_over_iams_limit_is_a_config_error() -> None:
    def measure(cfg: StackConfig) -> int:
        return limits.deploy_role_policy_chars(cfg, PROD)[0]

    n, _ = threshold(_existing, measure, 10_240, 0, 200)
    load(_existing(n))
    over = measure(unchecked(_existing(n + 1)))
    assert_refused(refusal(_existing(n + 1)), "environments[0].accountId", over, 10_240, "IAM")


def _clusters(n: int) -> dict[str, Any]:
    services = [{"name": f"svc-{i:02d}", "cluster": f"cluster-{i:02d}" + ("c" * n if i == 0 else "")}
                for i in range(24)]
    return config(**{"crossdeploy:environments": [{"name": "prod", "accountId": PROD, "regions": ["us-east-2"]}],
                     "crossdeploy:services": services})


def test_clusters_over_eventbridges_pattern_limit_are_a_config_error() -> None:
    def measure(cfg: StackConfig) -> int:
        return limits.rollout_pattern_chars(cfg, PROD, "us-east-2")

    n, _ = threshold(_clusters, measure, 2048, 0, 240)
    load(_clusters(n))
    over = measure(unchecked(_clusters(n + 1)))
    assert_refused(refusal(_clusters(n + 1)), "services", over, 2048, "EventBridge")


def test_a_push_package_over_lambdas_limits_is_a_config_error(monkeypatch) -> None:
    # 50 MB of deploy documents would take thousands of services; the limits are lowered around the measured size.
    raw = config(**{"crossdeploy:services": [{"name": "web", "delivery": "push", "pushMode": "revision"}]})
    unzipped, zipped = limits.push_package_bytes(load(raw))
    assert zipped is None
    monkeypatch.setattr(limits, "LAMBDA_ZIPPED_PACKAGE_BYTES", unzipped - 1)
    monkeypatch.setattr(limits, "LAMBDA_UNZIPPED_PACKAGE_BYTES", unzipped)
    load(raw)  # the package zips to far less than it holds
    unzipped, zipped = limits.push_package_bytes(load(raw))
    assert zipped is not None and zipped < unzipped / 2
    monkeypatch.setattr(limits, "LAMBDA_UNZIPPED_PACKAGE_BYTES", unzipped - 1)
    assert_refused(refusal(raw), "services", unzipped, unzipped - 1, "Lambda")
    monkeypatch.setattr(limits, "LAMBDA_UNZIPPED_PACKAGE_BYTES", unzipped)
    monkeypatch.setattr(limits, "LAMBDA_ZIPPED_PACKAGE_BYTES", zipped - 1)
    assert_refused(refusal(raw), "services", zipped, zipped - 1, "Lambda")


def test_limit_problems_come_with_the_other_config_errors() -> None:
    # Limits are measured on a config whose fields are valid; a rule across keys is reported with them.
    raw = _stages(24)
    raw["crossdeploy:services"][0]["pushMode"] = "force"
    problems = refusal(raw)
    assert any(m.startswith("services[0].pushMode: ") for m in problems), problems
    assert any(m.startswith("environments: ") and "would be 51," in m for m in problems), problems


# ------------------------------------------------------------------------------- the figures are what is deployed


@pytest.fixture(scope="module")
def codedeploy_run(smoke_codedeploy_run: ProgramRun) -> tuple[ProgramRun, StackConfig]:
    """tests/test_smoke_hooks.py's codedeploy stack (bakes, a smoke-test hook with SMOKE_TESTS, a one-region
    blue/green environment), run once per session in conftest."""
    from test_smoke_hooks import CODEDEPLOY_CONFIG

    return smoke_codedeploy_run, load(CODEDEPLOY_CONFIG)


def _pipeline_of(run: ProgramRun, cfg: StackConfig, service) -> dict:
    name = p.iam_name(cfg.name_prefix, naming.safe(service.name), max_len=100)
    (found,) = [x for x in pipelines(run) if x.inputs["name"] == name]
    return found.inputs


def test_bake_user_parameters_are_measured_as_deployed(codedeploy_run) -> None:
    run, cfg = codedeploy_run
    measured = 0
    for service in cfg.pipeline_services:
        stages = {s["name"]: s for s in _pipeline_of(run, cfg, service)["stages"]}
        for env in cfg.baked_environments(service):
            (bake,) = [a for a in stages[f"Deploy-{env.name}"]["actions"] if a["name"] == "Bake"]
            assert len(bake["configuration"]["UserParameters"]) == limits.bake_user_parameters_chars(cfg, env,
                                                                                                    service)
            measured += 1
    assert measured >= 2


def test_the_hook_environment_is_measured_as_deployed(codedeploy_run) -> None:
    run, cfg = codedeploy_run
    compared = 0
    for env in cfg.environments:
        name = naming.smoke_hook_function_name(cfg, env.name)
        for region in env.regions if env.codedeploy else ():
            (function,) = [f for f in run.of_type("aws:lambda/function:Function")
                           if f.inputs["name"] == name and f.region == region]
            deployed = function.inputs["environment"]["variables"]
            figure = limits.smoke_hook_environment(cfg, env, region)
            assert figure[smoke_test.LOAD_BALANCER_ENV] == limits.LONGEST_LOAD_BALANCER_ARN_SUFFIX
            suffix = deployed[smoke_test.LOAD_BALANCER_ENV]
            # Everything but the load balancer (an Output) is exactly what the function gets, SMOKE_TESTS included.
            assert {**figure, smoke_test.LOAD_BALANCER_ENV: suffix} == deployed
            assert smoke_test.SMOKE_TESTS_ENV in deployed
            assert len(suffix) <= len(limits.LONGEST_LOAD_BALANCER_ARN_SUFFIX)
            assert (limits.lambda_environment_bytes(figure) - limits.lambda_environment_bytes(deployed)
                    == len(limits.LONGEST_LOAD_BALANCER_ARN_SUFFIX) - len(suffix))
            compared += 1
    assert compared == 3


def test_blue_green_buildspecs_are_measured_as_deployed(codedeploy_run) -> None:
    run, cfg = codedeploy_run
    families = {naming.task_family(cfg, s): s for s in cfg.workload_services}
    compared = 0
    for project in run.of_type("aws:codebuild/project:Project"):
        text = project.inputs["source"]["buildspec"]
        targets = json.loads(yaml.safe_load(text)["env"]["variables"].get("BLUE_GREEN_TARGETS", "[]"))
        if len(targets) != 1:
            continue
        (target,) = targets
        (env,) = [e for e in cfg.environments if e.codedeploy
                  and blue_green_artifact(e.name, target["region"]) == target["artifact"]]
        service = families[target["taskDefinition"]["family"]]
        assert len(text) == limits.blue_green_buildspec_chars(cfg, env, service)[target["region"]]
        compared += 1
    assert compared >= 2  # the one-region "stage" environment of each service


def test_stage_and_build_action_counts_are_counted_as_deployed(codedeploy_run) -> None:
    run, cfg = codedeploy_run
    for service in cfg.pipeline_services:
        stages = _pipeline_of(run, cfg, service)["stages"]
        assert len(stages) == limits.pipeline_stage_count(cfg)
        (build,) = [s for s in stages if s["name"] == "Build"]
        assert len(build["actions"]) == limits.build_action_count(cfg, service)


def _statement(document: dict, sid: str) -> dict:
    (found,) = [s for s in document["Statement"] if s["Sid"] == sid]
    return found


def test_deploy_role_policies_are_measured_as_deployed(codedeploy_run) -> None:
    run, cfg = codedeploy_run
    for account in cfg.workload_accounts:
        (role,) = [r for r in run.of_type("aws:iam/role:Role")
                   if r.account == account and r.inputs["name"] == naming.deploy_role_name(cfg)]
        deployed = role_policy(run, role)
        inline, trust = limits.deploy_role_policy_chars(cfg, account)
        # The figure takes the longest bucket and key ARNs for the artifact stores (Outputs): it is the deployed
        # size plus exactly what those bounds add.
        document = json.loads(deployed)
        buckets = _statement(document, "ReadArtifacts")["Resource"]
        keys = _statement(document, "DecryptArtifacts")["Resource"]
        bound_bucket = f"arn:aws:s3:::{limits.LONGEST_BUCKET_NAME}/*"
        extra = sum(len(bound_bucket) - len(b) for b in buckets) + sum(
            len(f"arn:aws:kms:{k.split(':')[3]}:{TOOLS}:key/{limits.KEY_ID}") - len(k) for k in keys)
        assert inline == limits.policy_chars(deployed) + extra and extra >= 0
        assert trust == limits.policy_chars(role.inputs["assumeRolePolicy"])


def test_rollout_patterns_are_measured_as_deployed(codedeploy_run) -> None:
    run, cfg = codedeploy_run
    rules = [r for r in run.of_type("aws:cloudwatch/eventRule:EventRule") if r.name.startswith("rollout-forwarder-")]
    assert len(rules) == sum(len(cfg.account_regions(a)) for a in cfg.workload_accounts)
    for rule in rules:
        assert len(rule.inputs["eventPattern"]) == limits.rollout_pattern_chars(cfg, rule.account, rule.region)


def test_the_engine_policy_is_measured_as_deployed(codedeploy_run) -> None:
    run, cfg = codedeploy_run
    (role,) = [r for r in run.of_type("aws:iam/role:Role") if r.inputs["name"] == naming.engine_function_name(cfg)]
    deployed = role_policy(run, role)
    (logs,) = _statement(json.loads(deployed), "WriteOwnLogs")["Resource"]
    expected_logs = (f"arn:aws:logs:{cfg.tools_region}:{TOOLS}:log-group:/aws/lambda/"
                     f"{naming.engine_function_name(cfg)}:*")
    assert limits.engine_policy_chars(cfg) == limits.policy_chars(deployed) + len(expected_logs) - len(logs)


PUSH_CONFIG = config(**{
    "crossdeploy:environments": [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2"]},
        {"name": "prod", "accountId": PROD, "regions": ["us-east-2", "eu-west-1"], "pushTags": ["v*", "release-*"]}],
    "crossdeploy:services": [
        {"name": "web", "delivery": "push", "pushMode": "revision", "environment": {"MODE": "web"}},
        {"name": "team/api", "containerName": "api", "serviceName": "api", "delivery": "push", "pushMode": "force"}],
})


@pytest.fixture(scope="module")
def push_run() -> tuple[ProgramRun, StackConfig]:
    return run_program(PUSH_CONFIG, stack="test"), load(PUSH_CONFIG)


def test_the_push_pattern_and_package_are_measured_as_deployed(push_run) -> None:
    run, cfg = push_run
    (rule,) = [r for r in run.of_type("aws:cloudwatch/eventRule:EventRule") if r.name.startswith("push-deploy-rule")]
    # One rule for both repositories: built by the function the check measures each repository alone with.
    assert json.loads(rule.inputs["eventPattern"]) == push_deploy.event_pattern(
        [s.name for s in cfg.push_services], limits.push_tag_patterns(cfg))
    (function,) = [f for f in run.of_type("aws:lambda/function:Function") if f.name == "push-deploy-function"]
    assets = function.inputs["code"].assets
    deployed = sum(len(a.text.encode()) if hasattr(a, "text") else len(open(a.path, "rb").read())
                   for a in assets.values())
    assert set(assets) == {*handler_files(), push_deploy.TARGETS_FILE}
    assert limits.push_package_bytes(cfg) == (deployed, None)
    assert re.search(r'"deployDocument": \{', assets[push_deploy.TARGETS_FILE].text)


def _release(regions_per_account: int, bound: int) -> dict[str, Any]:
    envs = [{"name": name, "accountId": account, "regions": list(AWS_REGIONS[:regions_per_account])}
            for name, account in (("qa", QA), ("prod", PROD))]
    return config(**{"crossdeploy:environments": envs,
                     "crossdeploy:release": {"source": {"provider": "codecommit", "repository": "releases"},
                                             "maxConcurrency": bound}})


def test_a_release_bound_over_the_concurrent_check_lambdas_is_a_config_error() -> None:
    from handlers.release_limits import MAX_CONCURRENT_TARGETS

    # 2 accounts x 8 regions = 16 account-regions at 50 each: exactly the limit; a ninth region is over it.
    assert 16 * 50 == MAX_CONCURRENT_TARGETS
    load(_release(8, 50))
    assert_refused(refusal(_release(9, 50)), "release.maxConcurrency", 18 * 50, MAX_CONCURRENT_TARGETS, "the release")
    load(_release(9, 44))
