"""Push delivery on the Pulumi side: the rule (tested for real through moto's EventBridge), the function and its
package, retries, dead-letter queue, alarms, and the deploy roles' trust — plus the forwarded rollout failures."""

from __future__ import annotations

import json

import pytest
from conftest import PROD, QA, SAMPLES, TOOLS, by_output, config, delivered, pipelines, role_policy
from iam import allows

from components.config import ConfigError
from components.push_deploy import MAX_PATTERN_CHARS, event_patterns
from offline.mocks import run_program

PUSH_SERVICES = [
    {"name": "orders"},
    {"name": "billing", "delivery": "push", "containerName": "app"},
    {"name": "legacy", "delivery": "push", "pushMode": "force"},
]


@pytest.fixture(scope="module")
def push_run():
    envs = [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2"]},
        {"name": "prod", "accountId": PROD, "regions": ["us-east-2", "eu-west-1"], "pushTags": ["release-*", "prod-*"]},
    ]
    return run_program(config(**{"crossdeploy:services": PUSH_SERVICES, "crossdeploy:environments": envs}),
                       stack="push")


def sample_event(**detail: str) -> dict:
    event = json.loads((SAMPLES / "ecr-image-action-event.json").read_text())
    event["detail"].update(detail)
    return event


def test_only_push_services_get_the_rule_and_pipelines_stay_for_the_others(push_run) -> None:
    assert [p.inputs["stages"][0]["actions"][0]["configuration"]["RepositoryName"] for p in pipelines(push_run)] == [
        "orders"]
    rules = [r for r in push_run.of_type("aws:cloudwatch/eventRule:EventRule") if r.name.startswith("push-deploy")]
    assert len(rules) == 1
    pattern = json.loads(rules[0].inputs["eventPattern"])
    assert pattern["detail"]["repository-name"] == ["billing", "legacy"]
    assert pattern["detail"]["image-tag"] == [{"wildcard": "prod-*"}, {"wildcard": "qa-*"}, {"wildcard": "release-*"}]
    assert (rules[0].account, rules[0].region) == (TOOLS, "us-east-2")


def test_the_rule_pattern_delivers_exactly_configured_successful_pushes(push_run) -> None:
    rule = next(r for r in push_run.of_type("aws:cloudwatch/eventRule:EventRule") if r.name.startswith("push-deploy"))
    pattern = json.loads(rule.inputs["eventPattern"])
    cases = {
        "qa push": (sample_event(**{"repository-name": "billing", "image-tag": "qa-1.8.0"}), True),
        "prod release": (sample_event(**{"repository-name": "legacy", "image-tag": "release-2"}), True),
        "pipeline service": (sample_event(**{"repository-name": "orders", "image-tag": "qa-1.8.0"}), False),
        "foreign repository": (sample_event(**{"repository-name": "other", "image-tag": "qa-1"}), False),
        "unmapped tag": (sample_event(**{"repository-name": "billing", "image-tag": "latest"}), False),
        "delete": (sample_event(**{"repository-name": "billing", "image-tag": "qa-1", "action-type": "DELETE"}),
                   False),
        "failed push": (sample_event(**{"repository-name": "billing", "image-tag": "qa-1", "result": "FAILURE"}),
                        False),
    }
    arrived = [e["detail"] for e in delivered(pattern, [event for event, _ in cases.values()])]
    expected = [event["detail"] for event, wanted in cases.values() if wanted]
    assert sorted(arrived, key=json.dumps) == sorted(expected, key=json.dumps)


def test_patterns_are_split_to_fit_eventbridge() -> None:
    repos = [f"team-{i:03}/service-with-a-long-name-{i:03}" for i in range(120)]
    patterns = event_patterns(repos, ["qa-*", "prod-*"])
    assert len(patterns) > 1
    assert all(len(json.dumps(p)) <= MAX_PATTERN_CHARS for p in patterns)
    assert [r for p in patterns for r in p["detail"]["repository-name"]] == repos


def test_function_package_carries_the_handlers_and_the_target_map(push_run, tmp_path) -> None:
    function = by_output(push_run, "name", "crossdeploy-push-push-deploy", "aws:lambda/function:Function")
    assert function.inputs["handler"] == "handlers.push_deploy.handler"
    assert function.inputs["runtime"].startswith("python3.")
    assert function.inputs["timeout"] == 900
    code = function.inputs["code"]
    assets = code.assets
    # The push handler, the deploy engine it drives, and what they import.
    assert {"handlers/push_deploy.py", "handlers/deploy_engine.py", "handlers/ecs_common.py",
            "handlers/image_definitions.py"} <= set(assets)
    targets = json.loads(assets["targets.json"].text)
    assert targets["version"] == 2 and targets["registryId"] == TOOLS and targets["homeRegion"] == "us-east-2"
    billing = targets["repositories"]["billing"]
    assert billing["pushMode"] == "revision" and billing["containerName"] == "app"
    legacy = targets["repositories"]["legacy"]
    assert legacy["pushMode"] == "force" and legacy["deployDocument"] is None
    # The deploy document the engine registers from: every environment, every region, the rendered task definition.
    document = billing["deployDocument"]
    assert document["service"] == "billing"
    assert [(e["name"], [(t["accountId"], t["region"]) for t in e["targets"]]) for e in document["environments"]] == [
        ("qa", [(QA, "us-east-2")]), ("prod", [(PROD, "us-east-2"), (PROD, "eu-west-1")])]
    rendered = document["environments"][1]["targets"][1]["taskDefinition"]
    assert rendered["containerDefinitions"][0]["name"] == "app"
    assert rendered["executionRoleArn"].startswith(f"arn:aws:iam::{PROD}:role/")
    from handlers import deploy_engine

    engine_targets = deploy_engine.targets_for(deploy_engine.parse_document(document), "prod", {
        r: f"{TOOLS}.dkr.ecr.{r}.amazonaws.com/billing@sha256:{'a' * 64}" for r in ("us-east-2", "eu-west-1")})
    assert [(t.account_id, t.region, t.container) for t in engine_targets] == [
        (PROD, "us-east-2", "app"), (PROD, "eu-west-1", "app")]
    assert [(t["environment"], t["accountId"], t["region"], t["tagPatterns"]) for t in billing["targets"]] == [
        ("qa", QA, "us-east-2", ["qa-*"]),
        ("prod", PROD, "us-east-2", ["release-*", "prod-*"]),
        ("prod", PROD, "eu-west-1", ["release-*", "prod-*"]),
    ]
    roles = {r.outputs["arn"] for r in push_run.of_type("aws:iam/role:Role") if "/deploy/" in r.outputs["arn"]}
    assert {t["roleArn"] for t in billing["targets"]} == roles
    # The handler's own strict loader accepts the document the program ships.
    from handlers import push_deploy

    path = tmp_path / "targets.json"
    path.write_text(assets["targets.json"].text)
    push_deploy.load_targets(str(path))


def test_retries_dead_letter_queue_and_alarms(push_run) -> None:
    function = by_output(push_run, "name", "crossdeploy-push-push-deploy", "aws:lambda/function:Function")
    [queue] = push_run.of_type("aws:sqs/queue:Queue")
    assert queue.inputs["sqsManagedSseEnabled"] is True
    assert function.inputs["deadLetterConfig"] == {"targetArn": queue.outputs["arn"]}
    [invoke_config] = push_run.of_type("aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig")
    assert invoke_config.inputs["maximumRetryAttempts"] == 2
    targets = [t for t in push_run.of_type("aws:cloudwatch/eventTarget:EventTarget")
               if t.inputs["arn"] == function.outputs["arn"]]
    assert targets and all(t.inputs["deadLetterConfig"] == {"arn": queue.outputs["arn"]} for t in targets)
    assert all(t.inputs["retryPolicy"]["maximumRetryAttempts"] > 0 for t in targets)
    [queue_policy] = push_run.of_type("aws:sqs/queuePolicy:QueuePolicy")
    push_rule = next(r for r in push_run.of_type("aws:cloudwatch/eventRule:EventRule")
                     if r.name.startswith("push-deploy"))
    assert allows(queue_policy.inputs["policy"], "sqs:SendMessage", queue.outputs["arn"],
                  service="events.amazonaws.com", context={"aws:SourceArn": push_rule.outputs["arn"]})
    assert not allows(queue_policy.inputs["policy"], "sqs:SendMessage", queue.outputs["arn"],
                      service="events.amazonaws.com", context={"aws:SourceArn": "arn:aws:events:us-east-2:1:rule/x"})
    topic = push_run.of_type("aws:sns/topic:Topic")[0].outputs["arn"]
    # The push deploy's own alarms (the workload accounts hold each service's deployment alarm).
    alarms = [a for a in push_run.of_type("aws:cloudwatch/metricAlarm:MetricAlarm") if a.account == TOOLS]
    assert {(a.inputs["namespace"], a.inputs["metricName"]) for a in alarms} == {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"), ("AWS/Lambda", "Errors")}
    assert all(a.inputs["alarmActions"] == [topic] for a in alarms)
    [permission] = push_run.of_type("aws:lambda/permission:Permission")
    assert permission.inputs["principal"] == "events.amazonaws.com" and permission.inputs["sourceArn"]
    # CloudWatch and EventBridge may publish to the encrypted topic.
    [topic_policy] = push_run.of_type("aws:sns/topicPolicy:TopicPolicy")
    for service in ("cloudwatch.amazonaws.com", "events.amazonaws.com"):
        assert allows(topic_policy.inputs["policy"], "sns:Publish", topic, service=service,
                      context={"aws:SourceAccount": TOOLS})


def test_function_role_has_exactly_what_the_handler_needs(push_run) -> None:
    function = by_output(push_run, "name", "crossdeploy-push-push-deploy", "aws:lambda/function:Function")
    role = by_output(push_run, "arn", function.inputs["role"])
    policy = role_policy(push_run, role)
    deploy_roles = [r for r in push_run.of_type("aws:iam/role:Role") if "/deploy/" in r.outputs["arn"]]
    for deploy in deploy_roles:
        assert allows(policy, "sts:AssumeRole", deploy.outputs["arn"])
        # ...and the deploy role trusts the function's role, not just the pipeline roles.
        assert allows(deploy.inputs["assumeRolePolicy"], "sts:AssumeRole", principal_arn=role.outputs["arn"])
    for region in ("us-east-2", "eu-west-1"):
        assert allows(policy, "ecr:DescribeImages", f"arn:aws:ecr:{region}:{TOOLS}:repository/billing")
    assert not allows(policy, "ecr:DescribeImages", f"arn:aws:ecr:us-east-2:{TOOLS}:repository/orders")
    assert not allows(policy, "ecs:UpdateService", f"arn:aws:ecs:us-east-2:{QA}:service/crossdeploy/billing")
    assert not allows(policy, "s3:GetObject", "arn:aws:s3:::any/x")


def test_deploy_roles_trust_no_push_role_without_push_services(base_run) -> None:
    for deploy in (r for r in base_run.of_type("aws:iam/role:Role") if "/deploy/" in r.outputs["arn"]):
        assert not allows(deploy.inputs["assumeRolePolicy"], "sts:AssumeRole",
                          principal_arn=f"arn:aws:iam::{TOOLS}:role/crossdeploy/test/push/crossdeploy-test-push-deploy")
    # No push function (the deploy engine's, which pipelines use, is not the push deploy's).
    assert not [f for f in base_run.of_type("aws:lambda/function:Function")
                if f.inputs["handler"] == "handlers.push_deploy.handler"]


@pytest.mark.parametrize(("envs", "fragment"), [
    ([{"name": "qa", "accountId": QA, "regions": ["us-east-2"], "pushTags": ["v*"]},
      {"name": "prod", "accountId": PROD, "regions": ["us-east-2"], "pushTags": ["v1.*"]}], "can match the same tag"),
    ([{"name": "qa", "accountId": QA, "regions": ["us-east-2"], "pushTags": ["q a"]}], "not tag patterns"),
    ([{"name": "qa", "accountId": QA, "regions": ["us-east-2"], "pushTags": []}], "must not be empty"),
])
def test_push_tag_config_errors(envs, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment):
        run_program(config(**{"crossdeploy:services": PUSH_SERVICES, "crossdeploy:environments": envs}))


def test_push_mode_only_with_push_delivery() -> None:
    with pytest.raises(ConfigError, match=r"services\[0\].pushMode: only applies to delivery: push"):
        run_program(config(**{"crossdeploy:services": [{"name": "orders", "pushMode": "force"}]}))


def test_failed_rollouts_are_forwarded_from_every_workload_region(push_run) -> None:
    [bus] = push_run.of_type("aws:cloudwatch/eventBus:EventBus")
    assert (bus.account, bus.region) == (TOOLS, "us-east-2")
    forwards = [t for t in push_run.of_type("aws:cloudwatch/eventTarget:EventTarget")
                if t.inputs["arn"] == bus.outputs["arn"]]
    assert sorted((t.account, t.region) for t in forwards) == sorted(
        [(QA, "us-east-2"), (PROD, "us-east-2"), (PROD, "eu-west-1")])
    [bus_policy] = push_run.of_type("aws:cloudwatch/eventBusPolicy:EventBusPolicy")
    for forward in forwards:
        role = by_output(push_run, "arn", forward.inputs["roleArn"])
        assert role.account == forward.account
        assert allows(role_policy(push_run, role), "events:PutEvents", bus.outputs["arn"])
        assert allows(bus_policy.inputs["policy"], "events:PutEvents", bus.outputs["arn"],
                      principal_arn=role.outputs["arn"])
        rule = by_output(push_run, "name", forward.inputs["rule"], "aws:cloudwatch/eventRule:EventRule")
        pattern = json.loads(rule.inputs["eventPattern"])
        assert pattern["detail"] == {"eventName": ["SERVICE_DEPLOYMENT_FAILED"]}
        assert pattern["resources"] == [
            {"prefix": f"arn:aws:ecs:{forward.region}:{forward.account}:service/crossdeploy/"}]
    assert not allows(bus_policy.inputs["policy"], "events:PutEvents", bus.outputs["arn"],
                      principal_arn=f"arn:aws:iam::{QA}:role/SomethingElse")
    topic = push_run.of_type("aws:sns/topic:Topic")[0].outputs["arn"]
    to_topic = [t for t in push_run.of_type("aws:cloudwatch/eventTarget:EventTarget") if t.inputs["arn"] == topic]
    assert len(to_topic) == 1 and to_topic[0].inputs["eventBusName"] == bus.outputs["name"]


def test_forwarded_failure_pattern_matches_a_real_ecs_event() -> None:
    from components.rollout_notices import deployment_pattern

    pattern = deployment_pattern("aws", QA, "us-east-2", ["crossdeploy"])
    failed = {"source": "aws.ecs", "detail-type": "ECS Deployment State Change",
              "resources": [f"arn:aws:ecs:us-east-2:{QA}:service/crossdeploy/billing"],
              "detail": {"eventType": "ERROR", "eventName": "SERVICE_DEPLOYMENT_FAILED",
                         "deploymentId": "ecs-svc/123", "reason": "ECS deployment circuit breaker: rolling back"}}
    completed = {**failed, "detail": {**failed["detail"], "eventName": "SERVICE_DEPLOYMENT_COMPLETED"}}
    other_cluster = {**failed, "resources": [f"arn:aws:ecs:us-east-2:{QA}:service/other/billing"]}
    bodies = delivered(pattern, [failed, completed, other_cluster])
    assert [(b["resources"], b["detail"]["eventName"]) for b in bodies] == [
        (failed["resources"], "SERVICE_DEPLOYMENT_FAILED")]


def test_function_role_stays_within_iam_limit_with_many_push_services() -> None:
    from components.policies import INLINE_POLICY_LIMIT, inline_policy_size
    from components.push_deploy import (
        MAX_EXACT_REPOSITORY_ARNS,
        PushDeployArgs,
        PushService,
        PushTarget,
        function_policy,
    )

    def service(i: int) -> PushService:
        name = f"team-{i:03d}/service-with-a-long-name"
        regions = ("us-east-2", "us-west-2", "eu-west-1")
        return PushService(
            repository=name, container="app", mode="revision",
            targets=tuple(PushTarget("qa", ("qa-*",), QA, r, "crossdeploy", f"svc-{i}",
                                     f"arn:aws:iam::{QA}:role/crossdeploy/t/deploy/crossdeploy-t-deploy")
                          for r in regions),
            repository_arns=tuple(f"arn:aws:ecr:{r}:{TOOLS}:repository/{name}" for r in regions),
            deploy_document={"version": 1, "service": name, "environments": []})

    for count in (MAX_EXACT_REPOSITORY_ARNS // 3, 300):
        args = PushDeployArgs(provider=None, partition="aws", tools_account_id=TOOLS, home_region="us-east-2",
                              services=tuple(service(i) for i in range(count)), function_name="f", role_name="f",
                              role_path="/crossdeploy/t/push/", notification_topic_arn="arn:aws:sns:us-east-2:1:t")
        doc = function_policy(args, f"arn:aws:logs:us-east-2:{TOOLS}:log-group:/aws/lambda/f",
                              f"arn:aws:sqs:us-east-2:{TOOLS}:dlq")
        # The log statement's resource is an Output (log group ARN + ":*"): stand in its value.
        text = json.dumps(doc, default=lambda _: f"arn:aws:logs:us-east-2:{TOOLS}:log-group:/aws/lambda/f:*")
        assert inline_policy_size(text) < INLINE_POLICY_LIMIT / 2, (count, inline_policy_size(text))
        wanted = f"arn:aws:ecr:eu-west-1:{TOOLS}:repository/team-007/service-with-a-long-name"
        assert allows(text, "ecr:DescribeImages", wanted)
        # Exact repositories while they fit; the tools account's repositories of the used regions beyond that.
        assert allows(text, "ecr:DescribeImages", f"arn:aws:ecr:us-east-2:{TOOLS}:repository/orders") == (
            count > MAX_EXACT_REPOSITORY_ARNS // 3)
        assert not allows(text, "ecr:DescribeImages", f"arn:aws:ecr:ap-south-1:{TOOLS}:repository/orders")
        assert not allows(text, "ecr:DescribeImages", f"arn:aws:ecr:us-east-2:{QA}:repository/orders")
