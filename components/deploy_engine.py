"""The deploy engine's Lambda function: what every service pipeline invokes to deploy an environment.

The engine (:mod:`handlers.deploy_engine`) renders nothing itself: it registers the task definition ``pulumi up``
wrote into the service's deploy document (:mod:`components.deploy_config`) with the image pinned by digest, points
each region's service at it, follows ECS's service deployment (rolling, blue-green, canary and linear are ECS's
own) and, if any region fails, puts every region back. :mod:`handlers.pipeline_deploy` is its CodePipeline entry.

Why a Lambda *invoke action* (CodePipeline action quotas, DESIGN.md pitfall 14): it may run 24 hours in all if the
function replies at least every 20 minutes with a continuation token, and ECS bakes go up to 1440 minutes. Step
Functions and the other invoke actions stop at 1 hour, CodeBuild on Lambda compute at 15 minutes, and the ECS
standard action copies the *running* task definition, so config changes would never ship (pitfall 12). The action
runs in the home region; one invocation covers all of an environment's regions in parallel.

The same function runs the **alarm bake** after an environment deployed (a ``Bake`` action, see
:mod:`handlers.pipeline_deploy`) and the **smoke test** after a rolling deployment (:mod:`handlers.smoke_test`).

The package is exactly ``handlers/__init__.py``, ``ecs_common.py``, ``deploy_engine.py``, ``pipeline_deploy.py`` and
``smoke_test.py``, byte for byte from this repository (:mod:`components.lambda_code`). The role may:

* assume exactly the deploy roles of the accounts it deploys to or bakes in (those roles trust it back);
* answer CodePipeline jobs (``PutJobSuccessResult``/``PutJobFailureResult``: these take a job id and support no
  resource-level permissions);
* write its own log group. Input artifacts are read with the job's own short-lived artifact credentials, so the
  role has no S3 or KMS rights at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components import naming
from components import policies as p
from components.config import StackConfig
from components.lambda_code import RUNTIME, handler_archive
from components.service_role import function_logs_and_role

ENGINE_MODULES = ("__init__.py", "ecs_common.py", "deploy_engine.py", "pipeline_deploy.py", "smoke_test.py")
HANDLER = "handlers.pipeline_deploy.handler"
TIMEOUT_SECONDS = 900
"""Lambda's maximum. The handler answers CodePipeline within ~10 minutes and keeps a reserve before this."""


def engine_accounts(cfg: StackConfig) -> tuple[str, ...]:
    """Workload accounts the engine works in for pipeline services, in promotion order: where it deploys, and where
    it watches the alarms of a bake."""
    return tuple(dict.fromkeys(env.account_id for s in cfg.pipeline_services
                               for env in (*cfg.engine_environments(s), *cfg.baked_environments(s))))


def engine_deploy_role_arns(cfg: StackConfig) -> tuple[str, ...]:
    return tuple(naming.deploy_role_arn(cfg, account) for account in engine_accounts(cfg))


@dataclass(frozen=True)
class DeployEngineArgs:
    provider: aws.Provider
    """Tools account provider in the home region (where the pipelines run)."""
    tools_account_id: str
    function_name: str
    role_name: str
    role_path: str
    deploy_role_arns: tuple[str, ...]
    """The deploy roles of the accounts the engine serves: the only roles it may assume."""
    log_retention_days: int = 30
    """Log retention. Default 30."""
    memory_size: int = 512
    """MB. Default 512: boto3 clients for many regions at once, and a faster CPU share for the polling threads."""
    poll_seconds: int | None = None
    """How often the engine reads ECS's deployment status. Default: the handler's (15 s)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.deploy_role_arns:
            problems.append("deploy_role_arns: at least one deploy role is required")
        if any("*" in arn or "?" in arn for arn in self.deploy_role_arns):
            problems.append("deploy_role_arns: exact role ARNs, no wildcards")
        if not 128 <= self.memory_size <= 10240:
            problems.append(f"memory_size: Lambda accepts 128-10240 MB, got {self.memory_size}")
        if self.poll_seconds is not None and not 1 <= self.poll_seconds <= 120:
            problems.append(f"poll_seconds: 1-120, got {self.poll_seconds}")
        if problems:
            raise ValueError("DeployEngineArgs: " + "; ".join(problems))


def deploy_engine_args(cfg: StackConfig, provider: aws.Provider) -> DeployEngineArgs:
    """The engine of the stack's pipelines, allowed to assume the deploy roles of the accounts it serves
    (:func:`engine_accounts`: a stack without any has no engine); `provider`: the tools account's, in the home
    region."""
    return DeployEngineArgs(
        provider=provider,
        tools_account_id=cfg.tools_account_id,
        function_name=naming.engine_function_name(cfg),
        role_name=naming.engine_function_name(cfg),
        role_path=naming.iam_path(cfg, "engine"),
        deploy_role_arns=engine_deploy_role_arns(cfg),
    )


def engine_policy(args: DeployEngineArgs, log_group_arn: pulumi.Input[str]) -> dict:
    return p.document([
        # A plain ARN keeps the document plain: the config check measures it (components.limits).
        p.statement("WriteOwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                    [log_group_arn + ":*" if isinstance(log_group_arn, str)
                     else pulumi.Output.concat(log_group_arn, ":*")]),
        p.statement("AssumeDeployRoles", ["sts:AssumeRole"], sorted(set(args.deploy_role_arns))),
        p.unscoped("AnswerPipelineJobs", ["codepipeline:PutJobFailureResult", "codepipeline:PutJobSuccessResult"],
                   why="CodePipeline job actions take a job id and support no resource-level permissions"),
    ])


def engine_code() -> pulumi.AssetArchive:
    return handler_archive(ENGINE_MODULES)


class DeployEngine(pulumi.ComponentResource):
    """The engine function, its role and log group. ``function_name``/``function_arn`` for the pipelines."""

    def __init__(self, name: str, args: DeployEngineArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:deploy_engine:DeployEngine", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        log_group, role, role_policy = function_logs_and_role(
            name, function_name=args.function_name, role_name=args.role_name, path=args.role_path,
            account_id=args.tools_account_id, retention_days=args.log_retention_days,
            policy=lambda log_group_arn: engine_policy(args, log_group_arn), opts=child)
        variables = {"CROSSDEPLOY_POLL_SECONDS": str(args.poll_seconds)} if args.poll_seconds else None
        function = aws.lambda_.Function(
            f"{name}-function",
            name=args.function_name,
            description="crossdeploy: deploys a service's rendered task definition to every region of an environment",
            runtime=RUNTIME,
            architectures=["arm64"],
            handler=HANDLER,
            code=engine_code(),
            role=role.arn,
            timeout=TIMEOUT_SECONDS,
            memory_size=args.memory_size,
            environment=aws.lambda_.FunctionEnvironmentArgs(variables=variables) if variables else None,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[role_policy, log_group])),
        )
        self.function_name: pulumi.Output[str] = function.name
        self.function_arn: pulumi.Output[str] = function.arn
        self.role_arn: pulumi.Output[str] = role.arn
        self.register_outputs({"functionName": function.name, "functionArn": function.arn, "roleArn": role.arn})
