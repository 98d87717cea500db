"""ECS service deployments for moto, which has none: ListServiceDeployments, DescribeServiceDeployments and
StopServiceDeployment are added to moto's own ECS responder, so every client (however the handler under test builds
it, whatever hooks a test layers on the SDK) gets them from "ECS" with botocore's real request and response shapes.

Every UpdateService that changes a service's task definition starts a deployment (an ARN in ECS's format). Its
status comes from ``status_hook(deployment)`` when set (a test's own rollout model), else from a script: per
(account, region, service name) a queue of status sequences, one per deployment (default: IN_PROGRESS, then
SUCCESSFUL), each DescribeServiceDeployments read moving one step. Reaching ROLLBACK_SUCCESSFUL puts the service
back on its previous revision, as ECS's circuit breaker does. StopServiceDeployment(ROLLBACK) rolls back.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from moto.core.responses import ActionResult
from moto.ecs.exceptions import InvalidParameterException
from moto.ecs.models import EC2ContainerServiceBackend, ecs_backends
from moto.ecs.responses import EC2ContainerServiceResponse

DEFAULT_SCRIPT = ("IN_PROGRESS", "SUCCESSFUL")
_LAYER = "_crossdeploy_service_deployments"
"""The attribute of moto's ECS responder holding the layer answering the three operations (a test's, set through
its monkeypatch; None: moto as it is). On the class, not in this module: imported as ``tests.ecs_service_deployments``
and as ``ecs_service_deployments``, this file is two modules, and both must find the same layer."""

REASONS = {"ROLLBACK_SUCCESSFUL": "ECS deployment circuit breaker: 3 tasks failed their health checks",
           "ROLLBACK_FAILED": "ECS deployment circuit breaker: rollback failed"}


@dataclass
class Deployment:
    arn: str
    account: str
    region: str
    cluster: str
    service: str
    task_definition: str
    previous: str
    created: datetime
    script: list[str]
    reads: int = 0
    stopped: bool = False

    def peek(self) -> str:
        return self.script[min(self.reads, len(self.script) - 1)]


@dataclass
class ServiceDeployments:
    setattr_: Callable[[Any, str, Any], None]
    scripts: dict[tuple[str, str, str], list[tuple[str, ...]]] = field(default_factory=dict)
    status_hook: Callable[[Deployment], str] | None = None
    deployments: dict[str, Deployment] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    counter: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        update = EC2ContainerServiceBackend.update_service
        layer = self

        def update_service(backend: Any, props: dict[str, Any]) -> Any:
            cluster, name = props.get("cluster", "default").split("/")[-1], props["service"].split("/")[-1]
            before = backend._get_service(cluster, name).task_definition
            service = update(backend, props)
            if service.task_definition != before:
                layer._start(backend, cluster, name, service.task_definition, before)
            return service

        self.setattr_(EC2ContainerServiceBackend, "update_service", update_service)
        self.setattr_(EC2ContainerServiceResponse, _LAYER, self)

    def script(self, account: str, region: str, service: str, *statuses: str) -> None:
        """The next deployment of that service goes through ``statuses``."""
        with self.lock:
            self.scripts.setdefault((account, region, service), []).append(tuple(statuses))

    def _start(self, backend: Any, cluster: str, name: str, task_definition: str, previous: str) -> None:
        account, region = backend.account_id, backend.region_name
        with self.lock:
            queue = self.scripts.get((account, region, name)) or []
            script = list(queue.pop(0)) if queue else list(DEFAULT_SCRIPT)
            number = next(self.counter)
            arn = f"arn:aws:ecs:{region}:{account}:service-deployment/{cluster}/{name}/{number:020d}"
            self.deployments[arn] = Deployment(arn, account, region, cluster, name, task_definition, previous,
                                               datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=number), script)

    def _service(self, deployment: Deployment) -> Any:
        return ecs_backends[deployment.account][deployment.region]._get_service(deployment.cluster,
                                                                                deployment.service)

    def _status(self, deployment: Deployment) -> str:
        if self.status_hook is not None and not deployment.stopped:
            return self.status_hook(deployment)
        status = deployment.peek()
        deployment.reads += 1
        if status == "ROLLBACK_SUCCESSFUL":
            service = self._service(deployment)
            if service.task_definition == deployment.task_definition:
                service.task_definition = deployment.previous  # ECS put it back (no new deployment)
        return status

    def _list(self, response: Any) -> dict[str, Any]:
        cluster = response._get_param("cluster", "default").split("/")[-1]
        name = response._get_param("service").split("/")[-1]
        wanted = response._get_param("status")
        with self.lock:
            found = [d for d in self.deployments.values()
                     if (d.account, d.region, d.cluster, d.service) == (response.current_account, response.region,
                                                                        cluster, name)]
            listed = []
            for d in found:
                status = d.peek() if self.status_hook is None or d.stopped else self.status_hook(d)
                if not wanted or status in wanted:
                    listed.append({"serviceDeploymentArn": d.arn, "status": status, "createdAt": d.created,
                                   "clusterArn": f"arn:aws:ecs:{d.region}:{d.account}:cluster/{d.cluster}"})
        return {"serviceDeployments": listed}

    def _describe(self, arns: list[str]) -> dict[str, Any]:
        out, failures = [], []
        with self.lock:
            for arn in arns:
                deployment = self.deployments.get(arn)
                if deployment is None:
                    failures.append({"arn": arn, "reason": "MISSING"})
                    continue
                status = self._status(deployment)
                entry = {"serviceDeploymentArn": arn, "status": status, "createdAt": deployment.created,
                         "targetServiceRevision": {"arn": arn.replace("service-deployment", "service-revision")}}
                if status in REASONS:
                    entry["statusReason"] = REASONS[status]
                out.append(entry)
        return {"serviceDeployments": out, "failures": failures}

    def list_service_deployments(self, response: Any) -> ActionResult:
        return ActionResult(self._list(response))

    def describe_service_deployments(self, response: Any) -> ActionResult:
        return ActionResult(self._describe(response._get_param("serviceDeploymentArns", [])))

    def stop_service_deployment(self, response: Any) -> ActionResult:
        return ActionResult(self._stop(response._get_param("serviceDeploymentArn"), response._get_param("stopType")))

    def _stop(self, arn: str, stop_type: str) -> dict[str, Any]:
        with self.lock:
            deployment = self.deployments.get(arn)
            if deployment is None or deployment.peek() not in ("PENDING", "IN_PROGRESS"):
                raise InvalidParameterException(f"service deployment {arn} cannot be stopped")
            deployment.stopped = True
            deployment.script, deployment.reads = (["ROLLBACK_IN_PROGRESS", "ROLLBACK_SUCCESSFUL"]
                                                   if stop_type == "ROLLBACK" else ["STOPPED"]), 0
        return {"serviceDeploymentArn": arn}


def _operation(name: str) -> Callable[[Any], ActionResult]:
    def answer(response: Any) -> ActionResult:
        layer = getattr(EC2ContainerServiceResponse, _LAYER, None)
        if layer is None:
            raise NotImplementedError(f"The {name} action has not been implemented")
        return getattr(layer, name)(response)

    answer.__name__ = name
    return answer


# moto looks an operation up by method name on its responder class (moto.core.responses.BaseResponse.call_action).
if not hasattr(EC2ContainerServiceResponse, _LAYER):
    setattr(EC2ContainerServiceResponse, _LAYER, None)
for _name in ("list_service_deployments", "describe_service_deployments", "stop_service_deployment"):
    if not hasattr(EC2ContainerServiceResponse, _name):
        setattr(EC2ContainerServiceResponse, _name, _operation(_name))
