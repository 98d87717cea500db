"""Names and ARNs that more than one component must agree on.

A cross-account 403 is almost always two places disagreeing about a name. Every name that crosses a component
boundary (the deploy role, the pipeline role path, the workload task and execution roles, ECS service ARNs) is
derived here and nowhere else.
"""

from __future__ import annotations

from components.config import ServiceConfig, StackConfig
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


def forwarder_role_arn(cfg: StackConfig, account: str) -> str:
    return role_arn(cfg.partition, account, iam_name(cfg.project, cfg.stack, "rollout-forwarder"),
                    iam_path(cfg, "notices"))


def workload_role_names(cfg: StackConfig, service: ServiceConfig) -> tuple[str, str]:
    """(task role, execution role) names of a service in every workload account."""
    return (iam_name(cfg.stack, service.service, "task"), iam_name(cfg.stack, service.service, "execution"))


def workload_role_arns(cfg: StackConfig, account: str, service: ServiceConfig) -> list[str]:
    """The only roles the deploy role may pass to ECS for this service: its task and execution roles."""
    path = iam_path(cfg, "workload")
    return [role_arn(cfg.partition, account, name, path) for name in workload_role_names(cfg, service)]


def ecs_service_arn(cfg: StackConfig, account: str, region: str, service: ServiceConfig) -> str:
    return arn(cfg.partition, "ecs", region, account, f"service/{service.cluster}/{service.service}")


def ecs_cluster_arn(cfg: StackConfig, account: str, region: str, cluster: str) -> str:
    return arn(cfg.partition, "ecs", region, account, f"cluster/{cluster}")


def safe(name: str) -> str:
    """A service name made safe for resource names that forbid '/' (ECR allows it in repository names)."""
    return name.replace("/", "-")
