"""What every crossdeploy handler that touches ECS in another account needs (boto3 only, runs in Lambda).

* :func:`assumed_session`: a boto3 session in a workload account, through its deploy role.
* :data:`RETRY`: botocore's own retry mode absorbs throttling; no handler retries by hand.
* :func:`register_kwargs`: a described task definition turned into RegisterTaskDefinition arguments **whole** —
  every field ECS returned that registration accepts, read from botocore's service model rather than a
  hand-picked list, so a field AWS adds tomorrow is carried over instead of silently dropped.
* :func:`replace_image`: the image of one named container (or the only one) replaced, nothing else touched.
* :func:`log`: one JSON object per line, so CloudWatch Logs Insights can filter by event id, digest or target.
* :data:`ACCOUNT_ID`, :data:`REGION`, :data:`ECS_NAME`, :data:`ENVIRONMENT`: the shapes every handler checks its
  input against, and :func:`session_name`: the RoleSessionName CloudTrail shows for a deployment.
* :class:`Problems`: the strict-input problem collector (exact keys, patterned strings, bounded integers) that
  names every problem of a document at once, each with its JSON path; :func:`show` renders untrusted values.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import boto3
from botocore.config import Config

# "standard" retries throttling and transient errors with backoff (up to max_attempts in all); ECS throttles
# per account and region, and every handler here fans out across both.
RETRY = Config(retries={"mode": "standard", "max_attempts": 10}, connect_timeout=5, read_timeout=30)

ACCOUNT_ID = re.compile(r"[0-9]{12}")
# Shape only, on purpose: the botocore bundled in the Lambda runtime may predate a region the config uses.
REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
ECS_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")  # container, service and cluster names
ENVIRONMENT = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")  # crossdeploy environment names
_SESSION_NAME_CHARS = re.compile(r"[^\w+=,.@-]")  # what STS accepts in RoleSessionName

# Described-only fields that RegisterTaskDefinition also happens to accept under the same name would be carried
# over by the shape intersection; these are the ones whose *meaning* differs, so they are never copied.
_NEVER_COPIED = frozenset({"taskDefinitionArn", "revision", "status", "registeredAt", "registeredBy",
                           "deregisteredAt", "requiresAttributes", "compatibilities", "tags"})


def show(value: Any) -> str:
    """repr() cut to a loggable length: the value is untrusted input, and may be large."""
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


class Problems:
    """Collects every problem of a strict input so one failed load names them all, each with its JSON path.

    ``show`` renders a rejected value (default :func:`show`); ``show_object`` renders what stood where an object
    was expected (default: ``show``).
    """

    def __init__(self, show: Callable[[Any], str] = show, show_object: Callable[[Any], str] | None = None) -> None:
        self.items: list[str] = []
        self._show = show
        self._show_object = show_object or show

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def exact_keys(self, obj: Any, keys: tuple[str, ...], where: str) -> bool:
        if not isinstance(obj, dict):
            self.add(where, f"expected an object, got {self._show_object(obj)}")
            return False
        self.items.extend(f"{where}: missing key {key!r}" for key in keys if key not in obj)
        # Unknown keys are errors: a misspelt key must never silently fall back to a default.
        self.items.extend(f"{where}: unknown key {key!r}" for key in obj if key not in keys)
        return True

    def string(self, obj: dict, key: str, pattern: re.Pattern[str], where: str, what: str) -> str | None:
        if key not in obj:
            return None  # reported by exact_keys
        value = obj[key]
        if not isinstance(value, str) or not pattern.fullmatch(value):
            self.add(f"{where}.{key}", f"expected {what}, got {self._show(value)}")
            return None
        return value

    def integer(self, obj: dict, key: str, low: int, high: int, where: str) -> int | None:
        if key not in obj:
            return None  # reported by exact_keys
        value = obj[key]
        # bool is an int in Python, never in these inputs.
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.add(f"{where}.{key}", f"expected an integer from {low} to {high}, got {self._show(value)}")
            return None
        return value


class TaskDefinitionError(ValueError):
    """A task definition that cannot be updated as asked (no such container, ambiguous container)."""


def session_name(label: str) -> str:
    """``crossdeploy-<label>`` in STS's RoleSessionName alphabet and length: CloudTrail in the workload account then
    ties every call to the deployment, push or release that made it."""
    return _SESSION_NAME_CHARS.sub("-", f"crossdeploy-{label}")[:64]


def assumed_session(base: boto3.Session, role_arn: str, session_name: str) -> boto3.Session:
    """A session acting as ``role_arn`` (short-lived credentials; CloudTrail shows ``session_name``)."""
    sts = base.client("sts", config=RETRY)
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name[:64], DurationSeconds=900)["Credentials"]
    return boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def registrable_fields(ecs_client: Any) -> frozenset[str]:
    """The parameters RegisterTaskDefinition accepts, from the SDK's own service model."""
    shape = ecs_client.meta.service_model.operation_model("RegisterTaskDefinition").input_shape
    return frozenset(shape.members) - _NEVER_COPIED


def register_kwargs(described: Mapping[str, Any], ecs_client: Any) -> dict[str, Any]:
    """RegisterTaskDefinition arguments that reproduce ``described`` (a DescribeTaskDefinition response with
    ``include=["TAGS"]``, or its ``taskDefinition`` member) exactly."""
    task_def = described.get("taskDefinition", described)
    accepted = registrable_fields(ecs_client)
    kwargs = {key: copy.deepcopy(value) for key, value in task_def.items() if key in accepted}
    tags = described.get("tags") if "taskDefinition" in described else None
    if tags:
        kwargs["tags"] = copy.deepcopy(tags)
    return kwargs


def container_named(kwargs: Mapping[str, Any], container: str | None) -> dict[str, Any]:
    containers = kwargs.get("containerDefinitions") or []
    if container is None:
        if len(containers) != 1:
            names = [c.get("name") for c in containers]
            raise TaskDefinitionError(f"task definition has {len(containers)} containers {names}; name one")
        return containers[0]
    for definition in containers:
        if definition.get("name") == container:
            return definition
    raise TaskDefinitionError(f"no container named {container!r} (has {[c.get('name') for c in containers]})")


def replace_image(kwargs: dict[str, Any], container: str | None, image: str) -> dict[str, Any]:
    """A copy of ``kwargs`` with the named container's image replaced (matched by name, never by image text)."""
    updated = copy.deepcopy(kwargs)
    container_named(updated, container)["image"] = image
    return updated


def current_image(kwargs: Mapping[str, Any], container: str | None) -> str:
    return str(container_named(kwargs, container).get("image", ""))


def log(event: str, **fields: Any) -> None:
    """One structured log line (Lambda sends stdout to CloudWatch Logs)."""
    record = {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    sys.stdout.write(json.dumps(record, default=str, sort_keys=True) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    # Not a command line: `python -m handlers.ecs_common` (with --help or anything else) used to import the
    # module, do nothing and exit 0, which reads as success. Say what it is instead, and fail like a usage error.
    print("handlers.ecs_common: not a command line; it holds helpers that the Lambda functions under "
          "handlers/ share", file=sys.stderr)
    sys.exit(2)
