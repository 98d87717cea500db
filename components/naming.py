"""Names and ARNs that more than one component must agree on.

A cross-account 403 is almost always two places disagreeing about a name. Every name that crosses a component
boundary (the deploy role, the pipeline role path, the workload task and execution roles, ECS service ARNs) is
derived here and nowhere else.
"""

from __future__ import annotations

from components.config import (
    DEFAULT_SHIFT_MINUTES,
    DEFAULT_SHIFT_PERCENT,
    NATIVE_SHIFTS,
    EnvironmentConfig,
    ServiceConfig,
    StackConfig,
)
from components.policies import arn, iam_name, role_arn


def iam_path(cfg: StackConfig, kind: str) -> str:
    """IAM path for one kind of role of this stack, e.g. ``/crossdeploy/prod/pipeline/``."""
    return f"/{cfg.project}/{cfg.stack}/{kind}/"


def deploy_role_name(cfg: StackConfig) -> str:
    return iam_name(cfg.project, cfg.stack, "deploy")


def deploy_role_arn(cfg: StackConfig, account: str) -> str:
    """The deploy role in a workload account (IAM is global: one per account, whatever its regions)."""
    return role_arn(cfg.partition, account, deploy_role_name(cfg), iam_path(cfg, "deploy"))


def pipeline_role_pattern(cfg: StackConfig) -> str:
    """Every service pipeline role of this stack lives under this path; deploy roles trust exactly that path."""
    return role_arn(cfg.partition, cfg.tools_account_id, "*", iam_path(cfg, "pipeline"))


def push_function_name(cfg: StackConfig) -> str:
    return iam_name(cfg.project, cfg.stack, "push-deploy")


def push_role_arn(cfg: StackConfig) -> str:
    """The push-deploy function's role: trusted by the deploy roles next to the pipeline role path."""
    return role_arn(cfg.partition, cfg.tools_account_id, push_function_name(cfg), iam_path(cfg, "push"))


def release_steps_role_name(cfg: StackConfig) -> str:
    return iam_name(cfg.project, cfg.stack, "release-steps")


def release_steps_role_arn(cfg: StackConfig) -> str:
    """The release step functions' role: trusted by the deploy roles when the stack has a release pipeline."""
    return role_arn(cfg.partition, cfg.tools_account_id, release_steps_role_name(cfg), iam_path(cfg, "release"))


def engine_function_name(cfg: StackConfig) -> str:
    """The deploy engine's Lambda function, which the pipelines invoke once per environment."""
    return iam_name(cfg.project, cfg.stack, "deploy-engine")


def engine_role_arn(cfg: StackConfig) -> str:
    """The deploy engine function's role: trusted by the deploy roles next to the pipeline role path."""
    return role_arn(cfg.partition, cfg.tools_account_id, engine_function_name(cfg), iam_path(cfg, "engine"))


def deploy_document_key(service: ServiceConfig) -> str:
    """Where ``pulumi up`` writes the service's deploy document (a zip holding ``deploy.json``) in the config
    bucket: the pipeline's config source reads it, and so do releases."""
    return f"services/{safe(service.name)}/deploy.zip"


def infrastructure_role_name(cfg: StackConfig) -> str:
    """The role ECS assumes in a workload account to move listener rules and target groups during native
    blue/green, canary and linear deployments."""
    return iam_name(cfg.project, cfg.stack, "ecs-infrastructure")


def infrastructure_role_arn(cfg: StackConfig, account: str) -> str:
    return role_arn(cfg.partition, account, infrastructure_role_name(cfg), iam_path(cfg, "infrastructure"))


def forwarder_role_arn(cfg: StackConfig, account: str) -> str:
    return role_arn(cfg.partition, account, iam_name(cfg.project, cfg.stack, "rollout-forwarder"),
                    iam_path(cfg, "notices"))


def workload_role_names(cfg: StackConfig, service: ServiceConfig) -> tuple[str, str]:
    """(task role, execution role) names of a service crossdeploy creates, in every workload account."""
    return (iam_name(cfg.stack, service.service, "task"), iam_name(cfg.stack, service.service, "execution"))


def _role_ref_arn(cfg: StackConfig, account: str, ref: str) -> str:
    path, _, name = ref.rpartition("/")
    return role_arn(cfg.partition, account, name, f"/{path}/" if path else "/")


def task_role_arn(cfg: StackConfig, account: str, service: ServiceConfig) -> str | None:
    if service.existing:
        return _role_ref_arn(cfg, account, service.task_role_name) if service.task_role_name else None
    return role_arn(cfg.partition, account, workload_role_names(cfg, service)[0], iam_path(cfg, "workload"))


def execution_role_arn(cfg: StackConfig, account: str, service: ServiceConfig) -> str:
    if service.existing:
        return _role_ref_arn(cfg, account, service.execution_role_name or "")
    return role_arn(cfg.partition, account, workload_role_names(cfg, service)[1], iam_path(cfg, "workload"))


def workload_role_arns(cfg: StackConfig, account: str, service: ServiceConfig) -> list[str]:
    """The only roles the deploy role may pass to ECS for this service: its task and execution roles (those
    crossdeploy creates, or those an existing service names)."""
    task = task_role_arn(cfg, account, service)
    return [*([task] if task else []), execution_role_arn(cfg, account, service)]


def workload_role_pattern(cfg: StackConfig, account: str) -> str:
    """Every task and execution role crossdeploy creates in `account` lives under this path."""
    return role_arn(cfg.partition, account, "*", iam_path(cfg, "workload"))


def log_group_name(cfg: StackConfig, service: ServiceConfig) -> str:
    """The service's log group in every environment and region (log groups are regional, names can repeat)."""
    return f"/ecs/{cfg.project}/{cfg.stack}/{service.service}"


def codedeploy_application_name(cfg: StackConfig, environment: str) -> str:
    """One CodeDeploy application per blue/green environment (per region: CodeDeploy is regional)."""
    return iam_name(cfg.name_prefix, environment, max_len=100)


def deployment_group_name(cfg: StackConfig, service: ServiceConfig) -> str:
    return iam_name(service.service, max_len=100)


def codedeploy_role_name(cfg: StackConfig) -> str:
    return iam_name(cfg.project, cfg.stack, "codedeploy")


def task_family(cfg: StackConfig, service: ServiceConfig) -> str:
    """Task definition family: per stack, so two stacks in one account never interleave revisions."""
    return iam_name(cfg.stack, service.service, max_len=255, allowed=r"A-Za-z0-9_-")


def ecs_service_arn(cfg: StackConfig, account: str, region: str, service: ServiceConfig) -> str:
    return arn(cfg.partition, "ecs", region, account, f"service/{service.cluster}/{service.service}")


def ecs_cluster_arn(cfg: StackConfig, account: str, region: str, cluster: str) -> str:
    return arn(cfg.partition, "ecs", region, account, f"cluster/{cluster}")


def safe(name: str) -> str:
    """A service name made safe for resource names that forbid '/' (ECR allows it in repository names)."""
    return name.replace("/", "-")


# CodeDeploy's predefined ECS configurations: (type, percent, minutes) -> name. Anything else gets a custom one.
PREDEFINED_ECS_CONFIGS = {
    ("all-at-once", None, None): "CodeDeployDefault.ECSAllAtOnce",
    ("canary", 10, 5): "CodeDeployDefault.ECSCanary10Percent5Minutes",
    ("canary", 10, 15): "CodeDeployDefault.ECSCanary10Percent15Minutes",
    ("linear", 10, 1): "CodeDeployDefault.ECSLinear10PercentEvery1Minutes",
    ("linear", 10, 3): "CodeDeployDefault.ECSLinear10PercentEvery3Minutes",
}


def traffic_shift(env: EnvironmentConfig) -> tuple[str, int | None, int | None]:
    """(type, percent, minutes) of an environment's blue/green traffic shift, defaults applied."""
    shift = env.blue_green_settings.traffic_shift
    # A native strategy names its shift; only CodeDeploy environments take the type from the settings.
    kind = NATIVE_SHIFTS.get(env.strategy, shift.type)
    if kind == "all-at-once":
        return ("all-at-once", None, None)
    return (kind, shift.percent or DEFAULT_SHIFT_PERCENT, shift.interval_minutes or DEFAULT_SHIFT_MINUTES)


def deployment_config_name(cfg: StackConfig, env: EnvironmentConfig) -> str:
    """The CodeDeploy deployment configuration of a blue/green environment: predefined where one matches, else the
    custom one crossdeploy creates in each of the environment's regions under this name."""
    key = traffic_shift(env)
    if key in PREDEFINED_ECS_CONFIGS:
        return PREDEFINED_ECS_CONFIGS[key]
    kind, percent, minutes = key
    return iam_name(cfg.name_prefix, env.name, f"{kind}-{percent}pct-{minutes}min", max_len=100)


def release_blue_green_context(cfg: StackConfig, env: EnvironmentConfig) -> dict:
    """What a release needs to deploy a blue/green environment's services through CodeDeploy: the application, each
    service's deployment group and, in ``smokeTestHooks``, the smoke-test hook of each service with a ``smokeTest``
    (ECS service name -> :func:`smoke_hook_function_name`), which the release's AppSpec runs at
    ``AfterAllowTestTraffic`` as the pipeline's does. The key is left out when no service has a smoke test, so such a
    context is exactly what it was before hooks existed.

    The hook by function name, not ARN: CodeDeploy invokes it in the deployment's own account and region, where the
    workload created it under this one name (and the CodeDeploy service role may invoke exactly it), so one context
    entry serves every region of the environment."""
    context: dict = {"application": codedeploy_application_name(cfg, env.name),
                     "deploymentGroups": {s.service: deployment_group_name(cfg, s) for s in cfg.workload_services}}
    # Exactly the services the hook function has a smoke test for (components.workload.smoke_tested): asked about
    # any other deployment group it answers Failed. Only a codedeploy environment's hook answers CodeDeploy at all.
    hooks = {s.service: smoke_hook_function_name(cfg, env.name) for s in cfg.workload_services
             if s.smoke_test is not None and env.codedeploy}
    if hooks:
        context["smokeTestHooks"] = hooks
    return context


ALARM_KINDS = ("target-5xx", "unhealthy-targets")
"""The alarms crossdeploy gives every service it creates, in each environment and region: target 5xx responses
(ECS rolls a deployment back on it) and unhealthy targets; the alarm bake watches both."""


def alarm_name(cfg: StackConfig, environment: str, service: ServiceConfig, kind: str) -> str:
    """One of a service's alarms in an environment (the same name in each of its regions; alarms are regional)."""
    if kind not in ALARM_KINDS:
        raise ValueError(f"alarm kind: one of {ALARM_KINDS}, got {kind!r}")
    return iam_name(cfg.name_prefix, environment, service.cluster, service.service, kind, max_len=255)


def default_alarm_name(application_name: str, deployment_group_name: str) -> str:
    """A CodeDeploy deployment group's 5xx alarm: alarm names are unique per account and region, and two
    environments may share both names (each with a service of the same name)."""
    return iam_name(application_name, deployment_group_name, "target-5xx", max_len=255)


def codedeploy_alarm_name(cfg: StackConfig, environment: str, service: ServiceConfig) -> str:
    """The 5xx alarm CodeDeploy rolls a ``codedeploy`` deployment back on (``blue_green.default_alarm_name``)."""
    return default_alarm_name(codedeploy_application_name(cfg, environment), deployment_group_name(cfg, service))


def bake_alarm_names(cfg: StackConfig, env: EnvironmentConfig, service: ServiceConfig) -> tuple[str, ...]:
    """The alarms the bake after `env`'s deployment watches for `service`: its 5xx alarm (CodeDeploy's where
    CodeDeploy deploys) and its unhealthy-targets alarm. None for existing services: their alarms are not
    crossdeploy's."""
    if service.existing:
        return ()
    errors = (codedeploy_alarm_name(cfg, env.name, service) if env.codedeploy
              else alarm_name(cfg, env.name, service, "target-5xx"))
    return errors, alarm_name(cfg, env.name, service, "unhealthy-targets")


def smoke_hook_function_name(cfg: StackConfig, environment: str) -> str:
    """The smoke-test hook of an environment: one function per region of it, in its VPC, same name everywhere."""
    return iam_name(cfg.name_prefix, environment, "smoke-test", max_len=64, allowed=r"A-Za-z0-9_-")


def smoke_hook_function_arn(cfg: StackConfig, env: EnvironmentConfig, region: str) -> str:
    return arn(cfg.partition, "lambda", region, env.account_id,
               f"function:{smoke_hook_function_name(cfg, env.name)}")
