"""Push deploys: a push of an environment tag (``qa-1.8.0``) to a push service's repository rolls that exact image,
pinned by digest, out to the environment's services in other accounts — EventBridge rule -> Lambda.

CloudFormation and CDK cannot express "redeploy when a tag appears in another account's registry"; this is the
seed system's EventBridge + Lambda design with its weaknesses fixed:

* the Lambda registers a task definition revision pinned to the regional ``repo@sha256:`` URI (``pushMode:
  revision``), so every deployment is reproducible and can be rolled back to a known image; ``force`` remains for
  teams on mutable tags;
* retries (EventBridge to Lambda, then Lambda's async retries) and an encrypted dead-letter queue keep every event
  that could not be handled, and an alarm on that queue (and on the function's errors) reaches the SNS topic;
* the target map ships as ``targets.json`` inside the code package, not in environment variables, which Lambda caps
  at 4 KB in all; with it, each ``revision`` service's deploy document (``components.task_definition``), so a push
  deploys, through the deploy engine (``handlers/deploy_engine.py``, in the same package), exactly the task
  definition ``pulumi up`` rendered, with only the image pinned by digest.

:func:`push_services` turns the validated stack config into the component's :class:`PushService` list, so
``__main__`` stays wiring.

The handler (``handlers/push_deploy.py``) is plain boto3 and tested against moto; this module only wires it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi_aws as aws

from components import limits, naming
from components import policies as p
from components.config import StackConfig
from components.lambda_code import RUNTIME, handler_archive
from components.service_role import function_logs_and_role
from components.task_definition import deploy_document

if TYPE_CHECKING:  # components push deploys are wired to (their modules need not load with this one)
    from components.notifications import Notifications
    from components.registry import Registry

# EventBridge rejects event patterns over 2,048 characters: repositories are spread over as many rules as needed.
MAX_PATTERN_CHARS = limits.EVENTBRIDGE_PATTERN_CHARS
TARGETS_FILE = "targets.json"
LAMBDA_TIMEOUT_SECONDS = 900


@dataclass(frozen=True)
class PushTarget:
    environment: str
    tag_patterns: tuple[str, ...]
    account_id: str
    region: str
    cluster: str
    service: str
    role_arn: str
    """The workload account's deploy role, assumed by the function."""


@dataclass(frozen=True)
class PushService:
    repository: str
    container: str
    mode: str
    """``revision`` or ``force``."""
    targets: tuple[PushTarget, ...]
    repository_arns: tuple[pulumi.Input[str], ...] = field(default_factory=tuple)
    """The repository in every region (the function reads image metadata to wait for replication)."""
    deploy_document: dict[str, Any] | None = field(default=None, compare=False)
    """``revision``: the service's deploy document (``components.task_definition.deploy_document``), what the
    engine registers; ``force``: None (no revision is registered)."""


@dataclass(frozen=True)
class PushDeployArgs:
    provider: aws.Provider
    """Tools account provider in the home region."""
    partition: str
    tools_account_id: str
    home_region: str
    services: tuple[PushService, ...]
    function_name: str
    role_name: str
    role_path: str
    notification_topic_arn: pulumi.Input[str]
    replication_timeout_seconds: int = 300
    """How long the function waits for ECR replication per region. Default 300."""
    max_concurrency: int = 8
    """Targets deployed at once. Default 8: ECS throttles per account and region."""
    log_retention_days: int = 30

    def __post_init__(self) -> None:
        problems = []
        if not self.services:
            problems.append("services: at least one push service is required")
        if not 1 <= self.max_concurrency <= 64:
            problems.append(f"max_concurrency: 1-64, got {self.max_concurrency}")
        if not 0 < self.replication_timeout_seconds < LAMBDA_TIMEOUT_SECONDS - 120:
            problems.append("replication_timeout_seconds: must leave the function time to deploy")
        for s in self.services:
            if s.mode not in ("revision", "force"):
                problems.append(f"services[{s.repository}].mode: revision or force, got {s.mode!r}")
            if not s.targets:
                problems.append(f"services[{s.repository}]: no targets")
            if (s.deploy_document is None) != (s.mode == "force"):
                problems.append(f"services[{s.repository}].deploy_document: required for mode revision, None for "
                                f"force (got {'none' if s.deploy_document is None else 'one'} for {s.mode!r})")
        if problems:
            raise ValueError("PushDeployArgs: " + "; ".join(problems))

    @property
    def deploy_role_arns(self) -> list[str]:
        return sorted({t.role_arn for s in self.services for t in s.targets})

    @property
    def tag_patterns(self) -> list[str]:
        return sorted({tag for s in self.services for t in s.targets for tag in t.tag_patterns})


def push_services(cfg: StackConfig,
                  repository_arns: Mapping[str, Sequence[pulumi.Input[str]]]) -> tuple[PushService, ...]:
    """Every push-delivery service of the stack: its targets (every region of every environment, with the
    environment's push tags), and for ``revision`` its deploy document. ``repository_arns``: repository name -> its
    ARN in every region."""
    return tuple(
        PushService(
            repository=s.name, container=s.container, mode=s.mode,
            repository_arns=tuple(repository_arns[s.name]),
            targets=tuple(
                PushTarget(environment=env.name, tag_patterns=tuple(env.tag_patterns), account_id=env.account_id,
                           region=region, cluster=s.cluster, service=s.service,
                           role_arn=naming.deploy_role_arn(cfg, env.account_id))
                for env in cfg.environments for region in env.regions),
            deploy_document=deploy_document(cfg, s) if s.mode == "revision" else None,
        )
        for s in cfg.push_services
    )


def push_deploy_args(cfg: StackConfig, provider: aws.Provider, registry: Registry,
                     notifications: Notifications) -> PushDeployArgs:
    """The function deploying every push-delivery service (:func:`push_services`) from its repositories in every
    region; `provider`: the tools account's, in the home region."""
    return PushDeployArgs(
        provider=provider,
        partition=cfg.partition,
        tools_account_id=cfg.tools_account_id,
        home_region=cfg.tools_region,
        services=push_services(cfg, {s.name: tuple(registry.repositories[s.name].arns.values())
                                     for s in cfg.push_services}),
        function_name=naming.push_function_name(cfg),
        role_name=naming.push_function_name(cfg),
        role_path=naming.iam_path(cfg, "push"),
        notification_topic_arn=notifications.topic_arn,
    )


def targets_document(args: PushDeployArgs) -> dict[str, Any]:
    """The ``targets.json`` the handler reads (its ``load_targets`` validates the same shape)."""
    return target_map(tools_account_id=args.tools_account_id, home_region=args.home_region,
                      partition=args.partition, replication_timeout_seconds=args.replication_timeout_seconds,
                      max_concurrency=args.max_concurrency, services=args.services)


def target_map(*, tools_account_id: str, home_region: str, partition: str, replication_timeout_seconds: int,
               max_concurrency: int, services: Sequence[PushService]) -> dict[str, Any]:
    """:func:`targets_document` from its parts: the config check (:mod:`components.limits`) builds the package's
    target map with it before any resource exists, to measure the package against Lambda's size limits."""
    return {
        "version": 2,
        "registryId": tools_account_id,
        "homeRegion": home_region,
        "partition": partition,
        "replicationTimeoutSeconds": replication_timeout_seconds,
        "maxConcurrency": max_concurrency,
        "repositories": {
            s.repository: {
                "pushMode": s.mode,
                "containerName": s.container,
                "deployDocument": s.deploy_document,
                "targets": [{
                    "environment": t.environment, "tagPatterns": list(t.tag_patterns), "accountId": t.account_id,
                    "region": t.region, "cluster": t.cluster, "service": t.service, "roleArn": t.role_arn,
                } for t in s.targets],
            } for s in services
        },
    }


def event_pattern(repositories: list[str], tag_patterns: list[str]) -> dict[str, Any]:
    """One rule's pattern: successful pushes of `repositories` with a tag matching one of `tag_patterns`. The
    config check (:mod:`components.limits`) measures it for each repository alone, the smallest rule there is."""
    return {
        "source": ["aws.ecr"],
        "detail-type": ["ECR Image Action"],
        "detail": {
            "action-type": ["PUSH"],
            "result": ["SUCCESS"],
            "repository-name": repositories,
            "image-tag": [{"wildcard": t} if "*" in t else t for t in tag_patterns],
        },
    }


def event_patterns(repositories: list[str], tag_patterns: list[str]) -> list[dict[str, Any]]:
    """Exactly successful pushes of the push repositories with a configured tag pattern, in as few rules as fit."""

    def pattern(repos: list[str]) -> dict[str, Any]:
        return event_pattern(repos, tag_patterns)

    chunks: list[list[str]] = [[]]
    for repo in repositories:
        if chunks[-1] and len(json.dumps(pattern([*chunks[-1], repo]))) > MAX_PATTERN_CHARS:
            chunks.append([])
        chunks[-1].append(repo)
    patterns = [pattern(c) for c in chunks if c]
    if any(len(json.dumps(x)) > MAX_PATTERN_CHARS for x in patterns):
        raise ValueError("push tag patterns alone exceed EventBridge's 2,048-character event pattern limit")
    return patterns


# One ARN per repository and region while they fit; past that, the tools account's repositories per region: IAM
# caps the role's inline policy at 10,240 characters, and DescribeImages only reads image metadata.
MAX_EXACT_REPOSITORY_ARNS = 40


def replica_resources(args: PushDeployArgs) -> list[pulumi.Input[str]]:
    exact = [arn for s in args.services for arn in s.repository_arns]
    if len(exact) <= MAX_EXACT_REPOSITORY_ARNS:
        return exact
    regions = sorted({args.home_region, *(t.region for s in args.services for t in s.targets)})
    return [p.arn(args.partition, "ecr", r, args.tools_account_id, "repository/*") for r in regions]


def function_policy(args: PushDeployArgs, log_group_arn: pulumi.Input[str], queue_arn: pulumi.Input[str]) -> dict:
    return p.document([
        p.statement("WriteOwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                    [pulumi.Output.concat(log_group_arn, ":*")]),
        p.statement("WaitForReplicas", ["ecr:DescribeImages"], replica_resources(args)),
        p.statement("AssumeDeployRoles", ["sts:AssumeRole"], args.deploy_role_arns),
        p.statement("DeadLetter", ["sqs:SendMessage"], [queue_arn]),
    ])


def package_documents(document: dict[str, Any]) -> dict[str, str]:
    """The generated files of the package next to the handlers (measured at config load, :mod:`components.limits`)."""
    return {TARGETS_FILE: json.dumps(document, indent=1, sort_keys=True)}


def _code(document: dict[str, Any]) -> pulumi.AssetArchive:
    # The handlers package as it is in this repository (what the tests run: the push handler, the deploy engine and
    # what they import) plus the generated target map with the deploy documents.
    return handler_archive(documents=package_documents(document))


class PushDeploy(pulumi.ComponentResource):
    """The ECR push rule, the deploying function with its role, retries, dead-letter queue and alarms."""

    def __init__(self, name: str, args: PushDeployArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:push_deploy:PushDeploy", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        document = targets_document(args)

        queue = aws.sqs.Queue(
            f"{name}-dlq",
            # Server-side encryption with SQS-owned keys: no key policy to keep in step with EventBridge.
            sqs_managed_sse_enabled=True,
            message_retention_seconds=14 * 24 * 3600,  # the maximum: a failed rollout can wait for a human
            opts=child)
        log_group, role, role_policy = function_logs_and_role(
            name, function_name=args.function_name, role_name=args.role_name, path=args.role_path,
            account_id=args.tools_account_id, retention_days=args.log_retention_days,
            policy=lambda log_group_arn: function_policy(args, log_group_arn, queue.arn), opts=child)
        function = aws.lambda_.Function(
            f"{name}-function",
            name=args.function_name,
            description="crossdeploy: deploys pushed environment tags, pinned by digest, to workload accounts",
            runtime=RUNTIME,
            architectures=["arm64"],
            handler="handlers.push_deploy.handler",
            code=_code(document),
            role=role.arn,
            timeout=LAMBDA_TIMEOUT_SECONDS,
            memory_size=512,
            dead_letter_config=aws.lambda_.FunctionDeadLetterConfigArgs(target_arn=queue.arn),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[role_policy, log_group])),
        )
        aws.lambda_.FunctionEventInvokeConfig(
            f"{name}-async", function_name=function.name, maximum_retry_attempts=2,
            maximum_event_age_in_seconds=3600, opts=child)

        rule_arns = []
        repositories = [s.repository for s in args.services]
        for i, pattern in enumerate(event_patterns(repositories, args.tag_patterns)):
            rule = aws.cloudwatch.EventRule(
                f"{name}-rule-{i}", description="Successful pushes of environment tags to push-delivery repositories",
                event_pattern=json.dumps(pattern), opts=child)
            rule_arns.append(rule.arn)
            aws.lambda_.Permission(
                f"{name}-invoke-{i}", action="lambda:InvokeFunction", function=function.name,
                principal="events.amazonaws.com", source_arn=rule.arn, opts=child)
            aws.cloudwatch.EventTarget(
                f"{name}-target-{i}", rule=rule.name, arn=function.arn,
                retry_policy=aws.cloudwatch.EventTargetRetryPolicyArgs(
                    maximum_event_age_in_seconds=3600, maximum_retry_attempts=20),
                dead_letter_config=aws.cloudwatch.EventTargetDeadLetterConfigArgs(arn=queue.arn),
                opts=child)
        aws.sqs.QueuePolicy(
            f"{name}-dlq-policy", queue_url=queue.url,
            policy=p.to_json(p.document([p.statement(
                "RulesDeadLetter", ["sqs:SendMessage"], [queue.arn], principals={"Service": "events.amazonaws.com"},
                conditions={"ArnEquals": {"aws:SourceArn": rule_arns}})])),
            opts=child)

        for metric, namespace, dimensions, what in (
            ("ApproximateNumberOfMessagesVisible", "AWS/SQS", {"QueueName": queue.name},
             "push deploy events could not be handled (dead-letter queue)"),
            ("Errors", "AWS/Lambda", {"FunctionName": function.name}, "the push deploy function failed"),
        ):
            aws.cloudwatch.MetricAlarm(
                f"{name}-alarm-{metric.lower()}", alarm_description=f"crossdeploy: {what}",
                namespace=namespace, metric_name=metric, dimensions=dimensions, statistic="Maximum", period=300,
                evaluation_periods=1, threshold=0, comparison_operator="GreaterThanThreshold",
                treat_missing_data="notBreaching", alarm_actions=[args.notification_topic_arn],
                ok_actions=[args.notification_topic_arn], opts=child)

        self.function_arn = function.arn
        self.role_arn = role.arn
        self.queue_arn = queue.arn
        self.register_outputs({"functionArn": function.arn, "deadLetterQueueArn": queue.arn})
