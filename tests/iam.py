"""A small IAM policy evaluator for tests: enough of AWS's rules to tell whether three policies agree.

It implements what crossdeploy's documents use — Allow/Deny (Deny wins), Action and Resource wildcards, AWS and
Service principals (an account root admits every principal of that account), and the condition operators
StringEquals, StringNotEquals, StringLike, ArnEquals, ArnLike and Bool — and refuses anything else, so a document
using an operator it does not understand fails the test instead of being judged wrongly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

SUPPORTED_OPERATORS = {"StringEquals", "StringNotEquals", "StringLike", "ArnEquals", "ArnLike", "Bool"}


def as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def load(doc: str | Mapping) -> dict:
    return json.loads(doc) if isinstance(doc, str) else dict(doc)


def _match(pattern: str, value: str, case_insensitive: bool = False) -> bool:
    if case_insensitive:
        pattern, value = pattern.lower(), value.lower()
    # IAM wildcards: '*' any run of characters (including '/' and ':'), '?' one character.
    regex = "^" + re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".") + "$"
    return re.match(regex, value) is not None


def _principal_matches(principal_block: Any, principal: Mapping[str, str] | None) -> bool:
    if principal_block is None:
        return True  # identity policy: the principal is whoever holds it
    if principal is None:
        return False
    if principal_block == "*" or principal_block == {"AWS": "*"}:
        return True
    for kind, values in principal_block.items():
        for value in as_list(values):
            if kind == "AWS" and principal.get("arn"):
                arn = principal["arn"]
                account = arn.split(":")[4]
                if value == "*" or value == arn or value in (account, f"arn:aws:iam::{account}:root"):
                    return True
            if kind == "Service" and principal.get("service") == value:
                return True
    return False


def _conditions_hold(conditions: Mapping[str, Any] | None, context: Mapping[str, str]) -> bool:
    for operator, tests in (conditions or {}).items():
        if operator not in SUPPORTED_OPERATORS:
            raise AssertionError(f"condition operator {operator} is not understood by the test evaluator")
        for key, expected in tests.items():
            if key not in context:
                # A missing key fails every operator used here (none are ...IfExists), except negations.
                if operator == "StringNotEquals":
                    continue
                return False
            actual = str(context[key])
            values = [str(v) for v in as_list(expected)]
            if operator in ("StringEquals", "ArnEquals", "Bool"):
                ok = actual in values
            elif operator == "StringNotEquals":
                ok = actual not in values
            else:
                ok = any(_match(v, actual) for v in values)
            if not ok:
                return False
    return True


def _statement_applies(stmt: Mapping[str, Any], action: str, resource: str | None,
                       principal: Mapping[str, str] | None, context: Mapping[str, str]) -> bool:
    if not any(_match(a, action, case_insensitive=True) for a in as_list(stmt.get("Action"))):
        return False
    if "Resource" in stmt and resource is not None:
        if not any(_match(r, resource) for r in as_list(stmt["Resource"])):
            return False
    if not _principal_matches(stmt.get("Principal"), principal):
        return False
    return _conditions_hold(stmt.get("Condition"), context)


def allows(doc: str | Mapping, action: str, resource: str | None = None, *,
           principal_arn: str | None = None, service: str | None = None,
           context: Mapping[str, str] | None = None) -> bool:
    """True when the document allows the call and nothing in it denies it."""
    policy = load(doc)
    principal = None
    if principal_arn or service:
        principal = {"arn": principal_arn or "", "service": service or ""}
    ctx = {"aws:SecureTransport": "true"}
    if principal_arn:
        ctx["aws:PrincipalArn"] = principal_arn
        ctx["aws:PrincipalAccount"] = principal_arn.split(":")[4]
    ctx.update(context or {})
    allowed = False
    for stmt in as_list(policy.get("Statement")):
        if not _statement_applies(stmt, action, resource, principal, ctx):
            continue
        if stmt["Effect"] == "Deny":
            return False
        allowed = True
    return allowed


def statements(doc: str | Mapping) -> list[dict]:
    return as_list(load(doc).get("Statement"))


def account_of(arn: str) -> str:
    return arn.split(":")[4]


def region_of(arn: str) -> str:
    return arn.split(":")[3]
