# ruff: noqa: F811 - fixtures are imported by name, and pytest passes them back as arguments
"""The smoke test after a rolling deployment, through the push and release triggers: moto (ECS, ELBv2, STS into the
workload accounts through their deploy roles, as in test_push_deploy and test_release_handlers) and a real HTTP
server on 127.0.0.1 behind each load balancer.

The one seam is the engine's (:func:`handlers.deploy_engine.connect_address`, as in test_engine_smoke): the DNS
names moto gave the load balancers, and only those, connect to 127.0.0.1. Everything else is the triggers' own: the
document's ``smokeTest`` carried onto the engine's targets, the lookup through the deploy role, the check, the
restore or the release's rollback, and the time budgets around them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import test_release_handlers as rel
from test_engine_smoke import Server
from test_push_deploy import (  # noqa: F401 - fixtures
    EVENT_ID,
    OTHER,
    OTHER_DIGEST,
    QA,
    REGIONS,
    FakeTime,
    aws_env,
    logs,
    make_event,
    make_world,
    parse_service_models_once,
    running_tasks,
    sample_event,
    targets_file,
    targets_map,
    world,
)
from test_release_handlers import aws  # noqa: F401 - fixture

from handlers import deploy_engine as engine
from handlers import push_deploy as pd
from handlers import release
from handlers import smoke_test as smoke

PATH = "/orders/health"


@pytest.fixture
def servers() -> Any:
    running: dict[str, Server] = {}

    def start(key: str) -> Server:
        running[key] = Server()
        return running[key]

    yield start
    for server in running.values():
        server.close()


def attach_load_balancer(admin: Any, region: str, cluster: str, service: str, container: str,
                         dns: dict[str, str]) -> str:
    """What `pulumi up` leaves in the workload account: an internet-facing ALB whose listener forwards to a target
    group the service is attached to. Returns the ALB's DNS name (mapped to 127.0.0.1)."""
    ec2, elbv2 = admin.client("ec2", region_name=region), admin.client("elbv2", region_name=region)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{region}{zone}")[
        "Subnet"]["SubnetId"] for i, zone in enumerate("ab")]
    balancer = elbv2.create_load_balancer(Name=f"{service}-alb", Subnets=subnets, Scheme="internet-facing")[
        "LoadBalancers"][0]
    group = elbv2.create_target_group(Name=f"{service}-tg", Protocol="HTTP", Port=8080, VpcId=vpc,
                                      TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    elbv2.create_listener(LoadBalancerArn=balancer["LoadBalancerArn"], Protocol="HTTP", Port=80,
                          DefaultActions=[{"Type": "forward", "TargetGroupArn": group}])
    admin.client("ecs", region_name=region).update_service(cluster=cluster, service=service, loadBalancers=[
        {"targetGroupArn": group, "containerName": container, "containerPort": 8080}])
    dns[balancer["DNSName"]] = "127.0.0.1"
    return str(balancer["DNSName"])


def smoke_block(port: int, **spec: Any) -> dict[str, Any]:
    """A document target's ``smokeTest`` (as components.task_definition renders it for a rolling environment)."""
    return {"spec": {"path": PATH, "expectStatus": "200-399", "timeoutSeconds": 2, "attempts": 3, **spec},
            "protocol": "HTTP", "port": port}


def smoke_logs(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["region"]: r for r in records if r["event"] == "smoke-test"}


# --- push deploys ----------------------------------------------------------------------------------------------------


class Context:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def loaded() -> pd.Targets:
    """The map the ``targets_file`` fixture last wrote (what the handler reads)."""
    return pd.load_targets(os.environ[pd.TARGETS_FILE_ENV])


def push_world(world: Any, targets_file: Any, servers: Any, dns: dict[str, str], **spec: Any) -> dict[str, Server]:
    """The qa environment of the push map with a smoke test per region, each region's service behind its own load
    balancer and HTTP server."""
    running = {region: servers(region) for region in REGIONS}
    data = targets_map()
    for target in data["repositories"]["orders"]["deployDocument"]["environments"][0]["targets"]:
        assert target["accountId"] == QA
        target["smokeTest"] = smoke_block(running[target["region"]].port, **spec)
        attach_load_balancer(world.admin[QA], target["region"], "crossdeploy", "orders", "orders", dns)
    targets_file(data)
    world.recorder.reset()
    return running


def test_a_push_whose_smoke_test_passes_deploys(world, make_event, targets_file, servers, dns, capsys):
    running = push_world(world, targets_file, servers, dns)
    capsys.readouterr()

    summary = pd.handler(make_event(digest=world.digest), Context(900_000))

    assert summary["status"] == "succeeded" and summary["updated"] == 2, summary["reason"]
    assert summary["smokeTestSeconds"] == smoke.worst_case_seconds(smoke.SmokeSpec(PATH, "200-399", 2, 3)) == 16
    for region in REGIONS:
        assert running[region].requests == [(PATH, f"127.0.0.1:{running[region].port}")]
        # Found through the deploy role in the workload account, after the service's own deployment.
        (groups,) = world.recorder.ops("DescribeTargetGroups", region=region)
        assert groups.account == QA
        assert world.service(QA, region)["taskDefinition"].endswith("orders:2")
    records = smoke_logs(logs(capsys))
    assert {r: records[r]["result"] for r in REGIONS} == {r: "passed" for r in REGIONS}


def test_a_push_whose_smoke_test_fails_restores_every_region(world, make_event, targets_file, servers, dns):
    running = push_world(world, targets_file, servers, dns)
    running[OTHER].status = 503
    before = world.snapshot()
    fake = FakeTime()

    with pytest.raises(pd.PushDeployFailed) as caught:
        pd.handle_push(make_event(digest=world.digest), loaded(), time_remaining_seconds=900.0, sleep=fake.sleep,
                       clock=fake.clock)

    message = str(caught.value)
    assert message.startswith(f"push orders:qa-1.2.3 ({world.digest}, event {EVENT_ID}): 1 of 2 target(s) failed: "
                              f"{QA}/{OTHER} crossdeploy/orders: smoke test failed: GET {PATH} -> 503, expected "
                              "200-399 (3 attempts). Restored 2 changed target(s) to their previous revision")
    # Both regions run what they ran before: the one that passed its check too (all or nothing).
    assert {k: v[0] for k, v in world.snapshot().items()} == {k: v[0] for k, v in before.items()}
    for region in REGIONS:
        updates = [c.params["taskDefinition"] for c in world.recorder.ops("UpdateService", region=region)]
        assert updates == [f"arn:aws:ecs:{region}:{QA}:task-definition/orders:2", before[(QA, region)][0]]
    assert len(running[OTHER].requests) == 3
    assert sum(fake.slept) == 2 * smoke.ATTEMPT_DELAY_SECONDS  # its attempts, paced on the handler's clock
    summary = caught.value.summary
    assert (summary["status"], summary["failed"], summary["restored"]) == ("failed", 1, 2)


def test_a_push_whose_smoke_test_could_never_fit_is_refused_before_any_aws_call(world, make_event, targets_file,
                                                                                 servers, dns, capsys):
    push_world(world, targets_file, servers, dns, timeoutSeconds=10, attempts=5)  # at worst 5 x 10 + 4 x 5 = 70 s
    before = world.snapshot()
    world.recorder.reset()
    capsys.readouterr()

    with pytest.raises(pd.PushDeployFailed) as caught:
        pd.handler(make_event(digest=world.digest), Context(100_000))  # 100 s: 40 s once the reserve is kept

    assert str(caught.value).endswith(
        "the smoke tests may take 70 s, and this invocation has 40 s for the deployment and its checks: nothing was "
        "deployed (give smokeTest fewer attempts or a shorter timeoutSeconds)")
    assert world.recorder.calls == [] and world.recorder.assumed == []
    assert world.snapshot() == before
    (summary,) = [r for r in logs(capsys) if r["event"] == "summary"]
    assert (summary["status"], summary["smokeTestSeconds"], summary["targets"]) == ("failed", 70, [])


def test_a_replica_that_leaves_no_time_for_the_smoke_test_is_refused_before_anything_is_registered(
        world, make_event, targets_file, servers, dns, monkeypatch):
    push_world(world, targets_file, servers, dns, timeoutSeconds=10, attempts=5)  # 70 s
    fake, budgets = FakeTime(), []

    def slow_replica(*args: Any, **kwargs: Any) -> float:
        with fake.lock:  # every region waits at once: the replicas arrive as their (common) wait runs out
            budgets.append(args[5])
            fake.now = max(fake.now, 1000.0 + args[5])
        return args[5]

    monkeypatch.setattr(pd, "wait_for_replication", slow_replica)
    before = world.snapshot()

    with pytest.raises(pd.PushDeployFailed) as caught:
        pd.handle_push(make_event(digest=world.digest), loaded(),
                       time_remaining_seconds=300.0, sleep=fake.sleep, clock=fake.clock)

    # The wait left room for the ECS calls (60 s) and the checks (70 s): 300 - 130 = 170 s. Then 130 s are left,
    # 60 of them kept for restoring and reporting: the checks could not end in time, so nothing starts.
    assert budgets == [170.0, 170.0]
    assert str(caught.value).endswith("no time left to deploy: 130 s of the invocation remain after the replication "
                                      "wait, 60 s are kept for restoring and reporting and the smoke tests may take "
                                      "70 s; nothing was deployed")
    assert not world.recorder.ops("RegisterTaskDefinition") and not world.recorder.ops("UpdateService")
    assert world.snapshot() == before


@pytest.mark.parametrize("restore", ["settles", "stuck"])
def test_a_push_deployment_leaves_room_for_its_smoke_tests_and_never_starts_one_that_would_not_fit(
        world, make_event, targets_file, servers, dns, monkeypatch, capsys, restore):
    running = push_world(world, targets_file, servers, dns)  # 16 s at worst
    monkeypatch.setattr(pd, "ENGINE_POLL_SECONDS", 10.0)
    # ECS completes both rollouts at the 23rd status read, 230 s in: just after the deployment's timeout.
    for region in REGIONS:
        world.rollouts.script(QA, region, "orders", *(["IN_PROGRESS"] * 22), "SUCCESSFUL")
        if restore == "stuck":  # the deployment back to the previous revision never ends
            world.rollouts.script(QA, region, "orders", "IN_PROGRESS")
    fake = FakeTime()
    capsys.readouterr()

    with pytest.raises(pd.PushDeployFailed) as caught:
        pd.handle_push(make_event(digest=world.digest), loaded(),
                       time_remaining_seconds=300.0, sleep=fake.sleep, clock=fake.clock)

    # 300 s: 60 kept for restoring and reporting, 16 for the checks, so the deployment may take 224 s. At 230 s a
    # status read could find a rollout complete and start a 16 s check ending after 240 s: the targets fail as
    # timed out instead, unchecked, and go back.
    start = next(r for r in logs(capsys) if r["event"] == "deployment-start")
    assert start["timeoutSeconds"] == 224.0
    assert f"{QA}/{OTHER} crossdeploy/orders: timed out after 224 s (IN_PROGRESS); the invocation has no time left " \
           "for a smoke test (16 s)" in str(caught.value)
    assert not any(server.requests for server in running.values())
    for region in REGIONS:  # finished by then, so put back with UpdateService(previous)
        assert world.service(QA, region)["taskDefinition"].endswith("orders:1")
    if restore == "settles":
        assert caught.value.summary["restored"] == 2
    else:  # followed while the invocation lasts, then reported rather than cut off by Lambda
        assert caught.value.summary["restored"] == 0
        assert str(caught.value).endswith("Restored 0 changed target(s) to their previous revision; 2 NOT restored: "
                                          "restore did not finish; restore did not finish")
    assert fake.now - 1000 <= 300 - pd.REPORT_SECONDS


def test_force_mode_runs_no_smoke_test(make_world, make_event, targets_file, servers, dns, monkeypatch):
    world = make_world(force_services=True)
    data = targets_map()
    data["repositories"]["orders"]["deployDocument"]["environments"][0]["targets"][0]["smokeTest"] = smoke_block(80)
    targets_file(data)
    hook = running_tasks([OTHER_DIGEST, OTHER_DIGEST])
    world.recorder.first_hooks += [("before-call.ecs.ListTasks", hook), ("before-call.ecs.DescribeTasks", hook)]

    summary = pd.handler(make_event(repository="legacy", digest=world.digest), Context(100_000))

    assert summary["status"] == "succeeded" and summary["pushMode"] == "force"
    assert not world.recorder.ops("DescribeTargetGroups") and not world.recorder.ops("DescribeLoadBalancers")


# --- releases --------------------------------------------------------------------------------------------------------


def release_world(aws: Any, servers: Any, dns: dict[str, str], status: int = 200, **spec: Any) -> tuple[Any, Server]:
    """One rolling service in one account and region, behind a load balancer, its document with a smoke test."""
    world = rel.small_world(aws)
    (entry,) = world.services
    server = servers("release")
    server.status = status
    (target,) = world.documents[entry["service"]]["environments"][0]["targets"]
    target["smokeTest"] = smoke_block(server.port, **spec)
    attach_load_balancer(world.admin(entry["accountId"]), entry["region"], rel.CLUSTER, entry["service"], "app", dns)
    return world, server


def test_a_release_smoke_tests_its_rolling_service_after_the_rollout(aws, servers, dns):
    world, server = release_world(aws, servers, dns)
    before = world.current_task_definitions()

    execution = rel.run_release(world.manifest())

    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    assert server.requests == [(PATH, f"127.0.0.1:{server.port}")]
    (entry,) = world.services
    assert world.current_task_definitions()[entry["name"]] != before[entry["name"]]


def test_a_failed_smoke_test_fails_the_target_and_rolls_the_release_back(aws, servers, dns, capsys):
    world, server = release_world(aws, servers, dns, status=503)
    (entry,) = world.services
    before = world.current_task_definitions()
    snapshot = before[entry["name"]]

    execution = rel.run_release(world.manifest())

    assert (execution.status, execution.error) == ("FAILED", "ReleaseRolledBack"), execution.cause
    assert execution.visits["ServiceRolloutFailed"] == 1 and execution.visits["RollBackService"] == 1
    assert len(server.requests) == 3
    # ECS received the rollout, then the rollback to the snapshot prepare took.
    assert [td for _, td in aws.rollouts.updates][-1] == snapshot
    assert len(aws.rollouts.updates) == 2 and aws.rollouts.updates[0][1] != snapshot
    assert world.current_task_definitions() == before
    [mail] = world.notifications()
    assert mail["Subject"] == "crossdeploy release release-0001: ROLLED_BACK"
    assert (f"rolled back: ServiceRolloutFailed: {entry['name']} ({entry['accountId']} {entry['region']} "
            f"{rel.CLUSTER}/{entry['service']}): {entry['accountId']}/{entry['region']} {rel.CLUSTER}/"
            f"{entry['service']}: smoke test failed: GET {PATH} -> 503, expected 200-399 (3 attempts)") \
        in mail["Message"]
    records = [r for r in rel._logs(capsys.readouterr().out) if r.get("event") == "smoke-test"]
    assert [r["result"] for r in records] == ["failed"]


def test_check_service_returns_failed_for_a_failed_smoke_test(aws, servers, dns):
    world, server = release_world(aws, servers, dns, status=404, attempts=1)
    prepared, _, common = rel._prepared(world, "smoke-1")
    (item,) = prepared["services"]
    deployed = release.deploy_service({"item": item, **common})

    checked = rel._check(release.check_service, {"item": item, **common, "deploy": deployed})

    assert checked["status"] == "FAILED"
    assert checked["reason"].endswith(f"smoke test failed: GET {PATH} -> 404, expected 200-399 (1 attempt)")
    assert len(server.requests) == 1
    # The rollback step puts the service back on its snapshot (UpdateService(snapshot)), and it settles.
    rolled = release.rollback_target({"item": item, "kind": "service", **common})
    assert (rolled["changed"], rolled["status"]) == (True, "IN_PROGRESS")
    assert aws.rollouts.updates[-1][1] == item["snapshot"]
    settled = rel._check(release.check_rollback, {"item": item, **common, "rollback": rolled})
    assert settled["status"] == "STEADY" and len(server.requests) == 1  # a restore is not smoke-tested


class LambdaContext:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds * 1000)


def _check_in(fn: Any, event: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A check handler on virtual time, in a Lambda with ``seconds`` left."""
    now = [0.0]

    def sleep(wait: float) -> None:
        now[0] += wait

    return fn({"now": event["startedAt"], **event}, LambdaContext(seconds), sleep=sleep, clock=lambda: now[0])


def test_a_check_step_too_short_for_the_smoke_test_fails_the_target_naming_the_timeout_it_needs(aws, servers, dns):
    world, server = release_world(aws, servers, dns)  # 16 s at worst, and 15 s to find the load balancer
    prepared, _, common = rel._prepared(world, "smoke-2")
    (item,) = prepared["services"]
    deployed = release.deploy_service({"item": item, **common})

    checked = _check_in(release.check_service, {"item": item, **common, "deploy": deployed}, 60)  # 30 s usable

    assert checked["status"] == "FAILED"
    assert checked["reason"].endswith("the smoke test may take 16 s (and 15 s to find the load balancer), more than "
                                      "the 30 s this check step can spend: nothing was checked; its Lambda needs a "
                                      "timeout of at least 61 s")
    assert not server.requests
    # With that timeout the same look fits.
    assert _check_in(release.check_service, {"item": item, **common, "deploy": deployed}, 61)["status"] == "STEADY"
    assert len(server.requests) == 1


def test_a_check_step_begins_no_look_whose_smoke_test_could_outlast_it(aws, servers, dns, capsys):
    world, server = release_world(aws, servers, dns)
    aws.rollouts.polls = 50  # ECS takes a while
    prepared, _, common = rel._prepared(world, "smoke-3")
    (item,) = prepared["services"]
    deployed = release.deploy_service({"item": item, **common})
    capsys.readouterr()

    # 100 s left: 70 usable. A look may need 16 + 15 s; looks every 15 s: at 0, 15 and 30 s (ending by 61 s at
    # worst); one at 45 s could end at 76 s, so the step hands back to the state machine instead.
    checked = _check_in(release.check_service, {"item": item, **common, "deploy": deployed, "pollSeconds": 15}, 100)

    assert checked["status"] == "IN_PROGRESS"
    (line,) = [r for r in rel._logs(capsys.readouterr().out) if r.get("event") == "release.service.checked"]
    assert line["checks"] == 3
    assert not server.requests


@pytest.mark.parametrize(("reason", "status"), [
    ("1/r c/s: smoke test failed: GET / -> timed out after 10 s (3 attempts)", "FAILED"),
    ("1/r c/s: timed out after 900 s (IN_PROGRESS)", "TIMED_OUT"),
    ("1/r c/s: ECS rolled back the deployment (ROLLBACK_SUCCESSFUL)", "FAILED"),
])
def test_a_smoke_test_whose_attempts_timed_out_is_a_failure_not_a_timeout(reason, status):
    assert release.engine_status(engine.TargetState(engine.FAILED, reason=reason)) == (status, reason)
    restore = engine.TargetState(engine.RESTORE_FAILED, restore_reason="1/r c/s: restore timed out after 60 s (x)")
    assert release.engine_status(restore)[0] == "TIMED_OUT"


def test_the_release_check_target_carries_the_documents_smoke_test(aws, servers, dns):
    world, server = release_world(aws, servers, dns)
    prepared, _, _ = rel._prepared(world, "smoke-4")
    (item,) = prepared["services"]

    target = release._rendered_target(item)

    assert target.smoke_test == engine.SmokeTest(smoke.SmokeSpec(PATH, "200-399", 2, 3), "HTTP", server.port)
    assert release._engine_target(item).smoke_test is None  # what a restore follows: never checked
    assert json.dumps(prepared).count("smokeTest") == 0  # the item carries the document's version, not its content
