"""Workloads: the Fargate services themselves, in each workload account, environment and region.

Two components:

:class:`WorkloadRoles` (one per workload account; IAM is global)
    per service a task role and an execution role under ``/<project>/<stack>/workload/`` (the names
    :mod:`components.naming` fixes, which the deploy role may pass), and the CodeDeploy service role where an
    environment of the account deploys blue/green. The execution role can pull exactly the service's repository
    from the tools account in each of the account's regions (the repository policy grants the other half), write
    its own log group and read the secrets the service names, nothing else. Where an environment of the account
    deploys ECS-native (``blue-green``, ``canary``, ``linear``), the ECS infrastructure role: trusted by
    ``ecs.amazonaws.com`` of this account only, with AWS's ``AmazonECSInfrastructureRolePolicyForLoadBalancers``.
    Where a ``codedeploy`` environment of the account runs smoke tests, the CodeDeploy role may also invoke exactly
    those environments' hook functions (AWS's policy covers only functions named ``CodeDeployHook_*``).

:class:`Workload` (one per environment x region)
    the network (:mod:`components.network`), one cluster per cluster name with Container Insights, an internet-
    facing ALB (HTTPS with HTTP->HTTPS redirect when the environment gives a certificate for the region, HTTP
    otherwise; unmatched requests get a 404), security groups so tasks accept traffic only from the ALB, and per
    service: log group, task definition (:mod:`components.task_definition`), target group(s), listener rule(s),
    the ECS service in the private subnets and optional CPU target-tracking autoscaling. Every service gets two
    alarms, named by :func:`components.naming.bake_alarm_names` (what the bake after a deployment watches): target
    5xx per minute (the environment's ``rollbackAlarm``) over its target groups, which ECS rolls rolling and native
    deployments back on, beside the circuit breaker (CodeDeploy's alarm in ``codedeploy`` environments); and
    unhealthy targets over its target groups, which no deployment rolls back on by itself (starting tasks may fail
    a check). ``codedeploy`` environments add a test listener, a second target group per service and CodeDeploy
    (:mod:`components.blue_green`). Native environments add the test listener and, per service, an alternate target
    group, a production and a test rule forwarding to both groups by weight (primary 100, alternate 0), and the
    service's ``deploymentConfiguration`` (strategy, bake, canary/linear steps) and ``advancedConfiguration``
    (alternate group, both rules, the infrastructure role); ECS shifts the weights. Where a native or
    ``codedeploy`` environment has services with a ``smokeTest``: the smoke-test hook (:class:`SmokeHookSettings`),
    a Lambda function in the private subnets with its own security group, the only source besides
    ``testTrafficCidrs`` the test listener admits, its log group and execution role, and for native environments
    the role ECS invokes it with; native services with a smoke test name it as their ``POST_TEST_TRAFFIC_SHIFT``
    lifecycle hook, codedeploy ones get it in their AppSpec (:func:`components.pipeline.blue_green_targets`).

Ownership after creation (``ignore_changes``), so a later ``pulumi up`` never reverts a deployment:

* every service: ``taskDefinition`` (the pipeline registers a new revision per release) and ``desiredCount``
  (autoscaling and operators own it);
* codedeploy services: also ``loadBalancers`` (CodeDeploy swaps the target group the service's task set uses),
  and their listener rules' ``actions`` (CodeDeploy swaps the forward target on the production and test rules);
* native services: their listener rules' ``actions`` (ECS rewrites the weights on every deployment, DESIGN.md
  pitfall 13), but not ``loadBalancers``: ECS shifts traffic by rewriting the rules, and the service keeps the
  primary and alternate groups it was created with. (Should ECS ever report them swapped, ignore
  ``load_balancers`` here as for codedeploy.)

The task definition registered here is only the first: later revisions come from the deploy engine (or, in
``codedeploy`` environments, the CodeDeployToECS action), rendered from the same config by
:mod:`components.task_definition`, so a config change reaches the services through the pipeline (see the README).

Services marked ``existing`` get nothing here: the pipeline and the deploy role target them by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from components import limits, naming
from components import policies as p
from components.blue_green import (
    BlueGreenApplication,
    BlueGreenApplicationArgs,
    BlueGreenDeployment,
    BlueGreenDeploymentArgs,
    target_5xx_queries,
    unhealthy_targets_queries,
)
from components.config import (
    ECS_MAX_BAKE_MINUTES,
    ECS_MIN_LINEAR_PERCENT,
    NATIVE_SHIFTS,
    AutoscalingConfig,
    BlueGreenConfig,
    EnvironmentConfig,
    RollbackAlarmConfig,
    ServiceConfig,
    StackConfig,
)
from components.lambda_code import RUNTIME, handler_archive
from components.network import Network, NetworkArgs
from components.providers import Providers
from components.registry import PULL_ACTIONS
from components.service_role import service_role
from components.task_definition import bootstrap_image, secret_grant_arn, task_definition
from handlers import smoke_test as smoke

ECS_TASKS = "ecs-tasks.amazonaws.com"
ECS = "ecs.amazonaws.com"
LAMBDA = "lambda.amazonaws.com"
CODEDEPLOY_ECS_POLICY = "AWSCodeDeployRoleForECS"
# AWS managed: elasticloadbalancing Describe*/ModifyListener/ModifyRule/RegisterTargets/DeregisterTargets, limited
# to what ECS needs to move the weights of a production and a test listener rule (DESIGN.md pitfall 13).
ECS_INFRASTRUCTURE_LB_POLICY = "AmazonECSInfrastructureRolePolicyForLoadBalancers"
ECS_STRATEGIES = {"blue-green": "BLUE_GREEN", "canary": "CANARY", "linear": "LINEAR"}
"""crossdeploy's native strategy -> ECS's ``deploymentConfiguration.strategy``."""
# TLS 1.3 with 1.2 fallback: AWS's recommended policy for new HTTPS listeners.
SSL_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
DEREGISTRATION_DELAY_SECONDS = 30  # AWS's 300-second default makes every rollout wait five minutes per old task
# Faster than AWS's target group defaults (30 s x 5 healthy checks = 2.5 min before a new task gets traffic).
HEALTH_CHECK_TIMING = {"interval": 15, "timeout": 5, "healthy_threshold": 2, "unhealthy_threshold": 3}
SMOKE_HOOK_HANDLER = "handlers.smoke_test.handler"
SMOKE_HOOK_MODULES = ("__init__.py", "ecs_common.py", "smoke_test.py")
"""The hook's package: :mod:`handlers.smoke_test` and the ``handlers`` modules it imports, byte for byte."""
SMOKE_HOOK_STAGE = smoke.ECS_STAGE
"""The ECS lifecycle stage the native hook runs in: the new tasks have all of the test listener's traffic and none
of production's, so a failed smoke test rolls back before any user reaches them."""
SMOKE_HOOK_MARGIN_SECONDS = 30
"""Beyond the test's own worst case: a cold start in the VPC, the load balancer's address lookup, the answer."""
LAMBDA_MAX_TIMEOUT_SECONDS = 900
ALB_IP_ADDRESS_TYPE = "ipv4"
"""The load balancers answer on IPv4 only: the VPCs crossdeploy creates have no IPv6 ranges. A domain's records
(:mod:`components.domain`) therefore hold A aliases only; AAAA aliases would answer nothing."""
LAMBDA_ENVIRONMENT_LIMIT = limits.LAMBDA_ENVIRONMENT_BYTES
"""The hook's environment is measured against it at config load (:func:`components.limits.problems`)."""


# --------------------------------------------------------------------------------------------------- roles


@dataclass(frozen=True)
class ServiceRoles:
    """What one service's roles are called and may reach in one account."""

    task_role_name: str
    execution_role_name: str
    repository_arns: tuple[str, ...]
    """The service's repository in the tools account, in every region of this account."""
    log_group_arns: tuple[str, ...]
    """The service's log group in every region of this account."""
    secret_arns: tuple[str, ...] = ()
    """Secrets Manager secrets (grant ARNs, ``-??????`` suffixed) in every region of this account."""
    parameter_arns: tuple[str, ...] = ()
    """Parameter Store parameters in every region of this account."""


@dataclass(frozen=True)
class WorkloadRolesArgs:
    provider: aws.Provider
    """A provider for the workload account (any region: IAM is global)."""
    partition: str
    account_id: str
    path: str
    """IAM path of the task and execution roles, e.g. ``/crossdeploy/prod/workload/``."""
    services: tuple[ServiceRoles, ...]
    codedeploy_role_name: str | None = None
    """The CodeDeploy service role, when an environment of the account deploys blue/green. Default none."""
    codedeploy_role_path: str = "/"
    codedeploy_hook_arns: tuple[str, ...] = ()
    """The smoke-test hook functions of the account's ``codedeploy`` environments (one per region): CodeDeploy
    invokes them as the service role, which may invoke exactly these. Default none."""
    infrastructure_role_name: str | None = None
    """The ECS infrastructure role (:func:`components.naming.infrastructure_role_name`), when an environment of the
    account deploys ECS-native blue-green, canary or linear. Default none."""
    infrastructure_role_path: str = "/"

    def __post_init__(self) -> None:
        names = [n for s in self.services for n in (s.task_role_name, s.execution_role_name)]
        problems = []
        if len(set(names)) != len(names):
            problems.append("services: role names must be unique")
        for label, path in (("path", self.path), ("codedeploy_role_path", self.codedeploy_role_path),
                            ("infrastructure_role_path", self.infrastructure_role_path)):
            if not path.startswith("/") or not path.endswith("/"):
                problems.append(f"{label}: must start and end with '/', got {path!r}")
        for s in self.services:
            if not s.repository_arns or not s.log_group_arns:
                problems.append(f"services: {s.execution_role_name} needs its repositories and log groups")
        if self.codedeploy_hook_arns and not self.codedeploy_role_name:
            problems.append("codedeploy_hook_arns: hooks are invoked by the CodeDeploy service role; "
                            "codedeploy_role_name is not set")
        for hook in self.codedeploy_hook_arns:
            if "*" in hook or not hook.startswith(f"arn:{self.partition}:lambda:") or \
                    hook.split(":")[4:6] != [self.account_id, "function"]:
                problems.append(f"codedeploy_hook_arns: exact Lambda functions of account {self.account_id}, got "
                                f"{hook!r}")
        if problems:
            raise ValueError("WorkloadRolesArgs: " + "; ".join(problems))


def workload_roles_args(cfg: StackConfig, account: str, providers: Providers) -> WorkloadRolesArgs:
    """The roles of `account`'s services, with the CodeDeploy service role where an environment of the account
    deploys with CodeDeploy and the ECS infrastructure role where one deploys ECS-native."""
    uses_blue_green = any(e.strategy == "codedeploy" for e in cfg.environments if e.account_id == account)
    return WorkloadRolesArgs(
        provider=providers.get(account, cfg.account_regions(account)[0]),
        partition=cfg.partition,
        account_id=account,
        path=naming.iam_path(cfg, "workload"),
        services=service_roles(cfg, account),
        codedeploy_role_name=naming.codedeploy_role_name(cfg) if uses_blue_green else None,
        codedeploy_role_path=naming.iam_path(cfg, "codedeploy"),
        codedeploy_hook_arns=codedeploy_hook_arns(cfg, account),
        infrastructure_role_name=(naming.infrastructure_role_name(cfg) if needs_infrastructure_role(cfg, account)
                                  else None),
        infrastructure_role_path=naming.iam_path(cfg, "infrastructure"),
    )


def execution_role_policy(spec: ServiceRoles) -> dict:
    statements = [
        p.unscoped("RegistryToken", ["ecr:GetAuthorizationToken"],
                   why="GetAuthorizationToken supports no resource-level permissions"),
        # The tools account's repository policy is the other half of this cross-account pull (DESIGN.md pitfall 6).
        p.statement("PullOwnImage", PULL_ACTIONS, sorted(spec.repository_arns)),
        p.statement("WriteOwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                    sorted(f"{arn}:*" for arn in spec.log_group_arns)),
    ]
    if spec.secret_arns:
        statements.append(p.statement("ReadOwnSecrets", ["secretsmanager:GetSecretValue"], sorted(spec.secret_arns)))
    if spec.parameter_arns:
        statements.append(p.statement("ReadOwnParameters", ["ssm:GetParameters"], sorted(spec.parameter_arns)))
    return p.document(statements)


def codedeploy_hooks_policy(hook_arns: tuple[str, ...]) -> dict:
    """What the CodeDeploy service role needs beyond ``AWSCodeDeployRoleForECS`` to run the smoke-test hooks."""
    # AWS's managed policy allows lambda:InvokeFunction only on functions named CodeDeployHook_*; crossdeploy's hooks
    # follow the stack's naming instead, so the role may invoke exactly them (and no other function).
    return p.document([p.statement("InvokeSmokeTestHooks", ["lambda:InvokeFunction"], sorted(set(hook_arns)))])


def task_trust_policy(partition: str, account_id: str) -> dict:
    """ECS tasks of this account only (``aws:SourceAccount`` and ``aws:SourceArn``: the confused-deputy guard)."""
    return p.assume_role_trust({"Service": ECS_TASKS}, {
        "StringEquals": {"aws:SourceAccount": account_id},
        "ArnLike": {"aws:SourceArn": p.arn(partition, "ecs", "*", account_id, "*")},
    })


class WorkloadRoles(pulumi.ComponentResource):
    """Task, execution and CodeDeploy roles of one workload account."""

    def __init__(self, name: str, args: WorkloadRolesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:workload:WorkloadRoles", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        trust = p.to_json(task_trust_policy(args.partition, args.account_id))
        self.execution_role_policies: list[aws.iam.RolePolicy] = []
        for spec in args.services:
            aws.iam.Role(f"{name}-{spec.task_role_name}", name=spec.task_role_name, path=args.path,
                         description="crossdeploy: the service's own AWS permissions (none by default)",
                         assume_role_policy=trust, opts=child)
            role = aws.iam.Role(f"{name}-{spec.execution_role_name}", name=spec.execution_role_name, path=args.path,
                                description="crossdeploy: lets ECS pull the image, write logs, read secrets",
                                assume_role_policy=trust, opts=child)
            self.execution_role_policies.append(aws.iam.RolePolicy(
                f"{name}-{spec.execution_role_name}-policy", role=role.name,
                policy=p.to_json(execution_role_policy(spec)), opts=child))

        self.codedeploy_role_arn: pulumi.Output[str] | None = None
        if args.codedeploy_role_name:
            role = aws.iam.Role(
                f"{name}-codedeploy", name=args.codedeploy_role_name, path=args.codedeploy_role_path,
                description="crossdeploy: CodeDeploy blue/green deployments of ECS services",
                assume_role_policy=p.to_json(p.service_trust("codedeploy.amazonaws.com", args.account_id)),
                opts=child)
            aws.iam.RolePolicyAttachment(
                f"{name}-codedeploy-ecs", role=role.name,
                policy_arn=f"arn:{args.partition}:iam::aws:policy/{CODEDEPLOY_ECS_POLICY}", opts=child)
            if args.codedeploy_hook_arns:
                aws.iam.RolePolicy(f"{name}-codedeploy-hooks", role=role.name,
                                   policy=p.to_json(codedeploy_hooks_policy(args.codedeploy_hook_arns)), opts=child)
            self.codedeploy_role_arn = role.arn

        self.infrastructure_role_arn: pulumi.Output[str] | None = None
        self.infrastructure_role_ready: tuple[pulumi.Resource, ...] = ()
        """What a native service must wait for: ECS checks the role's permissions when the service is created."""
        if args.infrastructure_role_name:
            role = aws.iam.Role(
                f"{name}-ecs-infrastructure", name=args.infrastructure_role_name, path=args.infrastructure_role_path,
                description="crossdeploy: lets ECS shift listener rule weights between target groups "
                            "(native blue-green, canary, linear)",
                assume_role_policy=p.to_json(p.service_trust(ECS, args.account_id)), opts=child)
            attachment = aws.iam.RolePolicyAttachment(
                f"{name}-ecs-infrastructure-lb", role=role.name,
                policy_arn=f"arn:{args.partition}:iam::aws:policy/{ECS_INFRASTRUCTURE_LB_POLICY}", opts=child)
            self.infrastructure_role_arn = role.arn
            self.infrastructure_role_ready = (attachment,)
        self.register_outputs({"codedeployRoleArn": self.codedeploy_role_arn,
                               "infrastructureRoleArn": self.infrastructure_role_arn})


# ------------------------------------------------------------------------------------------------ workload


@dataclass(frozen=True)
class WorkloadService:
    """One service crossdeploy creates, as it runs in this environment and region."""

    config: ServiceConfig
    task_definition: dict[str, Any]
    """The ``RegisterTaskDefinition`` request (:func:`components.task_definition.task_definition`)."""
    priority: int
    """Listener rule priority, unique on the load balancer."""
    log_group_name: str
    error_alarm_name: str
    """The service's 5xx alarm (:func:`components.naming.alarm_name` ``target-5xx``; CodeDeploy's
    :func:`components.naming.codedeploy_alarm_name` in ``codedeploy`` environments): ECS or CodeDeploy roll a
    deployment back on it, and the bake after a deployment watches it."""
    unhealthy_alarm_name: str
    """The service's unhealthy-targets alarm (:func:`components.naming.alarm_name` ``unhealthy-targets``): the bake
    watches it; no deployment rolls back on it by itself."""
    deployment_group_name: str = ""
    """CodeDeploy deployment group (blue/green environments only)."""
    smoke_spec: dict[str, Any] | None = None
    """The smoke test the environment's hook runs against the new tasks through the test listener before they get
    production traffic (:meth:`components.config.ServiceConfig.smoke_spec`): set in native and ``codedeploy``
    environments for a service with a ``smokeTest``. None elsewhere (a rolling environment's smoke test is the deploy
    engine's, after the deployment)."""


@dataclass(frozen=True)
class BlueGreenSettings:
    application_name: str
    deployment_config_name: str
    traffic_shift: tuple[str, int | None, int | None]
    settings: BlueGreenConfig
    service_role_arn: pulumi.Input[str]


@dataclass(frozen=True)
class NativeSettings:
    """ECS-native blue-green, canary or linear (:func:`native_settings`): ECS itself shifts the production listener
    rule's weights from the service's primary target group to its alternate one, bakes, and rolls back on the
    deployment alarm or the circuit breaker."""

    strategy: str
    """``blue-green``, ``canary`` or ``linear``."""
    traffic_shift: tuple[str, int | None, int | None]
    """:func:`components.naming.traffic_shift`: (``all-at-once`` | ``canary`` | ``linear``, percent, minutes)."""
    settings: BlueGreenConfig
    """Bake (``terminationWaitMinutes``), test listener port and ranges, rollback alarm."""
    infrastructure_role_arn: pulumi.Input[str] | None
    """The account's ECS infrastructure role (:attr:`WorkloadRoles.infrastructure_role_arn`): ECS assumes it to
    rewrite the listener rules."""
    infrastructure_role_ready: tuple[pulumi.Resource, ...] = ()
    """Resources the services wait for (the role's managed policy attachment): ECS validates the role's permissions
    when the service is created."""

    def __post_init__(self) -> None:
        problems = []
        if self.strategy not in ECS_STRATEGIES:
            problems.append(f"strategy: one of {', '.join(ECS_STRATEGIES)}, got {self.strategy!r}")
        if not self.infrastructure_role_arn:
            problems.append("infrastructure_role_arn: ECS-native deployments need the account's ECS infrastructure "
                            "role (WorkloadRolesArgs.infrastructure_role_name)")
        elif isinstance(self.infrastructure_role_arn, str) and ":role/" not in self.infrastructure_role_arn:
            problems.append(f"infrastructure_role_arn: not an IAM role ARN: {self.infrastructure_role_arn!r}")
        kind, percent, minutes = (*self.traffic_shift, None, None, None)[:3]
        implied = NATIVE_SHIFTS.get(self.strategy)
        if len(self.traffic_shift) != 3 or kind != implied:
            problems.append(f"traffic_shift: strategy {self.strategy!r} shifts {implied}, got {self.traffic_shift!r}")
        elif kind == "all-at-once" and (percent, minutes) != (None, None):
            problems.append(f"traffic_shift: all-at-once takes no percent or minutes, got {self.traffic_shift!r}")
        elif kind != "all-at-once":
            low = ECS_MIN_LINEAR_PERCENT if kind == "linear" else 1
            if not isinstance(percent, int) or not low <= percent <= 99:
                problems.append(f"traffic_shift: {kind} percent must be {low} to 99, got {percent!r}")
            if not isinstance(minutes, int) or not 0 <= minutes <= ECS_MAX_BAKE_MINUTES:
                problems.append(f"traffic_shift: {kind} minutes must be 0 to {ECS_MAX_BAKE_MINUTES}, got {minutes!r}")
        if not 0 <= self.settings.termination_wait_minutes <= ECS_MAX_BAKE_MINUTES:
            problems.append(f"settings.termination_wait_minutes: ECS bakes 0 to {ECS_MAX_BAKE_MINUTES} minutes, got "
                            f"{self.settings.termination_wait_minutes}")
        if problems:
            raise ValueError("NativeSettings: " + "; ".join(problems))

    def deployment_configuration(
            self, lifecycle_hooks: list[aws.ecs.ServiceDeploymentConfigurationLifecycleHookArgs] | None = None,
    ) -> aws.ecs.ServiceDeploymentConfigurationArgs:
        """The service's ``deploymentConfiguration``: strategy, bake, the canary or linear steps, and the lifecycle
        hooks (the smoke test) if any."""
        _, percent, minutes = self.traffic_shift
        strategy = ECS_STRATEGIES[self.strategy]
        return aws.ecs.ServiceDeploymentConfigurationArgs(
            strategy=strategy,
            # The provider models the minutes as strings (the ECS API takes integers 0-1440).
            bake_time_in_minutes=str(self.settings.termination_wait_minutes),
            canary_configuration=aws.ecs.ServiceDeploymentConfigurationCanaryConfigurationArgs(
                canary_percent=float(percent), canary_bake_time_in_minutes=str(minutes),
            ) if strategy == "CANARY" else None,
            linear_configuration=aws.ecs.ServiceDeploymentConfigurationLinearConfigurationArgs(
                step_percent=float(percent), step_bake_time_in_minutes=str(minutes),
            ) if strategy == "LINEAR" else None,
            lifecycle_hooks=lifecycle_hooks or None,
        )


@dataclass(frozen=True)
class SmokeHookSettings:
    """The environment's smoke-test hook in one region (:func:`smoke_hook_settings`): a Lambda function in the
    VPC's private subnets that requests each new service's ``smokeTest.path`` through the test listener.

    ECS-native environments run it as the services' ``POST_TEST_TRAFFIC_SHIFT`` lifecycle hook (ECS assumes the
    invoke role to call it); ``codedeploy`` environments as the AppSpec's ``AfterAllowTestTraffic`` hook (the
    CodeDeploy service role invokes it, :attr:`WorkloadRolesArgs.codedeploy_hook_arns`)."""

    function_name: str
    """:func:`components.naming.smoke_hook_function_name`: the AppSpec and the CodeDeploy role name its ARN."""
    partition: str
    account_id: str
    role_name: str
    """The function's execution role; unique per account (IAM is global), so per environment and region."""
    role_path: str
    timeout_seconds: int
    """The function's timeout: the slowest smoke test's worst case plus :data:`SMOKE_HOOK_MARGIN_SECONDS`."""
    invoke_role_name: str | None = None
    """The role ECS assumes to invoke the hook (native environments only; same path). Default none."""
    log_retention_days: int = 30
    """Retention of the function's log group. Default 30."""

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.timeout_seconds <= LAMBDA_MAX_TIMEOUT_SECONDS:
            problems.append(f"timeout_seconds: Lambda allows 1-{LAMBDA_MAX_TIMEOUT_SECONDS}, got "
                            f"{self.timeout_seconds}")
        if not self.role_path.startswith("/") or not self.role_path.endswith("/"):
            problems.append(f"role_path: must start and end with '/', got {self.role_path!r}")
        if self.invoke_role_name is not None and self.invoke_role_name == self.role_name:
            problems.append("invoke_role_name: the invoke role and the execution role are two roles")
        if problems:
            raise ValueError("SmokeHookSettings: " + "; ".join(problems))

    def function_arn(self, region: str) -> str:
        return p.arn(self.partition, "lambda", region, self.account_id, f"function:{self.function_name}")

    def log_group_arn(self, region: str) -> str:
        return p.arn(self.partition, "logs", region, self.account_id, f"log-group:/aws/lambda/{self.function_name}")


@dataclass(frozen=True)
class WorkloadArgs:
    provider: aws.Provider
    """The workload account's provider in this region."""
    environment: str
    region: str
    network: NetworkArgs
    services: tuple[WorkloadService, ...]
    certificate_arn: pulumi.Input[str] | None = None
    """ACM certificate for HTTPS: a given ARN, or an Output such as a ``CertificateValidation``'s ``certificate_arn``
    (:mod:`components.domain`), so the listeners wait until the certificate is issued. Default none: HTTP on 80."""
    blue_green: BlueGreenSettings | None = None
    """Set for ``strategy: codedeploy`` environments. Default none: rolling."""
    native: NativeSettings | None = None
    """Set for ECS-native ``blue-green``, ``canary`` and ``linear`` environments (:func:`native_settings`).
    Default none: rolling."""
    rollback_alarm: RollbackAlarmConfig = field(default_factory=RollbackAlarmConfig)
    """Threshold and evaluation periods of each rolling or native service's deployment alarm (target 5xx per
    minute), which ECS watches during a deployment and rolls back on, and the evaluation periods of every service's
    unhealthy-targets alarm. Default 10 per minute for 2 minutes. CodeDeploy environments take theirs from
    ``blue_green.settings`` (their 5xx alarm is CodeDeploy's)."""
    smoke_hook: SmokeHookSettings | None = None
    """The smoke-test hook, where a native or ``codedeploy`` environment has services with a ``smokeTest``
    (:attr:`WorkloadService.smoke_spec`). Default none."""

    def __post_init__(self) -> None:
        problems = []
        if not self.services:
            problems.append("services: at least one service is required")
        priorities = [s.priority for s in self.services]
        if len(set(priorities)) != len(priorities):
            problems.append(f"services: listener rule priorities must be unique, got {priorities}")
        names = [(s.config.cluster, s.config.service) for s in self.services]
        if len(set(names)) != len(names):
            problems.append("services: two services with the same cluster and name")
        if self.blue_green and not all(s.deployment_group_name for s in self.services):
            problems.append("services: blue/green needs a deployment group name for every service")
        if self.blue_green and self.native:
            problems.append("blue_green, native: an environment deploys with CodeDeploy or natively, not both")
        if self.rollback_alarm.threshold < 1 or self.rollback_alarm.evaluation_periods < 1:
            problems.append(f"rollback_alarm: threshold and evaluation periods must be at least 1, got "
                            f"{self.rollback_alarm.threshold}/{self.rollback_alarm.evaluation_periods}")
        if isinstance(self.certificate_arn, str) and f":{self.region}:" not in self.certificate_arn:
            problems.append(f"certificate_arn: not in {self.region}: {self.certificate_arn}")
        problems.extend(self._smoke_problems())
        if problems:
            raise ValueError("WorkloadArgs: " + "; ".join(problems))

    def _smoke_problems(self) -> list[str]:
        tested = [s.config.name for s in self.services if s.smoke_spec is not None]
        hook = self.smoke_hook
        if hook is None:
            return [f"smoke_hook: services {tested} have smoke tests, which run in the hook"] if tested else []
        problems = []
        if not self.traffic_settings:
            problems.append("smoke_hook: only native and codedeploy environments run the hook (it tests the new "
                            "tasks through the test listener); rolling smoke tests are the deploy engine's")
        if not tested:
            problems.append("smoke_hook: no service has a smoke test")
        if self.native and not hook.invoke_role_name:
            problems.append("smoke_hook.invoke_role_name: ECS needs a role to invoke a native lifecycle hook")
        if self.blue_green and hook.invoke_role_name:
            problems.append("smoke_hook.invoke_role_name: CodeDeploy invokes the hook as its service role")
        return problems

    def smoke_hook_variables(self, load_balancer_arn_suffix: pulumi.Input[str]) -> dict[str, pulumi.Input[str]]:
        """The hook function's environment (the contract of :mod:`handlers.smoke_test`): the load balancer whose
        private addresses it looks up, the test listener's port and protocol, and in ``codedeploy`` environments the
        application and each deployment group's smoke test (a native hook gets its test in ECS's ``hookDetails``)."""
        settings = self.traffic_settings
        hook = self.smoke_hook
        assert settings is not None and hook is not None
        return smoke_hook_environment(
            load_balancer_arn_suffix, test_port=settings.test_listener_port, protocol=self.protocol,
            account_id=hook.account_id,
            application_name=self.blue_green.application_name if self.blue_green else None,
            smoke_tests={s.deployment_group_name: s.smoke_spec for s in self.services if s.smoke_spec is not None})

    @property
    def alarm_settings(self) -> RollbackAlarmConfig:
        """Threshold and evaluation periods of the services' alarms (CodeDeploy's settings in codedeploy
        environments)."""
        return self.blue_green.settings.rollback_alarm if self.blue_green else self.rollback_alarm

    @property
    def https(self) -> bool:
        return self.certificate_arn is not None

    @property
    def traffic_settings(self) -> BlueGreenConfig | None:
        """The test listener and shift settings of a CodeDeploy or native environment; none when rolling."""
        if self.blue_green:
            return self.blue_green.settings
        return self.native.settings if self.native else None

    @property
    def protocol(self) -> str:
        return "HTTPS" if self.https else "HTTP"


def workload_args(cfg: StackConfig, env: EnvironmentConfig, region: str, providers: Providers,
                  roles: WorkloadRoles, certificate_arn: pulumi.Input[str] | None) -> WorkloadArgs:
    """`env`'s services in `region`, deployed as its strategy says; `roles`: its account's
    (:func:`workload_roles_args`); `certificate_arn`: the listener's certificate, none for HTTP
    (:func:`components.domain.listener_certificate_arn`)."""
    provider = providers.get(env.account_id, region)
    return WorkloadArgs(
        provider=provider,
        environment=env.name,
        region=region,
        network=NetworkArgs(provider=provider, cidr=env.network.cidr, nat_gateways=env.network.nat_gateways,
                            existing=env.network.existing_vpcs.get(region),
                            name=p.iam_name(cfg.name_prefix, env.name)),
        services=workload_services(cfg, env, region),
        certificate_arn=certificate_arn,
        blue_green=BlueGreenSettings(
            application_name=naming.codedeploy_application_name(cfg, env.name),
            deployment_config_name=naming.deployment_config_name(cfg, env),
            traffic_shift=naming.traffic_shift(env),
            settings=env.blue_green_settings,
            service_role_arn=roles.codedeploy_role_arn,
        ) if env.strategy == "codedeploy" else None,
        native=native_settings(cfg, env, roles),
        rollback_alarm=env.blue_green_settings.rollback_alarm,
        smoke_hook=smoke_hook_settings(cfg, env, region),
    )


@dataclass(frozen=True)
class SmokeHook:
    """What the services need of the hook the workload created."""

    function_arn: pulumi.Output[str]
    invoke_role_arn: pulumi.Output[str] | None
    """The role ECS invokes the hook with (native environments); None where CodeDeploy invokes it."""
    ready: tuple[pulumi.Resource, ...]
    """The function and the invoke role's policy: a native service waits for both."""


def smoke_hook_policy(hook: SmokeHookSettings, region: str, subnet_ids: list[pulumi.Input[str]],
                      security_group_id: pulumi.Input[str], deployment_group_arns: tuple[str, ...]) -> dict:
    """The hook function's execution role: its own log group, the network interfaces Lambda manages for it in the
    VPC, and in ``codedeploy`` environments the answer to exactly the deployment groups it tests."""
    prefix = p.arn(hook.partition, "ec2", region, hook.account_id, "")

    def ec2(kind: str, resource_id: pulumi.Input[str]) -> pulumi.Input[str]:
        if isinstance(resource_id, str):
            return f"{prefix}{kind}/{resource_id}"
        return pulumi.Output.concat(prefix, kind, "/", resource_id)

    interfaces = f"{prefix}network-interface/*"
    statements = [
        p.statement("WriteOwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"], [f"{hook.log_group_arn(region)}:*"]),
        # Lambda creates and manages the function's network interfaces with the function's own role: in its subnets,
        # with its security group, in this account and region only.
        p.statement("CreateOwnNetworkInterfaces", ["ec2:CreateNetworkInterface"],
                    [*(ec2("subnet", s) for s in subnet_ids), ec2("security-group", security_group_id), interfaces]),
        p.statement("ManageNetworkInterfaces",
                    ["ec2:AssignPrivateIpAddresses", "ec2:DeleteNetworkInterface", "ec2:UnassignPrivateIpAddresses"],
                    [interfaces]),
        p.unscoped("DescribeNetworkInterfaces", ["ec2:DescribeNetworkInterfaces"],
                   why="EC2 Describe actions support no resource-level permissions; Lambda finds the function's "
                       "interfaces and the hook the load balancer's private addresses with it"),
    ]
    if deployment_group_arns:
        statements.append(p.statement(
            "AnswerOwnDeployments", ["codedeploy:GetDeployment", "codedeploy:PutLifecycleEventHookExecutionStatus"],
            sorted(set(deployment_group_arns))))
    return p.document(statements)


def smoke_invoke_policy(function_arn: str) -> dict:
    """The role ECS assumes to run a native lifecycle hook: it may invoke exactly that function."""
    return p.document([p.statement("InvokeSmokeTestHook", ["lambda:InvokeFunction"], [function_arn])])


def _fixed_404() -> aws.lb.ListenerDefaultActionArgs:
    # Requests no rule matches get a plain 404 instead of reaching some service by accident.
    return aws.lb.ListenerDefaultActionArgs(
        type="fixed-response", fixed_response=aws.lb.ListenerDefaultActionFixedResponseArgs(
            content_type="text/plain", message_body="not found", status_code="404"))


def _conditions(service: ServiceConfig) -> list[aws.lb.ListenerRuleConditionArgs]:
    conditions = []
    if service.route_paths:
        conditions.append(aws.lb.ListenerRuleConditionArgs(
            path_pattern=aws.lb.ListenerRuleConditionPathPatternArgs(values=service.route_paths)))
    if service.routing.hosts:
        conditions.append(aws.lb.ListenerRuleConditionArgs(
            host_header=aws.lb.ListenerRuleConditionHostHeaderArgs(values=list(service.routing.hosts))))
    return conditions


class Workload(pulumi.ComponentResource):
    """Network, load balancer, clusters and Fargate services of one environment in one region."""

    def __init__(self, name: str, args: WorkloadArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:workload:Workload", name, None, opts)
        self._name = name
        self._args = args
        self._child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        network = Network(f"{name}-network", args.network, opts=pulumi.ResourceOptions(parent=self))
        self.network = network

        self.clusters = {
            cluster: aws.ecs.Cluster(
                f"{name}-cluster-{cluster}", name=cluster,
                settings=[aws.ecs.ClusterSettingArgs(name="containerInsights", value="enabled")], opts=self._child)
            for cluster in dict.fromkeys(s.config.cluster for s in args.services)
        }
        alb_sg, task_sg = self._security_groups(network)
        alb = aws.lb.LoadBalancer(
            f"{name}-alb", load_balancer_type="application", internal=False, ip_address_type=ALB_IP_ADDRESS_TYPE,
            subnets=network.public_subnet_ids, security_groups=[alb_sg.id],
            # Requests with malformed headers are dropped at the edge instead of reaching the services.
            drop_invalid_header_fields=True, opts=self._child)
        self.load_balancer = alb
        prod = self._production_listener(alb)
        test = None
        application = None
        if args.traffic_settings:
            # CodeDeploy and native environments alike: new tasks are reachable here before production traffic.
            test = aws.lb.Listener(
                f"{name}-test-listener", load_balancer_arn=alb.arn, port=args.traffic_settings.test_listener_port,
                protocol=args.protocol, certificate_arn=args.certificate_arn,
                ssl_policy=SSL_POLICY if args.https else None, default_actions=[_fixed_404()], opts=self._child)
        if args.blue_green:
            bg = args.blue_green
            application = BlueGreenApplication(f"{name}-codedeploy", BlueGreenApplicationArgs(
                provider=args.provider, application_name=bg.application_name,
                deployment_config_name=bg.deployment_config_name, traffic_shift=bg.traffic_shift),
                opts=pulumi.ResourceOptions(parent=self))

        # Before the services: a native service names the hook and its invoke role in its deployment configuration.
        self.smoke_hook = self._smoke_hook(network, alb, alb_sg) if args.smoke_hook else None

        self.services: dict[str, aws.ecs.Service] = {}
        for spec in args.services:
            self.services[spec.config.name] = self._service(spec, network, task_sg, alb, prod, test, application)

        self.load_balancer_dns = alb.dns_name
        self.register_outputs({"loadBalancerDns": alb.dns_name, "vpcId": network.vpc_id})

    def _security_groups(self, network: Network) -> tuple[aws.ec2.SecurityGroup, aws.ec2.SecurityGroup]:
        name, args, child = self._name, self._args, self._child
        alb_sg = aws.ec2.SecurityGroup(f"{name}-alb-sg", vpc_id=network.vpc_id,
                                       description="crossdeploy: load balancer", opts=child)
        task_sg = aws.ec2.SecurityGroup(f"{name}-tasks-sg", vpc_id=network.vpc_id,
                                        description="crossdeploy: Fargate tasks, reachable only from the ALB",
                                        opts=child)
        public_ports = [443, 80] if args.https else [80]
        for port in public_ports:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-alb-in-{port}", security_group_id=alb_sg.id, ip_protocol="tcp", from_port=port,
                to_port=port, cidr_ipv4="0.0.0.0/0", description="public listener", opts=child)
        if args.traffic_settings:
            test_port = args.traffic_settings.test_listener_port
            for i, cidr in enumerate(args.traffic_settings.test_traffic_cidrs):
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-alb-in-test-{i}", security_group_id=alb_sg.id, ip_protocol="tcp", from_port=test_port,
                    to_port=test_port, cidr_ipv4=cidr, description="blue/green test listener", opts=child)
        for port in sorted({s.config.port for s in args.services}):
            # Separate rule resources: the two groups reference each other, which inline rules cannot express.
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-alb-out-{port}", security_group_id=alb_sg.id, ip_protocol="tcp", from_port=port,
                to_port=port, referenced_security_group_id=task_sg.id, description="to the tasks", opts=child)
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-tasks-in-{port}", security_group_id=task_sg.id, ip_protocol="tcp", from_port=port,
                to_port=port, referenced_security_group_id=alb_sg.id, description="from the ALB only", opts=child)
        # Tasks reach ECR, Logs and Secrets Manager over HTTPS through NAT, and their own dependencies (databases,
        # other APIs) on ports crossdeploy cannot know: outbound stays open, inbound is the ALB only.
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-tasks-out", security_group_id=task_sg.id, ip_protocol="-1", cidr_ipv4="0.0.0.0/0",
            description="outbound", opts=child)
        return alb_sg, task_sg

    def _production_listener(self, alb: aws.lb.LoadBalancer) -> aws.lb.Listener:
        name, args, child = self._name, self._args, self._child
        if not args.https:
            return aws.lb.Listener(f"{name}-http", load_balancer_arn=alb.arn, port=80, protocol="HTTP",
                                   default_actions=[_fixed_404()], opts=child)
        aws.lb.Listener(f"{name}-http-redirect", load_balancer_arn=alb.arn, port=80, protocol="HTTP",
                        default_actions=[aws.lb.ListenerDefaultActionArgs(
                            type="redirect", redirect=aws.lb.ListenerDefaultActionRedirectArgs(
                                port="443", protocol="HTTPS", status_code="HTTP_301"))], opts=child)
        return aws.lb.Listener(f"{name}-https", load_balancer_arn=alb.arn, port=443, protocol="HTTPS",
                               certificate_arn=args.certificate_arn, ssl_policy=SSL_POLICY,
                               default_actions=[_fixed_404()], opts=child)

    def _target_group(self, logical: str, spec: WorkloadService, network: Network) -> aws.lb.TargetGroup:
        hc = spec.config.health_check
        return aws.lb.TargetGroup(
            logical, port=spec.config.port, protocol="HTTP", target_type="ip", vpc_id=network.vpc_id,
            deregistration_delay=DEREGISTRATION_DELAY_SECONDS,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                enabled=True, path=hc.path, matcher=hc.matcher, protocol="HTTP", **HEALTH_CHECK_TIMING),
            opts=self._child)

    def _rule(self, logical: str, listener: aws.lb.Listener, spec: WorkloadService, target: aws.lb.TargetGroup,
              owned_by_codedeploy: bool, alternate: aws.lb.TargetGroup | None = None) -> aws.lb.ListenerRule:
        """A rule forwarding the service's routes to `target`; with an `alternate` group (native strategies) a
        weighted forward to both, the primary at 100 and the alternate at 0, which ECS shifts during a deployment.
        """
        opts = self._child
        if owned_by_codedeploy or alternate is not None:
            # CodeDeploy moves the forward between the blue and green groups on every deployment; ECS-native
            # deployments rewrite the weights (DESIGN.md pitfall 13). Either way the next `pulumi up` must not put
            # back what it created, or it would cut production traffic over to the idle group.
            opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=["actions"]))
        if alternate is None:
            action = aws.lb.ListenerRuleActionArgs(type="forward", target_group_arn=target.arn)
        else:
            action = aws.lb.ListenerRuleActionArgs(type="forward", forward=aws.lb.ListenerRuleActionForwardArgs(
                target_groups=[aws.lb.ListenerRuleActionForwardTargetGroupArgs(arn=target.arn, weight=100),
                               aws.lb.ListenerRuleActionForwardTargetGroupArgs(arn=alternate.arn, weight=0)]))
        return aws.lb.ListenerRule(
            logical, listener_arn=listener.arn, priority=spec.priority, conditions=_conditions(spec.config),
            actions=[action], opts=opts)

    def _smoke_hook(self, network: Network, alb: aws.lb.LoadBalancer, alb_sg: aws.ec2.SecurityGroup) -> SmokeHook:
        """The smoke-test hook: a function in the private subnets, the one client the test listener admits besides
        ``testTrafficCidrs``, its log group, its execution role and (native) the role ECS invokes it with."""
        name, args, child = self._name, self._args, self._child
        hook, settings = args.smoke_hook, args.traffic_settings
        assert hook is not None and settings is not None
        port = settings.test_listener_port
        hook_sg = aws.ec2.SecurityGroup(
            f"{name}-smoke-sg", vpc_id=network.vpc_id,
            description="crossdeploy: smoke-test hook, reaches the test listener and AWS APIs only", opts=child)
        # Separate rule resources, like the ALB's and the tasks': the two groups reference each other.
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-smoke-out-test", security_group_id=hook_sg.id, ip_protocol="tcp", from_port=port, to_port=port,
            referenced_security_group_id=alb_sg.id, description="to the test listener", opts=child)
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-alb-in-test-smoke", security_group_id=alb_sg.id, ip_protocol="tcp", from_port=port,
            to_port=port, referenced_security_group_id=hook_sg.id, description="smoke-test hook", opts=child)
        # EC2 (the load balancer's private addresses) and CodeDeploy (the hook's answer) over HTTPS, through NAT.
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-smoke-out-https", security_group_id=hook_sg.id, ip_protocol="tcp", from_port=443, to_port=443,
            cidr_ipv4="0.0.0.0/0", description="AWS APIs", opts=child)
        # Created here rather than by Lambda on first use: with a retention, and removed with the stack.
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-smoke-logs", name=f"/aws/lambda/{hook.function_name}",
            retention_in_days=hook.log_retention_days, opts=child)
        role, role_policy = service_role(
            f"{name}-smoke", role_name=hook.role_name, path=hook.role_path, service=LAMBDA,
            account_id=hook.account_id, opts=child,
            policy=smoke_hook_policy(hook, args.region, network.private_subnet_ids, hook_sg.id,
                                     self._hook_deployment_groups()))
        function = aws.lambda_.Function(
            f"{name}-smoke-function",
            name=hook.function_name,
            description="crossdeploy: smoke-tests new tasks through the test listener before production traffic",
            runtime=RUNTIME,
            architectures=["arm64"],
            handler=SMOKE_HOOK_HANDLER,
            code=handler_archive(SMOKE_HOOK_MODULES),
            role=role.arn,
            timeout=hook.timeout_seconds,
            vpc_config=aws.lambda_.FunctionVpcConfigArgs(
                subnet_ids=network.private_subnet_ids, security_group_ids=[hook_sg.id]),
            environment=aws.lambda_.FunctionEnvironmentArgs(variables=args.smoke_hook_variables(alb.arn_suffix)),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[role_policy, log_group])),
        )
        invoke_role_arn: pulumi.Output[str] | None = None
        ready: list[pulumi.Resource] = [function]
        if hook.invoke_role_name:
            invoke_role, invoke_policy = service_role(
                f"{name}-smoke-invoke", role_name=hook.invoke_role_name, path=hook.role_path, service=ECS,
                account_id=hook.account_id, policy=smoke_invoke_policy(hook.function_arn(args.region)), opts=child)
            invoke_role_arn = invoke_role.arn
            ready.append(invoke_policy)  # ECS checks it may invoke the hook when the service is created
        return SmokeHook(function_arn=function.arn, invoke_role_arn=invoke_role_arn, ready=tuple(ready))

    def _hook_deployment_groups(self) -> tuple[str, ...]:
        """The deployment groups whose deployments the hook answers (``codedeploy`` services with a smoke test)."""
        args, hook = self._args, self._args.smoke_hook
        if not args.blue_green or hook is None:
            return ()
        return tuple(p.arn(hook.partition, "codedeploy", args.region, hook.account_id,
                           f"deploymentgroup:{args.blue_green.application_name}/{s.deployment_group_name}")
                     for s in args.services if s.smoke_spec is not None)

    def _deployment_alarm(self, base: str, spec: WorkloadService, alb: aws.lb.LoadBalancer,
                          groups: list[aws.lb.TargetGroup]) -> aws.cloudwatch.MetricAlarm:
        """The 5xx alarm ECS watches during a rolling or native deployment (both target groups when native: either
        may serve the new tasks), with the same metric math as CodeDeploy's alarm (:func:`target_5xx_queries`)."""
        alarm = self._args.rollback_alarm
        svc = spec.config
        return aws.cloudwatch.MetricAlarm(
            f"{base}-target-5xx", name=spec.error_alarm_name,
            alarm_description=f"crossdeploy: target 5xx responses of {svc.service} ({svc.cluster}); ECS stops a "
                              "deployment and rolls it back while this alarm is in ALARM",
            metric_queries=target_5xx_queries(alb.arn_suffix, tuple(g.arn_suffix for g in groups)),
            comparison_operator="GreaterThanOrEqualToThreshold", threshold=alarm.threshold,
            evaluation_periods=alarm.evaluation_periods,
            # A minute without traffic is not a failure.
            treat_missing_data="notBreaching", opts=self._child)

    def _unhealthy_alarm(self, base: str, spec: WorkloadService, alb: aws.lb.LoadBalancer,
                         groups: list[aws.lb.TargetGroup]) -> aws.cloudwatch.MetricAlarm:
        """Targets of the service failing the load balancer's health check, over all of its target groups (blue and
        green, or primary and alternate: either may hold the tasks that serve), for the environment's
        ``rollbackAlarm.evaluationPeriods`` minutes. The bake after a deployment watches it next to the 5xx alarm.

        Not one of ECS's deployment alarms: new tasks may fail a check or two while they start, and ECS would roll
        a healthy deployment back for it. Tasks that never get healthy are the circuit breaker's (rolling, native)
        or CodeDeploy's; this alarm catches tasks that turn unhealthy once they serve."""
        svc = spec.config
        return aws.cloudwatch.MetricAlarm(
            f"{base}-unhealthy-targets", name=spec.unhealthy_alarm_name,
            alarm_description=f"crossdeploy: unhealthy targets of {svc.service} ({svc.cluster}); the bake after a "
                              "deployment fails while this alarm is in ALARM",
            metric_queries=unhealthy_targets_queries(alb.arn_suffix, tuple(g.arn_suffix for g in groups)),
            comparison_operator="GreaterThanOrEqualToThreshold", threshold=1,
            evaluation_periods=self._args.alarm_settings.evaluation_periods,
            # A target group without targets (the idle one of a blue/green pair) reports nothing: not a failure.
            treat_missing_data="notBreaching", opts=self._child)

    def _service(self, spec: WorkloadService, network: Network, task_sg: aws.ec2.SecurityGroup,
                 alb: aws.lb.LoadBalancer, prod: aws.lb.Listener, test: aws.lb.Listener | None,
                 application: BlueGreenApplication | None) -> aws.ecs.Service:
        args, child = self._args, self._child
        svc = spec.config
        base = f"{self._name}-{svc.name.replace('/', '-')}"
        aws.cloudwatch.LogGroup(f"{base}-logs", name=spec.log_group_name, retention_in_days=svc.log_retention_days,
                                opts=child)
        td = spec.task_definition
        task_definition = aws.ecs.TaskDefinition(
            f"{base}-task", family=td["family"], cpu=td["cpu"], memory=td["memory"], network_mode=td["networkMode"],
            requires_compatibilities=td["requiresCompatibilities"], execution_role_arn=td["executionRoleArn"],
            task_role_arn=td.get("taskRoleArn"), container_definitions=json.dumps(td["containerDefinitions"]),
            # Older revisions stay registered: a revision the pipeline or a rollback may still need is never
            # deregistered by a stack change.
            skip_destroy=True, opts=child)

        blue_green = args.blue_green is not None
        native = args.native
        # Native services keep the rolling service's logical names for the primary group and production rule, so
        # an environment moving from rolling to native keeps both. Its existing production rule then keeps its plain
        # forward, though (actions are ignored from that `pulumi up` on): move it once to the weighted forward below
        # (elbv2 modify-rule) before the first native deployment.
        blue = self._target_group(f"{base}-tg" if not blue_green else f"{base}-tg-blue", spec, network)
        alternate = self._target_group(f"{base}-tg-alternate", spec, network) if native else None
        rules = [self._rule(f"{base}-rule", prod, spec, blue, blue_green, alternate)]
        green = None
        if blue_green and test is not None:
            green = self._target_group(f"{base}-tg-green", spec, network)
            rules.append(self._rule(f"{base}-test-rule", test, spec, blue, True))
        elif native and test is not None:
            rules.append(self._rule(f"{base}-test-rule", test, spec, blue, False, alternate))

        owned = ["task_definition", "desired_count"]
        common: dict[str, Any] = {}
        depends_on: list[pulumi.Resource] = list(rules)  # ECS refuses a target group that no listener uses yet.
        load_balancer = aws.ecs.ServiceLoadBalancerArgs(
            target_group_arn=blue.arn, container_name=svc.container, container_port=svc.port)
        if blue_green:
            owned.append("load_balancers")  # CodeDeploy swaps the target group of the service's task set
            common["deployment_controller"] = aws.ecs.ServiceDeploymentControllerArgs(type="CODE_DEPLOY")
        else:
            # The unhealthy-targets alarm is deliberately not among these (see _unhealthy_alarm).
            alarm = self._deployment_alarm(base, spec, alb, [blue, alternate] if alternate else [blue])
            common.update(
                deployment_controller=aws.ecs.ServiceDeploymentControllerArgs(type="ECS"),
                # A rollout whose tasks keep failing stops and returns to the last good revision; the pipeline's
                # DeploymentTimeout then fails the action instead of waiting an hour.
                deployment_circuit_breaker=aws.ecs.ServiceDeploymentCircuitBreakerArgs(enable=True, rollback=True),
                # ... and so does one whose new tasks answer with errors.
                alarms=aws.ecs.ServiceAlarmsArgs(alarm_names=[alarm.name], enable=True, rollback=True),
                # Full capacity throughout: new tasks start before old ones stop.
                deployment_minimum_healthy_percent=100, deployment_maximum_percent=200)
        if native and alternate is not None:
            # No "load_balancers" in ignore_changes: ECS-native deployments move the listener rules' weights, not
            # the service definition (the primary and alternate groups keep their roles in it), so Pulumi's inputs
            # stay what AWS holds.
            load_balancer = aws.ecs.ServiceLoadBalancerArgs(
                target_group_arn=blue.arn, container_name=svc.container, container_port=svc.port,
                advanced_configuration=aws.ecs.ServiceLoadBalancerAdvancedConfigurationArgs(
                    alternate_target_group_arn=alternate.arn, production_listener_rule=rules[0].arn,
                    test_listener_rule=rules[1].arn if len(rules) > 1 else None,
                    role_arn=native.infrastructure_role_arn))
            hooks = []
            if spec.smoke_spec is not None and self.smoke_hook is not None:
                # hookDetails reaches the function as the event's ``hookDetails``: the service's own smoke test.
                hooks.append(aws.ecs.ServiceDeploymentConfigurationLifecycleHookArgs(
                    hook_target_arn=self.smoke_hook.function_arn, role_arn=self.smoke_hook.invoke_role_arn,
                    lifecycle_stages=[SMOKE_HOOK_STAGE], hook_details=json.dumps(spec.smoke_spec, sort_keys=True)))
                depends_on.extend(self.smoke_hook.ready)
            common["deployment_configuration"] = native.deployment_configuration(hooks)
            depends_on.extend(native.infrastructure_role_ready)
        service = aws.ecs.Service(
            f"{base}-service", name=svc.service, cluster=self.clusters[svc.cluster].arn,
            task_definition=task_definition.arn, desired_count=svc.desired_count, launch_type="FARGATE",
            network_configuration=aws.ecs.ServiceNetworkConfigurationArgs(
                subnets=network.private_subnet_ids, security_groups=[task_sg.id], assign_public_ip=False),
            load_balancers=[load_balancer],
            health_check_grace_period_seconds=svc.health_check.grace_period_seconds,
            propagate_tags="SERVICE", enable_ecs_managed_tags=True,
            # `pulumi up` on empty accounts must not wait for tasks that cannot start before the first image push.
            wait_for_steady_state=False,
            **common,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                ignore_changes=owned, depends_on=depends_on)),
        )
        self._unhealthy_alarm(base, spec, alb, [g for g in (blue, alternate, green) if g is not None])
        if svc.autoscaling:
            self._autoscaling(base, svc, svc.autoscaling, service)
        if blue_green and green is not None and test is not None and application is not None:
            bg = args.blue_green
            BlueGreenDeployment(f"{base}-bluegreen", BlueGreenDeploymentArgs(
                provider=args.provider, application_name=application.application_name,
                deployment_group_name=spec.deployment_group_name,
                deployment_config_name=application.deployment_config_name,
                service_role_arn=bg.service_role_arn, cluster_name=svc.cluster, service_name=service.name,
                target_group_names=(blue.name, green.name),
                target_group_arn_suffixes=(blue.arn_suffix, green.arn_suffix),
                load_balancer_arn_suffix=alb.arn_suffix,
                prod_listener_arns=(prod.arn,), test_listener_arns=(test.arn,),
                termination_wait_minutes=bg.settings.termination_wait_minutes,
                alarm_threshold=bg.settings.rollback_alarm.threshold,
                alarm_evaluation_periods=bg.settings.rollback_alarm.evaluation_periods,
                alarm_name=spec.error_alarm_name,
            ), opts=pulumi.ResourceOptions(parent=self, depends_on=[service]))
        return service

    def _autoscaling(self, base: str, svc: ServiceConfig, scaling: AutoscalingConfig, service: aws.ecs.Service) -> None:
        child = self._child
        target = aws.appautoscaling.Target(
            f"{base}-scaling", service_namespace="ecs", scalable_dimension="ecs:service:DesiredCount",
            resource_id=f"service/{svc.cluster}/{svc.service}", min_capacity=scaling.min, max_capacity=scaling.max,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[service])))
        tracking = aws.appautoscaling
        aws.appautoscaling.Policy(
            f"{base}-scaling-cpu", policy_type="TargetTrackingScaling", service_namespace=target.service_namespace,
            scalable_dimension=target.scalable_dimension, resource_id=target.resource_id,
            target_tracking_scaling_policy_configuration=tracking.PolicyTargetTrackingScalingPolicyConfigurationArgs(
                target_value=scaling.cpu_target,
                predefined_metric_specification=(
                    tracking.PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs(
                        predefined_metric_type="ECSServiceAverageCPUUtilization")),
                # Out fast, in slowly: a brief dip should not remove capacity the next spike needs.
                scale_out_cooldown=60, scale_in_cooldown=300),
            opts=child)



# ------------------------------------------------------------------------------------- from the stack config


def service_roles(cfg: StackConfig, account: str) -> tuple[ServiceRoles, ...]:
    """The roles of every service crossdeploy creates, as they are in `account` (all of its regions)."""
    regions = cfg.account_regions(account)
    specs = []
    for svc in cfg.workload_services:
        task_name, execution_name = naming.workload_role_names(cfg, svc)
        secrets = [ref for ref in svc.secrets.values() if not ref.startswith("ssm:")]
        parameters = [ref for ref in svc.secrets.values() if ref.startswith("ssm:")]
        specs.append(ServiceRoles(
            task_role_name=task_name,
            execution_role_name=execution_name,
            repository_arns=tuple(p.arn(cfg.partition, "ecr", r, cfg.tools_account_id, f"repository/{svc.name}")
                                  for r in regions),
            log_group_arns=tuple(p.arn(cfg.partition, "logs", r, account,
                                       f"log-group:{naming.log_group_name(cfg, svc)}") for r in regions),
            secret_arns=tuple(secret_grant_arn(cfg, account, r, ref) for r in regions for ref in sorted(secrets)),
            parameter_arns=tuple(secret_grant_arn(cfg, account, r, ref) for r in regions
                                 for ref in sorted(parameters)),
        ))
    return tuple(specs)


def workload_services(cfg: StackConfig, env: EnvironmentConfig, region: str) -> tuple[WorkloadService, ...]:
    """The services crossdeploy creates, as they run in `env` and `region`."""
    return tuple(
        WorkloadService(
            config=svc,
            task_definition=task_definition(cfg, env.account_id, region, svc, bootstrap_image(cfg, region, svc)),
            priority=cfg.rule_priority(svc),
            log_group_name=naming.log_group_name(cfg, svc),
            error_alarm_name=(naming.codedeploy_alarm_name(cfg, env.name, svc) if env.codedeploy
                              else naming.alarm_name(cfg, env.name, svc, "target-5xx")),
            unhealthy_alarm_name=naming.alarm_name(cfg, env.name, svc, "unhealthy-targets"),
            deployment_group_name=naming.deployment_group_name(cfg, svc) if env.codedeploy else "",
            smoke_spec=svc.smoke_spec() if runs_smoke_hook(env) else None,
        )
        for svc in cfg.workload_services
    )


def smoke_hook_environment(load_balancer_arn_suffix: pulumi.Input[str], *, test_port: int, protocol: str,
                           account_id: str, application_name: str | None,
                           smoke_tests: Mapping[str, Any]) -> dict[str, pulumi.Input[str]]:
    """The hook function's environment (:meth:`WorkloadArgs.smoke_hook_variables`); with a plain string for the
    load balancer, what :mod:`components.limits` measures against Lambda's 4 KB at config load. `application_name`:
    the CodeDeploy application in ``codedeploy`` environments (none: native, whose tests arrive in ``hookDetails``);
    `smoke_tests`: deployment group -> smoke test spec, used only with an application."""
    variables: dict[str, pulumi.Input[str]] = {
        smoke.LOAD_BALANCER_ENV: load_balancer_arn_suffix,
        smoke.TEST_PORT_ENV: str(test_port),
        smoke.PROTOCOL_ENV: protocol,
        # The hook answers only for services of its own account (and region, which Lambda sets).
        smoke.ACCOUNT_ID_ENV: account_id,
    }
    if application_name is not None:
        variables[smoke.CODEDEPLOY_APPLICATION_ENV] = application_name
        variables[smoke.SMOKE_TESTS_ENV] = json.dumps(dict(smoke_tests), separators=(",", ":"), sort_keys=True)
    return variables


def runs_smoke_hook(env: EnvironmentConfig) -> bool:
    """Whether `env` smoke-tests new tasks in a hook, before production traffic (native and ``codedeploy``
    strategies: they have a test listener); a rolling environment's smoke test is the deploy engine's."""
    return env.native or env.codedeploy


def smoke_tested(cfg: StackConfig, env: EnvironmentConfig) -> tuple[ServiceConfig, ...]:
    """The services whose smoke test `env`'s hook runs (none where the environment runs no hook)."""
    return tuple(s for s in cfg.workload_services if s.smoke_test is not None) if runs_smoke_hook(env) else ()


def smoke_hook_timeout_seconds(specs: list[dict[str, Any]]) -> int:
    """The hook function's timeout: the slowest test's worst case (every attempt timing out, and the pauses) plus a
    margin, within Lambda's 900 seconds (the config bounds each test so that it fits)."""
    worst = max(smoke.worst_case_seconds(smoke.SmokeSpec.from_json(spec)) for spec in specs)
    return min(LAMBDA_MAX_TIMEOUT_SECONDS, worst + SMOKE_HOOK_MARGIN_SECONDS)


def smoke_hook_settings(cfg: StackConfig, env: EnvironmentConfig, region: str) -> SmokeHookSettings | None:
    """The smoke-test hook of `env` in `region`: where a native or ``codedeploy`` environment has services with a
    ``smokeTest``; none elsewhere."""
    tested = smoke_tested(cfg, env)
    if not tested:
        return None
    # IAM is global: roles per environment and region, so that each may reach exactly its own region's resources.
    return SmokeHookSettings(
        function_name=naming.smoke_hook_function_name(cfg, env.name),
        partition=cfg.partition,
        account_id=env.account_id,
        role_name=p.iam_name(cfg.stack, env.name, region, "smoke-test"),
        role_path=naming.iam_path(cfg, "smoke-test"),
        timeout_seconds=smoke_hook_timeout_seconds([s.smoke_spec() for s in tested]),
        invoke_role_name=p.iam_name(cfg.stack, env.name, region, "smoke-invoke") if env.native else None,
    )


def codedeploy_hook_arns(cfg: StackConfig, account: str) -> tuple[str, ...]:
    """The smoke-test hooks the CodeDeploy service role of `account` invokes: those of its ``codedeploy``
    environments, in each of their regions."""
    return tuple(naming.smoke_hook_function_arn(cfg, env, region)
                 for env in cfg.environments if env.account_id == account and env.codedeploy
                 and smoke_tested(cfg, env) for region in env.regions)


def needs_infrastructure_role(cfg: StackConfig, account: str) -> bool:
    """Whether an environment of `account` deploys ECS-native (blue-green, canary, linear) and so needs the ECS
    infrastructure role there."""
    return bool(cfg.workload_services) and any(e.native for e in cfg.environments if e.account_id == account)


def native_settings(cfg: StackConfig, env: EnvironmentConfig, roles: WorkloadRoles) -> NativeSettings | None:
    """What an ECS-native environment's services need (none for rolling and codedeploy environments): strategy,
    traffic shift with defaults, bake, and the infrastructure role of the environment's account."""
    if not env.native:
        return None
    return NativeSettings(strategy=env.strategy, traffic_shift=naming.traffic_shift(env),
                          settings=env.blue_green_settings, infrastructure_role_arn=roles.infrastructure_role_arn,
                          infrastructure_role_ready=roles.infrastructure_role_ready)
