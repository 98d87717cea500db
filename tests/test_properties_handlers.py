"""Property tests of the handlers' inputs (issue 13): an event, a map, a deploy document or a job that is foreign or
malformed at any depth (the gitflow function's CodeCommit events too) is refused with the handler's own error (or
its documented answer), before any AWS call; never KeyError, TypeError, AttributeError or RecursionError.

Every base is a real, valid input (the documented samples in tests/samples, the inputs the handlers' own tests
deploy); :func:`test_properties.mutated` changes it at any depth. No test here reaches AWS: each calls the parsing
step the handler runs before its first AWS call (the handlers' tests prove that ordering).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Any

import pytest
from conftest import SAMPLES
from hypothesis import given
from hypothesis import strategies as st
from test_gitflow import DELETED, SETTINGS, UPDATED
from test_properties import VALUES, WEIRD_TEXT, mutated

from handlers import deploy_engine as engine
from handlers import gitflow
from handlers import image_definitions as idf
from handlers import pipeline_deploy as pipeline
from handlers import push_deploy as push
from handlers import release as release
from handlers import smoke_test as smoke

ACCOUNT, HOME, OTHER = "123456789012", "us-east-2", "us-west-2"
QA, PROD = "444455556666", "777788889999"
DIGEST = "sha256:" + "b" * 64


def role(account: str) -> str:
    return f"arn:aws:iam::{account}:role/crossdeploy/dev/deploy/crossdeploy-dev-deploy"


def task_definition(region: str) -> dict[str, Any]:
    """A RegisterTaskDefinition request as the renderer writes it (two containers, one replaced)."""
    return {"family": "crossdeploy-dev-orders", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
            "cpu": "256", "memory": "512", "executionRoleArn": role(QA),
            "containerDefinitions": [
                {"name": "orders", "image": "placeholder", "essential": True,
                 "portMappings": [{"containerPort": 8080, "protocol": "tcp"}],
                 "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-region": region}}},
                {"name": "sidecar", "image": "public.ecr.aws/docker/library/busybox:1", "essential": False}],
            "tags": [{"key": "team", "value": "orders"}]}


SMOKE_SPEC = {"path": "/orders/health", "expectStatus": "200-399", "timeoutSeconds": 5, "attempts": 2}
DOCUMENT = {"version": 1, "service": "orders", "environments": [
    {"name": "qa", "strategy": "rolling", "timeoutSeconds": 900, "targets": [
        {"accountId": QA, "region": region, "roleArn": role(QA), "cluster": "crossdeploy", "service": "orders",
         "container": "orders", "taskDefinition": task_definition(region),
         "smokeTest": {"spec": SMOKE_SPEC, "protocol": "HTTPS", "port": 443}}
        for region in (HOME, OTHER)]},
    {"name": "prod", "strategy": "canary", "timeoutSeconds": 3600, "targets": [
        {"accountId": PROD, "region": HOME, "roleArn": role(PROD), "cluster": "crossdeploy", "service": "orders",
         "container": "orders", "taskDefinition": None}]}]}
IMAGES = {r: f"{ACCOUNT}.dkr.ecr.{r}.amazonaws.com/orders@{DIGEST}" for r in (HOME, OTHER)}


# --- the deploy engine ------------------------------------------------------------------------------------------


def test_the_engine_bases_are_valid() -> None:
    assert len(engine.targets_for(engine.parse_document(DOCUMENT), "qa", IMAGES)) == 2


@given(mutated(DOCUMENT))
def test_a_mutated_deploy_document_parses_or_raises_engine_input_error(doc: Any) -> None:
    try:
        document = engine.parse_document(doc)
    except engine.EngineInputError as exc:
        assert exc.problems and all(isinstance(p, str) and ": " in p for p in exc.problems)
        return
    for name in ("qa", "prod", "nope"):
        try:
            engine.targets_for(document, name, IMAGES)
        except engine.EngineInputError:
            pass


@given(mutated(IMAGES), st.sampled_from(["qa", "prod", "", "\x00"]) | st.text(max_size=5))
def test_mutated_images_are_refused_with_engine_input_error(images: Any, environment: str) -> None:
    document = engine.parse_document(DOCUMENT)
    try:
        engine.targets_for(document, environment, images)
    except engine.EngineInputError as exc:
        assert exc.problems


STATE = engine.TargetState(engine.DEPLOYING, changed=True, previous_task_definition="arn:x:1").to_dict()


@given(mutated(STATE))
def test_a_mutated_target_state_is_read_or_refused_with_value_error(state: Any) -> None:
    try:
        engine.TargetState.from_dict(state)
    except ValueError:
        pass


# --- push deploys: the ECR event and the targets map ------------------------------------------------------------

PATTERNS = {"qa": ["qa-*"], "prod": ["prod-*", "release-*"]}
TARGETS_MAP = {
    "version": 2, "registryId": ACCOUNT, "homeRegion": HOME, "partition": "aws", "replicationTimeoutSeconds": 300,
    "maxConcurrency": 8, "repositories": {
        "orders": {"pushMode": "revision", "containerName": "orders", "deployDocument": DOCUMENT, "targets": [
            {"environment": "qa", "tagPatterns": PATTERNS["qa"], "accountId": QA, "region": r, "cluster":
             "crossdeploy", "service": "orders", "roleArn": role(QA)} for r in (HOME, OTHER)]},
        "legacy": {"pushMode": "force", "containerName": "legacy", "deployDocument": None, "targets": [
            {"environment": "prod", "tagPatterns": PATTERNS["prod"], "accountId": PROD, "region": HOME,
             "cluster": "legacy", "service": "legacy", "roleArn": role(PROD)}]}}}
TARGETS = push.parse_targets(TARGETS_MAP)
ECR_EVENT = json.loads((SAMPLES / "ecr-image-action-event.json").read_text(encoding="utf-8"))
ECR_EVENT.update(account=ACCOUNT, region=HOME)
ECR_EVENT["detail"].update({"repository-name": "orders", "image-digest": DIGEST, "image-tag": "qa-1.2.3"})


def test_the_push_bases_are_valid() -> None:
    parsed = push.parse_event(ECR_EVENT, TARGETS)
    assert [t.region for t in parsed.targets] == [HOME, OTHER]
    assert len(push.engine_targets(parsed, TARGETS)[0]) == 2


@given(mutated(ECR_EVENT) | VALUES)
def test_a_mutated_ecr_event_is_a_push_or_refused(event: Any) -> None:
    try:
        parsed = push.parse_event(event, TARGETS)
    except push.Refused as refusal:
        assert refusal.reason and refusal.message
        json.dumps(refusal.fields)  # logged as JSON
        return
    push.engine_targets(parsed, TARGETS)  # what the handler does next, still before any AWS call


@given(event=mutated(ECR_EVENT))
def test_the_push_handler_answers_a_mutated_event_without_aws(event: Any) -> None:
    """handle_push on anything that parse_event refuses answers ``ignored`` with a logged reason."""
    try:
        push.parse_event(event, TARGETS)
    except push.Refused:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            answer = push.handle_push(event, TARGETS)
        assert answer["status"] == "ignored" and answer["reason"]
        assert '"event": "refused"' in out.getvalue()


@given(mutated(TARGETS_MAP))
def test_a_mutated_targets_map_parses_or_raises_targets_error(data: Any) -> None:
    try:
        targets = push.parse_targets(data)
    except push.TargetsError as exc:
        assert str(exc).startswith("targets.json: ")
        return
    try:
        parsed = push.parse_event(ECR_EVENT, targets)
    except push.Refused:
        return
    try:
        push.engine_targets(parsed, targets)
    except push.TargetsError:
        pass


# --- smoke-test hooks -------------------------------------------------------------------------------------------

SERVICE_ARN = f"arn:aws:ecs:{HOME}:{ACCOUNT}:service/crossdeploy/orders"
ECS_EVENT = {"executionDetails": {
    "testTrafficWeights": {}, "productionTrafficWeights": {}, "serviceArn": SERVICE_ARN,
    "targetServiceRevisionArn": f"{SERVICE_ARN.replace(':service/', ':service-revision/')}/4980306466373577095"},
    "executionId": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111", "lifecycleStage": "POST_TEST_TRAFFIC_SHIFT",
    "resourceArn": f"arn:aws:ecs:{HOME}:{ACCOUNT}:service-deployment/crossdeploy/orders/abc",
    "hookDetails": json.dumps(SMOKE_SPEC)}
CODEDEPLOY_EVENT = {"DeploymentId": "d-A1B2C3D4E", "LifecycleEventHookExecutionId": "eyJlbmNyeXB0ZWREYXRhIjoi"}


def test_the_hook_bases_are_valid() -> None:
    assert smoke.parse_ecs_event(ECS_EVENT, ACCOUNT, HOME).spec == smoke.SmokeSpec.from_json(SMOKE_SPEC)


@given(mutated(ECS_EVENT) | VALUES)
def test_a_mutated_ecs_hook_payload_parses_or_raises_hook_errors(event: Any) -> None:
    if not isinstance(event, dict):
        return
    try:
        smoke.parse_ecs_event(event, ACCOUNT, HOME)
    except (smoke.HookError, smoke.SmokeTestError) as exc:
        assert str(exc)


@given(mutated(SMOKE_SPEC) | VALUES)
def test_a_mutated_smoke_spec_is_a_spec_or_smoke_test_error(data: Any) -> None:
    try:
        spec = smoke.SmokeSpec.from_json(data)
    except smoke.SmokeTestError as exc:
        assert exc.problems and all(p.startswith("smokeTest") for p in exc.problems)
        return
    assert smoke.SmokeSpec.from_json(spec.to_json()) == spec


@given(event=mutated(ECS_EVENT) | mutated(CODEDEPLOY_EVENT) | VALUES)
def test_the_hook_handler_refuses_without_raising(event: Any, no_aws_hook: list[str]) -> None:
    """Foreign and malformed payloads are answered FAILED with a logged reason, never an exception. AWS is out of
    reach (the client seam refuses), so whatever gets that far fails too, and says so."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            answer = smoke.handler(event, None)
        except smoke.HookError as exc:  # reporting the verdict to CodeDeploy failed: documented to propagate
            assert "put_lifecycle_event_hook_execution_status" in str(exc)
            answer = {"status": "Failed"}
    assert answer in ({"hookStatus": "FAILED"}, {"hookStatus": "SUCCEEDED"}, {"status": "Failed"}), answer
    verdicts = [json.loads(line) for line in out.getvalue().splitlines() if '"smoke-test"' in line]
    assert len(verdicts) == 1 and verdicts[0]["result"] in ("failed", "refused") and verdicts[0]["reason"]


@pytest.fixture(scope="module")
def no_aws_hook() -> Any:
    """No AWS from the hook: its client seam refuses (a codedeploy payload's verdict report then raises, which
    the test allows only after the verdict was logged), and the account and region it reads are set."""
    calls: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        def no_aws(service: str) -> Any:
            class Refusing:
                def __getattr__(self, name: str) -> Any:
                    calls.append(f"{service}.{name}")
                    raise smoke.HookError(f"no AWS in property tests ({service}.{name})")
            return Refusing()
        patch.setattr(smoke, "_client", no_aws)
        patch.setenv("ACCOUNT_ID", ACCOUNT)
        patch.setenv("AWS_REGION", HOME)
        patch.setenv("LOAD_BALANCER", "app/crossdeploy-qa/50dc6c495c0c9188")
        patch.setenv("TEST_PORT", "8443")
        patch.setenv("PROTOCOL", "HTTP")
        yield calls


# --- the pipeline's deploy action -------------------------------------------------------------------------------


def job(user_parameters: Any = '{"environment": "qa"}') -> dict[str, Any]:
    return {"CodePipeline.job": {"id": "11111111-abcd-1111-abcd-111111abcdef", "accountId": ACCOUNT, "data": {
        "actionConfiguration": {"configuration": {"FunctionName": "crossdeploy-dev-deploy",
                                                  "UserParameters": user_parameters}},
        "inputArtifacts": [{"location": {"s3Location": {"bucketName": "b", "objectKey": f"orders/{name}/abc.zip"},
                                         "type": "S3"}, "revision": None, "name": name}
                           for name in ("DeployConfig", "ImageDefinitions")],
        "outputArtifacts": [],
        "artifactCredentials": {"secretAccessKey": "s", "sessionToken": "t", "accessKeyId": "a"}}}}


BAKE = {"environment": "qa", "bake": {"minutes": 20, "roleArn": role(QA), "regions": [HOME, OTHER],
                                      "alarms": ["crossdeploy-qa-orders-5xx", "crossdeploy-qa-orders-unhealthy"]}}


def test_the_job_bases_are_valid() -> None:
    assert isinstance(pipeline.parse_job(job()), pipeline.Job)
    assert isinstance(pipeline.parse_job(job(json.dumps(BAKE))), pipeline.BakeJob)


@given(mutated(job()) | mutated(job(json.dumps(BAKE))) | VALUES)
def test_a_mutated_job_is_parsed_or_raises_job_error(event: Any) -> None:
    try:
        pipeline.parse_job(event)
    except pipeline.JobError as exc:
        assert str(exc).startswith(("job: ", "job:"))


@given(mutated(BAKE).map(json.dumps) | mutated({"environment": "qa"}).map(json.dumps) | st.sampled_from(
    WEIRD_TEXT) | st.just("[" * 5000 + "]" * 5000) | st.just('{"environment": ' + "[" * 3000 + "]" * 3000 + "}"))
def test_mutated_user_parameters_are_parsed_or_raise_job_error(user_parameters: str) -> None:
    try:
        pipeline.parse_job(job(user_parameters))
    except pipeline.JobError:
        pass


TOKEN_TARGETS = engine.targets_for(engine.parse_document(DOCUMENT), "qa", IMAGES)
TOKEN_STATES = [engine.TargetState(engine.DEPLOYING, changed=True, previous_task_definition=(
    f"arn:aws:ecs:{t.region}:{QA}:task-definition/crossdeploy-dev-orders:{i + 1}"), started_at=100.0 + i)
                for i, t in enumerate(TOKEN_TARGETS)]
TOKEN_DATA = pipeline._unpack(pipeline.encode_token("qa", TOKEN_TARGETS, TOKEN_STATES, 100.0))


@given(mutated(TOKEN_DATA) | st.sampled_from(WEIRD_TEXT).map(lambda t: {"v": 1, "s": t}))
def test_a_mutated_continuation_token_is_decoded_or_raises_job_error(data: Any) -> None:
    token = pipeline._pack(data) if isinstance(data, dict) else str(data)
    try:
        states, _ = pipeline.decode_token(token, "qa", TOKEN_TARGETS, 900.0)
    except pipeline.JobError:
        return
    json.dumps([s.to_dict() for s in states])


def test_the_token_base_round_trips() -> None:
    token = pipeline._pack(TOKEN_DATA)
    assert pipeline.decode_token(token, "qa", TOKEN_TARGETS, 900.0)[0][0].phase == engine.DEPLOYING


@given(mutated({"environment": "qa", "bake": BAKE["bake"]}))
def test_mutated_bake_parameters_are_a_bake_or_job_error(params: Any) -> None:
    if not isinstance(params, dict):
        return
    try:
        pipeline.parse_bake(params)
    except pipeline.JobError:
        pass


IMAGE_FILES = {r: [{"name": "orders", "imageUri": IMAGES[r]}, {"name": "sidecar", "imageUri": "x"}]
               for r in (HOME, OTHER)}


@given(mutated(IMAGE_FILES))
def test_mutated_image_definitions_give_images_or_engine_input_error(definitions: Any) -> None:
    environment = engine.parse_document(DOCUMENT).environment("qa")
    if not isinstance(definitions, dict):
        return
    try:
        pipeline.images_for(environment, definitions)
    except engine.EngineInputError:
        pass


# --- imageDetail.json and the blue/green build targets ----------------------------------------------------------

IMAGE_DETAIL = json.loads((SAMPLES / "imageDetail.json").read_text(encoding="utf-8"))
IMAGE_DETAIL.update(ImageDigest=DIGEST, RegistryId=ACCOUNT, RepositoryName="orders",
                    ImageURI=f"{ACCOUNT}.dkr.ecr.{HOME}.amazonaws.com/orders@{DIGEST}")
BLUE_GREEN = [{"artifact": "BlueGreen_us_east_2", "region": HOME, "containerName": "orders", "containerPort": 8080,
               "taskDefinition": {**task_definition(HOME), "containerDefinitions": [
                   {**task_definition(HOME)["containerDefinitions"][0], "image": idf.IMAGE_PLACEHOLDER}]},
               "smokeHookArn": f"arn:aws:lambda:{HOME}:{QA}:function:crossdeploy-qa-smoke"}]


def test_the_image_detail_bases_are_valid() -> None:
    assert idf.parse_image_detail(IMAGE_DETAIL)["region"] == HOME
    assert idf.parse_blue_green_targets(copy.deepcopy(BLUE_GREEN))


@given(mutated(IMAGE_DETAIL) | VALUES)
def test_a_mutated_image_detail_parses_or_raises_image_detail_error(data: Any) -> None:
    try:
        detail = idf.parse_image_detail(data)
    except idf.ImageDetailError:
        return
    for region in (OTHER, "nope", None):
        try:
            idf.regional_image_uri(detail, region)  # type: ignore[arg-type]
        except idf.TransformError:
            pass


@given(mutated(BLUE_GREEN))
def test_mutated_blue_green_targets_parse_or_raise_blue_green_spec_error(data: Any) -> None:
    try:
        targets = idf.parse_blue_green_targets(data)
    except idf.BlueGreenSpecError:
        return
    for target in targets:
        idf.blue_green_files(IMAGE_DETAIL, target)


# --- the release state machine's input (handlers/release.py) ------------------------------------------------------

MANIFEST = {"version": 1, "source": "deployment.yaml", "services": [
    {"name": "orders", "line": 2, "accountId": QA, "region": HOME, "roleArn": role(QA), "cluster": "crossdeploy",
     "service": "orders", "container": None,
     "image": {"registryId": ACCOUNT, "repository": "orders", "tag": "1.4.0", "digest": None}},
    {"name": "payments", "line": 8, "accountId": PROD, "region": HOME, "roleArn": role(PROD),
     "cluster": "crossdeploy", "service": "payments", "container": "app",
     "image": {"registryId": ACCOUNT, "repository": "payments", "tag": None, "digest": DIGEST},
     "blueGreen": {"application": "crossdeploy-prod", "deploymentGroup": "payments-group",
                   "smokeTestHook": "crossdeploy-prod-smoke"}}],
    "tasks": [{"name": "report", "line": 20, "accountId": PROD, "region": OTHER, "roleArn": role(PROD),
               "ruleName": "prod-nightly-report", "eventBus": "default", "container": None,
               "image": {"registryId": ACCOUNT, "repository": "orders", "tag": "1.4.0", "digest": None}}]}


def test_the_manifest_base_is_valid() -> None:
    services, tasks = release.validate_manifest(MANIFEST, ACCOUNT, "aws")
    assert (len(services), len(tasks)) == (2, 1)


@given(mutated(MANIFEST) | VALUES)
def test_a_mutated_release_manifest_is_validated_or_raises_release_input_error(manifest: Any) -> None:
    try:
        release.validate_manifest(manifest, ACCOUNT, "aws")
    except release.ReleaseInputError as exc:
        assert str(exc)


# --- the gitflow function (CodeCommit Repository State Change) ----------------------------------------------------


def test_the_gitflow_bases_are_valid() -> None:
    assert isinstance(gitflow.read_push(UPDATED, SETTINGS), gitflow.Push)
    assert isinstance(gitflow.read_push(DELETED, SETTINGS), str)


@given(mutated(UPDATED) | mutated(DELETED) | VALUES)
def test_a_mutated_codecommit_event_is_a_push_or_refused_without_aws(event: Any) -> None:
    class NoAws:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"a refused event reached CodeCommit: {name}")

    push = gitflow.read_push(event, SETTINGS)
    if isinstance(push, gitflow.Push):
        # Only an event naming this repository, account, region and develop branch, with a full commit id, acts.
        assert SETTINGS.repository_arn in event["resources"] and event["account"] == SETTINGS.account_id
        assert event["detail"]["repositoryName"] == SETTINGS.repository
        assert event["detail"]["referenceName"] == "develop" and event["detail"]["referenceType"] == "branch"
        assert push.commit == event["detail"]["commitId"]
        return
    assert isinstance(push, str) and push
    with contextlib.redirect_stdout(io.StringIO()) as out:
        answer = gitflow.handle_push(event, SETTINGS, NoAws(), lambda: pytest.fail("context read for a refusal"))
    assert answer == {"status": "ignored", "reason": push}
    assert json.loads(out.getvalue())["event"] == "gitflow.ignored"
