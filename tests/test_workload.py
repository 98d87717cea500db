"""Workloads in the workload accounts: network, load balancer, clusters, services, roles, ownership, cross-account
pulls. Everything is asserted on the inputs AWS would receive from the real program under the offline mocks."""

from __future__ import annotations

import json

import pytest
from conftest import PROD, QA, TOOLS, as_json, config, role_policy
from iam import allows, statements

from components import naming
from components.config import parse
from components.task_definition import task_definition
from offline.mocks import ProgramRun, Recorded, run_program

CERT = f"arn:aws:acm:us-east-2:{PROD}:certificate/0f1e2d3c-aaaa-bbbb-cccc-111122223333"
ADOPTED = {"vpcId": "vpc-0123456789abcdef0",
           "publicSubnetIds": ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"],
           "privateSubnetIds": ["subnet-0bbbbbbbbbbbbbbb1", "subnet-0bbbbbbbbbbbbbbb2"]}
ENVIRONMENTS = [
    {"name": "qa", "accountId": QA, "regions": ["us-east-2"], "network": {"natGateways": "single"}},
    {"name": "prod", "accountId": PROD, "regions": ["us-east-2", "eu-west-1"], "requireApproval": True,
     "strategy": "codedeploy", "certificateArns": {"us-east-2": CERT},
     "network": {"existingVpcs": {"eu-west-1": ADOPTED}},
     "blueGreen": {"trafficShift": {"type": "canary", "percent": 20, "intervalMinutes": 7},
                   "terminationWaitMinutes": 15, "testTrafficCidrs": ["10.8.0.0/16"]}},
]
SERVICES = [
    {"name": "orders", "port": 3000, "cpu": 512, "memory": 1024, "desiredCount": 3,
     "environment": {"LOG_LEVEL": "info"}, "secrets": {"DB_PASSWORD": "orders/db", "API_KEY": "ssm:/orders/api-key"},
     "autoscaling": {"min": 2, "max": 6, "cpuTarget": 55}, "healthCheck": {"path": "/health"},
     "logRetentionDays": 90},
    {"name": "team/payments", "containerName": "app", "serviceName": "payments", "cluster": "core",
     "triggerTag": "release", "routing": {"hosts": ["pay.example.com"], "priority": 5}},
]
WORKLOAD_CONFIG = config(**{"crossdeploy:environments": ENVIRONMENTS, "crossdeploy:services": SERVICES})
ROLLING_WITH_EXISTING = config(**{
    "crossdeploy:environments": [{"name": "qa", "accountId": QA, "regions": ["us-east-2"]},
                                 {"name": "prod", "accountId": PROD, "regions": ["us-east-2", "eu-west-1"]}],
    "crossdeploy:services": [
        {"name": "orders"},
        {"name": "legacy", "existing": True, "cluster": "old-cluster", "executionRoleName": "ecsTaskExecutionRole",
         "taskRoleName": "service-role/legacy-app"},
    ]})


@pytest.fixture(scope="module")
def run() -> ProgramRun:
    return run_program(WORKLOAD_CONFIG, stack="test")


@pytest.fixture(scope="module")
def existing_run() -> ProgramRun:
    return run_program(ROLLING_WITH_EXISTING, stack="test")


@pytest.fixture(scope="module")
def cfg():
    raw = {k.split(":", 1)[1]: v for k, v in WORKLOAD_CONFIG.items() if k.startswith("crossdeploy:")}
    return parse(raw, project="crossdeploy", stack="test", aws_region="us-east-2")


PLACES = [(QA, "us-east-2", "qa"), (PROD, "us-east-2", "prod"), (PROD, "eu-west-1", "prod")]


def at(run: ProgramRun, type_: str, account: str, region: str) -> list[Recorded]:
    return [r for r in run.of_type(type_) if r.account == account and r.region == region]


def one(items: list[Recorded]) -> Recorded:
    assert len(items) == 1, [r.name for r in items]
    return items[0]


def ecs_service(run: ProgramRun, account: str, region: str, name: str) -> Recorded:
    return one([r for r in at(run, "aws:ecs/service:Service", account, region) if r.inputs["name"] == name])


def target_group_of(run: ProgramRun, arn: str) -> Recorded:
    return one([r for r in run.of_type("aws:lb/targetGroup:TargetGroup") if r.outputs["arn"] == arn])


# ------------------------------------------------------------------------------------------------ network, ALB


def test_each_environment_and_region_gets_a_vpc_unless_it_adopts_one(run) -> None:
    assert len(at(run, "aws:ec2/vpc:Vpc", QA, "us-east-2")) == 1
    assert len(at(run, "aws:ec2/vpc:Vpc", PROD, "us-east-2")) == 1
    assert at(run, "aws:ec2/vpc:Vpc", PROD, "eu-west-1") == []  # adopted: nothing created
    # qa asked for a single NAT gateway, prod (created VPC) keeps the default of one per AZ.
    assert len(at(run, "aws:ec2/natGateway:NatGateway", QA, "us-east-2")) == 1
    assert len(at(run, "aws:ec2/natGateway:NatGateway", PROD, "us-east-2")) == 2


def test_adopted_vpc_hosts_the_load_balancer_and_the_tasks(run) -> None:
    alb = one(at(run, "aws:lb/loadBalancer:LoadBalancer", PROD, "eu-west-1"))
    assert alb.inputs["subnets"] == ADOPTED["publicSubnetIds"]
    service = ecs_service(run, PROD, "eu-west-1", "orders")
    assert service.inputs["networkConfiguration"]["subnets"] == ADOPTED["privateSubnetIds"]
    for sg in at(run, "aws:ec2/securityGroup:SecurityGroup", PROD, "eu-west-1"):
        assert sg.inputs["vpcId"] == ADOPTED["vpcId"]


@pytest.mark.parametrize("account,region,env", PLACES)
def test_one_public_alb_per_environment_and_region_in_the_public_subnets(run, account, region, env) -> None:
    alb = one(at(run, "aws:lb/loadBalancer:LoadBalancer", account, region))
    assert alb.inputs["loadBalancerType"] == "application" and alb.inputs["internal"] is False
    assert alb.inputs["dropInvalidHeaderFields"] is True
    subnets = {s.outputs.get("id", s.name): s for s in at(run, "aws:ec2/subnet:Subnet", account, region)}
    if subnets:  # created VPC: the ALB's subnets are the public ones
        public = [r for r in at(run, "aws:ec2/subnet:Subnet", account, region)
                  if r.inputs.get("mapPublicIpOnLaunch") is False and "public" in r.name]
        assert len(alb.inputs["subnets"]) == 2 and len(public) == 2


def test_https_with_redirect_where_a_certificate_is_given_http_elsewhere(run) -> None:
    listeners = at(run, "aws:lb/listener:Listener", PROD, "us-east-2")
    https = one([r for r in listeners if r.inputs["port"] == 443])
    assert https.inputs["protocol"] == "HTTPS" and https.inputs["certificateArn"] == CERT
    assert https.inputs["sslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    redirect = one([r for r in listeners if r.inputs["port"] == 80])
    action = redirect.inputs["defaultActions"][0]
    assert action["type"] == "redirect" and action["redirect"]["protocol"] == "HTTPS"
    assert action["redirect"]["port"] == "443" and action["redirect"]["statusCode"] == "HTTP_301"

    qa = at(run, "aws:lb/listener:Listener", QA, "us-east-2")
    assert [(r.inputs["port"], r.inputs["protocol"]) for r in qa] == [(80, "HTTP")]
    assert qa[0].inputs["defaultActions"][0]["fixedResponse"]["statusCode"] == "404"
    # prod eu-west-1 has no certificate: HTTP production listener, and an HTTP test listener.
    eu = sorted((r.inputs["port"], r.inputs["protocol"]) for r in at(run, "aws:lb/listener:Listener", PROD,
                                                                      "eu-west-1"))
    assert eu == [(80, "HTTP"), (8443, "HTTP")]


def test_tasks_accept_traffic_only_from_the_alb(run) -> None:
    for account, region, _ in PLACES:
        groups = {r.outputs["id"]: r for r in at(run, "aws:ec2/securityGroup:SecurityGroup", account, region)}
        ingress = at(run, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", account, region)
        tasks_sg = {sg for r in at(run, "aws:ecs/service:Service", account, region)
                    for sg in r.inputs["networkConfiguration"]["securityGroups"]}
        assert len(tasks_sg) == 1
        (task_sg,) = tasks_sg
        alb_sg = one(at(run, "aws:lb/loadBalancer:LoadBalancer", account, region)).inputs["securityGroups"][0]
        assert {task_sg, alb_sg} <= set(groups)
        into_tasks = [r for r in ingress if r.inputs["securityGroupId"] == task_sg]
        assert into_tasks and all(r.inputs.get("referencedSecurityGroupId") == alb_sg and "cidrIpv4" not in r.inputs
                                  for r in into_tasks)
        assert sorted(r.inputs["fromPort"] for r in into_tasks) == [3000, 8080]
        for service in at(run, "aws:ecs/service:Service", account, region):
            assert service.inputs["networkConfiguration"]["assignPublicIp"] is False


def test_test_listener_is_reachable_only_from_the_configured_ranges(run) -> None:
    ingress = at(run, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", PROD, "us-east-2")
    test_rules = [r for r in ingress if r.inputs["fromPort"] == 8443]
    assert [r.inputs["cidrIpv4"] for r in test_rules] == ["10.8.0.0/16"]
    public = sorted(r.inputs["fromPort"] for r in ingress if r.inputs.get("cidrIpv4") == "0.0.0.0/0")
    assert public == [80, 443]


# ------------------------------------------------------------------------------------------------ services


@pytest.mark.parametrize("account,region,env", PLACES)
def test_clusters_have_container_insights(run, account, region, env) -> None:
    clusters = at(run, "aws:ecs/cluster:Cluster", account, region)
    assert sorted(c.inputs["name"] for c in clusters) == ["core", "crossdeploy"]
    for c in clusters:
        assert {"name": "containerInsights", "value": "enabled"} in c.inputs["settings"]


@pytest.mark.parametrize("account,region,env", PLACES)
def test_task_definition_is_the_one_crossdeploy_knows_with_the_bootstrap_image(run, cfg, account, region,
                                                                               env) -> None:
    orders = next(s for s in cfg.services if s.name == "orders")
    tds = [r for r in at(run, "aws:ecs/taskDefinition:TaskDefinition", account, region)
           if r.inputs["family"] == "test-orders"]
    td = one(tds)
    (container,) = json.loads(td.inputs["containerDefinitions"])
    # The first image is the tools account's replica in this region at the trigger tag (see task_definition.py).
    assert container["image"] == f"{TOOLS}.dkr.ecr.{region}.amazonaws.com/orders:latest"
    assert (td.inputs["cpu"], td.inputs["memory"]) == ("512", "1024")
    assert td.inputs["networkMode"] == "awsvpc" and td.inputs["requiresCompatibilities"] == ["FARGATE"]
    roles = f"arn:aws:iam::{account}:role/crossdeploy/test/workload"
    assert td.inputs["executionRoleArn"] == f"{roles}/test-orders-execution"
    assert td.inputs["taskRoleArn"] == f"{roles}/test-orders-task"
    assert container["portMappings"] == [{"containerPort": 3000, "protocol": "tcp"}]
    assert container["environment"] == [{"name": "LOG_LEVEL", "value": "info"}]
    assert sorted(container["secrets"], key=lambda s: s["name"]) == [
        {"name": "API_KEY", "valueFrom": f"arn:aws:ssm:{region}:{account}:parameter/orders/api-key"},
        {"name": "DB_PASSWORD", "valueFrom": f"arn:aws:secretsmanager:{region}:{account}:secret:orders/db"},
    ]
    logs = container["logConfiguration"]
    assert logs["logDriver"] == "awslogs" and logs["options"]["awslogs-region"] == region
    group = one([r for r in at(run, "aws:cloudwatch/logGroup:LogGroup", account, region)
                 if r.inputs["name"] == logs["options"]["awslogs-group"]])
    assert group.inputs["retentionInDays"] == 90
    assert td.inputs["skipDestroy"] is True
    # Same source as the blue/green taskdef.json: only the image differs.
    expected = task_definition(cfg, account, region, orders, container["image"])
    assert json.loads(td.inputs["containerDefinitions"]) == expected["containerDefinitions"]


def test_target_groups_drain_in_30_seconds_and_check_the_configured_path(run) -> None:
    for tg in run.of_type("aws:lb/targetGroup:TargetGroup"):
        assert tg.inputs["deregistrationDelay"] == 30
        assert tg.inputs["targetType"] == "ip" and tg.inputs["protocol"] == "HTTP"
    service = ecs_service(run, QA, "us-east-2", "orders")
    tg = target_group_of(run, service.inputs["loadBalancers"][0]["targetGroupArn"])
    assert tg.inputs["healthCheck"]["path"] == "/health" and tg.inputs["port"] == 3000


def test_rolling_services_have_circuit_breaker_and_full_capacity_rollouts(run) -> None:
    for name in ("orders", "payments"):
        service = ecs_service(run, QA, "us-east-2", name)
        assert service.inputs["deploymentController"] == {"type": "ECS"}
        assert service.inputs["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
        assert service.inputs["deploymentMinimumHealthyPercent"] == 100
        assert service.inputs["deploymentMaximumPercent"] == 200
        assert service.inputs["launchType"] == "FARGATE"
        assert service.inputs["healthCheckGracePeriodSeconds"] == 60
        assert service.inputs["waitForSteadyState"] is False
        assert "deploymentConfiguration" not in service.inputs  # ECS's default: ROLLING


def test_rolling_services_roll_back_on_their_deployment_alarm(run) -> None:
    """README: rolling is "circuit breaker with rollback plus the environment's deployment alarms"."""
    alb = one(at(run, "aws:lb/loadBalancer:LoadBalancer", QA, "us-east-2"))
    alarms = {a.outputs["name"]: a for a in at(run, "aws:cloudwatch/metricAlarm:MetricAlarm", QA, "us-east-2")}
    assert len(alarms) == 4  # per service: 5xx (ECS's deployment alarm) and unhealthy targets (the bake's)
    for name in ("orders", "payments"):
        service = ecs_service(run, QA, "us-east-2", name)
        assert service.inputs["alarms"] == {"alarmNames": [service.inputs["alarms"]["alarmNames"][0]],
                                            "enable": True, "rollback": True}
        alarm = alarms[service.inputs["alarms"]["alarmNames"][0]]
        tg = target_group_of(run, service.inputs["loadBalancers"][0]["targetGroupArn"])
        (metric,) = [q["metric"] for q in alarm.inputs["metricQueries"] if "metric" in q]
        assert metric["metricName"] == "HTTPCode_Target_5XX_Count" and metric["stat"] == "Sum"
        assert metric["dimensions"] == {"LoadBalancer": alb.outputs["arnSuffix"],
                                        "TargetGroup": tg.outputs["arnSuffix"]}
        (total,) = [q for q in alarm.inputs["metricQueries"] if "expression" in q]
        assert total["expression"] == "FILL(tg1, 0)" and total["returnData"] is True
        assert (alarm.inputs["threshold"], alarm.inputs["evaluationPeriods"]) == (10, 2)  # no blueGreen: defaults
        assert alarm.inputs["treatMissingData"] == "notBreaching"


def test_services_run_in_private_subnets_of_their_own_vpc(run) -> None:
    subnets = {r.outputs["id"]: r for r in at(run, "aws:ec2/subnet:Subnet", QA, "us-east-2")}
    service = ecs_service(run, QA, "us-east-2", "orders")
    chosen = [subnets[s] for s in service.inputs["networkConfiguration"]["subnets"]]
    assert len(chosen) == 2 and all("private" in s.name for s in chosen)
    assert len({s.inputs["availabilityZone"] for s in chosen}) == 2


def test_pipeline_owned_fields_are_ignored_after_creation(run) -> None:
    for account, region, env in PLACES:
        for service in at(run, "aws:ecs/service:Service", account, region):
            expected = {"taskDefinition", "desiredCount"}
            if env == "prod":
                expected.add("loadBalancers")
            assert set(service.ignore_changes) == expected, (service.name, service.ignore_changes)


def test_blue_green_listener_rules_leave_the_forward_target_to_codedeploy(run) -> None:
    rolling = at(run, "aws:lb/listenerRule:ListenerRule", QA, "us-east-2")
    assert rolling and all(r.ignore_changes == () for r in rolling)
    for region in ("us-east-2", "eu-west-1"):
        rules = at(run, "aws:lb/listenerRule:ListenerRule", PROD, region)
        assert len(rules) == 4  # production and test rule per service
        assert all(r.ignore_changes == ("actions",) for r in rules)


def test_routing_rules_follow_the_config(run) -> None:
    rules = at(run, "aws:lb/listenerRule:ListenerRule", QA, "us-east-2")
    by_priority = {r.inputs["priority"]: r for r in rules}
    assert sorted(by_priority) == [5, 10]
    orders = by_priority[10].inputs["conditions"]
    assert orders == [{"pathPattern": {"values": ["/orders", "/orders/*"]}}]
    payments = by_priority[5].inputs["conditions"]
    assert payments == [{"hostHeader": {"values": ["pay.example.com"]}}]
    for rule in rules:
        tg = target_group_of(run, rule.inputs["actions"][0]["targetGroupArn"])
        assert tg.account == QA


def test_desired_count_and_autoscaling(run) -> None:
    service = ecs_service(run, QA, "us-east-2", "orders")
    assert service.inputs["desiredCount"] == 3
    targets = at(run, "aws:appautoscaling/target:Target", QA, "us-east-2")
    target = one(targets)
    assert target.inputs["resourceId"] == "service/crossdeploy/orders"
    assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (2, 6)
    policy = one(at(run, "aws:appautoscaling/policy:Policy", QA, "us-east-2"))
    tracking = policy.inputs["targetTrackingScalingPolicyConfiguration"]
    assert tracking["targetValue"] == 55
    assert tracking["predefinedMetricSpecification"]["predefinedMetricType"] == "ECSServiceAverageCPUUtilization"
    # payments asked for no autoscaling
    assert all("payments" not in r.inputs["resourceId"] for r in run.of_type("aws:appautoscaling/target:Target"))


# ------------------------------------------------------------------------------------------------ blue/green


@pytest.mark.parametrize("region", ["us-east-2", "eu-west-1"])
def test_blue_green_services_are_codedeploy_controlled_with_two_target_groups(run, region) -> None:
    service = ecs_service(run, PROD, region, "orders")
    assert service.inputs["deploymentController"] == {"type": "CODE_DEPLOY"}
    assert "deploymentCircuitBreaker" not in service.inputs
    group = one([g for g in at(run, "aws:codedeploy/deploymentGroup:DeploymentGroup", PROD, region)
                 if g.inputs["deploymentGroupName"] == "orders"])
    pair = group.inputs["loadBalancerInfo"]["targetGroupPairInfo"]
    names = [tg["name"] for tg in pair["targetGroups"]]
    blue = target_group_of(run, service.inputs["loadBalancers"][0]["targetGroupArn"])
    assert blue.outputs["name"] == names[0] and len(set(names)) == 2
    listeners = {r.outputs["arn"]: r for r in at(run, "aws:lb/listener:Listener", PROD, region)}
    prod_port = 443 if region == "us-east-2" else 80
    assert [listeners[a].inputs["port"] for a in pair["prodTrafficRoute"]["listenerArns"]] == [prod_port]
    assert [listeners[a].inputs["port"] for a in pair["testTrafficRoute"]["listenerArns"]] == [8443]
    assert group.inputs["ecsService"] == {"clusterName": "crossdeploy", "serviceName": "orders"}
    assert group.inputs["appName"] == naming.codedeploy_application_name(
        parse({k.split(":", 1)[1]: v for k, v in WORKLOAD_CONFIG.items() if k.startswith("crossdeploy:")},
              project="crossdeploy", stack="test", aws_region="us-east-2"), "prod")
    assert group.inputs["blueGreenDeploymentConfig"]["terminateBlueInstancesOnDeploymentSuccess"][
        "terminationWaitTimeInMinutes"] == 15
    # CodeDeploy watches its own alarm; ECS gets no alarms, deployment configuration or native wiring.
    assert "alarms" not in service.inputs and "deploymentConfiguration" not in service.inputs
    assert "advancedConfiguration" not in service.inputs["loadBalancers"][0]
    assert group.inputs["alarmConfiguration"]["enabled"] is True
    alarms = [a for a in at(run, "aws:cloudwatch/metricAlarm:MetricAlarm", PROD, region)
              if a.outputs["name"] in group.inputs["alarmConfiguration"]["alarms"]]
    (total,) = [q for q in one(alarms).inputs["metricQueries"] if "expression" in q]
    assert total == {"id": "target5xx", "expression": "FILL(tg1, 0) + FILL(tg2, 0)",
                     "label": "Target 5xx responses, both target groups", "returnData": True}
    # two alarms per service in a CodeDeploy environment: CodeDeploy's 5xx alarm, and the unhealthy-targets alarm
    # the bake watches (CodeDeploy does not roll back on it)
    assert len(at(run, "aws:cloudwatch/metricAlarm:MetricAlarm", PROD, region)) == 4
    assert group.inputs["alarmConfiguration"]["alarms"] == [one(alarms).outputs["name"]]
    assert set(group.inputs["autoRollbackConfiguration"]["events"]) == {"DEPLOYMENT_FAILURE",
                                                                        "DEPLOYMENT_STOP_ON_ALARM"}


def test_blue_green_custom_traffic_shift_is_created_per_region(run) -> None:
    for region in ("us-east-2", "eu-west-1"):
        config_ = one(at(run, "aws:codedeploy/deploymentConfig:DeploymentConfig", PROD, region))
        canary = config_.inputs["trafficRoutingConfig"]["timeBasedCanary"]
        assert (canary["percentage"], canary["interval"]) == (20, 7)
        for group in at(run, "aws:codedeploy/deploymentGroup:DeploymentGroup", PROD, region):
            assert group.inputs["deploymentConfigName"] == config_.inputs["deploymentConfigName"]
    assert at(run, "aws:codedeploy/deploymentConfig:DeploymentConfig", QA, "us-east-2") == []


def test_codedeploy_role_only_where_blue_green_runs(run) -> None:
    attachments = run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    codedeploy = [a for a in attachments if a.inputs["policyArn"].endswith(":policy/AWSCodeDeployRoleForECS")]
    assert [a.account for a in codedeploy] == [PROD]
    role = one([r for r in run.of_type("aws:iam/role:Role")
                if r.account == PROD and r.outputs["name"] == codedeploy[0].inputs["role"]])
    trust = statements(role.inputs["assumeRolePolicy"])
    assert trust[0]["Principal"] == {"Service": "codedeploy.amazonaws.com"}
    for group in at(run, "aws:codedeploy/deploymentGroup:DeploymentGroup", PROD, "us-east-2"):
        assert group.inputs["serviceRoleArn"] == role.outputs["arn"]


def test_no_ecs_infrastructure_role_without_a_native_environment(run) -> None:
    assert not [a for a in run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                if "AmazonECSInfrastructureRolePolicy" in a.inputs["policyArn"]]
    assert not [r for r in run.of_type("aws:iam/role:Role") if "/infrastructure/" in r.inputs.get("path", "")]


# ------------------------------------------------------------------------------------------------ roles, pulls


def _role(run: ProgramRun, account: str, name: str) -> Recorded:
    return one([r for r in run.of_type("aws:iam/role:Role") if r.account == account and r.outputs["name"] == name])


@pytest.mark.parametrize("account,regions", [(QA, ["us-east-2"]), (PROD, ["us-east-2", "eu-west-1"])])
def test_execution_role_pulls_its_image_cross_account_and_reads_only_its_secrets(run, account, regions) -> None:
    role = _role(run, account, "test-orders-execution")
    assert role.inputs["path"] == "/crossdeploy/test/workload/"
    policy = role_policy(run, role)
    for region in regions:
        repo = f"arn:aws:ecr:{region}:{TOOLS}:repository/orders"
        for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"):
            assert allows(policy, action, repo)
        assert not allows(policy, "ecr:BatchGetImage", f"arn:aws:ecr:{region}:{TOOLS}:repository/team/payments")
        assert allows(policy, "logs:PutLogEvents",
                      f"arn:aws:logs:{region}:{account}:log-group:/ecs/crossdeploy/test/orders:log-stream:ecs/x")
        assert allows(policy, "secretsmanager:GetSecretValue",
                      f"arn:aws:secretsmanager:{region}:{account}:secret:orders/db-AbCdEf")
        assert not allows(policy, "secretsmanager:GetSecretValue",
                          f"arn:aws:secretsmanager:{region}:{account}:secret:orders/db-admin-AbCdEf")
        assert allows(policy, "ssm:GetParameters", f"arn:aws:ssm:{region}:{account}:parameter/orders/api-key")
    assert allows(policy, "ecr:GetAuthorizationToken", "*")
    assert not allows(policy, "ecr:PutImage", f"arn:aws:ecr:us-east-2:{TOOLS}:repository/orders")
    trust = statements(role.inputs["assumeRolePolicy"])[0]
    assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == account


def test_repository_policy_lets_exactly_the_workload_roles_pull(run) -> None:
    policies = run.of_type("aws:ecr/repositoryPolicy:RepositoryPolicy")
    assert policies
    for account in (QA, PROD):
        execution = _role(run, account, "test-orders-execution").outputs["arn"]
        for policy in policies:
            doc = policy.inputs["policy"]
            repo = f"arn:aws:ecr:{policy.region}:{TOOLS}:repository/orders"
            assert allows(doc, "ecr:BatchGetImage", repo, principal_arn=execution)
            # Other roles of the workload account (a developer's, a CI runner's) cannot pull.
            assert not allows(doc, "ecr:BatchGetImage", repo, principal_arn=f"arn:aws:iam::{account}:role/Admin")
            assert not allows(doc, "ecr:PutImage", repo, principal_arn=execution)


def test_every_role_the_deploy_role_may_pass_exists_in_its_account(run) -> None:
    for account in (QA, PROD):
        deploy = _role(run, account, "crossdeploy-test-deploy")
        passable = {arn for s in statements(role_policy(run, deploy)) if s["Action"] == ["iam:PassRole"]
                    and s["Condition"]["StringEquals"]["iam:PassedToService"] == "ecs-tasks.amazonaws.com"
                    for arn in s["Resource"]}
        created = {r.outputs["arn"] for r in run.of_type("aws:iam/role:Role") if r.account == account
                   and r.inputs.get("path") == "/crossdeploy/test/workload/"}
        assert len(created) == 4  # task and execution role of both services
        # One path pattern (the inline policy limit): it admits exactly the workload roles of this stack.
        assert passable == {f"arn:aws:iam::{account}:role/crossdeploy/test/workload/*"}
        policy = role_policy(run, deploy)
        roles = [r.outputs["arn"] for r in run.of_type("aws:iam/role:Role") if r.account == account]
        context = {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
        assert {arn for arn in roles if allows(policy, "iam:PassRole", arn, context=context)} == created


def test_workload_resources_use_only_workload_providers(run) -> None:
    workload_types = ("aws:ec2/", "aws:lb/", "aws:ecs/service", "aws:ecs/taskDefinition", "aws:codedeploy/",
                      "aws:appautoscaling/", "aws:vpc/")
    for r in run.custom():
        if r.type.startswith(workload_types):
            assert r.account in (QA, PROD), (r.type, r.name, r.account)


# ------------------------------------------------------------------------------------------------ existing


def test_existing_services_get_nothing_in_workload_accounts(existing_run) -> None:
    services = [r.inputs["name"] for r in existing_run.of_type("aws:ecs/service:Service")]
    assert sorted(services) == ["orders"] * 3
    clusters = {r.inputs["name"] for r in existing_run.of_type("aws:ecs/cluster:Cluster")}
    assert "old-cluster" not in clusters
    names = [r.outputs["name"] for r in existing_run.of_type("aws:iam/role:Role") if r.account in (QA, PROD)]
    assert names and not any("legacy" in n for n in names)
    families = [r.inputs["family"] for r in existing_run.of_type("aws:ecs/taskDefinition:TaskDefinition")]
    assert not any("legacy" in f for f in families)


def test_existing_services_are_deployed_to_by_name_with_their_own_roles(existing_run) -> None:
    pipeline = one([p for p in existing_run.of_type("aws:codepipeline/pipeline:Pipeline")
                    if p.inputs["name"].endswith("-legacy")])
    actions = [a for s in pipeline.inputs["stages"] for a in s["actions"] if a["category"] == "Deploy"]
    assert {(a["configuration"]["ClusterName"], a["configuration"]["ServiceName"]) for a in actions} == {
        ("old-cluster", "legacy")}
    for account in (QA, PROD):
        deploy = _role(existing_run, account, "crossdeploy-test-deploy")
        policy = role_policy(existing_run, deploy)
        for role in (f"arn:aws:iam::{account}:role/ecsTaskExecutionRole",
                     f"arn:aws:iam::{account}:role/service-role/legacy-app"):
            assert allows(policy, "iam:PassRole", role, context={"iam:PassedToService": "ecs-tasks.amazonaws.com"})
        assert allows(policy, "ecs:UpdateService", f"arn:aws:ecs:us-east-2:{account}:service/old-cluster/legacy")
        # and the image pulls of the existing execution role are admitted by the repository policy
        for repo_policy in existing_run.of_type("aws:ecr/repositoryPolicy:RepositoryPolicy"):
            assert allows(repo_policy.inputs["policy"], "ecr:BatchGetImage",
                          f"arn:aws:ecr:{repo_policy.region}:{TOOLS}:repository/legacy",
                          principal_arn=f"arn:aws:iam::{account}:role/ecsTaskExecutionRole")


def test_outputs_name_each_load_balancer(run) -> None:
    dns = as_json(run.outputs["loadBalancers"]) if isinstance(run.outputs.get("loadBalancers"), str) else \
        run.outputs["loadBalancers"]
    assert set(dns) == {"qa/us-east-2", "prod/us-east-2", "prod/eu-west-1"}
