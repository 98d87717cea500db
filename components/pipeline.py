"""ServicePipeline: one CodePipeline V2 per service, from an ECR push to every environment, in promotion order.

Stages::

    Source   ECR action on the service's repository and trigger tag (started by an EventBridge rule: pipelines
             created through the API get no automatic ECR trigger)
    Build    CodeBuild on Lambda compute: imageDetail.json -> imagedefinitions-<region>.json, pinned by digest to
             each region's replica, after waiting (bounded) for replication to deliver it
    per environment, in config order:
      Approve-<env>  manual approval, notice to the SNS topic (only where requireApproval is set)
      Deploy-<env>   one ECS deploy action per region, in parallel, each run as the environment's deploy role

Why these choices:

* Deploying ``repo@sha256:…`` instead of a tag: ECS resolves a tag once, so a re-pushed ``:latest`` would never
  roll out again, and a tag can point elsewhere by the time a later environment deploys (DESIGN.md pitfall 4).
* ``DeploymentTimeout`` on each ECS action: with the circuit breaker a failed rollout otherwise leaves the pipeline
  "In Progress" for 60 minutes (pitfall 7).
* One artifact store per region, each with its key's **ARN** (an alias does not resolve across accounts).
* One pipeline role and one build role per service: each can touch only its own repository, project and the
  shared artifact stores. The deploy roles trust the pipeline role *path*, so adding a service never edits them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components import policies as p
from components.artifacts import ArtifactStore
from components.buildspec import artifact_file, render_buildspec
from components.service_role import service_role

LAMBDA_BUILD_IMAGE = "aws/codebuild/amazonlinux-x86_64-lambda-standard:python3.12"
SOURCE_ARTIFACT = "SourceImage"
BUILD_ARTIFACT = "ImageDefinitions"
# The approval *request* reaches approvers through the approval action's own SNS notice (it carries the review
# link); the rule adds failures and the approval decisions, so every approve/reject is on record in the topic.
NOTICE_EVENTS = (
    "codepipeline-pipeline-pipeline-execution-failed",
    "codepipeline-pipeline-manual-approval-failed",
    "codepipeline-pipeline-manual-approval-succeeded",
)


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
        if problems:
            raise ValueError("ServicePipelineArgs: " + "; ".join(problems))

    @property
    def target_regions(self) -> list[str]:
        return list(dict.fromkeys(r for s in self.stages for r in s.regions))

    @property
    def store_regions(self) -> list[str]:
        return list(dict.fromkeys([self.home_region, *self.target_regions]))


def pipeline_role_policy(args: ServicePipelineArgs, project_arn: pulumi.Input[str]) -> dict:
    stores = [args.artifact_stores[r] for r in args.store_regions]
    statements = [
        p.statement("ReadSourceImage", ["ecr:DescribeImages"], [args.repository_arns[args.home_region]]),
        p.statement("RunBuild", ["codebuild:BatchGetBuilds", "codebuild:StartBuild"], [project_arn]),
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


def _stages(args: ServicePipelineArgs, project_name: pulumi.Input[str]) -> list:
    stages = [
        aws.codepipeline.PipelineStageArgs(name="Source", actions=[aws.codepipeline.PipelineStageActionArgs(
            name="Image", category="Source", owner="AWS", provider="ECR", version="1",
            output_artifacts=[SOURCE_ARTIFACT],
            configuration={"RepositoryName": args.repository_name, "ImageTag": args.trigger_tag},
        )]),
        aws.codepipeline.PipelineStageArgs(name="Build", actions=[aws.codepipeline.PipelineStageActionArgs(
            name="PinImageByDigest", category="Build", owner="AWS", provider="CodeBuild", version="1",
            input_artifacts=[SOURCE_ARTIFACT], output_artifacts=[BUILD_ARTIFACT],
            configuration={"ProjectName": project_name},
        )]),
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
        stages.append(aws.codepipeline.PipelineStageArgs(name=f"Deploy-{stage.name}", actions=[
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
        ]))
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
        project = aws.codebuild.Project(
            f"{name}-build",
            name=args.build_project_name,
            description=f"Pins {args.repository_name} by digest for every target region",
            service_role=build_role.arn,
            # Lambda compute: starts in seconds and needs no VPC or Docker for a small Python step.
            environment=aws.codebuild.ProjectEnvironmentArgs(
                type="LINUX_LAMBDA_CONTAINER", compute_type="BUILD_LAMBDA_1GB", image=LAMBDA_BUILD_IMAGE),
            source=aws.codebuild.ProjectSourceArgs(type="CODEPIPELINE", buildspec=render_buildspec(
                container_name=args.container_name, target_regions=args.target_regions,
                home_region=args.home_region, timeout_seconds=args.replication_timeout_seconds)),
            artifacts=aws.codebuild.ProjectArtifactsArgs(type="CODEPIPELINE"),
            encryption_key=home.key_arn,
            logs_config=aws.codebuild.ProjectLogsConfigArgs(
                cloudwatch_logs=aws.codebuild.ProjectLogsConfigCloudwatchLogsArgs(
                    status="ENABLED", group_name=log_group.name)),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[build_policy])),
        )

        role, role_policy = service_role(
            name, role_name=args.pipeline_role_name, path=args.pipeline_role_path,
            service="codepipeline.amazonaws.com", account_id=args.tools_account_id,
            policy=pipeline_role_policy(args, project.arn), opts=child)

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
            stages=_stages(args, project.name),
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
