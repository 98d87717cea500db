"""ServicePipeline: stage order, approvals, deploy actions per region, artifact stores, build step and trigger —
checked on the inputs CodePipeline, CodeBuild and EventBridge would receive."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import BASE_CONFIG, PROD, QA, TOOLS, as_json, by_output, config, deploy_actions, pipelines

from components.buildspec import handler_source


@pytest.fixture(scope="module")
def legacy_run():
    """The base stack plus a service crossdeploy does not own (``existing: true``): it keeps the ECS action."""
    from offline.mocks import run_program

    legacy = {"name": "legacy", "existing": True, "executionRoleName": "legacy-exec", "cluster": "legacy"}
    return run_program(config(**{"crossdeploy:services": [*BASE_CONFIG["crossdeploy:services"], legacy]}),
                       stack="test")


def pipeline_for(run, repository: str):
    found = [p for p in pipelines(run) if p.inputs["stages"][0]["actions"][0]["configuration"]["RepositoryName"]
             == repository]
    assert len(found) == 1
    return found[0]


def test_one_v2_pipeline_per_service_in_the_tools_home_region(base_run) -> None:
    found = pipelines(base_run)
    assert len(found) == 2
    for p in found:
        assert (p.account, p.region) == (TOOLS, "us-east-2")
        assert p.inputs["pipelineType"] == "V2"


def test_stages_follow_promotion_order_with_approval_before_prod(base_run) -> None:
    p = pipeline_for(base_run, "orders")
    assert [s["name"] for s in p.inputs["stages"]] == ["Source", "Build", "Deploy-qa", "Approve-prod", "Deploy-prod"]
    approval = p.inputs["stages"][3]["actions"]
    assert len(approval) == 1 and (approval[0]["category"], approval[0]["provider"]) == ("Approval", "Manual")
    topic = base_run.of_type("aws:sns/topic:Topic")[0]
    assert approval[0]["configuration"]["NotificationArn"] == topic.outputs["arn"]


def test_no_approval_stage_where_none_is_asked(prod_run) -> None:
    for p in pipelines(prod_run):
        assert [s["name"] for s in p.inputs["stages"]] == [
            "Source", "Build", "Deploy-test", "Approve-prod", "Deploy-prod"]


def test_source_watches_the_trigger_tag_of_its_repository(base_run) -> None:
    p = pipeline_for(base_run, "team/payments")
    source = p.inputs["stages"][0]["actions"][0]
    assert (source["category"], source["provider"]) == ("Source", "ECR")
    assert source["configuration"] == {"RepositoryName": "team/payments", "ImageTag": "release"}


def test_each_environment_is_one_engine_action_covering_all_its_regions(base_run) -> None:
    p = pipeline_for(base_run, "team/payments")
    (function,) = [f for f in base_run.of_type("aws:lambda/function:Function")
                   if f.inputs["handler"] == "handlers.pipeline_deploy.handler"]
    assert (function.account, function.region) == (TOOLS, "us-east-2")
    for name in ("qa", "prod"):
        (stage,) = [s for s in p.inputs["stages"] if s["name"] == f"Deploy-{name}"]
        # Regions deploy in parallel inside the engine; one failing puts all back. (Approved prod bakes after it.)
        (action,) = [a for a in stage["actions"] if a["name"] != "Bake"]
        assert (action["category"], action["provider"], action["owner"], action["version"]) == (
            "Invoke", "Lambda", "AWS", "1")
        assert action["configuration"]["FunctionName"] == function.outputs["name"]
        assert json.loads(action["configuration"]["UserParameters"]) == {"environment": name}
        assert action["inputArtifacts"] == ["ImageDefinitions", "DeployConfig"]
    assert deploy_actions(p) == [], "no ECS standard action: it would copy the running task definition"


def test_existing_services_deploy_per_region_with_role_cluster_service_file_and_timeout(legacy_run) -> None:
    p = pipeline_for(legacy_run, "legacy")
    actions = deploy_actions(p)
    assert [(stage, a["region"]) for stage, a in actions] == [
        ("Deploy-qa", "us-east-2"), ("Deploy-prod", "us-east-2"), ("Deploy-prod", "eu-west-1")]
    for stage, action in actions:
        account = QA if stage == "Deploy-qa" else PROD
        assert (action["provider"], action["owner"], action["version"]) == ("ECS", "AWS", "1")
        assert action["roleArn"].split(":")[4] == account
        config = action["configuration"]
        assert config["ClusterName"] == "legacy" and config["ServiceName"] == "legacy"
        assert config["FileName"] == f"imagedefinitions-{action['region']}.json"
        assert 1 <= int(config["DeploymentTimeout"]) <= 30, "a failed rollout must fail the pipeline in minutes"
        assert action["inputArtifacts"] == ["ImageDefinitions"]
        assert action.get("runOrder", 1) == 1, "regions of one environment deploy in parallel"


def test_artifact_store_per_region_with_that_regions_key_arn(legacy_run) -> None:
    p = pipeline_for(legacy_run, "legacy")  # ECS actions run in us-east-2 and eu-west-1
    stores = {s["region"]: s for s in p.inputs["artifactStores"]}
    assert set(stores) == {"us-east-2", "eu-west-1"}
    for region, store in stores.items():
        key_arn = store["encryptionKey"]["id"]
        assert store["encryptionKey"]["type"] == "KMS"
        assert key_arn.startswith(f"arn:aws:kms:{region}:{TOOLS}:key/"), "a key ARN, never an alias"
        key = by_output(legacy_run, "arn", key_arn)
        assert key.region == region
        bucket = by_output(legacy_run, "bucket", store["location"], "aws:s3/bucket:Bucket")
        assert (bucket.account, bucket.region) == (TOOLS, region)


def test_engine_only_pipelines_need_only_the_home_store(base_run) -> None:
    # The engine's action runs in the home region, whatever regions it deploys to.
    (store,) = pipeline_for(base_run, "orders").inputs["artifactStores"]
    assert "region" not in store and store["encryptionKey"]["id"].startswith(f"arn:aws:kms:us-east-2:{TOOLS}:key/")


def test_single_region_pipeline_has_one_store_without_region() -> None:
    from offline.mocks import run_program

    run = run_program(config(**{"crossdeploy:environments": [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2"]}]}), stack="single")
    stores = pipelines(run)[0].inputs["artifactStores"]
    assert len(stores) == 1 and "region" not in stores[0]


def test_build_runs_on_lambda_compute_with_the_embedded_transform(base_run) -> None:
    project = by_output(base_run, "name", "crossdeploy-test-team-payments-imagedefs")
    env = project.inputs["environment"]
    assert (env["type"], env["computeType"]) == ("LINUX_LAMBDA_CONTAINER", "BUILD_LAMBDA_1GB")
    assert "lambda" in env["image"] and "privilegedMode" not in env
    assert project.inputs["source"]["type"] == "CODEPIPELINE"
    spec = yaml.safe_load(project.inputs["source"]["buildspec"])
    assert spec["artifacts"]["files"] == ["imagedefinitions-us-east-2.json", "imagedefinitions-eu-west-1.json"]
    assert spec["env"]["variables"]["CONTAINER_NAME"] == "app"
    assert any(handler_source() in command for command in spec["phases"]["build"]["commands"])
    assert project.inputs["encryptionKey"].startswith(f"arn:aws:kms:us-east-2:{TOOLS}:key/")


@pytest.mark.parametrize("which", ["base", "legacy"])
def test_build_action_feeds_every_deploy_file(base_run, legacy_run, which) -> None:
    run = base_run if which == "base" else legacy_run
    for p in pipelines(run):
        build = p.inputs["stages"][1]["actions"][0]
        project = by_output(run, "name", build["configuration"]["ProjectName"])
        files = set(yaml.safe_load(project.inputs["source"]["buildspec"])["artifacts"]["files"])
        assert {a["configuration"]["FileName"] for _, a in deploy_actions(p)} <= files
        # The engine reads imagedefinitions-<region>.json for every region of the environment it deploys.
        assert files == {"imagedefinitions-us-east-2.json", "imagedefinitions-eu-west-1.json"}


def test_push_of_the_trigger_tag_starts_the_pipeline(base_run) -> None:
    p = pipeline_for(base_run, "team/payments")
    targets = [t for t in base_run.of_type("aws:cloudwatch/eventTarget:EventTarget") if t.inputs["arn"] ==
               p.outputs["arn"] and as_json(by_output(base_run, "name", t.inputs["rule"]).inputs["eventPattern"])
               ["source"] == ["aws.ecr"]]
    assert len(targets) == 1  # (the other rule, a new deploy document: tests/test_engine_program.py)
    rule = by_output(base_run, "name", targets[0].inputs["rule"])
    assert as_json(rule.inputs["eventPattern"]) == {
        "source": ["aws.ecr"], "detail-type": ["ECR Image Action"],
        "detail": {"action-type": ["PUSH"], "result": ["SUCCESS"], "repository-name": ["team/payments"],
                   "image-tag": ["release"]}}
    role = by_output(base_run, "arn", targets[0].inputs["roleArn"])
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "events.amazonaws.com"}


def test_failures_are_notified_to_the_topic(base_run) -> None:
    topic = base_run.of_type("aws:sns/topic:Topic")[0]
    rules = base_run.of_type("aws:codestarnotifications/notificationRule:NotificationRule")
    assert {r.inputs["resource"] for r in rules} == {p.outputs["arn"] for p in pipelines(base_run)}
    for rule in rules:
        assert set(rule.inputs["eventTypeIds"]) == {"codepipeline-pipeline-pipeline-execution-failed",
                                                    "codepipeline-pipeline-manual-approval-failed",
                                                    "codepipeline-pipeline-manual-approval-succeeded"}
        assert rule.inputs["targets"] == [{"address": topic.outputs["arn"], "type": "SNS"}]
    subs = base_run.of_type("aws:sns/topicSubscription:TopicSubscription")
    assert [(s.inputs["protocol"], s.inputs["endpoint"]) for s in subs] == [("email", "ops@example.com")]
    assert topic.inputs["kmsMasterKeyId"].startswith(f"arn:aws:kms:us-east-2:{TOOLS}:key/")


def test_outputs_name_what_users_need(prod_run) -> None:
    out = prod_run.outputs
    assert set(out["repositoryUrls"]) == {"orders", "payments", "web/storefront"}
    assert out["repositoryUrls"]["web/storefront"] == f"{TOOLS}.dkr.ecr.us-east-2.amazonaws.com/web/storefront"
    assert set(out["pipelineNames"].values()) == {p.outputs["name"] for p in pipelines(prod_run)}
    assert set(out["deployRoleArns"]) == {"444455556666", "777788889999"}
    assert set(out["artifactBuckets"]) == {"us-east-2", "us-west-2"}
    assert out["deployEngineFunctionArn"] == f"arn:aws:lambda:us-east-2:{TOOLS}:function:crossdeploy-prod-deploy-engine"
    assert out["deployConfigBucket"] not in out["artifactBuckets"].values()


def test_physical_names_fit_aws_naming_rules() -> None:
    import re

    from offline.mocks import run_program

    long_name = "team/" + "a" * 120
    run = run_program(config(**{"crossdeploy:services": [
        {"name": "my.app", "containerName": "app", "serviceName": "my-app"},
        {"name": long_name, "containerName": "app", "serviceName": "long"}]}), stack="names")
    rules = {
        "aws:codepipeline/pipeline:Pipeline": r"[A-Za-z0-9.@_-]{1,100}",
        "aws:codebuild/project:Project": r"[A-Za-z0-9][A-Za-z0-9_-]{1,254}",
        "aws:iam/role:Role": r"[\w+=,.@-]{1,64}",
        "aws:codestarnotifications/notificationRule:NotificationRule": r"[A-Za-z0-9_ -]{1,64}",
        "aws:cloudwatch/logGroup:LogGroup": r"[.\-_/#A-Za-z0-9]{1,512}",
    }
    for type_, pattern in rules.items():
        names = [(r.account, r.region, r.inputs["name"]) for r in run.of_type(type_)]
        assert names and all(re.fullmatch(pattern, n) for _, _, n in names), (type_, names)
        assert len(set(names)) == len(names), f"{type_}: names collide within an account and region"
