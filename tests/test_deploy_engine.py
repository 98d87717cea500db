"""The deploy engine against moto: ECS clusters and services in two workload accounts x two regions, reached through
deploy roles assumed in the tools account (moto's default account), exactly as the engine reaches them in AWS.

moto has no ECS service deployments (DescribeServiceDeployments, ListServiceDeployments, StopServiceDeployment) and
its UpdateService does not return ``currentServiceDeployment``: :class:`FakeRollouts` answers those on the
client's own event system (``before-call`` for the three operations, ``after-call`` to add the field), validating
every answer against botocore's output model, and plays ECS's rollout from a per-region script. Everything else is
real moto. Every API call is recorded as the engine made it (``before-parameter-build``), so tests assert on the
inputs AWS received.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import boto3
import botocore.loaders
import botocore.retries.standard
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.validate import ParamValidator
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from handlers import deploy_engine as engine
from handlers.ecs_common import assumed_session

TOOLS = "123456789012"  # moto's default account plays the tools account
TEST, PROD = "444455556666", "777788889999"
EAST, WEST = "us-east-2", "us-west-2"
REGIONS = (EAST, WEST)
DIGEST = "sha256:" + "a" * 64
NEW_DIGEST = "sha256:" + "b" * 64
DEPLOYMENT = "job-5f1c2d9e-0000-4000-8000-000000000001"


def role_arn(account: str, env: str = "dev") -> str:
    return f"arn:aws:iam::{account}:role/crossdeploy/{env}/deploy/crossdeploy-{env}-deploy"


def image(region: str, digest: str = NEW_DIGEST) -> str:
    return f"{TOOLS}.dkr.ecr.{region}.amazonaws.com/orders@{digest}"


def rendered_task_definition(account: str, region: str, mode: str = "live") -> dict[str, Any]:
    """What the renderer writes into the deploy document (API camelCase, image a placeholder)."""
    return {
        "family": "orders",
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": "512",
        "memory": "1024",
        "executionRoleArn": f"arn:aws:iam::{account}:role/crossdeploy/dev/workload/dev-orders-execution",
        "taskRoleArn": f"arn:aws:iam::{account}:role/crossdeploy/dev/workload/dev-orders-task",
        "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
        "containerDefinitions": [
            {"name": "orders", "image": "placeholder", "essential": True,
             "portMappings": [{"containerPort": 8080, "protocol": "tcp"}],
             "environment": [{"name": "MODE", "value": mode}],
             "secrets": [{"name": "DB", "valueFrom": f"arn:aws:secretsmanager:{region}:{account}:secret:db"}],
             "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/orders",
                                                                       "awslogs-region": region}}},
            {"name": "envoy", "image": "public.ecr.aws/envoy:1.30", "essential": False},
        ],
        "tags": [{"key": "team", "value": "orders"}],
    }


def document(accounts: tuple[str, ...] = (TEST,), regions: tuple[str, ...] = REGIONS, mode: str = "live",
             existing: bool = False, timeout: int = 900, strategy: str = "rolling") -> dict[str, Any]:
    targets = [{"accountId": a, "region": r, "roleArn": role_arn(a), "cluster": "crossdeploy", "service": "orders",
                "container": "orders",
                "taskDefinition": None if existing else rendered_task_definition(a, r, mode)}
               for a in accounts for r in regions]
    return {"version": 1, "service": "orders", "environments": [
        {"name": "test", "strategy": strategy, "timeoutSeconds": timeout, "targets": targets}]}


def images(digest: str = NEW_DIGEST, regions: tuple[str, ...] = REGIONS) -> dict[str, str]:
    return {r: image(r, digest) for r in regions}


# --- observing and answering at the botocore layer --------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    account: str
    region: str
    operation: str
    params: dict[str, Any]


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *args: Any, **kwargs: Any):
        yield self._body


def error_response(request: Any, code: str, message: str, status: int = 400) -> AWSResponse:
    """AWS's error answer in the request's protocol (JSON for ECS, query/XML for STS)."""
    if "://sts." not in request.url:
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "injected"}
    else:
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
                f"<RequestId>injected</RequestId></ErrorResponse>").encode()
        headers = {"Content-Type": "text/xml", "x-amzn-RequestId": "injected"}
    return AWSResponse(request.url, status, headers, _Body(body))


def _ok() -> AWSResponse:
    return AWSResponse("https://ecs.amazonaws.com/", 200, {}, _Body(b""))


def _validated(model: Any, parsed: dict[str, Any]) -> dict[str, Any]:
    # The answer must be one botocore could have parsed from AWS: same check as botocore's Stubber.
    report = ParamValidator().validate(parsed, model.output_shape)
    if report.has_errors():
        raise AssertionError(report.generate_report())
    return parsed


SUCCESS = ("IN_PROGRESS", "SUCCESSFUL")
OPEN = ("PENDING", "IN_PROGRESS", "ROLLBACK_REQUESTED", "ROLLBACK_IN_PROGRESS")


@dataclass
class Rollout:
    arn: str
    account: str
    region: str
    cluster: str
    service: str
    task_definition: str
    previous: str
    script: list[str]
    reads: int = 0
    stopped: bool = False

    def status(self) -> str:
        return self.script[min(self.reads, len(self.script) - 1)]


@dataclass
class FakeRollouts:
    """ECS's service deployments for the services moto hosts. ``scripts[(account, region)]`` is a queue of status
    sequences, one per UpdateService (default: in progress, then successful); each DescribeServiceDeployments read
    moves one step. Reaching ROLLBACK_SUCCESSFUL puts the service back on its previous revision, as ECS does."""

    admin: dict[str, boto3.Session]
    scripts: dict[tuple[str, str], list[tuple[str, ...]]] = field(default_factory=dict)
    api: bool = True  # False: an ECS without the service deployment API (rolloutState only)
    current_in_update: bool = True  # UpdateService returns currentServiceDeployment
    active_in_describe: bool = True  # DescribeServices lists the revision an open rollout replaces (ACTIVE)
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: itertools.count = field(default_factory=itertools.count)

    def install(self, session: boto3.Session, account: str) -> None:
        on = session.events.register
        on("after-call.ecs.UpdateService", functools.partial(self._updated, account))
        on("after-call.ecs.DescribeServices", functools.partial(self._described, account))
        for op in ("DescribeServiceDeployments", "ListServiceDeployments", "StopServiceDeployment"):
            on(f"before-call.ecs.{op}", functools.partial(self._answer, account))

    def _key(self, service_arn: str) -> tuple[str, str]:
        *_, cluster, service = service_arn.split("/")
        return cluster, service

    def _updated(self, account: str, parsed: dict, context: dict, **_: Any) -> None:
        if "service" not in parsed:  # ECS refused the update: no deployment
            return
        service = parsed["service"]
        region = context["client_region"]
        cluster, name = self._key(service["serviceArn"])
        with self.lock:
            queue = self.scripts.get((account, region)) or []
            script = list(queue.pop(0)) if queue else list(SUCCESS)
            previous = next((r.task_definition for r in reversed(self.rollouts.values())
                             if (r.account, r.region, r.cluster, r.service) == (account, region, cluster, name)), None)
            arn = (f"arn:aws:ecs:{region}:{account}:service-deployment/{cluster}/{name}/"
                   f"{next(self.counter):04d}{os.urandom(9).hex()}")
            self.rollouts[arn] = Rollout(arn, account, region, cluster, name, service["taskDefinition"],
                                         previous or self.initial[(account, region)], script)
        if self.current_in_update and self.api:
            service["currentServiceDeployment"] = arn

    initial: dict[tuple[str, str], str] = field(default_factory=dict)

    def _latest(self, account: str, region: str, cluster: str, service: str) -> Rollout | None:
        found = [r for r in self.rollouts.values() if (r.account, r.region, r.cluster, r.service) ==
                 (account, region, cluster, service)]
        return found[-1] if found else None

    def _step(self, rollout: Rollout) -> str:
        status = rollout.status()
        rollout.reads += 1
        if status == "ROLLBACK_SUCCESSFUL":
            ecs = self.admin[rollout.account].client("ecs", region_name=rollout.region)
            if ecs.describe_services(cluster=rollout.cluster, services=[rollout.service])["services"][0][
                    "taskDefinition"] == rollout.task_definition:
                ecs.update_service(cluster=rollout.cluster, service=rollout.service, taskDefinition=rollout.previous)
        return status

    def _described(self, account: str, parsed: dict, context: dict, **_: Any) -> None:
        # ECS's deployments[]: the primary on the service's revision with its rolloutState, and while the rollout
        # is open the revision it replaces (ACTIVE). Without service deployments each read moves the script one
        # step (the primary deployment's rolloutState is all there is to tell); with them, reads only look.
        for service in parsed.get("services", []):
            cluster, name = self._key(service["serviceArn"])
            with self.lock:
                rollout = self._latest(account, context["client_region"], cluster, name)
                if rollout is None and self.api:
                    continue
                status = (rollout.status() if self.api else self._step(rollout)) if rollout else "SUCCESSFUL"
            state = {"SUCCESSFUL": "COMPLETED", "IN_PROGRESS": "IN_PROGRESS", "PENDING": "IN_PROGRESS"}.get(
                status, "FAILED")
            service["deployments"] = [{"id": "ecs-svc/1", "status": "PRIMARY", "rolloutState": state,
                                       "taskDefinition": service["taskDefinition"],
                                       "rolloutStateReason": f"deployment {state.lower()}"}]
            if rollout and self.active_in_describe and status in OPEN and (
                    service["taskDefinition"] == rollout.task_definition):
                service["deployments"].append({"id": "ecs-svc/0", "status": "ACTIVE", "rolloutState": "COMPLETED",
                                               "taskDefinition": rollout.previous})

    def _answer(self, account: str, model: Any, params: dict, context: dict, **_: Any) -> tuple[AWSResponse, dict]:
        region = context["client_region"]
        if not self.api:
            return (AWSResponse("https://ecs/", 400, {}, _Body(b"")),
                    {"Error": {"Code": "UnknownOperationException", "Message": "not in this region"},
                     "ResponseMetadata": {"HTTPStatusCode": 400}})
        body = json.loads(params["body"])  # the serialized request: what ECS would receive
        with self.lock:
            if model.name == "DescribeServiceDeployments":
                out, failures = [], []
                for arn in body["serviceDeploymentArns"]:
                    rollout = self.rollouts.get(arn)
                    if rollout is None:
                        failures.append({"arn": arn, "reason": "MISSING"})
                        continue
                    status = self._step(rollout)
                    reason = {"ROLLBACK_SUCCESSFUL": "circuit breaker: 3 tasks failed health checks",
                              "ROLLBACK_FAILED": "rollback failed"}.get(status, "")
                    entry = {"serviceDeploymentArn": arn, "status": status,
                             "targetServiceRevision": {"arn": arn.replace("service-deployment", "service-revision")},
                             "createdAt": datetime(2025, 1, 1, tzinfo=UTC)}
                    if reason:
                        entry["statusReason"] = reason
                    out.append(entry)
                return _ok(), _validated(model, {"serviceDeployments": out, "failures": failures})
            if model.name == "ListServiceDeployments":
                cluster, service = body["cluster"], body["service"]
                found = [r for r in self.rollouts.values()
                         if (r.account, r.region, r.cluster, r.service) == (account, region, cluster, service)
                         and r.status() in body.get("status", [r.status()])]
                return _ok(), _validated(model, {"serviceDeployments": [
                    {"serviceDeploymentArn": r.arn, "status": r.status(),
                     "createdAt": datetime(2025, 1, 1, 0, 0, i, tzinfo=UTC)} for i, r in enumerate(found)]})
            rollout = self.rollouts[body["serviceDeploymentArn"]]
            assert body["stopType"] == "ROLLBACK"
            rollout.stopped = True
            rollout.script, rollout.reads = ["ROLLBACK_IN_PROGRESS", "ROLLBACK_SUCCESSFUL"], 0
            return _ok(), _validated(model, {"serviceDeploymentArn": rollout.arn})


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    first_hooks: list[tuple[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, session: boto3.Session, account: str) -> boto3.Session:
        session.events.register("before-parameter-build", functools.partial(self._record, account))
        for name, hook in self.first_hooks:
            session.events.register_first(name, hook)  # before moto's own before-send
        return session

    def _record(self, account: str, model: Any, params: dict, context: dict, **_: Any) -> None:
        with self.lock:
            self.calls.append(Call(account, context["client_region"], model.name, copy.deepcopy(params)))

    def inject(self, event_name: str, decide: Any) -> None:
        """A ``before-send`` answer standing in for AWS's; the request is flagged so moto leaves it alone (botocore
        offers it to every before-send handler)."""

        def hook(request: Any, **kwargs: Any) -> AWSResponse | None:
            answer = decide(request=request, **kwargs)
            request.answered_by_test = answer is not None
            return answer

        self.first_hooks.append((event_name, hook))

    def ops(self, operation: str, **where: str) -> list[Call]:
        return [c for c in self.calls if c.operation == operation
                and all(getattr(c, k) == v for k, v in where.items())]

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()


@dataclass
class World:
    recorder: Recorder
    fake: FakeRollouts
    admin: dict[str, boto3.Session]
    base: boto3.Session
    originals: dict[tuple[str, str], str]

    def ecs(self, account: str, region: str) -> Any:
        return self.admin[account].client("ecs", region_name=region)

    def service(self, account: str, region: str) -> dict[str, Any]:
        return self.ecs(account, region).describe_services(cluster="crossdeploy", services=["orders"])["services"][0]

    def task_definition(self, account: str, region: str, arn: str | None = None) -> dict[str, Any]:
        arn = arn or self.service(account, region)["taskDefinition"]
        return self.ecs(account, region).describe_task_definition(taskDefinition=arn, include=["TAGS"])

    def revisions(self, account: str, region: str) -> list[str]:
        return self.ecs(account, region).list_task_definitions(familyPrefix="orders")["taskDefinitionArns"]

    def snapshot(self) -> dict[tuple[str, str], tuple[str, int]]:
        return {key: (self.service(*key)["taskDefinition"], len(self.revisions(*key))) for key in self.originals}

    def session_for(self, deployment_id: str = DEPLOYMENT) -> engine.SessionFor:
        """The engine's own default (cached AssumeRole through STS), with the recorder and the fake installed on
        each session it hands out."""
        return installing(engine.default_session_for(deployment_id, base=self.base), self.recorder.install,
                          self.fake.install)


def installing(inner: engine.SessionFor, *installs: Callable[[boto3.Session, str], Any]) -> engine.SessionFor:
    """`inner`, with each of `installs` applied once to every session it hands out (given the role's account)."""
    seen: set[int] = set()
    lock = threading.Lock()

    def session_for(role: str, region: str) -> boto3.Session:
        session = inner(role, region)
        with lock:
            if id(session) not in seen:
                seen.add(id(session))
                for install in installs:
                    install(session, role.split(":")[4])
        return session

    return session_for


@pytest.fixture(scope="module", autouse=True)
def parse_service_models_once():
    """Test speed only: every session shares one botocore loader, so service models are parsed once."""
    shared = botocore.loaders.create_loader()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader", lambda *args, **kwargs: shared)
        yield


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": EAST,
                        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_backoff(monkeypatch):
    """Keep botocore's retry decisions, skip its sleeping."""
    delays: list[float] = []
    real = botocore.retries.standard.ExponentialBackoff.delay_amount

    def instant(self: Any, context: Any) -> float:
        delays.append(real(self, context))
        return 0.0

    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", instant)
    return delays


def build_world(monkeypatch, accounts: tuple[str, ...] = (TEST, PROD), existing: bool = False) -> World:
    moto_answer = BotocoreStubber.__call__

    def unless_answered(self: Any, event_name: str, request: Any, **kwargs: Any) -> Any:
        return None if getattr(request, "answered_by_test", False) else moto_answer(self, event_name, request, **kwargs)

    monkeypatch.setattr(BotocoreStubber, "__call__", unless_answered)
    recorder = Recorder()
    base = boto3.Session(region_name=EAST)
    recorder.install(base, TOOLS)
    admin: dict[str, boto3.Session] = {}
    originals: dict[tuple[str, str], str] = {}
    for account in accounts:
        admin[account] = assumed_session(base, f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole", "setup")
        admin[account].client("iam").create_role(
            RoleName="crossdeploy-dev-deploy", Path="/crossdeploy/dev/deploy/",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": f"arn:aws:iam::{TOOLS}:root"}}]}))
        for region in REGIONS:
            ecs = admin[account].client("ecs", region_name=region)
            ecs.create_cluster(clusterName="crossdeploy")
            first = rendered_task_definition(account, region)
            if existing:  # a service crossdeploy does not own: its own family, fields and tags
                first = {**first, "tags": [{"key": "owner", "value": "legacy-team"}], "ephemeralStorage":
                         {"sizeInGiB": 40}}
            first = engine.render(engine.Target("test", account, region, role_arn(account), "crossdeploy", "orders",
                                                "orders", image(region, DIGEST), first), {}, "initial")
            arn = ecs.register_task_definition(**first)["taskDefinition"]["taskDefinitionArn"]
            ecs.create_service(cluster="crossdeploy", serviceName="orders", taskDefinition=arn, desiredCount=2,
                               launchType="FARGATE")
            originals[(account, region)] = arn
    fake = FakeRollouts(admin, initial=dict(originals))
    return World(recorder, fake, admin, base, originals)


@pytest.fixture
def make_world(aws_env, monkeypatch):
    with mock_aws():
        yield functools.partial(build_world, monkeypatch)


@pytest.fixture
def world(make_world) -> World:
    return make_world()


def deploy(world: World, doc: dict[str, Any] | None = None, imgs: dict[str, str] | None = None,
           deployment_id: str = DEPLOYMENT, timeout: float = 900, **kwargs: Any) -> engine.Outcome:
    parsed = engine.parse_document(doc or document())
    targets = engine.targets_for(parsed, "test", imgs or images())
    clock = kwargs.pop("clock", None) or FakeClock()
    return engine.run(targets, session_for=world.session_for(deployment_id), deployment_id=deployment_id,
                      timeout_seconds=timeout, poll_seconds=5, sleep=clock.sleep, clock=clock, **kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def logs(capsys) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


# --- validation --------------------------------------------------------------------------------------------------


def test_a_valid_document_parses_into_targets_with_regional_images():
    parsed = engine.parse_document(document(accounts=(TEST, PROD)))
    targets = engine.targets_for(parsed, "test", images())
    assert [(t.account_id, t.region, t.image) for t in targets] == [
        (a, r, image(r)) for a in (TEST, PROD) for r in REGIONS]
    assert parsed.environments[0].strategy == "rolling" and parsed.environments[0].timeout_seconds == 900
    assert targets[0].label == f"{TEST}/{EAST} crossdeploy/orders"


def test_a_malformed_document_names_every_problem_with_its_key_path():
    doc = document(accounts=(TEST, PROD))
    env = doc["environments"][0]
    env.update(strategy="big-bang", timeoutSeconds=30, colour="blue")
    t0, t1, t2, t3 = env["targets"]
    t0["accountId"] = "4444"
    t1["roleArn"] = role_arn(PROD)  # role in the other account
    t2["region"] = "Mars-1"
    t2["taskDefinition"]["containerDefinitions"][0]["cpu"] = "lots"
    t2["taskDefinition"]["famly"] = "typo"
    t3.update(service=t2["service"], region=t2["region"])
    env["targets"].append(copy.deepcopy(t1))  # duplicate of targets[1]
    doc["extra"] = 1

    with pytest.raises(engine.EngineInputError) as caught:
        engine.parse_document(doc)

    problems = caught.value.problems
    expected = [
        "$: unknown key 'extra'",
        "$.environments[0]: unknown key 'colour'",
        "$.environments[0].strategy: expected one of ['rolling', 'blue-green', 'canary', 'linear'], got 'big-bang'",
        "$.environments[0].timeoutSeconds: expected an integer from 60 to 86400, got 30",
        "$.environments[0].targets[0].accountId: expected a 12-digit account id string, got '4444'",
        f"$.environments[0].targets[1].roleArn: role is in account {PROD}, the target in {TEST}",
        "$.environments[0].targets[2].region: expected a region name, got 'Mars-1'",
        "$.environments[0].targets[2].taskDefinition: Unknown parameter in input: \"famly\"",
        "$.environments[0].targets[2].taskDefinition: Invalid type for parameter containerDefinitions[0].cpu, "
        "value: lots, type: <class 'str'>, valid types: <class 'int'>",
        "$.environments[0].targets[4].roleArn: role is in account 777788889999, the target in 444455556666",
    ]
    for line in expected:
        assert line in problems, (line, problems)
    assert str(caught.value).startswith(f"{len(problems)} problem(s): ")


def test_duplicate_targets_and_missing_containers_are_refused():
    doc = document()
    env = doc["environments"][0]
    env["targets"].append(copy.deepcopy(env["targets"][0]))
    env["targets"][1]["container"] = "web"
    with pytest.raises(engine.EngineInputError) as caught:
        engine.parse_document(doc)
    assert caught.value.problems == [
        "$.environments[0].targets[1].taskDefinition.containerDefinitions: no container named 'web' "
        "(has ['orders', 'envoy'])",
        "$.environments[0].targets[2]: same account, region, cluster and service as targets[0]",
    ]


@pytest.mark.parametrize(("data", "problem"), [
    ([], "$: expected an object, got []"),
    ({"version": 2, "service": "orders", "environments": []}, "$.version: this engine reads version 1, got 2"),
    ({"version": 1, "service": "orders"}, "$: missing key 'environments'"),
    ({"version": 1, "service": "o rders", "environments": [{}]}, "$.service: expected a service name, got 'o rders'"),
])
def test_document_shape_errors(data, problem):
    with pytest.raises(engine.EngineInputError) as caught:
        engine.parse_document(data)
    assert problem in caught.value.problems


def test_images_must_be_pinned_regional_and_complete():
    parsed = engine.parse_document(document())
    with pytest.raises(engine.EngineInputError) as caught:
        engine.targets_for(parsed, "test", {EAST: f"{TOOLS}.dkr.ecr.{EAST}.amazonaws.com/orders:latest"})
    assert caught.value.problems == [
        f"images['{EAST}']: expected <repository>@sha256:<64 hex>, got "
        f"'{TOOLS}.dkr.ecr.{EAST}.amazonaws.com/orders:latest'",
        f"images['{WEST}']: no image for region {WEST} (environment test, targets[1])",
    ]
    with pytest.raises(engine.EngineInputError, match=r"image is in us-east-2's registry, not us-west-2's"):
        engine.targets_for(parsed, "test", {EAST: image(EAST), WEST: image(EAST)})
    with pytest.raises(engine.EngineInputError, match=r"environment: 'prod' is not in the deploy document"):
        engine.targets_for(parsed, "prod", images())


def test_state_round_trips_through_json():
    state = engine.TargetState(engine.RESTORING, changed=True, previous_task_definition="arn:a:1",
                               new_task_definition="arn:a:2", service_deployment="sd", restore_mode="stop",
                               reason="x", started_at=12.5, timeout_seconds=60)
    assert engine.TargetState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    with pytest.raises(ValueError, match="not a target state"):
        engine.TargetState.from_dict({"phase": "dancing"})


def test_session_names_are_stss_alphabet():
    assert engine.session_name("a b/c:d" + "x" * 80) == ("crossdeploy-a-b-c-d" + "x" * 80)[:64]


# --- deploying ---------------------------------------------------------------------------------------------------


def test_a_changed_variable_and_a_new_digest_land_in_the_new_revision(world, capsys):
    capsys.readouterr()
    outcome = deploy(world, document(accounts=(TEST, PROD), mode="maintenance"))

    assert outcome.succeeded, outcome.reason
    assert outcome.reason == "4 target(s) deployed: 4 updated, 0 already on the revision"
    for account in (TEST, PROD):
        for region in REGIONS:
            service = world.service(account, region)
            assert service["taskDefinition"] != world.originals[(account, region)]
            new = world.task_definition(account, region)
            app, envoy = new["taskDefinition"]["containerDefinitions"]
            assert app["image"] == image(region)  # this region's replica, pinned by digest
            assert app["environment"] == [{"name": "MODE", "value": "maintenance"}]
            assert envoy["image"] == "public.ecr.aws/envoy:1.30"  # matched by name; the sidecar is untouched
            assert {"key": engine.DEPLOYMENT_TAG, "value": DEPLOYMENT} in new["tags"]
            assert {"key": "team", "value": "orders"} in new["tags"]
            (register,) = world.recorder.ops("RegisterTaskDefinition", account=account, region=region)
            expected = engine.render(engine.Target("test", account, region, role_arn(account), "crossdeploy",
                                                   "orders", "orders", image(region),
                                                   rendered_task_definition(account, region, "maintenance")),
                                     {}, DEPLOYMENT)
            assert register.params == expected  # exactly the rendered request, nothing more
            (update,) = world.recorder.ops("UpdateService", account=account, region=region)
            assert update.params == {"cluster": "crossdeploy", "service": "orders",
                                     "taskDefinition": service["taskDefinition"]}
    records = logs(capsys)
    updated = [r for r in records if r["event"] == "updated"]
    assert len(updated) == 4 and all(r["deploymentId"] == DEPLOYMENT and r["oldTaskDefinition"] for r in updated)
    assert records[-1]["event"] == "deployment-outcome" and records[-1]["status"] == "succeeded"
    # One role per account, assumed once however many regions use it, under the deployment's session name.
    assumed = world.recorder.ops("AssumeRole")
    assert sorted(c.params["RoleArn"] for c in assumed if "deploy" in c.params["RoleArn"]) == sorted(
        [role_arn(TEST), role_arn(PROD)])
    assert {c.params["RoleSessionName"] for c in assumed if "deploy" in c.params["RoleArn"]} == {
        engine.session_name(DEPLOYMENT)}


def test_the_same_document_and_image_twice_deploys_once(world):
    first = deploy(world)
    after_first = world.snapshot()
    world.recorder.reset()

    second = deploy(world, deployment_id="job-retry")

    assert first.succeeded and second.succeeded
    assert [s.phase for s in second.states] == [engine.UNCHANGED, engine.UNCHANGED]
    assert second.reason == "2 target(s) deployed: 0 updated, 2 already on the revision"
    assert not world.recorder.ops("RegisterTaskDefinition") and not world.recorder.ops("UpdateService")
    assert world.snapshot() == after_first


def first_invocation(world: World, regions: tuple[str, ...] = REGIONS) -> list[engine.TargetState]:
    """An invocation that pointed the services at the new revision and stopped (the Lambda timed out, its reply
    was lost) before ECS finished: the retry starts from nothing but the services as they are."""
    targets = engine.targets_for(engine.parse_document(document(regions=regions)), "test", images(regions=regions))
    states = engine.start_all(targets, session_for=world.session_for(), deployment_id=DEPLOYMENT,
                              timeout_seconds=900, now=0.0)
    assert [s.phase for s in states] == [engine.DEPLOYING] * len(regions)
    world.recorder.reset()
    return states


@pytest.mark.parametrize("api", [True, False], ids=["service-deployments", "rollout-state"])
@pytest.mark.parametrize("final", ["SUCCESSFUL", "ROLLBACK_SUCCESSFUL"])
def test_a_retry_follows_a_rollout_still_in_progress(world, capsys, api, final):
    world.fake.api = api
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS", "IN_PROGRESS", final)]
    (first,) = first_invocation(world, regions=(EAST,))
    new = world.service(TEST, EAST)["taskDefinition"]
    assert new == first.new_task_definition != world.originals[(TEST, EAST)]
    clock = FakeClock()
    capsys.readouterr()

    retry = deploy(world, document(regions=(EAST,)), images(regions=(EAST,)), clock=clock)

    assert not world.recorder.ops("RegisterTaskDefinition") and not world.recorder.ops("UpdateService")
    assert not world.recorder.ops("StopServiceDeployment")
    assert clock.now > 1000, "the retry waited for ECS"
    (state,) = retry.states
    assert state.changed and state.previous_task_definition == world.originals[(TEST, EAST)]
    assert state.new_task_definition == new
    assert state.service_deployment == (first.service_deployment if api else None)
    (resumed,) = [r for r in logs(capsys) if r["event"] == "target-resumed"]
    assert (resumed["oldTaskDefinition"], resumed["newTaskDefinition"]) == (world.originals[(TEST, EAST)], new)
    if final == "SUCCESSFUL":
        assert retry.succeeded, retry.reason
        assert retry.reason == "1 target(s) deployed: 1 updated, 0 already on the revision"
        assert state.phase == engine.SUCCEEDED
        assert world.service(TEST, EAST)["taskDefinition"] == new
    else:
        assert not retry.succeeded
        assert retry.reason.startswith(f"1 of 1 target(s) failed: {TEST}/{EAST} crossdeploy/orders: "
                                       "ECS rolled back the deployment")
        assert state.phase == engine.RESTORED  # ECS put it back; nothing for the engine to do
        assert world.service(TEST, EAST)["taskDefinition"] == world.originals[(TEST, EAST)]


@pytest.mark.parametrize("api", [True, False], ids=["service-deployments", "rollout-state"])
def test_a_resumed_target_is_restored_when_another_fails(world, api):
    world.fake.api = api
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS",) * 20 + ("SUCCESSFUL",)]
    world.fake.scripts[(TEST, WEST)] = [("IN_PROGRESS", "IN_PROGRESS", "ROLLBACK_SUCCESSFUL")]
    east, _ = first_invocation(world)

    retry = deploy(world)

    assert not retry.succeeded
    assert f"{TEST}/{WEST} crossdeploy/orders: ECS rolled back the deployment" in retry.reason
    assert "Restored 2 changed target(s)" in retry.reason
    assert [s.phase for s in retry.states] == [engine.RESTORED, engine.RESTORED]
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]
    assert not world.recorder.ops("RegisterTaskDefinition")
    if api:  # still rolling out: ECS's own rollback of the deployment the first invocation started
        (stop,) = world.recorder.ops("StopServiceDeployment")
        assert stop.params == {"serviceDeploymentArn": east.service_deployment, "stopType": "ROLLBACK"}
        assert not world.recorder.ops("UpdateService")
    else:  # no deployment to stop: UpdateService back to the revision deployments[] named
        (update,) = world.recorder.ops("UpdateService")
        assert (update.region, update.params["taskDefinition"]) == (EAST, world.originals[(TEST, EAST)])


def test_a_resumed_rollout_without_a_known_previous_revision_is_followed_not_restored(world):
    world.fake.active_in_describe = False
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "SUCCESSFUL")]
    world.fake.scripts[(TEST, WEST)] = [("IN_PROGRESS", "ROLLBACK_SUCCESSFUL")]
    first_invocation(world)

    retry = deploy(world)

    assert not retry.succeeded
    east, west = retry.states
    assert not east.changed and east.previous_task_definition is None
    assert east.phase == engine.SUCCEEDED  # followed to its end: nothing to put it back on
    assert west.phase == engine.FAILED and not west.changed
    assert not world.recorder.ops("UpdateService") and not world.recorder.ops("StopServiceDeployment")


@pytest.mark.parametrize("api", [True, False], ids=["service-deployments", "rollout-state"])
@pytest.mark.parametrize("finished_by", ["ecs", "engine"])
def test_a_retry_after_the_rollout_completed_is_unchanged(world, capsys, api, finished_by):
    world.fake.api = api
    if finished_by == "ecs":  # the first invocation stopped, ECS finished the rollout on its own
        world.fake.scripts.update({(TEST, region): [("SUCCESSFUL",)] for region in REGIONS})
        first_invocation(world)
    else:
        assert deploy(world).succeeded
    after_first = world.snapshot()
    world.recorder.reset()
    capsys.readouterr()

    retry = deploy(world, deployment_id="job-retry")

    assert retry.succeeded, retry.reason
    assert [s.phase for s in retry.states] == [engine.UNCHANGED, engine.UNCHANGED]
    assert not any(s.changed for s in retry.states)
    assert retry.reason == "2 target(s) deployed: 0 updated, 2 already on the revision"
    assert not world.recorder.ops("RegisterTaskDefinition") and not world.recorder.ops("UpdateService")
    assert world.snapshot() == after_first
    events = [r["event"] for r in logs(capsys)]
    assert events.count("target-unchanged") == 2 and "target-resumed" not in events


def test_only_the_digest_changes_deploys_only_the_digest(world):
    deploy(world)
    outcome = deploy(world, imgs=images("sha256:" + "c" * 64), deployment_id="job-2")
    assert outcome.succeeded
    for region in REGIONS:
        app = world.task_definition(TEST, region)["taskDefinition"]["containerDefinitions"][0]
        assert app["image"] == image(region, "sha256:" + "c" * 64)
        assert len(world.revisions(TEST, region)) == 3


def test_existing_service_copies_the_whole_revision_and_swaps_only_the_image(make_world):
    world = make_world(accounts=(TEST,), existing=True)
    outcome = deploy(world, document(existing=True))

    assert outcome.succeeded, outcome.reason
    for region in REGIONS:
        old = world.task_definition(TEST, region, world.originals[(TEST, region)])
        new = world.task_definition(TEST, region)
        volatile = {"taskDefinitionArn", "revision", "registeredAt", "registeredBy", "containerDefinitions"}
        assert {k: v for k, v in new["taskDefinition"].items() if k not in volatile} == {
            k: v for k, v in old["taskDefinition"].items() if k not in volatile}
        (app, envoy), (old_app, old_envoy) = (new["taskDefinition"]["containerDefinitions"],
                                              old["taskDefinition"]["containerDefinitions"])
        assert app["image"] == image(region) and old_app["image"] == image(region, DIGEST)
        assert {k: v for k, v in app.items() if k != "image"} == {k: v for k, v in old_app.items() if k != "image"}
        assert envoy == old_envoy
        assert {(t["key"], t["value"]) for t in new["tags"]} == {
            ("owner", "legacy-team"), (engine.DEPLOYMENT_TAG, DEPLOYMENT)}
    # And again: the service is on the image already, nothing to do.
    world.recorder.reset()
    assert [s.phase for s in deploy(world, document(existing=True)).states] == [engine.UNCHANGED] * 2
    assert not world.recorder.ops("RegisterTaskDefinition")


def test_service_deployment_found_by_listing_when_update_does_not_name_it(world):
    world.fake.current_in_update = False
    outcome = deploy(world)
    assert outcome.succeeded
    assert len(world.recorder.ops("ListServiceDeployments")) == 2
    listed = world.recorder.ops("ListServiceDeployments")[0].params
    assert listed == {"cluster": "crossdeploy", "service": "orders", "status": ["PENDING", "IN_PROGRESS"]}
    assert all(s.service_deployment for s in outcome.states)


def test_without_the_service_deployment_api_rollout_state_decides(world):
    world.fake.api = False
    world.fake.scripts[(TEST, WEST)] = [("IN_PROGRESS", "ROLLBACK_FAILED")]
    outcome = deploy(world)
    assert not outcome.succeeded
    assert f"{TEST}/{WEST} crossdeploy/orders: ECS rolled back the deployment (ROLLBACK_FAILED)" in outcome.reason
    assert all(s.service_deployment is None for s in outcome.states)
    for region in REGIONS:  # both back where they were, the east one by UpdateService(previous)
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]


# --- failing and restoring ---------------------------------------------------------------------------------------


def test_ecs_rolling_back_one_region_restores_the_other_and_fails(world, capsys):
    world.fake.scripts[(TEST, WEST)] = [("IN_PROGRESS", "ROLLBACK_SUCCESSFUL")]
    capsys.readouterr()

    outcome = deploy(world)

    assert not outcome.succeeded
    assert outcome.reason == (
        f"1 of 2 target(s) failed: {TEST}/{WEST} crossdeploy/orders: ECS rolled back the deployment "
        "(ROLLBACK_SUCCESSFUL): circuit breaker: 3 tasks failed health checks. Restored 2 changed target(s) to "
        "their previous revision")
    assert "\n" not in outcome.reason
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]
    # East had succeeded: UpdateService back to the previous revision. West: ECS had already rolled back.
    east_updates = [c.params["taskDefinition"] for c in world.recorder.ops("UpdateService", region=EAST)]
    assert east_updates[-1] == world.originals[(TEST, EAST)] and len(east_updates) == 2
    assert len(world.recorder.ops("UpdateService", region=WEST)) == 1
    assert not world.recorder.ops("StopServiceDeployment")
    events = [r["event"] for r in logs(capsys)]
    assert events.count("restored") == 2 and "restore" in events


def test_a_deployment_still_running_is_stopped_with_ecs_rollback(world):
    world.fake.scripts[(TEST, WEST)] = [("ROLLBACK_SUCCESSFUL",)]
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS",) * 10 + ("SUCCESSFUL",)]

    outcome = deploy(world)

    assert not outcome.succeeded
    (stop,) = world.recorder.ops("StopServiceDeployment")
    assert stop.region == EAST and stop.params == {"serviceDeploymentArn": outcome.states[0].service_deployment,
                                                   "stopType": "ROLLBACK"}
    assert outcome.states[0].phase == engine.RESTORED and outcome.states[0].restore_mode == "stop"
    assert len(world.recorder.ops("UpdateService", region=EAST)) == 1  # ECS's rollback, not ours
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]


def test_the_timeout_fails_and_restores(world):
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS",) * 1000]
    clock = FakeClock()

    outcome = deploy(world, timeout=60, clock=clock)

    assert not outcome.succeeded
    assert f"{TEST}/{EAST} crossdeploy/orders: timed out after 60 s (IN_PROGRESS)" in outcome.reason
    assert 60 <= clock.now - 1000 <= 80
    assert world.recorder.ops("StopServiceDeployment")
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]


def test_access_denied_in_one_account_restores_the_other(world):
    def refuse_prod(request: Any, **_: Any) -> AWSResponse | None:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        if parse_qs(body).get("RoleArn") == [role_arn(PROD)]:
            return error_response(request, "AccessDenied", "not authorized to perform sts:AssumeRole", 403)
        return None

    world.recorder.inject("before-send.sts.AssumeRole", refuse_prod)
    world.recorder.install(world.base, TOOLS)  # the hook must be on the base session, where AssumeRole is made

    outcome = deploy(world, document(accounts=(TEST, PROD)))

    assert not outcome.succeeded
    assert outcome.reason.startswith(
        f"2 of 4 target(s) failed: {PROD}/{EAST} crossdeploy/orders: AccessDenied: assuming {role_arn(PROD)}: "
        "not authorized to perform sts:AssumeRole; ")
    assert "Restored 2 changed target(s)" in outcome.reason
    prod_assumes = [c for c in world.recorder.ops("AssumeRole") if c.params["RoleArn"] == role_arn(PROD)]
    assert len({id(c) for c in prod_assumes}) >= 1
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]
        assert world.service(PROD, region)["taskDefinition"] == world.originals[(PROD, region)]
    assert not [c for c in world.recorder.calls if c.account == PROD and c.operation != "AssumeRole"]


@pytest.mark.parametrize(("operation", "code"), [
    ("RegisterTaskDefinition", "ClientException"), ("UpdateService", "AccessDeniedException")])
def test_ecs_refusing_one_region_restores_the_other(world, operation, code):
    def refuse_west(request: Any, **_: Any) -> AWSResponse | None:
        if f"ecs.{WEST}." in request.url:
            return error_response(request, code, "Container.image contains invalid characters.")
        return None

    world.recorder.inject(f"before-send.ecs.{operation}", refuse_west)

    outcome = deploy(world)

    assert not outcome.succeeded
    what = "ECS rejected the task definition: " if operation == "RegisterTaskDefinition" else ""
    assert outcome.reason.startswith(f"1 of 2 target(s) failed: {TEST}/{WEST} crossdeploy/orders: {what}{code}: "
                                     "Container.image contains invalid characters.")
    west = outcome.states[1]
    assert west.phase == engine.FAILED and not west.changed
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]


def test_a_missing_service_fails_alone_and_the_others_go_back(world):
    world.ecs(TEST, WEST).delete_service(cluster="crossdeploy", service="orders", force=True)
    outcome = deploy(world)
    assert not outcome.succeeded
    assert f"{TEST}/{WEST} crossdeploy/orders: service not found or not ACTIVE; nothing changed" in outcome.reason
    assert world.service(TEST, EAST)["taskDefinition"] == world.originals[(TEST, EAST)]
    assert not world.recorder.ops("RegisterTaskDefinition", region=WEST)


def test_throttling_is_retried_by_the_sdk(world, no_backoff):
    sent: dict[str, int] = {}
    lock = threading.Lock()

    def throttle_once(request: Any, **_: Any) -> AWSResponse | None:
        key = request.url + request.headers.get("X-Amz-Target", b"").decode()
        with lock:
            sent[key] = sent.get(key, 0) + 1
            if sent[key] > 1:
                return None
        return error_response(request, "ThrottlingException", "Rate exceeded")

    for operation in ("DescribeServices", "RegisterTaskDefinition", "UpdateService"):
        world.recorder.inject(f"before-send.ecs.{operation}", throttle_once)

    outcome = deploy(world)

    assert outcome.succeeded, outcome.reason
    assert len(world.recorder.ops("RegisterTaskDefinition")) == 2  # asked once per target...
    assert len(no_backoff) == 6  # ...and the SDK resent each throttled request once
    for region in REGIONS:
        assert len(world.revisions(TEST, region)) == 2, "a throttled registration is not registered twice"


def test_a_status_read_that_keeps_failing_fails_the_target(world):
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS",) * 50]
    original = world.fake._answer

    def deny(account, model, params, context, **kw):
        if model.name == "DescribeServiceDeployments" and context["client_region"] == EAST:
            return (AWSResponse("https://ecs/", 400, {}, _Body(b"")),
                    {"Error": {"Code": "AccessDeniedException", "Message": "no"},
                     "ResponseMetadata": {"HTTPStatusCode": 400}})
        return original(account, model, params, context, **kw)

    world.fake._answer = deny
    outcome = deploy(world)
    assert not outcome.succeeded
    assert f"{TEST}/{EAST} crossdeploy/orders: cannot read the deployment's status: AccessDeniedException: no" in (
        outcome.reason)


def test_states_survive_a_json_round_trip_between_steps(world):
    """What the pipeline does between invocations: start, serialise, poll in a 'new process', restore."""
    world.fake.scripts[(TEST, WEST)] = [("IN_PROGRESS", "ROLLBACK_FAILED")]
    parsed = engine.parse_document(document())
    targets = engine.targets_for(parsed, "test", images())
    session_for = world.session_for()
    states = engine.start_all(targets, session_for=session_for, deployment_id=DEPLOYMENT, timeout_seconds=600,
                              now=0.0)
    now = 0.0
    while not engine.finished(states):
        states = [engine.TargetState.from_dict(json.loads(json.dumps(s.to_dict()))) for s in states]
        now += 5
        states = engine.advance(targets, states, session_for=session_for, now=now)
    result = engine.outcome(targets, states)
    assert not result.succeeded and "ROLLBACK_FAILED" in result.reason
    assert [s.phase for s in states] == [engine.RESTORED, engine.RESTORED]
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]


def test_same_revision_ignores_filled_defaults_and_the_deployment_tag():
    desired = {"family": "f", "cpu": 256, "containerDefinitions": [
        {"name": "a", "image": "i", "portMappings": [{"containerPort": 80}]}],
        "tags": [{"key": engine.DEPLOYMENT_TAG, "value": "new"}]}
    described = {"family": "f", "cpu": "256", "volumes": [], "placementConstraints": [], "containerDefinitions": [
        {"name": "a", "image": "i", "cpu": 0, "essential": True, "environment": [], "mountPoints": [],
         "volumesFrom": [], "portMappings": [{"containerPort": 80, "hostPort": 80, "protocol": "tcp"}]}],
        "tags": [{"key": engine.DEPLOYMENT_TAG, "value": "old"}]}
    assert engine.same_revision(described, desired)
    changed = copy.deepcopy(described)
    changed["containerDefinitions"][0]["environment"] = [{"name": "X", "value": "1"}]
    assert not engine.same_revision(changed, desired)
    assert not engine.same_revision(described, {**desired, "memory": "512"})
