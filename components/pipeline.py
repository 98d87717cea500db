"""ServicePipeline: one CodePipeline V2 per service, from an ECR push to every environment, in promotion order.

Stages::

    Source   ECR action on the service's repository and trigger tag (started by an EventBridge rule: pipelines
             created through the API get no automatic ECR trigger)
    Build    CodeBuild on Lambda compute, after waiting (bounded) for replication to deliver the image, in parallel:
               PinImageByDigest         imageDetail.json -> imagedefinitions-<region>.json for the rolling
                                        environments' regions, pinned by digest to each region's replica
               BlueGreen-<env>[-<n>]    per blue/green environment, up to five regions each (CodePipeline's
                                        output artifact limit): one artifact BlueGreen-<env>-<region> per region
                                        with taskdef.json, appspec.yaml and imageDetail.json (regional, by digest)
    per environment, in config order:
      Approve-<env>  manual approval, notice to the SNS topic (only where requireApproval is set)
      Deploy-<env>   one deploy action per region, in parallel, each run as the environment's deploy role in that
                     region: ECS (rolling), or CodeDeployToECS (blue/green) reading that region's artifact

Why these choices:

* Deploying ``repo@sha256:…`` instead of a tag: ECS resolves a tag once, so a re-pushed ``:latest`` would never
  roll out again, and a tag can point elsewhere by the time a later environment deploys (DESIGN.md pitfall 4).
* ``DeploymentTimeout`` on each ECS action: with the circuit breaker a failed rollout otherwise leaves the pipeline
  "In Progress" for 60 minutes (pitfall 7).
* One artifact store per region, each with its key's **ARN** (an alias does not resolve across accounts).
* One pipeline role and one build role per service: each can touch only its own repository, projects and the
  shared artifact stores. The deploy roles trust the pipeline role *path*, so adding a service never edits them.
* Blue/green builds have a project each (a buildspec names its output artifacts) but share the service's build
  role and log group; each artifact carries all three files CodeDeployToECS reads, so the action takes exactly one
  input artifact and names it in all three of its ``*Artifact`` keys.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components import naming
from components import policies as p
from components.artifacts import ArtifactStore
from components.buildspec import (
    BLUE_GREEN_FILES,
    MAX_OUTPUT_ARTIFACTS,
    artifact_file,
    render_blue_green_buildspec,
    render_buildspec,
)
from components.config import EnvironmentConfig, ServiceConfig, StackConfig
from components.service_role import service_role
from components.task_definition import IMAGE_PLACEHOLDER, task_definition
from handlers import image_definitions as idf

LAMBDA_BUILD_IMAGE = "aws/codebuild/amazonlinux-x86_64-lambda-standard:python3.12"
SOURCE_ARTIFACT = "SourceImage"
BUILD_ARTIFACT = "ImageDefinitions"
IMAGE1_CONTAINER = IMAGE_PLACEHOLDER.strip("<>")
"""``Image1ContainerName``: the CodeDeployToECS action replaces ``<IMAGE1_NAME>`` in taskdef.json with the image."""
TASKDEF_FILE, APPSPEC_FILE, _ = BLUE_GREEN_FILES
_CODEDEPLOY_NAME_MAX = 100  # CodeDeploy application and deployment group names
# The approval *request* reaches approvers through the approval action's own SNS notice (it carries the review
# link); the rule adds failures and the approval decisions, so every approve/reject is on record in the topic.
NOTICE_EVENTS = (
    "codepipeline-pipeline-pipeline-execution-failed",
    "codepipeline-pipeline-manual-approval-failed",
    "codepipeline-pipeline-manual-approval-succeeded",
)


@dataclass(frozen=True)
class BlueGreenTarget:
    """One region of a blue/green environment: the CodeDeploy deployment group its action deploys through, and the
    task definition it registers there."""

    region: str
    application_name: str
    deployment_group_name: str
    task_definition: dict
    """RegisterTaskDefinition request (ECS API camelCase) whose one image is ``<IMAGE1_NAME>``."""
    container_name: str
    """The container that gets the new image and that the load balancer targets (the AppSpec names it)."""
    container_port: int


@dataclass(frozen=True)
class EnvironmentStage:
    """One environment the pipeline deploys to."""

    name: str
    account_id: str
    regions: tuple[str, ...]
    deploy_role_arn: pulumi.Input[str]
    """Role each deploy action runs as, in the workload account."""
    cluster: str
    service: str
    require_approval: bool = False
    """Manual approval before this environment. Default false."""
    blue_green: tuple[BlueGreenTarget, ...] = ()
    """Exactly one target per region of the stage: deploy with CodeDeploy blue/green (CodeDeployToECS). Default
    none: ECS rolling deploy actions on ``cluster``/``service``."""

    def __post_init__(self) -> None:
        if not self.blue_green:
            return
        problems = []
        regions = [t.region for t in self.blue_green]
        if len(set(regions)) != len(regions) or set(regions) != set(self.regions):
            problems.append(f"blue_green: needs exactly one target per region of the stage {list(self.regions)}, "
                            f"got targets for {regions}")
        for t in self.blue_green:
            for field_name in ("application_name", "deployment_group_name"):
                value = getattr(t, field_name)
                if not isinstance(value, str) or not 1 <= len(value) <= _CODEDEPLOY_NAME_MAX:
                    problems.append(f"blue_green[{t.region}].{field_name}: CodeDeploy names are 1-"
                                    f"{_CODEDEPLOY_NAME_MAX} characters, got {value!r}")
        try:
            # The very check the build runs: a target the build would refuse fails here, at preview.
            idf.parse_blue_green_targets([blue_green_spec(self, t) for t in self.blue_green])
        except idf.TransformError as exc:
            problems.append(f"blue_green: {exc}")
        if problems:
            raise ValueError(f"EnvironmentStage {self.name}: " + "; ".join(problems))

    @property
    def blue_green_targets(self) -> list[BlueGreenTarget]:
        """The targets in the stage's region order."""
        by_region = {t.region: t for t in self.blue_green}
        return [by_region[r] for r in self.regions if r in by_region]


def blue_green_artifact(environment: str, region: str) -> str:
    """The pipeline artifact (and build output directory) of one blue/green environment and region."""
    return p.iam_name("BlueGreen", environment, region, max_len=100, allowed=r"A-Za-z0-9_-")


def blue_green_spec(stage: EnvironmentStage, target: BlueGreenTarget) -> dict:
    """One entry of the handler's BLUE_GREEN_TARGETS (see ``handlers.image_definitions.parse_blue_green_targets``)."""
    return {
        "artifact": blue_green_artifact(stage.name, target.region),
        "region": target.region,
        "taskDefinition": target.task_definition,
        "containerName": target.container_name,
        "containerPort": target.container_port,
    }


@dataclass(frozen=True)
class BlueGreenBuild:
    """One blue/green build action and the CodeBuild project behind it."""

    action_name: str
    project_name: str
    suffix: str
    """Distinguishes the project's resource name: ``bluegreen-<env>[-<n>]``."""
    environment: str
    targets: tuple[dict, ...]
    """Handler targets, at most five; their ``artifact`` names are the action's output artifacts, in order."""

    @property
    def output_artifacts(self) -> list[str]:
        return [t["artifact"] for t in self.targets]


def blue_green_targets(cfg: StackConfig, env: EnvironmentConfig, service: ServiceConfig) -> tuple[BlueGreenTarget, ...]:
    """What `service`'s pipeline deploys in each region of `env` with CodeDeploy; empty for a rolling environment.

    The task definition is the one the workload component registers (:func:`components.task_definition.task_definition`)
    with the image as ``<IMAGE1_NAME>``, so every release registers exactly what ``pulumi up`` created, new image
    aside."""
    if env.strategy != "codedeploy":
        return ()
    return tuple(
        BlueGreenTarget(
            region=region,
            application_name=naming.codedeploy_application_name(cfg, env.name),
            deployment_group_name=naming.deployment_group_name(cfg, service),
            task_definition=task_definition(cfg, env.account_id, region, service, IMAGE_PLACEHOLDER),
            container_name=service.container,
            container_port=service.port,
        )
        for region in env.regions
    )


@dataclass(frozen=True)
class ServicePipelineArgs:
    provider: aws.Provider
    """Tools account provider in the home region."""
    partition: str
    tools_account_id: str
    home_region: str
    repository_name: str
    repository_arns: dict[str, pulumi.Input[str]]
    """Region -> repository ARN: home (the source) and every replica the build waits for."""
    container_name: str
    stages: tuple[EnvironmentStage, ...]
    artifact_stores: dict[str, ArtifactStore]
    """Region -> artifact store; must cover the home region and every stage region."""
    pipeline_name: str
    build_project_name: str
    pipeline_role_name: str
    pipeline_role_path: str
    build_role_name: str
    build_role_path: str
    trigger_role_name: str
    """Role EventBridge uses to start the pipeline (lives under the build path: it must not assume deploy roles)."""
    trigger_tag: str = "latest"
    """Tag whose successful push starts the pipeline. Default ``latest``."""
    notification_topic_arn: pulumi.Input[str] | None = None
    """Topic for approval requests and failure notices. Default: none (approvals then have no notice)."""
    notification_key_arn: pulumi.Input[str] | None = None
    deployment_timeout_minutes: int = 15
    """ECS action DeploymentTimeout (1-60). Default 15: a healthy Fargate rollout takes a few minutes, and a failed
    one must fail the pipeline long before AWS's 60-minute default."""
    replication_timeout_seconds: int = 600
    """How long the build waits for ECR replication per region. Default 600 (Lambda builds stop at 15 minutes)."""
    log_retention_days: int = 30
    """Build log retention. Default 30."""
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not self.stages:
            problems.append("stages: at least one environment is required")
        needed = {self.home_region, *(r for s in self.stages for r in s.regions)}
        missing = sorted(needed - set(self.artifact_stores))
        if missing:
            problems.append(f"artifact_stores: no store for regions {missing}")
        missing_repos = sorted(needed - set(self.repository_arns))
        if missing_repos:
            problems.append(f"repository_arns: no repository for regions {missing_repos}")
        if not 1 <= self.deployment_timeout_minutes <= 60:
            problems.append(f"deployment_timeout_minutes: ECS accepts 1-60, got {self.deployment_timeout_minutes}")
        if len({s.name for s in self.stages}) != len(self.stages):
            problems.append("stages: environment names must be unique")
        if any(s.require_approval for s in self.stages) and self.notification_topic_arn is None:
            problems.append("notification_topic_arn: required when a stage asks for approval")
        # Source + build + up to two stages per environment: CodePipeline allows 50 stages.
        if 2 + sum(2 if s.require_approval else 1 for s in self.stages) > 50:
            problems.append("stages: more than CodePipeline's 50 stages")
        # CodePipeline allows 50 actions per stage; the Build stage holds the rolling build and the blue/green ones.
        build_actions = (1 if self.rolling_regions else 0) + len(self.blue_green_builds)
        if build_actions > 50:
            problems.append(f"stages: {build_actions} build actions, more than CodePipeline's 50 per stage")
        if problems:
            raise ValueError("ServicePipelineArgs: " + "; ".join(problems))

    @property
    def target_regions(self) -> list[str]:
        return list(dict.fromkeys(r for s in self.stages for r in s.regions))

    @property
    def rolling_regions(self) -> list[str]:
        """Regions some rolling stage deploys to: those the imagedefinitions build writes files for."""
        return list(dict.fromkeys(r for s in self.stages if not s.blue_green for r in s.regions))

    @functools.cached_property
    def blue_green_builds(self) -> list[BlueGreenBuild]:
        """Per blue/green stage, its regions in groups of at most five, one build action (and project) each."""
        builds = []
        for stage in self.stages:
            specs = [blue_green_spec(stage, t) for t in stage.blue_green_targets]
            groups = [specs[i:i + MAX_OUTPUT_ARTIFACTS] for i in range(0, len(specs), MAX_OUTPUT_ARTIFACTS)]
            for n, group in enumerate(groups, 1):
                suffix = stage.name if len(groups) == 1 else f"{stage.name}-{n}"
                builds.append(BlueGreenBuild(
                    action_name=p.iam_name("BlueGreen", suffix, max_len=100, allowed=r"A-Za-z0-9.@_-"),
                    project_name=p.iam_name(self.build_project_name, "bluegreen", suffix, max_len=255,
                                            allowed=r"A-Za-z0-9_-"),
                    suffix=f"bluegreen-{suffix}",
                    environment=stage.name,
                    targets=tuple(group),
                ))
        return builds

    @property
    def store_regions(self) -> list[str]:
        return list(dict.fromkeys([self.home_region, *self.target_regions]))


def pipeline_role_policy(args: ServicePipelineArgs, project_arns: list[pulumi.Input[str]]) -> dict:
    """The pipeline role's grant; `project_arns` are all of the service's build projects (rolling and blue/green)."""
    stores = [args.artifact_stores[r] for r in args.store_regions]
    statements = [
        p.statement("ReadSourceImage", ["ecr:DescribeImages"], [args.repository_arns[args.home_region]]),
        p.statement("RunBuild", ["codebuild:BatchGetBuilds", "codebuild:StartBuild"], list(project_arns)),
        p.statement("ArtifactObjects", ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"],
                    [pulumi.Output.concat(s.bucket_arn, "/*") for s in stores]),
        p.statement("ArtifactBuckets", ["s3:GetBucketLocation", "s3:GetBucketVersioning", "s3:ListBucket"],
                    [s.bucket_arn for s in stores]),
        p.statement("ArtifactKeys", ["kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey",
                                     "kms:ReEncryptFrom", "kms:ReEncryptTo"], [s.key_arn for s in stores]),
        # Environments sharing an account share its deploy role (the same Output object): list it once.
        p.statement("AssumeDeployRoles", ["sts:AssumeRole"],
                    list({id(s.deploy_role_arn): s.deploy_role_arn for s in args.stages}.values())),
    ]
    if any(s.require_approval for s in args.stages):
        statements.append(p.statement("NotifyApprovers", ["sns:Publish"], [args.notification_topic_arn]))
        statements.append(p.statement("EncryptApprovalNotices", ["kms:Decrypt", "kms:GenerateDataKey"],
                                      [args.notification_key_arn]))
    return p.document(statements)


def build_role_policy(args: ServicePipelineArgs, log_group_arn: pulumi.Input[str]) -> dict:
    home = args.artifact_stores[args.home_region]
    return p.document([
        p.statement("WriteOwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                    [pulumi.Output.concat(log_group_arn, ":*")]),
        p.statement("ArtifactObjects", ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"],
                    [pulumi.Output.concat(home.bucket_arn, "/*")]),
        p.statement("ArtifactKey", ["kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey"],
                    [home.key_arn]),
        p.statement("WaitForReplicas", ["ecr:DescribeImages"],
                    [args.repository_arns[r] for r in [args.home_region, *args.target_regions]
                     if r in args.repository_arns]),
    ])


def source_event_pattern(repository: str, tag: str) -> dict:
    """Exactly a successful push of the trigger tag to this repository (ECR's "ECR Image Action" event)."""
    return {
        "source": ["aws.ecr"],
        "detail-type": ["ECR Image Action"],
        "detail": {"action-type": ["PUSH"], "result": ["SUCCESS"], "repository-name": [repository],
                   "image-tag": [tag]},
    }


def _build_actions(args: ServicePipelineArgs, project_names: dict[str, pulumi.Input[str]]) -> list:
    """The Build stage: all actions in parallel, each waiting for replication to its own regions."""
    actions = []
    if args.rolling_regions:
        actions.append(aws.codepipeline.PipelineStageActionArgs(
            name="PinImageByDigest", category="Build", owner="AWS", provider="CodeBuild", version="1",
            input_artifacts=[SOURCE_ARTIFACT], output_artifacts=[BUILD_ARTIFACT],
            configuration={"ProjectName": project_names["PinImageByDigest"]},
        ))
    for build in args.blue_green_builds:
        actions.append(aws.codepipeline.PipelineStageActionArgs(
            name=build.action_name, category="Build", owner="AWS", provider="CodeBuild", version="1",
            input_artifacts=[SOURCE_ARTIFACT], output_artifacts=build.output_artifacts,
            configuration={"ProjectName": project_names[build.action_name]},
        ))
    return actions


def _deploy_actions(args: ServicePipelineArgs, stage: EnvironmentStage) -> list:
    if not stage.blue_green:
        return [
            aws.codepipeline.PipelineStageActionArgs(
                name=f"ECS-{region}", category="Deploy", owner="AWS", provider="ECS", version="1",
                region=region, role_arn=stage.deploy_role_arn, input_artifacts=[BUILD_ARTIFACT],
                configuration={
                    "ClusterName": stage.cluster,
                    "ServiceName": stage.service,
                    "FileName": artifact_file(region),
                    "DeploymentTimeout": str(args.deployment_timeout_minutes),
                },
            )
            for region in stage.regions
        ]
    actions = []
    for target in stage.blue_green_targets:
        # One artifact holds all three files, so the action's single input names it in every *Artifact key.
        artifact = blue_green_artifact(stage.name, target.region)
        actions.append(aws.codepipeline.PipelineStageActionArgs(
            name=f"CodeDeploy-{target.region}", category="Deploy", owner="AWS", provider="CodeDeployToECS",
            version="1", region=target.region, role_arn=stage.deploy_role_arn, input_artifacts=[artifact],
            configuration={
                "ApplicationName": target.application_name,
                "DeploymentGroupName": target.deployment_group_name,
                "TaskDefinitionTemplateArtifact": artifact,
                "TaskDefinitionTemplatePath": TASKDEF_FILE,
                "AppSpecTemplateArtifact": artifact,
                "AppSpecTemplatePath": APPSPEC_FILE,
                "Image1ArtifactName": artifact,
                "Image1ContainerName": IMAGE1_CONTAINER,
            },
        ))
    return actions


def _stages(args: ServicePipelineArgs, project_names: dict[str, pulumi.Input[str]]) -> list:
    """`project_names`: build action name -> its CodeBuild project's name."""
    stages = [
        aws.codepipeline.PipelineStageArgs(name="Source", actions=[aws.codepipeline.PipelineStageActionArgs(
            name="Image", category="Source", owner="AWS", provider="ECR", version="1",
            output_artifacts=[SOURCE_ARTIFACT],
            configuration={"RepositoryName": args.repository_name, "ImageTag": args.trigger_tag},
        )]),
        aws.codepipeline.PipelineStageArgs(name="Build", actions=_build_actions(args, project_names)),
    ]
    for stage in args.stages:
        if stage.require_approval:
            stages.append(aws.codepipeline.PipelineStageArgs(
                name=f"Approve-{stage.name}", actions=[aws.codepipeline.PipelineStageActionArgs(
                    name="Approve", category="Approval", owner="AWS", provider="Manual", version="1",
                    configuration={
                        "NotificationArn": args.notification_topic_arn,
                        "CustomData": f"Approve {args.repository_name} for {stage.name} "
                                      f"(account {stage.account_id}, {', '.join(stage.regions)})",
                    },
                )]))
        stages.append(aws.codepipeline.PipelineStageArgs(name=f"Deploy-{stage.name}",
                                                         actions=_deploy_actions(args, stage)))
    return stages


class ServicePipeline(pulumi.ComponentResource):
    """The delivery pipeline of one service, with its build project, roles, trigger and failure notices."""

    def __init__(self, name: str, args: ServicePipelineArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:pipeline:ServicePipeline", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        home = args.artifact_stores[args.home_region]

        log_group = aws.cloudwatch.LogGroup(
            f"{name}-build-logs", name=f"/aws/codebuild/{args.build_project_name}",
            retention_in_days=args.log_retention_days, opts=child)
        build_role, build_policy = service_role(
            f"{name}-build", role_name=args.build_role_name, path=args.build_role_path,
            service="codebuild.amazonaws.com", account_id=args.tools_account_id,
            policy=build_role_policy(args, log_group.arn), opts=child)
        build_opts = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[build_policy]))

        def project(logical: str, project_name: str, description: str, buildspec: str) -> aws.codebuild.Project:
            return aws.codebuild.Project(
                logical,
                name=project_name,
                description=description,
                service_role=build_role.arn,
                # Lambda compute: starts in seconds and needs no VPC or Docker for a small Python step.
                environment=aws.codebuild.ProjectEnvironmentArgs(
                    type="LINUX_LAMBDA_CONTAINER", compute_type="BUILD_LAMBDA_1GB", image=LAMBDA_BUILD_IMAGE),
                source=aws.codebuild.ProjectSourceArgs(type="CODEPIPELINE", buildspec=buildspec),
                # The pipeline's output artifacts map onto the buildspec's (secondary) artifacts by name.
                artifacts=aws.codebuild.ProjectArtifactsArgs(type="CODEPIPELINE"),
                encryption_key=home.key_arn,
                logs_config=aws.codebuild.ProjectLogsConfigArgs(
                    cloudwatch_logs=aws.codebuild.ProjectLogsConfigCloudwatchLogsArgs(
                        status="ENABLED", group_name=log_group.name)),
                opts=build_opts,
            )

        projects: dict[str, aws.codebuild.Project] = {}
        if args.rolling_regions:
            projects["PinImageByDigest"] = project(
                f"{name}-build", args.build_project_name,
                f"Pins {args.repository_name} by digest for every target region",
                render_buildspec(container_name=args.container_name, target_regions=args.rolling_regions,
                                 home_region=args.home_region, timeout_seconds=args.replication_timeout_seconds))
        for build in args.blue_green_builds:
            regions = ", ".join(t["region"] for t in build.targets)
            projects[build.action_name] = project(
                f"{name}-build-{build.suffix}", build.project_name,
                f"CodeDeploy blue/green artifacts of {args.repository_name} for {build.environment} ({regions})",
                render_blue_green_buildspec(targets=list(build.targets), home_region=args.home_region,
                                            timeout_seconds=args.replication_timeout_seconds))

        role, role_policy = service_role(
            name, role_name=args.pipeline_role_name, path=args.pipeline_role_path,
            service="codepipeline.amazonaws.com", account_id=args.tools_account_id,
            policy=pipeline_role_policy(args, [pr.arn for pr in projects.values()]), opts=child)

        single_region = args.store_regions == [args.home_region]
        pipeline = aws.codepipeline.Pipeline(
            f"{name}-pipeline",
            name=args.pipeline_name,
            pipeline_type="V2",
            # A newer image supersedes one still waiting for approval: the newest build is what gets promoted.
            execution_mode="SUPERSEDED",
            role_arn=role.arn,
            artifact_stores=[
                aws.codepipeline.PipelineArtifactStoreArgs(
                    location=args.artifact_stores[r].bucket, type="S3",
                    # CodePipeline rejects `region` on the store of a single-region pipeline.
                    region=None if single_region else r,
                    encryption_key=aws.codepipeline.PipelineArtifactStoreEncryptionKeyArgs(
                        id=args.artifact_stores[r].key_arn, type="KMS"),
                )
                for r in args.store_regions
            ],
            stages=_stages(args, {action: pr.name for action, pr in projects.items()}),
            tags=args.tags,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[role_policy])),
        )

        trigger_role, _ = service_role(
            f"{name}-trigger", role_name=args.trigger_role_name, path=args.build_role_path,
            service="events.amazonaws.com", account_id=args.tools_account_id,
            policy=p.document([p.statement("StartOwnPipeline", ["codepipeline:StartPipelineExecution"],
                                           [pipeline.arn])]),
            opts=child)
        rule = aws.cloudwatch.EventRule(
            f"{name}-trigger", description=f"Push of {args.repository_name}:{args.trigger_tag} starts its pipeline",
            event_pattern=json.dumps(source_event_pattern(args.repository_name, args.trigger_tag)), opts=child)
        aws.cloudwatch.EventTarget(f"{name}-trigger-target", rule=rule.name, arn=pipeline.arn,
                                   role_arn=trigger_role.arn, opts=child)

        if args.notification_topic_arn is not None:
            aws.codestarnotifications.NotificationRule(
                f"{name}-notices", name=p.iam_name(args.pipeline_name, max_len=64, allowed=r"A-Za-z0-9_-"),
                resource=pipeline.arn, detail_type="FULL",
                event_type_ids=list(NOTICE_EVENTS),
                targets=[aws.codestarnotifications.NotificationRuleTargetArgs(
                    address=args.notification_topic_arn, type="SNS")],
                opts=child)

        self.pipeline_name = pipeline.name
        self.pipeline_arn = pipeline.arn
        self.role_arn = role.arn
        self.register_outputs({"pipelineName": pipeline.name, "roleArn": role.arn})
