"""The Lambda steps of a release: every service and scheduled task of deployment.yaml deployed, or rolled back, as one.

The state machine (:mod:`components.release_state_machine`) calls one entry point per step:

* :func:`prepare` validates the converted release file again, pins every image to a digest (resolved in the tools
  registry's home region, and present on each target region's replica), snapshots every target through its deploy
  role (a service's task definition ARN; a rule's whole target list), and reads each rolling service's **deploy
  document** once (``components/deploy_config.py``: the config bucket, ``CROSSDEPLOY_CONFIG_BUCKET``, at the key the
  release context's ``services`` map gives for ``<cluster>/<serviceName>``; the context ships in the package as
  ``release-context.json``). The item records the document's key, the S3 version read and the environment, never
  the task definition (Step Functions' 256 KiB): every later step reads that very version, so a ``pulumi up`` during
  the release changes nothing of it. A service without a document is not the stack's and is refused here, with
  every other problem, before anything changes. It changes nothing in any workload account, so it can fail freely.
  It writes the prepared items to the release bucket, one file per account-region and kind
  (``release-runs/<execution>/items/``), and returns only one descriptor per account-region: the state machine's
  Distributed Maps read the items from there, so no target travels in the execution's state. A release over the
  ceiling of :mod:`handlers.release_limits` (the validator's own check) is refused first.
* :func:`deploy_service` of a rolling service is the deploy engine's ``start`` (:mod:`handlers.deploy_engine`): the
  document's task definition with only the container's image replaced by the manifest's regional digest, registered
  and pointed at (or left alone if the service already runs exactly that revision); its state travels in the item
  (``engine``, a few ARNs). :func:`check_service` is the engine's ``poll`` until ECS's deployment succeeded, failed
  or the per-item deadline passed (inside the Lambda, then through the state machine's Wait loop; the state machine
  supplies the time, ``$$.State.EnteredTime``). Its target is rendered from the pinned document version too, so a
  rolling environment's ``smokeTest`` runs once ECS reports the rollout complete (through the service's public
  load balancer, :mod:`handlers.deploy_engine`): a failed check fails the target, and so the release rolls back as
  a whole. A look that may run a check is begun only if the check ends within the Lambda's time. A blue/green
  service of a ``codedeploy`` environment (CODE_DEPLOY deployment controller) keeps CodeDeploy: a copy of its task
  definition with the new image (the engine's copy-and-swap, :func:`deploy_engine.render`), deployed by a
  CodeDeploy deployment of its deployment group; steady means that deployment succeeded. A service with a
  ``smokeTest`` gets its environment's smoke-test hook in that AppSpec (``blueGreen.smokeTestHook``, from the
  release context), at ``AfterAllowTestTraffic`` as in the pipeline's, so a failing check makes CodeDeploy roll
  the deployment back and the release fails the target. :func:`update_task` points a scheduled task's rule target
  at such a copy.
* :func:`rollback_target` compares a target with its snapshot and restores only what differs: correct whatever the
  forward Maps did or did not do (their states are gone), and idempotent. A rolling service: the engine's
  ``restore`` back to the snapshot (UpdateService(snapshot) if it is not on it), followed by :func:`check_rollback`
  with the engine's ``poll``. A blue/green service's deployment still in flight is stopped with CodeDeploy's
  rollback; one that finished is answered with a CodeDeploy deployment back to the snapshot, without the smoke-test
  hook (a hook failing there would undo the restore). A rule gets its snapshot targets back.
* :func:`notify` publishes one summary to the release topic: on success the targets, the waves per account-region,
  the duration and the slowest targets; after a rollback, what was restored and what was not, and the target that
  failed first. It reads the Map Runs' results (ResultWriter's ``manifest.json`` and result files) from S3.

Configuration (set by the Pulumi side): ``CROSSDEPLOY_REGISTRY_ID``, ``CROSSDEPLOY_HOME_REGION``,
``CROSSDEPLOY_PARTITION`` (aws), ``CROSSDEPLOY_TOPIC_ARN``, ``CROSSDEPLOY_CONFIG_BUCKET``,
``CROSSDEPLOY_CONTEXT_FILE`` (default: ``release-context.json`` at the package root),
``CROSSDEPLOY_RELEASE_BUCKET`` (the artifact bucket: the manifest the build converted, the items files prepare
writes, the Map Runs' results),
``CROSSDEPLOY_SERVICE_TIMEOUT_SECONDS`` (900),
``CROSSDEPLOY_CHECK_WAIT_SECONDS`` (300: how long one check Lambda polls before handing back to the state machine).

AWS access goes through :func:`_base_session` (the tools-account credentials Lambda gives us) and the deploy roles it
assumes; tests replace that one factory. Every client retries throttling itself (:data:`ecs_common.RETRY`).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import functools
import io
import json
import math
import os
import re
import threading
import time
import weakref
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from handlers import deploy_engine
from handlers.ecs_common import (
    ACCOUNT_ID,
    ECS_NAME,
    REGION,
    RETRY,
    TaskDefinitionError,
    assumed_session,
    container_named,
    log,
    register_kwargs,
    session_name,
)
from handlers.image_definitions import TransformError, regional_image_uri
from handlers.release_limits import ceiling_problems, waves

STEADY, IN_PROGRESS, FAILED, TIMED_OUT = "STEADY", "IN_PROGRESS", "FAILED", "TIMED_OUT"
# The package root: /var/task/release-context.json in Lambda (components/release.py ships it with the handlers).
DEFAULT_CONTEXT_FILE = Path(__file__).resolve().parents[1] / "release-context.json"

# Standard workflows stop at 25,000 history events, each child execution of a Distributed Map too (one per target);
# keep a margin for Lambda retries.
HISTORY_BUDGET_EVENTS = 24_000
PREPARE_WORKERS = 8
# Where a release's items and results live in the release bucket (CROSSDEPLOY_RELEASE_BUCKET): one prefix per
# execution, so the state machine's role reads and writes only under release-runs/, and nothing of one release is
# mixed with another's. The pipeline's build puts the converted release file under release-manifests/.
RUNS_PREFIX = "release-runs/"
MANIFESTS_PREFIX = "release-manifests/"
# What prepare returns stays far below Step Functions' 256 KiB: one descriptor per account-region (a few hundred
# bytes each; release_limits.MAX_ACCOUNT_REGIONS of them), whatever the number of targets.
STATE_BUDGET_BYTES = 64 * 1024
# The notice names this many of the slowest targets.
SLOWEST_SHOWN = 5

# ECR replica hosts: <registry>.dkr.ecr.<region>.<suffix>. A partition missing here is refused, not guessed.
_DNS_SUFFIX = {"aws": "amazonaws.com", "aws-us-gov": "amazonaws.com", "aws-cn": "amazonaws.com.cn",
               "aws-iso": "c2s.ic.gov", "aws-iso-b": "sc2s.sgov.gov"}

_CLUSTER_ARN = re.compile(r"arn:[a-z-]+:ecs:[a-z0-9-]+:\d{12}:cluster/[A-Za-z0-9_-]{1,255}")
_RULE = re.compile(r"[.\-_A-Za-z0-9]{1,64}")
_BUS = re.compile(r"[/.\-_A-Za-z0-9]{1,256}|arn:[a-z-]+:events:[a-z0-9-]+:\d{12}:event-bus/[/.\-_A-Za-z0-9]{1,256}")
_REPOSITORY = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_.-]{1,300}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CODEDEPLOY_NAME = re.compile(r"[A-Za-z0-9+=,.@_-]{1,100}")  # CodeDeploy application and deployment group names
# A smoke-test hook: a Lambda function name only. By name, CodeDeploy invokes it in the deployment's own account and
# region; an ARN could send the hook (and the verdict on this deployment) somewhere else.
_LAMBDA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The AppSpec lifecycle event the smoke test runs at: test traffic on the new task set, production still on the old
# one (the pipeline's AppSpec uses the same, handlers/image_definitions.py).
SMOKE_HOOK_EVENT = "AfterAllowTestTraffic"

# CodeDeploy deployment statuses: those still going (one per deployment group at a time), and how they end.
_DEPLOYMENT_ACTIVE = ("Created", "Queued", "InProgress", "Baking", "Ready")
_DEPLOYMENT_ENDED_BADLY = ("Failed", "Stopped")
# Every deployment this code starts says whose it is: a re-run step, or the rollback, recognises its own (and never
# touches anyone else's). ``purpose`` is deploy | rollback; the task definition is the one the AppSpec names.
_DESCRIPTION = re.compile(r"crossdeploy release (?P<release>\S+): (?P<purpose>deploy|rollback) (?P<target>\S+)")

_NOT_FOUND = {"ImageNotFoundException"}
_NO_REPOSITORY = {"RepositoryNotFoundException"}


class ReleaseInputError(ValueError):
    """The execution input is not a release this code can run (every problem is listed)."""


class ImageNotFoundError(ValueError):
    """A tag or digest is not in the tools registry, or not yet on a target region's replica."""


class TargetError(ValueError):
    """A service or scheduled task of the release does not exist or cannot be updated as asked."""


class ReleaseTooLargeError(ValueError):
    """The release would not fit Step Functions' payload or history limits: split deployment.yaml."""


class TargetUpdateError(RuntimeError):
    """Updating one target failed (an AWS error, or EventBridge refusing a target in PutTargets' response); the
    message names the target, so the notification says which one stopped the release."""


class ConfigurationError(RuntimeError):
    """The Lambda's environment is missing or malformed (a deployment problem, not a release problem)."""


# ----------------------------------------------------------------------------------------------------------- AWS access

@functools.cache
def _base_session() -> boto3.Session:
    """The Lambda's own credentials (tools account). One per container: clients are cached against it."""
    return boto3.Session()


# Deploy-role credentials last 900 s (ecs_common.assumed_session); renew well before. Caching sessions and clients
# per warm container spares an AssumeRole and a client build (service model load) on every invocation.
_CLIENT_TTL_SECONDS = 600.0
_cache_lock = threading.Lock()
# Keyed by the base session, so a new base session (new credentials, or a test's) never sees another's clients.
_caches: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[float, Any]]] = weakref.WeakKeyDictionary()


def _client(service: str, region: str, role_arn: str | None = None, session_name: str = "crossdeploy-release") -> Any:
    """A client in the tools account (``role_arn`` None) or acting as a workload account's deploy role."""
    base = _base_session()
    now = time.monotonic()
    with _cache_lock:  # boto3 sessions are not thread-safe, and the state machine runs steps concurrently
        cache = _caches.setdefault(base, {})
        hit = cache.get(("client", service, region, role_arn, session_name))
        if hit and hit[0] > now:
            return hit[1]
        for key in [k for k, (expires, _) in cache.items() if expires <= now]:
            del cache[key]
        # A client lives no longer than the credentials of the session it came from.
        expires, session = (now + _CLIENT_TTL_SECONDS, base) if role_arn is None else _role_session_locked(
            cache, base, role_arn, session_name, now)
        client = session.client(service, region_name=region, config=RETRY)
        cache[("client", service, region, role_arn, session_name)] = (expires, client)
        return client


def _role_session_locked(cache: dict[tuple[Any, ...], tuple[float, Any]], base: boto3.Session, role_arn: str,
                         session_name: str, now: float) -> tuple[float, boto3.Session]:
    """(expiry, the deploy role's session) from ``cache``, assumed anew once expired; the caller holds the lock."""
    hit = cache.get(("session", role_arn, session_name))
    if hit is None or hit[0] <= now:
        hit = cache[("session", role_arn, session_name)] = (now + _CLIENT_TTL_SECONDS,
                                                            assumed_session(base, role_arn, session_name))
    return hit


def _deploy_session(role_arn: str, session_name: str) -> boto3.Session:
    """The deploy role's session (cached with the clients): what the deploy engine acts through."""
    base = _base_session()
    with _cache_lock:
        return _role_session_locked(_caches.setdefault(base, {}), base, role_arn, session_name, time.monotonic())[1]


def _session_name(release: Mapping[str, Any]) -> str:
    # CloudTrail in the workload account shows this name: an operator can tie every change to one release.
    return session_name(str(release.get("id", "release")))


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# ------------------------------------------------------------------------------------------------------ configuration

def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise ConfigurationError(f"environment variable {name} is not set")
    return value


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return value


def _partition() -> str:
    partition = _env("CROSSDEPLOY_PARTITION", "aws")
    if partition not in _DNS_SUFFIX:
        raise ConfigurationError(f"CROSSDEPLOY_PARTITION {partition!r} is not one of {sorted(_DNS_SUFFIX)}")
    return partition


def _config_bucket() -> str:
    """The deploy config bucket (``components/deploy_config.py``): every service's deploy document."""
    return _env("CROSSDEPLOY_CONFIG_BUCKET")


@functools.cache
def _read_context(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path}: cannot read the release context ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ConfigurationError(f"{path}: the release context has no services map")
    return data


def _stack_services() -> dict[str, str]:
    """``<cluster>/<serviceName>`` -> deploy document key, for every service of the stack: the release context
    shipped in the package (``release-context.json``, or ``CROSSDEPLOY_CONTEXT_FILE``)."""
    return dict(_read_context(os.environ.get("CROSSDEPLOY_CONTEXT_FILE") or str(DEFAULT_CONTEXT_FILE))["services"])


def _service_timeout() -> int:
    return _env_int("CROSSDEPLOY_SERVICE_TIMEOUT_SECONDS", 900, 1)


# Kept back from a check Lambda's remaining time: one more look at the service, and the answer.
CHECK_RESERVE_SECONDS = 30
# Before a smoke test the engine reads the deployment's status and finds the load balancer (DescribeServices,
# DescribeTargetGroups, DescribeLoadBalancers through the deploy role): a few SDK calls, retried when throttled.
SMOKE_LOOKUP_SECONDS = 15


def _time_left(context: Any) -> float | None:
    """What this invocation may still spend, less :data:`CHECK_RESERVE_SECONDS` (None without a Lambda context)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return max(0.0, remaining() / 1000 - CHECK_RESERVE_SECONDS) if callable(remaining) else None


def _check_wait(context: Any) -> float:
    """How long one check Lambda may poll: configured, and never past the Lambda's own timeout."""
    wait = float(_env_int("CROSSDEPLOY_CHECK_WAIT_SECONDS", 300, 0))
    left = _time_left(context)
    return wait if left is None else min(wait, left)


# -------------------------------------------------------------------------------------------------------------- time

def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse_time(value: str) -> dt.datetime:
    """Step Functions' timestamps (``2025-01-01T00:00:00.000Z``)."""
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------------- deploy documents

# One object version never changes: a warm container parses each (key, version) once, however many items use it.
_documents: dict[tuple[str, str, str], deploy_engine.Document] = {}
_documents_lock = threading.Lock()


def _read_document(bucket: str, key: str, version: str | None) -> tuple[deploy_engine.Document, str]:
    """(the validated deploy document, its S3 version id) of ``key`` (the current version, or ``version``)."""
    cached = _documents.get((bucket, key, version)) if version else None
    if cached is not None:
        return cached, str(version)
    kwargs = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
    response = _client("s3", _env("CROSSDEPLOY_HOME_REGION")).get_object(**kwargs)
    version = str(response.get("VersionId") or "null")
    with zipfile.ZipFile(io.BytesIO(response["Body"].read())) as archive:
        data = json.loads(archive.read(deploy_engine.DOCUMENT_FILE))
    document = deploy_engine.parse_document(data)
    with _documents_lock:
        _documents[(bucket, key, version)] = document
    return document, version


def _cluster_name(item: Mapping[str, Any]) -> str:
    """The cluster's name, whether the manifest gave a name or an ARN."""
    return str(item["cluster"]).rsplit("/", 1)[-1]


def _service_key(item: Mapping[str, Any]) -> str:
    """``<cluster>/<serviceName>``: how the release context's ``services`` map names a service of the stack."""
    return f"{_cluster_name(item)}/{item['service']}"


def _document_target(document: deploy_engine.Document, item: Mapping[str, Any]) -> tuple[str, deploy_engine.TargetSpec]:
    """(environment, target) of the document that is this item's service in its account and region."""
    cluster = _cluster_name(item)
    found = [(env.name, t) for env in document.environments for t in env.targets
             if (t.account_id, t.region, t.cluster, t.service) == (item["accountId"], item["region"], cluster,
                                                                   item["service"])]
    if len(found) != 1:
        raise TargetError(f"{item['name']}: the deploy document of {document.service} has "
                          f"{'no' if not found else len(found)} target(s) for {item['accountId']} {item['region']} "
                          f"{cluster}/{item['service']}")
    return found[0]


def _attach_documents(services: list[dict], problems: list[str]) -> None:
    """Give every rolling service its deploy document (key, the version read now, environment), read once per
    document: the snapshot every later step renders from. A service without one is not the stack's."""
    stack = _stack_services()
    wanted = [s for s in services if "blueGreen" not in s]  # CodeDeploy services keep their path
    for entry in services:
        if _service_key(entry) not in stack:
            problems.append(f"{entry['name']} ({entry['accountId']} {entry['region']} {entry['cluster']}/"
                            f"{entry['service']}): not a service of this stack (no deploy document); the deploy role "
                            "may update only the stack's services")
    bucket = _config_bucket()
    keys = sorted({stack[_service_key(e)] for e in wanted if _service_key(e) in stack})
    read: dict[str, tuple[deploy_engine.Document, str] | str] = {}

    def load(key: str) -> None:
        try:
            read[key] = _read_document(bucket, key, None)
        except ClientError as exc:
            read[key] = f"cannot read s3://{bucket}/{key}: {exc}"
        except (deploy_engine.EngineInputError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            read[key] = f"s3://{bucket}/{key} is not a deploy document: {exc}"

    _parallel(load, keys)
    for entry in wanted:
        key = stack.get(_service_key(entry))
        if key is None:
            continue
        got = read[key]
        if isinstance(got, str):
            problems.append(f"{entry['name']}: {got}")
            continue
        document, version = got
        try:
            environment, spec = _document_target(document, entry)
        except TargetError as exc:
            problems.append(str(exc))
            continue
        if entry.get("container") not in (None, spec.container):
            problems.append(f"{entry['name']}: container {entry['container']!r} is not the one the stack deploys "
                            f"({spec.container!r})")
            continue
        if entry["roleArn"] != spec.role_arn:
            problems.append(f"{entry['name']}: role {entry['roleArn']} is not the document's {spec.role_arn}")
            continue
        entry["document"] = {"key": key, "version": version, "environment": environment}


def _engine_target(item: Mapping[str, Any], spec: deploy_engine.TargetSpec | None = None,
                   environment: str = "") -> deploy_engine.Target:
    """The engine's target for an item: with the document's task definition and smoke test (``spec``) to deploy
    and to check a deployment, without them to restore (that needs only where the service is)."""
    return deploy_engine.Target(
        environment or (item.get("document") or {}).get("environment", ""), item["accountId"], item["region"],
        item["roleArn"], _cluster_name(item), item["service"],
        spec.container if spec else (item.get("container") or ""), item["image"],
        spec.task_definition if spec else None, spec.smoke_test if spec else None)


def _rendered_target(item: Mapping[str, Any]) -> deploy_engine.Target:
    """The item's engine target, rendered from the document version prepare read, with the image prepare pinned
    to the item's region (:func:`regional_image_uri`)."""
    reference = item["document"]
    document, _ = _read_document(_config_bucket(), reference["key"], reference["version"])
    environment, spec = _document_target(document, item)
    return _engine_target(item, spec, environment)


def _epoch(value: str | None, fallback: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> float:
    return (_parse_time(value) if value else fallback()).timestamp()


# ------------------------------------------------------------------------------------------------------------ prepare

def _where(kind: str, index: int, entry: Any) -> str:
    if isinstance(entry, Mapping):
        line = f", line {entry['line']}" if isinstance(entry.get("line"), int) else ""
        return f"{kind}[{index}] ({entry.get('name', '?')}{line})"
    return f"{kind}[{index}]"


def _check_image(where: str, image: Any, registry_id: str, problems: list[str]) -> None:
    if not isinstance(image, Mapping):
        problems.append(f"{where}: image must be an object with registryId, repository and a tag or digest")
        return
    if image.get("registryId") != registry_id:
        problems.append(f"{where}: image.registryId {image.get('registryId')!r} is not the tools registry "
                        f"{registry_id}")
    if not isinstance(image.get("repository"), str) or not _REPOSITORY.fullmatch(image["repository"]) \
            or not 2 <= len(image["repository"]) <= 256:
        problems.append(f"{where}: image.repository {image.get('repository')!r} is not an ECR repository name")
    tag, digest = image.get("tag"), image.get("digest")
    if tag is None and digest is None:
        problems.append(f"{where}: image needs a tag or a digest")
    if tag is not None and (not isinstance(tag, str) or not _TAG.fullmatch(tag)):
        problems.append(f"{where}: image.tag {tag!r} is not an image tag")
    if digest is not None and (not isinstance(digest, str) or not _DIGEST.fullmatch(digest)):
        problems.append(f"{where}: image.digest {digest!r} is not sha256:<64 hex>")


def validate_manifest(manifest: Any, registry_id: str, partition: str) -> tuple[list[dict], list[dict]]:
    """The release's services and tasks, or :class:`ReleaseInputError` listing every problem.

    The validator's ``convert`` produced this input; it is checked again because the state machine can be started
    by anyone allowed to, and a malformed item must fail here, before anything changes, not halfway through.
    Unknown keys are ignored (the validator owns the file's strictness); every key used below is checked.
    """
    if not isinstance(manifest, Mapping):
        raise ReleaseInputError("execution input must be {\"manifest\": <converted deployment.yaml>}")
    problems: list[str] = []
    if manifest.get("version") != 1:
        problems.append(f"manifest.version must be 1, got {manifest.get('version')!r}")
    lists: dict[str, list[Any]] = {}
    for kind in ("services", "tasks"):
        value = manifest.get(kind, [])
        if not isinstance(value, list):
            problems.append(f"manifest.{kind} must be a list")
            value = []
        lists[kind] = value
    if not lists["services"] and not lists["tasks"] and not problems:
        problems.append("manifest has no services and no tasks: nothing to release")
    seen: dict[tuple[str, ...], str] = {}
    required = {"services": ("cluster", "service"), "tasks": ("ruleName",)}
    for kind, entries in lists.items():
        for index, entry in enumerate(entries):
            where = _where(kind, index, entry)
            if not isinstance(entry, Mapping):
                problems.append(f"{where}: must be an object")
                continue
            if not isinstance(entry.get("name"), str) or not entry["name"]:
                problems.append(f"{where}: name must be a non-empty string")
            account, region, role = entry.get("accountId"), entry.get("region"), entry.get("roleArn")
            if not isinstance(account, str) or not ACCOUNT_ID.fullmatch(account):
                problems.append(f"{where}: accountId {account!r} is not a 12-digit account id")
            if not isinstance(region, str) or not REGION.fullmatch(region):
                problems.append(f"{where}: region {region!r} is not an AWS region name")
            if not isinstance(role, str) or not re.fullmatch(
                    rf"arn:{re.escape(partition)}:iam::{re.escape(str(account))}:role/[\w+=,.@/-]{{1,512}}", role):
                problems.append(f"{where}: roleArn {role!r} is not a role of account {account} "
                                f"(partition {partition})")
            for key in required[kind]:
                if not isinstance(entry.get(key), str) or not entry[key]:
                    problems.append(f"{where}: {key} must be a non-empty string")
            if kind == "services":
                cluster, service = entry.get("cluster"), entry.get("service")
                if isinstance(cluster, str) and not (ECS_NAME.fullmatch(cluster) or _CLUSTER_ARN.fullmatch(cluster)):
                    problems.append(f"{where}: cluster {cluster!r} is not an ECS cluster name or ARN")
                if isinstance(service, str) and not ECS_NAME.fullmatch(service):
                    problems.append(f"{where}: service {service!r} is not an ECS service name")
                blue_green = entry.get("blueGreen")
                if blue_green is not None and not (isinstance(blue_green, Mapping) and all(
                        isinstance(blue_green.get(k), str) and _CODEDEPLOY_NAME.fullmatch(blue_green[k])
                        for k in ("application", "deploymentGroup"))):
                    problems.append(f"{where}: blueGreen {blue_green!r} must name a CodeDeploy application and "
                                    "deploymentGroup")
                hook = blue_green.get("smokeTestHook") if isinstance(blue_green, Mapping) else None
                if hook is not None and not (isinstance(hook, str) and _LAMBDA_NAME.fullmatch(hook)):
                    problems.append(f"{where}: blueGreen.smokeTestHook {hook!r} is not a Lambda function name "
                                    "(letters, digits, '-', '_', at most 64 characters; not an ARN)")
                key = ("service", str(account), str(region), str(cluster).rsplit("/", 1)[-1], str(service))
            else:
                rule, bus = entry.get("ruleName"), entry.get("eventBus", "default")
                if isinstance(rule, str) and not _RULE.fullmatch(rule):
                    problems.append(f"{where}: ruleName {rule!r} is not an EventBridge rule name")
                if not isinstance(bus, str) or not _BUS.fullmatch(bus):
                    problems.append(f"{where}: eventBus {bus!r} is not an event bus name or ARN")
                key = ("task", str(account), str(region), str(bus), str(rule))
            container = entry.get("container")
            if container is not None and (not isinstance(container, str) or not ECS_NAME.fullmatch(container)):
                problems.append(f"{where}: container {container!r} is not an ECS container name")
            _check_image(where, entry.get("image"), registry_id, problems)
            # Two entries for one target would race each other and make the snapshot ambiguous.
            if key in seen:
                problems.append(f"{where}: same target as {seen[key]}")
            seen.setdefault(key, where)
    if problems:
        raise ReleaseInputError(f"{len(problems)} problem(s) in the release input: " + "; ".join(problems))
    return [dict(e) for e in lists["services"]], [dict(e) for e in lists["tasks"]]


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _image_id(kind: str, value: str) -> dict[str, str]:
    return {"imageTag": value} if kind == "tag" else {"imageDigest": value}


def _find_images(ecr: Any, registry_id: str, repository: str,
                 wanted: list[tuple[str, str]]) -> tuple[dict[tuple[str, str], str], list[tuple[str, str]]]:
    """(tag|digest -> digest for those found, those missing). One DescribeImages per 100 images when all exist."""
    found: dict[tuple[str, str], str] = {}
    missing: list[tuple[str, str]] = []
    for chunk in _chunks(wanted, 100):
        try:
            details = ecr.describe_images(registryId=registry_id, repositoryName=repository,
                                          imageIds=[_image_id(*w) for w in chunk])["imageDetails"]
        except ClientError as exc:
            if _error_code(exc) in _NO_REPOSITORY:
                return found, list(wanted)
            if _error_code(exc) not in _NOT_FOUND:
                raise
            if len(chunk) == 1:
                missing.extend(chunk)
                continue
            # ECR names only the first missing image; ask one by one so the error lists every one.
            for one in chunk:
                more_found, more_missing = _find_images(ecr, registry_id, repository, [one])
                found.update(more_found)
                missing.extend(more_missing)
            continue
        for kind, value in chunk:
            for detail in details:
                if (kind == "tag" and value in detail.get("imageTags", [])) or \
                        (kind == "digest" and value == detail["imageDigest"]):
                    found[(kind, value)] = detail["imageDigest"]
            if (kind, value) not in found:
                missing.append((kind, value))
    return found, missing


def _pin_images(entries: list[dict], registry_id: str, home_region: str, partition: str) -> None:
    """Set each entry's ``pinned`` image URI (its region's replica, by digest), or raise ImageNotFoundError."""
    problems: list[str] = []
    wanted: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for entry in entries:
        image = entry["image"]
        wanted[image["repository"]].update(
            (kind, image[kind]) for kind in ("tag", "digest") if image.get(kind) is not None)
    ecr = _client("ecr", home_region)
    digests: dict[tuple[str, str, str], str] = {}
    for repository, ids in sorted(wanted.items()):
        found, missing = _find_images(ecr, registry_id, repository, sorted(ids))
        digests.update({(repository, *k): v for k, v in found.items()})
        problems += [f"{repository}:{value}" if kind == "tag" else f"{repository}@{value}"
                     for kind, value in missing]
    if problems:
        raise ImageNotFoundError(f"not in registry {registry_id} ({home_region}), nothing was changed: "
                                 + ", ".join(problems))
    # Every target region pulls from its own replica: check the pinned digest got there before changing anything.
    replicas: dict[tuple[str, str], set[str]] = defaultdict(set)
    for entry in entries:
        image = entry["image"]
        digest = digests.get((image["repository"], "tag", image["tag"])) if image.get("tag") else image["digest"]
        if image.get("tag") and image.get("digest") and digest != image["digest"]:
            problems.append(f"{entry['name']}: tag {image['tag']} is {digest}, not the given {image['digest']}")
            continue
        entry["digest"] = digest
        if entry["region"] != home_region:
            replicas[(entry["region"], image["repository"])].add(digest)
    for (region, repository), region_digests in sorted(replicas.items()):
        _, missing = _find_images(_client("ecr", region), registry_id, repository,
                                  [("digest", d) for d in sorted(region_digests)])
        problems += [f"{repository}@{value} is not on the {region} replica" for _, value in missing]
    if problems:
        raise ImageNotFoundError("; ".join(problems) + "; nothing was changed")
    suffix = _DNS_SUFFIX[partition]
    for entry in entries:
        detail = {"registry": registry_id, "suffix": suffix, "repo": entry["image"]["repository"],
                  "digest": entry.pop("digest")}
        try:
            entry["pinned"] = regional_image_uri(detail, entry["region"])
        except TransformError as exc:
            raise ReleaseInputError(f"{entry['name']}: {exc}") from None


def _describe_task_definition(ecs: Any, arn: str, cache: dict[tuple[int, str], dict]) -> dict:
    key = (id(ecs), arn)
    if key not in cache:
        cache[key] = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
    return cache[key]


def _check_container(where: str, ecs: Any, arn: str, container: str | None, cache: dict, problems: list[str]) -> None:
    try:
        container_named(_describe_task_definition(ecs, arn, cache), container)
    except TaskDefinitionError as exc:
        problems.append(f"{where}: {arn}: {exc}")
    except ClientError as exc:
        problems.append(f"{where}: cannot read {arn}: {exc}")


def _parallel(fn: Callable[[Any], None], jobs: list[Any]) -> None:
    """Run ``fn`` over ``jobs`` a few at a time: prepare reads hundreds of targets, and one at a time both takes
    long and adds up every throttling backoff. A few workers stay well inside ECS's per-account rates."""
    with ThreadPoolExecutor(max_workers=PREPARE_WORKERS) as pool:
        for _ in pool.map(fn, jobs):
            pass


def _snapshot_services(services: list[dict], session_name: str, problems: list[str]) -> None:
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for entry in services:
        groups[(entry["roleArn"], entry["region"], entry["cluster"])].append(entry)
    # DescribeServices takes 10 services per call.
    jobs = [(key, chunk) for key, group in groups.items() for chunk in _chunks(group, 10)]

    def describe(job: tuple[tuple[str, str, str], list[dict]]) -> None:
        (role, region, cluster), chunk = job
        ecs = _client("ecs", region, role, session_name)
        try:
            described = ecs.describe_services(cluster=cluster, services=[e["service"] for e in chunk])
        except ClientError as exc:
            problems.extend(f"{e['name']}: cannot describe {cluster}/{e['service']}: {exc}" for e in chunk)
            return
        by_name = {s["serviceName"]: s for s in described["services"]}
        for entry in chunk:
            service = by_name.get(entry["service"])
            where = f"{entry['name']} ({entry['accountId']} {region} {cluster}/{entry['service']})"
            if service is None or service.get("status") != "ACTIVE":
                problems.append(f"{where}: no active ECS service")
                continue
            controller = (service.get("deploymentController") or {}).get("type", "ECS")
            blue_green = entry.pop("blueGreen", None)
            if controller == "ECS":
                if blue_green:
                    problems.append(f"{where}: is a rolling service (ECS deployment controller), but the release "
                                    "context deploys it blue/green through CodeDeploy deployment group "
                                    f"{blue_green['application']}/{blue_green['deploymentGroup']}")
                    continue
                entry["snapshot"], entry["where"] = service["taskDefinition"], where
            elif controller == "CODE_DEPLOY":
                if not blue_green:
                    problems.append(f"{where}: uses the CODE_DEPLOY (blue/green) deployment controller, but the "
                                    "release context has no CodeDeploy deployment group for it (its environment is "
                                    "not blue-green)")
                    continue
                # The AppSpec's LoadBalancerInfo: the container and port the service's target group sends traffic to.
                balancers = sorted({(lb.get("containerName"), lb.get("containerPort"))
                                    for lb in service.get("loadBalancers") or []}, key=str)
                if len(balancers) != 1 or not balancers[0][0] or not isinstance(balancers[0][1], int):
                    problems.append(f"{where}: a blue/green service needs one load balancer container and port, "
                                    f"DescribeServices lists {balancers or 'none'}")
                    continue
                entry["blueGreen"] = {"application": blue_green["application"],
                                      "deploymentGroup": blue_green["deploymentGroup"],
                                      "containerName": balancers[0][0], "containerPort": balancers[0][1],
                                      # Kept for the AppSpec: the release smoke-tests as the pipeline does.
                                      **({"smokeTestHook": blue_green["smokeTestHook"]}
                                         if blue_green.get("smokeTestHook") else {})}
                entry["snapshot"], entry["where"] = serving_task_definition(service), where
            else:
                problems.append(f"{where}: uses the {controller} deployment controller; a release updates rolling "
                                "(ECS) and blue/green (CODE_DEPLOY) services only")

    definitions: dict[tuple[int, str], dict] = {}

    def check(entry: dict) -> None:
        ecs = _client("ecs", entry["region"], entry["roleArn"], session_name)
        where = entry.pop("where")
        _check_container(where, ecs, entry["snapshot"], entry.get("container"), definitions, problems)
        if "blueGreen" in entry:
            _check_deployment_group(where, entry, session_name, problems)

    _parallel(describe, jobs)
    _parallel(check, [entry for entry in services if "snapshot" in entry])


def serving_task_definition(service: Mapping[str, Any]) -> str:
    """The task definition behind a service's production traffic: a CODE_DEPLOY service's PRIMARY task set's (the
    one CodeDeploy routes the production listener to), else the service's own ``taskDefinition``."""
    primary = [t for t in service.get("taskSets") or [] if t.get("status") == "PRIMARY" and t.get("taskDefinition")]
    return str(primary[0]["taskDefinition"] if primary else service["taskDefinition"])


def _check_deployment_group(where: str, entry: dict, session_name: str, problems: list[str]) -> None:
    """The deployment group the context names must deploy this very service (else the release would put this
    service's task definition on another one), and must have no deployment in flight (CodeDeploy runs one at a
    time per group: the release would fail halfway)."""
    blue_green = entry["blueGreen"]
    group = f"{blue_green['application']}/{blue_green['deploymentGroup']}"
    codedeploy = _client("codedeploy", entry["region"], entry["roleArn"], session_name)
    try:
        info = codedeploy.get_deployment_group(applicationName=blue_green["application"],
                                               deploymentGroupName=blue_green["deploymentGroup"])["deploymentGroupInfo"]
        active = _deployments(codedeploy, entry, _DEPLOYMENT_ACTIVE)
    except ClientError as exc:
        problems.append(f"{where}: cannot read CodeDeploy deployment group {group}: {exc}")
        return
    deployed = sorted(f"{s.get('clusterName')}/{s.get('serviceName')}" for s in info.get("ecsServices") or [])
    if _service_key(entry) not in deployed:
        problems.append(f"{where}: CodeDeploy deployment group {group} deploys {', '.join(deployed) or 'no service'}, "
                        "not this service")
    if active:
        problems.append(f"{where}: CodeDeploy deployment {active[0]['deploymentId']} ({active[0].get('status')}) is "
                        f"in progress in deployment group {group}; release when it has finished")


def _list_targets(events: Any, rule: str, bus: str) -> list[dict]:
    targets: list[dict] = []
    kwargs: dict[str, Any] = {"Rule": rule, "EventBusName": bus}
    while True:
        page = events.list_targets_by_rule(**kwargs)
        targets += page.get("Targets", [])
        if not page.get("NextToken"):
            return targets
        kwargs["NextToken"] = page["NextToken"]


def _snapshot_tasks(tasks: list[dict], session_name: str, problems: list[str]) -> None:
    definitions: dict[tuple[int, str], dict] = {}

    def snapshot(entry: dict) -> None:
        bus = entry.get("eventBus") or "default"
        where = f"{entry['name']} ({entry['accountId']} {entry['region']} rule {bus}/{entry['ruleName']})"
        events = _client("events", entry["region"], entry["roleArn"], session_name)
        try:
            targets = _list_targets(events, entry["ruleName"], bus)
        except ClientError as exc:
            problems.append(f"{where}: cannot list the rule's targets: {exc}")
            return
        ecs_targets = [t for t in targets if "EcsParameters" in t]
        # With two ECS targets there is no telling which one the release means; refuse rather than guess.
        if len(ecs_targets) != 1:
            problems.append(f"{where}: has {len(ecs_targets)} ECS targets; a scheduled task needs exactly one")
            return
        entry["eventBus"], entry["targetId"], entry["snapshot"] = bus, ecs_targets[0]["Id"], targets
        ecs = _client("ecs", entry["region"], entry["roleArn"], session_name)
        _check_container(where, ecs, ecs_targets[0]["EcsParameters"]["TaskDefinitionArn"], entry.get("container"),
                         definitions, problems)

    _parallel(snapshot, tasks)


def history_estimate(timeout_seconds: int, check_wait_seconds: int, poll_seconds: int) -> int:
    """Worst-case Step Functions history events of one target's child execution: a service that takes the whole
    timeout to settle, forward (or back: the rollback's child is the same loop and one more state).

    Each target runs in its own child execution of a Distributed Map, with its own 25,000-event history, so the
    number of targets no longer adds up here. Lambda Task 5 events, Wait/Choice/Pass 2, execution start/end 2. The
    Wait/Check/Choice loop turns ``ceil(timeout / (check wait + poll))`` times.
    """
    loops = max(1, math.ceil(timeout_seconds / (check_wait_seconds + poll_seconds)))
    return 2 + 5 + 2 + 2 + 9 * loops + 2 + 10  # start/end, the first step, Choice, Pass, the loop, a margin


def _group_key(entry: Mapping[str, Any]) -> tuple[str, str]:
    return str(entry["accountId"]), str(entry["region"])


def _release_bucket() -> str:
    """The artifact bucket (home region): the converted manifest, the items files, the Map Runs' results."""
    return _env("CROSSDEPLOY_RELEASE_BUCKET")


def _read_json(bucket: str, key: str) -> Any:
    body = _client("s3", _env("CROSSDEPLOY_HOME_REGION")).get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)


def _poll_seconds(event: Mapping[str, Any]) -> int:
    """The state machine's ``pollSeconds`` (its definition sets it; an execution started by hand may not): 15 when
    absent, else a whole number of seconds from 1 to 3,600."""
    value = event.get("pollSeconds") or 15
    if type(value) is not int or not 1 <= value <= 3600:
        raise ReleaseInputError(f"pollSeconds: a whole number of seconds from 1 to 3600, got {value!r}")
    return value


def _manifest_of(event: Mapping[str, Any]) -> Any:
    """The release manifest: inline (``{"manifest": …}``, a small release started by hand), or where the pipeline's
    build put it (``{"manifestLocation": {"bucket", "key"}}``: a large release's manifest is over Step Functions'
    256 KiB of execution input). Only the release bucket's ``release-manifests/`` is read."""
    source = event.get("input", event)
    if not isinstance(source, Mapping):
        raise ReleaseInputError("execution input must be {\"manifest\": …} or {\"manifestLocation\": …}")
    location = source.get("manifestLocation")
    if location is None:
        return source.get("manifest")
    bucket = _release_bucket()
    if not (isinstance(location, Mapping) and location.get("bucket") == bucket and isinstance(location.get("key"), str)
            and location["key"].startswith(MANIFESTS_PREFIX) and ".." not in location["key"]):
        raise ReleaseInputError(f"manifestLocation {location!r} is not a release manifest of this stack "
                                f"(s3://{bucket}/{MANIFESTS_PREFIX}…)")
    try:
        return _read_json(bucket, location["key"])
    except (ClientError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested beyond the decoder
        raise ReleaseInputError(f"cannot read the release manifest s3://{bucket}/{location['key']}: "
                                f"{type(exc).__name__}: {exc}") from None


def _write_items(release: Mapping[str, Any], services: list[dict], tasks: list[dict]) -> list[dict[str, Any]]:
    """One items file per account-region and kind (the Distributed Maps' ItemReader reads them) and the descriptor of
    each account-region that travels in the state instead of its targets."""
    bucket, run = release["bucket"], f"{RUNS_PREFIX}{release['id']}/"
    groups: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: {"services": [], "tasks": []})
    for item in services:
        groups[_group_key(item)]["services"].append(item)
    for item in tasks:
        groups[_group_key(item)]["tasks"].append(item)
    s3 = _client("s3", _env("CROSSDEPLOY_HOME_REGION"))
    descriptors = []
    for (account, region), kinds in sorted(groups.items()):
        where = f"{account}-{region}"
        keys = {kind: f"{run}items/{where}/{kind}.json" for kind in ("services", "tasks")}
        for kind, key in keys.items():
            s3.put_object(Bucket=bucket, Key=key, ContentType="application/json",
                          Body=json.dumps(kinds[kind], separators=(",", ":")).encode())
        descriptors.append({"accountId": account, "region": region, "services": len(kinds["services"]),
                            "tasks": len(kinds["tasks"]), "items": keys,
                            "results": {"deploy": f"{run}results/deploy/{where}",
                                        "rollback": f"{run}results/rollback/{where}"}})
    return descriptors


def prepared_items(prepared: Mapping[str, Any]) -> dict[str, list[dict]]:
    """Every prepared item of a release, read back from its items files: ``{"services": […], "tasks": […]}``."""
    out: dict[str, list[dict]] = {"services": [], "tasks": []}
    for group in prepared["groups"]:
        for kind in out:
            out[kind] += _read_json(prepared["release"]["bucket"], group["items"][kind])
    return out


def prepare(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Validate, pin images to digests, snapshot every target, write the items to S3. Changes nothing in any workload
    account; fails before anything changes."""
    if not isinstance(event, Mapping):
        raise ReleaseInputError(f"the prepare step's input must be an object, got {type(event).__name__}")
    registry_id, home_region, partition = _env("CROSSDEPLOY_REGISTRY_ID"), _env("CROSSDEPLOY_HOME_REGION"), _partition()
    execution = str(event.get("executionId") or "manual")
    release: dict[str, Any] = {"id": execution.rsplit(":", 1)[-1], "execution": execution,
                               "bucket": _release_bucket()}
    if event.get("startedAt"):
        release["startedAt"] = str(event["startedAt"])
    manifest = _manifest_of(event)
    services, tasks = validate_manifest(manifest, registry_id, partition)
    release["source"] = str(manifest.get("source", ""))
    log("release.prepare.started", release=release["id"], execution=execution, step="prepare",
        services=len(services), tasks=len(tasks))

    per_group: dict[tuple[str, str], int] = defaultdict(int)
    for entry in services + tasks:
        per_group[_group_key(entry)] += 1
    too_large = ceiling_problems(per_group)
    timeout, wait = _service_timeout(), _env_int("CROSSDEPLOY_CHECK_WAIT_SECONDS", 300, 0)
    poll = _poll_seconds(event)
    events = history_estimate(timeout, wait, poll)
    if events > HISTORY_BUDGET_EVENTS:
        too_large.append(f"one service could take {events} Step Functions history events in its child execution "
                         f"(limit 25,000, budget {HISTORY_BUDGET_EVENTS}) with a {timeout}s service timeout and a "
                         f"{wait}s check wait: raise CROSSDEPLOY_CHECK_WAIT_SECONDS")
    if too_large:
        raise ReleaseTooLargeError("; ".join(too_large))

    _pin_images(services + tasks, registry_id, home_region, partition)
    session_name = _session_name(release)
    problems: list[str] = []
    _snapshot_services(services, session_name, problems)
    _snapshot_tasks(tasks, session_name, problems)
    if not problems:
        _attach_documents(services, problems)
    if problems:
        raise TargetError(f"{len(problems)} target problem(s), nothing was changed: " + "; ".join(sorted(problems)))

    common = ("name", "accountId", "region", "roleArn")
    # A blue/green service's item has one more (short) key: its CodeDeploy group, load balancer container and
    # smoke-test hook. A rolling service: where its deploy document is (key, version, environment): every step reads
    # that one version, never the task definition itself (each child's input is limited to 256 KiB too).
    service_items = [{**{k: s[k] for k in common}, "cluster": s["cluster"], "service": s["service"],
                      "container": s.get("container"), "image": s["pinned"], "snapshot": s["snapshot"],
                      **({"blueGreen": s["blueGreen"]} if "blueGreen" in s else {"document": s["document"]})}
                     for s in services]
    task_items = [{**{k: t[k] for k in common}, "ruleName": t["ruleName"], "eventBus": t["eventBus"],
                   "container": t.get("container"), "image": t["pinned"], "targetId": t["targetId"],
                   "snapshot": t["snapshot"]} for t in tasks]
    release["accountRegions"] = len(per_group)
    prepared = {"release": release, "groups": _write_items(release, service_items, task_items)}
    size = len(json.dumps(prepared, separators=(",", ":")).encode())
    if size > STATE_BUDGET_BYTES:  # cannot happen within release_limits; a guard against a future change
        raise ReleaseTooLargeError(f"the prepared release state is {size // 1024} KiB, over the "
                                   f"{STATE_BUDGET_BYTES // 1024} KiB budget (Step Functions' limit is 256 KiB)")
    for item in service_items:
        log("release.prepare.service", release=release["id"], step="prepare", target=item["name"],
            account=item["accountId"], region=item["region"], cluster=item["cluster"], service=item["service"],
            snapshotTaskDefinition=item["snapshot"], image=item["image"],
            **({"blueGreen": item["blueGreen"]} if "blueGreen" in item else {}))
    for item in task_items:
        ecs_target = next(t for t in item["snapshot"] if t["Id"] == item["targetId"])
        log("release.prepare.task", release=release["id"], step="prepare", target=item["name"],
            account=item["accountId"], region=item["region"], rule=item["ruleName"], eventBus=item["eventBus"],
            snapshotTaskDefinition=ecs_target["EcsParameters"]["TaskDefinitionArn"], image=item["image"])
    log("release.prepare.done", release=release["id"], step="prepare", bytes=size, historyEstimate=events,
        accountRegions=len(per_group), items=f"s3://{release['bucket']}/{RUNS_PREFIX}{release['id']}/items/")
    return prepared


# ------------------------------------------------------------------------------------------------------- forward steps

def _register_copy(ecs: Any, item: Mapping[str, Any], task_definition: str, release_id: str) -> str:
    """A scheduled task's or CodeDeploy service's new revision: ``task_definition`` copied whole with only the
    container's image replaced and the release's deployment tag (the engine's own copy-and-swap,
    :func:`deploy_engine.render`), or ``task_definition`` itself if it already is that revision (a re-run step must
    not pile up identical revisions)."""
    described = ecs.describe_task_definition(taskDefinition=task_definition, include=["TAGS"])
    current = register_kwargs(described, ecs)
    target = deploy_engine.Target("", item["accountId"], item["region"], item["roleArn"], "", "",
                                  item.get("container"), item["image"], None)  # type: ignore[arg-type]
    desired = deploy_engine.render(target, current, release_id)
    if deploy_engine.same_revision(current, desired):
        return str(described["taskDefinition"]["taskDefinitionArn"])
    return str(ecs.register_task_definition(**desired)["taskDefinition"]["taskDefinitionArn"])


# ------------------------------------------------------------------------------------------- CodeDeploy (blue/green)

def appspec(task_definition: str, blue_green: Mapping[str, Any], *, smoke_test: bool = True) -> str:
    """The AppSpec (JSON) of an ECS blue/green deployment to ``task_definition``, behind the service's load balancer
    container and port (as DescribeServices gave them). With ``smoke_test`` and a ``smokeTestHook`` in
    ``blue_green``, CodeDeploy runs that function at ``AfterAllowTestTraffic`` (by name: in the deployment's own
    account and region) and rolls back if it reports Failed."""
    spec: dict[str, Any] = {"version": 0.0, "Resources": [{"TargetService": {
        "Type": "AWS::ECS::Service",
        "Properties": {"TaskDefinition": task_definition,
                       "LoadBalancerInfo": {"ContainerName": blue_green["containerName"],
                                            "ContainerPort": blue_green["containerPort"]}}}}]}
    hook = blue_green.get("smokeTestHook")
    if smoke_test and hook:
        spec["Hooks"] = [{SMOKE_HOOK_EVENT: hook}]
    return json.dumps(spec, separators=(",", ":"))


def _create_deployment(codedeploy: Any, item: Mapping[str, Any], release_id: str, purpose: str,
                       task_definition: str) -> str:
    blue_green = item["blueGreen"]
    # Only a deployment forward runs the smoke test. The rollback deployment puts back the revision the service
    # served before the release (already proven in production); a hook failing on it (the hook's own trouble, a
    # flaky path) would make CodeDeploy roll the restore back and leave the service on the revision being undone.
    content = appspec(task_definition, blue_green, smoke_test=purpose == "deploy")
    return str(codedeploy.create_deployment(
        applicationName=blue_green["application"], deploymentGroupName=blue_green["deploymentGroup"],
        revision={"revisionType": "AppSpecContent", "appSpecContent": {"content": content}},
        description=f"crossdeploy release {release_id}: {purpose} {task_definition}")["deploymentId"])


def _deployments(codedeploy: Any, item: Mapping[str, Any], statuses: Iterable[str],
                 since: dt.datetime | None = None) -> list[dict]:
    """The deployment group's deployments in ``statuses`` (created after ``since``), described."""
    blue_green = item["blueGreen"]
    kwargs: dict[str, Any] = {"applicationName": blue_green["application"],
                              "deploymentGroupName": blue_green["deploymentGroup"],
                              "includeOnlyStatuses": list(statuses)}
    if since is not None:
        kwargs["createTimeRange"] = {"start": since}
    ids: list[str] = []
    while True:
        page = codedeploy.list_deployments(**kwargs)
        ids += page.get("deployments", [])
        if not page.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextToken"]
    return [codedeploy.get_deployment(deploymentId=i)["deploymentInfo"] for i in ids]


def _purpose(deployment: Mapping[str, Any], release_id: str) -> tuple[str | None, str | None]:
    """(deploy | rollback, its task definition) for a deployment this release started, else (None, None)."""
    match = _DESCRIPTION.fullmatch(str(deployment.get("description") or ""))
    if match is None or match["release"] != release_id:
        return None, None
    return match["purpose"], match["target"]


def deployment_status(deployment: Mapping[str, Any] | None) -> tuple[str, str]:
    """(STEADY | IN_PROGRESS | FAILED, why) of a CodeDeploy deployment: Succeeded is steady; Failed or Stopped has
    failed (with CodeDeploy's error); anything else is still going."""
    if not deployment:
        return FAILED, "CodeDeploy deployment is missing"
    status, name = deployment.get("status"), deployment.get("deploymentId")
    if status == "Succeeded":
        return STEADY, f"CodeDeploy deployment {name} succeeded"
    if status in _DEPLOYMENT_ENDED_BADLY:
        error = deployment.get("errorInformation") or {}
        detail = ": ".join(str(v) for v in (error.get("code"), error.get("message")) if v) or "no error information"
        rollback = (deployment.get("rollbackInfo") or {}).get("rollbackMessage")
        return FAILED, f"CodeDeploy deployment {name} {status}: {detail}" + (f" ({rollback})" if rollback else "")
    return IN_PROGRESS, f"CodeDeploy deployment {name} {status}"


def _deploy_blue_green(codedeploy: Any, item: Mapping[str, Any], release_id: str, new: str) -> tuple[str, str]:
    """(task definition, deployment id) of this release's CodeDeploy deployment of ``new``."""
    try:
        return new, _create_deployment(codedeploy, item, release_id, "deploy", new)
    except ClientError as exc:
        if _error_code(exc) != "DeploymentLimitExceededException":
            raise
        # One deployment at a time per group. A re-run step (its first run started one, its answer was lost)
        # carries on with this release's own; anyone else's stops the release.
        for deployment in _deployments(codedeploy, item, _DEPLOYMENT_ACTIVE):
            purpose, target = _purpose(deployment, release_id)
            if purpose == "deploy" and target:
                return target, str(deployment["deploymentId"])
        raise


def _restore_blue_green(item: Mapping[str, Any], release_id: str, session_name: str, *, stop: bool,
                        since: dt.datetime) -> tuple[str, str, bool, str | None]:
    """(status, why, changed, task definition serving before) of putting a blue/green service back on its snapshot.

    Converges from whatever state the release left: this release's deployment still going is stopped with
    CodeDeploy's rollback (``stop``: the rollback step; the check only waits for it); any deployment still going is
    waited for (CodeDeploy runs one per group) unless it is someone else's; with none going, a service not serving
    its snapshot gets a CodeDeploy deployment back to it, once (this release's rollback deployment that failed is
    reported, not retried). Reads the deployments before the service, so a deployment ending in between is seen.
    """
    codedeploy = _client("codedeploy", item["region"], item["roleArn"], session_name)
    blue_green = item["blueGreen"]
    group = f"{blue_green['application']}/{blue_green['deploymentGroup']}"
    active = _deployments(codedeploy, item, _DEPLOYMENT_ACTIVE)
    stopped, ended = [], set()
    for deployment in active:
        if stop and _purpose(deployment, release_id)[0] == "deploy":
            try:
                codedeploy.stop_deployment(deploymentId=deployment["deploymentId"], autoRollbackEnabled=True)
                stopped.append(str(deployment["deploymentId"]))
            except ClientError as exc:
                if _error_code(exc) != "DeploymentAlreadyCompletedException":
                    raise
                ended.add(deployment["deploymentId"])  # finished meanwhile: judge the service below
    if stopped:
        return IN_PROGRESS, f"stopped CodeDeploy deployment {', '.join(stopped)} with rollback", True, None
    for deployment in (d for d in active if d["deploymentId"] not in ended):
        purpose, _ = _purpose(deployment, release_id)
        if purpose is None and deployment.get("creator") != "codeDeployRollback":
            return FAILED, (f"CodeDeploy deployment {deployment['deploymentId']} ({deployment.get('status')}, "
                            f"{deployment.get('description') or deployment.get('creator')}) of group {group} is not "
                            "this release's: left alone, the service is not restored"), False, None
        return IN_PROGRESS, (f"waiting for CodeDeploy deployment {deployment['deploymentId']} "
                             f"({deployment.get('status')}, {purpose or deployment.get('creator')})"), False, None
    ecs = _client("ecs", item["region"], item["roleArn"], session_name)
    service = _describe_service(ecs, item)
    if service is None or service.get("status") != "ACTIVE":
        raise TargetError(f"{item['name']}: service {item['cluster']}/{item['service']} is gone")
    current = serving_task_definition(service)
    if current == item["snapshot"]:
        return STEADY, f"serving its snapshot {current}", False, current
    for deployment in _deployments(codedeploy, item, _DEPLOYMENT_ENDED_BADLY, since):
        if _purpose(deployment, release_id)[0] == "rollback":
            return FAILED, (f"serving {current}; {deployment_status(deployment)[1]} (the rollback deployment)"), \
                False, current
    try:
        deployment_id = _create_deployment(codedeploy, item, release_id, "rollback", item["snapshot"])
    except ClientError as exc:
        if _error_code(exc) != "DeploymentLimitExceededException":
            raise
        # A deployment started since the listing (CodeDeploy's own rollback of a stopped one): the next look waits.
        return IN_PROGRESS, f"serving {current}; a CodeDeploy deployment started meanwhile", False, current
    return IN_PROGRESS, f"rolling back from {current}: CodeDeploy deployment {deployment_id}", True, current


def _put_targets(events: Any, item: Mapping[str, Any], targets: list[dict]) -> None:
    response = events.put_targets(Rule=item["ruleName"], EventBusName=item["eventBus"], Targets=targets)
    if response.get("FailedEntryCount"):
        raise TargetUpdateError(f"{item['name']}: rule {item['ruleName']} refused targets: "
                                f"{response.get('FailedEntries')}")


@contextlib.contextmanager
def _naming(item: Mapping[str, Any]) -> Iterator[None]:
    """AWS errors re-raised with the target they concern (a bare AccessDenied among 300 services helps nobody)."""
    try:
        yield
    except ClientError as exc:
        raise TargetUpdateError(f"{item['name']} ({item['accountId']} {item['region']}): {exc}") from exc


def _fields(event: Mapping[str, Any], step: str) -> dict[str, Any]:
    item, release = event["item"], event["release"]
    return {"release": release.get("id"), "step": step, "target": item["name"], "account": item["accountId"],
            "region": item["region"]}


def update_task(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Point a scheduled task's rule target at a copy of its task definition with the pinned image."""
    item, session_name = event["item"], _session_name(event["release"])
    with _naming(item):
        events = _client("events", item["region"], item["roleArn"], session_name)
        targets = {t["Id"]: t for t in _list_targets(events, item["ruleName"], item["eventBus"])}
        target = targets.get(item["targetId"])
        if target is None or "EcsParameters" not in target:
            raise TargetError(f"{item['name']}: rule {item['ruleName']} no longer has ECS target {item['targetId']}")
        old = target["EcsParameters"]["TaskDefinitionArn"]
        new = _register_copy(_client("ecs", item["region"], item["roleArn"], session_name), item, old,
                             str(event["release"].get("id")))
        # The whole target as it is now, only the task definition changed: input, role, network, retry policy,
        # dead-letter queue and tags all stay.
        updated = copy.deepcopy(target)
        updated["EcsParameters"]["TaskDefinitionArn"] = new
        _put_targets(events, item, [updated])
    log("release.task.updated", **_fields(event, "updateTask"), rule=item["ruleName"], targetId=item["targetId"],
        oldTaskDefinition=old, newTaskDefinition=new, image=item["image"])
    return {"taskDefinitionArn": new}


def deploy_service(event: Mapping[str, Any], context: Any = None, *,
                   clock: Callable[[], dt.datetime] = _utcnow) -> dict[str, Any]:
    """A rolling service: the deploy engine's ``start`` on its target, rendered from the deploy document version
    prepare read, with the manifest's digest (``engine``: the engine's state, which the checks follow). A blue/green
    service (CodeDeploy): a copy of the snapshot task definition with the pinned image, deployed by a CodeDeploy
    deployment (``deploymentId``)."""
    item, session_name = event["item"], _session_name(event["release"])
    release_id = str(event["release"].get("id"))
    started = _parse_time(event["startedAt"]) if event.get("startedAt") else clock()
    deadline = _iso(started + dt.timedelta(seconds=_service_timeout()))
    blue_green, deployment_id = item.get("blueGreen"), None
    if not blue_green:
        return _deploy_with_engine(event, started, deadline)
    with _naming(item):
        ecs = _client("ecs", item["region"], item["roleArn"], session_name)
        new = _register_copy(ecs, item, item["snapshot"], release_id)
        new, deployment_id = _deploy_blue_green(_client("codedeploy", item["region"], item["roleArn"], session_name),
                                                item, release_id, new)
    log("release.service.updated", **_fields(event, "deployService"), cluster=item["cluster"],
        service=item["service"], oldTaskDefinition=item["snapshot"], newTaskDefinition=new, deadline=deadline,
        deploymentId=deployment_id, application=blue_green["application"],
        deploymentGroup=blue_green["deploymentGroup"])
    return {"taskDefinitionArn": new, "deadline": deadline, "deploymentId": deployment_id, "engine": None}


def _render(item: Mapping[str, Any]) -> deploy_engine.Target:
    """:func:`_rendered_target`, or :class:`TargetUpdateError` naming the item and the document version."""
    try:
        return _rendered_target(item)
    except (ClientError, deploy_engine.EngineInputError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise TargetUpdateError(f"{item['name']} ({item['accountId']} {item['region']}): cannot render from deploy "
                                f"document {item.get('document')}: {exc}") from exc


def _deploy_with_engine(event: Mapping[str, Any], started: dt.datetime, deadline: str) -> dict[str, Any]:
    item = event["item"]
    where = f"{item['name']} ({item['accountId']} {item['region']})"
    target = _render(item)
    with _naming(item):
        session = _deploy_session(item["roleArn"], _session_name(event["release"]))
    state = deploy_engine.start(target, session, str(event["release"].get("id")), now=started.timestamp(),
                                timeout_seconds=_service_timeout())
    outcome = {deploy_engine.FAILED: "failed", deploy_engine.UNCHANGED: "unchanged"}.get(state.phase, "updated")
    log(f"release.service.{outcome}", **_fields(event, "deployService"), cluster=item["cluster"],
        service=item["service"], oldTaskDefinition=state.previous_task_definition,
        newTaskDefinition=state.new_task_definition, deadline=deadline, reason=state.reason,
        snapshotTaskDefinition=item["snapshot"], document=item["document"], changed=state.changed)
    if state.phase == deploy_engine.FAILED:
        raise TargetUpdateError(f"{where}: {state.reason}")
    return {"taskDefinitionArn": state.new_task_definition, "deadline": deadline, "deploymentId": None,
            "engine": state.to_dict()}


# ------------------------------------------------------------------------------------------------------------- checks

def _describe_service(ecs: Any, item: Mapping[str, Any]) -> dict | None:
    services = ecs.describe_services(cluster=item["cluster"], services=[item["service"]])["services"]
    return services[0] if services else None


def _await_service(event: Mapping[str, Any], context: Any, step: str, expected: str, deadline: str,
                   sleep: Callable[[float], None], clock: Callable[[], float],
                   probe: Callable[[], tuple[str, str]], cost: Callable[[], int] | None = None,
                   **log_fields: Any) -> dict[str, Any]:
    """Poll until steady, failed or past the deadline, or until this Lambda's wait budget is spent (IN_PROGRESS:
    the state machine waits and calls again). Waiting here rather than only in the state machine keeps a
    300-service release far below Step Functions' 25,000 history events. ``probe``: one look, (status, why): the
    deploy engine's ``poll`` of a rolling service, CodeDeploy's deployment of a blue/green one. ``cost``: the
    longest the next look may take beyond a status read (a smoke test); a look is begun only if it ends within
    the Lambda's time, and one that never could (the first look of an invocation) fails the target, naming the
    Lambda timeout it would need."""
    item = event["item"]
    poll = _poll_seconds(event)
    budget, limit = _check_wait(context), _time_left(context)
    entered = _parse_time(event["now"]) if event.get("now") else _utcnow()
    until = _parse_time(deadline)
    started = clock()
    checks = 0
    status, reason = IN_PROGRESS, "not looked at yet"
    while True:
        smoke = cost() if cost is not None else 0
        need = smoke + SMOKE_LOOKUP_SECONDS if smoke else 0
        if limit is not None and need and clock() - started + need > limit:
            if checks == 0:
                # Every invocation of this step gets the same timeout: the check would never fit, and waiting for
                # the deadline would only hide why. Failing the target starts the release's rollback.
                status, reason = FAILED, (
                    f"the smoke test may take {smoke} s (and {SMOKE_LOOKUP_SECONDS} s to find the load balancer), "
                    f"more than the {int(limit)} s this check step can spend: nothing was checked; its Lambda needs "
                    f"a timeout of at least {need + CHECK_RESERVE_SECONDS} s")
            break  # else: IN_PROGRESS, and the next invocation looks with its whole time ahead
        status, reason = probe()
        checks += 1
        waited = clock() - started
        now = entered + dt.timedelta(seconds=waited)
        if status == IN_PROGRESS and now >= until:
            status, reason = TIMED_OUT, f"not steady by {deadline}: {reason}"
        if status != IN_PROGRESS or waited + poll > budget:
            break
        sleep(min(poll, max(1.0, (until - now).total_seconds())))
    reason = f"{item['name']} ({item['accountId']} {item['region']} {item['cluster']}/{item['service']}): {reason}"
    log("release.service.checked", **_fields(event, step), status=status, reason=reason, checks=checks,
        taskDefinition=expected, **log_fields)
    return {"status": status, "reason": reason[:1000], "deadline": deadline}


def check_service(event: Mapping[str, Any], context: Any = None, *, sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """STEADY / IN_PROGRESS / FAILED / TIMED_OUT for a service deployed by :func:`deploy_service` (a blue/green
    one: its CodeDeploy deployment succeeded / is going / failed or was stopped)."""
    deploy, item = event["deploy"], event["item"]
    if not item.get("blueGreen"):
        # Rendered from the document version prepare pinned: its smoke test runs once ECS reports the rollout
        # complete (a rolling environment's; native ones check through an ECS lifecycle hook, CodeDeploy through
        # its own), and a failure fails the target, so the release rolls back as a whole.
        target = _render(item)
        probe, holder = _engine_probe(event, deploy["engine"], clock, target=target, sleep=sleep)
        return _await_service(event, context, "checkService", deploy["taskDefinitionArn"], deploy["deadline"],
                              sleep, clock, probe,
                              cost=lambda: deploy_engine.smoke_test_seconds([target], holder, max_concurrency=1))
    codedeploy = _client("codedeploy", item["region"], item["roleArn"], _session_name(event["release"]))
    deployment_id = deploy["deploymentId"]

    def probe() -> tuple[str, str]:
        return deployment_status(codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"])
    return _await_service(event, context, "checkService", deploy["taskDefinitionArn"], deploy["deadline"],
                          sleep, clock, probe, deploymentId=deployment_id)


def check_rollback(event: Mapping[str, Any], context: Any = None, *, sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """STEADY / IN_PROGRESS / FAILED / TIMED_OUT for a service being put back on its snapshot."""
    item, deadline = event["item"], event["rollback"]["deadline"]
    if not item.get("blueGreen"):
        probe, state = _engine_probe(event, event["rollback"]["engine"], clock)
        return {**_await_service(event, context, "checkRollback", item["snapshot"], deadline, sleep, clock, probe),
                "engine": state[0].to_dict()}
    # Nothing of the rollback step's result is needed: each look judges CodeDeploy and the service afresh.
    since = _parse_time(deadline) - dt.timedelta(seconds=_service_timeout() + 900)
    release_id, session_name = str(event["release"].get("id")), _session_name(event["release"])

    def probe() -> tuple[str, str]:
        return _restore_blue_green(item, release_id, session_name, stop=False, since=since)[:2]
    return {**_await_service(event, context, "checkRollback", item["snapshot"], deadline, sleep, clock, probe),
            "engine": None}


def engine_status(state: deploy_engine.TargetState) -> tuple[str, str]:
    """(STEADY | IN_PROGRESS | FAILED | TIMED_OUT, why) of the engine's state of a deployment or a restore."""
    if state.phase in (deploy_engine.SUCCEEDED, deploy_engine.UNCHANGED):
        return STEADY, f"deployed {state.new_task_definition} ({state.phase})"
    if state.phase == deploy_engine.RESTORED:
        return STEADY, f"back on {state.previous_task_definition}"
    if state.active:
        what = "restore of" if state.phase == deploy_engine.RESTORING else "deployment of"
        target = state.previous_task_definition if state.phase == deploy_engine.RESTORING else state.new_task_definition
        return IN_PROGRESS, f"ECS {what} {target}: {state.ecs_status or 'PENDING'}"
    reason = str(state.restore_reason if state.phase == deploy_engine.RESTORE_FAILED else state.reason)
    # The engine's own timeouts read "<target>: timed out after …" or "<target>: restore timed out after …" (a
    # target's label has no ": "); a smoke test whose attempts timed out ("<target>: smoke test failed: GET / ->
    # timed out after 10 s") is a failed check, not a deployment out of time.
    what = reason.split(": ", 1)[-1]
    return (TIMED_OUT if what.startswith(("timed out after ", "restore timed out after ")) else FAILED), reason


def _engine_probe(event: Mapping[str, Any], raw_state: Mapping[str, Any], clock: Callable[[], float], *,
                  target: deploy_engine.Target | None = None, sleep: Callable[[float], None] = time.sleep,
                  ) -> tuple[Callable[[], tuple[str, str]], list[deploy_engine.TargetState]]:
    """A probe for :func:`_await_service`: one engine ``poll`` per look, on Step Functions' clock (``now``), and the
    holder of the latest state. ``target``: the rendered one, whose smoke test a look runs when the deployment
    succeeded (``sleep`` paces its attempts); by default where the item is, which is all a restore needs."""
    item = event["item"]
    target = target or _engine_target(item)
    session = _deploy_session(item["roleArn"], _session_name(event["release"]))
    entered, began = _epoch(event.get("now")), clock()
    holder = [deploy_engine.TargetState.from_dict(raw_state)]

    def probe() -> tuple[str, str]:
        holder[0] = deploy_engine.poll(target, holder[0], session, entered + (clock() - began), sleep=sleep)
        return engine_status(holder[0])
    return probe, holder


# ----------------------------------------------------------------------------------------------------------- rollback

def rollback_target(event: Mapping[str, Any], context: Any = None, *,
                    clock: Callable[[], dt.datetime] = _utcnow) -> dict[str, Any]:
    """Restore one target to its snapshot if (and only if) it differs. Safe to repeat."""
    item, kind, session_name = event["item"], event["kind"], _session_name(event["release"])
    started = _parse_time(event["startedAt"]) if event.get("startedAt") else clock()
    deadline = _iso(started + dt.timedelta(seconds=_service_timeout()))
    if kind == "service" and item.get("blueGreen"):
        status, reason, changed, current = _restore_blue_green(
            item, str(event["release"].get("id")), session_name, stop=True, since=started - dt.timedelta(seconds=900))
        log("release.rollback.service", **_fields(event, "rollbackTarget"), cluster=item["cluster"],
            service=item["service"], changed=changed, oldTaskDefinition=current, newTaskDefinition=item["snapshot"],
            status=status, reason=reason)
        return {"status": status, "reason": f"{item['name']}: {reason}"[:1000], "deadline": deadline,
                "changed": changed, "engine": None}
    if kind == "service":
        # Whatever the forward Map did (its states are gone): the engine puts the service back on the snapshot
        # if it is not on it, and its restore is followed like a deployment.
        state = deploy_engine.restore(
            _engine_target(item), deploy_engine.TargetState(
                deploy_engine.SUCCEEDED, changed=True, previous_task_definition=item["snapshot"],
                started_at=started.timestamp(), timeout_seconds=float(_service_timeout())),
            _deploy_session(item["roleArn"], session_name), started.timestamp())
        if state.phase == deploy_engine.RESTORE_FAILED:
            raise TargetError(f"{item['name']}: {state.restore_reason}")
        status, reason = engine_status(state)
        changed = state.phase == deploy_engine.RESTORING
        log("release.rollback.service", **_fields(event, "rollbackTarget"), cluster=item["cluster"],
            service=item["service"], changed=changed, newTaskDefinition=item["snapshot"], status=status,
            restoreDeployment=state.restore_deployment)
        return {"status": status, "reason": f"{item['name']}: {reason}"[:1000], "deadline": deadline,
                "changed": changed, "engine": state.to_dict()}
    if kind == "task":
        events = _client("events", item["region"], item["roleArn"], session_name)
        current = {t["Id"]: t for t in _list_targets(events, item["ruleName"], item["eventBus"])}
        # Put back each snapshot target that is missing or differs in any field; targets added since are left.
        differing = [t for t in item["snapshot"] if current.get(t["Id"]) != t]
        if differing:
            _put_targets(events, item, differing)

        def task_definition(target: Mapping[str, Any] | None) -> str | None:
            return ((target or {}).get("EcsParameters") or {}).get("TaskDefinitionArn")
        log("release.rollback.task", **_fields(event, "rollbackTarget"), rule=item["ruleName"],
            changed=bool(differing), restoredTargets=[t["Id"] for t in differing],
            oldTaskDefinition={t["Id"]: task_definition(current.get(t["Id"])) for t in differing},
            newTaskDefinition={t["Id"]: task_definition(t) for t in differing})
        return {"status": STEADY, "reason": f"{item['name']}: {len(differing)} target(s) restored",
                "deadline": deadline, "changed": bool(differing), "engine": None}
    raise ValueError(f"unknown target kind {kind!r}")


# -------------------------------------------------------------------------------------------------------------- notify

def _error_text(error: Any) -> str:
    if not isinstance(error, Mapping):
        return ""
    cause = error.get("Cause") or ""
    try:  # a Lambda failure's Cause is JSON with the exception's message
        parsed = json.loads(cause)
        if isinstance(parsed, Mapping) and parsed.get("errorMessage"):
            cause = parsed["errorMessage"]
    except (TypeError, ValueError):
        pass
    return f"{error.get('Error', 'Error')}: {cause}".strip().rstrip(":")


def _map_run(location: Any) -> dict[str, list[dict]] | None:
    """A Map Run's results as ResultWriter wrote them (``manifest.json``, then its SUCCEEDED / FAILED / PENDING result
    files: one entry per child execution, with Input, Output, Status, StartDate, StopDate, Error, Cause), by status;
    None if ``location`` is not a Map output ({bucket, key}) but the Map's own error."""
    if not (isinstance(location, Mapping) and isinstance(location.get("key"), str)):
        return None
    manifest = _read_json(str(location.get("bucket")), location["key"])
    out: dict[str, list[dict]] = defaultdict(list)
    for status, files in (manifest.get("ResultFiles") or {}).items():
        for entry in files:
            out[status] += _read_json(manifest["DestinationBucket"], entry["Key"])
    return out


def _output(entry: Mapping[str, Any]) -> dict:
    try:
        value = json.loads(entry.get("Output") or "null")
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {}


def _input_name(entry: Mapping[str, Any]) -> str:
    try:
        return str(json.loads(entry.get("Input") or "{}").get("item", {}).get("name", "?"))
    except (ValueError, AttributeError):
        return "?"


def _tally(groups: Any, kind: str, expected: int | None) -> tuple[bool, str, list[str]]:
    """(complete, one line, the targets not restored) of ``kind`` (services | tasks) from the rollback's account-region
    results: every child that did not end restored, and every Map Run that did not run to the end, is a miss."""
    label = "services" if kind == "services" else "scheduled tasks"
    if not isinstance(groups, list):
        return False, f"{label}: the rollback did not run to the end ({_error_text(groups)})", []
    restored, missed, incomplete = 0, [], []
    for group in groups:
        where = f"{group.get('accountId')} {group.get('region')}" if isinstance(group, Mapping) else "?"
        try:
            results = _map_run((group.get("results") or {}).get(kind) if isinstance(group, Mapping) else None)
        except (ClientError, ValueError, KeyError, TypeError) as exc:
            # Unknown is not restored: the release is reported as not fully rolled back, with why.
            incomplete.append(f"{where} (its results cannot be read: {exc})")
            continue
        if results is None:
            incomplete.append(where)
            continue
        for entry in results.get("SUCCEEDED", []):
            out = _output(entry)
            if out.get("restored") is True:
                restored += 1
            else:
                missed.append(f"{out.get('name', _input_name(entry))} ({out.get('error', '')}: "
                              f"{out.get('reason', '')})".replace(": )", ")"))
        for entry in results.get("FAILED", []) + results.get("PENDING", []):
            missed.append(f"{_input_name(entry)} ({entry.get('Status')} {entry.get('Error') or ''})".strip())
    if expected is not None and len(groups) != expected:
        incomplete.append(f"{expected - len(groups)} account-region(s) without a result")
    line = f"{label}: {restored} restored, {len(missed)} not restored"
    if incomplete:
        line += f"; the rollback did not run to the end in {', '.join(incomplete)}"
    return not missed and not incomplete, line, missed


def _root_cause(release: Mapping[str, Any]) -> str:
    """The first target that failed forward, as its child execution failed (Error: Cause), read from the forward Map
    Runs' FAILED results: the Map-level error (States.ExceedToleratedFailureThreshold) names no target."""
    bucket, prefix = release.get("bucket"), f"{RUNS_PREFIX}{release.get('id')}/results/deploy/"
    if not bucket:
        return ""
    s3 = _client("s3", _env("CROSSDEPLOY_HOME_REGION"))
    failures: list[dict] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/manifest.json"):
                    results = _map_run({"bucket": bucket, "key": obj["Key"]}) or {}
                    failures += [e for e in results.get("FAILED", []) if e.get("Status") == "FAILED"
                                 and e.get("Error") not in ("States.ExceedToleratedFailureThreshold", None)]
    except (ClientError, ValueError, KeyError, TypeError) as exc:
        log("release.notify.results-unreadable", release=release.get("id"), step="notify", error=str(exc)[:500])
        return ""  # the notice then names the state machine's own error
    if not failures:
        return ""
    first = min(failures, key=lambda e: str(e.get("StopDate") or ""))
    return _error_text({"Error": first.get("Error"), "Cause": first.get("Cause")})


def _seconds(start: Any, stop: Any) -> float | None:
    try:
        return (_parse_time(str(stop)) - _parse_time(str(start))).total_seconds()
    except (TypeError, ValueError):
        return None


def _progress_lines(release: Mapping[str, Any], groups: Any, bound: int, now: Any) -> list[str]:
    """What the release did and how long it took: targets and waves per account-region (waves: rounds of at most
    ``bound``), its duration, and the slowest targets (their child executions' start and stop, from the results)."""
    if not isinstance(groups, list):
        return []
    lines, timings = [], []
    total = 0
    for group in groups:
        if not isinstance(group, Mapping):
            continue
        services, tasks = int(group.get("services") or 0), int(group.get("tasks") or 0)
        total += services + tasks
        lines.append(f"{group.get('accountId')} {group.get('region')}: {services} services in "
                     f"{waves(services, bound)} wave(s), {tasks} scheduled tasks in {waves(tasks, bound)} wave(s)")
        for kind in ("services", "tasks"):
            results = _map_run((group.get("results") or {}).get(kind)) or {}
            for entry in results.get("SUCCEEDED", []):
                took = _seconds(entry.get("StartDate"), entry.get("StopDate"))
                if took is not None:
                    timings.append((took, str(_output(entry).get("name") or _input_name(entry))))
    duration = _seconds(release.get("startedAt"), now)
    head = f"{total} targets in {len(lines)} account-region(s), at most {bound} at once in each"
    if duration is not None:
        head += f"; took {int(duration // 60)} min {int(duration % 60)} s"
    slowest = sorted(timings, reverse=True)[:SLOWEST_SHOWN]
    tail = ["slowest: " + ", ".join(f"{name} {int(took)} s" for took, name in slowest)] if slowest else []
    return [head, *lines, *tail]


def notify(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Publish the release's outcome to the release topic; returns a one-line summary and whether rollback is
    complete (the state machine fails with RollbackIncomplete when it is not). A release that ran reports its
    targets, waves per account-region, duration and slowest targets, read from the Map Runs' results in S3."""
    topic = _env("CROSSDEPLOY_TOPIC_ARN")
    outcome = event["outcome"]
    execution = str(event.get("executionId") or "")
    release = event.get("release") or {"id": execution.rsplit(":", 1)[-1], "execution": execution}
    bound = int(event.get("maxConcurrency") or 10)
    complete, details = True, []
    if outcome == "SUCCEEDED":
        headline = "succeeded: every service is steady on its new task definition"
        try:
            details = _progress_lines(release, event.get("groups"), bound, event.get("now"))
        except (ClientError, ValueError, KeyError, TypeError) as exc:  # the notice goes out anyway
            details = [f"(the release's results could not be read: {exc})"[:1000]]
    elif outcome == "REJECTED":
        headline = f"was rejected before changing anything: {_error_text(event.get('error'))}"
    elif outcome == "ROLLED_BACK":
        expected = release.get("accountRegions")
        groups = event.get("groups")
        services_ok, services_line, services_left = _tally(groups, "services", expected)
        tasks_ok, tasks_line, tasks_left = _tally(groups, "tasks", expected)
        complete = services_ok and tasks_ok
        state = "rolled back" if complete else "NOT fully rolled back"
        headline = f"failed and was {state}: {_root_cause(release) or _error_text(event.get('error'))}"
        details = [services_line, tasks_line]
        left = services_left + tasks_left
        if left:
            details.append(f"not restored ({len(left)}): " + ", ".join(left[:50]) + (" …" if len(left) > 50 else ""))
    else:
        raise ValueError(f"unknown outcome {outcome!r}")
    summary = f"crossdeploy release {release.get('id')} {headline}"
    message = "\n".join([summary, f"execution: {release.get('execution', execution)}",
                         f"source: {release.get('source', '')}", *details])
    subject = re.sub(r"\s+", " ", f"crossdeploy release {release.get('id')}: {outcome}")[:100]
    region = topic.split(":")[3]
    _client("sns", region).publish(TopicArn=topic, Subject=subject, Message=message[:200_000])
    log("release.notified", release=release.get("id"), execution=release.get("execution", execution), step="notify",
        outcome=outcome, rollbackComplete=complete, summary=summary[:1000])
    return {"summary": (summary + (" | " + " | ".join(details) if details else ""))[:4000],
            "rollbackComplete": complete}


if __name__ == "__main__":
    # Not a command line: `python -m handlers.release` (with --help or anything else) used to import the
    # module, do nothing and exit 0, which reads as success. Say what it is instead, and fail like a usage error.
    import sys

    print("handlers.release: not a command line; it holds the release state machine's Lambda steps "
          "(Step Functions calls handlers.release.prepare, deploy_service, ...). To check a release "
          "file: python -m handlers.release_file validate --help", file=sys.stderr)
    sys.exit(2)
