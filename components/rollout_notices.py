"""Failed rollouts reach a human: ECS "Deployment State Change" events of the managed services are forwarded from
every workload account and region to an event bus in the tools account and published to the SNS topic.

A deployment the circuit breaker rolls back leaves the service healthy on its old revision — nothing looks broken
in the workload account, so without this notice nobody learns that the new image never went live. Push deploys in
particular have no pipeline to turn red.

Forwarding crosses accounts (and regions, for environments outside the home region) with EventBridge's event bus
targets: each workload account has one forwarder role allowed to put events on exactly the tools bus, and the
bus policy admits exactly those roles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pulumi
import pulumi_aws as aws

from components import naming
from components import policies as p
from components.config import StackConfig
from components.providers import Providers
from components.service_role import service_role

if TYPE_CHECKING:  # the component notices are published through (its module need not load with this one)
    from components.notifications import Notifications

FAILED_EVENTS = ("SERVICE_DEPLOYMENT_FAILED",)


def deployment_pattern(partition: str, account: str, region: str, clusters: list[str]) -> dict:
    """Failed deployments of services in the managed clusters. Matched by cluster prefix, not by service ARN: a
    list of every service ARN would outgrow EventBridge's 2,048-character pattern limit."""
    return {
        "source": ["aws.ecs"],
        "detail-type": ["ECS Deployment State Change"],
        "resources": [{"prefix": f"arn:{partition}:ecs:{region}:{account}:service/{c}/"} for c in clusters],
        "detail": {"eventName": list(FAILED_EVENTS)},
    }


@dataclass(frozen=True)
class RolloutNoticesArgs:
    provider: aws.Provider
    """Tools account, home region (where the topic is)."""
    partition: str
    tools_account_id: str
    bus_name: str
    notification_topic_arn: pulumi.Input[str]
    forwarder_role_arns: dict[str, str]
    """Workload account -> its forwarder role ARN (the only principals allowed to put events on the bus)."""


def rollout_notices_args(cfg: StackConfig, provider: aws.Provider, notifications: Notifications) -> RolloutNoticesArgs:
    """The stack's bus, open to every workload account's forwarder role; `provider`: the tools account's, in the
    home region."""
    return RolloutNoticesArgs(
        provider=provider,
        partition=cfg.partition,
        tools_account_id=cfg.tools_account_id,
        bus_name=p.iam_name(cfg.name_prefix, "rollouts"),
        notification_topic_arn=notifications.topic_arn,
        forwarder_role_arns={account: naming.forwarder_role_arn(cfg, account) for account in cfg.workload_accounts},
    )


class RolloutNotices(pulumi.ComponentResource):
    """The tools-side bus that receives forwarded deployment failures and publishes them to the topic."""

    def __init__(self, name: str, args: RolloutNoticesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:rollout_notices:RolloutNotices", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        bus = aws.cloudwatch.EventBus(f"{name}-bus", name=args.bus_name, opts=child)
        aws.cloudwatch.EventBusPolicy(
            f"{name}-bus-policy", event_bus_name=bus.name,
            policy=p.to_json(p.document([p.statement(
                "WorkloadForwarders", ["events:PutEvents"], [bus.arn],
                principals={"AWS": sorted(p.account_root(args.partition, a) for a in args.forwarder_role_arns)},
                conditions=p.principal_arn_condition(sorted(args.forwarder_role_arns.values())))])),
            opts=child)
        rule = aws.cloudwatch.EventRule(
            f"{name}-failed", event_bus_name=bus.name,
            description="Forwarded ECS deployment failures (circuit breaker rollbacks) -> SNS",
            event_pattern=pulumi.Output.json_dumps({"source": ["aws.ecs"],
                                                    "detail-type": ["ECS Deployment State Change"]}),
            opts=child)
        aws.cloudwatch.EventTarget(
            f"{name}-to-topic", rule=rule.name, event_bus_name=bus.name, arn=args.notification_topic_arn,
            input_transformer=aws.cloudwatch.EventTargetInputTransformerArgs(
                input_paths={"event": "$.detail.eventName", "service": "$.resources[0]", "account": "$.account",
                             "region": "$.region", "reason": "$.detail.reason"},
                input_template='"crossdeploy: <event> for <service> (account <account>, <region>): <reason>"'),
            opts=child)
        self.bus_arn = bus.arn
        self.register_outputs({"busArn": bus.arn})


@dataclass(frozen=True)
class RolloutForwarderArgs:
    providers: dict[str, aws.Provider]
    """Region -> provider of the workload account (the first one also holds the account's forwarder role)."""
    partition: str
    tools_account_id: str
    account_id: str
    role_name: str
    role_path: str
    bus_arn: pulumi.Input[str]
    clusters: dict[str, list[str]]
    """Region -> names of the ECS clusters running managed services there."""


def rollout_forwarder_args(cfg: StackConfig, account: str, providers: Providers,
                           notices: RolloutNotices) -> RolloutForwarderArgs:
    """`account`'s forwarder: a rule in each of its regions for every cluster of the stack's services."""
    regions = cfg.account_regions(account)
    return RolloutForwarderArgs(
        providers={region: providers.get(account, region) for region in regions},
        partition=cfg.partition,
        tools_account_id=cfg.tools_account_id,
        account_id=account,
        role_name=naming.forwarder_role_arn(cfg, account).rsplit("/", 1)[-1],
        role_path=naming.iam_path(cfg, "notices"),
        bus_arn=notices.bus_arn,
        clusters={region: sorted({s.cluster for s in cfg.services}) for region in regions},
    )


class RolloutForwarder(pulumi.ComponentResource):
    """In one workload account: a rule per region forwarding the managed services' failed deployments."""

    def __init__(self, name: str, args: RolloutForwarderArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:rollout_notices:RolloutForwarder", name, None, opts)
        first = next(iter(args.providers.values()))
        role, policy = service_role(
            name, role_name=args.role_name, path=args.role_path, service="events.amazonaws.com",
            account_id=args.account_id,
            policy=p.document([p.statement("ForwardToTools", ["events:PutEvents"], [args.bus_arn])]),
            opts=pulumi.ResourceOptions(parent=self, provider=first))
        for region, provider in args.providers.items():
            opts = pulumi.ResourceOptions(parent=self, provider=provider)
            rule = aws.cloudwatch.EventRule(
                f"{name}-{region}-failed", description="crossdeploy: failed ECS deployments -> tools account",
                event_pattern=pulumi.Output.json_dumps(deployment_pattern(
                    args.partition, args.account_id, region, sorted(set(args.clusters[region])))),
                opts=opts)
            aws.cloudwatch.EventTarget(
                f"{name}-{region}-forward", rule=rule.name, arn=args.bus_arn, role_arn=role.arn,
                opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[policy])))
        self.role_arn = role.arn
        self.register_outputs({"roleArn": role.arn})
