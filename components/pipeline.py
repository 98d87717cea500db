"""ServicePipeline: one CodePipeline V2 per service, from an ECR push (or a config change) to every environment, in
promotion order.

Stages::

    Source   Image   ECR action on the service's repository and trigger tag
             Config  S3 action on the service's deploy document (``deploy.json`` in a zip, written by ``pulumi up``;
                     only where the deploy engine deploys the service)
             Both are started by EventBridge rules (pipelines created through the API get no automatic triggers):
             a push of the trigger tag, or a new version of exactly this service's document. Either way the
             execution takes the newest image *and* the newest document.
    Build    CodeBuild on Lambda compute, after waiting (bounded) for replication to deliver the image, in parallel:
               PinImageByDigest         imageDetail.json -> imagedefinitions-<region>.json for every region of the
                                        engine and ECS environments, pinned by digest to each region's replica
               BlueGreen-<env>[-<n>]    per CodeDeploy environment, up to five regions each (CodePipeline's
                                        output artifact limit), fewer where CodeBuild's 25,600-character inline
                                        buildspec would overflow: one artifact BlueGreen-<env>-<region> per region
                                        with taskdef.json, appspec.yaml and imageDetail.json (regional, by digest)
    per environment, in config order:
      Approve-<env>  manual approval, notice to the SNS topic (only where requireApproval is set)
      Deploy-<env>   before entry: the environment's deployment window, if any (a DeploymentWindow rule holds the
                     change until the window opens);
                     run order 1: rolling, blue-green, canary, linear: ONE Lambda invoke action (home region)
                     running the deploy engine for every region of the environment at once (``UserParameters`` names
                     the environment; inputs ImageDefinitions and DeployConfig); codedeploy: one CodeDeployToECS
                     action per region; existing services: one ECS action per region. The last two run as the
                     environment's deploy role in that region. Smoke tests run inside these deployments (an ECS
                     lifecycle hook or CodeDeploy hook on test traffic; the engine after a rolling deployment);
                     run order 2: ``Bake`` (where ``bakeMinutes`` > 0): the engine's function watches the service's
                     alarms in every region of the environment through the deploy role;
                     on failure: ROLLBACK, CodePipeline re-deploys the last successful execution's artifacts.

Why these choices:

* The deploy engine instead of the ECS standard action: that action copies the service's *running* task
  definition and swaps only the image, so cpu, memory, environment or secrets changes never reached the tasks
  (DESIGN.md pitfall 12). The engine registers exactly the task definition rendered from the stack config, waits
  for ECS's own rolling, blue-green, canary or linear deployment and, if one region fails, puts every region of
  the environment back. A Lambda invoke action may wait 24 hours (a reply with a continuation token at least every
  20 minutes), enough for ECS's longest bake; see :mod:`components.deploy_engine`. CodePipeline's per-action
  ``timeoutInMinutes`` applies to manual approvals only, so the engine enforces the environment's deploy timeout
  itself (it is at most 1440 minutes, the action's own limit).
* The document is a *source*: each execution deploys the snapshot of the config it started with, and a
  superseding execution carries the newer one. Existing services (``existing: true``) keep the ECS action: their
  task definition is not crossdeploy's, so swapping the image is all there is to do.
* Deploying ``repo@sha256:…`` instead of a tag: ECS resolves a tag once, so a re-pushed ``:latest`` would never
  roll out again, and a tag can point elsewhere by the time a later environment deploys (pitfall 4).
* ``DeploymentTimeout`` on each ECS action: with the circuit breaker a failed rollout otherwise leaves the pipeline
  "In Progress" for 60 minutes (pitfall 7).
* An artifact store in the home region and in each region where an ECS or CodeDeploy action runs, each with its
  key's **ARN** (an alias does not resolve across accounts). The engine's action runs in the home region.
* Stage rollback and windows are CodePipeline V2's own (``onFailure`` result ROLLBACK, a ``beforeEntry``
  condition): they show in the console, an operator can override a window (``override-stage-condition``), and no
  code of ours decides them. Rollback needs an earlier successful execution (the first run of a stage has nothing
  to return to: it fails and stays failed, and the engine has already put back what it changed) and an execution
  mode other than PARALLEL (:data:`EXECUTION_MODE`).
* The bake is an action and not an on-success condition with a CloudWatchAlarm rule: that rule reads alarms of the
  pipeline's own account, and the alarms live in the workload accounts. The deploy role there can read them
  (``cloudwatch:DescribeAlarms`` on the stack's alarm names), so the engine's function, which already assumes it,
  watches them; a Lambda invoke action may wait up to 24 hours.
* One pipeline role and one build role per service: each can touch only its own repository, projects, document and
  the shared artifact stores; the pipeline role may invoke exactly the engine function, and assumes deploy roles
  only where it still runs ECS or CodeDeploy actions. The deploy roles trust the pipeline role *path*, so adding a
  service never edits them.
* CodeDeploy builds have a project each (a buildspec names its output artifacts) but share the service's build
  role and log group; each artifact carries all three files CodeDeployToECS reads, so the action takes exactly one
  input artifact and names it in all three of its ``*Artifact`` keys.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pulumi
import pulumi_aws as aws

from components import limits, naming
from components import policies as p
from components.artifacts import ArtifactStore
from components.buildspec import (
    BLUE_GREEN_FILES,
    MAX_OUTPUT_ARTIFACTS,
    BuildspecTooLarge,
    artifact_file,
    render_blue_green_buildspec,
    render_buildspec,
)
from components.config import EnvironmentConfig, ServiceConfig, StackConfig
from components.service_role import service_role
from components.task_definition import IMAGE_PLACEHOLDER, task_definition
from handlers import image_definitions as idf

if TYPE_CHECKING:  # components the pipelines are wired to (their modules need not load with this one)
    from components.artifacts import ArtifactStores
    from components.deploy_config import DeployConfigStore
    from components.deploy_engine import DeployEngine
    from components.deploy_role import DeployRole
    from components.notifications import Notifications
    from components.registry import Registry

LAMBDA_BUILD_IMAGE = "aws/codebuild/amazonlinux-x86_64-lambda-standard:python3.12"
SOURCE_ARTIFACT = "SourceImage"
BUILD_ARTIFACT = "ImageDefinitions"
CONFIG_ARTIFACT = "DeployConfig"
"""The deploy document source (names fixed by :mod:`handlers.pipeline_deploy`, which reads both by name)."""
ENGINE_ACTION_LIMIT_MINUTES = 24 * 60
"""CodePipeline's limit for a Lambda invoke action with continuation tokens."""
MAX_USER_PARAMETERS = limits.CODEPIPELINE_USER_PARAMETERS_CHARS
"""Checked at config load (:func:`components.limits.bake_user_parameters_chars`), before any resource exists."""
EXECUTION_MODE = "SUPERSEDED"
"""A newer image supersedes one still waiting for approval or a window: the newest build is what gets promoted. It
must not be PARALLEL: CodePipeline rolls a stage back (``onFailure: ROLLBACK``) only in SUPERSEDED or QUEUED
mode."""
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
    smoke_hook_arn: str | None = None
    """The environment's smoke-test function in this region (:func:`components.naming.smoke_hook_function_arn`),
    when the service has a ``smokeTest``: the AppSpec runs it at ``AfterAllowTestTraffic``. Default none."""


@dataclass(frozen=True)
class Bake:
    """The alarm bake after an environment's deployment: a ``Bake`` action (the deploy engine's function, bake mode,
    see :mod:`handlers.pipeline_deploy`) reads the services' alarms in the workload account through the deploy role
    for ``minutes``; an alarm in ALARM fails the stage, which then rolls back."""

    minutes: int
    role_arn: str
    """The deploy role of the environment's account: the alarms live there, and only a role there can read them."""
    regions: tuple[str, ...]
    alarms: tuple[str, ...]
    """Alarm names, the same in every region (:func:`components.naming.bake_alarm_names`)."""

    def user_parameters(self, environment: str) -> str:
        return json.dumps({"environment": environment, "bake": {
            "minutes": self.minutes, "roleArn": self.role_arn, "regions": list(self.regions),
            "alarms": list(self.alarms)}}, separators=(",", ":"))


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
    none."""
    engine: bool = False
    """Deploy with the deploy engine: one Lambda invoke action for all regions, strategy and task definition from
    the deploy document. Default false: with no ``blue_green`` targets either, ECS standard deploy actions on
    ``cluster``/``service`` (image only; existing services)."""
    deploy_timeout_minutes: int | None = None
    """The environment's deploy timeout (enforced by the engine), checked against the action's 24-hour limit."""
    window: tuple[str, str] | None = None
    """(cron, time zone) of the deployment window: the stage's before-entry condition holds a change until it opens.
    Default none: any time."""
    bake: Bake | None = None
    """Alarm bake after the deployment. Default none."""

    def __post_init__(self) -> None:
        if self.bake is not None:
            if not 1 <= self.bake.minutes <= ENGINE_ACTION_LIMIT_MINUTES or not self.bake.alarms:
                raise ValueError(f"EnvironmentStage {self.name}: a bake needs 1-{ENGINE_ACTION_LIMIT_MINUTES} "
                                 f"minutes and at least one alarm, got {self.bake.minutes} and {self.bake.alarms}")
        if self.engine and self.blue_green:
            raise ValueError(f"EnvironmentStage {self.name}: engine and blue_green (CodeDeploy) exclude each other")
        if self.engine and self.deploy_timeout_minutes is not None and not (
                0 < self.deploy_timeout_minutes <= ENGINE_ACTION_LIMIT_MINUTES):
            raise ValueError(f"EnvironmentStage {self.name}: deploy_timeout_minutes must be 1-"
                             f"{ENGINE_ACTION_LIMIT_MINUTES} (the Lambda invoke action's limit), got "
                             f"{self.deploy_timeout_minutes}")
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
    def ecs_actions(self) -> bool:
        """ECS standard deploy actions (image only), one per region."""
        return not self.engine and not self.blue_green

    @property
    def blue_green_targets(self) -> list[BlueGreenTarget]:
        """The targets in the stage's region order."""
        by_region = {t.region: t for t in self.blue_green}
        return [by_region[r] for r in self.regions if r in by_region]


def stage_count(approvals: Iterable[bool]) -> int:
    """The pipeline's stages: Source, Build, and per environment its Deploy stage plus an Approve stage where it
    asks for approval."""
    return 2 + sum(2 if approval else 1 for approval in approvals)


def blue_green_groups(specs: list[dict], home_region: str, timeout_seconds: int) -> list[list[dict]]:
    """`specs` in order, in groups one build each can carry: at most five (CodePipeline's output artifacts per
    action) and no more than fit CodeBuild's inline buildspec limit with the embedded handler."""
    groups: list[list[dict]] = []
    for spec in specs:
        if groups and len(groups[-1]) < MAX_OUTPUT_ARTIFACTS:
            try:
                render_blue_green_buildspec(targets=[*groups[-1], spec], home_region=home_region,
                                            timeout_seconds=timeout_seconds)
                groups[-1].append(spec)
                continue
            except BuildspecTooLarge:
                pass
        # Alone, a target that still does not fit is refused by the build's own rendering, naming the size.
        groups.append([spec])
    return groups


def blue_green_artifact(environment: str, region: str) -> str:
    """The pipeline artifact (and build output directory) of one blue/green environment and region."""
    return p.iam_name("BlueGreen", environment, region, max_len=100, allowed=r"A-Za-z0-9_-")


def blue_green_spec(stage: EnvironmentStage, target: BlueGreenTarget) -> dict:
    """One entry of the handler's BLUE_GREEN_TARGETS (see ``handlers.image_definitions.parse_blue_green_targets``)."""
    return environment_blue_green_spec(stage.name, target)


def environment_blue_green_spec(environment: str, target: BlueGreenTarget) -> dict:
    """:func:`blue_green_spec` from the environment's name: the config check measures a target's buildspec with it
    (:mod:`components.limits`) before any stage exists."""
    return {
        "artifact": blue_green_artifact(environment, target.region),
        "region": target.region,
        "taskDefinition": target.task_definition,
        "containerName": target.container_name,
        "containerPort": target.container_port,
        **({"smokeHookArn": target.smoke_hook_arn} if target.smoke_hook_arn else {}),
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
    """What `service`'s pipeline deploys in each region of `env` with CodeDeploy; empty for any other strategy.

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
            # The hook the workload creates where the environment has smoke tests (components.workload).
            smoke_hook_arn=naming.smoke_hook_function_arn(cfg, env, region) if service.smoke_test else None,
        )
        for region in env.regions
    )


@dataclass(frozen=True)
class EngineWiring:
    """What the engine stages need: the function to invoke, and the service's deploy document."""

    function_name: pulumi.Input[str]
    function_arn: pulumi.Input[str]
    config_bucket: pulumi.Input[str]
    """The deploy document bucket (:class:`components.deploy_config.DeployConfigStore`), in the home region."""
    config_bucket_arn: pulumi.Input[str]
    config_key: str
    """This service's document (:func:`components.naming.deploy_document_key`)."""


def environment_stages(cfg: StackConfig, service: ServiceConfig,
                       deploy_role_arns: Mapping[str, pulumi.Input[str]]) -> tuple[EnvironmentStage, ...]:
    """`service`'s pipeline stages, one per environment in promotion order: the engine for every environment
    :meth:`~components.config.StackConfig.engine_environments` names, CodeDeploy for ``codedeploy`` ones, ECS
    actions for the rest (existing services). `deploy_role_arns`: workload account -> its deploy role."""
    engine = {env.name for env in cfg.engine_environments(service)}
    baked = {env.name for env in cfg.baked_environments(service)}
    return tuple(
        EnvironmentStage(name=env.name, account_id=env.account_id, regions=tuple(env.regions),
                         deploy_role_arn=deploy_role_arns[env.account_id], cluster=service.cluster,
                         service=service.service, require_approval=env.require_approval,
                         blue_green=blue_green_targets(cfg, env, service), engine=env.name in engine,
                         deploy_timeout_minutes=env.deploy_timeout_minutes if env.name in engine else None,
                         window=(env.deployment_window.cron, env.deployment_window.time_zone)
                         if env.deployment_window else None,
                         bake=stage_bake(cfg, env, service) if env.name in baked else None)
        for env in cfg.environments
    )


def stage_bake(cfg: StackConfig, env: EnvironmentConfig, service: ServiceConfig) -> Bake:
    """The bake after `service`'s deployment to `env` (where :meth:`StackConfig.baked_environments` names it); its
    UserParameters are measured at config load (:mod:`components.limits`)."""
    return Bake(env.bake, naming.deploy_role_arn(cfg, env.account_id), tuple(env.regions),
                naming.bake_alarm_names(cfg, env, service))


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
    engine: EngineWiring | None = None
    """Required when a stage deploys with the engine. Default none."""
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
        missing = sorted(set(self.store_regions) - set(self.artifact_stores))
        if missing:
            problems.append(f"artifact_stores: no store for regions {missing}")
        if self.invokes_engine and self.engine is None:
            problems.append("engine: required when a stage deploys with the deploy engine or bakes")
        needed = {self.home_region, *self.target_regions}
        missing_repos = sorted(needed - set(self.repository_arns))
        if missing_repos:
            problems.append(f"repository_arns: no repository for regions {missing_repos}")
        if not 1 <= self.deployment_timeout_minutes <= 60:
            problems.append(f"deployment_timeout_minutes: ECS accepts 1-60, got {self.deployment_timeout_minutes}")
        if len({s.name for s in self.stages}) != len(self.stages):
            problems.append("stages: environment names must be unique")
        if any(s.require_approval for s in self.stages) and self.notification_topic_arn is None:
            problems.append("notification_topic_arn: required when a stage asks for approval")
        # Checked at config load (components.limits) with the same counts; kept for callers other than the program.
        stages = stage_count(s.require_approval for s in self.stages)
        if stages > limits.CODEPIPELINE_STAGES:
            problems.append(f"stages: {stages}, more than CodePipeline's {limits.CODEPIPELINE_STAGES} stages")
        build_actions = (1 if self.image_definition_regions else 0) + len(self.blue_green_builds)
        if build_actions > limits.CODEPIPELINE_ACTIONS_PER_STAGE:
            problems.append(f"stages: {build_actions} build actions, more than CodePipeline's "
                            f"{limits.CODEPIPELINE_ACTIONS_PER_STAGE} per stage")
        if problems:
            raise ValueError("ServicePipelineArgs: " + "; ".join(problems))

    @property
    def target_regions(self) -> list[str]:
        return list(dict.fromkeys(r for s in self.stages for r in s.regions))

    @property
    def image_definition_regions(self) -> list[str]:
        """Regions of the engine and ECS stages: those the imagedefinitions build pins the image for."""
        return list(dict.fromkeys(r for s in self.stages if not s.blue_green for r in s.regions))

    @property
    def uses_engine(self) -> bool:
        return any(s.engine for s in self.stages)

    @property
    def invokes_engine(self) -> bool:
        """Whether the engine's function runs in this pipeline at all: a deployment or a bake."""
        return self.uses_engine or any(s.bake for s in self.stages)

    @property
    def active_engine(self) -> EngineWiring | None:
        """The engine wiring where some stage deploys with it (the invoke right, the Config source and its
        trigger); None otherwise, even if wiring was passed."""
        return self.engine if self.uses_engine else None

    @property
    def action_regions(self) -> list[str]:
        """Regions where ECS or CodeDeploy actions run (the engine's action runs in the home region)."""
        return list(dict.fromkeys(r for s in self.stages if not s.engine for r in s.regions))

    @property
    def assumes_deploy_roles(self) -> list[pulumi.Input[str]]:
        """Deploy roles the pipeline itself runs actions as: those of its ECS and CodeDeploy stages."""
        # Environments sharing an account share its deploy role (the same Output object): list it once.
        return list({id(s.deploy_role_arn): s.deploy_role_arn for s in self.stages if not s.engine}.values())

    @functools.cached_property
    def blue_green_builds(self) -> list[BlueGreenBuild]:
        """Per blue/green stage, its regions in groups (:func:`blue_green_groups`), one build action (and project)
        each."""
        builds = []
        for stage in self.stages:
            groups = blue_green_groups([blue_green_spec(stage, t) for t in stage.blue_green_targets],
                                       self.home_region, self.replication_timeout_seconds)
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
        """The home region and every region an action runs in: each needs an artifact store."""
        return list(dict.fromkeys([self.home_region, *self.action_regions]))


def service_pipeline_args(cfg: StackConfig, service: ServiceConfig, provider: aws.Provider, registry: Registry,
                          artifacts: ArtifactStores, deploy_roles: Mapping[str, DeployRole],
                          deploy_config: DeployConfigStore, engine: DeployEngine | None,
                          notifications: Notifications) -> ServicePipelineArgs:
    """`service`'s pipeline, from its repository through every environment (:func:`environment_stages`);
    `provider`: the tools account's, in the home region; `deploy_roles`: workload account -> its deploy role;
    `engine`: none when no pipeline deploys with it."""
    safe = naming.safe(service.name)
    return ServicePipelineArgs(
        provider=provider,
        partition=cfg.partition,
        tools_account_id=cfg.tools_account_id,
        home_region=cfg.tools_region,
        repository_name=service.name,
        repository_arns=registry.repositories[service.name].arns,
        container_name=service.container,
        trigger_tag=service.trigger_tag,
        stages=environment_stages(cfg, service, {a: r.role_arn for a, r in deploy_roles.items()}),
        engine=EngineWiring(engine.function_name, engine.function_arn, deploy_config.bucket, deploy_config.bucket_arn,
                            deploy_config.keys[service.name]) if engine else None,
        artifact_stores=artifacts.stores,
        pipeline_name=p.iam_name(cfg.name_prefix, safe, max_len=100),
        # CodeBuild project names allow no '.', which ECR repository names may contain.
        build_project_name=p.iam_name(cfg.name_prefix, safe, "imagedefs", max_len=150, allowed=r"A-Za-z0-9_-"),
        pipeline_role_name=p.iam_name(cfg.stack, safe, "pipeline"),
        pipeline_role_path=naming.iam_path(cfg, "pipeline"),
        build_role_name=p.iam_name(cfg.stack, safe, "build"),
        build_role_path=naming.iam_path(cfg, "build"),
        trigger_role_name=p.iam_name(cfg.stack, safe, "trigger"),
        notification_topic_arn=notifications.topic_arn,
        notification_key_arn=notifications.key_arn,
    )


def pipeline_role_policy(args: ServicePipelineArgs, project_arns: list[pulumi.Input[str]]) -> dict:
    """The pipeline role's grant; `project_arns` are all of the service's build projects."""
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
    ]
    if args.assumes_deploy_roles:
        statements.append(p.statement("AssumeDeployRoles", ["sts:AssumeRole"], args.assumes_deploy_roles))
    if args.invokes_engine and args.engine is not None:
        statements.append(p.statement("InvokeDeployEngine", ["lambda:InvokeFunction"], [args.engine.function_arn]))
    engine = args.active_engine
    if engine is not None:
        statements += [
            # The Config source: exactly this service's document (decrypted with the home key above).
            p.statement("ReadDeployDocument", ["s3:GetObject", "s3:GetObjectVersion"],
                        [pulumi.Output.concat(engine.config_bucket_arn, "/", engine.config_key)]),
            p.statement("ReadDeployDocumentBucket", ["s3:GetBucketVersioning"], [engine.config_bucket_arn]),
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


def config_event_pattern(bucket: str, key: str) -> dict:
    """Exactly a new version of one deploy document (S3's EventBridge "Object Created" event)."""
    return {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [bucket]}, "object": {"key": [key]}},
    }


def engine_user_parameters(environment: str) -> str:
    """The invoke action's ``UserParameters``: which environment of the document to deploy."""
    return json.dumps({"environment": environment})


def _build_actions(args: ServicePipelineArgs, project_names: dict[str, pulumi.Input[str]]) -> list:
    """The Build stage: all actions in parallel, each waiting for replication to its own regions."""
    actions = []
    if args.image_definition_regions:
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
    if stage.engine:
        assert args.engine is not None  # checked by ServicePipelineArgs
        # One action for every region: the engine deploys them in parallel and puts all back if one fails.
        return [aws.codepipeline.PipelineStageActionArgs(
            name="Deploy", category="Invoke", owner="AWS", provider="Lambda", version="1",
            input_artifacts=[BUILD_ARTIFACT, CONFIG_ARTIFACT],
            configuration={"FunctionName": args.engine.function_name,
                           "UserParameters": engine_user_parameters(stage.name)},
        )]
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


def _source_actions(args: ServicePipelineArgs) -> list:
    actions = [aws.codepipeline.PipelineStageActionArgs(
        name="Image", category="Source", owner="AWS", provider="ECR", version="1",
        output_artifacts=[SOURCE_ARTIFACT],
        configuration={"RepositoryName": args.repository_name, "ImageTag": args.trigger_tag},
    )]
    engine = args.active_engine
    if engine is not None:
        actions.append(aws.codepipeline.PipelineStageActionArgs(
            name="Config", category="Source", owner="AWS", provider="S3", version="1",
            output_artifacts=[CONFIG_ARTIFACT],
            # Started by the EventBridge rule on the object instead of polling.
            configuration={"S3Bucket": engine.config_bucket, "S3ObjectKey": engine.config_key,
                           "PollForSourceChanges": "false"},
        ))
    return actions


def _stages(args: ServicePipelineArgs, project_names: dict[str, pulumi.Input[str]]) -> list:
    """`project_names`: build action name -> its CodeBuild project's name."""
    stages = [
        aws.codepipeline.PipelineStageArgs(name="Source", actions=_source_actions(args)),
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
        stages.append(aws.codepipeline.PipelineStageArgs(
            name=f"Deploy-{stage.name}",
            actions=[*_deploy_actions(args, stage), *_bake_actions(args, stage)],
            before_entry=_window_condition(stage.window) if stage.window else None,
            # Any failure (deployment, smoke test, bake) re-deploys the last successful execution's artifacts.
            on_failure=aws.codepipeline.PipelineStageOnFailureArgs(result="ROLLBACK")))
    return stages


def _window_condition(window: tuple[str, str]) -> aws.codepipeline.PipelineStageBeforeEntryArgs:
    """The DeploymentWindow rule: outside the window the rule keeps the execution waiting at the stage's entry (an
    operator can override it: ``aws codepipeline override-stage-condition``); ``FAIL`` applies only if the rule
    itself fails."""
    cron, zone = window
    cp = aws.codepipeline
    return cp.PipelineStageBeforeEntryArgs(condition=cp.PipelineStageBeforeEntryConditionArgs(
        result="FAIL",
        rules=[cp.PipelineStageBeforeEntryConditionRuleArgs(
            name="DeploymentWindow",
            rule_type_id=cp.PipelineStageBeforeEntryConditionRuleRuleTypeIdArgs(
                category="Rule", owner="AWS", provider="DeploymentWindow", version="1"),
            configuration={"Cron": cron, "TimeZone": zone})]))


def _bake_actions(args: ServicePipelineArgs, stage: EnvironmentStage) -> list:
    if stage.bake is None:
        return []
    assert args.engine is not None  # checked by ServicePipelineArgs
    # After every deploy action of the stage (run order 2); no artifacts: it only reads alarms.
    return [aws.codepipeline.PipelineStageActionArgs(
        name="Bake", category="Invoke", owner="AWS", provider="Lambda", version="1", run_order=2,
        configuration={"FunctionName": args.engine.function_name,
                       "UserParameters": stage.bake.user_parameters(stage.name)},
    )]


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
        if args.image_definition_regions:
            projects["PinImageByDigest"] = project(
                f"{name}-build", args.build_project_name,
                f"Pins {args.repository_name} by digest for every target region",
                render_buildspec(container_name=args.container_name, target_regions=args.image_definition_regions,
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
            execution_mode=EXECUTION_MODE,
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
        engine = args.active_engine
        if engine is not None:
            key = engine.config_key
            config_rule = aws.cloudwatch.EventRule(
                f"{name}-config-trigger",
                description=f"A new deploy document of {args.repository_name} (pulumi up) starts its pipeline",
                event_pattern=pulumi.Output.from_input(engine.config_bucket).apply(
                    lambda bucket: json.dumps(config_event_pattern(bucket, key))),
                opts=child)
            aws.cloudwatch.EventTarget(f"{name}-config-trigger-target", rule=config_rule.name, arn=pipeline.arn,
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
