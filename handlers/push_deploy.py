"""Push deploys: an ECR push of an environment tag (``qa-1.8.0``) rolls that exact image out to the environment's ECS
services in other accounts and regions (EventBridge "ECR Image Action" -> this Lambda).

Lambda entry point: ``handlers.push_deploy.handler``. The target map is ``targets.json`` at the package root (Lambda
caps environment variables at 4 KB in all, which a map of accounts x regions x services soon outgrows); the
environment variable ``CROSSDEPLOY_TARGETS_FILE`` points elsewhere, ``CROSSDEPLOY_MAX_CONCURRENCY`` overrides the
map's ``maxConcurrency``. Each ``revision`` repository of the map carries its service's **deploy document**
(``components.task_definition.deploy_document``, the same one the pipeline and releases deploy from).

* Refusals: anything but a successful push of a configured repository, from the registry's own account and home
  region, with a ``sha256:`` digest and a tag matching an environment, is logged once with a reason and answered
  ``{"status": "ignored"}`` **before any AWS call**; it is not raised, so a foreign event is never retried into the
  dead-letter queue. A deploy document the engine refuses is a deployment fault: raised (event kept), also before
  any AWS call.
* ``revision`` (default): wait until ECR replication has brought the digest to every region of the environment
  (nothing is deployed until every replica is there), then hand the environment to the deploy engine
  (:mod:`handlers.deploy_engine`): each target registers the task definition ``pulumi up`` rendered, with the
  container's image replaced by the region's ``repo@sha256:`` replica, and its service follows ECS's own
  rolling/blue-green/canary/linear deployment. One region failing puts every changed region back on its previous
  revision; the invocation then fails with the engine's one-line reason. A target already on that revision is left
  alone, so a retried event deploys nothing twice. The engine waits for the environment's ``timeoutSeconds``,
  capped by the invocation's remaining time less :data:`ENGINE_RESERVE_SECONDS` and less the worst case of the
  **smoke tests** (targets of a ``rolling`` environment whose document carries ``smokeTest``: the engine checks the
  service through its public load balancer once ECS reports the deployment complete, and a failure restores every
  changed region like any other failure). Everything happens inside one invocation, so the checks must end before
  Lambda stops it: a push whose checks could never fit is refused before any AWS call, one left too little time by
  the replication wait is refused before anything is registered, and the wait for ECS never starts a check that
  could outlast the invocation (:func:`follow`).
* ``force`` (for teams on mutable tags) is unchanged and does not go through the engine: per target, after the
  replica is there, ``UpdateService(forceNewDeployment)`` unless every running task already reports the digest; no
  new revision is registered, so nothing is waited for or restored, and nothing is smoke-tested (a check runs
  after a deployment the engine follows; force mode follows none). One failing target does not stop the others.
* Whatever the mode, a failed invocation raises, so Lambda's async retries and the dead-letter queue keep the event.
  Throttling is retried by the SDK (``RETRY``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.loaders
from botocore.exceptions import ClientError

from handlers import deploy_engine, ecs_common
from handlers.ecs_common import ACCOUNT_ID, ECS_NAME, ENVIRONMENT, REGION, RETRY, Problems, assumed_session, log
from handlers.ecs_common import show as _show
from handlers.image_definitions import ReplicationTimeout, regional_image_uri, wait_for_replication

TARGETS_SCHEMA_VERSION = 2  # 2: revision repositories carry their deploy document
TARGETS_FILE_ENV = "CROSSDEPLOY_TARGETS_FILE"
MAX_CONCURRENCY_ENV = "CROSSDEPLOY_MAX_CONCURRENCY"
# The package root: /var/task/targets.json in Lambda, wherever the package is unpacked otherwise.
DEFAULT_TARGETS_FILE = Path(__file__).resolve().parents[1] / "targets.json"

MAX_CONCURRENCY_LIMIT = 64  # same bound as the Pulumi side: ECS throttles per account and region
MAX_REPLICATION_TIMEOUT = 900  # Lambda's own maximum duration; a longer wait could never finish
POLL_INTERVAL_SECONDS = 5.0  # DescribeImages per poll: cheap, and replication usually takes seconds
# Kept back from the invocation's remaining time for the ECS calls after the wait, so a slow replica ends as a
# reported ReplicationTimeout (with a summary) rather than as a Lambda timeout that says nothing about targets.
DEPLOY_RESERVE_SECONDS = 60.0
# Kept back from the invocation's remaining time when the engine's wait is bounded, after the deployment's timeout
# and the smoke tests' worst case: enough to start restoring every changed target (StopServiceDeployment ROLLBACK /
# UpdateService(previous)), follow the restores as long as it lasts, and report, should the environment's
# deployment run out of time or fail.
ENGINE_RESERVE_SECONDS = 60.0
ENGINE_POLL_SECONDS = 10.0  # one DescribeServiceDeployments per target in flight
# The very end of the invocation: the summary line and the failure, after the last status read of a restore.
REPORT_SECONDS = 10.0

PUSH_MODES = ("revision", "force")

_PARTITION = re.compile(r"aws(?:-[a-z]+)*")
_ECR_REPOSITORY = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")
_TAG_PATTERN = re.compile(r"[A-Za-z0-9_.*-]{1,128}")
_ROLE_ARN = re.compile(
    r"arn:(?P<partition>[a-z0-9-]+):iam::(?P<account>[0-9]{12}):role/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}"
)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

_TOP_KEYS = ("version", "registryId", "homeRegion", "partition", "replicationTimeoutSeconds", "maxConcurrency",
             "repositories")
_REPOSITORY_KEYS = ("pushMode", "containerName", "targets", "deployDocument")
_TARGET_KEYS = ("environment", "tagPatterns", "accountId", "region", "cluster", "service", "roleArn")


# --- the target map ---------------------------------------------------------------------------------------------


class TargetsError(ValueError):
    """targets.json is missing, not JSON, or not the shape this handler reads. A deployment fault, not the event's:
    it is raised, so the event stays retriable (and ends in the dead-letter queue) until the map is fixed."""


@dataclass(frozen=True)
class Target:
    """One ECS service of one environment in one account and region."""

    environment: str
    tag_patterns: tuple[str, ...]
    account_id: str
    region: str
    cluster: str
    service: str
    role_arn: str

    def log_fields(self) -> dict[str, str]:
        return {"environment": self.environment, "account": self.account_id, "region": self.region,
                "cluster": self.cluster, "service": self.service}

    def label(self) -> str:
        return f"{self.environment} {self.account_id}/{self.region} {self.cluster}/{self.service}"


@dataclass(frozen=True)
class Repository:
    name: str
    push_mode: str
    container_name: str
    targets: tuple[Target, ...]
    deploy_document: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    """``revision``: the service's deploy document as shipped (validated by the engine when a push needs it, so one
    repository's document never costs another's push); ``force``: None."""


@dataclass(frozen=True)
class Targets:
    registry_id: str
    home_region: str
    partition: str
    dns_suffix: str
    """ECR's DNS suffix in the partition (``amazonaws.com``, ``amazonaws.com.cn``), for regional image URIs."""
    replication_timeout_seconds: int
    max_concurrency: int
    repositories: Mapping[str, Repository]


@functools.cache
def _dns_suffixes() -> dict[str, str]:
    # botocore's bundled endpoint data knows every partition (iso ones too) without a network call.
    data = botocore.loaders.create_loader().load_data("endpoints")
    return {p["partition"]: p["dnsSuffix"] for p in data["partitions"]}


def _dns_suffix(partition: str) -> str | None:
    return _dns_suffixes().get(partition)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(type(value),
                                                                                         type(value).__name__)


def parse_targets(data: Any, source: str = "targets.json") -> Targets:
    """Validate decoded targets.json strictly (exact keys, types, names, ARNs); raises :class:`TargetsError` naming
    every problem found."""
    if not isinstance(data, dict):
        raise TargetsError(f"{source}: expected a JSON object, got {_kind(data)}")
    if data.get("version") != TARGETS_SCHEMA_VERSION:
        # Checked alone first: any other version means every other message would be noise.
        raise TargetsError(f"{source}: version: this handler reads version {TARGETS_SCHEMA_VERSION}, got "
                           f"{data.get('version')!r} (the handler and its map are deployed together; redeploy both)")
    problems = Problems(show=repr, show_object=_kind)
    problems.exact_keys(data, _TOP_KEYS, "$")
    registry_id = problems.string(data, "registryId", ACCOUNT_ID, "$", "a 12-digit account id string")
    home_region = problems.string(data, "homeRegion", REGION, "$", "a region name")
    partition = problems.string(data, "partition", _PARTITION, "$", "a partition name (aws, aws-cn, aws-us-gov)")
    suffix = _dns_suffix(partition) if partition else None
    if partition and not suffix:
        problems.add("$.partition", f"unknown partition {partition!r}")
    timeout = problems.integer(data, "replicationTimeoutSeconds", 0, MAX_REPLICATION_TIMEOUT, "$")
    concurrency = problems.integer(data, "maxConcurrency", 1, MAX_CONCURRENCY_LIMIT, "$")

    repositories: dict[str, Repository] = {}
    raw_repos = data.get("repositories")
    if "repositories" in data and (not isinstance(raw_repos, dict) or not raw_repos):
        problems.add("$.repositories", f"expected a non-empty object, got {raw_repos!r}")
        raw_repos = {}
    for name, raw in (raw_repos or {}).items():
        where = f"$.repositories[{name!r}]"
        if not _ECR_REPOSITORY.fullmatch(name) or not 2 <= len(name) <= 256:
            problems.add(where, "not an ECR repository name")
        repo = _parse_repository(raw, name, where, partition, problems)
        if repo:
            repositories[name] = repo

    if problems.items:
        raise TargetsError(f"{source}: {len(problems.items)} problem(s): " + "; ".join(problems.items))
    # No problems means every field above was read and valid.
    return Targets(str(registry_id), str(home_region), str(partition), str(suffix), int(timeout or 0),
                   int(concurrency or 1), repositories)


def _parse_repository(raw: Any, name: str, where: str, partition: str | None, problems: Problems) -> Repository | None:
    if not problems.exact_keys(raw, _REPOSITORY_KEYS, where):
        return None
    mode = raw.get("pushMode")
    if "pushMode" in raw and mode not in PUSH_MODES:
        problems.add(f"{where}.pushMode", f"expected one of {list(PUSH_MODES)}, got {mode!r}")
    container = problems.string(raw, "containerName", ECS_NAME, where, "an ECS container name")
    raw_targets = raw.get("targets")
    if "targets" in raw and (not isinstance(raw_targets, list) or not raw_targets):
        problems.add(f"{where}.targets", f"expected a non-empty list, got {raw_targets!r}")
        raw_targets = []
    targets: list[Target] = []
    seen: dict[tuple[str, str, str, str], int] = {}
    for i, raw_target in enumerate(raw_targets or []):
        target = _parse_target(raw_target, f"{where}.targets[{i}]", partition, problems)
        if target is None:
            continue
        key = (target.account_id, target.region, target.cluster, target.service)
        if key in seen:
            # Two entries for one service would deploy it twice, concurrently, racing each other.
            problems.add(f"{where}.targets[{i}]", f"same account, region, cluster and service as targets[{seen[key]}]")
        seen.setdefault(key, i)
        targets.append(target)
    document = raw.get("deployDocument")
    if "deployDocument" in raw:
        if mode == "revision" and not isinstance(document, dict):
            problems.add(f"{where}.deployDocument", f"expected the service's deploy document (an object) for "
                                                    f"pushMode revision, got {_kind(document)}")
        elif mode == "force" and document is not None:
            problems.add(f"{where}.deployDocument", "must be null for pushMode force (no revision is registered)")
    if mode in PUSH_MODES and container and len(targets) == len(raw_targets or []) and targets \
            and (document is None) == (mode == "force"):
        return Repository(name, mode, container, tuple(targets), document)
    return None


def _parse_target(raw: Any, where: str, partition: str | None, problems: Problems) -> Target | None:
    before = len(problems.items)
    if not problems.exact_keys(raw, _TARGET_KEYS, where):
        return None
    environment = problems.string(raw, "environment", ENVIRONMENT, where, "an environment name")
    account = problems.string(raw, "accountId", ACCOUNT_ID, where, "a 12-digit account id string")
    region = problems.string(raw, "region", REGION, where, "a region name")
    cluster = problems.string(raw, "cluster", ECS_NAME, where, "an ECS cluster name")
    service = problems.string(raw, "service", ECS_NAME, where, "an ECS service name")
    role_arn = problems.string(raw, "roleArn", _ROLE_ARN, where, "an IAM role ARN")
    patterns = raw.get("tagPatterns")
    if "tagPatterns" in raw:
        if (not isinstance(patterns, list) or not patterns
                or not all(isinstance(p, str) and _TAG_PATTERN.fullmatch(p) for p in patterns)):
            problems.add(f"{where}.tagPatterns", f"expected a non-empty list of tag patterns (tag characters and "
                                                 f"'*'), got {patterns!r}")
        elif len(set(patterns)) != len(patterns):
            problems.add(f"{where}.tagPatterns", f"duplicate patterns in {patterns!r}")
    if role_arn:
        match = _ROLE_ARN.fullmatch(role_arn) or {"account": account, "partition": partition}
        # Security: the role is where the function acts. An ARN in another account (or partition) than the target
        # names would deploy somewhere the configuration never said.
        if account and match["account"] != account:
            problems.add(f"{where}.roleArn", f"role is in account {match['account']}, the target in {account}")
        if partition and match["partition"] != partition:
            problems.add(f"{where}.roleArn", f"role is in partition {match['partition']}, the map in {partition}")
    if len(problems.items) > before or None in (environment, account, region, cluster, service, role_arn):
        return None
    return Target(str(environment), tuple(patterns), str(account), str(region), str(cluster), str(service),
                  str(role_arn))


def load_targets(path: str | os.PathLike[str]) -> Targets:
    """Read and validate targets.json (see :func:`parse_targets`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TargetsError(f"{path}: not found (it ships in the function's package; see {TARGETS_FILE_ENV})") from None
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested deeper than the decoder's stack
        raise TargetsError(f"{path}: not readable JSON ({exc})") from None
    return parse_targets(data, str(path))


def tag_matches(pattern: str, tag: str) -> bool:
    """Whether ``tag`` matches ``pattern``: ``*`` matches any run of characters (also none), everything else is
    literal (no ``?`` or ``[...]`` as in fnmatch). Greedy left-to-right segment search: linear, no backtracking."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return tag == pattern
    head, *middle, tail = parts
    if len(tag) < len(head) + len(tail) or not tag.startswith(head) or not tag.endswith(tail):
        return False
    position, end = len(head), len(tag) - len(tail)
    for part in middle:
        found = tag.find(part, position, end)
        if found < 0:
            return False
        position = found + len(part)
    return True


# --- the event --------------------------------------------------------------------------------------------------


class Refused(Exception):
    """The event is not ours to act on: answered ``ignored``, never raised out of the handler."""

    def __init__(self, reason: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.fields = fields


class ConfigurationError(RuntimeError):
    """The map would make this push deploy somewhere it must not; raised so the event is kept, not dropped."""


@dataclass(frozen=True)
class Push:
    """A validated push and the targets its tag maps to."""

    event_id: str
    repository: Repository
    tag: str
    digest: str
    targets: tuple[Target, ...]

    def log_fields(self) -> dict[str, str]:
        return {"eventId": self.event_id, "repository": self.repository.name, "tag": self.tag, "digest": self.digest}


def parse_event(event: Any, targets: Targets) -> Push:
    """The push an ECR "ECR Image Action" event describes, or :class:`Refused` with one reason. No AWS calls."""
    if not isinstance(event, Mapping):
        raise Refused("malformed-event", f"event is {_kind(event)}, not an object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise Refused("malformed-event", f"id is missing or not a non-empty string: {_show(event_id)}")
    known = {"eventId": event_id}
    source, detail_type = event.get("source"), event.get("detail-type")
    if source != "aws.ecr" or detail_type != "ECR Image Action":
        raise Refused("not-an-ecr-image-action", f"source {_show(source)}, detail-type {_show(detail_type)}", **known)
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        raise Refused("malformed-event", f"detail is {_kind(detail)}, not an object", **known)
    strings = {"account": event.get("account"), "region": event.get("region")}
    strings.update({key: detail.get(key) for key in ("action-type", "result", "repository-name", "image-digest")})
    for key, value in strings.items():
        if not isinstance(value, str):
            raise Refused("malformed-event", f"{key} is missing or not a string: {_show(value)}", **known)
    tag = detail.get("image-tag")
    if tag is not None and not isinstance(tag, str):
        raise Refused("malformed-event", f"image-tag is not a string: {_show(tag)}", **known)
    name, digest = strings["repository-name"], strings["image-digest"]
    # Logged with the refusal, cut short: the event is untrusted input and may be arbitrarily large.
    known.update(repository=name[:300], digest=digest[:300], tag=tag[:300] if tag else tag)

    if strings["action-type"] != "PUSH":
        raise Refused("not-a-push", f"action-type {_show(strings['action-type'])}", **known)
    if strings["result"] != "SUCCESS":
        raise Refused("push-not-successful", f"result {_show(strings['result'])}", **known)
    # The registry is the tools account's, in its home region: a look-alike event from elsewhere (a workload
    # account's own registry on a shared bus) must not deploy anything.
    if strings["account"] != targets.registry_id:
        raise Refused("foreign-account", f"account {strings['account']} is not the registry's "
                                         f"{targets.registry_id}", **known)
    if strings["region"] != targets.home_region:
        raise Refused("foreign-region", f"region {strings['region']} is not the home region "
                                        f"{targets.home_region}", **known)
    repository = targets.repositories.get(name)
    if repository is None:
        raise Refused("unconfigured-repository", f"repository {_show(name)} is not a push-delivery repository", **known)
    if not _DIGEST.fullmatch(digest):
        raise Refused("bad-digest", f"image-digest {_show(digest)} is not sha256:<64 lower-case hex>", **known)
    if not tag:
        raise Refused("untagged-push", "the push carries no tag, so it names no environment", **known)
    matched = tuple(t for t in repository.targets if any(tag_matches(p, tag) for p in t.tag_patterns))
    if not matched:
        raise Refused("tag-matches-no-environment", f"tag {_show(tag)} matches no environment's patterns", **known)
    return Push(event_id, repository, tag, digest, matched)


# --- AWS access (module-level seams: tests replace these two functions, nothing else) ---------------------------


def _base_session() -> boto3.Session:
    """The function's own (tools-account) credentials; one per invocation."""
    return boto3.Session()


def _deploy_session(base: boto3.Session, role_arn: str, session_name: str) -> boto3.Session:
    """The environment's deploy role in the workload account (short-lived; CloudTrail shows ``session_name``)."""
    return assumed_session(base, role_arn, session_name)


class TargetError(Exception):
    """A target that cannot be deployed as configured (missing service, unsupported deployment controller)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def session_name(event_id: str) -> str:
    """RoleSessionName for an event: STS allows ``[\\w+=,.@-]``, 2-64 characters; CloudTrail in the workload account
    then ties every ECS call to the ECR event that caused it."""
    return ecs_common.session_name(f"push-{event_id}")


class Clients:
    """The AWS sessions and clients of one invocation, shared by its target threads.

    boto3 sessions are not thread-safe, clients are: sessions are touched only under the lock (to create a client or
    assume a role) and the clients are shared. Sharing also means each service model is parsed, and each deploy role
    assumed, once per invocation rather than once per target: creating a client costs about 0.1 s of CPU, which
    threads would serialize behind the GIL. The lock is held while a role is assumed (once per role; an invocation
    normally has one, its environment's), so the other threads simply wait for that role's credentials.
    Credentials last 15 minutes (``assumed_session``) and are obtained after the start of the invocation, which
    Lambda ends within 15 minutes: they cannot expire mid-invocation.
    """

    def __init__(self, session_name: str) -> None:
        self._lock = threading.Lock()
        self._session_name = session_name
        self._base: boto3.Session | None = None
        self._clients: dict[tuple[str | None, str, str], Any] = {}
        self._roles: dict[str, boto3.Session | Exception] = {}

    def _tools(self) -> boto3.Session:
        if self._base is None:  # created on first use: a refused event never creates one
            self._base = _base_session()
        return self._base

    def tools(self, service: str, region: str) -> Any:
        """A client with the function's own credentials (the tools account)."""
        with self._lock:
            key = (None, service, region)
            if key not in self._clients:
                self._clients[key] = self._tools().client(service, region_name=region, config=RETRY)
            return self._clients[key]

    def _session_locked(self, role_arn: str) -> boto3.Session:
        session = self._roles.get(role_arn)
        if session is None:
            try:
                session = _deploy_session(self._tools(), role_arn, self._session_name)
            except Exception as exc:  # kept as the outcome of every target using this role: asked once
                session = exc
            self._roles[role_arn] = session
        if isinstance(session, Exception):
            raise session
        return session

    def session_for(self, role_arn: str, region: str) -> boto3.Session:
        """The deploy engine's ``session_for``: the session acting as ``role_arn`` (one AssumeRole per role; a
        refusal is remembered and raised again for every target that needs the role)."""
        with self._lock:
            return self._session_locked(role_arn)

    def deploy(self, role_arn: str, service: str, region: str) -> Any:
        """A client acting as ``role_arn`` (force mode); a role that could not be assumed fails every target that
        needs it, with one STS call, not one per target."""
        with self._lock:
            key = (role_arn, service, region)
            if key not in self._clients:
                try:
                    session = self._session_locked(role_arn)
                except Exception as exc:
                    raise TargetError(_error_code(exc), f"assuming {role_arn}: {exc}") from exc
                self._clients[key] = session.client(service, region_name=region, config=RETRY)
            return self._clients[key]


def _error_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    if isinstance(exc, TargetError):
        return exc.code
    if isinstance(exc, ReplicationTimeout):
        return "ReplicationTimeout"
    return type(exc).__name__


def _regional_image(targets: Targets, push: Push, region: str) -> str:
    return regional_image_uri({"registry": targets.registry_id, "suffix": targets.dns_suffix,
                               "repo": push.repository.name, "digest": push.digest}, region)


class PushDeployFailed(RuntimeError):
    """The push did not deploy; the message says why (for ``revision``, the engine's one-line reason)."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


# --- revision: replicas, then the deploy engine ----------------------------------------------------------------


def engine_targets(push: Push, targets: Targets) -> tuple[list[deploy_engine.Target], int]:
    """The engine's targets for ``push`` and the environment's ``timeoutSeconds``: its environment in the
    repository's deploy document, each region with its replica pinned by digest. No AWS call. A document the engine
    refuses, or one that disagrees with the map about where the environment is, raises
    :class:`TargetsError` (a deployment fault: the event is kept)."""
    environment = push.targets[0].environment
    images = {t.region: _regional_image(targets, push, t.region) for t in push.targets}
    where = f"targets.json: repositories[{push.repository.name!r}].deployDocument"
    try:
        document = deploy_engine.parse_document(push.repository.deploy_document)
        engine = deploy_engine.targets_for(document, environment, images)
        timeout = document.environment(environment).timeout_seconds
    except deploy_engine.EngineInputError as exc:
        raise TargetsError(f"{where}: {exc}") from None
    mapped = {(t.account_id, t.region, t.cluster, t.service, t.role_arn) for t in push.targets}
    documented = {(t.account_id, t.region, t.cluster, t.service, t.role_arn) for t in engine}
    if mapped != documented or any(t.container != push.repository.container_name for t in engine):
        # Generated together by the same `pulumi up`: a difference means a hand-edited or half-deployed package.
        raise TargetsError(f"{where}: environment {environment!r} deploys {sorted(documented)} (container "
                           f"{sorted({t.container for t in engine})}), the map says {sorted(mapped)} (container "
                           f"{push.repository.container_name!r})")
    return engine, timeout


def _wait_for_replicas(push: Push, targets: Targets, clients: Clients, timeout: float, poll: float,
                       sleep: Callable[[float], None], clock: Callable[[], float], workers: int) -> dict[str, str]:
    """Wait until every region of the push has the digest; returns region -> problem for those that did not."""
    regions = sorted({t.region for t in push.targets})

    def wait(region: str) -> str | None:
        try:
            # The replica belongs to the tools account, so the function's own credentials read it.
            waited = wait_for_replication(clients.tools("ecr", region), targets.registry_id, push.repository.name,
                                          push.digest, region, timeout, poll, sleep=sleep, clock=clock)
        except Exception as exc:  # reported per region; nothing is deployed unless every replica is there
            log("replication-failed", **push.log_fields(), region=region, errorCode=_error_code(exc), error=str(exc))
            return f"{region}: {_error_code(exc)}: {exc}"
        log("replicated", **push.log_fields(), region=region, replicationWaitSeconds=round(waited, 3))
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(regions))),
                            thread_name_prefix="crossdeploy-replica") as pool:
        problems = dict(zip(regions, pool.map(wait, regions), strict=True))
    return {region: problem for region, problem in problems.items() if problem}


def _target_summary(target: deploy_engine.Target, state: deploy_engine.TargetState) -> dict[str, Any]:
    out: dict[str, Any] = {**target.log_fields(), "status": state.phase}
    if state.new_task_definition:
        out["taskDefinitionArn"] = state.new_task_definition
    if state.previous_task_definition:
        out["previousTaskDefinitionArn"] = state.previous_task_definition
    for key, value in (("reason", state.reason), ("restoreReason", state.restore_reason)):
        if value:
            out[key] = value
    return out


def _revision_base(push: Push, engine: list[deploy_engine.Target], workers: int, checks: int) -> dict[str, Any]:
    """The fields every summary of a revision push carries (status failed until the engine says otherwise)."""
    return {"status": "failed", **push.log_fields(), "pushMode": "revision", "environment": engine[0].environment,
            "concurrency": workers, "smokeTestSeconds": checks}


def _refuse(push: Push, base: dict[str, Any], reason: str) -> PushDeployFailed:
    """The failure of a push that deployed nothing: its summary logged, the exception to raise (the event is kept
    for a retry and, in the end, the dead-letter queue)."""
    summary = {**base, "reason": reason, "targets": []}
    log("summary", **summary)
    return PushDeployFailed(f"push {push.repository.name}:{push.tag} ({push.digest}, event {push.event_id}): "
                            f"{reason}", summary)


def smoke_test_seconds(engine: list[deploy_engine.Target], workers: int) -> int:
    """The longest the smoke tests of a deployment of ``engine`` may take in all (every target deploying, checked
    ``workers`` at a time, as the engine runs them); 0 without smoke tests."""
    deploying = [deploy_engine.TargetState(deploy_engine.DEPLOYING) for _ in engine]
    return deploy_engine.smoke_test_seconds(engine, deploying, workers)


def _expire(engine: list[deploy_engine.Target], states: list[deploy_engine.TargetState], deployment_id: str,
            checks: int) -> list[deploy_engine.TargetState]:
    """Every target still deploying, failed as timed out: called only past the targets' own timeout (see
    :func:`follow`), where the engine would fail them too, except that it smoke-tests one ECS reports complete
    first, which the invocation no longer has time for."""
    out = []
    for target, state in zip(engine, states, strict=True):
        if state.phase == deploy_engine.DEPLOYING:
            reason = (f"{target.label}: timed out after {int(state.timeout_seconds)} s "
                      f"({state.ecs_status or 'no status'}); the invocation has no time left for a smoke test "
                      f"({checks} s)")
            state = dataclasses.replace(state, phase=deploy_engine.FAILED, reason=reason)
            log("target-failed", deploymentId=deployment_id, **target.log_fields(), reason=reason,
                oldTaskDefinition=state.previous_task_definition, newTaskDefinition=state.new_task_definition,
                ecsStatus=state.ecs_status)
        out.append(state)
    return out


def _restores_under_way(states: list[deploy_engine.TargetState]) -> bool:
    """The deployment failed and every changed target's restore has begun: what is left is following them."""
    return deploy_engine.failing(states) and not any(
        s.changed and s.phase in (deploy_engine.SUCCEEDED, deploy_engine.FAILED, deploy_engine.DEPLOYING)
        for s in states)


def follow(engine: list[deploy_engine.Target], *, session_for: deploy_engine.SessionFor, deployment_id: str,
           started: float, timeout_seconds: float, invocation_ends: float | None, max_concurrency: int,
           poll_seconds: float, sleep: Callable[[float], None], clock: Callable[[], float]) -> deploy_engine.Outcome:
    """:func:`deploy_engine.run`, bounded by the invocation (``invocation_ends``, on ``clock``; None: unbounded):
    start every target at ``started``, then advance until all succeeded or every changed target is back, never
    beginning a step whose smoke tests could end within :data:`ENGINE_RESERVE_SECONDS` of the invocation's end.

    Why not ``deploy_engine.run`` with a shorter timeout: the engine smoke-tests a deployment ECS reports complete
    even when the read comes after the target's timeout, so a step begun just before the timeout may check for
    :func:`smoke_test_seconds` and the next, just after it, check other targets for as long again. The caller sets
    ``timeout_seconds`` to end at least that worst case before the reserve, so every step begun before the timeout
    fits; a step that would not fit comes after the timeout, and the targets still deploying then fail as timed out
    (:func:`_expire`) instead of being checked, and the restore follows. Once every restore has begun, they are
    followed while a status read still leaves :data:`REPORT_SECONDS`; those still running then are reported as not
    finished (ECS carries them on) rather than lost with an invocation Lambda stops."""
    checks_end_by = None if invocation_ends is None else invocation_ends - ENGINE_RESERVE_SECONDS
    log("deployment-start", deploymentId=deployment_id, targets=[t.label for t in engine],
        timeoutSeconds=timeout_seconds)
    states = deploy_engine.start_all(engine, session_for=session_for, deployment_id=deployment_id,
                                     timeout_seconds=timeout_seconds, now=started, max_concurrency=max_concurrency)
    while not deploy_engine.finished(states):
        if invocation_ends is not None and _restores_under_way(states) \
                and clock() + poll_seconds > invocation_ends - REPORT_SECONDS:
            break
        if any(s.active for s in states):
            sleep(poll_seconds)
        checks = deploy_engine.smoke_test_seconds(engine, states, max_concurrency)
        if checks_end_by is not None and checks and clock() + checks > checks_end_by:
            states = _expire(engine, states, deployment_id, checks)
        states = deploy_engine.advance(engine, states, session_for=session_for, now=clock(),
                                       max_concurrency=max_concurrency, sleep=sleep)
    result = deploy_engine.outcome(engine, states)
    log("deployment-outcome", deploymentId=deployment_id, status=result.status, reason=result.reason,
        counts=result.counts())
    return result


def _deploy_revision(push: Push, targets: Targets, engine: list[deploy_engine.Target], environment_timeout: int, *,
                     workers: int, checks: int,
                     replication_timeout: float, invocation_ends: float | None, poll_interval_seconds: float,
                     sleep: Callable[[float], None], clock: Callable[[], float]) -> dict[str, Any]:
    """``checks``: :func:`smoke_test_seconds` of ``engine``; ``invocation_ends``: when Lambda stops the invocation,
    on ``clock`` (None: never)."""
    clients = Clients(session_name(push.event_id))
    base = _revision_base(push, engine, workers, checks)
    missing = _wait_for_replicas(push, targets, clients, replication_timeout, poll_interval_seconds, sleep, clock,
                                 workers)
    if missing:
        raise _refuse(push, base, f"the image is not on every replica of environment {engine[0].environment}, "
                                  "nothing was deployed: " + "; ".join(missing[r] for r in sorted(missing)))
    started = clock()
    timeout = float(environment_timeout)
    if invocation_ends is not None:
        # The restores and the report need ENGINE_RESERVE_SECONDS after the last check; every check must end
        # before that, so the deployment's own timeout ends the checks' worst case earlier still (see follow).
        timeout = min(timeout, invocation_ends - ENGINE_RESERVE_SECONDS - started - checks)
        if timeout <= 0:
            left = max(0, int(invocation_ends - started))
            smoke = f" and the smoke tests may take {checks} s" if checks else ""
            raise _refuse(push, base, f"no time left to deploy: {left} s of the invocation remain after the "
                                      f"replication wait, {int(ENGINE_RESERVE_SECONDS)} s are kept for restoring "
                                      f"and reporting{smoke}; nothing was deployed")
    outcome = follow(engine, session_for=clients.session_for, deployment_id=f"push-{push.event_id}",
                     started=started, timeout_seconds=timeout, invocation_ends=invocation_ends, max_concurrency=workers,
                     poll_seconds=ENGINE_POLL_SECONDS, sleep=sleep, clock=clock)
    counts = outcome.counts()
    summary = {**base, "status": outcome.status, "reason": outcome.reason,
               "updated": counts[deploy_engine.SUCCEEDED], "unchanged": counts[deploy_engine.UNCHANGED],
               "failed": sum(bool(s.reason) for s in outcome.states), "restored": counts[deploy_engine.RESTORED],
               "targets": [_target_summary(t, s) for t, s in zip(outcome.targets, outcome.states, strict=True)]}
    log("summary", **summary)
    if not outcome.succeeded:
        raise PushDeployFailed(f"push {push.repository.name}:{push.tag} ({push.digest}, event {push.event_id}): "
                               f"{outcome.reason}", summary)
    return summary


# --- force: UpdateService(forceNewDeployment) per target -------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """What every target of one invocation shares."""

    targets: Targets
    clients: Clients
    replication_timeout_seconds: float
    poll_interval_seconds: float = POLL_INTERVAL_SECONDS
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


@dataclass
class TargetResult:
    target: Target
    status: str
    """``updated``, ``unchanged`` or ``failed``."""
    task_definition_arn: str | None = None
    error_code: str | None = None
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.target.log_fields(), "status": self.status}
        if self.task_definition_arn:
            out["taskDefinitionArn"] = self.task_definition_arn
        if self.error_code:
            out.update(errorCode=self.error_code, error=self.error)
        return out

    def describe(self) -> str:
        text = f"{self.status} {self.target.label()}"
        if self.status == "failed":
            return f"{text}: {self.error_code}: {self.error}"
        return f"{text} -> {self.task_definition_arn}" if self.task_definition_arn else text


def deploy_target(push: Push, target: Target, run: RunSettings) -> TargetResult:
    """Force a new deployment of one target (``force`` mode); never raises (the outcome, failures included, is the
    result)."""
    fields = {**push.log_fields(), **target.log_fields()}
    log("target-start", **fields, pushMode=push.repository.push_mode)
    result = TargetResult(target, "failed")
    try:
        # Waiting comes first: nothing is asked of the workload account until the image can be pulled there.
        ecr = run.clients.tools("ecr", target.region)
        waited = wait_for_replication(ecr, run.targets.registry_id, push.repository.name, push.digest, target.region,
                                      run.replication_timeout_seconds, run.poll_interval_seconds,
                                      sleep=run.sleep, clock=run.clock)
        result.notes["replicationWaitSeconds"] = round(waited, 3)
        ecs = run.clients.deploy(target.role_arn, "ecs", target.region)
        _force(ecs, push, target, _describe_service(ecs, target), result, fields)
    except Exception as exc:  # one target's failure must not stop the others; it is reported in the summary
        result.status, result.error_code, result.error = "failed", _error_code(exc), str(exc)
        log("failed", **fields, errorCode=result.error_code, error=result.error, **result.notes)
    return result


def _describe_service(ecs: Any, target: Target) -> dict[str, Any]:
    response = ecs.describe_services(cluster=target.cluster, services=[target.service])
    active = [s for s in response.get("services", []) if s.get("status") == "ACTIVE"]
    if not active:
        reasons = [f.get("reason") for f in response.get("failures", [])]
        raise TargetError("ServiceNotFound", f"no ACTIVE service {target.service!r} in cluster {target.cluster!r} "
                                             f"(account {target.account_id}, {target.region}; failures {reasons})")
    return active[0]


def _force(ecs: Any, push: Push, target: Target, service: dict[str, Any], result: TargetResult,
           fields: dict[str, str]) -> None:
    current_arn = service["taskDefinition"]
    if _tasks_on_digest(ecs, target, push.repository.container_name, push.digest):
        result.status, result.task_definition_arn = "unchanged", current_arn
        log("unchanged", **fields, taskDefinitionArn=current_arn, forceNewDeployment=False, **result.notes)
        return
    ecs.update_service(cluster=target.cluster, service=target.service, forceNewDeployment=True)
    result.status, result.task_definition_arn = "updated", current_arn
    log("updated", **fields, taskDefinitionArn=current_arn, forceNewDeployment=True, **result.notes)


def _tasks_on_digest(ecs: Any, target: Target, container: str, digest: str) -> bool:
    """Whether the service runs at least one task and every one reports ``digest`` for the named container."""
    arns: list[str] = []
    pages = ecs.get_paginator("list_tasks").paginate(cluster=target.cluster, serviceName=target.service,
                                                     desiredStatus="RUNNING")
    for page in pages:
        arns.extend(page.get("taskArns", []))
    if not arns:
        return False  # nothing runs the new image yet (or scaled to zero): a deployment is still wanted
    for start in range(0, len(arns), 100):  # DescribeTasks takes at most 100 tasks per call
        response = ecs.describe_tasks(cluster=target.cluster, tasks=arns[start:start + 100])
        if response.get("failures"):
            return False
        for task in response.get("tasks", []):
            digests = [c.get("imageDigest") for c in task.get("containers", []) if c.get("name") == container]
            if digests != [digest]:
                return False
    return True


def _deploy_force(push: Push, targets: Targets, *, workers: int, replication_timeout: float,
                  poll_interval_seconds: float, sleep: Callable[[float], None],
                  clock: Callable[[], float]) -> dict[str, Any]:
    run = RunSettings(targets, Clients(session_name(push.event_id)), replication_timeout, poll_interval_seconds,
                      sleep, clock)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crossdeploy-target") as pool:
        # deploy_target is looked up here, at call time, so a benchmark can wrap it to observe concurrency.
        futures = [pool.submit(deploy_target, push, target, run) for target in push.targets]
        results = [future.result() for future in futures]
    counts = {status: sum(r.status == status for r in results) for status in ("updated", "unchanged", "failed")}
    summary = {"status": "failed" if counts["failed"] else "succeeded", **push.log_fields(), "pushMode": "force",
               "environment": push.targets[0].environment, "concurrency": workers, **counts,
               "targets": [r.as_dict() for r in results]}
    log("summary", **summary)
    if counts["failed"]:
        raise PushDeployFailed(
            f"push {push.repository.name}:{push.tag} ({push.digest}, event {push.event_id}): {counts['failed']} of "
            f"{len(results)} targets failed: " + "; ".join(r.describe() for r in results), summary)
    return summary


# --- the invocation ---------------------------------------------------------------------------------------------


def handle_push(
    event: Any,
    targets: Targets,
    *,
    max_concurrency: int | None = None,
    time_remaining_seconds: float | None = None,
    poll_interval_seconds: float = POLL_INTERVAL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Validate ``event`` and deploy it to every target its tag maps to; see the module docstring."""
    # Lambda's remaining time was measured as the invocation began: everything after counts against it.
    invocation_ends = None if time_remaining_seconds is None else clock() + time_remaining_seconds
    try:
        push = parse_event(event, targets)
    except Refused as refusal:
        log("refused", reason=refusal.reason, message=refusal.message, **refusal.fields)
        return {"status": "ignored", "reason": refusal.reason, "message": refusal.message}

    environments = sorted({t.environment for t in push.targets})
    if len(environments) > 1:
        # The configuration rejects tag patterns that overlap across environments; should a map slip through,
        # fail closed (event kept in the DLQ) rather than roll a qa tag out to prod.
        message = f"tag {push.tag!r} matches environments {environments}; a tag must map to exactly one"
        log("configuration-error", **push.log_fields(), error=message)
        raise ConfigurationError(message)

    def replication_budget(kept: float) -> float:
        replication_timeout = float(targets.replication_timeout_seconds)
        if time_remaining_seconds is not None:
            replication_timeout = max(0.0, min(replication_timeout, time_remaining_seconds - kept))
        return replication_timeout

    workers = max(1, min(max_concurrency or targets.max_concurrency, len(push.targets)))
    if push.repository.push_mode == "force":
        # No smoke test here: force mode registers no revision of ours and follows no deployment, and a check
        # belongs after a deployment the engine followed to its end.
        return _deploy_force(push, targets, workers=workers,
                             replication_timeout=replication_budget(DEPLOY_RESERVE_SECONDS),
                             poll_interval_seconds=poll_interval_seconds, sleep=sleep, clock=clock)
    try:
        engine, environment_timeout = engine_targets(push, targets)  # validated before any AWS call
    except TargetsError as exc:
        log("configuration-error", **push.log_fields(), error=str(exc))
        raise
    checks = smoke_test_seconds(engine, workers)
    if checks and time_remaining_seconds is not None and checks >= time_remaining_seconds - ENGINE_RESERVE_SECONDS:
        # Every retry of this event gets the same Lambda timeout: the checks would never fit, so nothing starts.
        usable = max(0, int(time_remaining_seconds - ENGINE_RESERVE_SECONDS))
        raise _refuse(push, _revision_base(push, engine, workers, checks),
                      f"the smoke tests may take {checks} s, and this invocation has {usable} s for the deployment "
                      f"and its checks: nothing was deployed (give smokeTest fewer attempts or a shorter "
                      f"timeoutSeconds)")
    # The replicas may not take the time the checks need: a slow replica then ends as a ReplicationTimeout.
    return _deploy_revision(push, targets, engine, environment_timeout, workers=workers, checks=checks,
                            replication_timeout=replication_budget(DEPLOY_RESERVE_SECONDS + checks),
                            invocation_ends=invocation_ends, poll_interval_seconds=poll_interval_seconds,
                            sleep=sleep, clock=clock)


def _max_concurrency_override() -> int | None:
    raw = os.environ.get(MAX_CONCURRENCY_ENV)
    if raw is None or raw.strip() == "":
        return None
    # isascii: str.isdigit also accepts digits int() refuses ("²")
    if not (raw.strip().isascii() and raw.strip().isdigit()) or not 1 <= int(raw) <= MAX_CONCURRENCY_LIMIT:
        raise TargetsError(f"{MAX_CONCURRENCY_ENV}: expected an integer from 1 to {MAX_CONCURRENCY_LIMIT}, got {raw!r}")
    return int(raw)


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Lambda entry point (asynchronous invocation by EventBridge)."""
    # A bad map or override raises: the event is fine, the deployment is not, and the event must be kept.
    targets = load_targets(os.environ.get(TARGETS_FILE_ENV) or DEFAULT_TARGETS_FILE)
    max_concurrency = _max_concurrency_override()
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return handle_push(event, targets, max_concurrency=max_concurrency,
                       time_remaining_seconds=remaining() / 1000 if callable(remaining) else None)


if __name__ == "__main__":
    # Not a command line: `python -m handlers.push_deploy` (with --help or anything else) used to import the
    # module, do nothing and exit 0, which reads as success. Say what it is instead, and fail like a usage error.
    import sys

    print("handlers.push_deploy: not a command line; it is the push-deploy Lambda function (AWS Lambda "
          "calls handlers.push_deploy.handler with an ECR push event: push an image tag to deploy)", file=sys.stderr)
    sys.exit(2)
