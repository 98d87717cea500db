# ruff: noqa: F811 - test_deploy_engine's fixtures are imported by name, and pytest passes them back as arguments
"""The CodePipeline deploy step (Lambda invoke action) across invocations: moto S3 holds the job's artifacts, moto
ECS/STS/IAM the workload accounts (the world of test_deploy_engine, with its fake ECS service deployments), and
botocore's Stubber stands in for CodePipeline, checking the exact PutJobSuccessResult / PutJobFailureResult
requests. The job event is AWS's documented example ("Example JSON event" of the Lambda invoke action reference)
with this job's values filled in.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from test_deploy_engine import (  # noqa: F401 - fixtures
    EAST,
    REGIONS,
    TEST,
    TOOLS,
    WEST,
    FakeClock,
    aws_env,
    document,
    image,
    make_world,
    parse_service_models_once,
)

from handlers import deploy_engine as engine
from handlers import pipeline_deploy as pd

ROOT = Path(__file__).resolve().parents[1]
JOB = "11111111-abcd-1111-abcd-111111abcdef"  # the documented example's job id
BUCKET = "crossdeploy-dev-artifacts-us-east-2"


def zipped(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def image_definitions(regions: tuple[str, ...] = REGIONS, container: str = "orders") -> bytes:
    return zipped({f"imagedefinitions-{r}.json": json.dumps([{"name": container, "imageUri": image(r)}])
                   for r in regions})


def job_event(token: str | None = None, user_parameters: Any = '{"environment": "test"}',
              artifacts: tuple[str, ...] = ("DeployConfig", "ImageDefinitions")) -> dict[str, Any]:
    data: dict[str, Any] = {
        "actionConfiguration": {"configuration": {"FunctionName": "crossdeploy-dev-deploy",
                                                  "UserParameters": user_parameters}},
        "inputArtifacts": [{"location": {"s3Location": {"bucketName": BUCKET, "objectKey": f"orders/{name}/abc.zip"},
                                         "type": "S3"},
                            "revision": None, "name": name} for name in artifacts],
        "outputArtifacts": [],
        "artifactCredentials": {"secretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                                "sessionToken": "MIICiTCCAfICCQD6m7oRw0uXOjANBgkqhkiG9w0BAQUFADCBiDELMAkGA1UEBhMC",
                                "accessKeyId": "AKIAIOSFODNN7EXAMPLE"},
        "encryptionKey": {"id": f"arn:aws:kms:{EAST}:{TOOLS}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                          "type": "KMS"},
    }
    if token is not None:
        data["continuationToken"] = token
    return {"CodePipeline.job": {"id": JOB, "accountId": TOOLS, "data": data}}


class Context:
    def __init__(self, remaining_ms: int = 70_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class Pipeline:
    """CodePipeline's side: a stubbed client that captures what the function answered."""

    def __init__(self) -> None:
        self.client = boto3.client("codepipeline", region_name=EAST)
        self.stubber = Stubber(self.client)
        self.stubber.activate()
        self.answers: list[tuple[str, dict[str, Any]]] = []
        self.client.meta.events.register("before-parameter-build.codepipeline.*", self._capture)

    def _capture(self, model: Any, params: dict, **_: Any) -> None:
        self.answers.append((model.name, copy.deepcopy(params)))

    def expect_progress(self) -> None:
        self.stubber.add_response("put_job_success_result", {}, {
            "jobId": JOB, "continuationToken": ANY, "executionDetails": ANY})

    def expect_success(self, summary: str) -> None:
        self.stubber.add_response("put_job_success_result", {}, {
            "jobId": JOB, "executionDetails": {"summary": summary, "percentComplete": 100}})

    def expect_failure(self, message: Any) -> None:
        self.stubber.add_response("put_job_failure_result", {}, {
            "jobId": JOB, "failureDetails": {"type": "JobFailed", "message": message}})

    @property
    def last_token(self) -> str:
        return self.answers[-1][1]["continuationToken"]


@pytest.fixture
def world(make_world):
    return make_world(accounts=(TEST,))  # one environment, one account: half the setup


@pytest.fixture
def pipeline(world, monkeypatch):
    s3 = boto3.client("s3", region_name=EAST)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": EAST})
    key = boto3.client("kms", region_name=EAST).create_key()["KeyMetadata"]["Arn"]

    def put(name: str, body: bytes) -> None:  # as CodePipeline stores them: SSE-KMS with the artifact key
        s3.put_object(Bucket=BUCKET, Key=f"orders/{name}/abc.zip", Body=body, ServerSideEncryption="aws:kms",
                      SSEKMSKeyId=key)

    put("DeployConfig", zipped({"deploy.json": json.dumps(document())}))
    put("ImageDefinitions", image_definitions())
    codepipeline = Pipeline()
    codepipeline.put = put
    clock = FakeClock()
    monkeypatch.setattr(pd, "_codepipeline", lambda: codepipeline.client)
    monkeypatch.setattr(pd, "_session_for", world.session_for)
    monkeypatch.setattr(pd, "_sleep", clock.sleep)
    monkeypatch.setattr(pd, "_clock", clock)
    monkeypatch.setattr(pd, "_now", clock)
    monkeypatch.setenv(pd.POLL_SECONDS_ENV, "5")
    codepipeline.clock = clock
    return codepipeline


def test_continuation_flow_to_success(world, pipeline):
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS",) * 3 + ("SUCCESSFUL",)]
    pipeline.expect_progress()
    pipeline.expect_progress()
    pipeline.expect_success("2 target(s) deployed: 2 updated, 0 already on the revision")

    first = pd.handler(job_event(), Context())

    assert first["status"] == "continue"
    (name, params), = pipeline.answers
    assert name == "PutJobSuccessResult"
    assert params["executionDetails"] == {"summary": "test: 2 deploying", "percentComplete": 0}
    assert len(world.recorder.ops("UpdateService")) == 2 and not world.recorder.ops("DescribeServiceDeployments")
    # The revisions are tagged with the job id, the deploy role's session named after it.
    new = world.task_definition(TEST, EAST)
    assert {"key": engine.DEPLOYMENT_TAG, "value": JOB} in new["tags"]
    assert {c.params["RoleSessionName"] for c in world.recorder.ops("AssumeRole")
            if "deploy" in c.params["RoleArn"]} == {f"crossdeploy-{JOB}"}

    second = pd.handler(job_event(pipeline.last_token), Context())

    assert second["status"] == "continue"
    assert pipeline.answers[-1][1]["executionDetails"] == {"summary": "test: 1 deploying, 1 succeeded",
                                                            "percentComplete": 50}
    assert len(world.recorder.ops("DescribeServiceDeployments")) == 4  # two polls per invocation here
    third = pd.handler(job_event(pipeline.last_token), Context())

    assert third["status"] == "succeeded"
    pipeline.stubber.assert_no_pending_responses()
    assert "continuationToken" not in pipeline.answers[-1][1]
    assert len(world.recorder.ops("UpdateService")) == 2  # continuing never deploys again
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"].endswith("orders:2")


def test_one_region_rolled_back_restores_the_other_then_fails_the_job(world, pipeline):
    world.fake.scripts[(TEST, WEST)] = [("ROLLBACK_SUCCESSFUL",)]
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS",) * 20]
    pipeline.expect_progress()
    pipeline.expect_progress()
    pipeline.expect_failure(
        f"1 of 2 target(s) failed: {TEST}/{WEST} crossdeploy/orders: ECS rolled back the deployment "
        "(ROLLBACK_SUCCESSFUL): circuit breaker: 3 tasks failed health checks. Restored 2 changed target(s) to "
        "their previous revision")

    pd.handler(job_event(), Context())
    second = pd.handler(job_event(pipeline.last_token), Context())
    assert second["status"] == "continue"  # the restore is still running: the job goes on with a token
    assert pipeline.answers[-1][1]["executionDetails"]["summary"] == "test: 1 restoring, 1 restored"
    third = pd.handler(job_event(pipeline.last_token), Context())

    assert third["status"] == "failed"
    pipeline.stubber.assert_no_pending_responses()
    (stop,) = world.recorder.ops("StopServiceDeployment")
    assert stop.region == EAST and stop.params["stopType"] == "ROLLBACK"
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]


def test_the_environment_timeout_spans_invocations(world, pipeline):
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS",) * 1000]
    doc = document(timeout=60)
    pipeline.put("DeployConfig", zipped({"deploy.json": json.dumps(doc)}))
    pipeline.expect_progress()
    pipeline.expect_failure(ANY)

    pd.handler(job_event(), Context())
    # A 15-minute Lambda works up to 10 minutes: the 60 s timeout and the restore both fall within this one.
    result = pd.handler(job_event(pipeline.last_token), Context(remaining_ms=15 * 60 * 1000))

    assert result["status"] == "failed"
    pipeline.stubber.assert_no_pending_responses()
    assert f"{TEST}/{EAST} crossdeploy/orders: timed out after 60 s" in result["message"]
    for region in REGIONS:
        assert world.service(TEST, region)["taskDefinition"] == world.originals[(TEST, region)]


def test_a_retried_first_invocation_after_success_deploys_nothing(world, pipeline):
    world.fake.scripts[(TEST, EAST)] = []
    pipeline.expect_progress()
    pipeline.expect_success("2 target(s) deployed: 2 updated, 0 already on the revision")
    pipeline.expect_success("2 target(s) deployed: 0 updated, 2 already on the revision")
    pd.handler(job_event(), Context())
    pd.handler(job_event(pipeline.last_token), Context())
    world.recorder.reset()

    assert pd.handler(job_event(), Context())["status"] == "succeeded"

    assert not world.recorder.ops("RegisterTaskDefinition") and not world.recorder.ops("UpdateService")
    pipeline.stubber.assert_no_pending_responses()


def test_an_invocation_stops_a_minute_before_the_lambda_would(world, pipeline):
    world.fake.scripts[(TEST, EAST)] = [("IN_PROGRESS",) * 1000]
    pipeline.expect_progress()
    pipeline.expect_progress()
    pd.handler(job_event(), Context())
    began = pipeline.clock.now
    pd.handler(job_event(pipeline.last_token), Context(remaining_ms=15 * 60 * 1000))
    assert pipeline.clock.now - began == pytest.approx(pd.INVOCATION_CAP_SECONDS - 5, abs=5)
    began = pipeline.clock.now
    pipeline.expect_progress()
    pd.handler(job_event(pipeline.last_token), Context(remaining_ms=90_000))
    assert pipeline.clock.now - began <= 90 - pd.RESERVE_SECONDS


# --- refusals: answered, nothing deployed ------------------------------------------------------------------------


def _bad_document() -> bytes:
    doc = document()
    doc["environments"][0]["timeoutSeconds"] = 5
    doc["environments"][0]["targets"][1]["roleArn"] = "arn:aws:iam::777788889999:role/x"
    return zipped({"deploy.json": json.dumps(doc)})


@pytest.mark.parametrize(("change", "message"), [
    ({"user_parameters": "test"}, 'job: UserParameters must be the JSON object {"environment": "<name>"} (a '
                                  'deployment) or {"environment": "<name>", "bake": {"minutes", "roleArn", '
                                  '"regions", "alarms"}} (an alarm bake), got ' "'test'"),
    ({"user_parameters": '{"environment": "test", "x": 1}'}, "job: UserParameters must be the JSON object"),
    ({"artifacts": ("DeployConfig",)}, "job: input artifact(s) ['ImageDefinitions'] missing (has ['DeployConfig'])"),
    ({"user_parameters": '{"environment": "prod"}'}, "1 problem(s): environment: 'prod' is not in the deploy "
                                                     "document (has ['test'])"),
    ({"DeployConfig": b"not a zip"}, "artifact DeployConfig: s3://crossdeploy-dev-artifacts-us-east-2/orders/"
                                     "DeployConfig/abc.zip is not a zip file"),
    ({"DeployConfig": zipped({"other.json": "{}"})}, "artifact DeployConfig: no deploy.json (has ['other.json'])"),
    ({"DeployConfig": _bad_document()}, "2 problem(s): $.environments[0].timeoutSeconds: expected an integer from 60 "
                                        "to 86400, got 5; $.environments[0].targets[1].roleArn: role is in account "
                                        "777788889999, the target in 444455556666"),
    ({"ImageDefinitions": image_definitions((EAST,))}, "1 problem(s): imagedefinitions-us-west-2.json: missing from "
                                                      "ImageDefinitions"),
    ({"ImageDefinitions": image_definitions(container="web")}, "2 problem(s): imagedefinitions-us-east-2.json: "
                                                               "expected exactly one entry named 'orders', found 0"),
])
def test_a_bad_job_is_answered_with_a_failure_and_deploys_nothing(world, pipeline, change, message):
    for artifact in ("DeployConfig", "ImageDefinitions"):
        if artifact in change:
            pipeline.put(artifact, change.pop(artifact))
    before = world.snapshot()
    world.recorder.reset()
    pipeline.expect_failure(ANY)

    result = pd.handler(job_event(**change), Context())

    assert result["status"] == "failed" and result["message"].startswith(message), result["message"]
    assert pipeline.answers[-1][1]["failureDetails"]["message"] == result["message"]
    pipeline.stubber.assert_no_pending_responses()
    assert world.recorder.calls == [], "nothing asked of STS or ECS"
    assert world.snapshot() == before


def test_a_malformed_token_is_refused(world, pipeline):
    pipeline.expect_failure(ANY)
    other_version = base64.urlsafe_b64encode(zlib.compress(b'{"v":9}')).decode()
    result = pd.handler(job_event(other_version), Context())
    assert result["message"] == "continuation token is of another version of this function"
    pipeline.expect_failure(ANY)
    assert pd.handler(job_event("not-a-token"), Context())["message"].startswith("continuation token is not readable")
    assert not [c for c in world.recorder.calls if c.operation == "UpdateService"]


def test_an_event_without_a_job_id_is_ignored_and_answered_to_nobody(pipeline):
    assert pd.handler({"detail": "not a job"}, None) == {"status": "ignored"}
    assert pipeline.answers == []


def test_an_unexpected_error_still_answers_the_job(world, pipeline, monkeypatch):
    def broken(*_: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(pd, "read_artifacts", broken)
    pipeline.expect_failure("internal error: RuntimeError: boom")
    assert pd.handler(job_event(), Context())["status"] == "failed"
    pipeline.stubber.assert_no_pending_responses()


# --- the continuation token --------------------------------------------------------------------------------------

TEN_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-west-2", "eu-central-1",
               "ap-southeast-1", "ap-southeast-2", "ap-northeast-1")


def _ten_region_targets() -> list[engine.Target]:
    doc = document(regions=TEN_REGIONS)
    return engine.targets_for(engine.parse_document(doc), "test", {r: image(r) for r in TEN_REGIONS})


def _worst_states(targets: list[engine.Target], reason_length: int) -> list[engine.TargetState]:
    states = []
    for i, t in enumerate(targets):
        base = f"arn:aws:ecs:{t.region}:{t.account_id}:"
        states.append(engine.TargetState(
            phase=engine.RESTORING, changed=True, previous_task_definition=f"{base}task-definition/orders:{90000 + i}",
            new_task_definition=f"{base}task-definition/orders:{90001 + i}",
            service_deployment=f"{base}service-deployment/crossdeploy/orders/{os.urandom(11).hex()}",
            ecs_status="ROLLBACK_FAILED", restore_mode="update",
            restore_deployment=f"{base}service-deployment/crossdeploy/orders/{os.urandom(11).hex()}",
            reason=f"{t.label}: ECS rolled back the deployment (ROLLBACK_SUCCESSFUL): " + os.urandom(
                reason_length // 2).hex(),
            started_at=1_700_000_123.0 + i, timeout_seconds=900, poll_errors=1))
    return states


def test_ten_regions_fit_the_token_and_round_trip():
    targets = _ten_region_targets()
    states = _worst_states(targets, 40)
    token = pd.fitting_token("test", targets, states, 1_700_000_000.0)
    assert token is not None and len(token) <= pd.MAX_TOKEN_CHARS
    decoded, started = pd.decode_token(token, "test", targets, 900)
    assert started == 1_700_000_000.0
    assert decoded == states  # every field back, reasons whole
    assert pd._worst_case_fits("test", targets)
    print(f"10-region worst-case token: {len(token)} characters")


def test_long_reasons_are_shortened_to_fit_and_the_rest_still_round_trips():
    targets = _ten_region_targets()
    states = _worst_states(targets, 600)  # incompressible 600-character reasons: 6 KB of text
    token = pd.fitting_token("test", targets, states, 1_700_000_000.0)
    assert token is not None and len(token) <= pd.MAX_TOKEN_CHARS
    decoded, _ = pd.decode_token(token, "test", targets, 900)
    assert [(s.phase, s.service_deployment, s.restore_deployment) for s in decoded] == [
        (s.phase, s.service_deployment, s.restore_deployment) for s in states]
    assert all(d.reason and s.reason.startswith(d.reason.rstrip("…")) for d, s in zip(decoded, states, strict=True))


def test_a_token_for_other_targets_is_refused():
    targets = _ten_region_targets()
    token = pd.fitting_token("test", targets, _worst_states(targets, 10), 0.0)
    with pytest.raises(pd.JobError, match="does not match this job's targets"):
        pd.decode_token(token, "test", targets[:9], 900)


def test_an_environment_too_big_for_the_token_is_refused_before_anything_starts(world, pipeline):
    doc = document()
    template = doc["environments"][0]["targets"][0]
    doc["environments"][0]["targets"] = [{**copy.deepcopy(template), "cluster": f"cluster-{i:02d}"} for i in range(60)]
    pipeline.put("DeployConfig", zipped({"deploy.json": json.dumps(doc)}))
    world.recorder.reset()
    pipeline.expect_failure("60 targets could not be tracked within CodePipeline's 2048-character continuation "
                            "token; split the environment")

    assert pd.handler(job_event(), Context())["status"] == "failed"
    pipeline.stubber.assert_no_pending_responses()
    assert world.recorder.calls == []


def test_the_lambda_package_imports_with_only_its_own_files(tmp_path):
    from components.deploy_engine import ENGINE_MODULES  # what `pulumi up` packages

    package = tmp_path / "handlers"
    package.mkdir()
    for name in ENGINE_MODULES:
        (package / name).write_bytes((ROOT / "handlers" / name).read_bytes())
    code = "import handlers.pipeline_deploy as p; print(p.handler.__module__, p.engine.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.stdout.split() == ["handlers.pipeline_deploy", str(package / "deploy_engine.py")]
