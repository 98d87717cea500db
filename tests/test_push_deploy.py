"""The push-deploy handler against moto: a tools-account registry replicated to two regions, deploy roles and ECS
services in two workload accounts x two regions, driven by AWS's sample "ECR Image Action" event rewritten per case.
``revision`` pushes go through the deploy engine, which registers the task definition of the service's deploy
document; moto has no ECS service deployments, so :mod:`ecs_service_deployments` adds them to moto's ECS.

AWS access is observed, never faked in the handler: ``_base_session`` and ``_deploy_session`` are replaced by
versions that record every API call (account, region, operation, parameters) through botocore's event hooks, and
install any fault-injecting hooks a test asks for (``before-send`` answers with a real HTTP error response, so the
SDK's own retry handler sees it exactly as it would see AWS's).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import boto3
import botocore.client
import botocore.loaders
import botocore.retries.standard
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from conftest import SAMPLES
from ecs_service_deployments import ServiceDeployments
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from handlers import push_deploy as pd
from handlers.ecs_common import assumed_session

TOOLS = "123456789012"  # moto's default account plays the tools account: the registry lives there
QA, PROD = "444455556666", "777788889999"
HOME, OTHER = "us-east-2", "eu-west-1"
REGIONS = (HOME, OTHER)
ENVIRONMENTS = {"qa": QA, "prod": PROD}
EVENT_ID = "13cde686-328b-6117-af20-0e5566167482"  # the sample's own id
MANIFEST = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1469,
               "digest": "sha256:" + "c" * 64},
    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 3370706,
                "digest": "sha256:" + "d" * 64}],
})
OTHER_DIGEST = "sha256:" + "e" * 64


def role_arn(env: str) -> str:
    return f"arn:aws:iam::{ENVIRONMENTS[env]}:role/crossdeploy/{env}/deploy/crossdeploy-{env}-deploy"


def registry_uri(region: str, repository: str) -> str:
    return f"{TOOLS}.dkr.ecr.{region}.amazonaws.com/{repository}"


def rich_task_definition(region: str) -> dict[str, Any]:
    """Every kind of field a real service carries, so a dropped field shows up as a difference."""
    account_role = "arn:aws:iam::{}:role/{}"
    return {
        "family": "orders",
        "taskRoleArn": account_role.format(QA, "orders-task"),
        "executionRoleArn": account_role.format(QA, "orders-exec"),
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": "512",
        "memory": "1024",
        "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
        "ephemeralStorage": {"sizeInGiB": 30},
        "volumes": [{"name": "scratch"}],
        "containerDefinitions": [
            {"name": "orders", "image": registry_uri(region, "orders") + ":qa-1.0.0", "essential": True,
             "portMappings": [{"containerPort": 8080, "protocol": "tcp"}],
             "environment": [{"name": "MODE", "value": "live"}],
             "secrets": [{"name": "DB", "valueFrom": f"arn:aws:secretsmanager:{region}:{QA}:secret:db"}],
             "healthCheck": {"command": ["CMD-SHELL", "curl -f localhost:8080/health"], "interval": 30},
             "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/orders"}},
             "mountPoints": [{"sourceVolume": "scratch", "containerPath": "/tmp"}]},
            {"name": "sidecar", "image": "public.ecr.aws/envoy:1.30", "essential": False},
        ],
        "tags": [{"key": "team", "value": "orders"}, {"key": "cost-center", "value": "42"}],
    }


def rendered_task_definition(env: str, region: str) -> dict[str, Any]:
    """What `pulumi up` rendered for the environment and region: not what the service runs today (other sizing,
    other environment variables, the bootstrap image at the trigger tag)."""
    td = rich_task_definition(region)
    td.update(cpu="1024", memory="2048")
    app = td["containerDefinitions"][0]
    app["image"] = registry_uri(region, "orders") + ":latest"
    app["environment"] = [{"name": "MODE", "value": f"rendered-{env}"}, {"name": "REGION", "value": region}]
    return td


def deploy_document() -> dict[str, Any]:
    return {"version": 1, "service": "orders", "environments": [
        {"name": env, "strategy": "rolling", "timeoutSeconds": 900, "targets": [
            {"accountId": ENVIRONMENTS[env], "region": region, "roleArn": role_arn(env), "cluster": "crossdeploy",
             "service": "orders", "container": "orders", "taskDefinition": rendered_task_definition(env, region)}
            for region in REGIONS]}
        for env in ENVIRONMENTS]}


def targets_map(replication_timeout: int = 300) -> dict[str, Any]:
    def targets(service: str, cluster: str, patterns: dict[str, list[str]]) -> list[dict[str, Any]]:
        return [{"environment": env, "tagPatterns": patterns[env], "accountId": ENVIRONMENTS[env], "region": region,
                 "cluster": cluster, "service": service, "roleArn": role_arn(env)}
                for env in ENVIRONMENTS for region in REGIONS]

    patterns = {"qa": ["qa-*"], "prod": ["prod-*", "release-*"]}
    return {
        "version": 2, "registryId": TOOLS, "homeRegion": HOME, "partition": "aws",
        "replicationTimeoutSeconds": replication_timeout, "maxConcurrency": 8,
        "repositories": {
            "orders": {"pushMode": "revision", "containerName": "orders",
                       "targets": targets("orders", "crossdeploy", patterns), "deployDocument": deploy_document()},
            "legacy": {"pushMode": "force", "containerName": "legacy",
                       "targets": targets("legacy", "legacy", patterns), "deployDocument": None},
        },
    }


@pytest.fixture(scope="module", autouse=True)
def parse_service_models_once():
    """Test speed only: every boto3 session (the tests make dozens) shares one botocore data loader, so ECS's
    service model is parsed once per module instead of once per session. Nothing the handler does depends on it."""
    shared = botocore.loaders.create_loader()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader", lambda *args, **kwargs: shared)
        yield


@pytest.fixture(scope="module")
def sample_event() -> dict[str, Any]:
    return json.loads((SAMPLES / "ecr-image-action-event.json").read_text())


@pytest.fixture
def make_event(sample_event):
    """The sample with account, region, repository, digest and tag rewritten; ``detail`` entries set to None are
    removed."""

    def make(tag: str | None = "qa-1.2.3", digest: str = OTHER_DIGEST, repository: str = "orders",
             account: str = TOOLS, region: str = HOME, **detail: Any) -> dict[str, Any]:
        event = copy.deepcopy(sample_event)
        event.update(account=account, region=region)
        event["detail"].update({"repository-name": repository, "image-digest": digest, "image-tag": tag})
        event["detail"].update({key.replace("_", "-"): value for key, value in detail.items()})
        event["detail"] = {k: v for k, v in event["detail"].items() if v is not None}
        return event

    return make


@pytest.fixture
def targets_file(tmp_path, monkeypatch):
    def write(document: dict[str, Any] | None = None) -> str:
        path = tmp_path / "targets.json"
        path.write_text(json.dumps(document or targets_map()))
        monkeypatch.setenv(pd.TARGETS_FILE_ENV, str(path))
        return str(path)

    write()
    monkeypatch.delenv(pd.MAX_CONCURRENCY_ENV, raising=False)
    return write


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": HOME,
                        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def logs(capsys) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


# --- observing and injecting at the botocore layer ----------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    account: str
    region: str
    service: str
    operation: str
    params: dict[str, Any]


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *args: Any, **kwargs: Any):
        yield self._body


def error_response(request: Any, status: int, code: str, message: str) -> AWSResponse:
    """What AWS answers with an error, in the request's protocol (JSON for ECS, query/XML for STS)."""
    if "://sts." not in request.url:
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "injected"}
    else:
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
                f"<RequestId>injected</RequestId></ErrorResponse>").encode()
        headers = {"Content-Type": "text/xml", "x-amzn-RequestId": "injected"}
    return AWSResponse(request.url, status, headers, _Body(body))


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    first_hooks: list[tuple[str, Any]] = field(default_factory=list)
    assumed: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, session: boto3.Session, account: str) -> boto3.Session:
        # before-parameter-build sees the API parameters as the handler passed them (before-call sees the
        # serialized request), and every call passes through it, even one a test answers itself.
        session.events.register("before-parameter-build", functools.partial(self._record, account))
        for name, hook in self.first_hooks:
            # First: moto answers in before-send too, and the first answer wins.
            session.events.register_first(name, hook)
        return session

    def _record(self, account: str, model: Any, params: dict, context: dict, **_: Any) -> None:
        with self.lock:
            self.calls.append(Call(account, context["client_region"], model.service_model.service_name,
                                   model.name, copy.deepcopy(params)))

    def inject(self, event_name: str, decide: Any) -> None:
        """A ``before-send`` hook whose non-None answer stands in for AWS's. botocore offers the request to every
        before-send handler (the first answer wins), so the request is flagged for moto to leave alone: an
        injected error must not also have happened."""

        def hook(request: Any, **kwargs: Any) -> AWSResponse | None:
            answer = decide(request=request, **kwargs)
            request.answered_by_test = answer is not None
            return answer

        self.first_hooks.append((event_name, hook))

    def ops(self, operation: str, **where: str) -> list[Call]:
        return [c for c in self.calls if c.operation == operation
                and all(getattr(c, key) == value for key, value in where.items())]

    def reset(self) -> None:
        self.calls.clear()
        self.assumed.clear()


# --- the moto world ----------------------------------------------------------------------------------------------


@dataclass
class World:
    digest: str
    recorder: Recorder
    admin: dict[str, boto3.Session]
    rollouts: ServiceDeployments | None = None

    def ecs(self, account: str, region: str) -> Any:
        return self.admin[account].client("ecs", region_name=region)

    def service(self, account: str, region: str, service: str = "orders", cluster: str = "crossdeploy") -> dict:
        return self.ecs(account, region).describe_services(cluster=cluster, services=[service])["services"][0]

    def revisions(self, account: str, region: str, family: str = "orders") -> list[str]:
        return self.ecs(account, region).list_task_definitions(familyPrefix=family)["taskDefinitionArns"]

    def snapshot(self) -> dict[tuple[str, str], tuple[str, int]]:
        return {(a, r): (self.service(a, r)["taskDefinition"], len(self.revisions(a, r)))
                for a in (QA, PROD) for r in REGIONS}


def build_world(recorder: Recorder, monkeypatch, replicate_to: tuple[str, ...] = REGIONS,
                force_services: bool = False) -> World:
    base = boto3.Session(region_name=HOME)
    digest = ""
    for region in replicate_to:  # ECR replication keeps the digest: the same manifest in every region
        ecr = base.client("ecr", region_name=region)
        for repository in ("orders", "legacy"):
            ecr.create_repository(repositoryName=repository)
            digest = ecr.put_image(repositoryName=repository, imageManifest=MANIFEST,
                                   imageTag="qa-1.2.3")["image"]["imageId"]["imageDigest"]
    admin = {}
    for env, account in ENVIRONMENTS.items():
        # Resources land in the workload account because they are created through a session in it.
        admin[account] = assumed_session(base, f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole", "setup")
        iam = admin[account].client("iam")
        iam.create_role(RoleName=f"crossdeploy-{env}-deploy", Path=f"/crossdeploy/{env}/deploy/",
                        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                            "Effect": "Allow", "Action": "sts:AssumeRole",
                            "Principal": {"AWS": f"arn:aws:iam::{TOOLS}:root"}}]}))
        for region in REGIONS:
            ecs = admin[account].client("ecs", region_name=region)
            ecs.create_cluster(clusterName="crossdeploy")
            orders = ecs.register_task_definition(**rich_task_definition(region))["taskDefinition"]
            ecs.create_service(cluster="crossdeploy", serviceName="orders", desiredCount=2, launchType="FARGATE",
                               taskDefinition=orders["taskDefinitionArn"])
            if not force_services:
                continue
            ecs.create_cluster(clusterName="legacy")
            legacy = ecs.register_task_definition(
                family="legacy", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
                containerDefinitions=[{"name": "legacy", "image": registry_uri(region, "legacy") + ":qa"}],
            )["taskDefinition"]
            ecs.create_service(cluster="legacy", serviceName="legacy", desiredCount=2, launchType="FARGATE",
                               taskDefinition=legacy["taskDefinitionArn"])

    def deploy_session(base: boto3.Session, arn: str, name: str) -> boto3.Session:
        with recorder.lock:
            recorder.assumed.append((arn, name))
        return recorder.install(assumed_session(base, arn, name), arn.split(":")[4])

    monkeypatch.setattr(pd, "_base_session", lambda: recorder.install(boto3.Session(region_name=HOME), TOOLS))
    monkeypatch.setattr(pd, "_deploy_session", deploy_session)
    return World(digest, recorder, admin)


@pytest.fixture
def make_world(aws_env, targets_file, monkeypatch):
    moto_answer = BotocoreStubber.__call__

    def unless_answered(self: Any, event_name: str, request: Any, **kwargs: Any) -> Any:
        return None if getattr(request, "answered_by_test", False) else moto_answer(self, event_name, request, **kwargs)

    monkeypatch.setattr(BotocoreStubber, "__call__", unless_answered)
    # The engine's waits: tests run on moto's clock, not the wall's (FakeTime where a test counts the waiting).
    monkeypatch.setattr(pd, "ENGINE_POLL_SECONDS", 0.0)
    rollouts = ServiceDeployments(monkeypatch.setattr)

    def make(**kwargs: Any) -> World:
        world = build_world(Recorder(), monkeypatch, **kwargs)
        world.rollouts = rollouts
        return world

    with mock_aws():
        yield make


@pytest.fixture
def world(make_world) -> World:
    return make_world()


# --- deploying ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "tag"), [("qa", "qa-1.2.3"), ("prod", "release-2024.06")])
def test_push_registers_the_rendered_revision_pinned_in_every_region(world, make_event, capsys, env, tag):
    account = ENVIRONMENTS[env]
    other_account = PROD if env == "qa" else QA
    before = world.snapshot()
    originals = {r: world.service(account, r)["taskDefinition"] for r in REGIONS}
    capsys.readouterr()

    summary = pd.handler(make_event(tag=tag, digest=world.digest), None)

    assert summary["status"] == "succeeded" and summary["updated"] == 2 and summary["failed"] == 0
    ecs_ops = {"RegisterTaskDefinition", "UpdateService"}
    for region in REGIONS:
        ecs = world.ecs(account, region)
        new_arn = world.service(account, region)["taskDefinition"]
        new = ecs.describe_task_definition(taskDefinition=new_arn, include=["TAGS"])
        assert new_arn != originals[region] and new["taskDefinition"]["revision"] == 2
        (registered,) = world.recorder.ops("RegisterTaskDefinition", account=account, region=region)
        # Exactly the document's task definition (this environment's, this region's), only the image replaced,
        # tagged with the deployment: not a copy of what ran before.
        expected = rendered_task_definition(env, region)
        expected["containerDefinitions"][0]["image"] = f"{registry_uri(region, 'orders')}@{world.digest}"
        expected["tags"] = [*expected["tags"], {"key": "crossdeploy:deployment", "value": f"push-{EVENT_ID}"}]
        assert registered.params == expected
        td = new["taskDefinition"]
        assert (td["cpu"], td["memory"]) == ("1024", "2048")
        (app, sidecar) = td["containerDefinitions"]
        assert app["environment"] == [{"name": "MODE", "value": f"rendered-{env}"},
                                      {"name": "REGION", "value": region}]
        # Pinned by digest, on this region's replica (not the home region's, not a tag).
        assert app["image"] == f"{registry_uri(region, 'orders')}@{world.digest}"
        assert sidecar["image"] == "public.ecr.aws/envoy:1.30"
        (update,) = world.recorder.ops("UpdateService", account=account, region=region)
        assert update.params == {"cluster": "crossdeploy", "service": "orders", "taskDefinition": new_arn}
    # What AWS received: ECS writes in this environment's account only, two regions, once each.
    assert {(c.account, c.region) for c in world.recorder.calls if c.operation in ecs_ops} == {
        (account, r) for r in REGIONS}
    assert not [c for c in world.recorder.calls if c.account == other_account]
    # One role per environment, assumed once per invocation however many targets use it.
    assert world.recorder.assumed == [(role_arn(env), f"crossdeploy-push-{EVENT_ID}")]
    after = world.snapshot()
    assert all(after[(other_account, r)] == before[(other_account, r)] for r in REGIONS)

    records = logs(capsys)
    kinds = [r["event"] for r in records]
    assert sorted(kinds) == sorted(["replicated"] * 2 + ["deployment-start"] + ["registered"] * 2 + ["updated"] * 2
                                   + ["succeeded"] * 2 + ["deployment-outcome"] + ["summary"])
    for record in records:
        if record["event"] in ("replicated", "summary"):  # the push's own lines name the event and the image
            assert (record["eventId"], record["digest"], record["repository"], record["tag"]) == (
                EVENT_ID, world.digest, "orders", tag)
        elif record["event"] in ("registered", "updated", "succeeded"):  # the engine's name the target
            assert record["account"] == account and record["region"] in REGIONS
            assert (record["cluster"], record["service"], record["environment"]) == ("crossdeploy", "orders", env)
        if "deploymentId" in record:
            assert record["deploymentId"] == f"push-{EVENT_ID}"


def test_the_same_event_twice_deploys_once(world, make_event):
    event = make_event(digest=world.digest)
    first = pd.handler(event, None)
    after_first = world.snapshot()
    world.recorder.reset()

    second = pd.handler(event, None)

    assert (first["updated"], first["unchanged"]) == (2, 0)
    assert (second["status"], second["updated"], second["unchanged"]) == ("succeeded", 0, 2)
    assert not world.recorder.ops("RegisterTaskDefinition") and not world.recorder.ops("UpdateService")
    assert world.snapshot() == after_first


def test_a_rollout_ecs_rolls_back_in_one_region_restores_the_other(world, make_event, capsys):
    world.rollouts.script(PROD, OTHER, "orders", "IN_PROGRESS", "ROLLBACK_SUCCESSFUL")
    world.rollouts.script(PROD, HOME, "orders", "IN_PROGRESS", "IN_PROGRESS", "SUCCESSFUL")
    before = world.snapshot()

    with pytest.raises(pd.PushDeployFailed) as caught:
        pd.handler(make_event(tag="prod-3.0.0", digest=world.digest), None)

    message = str(caught.value)
    assert message.startswith(f"push orders:prod-3.0.0 ({world.digest}, event {EVENT_ID}): 1 of 2 target(s) failed: "
                              f"{PROD}/{OTHER} crossdeploy/orders: ECS rolled back the deployment "
                              "(ROLLBACK_SUCCESSFUL): ECS deployment circuit breaker")
    assert "Restored 2 changed target(s) to their previous revision" in message and "\n" not in message
    # Never half old, half new: both regions run what they ran before (a new revision exists, unused).
    after = world.snapshot()
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    # us-east-2 had finished meanwhile (StopServiceDeployment refused): put back with UpdateService(previous).
    assert [c.params["taskDefinition"] for c in world.recorder.ops("UpdateService", region=HOME)][1:] == [
        before[(PROD, HOME)][0]]
    summary = caught.value.summary
    assert (summary["status"], summary["failed"], summary["restored"]) == ("failed", 1, 2)
    assert {t["region"]: t["status"] for t in summary["targets"]} == {HOME: "restored", OTHER: "restored"}


def test_one_target_denied_restores_the_target_that_deployed(world, make_event, capsys):
    # The deploy role may update its services in us-east-2 but not in eu-west-1 (an SCP, or a region added to
    # the environment before the role's policy caught up): ECS refuses, and the region that did change goes back.
    def deny_in_other_region(request: Any, **_: Any) -> AWSResponse | None:
        if f"ecs.{OTHER}." in request.url:
            return error_response(request, 400, "AccessDeniedException", "not authorized to perform ecs:UpdateService")
        return None

    world.recorder.inject("before-send.ecs.UpdateService", deny_in_other_region)
    before = world.snapshot()
    capsys.readouterr()

    with pytest.raises(pd.PushDeployFailed) as caught:
        pd.handler(make_event(tag="prod-3.0.0", digest=world.digest), None)

    message = str(caught.value)
    assert f"1 of 2 target(s) failed: {PROD}/{OTHER} crossdeploy/orders: AccessDeniedException: " in message
    assert "Restored 1 changed target(s) to their previous revision" in message
    after = world.snapshot()
    assert after[(PROD, HOME)][0] == before[(PROD, HOME)][0]
    assert after[(PROD, OTHER)][0] == before[(PROD, OTHER)][0]
    summary = caught.value.summary
    assert (summary["failed"], summary["restored"], summary["updated"]) == (1, 1, 0)
    failed = [r for r in logs(capsys) if r["event"] == "target-failed"]
    assert [(r["account"], r["region"]) for r in failed] == [(PROD, OTHER)]
    assert failed[0]["newTaskDefinition"].endswith("task-definition/orders:2")  # the orphan is named


def test_deploy_role_refused_fails_every_target_of_that_account_and_touches_nothing(world, make_event):
    def refuse_qa_role(request: Any, **_: Any) -> AWSResponse | None:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        if parse_qs(body).get("RoleArn") == [role_arn("qa")]:
            return error_response(request, 403, "AccessDenied", "not authorized to perform sts:AssumeRole")
        return None

    world.recorder.inject("before-send.sts.AssumeRole", refuse_qa_role)
    before = world.snapshot()

    with pytest.raises(pd.PushDeployFailed) as caught:
        pd.handler(make_event(digest=world.digest), None)

    message = str(caught.value)
    assert "2 of 2 target(s) failed" in message
    for region in REGIONS:
        assert f"{QA}/{region} crossdeploy/orders: AccessDenied: assuming {role_arn('qa')}: " in message
    assert len(world.recorder.ops("AssumeRole")) == 1, "a refused role is asked once, not once per target"
    assert not [c for c in world.recorder.calls if c.service == "ecs"]
    assert world.snapshot() == before


def test_a_missing_service_fails_the_environment_and_the_other_region_goes_back(world, make_event):
    ecs = world.ecs(QA, OTHER)
    ecs.delete_service(cluster="crossdeploy", service="orders", force=True)
    original = world.service(QA, HOME)["taskDefinition"]

    with pytest.raises(pd.PushDeployFailed, match=f"{QA}/{OTHER} crossdeploy/orders: service not found or not "
                                                  "ACTIVE; nothing changed"):
        pd.handler(make_event(digest=world.digest), None)

    assert world.service(QA, HOME)["taskDefinition"] == original
    assert len(world.revisions(QA, OTHER)) == 1, "no revision registered for a service that cannot use it"


def test_a_deploy_document_the_engine_refuses_is_kept_for_a_retry_before_any_aws_call(make_event, targets_file,
                                                                                        no_aws):
    document = targets_map()
    broken = document["repositories"]["orders"]["deployDocument"]
    broken["environments"][0]["targets"][0]["taskDefinition"]["containerDefinitions"][0]["cpu"] = "lots"
    targets_file(document)

    with pytest.raises(pd.TargetsError, match=r"deployDocument: 1 problem\(s\): \$\.environments\[0\]\.targets\[0\]"
                                              r"\.taskDefinition"):
        pd.handler(make_event(), None)
    assert no_aws == []


def test_a_document_disagreeing_with_the_map_is_refused(make_event, targets_file, no_aws):
    document = targets_map()
    document["repositories"]["orders"]["deployDocument"]["environments"][0]["targets"][1]["service"] = "orders-v2"
    targets_file(document)

    with pytest.raises(pd.TargetsError, match="environment 'qa' deploys"):
        pd.handler(make_event(), None)
    assert no_aws == []


def test_throttling_is_absorbed_by_the_sdk_retry_mode(world, make_event, monkeypatch):
    throttles = {"RegisterTaskDefinition": 2, "UpdateService": 2}
    sent = {name: 0 for name in throttles}
    lock = threading.Lock()

    def throttle(operation: str, request: Any, **_: Any) -> AWSResponse | None:
        with lock:
            sent[operation] += 1
            if sent[operation] > throttles[operation]:
                return None  # on to moto
        return error_response(request, 400, "ThrottlingException", "Rate exceeded")

    for operation in throttles:
        world.recorder.inject(f"before-send.ecs.{operation}", functools.partial(throttle, operation))
    # Keep botocore's backoff computation, skip its sleep: the test proves the retries, not the waiting.
    delays: list[float] = []
    real_delay = botocore.retries.standard.ExponentialBackoff.delay_amount

    def no_sleep(self: Any, context: Any) -> float:
        delays.append(real_delay(self, context))
        return 0.0

    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", no_sleep)

    summary = pd.handler(make_event(digest=world.digest), None)

    assert summary["status"] == "succeeded" and summary["updated"] == 2
    # The handler asked twice per operation (once per target); the SDK sent each throttled request again.
    assert len(world.recorder.ops("RegisterTaskDefinition")) == 2 and len(world.recorder.ops("UpdateService")) == 2
    assert sent == {"RegisterTaskDefinition": 2 + 2, "UpdateService": 2 + 2}
    assert len(delays) == 4
    for region in REGIONS:
        assert world.service(QA, region)["taskDefinition"].endswith(":2")
        assert len(world.revisions(QA, region)) == 2, "a throttled registration is not registered twice"


# --- force mode --------------------------------------------------------------------------------------------------


def running_tasks(digests: list[str]):
    """ECS's view of the service's running tasks. moto starts no tasks for services (and its ListTasks ignores
    serviceName), so these two reads are answered here, in ECS's response shape, before moto sees them."""

    def answer(model: Any, **_: Any) -> tuple[AWSResponse, dict]:
        arns = [f"arn:aws:ecs:{HOME}:{QA}:task/legacy/{i:032x}" for i in range(len(digests))]
        ok = AWSResponse("https://ecs.amazonaws.com/", 200, {}, _Body(b""))
        if model.name == "ListTasks":
            return ok, {"taskArns": arns}
        return ok, {"failures": [], "tasks": [
            {"taskArn": arn, "lastStatus": "RUNNING", "containers": [
                {"name": "legacy", "image": registry_uri(HOME, "legacy") + ":qa", "imageDigest": digest}]}
            for arn, digest in zip(arns, digests, strict=True)]}

    return answer


@pytest.mark.parametrize(("tasks", "forced"), [
    (["old", "old"], True), ([], True), (["new", "old"], True), (["new", "new"], False)])
def test_force_mode_forces_a_deployment_unless_every_task_runs_the_digest(make_world, make_event, tasks, forced):
    world = make_world(force_services=True)
    digests = [world.digest if t == "new" else OTHER_DIGEST for t in tasks]
    hook = running_tasks(digests)
    world.recorder.first_hooks += [("before-call.ecs.ListTasks", hook), ("before-call.ecs.DescribeTasks", hook)]
    before = {r: world.service(QA, r, "legacy", "legacy") for r in REGIONS}

    summary = pd.handler(make_event(repository="legacy", digest=world.digest), None)

    assert summary["status"] == "succeeded" and summary["pushMode"] == "force"
    assert (summary["updated"], summary["unchanged"]) == ((2, 0) if forced else (0, 2))
    assert not world.recorder.ops("RegisterTaskDefinition") and not world.recorder.ops("DescribeTaskDefinition")
    updates = world.recorder.ops("UpdateService")
    assert len(updates) == (2 if forced else 0)
    for update in updates:
        assert update.params == {"cluster": "legacy", "service": "legacy", "forceNewDeployment": True}
    for listing in world.recorder.ops("ListTasks"):
        assert listing.params == {"cluster": "legacy", "serviceName": "legacy", "desiredStatus": "RUNNING"}
    assert len(world.recorder.ops("DescribeTasks")) == (2 if tasks else 0)
    for region in REGIONS:
        assert world.service(QA, region, "legacy", "legacy")["taskDefinition"] == before[region]["taskDefinition"]


# --- replication -------------------------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now, self.slept, self.lock = 1000.0, [], threading.Lock()

    def clock(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.slept.append(seconds)
            self.now += seconds


@pytest.mark.parametrize(("remaining", "budget"), [(None, 300), (90.0, 30)])
def test_replication_not_there_waits_bounded_then_deploys_nothing(
        make_world, make_event, targets_file, remaining, budget):
    world = make_world(replicate_to=(HOME,))  # eu-west-1's replica has not received the image yet
    fake = FakeTime()
    before = world.snapshot()

    with pytest.raises(pd.PushDeployFailed) as caught:
        pd.handle_push(make_event(digest=world.digest), pd.load_targets(targets_file()),
                       time_remaining_seconds=remaining, poll_interval_seconds=10, sleep=fake.sleep,
                       clock=fake.clock)

    message = str(caught.value)
    # An environment goes as one: with a region unable to pull the image, no region is changed.
    assert "the image is not on every replica of environment qa, nothing was deployed: " in message
    assert f"{OTHER}: ReplicationTimeout: " in message
    # Bounded: the configured timeout, or less when the invocation itself has less time left.
    assert sum(fake.slept) == budget and max(fake.slept) == 10
    polls = world.recorder.ops("DescribeImages", account=TOOLS, region=OTHER)
    assert len(polls) == budget // 10 + 1
    assert polls[0].params == {"registryId": TOOLS, "repositoryName": "orders",
                               "imageIds": [{"imageDigest": world.digest}]}
    assert not [c for c in world.recorder.calls if c.service == "ecs"]
    assert world.recorder.assumed == [], "no role is assumed until every replica is there"
    assert world.snapshot() == before


def test_the_engine_waits_the_environment_timeout_capped_by_the_invocation(make_world, make_event, targets_file,
                                                                           monkeypatch):
    world = make_world()
    seen: list[float] = []

    def start_all(targets: Any, **kwargs: Any) -> Any:  # what the engine is told; nothing deployed
        seen.append(kwargs["timeout_seconds"])
        return [pd.deploy_engine.TargetState(pd.deploy_engine.UNCHANGED) for _ in targets]

    monkeypatch.setattr(pd.deploy_engine, "start_all", start_all)
    targets, fake = pd.load_targets(targets_file()), FakeTime()
    pd.handle_push(make_event(digest=world.digest), targets, sleep=fake.sleep, clock=fake.clock)
    pd.handle_push(make_event(digest=world.digest), targets, time_remaining_seconds=400.0, sleep=fake.sleep,
                   clock=fake.clock)
    # The document's 900 s; then what the invocation has left, less the reserve for starting the restores.
    assert seen == [900.0, 400.0 - pd.ENGINE_RESERVE_SECONDS]


def test_lambda_context_bounds_the_wait(make_world, make_event, monkeypatch):
    world = make_world(replicate_to=(HOME,))
    seen: list[float] = []
    monkeypatch.setattr(pd, "wait_for_replication", lambda *args, **kwargs: seen.append(args[5]) or 0.0)

    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 100_000

    pd.handler(make_event(digest=world.digest), Context())
    assert seen == [40.0, 40.0]  # 100 s left, 60 s kept for the deployment itself


# --- refusals: one reason, no AWS call ------------------------------------------------------------------------


def _drop(*path: str):
    def mutate(event: dict) -> dict:
        target = event
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return event

    return mutate


def _set(path: tuple[str, ...], value: Any):
    def mutate(event: dict) -> dict:
        target = event
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return event

    return mutate


REFUSALS: dict[str, tuple[Any, str]] = {
    "not an object": (lambda e: [e], "malformed-event"),
    "null": (lambda e: None, "malformed-event"),
    "no id": (_drop("id"), "malformed-event"),
    "detail not an object": (_set(("detail",), "PUSH"), "malformed-event"),
    "no detail": (_drop("detail"), "malformed-event"),
    "digest missing": (_drop("detail", "image-digest"), "malformed-event"),
    "repository not a string": (_set(("detail", "repository-name"), ["orders"]), "malformed-event"),
    "tag not a string": (_set(("detail", "image-tag"), 123), "malformed-event"),
    "account not a string": (_set(("account",), int(TOOLS)), "malformed-event"),
    "another source": (_set(("source",), "aws.s3"), "not-an-ecr-image-action"),
    "another detail-type": (_set(("detail-type",), "ECR Image Scan"), "not-an-ecr-image-action"),
    "delete": (_set(("detail", "action-type"), "DELETE"), "not-a-push"),
    "failed push": (_set(("detail", "result"), "FAILURE"), "push-not-successful"),
    "foreign account": (_set(("account",), QA), "foreign-account"),
    "foreign region": (_set(("region",), OTHER), "foreign-region"),
    "foreign repository": (_set(("detail", "repository-name"), "payments"), "unconfigured-repository"),
    "the sample's own digest": (None, "bad-digest"),  # AWS's sample digest is 60 hex digits
    "upper-case digest": (_set(("detail", "image-digest"), "sha256:" + "AB" * 32), "bad-digest"),
    "sha512 digest": (_set(("detail", "image-digest"), "sha512:" + "a" * 64), "bad-digest"),
    "untagged push": (_drop("detail", "image-tag"), "untagged-push"),
    "tag of no environment": (_set(("detail", "image-tag"), "dev-1.2.3"), "tag-matches-no-environment"),
    "tag without the dash": (_set(("detail", "image-tag"), "qa"), "tag-matches-no-environment"),
    "latest": (_set(("detail", "image-tag"), "latest"), "tag-matches-no-environment"),
}


@pytest.fixture
def no_aws(monkeypatch):
    """Any AWS call anywhere fails the test: no credentials, no session, and every client call intercepted."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    attempts: list[str] = []

    def forbidden(self: Any, operation_name: str, api_params: dict) -> None:
        attempts.append(operation_name)
        raise AssertionError(f"AWS call {operation_name} during a refusal")

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", forbidden)
    monkeypatch.setattr(pd, "_base_session", lambda: attempts.append("session") or boto3.Session())
    return attempts


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refusals_log_one_reason_and_call_nothing(case, sample_event, make_event, targets_file, no_aws, capsys):
    mutate, reason = REFUSALS[case]
    event = copy.deepcopy(sample_event) if mutate is None else mutate(make_event())
    if mutate is None:
        event.update(account=TOOLS, region=HOME)
        event["detail"].update({"repository-name": "orders", "image-tag": "qa-1"})

    answer = pd.handler(event, None)

    assert answer["status"] == "ignored" and answer["reason"] == reason and answer["message"]
    assert no_aws == []
    (record,) = logs(capsys)
    assert record["event"] == "refused" and record["reason"] == reason and record["message"] == answer["message"]
    if isinstance(event, dict) and "id" in event:
        assert record["eventId"] == EVENT_ID


def test_a_tag_mapping_to_two_environments_is_not_deployed_anywhere(make_event, targets_file, no_aws):
    document = targets_map()
    for target in document["repositories"]["orders"]["targets"]:
        target["tagPatterns"] = ["*-1.2.3"] if target["environment"] == "prod" else ["qa-*"]
    targets_file(document)

    with pytest.raises(pd.ConfigurationError, match=r"matches environments \['prod', 'qa'\]"):
        pd.handler(make_event(tag="qa-1.2.3"), None)
    assert no_aws == []


# --- the target map ----------------------------------------------------------------------------------------------


BRIEF_EXAMPLE = {
    "version": 2, "registryId": "111111111111", "homeRegion": "us-east-2", "partition": "aws",
    "replicationTimeoutSeconds": 300, "maxConcurrency": 8,
    "repositories": {"orders": {"pushMode": "revision", "containerName": "orders", "targets": [
        {"environment": "qa", "tagPatterns": ["qa-*"], "accountId": "444455556666", "region": "us-east-2",
         "cluster": "crossdeploy", "service": "orders",
         "roleArn": "arn:aws:iam::444455556666:role/crossdeploy/dev/deploy/crossdeploy-dev-deploy"}],
        # Read by the deploy engine when a push needs it (tests/test_deploy_engine.py covers its validation).
        "deployDocument": {"version": 1, "service": "orders", "environments": []}}},
}


def test_the_documented_map_loads(tmp_path):
    path = tmp_path / "targets.json"
    path.write_text(json.dumps(BRIEF_EXAMPLE))
    targets = pd.load_targets(path)
    assert (targets.registry_id, targets.home_region, targets.dns_suffix) == ("111111111111", HOME, "amazonaws.com")
    (target,) = targets.repositories["orders"].targets
    assert target == pd.Target("qa", ("qa-*",), QA, HOME, "crossdeploy", "orders",
                               BRIEF_EXAMPLE["repositories"]["orders"]["targets"][0]["roleArn"])
    assert pd.parse_targets({**BRIEF_EXAMPLE, "partition": "aws-cn"} | {"repositories": {"orders": {
        **BRIEF_EXAMPLE["repositories"]["orders"], "targets": [{
            **BRIEF_EXAMPLE["repositories"]["orders"]["targets"][0],
            "roleArn": "arn:aws-cn:iam::444455556666:role/deploy"}]}}}).dns_suffix == "amazonaws.com.cn"


def _map(**changes: Any) -> dict:
    document = copy.deepcopy(BRIEF_EXAMPLE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = document
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return document


TARGET = "repositories__orders__targets__0"
BAD_MAPS = {
    "not an object": ([], "expected a JSON object"),
    "another version": (_map(version=1), "this handler reads version 2, got 1"),
    "no version": (_map(version=KeyError), "this handler reads version 2, got None"),
    "unknown key": (_map(regions=["us-east-2"]), "$: unknown key 'regions'"),
    "missing key": (_map(homeRegion=KeyError), "$: missing key 'homeRegion'"),
    "numeric account": (_map(registryId=111111111111), "$.registryId: expected a 12-digit account id string"),
    "bad region": (_map(homeRegion="US-EAST-2"), "$.homeRegion: expected a region name"),
    "unknown partition": (_map(partition="aws-moon"), "$.partition: unknown partition 'aws-moon'"),
    "bool concurrency": (_map(maxConcurrency=True), "$.maxConcurrency: expected an integer from 1 to 64"),
    "zero concurrency": (_map(maxConcurrency=0), "$.maxConcurrency: expected an integer from 1 to 64"),
    "timeout over Lambda's": (_map(replicationTimeoutSeconds=901), "expected an integer from 0 to 900"),
    "no repositories": (_map(repositories={}), "$.repositories: expected a non-empty object"),
    "bad repository name": (_map(repositories={"Orders": BRIEF_EXAMPLE["repositories"]["orders"]}),
                            "not an ECR repository name"),
    "bad push mode": (_map(repositories__orders__pushMode="rolling"),
                      "pushMode: expected one of ['revision', 'force'], got 'rolling'"),
    "no targets": (_map(repositories__orders__targets=[]), "targets: expected a non-empty list"),
    "revision without a document": (_map(repositories__orders__deployDocument=None),
                                    "deployDocument: expected the service's deploy document (an object) for pushMode "
                                    "revision, got null"),
    "no document key": (_map(repositories__orders__deployDocument=KeyError), "missing key 'deployDocument'"),
    "force with a document": (_map(repositories__orders__pushMode="force"),
                              "deployDocument: must be null for pushMode force"),
    "target not an object": (_map(repositories__orders__targets=["qa"]), "targets[0]: expected an object"),
    "unknown target key": (_map(**{f"{TARGET}__regions": ["x"]}), "targets[0]: unknown key 'regions'"),
    "empty patterns": (_map(**{f"{TARGET}__tagPatterns": []}), "tagPatterns: expected a non-empty list"),
    "pattern with a space": (_map(**{f"{TARGET}__tagPatterns": ["qa *"]}), "tagPatterns: expected"),
    "pattern as a string": (_map(**{f"{TARGET}__tagPatterns": "qa-*"}), "tagPatterns: expected"),
    "duplicate patterns": (_map(**{f"{TARGET}__tagPatterns": ["qa-*", "qa-*"]}), "duplicate patterns"),
    "bad environment": (_map(**{f"{TARGET}__environment": "QA"}), "environment: expected an environment name"),
    "bad cluster": (_map(**{f"{TARGET}__cluster": "my cluster"}), "cluster: expected an ECS cluster name"),
    "role in another account": (_map(**{f"{TARGET}__roleArn": "arn:aws:iam::999999999999:role/deploy"}),
                                "role is in account 999999999999, the target in 444455556666"),
    "role in another partition": (_map(**{f"{TARGET}__roleArn": "arn:aws-cn:iam::444455556666:role/deploy"}),
                                  "role is in partition aws-cn, the map in aws"),
    "not a role": (_map(**{f"{TARGET}__roleArn": "arn:aws:iam::444455556666:user/deploy"}),
                   "roleArn: expected an IAM role ARN"),
    "same service twice": (_map(repositories__orders__targets=BRIEF_EXAMPLE["repositories"]["orders"]["targets"] * 2),
                           "targets[1]: same account, region, cluster and service as targets[0]"),
}


@pytest.mark.parametrize("case", BAD_MAPS, ids=list(BAD_MAPS))
def test_malformed_maps_are_rejected_with_the_path_to_the_problem(case):
    document, expected = BAD_MAPS[case]
    with pytest.raises(pd.TargetsError) as caught:
        pd.parse_targets(document)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_problem_is_named_at_once():
    with pytest.raises(pd.TargetsError, match="3 problem") as caught:
        pd.parse_targets(_map(registryId="1", maxConcurrency=100, **{f"{TARGET}__region": "nowhere"}))
    assert all(part in str(caught.value) for part in ("registryId", "maxConcurrency", "targets[0].region"))


def test_missing_or_broken_files_and_overrides(tmp_path, make_event, targets_file, monkeypatch):
    with pytest.raises(pd.TargetsError, match="not found"):
        pd.load_targets(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(pd.TargetsError, match="not readable JSON"):
        pd.load_targets(tmp_path / "broken.json")
    monkeypatch.setenv(pd.MAX_CONCURRENCY_ENV, "lots")
    with pytest.raises(pd.TargetsError, match="CROSSDEPLOY_MAX_CONCURRENCY: expected an integer from 1 to 64"):
        pd.handler(make_event(), None)  # raised, not ignored: the event is fine, the deployment is not


def test_default_map_location_is_the_package_root():
    assert pd.DEFAULT_TARGETS_FILE.name == "targets.json"
    assert pd.DEFAULT_TARGETS_FILE.parent == pd.Path(pd.__file__).resolve().parents[1]


# --- tag patterns ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "tag", "expected"), [
    ("qa-*", "qa-1.8.0", True),
    ("qa-*", "qa-", True),  # '*' also matches nothing
    ("qa-*", "qa", False),
    ("qa-*", "prod-qa-1", False),  # anchored at both ends
    ("*-rc*", "1.2-rc3", True),
    ("*-rc*", "1.2-rc", True),
    ("release-*-eu", "release-2024.06-eu", True),
    ("release-*-eu", "release-2024.06-eu2", False),
    ("a*b*a", "aba", True),
    ("a*b*a", "ab", False),  # prefix and suffix may not overlap
    ("a*a", "a", False),
    ("*", "anything", True),
    ("latest", "latest", True),
    ("latest", "latest2", False),
    ("qa.?", "qa.1", False),  # '?' is literal
    ("qa.?", "qa.?", True),
    ("qa.[12]", "qa.1", False),  # so are brackets and dots
    ("qa-1.*", "qa-1x2", False),
    ("**", "", True),
])
def test_tag_matches(pattern, tag, expected):
    assert pd.tag_matches(pattern, tag) is expected


def test_session_names_fit_sts():
    assert pd.session_name(EVENT_ID) == f"crossdeploy-push-{EVENT_ID}"
    long = pd.session_name("x" * 100 + " /:")
    assert len(long) == 64 and set(long) <= set("crossdeploy-push-x")
