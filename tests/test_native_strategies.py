"""ECS-native blue-green, canary and linear environments: the alternate target group, the weighted production and
test listener rules ECS rewrites, the service's deployment configuration and advanced load balancer wiring, the ECS
infrastructure role, and the deployment alarm every rolling and native service rolls back on. Asserted on what AWS
would receive from the real program under the offline mocks."""

from __future__ import annotations

import pytest
from conftest import PROD, QA, config
from iam import statements

from components import naming
from components.config import BlueGreenConfig, parse
from components.workload import BlueGreenSettings, NativeSettings, WorkloadArgs, native_settings
from offline.mocks import ProgramRun, Recorded, run_program

SERVICE_T = "aws:ecs/service:Service"
RULE_T = "aws:lb/listenerRule:ListenerRule"
LISTENER_T = "aws:lb/listener:Listener"
TG_T = "aws:lb/targetGroup:TargetGroup"
ALARM_T = "aws:cloudwatch/metricAlarm:MetricAlarm"
ROLE_T = "aws:iam/role:Role"
ATTACHMENT_T = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
INFRA_POLICY = "arn:aws:iam::aws:policy/AmazonECSInfrastructureRolePolicyForLoadBalancers"
PROD_REGIONS = ("us-east-2", "eu-west-1")
SERVICES = [
    {"name": "orders", "port": 3000},
    {"name": "team/payments", "containerName": "app", "serviceName": "payments", "cluster": "core",
     "routing": {"hosts": ["pay.example.com"], "priority": 5}},
]
# Per strategy: the prod environment's blueGreen block, and what ECS should be told.
CASES = {
    "blue-green": {
        "blueGreen": {"terminationWaitMinutes": 30, "testListenerPort": 9443, "testTrafficCidrs": ["10.8.0.0/16"],
                      "rollbackAlarm": {"threshold": 4, "evaluationPeriods": 3}},
        "expect": {"strategy": "BLUE_GREEN", "bakeTimeInMinutes": "30"},
        "port": 9443, "alarm": (4, 3),
    },
    "canary": {
        "blueGreen": {"trafficShift": {"percent": 20, "intervalMinutes": 7}, "terminationWaitMinutes": 15},
        "expect": {"strategy": "CANARY", "bakeTimeInMinutes": "15",
                   "canaryConfiguration": {"canaryPercent": 20.0, "canaryBakeTimeInMinutes": "7"}},
        "port": 8443, "alarm": (10, 2),
    },
    "linear": {
        "blueGreen": {"trafficShift": {"percent": 25, "intervalMinutes": 3}, "terminationWaitMinutes": 0,
                      "testTrafficCidrs": ["192.168.0.0/24", "10.9.0.0/16"]},
        "expect": {"strategy": "LINEAR", "bakeTimeInMinutes": "0",
                   "linearConfiguration": {"stepPercent": 25.0, "stepBakeTimeInMinutes": "3"}},
        "port": 8443, "alarm": (10, 2),
    },
}


def _config(strategy: str) -> dict:
    return config(**{
        "crossdeploy:environments": [
            {"name": "qa", "accountId": QA, "regions": ["us-east-2"]},
            {"name": "prod", "accountId": PROD, "regions": list(PROD_REGIONS), "strategy": strategy,
             "blueGreen": CASES[strategy]["blueGreen"]},
        ],
        "crossdeploy:services": SERVICES,
    })


DEFAULTS_CONFIG = config(**{
    "crossdeploy:environments": [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2"], "strategy": "linear"},
        {"name": "prod", "accountId": PROD, "regions": ["us-east-2"], "strategy": "canary"},
    ],
    "crossdeploy:services": SERVICES[:1],
})


@pytest.fixture(scope="module", params=list(CASES))
def case(request) -> tuple[str, ProgramRun]:
    return request.param, run_program(_config(request.param), stack="test")


@pytest.fixture(scope="module")
def defaults_run() -> ProgramRun:
    return run_program(DEFAULTS_CONFIG, stack="test")


def _parsed(raw_config: dict):
    raw = {k.split(":", 1)[1]: v for k, v in raw_config.items() if k.startswith("crossdeploy:")}
    return parse(raw, project="crossdeploy", stack="test", aws_region="us-east-2")


def at(run: ProgramRun, type_: str, account: str, region: str) -> list[Recorded]:
    return [r for r in run.of_type(type_) if r.account == account and r.region == region]


def one(items: list[Recorded]) -> Recorded:
    assert len(items) == 1, [r.name for r in items]
    return items[0]


def service(run: ProgramRun, account: str, region: str, name: str) -> Recorded:
    return one([r for r in at(run, SERVICE_T, account, region) if r.inputs["name"] == name])


def by_arn(run: ProgramRun, type_: str, arn: str) -> Recorded:
    return one([r for r in run.of_type(type_) if r.outputs.get("arn") == arn])


def infrastructure_role(run: ProgramRun, account: str) -> Recorded:
    return one([r for r in run.of_type(ROLE_T) if r.account == account
                and r.inputs.get("path") == "/crossdeploy/test/infrastructure/"])


# ------------------------------------------------------------------------------------------------ service


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_deployment_configuration_follows_the_strategy_and_settings(case, region) -> None:
    strategy, run = case
    for name in ("orders", "payments"):
        svc = service(run, PROD, region, name)
        assert svc.inputs["deploymentConfiguration"] == CASES[strategy]["expect"]
        assert svc.inputs["deploymentController"] == {"type": "ECS"}
        assert svc.inputs["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}


def test_defaults_shift_ten_percent_every_five_minutes_and_bake_five(defaults_run) -> None:
    canary = service(defaults_run, PROD, "us-east-2", "orders").inputs["deploymentConfiguration"]
    assert canary == {"strategy": "CANARY", "bakeTimeInMinutes": "5",
                      "canaryConfiguration": {"canaryPercent": 10.0, "canaryBakeTimeInMinutes": "5"}}
    linear = service(defaults_run, QA, "us-east-2", "orders").inputs["deploymentConfiguration"]
    assert linear == {"strategy": "LINEAR", "bakeTimeInMinutes": "5",
                      "linearConfiguration": {"stepPercent": 10.0, "stepBakeTimeInMinutes": "5"}}


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_advanced_configuration_wires_both_groups_both_rules_and_the_infrastructure_role(case, region) -> None:
    strategy, run = case
    role = infrastructure_role(run, PROD)
    assert role.outputs["arn"] == naming.infrastructure_role_arn(_parsed(_config(strategy)), PROD)
    listeners = {r.outputs["arn"]: r for r in at(run, LISTENER_T, PROD, region)}
    primaries = set()
    for name in ("orders", "payments"):
        (lb,) = service(run, PROD, region, name).inputs["loadBalancers"]
        advanced = lb["advancedConfiguration"]
        assert advanced["roleArn"] == role.outputs["arn"] and f":iam::{PROD}:role/" in advanced["roleArn"]
        primary, alternate = (by_arn(run, TG_T, lb["targetGroupArn"]),
                              by_arn(run, TG_T, advanced["alternateTargetGroupArn"]))
        assert primary is not alternate
        assert {primary.account, alternate.account, primary.region, alternate.region} == {PROD, region}
        assert primary.inputs["port"] == alternate.inputs["port"] == lb["containerPort"]
        assert primary.inputs["healthCheck"] == alternate.inputs["healthCheck"]
        primaries.add(primary.outputs["arn"])

        prod_rule = by_arn(run, RULE_T, advanced["productionListenerRule"])
        test_rule = by_arn(run, RULE_T, advanced["testListenerRule"])
        assert listeners[prod_rule.inputs["listenerArn"]].inputs["port"] == 80  # no certificate: HTTP
        assert listeners[test_rule.inputs["listenerArn"]].inputs["port"] == CASES[strategy]["port"]
        weighted = [{"type": "forward", "forward": {"targetGroups": [
            {"arn": primary.outputs["arn"], "weight": 100}, {"arn": alternate.outputs["arn"], "weight": 0}]}}]
        assert prod_rule.inputs["actions"] == weighted
        assert test_rule.inputs["actions"] == weighted
        assert prod_rule.inputs["conditions"] == test_rule.inputs["conditions"]
        assert prod_rule.inputs["priority"] == test_rule.inputs["priority"]
    assert len(primaries) == 2  # one pair per service


def test_ecs_owns_the_rule_weights_and_the_deploy_engine_the_revision(case) -> None:
    _, run = case
    for region in PROD_REGIONS:
        rules = at(run, RULE_T, PROD, region)
        assert len(rules) == 4 and all(r.ignore_changes == ("actions",) for r in rules)
        for svc in at(run, SERVICE_T, PROD, region):
            # Not loadBalancers: native deployments move the rules' weights, not the service definition.
            assert set(svc.ignore_changes) == {"taskDefinition", "desiredCount"}


def test_services_wait_for_the_infrastructure_role_policy(case) -> None:
    _, run = case
    (attachment,) = [a for a in run.of_type(ATTACHMENT_T) if a.inputs["policyArn"] == INFRA_POLICY]
    for region in PROD_REGIONS:
        for svc in at(run, SERVICE_T, PROD, region):
            assert any(dep.endswith(f"::{attachment.name}") for dep in svc.dependencies), svc.dependencies


def test_no_codedeploy_in_native_environments(case) -> None:
    _, run = case
    assert not [r for r in run.custom() if r.type.startswith("aws:codedeploy/")]
    assert not [a for a in run.of_type(ATTACHMENT_T) if a.inputs["policyArn"].endswith("AWSCodeDeployRoleForECS")]


def test_test_listener_is_reachable_only_from_the_configured_ranges(case) -> None:
    strategy, run = case
    port = CASES[strategy]["port"]
    for region in PROD_REGIONS:
        ingress = at(run, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", PROD, region)
        test_rules = [r for r in ingress if r.inputs["fromPort"] == port]
        assert [r.inputs["cidrIpv4"] for r in test_rules] == CASES[strategy]["blueGreen"].get("testTrafficCidrs", [])
        assert sorted(r.inputs["fromPort"] for r in ingress if r.inputs.get("cidrIpv4") == "0.0.0.0/0") == [80]


# ------------------------------------------------------------------------------------------------ alarms


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_native_services_roll_back_on_5xx_of_both_target_groups(case, region) -> None:
    strategy, run = case
    alb = one(at(run, "aws:lb/loadBalancer:LoadBalancer", PROD, region))
    alarms = {a.outputs["name"]: a for a in at(run, ALARM_T, PROD, region)}
    assert len(alarms) == 4  # per service: the 5xx alarm ECS rolls back on, and the unhealthy-targets alarm
    for name in ("orders", "payments"):
        svc = service(run, PROD, region, name)
        assert svc.inputs["alarms"]["enable"] is True and svc.inputs["alarms"]["rollback"] is True
        (alarm_name,) = svc.inputs["alarms"]["alarmNames"]
        alarm = alarms[alarm_name]
        (lb,) = svc.inputs["loadBalancers"]
        groups = [by_arn(run, TG_T, arn).outputs["arnSuffix"]
                  for arn in (lb["targetGroupArn"], lb["advancedConfiguration"]["alternateTargetGroupArn"])]
        metrics = [q for q in alarm.inputs["metricQueries"] if "metric" in q]
        assert [q["metric"]["dimensions"] for q in metrics] == [
            {"LoadBalancer": alb.outputs["arnSuffix"], "TargetGroup": g} for g in groups]
        assert all(q["metric"]["metricName"] == "HTTPCode_Target_5XX_Count" and q["metric"]["stat"] == "Sum"
                   and q["metric"]["period"] == 60 and q["returnData"] is False for q in metrics)
        (total,) = [q for q in alarm.inputs["metricQueries"] if "expression" in q]
        assert total["expression"] == "FILL(tg1, 0) + FILL(tg2, 0)" and total["returnData"] is True
        assert (alarm.inputs["threshold"], alarm.inputs["evaluationPeriods"]) == CASES[strategy]["alarm"]
        assert alarm.inputs["comparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert alarm.inputs["treatMissingData"] == "notBreaching"
        assert alarm_name.startswith("crossdeploy-test-prod-")


def test_rolling_services_get_the_alarm_and_circuit_breaker_but_no_native_wiring(case) -> None:
    _, run = case
    alb = one(at(run, "aws:lb/loadBalancer:LoadBalancer", QA, "us-east-2"))
    alarms = {a.outputs["name"]: a for a in at(run, ALARM_T, QA, "us-east-2")}
    for name in ("orders", "payments"):
        svc = service(run, QA, "us-east-2", name)
        assert svc.inputs["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
        assert svc.inputs["alarms"]["enable"] is True and svc.inputs["alarms"]["rollback"] is True
        assert "deploymentConfiguration" not in svc.inputs
        (lb,) = svc.inputs["loadBalancers"]
        assert "advancedConfiguration" not in lb
        alarm = alarms[svc.inputs["alarms"]["alarmNames"][0]]
        (metric,) = [q["metric"] for q in alarm.inputs["metricQueries"] if "metric" in q]
        assert metric["dimensions"] == {"LoadBalancer": alb.outputs["arnSuffix"],
                                        "TargetGroup": by_arn(run, TG_T, lb["targetGroupArn"]).outputs["arnSuffix"]}
        assert (alarm.inputs["threshold"], alarm.inputs["evaluationPeriods"]) == (10, 2)
    assert len(at(run, TG_T, QA, "us-east-2")) == 2  # no alternate groups
    assert [r.inputs["port"] for r in at(run, LISTENER_T, QA, "us-east-2")] == [80]  # no test listener


# ------------------------------------------------------------------------------------------------ role


def test_infrastructure_role_is_trusted_by_ecs_of_its_account_with_the_managed_policy(case) -> None:
    _, run = case
    role = infrastructure_role(run, PROD)
    assert role.outputs["name"] == "crossdeploy-test-ecs-infrastructure"
    (trust,) = statements(role.inputs["assumeRolePolicy"])
    assert trust["Principal"] == {"Service": "ecs.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": PROD}}
    (attachment,) = [a for a in run.of_type(ATTACHMENT_T) if a.inputs["policyArn"] == INFRA_POLICY]
    assert attachment.account == PROD and attachment.inputs["role"] == role.outputs["name"]
    # qa deploys rolling: no infrastructure role there.
    assert not [r for r in run.of_type(ROLE_T) if r.account == QA and "infrastructure" in r.outputs["name"]]


def test_each_account_with_a_native_environment_gets_its_own_role(defaults_run) -> None:
    attachments = [a for a in defaults_run.of_type(ATTACHMENT_T) if a.inputs["policyArn"] == INFRA_POLICY]
    assert sorted(a.account for a in attachments) == sorted([QA, PROD])
    for account in (QA, PROD):
        (lb,) = service(defaults_run, account, "us-east-2", "orders").inputs["loadBalancers"]
        assert lb["advancedConfiguration"]["roleArn"] == infrastructure_role(defaults_run, account).outputs["arn"]


# ------------------------------------------------------------------------------------------------ planner, args


def test_native_settings_only_for_native_environments() -> None:
    cfg = _parsed(_config("canary"))
    qa, prod = cfg.environments

    class Roles:  # what native_settings reads of WorkloadRoles
        infrastructure_role_arn = naming.infrastructure_role_arn(cfg, PROD)
        infrastructure_role_ready = ()

    assert native_settings(cfg, qa, Roles()) is None
    settings = native_settings(cfg, prod, Roles())
    assert settings is not None
    assert (settings.strategy, settings.traffic_shift) == ("canary", ("canary", 20, 7))
    assert settings.settings.termination_wait_minutes == 15
    codedeploy = parse({**{k.split(":", 1)[1]: v for k, v in _config("canary").items() if k.startswith("crossdeploy:")},
                        "environments": [{"name": "prod", "accountId": PROD, "regions": ["us-east-2"],
                                          "strategy": "codedeploy"}]},
                       project="crossdeploy", stack="test", aws_region="us-east-2")
    assert native_settings(codedeploy, codedeploy.environments[0], Roles()) is None


ROLE = f"arn:aws:iam::{PROD}:role/crossdeploy/test/infrastructure/crossdeploy-test-ecs-infrastructure"


@pytest.mark.parametrize("kwargs,problem", [
    ({"infrastructure_role_arn": None}, "need the account's ECS infrastructure role"),
    ({"infrastructure_role_arn": f"arn:aws:iam::{PROD}:policy/x"}, "not an IAM role ARN"),
    ({"strategy": "codedeploy"}, "strategy: one of"),
    ({"traffic_shift": ("all-at-once", None, None)}, "strategy 'canary' shifts canary"),
    ({"traffic_shift": ("canary", 0, 5)}, "canary percent must be 1 to 99"),
    ({"strategy": "linear", "traffic_shift": ("linear", 2, 5)}, "linear percent must be 3 to 99"),
    ({"traffic_shift": ("canary", 10, 1441)}, "minutes must be 0 to 1440"),
    ({"strategy": "blue-green", "traffic_shift": ("all-at-once", 10, 5)}, "takes no percent or minutes"),
    ({"settings": BlueGreenConfig(terminationWaitMinutes=1441)}, "ECS bakes 0 to 1440 minutes"),
])
def test_native_settings_reject_what_ecs_would(kwargs, problem) -> None:
    args = {"strategy": "canary", "traffic_shift": ("canary", 10, 5), "settings": BlueGreenConfig(),
            "infrastructure_role_arn": ROLE, **kwargs}
    with pytest.raises(ValueError, match="NativeSettings: .*" + problem.replace("(", r"\(").replace(")", r"\)")):
        NativeSettings(**args)


def test_native_settings_render_ecs_deployment_configuration() -> None:
    blue_green = NativeSettings("blue-green", ("all-at-once", None, None), BlueGreenConfig(), ROLE)
    config_ = blue_green.deployment_configuration()
    assert (config_.strategy, config_.bake_time_in_minutes) == ("BLUE_GREEN", "5")
    assert config_.canary_configuration is None and config_.linear_configuration is None


def test_an_environment_is_codedeploy_or_native_not_both() -> None:
    native = NativeSettings("blue-green", ("all-at-once", None, None), BlueGreenConfig(), ROLE)
    codedeploy = BlueGreenSettings("app", "CodeDeployDefault.ECSAllAtOnce", ("all-at-once", None, None),
                                   BlueGreenConfig(), "arn:aws:iam::1:role/cd")
    with pytest.raises(ValueError, match="CodeDeploy or natively, not both"):
        WorkloadArgs(provider=None, environment="prod", region="us-east-2", network=None, services=(),
                     blue_green=codedeploy, native=native)
