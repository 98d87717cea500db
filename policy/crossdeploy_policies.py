"""crossdeploy's policies: each check of crossdeploy_checks.py wrapped in a pulumi_policy validate callback.

Kept apart from __main__.py because constructing the PolicyPack starts the analyzer's gRPC server and never returns:
the tests import this module to run the policies' validate callbacks themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import crossdeploy_checks as checks
from pulumi_policy import (
    EnforcementLevel,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

PACK_NAME = "crossdeploy"

ResourceCheck = Callable[[str, str, Mapping[str, Any]], list[str]]
StackCheck = Callable[[Sequence[checks.StackResource]], list[tuple[str, str]]]


def resource_policy(name: str, description: str, check: ResourceCheck,
                    level: EnforcementLevel = EnforcementLevel.MANDATORY) -> ResourceValidationPolicy:
    """A policy reporting each message ``check`` returns for a resource (the engine attaches the resource's URN)."""

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in check(args.resource_type, args.name, args.props):
            report_violation(message, None)

    return ResourceValidationPolicy(name=name, description=description, validate=validate, enforcement_level=level)


def stack_policy(name: str, description: str, check: StackCheck,
                 level: EnforcementLevel = EnforcementLevel.MANDATORY) -> StackValidationPolicy:
    """A policy over the whole stack reporting each (URN, message) ``check`` returns against that resource."""

    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        for urn, message in check(args.resources):
            report_violation(message, urn)

    return StackValidationPolicy(name=name, description=description, validate=validate, enforcement_level=level)


def _validate_provider(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    for message in checks.provider_violations(args.resource_type, args.name, args.provider):
        report_violation(message, None)


MANDATORY: list[ResourceValidationPolicy | StackValidationPolicy] = [
    resource_policy(
        "iam-no-wildcard-actions",
        "IAM documents allow only named actions (no '*' or '?' in an allowed action, no NotAction): a wildcard "
        "grants every action the service has or will add, far beyond what crossdeploy calls.",
        checks.wildcard_action_violations),
    resource_policy(
        "iam-resource-star-only-unscopable",
        'An Allow on Resource "*" grants only actions AWS cannot scope to a resource (crossdeploy_standards.'
        'UNSCOPABLE); everything else names its ARNs. Key policies, where "*" means the key itself, are exempt.',
        checks.resource_star_violations),
    resource_policy(
        "iam-pass-role-names-service",
        "iam:PassRole is allowed only under a StringEquals iam:PassedToService condition, so a role meant for ECS "
        "cannot be handed to another service and its permissions used from there.",
        checks.pass_role_violations),
    stack_policy(
        "s3-buckets-tls-only",
        "Every S3 bucket has a bucket policy denying all S3 actions without TLS (aws:SecureTransport false): "
        "artifacts and deploy documents never travel in clear text.",
        checks.tls_only_violations),
    stack_policy(
        "s3-buckets-block-public-access",
        "Every S3 bucket has a public access block with all four flags true: no ACL or policy can make pipeline "
        "artifacts or deploy documents public.",
        checks.public_access_violations),
    resource_policy(
        "kms-keys-rotate",
        "Customer managed KMS keys have automatic key rotation enabled, limiting what one exposed key version can "
        "decrypt.",
        checks.key_rotation_violations),
    resource_policy(
        "codepipeline-artifacts-kms-key-arn",
        "Pipeline artifact stores are encrypted with a customer managed KMS key named by its key ARN: the AWS managed "
        "key cannot be shared, and an alias or key id resolves in the reading account, breaking cross-account deploys.",
        checks.artifact_store_violations),
    resource_policy(
        "codepipeline-approval-and-bake-before-prod",
        "A pipeline's Deploy-<env> stage of a prod environment, or of one with an approval, comes right after its "
        "Approve-<env> stage (a Manual approval) and ends with a Bake action (Invoke/Lambda) watching the "
        "environment's alarms: nobody ships to prod unapproved, and a bad release there rolls back by itself.",
        checks.approval_and_bake_violations),
    ResourceValidationPolicy(
        name="aws-explicit-provider",
        description="Every AWS resource names an explicit provider: the default provider uses whatever credentials "
                    "and region the operator has, so in a multi-account program a resource could land in the wrong "
                    "account.",
        validate=_validate_provider,
        enforcement_level=EnforcementLevel.MANDATORY),
]

# Advisory: the program's load balancers have neither yet, so these report on every preview without blocking it.
ADVISORY: list[ResourceValidationPolicy | StackValidationPolicy] = [
    resource_policy(
        "alb-access-logs",
        "Application load balancers write access logs to S3: the record of every request, for incidents and audits.",
        checks.access_log_violations, EnforcementLevel.ADVISORY),
    resource_policy(
        "alb-deletion-protection",
        "Application load balancers have deletion protection: deleting one drops all traffic of its services.",
        checks.deletion_protection_violations, EnforcementLevel.ADVISORY),
]

POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = MANDATORY + ADVISORY


def build_pack() -> PolicyPack:
    """Serve the pack to the Pulumi engine. The constructor starts the analyzer's gRPC server and returns only when
    interrupted; the description is PulumiPolicy.yaml's, kept in that one place."""
    return PolicyPack(name=PACK_NAME, policies=list(POLICIES), enforcement_level=EnforcementLevel.MANDATORY)
