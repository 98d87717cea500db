"""A role that one AWS service assumes in its own account, with its single inline policy.

Every service role crossdeploy creates has this shape: trust limited to the service *and* to this account
(``aws:SourceAccount``, the confused-deputy guard), and one inline policy built by the caller from
:mod:`components.policies` helpers, so the role's whole grant is readable in one document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pulumi
import pulumi_aws as aws

from components import policies as p


def service_role(logical_name: str, *, role_name: str, path: str, service: str, account_id: str,
                 policy: dict[str, Any], opts: pulumi.ResourceOptions) -> tuple[aws.iam.Role, aws.iam.RolePolicy]:
    """Create ``<logical_name>-role`` and its ``<logical_name>-role-policy``; returns both (callers that must wait
    for the grant, like a CodeBuild project or a pipeline, depend on the policy)."""
    role = aws.iam.Role(f"{logical_name}-role", name=role_name, path=path,
                        assume_role_policy=p.to_json(p.service_trust(service, account_id)), opts=opts)
    role_policy = aws.iam.RolePolicy(f"{logical_name}-role-policy", role=role.name, policy=p.to_json(policy),
                                     opts=opts)
    return role, role_policy


def function_logs_and_role(logical_name: str, *, function_name: str, role_name: str, path: str, account_id: str,
                           retention_days: int, policy: Callable[[pulumi.Output[str]], dict[str, Any]],
                           opts: pulumi.ResourceOptions) -> tuple[aws.cloudwatch.LogGroup, aws.iam.Role,
                                                                 aws.iam.RolePolicy]:
    """A Lambda function's log group and role: ``<logical_name>-logs`` under the name Lambda writes to
    (``/aws/lambda/<function_name>``), created here rather than by Lambda on first use so it has a retention, goes
    with the stack, and the role needs no ``logs:CreateLogGroup``; then :func:`service_role` for
    ``lambda.amazonaws.com`` with ``policy(log group ARN)``. The function should depend on the log group and the
    role policy, so its first invocation can write its logs."""
    log_group = aws.cloudwatch.LogGroup(f"{logical_name}-logs", name=f"/aws/lambda/{function_name}",
                                        retention_in_days=retention_days, opts=opts)
    role, role_policy = service_role(logical_name, role_name=role_name, path=path, service="lambda.amazonaws.com",
                                     account_id=account_id, policy=policy(log_group.arn), opts=opts)
    return log_group, role, role_policy
