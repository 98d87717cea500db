"""CodePipeline's deploy step: a Lambda invoke action that runs the deploy engine for one environment of one
service, and the alarm bake after it (Lambda entry point ``handlers.pipeline_deploy.handler``).

Why a Lambda invoke action answering with continuation tokens (see :mod:`handlers.deploy_engine`): it is the only
CodePipeline action that may wait 24 hours, long enough for ECS's longest bake (1440 minutes); Step Functions and
the other invoke actions stop at 1 hour, CodeBuild on Lambda compute at 15 minutes. CodePipeline wants a reply at
least every 20 minutes, so each invocation works for at most ~10 minutes (and never closer than a minute to the
Lambda's own timeout), then answers PutJobSuccessResult with a ``continuationToken``; CodePipeline invokes the
function again with that token, and so on until the final answer.

* Input of a deployment: ``UserParameters`` is ``{"environment": "<name>"}``; input artifacts ``DeployConfig`` (a
  zip holding ``deploy.json``, the deploy document as it was when the execution started) and ``ImageDefinitions``
  (a zip of ``imagedefinitions-<region>.json``, written by the build step). Both are read with the job's
  ``artifactCredentials`` (SSE-KMS objects, which S3 decrypts for SigV4 requests).
* First invocation: validate everything (nothing is deployed on a bad job, artifact, document or image), start
  every target of the environment in parallel, answer with a token holding each target's state.
* Later invocations: poll until done or out of time, answer again with a fresh token; all succeeded ->
  PutJobSuccessResult without a token; any failure or timeout -> every changed target restored (continuing with
  tokens while the restores run) -> PutJobFailureResult ``{"type": "JobFailed", "message": <one line>}``.
* The job is always answered (an unanswered job hangs until the action times out); the job id is the deployment
  id in logs, task definition tags and STS session names. The event is never logged: it carries credentials.
* Smoke tests (rolling targets with ``smokeTest``, see :mod:`handlers.deploy_engine`) run inside a poll; an
  invocation starts a poll only while the slowest smoke test it could run still ends within its time, so the
  Lambda is never stopped mid-check, and a first invocation whose smoke tests could never fit is refused.

Token: ``zlib`` + URL-safe base64 of minimal JSON, ARNs shortened by the parts the target already determines
(account, region, cluster, service); it must fit CodePipeline's 2048 characters, which is checked with a worst case
before anything is started (ten regions fit, see the tests).

**The alarm bake** (the ``Bake`` action after a deployment, run order 2, same function, no input artifacts):
``UserParameters`` is ``{"environment": "<name>", "bake": {"minutes": <1-1440>, "roleArn": "<deploy role of the
environment's account>", "regions": ["us-east-2", ...], "alarms": ["<alarm name>", ...]}}`` (alarm names are the
same in every region), validated strictly, nothing assumed. The first invocation records ``until = now + minutes``
in a continuation token (``{"v", "k": "bake", "h": <fingerprint of the parameters>, "s": start, "u": until}``);
every invocation assumes the deploy role in each region and reads the alarms (DescribeAlarms, 100 names a call,
metric and composite), every :data:`BAKE_POLL_FLOOR_SECONDS` at least, and answers with a fresh token until
``until`` passes. An alarm in ALARM, an alarm that does not exist (a bake that watches nothing is no evidence) or a
region it cannot read (AccessDenied) fails the job with a one-line message naming them; OK and INSUFFICIENT_DATA
hold. Reads are samples: an alarm that fires and clears between two reads is not seen (its history would show
it; the deploy role may read only the alarms). The bake puts nothing back itself: the failure fails the stage, and
the stage's ``onFailure: ROLLBACK`` redeploys the last successful execution, through this same engine.

Why a Lambda in the tools account and not a CodePipeline ``CloudWatchAlarm`` rule: the rule reads alarms in the
pipeline's own account only, and the alarms live in the workload accounts, where the deploy role may read them
(``cloudwatch:DescribeAlarms``, scoped to the stack's alarm ARNs) and the engine already assumes it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from handlers import deploy_engine as engine
from handlers.ecs_common import ENVIRONMENT, REGION, RETRY, Problems, log

MAX_TOKEN_CHARS = 2048  # CodePipeline's continuationToken limit
MAX_SUMMARY_CHARS = 2048  # ExecutionDetails.summary
MAX_MESSAGE_CHARS = 5000  # FailureDetails.message
INVOCATION_CAP_SECONDS = 600.0  # CodePipeline wants a reply at least every 20 minutes; half of that, to be safe
RESERVE_SECONDS = 60.0  # kept back from the Lambda's remaining time for the last status reads and the answer
POLL_SECONDS_ENV, MAX_CONCURRENCY_ENV = "CROSSDEPLOY_POLL_SECONDS", "CROSSDEPLOY_MAX_CONCURRENCY"
DEPLOY_CONFIG, IMAGE_DEFINITIONS, DEPLOY_FILE = "DeployConfig", "ImageDefinitions", engine.DOCUMENT_FILE
MAX_ARTIFACT_BYTES = 16 * 1024 * 1024
TOKEN_VERSION = 1

# The alarm bake (see the module docstring).
MAX_BAKE_MINUTES = 24 * 60  # the Lambda invoke action's own limit; the stack config keeps bakes an hour shorter
BAKE_POLL_FLOOR_SECONDS = 30.0
"""Alarms are read at most this often: CloudWatch evaluates them once a minute at best, and DescribeAlarms is
throttled per account and region, where many pipelines may bake at once."""
MAX_ALARMS_PER_CALL = 100  # DescribeAlarms' AlarmNames limit
ACTION_LIMIT_SECONDS = 24 * 3600.0  # no bake token may be older: CodePipeline has timed the action out by then
CLOCK_SKEW_SECONDS = 300.0  # Lambda hosts' clocks agree to well within this
_ALARM_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,255}")  # CloudWatch: 1-255 UTF-8 characters, no control characters
_BAKE_KEYS = ("minutes", "roleArn", "regions", "alarms")

_IMAGE_FILE = re.compile(r"(?:.*/)?imagedefinitions-(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.json")
_PHASE_CODES = {phase: i for i, phase in enumerate(engine.PHASES)}
_STATUS_CODES = {s: i for i, s in enumerate(("PENDING", "IN_PROGRESS", "SUCCESSFUL", "STOPPED", "STOP_REQUESTED",
                                             "ROLLBACK_REQUESTED", "ROLLBACK_IN_PROGRESS", "ROLLBACK_SUCCESSFUL",
                                             "ROLLBACK_FAILED"))}
_RESTORE_MODES = ("stop", "update")
# Reason lengths tried in turn until the token fits: the reasons matter only for the final one-line message.
_REASON_CAPS = (None, 400, 160, 60, 0)


class JobError(Exception):
    """The job cannot be run as given (malformed event, missing artifact, bad document): answered as a failure,
    nothing deployed."""


# --- AWS access (module-level seams: tests replace these) -------------------------------------------------------


def _codepipeline() -> Any:
    return boto3.client("codepipeline", config=RETRY)


def _artifact_s3(credentials: Mapping[str, str]) -> Any:
    # The job's own short-lived credentials: they, not the function's role, may read this execution's artifacts.
    # SigV4 explicitly: S3 refuses SSE-KMS objects to anything else.
    return boto3.client("s3", aws_access_key_id=credentials["accessKeyId"],
                        aws_secret_access_key=credentials["secretAccessKey"],
                        aws_session_token=credentials["sessionToken"],
                        config=RETRY.merge(Config(signature_version="s3v4")))


def _session_for(deployment_id: str) -> engine.SessionFor:
    return engine.default_session_for(deployment_id)


_sleep = time.sleep
_clock = time.monotonic  # within one invocation
_now = time.time  # across invocations: the token carries wall-clock times


# --- the job -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A deployment: ``UserParameters`` ``{"environment": "<name>"}``, the two input artifacts."""

    id: str
    environment: str
    deploy_config: tuple[str, str]
    image_definitions: tuple[str, str]
    credentials: Mapping[str, str]
    continuation_token: str | None


@dataclass(frozen=True)
class Bake:
    """What a bake watches: ``UserParameters.bake``."""

    minutes: int
    role_arn: str
    """The deploy role of the environment's account: the alarms live there."""
    regions: tuple[str, ...]
    alarms: tuple[str, ...]
    """Alarm names, the same in every region."""


@dataclass(frozen=True)
class BakeJob:
    """An alarm bake: ``UserParameters`` ``{"environment": "<name>", "bake": {...}}``, no input artifacts."""

    id: str
    environment: str
    bake: Bake
    continuation_token: str | None


def job_id(event: Any) -> str | None:
    job = event.get("CodePipeline.job") if isinstance(event, Mapping) else None
    value = job.get("id") if isinstance(job, Mapping) else None
    return value if isinstance(value, str) and value else None


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, Mapping) or part not in obj:
            raise JobError(f"job: {path} is missing")
        obj = obj[part]
    return obj


def _user_parameters(raw: Any) -> dict[str, Any]:
    try:
        params = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the decoder's stack
        params = None
    if not isinstance(params, dict) or not isinstance(params.get("environment"), str) or set(params) not in (
            {"environment"}, {"environment", "bake"}):
        raise JobError('job: UserParameters must be the JSON object {"environment": "<name>"} (a deployment) or '
                       '{"environment": "<name>", "bake": {"minutes", "roleArn", "regions", "alarms"}} (an alarm '
                       f"bake), got {engine._show(raw)}")
    return params


def _names(raw: Mapping[str, Any], key: str, pattern: re.Pattern[str], where: str, what: tuple[str, str],
           problems: Problems) -> tuple[str, ...]:
    """A non-empty list of unique strings, each matching ``pattern``; ``what``: (one, the plural)."""
    values = raw.get(key)
    if key not in raw:
        return ()  # reported by exact_keys
    if not isinstance(values, list) or not values:
        problems.add(f"{where}.{key}", f"expected a non-empty list of {what[1]}, got {engine._show(values)}")
        return ()
    for i, value in enumerate(values):
        if not isinstance(value, str) or not pattern.fullmatch(value):
            problems.add(f"{where}.{key}[{i}]", f"expected {what[0]}, got {engine._show(value)}")
    repeated = sorted({v for v in values if isinstance(v, str) and values.count(v) > 1})
    if repeated:
        problems.add(f"{where}.{key}", f"repeats {repeated}")
    return tuple(values)


def parse_bake(params: Mapping[str, Any]) -> tuple[str, Bake]:
    """(environment, bake) from decoded UserParameters; :class:`JobError` names every problem with its key path.
    Nothing has a default: a bake that guessed what to watch would be no evidence."""
    problems = Problems()
    environment = problems.string(params, "environment", ENVIRONMENT, "UserParameters", "an environment name")
    raw, where = params.get("bake"), "UserParameters.bake"
    minutes, role_arn, regions, alarms = None, None, (), ()
    if problems.exact_keys(raw, _BAKE_KEYS, where):
        minutes = problems.integer(raw, "minutes", 1, MAX_BAKE_MINUTES, where)
        role_arn = problems.string(raw, "roleArn", engine._ROLE_ARN, where, "an IAM role ARN")
        regions = _names(raw, "regions", REGION, where, ("a region name", "region names"), problems)
        alarms = _names(raw, "alarms", _ALARM_NAME, where, ("an alarm name (1-255 characters, no control "
                                                            "characters)", "alarm names"), problems)
    if problems.items:
        raise JobError("job: bake: " + "; ".join(problems.items))
    return str(environment), Bake(int(minutes), str(role_arn), regions, alarms)  # type: ignore[arg-type]


def parse_job(event: Any) -> Job | BakeJob:
    """The job: a deployment (environment, artifact locations, credentials) or an alarm bake (what to watch), and
    its token; :class:`JobError` names what is wrong (never a credential's value)."""
    ident = job_id(event)
    if ident is None:
        raise JobError("job: CodePipeline.job.id is missing")
    data = event["CodePipeline.job"].get("data")  # the key itself holds a dot: not a _get path
    if not isinstance(data, Mapping):
        raise JobError("job: CodePipeline.job.data is missing")
    params = _user_parameters(_get(data, "actionConfiguration.configuration.UserParameters"))
    token = data.get("continuationToken")
    if token is not None and (not isinstance(token, str) or not token):
        raise JobError("job: continuationToken is not a non-empty string")
    if "bake" in params:
        # No artifacts and no artifact credentials: a bake reads only alarms, as the deploy role.
        environment, bake = parse_bake(params)
        return BakeJob(ident, environment, bake, token)
    artifacts = data.get("inputArtifacts")
    if not isinstance(artifacts, list):
        raise JobError("job: inputArtifacts is missing or not a list")
    locations: dict[str, tuple[str, str]] = {}
    for i, artifact in enumerate(artifacts):
        name = artifact.get("name") if isinstance(artifact, Mapping) else None
        location = artifact.get("location") if isinstance(artifact, Mapping) else None
        s3 = location.get("s3Location") if isinstance(location, Mapping) else None
        if (not isinstance(name, str) or not isinstance(location, Mapping) or location.get("type") != "S3"
                or not isinstance(s3, Mapping) or not all(isinstance(s3.get(k), str) and s3[k]
                                                          for k in ("bucketName", "objectKey"))):
            raise JobError(f"job: inputArtifacts[{i}] is not a named S3 artifact")
        locations[name] = (s3["bucketName"], s3["objectKey"])
    missing = [n for n in (DEPLOY_CONFIG, IMAGE_DEFINITIONS) if n not in locations]
    if missing:
        raise JobError(f"job: input artifact(s) {missing} missing (has {sorted(locations)})")
    credentials = data.get("artifactCredentials")
    keys = ("accessKeyId", "secretAccessKey", "sessionToken")
    if not isinstance(credentials, Mapping) or not all(isinstance(credentials.get(k), str) for k in keys):
        raise JobError(f"job: artifactCredentials must hold {list(keys)}")
    return Job(ident, params["environment"], locations[DEPLOY_CONFIG], locations[IMAGE_DEFINITIONS],
               {k: credentials[k] for k in keys}, token)


def _zip_members(s3: Any, name: str, location: tuple[str, str]) -> dict[str, bytes]:
    bucket, key = location
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_ARTIFACT_BYTES + 1)
    except (ClientError, BotoCoreError) as exc:
        raise JobError(f"artifact {name}: cannot read s3://{bucket}/{key}: {engine._error(exc)}") from None
    if len(body) > MAX_ARTIFACT_BYTES:
        raise JobError(f"artifact {name}: larger than {MAX_ARTIFACT_BYTES} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()
                    and info.file_size <= MAX_ARTIFACT_BYTES}
    except zipfile.BadZipFile:
        raise JobError(f"artifact {name}: s3://{bucket}/{key} is not a zip file") from None


def _json(name: str, member: str, raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested deeper than the decoder's stack
        raise JobError(f"artifact {name}: {member} is not JSON ({exc})") from None


def read_artifacts(job: Job, s3: Any) -> tuple[Any, dict[str, Any]]:
    """(decoded deploy.json, {region: decoded imagedefinitions-<region>.json})."""
    config = _zip_members(s3, DEPLOY_CONFIG, job.deploy_config)
    deploy = next((m for m in config if m.rsplit("/", 1)[-1] == DEPLOY_FILE), None)
    if deploy is None:
        raise JobError(f"artifact {DEPLOY_CONFIG}: no {DEPLOY_FILE} (has {sorted(config)[:10]})")
    definitions = {}
    for member, raw in _zip_members(s3, IMAGE_DEFINITIONS, job.image_definitions).items():
        match = _IMAGE_FILE.fullmatch(member)
        if match:
            definitions[match["region"]] = _json(IMAGE_DEFINITIONS, member, raw)
    return _json(DEPLOY_CONFIG, deploy, config[deploy]), definitions


def images_for(environment: engine.Environment, definitions: Mapping[str, Any]) -> dict[str, str]:
    """region -> image of the environment's container there, from the image definitions files."""
    images: dict[str, str] = {}
    problems: list[str] = []
    for spec in environment.targets:
        where = f"imagedefinitions-{spec.region}.json"
        entries = definitions.get(spec.region)
        if entries is None:
            problems.append(f"{where}: missing from {IMAGE_DEFINITIONS}")
            continue
        if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
            problems.append(f"{where}: expected a list of {{name, imageUri}} objects")
            continue
        uris = [e.get("imageUri") for e in entries if e.get("name") == spec.container]
        if len(uris) != 1 or not isinstance(uris[0], str):
            problems.append(f"{where}: expected exactly one entry named {spec.container!r}, found {len(uris)}")
            continue
        if images.setdefault(spec.region, uris[0]) != uris[0]:
            problems.append(f"{where}: targets in {spec.region} name containers with different images")
    if problems:
        raise engine.EngineInputError(problems)
    return images


# --- the continuation token ---------------------------------------------------------------------------------------


def _prefixes(target: engine.Target) -> tuple[str, str]:
    base = f"arn:{target.partition}:ecs:{target.region}:{target.account_id}:"
    return base + "task-definition/", f"{base}service-deployment/{target.cluster}/{target.service}/"


def _shorten(arn: str | None, prefix: str) -> str | None:
    if arn is None:
        return None
    return "~" + arn[len(prefix):] if arn.startswith(prefix) else arn


def _expand(value: str | None, prefix: str) -> str | None:
    return prefix + value[1:] if isinstance(value, str) and value.startswith("~") else value


def _fingerprint(environment: str, targets: Sequence[engine.Target]) -> str:
    # A token belongs to one job; this catches a token decoded against other targets or images all the same.
    text = json.dumps([environment, [[t.account_id, t.region, t.cluster, t.service, t.image] for t in targets]])
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _cap(text: str | None, cap: int | None) -> str | None:
    if text is None or cap is None or len(text) <= cap:
        return text
    return text[:cap] + "…"


def encode_token(environment: str, targets: Sequence[engine.Target], states: Sequence[engine.TargetState],
                 started: float, reason_cap: int | None = None) -> str:
    """Compact, URL-safe text of the deployment's progress (see the module docstring)."""
    rows = []
    for target, s in zip(targets, states, strict=True):
        td, sd = _prefixes(target)
        row = [_PHASE_CODES[s.phase], int(s.changed), _shorten(s.previous_task_definition, td),
               _shorten(s.new_task_definition, td), _shorten(s.service_deployment, sd),
               _STATUS_CODES.get(s.ecs_status or "", s.ecs_status),
               None if s.restore_deployment == s.service_deployment else _shorten(s.restore_deployment, sd),
               _RESTORE_MODES.index(s.restore_mode) if s.restore_mode else None,
               _cap(s.reason, reason_cap), _cap(s.restore_reason, reason_cap), round(s.started_at - started),
               s.poll_errors or None]
        while row and row[-1] is None:
            row.pop()
        rows.append(row)
    return _pack({"v": TOKEN_VERSION, "t": round(started), "h": _fingerprint(environment, targets), "s": rows})


def _pack(data: Mapping[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def _unpack(token: str) -> dict[str, Any]:
    try:
        data = json.loads(zlib.decompress(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))))
    except (ValueError, RecursionError, zlib.error) as exc:
        raise JobError(f"continuation token is not readable ({exc})") from None
    if not isinstance(data, dict) or data.get("v") != TOKEN_VERSION:
        raise JobError("continuation token is of another version of this function")
    return data


def fitting_token(environment: str, targets: Sequence[engine.Target], states: Sequence[engine.TargetState],
                  started: float) -> str | None:
    """The least shortened token that fits CodePipeline's limit, or None."""
    for cap in _REASON_CAPS:
        token = encode_token(environment, targets, states, started, cap)
        if len(token) <= MAX_TOKEN_CHARS:
            return token
    return None


def decode_token(token: str, environment: str, targets: Sequence[engine.Target],
                 timeout_seconds: float) -> tuple[list[engine.TargetState], float]:
    """(states, start time) from :func:`encode_token`'s text; :class:`JobError` if it is not for these targets."""
    data = _unpack(token)
    rows = data.get("s")
    if data.get("h") != _fingerprint(environment, targets) or not isinstance(rows, list) or len(rows) != len(
            targets):
        raise JobError("continuation token does not match this job's targets and images")
    try:  # ours, round-tripped by CodePipeline; an edited token is refused, not a TypeError halfway through
        started = float(data["t"])
        phases, statuses = list(_PHASE_CODES), list(_STATUS_CODES)
        states = []
        for target, row in zip(targets, data["s"], strict=True):
            row = [*row, *[None] * (12 - len(row))]
            td, sd = _prefixes(target)
            status = statuses[row[5]] if isinstance(row[5], int) else row[5]
            service_deployment = _expand(row[4], sd)
            states.append(engine.TargetState(
                phase=phases[row[0]], changed=bool(row[1]), previous_task_definition=_expand(row[2], td),
                new_task_definition=_expand(row[3], td), service_deployment=service_deployment, ecs_status=status,
                restore_deployment=_expand(row[6], sd) if row[6] else (
                    service_deployment if row[7] == 0 else None),
                restore_mode=_RESTORE_MODES[row[7]] if row[7] is not None else None, reason=row[8],
                restore_reason=row[9], started_at=started + (row[10] or 0), timeout_seconds=timeout_seconds,
                poll_errors=row[11] or 0))
    except (KeyError, IndexError, TypeError, ValueError, OverflowError) as exc:
        raise JobError(f"continuation token is malformed ({type(exc).__name__}: {exc})") from None
    return states, started


def _worst_case_fits(environment: str, targets: Sequence[engine.Target]) -> bool:
    """Whether the token can hold these targets at their largest (every target restoring through UpdateService,
    with revisions in the hundred thousands and 36-character deployment ids), before anything is started."""
    states = []
    for target in targets:
        family = (target.task_definition or {}).get("family") or target.service
        td, sd = _prefixes(target)
        states.append(engine.TargetState(
            phase=engine.RESTORING, changed=True, previous_task_definition=f"{td}{family}:999998",
            new_task_definition=f"{td}{family}:999999", service_deployment=sd + os.urandom(18).hex()[:36],
            ecs_status="ROLLBACK_FAILED", restore_deployment=sd + os.urandom(18).hex()[:36], restore_mode="update",
            reason="x" * 200, restore_reason="y" * 200, started_at=99999.0, poll_errors=2))
    return fitting_token(environment, targets, states, 0.0) is not None


# --- the handler ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    kind: str  # "continue" | "succeeded" | "failed"
    message: str
    token: str | None = None
    percent: int = 100


def _one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _summary(states: Sequence[engine.TargetState]) -> str:
    counts = {p: sum(s.phase == p for s in states) for p in engine.PHASES}
    return ", ".join(f"{n} {p}" for p, n in counts.items() if n)


def _progress(environment: str, targets: Sequence[engine.Target], states: list[engine.TargetState],
              started: float, job: Job, session_for: engine.SessionFor, max_concurrency: int) -> Answer:
    if engine.finished(states):
        result = engine.outcome(targets, states)
        log("pipeline-outcome", deploymentId=job.id, environment=environment, status=result.status,
            reason=result.reason, counts=result.counts())
        return Answer("succeeded" if result.succeeded else "failed", result.reason)
    token = fitting_token(environment, targets, states, started)
    if token is None:
        # Should not happen after the worst-case check; if it does, the job cannot continue: put back what
        # changed (without waiting) rather than leave it half deployed.
        for i, state in enumerate(states):
            if not state.reason:
                states[i] = engine.TargetState(**{**state.to_dict(), "reason": "state does not fit the token"})
                break
        states = engine.advance(targets, states, session_for=session_for, now=_now(), max_concurrency=max_concurrency,
                                sleep=_sleep)
        return Answer("failed", f"deployment state no longer fits CodePipeline's {MAX_TOKEN_CHARS}-character "
                                f"continuation token; restores started: {_summary(states)}")
    done = sum(not s.active for s in states)
    return Answer("continue", f"{environment}: {_summary(states)}", token, percent=min(99, 100 * done // len(states)))


def _settings() -> tuple[float, int]:
    try:
        poll = float(os.environ.get(POLL_SECONDS_ENV, engine.DEFAULT_POLL_SECONDS))
        concurrency = int(os.environ.get(MAX_CONCURRENCY_ENV, engine.DEFAULT_MAX_CONCURRENCY))
    except ValueError:
        raise JobError(f"{POLL_SECONDS_ENV} / {MAX_CONCURRENCY_ENV} must be numbers") from None
    return max(0.0, poll), max(1, concurrency)


def handle(job: Job, remaining_seconds: float) -> Answer:
    """Everything but answering: validate, then start or continue; returns what to answer."""
    began = _clock()
    poll_seconds, max_concurrency = _settings()
    document_data, definitions = read_artifacts(job, _artifact_s3(job.credentials))
    document = engine.parse_document(document_data)
    environment = document.environment(job.environment)
    targets = engine.targets_for(document, environment.name, images_for(environment, definitions))
    session_for = _session_for(job.id)
    if job.continuation_token is None:
        if not _worst_case_fits(environment.name, targets):
            raise JobError(f"{len(targets)} targets could not be tracked within CodePipeline's {MAX_TOKEN_CHARS}-"
                           "character continuation token; split the environment")
        # Every later invocation gets the same Lambda timeout: if the smoke tests cannot fit in this one's, they
        # never will, and following the deployment would end in a Lambda killed mid-check.
        smoke_seconds = engine.smoke_test_seconds(targets, [engine.TargetState(engine.DEPLOYING)] * len(targets),
                                                  max_concurrency)
        if smoke_seconds > remaining_seconds - RESERVE_SECONDS:
            raise JobError(f"the smoke tests may take {smoke_seconds} s, more than the "
                           f"{int(remaining_seconds - RESERVE_SECONDS)} s an invocation of this function can spend "
                           "(fewer attempts or a shorter timeoutSeconds)")
        started = _now()
        log("pipeline-start", deploymentId=job.id, environment=environment.name, strategy=environment.strategy,
            targets=[t.label for t in targets], images=sorted(set(t.image for t in targets)))
        states = engine.start_all(targets, session_for=session_for, deployment_id=job.id,
                                  timeout_seconds=environment.timeout_seconds, now=started,
                                  max_concurrency=max_concurrency)
        return _progress(environment.name, targets, states, started, job, session_for, max_concurrency)
    states, started = decode_token(job.continuation_token, environment.name, targets, environment.timeout_seconds)
    budget = min(INVOCATION_CAP_SECONDS, remaining_seconds - RESERVE_SECONDS)
    while True:
        # A step may smoke-test a deployment that just succeeded: start one only while the slowest smoke test it
        # could run still ends within the budget (and, whatever the budget, within the Lambda's time), so the
        # function is never stopped mid-check.
        smoke_seconds = engine.smoke_test_seconds(targets, states, max_concurrency)
        if smoke_seconds > remaining_seconds - RESERVE_SECONDS - (_clock() - began):
            break
        states = engine.advance(targets, states, session_for=session_for, now=_now(), max_concurrency=max_concurrency,
                                sleep=_sleep)
        if engine.finished(states) or _clock() + poll_seconds + engine.smoke_test_seconds(
                targets, states, max_concurrency) >= began + budget:
            break
        _sleep(poll_seconds)
    return _progress(environment.name, targets, states, started, job, session_for, max_concurrency)


# --- the alarm bake ------------------------------------------------------------------------------------------------


def _bake_fingerprint(environment: str, bake: Bake) -> str:
    # A bake token belongs to one bake: another environment, role, region or alarm list makes it another bake.
    text = json.dumps([environment, bake.minutes, bake.role_arn, list(bake.regions), list(bake.alarms)])
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def encode_bake_token(environment: str, bake: Bake, started: float) -> str:
    """The bake's progress: when it started and until when it watches (``until - started`` is the bake)."""
    return _pack({"v": TOKEN_VERSION, "k": "bake", "h": _bake_fingerprint(environment, bake), "s": round(started),
                  "u": round(started) + bake.minutes * 60})


def decode_bake_token(token: str, environment: str, bake: Bake, now: float) -> tuple[float, float]:
    """(started, until) from :func:`encode_bake_token`'s text; :class:`JobError` if it is not this bake's, does not
    add up, or is older than any action CodePipeline still runs (a replayed token)."""
    data = _unpack(token)
    if data.get("k") != "bake":
        raise JobError("continuation token is not a bake's (a deployment's token sent to a bake)")
    if data.get("h") != _bake_fingerprint(environment, bake):
        raise JobError("continuation token does not match this bake's environment, role, regions and alarms")
    started, until = data.get("s"), data.get("u")
    # The token is only ever ours, round-tripped by CodePipeline; these checks keep an edited one from stretching
    # or skipping the bake.
    if type(started) is not int or type(until) is not int or until - started != bake.minutes * 60:
        raise JobError(f"continuation token's bake does not last the {bake.minutes} minutes asked for")
    if started > now + CLOCK_SKEW_SECONDS:
        raise JobError("continuation token's bake starts in the future")
    if now - started > ACTION_LIMIT_SECONDS + CLOCK_SKEW_SECONDS:
        raise JobError(f"continuation token expired: its bake started {int((now - started) // 3600)} h ago, longer "
                       "than CodePipeline runs an action")
    return float(started), float(until)


@dataclass(frozen=True)
class AlarmRead:
    """One read of every alarm in every region."""

    problems: tuple[str, ...]
    """Why the bake fails (an alarm in ALARM, a missing alarm, an unreadable region): empty while it holds."""
    states: Mapping[str, int]
    """State value -> how many (alarm, region) pairs are in it."""


def _read_region(bake: Bake, region: str, session_for: engine.SessionFor) -> tuple[list[str], list[str]]:
    """(problems, state values) of the bake's alarms in one region, read as the deploy role."""
    try:
        session = session_for(bake.role_arn, region)
    except Exception as exc:  # a refused role is a failed bake: nothing was watched
        return [f"{region}: cannot assume {bake.role_arn}: {engine._error(exc)}"], []
    found: dict[str, Mapping[str, Any]] = {}
    try:
        cloudwatch = engine.client(session, "cloudwatch", region)
        paginator = cloudwatch.get_paginator("describe_alarms")
        for i in range(0, len(bake.alarms), MAX_ALARMS_PER_CALL):
            # Both types: without AlarmTypes CloudWatch answers with metric alarms only, and a composite alarm
            # would look missing.
            for page in paginator.paginate(AlarmNames=list(bake.alarms[i:i + MAX_ALARMS_PER_CALL]),
                                           AlarmTypes=["CompositeAlarm", "MetricAlarm"]):
                for alarm in [*page.get("MetricAlarms", []), *page.get("CompositeAlarms", [])]:
                    found[alarm["AlarmName"]] = alarm
    except (ClientError, BotoCoreError) as exc:  # AccessDenied above all: a bake that cannot see is no evidence
        return [f"{region}: cannot read the alarms as {bake.role_arn}: {engine._error(exc)}"], []
    problems, states = [], []
    for name in bake.alarms:
        alarm = found.get(name)
        if alarm is None:
            problems.append(f"alarm {name} does not exist in {region} (a bake that watches nothing is no evidence)")
            continue
        state = str(alarm.get("StateValue"))
        states.append(state)
        if state == "ALARM":
            why = " ".join(str(alarm.get("StateReason") or "no reason given").split())
            problems.append(f"alarm {name} in {region} is in ALARM: {why}")
    return problems, states


def read_alarms(bake: Bake, session_for: engine.SessionFor) -> AlarmRead:
    """Every alarm of the bake in every region, now. INSUFFICIENT_DATA and OK hold; ALARM, a missing alarm or an
    unreadable region fail."""
    problems: list[str] = []
    states: dict[str, int] = {}
    for region in bake.regions:  # a handful of regions, one call each: not worth threads
        region_problems, region_states = _read_region(bake, region, session_for)
        problems.extend(region_problems)
        for state in region_states:
            states[state] = states.get(state, 0) + 1
    return AlarmRead(tuple(problems), states)


def _bake_summary(environment: str, bake: Bake, read: AlarmRead) -> str:
    total, regions = len(bake.alarms) * len(bake.regions), ", ".join(bake.regions)
    if set(read.states) == {"OK"}:
        return f"{environment}: baked {bake.minutes} min: {total} alarms OK in {regions}"
    counts = ", ".join(f"{n} {state}" for state, n in sorted(read.states.items()))
    return f"{environment}: baked {bake.minutes} min: {total} alarms in {regions}, none in ALARM ({counts})"


def handle_bake(job: BakeJob, remaining_seconds: float) -> Answer:
    """Watch the alarms until the bake's end (answering with a token every invocation) or until one fails it.

    The handler restores nothing: a failed bake fails the stage, whose ``onFailure: ROLLBACK`` redeploys the last
    successful execution."""
    began = _clock()
    poll_seconds, _ = _settings()
    interval = max(poll_seconds, BAKE_POLL_FLOOR_SECONDS)
    bake, environment = job.bake, job.environment
    if job.continuation_token is None:
        started = float(round(_now()))
        until = started + bake.minutes * 60
        log("bake-start", deploymentId=job.id, environment=environment, minutes=bake.minutes, roleArn=bake.role_arn,
            regions=list(bake.regions), alarms=list(bake.alarms))
    else:
        started, until = decode_bake_token(job.continuation_token, environment, bake, _now())
    session_for = _session_for(job.id)
    deadline = began + min(INVOCATION_CAP_SECONDS, remaining_seconds - RESERVE_SECONDS)
    while True:
        checked_at = _now()  # the read began here: it proves the alarms at this time, not at its end
        read = read_alarms(bake, session_for)
        elapsed = max(0.0, checked_at - started)
        log("bake-read", deploymentId=job.id, environment=environment, elapsedSeconds=round(elapsed),
            states=dict(read.states), problems=list(read.problems))
        if read.problems:
            message = (f"{environment}: bake failed after {int(elapsed // 60)} of {bake.minutes} min: "
                       + "; ".join(read.problems))
            log("bake-failed", deploymentId=job.id, environment=environment, reason=message)
            return Answer("failed", message)
        if checked_at >= until:
            message = _bake_summary(environment, bake, read)
            log("bake-succeeded", deploymentId=job.id, environment=environment, reason=message)
            return Answer("succeeded", message)
        wait = min(interval, until - checked_at)  # the last read falls on the bake's end, not up to a poll after it
        if _clock() + wait >= deadline:
            break
        _sleep(wait)
    left = max(0.0, until - _now())
    percent = min(99, int(100 * (bake.minutes * 60 - left) // (bake.minutes * 60)))
    alarms = len(bake.alarms) * len(bake.regions)
    return Answer("continue", f"{environment}: baking, {left / 60:.0f} of {bake.minutes} min left; {alarms} alarms "
                              "watched, none in ALARM", encode_bake_token(environment, bake, started), percent)


def _answer(client: Any, ident: str, answer: Answer) -> None:
    if answer.kind == "failed":
        client.put_job_failure_result(jobId=ident, failureDetails={
            "type": "JobFailed", "message": _one_line(answer.message, MAX_MESSAGE_CHARS)})
        return
    details = {"summary": _one_line(answer.message, MAX_SUMMARY_CHARS), "percentComplete": answer.percent}
    if answer.token:
        client.put_job_success_result(jobId=ident, continuationToken=answer.token, executionDetails=details)
    else:
        client.put_job_success_result(jobId=ident, executionDetails=details)


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Lambda entry point. Answers the job in every case it can be answered (it has an id)."""
    ident = job_id(event)
    if ident is None:
        # Nothing to answer to: CodePipeline did not send this. Logged without the event (it may hold credentials).
        log("job-refused", reason="no CodePipeline.job.id in the event")
        return {"status": "ignored"}
    remaining = context.get_remaining_time_in_millis() / 1000.0 if context is not None else 900.0
    try:
        job = parse_job(event)
        answer = handle_bake(job, remaining) if isinstance(job, BakeJob) else handle(job, remaining)
    except (JobError, engine.EngineInputError) as exc:
        answer = Answer("failed", str(exc))
        log("job-refused", deploymentId=ident, reason=answer.message)
    except Exception as exc:  # last resort: an answered failure beats a job hanging until the action times out
        answer = Answer("failed", f"internal error: {type(exc).__name__}: {exc}")
        log("job-error", deploymentId=ident, reason=answer.message)
    _answer(_codepipeline(), ident, answer)
    log("job-answered", deploymentId=ident, kind=answer.kind, message=_one_line(answer.message, 500),
        tokenLength=len(answer.token or ""))
    return {"status": answer.kind, "message": answer.message}


if __name__ == "__main__":
    # Not a command line: `python -m handlers.pipeline_deploy` (with --help or anything else) used to import the
    # module, do nothing and exit 0, which reads as success. Say what it is instead, and fail like a usage error.
    import sys

    print("handlers.pipeline_deploy: not a command line; it is the pipeline deploy action's Lambda "
          "function (CodePipeline invokes handlers.pipeline_deploy.handler with a job)", file=sys.stderr)
    sys.exit(2)
