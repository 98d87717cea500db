"""The deploy engine: the one piece of crossdeploy that deploys an ECS service (RegisterTaskDefinition,
UpdateService) and puts it back. The pipeline, push and release triggers are thin wrappers around it.

What it guarantees, per deployment (one service, one environment, its account-region targets):

* **Validation first.** :func:`parse_document` and :func:`targets_for` check the deploy document and the images
  strictly (exact keys, names, ARNs, digests, the task definition against botocore's own RegisterTaskDefinition
  model) and name every problem with its key path at once, before any AWS call.
* **Exactly the rendered task definition.** Each target registers the task definition ``pulumi up`` rendered, with
  only the named container's image replaced by the region's ``repo@sha256:`` replica (matched by container name,
  never by image text). For services crossdeploy does not own (``taskDefinition: null``) the service's current
  revision is copied whole and only that image is replaced.
* **Idempotent.** A target whose current revision already equals what would be registered is left alone
  (UNCHANGED): a retried invocation never deploys twice. If ECS is still rolling the service out to that revision
  (or rolling it back from it), a retry follows that rollout rather than starting another: it registers nothing,
  waits for ECS's verdict like a deployment of its own, and restores the target after a failure elsewhere when the
  revision it replaces is known.
* **All or nothing.** If any target fails (ECS rolls back or stops the deployment, the role is refused, ECS rejects
  the task definition, the service is missing, the timeout passes), every target that changed goes back to its
  previous revision: a deployment still in progress is stopped with ECS's own rollback
  (StopServiceDeployment ``ROLLBACK``), a finished one gets UpdateService(previous), one ECS already rolled back is
  left alone. Restores are waited for like deployments. Never half old, half new.
* **Resumable.** Per-target progress is a :class:`TargetState`, JSON-serialisable, so a caller may stop between
  steps and continue in another process (the CodePipeline action does, between Lambda invocations).
* **Smoke-tested where the document asks** (``smokeTest`` of a target; ``rolling`` environments only). When the
  target's own deployment reaches ECS SUCCESSFUL (never a restore, never an UNCHANGED target), the engine finds the
  service's load balancer (its first target group -> that group's first load balancer -> its DNS name) and runs
  :func:`handlers.smoke_test.check` against the public production listener the document names. It runs outside
  any VPC, in the tools account, so it calls the internet-facing listener as users do. A pass makes the target
  SUCCEEDED; a failure, or a load balancer it cannot find, makes it FAILED with a one-line reason, and the rule
  above restores every changed target (this one by UpdateService(previous), its deployment being finished). One
  :func:`advance` may then take up to :func:`smoke_test_seconds`: callers with a deadline leave room for it. The
  native strategies (blue-green, canary, linear) run the same check as an ECS lifecycle hook on test traffic,
  before production traffic, so their targets carry none.

Strategy (rolling, blue-green, canary, linear) is ECS-native: Pulumi configures it on the service; the engine only
points the service at the new revision and follows ECS's service deployment (DescribeServiceDeployments), falling
back to the primary deployment's ``rolloutState`` where the service deployment API is not available.

Why the pipeline drives this through a Lambda invoke action with continuation tokens: CodePipeline's action
quotas are 24 hours in all for a Lambda invoke action (with a reply at least every 20 minutes), 1 hour for Step
Functions and the other invoke actions, and 15 minutes for CodeBuild on Lambda compute. ECS bake times go up to
1440 minutes, so only the Lambda action, answering with a continuation token and being re-invoked, can wait out the
longest bake ECS allows.

Code AWS runs: standard library and boto3 only.
"""

from __future__ import annotations

import copy
import functools
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import boto3
import botocore.session
from botocore.exceptions import BotoCoreError, ClientError
from botocore.validate import ParamValidator

from handlers import smoke_test as smoke
from handlers.ecs_common import (
    ACCOUNT_ID,
    ECS_NAME,
    ENVIRONMENT,
    REGION,
    RETRY,
    Problems,
    assumed_session,
    log,
    register_kwargs,
    replace_image,
    session_name,
)
from handlers.ecs_common import show as _show

DOCUMENT_VERSION = 1
DOCUMENT_FILE = "deploy.json"
"""The document's name inside the zip ``pulumi up`` writes (the pipeline's config source, what releases read)."""
STRATEGIES = ("rolling", "blue-green", "canary", "linear")
MIN_TIMEOUT, MAX_TIMEOUT = 60, 86400
DEPLOYMENT_TAG = "crossdeploy:deployment"
DEFAULT_MAX_CONCURRENCY = 16  # ECS throttles per account and region; targets spread over several of both
DEFAULT_POLL_SECONDS = 15.0
# Consecutive failed status reads before a target is given up on: one throttled or dropped read must not fail a
# deployment, a role that lost its rights must not wait out a day-long timeout.
MAX_POLL_ERRORS = 3
# Assumed-role credentials last 900 s (ecs_common.assumed_session); re-assume well before, for long waits.
SESSION_MAX_AGE_SECONDS = 600.0

# Phases of a target. Terminal: unchanged, succeeded, failed, restored, restore-failed.
UNCHANGED, DEPLOYING, SUCCEEDED, FAILED = "unchanged", "deploying", "succeeded", "failed"
RESTORING, RESTORED, RESTORE_FAILED = "restoring", "restored", "restore-failed"
PHASES = (UNCHANGED, DEPLOYING, SUCCEEDED, FAILED, RESTORING, RESTORED, RESTORE_FAILED)
ACTIVE = (DEPLOYING, RESTORING)

_IN_PROGRESS = frozenset({"PENDING", "IN_PROGRESS"})
_ECS_ROLLING_BACK = frozenset({"ROLLBACK_REQUESTED", "ROLLBACK_IN_PROGRESS"})
_ECS_FAILED = frozenset({"STOPPED", "STOP_REQUESTED", "ROLLBACK_REQUESTED", "ROLLBACK_IN_PROGRESS",
                         "ROLLBACK_SUCCESSFUL", "ROLLBACK_FAILED"})
# Errors meaning "this ECS endpoint has no service deployment API": fall back to rolloutState.
_NO_SERVICE_DEPLOYMENT_API = frozenset({"UnknownOperationException", "InvalidAction", "UnsupportedFeatureException",
                                        "UnrecognizedClientException"})

_ROLE_ARN = re.compile(
    r"arn:(?P<partition>aws(?:-[a-z]+)*):iam::(?P<account>[0-9]{12}):role/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}"
)
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:-]{0,254}@sha256:[0-9a-f]{64}")
_ECR_IMAGE = re.compile(r"[0-9]{12}\.dkr\.ecr\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.[a-z0-9.-]+/.+")

_DOCUMENT_KEYS = ("version", "service", "environments")
_ENVIRONMENT_KEYS = ("name", "strategy", "timeoutSeconds", "targets")
_TARGET_KEYS = ("accountId", "region", "roleArn", "cluster", "service", "container", "taskDefinition")
_OPTIONAL_TARGET_KEYS = ("smokeTest",)  # absent and null mean the same: no smoke test
_SMOKE_TEST_KEYS = ("spec", "protocol", "port")
SMOKE_PROTOCOLS = ("HTTP", "HTTPS")


class EngineInputError(ValueError):
    """The deploy document, environment or images are not what the engine deploys; raised before any AWS call,
    naming every problem with its key path and value."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s): " + "; ".join(self.problems))


# --- the deploy document ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmokeTest:
    """The check after a ``rolling`` deployment of a target: ``spec`` through the public production listener of the
    service's load balancer (``protocol``, ``port``). Native strategies run theirs as an ECS lifecycle hook on test
    traffic, before production traffic, so their targets have none."""

    spec: smoke.SmokeSpec
    protocol: str
    port: int

    @property
    def scheme(self) -> str:
        return self.protocol.lower()


@dataclass(frozen=True)
class TargetSpec:
    """One target as the document names it (no image yet)."""

    account_id: str
    region: str
    role_arn: str
    cluster: str
    service: str
    container: str
    task_definition: dict[str, Any] | None = field(compare=False, hash=False)
    """A RegisterTaskDefinition request (API camelCase), or None: copy the service's current revision."""
    smoke_test: SmokeTest | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class Environment:
    name: str
    strategy: str
    timeout_seconds: int
    targets: tuple[TargetSpec, ...]


@dataclass(frozen=True)
class Document:
    version: int
    service: str
    environments: tuple[Environment, ...]

    def environment(self, name: str) -> Environment:
        for environment in self.environments:
            if environment.name == name:
                return environment
        raise EngineInputError([f"environment: {name!r} is not in the deploy document "
                                f"(has {[e.name for e in self.environments]})"])


@dataclass(frozen=True)
class Target:
    """One ECS service in one account and region, with the exact image to deploy there."""

    environment: str
    account_id: str
    region: str
    role_arn: str
    cluster: str
    service: str
    container: str
    image: str
    task_definition: dict[str, Any] | None = field(compare=False, hash=False)
    smoke_test: SmokeTest | None = field(default=None, compare=False, hash=False)
    """Checked once the target's own deployment succeeded (never after a restore, never an unchanged target)."""

    @property
    def label(self) -> str:
        return f"{self.account_id}/{self.region} {self.cluster}/{self.service}"

    @property
    def partition(self) -> str:
        return self.role_arn.split(":")[1]

    def log_fields(self) -> dict[str, str]:
        return {"environment": self.environment, "account": self.account_id, "region": self.region,
                "cluster": self.cluster, "service": self.service}


@functools.cache
def _ecs_model() -> Any:
    # botocore's bundled model, read from disk: no AWS call, no credentials.
    return botocore.session.get_session().get_service_model("ecs")


def _check_task_definition(td: Any, container: str | None, where: str, problems: Problems) -> None:
    if not isinstance(td, dict):
        problems.add(where, f"expected an object (a RegisterTaskDefinition request) or null, got {_show(td)}")
        return
    # The SDK's own request model: every key, type and enum exactly as ECS's API will check it, so a typo in a
    # field name is refused here instead of by ECS halfway through an environment.
    report = ParamValidator().validate(td, _ecs_model().operation_model("RegisterTaskDefinition").input_shape)
    for line in report.generate_report().splitlines():
        # botocore lists every allowed field after an unknown one: the key path is what a reader needs.
        problems.add(where, line.strip().split(", must be one of:")[0])
    if report.has_errors():
        return
    names = [c.get("name") for c in td["containerDefinitions"]]
    if len(set(names)) != len(names):
        problems.add(f"{where}.containerDefinitions", f"container names repeat: {names}")
    if container and container not in names:
        problems.add(f"{where}.containerDefinitions", f"no container named {container!r} (has {names})")
    if any(t.get("key") == DEPLOYMENT_TAG for t in td.get("tags", [])):
        problems.add(f"{where}.tags", f"{DEPLOYMENT_TAG!r} is set by the engine, not the document")


def _parse_smoke_test(raw: Any, where: str, problems: Problems) -> SmokeTest | None:
    before = len(problems.items)
    if not problems.exact_keys(raw, _SMOKE_TEST_KEYS, where):
        return None
    protocol, port = raw.get("protocol"), problems.integer(raw, "port", 1, 65535, where)
    if "protocol" in raw and protocol not in SMOKE_PROTOCOLS:
        problems.add(f"{where}.protocol", f"expected one of {list(SMOKE_PROTOCOLS)}, got {_show(protocol)}")
    spec = None
    if "spec" in raw:
        try:
            spec = smoke.SmokeSpec.from_json(raw["spec"], f"{where}.spec")
        except smoke.SmokeTestError as exc:  # its problems carry the key path given
            problems.items.extend(exc.problems)
    if len(problems.items) > before or spec is None:
        return None
    return SmokeTest(spec, str(protocol), int(port))  # type: ignore[arg-type]


def _parse_target(raw: Any, where: str, problems: Problems) -> TargetSpec | None:
    before = len(problems.items)
    required = {k: v for k, v in raw.items() if k not in _OPTIONAL_TARGET_KEYS} if isinstance(raw, dict) else raw
    if not problems.exact_keys(required, _TARGET_KEYS, where):
        return None
    account = problems.string(raw, "accountId", ACCOUNT_ID, where, "a 12-digit account id string")
    region = problems.string(raw, "region", REGION, where, "a region name")
    role_arn = problems.string(raw, "roleArn", _ROLE_ARN, where, "an IAM role ARN")
    cluster = problems.string(raw, "cluster", ECS_NAME, where, "an ECS cluster name")
    service = problems.string(raw, "service", ECS_NAME, where, "an ECS service name")
    container = problems.string(raw, "container", ECS_NAME, where, "an ECS container name")
    if role_arn and account:
        role_account = _ROLE_ARN.fullmatch(role_arn)["account"]  # type: ignore[index]
        # Security: the role is where the engine acts; one in another account would deploy where the target
        # does not say.
        if role_account != account:
            problems.add(f"{where}.roleArn", f"role is in account {role_account}, the target in {account}")
    td = raw.get("taskDefinition")
    if td is not None:
        _check_task_definition(td, container, f"{where}.taskDefinition", problems)
    smoke_test = None
    if raw.get("smokeTest") is not None:
        smoke_test = _parse_smoke_test(raw["smokeTest"], f"{where}.smokeTest", problems)
    if len(problems.items) > before:
        return None
    return TargetSpec(str(account), str(region), str(role_arn), str(cluster), str(service), str(container),
                      copy.deepcopy(td), smoke_test)


def _parse_environment(raw: Any, where: str, problems: Problems) -> Environment | None:
    before = len(problems.items)
    if not problems.exact_keys(raw, _ENVIRONMENT_KEYS, where):
        return None
    name = problems.string(raw, "name", ENVIRONMENT, where, "an environment name")
    strategy = raw.get("strategy")
    if "strategy" in raw and strategy not in STRATEGIES:
        problems.add(f"{where}.strategy", f"expected one of {list(STRATEGIES)}, got {_show(strategy)}")
    timeout = raw.get("timeoutSeconds")
    if "timeoutSeconds" in raw and (type(timeout) is not int or not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT):
        problems.add(f"{where}.timeoutSeconds",
                     f"expected an integer from {MIN_TIMEOUT} to {MAX_TIMEOUT}, got {_show(timeout)}")
    raw_targets = raw.get("targets")
    if "targets" in raw and (not isinstance(raw_targets, list) or not raw_targets):
        problems.add(f"{where}.targets", f"expected a non-empty list, got {_show(raw_targets)}")
        raw_targets = []
    targets: list[TargetSpec] = []
    seen: dict[tuple[str, str, str, str], int] = {}
    for i, raw_target in enumerate(raw_targets or []):
        spec = _parse_target(raw_target, f"{where}.targets[{i}]", problems)
        if spec is None:
            continue
        if spec.smoke_test is not None and strategy in STRATEGIES and strategy != "rolling":
            # The engine tests after the deployment, through production traffic; the native strategies test
            # before it (an ECS lifecycle hook on test traffic). Both at once would be two verdicts on one rollout.
            problems.add(f"{where}.targets[{i}].smokeTest", f"only rolling environments are smoke-tested by the "
                                                            f"engine; {strategy} runs it as an ECS lifecycle hook")
        key = (spec.account_id, spec.region, spec.cluster, spec.service)
        if key in seen:
            # Two entries for one service would race each other and restore each other's revisions.
            problems.add(f"{where}.targets[{i}]", f"same account, region, cluster and service as targets[{seen[key]}]")
        seen.setdefault(key, i)
        targets.append(spec)
    if len(problems.items) > before:
        return None
    return Environment(str(name), str(strategy), int(timeout), tuple(targets))  # type: ignore[arg-type]


def parse_document(data: Any) -> Document:
    """Validate a decoded deploy document strictly; raises :class:`EngineInputError` naming every problem."""
    problems = Problems()
    if not problems.exact_keys(data, _DOCUMENT_KEYS, "$"):
        raise EngineInputError(problems.items)
    if "version" in data and (type(data["version"]) is not int or data["version"] != DOCUMENT_VERSION):
        problems.add("$.version", f"this engine reads version {DOCUMENT_VERSION}, got {_show(data['version'])}")
    service = problems.string(data, "service", ECS_NAME, "$", "a service name")
    raw_envs = data.get("environments")
    if "environments" in data and (not isinstance(raw_envs, list) or not raw_envs):
        problems.add("$.environments", f"expected a non-empty list, got {_show(raw_envs)}")
        raw_envs = []
    environments: list[Environment] = []
    names: dict[str, int] = {}
    for i, raw in enumerate(raw_envs or []):
        environment = _parse_environment(raw, f"$.environments[{i}]", problems)
        if environment is None:
            continue
        if environment.name in names:
            problems.add(f"$.environments[{i}].name",
                         f"{environment.name!r} repeats environments[{names[environment.name]}]")
        names.setdefault(environment.name, i)
        environments.append(environment)
    if problems.items:
        raise EngineInputError(problems.items)
    return Document(DOCUMENT_VERSION, str(service), tuple(environments))


def targets_for(document: Document, environment: str, images: Mapping[str, str]) -> list[Target]:
    """The targets of ``environment``, each with its region's image (``images``: region -> ``repo@sha256:...``).
    Refuses an unknown environment, a region without an image, an image not pinned by digest, or an ECR image in
    another region than its key (the service would pull across regions, or fail where the replica is missing)."""
    env = document.environment(environment)
    problems = Problems()
    if not isinstance(images, Mapping):
        raise EngineInputError([f"images: expected a mapping of region to image, got {_show(images)}"])
    for region, image in images.items():
        where = f"images[{region!r}]"
        if not isinstance(image, str) or not _IMAGE.fullmatch(image):
            problems.add(where, f"expected <repository>@sha256:<64 hex>, got {_show(image)}")
            continue
        ecr = _ECR_IMAGE.fullmatch(image)
        if ecr and ecr["region"] != region:
            problems.add(where, f"image is in {ecr['region']}'s registry, not {region}'s: {_show(image)}")
    for i, spec in enumerate(env.targets):
        if spec.region not in images:
            problems.add(f"images[{spec.region!r}]", f"no image for region {spec.region} "
                                                     f"(environment {env.name}, targets[{i}])")
    if problems.items:
        raise EngineInputError(problems.items)
    return [Target(env.name, s.account_id, s.region, s.role_arn, s.cluster, s.service, s.container,
                   images[s.region], copy.deepcopy(s.task_definition), s.smoke_test) for s in env.targets]


# --- per-target state -------------------------------------------------------------------------------------------


@dataclass
class TargetState:
    """Where one target stands. JSON-serialisable (:meth:`to_dict` / :meth:`from_dict`)."""

    phase: str
    changed: bool = False
    """The service was pointed at a new revision (or may have been): a failure anywhere restores it."""
    previous_task_definition: str | None = None
    new_task_definition: str | None = None
    service_deployment: str | None = None
    ecs_status: str | None = None
    """The last status ECS reported for the deployment (DescribeServiceDeployments, or rolloutState)."""
    restore_deployment: str | None = None
    restore_mode: str | None = None
    """``stop`` (ECS's own rollback of the deployment in progress) or ``update`` (UpdateService(previous))."""
    reason: str | None = None
    """Why the deployment of this target failed (None if it did not)."""
    restore_reason: str | None = None
    started_at: float = 0.0
    """When the current wait began (deployment, then restore), in the caller's clock."""
    timeout_seconds: float = float(MAX_TIMEOUT)
    poll_errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetState:
        if not isinstance(data, Mapping):  # state passed between steps (Step Functions): refused, not AttributeError
            raise ValueError(f"not a target state: expected an object, got {_show(data)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown or data.get("phase") not in PHASES:
            raise ValueError(f"not a target state: unknown keys {unknown}, phase {data.get('phase')!r}")
        wrong = [f"{key}: {_show(value)}" for key, value in data.items() if not _STATE_TYPES[key](value)]
        if wrong:
            # A state round-trips through Step Functions: an edited one must not reach ECS calls half-typed.
            raise ValueError(f"not a target state: wrong types: {', '.join(wrong)}")
        return cls(**dict(data))

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE


def _text_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_STATE_TYPES: dict[str, Callable[[Any], bool]] = {
    "phase": lambda v: isinstance(v, str), "changed": lambda v: isinstance(v, bool),
    "previous_task_definition": _text_or_none, "new_task_definition": _text_or_none,
    "service_deployment": _text_or_none, "ecs_status": _text_or_none, "restore_deployment": _text_or_none,
    "restore_mode": _text_or_none, "reason": _text_or_none, "restore_reason": _text_or_none,
    "started_at": _number, "timeout_seconds": _number,
    "poll_errors": lambda v: isinstance(v, int) and not isinstance(v, bool),
}
"""What each :class:`TargetState` field may hold when read back (:meth:`TargetState.from_dict`)."""


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    reason: str
    """One line: what happened, naming every failing target."""
    targets: tuple[Target, ...]
    states: tuple[TargetState, ...]

    @property
    def status(self) -> str:
        return "succeeded" if self.succeeded else "failed"

    def counts(self) -> dict[str, int]:
        return {phase: sum(s.phase == phase for s in self.states) for phase in PHASES}

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason,
                "targets": [{"target": t.label, **s.to_dict()} for t, s in zip(self.targets, self.states, strict=True)]}


# --- AWS access --------------------------------------------------------------------------------------------------

SessionFor = Callable[[str, str], boto3.Session]

_clients: weakref.WeakKeyDictionary[boto3.Session, dict[tuple[str, str], Any]] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def client(session: boto3.Session, service: str, region: str) -> Any:
    """The ``service`` client of ``session`` in ``region``, built once.

    One client per session, service and region: building one loads and parses the service's model (tens of ms),
    and boto3 sessions are not safe to build clients from concurrently, while clients are safe to share between
    threads."""
    with _clients_lock:
        per_session = _clients.setdefault(session, {})
        if (service, region) not in per_session:
            per_session[(service, region)] = session.client(service, region_name=region, config=RETRY)
        return per_session[(service, region)]


def _ecs(session: boto3.Session, region: str) -> Any:
    return client(session, "ecs", region)


def default_session_for(deployment_id: str, base: boto3.Session | None = None,
                        clock: Callable[[], float] = time.monotonic) -> SessionFor:
    """``session_for`` assuming each role once (cached; a refusal is cached too, so a denied role is asked once,
    not once per target), re-assumed before its 15-minute credentials run out."""
    guard = threading.Lock()
    locks: dict[str, threading.Lock] = {}
    cache: dict[str, tuple[float, boto3.Session | Exception]] = {}
    name = session_name(deployment_id)

    def session_for(role_arn: str, region: str) -> boto3.Session:
        with guard:
            lock = locks.setdefault(role_arn, threading.Lock())
        with lock:  # one AssumeRole per role however many targets share it; other roles go on in parallel
            hit = cache.get(role_arn)
            if hit is None or clock() - hit[0] > SESSION_MAX_AGE_SECONDS:
                try:
                    value: boto3.Session | Exception = assumed_session(base or boto3.Session(), role_arn, name)
                except (ClientError, BotoCoreError) as exc:
                    value = exc
                hit = cache[role_arn] = (clock(), value)
        if isinstance(hit[1], Exception):
            raise hit[1]
        return hit[1]

    return session_for


def _error(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        text = f"{error.get('Code', 'ClientError')}: {error.get('Message', '')}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())  # one line, whatever AWS put in the message


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# --- comparing revisions -----------------------------------------------------------------------------------------

_MISSING = object()
# Values ECS fills into a described revision when the request left them out.
_FILLED_DEFAULTS = {"essential": True, "protocol": "tcp", "cpu": 0}


def _empty(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {} or value == ""


def _equivalent(current: Any, desired: Any, key: str | None = None) -> bool:
    if isinstance(current, dict) and isinstance(desired, dict):
        for k in current.keys() | desired.keys():
            mine, theirs = desired.get(k, _MISSING), current.get(k, _MISSING)
            if mine is _MISSING:  # ECS filled it in: fine if it is what ECS fills in by default
                if not (_empty(theirs) or _FILLED_DEFAULTS.get(k, _MISSING) == theirs
                        or (k == "hostPort" and theirs == current.get("containerPort"))):
                    return False
            elif theirs is _MISSING:  # we set it, ECS dropped it: fine if we set it empty
                if not _empty(mine):
                    return False
            elif not _equivalent(theirs, mine, k):
                return False
        return True
    if isinstance(current, list) and isinstance(desired, list):
        return len(current) == len(desired) and all(_equivalent(c, d, key) for c, d in zip(current, desired,
                                                                                             strict=True))
    if current == desired:
        return True
    # cpu and memory are strings in the API and often ints in hand-written requests; ECS stores the string.
    return isinstance(current, str | int) and isinstance(desired, str | int) and str(current) == str(desired) \
        and not isinstance(current, bool) and not isinstance(desired, bool)


def _tag_set(kwargs: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(t["key"], t.get("value", "")) for t in kwargs.get("tags") or [] if t.get("key") != DEPLOYMENT_TAG}


def same_revision(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether registering ``desired`` would reproduce ``current`` (both RegisterTaskDefinition arguments;
    ``current`` as ECS describes it): the deployment tag and defaults ECS fills in do not count."""
    strip = {"tags"}
    return _tag_set(current) == _tag_set(desired) and _equivalent(
        {k: v for k, v in current.items() if k not in strip}, {k: v for k, v in desired.items() if k not in strip})


def render(target: Target, current: Mapping[str, Any], deployment_id: str) -> dict[str, Any]:
    """The RegisterTaskDefinition request for ``target``: the document's task definition (or, for a service
    crossdeploy does not own, ``current`` whole) with the named container's image replaced, tagged with the
    deployment."""
    base = copy.deepcopy(target.task_definition) if target.task_definition is not None else dict(current)
    desired = replace_image(base, target.container, target.image)
    tags = [t for t in desired.get("tags") or [] if t.get("key") != DEPLOYMENT_TAG]
    desired["tags"] = [*tags, {"key": DEPLOYMENT_TAG, "value": deployment_id}]
    return desired


# --- one target: start, poll, restore ------------------------------------------------------------------------------


def _service(ecs: Any, target: Target) -> dict[str, Any] | None:
    found = ecs.describe_services(cluster=target.cluster, services=[target.service])
    services = [s for s in found.get("services", []) if s.get("status") == "ACTIVE"]
    return services[0] if services else None


def _open_deployments(ecs: Any, target: Target, statuses: Sequence[str]) -> list[dict[str, Any]] | None:
    """The service's service deployments in ``statuses``; None where ECS has no service deployment API."""
    try:
        return list(ecs.list_service_deployments(cluster=target.cluster, service=target.service,
                                                 status=list(statuses))["serviceDeployments"])
    except ClientError as exc:
        if _code(exc) in _NO_SERVICE_DEPLOYMENT_API:
            return None
        raise
    except AttributeError:  # a boto3 older than the API: rolloutState it is
        return None


def _newest(listed: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    if not listed:
        return None
    return max(listed, key=lambda d: (d.get("createdAt") or d.get("startedAt") or 0, d["serviceDeploymentArn"]))


def _newest_deployment(ecs: Any, target: Target, update_response: Mapping[str, Any]) -> str | None:
    arn = (update_response.get("service") or {}).get("currentServiceDeployment")
    if arn:
        return str(arn)
    newest = _newest(_open_deployments(ecs, target, ["PENDING", "IN_PROGRESS"]) or [])
    return str(newest["serviceDeploymentArn"]) if newest else None


def _rollout_to_follow(ecs: Any, target: Target, service: Mapping[str, Any],
                       current_arn: str) -> tuple[str | None, str | None, str | None] | None:
    """Whether ECS is still rolling ``service`` out to ``current_arn`` (or rolling back from it), so that a retry
    must follow that rollout rather than report the revision deployed: (the revision it replaces, when
    ``deployments[]`` names it; the service deployment, where ECS has the API; its status), or None if the
    rollout is over. The service deployment API decides where ECS has it (the same ListServiceDeployments the
    engine uses after UpdateService, with the rolling-back statuses too); elsewhere the primary deployment's
    ``rolloutState`` does, as in :func:`poll`."""
    deployments = service.get("deployments") or []
    replaced = [d for d in deployments if d.get("status") == "ACTIVE" and d.get("taskDefinition")
                and d["taskDefinition"] != current_arn]
    # The newest ACTIVE one is what served before (a missing createdAt sorts first, never compared with a date).
    newest_active = max(replaced, key=lambda d: (d.get("createdAt") is not None, d.get("createdAt")), default=None)
    previous = str(newest_active["taskDefinition"]) if newest_active else None
    listed = _open_deployments(ecs, target, sorted(_IN_PROGRESS | _ECS_ROLLING_BACK))
    if listed is not None:
        newest = _newest(listed)
        if newest is None:
            return None
        return previous, str(newest["serviceDeploymentArn"]), (str(newest["status"]) if newest.get("status")
                                                               else None)
    primary = next((d for d in deployments if d.get("status") == "PRIMARY"), {})
    if primary.get("taskDefinition") == current_arn and primary.get("rolloutState") == "IN_PROGRESS":
        return previous, None, "IN_PROGRESS"
    return None


def start(target: Target, session: boto3.Session, deployment_id: str, *, now: float | None = None,
          timeout_seconds: float = MAX_TIMEOUT) -> TargetState:
    """Point ``target`` at its desired revision (or leave it alone if it is already there). Never raises for AWS
    errors: they end as a FAILED state with a one-line reason."""
    began = time.monotonic() if now is None else now
    state = TargetState(phase=FAILED, started_at=began, timeout_seconds=timeout_seconds)
    fields_ = {"deploymentId": deployment_id, **target.log_fields()}
    registered: str | None = None
    try:
        ecs = _ecs(session, target.region)
        service = _service(ecs, target)
        if service is None:
            state.reason = f"{target.label}: service not found or not ACTIVE; nothing changed"
            log("target-failed", **fields_, reason=state.reason)
            return state
        state.previous_task_definition = current_arn = str(service["taskDefinition"])
        described = ecs.describe_task_definition(taskDefinition=current_arn, include=["TAGS"])
        current = register_kwargs(described, ecs)
        desired = render(target, current, deployment_id)
        if same_revision(current, desired):
            rollout = _rollout_to_follow(ecs, target, service, current_arn)
            if rollout is None:
                state.phase, state.new_task_definition = UNCHANGED, current_arn
                log("target-unchanged", **fields_, taskDefinition=current_arn, image=target.image)
                return state
            # A retry of an invocation that already pointed the service here while ECS is still at it: follow
            # that rollout (nothing registered, no UpdateService). Restorable only if the revision it replaces
            # is known.
            previous, state.service_deployment, state.ecs_status = rollout
            state.phase, state.new_task_definition = DEPLOYING, current_arn
            state.previous_task_definition, state.changed = previous, previous is not None
            log("target-resumed", **fields_, oldTaskDefinition=previous, newTaskDefinition=current_arn,
                serviceDeployment=state.service_deployment, ecsStatus=state.ecs_status, changed=state.changed)
            return state
        try:
            registered = ecs.register_task_definition(**desired)["taskDefinition"]["taskDefinitionArn"]
        except ClientError as exc:
            state.reason = f"{target.label}: ECS rejected the task definition: {_error(exc)}"
            log("target-failed", **fields_, reason=state.reason, oldTaskDefinition=current_arn)
            return state
        log("registered", **fields_, oldTaskDefinition=current_arn, newTaskDefinition=registered, image=target.image)
        state.new_task_definition = registered
        # From here on the service may have changed (a lost reply is not a refusal): restore must look.
        state.changed = True
        try:
            updated = ecs.update_service(cluster=target.cluster, service=target.service, taskDefinition=registered)
        except ClientError as exc:
            state.changed = False  # ECS answered no: nothing changed
            raise exc
        state.phase = DEPLOYING
        state.service_deployment = _newest_deployment(ecs, target, updated)
        log("updated", **fields_, oldTaskDefinition=current_arn, newTaskDefinition=registered,
            serviceDeployment=state.service_deployment)
    except Exception as exc:  # any fault fails this target cleanly; the others get restored
        state.phase = FAILED
        state.reason = f"{target.label}: {_error(exc)}"
        log("target-failed", **fields_, reason=state.reason, oldTaskDefinition=state.previous_task_definition,
            newTaskDefinition=registered, changed=state.changed)
    return state


def _deployment_status(ecs: Any, arn: str) -> tuple[str, str]:
    found = ecs.describe_service_deployments(serviceDeploymentArns=[arn])
    deployments = found.get("serviceDeployments") or []
    if not deployments:
        failures = "; ".join(f"{f.get('reason')}: {f.get('detail', '')}" for f in found.get("failures") or [])
        raise LookupError(f"ECS does not know service deployment {arn}: {failures or 'no answer'}")
    return str(deployments[0]["status"]), str(deployments[0].get("statusReason") or "")


def _rollout_status(ecs: Any, target: Target, task_definition: str | None) -> tuple[str, str]:
    """The service deployment status, derived from the primary deployment (ECS without the service deployment
    API): a primary on another revision means ECS (or someone) replaced ours."""
    service = _service(ecs, target)
    if service is None:
        return "STOPPED", "the service is gone"
    primary = next((d for d in service.get("deployments") or [] if d.get("status") == "PRIMARY"), {})
    reason = str(primary.get("rolloutStateReason") or "")
    if primary.get("taskDefinition") != task_definition:
        return "ROLLBACK_SUCCESSFUL", f"the service is on {primary.get('taskDefinition')} instead. {reason}".strip()
    return {"COMPLETED": "SUCCESSFUL", "FAILED": "ROLLBACK_FAILED"}.get(str(primary.get("rolloutState")),
                                                                         "IN_PROGRESS"), reason


def _failure_reason(target: Target, status: str, reason: str) -> str:
    what = "rolled back" if status.startswith("ROLLBACK") else "stopped"
    text = f"{target.label}: ECS {what} the deployment ({status})"
    return f"{text}: {' '.join(reason.split())}" if reason else text


# --- the smoke test after a rolling deployment ------------------------------------------------------------------


def connect_address(dns_name: str) -> str:
    """What the check connects to for the load balancer's DNS name: the name itself (the OS resolves it, as any
    client of the service would). The one seam of the smoke test: tests map the DNS name their moto load balancer
    got to 127.0.0.1, where their HTTP server listens; the lookup that found the name, the port, the scheme and the
    request are the engine's own."""
    return dns_name


class _NoAddress(Exception):
    pass


def smoke_address(session: boto3.Session, target: Target) -> str:
    """The DNS name of the load balancer in front of ``target``'s service: its first target group
    (DescribeServices) -> that group's first load balancer (DescribeTargetGroups) -> DescribeLoadBalancers.
    Raises :class:`_NoAddress` or an SDK error saying why not."""
    service = _service(_ecs(session, target.region), target)
    if service is None:
        raise _NoAddress("the service is not ACTIVE")
    groups = [lb["targetGroupArn"] for lb in service.get("loadBalancers") or [] if lb.get("targetGroupArn")]
    if not groups:
        raise _NoAddress("the service has no load balancer target group")
    elbv2 = client(session, "elbv2", target.region)
    found = elbv2.describe_target_groups(TargetGroupArns=[groups[0]]).get("TargetGroups") or []
    balancers = (found[0].get("LoadBalancerArns") or []) if found else []
    if not balancers:
        raise _NoAddress(f"target group {groups[0]} is attached to no load balancer")
    described = elbv2.describe_load_balancers(LoadBalancerArns=[balancers[0]]).get("LoadBalancers") or []
    if not described or not described[0].get("DNSName"):
        raise _NoAddress(f"load balancer {balancers[0]} has no DNS name")
    return str(described[0]["DNSName"])


def smoke_test_target(target: Target, session: boto3.Session,
                      sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Run ``target``'s smoke test against its load balancer's production listener: None when it passes (or the
    target has none), else the one-line reason the target fails with. Takes at most
    :func:`smoke_test.worst_case_seconds` of the spec, plus the lookup. Never raises."""
    test, fields_ = target.smoke_test, target.log_fields()
    if test is None:
        return None
    try:
        dns_name = smoke_address(session, target)
    except Exception as exc:  # AccessDenied, no load balancer: the deployment is unproven, so it fails
        why = str(exc) if isinstance(exc, _NoAddress) else _error(exc)
        reason = f"{target.label}: smoke test failed: cannot find the load balancer: {why}"
        log("smoke-test", **fields_, result="failed", reason=reason, attempts=[])
        return reason
    # The engine runs in the tools account, outside any VPC: it calls the internet-facing production listener by
    # its public name, as users do. TLS verifies the chain, and the name only when the spec names a host: the
    # load balancer's own DNS name is on no certificate (smoke_test.tls_context).
    try:
        result = smoke.check(test.spec, scheme=test.scheme, address=connect_address(dns_name), port=test.port,
                             sleep=sleep)
    except Exception as exc:  # a fault of the check itself must not leave the target undecided
        result = smoke.CheckResult(False, f"GET {test.spec.path} could not run: {type(exc).__name__}: {exc}", [])
    reason = None if result.ok else f"{target.label}: smoke test failed: {result.reason}"
    log("smoke-test", **fields_, result="passed" if result.ok else "failed", reason=reason or result.reason,
        url=f"{test.scheme}://{dns_name}:{test.port}{test.spec.path}", attempts=result.attempts)
    return reason


def poll(target: Target, state: TargetState, session: boto3.Session, now: float, *,
         sleep: Callable[[float], None] = time.sleep) -> TargetState:
    """One status read for a DEPLOYING or RESTORING target; other phases are returned as they are. A deployment
    ECS reports SUCCESSFUL is smoke-tested first when the target has a smoke test (``sleep`` paces its attempts):
    only a pass makes it SUCCEEDED, a failure makes it FAILED, and the other targets are then restored."""
    if not state.active:
        return state
    state = copy.copy(state)
    ecs = _ecs(session, target.region)
    restoring = state.phase == RESTORING
    arn = state.restore_deployment if restoring else state.service_deployment
    expected = state.previous_task_definition if restoring else state.new_task_definition
    try:
        status, reason = (_deployment_status(ecs, arn) if arn else _rollout_status(ecs, target, expected))
        state.poll_errors = 0
    except Exception as exc:  # a failed read is retried on the next poll, up to MAX_POLL_ERRORS
        state.poll_errors += 1
        status, reason = "", ""
        if state.poll_errors >= MAX_POLL_ERRORS:
            message = f"{target.label}: cannot read the deployment's status: {_error(exc)}"
            return _finish(target, state, restoring, ok=False, reason=message)
    if not restoring:
        state.ecs_status = status or state.ecs_status
        if status == "SUCCESSFUL":
            failure = smoke_test_target(target, session, sleep)
            return _finish(target, state, restoring, ok=failure is None, reason=failure)
        if status in _ECS_FAILED:
            return _finish(target, state, restoring, ok=False, reason=_failure_reason(target, status, reason))
    elif status:
        if state.restore_mode == "stop":
            if status == "ROLLBACK_SUCCESSFUL":
                return _finish(target, state, restoring, ok=True)
            if status == "SUCCESSFUL":  # it completed before the stop landed: put the previous revision back
                return _restore_by_update(target, state, ecs, now)
        elif status == "SUCCESSFUL":
            return _finish(target, state, restoring, ok=True)
        if status not in _IN_PROGRESS and status not in _ECS_ROLLING_BACK and status != "SUCCESSFUL":
            return _finish(target, state, restoring, ok=False,
                           reason=f"{target.label}: restore {status}: {' '.join(reason.split())}".rstrip(": "))
    waited = now - state.started_at
    if waited >= state.timeout_seconds:
        what = "restore timed out" if restoring else "timed out"
        return _finish(target, state, restoring, ok=False,
                       reason=f"{target.label}: {what} after {int(state.timeout_seconds)} s ({status or 'no status'})")
    return state


def _finish(target: Target, state: TargetState, restoring: bool, *, ok: bool, reason: str | None = None) -> TargetState:
    if restoring:
        state.phase = RESTORED if ok else RESTORE_FAILED
        state.restore_reason = reason
    else:
        state.phase = SUCCEEDED if ok else FAILED
        state.reason = reason
    log({(False, True): "succeeded", (False, False): "target-failed", (True, True): "restored",
         (True, False): "restore-failed"}[(restoring, ok)], **target.log_fields(), reason=reason,
        oldTaskDefinition=state.previous_task_definition, newTaskDefinition=state.new_task_definition,
        ecsStatus=state.ecs_status)
    return state


def _restore_by_update(target: Target, state: TargetState, ecs: Any, now: float) -> TargetState:
    service = _service(ecs, target)
    if service is None:
        return _finish(target, state, True, ok=False, reason=f"{target.label}: restore impossible: service gone")
    if service["taskDefinition"] == state.previous_task_definition and state.ecs_status not in _ECS_ROLLING_BACK:
        # Already there (ECS rolled it back, or the update never took): nothing to do.
        return _finish(target, state, True, ok=True)
    updated = ecs.update_service(cluster=target.cluster, service=target.service,
                                 taskDefinition=state.previous_task_definition)
    state.phase, state.restore_mode, state.started_at = RESTORING, "update", now
    state.restore_deployment = _newest_deployment(ecs, target, updated)
    log("restore", **target.log_fields(), mode="update", taskDefinition=state.previous_task_definition,
        replacing=state.new_task_definition, serviceDeployment=state.restore_deployment)
    return state


def restore(target: Target, state: TargetState, session: boto3.Session, now: float | None = None) -> TargetState:
    """Start putting a changed target back on its previous revision. Unchanged targets, and targets already
    restoring or restored, are returned as they are."""
    if not state.changed or state.phase in (RESTORING, RESTORED, RESTORE_FAILED):
        return state
    began = time.monotonic() if now is None else now
    state = copy.copy(state)
    try:
        ecs = _ecs(session, target.region)
        if state.ecs_status == "ROLLBACK_SUCCESSFUL" and state.service_deployment:
            return _finish(target, state, True, ok=True)  # ECS already put it back
        if state.ecs_status in _ECS_ROLLING_BACK and state.service_deployment:
            # ECS is already rolling back: follow its rollback rather than start a competing deployment.
            state.phase, state.restore_mode, state.started_at = RESTORING, "stop", began
            state.restore_deployment = state.service_deployment
            return state
        if state.service_deployment and (state.phase == DEPLOYING or state.ecs_status in _IN_PROGRESS):
            try:
                ecs.stop_service_deployment(serviceDeploymentArn=state.service_deployment, stopType="ROLLBACK")
            except ClientError as exc:  # finished meanwhile, or not stoppable: fall back to UpdateService
                log("restore-stop-refused", **target.log_fields(), error=_error(exc))
            else:
                state.phase, state.restore_mode, state.started_at = RESTORING, "stop", began
                state.restore_deployment = state.service_deployment
                log("restore", **target.log_fields(), mode="stop", serviceDeployment=state.service_deployment,
                    taskDefinition=state.previous_task_definition, replacing=state.new_task_definition)
                return state
        return _restore_by_update(target, state, ecs, began)
    except Exception as exc:  # reported as NOT restored, never raised past the other targets
        return _finish(target, state, True, ok=False, reason=f"{target.label}: restore failed: {_error(exc)}")


# --- many targets --------------------------------------------------------------------------------------------------


def _session(session_for: SessionFor, target: Target) -> boto3.Session:
    try:
        return session_for(target.role_arn, target.region)
    except Exception as exc:  # whatever stops us acting in the account fails this target, not the others
        code, _, message = _error(exc).partition(": ")
        raise _RoleRefused(f"{target.label}: {code}: assuming {target.role_arn}: {message}") from exc


class _RoleRefused(Exception):
    pass


def start_all(targets: Sequence[Target], *, session_for: SessionFor, deployment_id: str, timeout_seconds: float,
              now: float, max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> list[TargetState]:
    """:func:`start` on every target, in parallel (at most ``max_concurrency`` at once)."""

    def one(target: Target) -> TargetState:
        try:
            session = _session(session_for, target)
        except _RoleRefused as exc:
            log("target-failed", deploymentId=deployment_id, **target.log_fields(), reason=str(exc))
            return TargetState(FAILED, reason=str(exc), started_at=now, timeout_seconds=timeout_seconds)
        return start(target, session, deployment_id, now=now, timeout_seconds=timeout_seconds)

    return _parallel(one, targets, max_concurrency)


def _parallel(fn: Callable[[Any], TargetState], items: Sequence[Any], max_concurrency: int) -> list[TargetState]:
    if len(items) <= 1 or max_concurrency <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(max_concurrency, len(items))) as pool:
        return list(pool.map(fn, items))


def smoke_test_seconds(targets: Sequence[Target], states: Sequence[TargetState],
                       max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> int:
    """The longest one :func:`advance` may spend smoke-testing: the slowest worst case among the targets still
    deploying, once per round of ``max_concurrency`` (the tests run in parallel, like the polls). 0 when none can
    be tested."""
    worst = [smoke.worst_case_seconds(t.smoke_test.spec) for t, s in zip(targets, states, strict=True)
             if t.smoke_test is not None and s.phase == DEPLOYING]
    rounds = -(-len(worst) // max(1, max_concurrency))
    return max(worst, default=0) * rounds


def failing(states: Sequence[TargetState]) -> bool:
    """Whether the deployment as a whole has failed (and so must be, or is being, restored)."""
    return any(s.reason for s in states)


def finished(states: Sequence[TargetState]) -> bool:
    """Nothing left to do: no target active, and after a failure no changed target left unrestored."""
    if any(s.active for s in states):
        return False
    return not failing(states) or not any(s.changed and s.phase in (SUCCEEDED, FAILED, DEPLOYING) for s in states)


def advance(targets: Sequence[Target], states: Sequence[TargetState], *, session_for: SessionFor, now: float,
            max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
            sleep: Callable[[float], None] = time.sleep) -> list[TargetState]:
    """One step: poll whatever is in progress (a deployment that succeeds is smoke-tested first, see :func:`poll`;
    this step then takes up to :func:`smoke_test_seconds`); once any target has failed, start restoring every
    changed target (deployments still running are stopped with ECS's rollback) and poll the restores."""
    pairs = list(zip(targets, states, strict=True))

    def step(pair: tuple[Target, TargetState], restoring: bool) -> TargetState:
        target, state = pair
        if not state.active and not (restoring and state.changed):
            return state
        try:
            session = _session(session_for, target)
        except _RoleRefused as exc:
            state = copy.copy(state)
            return _finish(target, state, state.phase == RESTORING or restoring, ok=False, reason=str(exc))
        if restoring and state.changed and state.phase not in (RESTORING, RESTORED, RESTORE_FAILED):
            return restore(target, state, session, now)
        # (A resumed rollout whose previous revision is unknown cannot be restored: it is followed to its end.)
        return poll(target, state, session, now, sleep=sleep)

    new = list(states)
    if not failing(new):
        new = _parallel(lambda p: step(p, False), pairs, max_concurrency)
        pairs = list(zip(targets, new, strict=True))
    if failing(new):
        new = _parallel(lambda p: step(p, True), pairs, max_concurrency)
    return new


def outcome(targets: Sequence[Target], states: Sequence[TargetState]) -> Outcome:
    """The one-line verdict over finished states."""
    n = len(states)
    failed = [s.reason for s in states if s.reason]
    if not failed:
        changed = sum(s.phase == SUCCEEDED for s in states)
        return Outcome(True, f"{n} target(s) deployed: {changed} updated, {n - changed} already on the revision",
                       tuple(targets), tuple(states))
    restored = sum(s.phase == RESTORED for s in states)
    bad_restores = [s.restore_reason or "restore did not finish" for s in states
                    if s.changed and s.phase not in (RESTORED,)]
    text = f"{len(failed)} of {n} target(s) failed: " + "; ".join(str(r) for r in failed)
    text += f". Restored {restored} changed target(s) to their previous revision"
    if bad_restores:
        text += f"; {len(bad_restores)} NOT restored: " + "; ".join(bad_restores)
    return Outcome(False, " ".join(text.split()), tuple(targets), tuple(states))


def run(
    targets: Sequence[Target],
    *,
    session_for: SessionFor,
    deployment_id: str,
    timeout_seconds: float,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Deploy ``targets`` and wait: all succeed, or every changed target is restored and the outcome is failed."""
    log("deployment-start", deploymentId=deployment_id, targets=[t.label for t in targets],
        timeoutSeconds=timeout_seconds)
    states = start_all(targets, session_for=session_for, deployment_id=deployment_id,
                       timeout_seconds=timeout_seconds, now=clock(), max_concurrency=max_concurrency)
    while not finished(states):
        if any(s.active for s in states):
            sleep(poll_seconds)
        states = advance(targets, states, session_for=session_for, now=clock(), max_concurrency=max_concurrency,
                         sleep=sleep)
    result = outcome(targets, states)
    log("deployment-outcome", deploymentId=deployment_id, status=result.status, reason=result.reason,
        counts=result.counts())
    return result


if __name__ == "__main__":
    # Not a command line: `python -m handlers.deploy_engine` (with --help or anything else) used to import the
    # module, do nothing and exit 0, which reads as success. Say what it is instead, and fail like a usage error.
    import sys

    print("handlers.deploy_engine: not a command line; it is the deploy engine, a library that the "
          "Lambda functions handlers.pipeline_deploy, push_deploy and release call", file=sys.stderr)
    sys.exit(2)
