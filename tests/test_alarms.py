"""The alarms every service crossdeploy creates gets in each environment and region: its target 5xx alarm (ECS's
deployment alarm, or CodeDeploy's) and its unhealthy-targets alarm, which only the bake after a deployment watches.
Their names are the ones the bake is given (:func:`components.naming.bake_alarm_names`). Asserted on what AWS would
receive from the real program under the offline mocks."""

from __future__ import annotations

import pytest
import test_smoke_hooks as smoke_hooks
from conftest import PROD, ROOT

from components import naming
from components.config import parse
from offline.mocks import ProgramRun, Recorded, stack_config

ALARM_T = "aws:cloudwatch/metricAlarm:MetricAlarm"
SERVICE_T = "aws:ecs/service:Service"
TG_T = "aws:lb/targetGroup:TargetGroup"
GROUP_T = "aws:codedeploy/deploymentGroup:DeploymentGroup"
# A codedeploy stack: qa rolling, stage and prod CodeDeploy (prod's rollbackAlarm 3 per minute for 4 minutes).
# tests/test_smoke_hooks.py defines it; both files share its one program run (conftest's smoke_codedeploy_run).
CODEDEPLOY_CONFIG = smoke_hooks.CODEDEPLOY_CONFIG


def typed(raw_config: dict, stack: str):
    raw = {k.split(":", 1)[1]: v for k, v in raw_config.items() if k.startswith("crossdeploy:")}
    return parse(raw, project="crossdeploy", stack=stack, aws_region=raw_config["aws:region"])


@pytest.fixture(scope="module")
def codedeploy_run(smoke_codedeploy_run) -> ProgramRun:
    return smoke_codedeploy_run


@pytest.fixture(scope="module", params=["prod-stack", "codedeploy"])
def case(request, prod_run, codedeploy_run):
    """The prod stack (rolling test, native canary prod) and a codedeploy stack: run and typed config."""
    if request.param == "prod-stack":
        return prod_run, typed(stack_config(ROOT / "Pulumi.prod.yaml"), "prod")
    return codedeploy_run, typed(CODEDEPLOY_CONFIG, "test")


def at(run: ProgramRun, type_: str, account: str, region: str) -> list[Recorded]:
    return [r for r in run.of_type(type_) if r.account == account and r.region == region]


def places(cfg):
    return [(env, region) for env in cfg.environments for region in env.regions]


def alarms_at(run: ProgramRun, account: str, region: str) -> dict[str, Recorded]:
    return {a.inputs["name"]: a for a in at(run, ALARM_T, account, region)}


def ecs_service(run: ProgramRun, account: str, region: str, name: str) -> Recorded:
    (found,) = [s for s in at(run, SERVICE_T, account, region) if s.inputs["name"] == name]
    return found


def target_groups_of(run: ProgramRun, cfg, env, region: str, svc) -> list[str]:
    """The arn suffixes of every target group of the service: primary (+ alternate) or blue and green."""
    service = ecs_service(run, env.account_id, region, svc.service)
    (lb,) = service.inputs["loadBalancers"]
    arns = [lb["targetGroupArn"]]
    if "advancedConfiguration" in lb:
        arns.append(lb["advancedConfiguration"]["alternateTargetGroupArn"])
    groups = {g.outputs["arn"]: g for g in at(run, TG_T, env.account_id, region)}
    suffixes = [groups[a].outputs["arnSuffix"] for a in arns]
    if env.codedeploy:
        (deployment,) = [g for g in at(run, GROUP_T, env.account_id, region)
                         if g.inputs["deploymentGroupName"] == naming.deployment_group_name(cfg, svc)]
        names = [t["name"] for t in deployment.inputs["loadBalancerInfo"]["targetGroupPairInfo"]["targetGroups"]]
        by_name = {g.outputs["name"]: g for g in groups.values()}
        suffixes = [by_name[n].outputs["arnSuffix"] for n in names]
    return suffixes


def test_every_service_has_exactly_the_alarms_its_bake_watches(case) -> None:
    run, cfg = case
    for env, region in places(cfg):
        alarms = alarms_at(run, env.account_id, region)
        expected = [n for svc in cfg.workload_services for n in naming.bake_alarm_names(cfg, env, svc)]
        assert sorted(alarms) == sorted(expected), (env.name, region)
        assert len(expected) == 2 * len(cfg.workload_services)


def test_unhealthy_targets_alarm_sums_every_target_group_of_the_service(case) -> None:
    run, cfg = case
    for env, region in places(cfg):
        (lb,) = at(run, "aws:lb/loadBalancer:LoadBalancer", env.account_id, region)
        alarms = alarms_at(run, env.account_id, region)
        for svc in cfg.workload_services:
            alarm = alarms[naming.alarm_name(cfg, env.name, svc, "unhealthy-targets")]
            groups = target_groups_of(run, cfg, env, region, svc)
            assert len(groups) == (1 if env.strategy == "rolling" else 2)
            metrics = [q for q in alarm.inputs["metricQueries"] if "metric" in q]
            assert [q["metric"] for q in metrics] == [
                {"namespace": "AWS/ApplicationELB", "metricName": "UnHealthyHostCount", "stat": "Maximum",
                 "period": 60, "dimensions": {"LoadBalancer": lb.outputs["arnSuffix"], "TargetGroup": g}}
                for g in groups]
            assert all(q["returnData"] is False for q in metrics)
            (total,) = [q for q in alarm.inputs["metricQueries"] if "expression" in q]
            assert total["expression"] == " + ".join(f"FILL({q['id']}, 0)" for q in metrics)
            assert total["returnData"] is True
            assert alarm.inputs["comparisonOperator"] == "GreaterThanOrEqualToThreshold"
            assert alarm.inputs["threshold"] == 1
            assert alarm.inputs["evaluationPeriods"] == env.blue_green_settings.rollback_alarm.evaluation_periods
            assert alarm.inputs["treatMissingData"] == "notBreaching"


def test_codedeploy_alarms_follow_the_environments_rollback_alarm(codedeploy_run) -> None:
    cfg = typed(CODEDEPLOY_CONFIG, "test")
    (prod,) = [e for e in cfg.environments if e.name == "prod"]
    for region in prod.regions:
        alarms = alarms_at(codedeploy_run, PROD, region)
        for svc in cfg.workload_services:
            errors = alarms[naming.codedeploy_alarm_name(cfg, "prod", svc)]
            unhealthy = alarms[naming.alarm_name(cfg, "prod", svc, "unhealthy-targets")]
            assert (errors.inputs["threshold"], errors.inputs["evaluationPeriods"]) == (3, 4)
            assert unhealthy.inputs["evaluationPeriods"] == 4


def test_only_the_5xx_alarm_rolls_a_deployment_back(case) -> None:
    """New tasks may fail a check while they start: the unhealthy-targets alarm is the bake's, never ECS's
    deployment alarm or CodeDeploy's rollback alarm."""
    run, cfg = case
    for env, region in places(cfg):
        for svc in cfg.workload_services:
            errors, unhealthy = naming.bake_alarm_names(cfg, env, svc)
            service = ecs_service(run, env.account_id, region, svc.service)
            if env.codedeploy:
                assert "alarms" not in service.inputs
                (group,) = [g for g in at(run, GROUP_T, env.account_id, region)
                            if g.inputs["deploymentGroupName"] == naming.deployment_group_name(cfg, svc)]
                assert group.inputs["alarmConfiguration"]["alarms"] == [errors]
            else:
                assert service.inputs["alarms"] == {"alarmNames": [errors], "enable": True, "rollback": True}
                assert errors == naming.alarm_name(cfg, env.name, svc, "target-5xx")
            assert unhealthy not in str(service.inputs)
