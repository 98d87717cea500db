"""Typed stack configuration: the public interface of crossdeploy.

Everything a stack file may say lives here, with its default and the reason for it. Loading is strict:

* unknown keys are errors, so a typo never silently falls back to a default;
* every problem is reported at once, each naming its key path (``environments[1].accountId``) and the bad value;
* loading happens before any resource is registered, and a bad config surfaces as a ``pulumi.RunError`` (a clean
  Pulumi error message, not a Python traceback).

Namespace ``crossdeploy:`` (the Pulumi project name). Keys:

``tools``            ``accountId`` (12-digit string, required), ``region`` (default: ``aws:region``).
``environments``     ordered list (promotion order), at least one; see :class:`EnvironmentConfig`.
``services``         list, at least one; see :class:`ServiceConfig`.
``notifications``    optional; ``emails`` (list of addresses subscribed to the pipeline topic).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Literal

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

NAMESPACE = "crossdeploy"
TOP_LEVEL_KEYS = ("tools", "environments", "services", "notifications", "release")

_ACCOUNT_ID = r"^[0-9]{12}$"
_ENV_NAME = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"
# ECR's own pattern for repository names (CreateRepository API reference), 2-256 characters.
_ECR_REPOSITORY = r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$"
# ECS names: container, service and cluster names share this alphabet (up to 255 characters).
_ECS_NAME = r"^[A-Za-z0-9_-]{1,255}$"
_ECR_TAG = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
_TAG_PATTERN = r"^[A-Za-z0-9_.*-]{1,128}$"
_IAM_ROLE_NAME = r"^[\w+=,.@-]{1,64}$"
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class ConfigError(pulumi.RunError):
    """Raised with every problem of a stack config at once; Pulumi prints it without a traceback."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid stack configuration ({len(problems)} problem(s)):\n{lines}")


@lru_cache(maxsize=1)
def region_partitions() -> dict[str, str]:
    """Every region botocore knows (offline, from its bundled endpoint data), mapped to its partition."""
    import botocore.session

    session = botocore.session.get_session()
    return {
        region: partition
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("ecs", partition_name=partition)
    }


def _check_region(value: str) -> str:
    if value not in region_partitions():
        raise ValueError("not an AWS region name (e.g. us-east-2)")
    return value


class _Strict(BaseModel):
    # extra="forbid": a misspelt key is an error, never a silent default. strict: YAML `true`/"true" and
    # unquoted account ids (ints, which lose leading zeros) are not coerced behind the user's back.
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False, frozen=True)


class ToolsConfig(_Strict):
    """The central account that owns the registries, pipelines and artifact stores."""

    account_id: str = Field(alias="accountId", pattern=_ACCOUNT_ID)
    """12-digit account id, quoted in YAML. Required."""
    region: str | None = None
    """Home region of the pipelines. Default: ``aws:region``."""

    _region = field_validator("region")(lambda v: v if v is None else _check_region(v))


class EnvironmentConfig(_Strict):
    """One deployment target, in promotion order."""

    name: str = Field(pattern=_ENV_NAME)
    """Lower-case letters, digits and '-', at most 32 characters (it ends up in IAM and pipeline names)."""
    account_id: str = Field(alias="accountId", pattern=_ACCOUNT_ID)
    """The workload account; never the tools account."""
    regions: list[str] = Field(min_length=1)
    """One or more region names, unique. Each gets its own deploy action and artifact store."""
    strategy: Literal["rolling", "blue-green"] = "rolling"
    """``rolling`` (ECS deploy action, circuit breaker) or ``blue-green`` (CodeDeploy). Default ``rolling``."""
    require_approval: bool = Field(default=False, alias="requireApproval")
    """Manual approval (SNS) before this environment is deployed. Default false."""
    provision_role_name: str = Field(
        default="OrganizationAccountAccessRole", alias="provisionRoleName", pattern=_IAM_ROLE_NAME
    )
    """Role Pulumi assumes in the workload account to create resources there. Default: the role AWS Organizations
    creates in member accounts."""
    push_tags: list[str] | None = Field(default=None, alias="pushTags", min_length=1)
    """Tag patterns (``*`` matches any run of characters) whose push to a push-delivery service's repository
    deploys that image here, in every region of this environment. Default ``["<name>-*"]``."""

    @field_validator("push_tags")
    @classmethod
    def _push_tags(cls, value: list[str] | None) -> list[str] | None:
        bad = [t for t in value or [] if not re.match(_TAG_PATTERN, t) or t.count("*") > 2]
        if bad:
            raise ValueError(f"not tag patterns (tag characters and at most two '*'): {', '.join(map(repr, bad))}")
        return value

    @property
    def tag_patterns(self) -> list[str]:
        return list(self.push_tags) if self.push_tags else [f"{self.name}-*"]

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        bad = [r for r in value if r not in region_partitions()]
        if bad:
            raise ValueError(f"not AWS region names: {', '.join(map(repr, bad))}")
        if len(set(value)) != len(value):
            raise ValueError("regions must be unique")
        return value

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        if value == "blue-green":
            raise ValueError(
                "blue-green deployments are not available yet (they arrive with the workloads/blue-green "
                "issue); use strategy: rolling"
            )
        return value


class ServiceConfig(_Strict):
    """One ECS service delivered by its own pipeline."""

    name: str = Field(pattern=_ECR_REPOSITORY, min_length=2, max_length=256)
    """ECR repository name (ECR's naming rules); also the default container and service name."""
    container_name: str | None = Field(default=None, alias="containerName", pattern=_ECS_NAME)
    """Container whose image the pipeline replaces. Default: ``name``."""
    service_name: str | None = Field(default=None, alias="serviceName", pattern=_ECS_NAME)
    """ECS service name in every environment. Default: ``name``."""
    cluster: str = Field(default="crossdeploy", pattern=_ECS_NAME)
    """ECS cluster name in every environment. Default ``crossdeploy``."""
    trigger_tag: str = Field(default="latest", alias="triggerTag", pattern=_ECR_TAG)
    """The tag whose push starts the pipeline; the only mutable tag of the repository. Default ``latest``."""
    delivery: Literal["pipeline", "push"] = "pipeline"
    """``pipeline`` (a CodePipeline through every environment in order) or ``push`` (a push of a tag matching an
    environment's ``pushTags`` deploys that image there directly; no CodePipeline). Default ``pipeline``."""
    push_mode: Literal["revision", "force"] | None = Field(default=None, alias="pushMode")
    """Push delivery only: ``revision`` registers a task definition revision pinned by digest, then updates the
    service (reproducible, can be rolled back); ``force`` forces a new deployment of what the task definition
    names (for teams on mutable tags). Default ``revision``."""

    @property
    def mode(self) -> str:
        return self.push_mode or "revision"

    @property
    def container(self) -> str:
        return self.container_name or self.name

    @property
    def service(self) -> str:
        return self.service_name or self.name


class NotificationsConfig(_Strict):
    emails: list[str] = Field(default_factory=list)
    """Addresses subscribed to the pipeline topic (approvals, failures). Each must confirm the subscription."""

    @field_validator("emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        bad = [e for e in value if not re.match(_EMAIL, e)]
        if bad:
            raise ValueError(f"not e-mail addresses: {', '.join(map(repr, bad))}")
        if len(set(value)) != len(value):
            raise ValueError("e-mail addresses must be unique")
        return value


class ReleaseSourceConfig(_Strict):
    """Where ``deployment.yaml`` lives."""

    provider: Literal["codecommit", "codestar"]
    """``codecommit`` (a CodeCommit repository in the tools account) or ``codestar`` (GitHub, Bitbucket, GitLab
    through a CodeStar/CodeConnections connection)."""
    repository: str = Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$")
    """CodeCommit repository name, or ``owner/repo`` for a connection."""
    branch: str = Field(default="main", pattern=r"^[A-Za-z0-9_./-]{1,255}$")
    """Branch whose pushes release. Default ``main``."""
    connection_arn: str | None = Field(default=None, alias="connectionArn",
                                       pattern=r"^arn:aws[a-z-]*:(codestar-connections|codeconnections):")
    """Required with ``codestar``: the connection's ARN (it must be in the tools account and available)."""


class ReleaseConfig(_Strict):
    """A release pipeline: ``deployment.yaml`` in git deployed as one unit, with rollback of the whole release."""

    source: ReleaseSourceConfig
    file: str = Field(default="deployment.yaml", pattern=r"^[A-Za-z0-9_./-]{1,255}$")
    """Path of the release file in the repository. Default ``deployment.yaml``."""
    require_approval: bool = Field(default=False, alias="requireApproval")
    """Manual approval between validation and the release. Default false."""
    max_concurrency: int = Field(default=10, alias="maxConcurrency", ge=1, le=40)
    """Targets deployed at once by each Map (1-40; inline Maps never run more than 40). Default 10: ECS throttles
    its APIs per account and region."""
    service_timeout_minutes: int = Field(default=15, alias="serviceTimeoutMinutes", ge=1, le=120)
    """How long one service may take to become steady before the release rolls back. Default 15."""
    pass_role_names: list[str] = Field(default_factory=lambda: ["ecsEventsRole", "ecsTaskExecutionRole"],
                                       alias="passRoleNames")
    """Roles in the workload accounts that scheduled tasks use (their EventBridge role, task and execution roles):
    the deploy role may pass exactly these when it updates a rule target. Default ``ecsEventsRole``,
    ``ecsTaskExecutionRole``."""

    @field_validator("pass_role_names")
    @classmethod
    def _role_names(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not re.match(_IAM_ROLE_NAME, v)]
        if bad:
            raise ValueError(f"not IAM role names: {', '.join(map(repr, bad))}")
        return value


class _RawStack(_Strict):
    tools: ToolsConfig
    environments: list[EnvironmentConfig] = Field(min_length=1)
    services: list[ServiceConfig] = Field(min_length=1)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    release: ReleaseConfig | None = None


@dataclass(frozen=True)
class Target:
    """One place a service is deployed to: an environment in one region."""

    environment: EnvironmentConfig
    region: str

    @property
    def account_id(self) -> str:
        return self.environment.account_id


@dataclass(frozen=True)
class StackConfig:
    """The validated configuration plus what is derived from it."""

    project: str
    stack: str
    tools_account_id: str
    tools_region: str
    environments: tuple[EnvironmentConfig, ...]
    services: tuple[ServiceConfig, ...]
    emails: tuple[str, ...]
    release: ReleaseConfig | None = None

    @property
    def partition(self) -> str:
        return region_partitions()[self.tools_region]

    @property
    def regions(self) -> tuple[str, ...]:
        """Every region in use, the tools region first, then in the order environments name them."""
        return tuple(dict.fromkeys([self.tools_region, *(r for e in self.environments for r in e.regions)]))

    @property
    def replica_regions(self) -> tuple[str, ...]:
        return self.regions[1:]

    @property
    def workload_accounts(self) -> dict[str, EnvironmentConfig]:
        """Workload account id -> the first environment that uses it (its provisionRoleName is shared)."""
        accounts: dict[str, EnvironmentConfig] = {}
        for env in self.environments:
            accounts.setdefault(env.account_id, env)
        return accounts

    def account_regions(self, account_id: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r for e in self.environments if e.account_id == account_id for r in e.regions))

    def targets(self) -> list[Target]:
        return [Target(env, region) for env in self.environments for region in env.regions]

    @property
    def pipeline_services(self) -> tuple[ServiceConfig, ...]:
        return tuple(s for s in self.services if s.delivery == "pipeline")

    @property
    def push_services(self) -> tuple[ServiceConfig, ...]:
        return tuple(s for s in self.services if s.delivery == "push")

    @property
    def name_prefix(self) -> str:
        return f"{self.project}-{self.stack}"


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return f"unknown key (value {value!r}); check the spelling against the README"
    if kind == "string_pattern_mismatch":
        hint = {
            _ACCOUNT_ID: "a 12-digit account id as a quoted string",
            _ENV_NAME: "lower-case letters, digits and '-', at most 32 characters",
            _ECR_REPOSITORY: "a valid ECR repository name (lower-case, digits, '._-/' separators, 2-256 characters)",
            _ECS_NAME: "letters, digits, '-' and '_', at most 255 characters",
            _ECR_TAG: "a valid image tag (letters, digits, '_.-', at most 128 characters)",
            _IAM_ROLE_NAME: "a valid IAM role name",
        }.get(error.get("ctx", {}).get("pattern"), "a value of the documented form")
        return f"expected {hint}, got {value!r}"
    if kind in ("string_too_short", "string_too_long"):
        return f"{error['msg'].lower()}, got {value!r}"
    if kind == "string_type":
        extra = " (quote it in YAML)" if isinstance(value, int | float) else ""
        return f"expected a string{extra}, got {value!r}"
    if kind == "bool_type":
        return f"expected true or false, got {value!r}"
    if kind in ("list_type", "model_type", "dict_type", "model_attributes_type"):
        wanted = "a list" if kind == "list_type" else "a mapping of keys"
        return f"expected {wanted}, got {value!r}"
    if kind == "too_short":
        return f"must not be empty, got {value!r}"
    if kind == "literal_error":
        return f"expected one of {error['ctx']['expected']}, got {value!r}"
    if kind == "value_error":
        return f"{error['ctx']['error']}, got {value!r}"
    return f"{error['msg']}, got {value!r}"


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some tag matches both patterns (``*`` = any run of characters, everything else literal)."""

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "*":
            # The star ends here, or it consumes b's next character (or b's star keeps going past it).
            return match(i + 1, j) or (j < len(b) and match(i, j + 1))
        if j < len(b) and b[j] == "*":
            return match(i, j + 1) or (i < len(a) and match(i + 1, j))
        return i < len(a) and j < len(b) and a[i] == b[j] and match(i + 1, j + 1)

    return match(0, 0)


def _push_tag_overlaps(envs: list, services: list) -> list[str]:
    """A pushed tag must map to exactly one environment, or one push would deploy to two of them."""
    if not any(isinstance(s, Mapping) and s.get("delivery") == "push" for s in services):
        return []
    patterns: list[tuple[int, str, str]] = []
    for i, env in enumerate(envs):
        if not isinstance(env, Mapping) or not isinstance(env.get("name"), str):
            continue
        tags = env.get("pushTags") or [f"{env['name']}-*"]
        patterns.extend((i, env["name"], t) for t in tags if isinstance(t, str))
    problems = []
    for n, (i, name, tag) in enumerate(patterns):
        for j, other, other_tag in patterns[n + 1:]:
            if i != j and patterns_overlap(tag, other_tag):
                problems.append(f"environments[{j}].pushTags: {other_tag!r} and {tag!r} of environment {name!r} "
                                f"can match the same tag, so one push would deploy to both {name!r} and {other!r}")
    return problems


def _cross_checks(raw: Mapping[str, Any]) -> list[str]:
    """Rules spanning several keys, checked on the raw data so they are reported alongside field errors."""
    problems: list[str] = []
    tools = raw.get("tools") if isinstance(raw.get("tools"), Mapping) else {}
    tools_account = tools.get("accountId")
    envs = raw.get("environments") if isinstance(raw.get("environments"), list) else []
    services = raw.get("services") if isinstance(raw.get("services"), list) else []

    seen_env: dict[Any, int] = {}
    account_roles: dict[Any, tuple[int, Any]] = {}
    for i, env in enumerate(envs):
        if not isinstance(env, Mapping):
            continue
        name = env.get("name")
        if name in seen_env:
            problems.append(f"environments[{i}].name: duplicate environment name {name!r} (first at "
                            f"environments[{seen_env[name]}])")
        seen_env.setdefault(name, i)
        account = env.get("accountId")
        if tools_account is not None and account == tools_account:
            problems.append(f"environments[{i}].accountId: {account!r} is the tools account; workloads must live "
                            "in other accounts")
        role = env.get("provisionRoleName", "OrganizationAccountAccessRole")
        if account in account_roles and account_roles[account][1] != role:
            first = account_roles[account][0]
            problems.append(f"environments[{i}].provisionRoleName: {role!r} differs from "
                            f"environments[{first}].provisionRoleName for the same account {account!r}; Pulumi "
                            "uses one provider per account and region")
        account_roles.setdefault(account, (i, role))

    partitions = region_partitions()
    tools_region = tools.get("region") or raw.get("_aws_region")
    home = partitions.get(tools_region) if isinstance(tools_region, str) else None
    if home:
        for i, env in enumerate(envs):
            regions = env.get("regions") if isinstance(env, Mapping) else None
            for j, region in enumerate(regions if isinstance(regions, list) else []):
                if isinstance(region, str) and partitions.get(region, home) != home:
                    problems.append(f"environments[{i}].regions[{j}]: {region!r} is in partition "
                                    f"{partitions[region]!r}, the tools region {tools_region!r} in {home!r}; "
                                    "cross-partition delivery is not possible")

    problems.extend(_push_tag_overlaps(envs, services))
    release = raw.get("release")
    source = release.get("source") if isinstance(release, Mapping) else None
    if isinstance(source, Mapping):
        provider, connection = source.get("provider"), source.get("connectionArn")
        if provider == "codestar" and not connection:
            problems.append("release.source.connectionArn: required with provider codestar")
        if provider == "codecommit" and connection:
            problems.append(f"release.source.connectionArn: only for provider codestar, got {connection!r}")
        if provider == "codestar" and "/" not in str(source.get("repository", "/")):
            problems.append(f"release.source.repository: expected owner/repo for a connection, got "
                            f"{source.get('repository')!r}")

    seen_svc: dict[Any, int] = {}
    seen_target: dict[tuple[Any, Any], int] = {}
    for i, svc in enumerate(services):
        if not isinstance(svc, Mapping):
            continue
        name = svc.get("name")
        if name in seen_svc:
            problems.append(f"services[{i}].name: duplicate service name {name!r} (first at "
                            f"services[{seen_svc[name]}])")
        seen_svc.setdefault(name, i)
        if isinstance(name, str) and not re.match(_ECS_NAME, name):
            # ECR allows '/' and '.' ("team/api", "my.app"); ECS container and service names do not.
            for key in ("containerName", "serviceName"):
                if key not in svc:
                    problems.append(f"services[{i}].{key}: required because name {name!r} is not a valid ECS "
                                    "name (letters, digits, '-', '_')")
        if "pushMode" in svc and svc.get("delivery", "pipeline") != "push":
            problems.append(f"services[{i}].pushMode: only applies to delivery: push, got {svc['pushMode']!r} "
                            f"with delivery {svc.get('delivery', 'pipeline')!r}")
        target = (svc.get("cluster", "crossdeploy"), svc.get("serviceName") or name)
        if target in seen_target and seen_svc.get(name) == i:
            problems.append(f"services[{i}].serviceName: {target[1]!r} in cluster {target[0]!r} is already "
                            f"deployed by services[{seen_target[target]}]; two pipelines would fight over it")
        seen_target.setdefault(target, i)
    return problems


def parse(raw: Mapping[str, Any], *, project: str, stack: str, aws_region: str | None) -> StackConfig:
    """Validate raw config values (already JSON-decoded) and return the typed config, or raise ConfigError."""
    problems: list[str] = []
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    for key in unknown:
        problems.append(f"{NAMESPACE}:{key}: unknown key; known keys are {', '.join(TOP_LEVEL_KEYS)}")
    data = {k: v for k, v in raw.items() if k in TOP_LEVEL_KEYS}

    model: _RawStack | None = None
    try:
        model = _RawStack.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(f"{_path(err['loc'])}: {_describe(err)}")

    problems.extend(_cross_checks({**data, "_aws_region": aws_region}))
    tools_region = None
    if model is not None:
        tools_region = model.tools.region or aws_region
    elif isinstance(data.get("tools"), Mapping):
        tools_region = data["tools"].get("region") or aws_region
    if not tools_region:
        problems.append("tools.region: not set, and aws:region is not set either; set one of them")
    elif tools_region not in region_partitions() and (model is not None or aws_region == tools_region):
        problems.append(f"aws:region: not an AWS region name, got {tools_region!r}")

    if problems or model is None:
        raise ConfigError(problems)
    return StackConfig(
        project=project,
        stack=stack,
        tools_account_id=model.tools.account_id,
        tools_region=tools_region,
        environments=tuple(model.environments),
        services=tuple(model.services),
        emails=tuple(model.notifications.emails),
        release=model.release,
    )


def load() -> StackConfig:
    """Read the ``crossdeploy:*`` keys of the current stack and validate them (see :func:`parse`)."""
    raw: dict[str, Any] = {}
    # The language host hands config over either as PULUMI_CONFIG or through set_all_config; read both.
    for full_key, text in {**get_config_env(), **CONFIG.get()}.items():
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        try:
            raw[key] = json.loads(text)
        except (TypeError, ValueError):
            raw[key] = text  # a plain string where a mapping or list is expected: validation names it
    aws_region = pulumi.Config("aws").get("region")
    return parse(raw, project=pulumi.get_project(), stack=pulumi.get_stack(), aws_region=aws_region)
