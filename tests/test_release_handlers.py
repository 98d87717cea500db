"""Release handlers against moto, through the real state machine (tests/asl_runner.py).

The world: a tools account (moto's default account: registry replicated to every region, release topic) and two
workload accounts by two regions, reached only through their deploy roles (``assumed_session``), each with an ECS
cluster of services whose task definitions carry every field a real one does, and an EventBridge rule whose ECS
target runs a scheduled task.

moto keeps a service's creation-time deployment forever (UpdateService changes ``taskDefinition`` but not
``deployments``), so :class:`Rollouts` layers ECS's own rollout semantics on top: UpdateService starts a new PRIMARY
deployment that completes (or fails, or is rolled back by the circuit breaker, or never settles) a few
DescribeServices later. ``checkService`` is written against real ECS and only sees moto through that.

Rolling services go through the deploy engine, which registers the task definition of the service's deploy document
(a zip with ``deploy.json`` in the versioned config bucket, listed in the release context's ``services``) and follows
ECS's service deployments: moto has none, so :mod:`ecs_service_deployments` adds them to moto's ECS, each
deployment's status read from :class:`Rollouts` (:meth:`Rollouts.deployment_status`).

Blue/green services (CODE_DEPLOY deployment controller) are deployed through CodeDeploy. moto stores CodeDeploy
deployments but never runs them, so :class:`BlueGreenDeployments` runs them (CreateDeployment -> InProgress ->
Succeeded, the service then serving the AppSpec's task definition; or Failed), and :class:`Rollouts` refuses
UpdateService with a new task definition on such a service, as ECS does. moto has no StopDeployment: the tests that
need it stub the codedeploy client alone with botocore's Stubber (which still validates every parameter).
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib
import io
import json
import os
import re
import tempfile
import threading
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.endpoint
import botocore.handlers
import botocore.loaders
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from moto import mock_aws
from moto.codedeploy import responses as codedeploy_responses
from moto.codedeploy.exceptions import CodeDeployException
from moto.codedeploy.models import CodeDeployBackend
from moto.core.botocore_stubber import MockRawResponse
from moto.core.models import botocore_stubber as moto_stubber
from moto.ecs.exceptions import InvalidParameterException
from moto.ecs.models import EC2ContainerServiceBackend, ecs_backends
from moto.iam.models import get_account_id_from

from components.release_state_machine import definition, lambda_functions
from handlers import release, release_limits
from handlers.ecs_common import assumed_session
from tests.asl_runner import Execution, Runner, spend
from tests.asl_runner import now as virtual_now
from tests.ecs_service_deployments import Deployment, ServiceDeployments

TOOLS = "123456789012"  # moto's default account plays the tools account (registry, topic, state machine)
ACCOUNTS = ("444455556666", "777788889999")
REGIONS = ("us-east-2", "eu-west-1")
HOME = "us-east-2"
CLUSTER = "crossdeploy"
REPOSITORIES = ("team/orders", "team/payments", "team/search", "batch/cleanup")
ROLE_PATH = "/crossdeploy/prod/deploy/"
CONFIG_BUCKET = "crossdeploy-deploy-config"
RELEASE_BUCKET = "crossdeploy-artifacts"  # the artifact store: the release's items files and Map Run results
ENVIRONMENT_OF = {ACCOUNTS[0]: "qa", ACCOUNTS[1]: "prod"}
REGION_NAME = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d")


def _manifest_json(repository: str, tag: str) -> str:
    # moto derives the digest from the manifest; the same manifest in every region = ECR replication's same digest.
    seed = f"{repository}:{tag}".encode().hex()[:64].ljust(64, "0")
    return json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                   "digest": "sha256:" + seed},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1,
                    "digest": "sha256:" + seed[::-1]}],
    })


def task_definition(family: str, account: str, region: str, image: str, sidecar: bool) -> dict[str, Any]:
    """A task definition with the fields real ones carry (roles, sizing, platform, storage, secrets, logs…)."""
    containers = [{
        "name": "app", "image": image, "essential": True, "cpu": 256, "memory": 512,
        "portMappings": [{"containerPort": 8080, "protocol": "tcp", "name": "http"}],
        "environment": [{"name": "MODE", "value": "prod"}, {"name": "FAMILY", "value": family}],
        "secrets": [{"name": "DB", "valueFrom": f"arn:aws:secretsmanager:{region}:{account}:secret:{family}-db"}],
        "healthCheck": {"command": ["CMD-SHELL", "curl -f localhost:8080/health"], "interval": 30, "retries": 3},
        "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": f"/ecs/{family}",
                                                                 "awslogs-region": region}},
        "mountPoints": [{"sourceVolume": "scratch", "containerPath": "/tmp"}],
        "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 4096}],
    }]
    if sidecar:
        containers.append({"name": "envoy", "image": "public.ecr.aws/appmesh/aws-appmesh-envoy:v1.29", "cpu": 128,
                           "memory": 256, "essential": False, "user": "1337"})
    return {
        "family": family,
        "taskRoleArn": f"arn:aws:iam::{account}:role/{family}-task",
        "executionRoleArn": f"arn:aws:iam::{account}:role/{family}-exec",
        "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "512", "memory": "1024",
        "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
        "ephemeralStorage": {"sizeInGiB": 30}, "volumes": [{"name": "scratch"}],
        "containerDefinitions": containers, "tags": [{"key": "team", "value": family}],
    }


def rendered_task_definition(family: str, account: str, region: str, repository: str, sidecar: bool) -> dict:
    """What `pulumi up` rendered for the service (its deploy document): what the release registers, not a copy of
    what runs (another memory size, another environment variable, the bootstrap image)."""
    td = task_definition(family, account, region, f"{TOOLS}.dkr.ecr.{region}.amazonaws.com/{repository}:latest",
                         sidecar)
    td["memory"] = "2048"
    td["containerDefinitions"][0]["environment"].append({"name": "RENDERED", "value": f"{account}/{region}"})
    return td


def add_document_target(world: World, name: str, account: str, region: str, spec: dict | None) -> None:
    document = world.documents.setdefault(name, {"version": 1, "service": name, "environments": []})
    environment = next((e for e in document["environments"] if e["name"] == ENVIRONMENT_OF[account]), None)
    if environment is None:
        environment = {"name": ENVIRONMENT_OF[account], "strategy": "rolling", "timeoutSeconds": 900, "targets": []}
        document["environments"].append(environment)
    environment["targets"].append({
        "accountId": account, "region": region,
        "roleArn": f"arn:aws:iam::{account}:role{ROLE_PATH}crossdeploy-prod-deploy", "cluster": CLUSTER,
        "service": name, "container": "app", "taskDefinition": spec})


class Patcher:
    """monkeypatch.setattr for scripts (the benchmark): undo() restores everything."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def setattr(self, target: Any, name: str, value: Any) -> None:
        self._undo.append((target, name, getattr(target, name)))
        setattr(target, name, value)

    def undo(self) -> None:
        while self._undo:
            target, name, value = self._undo.pop()
            setattr(target, name, value)


class Rollouts:
    """ECS rollout semantics over moto. ``outcome[service ARN]``: ``fail`` (rollout FAILED, service left on the
    new revision), ``circuit-breaker`` (FAILED, and ECS puts the service back on the previous revision), ``stuck``
    (never settles). Putting a service back on its original revision always succeeds."""

    def __init__(self, setattr_: Callable[[Any, str, Any], None], polls: int = 1,
                 seconds: float | None = None) -> None:
        self.polls = polls
        # With ``seconds``: a rollout completes that long after it started, in the ASL runner's virtual time (the
        # benchmark's rollouts of a few minutes), instead of after ``polls`` looks.
        self.seconds = seconds
        self.outcome: dict[str, str] = {}
        self.updates: list[tuple[str, str]] = []
        self._original: dict[str, str] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        update, describe = EC2ContainerServiceBackend.update_service, EC2ContainerServiceBackend.describe_services
        rollouts = self

        def update_service(backend: Any, props: dict[str, Any]) -> Any:
            cluster, name = props.get("cluster", "default"), props["service"].split("/")[-1]
            new = props.get("task_definition")
            current = backend._get_service(cluster, name)
            before = current.task_definition
            if new and new != before and current.deployment_controller.get("type") == "CODE_DEPLOY":
                # ECS refuses this (moto would not): a blue/green service changes task definition through CodeDeploy.
                raise InvalidParameterException("Unable to update task definition on services with a CODE_DEPLOY "
                                                "deployment controller. Use AWS CodeDeploy to deploy a new task "
                                                "definition.")
            service = update(backend, props)
            if new and new != before:
                rollouts._start(service, before, new)
            return service

        def describe_services(backend: Any, cluster: str, names: list[str]) -> Any:
            found, failures = describe(backend, cluster, names)
            for service in found:
                rollouts._progress(service)
            return found, failures

        setattr_(EC2ContainerServiceBackend, "update_service", update_service)
        setattr_(EC2ContainerServiceBackend, "describe_services", describe_services)

    def deployment_status(self, deployment: Deployment) -> str:
        """ECS's service deployment status of ``deployment``, from the rollout modelled here: on its revision, the
        primary's rolloutState (COMPLETED: SUCCESSFUL, FAILED: ROLLBACK_FAILED); moved off it, rolled back."""
        service = ecs_backends[deployment.account][deployment.region]._get_service(deployment.cluster,
                                                                                   deployment.service)
        self._progress(service)
        primary = next((d for d in service.deployments if d.get("status") == "PRIMARY"), {})
        if service.task_definition == deployment.task_definition:
            return {"COMPLETED": "SUCCESSFUL", "FAILED": "ROLLBACK_FAILED"}.get(primary.get("rolloutState"),
                                                                                 "IN_PROGRESS")
        return "ROLLBACK_SUCCESSFUL" if primary.get("rolloutState") == "COMPLETED" else "ROLLBACK_IN_PROGRESS"

    @staticmethod
    def _deployment(status: str, task_definition: str, rollout: str, running: int, desired: int) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        return {"id": f"ecs-svc/{abs(hash((task_definition, now))) % 10**18}", "status": status,
                "taskDefinition": task_definition, "desiredCount": desired, "pendingCount": desired - running,
                "runningCount": running, "failedTasks": 0, "createdAt": now, "updatedAt": now,
                "launchType": "FARGATE", "rolloutState": rollout, "rolloutStateReason": f"ECS deployment {rollout}"}

    def _start(self, service: Any, old: str, new: str) -> None:
        with self._lock:
            self.updates.append((service.arn, new))
            self._original.setdefault(service.arn, old)
            desired = service.desired_count
            service.deployments = [self._deployment("PRIMARY", new, "IN_PROGRESS", 0, desired),
                                   self._deployment("ACTIVE", old, "COMPLETED", desired, desired)]
            outcome = "ok" if new == self._original[service.arn] else self.outcome.get(service.arn, "ok")
            self._pending[service.arn] = {"left": self.polls, "old": old, "new": new, "outcome": outcome,
                                          "started": virtual_now()}

    def _progress(self, service: Any) -> None:
        with self._lock:
            pending = self._pending.get(service.arn)
            if pending is None or pending["outcome"] == "stuck":
                return
            if self.seconds is not None:
                now = virtual_now()
                if now is None or pending.get("started") is None or \
                        (now - pending["started"]).total_seconds() < self.seconds:
                    return
            elif pending["left"] > 0:
                pending["left"] -= 1
                return
            del self._pending[service.arn]
            desired = service.desired_count
            if pending["outcome"] == "ok":
                service.deployments = [self._deployment("PRIMARY", pending["new"], "COMPLETED", desired, desired)]
            elif pending["outcome"] == "fail":
                service.deployments[0]["rolloutState"] = "FAILED"
                service.deployments[0]["rolloutStateReason"] = "ECS deployment circuit breaker: tasks failed to start."
            else:  # circuit-breaker: ECS rolls back to the last completed deployment by itself
                service.task_definition = pending["old"]
                failed = self._deployment("ACTIVE", pending["new"], "FAILED", 0, desired)
                service.deployments = [self._deployment("PRIMARY", pending["old"], "IN_PROGRESS", 0, desired), failed]
                self._pending[service.arn] = {"left": self.polls, "old": pending["new"], "new": pending["old"],
                                              "outcome": "ok"}


ACTIVE_DEPLOYMENT = ("Created", "Queued", "InProgress", "Baking", "Ready")


class BlueGreenDeployments:
    """CodeDeploy's ECS blue/green semantics over moto, which stores deployments but never runs them.

    A deployment is Created, then InProgress, and after ``polls`` more GetDeployment calls it ends by
    ``outcome[deployment group name]``: ``ok`` (default: Succeeded, and the service serves the AppSpec's task
    definition, as after CodeDeploy's traffic shift), ``fail`` (Failed before the shift: CodeDeploy's automatic
    rollback leaves the service on its original task definition), ``fail-shifted`` (Failed after the shift, not
    rolled back: the service is left on the new task definition) or ``stuck`` (never ends). A deployment back to the
    service's original task definition succeeds, unless ``rollback_outcome[group]`` is ``fail``. As CodeDeploy, one
    deployment at a time per group (DeploymentLimitExceededException). ``created``: every CreateDeployment as moto
    received it (after botocore validated it), with its AppSpec parsed back."""

    def __init__(self, setattr_: Callable[[Any, str, Any], None], polls: int = 1) -> None:
        self.polls = polls
        self.outcome: dict[str, str] = {}
        self.rollback_outcome: dict[str, str] = {}  # group -> "fail": a deployment back to the original fails too
        self.created: list[dict[str, Any]] = []
        self.errors: dict[str, dict[str, str]] = {}  # deployment id -> errorInformation
        self._original: dict[tuple[str, ...], str] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        create, get, render = (CodeDeployBackend.create_deployment, CodeDeployBackend.get_deployment,
                               codedeploy_responses._deployment_info)
        layer = self

        def create_deployment(backend: Any, application_name: str, deployment_group_name: str,
                              revision: dict[str, Any], **kwargs: Any) -> str:
            with layer._lock:
                busy = [d.deployment_id for d in backend.deployments.values() if d.status in ACTIVE_DEPLOYMENT
                        and (d.application_name, d.deployment_group_name) == (application_name, deployment_group_name)]
                if busy:
                    raise CodeDeployException("DeploymentLimitExceededException", f"The Deployment Group "
                                              f"'{deployment_group_name}' already has an active Deployment '{busy[0]}'")
                deployment_id = create(backend, application_name, deployment_group_name, revision, **kwargs)
                layer._start(backend, backend.deployments[deployment_id])
                return deployment_id

        def get_deployment(backend: Any, deployment_id: str) -> Any:
            deployment = get(backend, deployment_id)
            layer._progress(backend, deployment)
            return deployment

        def deployment_info(deployment: Any) -> dict[str, Any]:
            return {**render(deployment), "errorInformation": layer.errors.get(deployment.deployment_id, {})}

        setattr_(CodeDeployBackend, "create_deployment", create_deployment)
        setattr_(CodeDeployBackend, "get_deployment", get_deployment)
        setattr_(codedeploy_responses, "_deployment_info", deployment_info)

    def _service(self, backend: Any, deployment: Any) -> Any:
        [target] = deployment.deployment_group.ecs_services
        return ecs_backends[backend.account_id][backend.region_name]._get_service(target["clusterName"],
                                                                                   target["serviceName"])

    def _start(self, backend: Any, deployment: Any) -> None:
        appspec = json.loads(deployment.revision["appSpecContent"]["content"])
        task_definition = appspec["Resources"][0]["TargetService"]["Properties"]["TaskDefinition"]
        service = self._service(backend, deployment)
        original = self._original.setdefault((backend.account_id, backend.region_name, service.arn),
                                             service.task_definition)
        self.created.append({"id": deployment.deployment_id, "account": backend.account_id,
                             "region": backend.region_name, "application": deployment.application_name,
                             "group": deployment.deployment_group_name, "description": deployment.description,
                             "revision": deployment.revision, "appspec": appspec})
        group = deployment.deployment_group_name
        outcome = self.rollback_outcome if task_definition == original else self.outcome
        self._pending[deployment.deployment_id] = {"left": self.polls, "target": task_definition,
                                                   "outcome": outcome.get(group, "ok")}

    def _progress(self, backend: Any, deployment: Any) -> None:
        with self._lock:
            pending = self._pending.get(deployment.deployment_id)
            if pending is None or deployment.status not in ACTIVE_DEPLOYMENT:
                return
            deployment.status = "InProgress"
            if pending["outcome"] == "stuck" or pending["left"] > 0:
                pending["left"] -= 1
                return
            del self._pending[deployment.deployment_id]
            service = self._service(backend, deployment)
            if pending["outcome"] == "ok":
                deployment.status = "Succeeded"
                service.task_definition = pending["target"]
            elif pending["outcome"] == "fail":
                deployment.status = "Failed"
                self.errors[deployment.deployment_id] = {
                    "code": "ECS_UPDATE_ERROR", "message": "The ECS service replacement task set did not become "
                    "healthy; CodeDeploy rolled it back"}
            else:  # fail-shifted: the alarm fired after the traffic shift, and nothing rolled it back
                deployment.status = "Failed"
                service.task_definition = pending["target"]
                self.errors[deployment.deployment_id] = {
                    "code": "ALARM_ACTIVE", "message": "One or more alarms have been activated according to the "
                    "Amazon CloudWatch metrics you selected"}


class Faults:
    """Faults at the SDK's ``before-send`` step, for every client created from now on.

    botocore runs *every* before-send handler and takes the first response, so a hook registered next to moto's
    would not stop moto from carrying the request out (a throttled RegisterTaskDefinition would still register).
    This wraps moto's own handler instead: a faulted request never reaches moto, as a throttled one never reaches
    ECS."""

    def __init__(self, setattr_: Callable[[Any, str, Any], None]) -> None:
        self.throttle_every = 0  # throttle every Nth request of each operation (0: never)
        # Only requests to this (account, region): ECS throttles each account-region on its own.
        self.throttle_scope: tuple[str, str] | None = None
        self.fail: Callable[[str, dict], str | None] | None = None  # (operation, JSON body) -> error code or None
        self.requests = 0
        self.calls: Counter = Counter()  # operation -> requests seen (retries included)
        self.throttled: Counter = Counter()
        self.failed: Counter = Counter()
        self._lock = threading.Lock()
        self._moto = moto_stubber

        def before_send(request: Any, **kwargs: Any) -> AWSResponse | None:
            return self._before_send(request, **kwargs)
        handlers = list(botocore.handlers.BUILTIN_HANDLERS)  # (event, handler[, register_first|last])
        handlers[[spec[1] for spec in handlers].index(moto_stubber)] = ("before-send", before_send)
        setattr_(botocore.handlers, "BUILTIN_HANDLERS", handlers)

    def _before_send(self, request: Any, **_: Any) -> AWSResponse | None:
        target = request.headers.get("X-Amz-Target", b"")
        target = target.decode() if isinstance(target, bytes) else target
        json_protocol = bool(target)
        body = request.body or b""
        body = body.decode() if isinstance(body, bytes) else body
        # before-send.<service>.<Operation>; S3's streamed bodies are not strings.
        operation = str(_.get("event_name", "")).rsplit(".", 1)[-1] or (
            target.rsplit(".", 1)[-1] if json_protocol else dict(
                p.split("=", 1) for p in str(body).split("&") if "=" in p).get("Action", "?"))
        with self._lock:
            self.requests += 1
            self.calls[operation] += 1
            # Every Nth request *of each operation*: the Map's threads interleave operations differently from run
            # to run, so a count over all requests would throttle a different mix each time.
            in_scope = self.throttle_scope is None or self._where(request) == self.throttle_scope
            throttle = bool(self.throttle_every) and in_scope and self.calls[operation] % self.throttle_every == 0
        if throttle:
            with self._lock:
                self.throttled[operation] += 1
            return self._error(request, json_protocol, "ThrottlingException" if json_protocol else "Throttling",
                               "Rate exceeded")
        if self.fail is not None and json_protocol:
            code = self.fail(operation, json.loads(body or "{}"))
            if code:
                with self._lock:
                    self.failed[operation] += 1
                return self._error(request, True, code, "injected by the test")
        return self._moto(request=request, **_)

    @staticmethod
    def _where(request: Any) -> tuple[str, str]:
        """(account, region) a signed request goes to: the region from its host, the account from the access key
        it was signed with (moto knows which account each assumed role's key belongs to)."""
        auth = request.headers.get("Authorization", b"")
        auth = auth.decode() if isinstance(auth, bytes) else str(auth)
        key = auth.split("Credential=", 1)[-1].split("/", 1)[0]
        host = str(request.url).split("//", 1)[-1].split("/", 1)[0]
        region = next((part for part in host.split(".") if REGION_NAME.fullmatch(part)), "")
        return get_account_id_from(key), region

    @staticmethod
    def _error(request: Any, json_protocol: bool, code: str, message: str) -> AWSResponse:
        if json_protocol:
            body = json.dumps({"__type": code, "message": message})
            headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "fault"}
        else:
            body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>"
                    "</Error><RequestId>fault</RequestId></ErrorResponse>")
            headers = {"Content-Type": "text/xml", "x-amzn-RequestId": "fault"}
        return AWSResponse(request.url, 400, headers, MockRawResponse(body))


@dataclass
class World:
    """Accounts, regions, services and scheduled tasks, plus the manifest that releases them all."""

    base: boto3.Session
    services: list[dict] = field(default_factory=list)
    tasks: list[dict] = field(default_factory=list)
    topic_arn: str = ""
    queue_url: str = ""
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    """ECS service name -> its deploy document, as ``pulumi up`` renders it (published by :meth:`publish`)."""
    _admins: dict[str, boto3.Session] = field(default_factory=dict)
    _clients: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    _published: dict[str, str] = field(default_factory=dict)

    def admin(self, account: str) -> boto3.Session:
        """An administrator session in a workload account (what the tests use to set up and inspect)."""
        if account not in self._admins:
            self._admins[account] = assumed_session(
                self.base, f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole", "crossdeploy-test")
        return self._admins[account]

    def client(self, service: str, account: str | None = None, region: str = HOME) -> Any:
        """A client in a workload account, or in the tools account (``account`` None)."""
        key = (service, account or TOOLS, region)
        if key not in self._clients:  # building a client loads its service model: once per test is plenty
            session = self.admin(account) if account else self.base
            self._clients[key] = session.client(service, region_name=region)
        return self._clients[key]

    def ecs(self, account: str, region: str) -> Any:
        return self.client("ecs", account, region)

    def events(self, account: str, region: str) -> Any:
        return self.client("events", account, region)

    def publish(self) -> None:
        """What `pulumi up` writes: each service's document (a zip with deploy.json) in the versioned config bucket,
        and the release context's ``services`` map in the step Lambdas' package (here: a file they are told of)."""
        s3 = self.client("s3")
        for name, document in self.documents.items():
            text = json.dumps(document, sort_keys=True)
            if self._published.get(name) == text:
                continue
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                archive.writestr("deploy.json", text)
            s3.put_object(Bucket=CONFIG_BUCKET, Key=f"services/{name}/deploy.zip", Body=buffer.getvalue())
            self._published[name] = text
        services = {f"{CLUSTER}/{e['service']}": f"services/{e['service']}/deploy.zip" for e in self.services}
        handle, path = tempfile.mkstemp(prefix="release-context-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump({"services": services}, out)
        os.environ["CROSSDEPLOY_CONTEXT_FILE"] = path  # configure() set it through the test's monkeypatch

    def manifest(self, tag: str = "2.0.0") -> dict[str, Any]:
        self.publish()

        def entry(e: dict) -> dict:
            out = {k: v for k, v in e.items() if not k.startswith("_")}
            out["image"] = {**out["image"], "tag": tag}
            return out
        return {"version": 1, "source": "deployment.yaml", "services": [entry(s) for s in self.services],
                "tasks": [entry(t) for t in self.tasks]}

    def service_state(self, entry: dict) -> dict[str, Any]:
        ecs = self.ecs(entry["accountId"], entry["region"])
        return ecs.describe_services(cluster=entry["cluster"], services=[entry["service"]])["services"][0]

    def current_task_definitions(self) -> dict[str, str]:
        """Service name -> the task definition it runs (one DescribeServices per 10 services)."""
        out: dict[str, str] = {}
        groups: dict[tuple[str, str], list[dict]] = {}
        for entry in self.services:
            groups.setdefault((entry["accountId"], entry["region"]), []).append(entry)
        for (account, region), group in groups.items():
            ecs = self.ecs(account, region)
            for start in range(0, len(group), 10):
                chunk = group[start:start + 10]
                described = ecs.describe_services(cluster=CLUSTER, services=[e["service"] for e in chunk])
                by_name = {s["serviceName"]: s["taskDefinition"] for s in described["services"]}
                out.update({e["name"]: by_name[e["service"]] for e in chunk})
        return out

    def rule_targets(self, entry: dict) -> list[dict]:
        return self.events(entry["accountId"], entry["region"]).list_targets_by_rule(
            Rule=entry["ruleName"], EventBusName="default")["Targets"]

    def notifications(self) -> list[dict[str, str]]:
        sqs = self.client("sqs")
        messages = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]

    def digest(self, repository: str, tag: str) -> str:
        ecr = self.client("ecr")
        return ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])["imageDetails"][0][
            "imageDigest"]


def _create_service_directly(account: str, region: str, spec: dict[str, Any], name: str) -> None:
    """Register ``spec`` and create a service on it straight in moto's store: for the 300-service world, where
    600 API calls would cost seconds. The same ``spec`` goes through the API (and botocore's validation) in every
    smaller world."""
    backend = ecs_backends[account][region]
    td = backend.register_task_definition(
        spec["family"], spec["containerDefinitions"], volumes=spec["volumes"], network_mode=spec["networkMode"],
        tags=spec["tags"], requires_compatibilities=spec["requiresCompatibilities"], cpu=spec["cpu"],
        memory=spec["memory"], task_role_arn=spec["taskRoleArn"], execution_role_arn=spec["executionRoleArn"],
        runtime_platform=spec["runtimePlatform"], ephemeral_storage=spec["ephemeralStorage"])
    backend.create_service(CLUSTER, name, 2, td.arn, launch_type="FARGATE")


def build_world(base: boto3.Session, services_per_target: int, tasks_per_target: int = 1,
                accounts: tuple[str, ...] = ACCOUNTS, regions: tuple[str, ...] = REGIONS,
                direct: bool = False) -> World:
    world = World(base)
    s3 = world.client("s3")
    s3.create_bucket(Bucket=CONFIG_BUCKET, CreateBucketConfiguration={"LocationConstraint": HOME})
    s3.put_bucket_versioning(Bucket=CONFIG_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.create_bucket(Bucket=RELEASE_BUCKET, CreateBucketConfiguration={"LocationConstraint": HOME})
    for region in regions:  # the tools registry, replicated: every tag in every region, same digest
        ecr = world.client("ecr", None, region)
        for repository in REPOSITORIES:
            ecr.create_repository(repositoryName=repository)
            for tag in ("1.0.0", "2.0.0"):
                ecr.put_image(repositoryName=repository, imageManifest=_manifest_json(repository, tag), imageTag=tag)
    sns, sqs = world.client("sns"), world.client("sqs")
    world.topic_arn = sns.create_topic(Name="crossdeploy-release")["TopicArn"]
    world.queue_url = sqs.create_queue(QueueName="release-mail")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=world.queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"]
    sns.subscribe(TopicArn=world.topic_arn, Protocol="sqs", Endpoint=queue_arn)
    line = 1
    for account in accounts:
        role = world.admin(account).client("iam").create_role(
            RoleName="crossdeploy-prod-deploy", Path=ROLE_PATH,
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{TOOLS}:root"}, "Action": "sts:AssumeRole"}]}),
        )["Role"]["Arn"]
        for region in regions:
            ecs, events = world.ecs(account, region), world.events(account, region)
            ecs.create_cluster(clusterName=CLUSTER)
            registry = f"{TOOLS}.dkr.ecr.{region}.amazonaws.com"
            for i in range(services_per_target):
                repository, name = REPOSITORIES[i % 3], f"svc-{i:03d}"
                sidecar = i % 2 == 0
                spec = task_definition(name, account, region, f"{registry}/{repository}:1.0.0", sidecar)
                if direct:
                    _create_service_directly(account, region, spec, name)
                else:
                    td = ecs.register_task_definition(**spec)["taskDefinition"]
                    ecs.create_service(cluster=CLUSTER, serviceName=name, taskDefinition=td["taskDefinitionArn"],
                                       desiredCount=2, launchType="FARGATE")
                add_document_target(world, name, account, region,
                                    rendered_task_definition(name, account, region, repository, sidecar))
                world.services.append({
                    "name": f"{name}@{account}/{region}", "line": line, "accountId": account, "region": region,
                    "roleArn": role, "cluster": CLUSTER, "service": name, "container": "app" if sidecar else None,
                    "image": {"registryId": TOOLS, "repository": repository, "tag": "2.0.0", "digest": None}})
                line += 6
            for j in range(tasks_per_target):
                family, rule = f"cleanup-{j}", f"nightly-cleanup-{j}"
                td = ecs.register_task_definition(**task_definition(
                    family, account, region, f"{registry}/batch/cleanup:1.0.0", False))["taskDefinition"]
                events.put_rule(Name=rule, ScheduleExpression="cron(0 3 * * ? *)")
                events.put_targets(Rule=rule, Targets=[
                    {"Id": "run-task", "Arn": f"arn:aws:ecs:{region}:{account}:cluster/{CLUSTER}",
                     "RoleArn": f"arn:aws:iam::{account}:role/events-run-task", "Input": json.dumps({"dryRun": False}),
                     "RetryPolicy": {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 3600},
                     "DeadLetterConfig": {"Arn": f"arn:aws:sqs:{region}:{account}:cleanup-dlq"},
                     "EcsParameters": {
                         "TaskDefinitionArn": td["taskDefinitionArn"], "TaskCount": 1, "LaunchType": "FARGATE",
                         "NetworkConfiguration": {"awsvpcConfiguration": {
                             "Subnets": ["subnet-0abc", "subnet-0def"], "SecurityGroups": ["sg-0123"],
                             "AssignPublicIp": "DISABLED"}},
                         "PlatformVersion": "LATEST", "Group": "cleanup", "EnableECSManagedTags": True,
                         "PropagateTags": "TASK_DEFINITION", "Tags": [{"Key": "team", "Value": "batch"}]}},
                    {"Id": "audit", "Arn": f"arn:aws:lambda:{region}:{account}:function:audit"},
                ])
                world.tasks.append({
                    "name": f"{rule}@{account}/{region}", "line": line, "accountId": account, "region": region,
                    "roleArn": role, "ruleName": rule, "eventBus": "default", "container": None,
                    "image": {"registryId": TOOLS, "repository": "batch/cleanup", "tag": "2.0.0", "digest": None}})
                line += 5
    return world


def _virtual_time(fn: Callable[..., Any]) -> Callable[[Any, Any], Any]:
    """A check handler whose sleeps advance its own clock instead of waiting (one clock per invocation); under the
    ASL runner, the time it polled moves its iteration's virtual clock on too."""
    def call(event: Any, context: Any) -> Any:
        now = [0.0]

        def sleep(seconds: float) -> None:
            now[0] += seconds
            spend(seconds)
        return fn(event, context, sleep=sleep, clock=lambda: now[0])
    return call


def run_release(manifest: dict[str, Any], *, max_concurrency: int = 10, poll_seconds: int = 15,
                wrap: Callable[[str, Callable], Callable] | None = None, name: str = "release-0001",
                via_s3: bool = False) -> Execution:
    """The real definition run by the ASL runner, each step calling the real handler its path names. ``via_s3``: as
    the pipeline starts it, the manifest in the artifact bucket and only its location in the execution input."""
    arns = {step: f"arn:aws:lambda:{HOME}:{TOOLS}:function:crossdeploy-release-{step}" for step in lambda_functions()}
    functions = {}
    for step, path in lambda_functions().items():
        module, attribute = path.rsplit(".", 1)
        fn = getattr(importlib.import_module(module), attribute)
        if step in ("checkService", "checkRollback"):
            fn = _virtual_time(fn)
        functions[arns[step]] = wrap(step, fn) if wrap else fn
    s3 = release._base_session().client("s3", region_name=HOME)
    runner = Runner(definition(arns, max_concurrency=max_concurrency, poll_seconds=poll_seconds), functions,
                    name=name, s3=s3)
    if not via_s3:
        return runner.run({"manifest": manifest})
    key = f"release-manifests/{name}.json"
    s3.put_object(Bucket=RELEASE_BUCKET, Key=key, Body=json.dumps(manifest).encode())
    return runner.run({"manifestLocation": {"bucket": RELEASE_BUCKET, "key": key}})


# Every boto3 session (the test's, each deploy-role session the handlers assume) would parse the same service models
# again: a second per test. One shared loader keeps its parsed models; it changes what is loaded from where, nothing.
_SHARED_LOADER = botocore.loaders.create_loader()


def share_service_models(setattr_: Callable[[Any, str, Any], None]) -> None:
    setattr_(botocore.session, "create_loader", lambda search_path_string=None: _SHARED_LOADER)


def configure(setenv: Callable[[str, str], None]) -> None:
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": HOME, "CROSSDEPLOY_REGISTRY_ID": TOOLS, "CROSSDEPLOY_HOME_REGION": HOME,
           "CROSSDEPLOY_PARTITION": "aws", "CROSSDEPLOY_SERVICE_TIMEOUT_SECONDS": "900",
           "CROSSDEPLOY_CHECK_WAIT_SECONDS": "300", "CROSSDEPLOY_CONFIG_BUCKET": CONFIG_BUCKET,
           "CROSSDEPLOY_RELEASE_BUCKET": RELEASE_BUCKET,
           "CROSSDEPLOY_CONTEXT_FILE": "",  # World.publish points it at the world's release context
           # moto: services start with their initial deployment complete (2 of 2 running)
           "MOTO_ECS_SERVICE_RUNNING": "2"}
    for key, value in env.items():
        setenv(key, value)


# ------------------------------------------------------------------------------------------------------------ fixtures

@dataclass
class Env:
    base: boto3.Session
    rollouts: Rollouts
    faults: Faults
    setenv: Callable[[str, str], None]
    deployments: BlueGreenDeployments

    def world(self, services_per_target: int, tasks_per_target: int = 1, direct: bool = False) -> World:
        world = build_world(self.base, services_per_target, tasks_per_target, direct=direct)
        self.setenv("CROSSDEPLOY_TOPIC_ARN", world.topic_arn)
        return world


@pytest.fixture
def aws(monkeypatch):
    configure(monkeypatch.setenv)
    share_service_models(monkeypatch.setattr)
    faults = Faults(monkeypatch.setattr)  # before any session exists, so every client gets the hook
    with mock_aws():
        base = boto3.Session(region_name=HOME)
        monkeypatch.setattr(release, "_base_session", lambda: base)
        rollouts = Rollouts(monkeypatch.setattr)
        ServiceDeployments(monkeypatch.setattr, status_hook=rollouts.deployment_status)
        yield Env(base, rollouts, faults, monkeypatch.setenv, BlueGreenDeployments(monkeypatch.setattr))


def _regional(world: World, entry: dict, tag: str = "2.0.0") -> str:
    repository = entry["image"]["repository"]
    return f"{TOOLS}.dkr.ecr.{entry['region']}.amazonaws.com/{repository}@{world.digest(repository, tag)}"


def _app_image(described: dict, container: str | None) -> str:
    containers = described["containerDefinitions"]
    return next(c for c in containers if container is None or c["name"] == container)["image"]


def _logs(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --------------------------------------------------------------------------------------------------------------- tests

def test_a_release_of_many_services_pins_digests_and_stays_within_limits(aws):
    # 4 x 30 services: three waves of the default 10 in each account-region (the 2,000-service release is
    # bench/bench_release.py's; its ceiling is checked by the validator's and prepare's tests).
    world = aws.world(services_per_target=30, tasks_per_target=1, direct=True)
    aws.rollouts.polls = 0  # steady at the first look: the Wait loop is exercised by the smaller cases
    before = world.current_task_definitions()
    execution = run_release(world.manifest(), via_s3=True)  # as the pipeline starts it

    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    after = world.current_task_definitions()
    assert len(after) == 120 and all(after[name] != before[name] for name in after)
    # Pinned: every service's container runs its own region's replica, by digest (the tag was resolved once).
    # Read from moto's store: 120 DescribeTaskDefinition calls would take longer than the check is worth; the API
    # path is checked on a few (and whole copies in test_task_definitions_and_rule_targets_are_copied_whole).
    digests = {repository: world.digest(repository, "2.0.0") for repository in REPOSITORIES}
    for entry in world.services:
        family, revision = after[entry["name"]].rsplit("/", 1)[1].split(":")
        stored = ecs_backends[entry["accountId"]][entry["region"]].task_definitions[family][int(revision)]
        repository = entry["image"]["repository"]
        assert _app_image({"containerDefinitions": stored.container_definitions}, entry["container"]) == \
            f"{TOOLS}.dkr.ecr.{entry['region']}.amazonaws.com/{repository}@{digests[repository]}"
    for entry in world.services[::41]:
        described = world.ecs(entry["accountId"], entry["region"]).describe_task_definition(
            taskDefinition=after[entry["name"]])["taskDefinition"]
        assert _app_image(described, entry["container"]) == _regional(world, entry)
    for entry in world.tasks:
        ecs_target = next(t for t in world.rule_targets(entry) if "EcsParameters" in t)
        described = world.ecs(entry["accountId"], entry["region"]).describe_task_definition(
            taskDefinition=ecs_target["EcsParameters"]["TaskDefinitionArn"])["taskDefinition"]
        assert _app_image(described, None) == _regional(world, entry)
    # Bounded in each account-region, and far from Step Functions' limits (the runner fails a state over 256 KiB by
    # itself; every target ran in its own child execution).
    assert execution.peak_concurrency["DeployServices"] == 10 and execution.peak_concurrency["DeployTasks"] <= 1
    assert execution.map_runs["DeployServices"] == 4 and execution.child_executions == 4 + 4 + 120
    assert execution.history_events < 200 and execution.max_child_history_events < 200
    assert "SettleBeforeRollback" not in execution.visits
    [mail] = world.notifications()
    assert mail["Subject"] == "crossdeploy release release-0001: SUCCEEDED"
    # The notice: targets, waves per account-region (ceil(30 / 10) = 3), duration, the slowest targets.
    assert "124 targets in 4 account-region(s), at most 10 at once in each" in mail["Message"]
    for account in ACCOUNTS:
        for region in REGIONS:
            assert f"{account} {region}: 30 services in 3 wave(s), 1 scheduled tasks in 1 wave(s)" in mail["Message"]
    assert "; took " in mail["Message"] and "\nslowest: svc-" in mail["Message"]
    assert execution.output["id"] == "release-0001"


FAILING = "svc-002@777788889999/eu-west-1"  # the last service of the release: most others have changed by then


@pytest.mark.parametrize(("failure", "error"), [
    ("rollout-failed", "ServiceRolloutFailed"),  # rolloutState FAILED, the service left on the new revision
    ("circuit-breaker", "ServiceRolloutFailed"),  # FAILED, and ECS already put the service back by itself
    ("update-error", "TargetUpdateError"),  # UpdateService refused (AccessDenied)
    ("timed-out", "ServiceTimedOut"),  # never steady: the per-item deadline passes
])
def test_one_failing_service_rolls_back_every_changed_target(aws, failure, error, capsys):
    world = aws.world(services_per_target=3, tasks_per_target=1)
    before = world.current_task_definitions()
    rules_before = {t["name"]: world.rule_targets(t) for t in world.tasks}
    failing = next(e for e in world.services if e["name"] == FAILING)
    arn = f"arn:aws:ecs:{failing['region']}:{failing['accountId']}:service/{CLUSTER}/{failing['service']}"
    if failure == "rollout-failed":
        aws.rollouts.outcome[arn] = "fail"
    elif failure == "circuit-breaker":
        aws.rollouts.outcome[arn] = "circuit-breaker"
    elif failure == "timed-out":
        aws.rollouts.outcome[arn] = "stuck"
        aws.setenv("CROSSDEPLOY_SERVICE_TIMEOUT_SECONDS", "120")
        aws.setenv("CROSSDEPLOY_CHECK_WAIT_SECONDS", "0")  # one look per check: the state machine's loop waits
    else:
        original, where = before[FAILING], f":{failing['region']}:{failing['accountId']}:"

        def deny(operation: str, body: dict) -> str | None:
            # Only the forward update of that one service: putting it back must still work.
            new = body.get("taskDefinition", "")
            if operation == "UpdateService" and body.get("service") == failing["service"] and where in new \
                    and new != original:
                return "AccessDeniedException"
            return None
        aws.faults.fail = deny

    execution = run_release(world.manifest())

    assert execution.status == "FAILED"
    assert execution.error == "ReleaseRolledBack", execution.cause
    # Many services had changed before the failure; every one of them is back on its snapshot, and so are the
    # scheduled tasks' rule targets (the whole list, not only the ECS target).
    changed = {name for name, td in aws.rollouts.updates if td not in before.values()}
    assert len(changed) >= 6
    assert world.current_task_definitions() == before
    assert {t["name"]: world.rule_targets(t) for t in world.tasks} == rules_before
    for entry in world.services:
        state = world.service_state(entry)
        assert [d["taskDefinition"] for d in state["deployments"]] == [before[entry["name"]]], entry["name"]
    assert execution.visits["RollBackService"] == 12 and execution.visits["RollBackTask"] == 4
    assert execution.visits.get("ServiceNotRestored", 0) == 0 and execution.visits.get("ServiceRollbackFailed", 0) == 0
    [mail] = world.notifications()
    assert mail["Subject"] == "crossdeploy release release-0001: ROLLED_BACK"
    assert f"rolled back: {error}: {FAILING}" in mail["Message"]
    assert "services: 12 restored, 0 not restored" in mail["Message"]
    if failure == "timed-out":  # the state machine's Wait/Check/Choice loop turned until the deadline
        # The failing service's own turns: the other iterations run on threads, and one that had not reached its
        # Wait when the Map failed is cancelled before it (a race the count of every service's turns would lose).
        assert execution.visits["WaitForService"] >= 120 // 15
    assert "scheduled tasks: 4 restored, 0 not restored" in mail["Message"]
    # One release can be followed in the logs: its id on every line, old and new task definition of each change.
    lines = [line for line in _logs(capsys.readouterr().out) if line.get("release") == "release-0001"]
    updated = [line for line in lines if line["event"] == "release.service.updated"]
    assert updated and all(line["oldTaskDefinition"] and line["newTaskDefinition"] for line in updated)
    rolled = [line for line in lines if line["event"] == "release.rollback.service" and line["changed"]]
    assert {line["target"] for line in rolled} == {u["target"] for u in updated} - (
        {FAILING} if failure == "circuit-breaker" else set())


def test_services_register_their_rendered_revision_and_rule_targets_are_copied_whole(aws):
    world = aws.world(services_per_target=2, tasks_per_target=1)
    before = world.current_task_definitions()
    rules_before = {t["name"]: world.rule_targets(t) for t in world.tasks}
    execution = run_release(world.manifest())
    assert execution.status == "SUCCEEDED", execution.cause
    after = world.current_task_definitions()
    volatile = {"taskDefinitionArn", "revision", "registeredAt", "registeredBy", "status", "compatibilities",
                "requiresAttributes"}
    for entry in world.services:
        ecs = world.ecs(entry["accountId"], entry["region"])
        new = ecs.describe_task_definition(taskDefinition=after[entry["name"]], include=["TAGS"])
        # Exactly what `pulumi up` rendered for this account and region (its memory, its environment), with the
        # manifest's digest on this region's replica, tagged with the release: not a copy of what ran before.
        document = world.documents[entry["service"]]
        [spec] = [t["taskDefinition"] for e in document["environments"] for t in e["targets"]
                  if (t["accountId"], t["region"]) == (entry["accountId"], entry["region"])]
        expected = copy.deepcopy(spec)
        expected["containerDefinitions"][0]["image"] = _regional(world, entry)
        assert new["tags"] == [*expected.pop("tags"), {"key": "crossdeploy:deployment", "value": "release-0001"}]
        registered = {k: v for k, v in new["taskDefinition"].items() if k not in volatile}
        assert registered["memory"] == "2048" and registered["containerDefinitions"][0]["environment"][-1] == {
            "name": "RENDERED", "value": f"{entry['accountId']}/{entry['region']}"}
        assert _app_image(registered, entry["container"]) == _regional(world, entry)
        assert release.deploy_engine.same_revision(registered, expected)
        assert after[entry["name"]] != before[entry["name"]]
    for entry in world.tasks:
        old_targets, new_targets = rules_before[entry["name"]], world.rule_targets(entry)
        assert [t["Id"] for t in new_targets] == [t["Id"] for t in old_targets]
        for old_t, new_t in zip(old_targets, new_targets, strict=True):
            if "EcsParameters" not in old_t:
                assert new_t == old_t
                continue
            assert new_t["EcsParameters"]["TaskDefinitionArn"] != old_t["EcsParameters"]["TaskDefinitionArn"]
            assert {**new_t, "EcsParameters": {**new_t["EcsParameters"], "TaskDefinitionArn": "x"}} == \
                {**old_t, "EcsParameters": {**old_t["EcsParameters"], "TaskDefinitionArn": "x"}}

    # Running the same release again registers nothing new and leaves every service where it is.
    updates = len(aws.rollouts.updates)
    again = run_release(world.manifest(), name="release-0002")
    assert again.status == "SUCCEEDED", again.cause
    assert world.current_task_definitions() == after and len(aws.rollouts.updates) == updates


def test_throttling_is_absorbed_by_sdk_retries(aws, monkeypatch):
    world = aws.world(services_per_target=3, tasks_per_target=1)
    backoff: list[float] = []
    # botocore sleeps between attempts; record the backoff instead of waiting it out (the benchmark waits).
    monkeypatch.setattr(botocore.endpoint.time, "sleep", backoff.append)
    aws.faults.throttle_every = 4
    execution = run_release(world.manifest())
    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    assert sum(aws.faults.throttled.values()) >= 30
    assert {"DescribeServices", "RegisterTaskDefinition", "UpdateService", "DescribeImages"} <= set(
        aws.faults.throttled)
    assert len(backoff) == sum(aws.faults.throttled.values())
    expected = {e["name"]: _regional(world, e) for e in world.services}
    for entry in world.services:
        described = world.ecs(entry["accountId"], entry["region"]).describe_task_definition(
            taskDefinition=world.service_state(entry)["taskDefinition"])["taskDefinition"]
        assert _app_image(described, entry["container"]) == expected[entry["name"]]


def test_missing_tag_rejects_the_release_before_any_change(aws):
    world = aws.world(services_per_target=2, tasks_per_target=1)
    before = world.current_task_definitions()
    manifest = world.manifest()
    manifest["services"][3]["image"]["tag"] = "9.9.9"
    manifest["tasks"][1]["image"]["tag"] = "nope"
    aws.faults.calls.clear()
    execution = run_release(manifest)
    assert (execution.status, execution.error) == ("FAILED", "ReleaseRejected")
    assert f"{manifest['services'][3]['image']['repository']}:9.9.9" in execution.cause
    assert "batch/cleanup:nope" in execution.cause
    assert not {"RegisterTaskDefinition", "UpdateService", "PutTargets", "AssumeRole"} & set(aws.faults.calls)
    assert "DeployTasks" not in execution.visits
    assert world.current_task_definitions() == before
    [mail] = world.notifications()
    assert mail["Subject"].endswith(": REJECTED") and "9.9.9" in mail["Message"]


def test_prepare_lists_every_target_problem_and_changes_nothing(aws):
    world = aws.world(services_per_target=2, tasks_per_target=1)
    manifest = world.manifest()
    manifest["services"][0]["service"] = "no-such-service"
    manifest["services"][1]["container"] = "web"  # svc-001 has one container, named app
    manifest["services"][2]["container"] = None  # svc-000 has two: app and envoy
    world.events(ACCOUNTS[1], REGIONS[1]).put_targets(Rule="nightly-cleanup-0", Targets=[{
        "Id": "second", "Arn": f"arn:aws:ecs:{REGIONS[1]}:{ACCOUNTS[1]}:cluster/{CLUSTER}",
        "RoleArn": f"arn:aws:iam::{ACCOUNTS[1]}:role/events-run-task",
        "EcsParameters": {"TaskDefinitionArn": f"arn:aws:ecs:{REGIONS[1]}:{ACCOUNTS[1]}:task-definition/x:1"}}])
    # The eu-west-1 replica lost an image: the release must not start rather than fail to pull halfway.
    world.client("ecr", None, "eu-west-1").batch_delete_image(
        repositoryName="team/payments", imageIds=[{"imageTag": "2.0.0"}])
    aws.faults.calls.clear()
    with pytest.raises(release.ImageNotFoundError, match=r"team/payments@sha256:[0-9a-f]{64} is not on the "
                                                         r"eu-west-1 replica"):
        release.prepare({"manifest": manifest, "executionId": "arn:aws:states:::execution:m:r1"})
    world.client("ecr", None, "eu-west-1").put_image(
        repositoryName="team/payments", imageManifest=_manifest_json("team/payments", "2.0.0"), imageTag="2.0.0")
    with pytest.raises(release.TargetError) as problems:
        release.prepare({"manifest": manifest, "executionId": "arn:aws:states:::execution:m:r1"})
    message = str(problems.value)
    assert message.startswith("4 target problem(s), nothing was changed")
    assert "no-such-service" in message and "no active ECS service" in message
    assert "no container named 'web'" in message and "has 2 containers" in message
    assert "has 2 ECS targets" in message
    assert not {"RegisterTaskDefinition", "UpdateService", "PutTargets"} & set(aws.faults.calls)


def test_a_service_outside_the_stack_is_refused_in_prepare_before_any_change(aws):
    world = aws.world(services_per_target=2, tasks_per_target=1)
    before = world.current_task_definitions()
    # A service running in the cluster, but not one the stack manages: no deploy document, not in the context.
    first = world.services[0]
    ecs = world.ecs(first["accountId"], first["region"])
    ecs.create_service(cluster=CLUSTER, serviceName="rogue", desiredCount=1, launchType="FARGATE",
                       taskDefinition=world.service_state(first)["taskDefinition"])
    manifest = world.manifest()
    outsider = {**manifest["services"][0], "name": "rogue@here", "service": "rogue", "line": 999}
    manifest["services"].append(outsider)
    aws.faults.calls.clear()

    execution = run_release(manifest)

    assert (execution.status, execution.error) == ("FAILED", "ReleaseRejected")
    assert f"{outsider['name']} ({outsider['accountId']} {outsider['region']} {CLUSTER}/{outsider['service']}): " \
           "not a service of this stack (no deploy document)" in execution.cause
    assert not {"RegisterTaskDefinition", "UpdateService", "PutTargets"} & set(aws.faults.calls)
    assert world.current_task_definitions() == before


def test_every_step_renders_from_the_document_version_prepare_read(aws):
    world = aws.world(services_per_target=1, tasks_per_target=0)
    prepared = release.prepare({"manifest": world.manifest(), "executionId": "arn:aws:states:::execution:m:v1"})
    item = release.prepared_items(prepared)["services"][0]
    assert item["document"]["key"] == f"services/{item['service']}/deploy.zip" and item["document"]["version"]
    # `pulumi up` publishes a new document while the release runs: the release keeps its snapshot.
    for environment in world.documents[item["service"]]["environments"]:
        for target in environment["targets"]:
            target["taskDefinition"]["memory"] = "4096"
    world.publish()
    common = {"release": prepared["release"], "startedAt": "2025-01-01T00:00:00.000Z"}
    deployed = release.deploy_service({"item": item, **common})
    registered = world.ecs(item["accountId"], item["region"]).describe_task_definition(
        taskDefinition=deployed["taskDefinitionArn"])["taskDefinition"]
    assert registered["memory"] == "2048"
    assert set(deployed["engine"]) >= {"phase", "previous_task_definition", "new_task_definition"}
    assert len(json.dumps(deployed)) < 1500, "no task definition in the Step Functions state"


def test_prepare_refuses_a_release_over_the_ceiling_before_any_aws_call(aws, monkeypatch):
    world = aws.world(services_per_target=1, tasks_per_target=1)
    event = {"manifest": world.manifest(), "executionId": "arn:aws:states:::execution:m:big"}
    aws.faults.calls.clear()
    # The ceiling the validator enforces (release_limits), scaled down: 8 targets over a limit of 7.
    monkeypatch.setattr(release_limits, "MAX_TARGETS", 7)
    with pytest.raises(release.ReleaseTooLargeError, match=r"the release has 8 targets .* over the limit of 7 per "
                                                           r"release"):
        release.prepare(event)
    assert not aws.faults.calls, "refused before reading anything"
    monkeypatch.setattr(release_limits, "MAX_TARGETS", 5_000)
    aws.setenv("CROSSDEPLOY_CHECK_WAIT_SECONDS", "0")
    aws.setenv("CROSSDEPLOY_SERVICE_TIMEOUT_SECONDS", "90000")
    with pytest.raises(release.ReleaseTooLargeError, match="history events in its child execution"):
        release.prepare(event)
    # With the defaults, one service's child execution is far from the 25,000 events, whatever the release's size.
    assert release.history_estimate(900, 300, 15) < 100


def test_prepare_reads_a_large_manifest_from_the_release_bucket_only(aws):
    world = aws.world(services_per_target=1, tasks_per_target=0)
    s3 = world.client("s3")
    s3.put_object(Bucket=RELEASE_BUCKET, Key="release-manifests/abc.json", Body=json.dumps(world.manifest()))
    prepared = release.prepare({"input": {"manifestLocation": {"bucket": RELEASE_BUCKET,
                                                               "key": "release-manifests/abc.json"}},
                                "executionId": "arn:aws:states:::execution:m:big1"})
    # One descriptor per account-region in the state; the items themselves in S3, under the execution's prefix.
    assert [(g["accountId"], g["region"], g["services"], g["tasks"]) for g in prepared["groups"]] == [
        (a, r, 1, 0) for a in ACCOUNTS for r in sorted(REGIONS)]
    assert {g["items"]["services"] for g in prepared["groups"]} == {
        f"release-runs/big1/items/{a}-{r}/services.json" for a in ACCOUNTS for r in REGIONS}
    assert sorted(i["name"] for i in release.prepared_items(prepared)["services"]) == sorted(
        e["name"] for e in world.services)
    for location in ({"bucket": "someone-elses", "key": "release-manifests/abc.json"},
                     {"bucket": RELEASE_BUCKET, "key": "services/orders/deploy.zip"}):
        with pytest.raises(release.ReleaseInputError, match="is not a release manifest of this stack"):
            release.prepare({"input": {"manifestLocation": location}, "executionId": "x:big2"})


def test_a_hand_started_execution_with_malformed_input_is_refused_before_any_change(aws):
    world = aws.world(services_per_target=1, tasks_per_target=0)
    s3 = world.client("s3")
    s3.put_object(Bucket=RELEASE_BUCKET, Key="release-manifests/deep.json", Body="[" * 100_000)
    manifest = world.manifest()
    aws.faults.calls.clear()
    for event, reason in (
            (["not", "an", "object"], "the prepare step's input must be an object, got list"),
            ({"manifest": manifest, "pollSeconds": "15"}, "pollSeconds: a whole number of seconds"),
            ({"manifest": manifest, "pollSeconds": 10**6}, "from 1 to 3600, got 1000000"),
            ({"input": {"manifestLocation": {"bucket": RELEASE_BUCKET, "key": "release-manifests/deep.json"}}},
             "cannot read the release manifest .*RecursionError")):
        with pytest.raises(release.ReleaseInputError, match=reason):
            release.prepare(event)
    assert set(aws.faults.calls) <= {"GetObject"}, "nothing but the manifest read, nothing changed"


def test_rollback_restores_only_what_differs_and_is_idempotent(aws):
    world = aws.world(services_per_target=1, tasks_per_target=1)
    prepared = release.prepare({"manifest": world.manifest(), "executionId": "arn:aws:states:::execution:m:r9"})
    items = release.prepared_items(prepared)
    by_name = {i["name"]: i for i in items["services"] + items["tasks"]}
    service, untouched = by_name[world.services[0]["name"]], by_name[world.services[1]["name"]]
    task = by_name[world.tasks[0]["name"]]
    common = {"release": prepared["release"], "startedAt": "2025-01-01T00:00:00.000Z"}
    deployed = release.deploy_service({"item": service, **common})
    release.update_task({"item": task, **common})
    assert world.service_state(world.services[0])["taskDefinition"] == deployed["taskDefinitionArn"]

    first = release.rollback_target({"item": service, "kind": "service", **common})
    again = release.rollback_target({"item": service, "kind": "service", **common})
    assert (first["changed"], first["status"]) == (True, "IN_PROGRESS")
    assert again["changed"] is False
    assert world.service_state(world.services[0])["taskDefinition"] == service["snapshot"]
    steady = release.check_rollback({"item": service, **common, "rollback": first, "now": common["startedAt"]},
                                    sleep=lambda _: None, clock=lambda: 0.0)
    assert steady["status"] == "STEADY", steady
    assert release.rollback_target({"item": untouched, "kind": "service", **common})["changed"] is False

    assert release.rollback_target({"item": task, "kind": "task", **common})["changed"] is True
    assert release.rollback_target({"item": task, "kind": "task", **common})["changed"] is False
    assert world.rule_targets(world.tasks[0]) == task["snapshot"]


def test_manifest_validation_lists_every_problem_with_its_line():
    good = {"name": "a", "line": 3, "accountId": "444455556666", "region": "us-east-2",
            "roleArn": "arn:aws:iam::444455556666:role/crossdeploy/prod/deploy/crossdeploy-prod-deploy",
            "cluster": "c", "service": "s", "container": None,
            "image": {"registryId": TOOLS, "repository": "team/orders", "tag": "4.0.0", "digest": None}}
    manifest = {"version": 1, "source": "deployment.yaml", "services": [
        good,
        {**good, "name": "b", "line": 9, "accountId": "4444", "region": "Ohio"},
        {**good, "name": "c", "line": 14, "roleArn": "arn:aws:iam::777788889999:role/deploy",
         "image": {"registryId": "999999999999", "repository": "Team/Orders", "tag": None, "digest": "sha256:x"}},
        {**good, "name": "d", "line": 20},  # the same service as a
        "not-an-object",
    ], "tasks": [{"name": "t", "line": 30, "accountId": "444455556666", "region": "us-east-2",
                  "roleArn": good["roleArn"], "container": "has space",
                  "image": {"registryId": TOOLS, "repository": "batch/cleanup"}}]}
    with pytest.raises(release.ReleaseInputError) as raised:
        release.validate_manifest(manifest, TOOLS, "aws")
    message = str(raised.value)
    for expected in ["services[1] (b, line 9): accountId '4444'", "services[1] (b, line 9): region 'Ohio'",
                     "services[2] (c, line 14): roleArn", "services[2] (c, line 14): image.registryId",
                     "services[2] (c, line 14): image.repository 'Team/Orders'",
                     "services[2] (c, line 14): image.digest 'sha256:x'",
                     "services[3] (d, line 20): same target as services[0] (a, line 3)",
                     "services[4]: must be an object", "tasks[0] (t, line 30): ruleName must be",
                     "tasks[0] (t, line 30): container 'has space'", "tasks[0] (t, line 30): image needs a tag"]:
        assert expected in message, expected
    assert release.validate_manifest({**manifest, "services": [good], "tasks": []}, TOOLS, "aws")[0] == [good]
    for broken in (None, [], {"version": 2, "services": [good]}, {"version": 1, "services": [], "tasks": []}):
        with pytest.raises(release.ReleaseInputError):
            release.validate_manifest(broken, TOOLS, "aws")


def test_manifest_validation_checks_the_smoke_test_hook():
    good = {"name": "web", "line": 3, "accountId": "444455556666", "region": "us-east-2",
            "roleArn": "arn:aws:iam::444455556666:role/crossdeploy/prod/deploy/crossdeploy-prod-deploy",
            "cluster": "c", "service": "web", "container": None,
            "image": {"registryId": TOOLS, "repository": "team/orders", "tag": "4.0.0", "digest": None},
            "blueGreen": {"application": APPLICATION, "deploymentGroup": "web-dg", "smokeTestHook": SMOKE_HOOK}}
    manifest = {"version": 1, "source": "deployment.yaml", "services": [good], "tasks": []}
    assert release.validate_manifest(manifest, TOOLS, "aws")[0] == [good]
    bad = ["arn:aws:lambda:us-east-2:999999999999:function:elsewhere", f"{SMOKE_HOOK}:live", "h" * 65, "", 7]
    manifest["services"] = [{**good, "name": f"s{i}", "line": 10 + i, "service": f"s{i}",
                             "blueGreen": {**good["blueGreen"], "smokeTestHook": hook}} for i, hook in enumerate(bad)]
    with pytest.raises(release.ReleaseInputError) as raised:
        release.validate_manifest(manifest, TOOLS, "aws")
    message = str(raised.value)
    assert message.startswith(f"{len(bad)} problem(s) in the release input"), message
    for i, hook in enumerate(bad):
        assert f"services[{i}] (s{i}, line {10 + i}): blueGreen.smokeTestHook {hook!r} is not a Lambda function " \
               "name (letters, digits, '-', '_', at most 64 characters; not an ARN)" in message


def test_deploy_role_sessions_and_clients_are_reused_until_they_expire(aws, monkeypatch):
    role = f"arn:aws:iam::{ACCOUNTS[0]}:role{ROLE_PATH}crossdeploy-prod-deploy"
    first = release._client("ecs", HOME, role, "crossdeploy-r1")
    assert release._client("ecs", HOME, role, "crossdeploy-r1") is first
    release._client("events", HOME, role, "crossdeploy-r1")  # same session, another client
    assert aws.faults.calls["AssumeRole"] == 1
    release._client("ecs", HOME, role, "crossdeploy-r2")  # another release: its own session name in CloudTrail
    assert aws.faults.calls["AssumeRole"] == 2
    ecs_arn = first.create_cluster(clusterName="probe")["cluster"]["clusterArn"]
    assert f":{ACCOUNTS[0]}:cluster/probe" in ecs_arn
    monkeypatch.setattr(release, "_CLIENT_TTL_SECONDS", 0.0)
    assert release._client("ecs", HOME, role, "crossdeploy-r3") is not first
    assert release._client("ecs", HOME, role, "crossdeploy-r3") is not release._client("ecs", HOME, role,
                                                                                        "crossdeploy-r3")


# ------------------------------------------------------------------------------------------------------- blue/green

APPLICATION = "crossdeploy-prod"  # one CodeDeploy application per blue/green environment (same name per region)
BG_CONTAINER, BG_PORT = "app", 8443  # what the service's target group forwards to: not the task's first port
SMOKE_HOOK = "crossdeploy-prod-smoke-test"  # naming.smoke_hook_function_name of prod (the same in every region)


def small_world(aws: Env, rolling: int = 1) -> World:
    """One workload account and region (``rolling`` rolling services, no scheduled task)."""
    world = build_world(aws.base, rolling, 0, accounts=ACCOUNTS[:1], regions=(HOME,))
    aws.setenv("CROSSDEPLOY_TOPIC_ARN", world.topic_arn)
    return world


def add_blue_green_service(world: World, name: str, account: str = ACCOUNTS[0], region: str = HOME) -> dict:
    """A service with the CODE_DEPLOY deployment controller behind a load balancer, its CodeDeploy application
    (once per account and region) and deployment group, and its release entry (as ``release_file.convert`` writes
    it for a blue-green environment)."""
    ecs, codedeploy = world.ecs(account, region), world.client("codedeploy", account, region)
    spec = task_definition(name, account, region, f"{TOOLS}.dkr.ecr.{region}.amazonaws.com/team/orders:1.0.0", True)
    spec["containerDefinitions"][0]["portMappings"].append({"containerPort": BG_PORT, "protocol": "tcp",
                                                            "name": "https"})
    td = ecs.register_task_definition(**spec)["taskDefinition"]["taskDefinitionArn"]
    groups = [f"arn:aws:elasticloadbalancing:{region}:{account}:targetgroup/{name}-{c}/0123456789abcdef"
              for c in ("blue", "green")]
    ecs.create_service(cluster=CLUSTER, serviceName=name, taskDefinition=td, desiredCount=2, launchType="FARGATE",
                       deploymentController={"type": "CODE_DEPLOY"},
                       loadBalancers=[{"targetGroupArn": groups[0], "containerName": BG_CONTAINER,
                                       "containerPort": BG_PORT}])
    if APPLICATION not in codedeploy.list_applications()["applications"]:
        codedeploy.create_application(applicationName=APPLICATION, computePlatform="ECS")
    codedeploy.create_deployment_group(
        applicationName=APPLICATION, deploymentGroupName=f"{name}-dg",
        serviceRoleArn=f"arn:aws:iam::{account}:role/crossdeploy-codedeploy",
        deploymentConfigName="CodeDeployDefault.ECSAllAtOnce",
        deploymentStyle={"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"},
        autoRollbackConfiguration={"enabled": True, "events": ["DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM"]},
        ecsServices=[{"serviceName": name, "clusterName": CLUSTER}],
        loadBalancerInfo={"targetGroupPairInfoList": [{
            "targetGroups": [{"name": g.split("/")[1]} for g in groups],
            "prodTrafficRoute": {"listenerArns": [f"arn:aws:elasticloadbalancing:{region}:{account}:listener/app/"
                                                  f"{name}/0123456789abcdef/0123456789abcdef"]}}]})
    entry = {"name": f"{name}@{account}/{region}", "line": max((e["line"] for e in world.services), default=0) + 6,
             "accountId": account, "region": region,
             "roleArn": f"arn:aws:iam::{account}:role{ROLE_PATH}crossdeploy-prod-deploy", "cluster": CLUSTER,
             "service": name, "container": "app",
             "image": {"registryId": TOOLS, "repository": "team/orders", "tag": "2.0.0", "digest": None},
             "blueGreen": {"application": APPLICATION, "deploymentGroup": f"{name}-dg"}}
    world.services.append(entry)
    add_document_target(world, name, account, region, None)  # the stack's service (its document: no codedeploy env)
    return entry


def deploy_by_hand(world: World, entry: dict) -> str:
    """A CodeDeploy deployment someone started outside the release (of the task definition the service runs)."""
    properties = {"TaskDefinition": world.service_state(entry)["taskDefinition"],
                  "LoadBalancerInfo": {"ContainerName": BG_CONTAINER, "ContainerPort": BG_PORT}}
    content = json.dumps({"version": 0.0, "Resources": [{"TargetService": {"Type": "AWS::ECS::Service",
                                                                           "Properties": properties}}]})
    return world.client("codedeploy", entry["accountId"], entry["region"]).create_deployment(
        applicationName=APPLICATION, deploymentGroupName=entry["blueGreen"]["deploymentGroup"],
        description="deployed by hand", revision={"revisionType": "AppSpecContent",
                                                  "appSpecContent": {"content": content}})["deploymentId"]


def _prepared(world: World, name: str = "bg-1") -> tuple[dict, dict[str, dict], dict[str, Any]]:
    """(what prepare returned, with its items read back from S3 as ``services`` and ``tasks``; the service items by
    ECS service name; what every step's event carries)."""
    prepared = release.prepare({"manifest": world.manifest(), "executionId": f"arn:aws:states:::execution:m:{name}"})
    prepared = {**prepared, **release.prepared_items(prepared)}
    common = {"release": prepared["release"], "startedAt": "2025-01-01T00:00:00.000Z"}
    return prepared, {i["service"]: i for i in prepared["services"]}, common


def _check(fn: Callable[..., dict], event: dict) -> dict:
    """A check handler on virtual time (its sleeps advance its clock)."""
    return _virtual_time(fn)({"now": event["startedAt"], **event}, None)


def _update_service_bodies(aws: Env) -> list[dict]:
    """Every UpdateService request body from now on (a fault hook that never faults)."""
    bodies: list[dict] = []

    def record(operation: str, body: dict) -> None:
        if operation == "UpdateService":
            bodies.append(body)
    aws.faults.fail = record
    return bodies


def test_blue_green_service_is_deployed_by_codedeploy_with_the_new_revision(aws):
    world = small_world(aws)
    entry = add_blue_green_service(world, "web")
    _, items, common = _prepared(world)
    item = items["web"]
    # Prepare recorded what the deployment needs from DescribeServices; a rolling item names its deploy document.
    assert item["blueGreen"] == {"application": APPLICATION, "deploymentGroup": "web-dg",
                                 "containerName": BG_CONTAINER, "containerPort": BG_PORT}
    assert "document" not in item
    assert "blueGreen" not in items["svc-000"] and set(items["svc-000"]) == {
        "name", "accountId", "region", "roleArn", "cluster", "service", "container", "image", "snapshot", "document"}
    snapshot = world.service_state(entry)["taskDefinition"]
    assert item["snapshot"] == snapshot

    updates = _update_service_bodies(aws)
    deployed = release.deploy_service({"item": item, **common})
    assert updates == []  # ECS refuses UpdateService with a new task definition on a CODE_DEPLOY service

    [created] = aws.deployments.created
    assert deployed["deploymentId"] == created["id"]
    assert (created["account"], created["region"], created["application"], created["group"]) == (
        ACCOUNTS[0], HOME, APPLICATION, "web-dg")
    assert created["revision"]["revisionType"] == "AppSpecContent"
    assert created["appspec"] == {"version": 0.0, "Resources": [{"TargetService": {
        "Type": "AWS::ECS::Service",
        "Properties": {"TaskDefinition": deployed["taskDefinitionArn"],
                       "LoadBalancerInfo": {"ContainerName": BG_CONTAINER, "ContainerPort": BG_PORT}}}}]}
    assert created["description"] == f"crossdeploy release bg-1: deploy {deployed['taskDefinitionArn']}"
    # The AppSpec names the revision this release registered: the snapshot's next, the pinned image in app only.
    ecs = world.ecs(ACCOUNTS[0], HOME)
    old = ecs.describe_task_definition(taskDefinition=snapshot)["taskDefinition"]
    new = ecs.describe_task_definition(taskDefinition=deployed["taskDefinitionArn"])["taskDefinition"]
    assert new["revision"] == old["revision"] + 1 and new["family"] == old["family"] == "web"
    assert _app_image(new, "app") == _regional(world, entry)
    assert _app_image(new, "envoy") == _app_image(old, "envoy")
    assert world.service_state(entry)["taskDefinition"] == snapshot  # CodeDeploy shifts traffic, not the release

    aws.deployments.polls = 2
    check = _check(release.check_service, {"item": item, **common, "deploy": deployed})
    assert check["status"] == "STEADY", check
    assert deployed["deploymentId"] in check["reason"] and "succeeded" in check["reason"]
    assert world.service_state(entry)["taskDefinition"] == deployed["taskDefinitionArn"]


def test_a_smoke_tested_blue_green_service_runs_its_hook_forward_but_not_on_the_rollback(aws):
    world = small_world(aws, rolling=0)
    entry = add_blue_green_service(world, "web")
    entry["blueGreen"]["smokeTestHook"] = SMOKE_HOOK  # as release_file.convert writes it for a smoke-tested service
    add_blue_green_service(world, "api")  # no smoke test: no hook
    _, items, common = _prepared(world)
    # Prepare keeps the hook through its rebuild of blueGreen; the other service's item has no such key.
    assert items["web"]["blueGreen"] == {"application": APPLICATION, "deploymentGroup": "web-dg",
                                         "containerName": BG_CONTAINER, "containerPort": BG_PORT,
                                         "smokeTestHook": SMOKE_HOOK}
    assert "smokeTestHook" not in items["api"]["blueGreen"]

    deployed = {name: release.deploy_service({"item": items[name], **common}) for name in ("web", "api")}
    created = {c["group"]: c for c in aws.deployments.created}

    def target(name: str, task_definition: str) -> dict:
        return {"TargetService": {"Type": "AWS::ECS::Service", "Properties": {
            "TaskDefinition": task_definition,
            "LoadBalancerInfo": {"ContainerName": BG_CONTAINER, "ContainerPort": BG_PORT}}}}

    # The AppSpec CodeDeploy received (as moto stored it, after botocore validated the request): the hook by name,
    # at AfterAllowTestTraffic, exactly as the pipeline's AppSpec has it.
    assert created["web-dg"]["appspec"] == {
        "version": 0.0, "Resources": [target("web", deployed["web"]["taskDefinitionArn"])],
        "Hooks": [{"AfterAllowTestTraffic": SMOKE_HOOK}]}
    assert created["api-dg"]["appspec"] == {
        "version": 0.0, "Resources": [target("api", deployed["api"]["taskDefinitionArn"])]}
    assert _check(release.check_service, {"item": items["web"], **common, "deploy": deployed["web"]})[
        "status"] == "STEADY"
    assert world.service_state(entry)["taskDefinition"] == deployed["web"]["taskDefinitionArn"]

    # The release fails elsewhere: the deployment back to the snapshot runs no smoke test (a failing hook there would
    # roll the restore back onto the revision being undone).
    first = release.rollback_target({"item": items["web"], "kind": "service", **common})
    assert (first["status"], first["changed"]) == ("IN_PROGRESS", True), first
    back = aws.deployments.created[-1]
    assert back["description"] == f"crossdeploy release bg-1: rollback {items['web']['snapshot']}"
    assert back["appspec"] == {"version": 0.0, "Resources": [target("web", items["web"]["snapshot"])]}
    assert _check(release.check_rollback, {"item": items["web"], **common, "rollback": first})["status"] == "STEADY"
    assert world.service_state(entry)["taskDefinition"] == items["web"]["snapshot"]


def test_blue_green_check_reports_codedeploy_failure_and_the_deadline(aws):
    world = small_world(aws, rolling=0)
    add_blue_green_service(world, "web")
    _, items, common = _prepared(world)
    item = items["web"]
    aws.deployments.outcome["web-dg"] = "fail"
    deployed = release.deploy_service({"item": item, **common})
    failed = _check(release.check_service, {"item": item, **common, "deploy": deployed})
    assert failed["status"] == "FAILED", failed
    assert failed["reason"] == (f"web@{ACCOUNTS[0]}/{HOME} ({ACCOUNTS[0]} {HOME} {CLUSTER}/web): CodeDeploy "
                                f"deployment {deployed['deploymentId']} Failed: ECS_UPDATE_ERROR: The ECS service "
                                "replacement task set did not become healthy; CodeDeploy rolled it back")

    aws.deployments.outcome["web-dg"] = "stuck"
    aws.setenv("CROSSDEPLOY_SERVICE_TIMEOUT_SECONDS", "120")
    deployed = release.deploy_service({"item": item, **common})
    late = _check(release.check_service, {"item": item, **common, "deploy": deployed,
                                          "now": "2025-01-01T00:01:30.000Z"})
    assert late["status"] == "TIMED_OUT" and "not steady by 2025-01-01T00:02:00.000Z" in late["reason"], late
    assert f"CodeDeploy deployment {deployed['deploymentId']} InProgress" in late["reason"]


def test_a_retried_blue_green_deploy_step_carries_on_with_its_own_deployment_only(aws):
    world = small_world(aws, rolling=0)
    add_blue_green_service(world, "web")
    _, items, common = _prepared(world)
    item = items["web"]
    first = release.deploy_service({"item": item, **common})
    # Lambda lost the first answer and the state machine invoked the step again: CodeDeploy allows one deployment
    # per group at a time, and the one in flight is this release's.
    again = release.deploy_service({"item": item, **common})
    assert again == first and len(aws.deployments.created) == 1

    # Another release's (or a person's) deployment in flight stops this release's step, named.
    _check(release.check_service, {"item": item, **common, "deploy": first})
    deploy_by_hand(world, world.services[-1])
    with pytest.raises(release.TargetUpdateError, match=rf"web@{ACCOUNTS[0]}/{HOME} .*DeploymentLimitExceeded"):
        release.deploy_service({"item": item, **common})


def test_prepare_refuses_blue_green_mismatches_naming_each_target(aws):
    world = small_world(aws, rolling=2)
    add_blue_green_service(world, "web")
    add_blue_green_service(world, "api")
    add_blue_green_service(world, "busy")
    deploy_by_hand(world, world.services[-1])
    manifest = world.manifest()
    services = {s["service"]: s for s in manifest["services"]}
    del services["web"]["blueGreen"]  # a CODE_DEPLOY service in an environment without blue/green context
    services["svc-000"]["blueGreen"] = {"application": APPLICATION, "deploymentGroup": "web-dg"}  # rolling service
    services["api"]["blueGreen"]["deploymentGroup"] = "web-dg"  # the group of another service
    aws.faults.calls.clear()
    with pytest.raises(release.TargetError) as raised:
        release.prepare({"manifest": manifest, "executionId": "arn:aws:states:::execution:m:bg-2"})
    message = str(raised.value)
    assert message.startswith("4 target problem(s), nothing was changed"), message
    where = f"({ACCOUNTS[0]} {HOME} {CLUSTER}/"
    assert f"web@{ACCOUNTS[0]}/{HOME} {where}web): uses the CODE_DEPLOY (blue/green) deployment controller, but " \
           "the release context has no CodeDeploy deployment group for it" in message
    assert f"svc-000@{ACCOUNTS[0]}/{HOME} {where}svc-000): is a rolling service (ECS deployment controller), but " \
           f"the release context deploys it blue/green through CodeDeploy deployment group {APPLICATION}/web-dg" \
           in message
    assert f"api@{ACCOUNTS[0]}/{HOME} {where}api): CodeDeploy deployment group {APPLICATION}/web-dg deploys " \
           f"{CLUSTER}/web, not this service" in message
    assert f"busy@{ACCOUNTS[0]}/{HOME} {where}busy): CodeDeploy deployment" in message and "is in progress" in message
    assert not {"RegisterTaskDefinition", "UpdateService", "CreateDeployment", "StopDeployment"} & set(
        aws.faults.calls)


def test_rollback_stops_this_releases_blue_green_deployment_in_flight(aws):
    world = small_world(aws, rolling=0)
    entry = add_blue_green_service(world, "web")
    prepared, items, common = _prepared(world)
    item = items["web"]
    deployed = release.deploy_service({"item": item, **common})
    deployment_id, [created] = deployed["deploymentId"], aws.deployments.created
    listed = {"applicationName": APPLICATION, "deploymentGroupName": "web-dg",
              "includeOnlyStatuses": list(ACTIVE_DEPLOYMENT)}
    ours = {"deploymentId": deployment_id, "applicationName": APPLICATION, "deploymentGroupName": "web-dg",
            "status": "InProgress", "creator": "user", "description": created["description"]}
    # moto has no StopDeployment: the codedeploy client the handlers use (and only it) is stubbed here; botocore
    # still validates every request against the service model, and the stub checks each one's parameters.
    codedeploy = release._client("codedeploy", HOME, item["roleArn"], release._session_name(prepared["release"]))
    with Stubber(codedeploy) as stub:
        stub.add_response("list_deployments", {"deployments": [deployment_id]}, listed)
        stub.add_response("get_deployment", {"deploymentInfo": ours}, {"deploymentId": deployment_id})
        stub.add_response("stop_deployment", {"status": "Pending", "statusMessage": "Stopping"},
                          {"deploymentId": deployment_id, "autoRollbackEnabled": True})
        first = release.rollback_target({"item": item, "kind": "service", **common})
        stub.assert_no_pending_responses()

        # While CodeDeploy rolls it back, the check waits (and never stops anything itself)...
        stub.add_response("list_deployments", {"deployments": [deployment_id]}, listed)
        stub.add_response("get_deployment", {"deploymentInfo": ours}, {"deploymentId": deployment_id})
        aws.setenv("CROSSDEPLOY_CHECK_WAIT_SECONDS", "0")
        waiting = _check(release.check_rollback, {"item": item, **common, "rollback": first})
        stub.assert_no_pending_responses()

        # ... and a rollback step run again finds the deployment ended: the service serves its snapshot.
        stub.add_response("list_deployments", {"deployments": [deployment_id]}, listed)
        stub.add_response("get_deployment", {"deploymentInfo": ours}, {"deploymentId": deployment_id})
        stub.add_client_error("stop_deployment", "DeploymentAlreadyCompletedException", "The deployment is already "
                              "complete", expected_params={"deploymentId": deployment_id, "autoRollbackEnabled": True})
        again = release.rollback_target({"item": item, "kind": "service", **common})
        stub.add_response("list_deployments", {"deployments": []}, listed)
        steady = _check(release.check_rollback, {"item": item, **common, "rollback": again})
        stub.assert_no_pending_responses()

        # Someone else's deployment in flight is left alone: the service is reported as not restored.
        other = {**ours, "deploymentId": "d-OTHER", "description": "deployed by hand"}
        stub.add_response("list_deployments", {"deployments": ["d-OTHER"]}, listed)
        stub.add_response("get_deployment", {"deploymentInfo": other}, {"deploymentId": "d-OTHER"})
        foreign = release.rollback_target({"item": item, "kind": "service", **common})
        stub.assert_no_pending_responses()

    assert (first["status"], first["changed"]) == ("IN_PROGRESS", True)
    assert f"stopped CodeDeploy deployment {deployment_id} with rollback" in first["reason"]
    assert waiting["status"] == "IN_PROGRESS" and f"waiting for CodeDeploy deployment {deployment_id}" in \
        waiting["reason"]
    assert (again["status"], again["changed"]) == ("STEADY", False) and steady["status"] == "STEADY"
    assert (foreign["status"], foreign["changed"]) == ("FAILED", False)
    assert "d-OTHER (InProgress, deployed by hand) of group crossdeploy-prod/web-dg is not this release's" in \
        foreign["reason"]
    assert world.service_state(entry)["taskDefinition"] == item["snapshot"]
    assert len(aws.deployments.created) == 1  # nothing deployed back: the service never left its snapshot


def test_rollback_deploys_the_snapshot_back_once_and_reports_a_failed_rollback(aws):
    world = small_world(aws, rolling=0)
    entry = add_blue_green_service(world, "web")
    _, items, common = _prepared(world)
    item = items["web"]
    deployed = release.deploy_service({"item": item, **common})
    assert _check(release.check_service, {"item": item, **common, "deploy": deployed})["status"] == "STEADY"
    assert world.service_state(entry)["taskDefinition"] == deployed["taskDefinitionArn"]

    # CodeDeploy starting a deployment of its own between the rollback's look and its CreateDeployment (its rollback
    # of a stopped deployment): no error, the next look waits for it.
    aws.faults.fail = lambda operation, body: "DeploymentLimitExceededException" if operation == "CreateDeployment" \
        else None
    raced = release.rollback_target({"item": item, "kind": "service", **common})
    assert (raced["status"], raced["changed"]) == ("IN_PROGRESS", False) and "started meanwhile" in raced["reason"]

    updates = _update_service_bodies(aws)
    first = release.rollback_target({"item": item, "kind": "service", **common})
    assert (first["status"], first["changed"]) == ("IN_PROGRESS", True), first
    [_, back] = aws.deployments.created
    assert back["appspec"]["Resources"][0]["TargetService"]["Properties"] == {
        "TaskDefinition": item["snapshot"],
        "LoadBalancerInfo": {"ContainerName": BG_CONTAINER, "ContainerPort": BG_PORT}}
    assert (back["application"], back["group"]) == (APPLICATION, "web-dg")
    assert back["description"] == f"crossdeploy release bg-1: rollback {item['snapshot']}"
    assert f"rolling back from {deployed['taskDefinitionArn']}: CodeDeploy deployment {back['id']}" in first["reason"]
    # Run again while that deployment is going: it waits for it, deploys nothing more.
    again = release.rollback_target({"item": item, "kind": "service", **common})
    assert (again["status"], again["changed"]) == ("IN_PROGRESS", False) and len(aws.deployments.created) == 2
    restored = _check(release.check_rollback, {"item": item, **common, "rollback": first})
    assert restored["status"] == "STEADY", restored
    assert world.service_state(entry)["taskDefinition"] == item["snapshot"]
    done = release.rollback_target({"item": item, "kind": "service", **common})
    assert (done["status"], done["changed"]) == ("STEADY", False)
    assert updates == [] and len(aws.deployments.created) == 2

    # Deployed again (a later release), and this time the deployment back fails: reported, not tried forever.
    _, items, common = _prepared(world, "bg-2")
    item = items["web"]
    deployed = release.deploy_service({"item": item, **common})
    _check(release.check_service, {"item": item, **common, "deploy": deployed})
    aws.deployments.rollback_outcome["web-dg"] = "fail"
    first = release.rollback_target({"item": item, "kind": "service", **common})
    failed = _check(release.check_rollback, {"item": item, **common, "rollback": first})
    assert failed["status"] == "FAILED", failed
    rollback_id = aws.deployments.created[-1]["id"]
    assert f"serving {deployed['taskDefinitionArn']}; CodeDeploy deployment {rollback_id} Failed" in failed["reason"]
    assert len(aws.deployments.created) == 4


@pytest.mark.parametrize("outcome", ["fail", "fail-shifted", "ok"])
def test_release_of_a_rolling_and_a_blue_green_service_succeeds_or_rolls_both_back(aws, outcome):
    world = small_world(aws, rolling=1)
    blue_green = add_blue_green_service(world, "web", ACCOUNTS[0], HOME)
    blue_green["blueGreen"]["smokeTestHook"] = SMOKE_HOOK  # "fail": as when the hook reports Failed
    before = world.current_task_definitions()
    aws.deployments.outcome["web-dg"] = outcome
    aws.deployments.polls = 3
    updates = _update_service_bodies(aws)

    execution = run_release(world.manifest())

    after = world.current_task_definitions()
    rolling_arn = f"arn:aws:ecs:{HOME}:{ACCOUNTS[0]}:service/{CLUSTER}/svc-000"
    # UpdateService only ever for the rolling service; CodeDeploy alone changes the blue/green one.
    assert updates and {u["service"] for u in updates} == {"svc-000"}
    forward = aws.deployments.created[0]
    assert forward["appspec"]["Resources"][0]["TargetService"]["Properties"]["TaskDefinition"] != before[
        blue_green["name"]]
    assert forward["appspec"]["Hooks"] == [{"AfterAllowTestTraffic": SMOKE_HOOK}]  # carried from the manifest
    [mail] = world.notifications()
    if outcome == "ok":
        assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
        assert all(after[name] != before[name] for name in before)
        assert after[blue_green["name"]] == forward["appspec"]["Resources"][0]["TargetService"]["Properties"][
            "TaskDefinition"]
        assert len(aws.deployments.created) == 1 and "SettleBeforeRollback" not in execution.visits
        assert mail["Subject"] == "crossdeploy release release-0001: SUCCEEDED"
        return
    assert (execution.status, execution.error) == ("FAILED", "ReleaseRolledBack"), execution.cause
    # Both are back on their snapshots: the rolling one through UpdateService, the blue/green one by CodeDeploy's
    # own rollback ("fail") or by a deployment of the snapshot ("fail-shifted").
    assert after == before
    assert [td for arn, td in aws.rollouts.updates if arn == rolling_arn] == [
        u["taskDefinition"] for u in updates]
    assert len(updates) == 2 and updates[-1]["taskDefinition"] == before["svc-000@444455556666/us-east-2"]
    if outcome == "fail":
        assert len(aws.deployments.created) == 1
    else:
        [_, back] = aws.deployments.created
        assert back["appspec"]["Resources"][0]["TargetService"]["Properties"]["TaskDefinition"] == \
            before[blue_green["name"]]
        assert "Hooks" not in back["appspec"]  # the restore is not smoke-tested
    assert execution.visits.get("ServiceNotRestored", 0) == 0 and execution.visits.get("ServiceRollbackFailed", 0) == 0
    assert mail["Subject"] == "crossdeploy release release-0001: ROLLED_BACK"
    error = "ECS_UPDATE_ERROR" if outcome == "fail" else "ALARM_ACTIVE"
    assert f"rolled back: ServiceRolloutFailed: {blue_green['name']}" in mail["Message"]
    assert f"CodeDeploy deployment {forward['id']} Failed: {error}" in mail["Message"]
    assert "services: 2 restored, 0 not restored" in mail["Message"]


@pytest.mark.parametrize(("service", "serving"), [
    ({"taskDefinition": "td:1", "taskSets": []}, "td:1"),  # rolling, or what moto shows for CODE_DEPLOY
    # mid-deployment: the replacement task set is ACTIVE (test traffic), the original still PRIMARY (production)
    ({"taskDefinition": "td:1", "taskSets": [{"status": "ACTIVE", "taskDefinition": "td:2"},
                                             {"status": "PRIMARY", "taskDefinition": "td:1"}]}, "td:1"),
    ({"taskDefinition": "td:1", "taskSets": [{"status": "PRIMARY", "taskDefinition": "td:2"},
                                             {"status": "ACTIVE", "taskDefinition": "td:1"}]}, "td:2"),
])
def test_a_blue_green_service_serves_its_primary_task_sets_task_definition(service, serving):
    assert release.serving_task_definition(service) == serving


@pytest.mark.parametrize(("deployment", "status", "reason"), [
    ({"deploymentId": "d-1", "status": "Succeeded"}, "STEADY", "CodeDeploy deployment d-1 succeeded"),
    ({"deploymentId": "d-1", "status": "Ready"}, "IN_PROGRESS", "CodeDeploy deployment d-1 Ready"),
    ({"deploymentId": "d-1", "status": "Baking"}, "IN_PROGRESS", "CodeDeploy deployment d-1 Baking"),
    ({"deploymentId": "d-1", "status": "Stopped", "errorInformation": {"code": "ALARM_ACTIVE", "message": "5xx"},
      "rollbackInfo": {"rollbackMessage": "rolled back by d-2"}}, "FAILED",
     "CodeDeploy deployment d-1 Stopped: ALARM_ACTIVE: 5xx (rolled back by d-2)"),
    ({"deploymentId": "d-1", "status": "Failed"}, "FAILED", "CodeDeploy deployment d-1 Failed: no error information"),
])
def test_deployment_status_follows_codedeploy(deployment, status, reason):
    assert release.deployment_status(deployment) == (status, reason)


# ------------------------------------------------------------------------------------------- the ceiling, shared

def _validator_context() -> dict[str, Any]:
    role = "arn:aws:iam::{}:role/crossdeploy/prod/deploy/crossdeploy-prod-deploy"
    return {"version": 1, "partition": "aws", "registryId": TOOLS, "homeRegion": HOME, "environments": {
        ENVIRONMENT_OF[a]: {"accountId": a, "regions": list(REGIONS), "deployRoleArn": role.format(a)}
        for a in ACCOUNTS}}


def _release_file(per_account_region: int) -> str:
    entries = [f"  - service: svc-{i:04d}\n    clusterName: {CLUSTER}\n    serviceName: svc-{i:04d}\n"
               f"    image: \"{TOOLS}.dkr.ecr.{HOME}.amazonaws.com/team/orders:2.0.0\"\n"
               f"    environment: {env}\n    region: {region}\n"
               for env in ENVIRONMENT_OF.values() for region in REGIONS for i in range(per_account_region)]
    return "services:\n" + "".join(entries)


def test_the_validator_enforces_the_ceiling_prepare_enforces_with_the_limit_in_the_message(monkeypatch):
    from handlers import release_file

    # One check, not two that agree today: both call release_limits.ceiling_problems (prepare: the test above).
    assert release_file.ceiling_problems is release.ceiling_problems is release_limits.ceiling_problems
    context = _validator_context()
    assert release_file.validate(_release_file(3), context) == []  # 12 targets in 4 account-regions
    monkeypatch.setattr(release_limits, "MAX_TARGETS", 10)  # scaled down: the real run is in the benchmark
    [problem] = release_file.validate(_release_file(3), context)
    # At the entry that crossed it (the 11th), with the limit and what to do.
    assert (problem.line, problem.path) == (1 + 6 * 10 + 1, "services[10]")
    assert "the release has 12 targets (services and scheduled tasks), over the limit of 10 per release" in str(problem)
    assert "split it into several releases" in str(problem)
    monkeypatch.setattr(release_limits, "MAX_TARGETS", 2_500)
    monkeypatch.setattr(release_limits, "MAX_ACCOUNT_REGIONS", 3)
    [problem] = release_file.validate(_release_file(1), context)
    assert "spans 4 account-regions, over the limit of 3" in str(problem)


def test_the_ceiling_holds_the_issues_release_and_the_yaml_loader_lets_it_through():
    from handlers import release_file

    # 2,000 services and their scheduled tasks over 2 accounts x 2 regions, at the default bound.
    groups = {(a, r): 500 + 25 for a in ACCOUNTS for r in REGIONS}
    assert release_limits.ceiling_problems(groups, release_limits.DEFAULT_CONCURRENCY) == []
    over = {**groups, (ACCOUNTS[0], REGIONS[0]): release_limits.MAX_TARGETS}
    [problem] = release_limits.ceiling_problems(over)
    assert f"over the limit of {release_limits.MAX_TARGETS} per release" in problem
    assert release_limits.ceiling_problems(groups, 50) == []  # 4 x 50 = 200 check Lambdas at once
    [problem] = release_limits.ceiling_problems({(str(i), HOME): 1 for i in range(20)}, 50)
    assert "20 account-regions x release.maxConcurrency 50 would run 1000 targets at once, over the limit of 800" \
        in problem
    # The release file's loader must not refuse a file the ceiling accepts: an entry is at most 17 nodes (8 keys,
    # their values, the mapping) and, here, 190 characters.
    loader = release_file.LimitedLoader
    entry = len(_release_file(1)) // 4
    assert loader.max_nodes >= 17 * release_limits.MAX_TARGETS + 10
    assert loader.max_chars >= (entry + 40) * release_limits.MAX_TARGETS
    assert loader.max_entries > release_limits.MAX_TARGETS  # a file just over the ceiling gets the ceiling's message
    assert [release_limits.waves(n, 10) for n in (0, 1, 10, 11, 500)] == [0, 1, 1, 2, 50]
