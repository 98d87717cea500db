"""The workload side of the cross-account trust: one deploy role per workload account.

The deploy engine (:mod:`components.deploy_engine`) assumes it, and CodePipeline's ECS and CodeDeployToECS actions
run *as* it (their ``role_arn``), in the workload account, in the action's region. The role can do exactly what
they do and nothing more:

* describe and update the configured ECS services (by ARN, per region), and follow and stop their ECS service
  deployments (list them on the service; describe and stop them on the service *and* the service-deployment ARN,
  both of which IAM checks) — the engine follows ECS's own rolling, blue-green, canary and linear deployments and
  stops one with ECS's rollback when another region fails;
* register and describe task definitions (ECS supports no resource-level permissions for these two), tag only a
  revision being registered;
* pass only the services' task and execution roles, and only to ``ecs-tasks.amazonaws.com``; in accounts with an
  ECS-native blue-green, canary or linear environment also the ECS infrastructure role, only to
  ``ecs.amazonaws.com`` (ECS moves the listener rules with it);
* for CodeDeploy environments, start CodeDeploy deployments: register the AppSpec revision with the application,
  create and follow a deployment of the service's deployment group, read its deployment configuration, each on
  exactly the ARNs of the configured applications, groups and configurations in their regions;
* read artifacts from the tools account's buckets and decrypt them with the artifact keys: the other two halves
  of that grant are the bucket and key policies in :mod:`components.artifacts`;
* where a ``rolling`` environment of the account smoke-tests its services, describe target groups and load
  balancers (the engine finds the address it calls; Elastic Load Balancing cannot scope its Describe actions);
* where an environment of the account bakes, read the stack's alarms there (``cloudwatch:DescribeAlarms`` on
  ``alarm:<prefix>-<environment>-*`` per region): the bake after a deployment watches them from the tools account.

Trust: only roles under the stack's pipeline role path in the tools account, and the engine, push-deploy and
release roles where the stack has them (``aws:PrincipalArn`` with ``ArnLike``). One pipeline role per service keeps
each pipeline's own rights minimal, and the path keeps the trust policy one line long however many services there
are (trust policies are capped at 2,048 characters).

Grant size grows with clusters and regions, not services (:func:`service_resources`): IAM caps a role's inline
policies at 10,240 characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components import naming
from components import policies as p
from components.artifacts import ArtifactStore
from components.config import StackConfig
from components.deploy_engine import engine_accounts
from components.workload import ECS, needs_infrastructure_role

ECS_TASKS = "ecs-tasks.amazonaws.com"


@dataclass(frozen=True)
class DeployTarget:
    """An ECS service the role may deploy to."""

    region: str
    cluster_arn: str
    service_arn: str
    cluster_owned: bool = False
    """The stack creates this cluster, so every service in it is one of the stack's: the grant names
    ``service/<cluster>/*`` instead of each service. Default false: the service's own ARN (existing services, in
    clusters other workloads share)."""


@dataclass(frozen=True)
class CodeDeployTarget:
    """A CodeDeploy deployment group (of an ECS service) the role may deploy through, in one region."""

    region: str
    application_name: str
    deployment_group_name: str
    deployment_config_name: str
    """The group's deployment configuration: predefined (``CodeDeployDefault.ECS…``) or custom."""


@dataclass(frozen=True)
class DeployRoleArgs:
    provider: aws.Provider
    """A provider for the workload account (any of its regions: IAM is global)."""
    partition: str
    account_id: str
    role_name: str
    path: str
    """IAM path of the role, e.g. ``/crossdeploy/prod/deploy/``."""
    tools_account_id: str
    trusted_principal_patterns: tuple[str, ...]
    """``aws:PrincipalArn`` patterns of the roles allowed to assume this one (:func:`trusted_principals`): the
    stack's pipeline role path, the deploy engine's role, and the push and release roles where those are used."""
    targets: tuple[DeployTarget, ...]
    passable_role_arns: tuple[str, ...]
    """Task and execution roles of the targets; nothing else can be passed."""
    artifact_bucket_arns: tuple[pulumi.Input[str], ...] = field(default_factory=tuple)
    artifact_key_arns: tuple[pulumi.Input[str], ...] = field(default_factory=tuple)
    scheduled_task_regions: tuple[str, ...] = ()
    """Regions whose EventBridge rule targets a release may update (scheduled tasks). Default none: no rights."""
    scheduled_task_role_names: tuple[str, ...] = ()
    """Roles scheduled tasks use (EventBridge role, task and execution roles): passed when a rule target is
    updated. Default none."""
    codedeploy_targets: tuple[CodeDeployTarget, ...] = ()
    """Deployment groups of blue/green environments (CodeDeployToECS actions). Default none: no CodeDeploy rights."""
    infrastructure_role_arns: tuple[str, ...] = ()
    """The ECS infrastructure role of this account, where an ECS-native blue-green, canary or linear environment
    runs: passed only to ``ecs.amazonaws.com``. Default none."""
    smoke_test_lookup: bool = False
    """Whether the engine smoke-tests a ``rolling`` environment of this account after deploying it: adds reading the
    services' target groups and load balancers (to find the address it calls). Default false."""
    alarm_arns: tuple[str, ...] = ()
    """Alarms the bake after a deployment reads (``cloudwatch:DescribeAlarms``), as ARN patterns. Default none."""
    codedeploy_release: bool = False
    """Whether a release (Step Functions) deploys to the codedeploy_targets too: adds reading the deployment group,
    listing its deployments and stopping one (a release's rollback). Default false."""
    max_session_seconds: int = 3600
    """Session length. Default one hour: CodePipeline re-assumes the role per action."""

    def __post_init__(self) -> None:
        problems = []
        if not self.targets:
            problems.append("targets: at least one ECS service is required")
        if not self.path.startswith("/") or not self.path.endswith("/"):
            problems.append(f"path: must start and end with '/', got {self.path!r}")
        tools_roles = f"arn:{self.partition}:iam::{self.tools_account_id}:role/"
        if not self.trusted_principal_patterns or not all(
                t.startswith(tools_roles) for t in self.trusted_principal_patterns):
            problems.append("trusted_principal_patterns: must name roles of the tools account")
        for t in self.codedeploy_targets:
            names = (t.application_name, t.deployment_group_name, t.deployment_config_name)
            # A '*' or an empty name would silently widen the grant to every application, group or configuration.
            if any(not n or "*" in n or "?" in n for n in (t.region, *names)):
                problems.append(f"codedeploy_targets: region and names must be non-empty, without wildcards: {t}")
        for arn in self.infrastructure_role_arns:
            if "*" in arn or "?" in arn or not arn.startswith(f"arn:{self.partition}:iam::{self.account_id}:role/"):
                problems.append(f"infrastructure_role_arns: exact roles of account {self.account_id}, got {arn!r}")
        if problems:
            raise ValueError("DeployRoleArgs: " + "; ".join(problems))


def trusted_principals(cfg: StackConfig, account: str) -> tuple[str, ...]:
    """Who may assume the deploy role of `account`: the pipeline role path, the deploy engine's role where it
    deploys to this account, and the push and release roles where the stack has them."""
    return (naming.pipeline_role_pattern(cfg),
            *([naming.engine_role_arn(cfg)] if account in engine_accounts(cfg) else []),
            *([naming.push_role_arn(cfg)] if cfg.push_services else []),
            *([naming.release_steps_role_arn(cfg)] if cfg.release else []))


def deploy_targets(cfg: StackConfig, account: str) -> tuple[DeployTarget, ...]:
    """Every ECS service the stack deploys to in `account`, in each of its regions there."""
    return tuple(
        DeployTarget(region, naming.ecs_cluster_arn(cfg, account, region, s.cluster),
                     naming.ecs_service_arn(cfg, account, region, s), cluster_owned=not s.existing)
        for s in cfg.services for region in cfg.account_regions(account)
    )


def passable_roles(cfg: StackConfig, account: str) -> tuple[str, ...]:
    """The roles crossdeploy creates for its services (one path), and those existing services name."""
    return tuple(dict.fromkeys([
        *([naming.workload_role_pattern(cfg, account)] if cfg.workload_services else []),
        *(arn for s in cfg.services if s.existing for arn in naming.workload_role_arns(cfg, account, s))]))


def infrastructure_roles(cfg: StackConfig, account: str) -> tuple[str, ...]:
    """The ECS infrastructure role, where `account` runs an ECS-native blue-green, canary or linear environment
    for services crossdeploy creates; else none."""
    # The same rule that makes the workload side create the role (one definition, so the two cannot disagree).
    return (naming.infrastructure_role_arn(cfg, account),) if needs_infrastructure_role(cfg, account) else ()


def smoke_test_lookup(cfg: StackConfig, account: str) -> bool:
    """Whether the engine smoke-tests services after ``rolling`` deployments in `account` (it then looks up their
    load balancers)."""
    return any(env.strategy == "rolling" and env.account_id == account for env in cfg.environments) and any(
        s.smoke_test for s in cfg.workload_services)


def bake_alarm_arns(cfg: StackConfig, account: str) -> tuple[str, ...]:
    """The alarms bakes read in `account`: per baked environment and region, the names
    :func:`components.naming.bake_alarm_names` gives (all start with ``<prefix>-<environment>-``)."""
    return tuple(dict.fromkeys(
        p.arn(cfg.partition, "cloudwatch", region, account, f"alarm:{cfg.name_prefix}-{env.name}-*")
        for env in cfg.environments if env.account_id == account and env.bake > 0 and cfg.workload_services
        for region in env.regions))


def deploy_role_args(cfg: StackConfig, account: str, provider: aws.Provider,
                     stores: Mapping[str, ArtifactStore]) -> DeployRoleArgs:
    """The deploy role of `account` as the stack config asks for it; `stores`: the artifact store per region."""
    regions = cfg.account_regions(account)
    return DeployRoleArgs(
        provider=provider,
        partition=cfg.partition,
        account_id=account,
        role_name=naming.deploy_role_name(cfg),
        path=naming.iam_path(cfg, "deploy"),
        tools_account_id=cfg.tools_account_id,
        trusted_principal_patterns=trusted_principals(cfg, account),
        targets=deploy_targets(cfg, account),
        passable_role_arns=passable_roles(cfg, account),
        artifact_bucket_arns=tuple(stores[r].bucket_arn for r in regions),
        artifact_key_arns=tuple(stores[r].key_arn for r in regions),
        scheduled_task_regions=regions if cfg.release else (),
        scheduled_task_role_names=tuple(cfg.release.pass_role_names) if cfg.release else (),
        codedeploy_targets=codedeploy_targets(cfg, account),
        infrastructure_role_arns=infrastructure_roles(cfg, account),
        smoke_test_lookup=smoke_test_lookup(cfg, account),
        alarm_arns=bake_alarm_arns(cfg, account),
        codedeploy_release=cfg.release is not None,
    )


def codedeploy_targets(cfg: StackConfig, account: str) -> tuple[CodeDeployTarget, ...]:
    """Every deployment group the pipelines deploy through in `account`: each codedeploy environment there, in each
    of its regions, for each service crossdeploy creates (only those have a generated task definition)."""
    targets = (
        CodeDeployTarget(region, naming.codedeploy_application_name(cfg, env.name),
                         naming.deployment_group_name(cfg, service), naming.deployment_config_name(cfg, env))
        for env in cfg.environments if env.account_id == account and env.strategy == "codedeploy"
        for region in env.regions
        for service in cfg.services if not service.existing
    )
    return tuple(dict.fromkeys(targets))


def codedeploy_statements(args: DeployRoleArgs) -> list[p.Statement]:
    """What CodeDeployToECS calls as the deploy role, each action on the resource type the Service Authorization
    Reference gives it: RegisterApplicationRevision, GetApplicationRevision and GetApplication on the application;
    CreateDeployment and GetDeployment on the deployment group; GetDeploymentConfig on the configuration."""
    def arns(resource: str) -> list[str]:
        return sorted({p.arn(args.partition, "codedeploy", t.region, args.account_id, resource.format(t=t))
                       for t in args.codedeploy_targets})

    return [
        p.statement("RegisterBlueGreenRevisions", ["codedeploy:GetApplication", "codedeploy:GetApplicationRevision",
                                                   "codedeploy:RegisterApplicationRevision"],
                    arns("application:{t.application_name}")),
        p.statement("DeployBlueGreen", ["codedeploy:CreateDeployment", "codedeploy:GetDeployment",
                                        # A release also checks the group's service and running deployments, and
                                        # stops its own deployment when it rolls the release back.
                                        *(["codedeploy:GetDeploymentGroup", "codedeploy:ListDeployments",
                                           "codedeploy:StopDeployment"] if args.codedeploy_release else [])],
                    # Every group of the stack's own applications: one ARN per application and region, not per service
                    # (the inline policy limit); the applications hold nothing but the stack's services.
                    arns("deploymentgroup:{t.application_name}/*")),
        # Predefined configurations (CodeDeployDefault.*) are named in this account and region too, as the CDK's
        # grant for this action names them.
        p.statement("ReadDeploymentConfigs", ["codedeploy:GetDeploymentConfig"],
                    arns("deploymentconfig:{t.deployment_config_name}")),
    ]


def _unique_clusters(targets: tuple[DeployTarget, ...]) -> list[DeployTarget]:
    return list({t.cluster_arn: t for t in sorted(targets, key=lambda t: t.cluster_arn)}.values())


def deploy_trust_policy(args: DeployRoleArgs) -> dict:
    return p.assume_role_trust(
        {"AWS": p.account_root(args.partition, args.tools_account_id)},
        p.principal_arn_condition(sorted(args.trusted_principal_patterns), operator="ArnLike"),
        sid="ToolsDeliveryRoles",
    )


def service_resources(args: DeployRoleArgs) -> list[str]:
    """The services the role may update: one pattern per (region, cluster) the stack owns, plus each other service.

    Listing every service would not fit: IAM caps a role's inline policies at 10,240 characters, which one ARN per
    service and region exceeds at a few dozen services."""
    return sorted({t.cluster_arn.replace(":cluster/", ":service/", 1) + "/*" if t.cluster_owned else t.service_arn
                   for t in args.targets})


def service_deployment_resources(args: DeployRoleArgs) -> list[str]:
    """The service deployments of :func:`service_resources`' services
    (``service-deployment/<cluster>/<service or *>/<id>``), one pattern per pattern there."""
    return [arn.replace(":service/", ":service-deployment/", 1) + "/*" for arn in service_resources(args)]


def deploy_role_policy(args: DeployRoleArgs) -> dict:
    service_arns = service_resources(args)
    cluster_arns = sorted({t.cluster_arn for t in args.targets})
    statements = [
        # IAM checks DescribeServiceDeployments and StopServiceDeployment against the service *and* the service
        # deployment; the other actions only against the service. One statement: listing the service patterns
        # twice would cost the inline policy limit one more pattern per cluster and region.
        p.statement("DeployConfiguredServices", ["ecs:DescribeServiceDeployments", "ecs:DescribeServices",
                                                 "ecs:ListServiceDeployments", "ecs:StopServiceDeployment",
                                                 "ecs:UpdateService"],
                    [*service_arns, *service_deployment_resources(args)]),
        p.unscoped("TaskDefinitions", ["ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition"],
                   why="ECS supports no resource-level permissions for these actions"),
        # DescribeTaskDefinition(include=["TAGS"]) reads the tags to copy them onto the new revision.
        p.statement("ReadRevisionTags", ["ecs:ListTagsForResource"],
                    [p.arn(args.partition, "ecs", "*", args.account_id, "task-definition/*")]),
        # Tags on a new revision are only accepted together with registering it.
        p.statement("TagNewRevisions", ["ecs:TagResource"],
                    [p.arn(args.partition, "ecs", "*", args.account_id, "task-definition/*")],
                    conditions={"StringEquals": {"ecs:CreateAction": "RegisterTaskDefinition"}}),
        p.statement("FollowRolloutTasks", ["ecs:DescribeTasks"], [
            p.arn(args.partition, "ecs", t.region, args.account_id,
                  "task/" + t.cluster_arn.rsplit("/", 1)[-1] + "/*") for t in _unique_clusters(args.targets)]),
        p.unscoped("ListRolloutTasks", ["ecs:ListTasks"], why="ListTasks takes no resource ARN; ecs:cluster narrows",
                   conditions={"ArnEquals": {"ecs:cluster": cluster_arns}}),
        p.pass_role("PassServiceRoles", sorted(args.passable_role_arns), ECS_TASKS),
    ]
    if args.infrastructure_role_arns:
        statements.append(p.pass_role("PassInfrastructureRole", sorted(args.infrastructure_role_arns), ECS))
    if args.scheduled_task_regions:
        rules = [p.arn(args.partition, "events", r, args.account_id, "rule/*") for r in args.scheduled_task_regions]
        # Rule names come from deployment.yaml, which changes with every release: scoped to the account's regions.
        statements.append(p.statement("UpdateScheduledTaskTargets", ["events:ListTargetsByRule", "events:PutTargets"],
                                      rules))
        if args.scheduled_task_role_names:
            roles = sorted(p.role_arn(args.partition, args.account_id, n) for n in args.scheduled_task_role_names)
            statements.append(p.pass_role("PassScheduledTaskRoles", roles, ["ecs-tasks.amazonaws.com",
                                                                            "events.amazonaws.com"]))
    if args.smoke_test_lookup:
        statements.append(p.unscoped(
            "FindSmokeTestAddress", ["elasticloadbalancing:DescribeLoadBalancers",
                                     "elasticloadbalancing:DescribeTargetGroups"],
            why="Elastic Load Balancing supports no resource-level permissions for its Describe actions"))
    if args.alarm_arns:
        statements.append(p.statement("WatchBakeAlarms", ["cloudwatch:DescribeAlarms"], sorted(args.alarm_arns)))
    if args.codedeploy_targets:
        statements.extend(codedeploy_statements(args))
    if args.artifact_bucket_arns:
        statements.append(p.statement("ReadArtifacts", ["s3:GetObject", "s3:GetObjectVersion"],
                                      [pulumi.Output.concat(b, "/*") for b in args.artifact_bucket_arns]))
    if args.artifact_key_arns:
        statements.append(p.statement("DecryptArtifacts", p.KMS_DECRYPT_ACTIONS, list(args.artifact_key_arns)))
    return p.document(statements)


class DeployRole(pulumi.ComponentResource):
    """The role a tools-account pipeline assumes to deploy into one workload account."""

    def __init__(self, name: str, args: DeployRoleArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:deploy_role:DeployRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        role = aws.iam.Role(
            f"{name}-role",
            name=args.role_name,
            path=args.path,
            description="crossdeploy: assumed by the tools account's pipelines to deploy ECS services",
            assume_role_policy=p.to_json(deploy_trust_policy(args)),
            max_session_duration=args.max_session_seconds,
            opts=child,
        )
        policy = p.to_json(deploy_role_policy(args))
        p.check_inline_policy_size(f"{args.role_name} in {args.account_id}", policy)
        aws.iam.RolePolicy(f"{name}-policy", role=role.name, policy=policy, opts=child)
        self.role_arn = role.arn
        self.register_outputs({"roleArn": role.arn})
