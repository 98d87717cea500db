"""CodePipeline's deploy step: a Lambda invoke action that runs the deploy engine for one environment of one
service (Lambda entry point ``handlers.pipeline_deploy.handler``).

Why a Lambda invoke action answering with continuation tokens (see :mod:`handlers.deploy_engine`): it is the only
CodePipeline action that may wait 24 hours, long enough for ECS's longest bake (1440 minutes); Step Functions and
the other invoke actions stop at 1 hour, CodeBuild on Lambda compute at 15 minutes. CodePipeline wants a reply at
least every 20 minutes, so each invocation works for at most ~10 minutes (and never closer than a minute to the
Lambda's own timeout), then answers PutJobSuccessResult with a ``continuationToken``; CodePipeline invokes the
function again with that token, and so on until the final answer.

* Input: ``UserParameters`` is ``{"environment": "<name>"}``; input artifacts ``DeployConfig`` (a zip holding
  ``deploy.json``, the deploy document as it was when the execution started) and ``ImageDefinitions`` (a zip of
  ``imagedefinitions-<region>.json``, written by the build step). Both are read with the job's
  ``artifactCredentials`` (SSE-KMS objects, which S3 decrypts for SigV4 requests).
* First invocation: validate everything (nothing is deployed on a bad job, artifact, document or image), start
  every target of the environment in parallel, answer with a token holding each target's state.
* Later invocations: poll until done or out of time, answer again with a fresh token; all succeeded ->
  PutJobSuccessResult without a token; any failure or timeout -> every changed target restored (continuing with
  tokens while the restores run) -> PutJobFailureResult ``{"type": "JobFailed", "message": <one line>}``.
* The job is always answered (an unanswered job hangs until the action times out); the job id is the deployment
  id in logs, task definition tags and STS session names. The event is never logged: it carries credentials.

Token: ``zlib`` + URL-safe base64 of minimal JSON, ARNs shortened by the parts the target already determines
(account, region, cluster, service); it must fit CodePipeline's 2048 characters, which is checked with a worst case
before anything is started (ten regions fit, see the tests).
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
from handlers.ecs_common import RETRY, log

MAX_TOKEN_CHARS = 2048  # CodePipeline's continuationToken limit
MAX_SUMMARY_CHARS = 2048  # ExecutionDetails.summary
MAX_MESSAGE_CHARS = 5000  # FailureDetails.message
INVOCATION_CAP_SECONDS = 600.0  # CodePipeline wants a reply at least every 20 minutes; half of that, to be safe
RESERVE_SECONDS = 60.0  # kept back from the Lambda's remaining time for the last status reads and the answer
POLL_SECONDS_ENV, MAX_CONCURRENCY_ENV = "CROSSDEPLOY_POLL_SECONDS", "CROSSDEPLOY_MAX_CONCURRENCY"
DEPLOY_CONFIG, IMAGE_DEFINITIONS, DEPLOY_FILE = "DeployConfig", "ImageDefinitions", engine.DOCUMENT_FILE
MAX_ARTIFACT_BYTES = 16 * 1024 * 1024
TOKEN_VERSION = 1

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
    id: str
    environment: str
    deploy_config: tuple[str, str]
    image_definitions: tuple[str, str]
    credentials: Mapping[str, str]
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


def parse_job(event: Any) -> Job:
    """The job's environment, artifact locations, credentials and token; :class:`JobError` names what is wrong
    (never a credential's value)."""
    ident = job_id(event)
    if ident is None:
        raise JobError("job: CodePipeline.job.id is missing")
    data = event["CodePipeline.job"].get("data")  # the key itself holds a dot: not a _get path
    if not isinstance(data, Mapping):
        raise JobError("job: CodePipeline.job.data is missing")
    raw_params = _get(data, "actionConfiguration.configuration.UserParameters")
    try:
        params = json.loads(raw_params) if isinstance(raw_params, str) else None
    except ValueError:
        params = None
    if not isinstance(params, dict) or set(params) != {"environment"} or not isinstance(params["environment"], str):
        raise JobError(f"job: UserParameters must be the JSON object {{\"environment\": \"<name>\"}}, got "
                       f"{engine._show(raw_params)}")
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
    token = data.get("continuationToken")
    if token is not None and (not isinstance(token, str) or not token):
        raise JobError("job: continuationToken is not a non-empty string")
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
    except ValueError as exc:
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
    data = {"v": TOKEN_VERSION, "t": round(started), "h": _fingerprint(environment, targets), "s": rows}
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


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
    try:
        data = json.loads(zlib.decompress(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))))
    except (ValueError, zlib.error) as exc:
        raise JobError(f"continuation token is not readable ({exc})") from None
    if not isinstance(data, dict) or data.get("v") != TOKEN_VERSION:
        raise JobError("continuation token is of another version of this function")
    if data.get("h") != _fingerprint(environment, targets) or len(data.get("s") or []) != len(targets):
        raise JobError("continuation token does not match this job's targets and images")
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
        states = engine.advance(targets, states, session_for=session_for, now=_now(), max_concurrency=max_concurrency)
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
        started = _now()
        log("pipeline-start", deploymentId=job.id, environment=environment.name, strategy=environment.strategy,
            targets=[t.label for t in targets], images=sorted(set(t.image for t in targets)))
        states = engine.start_all(targets, session_for=session_for, deployment_id=job.id,
                                  timeout_seconds=environment.timeout_seconds, now=started,
                                  max_concurrency=max_concurrency)
        return _progress(environment.name, targets, states, started, job, session_for, max_concurrency)
    states, started = decode_token(job.continuation_token, environment.name, targets, environment.timeout_seconds)
    deadline = began + min(INVOCATION_CAP_SECONDS, remaining_seconds - RESERVE_SECONDS)
    while True:
        states = engine.advance(targets, states, session_for=session_for, now=_now(), max_concurrency=max_concurrency)
        if engine.finished(states) or _clock() + poll_seconds >= deadline:
            break
        _sleep(poll_seconds)
    return _progress(environment.name, targets, states, started, job, session_for, max_concurrency)


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
        answer = handle(parse_job(event), remaining)
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
