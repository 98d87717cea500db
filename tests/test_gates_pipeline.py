"""Issue 10 in the pipelines: deployment windows as before-entry conditions, stage rollback on every deploy stage,
and the alarm bake action, exactly as CodePipeline's API expects them (rule type ids, configuration keys)."""

from __future__ import annotations

import json

import pytest
from conftest import PROD, QA, config, pipelines

from components import naming
from components.config import ConfigError, parse
from components.pipeline import EXECUTION_MODE, MAX_USER_PARAMETERS
from offline.mocks import run_program

WINDOW = {"cron": "* * 9-16 ? * MON-THU *", "timeZone": "Europe/Berlin"}


@pytest.fixture(scope="module")
def gated_run():
    return run_program(config(**{"crossdeploy:environments": [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2"], "bakeMinutes": 3},
        {"name": "stage", "accountId": QA, "regions": ["us-west-2"], "strategy": "codedeploy", "bakeMinutes": 5},
        {"name": "prod", "accountId": PROD, "regions": ["us-east-2", "eu-west-1"], "requireApproval": True,
         "strategy": "canary", "deploymentWindow": WINDOW},
    ]}), stack="gated")


def stage(pipeline, name: str) -> dict:
    (found,) = [s for s in pipeline.inputs["stages"] if s["name"] == name]
    return found


def test_the_window_is_a_deployment_window_rule_before_entry(gated_run) -> None:
    for pipeline in pipelines(gated_run):
        prod = stage(pipeline, "Deploy-prod")
        assert prod["beforeEntry"] == {"condition": {"result": "FAIL", "rules": [{
            "name": "DeploymentWindow",
            "ruleTypeId": {"category": "Rule", "owner": "AWS", "provider": "DeploymentWindow", "version": "1"},
            "configuration": {"Cron": WINDOW["cron"], "TimeZone": WINDOW["timeZone"]}}]}}
        assert "beforeEntry" not in stage(pipeline, "Deploy-qa"), "no window: any time"
        # The window is checked after the approval, right before the deployment.
        names = [s["name"] for s in pipeline.inputs["stages"]]
        assert names.index("Approve-prod") + 1 == names.index("Deploy-prod")


def test_every_deploy_stage_rolls_back_and_the_mode_allows_it(gated_run, prod_run, base_run) -> None:
    for run in (gated_run, prod_run, base_run):
        for pipeline in pipelines(run):
            assert pipeline.inputs["executionMode"] == EXECUTION_MODE != "PARALLEL"
            for s in pipeline.inputs["stages"]:
                if s["name"].startswith("Deploy-"):
                    assert s["onFailure"] == {"result": "ROLLBACK"}, s["name"]
                else:
                    assert "onFailure" not in s, "approvals and builds have nothing to roll back"


def test_bake_runs_after_the_deployment_with_the_alarms_of_the_service(gated_run) -> None:
    engine = [f for f in gated_run.of_type("aws:lambda/function:Function")
              if f.inputs["handler"] == "handlers.pipeline_deploy.handler"]
    assert len(engine) == 1
    for pipeline in pipelines(gated_run):
        repository = pipeline.inputs["stages"][0]["actions"][0]["configuration"]["RepositoryName"]
        for env, account, regions, minutes in (("qa", QA, ["us-east-2"], 3),
                                               ("prod", PROD, ["us-east-2", "eu-west-1"], 10)):
            actions = stage(pipeline, f"Deploy-{env}")["actions"]
            (bake,) = [a for a in actions if a["name"] == "Bake"]
            assert {a.get("runOrder", 1) for a in actions if a["name"] != "Bake"} == {1}
            assert bake["runOrder"] == 2 and not bake.get("inputArtifacts")
            assert (bake["category"], bake["owner"], bake["provider"], bake["version"]) == (
                "Invoke", "AWS", "Lambda", "1")
            assert bake["configuration"]["FunctionName"] == engine[0].outputs["name"]
            params = json.loads(bake["configuration"]["UserParameters"])
            assert len(bake["configuration"]["UserParameters"]) <= MAX_USER_PARAMETERS
            assert params["environment"] == env
            spec = params["bake"]
            assert spec["minutes"] == minutes and spec["regions"] == regions
            assert spec["roleArn"] == f"arn:aws:iam::{account}:role/crossdeploy/gated/deploy/crossdeploy-gated-deploy"
            service = "orders" if repository == "orders" else "payments"
            assert len(spec["alarms"]) == 2 and all(service in a for a in spec["alarms"]), spec["alarms"]


def test_bake_alarms_exist_where_the_bake_reads_them(prod_run) -> None:
    alarms = {(a.account, a.region, a.inputs["name"])
              for a in prod_run.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
    for pipeline in pipelines(prod_run):
        for s in pipeline.inputs["stages"]:
            for action in s["actions"]:
                if action["name"] != "Bake":
                    continue
                spec = json.loads(action["configuration"]["UserParameters"])["bake"]
                account = spec["roleArn"].split(":")[4]
                for region in spec["regions"]:
                    for name in spec["alarms"]:
                        assert (account, region, name) in alarms, (s["name"], region, name)


def test_no_bake_without_minutes_and_none_for_existing_services(base_run) -> None:
    for pipeline in pipelines(base_run):  # qa: no approval, so no bake by default; prod: approved, 10 minutes
        assert all(a["name"] != "Bake" for a in stage(pipeline, "Deploy-qa")["actions"])
        assert any(a["name"] == "Bake" for a in stage(pipeline, "Deploy-prod")["actions"])
    run = run_program(config(**{
        "crossdeploy:environments": [{"name": "qa", "accountId": QA, "regions": ["us-east-2"], "bakeMinutes": 5}],
        "crossdeploy:services": [{"name": "legacy", "existing": True, "executionRoleName": "ecsTaskExecutionRole"}],
    }), stack="legacybake")
    for pipeline in pipelines(run):
        assert all(a["name"] != "Bake" for s in pipeline.inputs["stages"] for a in s["actions"])


def test_a_bake_that_does_not_fit_user_parameters_is_refused_at_config_load() -> None:
    # Long names in many regions (tests/test_limits.py has the exact threshold): refused before any resource.
    regions = ["ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2",
               "ap-southeast-3", "ap-southeast-4", "ap-southeast-5", "ap-southeast-6", "ap-southeast-7",
               "ca-central-1", "eu-central-1", "eu-central-2", "il-central-1"]
    raw = {"tools": {"accountId": "111111111111", "region": "us-east-2"},
           "environments": [{"name": "p" * 32, "accountId": PROD, "regions": regions, "bakeMinutes": 10}],
           "services": [{"name": "s" * 220}]}
    with pytest.raises(ConfigError, match=r"environments\[0\]\.bakeMinutes: the Bake action's UserParameters .* "
                                          r"would be [0-9]+ characters, over CodePipeline's limit of 1000"):
        parse(raw, project="crossdeploy", stack="x" * 40, aws_region=None)


def test_a_codedeploy_stage_bakes_on_codedeploys_own_alarm(gated_run) -> None:
    for pipeline in pipelines(gated_run):
        (bake,) = [a for a in stage(pipeline, "Deploy-stage")["actions"] if a["name"] == "Bake"]
        assert any(a["provider"] == "CodeDeployToECS" for a in stage(pipeline, "Deploy-stage")["actions"])
        spec = json.loads(bake["configuration"]["UserParameters"])["bake"]
        # CodeDeploy's own 5xx alarm (the one its deployment group rolls back on), then the unhealthy-targets one.
        assert spec["alarms"][0].startswith(naming.iam_name("crossdeploy-gated", "stage")), spec
        assert spec["alarms"][0].endswith("-target-5xx") and spec["alarms"][1].endswith("-unhealthy-targets")
        assert spec["minutes"] == 5 and spec["regions"] == ["us-west-2"]


def test_every_bake_of_every_strategy_can_read_its_alarms(gated_run) -> None:
    from test_least_privilege import check_bake_agreement

    assert check_bake_agreement(gated_run) == []
