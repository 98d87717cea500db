"""ServicePipeline: stage order, approvals, deploy actions per region, artifact stores, build step and trigger —
checked on the inputs CodePipeline, CodeBuild and EventBridge would receive."""

from __future__ import annotations

import json

import yaml
from conftest import PROD, QA, TOOLS, as_json, by_output, deploy_actions, pipelines

from components.buildspec import handler_source


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


def test_deploy_actions_one_per_region_with_role_cluster_service_file_and_timeout(base_run) -> None:
    p = pipeline_for(base_run, "team/payments")
    actions = deploy_actions(p)
    assert [(stage, a["region"]) for stage, a in actions] == [
        ("Deploy-qa", "us-east-2"), ("Deploy-prod", "us-east-2"), ("Deploy-prod", "eu-west-1")]
    for stage, action in actions:
        account = QA if stage == "Deploy-qa" else PROD
        assert (action["provider"], action["owner"], action["version"]) == ("ECS", "AWS", "1")
        assert action["roleArn"].split(":")[4] == account
        config = action["configuration"]
        assert config["ClusterName"] == "core" and config["ServiceName"] == "payments"
        assert config["FileName"] == f"imagedefinitions-{action['region']}.json"
        assert 1 <= int(config["DeploymentTimeout"]) <= 30, "a failed rollout must fail the pipeline in minutes"
        assert action["inputArtifacts"] == ["ImageDefinitions"]
        assert action.get("runOrder", 1) == 1, "regions of one environment deploy in parallel"


def test_artifact_store_per_region_with_that_regions_key_arn(base_run) -> None:
    p = pipeline_for(base_run, "orders")
    stores = {s["region"]: s for s in p.inputs["artifactStores"]}
    assert set(stores) == {"us-east-2", "eu-west-1"}
    for region, store in stores.items():
        key_arn = store["encryptionKey"]["id"]
        assert store["encryptionKey"]["type"] == "KMS"
        assert key_arn.startswith(f"arn:aws:kms:{region}:{TOOLS}:key/"), "a key ARN, never an alias"
        key = by_output(base_run, "arn", key_arn)
        assert key.region == region
        bucket = by_output(base_run, "bucket", store["location"], "aws:s3/bucket:Bucket")
        assert (bucket.account, bucket.region) == (TOOLS, region)


def test_single_region_pipeline_has_one_store_without_region() -> None:
    from conftest import config

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


def test_build_action_feeds_every_deploy_file(base_run) -> None:
    for p in pipelines(base_run):
        build = p.inputs["stages"][1]["actions"][0]
        project = by_output(base_run, "name", build["configuration"]["ProjectName"])
        files = set(yaml.safe_load(project.inputs["source"]["buildspec"])["artifacts"]["files"])
        assert {a["configuration"]["FileName"] for _, a in deploy_actions(p)} <= files


def test_push_of_the_trigger_tag_starts_the_pipeline(base_run) -> None:
    p = pipeline_for(base_run, "team/payments")
    targets = [t for t in base_run.of_type("aws:cloudwatch/eventTarget:EventTarget") if t.inputs["arn"] ==
               p.outputs["arn"]]
    assert len(targets) == 1
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


def test_physical_names_fit_aws_naming_rules() -> None:
    import re

    from conftest import config

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
