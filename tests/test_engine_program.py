"""The deploy engine on the Pulumi side (issue 9): the deploy documents ``pulumi up`` writes, the pipeline wiring
per strategy, the EventBridge rule that starts a pipeline when its document changes (put through moto's
EventBridge), and the engine function's package — checked on what the real program registers under the mocks."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from conftest import PROD, QA, ROOT, TOOLS, by_output, config, delivered, role_policy
from iam import allows

from components import naming
from components.config import StackConfig, parse
from components.deploy_config import deploy_documents
from components.deploy_engine import ENGINE_MODULES, HANDLER
from components.task_definition import DEPLOY_DOCUMENT_FILE
from offline.mocks import ProgramRun, Recorded, run_program

SERVICES = [
    {"name": "orders", "port": 8081},
    {"name": "team/payments", "containerName": "app", "serviceName": "payments", "cluster": "core", "port": 9000,
     "cpu": 512, "memory": 1024, "environment": {"PRICE": "5", "LOG_LEVEL": "info"}},
]
ENVIRONMENTS = [
    {"name": "qa", "accountId": QA, "regions": ["us-east-2"]},
    {"name": "stage", "accountId": QA, "regions": ["us-west-2"], "strategy": "blue-green"},
    {"name": "canary", "accountId": PROD, "regions": ["us-east-2", "eu-west-1"], "strategy": "canary",
     "requireApproval": True},
    {"name": "linear", "accountId": PROD, "regions": ["us-west-2"], "strategy": "linear"},
    {"name": "prod", "accountId": PROD, "regions": ["ap-southeast-2"], "strategy": "codedeploy",
     "requireApproval": True},
]
STRATEGIES_CONFIG = config(**{"crossdeploy:environments": ENVIRONMENTS, "crossdeploy:services": SERVICES})
ENGINE_ENVS = ["qa", "stage", "canary", "linear"]
LEGACY = {"name": "legacy", "existing": True, "executionRoleName": "legacy-exec", "cluster": "legacy-cluster"}
LEGACY_CONFIG = config(**{"crossdeploy:services": [{"name": "orders"}, LEGACY]})


def typed(raw: dict, stack: str) -> StackConfig:
    return parse({k.split(":", 1)[1]: v for k, v in raw.items() if k.startswith("crossdeploy:")},
                 project="crossdeploy", stack=stack, aws_region=raw["aws:region"])


@pytest.fixture(scope="module")
def run() -> ProgramRun:
    return run_program(STRATEGIES_CONFIG, stack="engine")


@pytest.fixture(scope="module")
def legacy_run() -> ProgramRun:
    return run_program(LEGACY_CONFIG, stack="legacy")


# --- lookups ------------------------------------------------------------------------------------------------------


def pipeline_for(run: ProgramRun, repository: str) -> Recorded:
    (found,) = [p for p in run.of_type("aws:codepipeline/pipeline:Pipeline")
                if p.inputs["stages"][0]["actions"][0].get("configuration", {}).get("RepositoryName") == repository]
    return found


def stage(pipeline: Recorded, name: str) -> dict:
    (found,) = [s for s in pipeline.inputs["stages"] if s["name"] == name]
    return found


def engine_function(run: ProgramRun) -> Recorded:
    (found,) = [f for f in run.of_type("aws:lambda/function:Function") if f.inputs["handler"] == HANDLER]
    return found


def document_object(run: ProgramRun, repository: str) -> Recorded:
    key = f"services/{naming.safe(repository)}/deploy.zip"
    (found,) = [o for o in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2") if o.inputs["key"] == key]
    return found


def document_text(obj: Recorded) -> str:
    archive = obj.inputs["source"]
    assert set(archive.assets) == {DEPLOY_DOCUMENT_FILE}
    return archive.assets[DEPLOY_DOCUMENT_FILE].text


def deploy_role(run: ProgramRun, account: str) -> Recorded:
    (found,) = [r for r in run.of_type("aws:iam/role:Role") if r.account == account and "/deploy/" in r.outputs["arn"]]
    return found


def config_bucket(run: ProgramRun) -> Recorded:
    (found,) = [b for b in run.of_type("aws:s3/bucket:Bucket") if b.name == "deploy-config-bucket"]
    return found


# --- pipeline wiring per strategy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("repository", [s["name"] for s in SERVICES])
def test_every_strategy_but_codedeploy_deploys_through_one_engine_action(run, repository) -> None:
    pipeline = pipeline_for(run, repository)
    assert [s["name"] for s in pipeline.inputs["stages"]] == [
        "Source", "Build", "Deploy-qa", "Deploy-stage", "Approve-canary", "Deploy-canary", "Deploy-linear",
        "Approve-prod", "Deploy-prod"]
    function = engine_function(run)
    for env in ENGINE_ENVS:
        # The deployment; an approved environment bakes after it (tests/test_gates_pipeline.py).
        (action,) = [a for a in stage(pipeline, f"Deploy-{env}")["actions"] if a["name"] != "Bake"]
        assert (action["category"], action["owner"], action["provider"], action["version"]) == (
            "Invoke", "AWS", "Lambda", "1")
        assert action["configuration"]["FunctionName"] == function.outputs["name"]
        assert json.loads(action["configuration"]["UserParameters"]) == {"environment": env}
        assert action["inputArtifacts"] == ["ImageDefinitions", "DeployConfig"]
        # The engine's action runs in the pipeline's region, as the pipeline role; the function assumes the roles.
        assert "region" not in action and "roleArn" not in action
    for action in [a for a in stage(pipeline, "Deploy-prod")["actions"] if a["name"] != "Bake"]:
        assert action["provider"] == "CodeDeployToECS" and action["region"] == "ap-southeast-2"
        assert action["roleArn"] == deploy_role(run, PROD).outputs["arn"]


def test_the_build_pins_the_image_for_every_engine_region(run) -> None:
    import yaml

    for repository in (s["name"] for s in SERVICES):
        build = stage(pipeline_for(run, repository), "Build")["actions"][0]
        assert build["name"] == "PinImageByDigest" and build["outputArtifacts"] == ["ImageDefinitions"]
        project = by_output(run, "name", build["configuration"]["ProjectName"], "aws:codebuild/project:Project")
        files = yaml.safe_load(project.inputs["source"]["buildspec"])["artifacts"]["files"]
        assert files == [f"imagedefinitions-{r}.json" for r in ("us-east-2", "us-west-2", "eu-west-1")]


def test_existing_services_keep_the_image_only_ecs_action(legacy_run) -> None:
    legacy = pipeline_for(legacy_run, "legacy")
    assert [a["name"] for a in stage(legacy, "Source")["actions"]] == ["Image"], "no document source"
    for env, account, regions in (("qa", QA, ["us-east-2"]), ("prod", PROD, ["us-east-2", "eu-west-1"])):
        actions = stage(legacy, f"Deploy-{env}")["actions"]
        assert [a["region"] for a in actions] == regions
        for action in actions:
            assert (action["category"], action["provider"]) == ("Deploy", "ECS")
            assert action["roleArn"] == deploy_role(legacy_run, account).outputs["arn"]
            assert action["configuration"]["ClusterName"] == "legacy-cluster"
            assert action["configuration"]["FileName"] == f"imagedefinitions-{action['region']}.json"
            assert 1 <= int(action["configuration"]["DeploymentTimeout"]) <= 60
    # ...while a managed service of the same stack deploys through the engine.
    orders = pipeline_for(legacy_run, "orders")
    assert {a["provider"] for s in orders.inputs["stages"][2:] for a in s["actions"]} == {"Lambda", "Manual"}


# --- the deploy document: source action, bucket, object ------------------------------------------------------------


def test_config_source_reads_exactly_the_services_document(run) -> None:
    bucket = config_bucket(run)
    for repository in (s["name"] for s in SERVICES):
        image, cfg_action = stage(pipeline_for(run, repository), "Source")["actions"]
        assert image["name"] == "Image" and image["provider"] == "ECR"
        assert (cfg_action["name"], cfg_action["category"], cfg_action["owner"], cfg_action["provider"]) == (
            "Config", "Source", "AWS", "S3")
        assert cfg_action["configuration"] == {
            "S3Bucket": bucket.outputs["bucket"], "S3ObjectKey": f"services/{naming.safe(repository)}/deploy.zip",
            "PollForSourceChanges": "false"}
        assert cfg_action["outputArtifacts"] == ["DeployConfig"]


def test_document_bucket_is_private_versioned_encrypted_and_never_drops_a_current_document(run) -> None:
    bucket = config_bucket(run)
    assert (bucket.account, bucket.region) == (TOOLS, "us-east-2")

    def of(type_: str) -> Recorded:
        (found,) = [r for r in run.of_type(type_) if r.inputs.get("bucket") == bucket.outputs["bucket"]]
        return found

    assert of("aws:s3/bucketVersioning:BucketVersioning").inputs["versioningConfiguration"]["status"] == "Enabled"
    (rule,) = of("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
                 ).inputs["rules"]
    home_key = next(k for k in run.of_type("aws:kms/key:Key") if k.name == "artifacts-key")
    assert rule["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "aws:kms",
                                                          "kmsMasterKeyId": home_key.outputs["arn"]}
    assert rule["bucketKeyEnabled"] is True
    block = of("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs
    assert all(block[k] for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                  "restrictPublicBuckets"))
    assert of("aws:s3/bucketOwnershipControls:BucketOwnershipControls").inputs["rule"] == {
        "objectOwnership": "BucketOwnerEnforced"}
    (lifecycle,) = of("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration").inputs["rules"]
    assert "expiration" not in lifecycle, "a pipeline's config source must never expire"
    assert lifecycle["noncurrentVersionExpiration"]["noncurrentDays"] == 30
    assert of("aws:s3/bucketNotification:BucketNotification").inputs["eventbridge"] is True
    policy = of("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"]
    obj = bucket.outputs["arn"] + "/services/orders/deploy.zip"
    assert not allows(policy, "s3:GetObject", obj, principal_arn=f"arn:aws:iam::{TOOLS}:role/x",
                      context={"aws:SecureTransport": "false"})
    for o in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2"):
        assert (o.inputs["serverSideEncryption"], o.inputs["kmsKeyId"]) == ("aws:kms", home_key.outputs["arn"])


def test_every_service_gets_its_document_with_the_rendered_task_definition_per_region(run) -> None:
    cfg = typed(STRATEGIES_CONFIG, "engine")
    objects = run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    assert sorted(o.inputs["key"] for o in objects) == ["services/orders/deploy.zip",
                                                        "services/team-payments/deploy.zip"]
    text = document_text(document_object(run, "team/payments"))
    expected = next(d for d in deploy_documents(cfg) if d.service == "team/payments")
    assert text == expected.text()
    document = json.loads(text)
    assert [e["name"] for e in document["environments"]] == ENGINE_ENVS, "codedeploy is not the engine's"
    for env in document["environments"]:
        raw = next(e for e in ENVIRONMENTS if e["name"] == env["name"])
        assert env["strategy"] == raw.get("strategy", "rolling")
        assert [t["region"] for t in env["targets"]] == raw["regions"]
        for target in env["targets"]:
            assert target["roleArn"] == deploy_role(run, raw["accountId"]).outputs["arn"]
            assert (target["cluster"], target["service"], target["container"]) == ("core", "payments", "app")
            taskdef = target["taskDefinition"]
            assert (taskdef["cpu"], taskdef["memory"]) == ("512", "1024")
            (container,) = [c for c in taskdef["containerDefinitions"] if c["name"] == "app"]
            assert {"name": "PRICE", "value": "5"} in container["environment"]
            assert container["logConfiguration"]["options"]["awslogs-region"] == target["region"]


def _document(raw: dict, repository: str = "team/payments") -> str:
    return document_text(document_object(run_program(raw, stack="engine"), repository))


def test_a_config_change_rewrites_the_document_and_an_unrelated_one_does_not(run) -> None:
    before = document_text(document_object(run, "team/payments"))
    changed_services = json.loads(json.dumps(SERVICES))
    changed_services[1]["environment"]["PRICE"] = "6"
    changed = _document(config(**{"crossdeploy:environments": ENVIRONMENTS,
                                  "crossdeploy:services": changed_services}))
    assert changed != before and '"value": "6"' in changed
    unrelated = _document(config(**{"crossdeploy:environments": ENVIRONMENTS, "crossdeploy:services": SERVICES,
                                    "crossdeploy:notifications": {"emails": ["someone-else@example.com"]}}))
    assert unrelated == before, "same config, same bytes: pulumi up leaves the object (and the pipeline) alone"


# --- the rule that starts a pipeline when its document changes ---------------------------------------------------


def s3_object_created(bucket: str, key: str, detail_type: str = "Object Created") -> dict:
    """An S3 EventBridge event as AWS documents it (Amazon S3 User Guide, "EventBridge event message structure")."""
    return {
        "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103", "detail-type": detail_type,
        "source": "aws.s3", "account": TOOLS, "time": "2025-01-12T00:00:00Z", "region": "us-east-2",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket},
                   "object": {"key": key, "size": 1234, "etag": "b1946ac92492d2347c6235b4d2611184",
                              "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mq8nS", "sequencer": "00617F08299329D189"},
                   "request-id": "N4N7GDK58NMKJ12R", "requester": TOOLS, "source-ip-address": "1.2.3.4",
                   "reason": "PutObject"},
    }


def test_a_new_document_starts_exactly_its_pipeline(run) -> None:
    pipeline = pipeline_for(run, "team/payments")
    targets = [t for t in run.of_type("aws:cloudwatch/eventTarget:EventTarget") if t.inputs["arn"] ==
               pipeline.outputs["arn"]]
    rules = {t.inputs["rule"]: t for t in targets}
    (config_rule,) = [r for r in run.of_type("aws:cloudwatch/eventRule:EventRule") if r.outputs["name"] in rules
                      and json.loads(r.inputs["eventPattern"])["source"] == ["aws.s3"]]
    assert (config_rule.account, config_rule.region) == (TOOLS, "us-east-2")
    bucket = config_bucket(run).outputs["bucket"]
    key = "services/team-payments/deploy.zip"
    wanted = s3_object_created(bucket, key)
    cases = [wanted, s3_object_created(bucket, "services/orders/deploy.zip"),
             s3_object_created("someone-elses-bucket", key), s3_object_created(bucket, key, "Object Deleted")]
    arrived = delivered(json.loads(config_rule.inputs["eventPattern"]), cases)
    assert [e["detail"] for e in arrived] == [wanted["detail"]]
    # The existing trigger role, which may start only this pipeline.
    target = rules[config_rule.outputs["name"]]
    role = by_output(run, "arn", target.inputs["roleArn"])
    policy = role_policy(run, role)
    assert allows(policy, "codepipeline:StartPipelineExecution", pipeline.outputs["arn"])
    other = pipeline_for(run, "orders")
    assert not allows(policy, "codepipeline:StartPipelineExecution", other.outputs["arn"])


def test_pipelines_without_engine_stages_get_no_document_trigger(legacy_run) -> None:
    legacy = pipeline_for(legacy_run, "legacy")
    rules = {t.inputs["rule"] for t in legacy_run.of_type("aws:cloudwatch/eventTarget:EventTarget")
             if t.inputs["arn"] == legacy.outputs["arn"]}
    patterns = [json.loads(r.inputs["eventPattern"]) for r in legacy_run.of_type("aws:cloudwatch/eventRule:EventRule")
                if r.outputs["name"] in rules]
    assert [p["source"] for p in patterns] == [["aws.ecr"]]
    # The existing service still gets its document (releases read it), with no task definition of ours.
    document = json.loads(document_text(document_object(legacy_run, "legacy")))
    assert all(t["taskDefinition"] is None for e in document["environments"] for t in e["targets"])


# --- the engine function --------------------------------------------------------------------------------------------


def test_the_packaged_engine_is_the_tested_code_byte_for_byte(run) -> None:
    function = engine_function(run)
    assets = function.inputs["code"].assets
    assert set(assets) == {f"handlers/{m}" for m in ENGINE_MODULES} == {
        "handlers/__init__.py", "handlers/ecs_common.py", "handlers/deploy_engine.py", "handlers/pipeline_deploy.py",
        "handlers/smoke_test.py"}
    for name, asset in assets.items():
        packaged = Path(asset.path).read_bytes() if getattr(asset, "path", None) else asset.text.encode()
        assert packaged == (ROOT / name).read_bytes(), f"{name} differs from the repository file"
    # Zipped the way Lambda unpacks it, the entry point imports and is the tested function.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, asset in assets.items():
            archive.write(asset.path, name)
    assert sorted(zipfile.ZipFile(buffer).namelist()) == sorted(assets)
    module, _, attribute = function.inputs["handler"].rpartition(".")
    assert f"{module.replace('.', '/')}.py" in assets
    imported = __import__(module, fromlist=[attribute])
    assert callable(getattr(imported, attribute))


def test_engine_function_settings_role_and_logs(run) -> None:
    cfg = typed(STRATEGIES_CONFIG, "engine")
    function = engine_function(run)
    assert (function.account, function.region) == (TOOLS, "us-east-2")
    assert function.inputs["name"] == naming.engine_function_name(cfg)
    assert function.inputs["runtime"] == "python3.12" and function.inputs["timeout"] == 900
    role = by_output(run, "arn", function.inputs["role"])
    assert role.outputs["arn"] == naming.engine_role_arn(cfg)
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    log_group = by_output(run, "name", f"/aws/lambda/{function.inputs['name']}")
    assert log_group.inputs["retentionInDays"] == 30
    policy = role_policy(run, role)
    assert allows(policy, "logs:PutLogEvents", log_group.outputs["arn"] + ":log-stream:x")
    assert not allows(policy, "logs:PutLogEvents", f"arn:aws:logs:us-east-2:{TOOLS}:log-group:other:log-stream:x")
    for action in ("codepipeline:PutJobSuccessResult", "codepipeline:PutJobFailureResult"):
        assert allows(policy, action, "*")
    assert not allows(policy, "codepipeline:StartPipelineExecution", "*")
    assert not allows(policy, "s3:GetObject", "arn:aws:s3:::any/x"), "artifacts come with the job's credentials"


def test_stack_outputs_name_the_engine_and_the_document_bucket(run) -> None:
    assert run.outputs["deployEngineFunctionArn"] == engine_function(run).outputs["arn"]
    assert run.outputs["deployConfigBucket"] == config_bucket(run).outputs["bucket"]


def test_no_engine_without_engine_environments() -> None:
    raw = config(**{"crossdeploy:environments": [
        {"name": "prod", "accountId": PROD, "regions": ["us-east-2"], "strategy": "codedeploy"}],
        "crossdeploy:services": [{"name": "orders", "port": 8080}]})
    only_codedeploy = run_program(raw, stack="cd")
    assert not [f for f in only_codedeploy.of_type("aws:lambda/function:Function") if f.inputs["handler"] == HANDLER]
    assert "deployEngineFunctionArn" not in only_codedeploy.outputs
    (pipeline,) = only_codedeploy.of_type("aws:codepipeline/pipeline:Pipeline")
    assert [a["name"] for a in stage(pipeline, "Source")["actions"]] == ["Image"]
    trust = json.loads(deploy_role(only_codedeploy, PROD).inputs["assumeRolePolicy"])
    assert naming.engine_role_arn(typed(raw, "cd")) not in json.dumps(trust)
