"""IAM building blocks: ARNs, statements and documents as plain Python dicts.

Every policy in crossdeploy is assembled from these helpers and serialised with ``pulumi.Output.json_dumps``, so a
test can read back exactly the document AWS receives. Rules kept here rather than at each call site:

* no ``"*"`` or ``"service:*"`` in an Allow; ``Resource: "*"`` only through :func:`unscoped`, which names the AWS
  limitation that forces it;
* ``iam:PassRole`` only through :func:`pass_role`, which always carries ``iam:PassedToService``;
* cross-account grants in resource policies go to account roots *narrowed by* ``aws:PrincipalArn``
  (:func:`principal_arn_condition`): KMS and S3 reject a policy naming a role that does not exist yet, and a named
  role principal silently turns into a stale unique id when that role is re-created.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pulumi

Statement = dict[str, Any]
Input = Any  # str | pulumi.Output[str]; kept loose because documents are resolved by Output.json_dumps


def arn(partition: str, service: str, region: str, account: str, resource: str) -> str:
    return f"arn:{partition}:{service}:{region}:{account}:{resource}"


def account_root(partition: str, account: str) -> str:
    return f"arn:{partition}:iam::{account}:root"


def role_arn(partition: str, account: str, name: str, path: str = "/") -> str:
    return f"arn:{partition}:iam::{account}:role{path}{name}"


def iam_name(*parts: str, max_len: int = 64, allowed: str = r"A-Za-z0-9+=,.@_-") -> str:
    """Join name parts with '-', replacing characters outside ``allowed`` (a regex character class body, IAM's by
    default) and shortening with a stable hash when AWS's length limit would cut the name."""
    name = re.sub(rf"[^{allowed}]", "-", "-".join(parts))
    if len(name) <= max_len:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: max_len - 9]}-{digest}"


def statement(
    sid: str,
    actions: Sequence[str],
    resources: Sequence[Input] | Input | None,
    *,
    effect: str = "Allow",
    conditions: Mapping[str, Any] | None = None,
    principals: Mapping[str, Any] | None = None,
) -> Statement:
    if effect == "Allow":
        wild = [a for a in actions if a == "*" or a.endswith(":*")]
        if wild:
            raise ValueError(f"statement {sid}: wildcard actions {wild} are never granted")
    stmt: Statement = {"Sid": sid, "Effect": effect}
    if principals is not None:
        stmt["Principal"] = dict(principals)
    stmt["Action"] = sorted(set(actions))
    if resources is not None:  # resource policies (ECR, SNS on itself) may omit Resource
        stmt["Resource"] = list(resources) if isinstance(resources, list | tuple) else resources
    if conditions:
        stmt["Condition"] = dict(conditions)
    return stmt


def unscoped(sid: str, actions: Sequence[str], why: str, conditions: Mapping[str, Any] | None = None) -> Statement:
    """An Allow on ``Resource: "*"`` for actions that support no resource-level permissions (``why`` says so).

    The reason is kept out of the document (IAM has no comment field) but is required, so every ``"*"`` in a
    crossdeploy policy was written by someone who checked the Service Authorization Reference.
    """
    if not why:
        raise ValueError("an unscoped statement must say why AWS cannot scope it")
    return statement(sid, actions, "*", conditions=conditions)


def pass_role(sid: str, role_arns: Sequence[Input], service: str | Sequence[str]) -> Statement:
    services = [service] if isinstance(service, str) else list(service)
    return statement(
        sid,
        ["iam:PassRole"],
        list(role_arns),
        conditions={"StringEquals": {"iam:PassedToService": services if len(services) > 1 else services[0]}},
    )


def assume_role_trust(
    principals: Mapping[str, Any], conditions: Mapping[str, Any] | None = None, sid: str = "Trust"
) -> dict[str, Any]:
    stmt: Statement = {"Sid": sid, "Effect": "Allow", "Principal": dict(principals), "Action": "sts:AssumeRole"}
    if conditions:
        stmt["Condition"] = dict(conditions)
    return document([stmt])


def service_trust(service: str, source_account: str | None = None) -> dict[str, Any]:
    """Trust for an AWS service principal; ``source_account`` guards against the confused-deputy problem."""
    conditions = {"StringEquals": {"aws:SourceAccount": source_account}} if source_account else None
    return assume_role_trust({"Service": service}, conditions)


def principal_arn_condition(principal_arns: Sequence[Input], operator: str = "ArnEquals") -> dict[str, Any]:
    arns = list(principal_arns)
    return {operator: {"aws:PrincipalArn": arns if len(arns) != 1 else arns[0]}}


def document(statements: Iterable[Statement]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def to_json(doc: Mapping[str, Any]) -> pulumi.Input[str]:
    """The document as JSON: a plain string when every value is known now, an Output when some are not.

    Most documents are fully known at plan time (ARNs crossdeploy derives from names); serialising those directly
    spares the engine an Output, its futures and an apply per document, which is measurable over hundreds of
    services."""
    if _is_known(doc):
        return json.dumps(doc)
    return pulumi.Output.json_dumps(doc)


def _is_known(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(_is_known(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_is_known(v) for v in value)
    return isinstance(value, str | int | float | bool) or value is None


def deny_insecure_transport(bucket_arn: Input) -> Statement:
    """The one Deny every bucket carries. ``s3:*`` is the point here: it blocks every action over plain HTTP."""
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": "s3:*",
        "Resource": [bucket_arn, pulumi.Output.concat(bucket_arn, "/*")],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


# KMS key administration without "kms:*": the actions an account needs to manage (and never lock itself out of) a
# key, listed so that a reviewer sees exactly what the root delegation allows.
KMS_ADMIN_ACTIONS = [
    "kms:CancelKeyDeletion", "kms:CreateAlias", "kms:CreateGrant", "kms:DeleteAlias", "kms:DescribeKey",
    "kms:DisableKey", "kms:DisableKeyRotation", "kms:EnableKey", "kms:EnableKeyRotation", "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus", "kms:ListAliases", "kms:ListGrants", "kms:ListKeyPolicies",
    "kms:ListResourceTags", "kms:PutKeyPolicy", "kms:ReplicateKey", "kms:RetireGrant", "kms:RevokeGrant",
    "kms:ScheduleKeyDeletion", "kms:TagResource", "kms:UntagResource", "kms:UpdateAlias",
    "kms:UpdateKeyDescription", "kms:UpdatePrimaryRegion",
]
KMS_USE_ACTIONS = ["kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey", "kms:ReEncryptFrom",
                   "kms:ReEncryptTo"]
KMS_DECRYPT_ACTIONS = ["kms:Decrypt", "kms:DescribeKey"]


def key_owner_statement(partition: str, account: str) -> Statement:
    """Root delegation for a key policy ("Resource": "*" there means this key): IAM policies in the owning account
    may use the key, and the account can always manage it. Actions are listed: no "kms:*"."""
    return statement("ToolsAccountAdministersAndDelegates", KMS_ADMIN_ACTIONS + KMS_USE_ACTIONS, "*",
                     principals={"AWS": account_root(partition, account)})


INLINE_POLICY_LIMIT = 10_240
"""IAM's limit on a role's inline policies, in characters, whitespace not counted."""


def inline_policy_size(policy: str) -> int:
    return len(re.sub(r"\s", "", policy))


def check_inline_policy_size(where: str, policy: pulumi.Input[str]) -> None:
    """Refuse, at preview, an inline policy IAM would reject at ``pulumi up`` (documents still holding Outputs are
    measured by the tests instead)."""
    if isinstance(policy, str) and inline_policy_size(policy) > INLINE_POLICY_LIMIT:
        raise ValueError(f"the inline policy of {where} would be {inline_policy_size(policy)} characters; IAM "
                         f"allows {INLINE_POLICY_LIMIT}")
