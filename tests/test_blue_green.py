"""CodeDeploy blue/green for ECS (components/blue_green.py), run through tests/programs/blue_green_program.py under
the offline mocks: application, deployment configuration, deployment group and the rollback alarm as the engine
(and so AWS) receives them, plus argument validation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from components.blue_green import (
    BlueGreenApplicationArgs,
    BlueGreenDeploymentArgs,
    default_alarm_name,
)
from offline.mocks import PROVIDER_TYPE, ProgramRun, Recorded, run_program

PROGRAM = Path(__file__).resolve().parent / "programs" / "blue_green_program.py"
ACCOUNT = "444455556666"
REGION = "us-east-2"
APPLICATION = "crossdeploy-test-prod"  # project-stack-environment
LISTENER = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:listener/app/prod-web/50dc6c495c0c9188"
PROD_LISTENER = f"{LISTENER}/f2f7dc8efc522ab2"
TEST_LISTENER = f"{LISTENER}/9c7b2ad3f1e0c4a5"
LOAD_BALANCER = "app/prod-web/50dc6c495c0c9188"
SERVICES = [{"name": "orders"}, {"name": "team/payments", "serviceName": "payments", "cluster": "core"}]

APPLICATION_T = "aws:codedeploy/application:Application"
CONFIG_T = "aws:codedeploy/deploymentConfig:DeploymentConfig"
GROUP_T = "aws:codedeploy/deploymentGroup:DeploymentGroup"
ALARM_T = "aws:cloudwatch/metricAlarm:MetricAlarm"


def run(blue_green: dict | None = None, **extra: Any) -> ProgramRun:
    cfg: dict[str, Any] = {"crossdeploy:accountId": ACCOUNT, "crossdeploy:region": REGION,
                           "crossdeploy:services": SERVICES}
    if blue_green is not None:
        cfg["crossdeploy:blueGreen"] = blue_green
    cfg.update({f"crossdeploy:{k}": v for k, v in extra.items()})
    return run_program(cfg, stack="test", program=PROGRAM)


@pytest.fixture(scope="module")
def default_run() -> ProgramRun:
    return run()


def group_for(r: ProgramRun, service: str) -> Recorded:
    found = [g for g in r.of_type(GROUP_T) if g.inputs["ecsService"]["serviceName"] == service]
    assert len(found) == 1, f"{len(found)} deployment groups for {service}"
    return found[0]


def alarm_named(r: ProgramRun, name: str) -> Recorded:
    found = [a for a in r.of_type(ALARM_T) if a.inputs["name"] == name]
    assert len(found) == 1, f"{len(found)} alarms named {name}"
    return found[0]


# --- the deployment group -------------------------------------------------------------------------------------------


def test_deployment_group_is_ecs_blue_green_behind_the_load_balancer(default_run) -> None:
    orders = group_for(default_run, "orders").inputs
    assert orders["appName"] == APPLICATION
    assert orders["deploymentGroupName"] == "orders"
    assert orders["serviceRoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/crossdeploy-test-codedeploy"
    assert orders["deploymentStyle"] == {"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"}
    assert orders["ecsService"] == {"clusterName": "crossdeploy", "serviceName": "orders"}
    assert orders["loadBalancerInfo"] == {"targetGroupPairInfo": {
        "targetGroups": [{"name": "orders-blue"}, {"name": "orders-green"}],
        "prodTrafficRoute": {"listenerArns": [PROD_LISTENER]},
        "testTrafficRoute": {"listenerArns": [TEST_LISTENER]},
    }}
    # Only target-group-pair routing: classic ELB / single target group settings would make it a different kind.
    assert set(orders["loadBalancerInfo"]) == {"targetGroupPairInfo"}

    payments = group_for(default_run, "payments").inputs
    assert payments["deploymentGroupName"] == "payments"  # the ECS service name, not the repository name
    assert payments["ecsService"] == {"clusterName": "core", "serviceName": "payments"}
    assert [t["name"] for t in payments["loadBalancerInfo"]["targetGroupPairInfo"]["targetGroups"]] == [
        "team-payments-blue", "team-payments-green"]


def test_traffic_shifts_without_a_manual_wait_and_blue_is_terminated_after_five_minutes(default_run) -> None:
    config = group_for(default_run, "orders").inputs["blueGreenDeploymentConfig"]
    # No waitTimeInMinutes: with a manual reroute step (STOP_DEPLOYMENT) a pipeline would stall in CodeDeploy.
    assert config["deploymentReadyOption"] == {"actionOnTimeout": "CONTINUE_DEPLOYMENT"}
    assert config["terminateBlueInstancesOnDeploymentSuccess"] == {"action": "TERMINATE",
                                                                   "terminationWaitTimeInMinutes": 5}
    assert "greenFleetProvisioningOption" not in config  # EC2 only


def test_failures_and_the_alarm_roll_back_automatically(default_run) -> None:
    for service in ("orders", "payments"):
        group = group_for(default_run, service).inputs
        rollback = group["autoRollbackConfiguration"]
        assert rollback["enabled"] is True
        assert sorted(rollback["events"]) == ["DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM"]
        alarms = group["alarmConfiguration"]
        assert alarms["enabled"] is True
        assert alarms.get("ignorePollAlarmFailure", False) is False
        assert alarms["alarms"] == [f"{APPLICATION}-{service}-target-5xx"]
        alarm_named(default_run, alarms["alarms"][0])  # names a real alarm of this program, and exactly one


def test_component_outputs_name_the_group_and_alarm(default_run) -> None:
    deployments = default_run.outputs["deployments"]
    assert set(deployments) == {"orders", "payments"}
    for service, out in deployments.items():
        assert out["groupName"] == service
        assert out["alarmName"] == f"{APPLICATION}-{service}-target-5xx"
        assert out["groupArn"] == group_for(default_run, service).outputs["arn"]
    assert default_run.outputs["applicationName"] == APPLICATION


# --- application and deployment configuration ----------------------------------------------------------------------


def test_one_ecs_application_per_environment_and_region(default_run) -> None:
    [application] = default_run.of_type(APPLICATION_T)
    assert application.inputs["name"] == APPLICATION
    assert application.inputs["computePlatform"] == "ECS"


@pytest.mark.parametrize(("shift", "expected"), [
    (None, "CodeDeployDefault.ECSAllAtOnce"),
    ({"type": "all-at-once"}, "CodeDeployDefault.ECSAllAtOnce"),
    ({"type": "canary", "percent": 10, "intervalMinutes": 5}, "CodeDeployDefault.ECSCanary10Percent5Minutes"),
    ({"type": "canary", "intervalMinutes": 15}, "CodeDeployDefault.ECSCanary10Percent15Minutes"),
    ({"type": "linear", "percent": 10, "intervalMinutes": 3}, "CodeDeployDefault.ECSLinear10PercentEvery3Minutes"),
    ({"type": "linear", "intervalMinutes": 1}, "CodeDeployDefault.ECSLinear10PercentEvery1Minutes"),
])
def test_predefined_shifts_create_no_configuration(shift, expected) -> None:
    r = run({"trafficShift": shift} if shift else None)
    assert r.of_type(CONFIG_T) == []
    assert {g.inputs["deploymentConfigName"] for g in r.of_type(GROUP_T)} == {expected}
    assert r.outputs["deploymentConfigName"] == expected
    assert r.outputs["deploymentConfigNameDependsOn"] == []


@pytest.mark.parametrize(("shift", "name", "routing"), [
    ({"type": "canary", "percent": 20, "intervalMinutes": 7}, f"{APPLICATION}-canary-20pct-7min",
     {"type": "TimeBasedCanary", "timeBasedCanary": {"percentage": 20, "interval": 7}}),
    ({"type": "linear", "percent": 10, "intervalMinutes": 5}, f"{APPLICATION}-linear-10pct-5min",
     {"type": "TimeBasedLinear", "timeBasedLinear": {"percentage": 10, "interval": 5}}),
    ({"type": "linear"}, f"{APPLICATION}-linear-10pct-5min",  # the documented defaults: 10 % every 5 minutes
     {"type": "TimeBasedLinear", "timeBasedLinear": {"percentage": 10, "interval": 5}}),
    ({"type": "canary", "percent": 25}, f"{APPLICATION}-canary-25pct-5min",
     {"type": "TimeBasedCanary", "timeBasedCanary": {"percentage": 25, "interval": 5}}),
])
def test_custom_shifts_get_their_own_configuration_and_the_groups_use_it(shift, name, routing) -> None:
    r = run({"trafficShift": shift})
    [config] = r.of_type(CONFIG_T)
    assert config.inputs["deploymentConfigName"] == name
    assert config.inputs["computePlatform"] == "ECS"
    assert config.inputs["trafficRoutingConfig"] == routing
    assert "minimumHealthyHosts" not in config.inputs  # EC2/on-premises only
    assert {g.inputs["deploymentConfigName"] for g in r.of_type(GROUP_T)} == {name}
    assert r.outputs["deploymentConfigName"] == name
    # The name handed to the groups waits for the configuration: CodeDeploy rejects a group naming a missing one.
    assert r.outputs["deploymentConfigNameDependsOn"] == [config_urn(config)]


def config_urn(config: Recorded) -> str:
    return ("urn:pulumi:test::crossdeploy::crossdeploy:blue_green:BlueGreenApplication$"
            f"{CONFIG_T}::{config.name}")


# --- the rollback alarm ---------------------------------------------------------------------------------------------


def test_alarm_counts_target_5xx_of_both_target_groups_on_the_load_balancer(default_run) -> None:
    alarm = alarm_named(default_run, f"{APPLICATION}-orders-target-5xx").inputs
    metrics = [q for q in alarm["metricQueries"] if "metric" in q]
    assert len(metrics) == 2
    for q in metrics:
        assert q["metric"]["namespace"] == "AWS/ApplicationELB"
        assert q["metric"]["metricName"] == "HTTPCode_Target_5XX_Count"
        assert q["metric"]["stat"] == "Sum"
        assert q["metric"]["period"] == 60
        assert q["metric"]["dimensions"]["LoadBalancer"] == LOAD_BALANCER
        assert set(q["metric"]["dimensions"]) == {"LoadBalancer", "TargetGroup"}
        assert q.get("returnData", False) is False  # only the sum is the alarm's value
    assert {q["metric"]["dimensions"]["TargetGroup"] for q in metrics} == {
        "targetgroup/orders-blue/73e2d6bc24d8a067", "targetgroup/orders-green/8a067e2d6bc24d73"}
    [result] = [q for q in alarm["metricQueries"] if q.get("returnData")]
    used = set(re.findall(r"[a-z][A-Za-z0-9_]*", result["expression"])) - {"FILL"}
    assert used == {q["id"] for q in metrics}, result["expression"]
    # A metric-math alarm names no metric of its own; AWS rejects one that mixes both forms.
    assert not {"metricName", "namespace", "statistic", "period", "dimensions"} & set(alarm)


def test_alarm_thresholds_and_missing_data(default_run) -> None:
    alarm = alarm_named(default_run, f"{APPLICATION}-payments-target-5xx").inputs
    assert alarm["comparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["threshold"] == 10
    assert alarm["evaluationPeriods"] == 2
    assert alarm["treatMissingData"] == "notBreaching"
    assert "alarmActions" not in alarm or alarm["alarmActions"] in ([], None)


def _evaluate(expression: str, series: dict[str, dict[int, float]], minutes: range) -> dict[int, float]:
    """The alarm's expression under CloudWatch metric math: ``a + b`` keeps only timestamps present on both sides,
    ``FILL(x, 0)`` gives every period a value. Only the shapes crossdeploy writes are understood."""
    result: dict[int, float] | None = None
    for term in (t.strip() for t in expression.split("+")):
        filled = re.fullmatch(r"FILL\((\w+), *0\)", term)
        if filled:
            values = {m: series.get(filled.group(1), {}).get(m, 0.0) for m in minutes}
        else:
            assert re.fullmatch(r"\w+", term), f"unexpected term {term!r}"
            values = dict(series.get(term, {}))
        result = values if result is None else {m: result[m] + values[m] for m in result.keys() & values.keys()}
    return result or {}


def _fires(alarm: dict, by_target_group: dict[str, dict[int, float]]) -> bool:
    queries = alarm["metricQueries"]
    ids = {q["metric"]["dimensions"]["TargetGroup"]: q["id"] for q in queries if "metric" in q}
    series = {ids[tg]: points for tg, points in by_target_group.items()}
    [result] = [q for q in queries if q.get("returnData")]
    minutes = range(10)
    values = _evaluate(result["expression"], series, minutes)
    last = [values.get(m) for m in minutes][-int(alarm["evaluationPeriods"]):]
    # notBreaching: a missing value counts as fine.
    return all(v is not None and v >= alarm["threshold"] for v in last)


def test_errors_on_either_group_alone_fire_the_alarm(default_run) -> None:
    alarm = alarm_named(default_run, f"{APPLICATION}-orders-target-5xx").inputs
    blue, green = "targetgroup/orders-blue/73e2d6bc24d8a067", "targetgroup/orders-green/8a067e2d6bc24d73"
    burst = {8: 12.0, 9: 15.0}
    # ALB publishes no datapoint for a minute without errors: the idle group has none at all.
    assert _fires(alarm, {green: burst})
    assert _fires(alarm, {blue: burst})
    assert _fires(alarm, {blue: {8: 6.0, 9: 5.0}, green: {8: 6.0, 9: 5.0}})  # 12 and 10 together
    assert not _fires(alarm, {green: {8: 9.0, 9: 9.0}})
    assert not _fires(alarm, {green: {9: 50.0}})  # one bad minute of two
    assert not _fires(alarm, {})  # no traffic at all is not a failure


def test_settings_come_from_the_environment_and_the_topic_is_told() -> None:
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:bluegreen-alarms"
    r = run({"terminationWaitMinutes": 60, "rollbackAlarm": {"threshold": 3, "evaluationPeriods": 4}},
            alarmTopicArn=topic)
    for service in ("orders", "payments"):
        group = group_for(r, service).inputs
        assert group["blueGreenDeploymentConfig"]["terminateBlueInstancesOnDeploymentSuccess"][
            "terminationWaitTimeInMinutes"] == 60
        alarm = alarm_named(r, group["alarmConfiguration"]["alarms"][0]).inputs
        assert (alarm["threshold"], alarm["evaluationPeriods"]) == (3, 4)
        assert alarm["alarmActions"] == [topic]


def test_zero_termination_wait_is_kept_not_dropped() -> None:
    group = group_for(run({"terminationWaitMinutes": 0}), "orders").inputs
    assert group["blueGreenDeploymentConfig"]["terminateBlueInstancesOnDeploymentSuccess"] == {
        "action": "TERMINATE", "terminationWaitTimeInMinutes": 0}


def test_an_explicit_alarm_name_is_used_everywhere() -> None:
    r = run(services=[{"name": "orders"}], deploymentOverrides={"alarm_name": "orders prod 5xx"})
    [alarm] = r.of_type(ALARM_T)
    assert alarm.inputs["name"] == "orders prod 5xx"
    assert group_for(r, "orders").inputs["alarmConfiguration"]["alarms"] == ["orders prod 5xx"]
    assert r.outputs["deployments"]["orders"]["alarmName"] == "orders prod 5xx"


def test_default_alarm_names_are_unique_per_environment_and_fit() -> None:
    # Alarm names are unique per account and region; two environments there may run a service of the same name.
    assert default_alarm_name("crossdeploy-a-qa", "orders") != default_alarm_name("crossdeploy-a-dev", "orders")
    long = default_alarm_name("a" * 100, "b" * 100 + "c" * 60)
    assert len(long) <= 255
    assert long != default_alarm_name("a" * 100, "b" * 100 + "d" * 60)


# --- providers and parents ------------------------------------------------------------------------------------------


def test_everything_is_on_the_workload_provider_under_its_component(default_run) -> None:
    [provider] = default_run.of_type(PROVIDER_TYPE)
    assert (provider.account, provider.region) == (ACCOUNT, REGION)
    custom = default_run.custom()
    assert {r.type for r in custom} == {APPLICATION_T, GROUP_T, ALARM_T}
    assert len(custom) == 1 + 2 * 2  # one application, and a group and an alarm per service
    for r in custom:
        assert r.provider == f"{provider.name}-id", (r.type, r.name)
        assert (r.account, r.region) == (ACCOUNT, REGION), (r.type, r.name)
        owner = ("crossdeploy:blue_green:BlueGreenApplication" if r.type == APPLICATION_T
                 else "crossdeploy:blue_green:BlueGreenDeployment")
        assert r.parent and r.parent.split("::")[-2].endswith(owner), (r.type, r.name, r.parent)
        assert r.name.startswith(r.parent.split("::")[-1] + "-"), (r.name, r.parent)


def test_custom_configuration_is_on_the_workload_provider_too() -> None:
    r = run({"trafficShift": {"type": "canary", "percent": 20, "intervalMinutes": 7}})
    [provider] = r.of_type(PROVIDER_TYPE)
    [config] = r.of_type(CONFIG_T)
    assert config.provider == f"{provider.name}-id"
    assert (config.account, config.region) == (ACCOUNT, REGION)
    assert config.parent
    assert config.parent.endswith("crossdeploy:blue_green:BlueGreenApplication::prod-us-east-2-codedeploy")


# --- validation -----------------------------------------------------------------------------------------------------


def deployment_args(**overrides: Any) -> BlueGreenDeploymentArgs:
    values: dict[str, Any] = {
        "provider": None, "application_name": APPLICATION, "deployment_group_name": "orders",
        "deployment_config_name": "CodeDeployDefault.ECSAllAtOnce",
        "service_role_arn": f"arn:aws:iam::{ACCOUNT}:role/codedeploy", "cluster_name": "crossdeploy",
        "service_name": "orders", "target_group_names": ("orders-blue", "orders-green"),
        "target_group_arn_suffixes": ("targetgroup/orders-blue/1", "targetgroup/orders-green/2"),
        "load_balancer_arn_suffix": LOAD_BALANCER, "prod_listener_arns": (PROD_LISTENER,),
        "test_listener_arns": (TEST_LISTENER,),
    }
    values.update(overrides)
    return BlueGreenDeploymentArgs(**values)


def application_args(name: str, shift: tuple) -> BlueGreenApplicationArgs:
    return BlueGreenApplicationArgs(provider=None, application_name=APPLICATION, deployment_config_name=name,
                                    traffic_shift=shift)


def test_valid_edges_are_accepted() -> None:
    deployment_args(termination_wait_minutes=0, alarm_threshold=1, alarm_evaluation_periods=1)
    deployment_args(termination_wait_minutes=2880, deployment_group_name="g" * 100, alarm_name="a" * 255)
    application_args("CodeDeployDefault.ECSLinear10PercentEvery3Minutes", ("linear", 10, 3))
    application_args("x" * 100, ("canary", 99, 2880))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"termination_wait_minutes": -1}, "termination_wait_minutes: CodeDeploy accepts 0 to 2880"),
    ({"termination_wait_minutes": 2881}, "termination_wait_minutes: CodeDeploy accepts 0 to 2880"),
    ({"alarm_threshold": 0}, "alarm_threshold: must be at least 1"),
    ({"alarm_evaluation_periods": 0}, "alarm_evaluation_periods: must be at least 1"),
    ({"target_group_names": ("orders-blue", "orders-blue")}, "target_group_names: blue and green must be two"),
    ({"target_group_names": ("orders-blue",)}, "target_group_names: exactly two"),
    ({"target_group_arn_suffixes": ("targetgroup/x/1",) * 2}, "target_group_arn_suffixes: blue and green must be"),
    ({"prod_listener_arns": ()}, "prod_listener_arns: exactly one listener"),
    ({"test_listener_arns": ()}, "test_listener_arns: exactly one listener"),
    ({"prod_listener_arns": (PROD_LISTENER, TEST_LISTENER)}, "prod_listener_arns: exactly one listener"),
    ({"test_listener_arns": (PROD_LISTENER,)}, "is also the prod listener"),
    ({"deployment_group_name": "g" * 101}, "deployment_group_name: must be 1 to 100 characters, got 101"),
    ({"deployment_group_name": ""}, "deployment_group_name: must be 1 to 100 characters, got 0"),
    ({"application_name": "a" * 101}, "application_name: must be 1 to 100 characters"),
    ({"deployment_config_name": "c" * 101}, "deployment_config_name: must be 1 to 100 characters"),
    ({"alarm_name": "a" * 256}, "alarm_name: must be 1 to 255 characters, got 256"),
])
def test_deployment_args_are_validated(overrides, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        deployment_args(**overrides)
    assert str(err.value).startswith("BlueGreenDeploymentArgs: ")


def test_every_deployment_problem_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as err:
        deployment_args(termination_wait_minutes=3000, alarm_threshold=0, test_listener_arns=())
    text = str(err.value)
    assert all(k in text for k in ("termination_wait_minutes", "alarm_threshold", "test_listener_arns")), text


@pytest.mark.parametrize(("name", "shift", "message"), [
    ("CodeDeployDefault.ECSAllAtOnce", ("canary", 20, 7), "matches no predefined one"),
    ("CodeDeployDefault.ECSCanary10Percent5Minutes", ("canary", 10, 15),
     "is 'CodeDeployDefault.ECSCanary10Percent15Minutes'"),
    ("CodeDeployDefault.ECSCanary20Percent7Minutes", ("canary", 20, 7), "prefix is reserved"),
    ("my-canary", ("canary", 10, 5), "use that name instead of a custom configuration"),
    ("my-all-at-once", ("all-at-once", None, None), "'CodeDeployDefault.ECSAllAtOnce'"),
    ("my-canary", ("canary", 0, 5), "canary percent must be 1 to 99, got 0"),
    ("my-linear", ("linear", 100, 5), "linear percent must be 1 to 99, got 100"),
    ("my-linear", ("linear", 10, 0), "linear minutes must be 1 to 2880, got 0"),
    ("my-linear", ("linear", 10, None), "linear minutes must be 1 to 2880, got None"),
    ("my-blue", ("blue", 10, 5), "traffic_shift: expected (all-at-once|canary|linear"),
    ("c" * 101, ("canary", 20, 7), "deployment_config_name: must be 1 to 100 characters"),
])
def test_application_args_are_validated(name, shift, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        application_args(name, shift)
    assert str(err.value).startswith("BlueGreenApplicationArgs: ")


def test_a_bad_argument_stops_the_program_before_anything_is_registered() -> None:
    with pytest.raises(ValueError, match=r"termination_wait_minutes: CodeDeploy accepts 0 to 2880 for ECS, got 2881"):
        run(deploymentOverrides={"termination_wait_minutes": 2881})
    with pytest.raises(ValueError, match=r"test_listener_arns: exactly one listener .* got 2"):
        run(deploymentOverrides={"test_listener_arns": [TEST_LISTENER, f"{LISTENER}/0000000000000000"]})
