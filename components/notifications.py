"""The stack's notification topic: manual approval requests and pipeline failures reach people through it.

The topic is encrypted with its own customer-managed key, because AWS-managed SNS keys cannot be used by
CodeStar Notifications (the service would be denied ``kms:GenerateDataKey`` and drop notices silently).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components import policies as p
from components.config import StackConfig

CODESTAR_NOTIFICATIONS = "codestar-notifications.amazonaws.com"
# Who publishes: CodeStar Notifications (pipeline failures), EventBridge (forwarded ECS rollout failures) and
# CloudWatch (alarms on the push-deploy dead-letter queue and function errors).
PUBLISHERS = (CODESTAR_NOTIFICATIONS, "events.amazonaws.com", "cloudwatch.amazonaws.com")


@dataclass(frozen=True)
class NotificationsArgs:
    provider: aws.Provider
    """Tools account provider in the home region."""
    partition: str
    account_id: str
    region: str
    emails: tuple[str, ...] = field(default_factory=tuple)
    """Addresses subscribed to the topic; each must confirm the subscription AWS mails it. Default: none."""
    publisher_services: tuple[str, ...] = PUBLISHERS
    """Service principals allowed to publish (and to use the key through SNS). Default: :data:`PUBLISHERS`."""


def notifications_args(cfg: StackConfig, provider: aws.Provider) -> NotificationsArgs:
    """The stack's topic, with the config's ``emails`` subscribed; `provider`: the tools account's, in the home
    region."""
    return NotificationsArgs(provider=provider, partition=cfg.partition, account_id=cfg.tools_account_id,
                             region=cfg.tools_region, emails=cfg.emails)


def topic_key_policy(args: NotificationsArgs) -> dict:
    return p.document([
        p.key_owner_statement(args.partition, args.account_id),
        p.statement("ServicesPublishThroughSns", ["kms:Decrypt", "kms:GenerateDataKey"], "*",
                    principals={"Service": sorted(args.publisher_services)},
                    # Only through SNS in this region; the topic policy pins the publishing account.
                    conditions={"StringEquals": {"kms:ViaService": f"sns.{args.region}.amazonaws.com"}}),
    ])


def topic_policy(args: NotificationsArgs, topic_arn: pulumi.Input[str]) -> dict:
    return p.document([
        p.statement("ServicesPublish", ["sns:Publish"], [topic_arn],
                    principals={"Service": sorted(args.publisher_services)},
                    conditions={"StringEquals": {"aws:SourceAccount": args.account_id}}),
        p.statement("DenyInsecureTransport", ["sns:Publish"], [topic_arn], effect="Deny",
                    principals={"AWS": "*"}, conditions={"Bool": {"aws:SecureTransport": "false"}}),
    ])


class Notifications(pulumi.ComponentResource):
    """An encrypted SNS topic with its subscribers. ``topic_arn`` and ``key_arn`` are what publishers need."""

    def __init__(self, name: str, args: NotificationsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:notifications:Notifications", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        key = aws.kms.Key(f"{name}-key", description="crossdeploy notifications topic", enable_key_rotation=True,
                          deletion_window_in_days=30, policy=p.to_json(topic_key_policy(args)), opts=child)
        topic = aws.sns.Topic(f"{name}-topic", kms_master_key_id=key.arn, opts=child)
        aws.sns.TopicPolicy(f"{name}-topic-policy", arn=topic.arn, policy=p.to_json(topic_policy(args, topic.arn)),
                            opts=child)
        for email in args.emails:
            # Named by address, not position: reordering the list must not re-subscribe (and re-mail) anyone.
            suffix = hashlib.sha256(email.encode()).hexdigest()[:8]
            aws.sns.TopicSubscription(f"{name}-email-{suffix}", topic=topic.arn, protocol="email", endpoint=email,
                                      opts=child)
        self.topic_arn = topic.arn
        self.key_arn = key.arn
        self.register_outputs({"topicArn": topic.arn})
