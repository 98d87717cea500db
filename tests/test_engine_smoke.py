# ruff: noqa: F811 - fixtures are imported by name, and pytest passes them back as arguments
"""The deploy engine's smoke test after a rolling deployment, against moto (ECS, ELBv2, STS in the workload account
through the deploy role, as in test_deploy_engine) and a real HTTP server on 127.0.0.1 per region.

The one seam: :func:`handlers.deploy_engine.connect_address`, which turns the load balancer's DNS name into what the
check connects to. In AWS it is the name itself; here it maps the DNS names moto's load balancers got, and only
those, to 127.0.0.1. Everything before it is the engine's own (DescribeServices -> DescribeTargetGroups ->
DescribeLoadBalancers through the deploy role), and everything after it is the real check: the document's scheme
and port, the spec's path, attempts and expected statuses, over a real socket.
"""

from __future__ import annotations

import copy
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from conftest import PROD, QA, config
from test_deploy_engine import (  # noqa: F401 - fixtures
    EAST,
    REGIONS,
    TEST,
    WEST,
    FakeClock,
    World,
    _Body,
    aws_env,
    deploy,
    document,
    images,
    logs,
    make_world,
    parse_service_models_once,
)
from test_pipeline_deploy import Context, job_event, pipeline, world, zipped  # noqa: F401 - fixtures

from components.config import parse
from components.task_definition import deploy_document
from handlers import deploy_engine as engine
from handlers import pipeline_deploy as pd
from handlers import smoke_test as smoke

PATH = "/orders/health"


# --- the service behind the load balancer: a real HTTP server ---------------------------------------------------


@dataclass
class Server:
    """What answers on one region's production listener: ``status`` to every GET, each request recorded."""

    status: int = 200
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Host", "")))
                self.send_response(server.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:  # keep pytest's output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll: shutdown() waits for it (0.5 s by default, per server, per test).
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[dict[str, Server]]:
    running = {region: Server() for region in REGIONS}
    yield running
    for server in running.values():
        server.close()


def attach_load_balancers(world: World, dns: dict[str, str], account: str = TEST,
                          regions: tuple[str, ...] = REGIONS) -> dict[str, str]:
    """In each region of ``account``: a VPC, an internet-facing ALB, a target group the listener forwards to, and
    the service attached to that group (as `pulumi up` leaves them). Returns region -> the ALB's DNS name."""
    names = {}
    for region in regions:
        ec2 = world.admin[account].client("ec2", region_name=region)
        elbv2 = world.admin[account].client("elbv2", region_name=region)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{region}{zone}")[
            "Subnet"]["SubnetId"] for i, zone in enumerate("ab")]
        balancer = elbv2.create_load_balancer(Name="dev-alb", Subnets=subnets, Scheme="internet-facing")[
            "LoadBalancers"][0]
        group = elbv2.create_target_group(Name="dev-orders", Protocol="HTTP", Port=8080, VpcId=vpc,
                                          TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
        elbv2.create_listener(LoadBalancerArn=balancer["LoadBalancerArn"], Protocol="HTTP", Port=80,
                              DefaultActions=[{"Type": "forward", "TargetGroupArn": group}])
        world.ecs(account, region).update_service(cluster="crossdeploy", service="orders", loadBalancers=[
            {"targetGroupArn": group, "containerName": "orders", "containerPort": 8080}])
        names[region] = balancer["DNSName"]
        dns[balancer["DNSName"]] = "127.0.0.1"
    return names


def smoke_document(servers: dict[str, Server], protocol: str = "HTTP", **spec: Any) -> dict[str, Any]:
    """test_deploy_engine's document with each target's smokeTest on its region's server port."""
    doc = document()
    for target in doc["environments"][0]["targets"]:
        target["smokeTest"] = {"spec": {"path": PATH, "expectStatus": "200-399", "timeoutSeconds": 2, "attempts": 3,
                                        **spec},
                               "protocol": protocol, "port": servers[target["region"]].port}
    return doc


def smoke_logs(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["region"]: r for r in records if r["event"] == "smoke-test"}


# --- deploying ----------------------------------------------------------------------------------------------------


def test_a_passing_smoke_test_succeeds_through_the_load_balancer_the_service_names(world, servers, dns, capsys):
    names = attach_load_balancers(world, dns)
    capsys.readouterr()

    outcome = deploy(world, smoke_document(servers))

    assert outcome.succeeded, outcome.reason
    assert [s.phase for s in outcome.states] == [engine.SUCCEEDED] * 2
    for region in REGIONS:
        assert servers[region].requests == [(PATH, f"127.0.0.1:{servers[region].port}")]
        # Found through the deploy role in the workload account: the service's group, then that group's ALB.
        (groups,) = world.recorder.ops("DescribeTargetGroups", region=region)
        (balancers,) = world.recorder.ops("DescribeLoadBalancers", region=region)
        assert groups.account == balancers.account == TEST
        service = world.service(TEST, region)
        assert groups.params == {"TargetGroupArns": [service["loadBalancers"][0]["targetGroupArn"]]}
        assert balancers.params["LoadBalancerArns"][0].startswith(
            f"arn:aws:elasticloadbalancing:{region}:{TEST}:loadbalancer/app/dev-alb/")
    records = smoke_logs(logs(capsys))
    assert set(records) == set(REGIONS)
    for region, record in records.items():
        assert record["result"] == "passed" and record["account"] == TEST and record["service"] == "orders"
        assert record["environment"] == "test" and record["cluster"] == "crossdeploy"
        assert record["reason"] == f"GET {PATH} -> 200 (attempt 1 of 3)"
        assert record["url"] == f"http://{names[region]}:{servers[region].port}{PATH}"
        assert [a["status"] for a in record["attempts"]] == [200]


def test_a_failing_smoke_test_fails_the_target_and_restores_every_changed_one(world, servers, dns, capsys):
    attach_load_balancers(world, dns)
    servers[WEST].status = 503
    # East finishes (and passes its smoke test) first: it must be put back all the same.
    world.fake.scripts[(TEST, EAST)] = [("SUCCESSFUL",)]
    world.fake.scripts[(TEST, WEST)] = [("IN_PROGRESS", "SUCCESSFUL")]
    clock = FakeClock()
    capsys.readouterr()

    outcome = deploy(world, smoke_document(servers), clock=clock)

    assert not outcome.succeeded
    assert outcome.reason == (
        f"1 of 2 target(s) failed: {TEST}/{WEST} crossdeploy/orders: smoke test failed: GET {PATH} -> 503, "
        "expected 200-399 (3 attempts). Restored 2 changed target(s) to their previous revision")
    assert [s.phase for s in outcome.states] == [engine.RESTORED, engine.RESTORED]
    assert [s.restore_mode for s in outcome.states] == ["update", "update"]  # both deployments had finished
    for region in REGIONS:
        updates = [c.params["taskDefinition"] for c in world.recorder.ops("UpdateService", region=region)]
        assert len(updates) == 2 and updates[-1] == world.originals[(TEST, region)]
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]
    assert not world.recorder.ops("StopServiceDeployment")
    assert len(servers[WEST].requests) == 3 and len(servers[EAST].requests) == 1
    assert clock.now - 1000 >= 2 * smoke.ATTEMPT_DELAY_SECONDS  # the attempts were paced on the engine's clock
    records = smoke_logs(logs(capsys))
    assert records[EAST]["result"] == "passed"
    assert records[WEST]["result"] == "failed" and records[WEST]["reason"] == outcome.states[1].reason
    assert [a["status"] for a in records[WEST]["attempts"]] == [503, 503, 503]


def test_a_restore_is_not_smoke_tested(world, servers, dns):
    attach_load_balancers(world, dns)
    world.fake.scripts[(TEST, WEST)] = [("ROLLBACK_SUCCESSFUL",)]
    world.fake.scripts[(TEST, EAST)] = [("SUCCESSFUL",), ("IN_PROGRESS", "SUCCESSFUL")]  # deployment, restore

    outcome = deploy(world, smoke_document(servers))

    assert not outcome.succeeded and outcome.states[0].phase == engine.RESTORED
    assert len(servers[EAST].requests) == 1 and not servers[WEST].requests  # east's own deployment only


def test_https_is_what_the_document_says(world, servers, dns):
    attach_load_balancers(world, dns)

    outcome = deploy(world, smoke_document(servers, protocol="HTTPS", attempts=1))

    # The servers speak plain HTTP: a TLS handshake with them fails, so the check did ask for TLS.
    assert not outcome.succeeded
    assert f"{TEST}/{EAST} crossdeploy/orders: smoke test failed: GET {PATH} -> TLS failed" in outcome.reason
    assert all(s.phase == engine.RESTORED for s in outcome.states)


def _elbv2_error(request: Any, code: str, message: str) -> AWSResponse:
    body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>injected</RequestId></ErrorResponse>").encode()
    return AWSResponse(request.url, 403, {"Content-Type": "text/xml"}, _Body(body))


def test_a_load_balancer_lookup_the_role_may_not_make_fails_and_restores(world, servers, dns):
    attach_load_balancers(world, dns)

    def deny_west(request: Any, **_: Any) -> AWSResponse | None:
        if f".{WEST}." in request.url:
            return _elbv2_error(request, "AccessDenied", "not authorized to perform: "
                                                         "elasticloadbalancing:DescribeTargetGroups")
        return None

    world.recorder.inject("before-send.elastic-load-balancing-v2.DescribeTargetGroups", deny_west)

    outcome = deploy(world, smoke_document(servers))

    assert not outcome.succeeded
    assert outcome.states[1].reason == (
        f"{TEST}/{WEST} crossdeploy/orders: smoke test failed: cannot find the load balancer: AccessDenied: not "
        "authorized to perform: elasticloadbalancing:DescribeTargetGroups")
    assert not servers[WEST].requests
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]


def test_a_service_without_a_load_balancer_fails_its_smoke_test(world, servers, dns):
    attach_load_balancers(world, dns, regions=(EAST,))

    outcome = deploy(world, smoke_document(servers))

    assert not outcome.succeeded
    assert outcome.states[1].reason == (f"{TEST}/{WEST} crossdeploy/orders: smoke test failed: cannot find the load "
                                        "balancer: the service has no load balancer target group")
    assert not world.recorder.ops("DescribeTargetGroups", region=WEST)
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]


def test_an_unchanged_target_is_not_smoke_tested(world, servers, dns, capsys):
    attach_load_balancers(world, dns)
    assert deploy(world, smoke_document(servers)).succeeded
    servers[EAST].status = servers[WEST].status = 503  # would fail now: proves nothing asks
    world.recorder.reset()
    capsys.readouterr()

    again = deploy(world, smoke_document(servers), deployment_id="job-retry")

    assert again.succeeded, again.reason
    assert [s.phase for s in again.states] == [engine.UNCHANGED] * 2
    assert [len(servers[r].requests) for r in REGIONS] == [1, 1]  # the first deployment's checks only
    assert not world.recorder.ops("DescribeTargetGroups") and not smoke_logs(logs(capsys))


def test_targets_without_a_smoke_test_are_not_looked_up(world, servers, dns):
    attach_load_balancers(world, dns)
    doc = smoke_document(servers)
    doc["environments"][0]["targets"][0]["smokeTest"] = None
    del doc["environments"][0]["targets"][1]["smokeTest"]

    assert deploy(world, doc).succeeded
    assert not world.recorder.ops("DescribeTargetGroups") and not any(s.requests for s in servers.values())


# --- the document -------------------------------------------------------------------------------------------------


def test_a_smoke_test_is_parsed_onto_the_target():
    doc = document()
    doc["environments"][0]["targets"][0]["smokeTest"] = {
        "spec": {"path": PATH, "expectStatus": "200", "timeoutSeconds": 5, "attempts": 2, "host": "orders.example.com"},
        "protocol": "HTTPS", "port": 443}
    doc["environments"][0]["targets"][1]["smokeTest"] = None

    east, west = engine.targets_for(engine.parse_document(doc), "test", {r: f"{TEST}.dkr.ecr.{r}.amazonaws.com/"
                                                                        f"orders@sha256:{'b' * 64}" for r in REGIONS})

    assert east.smoke_test == engine.SmokeTest(smoke.SmokeSpec(PATH, "200", 5, 2, "orders.example.com"), "HTTPS",
                                               443)
    assert east.smoke_test.scheme == "https" and west.smoke_test is None


def test_a_bad_smoke_test_is_refused_with_its_key_paths():
    doc = document(regions=(EAST, WEST, "eu-west-1", "eu-central-1"))
    t0, t1, t2, t3 = doc["environments"][0]["targets"]
    t0["smokeTest"] = {"spec": {"path": "health", "attempts": 0, "colour": 1}, "protocol": "FTP", "port": 0}
    t1["smokeTest"] = {"spec": {"path": PATH}, "protocol": "HTTP"}
    t2["smokeTest"] = {"spec": {"path": PATH}, "protocol": "HTTP", "port": True, "host": "x"}
    t3["smokeTest"] = "GET /"
    where = "$.environments[0].targets"

    with pytest.raises(engine.EngineInputError) as caught:
        engine.parse_document(doc)

    problems = caught.value.problems
    for line in [
        f"{where}[0].smokeTest.port: expected an integer from 1 to 65535, got 0",
        f"{where}[0].smokeTest.protocol: expected one of ['HTTP', 'HTTPS'], got 'FTP'",
        f"{where}[0].smokeTest.spec: unknown key 'colour'",
        f"{where}[0].smokeTest.spec.attempts: expected an integer from 1 to 10, got 0",
        f"{where}[1].smokeTest: missing key 'port'",
        f"{where}[2].smokeTest: unknown key 'host'",
        f"{where}[2].smokeTest.port: expected an integer from 1 to 65535, got True",
        f"{where}[3].smokeTest: expected an object, got 'GET /'",
    ]:
        assert line in problems, (line, problems)
    assert any(p.startswith(f"{where}[0].smokeTest.spec.path: expected a request path") for p in problems)
    assert len(problems) == 9, problems


def test_the_rendered_document_carries_smoke_tests_the_engine_reads():
    """The contract with the renderer (components.task_definition): rolling targets carry the spec and the
    production listener (HTTPS on 443 where the region has a certificate), native ones none."""
    cfg = config(**{"crossdeploy:environments": [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2", "eu-west-1"],
         "certificateArns": {"us-east-2": f"arn:aws:acm:us-east-2:{QA}:certificate/abc"}},
        {"name": "prod", "accountId": PROD, "regions": ["us-east-2"], "strategy": "canary"}],
        "crossdeploy:services": [{"name": "orders", "smokeTest": {"path": PATH, "attempts": 2}}]})
    stack = parse({k.split(":", 1)[1]: v for k, v in cfg.items() if k.startswith("crossdeploy:")},
                  project="crossdeploy", stack="t", aws_region="us-east-2")

    parsed = engine.parse_document(json.loads(json.dumps(deploy_document(stack, stack.services[0]))))

    spec = smoke.SmokeSpec(PATH, attempts=2)
    assert [[t.smoke_test for t in env.targets] for env in parsed.environments] == [
        [engine.SmokeTest(spec, "HTTPS", 443), engine.SmokeTest(spec, "HTTP", 80)], [None]]


@pytest.mark.parametrize("strategy", ["blue-green", "canary", "linear"])
def test_native_strategies_take_no_engine_smoke_test(strategy):
    doc = document(strategy=strategy)
    doc["environments"][0]["targets"][1]["smokeTest"] = {"spec": {"path": PATH}, "protocol": "HTTP", "port": 80}
    with pytest.raises(engine.EngineInputError) as caught:
        engine.parse_document(doc)
    assert caught.value.problems == [
        f"$.environments[0].targets[1].smokeTest: only rolling environments are smoke-tested by the engine; "
        f"{strategy} runs it as an ECS lifecycle hook"]


def test_smoke_test_seconds_counts_only_deploying_targets_and_rounds_of_concurrency():
    doc = document()
    for target, attempts in zip(doc["environments"][0]["targets"], (2, 3), strict=True):
        target["smokeTest"] = {"spec": {"path": PATH, "timeoutSeconds": 10, "attempts": attempts},
                               "protocol": "HTTP", "port": 80}
    targets = engine.targets_for(engine.parse_document(doc), "test", {
        r: f"{TEST}.dkr.ecr.{r}.amazonaws.com/orders@sha256:{'b' * 64}" for r in REGIONS})
    deploying, done = engine.TargetState(engine.DEPLOYING), engine.TargetState(engine.SUCCEEDED)
    assert engine.smoke_test_seconds(targets, [deploying, deploying]) == 3 * 10 + 2 * 5
    assert engine.smoke_test_seconds(targets, [deploying, done]) == 2 * 10 + 1 * 5
    assert engine.smoke_test_seconds(targets, [done, engine.TargetState(engine.RESTORING)]) == 0
    assert engine.smoke_test_seconds(targets, [deploying, deploying], max_concurrency=1) == 2 * 40


# --- the pipeline action ------------------------------------------------------------------------------------------


def test_a_pipeline_deployment_that_fails_its_smoke_test_restores_and_fails_the_job(world, pipeline, servers, dns):
    attach_load_balancers(world, dns)
    servers[EAST].status = 404
    pipeline.put("DeployConfig", zipped({"deploy.json": json.dumps(smoke_document(servers, attempts=2))}))
    world.fake.scripts[(TEST, WEST)] = [("SUCCESSFUL",)]
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS", "SUCCESSFUL")]
    pipeline.expect_progress()
    pipeline.expect_failure(
        f"1 of 2 target(s) failed: {TEST}/{EAST} crossdeploy/orders: smoke test failed: GET {PATH} -> 404, expected "
        "200-399 (2 attempts). Restored 2 changed target(s) to their previous revision")
    lambda_time = Context(remaining_ms=15 * 60 * 1000)

    assert pd.handler(job_event(), lambda_time)["status"] == "continue"
    assert not any(s.requests for s in servers.values())  # the first invocation only starts
    assert pd.handler(job_event(pipeline.last_token), lambda_time)["status"] == "failed"

    pipeline.stubber.assert_no_pending_responses()
    assert len(servers[EAST].requests) == 2 and len(servers[WEST].requests) == 1
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]


def test_an_invocation_leaves_room_for_the_slowest_smoke_test(world, pipeline, servers, dns):
    attach_load_balancers(world, dns)
    doc = smoke_document(servers, timeoutSeconds=10, attempts=3)  # at worst 3 x 10 s + 2 pauses of 5 s = 40 s
    pipeline.put("DeployConfig", zipped({"deploy.json": json.dumps(doc)}))
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS",) * 1000]
    world.fake.scripts[(TEST, WEST)] = [("IN_PROGRESS",) * 1000]
    pipeline.expect_progress()
    pipeline.expect_progress()
    pd.handler(job_event(), Context(remaining_ms=15 * 60 * 1000))
    began = pipeline.clock.now

    pd.handler(job_event(pipeline.last_token), Context(remaining_ms=15 * 60 * 1000))

    # Without smoke tests it polls until ~5 s before the 600 s cap; with them it stops 40 s earlier, so a check
    # begun by its last poll still ends within the cap.
    waited = pipeline.clock.now - began
    assert pd.INVOCATION_CAP_SECONDS - 40 - 10 <= waited <= pd.INVOCATION_CAP_SECONDS - 40
    pipeline.stubber.assert_no_pending_responses()


def test_a_smoke_test_that_cannot_fit_an_invocation_is_refused_before_anything_starts(world, pipeline, servers,
                                                                                     dns):
    attach_load_balancers(world, dns)
    doc = smoke_document(servers, timeoutSeconds=10, attempts=3)
    pipeline.put("DeployConfig", zipped({"deploy.json": json.dumps(doc)}))
    world.recorder.reset()
    pipeline.expect_failure("the smoke tests may take 40 s, more than the 10 s an invocation of this function can "
                            "spend (fewer attempts or a shorter timeoutSeconds)")

    assert pd.handler(job_event(), Context(remaining_ms=70_000))["status"] == "failed"

    pipeline.stubber.assert_no_pending_responses()
    assert world.recorder.calls == []


def test_a_continuation_short_of_time_for_a_smoke_test_polls_nothing(world, pipeline, servers, dns):
    attach_load_balancers(world, dns)
    doc = smoke_document(servers, timeoutSeconds=10, attempts=3)
    pipeline.put("DeployConfig", zipped({"deploy.json": json.dumps(doc)}))
    world.fake.scripts[(TEST, EAST)] = [("SUCCESSFUL",)]
    pipeline.expect_progress()
    pipeline.expect_progress()
    pd.handler(job_event(), Context(remaining_ms=15 * 60 * 1000))
    world.recorder.reset()
    token = pipeline.last_token

    result = pd.handler(job_event(token), Context(remaining_ms=90_000))  # 30 s usable, a check may take 40

    assert result["status"] == "continue"
    assert not world.recorder.ops("DescribeServiceDeployments") and not any(s.requests for s in servers.values())
    decoded, _ = pd.decode_token(pipeline.last_token, "test", _targets(doc), 900)
    assert [s.phase for s in decoded] == [engine.DEPLOYING] * 2


def _targets(doc: dict[str, Any]) -> list[engine.Target]:
    return engine.targets_for(engine.parse_document(copy.deepcopy(doc)), "test", images())


def test_the_summary_of_a_pipeline_job_is_unchanged_by_a_passing_smoke_test(world, pipeline, servers, dns):
    attach_load_balancers(world, dns)
    pipeline.put("DeployConfig", zipped({"deploy.json": json.dumps(smoke_document(servers))}))
    world.fake.scripts[(TEST, EAST)] = [("SUCCESSFUL",)]
    world.fake.scripts[(TEST, WEST)] = [("SUCCESSFUL",)]
    pipeline.expect_progress()
    pipeline.expect_success("2 target(s) deployed: 2 updated, 0 already on the revision")
    pd.handler(job_event(), Context(remaining_ms=15 * 60 * 1000))
    assert pd.handler(job_event(pipeline.last_token), Context(remaining_ms=15 * 60 * 1000))["status"] == "succeeded"
    pipeline.stubber.assert_no_pending_responses()
    assert [len(servers[r].requests) for r in REGIONS] == [1, 1]
