"""A role that one AWS service assumes in its own account, with its single inline policy.

Every service role crossdeploy creates has this shape: trust limited to the service *and* to this account
(``aws:SourceAccount``, the confused-deputy guard), and one inline policy built by the caller from
:mod:`components.policies` helpers, so the role's whole grant is readable in one document.
"""

from __future__ import annotations

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
