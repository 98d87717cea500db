"""Blue/green delivery from the tools account: CodeDeployToECS deploy actions, the build actions and projects that
write their artifacts, and the deploy role's CodeDeploy rights — checked on what the pipeline and deploy role
components register when the real program runs under the offline mocks, and by running a generated buildspec."""

from __future__ import annotations

import json
import re
import urllib.request

import botocore.session
import pytest
import yaml
from botocore.validate import ParamValidator
from conftest import PROD, QA, bucket_policy_for, by_output, config, key_policy_for, role_policy
from iam import allows, as_list, statements
from moto.server import ThreadedMotoServer
from test_image_definitions import push, run_buildspec

from components import naming
from components.buildspec import MAX_BUILDSPEC_CHARS, BuildspecTooLarge, render_blue_green_buildspec
from components.config import ServiceConfig, StackConfig, parse
from components.deploy_role import CodeDeployTarget, DeployRoleArgs, DeployTarget, codedeploy_targets
from components.pipeline import (
    BlueGreenTarget,
    EnvironmentStage,
    blue_green_groups,
    blue_green_spec,
    blue_green_targets,
)
from offline.mocks import ProgramRun, run_program

PLACEHOLDER = "<IMAGE1_NAME>"
FILES = {"taskdef.json", "appspec.yaml", "imageDetail.json"}
PROD_REGIONS = ["us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2", "ap-northeast-1",
                "ca-central-1"]
CODEDEPLOY_ACTIONS = {"codedeploy:CreateDeployment", "codedeploy:GetDeployment", "codedeploy:GetDeploymentConfig",
                      "codedeploy:GetApplication", "codedeploy:GetApplicationRevision",
                      "codedeploy:RegisterApplicationRevision"}
ARTIFACT_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
ECS_REGISTER = (
    botocore.session.get_session().get_service_model("ecs").operation_model("RegisterTaskDefinition").input_shape
)
SERVICES = [
    {"name": "orders", "port": 8081},
    {"name": "team/payments", "containerName": "app", "serviceName": "payments", "cluster": "core", "port": 9000,
     "environment": {"PRICE": "$5 `now`"}, "secrets": {"DB": "db/password"},
     "healthCheck": {"command": ["CMD-SHELL", "curl -f http://localhost:$PORT/ || exit 1"]}},
]
# qa rolling; stage blue-green in another region of the qa account (custom linear config); prod blue-green in seven
# regions (a predefined canary config), behind an approval.
ENVIRONMENTS = [
    {"name": "qa", "accountId": QA, "regions": ["us-east-2"]},
    {"name": "stage", "accountId": QA, "regions": ["us-west-2"], "strategy": "codedeploy",
     "blueGreen": {"trafficShift": {"type": "linear", "percent": 20, "intervalMinutes": 7}}},
    {"name": "prod", "accountId": PROD, "regions": PROD_REGIONS, "strategy": "codedeploy", "requireApproval": True,
     "blueGreen": {"trafficShift": {"type": "canary", "percent": 10, "intervalMinutes": 5}}},
]
BG_CONFIG = config(**{"crossdeploy:environments": ENVIRONMENTS, "crossdeploy:services": SERVICES})
ROLLING_CONFIG = config(**{
    "crossdeploy:environments": [{k: v for k, v in e.items() if k not in ("strategy", "blueGreen")}
                                 for e in ENVIRONMENTS],
    "crossdeploy:services": SERVICES})
MOTO_ACCOUNT = "123456789012"  # moto's account: the image registry of the end-to-end run
ALL_BG_CONFIG = config(**{
    "crossdeploy:tools": {"accountId": MOTO_ACCOUNT, "region": "us-east-2"},
    "crossdeploy:environments": [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2"], "strategy": "codedeploy"},
        {"name": "prod", "accountId": PROD, "regions": ["us-east-2", "us-west-2"], "strategy": "codedeploy"}],
    "crossdeploy:services": SERVICES})


def stack_config(raw: dict, stack: str) -> StackConfig:
    """The typed config the program saw."""
    return parse({k.split(":", 1)[1]: v for k, v in raw.items() if k.startswith("crossdeploy:")},
                 project="crossdeploy", stack=stack, aws_region=raw["aws:region"])


@pytest.fixture(scope="module")
def bg_run() -> ProgramRun:
    return run_program(BG_CONFIG, stack="bg")


@pytest.fixture(scope="module")
def rolling_run() -> ProgramRun:
    return run_program(ROLLING_CONFIG, stack="bg")


@pytest.fixture(scope="module")
def all_bg_run() -> ProgramRun:
    return run_program(ALL_BG_CONFIG, stack="allbg")


# --- lookups ------------------------------------------------------------------------------------------------------


def pipelines(run: ProgramRun) -> list:
    found = run.of_type("aws:codepipeline/pipeline:Pipeline")
    assert len(found) == len(SERVICES)
    return found


def pipeline_for(run: ProgramRun, repository: str):
    (found,) = [p for p in pipelines(run)
                if p.inputs["stages"][0]["actions"][0]["configuration"]["RepositoryName"] == repository]
    return found


def stage(pipeline, name: str) -> dict:
    (found,) = [s for s in pipeline.inputs["stages"] if s["name"] == name]
    return found


def deployments(pipeline, name: str) -> list[dict]:
    """The deploy actions of a stage, without the alarm bake that follows them where the environment bakes (the bake
    has its own tests)."""
    return [a for a in stage(pipeline, name)["actions"] if a["name"] != "Bake"]


def project_of(run: ProgramRun, action: dict):
    return by_output(run, "name", action["configuration"]["ProjectName"], "aws:codebuild/project:Project")


def blue_green_builds(pipeline) -> list[dict]:
    return [a for a in stage(pipeline, "Build")["actions"] if a["name"] != "PinImageByDigest"]


def env_config(name: str, environments=ENVIRONMENTS) -> dict:
    (found,) = [e for e in environments if e["name"] == name]
    return found


def service_config(repository: str) -> dict:
    (found,) = [s for s in SERVICES if s["name"] == repository]
    return found


def deploy_role(run: ProgramRun, account: str):
    (found,) = [r for r in run.of_type("aws:iam/role:Role") if r.account == account and "/deploy/" in r.outputs["arn"]]
    return found


def targets_of(run: ProgramRun, build_action: dict) -> list[dict]:
    spec = yaml.safe_load(project_of(run, build_action).inputs["source"]["buildspec"])
    return json.loads(spec["env"]["variables"]["BLUE_GREEN_TARGETS"])


def assert_registrable(taskdef: dict, image: str) -> dict:
    text = json.dumps(taskdef)
    assert text.count(PLACEHOLDER) == 1
    request = json.loads(text.replace(PLACEHOLDER, image))
    report = ParamValidator().validate(request, ECS_REGISTER)
    assert not report.has_errors(), report.generate_report()
    return request


# --- deploy actions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("repository", [s["name"] for s in SERVICES])
def test_blue_green_environments_deploy_with_one_codedeploy_action_per_region(bg_run, repository) -> None:
    cfg = stack_config(BG_CONFIG, "bg")
    service = next(s for s in cfg.services if s.name == repository)
    pipeline = pipeline_for(bg_run, repository)
    assert [s["name"] for s in pipeline.inputs["stages"]] == [
        "Source", "Build", "Deploy-qa", "Deploy-stage", "Approve-prod", "Deploy-prod"]
    for env in ("stage", "prod"):
        raw_env = env_config(env)
        actions = deployments(pipeline, f"Deploy-{env}")
        assert [a["region"] for a in actions] == raw_env["regions"], "one action per region, in config order"
        role = deploy_role(bg_run, raw_env["accountId"])
        for action in actions:
            assert (action["category"], action["owner"], action["provider"], action["version"]) == (
                "Deploy", "AWS", "CodeDeployToECS", "1")
            assert action.get("runOrder", 1) == 1, "regions of one environment deploy in parallel"
            assert action["roleArn"] == role.outputs["arn"], "run as the environment account's deploy role"
            (artifact,) = action["inputArtifacts"]
            assert ARTIFACT_NAME.fullmatch(artifact)
            configuration = action["configuration"]
            assert configuration == {
                "ApplicationName": naming.codedeploy_application_name(cfg, env),
                "DeploymentGroupName": naming.deployment_group_name(cfg, service),
                "TaskDefinitionTemplateArtifact": artifact,
                "TaskDefinitionTemplatePath": "taskdef.json",
                "AppSpecTemplateArtifact": artifact,
                "AppSpecTemplatePath": "appspec.yaml",
                "Image1ArtifactName": artifact,
                "Image1ContainerName": "IMAGE1_NAME",
            }
            # The action swaps "<" + Image1ContainerName + ">" in taskdef.json for the image.
            assert f"<{configuration['Image1ContainerName']}>" == PLACEHOLDER


def test_every_deploy_artifact_is_written_by_exactly_one_build_action(bg_run) -> None:
    for pipeline in pipelines(bg_run):
        producers: dict[str, list[tuple[str, str]]] = {}
        for s in pipeline.inputs["stages"]:
            for action in s["actions"]:
                for artifact in action.get("outputArtifacts") or []:
                    producers.setdefault(artifact, []).append((s["name"], action["name"]))
        assert all(len(p) == 1 for p in producers.values()), "output artifact names are unique in a pipeline"
        consumed = set()
        for s in pipeline.inputs["stages"]:
            for action in s["actions"]:
                if action.get("provider") != "CodeDeployToECS":
                    continue
                (artifact,) = action["inputArtifacts"]
                assert producers[artifact][0][0] == "Build", f"{artifact} is not written by the Build stage"
                consumed.add(artifact)
        for action in blue_green_builds(pipeline):
            assert set(action["outputArtifacts"]) <= consumed, "a build output nobody deploys"


def test_build_actions_run_in_parallel_with_at_most_five_outputs(bg_run) -> None:
    for pipeline in pipelines(bg_run):
        build = stage(pipeline, "Build")["actions"]
        assert build[0]["name"] == "PinImageByDigest", "qa is rolling: the imagedefinitions build stays"
        for action in build:
            assert (action["category"], action["provider"]) == ("Build", "CodeBuild")
            assert action["inputArtifacts"] == ["SourceImage"]
            assert action.get("runOrder", 1) == 1
            assert 1 <= len(action["outputArtifacts"]) <= 5, "CodePipeline's limit for a CodeBuild action"
        prod_artifacts = [a["inputArtifacts"][0] for a in deployments(pipeline, "Deploy-prod")]
        prod_builds = [a for a in blue_green_builds(pipeline) if set(a["outputArtifacts"]) & set(prod_artifacts)]
        # Seven regions: at least two actions, as many targets each as fit CodeBuild's inline buildspec limit.
        sizes = [len(a["outputArtifacts"]) for a in prod_builds]
        assert sum(sizes) == 7 and len(sizes) >= 2 and sizes[0] >= sizes[-1], sizes
        for action in prod_builds:
            assert len(project_of(bg_run, action).inputs["source"]["buildspec"]) <= MAX_BUILDSPEC_CHARS
        assert sorted(x for a in prod_builds for x in a["outputArtifacts"]) == sorted(prod_artifacts)
        assert all(set(a["outputArtifacts"]) <= set(prod_artifacts) for a in prod_builds), "one environment each"


def test_each_build_action_has_its_own_project_naming_its_outputs(bg_run) -> None:
    for pipeline in pipelines(bg_run):
        build = stage(pipeline, "Build")["actions"]
        projects = [project_of(bg_run, a) for a in build]
        assert len({p.outputs["arn"] for p in projects}) == len(build), "one project per build action"
        rolling = projects[0]
        for action, project in zip(build[1:], projects[1:], strict=True):
            for key in ("environment", "serviceRole", "logsConfig", "encryptionKey", "artifacts"):
                assert project.inputs[key] == rolling.inputs[key], f"{key}: shared with the rolling build"
            assert project.inputs["source"]["type"] == "CODEPIPELINE"
            spec = yaml.safe_load(project.inputs["source"]["buildspec"])
            outputs = action["outputArtifacts"]
            if len(outputs) == 1:
                sections = {outputs[0]: spec["artifacts"]}
            else:  # CodePipeline matches several outputs to secondary artifacts by identifier
                assert set(spec["artifacts"]) == {"secondary-artifacts"}
                sections = spec["artifacts"]["secondary-artifacts"]
            assert set(sections) == set(outputs)
            for section in sections.values():
                assert set(section["files"]) == FILES and section["base-directory"]
            assert [t["artifact"] for t in targets_of(bg_run, action)] == outputs


@pytest.mark.parametrize("repository", [s["name"] for s in SERVICES])
def test_build_targets_carry_the_regional_task_definition_and_the_load_balanced_container(bg_run, repository):
    pipeline = pipeline_for(bg_run, repository)
    raw_service = service_config(repository)
    deploy_regions = {a["inputArtifacts"][0]: (s["name"], a["region"]) for s in pipeline.inputs["stages"]
                      for a in s["actions"] if a["provider"] == "CodeDeployToECS"}
    seen = set()
    for action in blue_green_builds(pipeline):
        for target in targets_of(bg_run, action):
            stage_name, region = deploy_regions[target["artifact"]]
            account = env_config(stage_name.removeprefix("Deploy-"))["accountId"]
            assert target["region"] == region, "the artifact of a region is pinned to that region's replica"
            assert target["containerName"] == raw_service.get("containerName", raw_service["name"])
            assert target["containerPort"] == raw_service["port"]
            image = f"{MOTO_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{repository}@sha256:{'a' * 64}"
            request = assert_registrable(target["taskDefinition"], image)
            (container,) = [c for c in request["containerDefinitions"] if c["image"] == image]
            assert container["name"] == target["containerName"]
            assert target["containerPort"] in [m["containerPort"] for m in container["portMappings"]]
            assert container["logConfiguration"]["options"]["awslogs-region"] == region
            assert request["executionRoleArn"].split(":")[4] == account
            seen.add(target["artifact"])
    assert seen == set(deploy_regions)


def test_rolling_stages_are_unchanged(bg_run, rolling_run) -> None:
    for repository in (s["name"] for s in SERVICES):
        with_bg, rolling = pipeline_for(bg_run, repository), pipeline_for(rolling_run, repository)
        assert stage(with_bg, "Deploy-qa") == stage(rolling, "Deploy-qa")
        assert stage(with_bg, "Build")["actions"][0] == stage(rolling, "Build")["actions"][0]
        # A rolling environment is one deploy engine action, however many regions it has.
        assert [a["provider"] for a in deployments(rolling, "Deploy-prod")] == ["Lambda"]
        assert json.loads(deployments(rolling, "Deploy-prod")[0]["configuration"]["UserParameters"]) == {
            "environment": "prod"}
        assert len(stage(rolling, "Build")["actions"]) == 1, "no blue/green builds without codedeploy stages"
        # The imagedefinitions build writes (and waits for) only the engine's regions.
        spec = yaml.safe_load(project_of(bg_run, stage(with_bg, "Build")["actions"][0]).inputs["source"]["buildspec"])
        assert spec["artifacts"]["files"] == ["imagedefinitions-us-east-2.json"]
        assert spec["env"]["variables"]["TARGET_REGIONS"] == "us-east-2"
    assert len(rolling_run.of_type("aws:codebuild/project:Project")) == len(SERVICES)


def test_all_blue_green_pipelines_have_no_rolling_build(all_bg_run) -> None:
    for pipeline in pipelines(all_bg_run):
        build = stage(pipeline, "Build")["actions"]
        assert build and all(a["name"] != "PinImageByDigest" for a in build)
        artifacts = {x for s in pipeline.inputs["stages"] for a in s["actions"]
                     for x in (a.get("inputArtifacts") or []) + (a.get("outputArtifacts") or [])}
        assert "ImageDefinitions" not in artifacts
        for s in pipeline.inputs["stages"][2:]:
            assert {a["provider"] for a in s["actions"]} == {"CodeDeployToECS"}
    names = [p.inputs["name"] for p in all_bg_run.of_type("aws:codebuild/project:Project")]
    assert len(names) == 2 * len(SERVICES) and not any(n.endswith("-imagedefs") for n in names)


# --- the pipeline's and the build's roles ---------------------------------------------------------------------


def test_pipeline_role_may_run_every_build_of_its_service_and_no_other(bg_run) -> None:
    project_arns = {p.outputs["name"]: [project_of(bg_run, a).outputs["arn"] for a in stage(p, "Build")["actions"]]
                    for p in pipelines(bg_run)}
    for pipeline in pipelines(bg_run):
        policy = role_policy(bg_run, by_output(bg_run, "arn", pipeline.inputs["roleArn"]))
        for owner, arns in project_arns.items():
            for arn in arns:
                for action in ("codebuild:StartBuild", "codebuild:BatchGetBuilds"):
                    assert allows(policy, action, arn) == (owner == pipeline.outputs["name"]), (action, arn)


def test_blue_green_builds_share_the_build_role_and_may_read_every_replica(bg_run) -> None:
    tools = BG_CONFIG["crossdeploy:tools"]["accountId"]
    for repository in (s["name"] for s in SERVICES):
        pipeline = pipeline_for(bg_run, repository)
        projects = [project_of(bg_run, a) for a in stage(pipeline, "Build")["actions"]]
        (role_arn,) = {p.inputs["serviceRole"] for p in projects}
        policy = role_policy(bg_run, by_output(bg_run, "arn", role_arn))
        (group,) = {p.inputs["logsConfig"]["cloudwatchLogs"]["groupName"] for p in projects}
        log_group = by_output(bg_run, "name", group, "aws:cloudwatch/logGroup:LogGroup")
        assert allows(policy, "logs:PutLogEvents", log_group.outputs["arn"] + ":log-stream:x")
        for region in {"us-east-2", "us-west-2", *PROD_REGIONS}:
            assert allows(policy, "ecr:DescribeImages", f"arn:aws:ecr:{region}:{tools}:repository/{repository}")
        other = next(s["name"] for s in SERVICES if s["name"] != repository)
        assert not allows(policy, "ecr:DescribeImages", f"arn:aws:ecr:us-west-2:{tools}:repository/{other}")
        assert not any(a.startswith("codedeploy:") for s in statements(policy) for a in as_list(s["Action"]))


# --- the deploy role's CodeDeploy rights ----------------------------------------------------------------------


def codedeploy_arns(account: str, region: str, application: str, group: str, deployment_config: str) -> dict:
    prefix = f"arn:aws:codedeploy:{region}:{account}"
    return {"application": f"{prefix}:application:{application}",
            "deploymentgroup": f"{prefix}:deploymentgroup:{application}/{group}",
            "deploymentconfig": f"{prefix}:deploymentconfig:{deployment_config}"}


# The resource type the Service Authorization Reference gives each action CodeDeployToECS calls.
RESOURCE_OF = {
    "codedeploy:CreateDeployment": "deploymentgroup",
    "codedeploy:GetDeployment": "deploymentgroup",
    "codedeploy:GetDeploymentConfig": "deploymentconfig",
    "codedeploy:GetApplication": "application",
    "codedeploy:GetApplicationRevision": "application",
    "codedeploy:RegisterApplicationRevision": "application",
}


@pytest.mark.parametrize(("account", "env", "deployment_config"), [
    (PROD, "prod", "CodeDeployDefault.ECSCanary10Percent5Minutes"),  # AWS's predefined canary 10% / 5 minutes
    (QA, "stage", None),  # custom linear 20% / 7 minutes: the name the workload side creates it under
])
def test_deploy_role_may_run_exactly_the_codedeploy_calls_of_its_deployment_groups(bg_run, account, env,
                                                                                   deployment_config) -> None:
    cfg = stack_config(BG_CONFIG, "bg")
    environment = next(e for e in cfg.environments if e.name == env)
    deployment_config = deployment_config or naming.deployment_config_name(cfg, environment)
    application = naming.codedeploy_application_name(cfg, env)
    policy = role_policy(bg_run, deploy_role(bg_run, account))
    codedeploy = [s for s in statements(policy) if any(a.startswith("codedeploy:") for a in as_list(s["Action"]))]
    assert {a for s in codedeploy for a in as_list(s["Action"])} == CODEDEPLOY_ACTIONS
    for s in codedeploy:
        (kind,) = {RESOURCE_OF[a] for a in as_list(s["Action"])}  # one resource type per statement
        for resource in as_list(s["Resource"]):
            assert resource.split(":")[4] == account and resource.split(":")[5] == kind
            # The only wildcard: every group of the stack's own application (one ARN per application, not per
            # service: IAM's inline policy limit), never a wildcard application, region or account.
            assert "*" not in resource or resource.endswith(f":deploymentgroup:{application}/*"), resource
    for region in environment.regions:
        for service in cfg.services:
            arns = codedeploy_arns(account, region, application, naming.deployment_group_name(cfg, service),
                                   deployment_config)
            for action, kind in RESOURCE_OF.items():
                for other_kind, arn in arns.items():
                    assert allows(policy, action, arn) == (other_kind == kind), (action, arn)
    group, home = naming.deployment_group_name(cfg, cfg.services[0]), environment.regions[0]
    denied = [
        *codedeploy_arns(account, "sa-east-1", application, group, deployment_config).values(),  # not env's region
        *codedeploy_arns("999999999999", home, application, group, deployment_config).values(),  # another account
        *codedeploy_arns(account, home, "other-app", group, "other-config").values(),  # another application
    ]
    for arn in denied:
        for action, kind in RESOURCE_OF.items():
            if f":{kind}:" in arn:
                assert not allows(policy, action, arn), (action, arn)
    arns = codedeploy_arns(account, environment.regions[0], application, group, deployment_config)
    for action in ("codedeploy:StopDeployment", "codedeploy:ContinueDeployment", "codedeploy:CreateDeploymentGroup",
                   "codedeploy:UpdateDeploymentGroup", "codedeploy:DeleteApplication",
                   "codedeploy:CreateDeploymentConfig", "codedeploy:DeleteDeploymentGroup"):
        assert not any(allows(policy, action, arn) for arn in arns.values()), action


def test_rolling_environments_get_no_codedeploy_rights(bg_run, rolling_run) -> None:
    cfg = stack_config(BG_CONFIG, "bg")
    qa_group = codedeploy_arns(QA, "us-east-2", naming.codedeploy_application_name(cfg, "qa"),
                               naming.deployment_group_name(cfg, cfg.services[0]), "CodeDeployDefault.ECSAllAtOnce")
    policy = role_policy(bg_run, deploy_role(bg_run, QA))
    assert not allows(policy, "codedeploy:CreateDeployment", qa_group["deploymentgroup"]), "qa is rolling"
    for account in (QA, PROD):
        rolling = role_policy(rolling_run, deploy_role(rolling_run, account))
        assert not any(a.startswith("codedeploy:") for s in statements(rolling) for a in as_list(s["Action"]))


def test_deploy_role_may_register_and_pass_the_roles_each_task_definition_names(bg_run) -> None:
    for pipeline in pipelines(bg_run):
        for action in blue_green_builds(pipeline):
            for target in targets_of(bg_run, action):
                account = target["taskDefinition"]["executionRoleArn"].split(":")[4]
                policy = role_policy(bg_run, deploy_role(bg_run, account))
                assert allows(policy, "ecs:RegisterTaskDefinition", "*")
                roles = [target["taskDefinition"]["executionRoleArn"], target["taskDefinition"].get("taskRoleArn")]
                for role in filter(None, roles):
                    assert allows(policy, "iam:PassRole", role,
                                  context={"iam:PassedToService": "ecs-tasks.amazonaws.com"})
                    assert not allows(policy, "iam:PassRole", role,
                                      context={"iam:PassedToService": "codedeploy.amazonaws.com"})


def test_codedeploy_actions_can_assume_their_role_and_read_their_artifacts(bg_run) -> None:
    """The same four-policy agreement the ECS actions have (trust, deploy role, bucket, key), for the artifact
    each CodeDeployToECS action reads in its own region."""
    for pipeline in pipelines(bg_run):
        pipeline_role = by_output(bg_run, "arn", pipeline.inputs["roleArn"])
        pipeline_policy = role_policy(bg_run, pipeline_role)
        stores = {s["region"]: s for s in pipeline.inputs["artifactStores"]}
        for s in pipeline.inputs["stages"]:
            for action in s["actions"]:
                if action["provider"] != "CodeDeployToECS":
                    continue
                role = by_output(bg_run, "arn", action["roleArn"])
                deploy_policy = role_policy(bg_run, role)
                assert allows(pipeline_policy, "sts:AssumeRole", action["roleArn"])
                assert allows(role.inputs["assumeRolePolicy"], "sts:AssumeRole",
                              principal_arn=pipeline_role.outputs["arn"])
                store = stores[action["region"]]
                bucket, key_arn = store["location"], store["encryptionKey"]["id"]
                obj = f"arn:aws:s3:::{bucket}/{pipeline.outputs['name'][:20]}/{action['inputArtifacts'][0][:20]}/x"
                assert allows(deploy_policy, "s3:GetObject", obj)
                assert allows(bucket_policy_for(bg_run, bucket), "s3:GetObject", obj, principal_arn=role.outputs["arn"])
                assert allows(deploy_policy, "kms:Decrypt", key_arn)
                assert allows(key_policy_for(bg_run, key_arn), "kms:Decrypt", principal_arn=role.outputs["arn"])


# --- the program's buildspecs, run the way CodeBuild runs them ----------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def image_detail(repository: str, region: str, digest: str) -> dict:
    """imageDetail.json as the ECR source action writes it (the sample's fields) for `repository` in `region`."""
    return {"ImageSizeInBytes": "44728918", "ImageDigest": digest, "Version": "1.0",
            "ImagePushedAt": "Mon Jan 21 20:04:00 UTC 2019", "RegistryId": MOTO_ACCOUNT, "RepositoryName": repository,
            "ImageURI": f"{MOTO_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{repository}@{digest}", "ImageTags": ["latest"]}


@pytest.mark.parametrize("env", ["qa", "prod"])  # one target (primary artifact) and two (secondary artifacts)
def test_the_programs_blue_green_buildspecs_write_every_artifact(all_bg_run, moto_endpoint, tmp_path, monkeypatch,
                                                                 env) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).close()
    repository = "team/payments"
    pipeline = pipeline_for(all_bg_run, repository)
    regions = env_config(env, ALL_BG_CONFIG["crossdeploy:environments"])["regions"]
    (digest,) = {push(r, repository, endpoint_url=moto_endpoint) for r in regions}
    deploy = {a["inputArtifacts"][0]: a for a in stage(pipeline, f"Deploy-{env}")["actions"]}
    (action,) = [a for a in blue_green_builds(pipeline) if set(a["outputArtifacts"]) == set(deploy)]
    buildspec = project_of(all_bg_run, action).inputs["source"]["buildspec"]
    (tmp_path / "imageDetail.json").write_text(json.dumps(image_detail(repository, "us-east-2", digest)))

    result = run_buildspec(buildspec, tmp_path, moto_endpoint)

    assert result.returncode == 0, result.stderr
    artifacts = yaml.safe_load(buildspec)["artifacts"]
    sections = artifacts.get("secondary-artifacts") or {action["outputArtifacts"][0]: artifacts}
    assert set(sections) == set(deploy)
    for artifact, section in sections.items():
        directory = tmp_path / section["base-directory"]
        assert {p.name for p in directory.iterdir()} == FILES == set(section["files"])
        region = deploy[artifact]["region"]
        replica = f"{MOTO_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{repository}@{digest}"
        written = json.loads((directory / "imageDetail.json").read_text())
        assert written == {**image_detail(repository, "us-east-2", digest), "ImageURI": replica}
        request = assert_registrable(json.loads((directory / "taskdef.json").read_text()), replica)
        appspec = yaml.safe_load((directory / "appspec.yaml").read_text())
        lb = appspec["Resources"][0]["TargetService"]["Properties"]["LoadBalancerInfo"]
        (container,) = [c for c in request["containerDefinitions"] if c["image"] == replica]
        assert lb == {"ContainerName": container["name"],
                      "ContainerPort": container["portMappings"][0]["containerPort"]}
        assert lb == {"ContainerName": "app", "ContainerPort": 9000}
        assert container["environment"] == [{"name": "PRICE", "value": "$5 `now`"}], "passed through unaltered"


# --- components, directly -----------------------------------------------------------------------------------------


def stage_with(targets, regions=("us-east-2", "eu-west-1")) -> EnvironmentStage:
    return EnvironmentStage(name="prod", account_id=PROD, regions=tuple(regions),
                            deploy_role_arn=f"arn:aws:iam::{PROD}:role/deploy", cluster="c", service="s",
                            blue_green=tuple(targets))


def target(region: str, **changes) -> BlueGreenTarget:
    cfg = stack_config(BG_CONFIG, "bg")
    env = next(e for e in cfg.environments if e.name == "prod")
    (found,) = [t for t in blue_green_targets(cfg, env, cfg.services[1]) if t.region == region]
    return BlueGreenTarget(**{**found.__dict__, **changes})


def test_blue_green_targets_follow_the_environment() -> None:
    cfg = stack_config(BG_CONFIG, "bg")
    qa, _, prod = cfg.environments
    payments = cfg.services[1]
    assert blue_green_targets(cfg, qa, payments) == ()
    targets = blue_green_targets(cfg, prod, payments)
    assert [t.region for t in targets] == PROD_REGIONS
    for t in targets:
        assert (t.container_name, t.container_port) == ("app", 9000)
        assert t.application_name == naming.codedeploy_application_name(cfg, "prod")
        assert t.deployment_group_name == naming.deployment_group_name(cfg, payments)
        (container,) = t.task_definition["containerDefinitions"]
        assert container["image"] == PLACEHOLDER and container["logConfiguration"]["options"]["awslogs-region"] == \
            t.region
        assert t.task_definition["executionRoleArn"].split(":")[4] == PROD


def test_stage_targets_follow_the_stage_region_order() -> None:
    built = stage_with([target("eu-west-1"), target("us-east-2")])
    assert [t.region for t in built.blue_green_targets] == ["us-east-2", "eu-west-1"]


BAD_STAGES = {
    "a region without target": ([lambda: target("us-east-2")], "one target per region"),
    "a target outside the stage": ([lambda: target("us-east-2"), lambda: target("eu-west-1"),
                                    lambda: target("us-west-2")], "one target per region"),
    "a region twice": ([lambda: target("us-east-2"), lambda: target("us-east-2"), lambda: target("eu-west-1")],
                       "one target per region"),
    "no placeholder": ([lambda: target("us-east-2", task_definition={
        **target("us-east-2").task_definition, "containerDefinitions": [
            {**target("us-east-2").task_definition["containerDefinitions"][0], "image": "x:1"}]}),
        lambda: target("eu-west-1")], "found it 0 time(s)"),
    "port not mapped": ([lambda: target("us-east-2", container_port=1), lambda: target("eu-west-1")],
                        "containerPort 1 is not among"),
    "empty application": ([lambda: target("us-east-2", application_name=""), lambda: target("eu-west-1")],
                          "application_name"),
}


@pytest.mark.parametrize("case", BAD_STAGES, ids=list(BAD_STAGES))
def test_bad_blue_green_stages_are_refused(case) -> None:
    makers, expected = BAD_STAGES[case]
    targets = [make() for make in makers]
    with pytest.raises(ValueError, match=re.escape(expected)):
        stage_with(targets)


def test_codedeploy_targets_cover_each_blue_green_environment_of_the_account() -> None:
    cfg = stack_config(BG_CONFIG, "bg")
    stage_env = cfg.environments[1]
    qa_targets = codedeploy_targets(cfg, QA)
    assert {(t.region, t.deployment_group_name) for t in qa_targets} == {
        ("us-west-2", naming.deployment_group_name(cfg, s)) for s in cfg.services}, "stage only: qa is rolling"
    assert {t.deployment_config_name for t in qa_targets} == {naming.deployment_config_name(cfg, stage_env)}
    assert {t.application_name for t in qa_targets} == {naming.codedeploy_application_name(cfg, "stage")}
    prod_targets = codedeploy_targets(cfg, PROD)
    assert len(prod_targets) == len(PROD_REGIONS) * len(SERVICES) == len(set(prod_targets))
    assert {t.deployment_config_name for t in prod_targets} == {"CodeDeployDefault.ECSCanary10Percent5Minutes"}


def test_codedeploy_targets_skip_existing_services() -> None:
    cfg = stack_config(BG_CONFIG, "bg")
    legacy = ServiceConfig.model_validate({"name": "legacy", "existing": True, "executionRoleName": "legacy-exec"})
    with_legacy = StackConfig(**{**cfg.__dict__, "services": (*cfg.services, legacy)})
    assert codedeploy_targets(with_legacy, PROD) == codedeploy_targets(cfg, PROD)


@pytest.mark.parametrize("bad", [
    CodeDeployTarget("us-east-2", "*", "g", "c"),
    CodeDeployTarget("us-east-2", "app", "", "c"),
    CodeDeployTarget("", "app", "g", "c"),
    CodeDeployTarget("us-east-2", "app", "g", "CodeDeployDefault.*"),
])
def test_deploy_role_refuses_wildcard_or_empty_codedeploy_names(bad) -> None:
    with pytest.raises(ValueError, match="codedeploy_targets"):
        DeployRoleArgs(provider=None, partition="aws", account_id=PROD, role_name="r", path="/d/",
                       tools_account_id="111111111111",
                       trusted_principal_patterns=("arn:aws:iam::111111111111:role/p/*",),
                       targets=(DeployTarget("us-east-2", "c", "s"),), passable_role_arns=(),
                       codedeploy_targets=(bad,))


def test_a_buildspec_over_codebuilds_limit_is_refused_at_preview() -> None:
    cfg = stack_config(BG_CONFIG, "bg")
    (prod,) = [e for e in cfg.environments if e.name == "prod"]
    service = next(s for s in cfg.services if s.name == "team/payments")  # the larger task definition
    stage = EnvironmentStage(name="prod", account_id=PROD, regions=tuple(prod.regions),
                             deploy_role_arn="arn:aws:iam::777788889999:role/x", cluster=service.cluster,
                             service=service.service, blue_green=blue_green_targets(cfg, prod, service))
    specs = [blue_green_spec(stage, t) for t in stage.blue_green_targets]
    with pytest.raises(BuildspecTooLarge, match=r"the buildspec is \d+ characters; CodeBuild accepts at most 25600"):
        render_blue_green_buildspec(targets=specs[:5], home_region="us-east-2")
    groups = blue_green_groups(specs, "us-east-2", 600)
    assert [s for g in groups for s in g] == specs and all(1 <= len(g) <= 5 for g in groups)
    assert all(len(render_blue_green_buildspec(targets=g, home_region="us-east-2")) <= MAX_BUILDSPEC_CHARS
               for g in groups)
