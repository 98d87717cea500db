"""The release file (``deployment.yaml``): its format, a validator that reports every problem with its line, and the
converter into the manifest the release state machine's prepare step reads.

The same code runs in the release pipeline's build step (CodeBuild, PyYAML vendored from the pinned requirement) and
in pull requests, so it needs nothing but the standard library and PyYAML (its pure-Python loader)::

    python -m handlers.release_file validate deployment.yaml --context release-context.json
    python -m handlers.release_file convert  deployment.yaml --context release-context.json --out release.json

(``--context-json '<json>'`` instead of ``--context``). Exit 0: valid (``convert`` wrote ``--out``). Exit 1: the
release file has problems, every one printed to stderr as ``<file>:<line>: <path>: <message>``; ``convert`` writes
nothing. Exit 2: the tool could not run (bad arguments, unreadable release file, invalid context).

Format (the GitOps-on-ECS seed's keys, extended to work across accounts and regions)::

    tasks:                                  # optional: scheduled tasks (EventBridge rules whose ECS target runs)
      - service: rating-cleanup             # a name for the entry (logs, notifications)
        cwRuleName: test-rating-cleanup     # the EventBridge rule whose ECS target gets the new task definition
        image: "111111111111.dkr.ecr.us-west-2.amazonaws.com/rating-cleanup:2.0.0"   # or …/repo@sha256:<64 hex>
        environment: qa                     # an environment of the stack: its account, every one of its regions
        region: us-east-2                   # optional with environment: only this one of its regions
        container: app                      # optional when the task definition has one container
        eventBus: default                   # optional, default "default"
    services:                               # optional too, but the file lists at least one entry
      - service: service-a
        clusterName: test-Cluster-0IEYQ2GqGmL7
        serviceName: test-movie-info-service-Service-TALkUbJVrBgS
        image: "111111111111.dkr.ecr.us-east-1.amazonaws.com/movie-info-service:4.0.0"
        accountId: "777788889999"           # instead of environment: an environment's account (quoted) ...
        region: eu-west-1                   # ... and then region is required
        container: app

The rules, and what the context (``release-context.json``, written by the Pulumi side) contributes, are listed in
:func:`validate`; :func:`convert` documents the manifest.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from handlers.release_limits import MAX_TARGETS, ceiling_problems

MANIFEST_VERSION = 1
CONTEXT_VERSION = 1

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"

# partition -> (DNS suffix of its endpoints, its region names), copied from botocore's data/partitions.json: the build
# step has PyYAML and nothing else, and an image URI on the wrong partition's suffix can never be pulled.
_PARTITIONS: dict[str, tuple[str, str]] = {
    "aws": ("amazonaws.com", r"(?:us|eu|ap|sa|ca|me|af|il|mx)-\w+-\d+"),
    "aws-cn": ("amazonaws.com.cn", r"cn-\w+-\d+"),
    "aws-us-gov": ("amazonaws.com", r"us-gov-\w+-\d+"),
    "aws-eusc": ("amazonaws.eu", r"eusc-de-\w+-\d+"),
    "aws-iso": ("c2s.ic.gov", r"us-iso-\w+-\d+"),
    "aws-iso-b": ("sc2s.sgov.gov", r"us-isob-\w+-\d+"),
    "aws-iso-e": ("cloud.adc-e.uk", r"eu-isoe-\w+-\d+"),
    "aws-iso-f": ("csp.hci.ic.gov", r"us-isof-\w+-\d+"),
}
_ACCOUNT = re.compile(r"[0-9]{12}")
_ENV_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")  # the stack config's rule for environment names
_ANY_REGION = re.compile(r"[a-z]{2,}(?:-[a-z]+)+-\d+")
# ECR's CreateRepository pattern (2-256 characters) and Docker's tag rule (ECR follows it).
_REPOSITORY = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# Deliberately loose: the parts are checked one by one below so each mistake gets its own message.
_ECR_HOST = re.compile(r"(?P<registry>[^./]*)\.dkr\.ecr\.(?P<region>[^./]*)\.(?P<suffix>[^/]+)")
# IAM role ARN: optional path (printable ASCII), then the role name.
_ROLE_ARN = r"arn:{partition}:iam::{account}:role/(?:[\x21-\x7e]+/)?[\w+=,.@-]{{1,64}}"
# CodeDeploy application and deployment group names (the CodeDeploy API's rule); ECS service names.
_CODEDEPLOY_NAME = re.compile(r"[A-Za-z0-9+=,.@_-]{1,100}")
_ECS_SERVICE = re.compile(r"[A-Za-z0-9_-]{1,255}")
# A Lambda function name (not an ARN, not qualified): an AppSpec hook by name runs in the deployment's own account and
# region, so the context cannot point a release's hook anywhere else.
_LAMBDA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Value rules for the names the release passes to AWS APIs as they are: (pattern, what it accepts).
_NAME_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    # Only logs and notifications show it; '/' and '.' so an ECR repository name ("team/api") fits.
    "service": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}"),
                "a name of letters, digits and '._/-' (starting with a letter or digit), at most 255 characters"),
    "clusterName": (re.compile(r"[A-Za-z0-9_-]{1,255}"), "an ECS cluster name (letters, digits, '-', '_', at most "
                    "255 characters), not an ARN"),
    "serviceName": (re.compile(r"[A-Za-z0-9_-]{1,255}"), "an ECS service name (letters, digits, '-', '_', at most "
                    "255 characters), not an ARN"),
    "container": (re.compile(r"[A-Za-z0-9_-]{1,255}"), "an ECS container name (letters, digits, '-', '_', at most "
                  "255 characters)"),
    "cwRuleName": (re.compile(r"[.\-_A-Za-z0-9]{1,64}"), "an EventBridge rule name (letters, digits, '.-_', at "
                   "most 64 characters), not an ARN"),
    "eventBus": (re.compile(r"[/.\-_A-Za-z0-9]{1,256}"), "an EventBridge event bus name (letters, digits, '/.-_', "
                 "at most 256 characters), not an ARN"),
}


@dataclass(frozen=True)
class _Kind:
    section: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    what: str  # how a duplicate target is described

    @property
    def keys(self) -> tuple[str, ...]:
        return self.required + self.optional


_LOCATION_KEYS = ("environment", "accountId", "region", "container")
_TASKS = _Kind("tasks", ("service", "cwRuleName", "image"), (*_LOCATION_KEYS, "eventBus"), "scheduled task rule")
_SERVICES = _Kind("services", ("service", "clusterName", "serviceName", "image"), _LOCATION_KEYS, "ECS service")
_KINDS = (_TASKS, _SERVICES)


# --------------------------------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a release file, at a 1-based line; ``path`` names the key (``services[0].image``)."""

    line: int
    path: str
    message: str
    file: str = "deployment.yaml"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


class ReleaseFileError(ValueError):
    """The release file is invalid; ``problems`` holds every problem, in line order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))


class ContextError(ValueError):
    """The release context (generated by the Pulumi side) is invalid: a wiring bug, not a release file problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# --------------------------------------------------------------------------------------------------------------------
# Context


@dataclass(frozen=True)
class BlueGreen:
    """A blue/green environment's CodeDeploy side: one application (same name in each of its regions) and one
    deployment group per ECS service."""

    application: str
    # ECS service name -> deployment group name (a dict: left out of the hash, so an Environment stays hashable)
    deployment_groups: Mapping[str, str] = field(default_factory=dict, hash=False)
    # ECS service name -> the Lambda function its AppSpec runs at AfterAllowTestTraffic (the environment's
    # smoke-test hook); only services with a smoke test, each one with a deployment group.
    smoke_test_hooks: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Environment:
    name: str
    account_id: str
    regions: tuple[str, ...]
    deploy_role_arn: str
    blue_green: BlueGreen | None = None  # None: rolling (ECS deployment controller)


@dataclass(frozen=True)
class ReleaseContext:
    """What the stack tells the release file's validator: the tools registry and where each environment lives."""

    partition: str
    registry_id: str
    home_region: str
    environments: Mapping[str, Environment] = field(default_factory=dict)
    services: Mapping[str, str] = field(default_factory=dict)
    """``<cluster>/<serviceName>`` -> the S3 key of that service's deploy document: every service of the stack
    (the release's *prepare* step reads it; a service not listed is not the stack's)."""

    @property
    def dns_suffix(self) -> str:
        return _PARTITIONS[self.partition][0]

    def account_regions(self, account_id: str) -> tuple[str, ...]:
        """Every region some environment of this account deploys to (the deploy role is per account)."""
        return tuple(dict.fromkeys(r for e in self.environments.values() if e.account_id == account_id
                                   for r in e.regions))

    def account_role(self, account_id: str) -> str | None:
        return next((e.deploy_role_arn for e in self.environments.values() if e.account_id == account_id), None)

    def region_environments(self, account_id: str, region: str) -> tuple[Environment, ...]:
        """The environments deploying to this account and region (an ``accountId`` entry may mean any of them)."""
        return tuple(e for e in self.environments.values() if e.account_id == account_id and region in e.regions)


def _check_keys(data: Mapping[str, Any], path: str, keys: tuple[str, ...], problems: list[str]) -> None:
    where = f"{path}: " if path else ""
    problems.extend(f"{where}unknown key {k!r}" for k in data if k not in keys)
    problems.extend(f"{where}missing key {k!r}" for k in keys if k not in data)


def _load_blue_green(value: Any, path: str, problems: list[str]) -> BlueGreen | None:
    """``{"application": <name>, "deploymentGroups": {<ECS service name>: <deployment group name>}}`` and optionally
    ``"smokeTestHooks": {<ECS service name>: <Lambda function name>}`` (absent or empty: no service has a smoke-test
    hook; every service named must have a deployment group)."""
    if not isinstance(value, Mapping):
        problems.append(f"{path}: expected an object with application and deploymentGroups, got {value!r}")
        return None
    before = len(problems)
    # smokeTestHooks is optional: contexts written before hooks existed (and environments without smoke tests) have
    # none, and they stay valid.
    _check_keys({k: v for k, v in value.items() if k != "smokeTestHooks"}, path,
                ("application", "deploymentGroups"), problems)
    application, groups = value.get("application"), value.get("deploymentGroups")
    if "application" in value and not (isinstance(application, str) and _CODEDEPLOY_NAME.fullmatch(application)):
        problems.append(f"{path}.application: expected a CodeDeploy application name (letters, digits, '+=,.@_-', "
                        f"at most 100 characters), got {application!r}")
    if "deploymentGroups" in value:
        if not isinstance(groups, Mapping):
            problems.append(f"{path}.deploymentGroups: expected an object of deployment group names by ECS service "
                            f"name, got {groups!r}")
        else:
            for service, group in groups.items():
                if not _ECS_SERVICE.fullmatch(service):
                    problems.append(f"{path}.deploymentGroups: {service!r} is not an ECS service name")
                if not (isinstance(group, str) and _CODEDEPLOY_NAME.fullmatch(group)):
                    problems.append(f"{path}.deploymentGroups.{service}: expected a CodeDeploy deployment group name "
                                    f"(letters, digits, '+=,.@_-', at most 100 characters), got {group!r}")
    hooks = value.get("smokeTestHooks", {})
    if not isinstance(hooks, Mapping):
        problems.append(f"{path}.smokeTestHooks: expected an object of Lambda function names by ECS service name, "
                        f"got {hooks!r}")
    else:
        for service, hook in hooks.items():
            # A hook only runs inside a CodeDeploy deployment: one for a service without a deployment group means
            # the generator and this code disagree about which services are blue/green.
            if isinstance(groups, Mapping) and service not in groups:
                problems.append(f"{path}.smokeTestHooks.{service}: service {service!r} has no deployment group in "
                                f"{path}.deploymentGroups ({', '.join(map(str, groups)) or 'none'})")
            if not (isinstance(hook, str) and _LAMBDA_NAME.fullmatch(hook)):
                problems.append(f"{path}.smokeTestHooks.{service}: expected a Lambda function name (letters, digits, "
                                f"'-', '_', at most 64 characters; not an ARN), got {hook!r}")
    if len(problems) > before:
        return None
    return BlueGreen(application, dict(groups), dict(hooks))


def load_context(data: Any) -> ReleaseContext:
    """Decoded ``release-context.json`` -> :class:`ReleaseContext`, or :class:`ContextError` listing every problem.

    Strict (unknown keys, wrong types, inconsistent accounts are errors): it is generated, so any deviation means
    the Pulumi side and this code disagree, and guessing would deploy to the wrong place. An environment has
    ``accountId``, ``regions``, ``deployRoleArn`` and, only when its strategy is blue-green, ``blueGreen``:
    ``{"application": <CodeDeploy application>, "deploymentGroups": {<ECS service name>: <deployment group>}}``,
    with ``"smokeTestHooks": {<ECS service name>: <Lambda function name>}`` when some of those services have a smoke
    test (optional; only services with a deployment group).
    Optional ``services``: ``{"<cluster>/<serviceName>": "<deploy document key>"}`` for every service of the stack.
    """
    if not isinstance(data, Mapping):
        raise ContextError([f"must be a JSON object, got {type(data).__name__}"])
    problems: list[str] = []
    _check_keys({k: v for k, v in data.items() if k != "services"}, "",
                ("version", "partition", "registryId", "homeRegion", "environments"), problems)
    services = data.get("services", {})
    if not isinstance(services, Mapping) or not all(
            isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,255}/[A-Za-z0-9_-]{1,255}", k)
            and isinstance(v, str) and re.fullmatch(r"services/[^\s]{1,900}", v) for k, v in services.items()):
        problems.append(f"services: expected an object of deploy document keys (services/...) by "
                        f"'<cluster>/<serviceName>', got {services!r}"[:300])
        services = {}

    version = data.get("version")
    if "version" in data and (type(version) is not int or version != CONTEXT_VERSION):
        problems.append(f"version: this code reads version {CONTEXT_VERSION}, got {version!r}")
    partition = data.get("partition")
    if "partition" in data and not (isinstance(partition, str) and partition in _PARTITIONS):
        problems.append(f"partition: expected one of {', '.join(_PARTITIONS)}, got {partition!r}")
        partition = None
    region_re = re.compile(_PARTITIONS[partition][1]) if partition else _ANY_REGION

    def region_ok(value: Any) -> bool:
        return isinstance(value, str) and bool(region_re.fullmatch(value))

    registry = data.get("registryId")
    if "registryId" in data and not (isinstance(registry, str) and _ACCOUNT.fullmatch(registry)):
        problems.append(f"registryId: expected a 12-digit account id string, got {registry!r}")
    home = data.get("homeRegion")
    if "homeRegion" in data and not region_ok(home):
        problems.append(f"homeRegion: expected a region name of partition {partition}, got {home!r}")

    environments: dict[str, Environment] = {}
    raw_envs = data.get("environments")
    if "environments" in data and (not isinstance(raw_envs, Mapping) or not raw_envs):
        problems.append(f"environments: expected a non-empty object of environments by name, got {raw_envs!r}")
        raw_envs = {}
    roles: dict[str, tuple[str, str]] = {}  # account -> (environment, deploy role ARN)
    for name, env in (raw_envs or {}).items():
        path = f"environments.{name}"
        if not _ENV_NAME.fullmatch(name):
            problems.append(f"{path}: not an environment name (lower-case letters, digits, '-', at most 32)")
        if not isinstance(env, Mapping):
            problems.append(f"{path}: expected an object, got {env!r}")
            continue
        before = len(problems)
        _check_keys({k: v for k, v in env.items() if k != "blueGreen"}, path, ("accountId", "regions",
                                                                             "deployRoleArn"), problems)
        blue_green = _load_blue_green(env["blueGreen"], f"{path}.blueGreen", problems) if "blueGreen" in env else None
        account, regions, role = env.get("accountId"), env.get("regions"), env.get("deployRoleArn")
        if "accountId" in env and not (isinstance(account, str) and _ACCOUNT.fullmatch(account)):
            problems.append(f"{path}.accountId: expected a 12-digit account id string, got {account!r}")
        elif account is not None and account == registry:
            problems.append(f"{path}.accountId: {account!r} is the tools account; workloads live in other accounts")
        if "regions" in env and not (isinstance(regions, list) and regions and all(map(region_ok, regions))
                                     and len(set(regions)) == len(regions)):
            problems.append(f"{path}.regions: expected a non-empty list of unique region names of partition "
                            f"{partition}, got {regions!r}")
        if "deployRoleArn" in env and not (
            isinstance(role, str) and isinstance(account, str) and partition
            and re.fullmatch(_ROLE_ARN.format(partition=re.escape(partition), account=re.escape(account)), role)
        ):
            problems.append(f"{path}.deployRoleArn: expected an IAM role ARN in partition {partition} and account "
                            f"{account!r}, got {role!r}")
        if isinstance(account, str) and account in roles and roles[account][1] != role:
            # IAM is global: one deploy role per account. Two different ARNs means a generator bug.
            problems.append(f"{path}.deployRoleArn: {role!r} differs from environment {roles[account][0]!r}'s "
                            f"{roles[account][1]!r} for the same account {account}")
        if len(problems) == before:
            roles.setdefault(account, (name, role))
            environments[name] = Environment(name, account, tuple(regions), role, blue_green)

    if problems:
        raise ContextError(problems)
    return ReleaseContext(partition=partition, registry_id=registry, home_region=home, environments=environments,
                          services=dict(services))


# --------------------------------------------------------------------------------------------------------------------
# Bounded YAML

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null"))


def _tag_text(tag: str) -> str:
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


class LimitedLoader(yaml.SafeLoader):
    """PyYAML's pure-Python SafeLoader, composing only, at a bounded cost and with YAML's core tags only.

    PyYAML reads anything it is given: an alias-of-aliases "billion laughs" file composes into a few nodes that every
    walk over the data then expands into billions; nesting a few thousand levels deep overflows Python's stack in
    its recursive composer (a RecursionError traceback); a megabyte of YAML takes the pure-Python scanner about two
    seconds. So the loader refuses, each with the limit and the line: a document longer than ``max_chars``, nesting
    deeper than ``max_depth``, more than ``max_nodes`` nodes with every alias expanded, a list or mapping of more
    than ``max_entries`` entries, a scalar longer than ``max_scalar_chars``, an alias of a node that contains it,
    and any explicit tag but the core ones (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null`` on a value
    that reads as that type unquoted, ``!!seq`` on a list, ``!!map`` on a mapping): ``!!python/...``, ``!!binary``,
    ``!!set``, ``!!omap``, ``!!timestamp``, CloudFormation's ``!Ref`` are no part of these formats, and silently
    ignoring them would make the file mean something else to another reader. Every refusal is a
    :class:`yaml.composer.ComposerError` (a ``MarkedYAMLError``: the callers' own YAML error path reports its line)
    raised by :meth:`get_single_node`, as early as the scanner or the composer sees it. Subclasses set other limits
    (the stack file's loader does).
    """

    what = "a release file"
    # Sized by the release ceiling (handlers/release_limits.py: MAX_TARGETS services and tasks in one release), so
    # the largest release the state machine holds still loads, and a file up to ~5 % over it gets the ceiling's own
    # message: an entry is at most 8 keys and values (17 nodes) and about 200 characters. Any file within these
    # limits costs PyYAML's pure-Python scanner about what a release at the ceiling does (bench/bench_hostile.py).
    max_chars = 320 * MAX_TARGETS
    max_depth = 16  # a release file nests 4 deep (mapping, list, entry, value)
    max_nodes = 18 * MAX_TARGETS
    max_entries = MAX_TARGETS + MAX_TARGETS // 20
    max_scalar_chars = 8 * 1024  # the longest value (an image URI) is a few hundred characters

    def __init__(self, stream: str) -> None:
        # PyYAML's reader copies and checks the whole text up front: an oversized one is cut at the limit first,
        # so refusing it costs no more than reading a file at the limit.
        self._length = len(stream)
        super().__init__(stream[:self.max_chars + 1] if self._length > self.max_chars else stream)
        self._depth = 0
        self._expanded = 0
        self._children: list[int] = []
        self._sizes: dict[int, int] = {}  # id(anchored node) -> its node count, aliases expanded

    def _refuse(self, problem: str, mark: Any) -> yaml.composer.ComposerError:
        return yaml.composer.ComposerError(None, None, problem, mark)

    def get_single_node(self) -> Node | None:
        if self._length > self.max_chars:
            text, limit = self.buffer, self.max_chars
            line, column = text.count("\n", 0, limit), limit - (text.rfind("\n", 0, limit) + 1)
            raise self._refuse(f"the file is longer than {self.max_chars} characters, the limit for {self.what}",
                               yaml.Mark(self.name, self.max_chars, line, column, None, None))
        return super().get_single_node()

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # Refused while scanning, before the composer sees it: the scanner keeps every unclosed '[' or '{' of a line
        # as a possible key and rescans them all for each token, so "[[[[..." costs time with its depth.
        super().fetch_flow_collection_start(TokenClass)
        if self.flow_level > self.max_depth:
            raise self._refuse(f"nested more than {self.max_depth} levels deep (the limit for {self.what})",
                               self.get_mark())

    def _count(self, nodes: int, mark: Any) -> None:
        self._expanded += nodes
        if self._expanded > self.max_nodes:
            raise self._refuse(f"more than {self.max_nodes} values with every alias expanded (the limit for "
                               f"{self.what})", mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        event = self.peek_event()
        if self._children and (index is None or isinstance(parent, SequenceNode)):  # a list item or a mapping key
            self._children[-1] += 1
            if self._children[-1] > self.max_entries:
                raise self._refuse(f"more than {self.max_entries} entries in one list or mapping (the limit for "
                                   f"{self.what})", event.start_mark)
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:
                size = self._sizes.get(id(node))
                if size is None:
                    raise self._refuse(f"alias *{event.anchor} is inside the node it refers to (a recursive alias)",
                                       event.start_mark)
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)  # an undefined alias is PyYAML's own error
        self._depth += 1
        if self._depth > self.max_depth:
            raise self._refuse(f"nested more than {self.max_depth} levels deep (the limit for {self.what})",
                               event.start_mark)
        self._check_tag(event)
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > self.max_scalar_chars:
            raise self._refuse(f"a value of {len(event.value)} characters, over the limit of "
                               f"{self.max_scalar_chars} for {self.what}", event.start_mark)
        before = self._expanded
        self._count(1, event.start_mark)
        collection = not isinstance(event, yaml.ScalarEvent)
        if collection:
            self._children.append(0)
        node = super().compose_node(parent, index)
        if collection:
            self._children.pop()
        if event.anchor is not None:
            self._sizes[id(node)] = self._expanded - before
        self._depth -= 1
        return node

    def _check_tag(self, event: Any) -> None:
        tag = event.tag
        if tag is None or tag == "!":  # no tag, or the non-specific "!": YAML's own resolution
            return
        if isinstance(event, yaml.ScalarEvent):
            # An explicit scalar tag only says what the plain value says already; anything else would need a
            # constructor these formats never use (or fail in PyYAML's: `!!int abc`, `!!bool maybe`).
            if tag == _CORE + "str" or (tag in _SCALAR_TAGS
                                        and self.resolve(ScalarNode, event.value, (True, False)) == tag):
                return
            if tag in _SCALAR_TAGS:
                raise self._refuse(f"{event.value[:60]!r} is not {_tag_text(tag)} (remove the tag, or quote the "
                                   "value as a string)", event.start_mark)
        elif tag == _CORE + ("seq" if isinstance(event, yaml.SequenceStartEvent) else "map"):
            return
        raise self._refuse(f"tag {_tag_text(tag)[:60]} is not used by {self.what}; only YAML's core types are "
                           "(strings, numbers, true/false, null, lists, mappings): remove the tag", event.start_mark)


# --------------------------------------------------------------------------------------------------------------------
# Validation


@dataclass
class _Entry:
    kind: _Kind
    index: int
    line: int
    values: dict[str, str] = field(default_factory=dict)
    targets: list[tuple[str, str]] | None = None  # (account, region); None when the location is invalid
    image: dict[str, str | None] | None = None
    # Per target (same order): {"application", "deploymentGroup"[, "smokeTestHook"]} of a blue/green service, None
    # for a rolling one.
    blue_green: list[dict[str, str] | None] | None = None

    @property
    def path(self) -> str:
        return f"{self.kind.section}[{self.index}]"

    def identity(self) -> tuple[str, ...] | None:
        """What two entries must not share in one account and region; None if not known (already a problem)."""
        keys = ("clusterName", "serviceName") if self.kind is _SERVICES else ("cwRuleName",)
        if not all(k in self.values for k in keys):
            return None
        names = tuple(self.values[k] for k in keys)
        return (self.values.get("eventBus", "default"), *names) if self.kind is _TASKS else names


def _line(node: Node) -> int:
    return node.start_mark.line + 1  # PyYAML marks are 0-based


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing (null)"
    if node.tag == _STR:
        return f"the string {node.value!r}"
    kind = node.tag.rsplit(":", 1)[-1]
    article = "an" if kind[:1] in "aeiou" else "a"
    return f"{node.value!r}, which YAML reads as {article} {kind}"


class _Checker:
    def __init__(self, context: ReleaseContext, filename: str) -> None:
        self.ctx = context
        self.file = filename
        self.problems: list[Problem] = []

    def add(self, where: Node | int, path: str, message: str) -> None:
        line = where if isinstance(where, int) else _line(where)
        self.problems.append(Problem(line, path, message, self.file))

    # ---- YAML

    def compose(self, text: str | bytes) -> Node | None:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.add(text[:exc.start].count(b"\n") + 1, "(file)", f"not UTF-8 text (byte {exc.start})")
                return None
        try:
            # The pure-Python SafeLoader: identical marks and messages with or without libyaml, and composing
            # (not constructing) keeps every node's line and every duplicate key, which construction drops.
            loader = LimitedLoader(text)
        except yaml.reader.ReaderError as exc:  # raised while the reader checks the characters
            self.add(text[:exc.position].count("\n") + 1, "(yaml)", f"{exc.reason} (character #x{exc.character:04x})")
            return None
        try:
            return loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            message = exc.problem or exc.context or "not valid YAML"
            if exc.problem == "but found another document":
                message = "a second YAML document ('---'); a release file is a single document"
            elif exc.context and exc.problem:
                at = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
                message = f"{exc.problem} ({exc.context}{at})"
            self.add(mark.line + 1 if mark else 1, "(yaml)", message)
        except yaml.YAMLError as exc:
            self.add(1, "(yaml)", str(exc))
        finally:
            loader.dispose()
        return None

    def mapping(self, node: MappingNode, path: str, allowed: tuple[str, ...], hint: str,
                elsewhere: Mapping[str, str] | None = None) -> dict[str, Node]:
        """The node's known keys -> value nodes; unknown and duplicate keys reported (never silently dropped)."""
        found: dict[str, Node] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE:
                self.add(key_node, path or "(root)", "merge keys (<<) are not supported; write the keys out "
                         "(anchors and aliases for single values work)")
                continue
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _STR):
                self.add(key_node, path or "(root)", f"keys must be names; got {_describe(key_node)}")
                continue
            key = key_node.value
            key_path = (f"{path}.{key}" if path else key) or "(root)"  # an empty key at the top names no path
            if key in first_line:
                self.add(key_node, key_path, f"duplicate key (first at line {first_line[key]}); YAML would "
                         "silently keep only the last one")
                continue
            first_line[key] = _line(key_node)
            if key in allowed:
                found[key] = value_node
                continue
            message = f"unknown key {key!r}"
            if elsewhere and key in elsewhere:
                message += f" ({elsewhere[key]})"
            else:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                if close:
                    message += f"; did you mean {close[0]!r}?"
            self.add(key_node, key_path, f"{message} {hint}")
        return found

    def string(self, node: Node, path: str) -> str | None:
        """A non-empty string value, or None (reported). Unquoted numbers, booleans, dates are not strings."""
        if isinstance(node, ScalarNode) and node.tag == _STR:
            if node.value == "":
                self.add(node, path, "must not be empty")
                return None
            return node.value
        message = f"must be a string, got {_describe(node)}"
        if isinstance(node, ScalarNode) and node.tag != _NULL:
            message += "; quote it"
        self.add(node, path, message)
        return None

    # ---- The file

    def document(self, root: Node | None) -> list[_Entry]:
        if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
            line = 1 if root is None else _line(root)
            self.add(line, "(root)", "the file is empty; list at least one entry under tasks or services")
            return []
        if not isinstance(root, MappingNode):
            self.add(root, "(root)", f"must be a mapping with tasks and/or services, got {_describe(root)}")
            return []
        sections = self.mapping(root, "", ("tasks", "services"), "(a release file holds only tasks and services)")
        entries: list[_Entry] = []
        listed = 0
        for kind in _KINDS:
            node = sections.get(kind.section)
            if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL):
                continue  # absent or left empty: no entries of this kind
            if not isinstance(node, SequenceNode):
                self.add(node, kind.section, f"must be a list of entries ('- service: …'), got {_describe(node)}")
                listed += 1  # entries meant, just malformed: "no entries" would only add noise
                continue
            listed += len(node.value)
            entries.extend(e for i, item in enumerate(node.value) if (e := self.entry(kind, i, item)))
        # Unknown top-level keys (a misspelt "services") are reported already; "no entries" would only add noise.
        if not listed and len(sections) == len(root.value):
            self.add(root, "(root)", "no entries; list at least one under tasks or services")
        self.duplicate_targets(entries)
        self.ceiling(entries)
        return entries

    def entry(self, kind: _Kind, index: int, node: Node) -> _Entry | None:
        entry = _Entry(kind, index, _line(node))
        path = entry.path
        if not isinstance(node, MappingNode):
            self.add(node, path, f"must be a mapping of keys ({', '.join(kind.required)}, …), got {_describe(node)}")
            return None
        other = next(k for k in _KINDS if k is not kind)
        elsewhere = {key: f"{other.section} entries have it, {kind.section} entries do not"
                     for key in other.keys if key not in kind.keys}
        hint = f"(keys of {kind.section} entries: {', '.join(kind.keys)})"
        fields = self.mapping(node, path, kind.keys, hint, elsewhere)
        for key in kind.required:
            if key not in fields:
                self.add(node, f"{path}.{key}", "required key is missing")
        for key, value_node in fields.items():
            value = self.string(value_node, f"{path}.{key}")
            if value is None:
                continue
            rule = _NAME_RULES.get(key)
            if rule and not rule[0].fullmatch(value):
                self.add(value_node, f"{path}.{key}", f"expected {rule[1]}, got {value!r}")
                continue
            entry.values[key] = value
        entry.targets = self.targets(entry, node, fields)
        if entry.kind is _SERVICES and entry.targets and "serviceName" in entry.values:
            entry.blue_green = self.blue_green(entry, fields["serviceName"])
        if "image" in entry.values:
            entry.image = self.image(entry.values["image"], fields["image"], f"{path}.image")
        return entry

    def targets(self, entry: _Entry, node: MappingNode, fields: Mapping[str, Node]) -> list[tuple[str, str]] | None:
        """Where the entry deploys: (account, region) for each region of its environment, or the one it names."""
        path, values, envs = entry.path, entry.values, self.ctx.environments
        if "environment" in fields and "accountId" in fields:
            self.add(fields["accountId"], f"{path}.accountId", "give environment or accountId (with region), not both")
            return None
        if "environment" not in fields and "accountId" not in fields:
            self.add(node, path, f"needs environment (one of: {', '.join(envs)}), or accountId and region")
            return None
        if "environment" in fields:
            name = values.get("environment")
            if name is None:
                return None  # not a string: reported
            if name not in envs:
                self.add(fields["environment"], f"{path}.environment",
                         f"unknown environment {name!r}; this stack's environments are: {', '.join(envs)}")
                return None
            account, regions, owner = envs[name].account_id, envs[name].regions, f"environment {name!r}"
        else:
            account = values.get("accountId")
            if account is None:
                return None
            if not _ACCOUNT.fullmatch(account):
                self.add(fields["accountId"], f"{path}.accountId", f"expected a 12-digit account id, got {account!r}")
                return None
            regions = self.ctx.account_regions(account)
            if not regions:
                known = ", ".join(f"{e.name}: {e.account_id}" for e in envs.values())
                self.add(fields["accountId"], f"{path}.accountId", f"{account} is not the account of any "
                         f"environment ({known}); deploy roles exist only in those")
                return None
            if "region" not in fields:
                self.add(node, f"{path}.region", f"required with accountId: one of {', '.join(regions)}")
                return None
            owner = f"account {account}"
        if "region" in fields:
            region = values.get("region")
            if region is None:
                return None
            if region not in regions:
                self.add(fields["region"], f"{path}.region",
                         f"{region!r} is not a region of {owner} ({', '.join(regions)})")
                return None
            regions = (region,)
        return [(account, region) for region in regions]

    def blue_green(self, entry: _Entry, node: Node) -> list[dict[str, str] | None] | None:
        """For each target, the CodeDeploy application and deployment group that deploy the service (and its
        smoke-test hook, if it has one), or None when it is a rolling service. A blue/green environment deploys only
        the services it has a deployment group for: any other service named there is a problem (at
        ``serviceName``'s line). An ``accountId`` entry may mean any environment of that account and region; it is
        blue/green when one of them lists the service."""
        service, named = entry.values["serviceName"], entry.values.get("environment")
        path = f"{entry.path}.serviceName"
        out: list[dict[str, str] | None] = []
        for account, region in entry.targets or []:
            envs = (self.ctx.environments[named],) if named else self.ctx.region_environments(account, region)
            # The hook is part of what deploys the service: two environments agreeing on the group but not on the
            # hook are as ambiguous as two groups.
            listed = {(e.blue_green.application, e.blue_green.deployment_groups[service],
                       e.blue_green.smoke_test_hooks.get(service)): e.name for e in envs
                      if e.blue_green and service in e.blue_green.deployment_groups}
            if len(listed) > 1:
                self.add(node, path, f"service {service!r} in account {account}, region {region} is blue/green in "
                         f"environments {', '.join(sorted(listed.values()))} with different CodeDeploy deployment "
                         "groups or smoke-test hooks; name its environment instead of accountId")
                return None
            if listed:
                application, group, hook = next(iter(listed))
                out.append({"application": application, "deploymentGroup": group,
                            **({"smokeTestHook": hook} if hook else {})})
                continue
            if envs and all(e.blue_green for e in envs):
                known = "; ".join(f"{', '.join(sorted(e.blue_green.deployment_groups)) or 'none'} in environment "
                                  f"{e.name!r} (CodeDeploy application {e.blue_green.application!r})"
                                  for e in envs if e.blue_green)
                self.add(node, path, f"service {service!r} has no CodeDeploy deployment group in account {account}, "
                         f"region {region}: a blue/green environment deploys only the services it has a deployment "
                         f"group for: {known}")
                return None
            out.append(None)
        return out

    def image(self, uri: str, node: Node, path: str) -> dict[str, str | None] | None:
        """``<registry>.dkr.ecr.<region>.<suffix>/<repository>(:<tag>|@sha256:<digest>)`` in the tools registry.

        The URI's region is dropped: the release resolves the tag once and pins every target to its own region's
        replica of the same digest.
        """
        count = len(self.problems)
        expected = (f"expected {self.ctx.registry_id}.dkr.ecr.<region>.{self.ctx.dns_suffix}/<repository>:<tag> "
                    "or …/<repository>@sha256:<64 hex digits>")
        host, slash, rest = uri.partition("/")
        match = _ECR_HOST.fullmatch(host)
        if not slash or not match:
            self.add(node, path, f"not an ECR image URI; {expected}, got {uri!r}")
            return None
        registry, region, suffix = match.group("registry", "region", "suffix")
        if not _ACCOUNT.fullmatch(registry):
            self.add(node, path, f"registry {registry!r} is not a 12-digit account id (the tools registry is "
                     f"{self.ctx.registry_id})")
        elif registry != self.ctx.registry_id:
            self.add(node, path, f"registry {registry} is not the tools registry {self.ctx.registry_id}; releases "
                     "deploy only images of the tools registry, whose replicas the workload accounts may pull")
        if not _ANY_REGION.fullmatch(region):
            self.add(node, path, f"{region!r} is not a region name")
        if suffix != self.ctx.dns_suffix:
            self.add(node, path, f"{suffix!r} is not the {self.ctx.partition} partition's domain "
                     f"{self.ctx.dns_suffix!r}")

        repository, at, digest = rest.partition("@")
        repository, colon, tag = repository.partition(":")
        if at and colon:
            self.add(node, path, f"gives both tag {tag!r} and a digest; name the image by one of them")
        elif not at and not colon:
            self.add(node, path, "names no tag or digest (there is no implicit 'latest'); add :<tag> or "
                     "@sha256:<digest>")
        if at and not _DIGEST.fullmatch(digest):
            self.add(node, path, f"digest must be sha256: and 64 lower-case hex digits, got {digest!r}")
        if colon and not _TAG.fullmatch(tag):
            self.add(node, path, f"tag must be letters, digits and '_.-' (not starting with '.' or '-'), at most "
                     f"128 characters, got {tag!r}")
        if not (_REPOSITORY.fullmatch(repository) and 2 <= len(repository) <= 256):
            self.add(node, path, f"{repository!r} is not an ECR repository name (lower-case letters and digits "
                     "separated by '._-' and '/', 2-256 characters)")
        if len(self.problems) > count:
            return None
        return {"registryId": registry, "repository": repository, "tag": tag if colon else None,
                "digest": digest if at else None}

    def ceiling(self, entries: list[_Entry]) -> None:
        """The release must fit what the release state machine holds (``handlers/release_limits.py``, the very
        check its prepare step makes): reported here, at the first entry over the limit, so a pull request learns
        it, not the pipeline."""
        per_group: dict[tuple[str, str], int] = {}
        first_over: _Entry | None = None
        for entry in sorted(entries, key=lambda e: e.line):
            for target in entry.targets or []:
                per_group[target] = per_group.get(target, 0) + 1
            if first_over is None and ceiling_problems(per_group):
                first_over = entry
        for problem in ceiling_problems(per_group):
            where = first_over or entries[0]
            self.add(where.line, where.path, problem)

    def duplicate_targets(self, entries: list[_Entry]) -> None:
        """Two entries updating the same service or rule target in one account and region would race each
        other and make the rollback snapshot meaningless: that is an error, not "last one wins"."""
        seen: dict[tuple[str, ...], _Entry] = {}
        for entry in sorted(entries, key=lambda e: e.line):
            identity = entry.identity()
            if identity is None or not entry.targets:
                continue
            reported: set[int] = set()
            for account, region in entry.targets:
                key = (entry.kind.section, account, region, *identity)
                first = seen.setdefault(key, entry)
                if first is entry or id(first) in reported:
                    continue
                reported.add(id(first))
                names = ("cluster {0!r}, service {1!r}" if entry.kind is _SERVICES
                         else "event bus {0!r}, rule {1!r}").format(*identity)
                self.add(entry.line, entry.path, f"deploys the same {entry.kind.what} ({names}) in account "
                         f"{account}, region {region} as {first.path} (line {first.line}); two deployments would "
                         "fight over it")


def _check(text: str | bytes, context: ReleaseContext | Mapping[str, Any], filename: str,
           ) -> tuple[list[Problem], list[_Entry]]:
    ctx = context if isinstance(context, ReleaseContext) else load_context(context)
    checker = _Checker(ctx, filename)
    root = checker.compose(text)
    entries = checker.document(root) if not checker.problems else []
    # Stable sort: line order for the reader, and problems of one line stay in the order they were found.
    return sorted(checker.problems, key=lambda p: p.line), entries


def validate(text: str | bytes, context: ReleaseContext | Mapping[str, Any],
             filename: str = "deployment.yaml") -> list[Problem]:
    """Every problem of a release file, in line order (empty: valid). ``context`` is a :class:`ReleaseContext` or
    the decoded context JSON (then :class:`ContextError` if that is invalid).

    Rules: the top level is a mapping with only ``tasks`` and ``services`` (each a list, or empty), with at least
    one entry overall; unknown and duplicate keys are errors everywhere; required keys — tasks: ``service``,
    ``cwRuleName``, ``image``; services: ``service``, ``clusterName``, ``serviceName``, ``image``; optional —
    ``environment``, ``accountId``, ``region``, ``container``, and ``eventBus`` for tasks. Every value is a
    non-empty string (quote numbers and yes/no). An entry names ``environment`` (one of the context's) or
    ``accountId`` (an environment's account) with ``region``, never both; ``region`` must be one its environment or
    account deploys to. ``image`` is ``<registryId>.dkr.ecr.<region>.<dns suffix>/<repository>`` and exactly one of
    ``:<tag>`` or ``@sha256:<64 hex>``, in the tools registry. ECS and EventBridge names follow AWS's rules. No two
    entries may deploy the same (account, region, cluster, service) or (account, region, event bus, rule). A
    services entry deploying to a blue/green environment (the context's ``blueGreen``) must name (``serviceName``)
    a service that environment has a CodeDeploy deployment group for.
    """
    return _check(text, context, filename)[0]


def convert(text: str | bytes, context: ReleaseContext | Mapping[str, Any],
            filename: str = "deployment.yaml") -> dict[str, Any]:
    """The release manifest, or :class:`ReleaseFileError` with every problem. One item per (account, region) target,
    in file order (an environment's regions in its order)::

        {"version": 1, "source": "<filename>",
         "services": [{"name", "line", "accountId", "region", "roleArn", "cluster", "service", "container",
                       "image": {"registryId", "repository", "tag", "digest"}}],
         "tasks": [{"name", "line", "accountId", "region", "roleArn", "ruleName", "eventBus", "container",
                    "image": {…}}]}

    ``container`` is null when not given (the task definition's only container); an image has a ``tag`` or a
    ``digest``, the other null. A service of a blue/green environment has one more key, ``"blueGreen":
    {"application", "deploymentGroup"}`` (its CodeDeploy application and deployment group), plus
    ``"smokeTestHook": "<Lambda function name>"`` when the context gives the service a smoke-test hook (its
    environment's ``blueGreen.smokeTestHooks``): the release's AppSpec then runs that function at
    ``AfterAllowTestTraffic``, as the pipeline's does. A rolling service has no ``blueGreen`` key.
    """
    ctx = context if isinstance(context, ReleaseContext) else load_context(context)
    problems, entries = _check(text, ctx, filename)
    if problems:
        raise ReleaseFileError(problems)
    manifest: dict[str, Any] = {"version": MANIFEST_VERSION, "source": filename, "services": [], "tasks": []}
    for entry in sorted(entries, key=lambda e: e.line):
        v = entry.values
        for index, (account, region) in enumerate(entry.targets or []):
            item: dict[str, Any] = {"name": v["service"], "line": entry.line, "accountId": account, "region": region,
                                    "roleArn": ctx.account_role(account)}
            if entry.kind is _SERVICES:
                item.update(cluster=v["clusterName"], service=v["serviceName"])
            else:
                item.update(ruleName=v["cwRuleName"], eventBus=v.get("eventBus", "default"))
            item.update(container=v.get("container"), image=dict(entry.image or {}))
            blue_green = entry.blue_green[index] if entry.blue_green else None
            if blue_green:  # only blue/green services have the key: a rolling service's item is as it always was
                item["blueGreen"] = dict(blue_green)
            manifest[entry.kind.section].append(item)
    return manifest


# --------------------------------------------------------------------------------------------------------------------
# CLI


def _read_context(args: argparse.Namespace) -> ReleaseContext:
    try:
        raw = Path(args.context).read_text(encoding="utf-8") if args.context else args.context_json
        data = json.loads(raw)
    except OSError as exc:
        raise ContextError([f"cannot read: {exc.strerror}"]) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, JSON nested too deep
        raise ContextError([f"not valid JSON: {exc}"]) from None
    return load_context(data)


def _write_atomically(path: Path, content: str) -> None:
    """Readers (and a re-run build) never see a half-written manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; returns the exit code (0 valid, 1 invalid release file, 2 could not run)."""
    parser = argparse.ArgumentParser(prog="python -m handlers.release_file",
                                     description="Validate or convert a crossdeploy release file (deployment.yaml).")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("validate", "report every problem with its line"),
                            ("convert", "validate, then write the release manifest (nothing when invalid)")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("file", help="the release file, e.g. deployment.yaml")
        context = sub.add_mutually_exclusive_group(required=True)
        context.add_argument("--context", metavar="PATH", help="release context JSON file")
        context.add_argument("--context-json", metavar="JSON", help="release context as inline JSON")
        if name == "convert":
            sub.add_argument("--out", required=True, metavar="PATH", help="where to write the manifest JSON")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors (0 for --help); main() returns, never exits
        return exc.code if isinstance(exc.code, int) else 2

    try:
        ctx = _read_context(args)
    except ContextError as exc:
        source = args.context or "--context-json"
        for problem in exc.problems:
            print(f"{source}: {problem}", file=sys.stderr)
        return 2
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2

    try:
        manifest = convert(data, ctx, args.file)
    except ReleaseFileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        what = "nothing written" if args.command == "convert" else "not deployable"
        print(f"{args.file}: {len(exc.problems)} problem(s); {what}", file=sys.stderr)
        return 1
    summary = f"{len(manifest['services'])} service target(s), {len(manifest['tasks'])} task target(s)"
    if args.command == "convert":
        # Compact: the manifest may travel as Step Functions input, which is limited to 256 KiB.
        _write_atomically(Path(args.out), json.dumps(manifest, separators=(",", ":")) + "\n")
        print(f"{args.file}: valid; wrote {args.out} ({summary})")
    else:
        print(f"{args.file}: valid ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
