"""Typed stack configuration: the public interface of crossdeploy.

Everything a stack file may say lives here, with its default and the reason for it. Loading is strict:

* unknown keys are errors, so a typo never silently falls back to a default;
* every problem is reported at once, each naming its key path (``environments[1].accountId``) and the bad value;
* loading happens before any resource is registered, and a bad config surfaces as a ``pulumi.RunError`` (a clean
  Pulumi error message, not a Python traceback);
* once the fields are valid, the AWS size and count limits the config would push a deployment over
  (:mod:`components.limits`) are reported with the other problems, so nothing that loads fails later for a size.

Namespace ``crossdeploy:`` (the Pulumi project name). Keys:

``tools``            ``accountId`` (12-digit string, required), ``region`` (default: ``aws:region``).
``environments``     ordered list (promotion order), at least one; see :class:`EnvironmentConfig`.
``services``         list, at least one; see :class:`ServiceConfig`.
``notifications``    optional; ``emails`` (list of addresses subscribed to the pipeline topic).
``release``          optional; see :class:`ReleaseConfig`.

Workloads (the VPC, load balancer, cluster and Fargate services in each environment and region) are described by
the same keys: environment-level ``network``, ``certificateArns``, ``domain`` and ``blueGreen``, service-level
sizing, port, routing, health check, environment, secrets, autoscaling, or ``existing: true`` for services
crossdeploy only deploys to.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Annotated, Any, Literal

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from handlers import smoke_test as smoke
from handlers.release_limits import MAX_CONCURRENCY, MIN_CONCURRENCY

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
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
                      3288, 3653)
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
_BRANCH = r"^[A-Za-z0-9_./-]{1,255}$"
GITFLOW_WORKFLOW = "examples/release-gitflow.github-workflow.yml"
"""The workflow a GitHub release repository runs for gitflow (codestar sources: CodePipeline opens no pull requests)."""


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


NOT_A_REGION = "not an AWS region name (e.g. us-east-2)"
"""The one wording of a bad region, wherever a region is named (tools.region, aws:region, environments[].regions,
certificateArns and existingVpcs keys), each bad value reported once, at its own key path."""


def is_region(value: object) -> bool:
    """Whether `value` is a region name botocore knows (anything else, a list or a number too, is not)."""
    return isinstance(value, str) and value in region_partitions()


def _check_region(value: str) -> str:
    if not is_region(value):
        raise ValueError(NOT_A_REGION)
    return value


_Region = Annotated[str, AfterValidator(_check_region)]


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


_VPC_ID = r"^vpc-[0-9a-f]{8,17}$"
_SUBNET_ID = r"^subnet-[0-9a-f]{8,17}$"
_CERTIFICATE_ARN = r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[A-Za-z0-9-]+$"
_CIDR = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$"


def _cidr(value: str, *, min_prefix: int = 0, max_prefix: int = 32) -> str:
    network = ipaddress.ip_network(value, strict=False)  # the pattern already made it parseable in shape
    if str(network) != value:
        raise ValueError(f"not a network address (did you mean {str(network)!r}?)")
    if not min_prefix <= network.prefixlen <= max_prefix:
        raise ValueError(f"prefix length must be /{min_prefix} to /{max_prefix}")
    return value


class ExistingVpcConfig(_Strict):
    """A VPC crossdeploy adopts in one region instead of creating one: nothing in it is modified."""

    vpc_id: str = Field(alias="vpcId", pattern=_VPC_ID)
    public_subnet_ids: list[str] = Field(alias="publicSubnetIds", min_length=2)
    """At least two, in different availability zones (an ALB needs two). The load balancer goes here."""
    private_subnet_ids: list[str] = Field(alias="privateSubnetIds", min_length=1)
    """Where tasks run, with a route to the internet (NAT) or VPC endpoints for ECR, S3, Logs and Secrets."""

    @field_validator("public_subnet_ids", "private_subnet_ids")
    @classmethod
    def _subnets(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not isinstance(v, str) or not re.fullmatch(_SUBNET_ID, v)]
        if bad:
            raise ValueError(f"not subnet ids (subnet-<hex>): {', '.join(map(repr, bad))}")
        if len(set(value)) != len(value):
            raise ValueError("subnet ids must be unique")
        return value


# ACM's DomainName pattern (RequestCertificate API reference) without its wildcard prefix, lower case only: the name
# is also the record crossdeploy creates, and a wildcard record or certificate is not a host users can reach.
_DNS_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_NAME = rf"^(?:{_DNS_LABEL}\.)+(?!-)[a-z0-9-]{{2,63}}(?<!-)$"
DOMAIN_NAME_MAX = 253  # characters of a DNS name without its final dot (RFC 1035; ACM's DomainName limit)
_HOSTED_ZONE_ID = r"^Z[A-Z0-9]{1,31}$"  # Route 53 zone ids: "Z" and upper-case letters and digits, 32 at most
HOSTED_ZONE_PREFIX = "/hostedzone/"
"""How the Route 53 API and console print a zone id (``/hostedzone/Z0123...``); accepted and removed."""


def domain_name_problem(value: str) -> str | None:
    """Why `value` is not a name crossdeploy can certify and point at a load balancer, or None."""
    if value.endswith("."):
        return f"write the name without the final dot ({value.rstrip('.')!r})"
    if value != value.lower():
        return f"write the name in lower case ({value.lower()!r}); DNS names are case-insensitive"
    if value.startswith("*."):
        return "a wildcard is not a host name; name the host itself (e.g. 'shop.example.org')"
    if len(value) > DOMAIN_NAME_MAX:
        return f"{len(value)} characters; a DNS name has at most {DOMAIN_NAME_MAX}"
    if not re.fullmatch(_DOMAIN_NAME, value):
        return ("not a fully qualified DNS name: at least two dot-separated labels of 1-63 letters, digits and '-', "
                "none starting or ending with '-' (e.g. 'shop.example.org')")
    return None


class DomainConfig(_Strict):
    """The name an environment's services are reached by: certificates per region, DNS records to the load
    balancers (:mod:`components.domain`)."""

    name: str
    """Fully qualified DNS name in lower case, without the final dot, e.g. ``shop.example.org``. Required."""
    hosted_zone_id: str = Field(alias="hostedZoneId")
    """The public Route 53 hosted zone of ``name`` (or of a parent of it), in the environment's account:
    ``Z...``; ``/hostedzone/Z...`` as the API prints it is accepted. Required."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        problem = domain_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("hosted_zone_id")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone = value.removeprefix(HOSTED_ZONE_PREFIX)
        if not re.fullmatch(_HOSTED_ZONE_ID, zone):
            raise ValueError("not a Route 53 hosted zone id ('Z' and up to 31 upper-case letters and digits, e.g. "
                             "'Z0123456789ABCDEFGHIJ')")
        return zone


class NetworkConfig(_Strict):
    """The network of an environment's workloads, per region."""

    cidr: str = Field(default="10.0.0.0/16", pattern=_CIDR)
    """Address range of each VPC crossdeploy creates (/16 to /24). Default ``10.0.0.0/16``. Every region of the
    environment gets its own VPC with this range: they are never peered."""
    nat_gateways: Literal["per-az", "single"] = Field(default="per-az", alias="natGateways")
    """``per-az`` (one NAT gateway per availability zone: an AZ outage does not cut the other AZ's tasks off ECR)
    or ``single`` (one, cheaper, for non-production). Default ``per-az``."""
    existing_vpcs: dict[str, ExistingVpcConfig] = Field(default_factory=dict, alias="existingVpcs")
    """Region -> a VPC to adopt there. Regions not listed get a new VPC. Default: none."""

    _cidr_check = field_validator("cidr")(lambda v: _cidr(v, min_prefix=16, max_prefix=24))


DEFAULT_APPROVED_BAKE_MINUTES = 10
MAX_BAKE_MINUTES = 1380  # the bake runs as a Lambda invoke action (24 h), like a deployment
DEFAULT_SHIFT_PERCENT = 10
DEFAULT_SHIFT_MINUTES = 5


class TrafficShiftConfig(_Strict):
    """How CodeDeploy moves production traffic to the new task set."""

    type: Literal["all-at-once", "canary", "linear"] = "all-at-once"
    """``all-at-once`` (default), ``canary`` (``percent`` first, the rest after ``intervalMinutes``) or ``linear``
    (``percent`` every ``intervalMinutes``)."""
    percent: int | None = Field(default=None, ge=1, le=99)
    """Canary/linear only: percent of traffic per step (1-99). Default 10."""
    interval_minutes: int | None = Field(default=None, alias="intervalMinutes", ge=1, le=2880)
    """Canary/linear only: minutes between steps. Default 5."""


class RollbackAlarmConfig(_Strict):
    """The 5xx alarm that stops a blue/green deployment and rolls it back."""

    threshold: int = Field(default=10, ge=1)
    """Target 5xx responses per minute (both target groups together) that count as failing. Default 10."""
    evaluation_periods: int = Field(default=2, alias="evaluationPeriods", ge=1, le=60)
    """Consecutive failing minutes before the alarm fires. Default 2."""


class BlueGreenConfig(_Strict):
    """Settings of the environments whose strategy shifts traffic: ``blue-green``, ``canary``, ``linear`` (ECS-native)
    and ``codedeploy``. One block serves all four, so moving an environment from CodeDeploy to ECS-native changes
    one word. How each key maps onto ECS's native deployment configuration:

    * ``trafficShift`` -> ``canaryConfiguration`` (``percent``, bake ``intervalMinutes``) or ``linearConfiguration``
      (``percent`` per step, ``intervalMinutes`` between steps). With a native strategy the type is implied by the
      strategy; a contradicting ``type`` is an error.
    * ``terminationWaitMinutes`` -> ``bakeTimeInMinutes``: how long old tasks stay up after the last shift, ready for
      an instant rollback (ECS accepts 0-1440).
    * ``testListenerPort`` / ``testTrafficCidrs`` -> the test listener rule of the service's load balancer.
    * ``rollbackAlarm`` -> the service's deployment alarm (5xx of its target groups), with rollback.
    """

    traffic_shift: TrafficShiftConfig = Field(default_factory=TrafficShiftConfig, alias="trafficShift")
    termination_wait_minutes: int = Field(default=5, alias="terminationWaitMinutes", ge=0, le=2880)
    """How long the old (blue) tasks keep running after the shift, ready for a rollback. Default 5."""
    test_listener_port: int = Field(default=8443, alias="testListenerPort", ge=1, le=65535)
    """Port of the test listener that reaches the new tasks before production traffic does. Default 8443."""
    test_traffic_cidrs: list[str] = Field(default_factory=list, alias="testTrafficCidrs")
    """Address ranges allowed to reach the test listener. Default none: CodeDeploy needs no access to it, and
    unreleased code stays unreachable until someone opens it (e.g. to a VPN range)."""
    rollback_alarm: RollbackAlarmConfig = Field(default_factory=RollbackAlarmConfig, alias="rollbackAlarm")

    @field_validator("test_traffic_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not isinstance(v, str) or not re.fullmatch(_CIDR, v)]
        if bad:
            raise ValueError(f"not IPv4 CIDR ranges: {', '.join(map(repr, bad))}")
        for v in value:
            _cidr(v)
        return value


# CodePipeline's DeploymentWindow cron: seconds (only "*"), minutes, hours, day-of-month, month, day-of-week and an
# optional year, each with the special characters the rule reference lists for it.
_CRON_FIELDS = (
    ("seconds", None, None, ""),
    ("minutes", 0, 59, ",-*/"),
    ("hours", 0, 23, ",-*/"),
    ("day-of-month", 1, 31, ",-*?/LW"),
    ("month", 1, 12, ",-*/"),
    ("day-of-week", 1, 7, ",-*?/L#"),
    ("year", 1970, 2199, ",-*/"),
)
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def _cron_value(text: str, field: str, low: int, high: int) -> int | None:
    names = _MONTHS if field == "month" else _DAYS if field == "day-of-week" else ()
    if text.upper() in names:
        return names.index(text.upper()) + 1
    return int(text) if text.isdigit() and low <= int(text) <= high else None


def _cron_item(item: str, field: str, low: int, high: int, specials: str) -> bool:
    if item == "*" or (item == "?" and "?" in specials):
        return True
    if "L" in specials and field == "day-of-month" and re.fullmatch(r"L(-[0-9]{1,2})?|LW", item):
        return True
    if "W" in specials and item.endswith("W"):
        return _cron_value(item[:-1], field, low, high) is not None
    if "L" in specials and field == "day-of-week" and item.endswith("L"):
        return _cron_value(item[:-1], field, low, high) is not None
    if "#" in specials and "#" in item:
        day, _, nth = item.partition("#")
        return _cron_value(day, field, low, high) is not None and nth in {"1", "2", "3", "4", "5"}
    base, slash, step = item.partition("/")
    if slash and not ("/" in specials and step.isdigit() and 0 < int(step) <= high):
        return False
    if base == "*" and slash:
        return True
    start, dash, end = base.partition("-")
    if dash and "-" not in specials:
        return False
    first = _cron_value(start, field, low, high)
    last = _cron_value(end, field, low, high) if dash else first
    return first is not None and last is not None and first <= last


def cron_problems(expression: str) -> list[str]:
    """Why CodePipeline's DeploymentWindow rule would reject `expression` (empty when it is valid)."""
    parts = expression.split()
    if len(parts) not in (6, 7):
        return [f"{len(parts)} fields; CodePipeline's cron has 6 (seconds minutes hours day-of-month month "
                "day-of-week) and an optional year"]
    problems = []
    for part, (field, low, high, specials) in zip(parts, _CRON_FIELDS, strict=False):
        if field == "seconds":
            if part != "*":
                problems.append(f"seconds must be '*', got {part!r}")
            continue
        assert low is not None and high is not None
        items = part.split(",") if "," in specials else [part]
        if not all(item and _cron_item(item, field, low, high, specials) for item in items) or (
                "?" in items and len(items) > 1):
            problems.append(f"{field} {part!r} is not {low}-{high}"
                            + (" or a name" if field in ("month", "day-of-week") else "")
                            + f" with {' '.join(specials)}")
    if not problems and (parts[3] == "?") == (parts[5] == "?"):
        problems.append("exactly one of day-of-month and day-of-week must be '?'")
    return problems


@cache
def _time_zones() -> frozenset[str]:
    # The IANA database Python reads (the system's, or the pinned tzdata package where the system has none).
    return frozenset(zoneinfo.available_timezones())


class DeploymentWindowConfig(_Strict):
    """When the environment may be deployed: a change that reaches the environment outside the window waits at its
    stage's entry (CodePipeline's ``DeploymentWindow`` rule) until the window opens."""

    cron: str
    """CodePipeline's cron format: ``seconds minutes hours day-of-month month day-of-week [year]``, seconds ``*``,
    one of the two day fields ``?``. Example: ``* * 9-16 ? * MON-THU *`` (Monday to Thursday, 09:00-16:59)."""
    time_zone: str = Field(default="UTC", alias="timeZone")
    """IANA time zone the cron is read in (``Europe/Berlin``). Default ``UTC``."""

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        problems = cron_problems(value)
        if problems:
            raise ValueError("not a CodePipeline deployment window cron: " + "; ".join(problems))
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value not in _time_zones():
            raise ValueError(f"not an IANA time zone name (e.g. 'Europe/Berlin', 'UTC'): {value!r}")
        return value


class EnvironmentConfig(_Strict):
    """One deployment target, in promotion order."""

    name: str = Field(pattern=_ENV_NAME)
    """Lower-case letters, digits and '-', at most 32 characters (it ends up in IAM and pipeline names)."""
    account_id: str = Field(alias="accountId", pattern=_ACCOUNT_ID)
    """The workload account; never the tools account."""
    regions: list[_Region] = Field(min_length=1)
    """One or more region names, unique. Each gets its own deploy action and artifact store. A bad name is reported
    at its index (``regions[1]``); a repeated one by :func:`_environment_workload_checks` (one message naming both
    indexes, reported even when another name of the list is bad), so :func:`parse` never returns one."""
    strategy: Literal["rolling", "blue-green", "canary", "linear", "codedeploy"] = "rolling"
    """How ECS replaces the tasks: ``rolling`` (circuit breaker with rollback, deployment alarms), ECS-native
    ``blue-green``, ``canary`` or ``linear`` (a second target group, test listener, traffic shifted by ECS, bake time),
    or ``codedeploy`` (CodeDeploy blue/green, kept for teams already running it). Default ``rolling``."""
    deployment_timeout_minutes: int | None = Field(default=None, alias="deploymentTimeoutMinutes", ge=5, le=1380)
    """How long one deployment of this environment may take before it counts as failed and every region goes back
    to what it ran before. Default 15 for ``rolling``; for the others derived from the traffic shift plus the bake
    (:func:`minimum_deploy_minutes`), and never shorter than that."""
    require_approval: bool = Field(default=False, alias="requireApproval")
    """Manual approval (SNS) before this environment is deployed. Default false."""
    deployment_window: DeploymentWindowConfig | None = Field(default=None, alias="deploymentWindow")
    """When changes may enter this environment (after its approval). Default none: any time."""
    bake_minutes: int | None = Field(default=None, alias="bakeMinutes", ge=0, le=MAX_BAKE_MINUTES)
    """Minutes the services' alarms (target 5xx, unhealthy targets) are watched after the environment deployed; a
    firing alarm fails the stage, which rolls back. Default 10 with ``requireApproval``, else 0 (no bake)."""
    provision_role_name: str = Field(
        default="OrganizationAccountAccessRole", alias="provisionRoleName", pattern=_IAM_ROLE_NAME
    )
    """Role Pulumi assumes in the workload account to create resources there. Default: the role AWS Organizations
    creates in member accounts."""
    push_tags: list[str] | None = Field(default=None, alias="pushTags", min_length=1)
    """Tag patterns (``*`` matches any run of characters) whose push to a push-delivery service's repository
    deploys that image here, in every region of this environment. Default ``["<name>-*"]``."""

    network: NetworkConfig = Field(default_factory=NetworkConfig)
    """VPCs of this environment's workloads: created (default) or adopted per region. See :class:`NetworkConfig`."""
    certificate_arns: dict[str, Annotated[str, Field(pattern=_CERTIFICATE_ARN)]] = Field(
        default_factory=dict, alias="certificateArns")
    """Region -> ACM certificate ARN (in this account and region). With one, the load balancer serves HTTPS on 443
    and redirects HTTP to it; without, it serves HTTP on 80. Default: none."""
    domain: DomainConfig | None = None
    """The name users reach this environment's services by (:class:`DomainConfig`): per region an ACM certificate
    validated through DNS records in the hosted zone (none where ``certificateArns`` gives one for the region: that
    one wins), HTTPS with HTTP redirected, and alias records to the load balancers (latency-based, health-evaluated,
    with several regions). Default: none."""
    blue_green: BlueGreenConfig | None = Field(default=None, alias="blueGreen")
    """Only with a strategy other than ``rolling``. Default: all-at-once shift (native canary and linear: 10 % every
    5 minutes), 5-minute termination wait (bake), test listener on
    8443 reachable from nowhere, rollback on 10 target 5xx per minute for 2 minutes."""

    @property
    def blue_green_settings(self) -> BlueGreenConfig:
        return self.blue_green or BlueGreenConfig()

    def https(self, region: str) -> bool:
        """Whether the load balancer in `region` serves HTTPS on 443 (HTTP redirected): a certificate is given for
        the region, or the environment's domain gets one there."""
        return region in self.certificate_arns or self.domain is not None

    @property
    def native(self) -> bool:
        """ECS-native blue/green, canary or linear: ECS shifts traffic itself between two target groups."""
        return self.strategy in NATIVE_STRATEGIES

    @property
    def codedeploy(self) -> bool:
        return self.strategy == "codedeploy"

    @property
    def bake(self) -> int:
        """Alarm bake minutes, default applied."""
        if self.bake_minutes is not None:
            return self.bake_minutes
        return DEFAULT_APPROVED_BAKE_MINUTES if self.require_approval else 0

    @property
    def deploy_timeout_minutes(self) -> int:
        """How long a deployment here may take: set, or the least a deployment of this strategy needs."""
        return self.deployment_timeout_minutes or minimum_deploy_minutes(self)

    @field_validator("push_tags")
    @classmethod
    def _push_tags(cls, value: list[str] | None) -> list[str] | None:
        bad = [t for t in value or [] if not re.fullmatch(_TAG_PATTERN, t) or t.count("*") > 2]
        if bad:
            raise ValueError(f"not tag patterns (tag characters and at most two '*'): {', '.join(map(repr, bad))}")
        return value

    @property
    def tag_patterns(self) -> list[str]:
        return list(self.push_tags) if self.push_tags else [f"{self.name}-*"]


# Fargate's task sizes (ECS developer guide, "Task CPU and memory"): cpu units -> allowed memory in MiB.
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}
_ENV_VAR = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"
# Secrets Manager secret names and SSM parameter names (the ``ssm:`` prefix picks Parameter Store).
_VALUE_FROM_NAME = r"^(ssm:/?[A-Za-z0-9_.\-/]{1,1011}|[A-Za-z0-9/_+=.@-]{1,512})$"
_ROLE_REF = r"^([\w+=,.@-]+/)*[\w+=,.@-]{1,64}$"
_HOST = r"^[A-Za-z0-9*?.-]{1,128}$"
_PATH = r"^/[A-Za-z0-9_\-.$/~\"'@:+*?&]{0,127}$"


class RoutingConfig(_Strict):
    """How the environment's load balancer routes requests to the service (one listener rule)."""

    paths: list[str] | None = Field(default=None, min_length=1)
    """Path patterns (``*`` and ``?`` wildcards). Default ``["/<service>", "/<service>/*"]`` unless ``hosts`` is
    given."""
    hosts: list[str] | None = Field(default=None, min_length=1)
    """Host header patterns. Default: any host."""
    priority: int | None = Field(default=None, ge=1, le=50000)
    """Listener rule priority (unique per load balancer; lower wins). Default ``10 × (position among the services
    crossdeploy creates + 1)``: set it explicitly before reordering services."""

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str] | None) -> list[str] | None:
        bad = [v for v in value or [] if not isinstance(v, str) or not re.fullmatch(_PATH, v)]
        if bad:
            raise ValueError(f"not path patterns (start with '/', at most 128 characters): {', '.join(map(repr, bad))}")
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        bad = [v for v in value or [] if not isinstance(v, str) or not re.fullmatch(_HOST, v)]
        if bad:
            raise ValueError(f"not host patterns: {', '.join(map(repr, bad))}")
        return value


class HealthCheckConfig(_Strict):
    path: str = Field(default="/", pattern=r"^/[\x21-\x7e]{0,1023}$")
    """Path the load balancer's target group probes. Default ``/``."""
    matcher: str = Field(default="200-399", pattern=r"^[0-9]{3}([-,][0-9]{3})*$")
    """HTTP codes that count as healthy. Default ``200-399``."""
    grace_period_seconds: int = Field(default=60, alias="gracePeriodSeconds", ge=0, le=2147483647)
    """How long ECS ignores failing load balancer checks of a new task. Default 60."""
    command: list[str] | None = Field(default=None, min_length=1)
    """Container health check (``["CMD-SHELL", "curl -f http://localhost:8080/ || exit 1"]``). Default none: the
    image may have no shell or curl, and the target group already checks the service."""


class AutoscalingConfig(_Strict):
    """CPU target tracking on the service's desired count."""

    min: int = Field(ge=0, le=5000)
    max: int = Field(ge=1, le=5000)
    cpu_target: int = Field(default=60, alias="cpuTarget", ge=10, le=90)
    """Average CPU utilisation (percent) to track. Default 60."""


class SmokeTestConfig(_Strict):
    """A request the service must answer before it serves users: through the test listener before any production
    traffic (``blue-green``, ``canary``, ``linear``: an ECS lifecycle hook; ``codedeploy``: an
    ``AfterAllowTestTraffic`` hook), or through the production listener right after a ``rolling`` deployment (the
    deploy engine, which restores the previous revision when it fails)."""

    path: str = Field(pattern=r"^/[\x21-\x7e]{0,1023}$")
    """Path requested with GET (required); it must be routed to the service (``routing.paths``)."""
    expect_status: str = Field(default="200-399", alias="expectStatus")
    """HTTP status codes that pass: codes and ranges, comma-separated (``200``, ``200-299,301``). Default
    ``200-399``. Redirects are not followed: a 302 is the answer."""
    timeout_seconds: int = Field(default=10, alias="timeoutSeconds", ge=1, le=smoke.MAX_TIMEOUT_SECONDS)
    """How long one attempt may take. Default 10."""
    attempts: int = Field(default=3, ge=1, le=smoke.MAX_ATTEMPTS)
    """Attempts before the test fails (a pause of a few seconds between them); the first pass wins. Default 3."""

    @field_validator("expect_status")
    @classmethod
    def _statuses(cls, value: str) -> str:
        smoke.parse_status_ranges(value)  # ValueError with the reason
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

    existing: bool = False
    """``true``: the service already runs in every environment; crossdeploy creates nothing for it in workload
    accounts and only deploys to ``cluster``/``serviceName``. Default false: crossdeploy creates it."""
    execution_role_name: str | None = Field(default=None, alias="executionRoleName", pattern=_ROLE_REF)
    """Existing services only, required there: the execution role its task definition names (``[path/]name``, the
    same in every workload account). The deploy role may pass exactly this role and the task role."""
    task_role_name: str | None = Field(default=None, alias="taskRoleName", pattern=_ROLE_REF)
    """Existing services only: the task role its task definition names, if any."""
    cpu: int = 256
    """Fargate CPU units (256, 512, 1024, 2048, 4096, 8192, 16384). Default 256."""
    memory: int = 512
    """MiB, one of the sizes Fargate allows for ``cpu``. Default 512."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Port the container listens on (the target group forwards there). Default 8080."""
    desired_count: int = Field(default=2, alias="desiredCount", ge=0, le=5000)
    """Tasks at creation, spread over two availability zones. Default 2. The pipeline and autoscaling own it
    afterwards: later changes here are not applied (so a ``pulumi up`` never scales a service back)."""
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig, alias="healthCheck")
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    environment: dict[str, str] = Field(default_factory=dict)
    """Plain environment variables of the container. Never put secrets here: use ``secrets``."""
    secrets: dict[str, str] = Field(default_factory=dict)
    """Variable -> secret *name*, looked up in each environment's account and region: a Secrets Manager secret
    name, or ``ssm:/parameter/name`` for Parameter Store. The execution role may read exactly these."""
    autoscaling: AutoscalingConfig | None = None
    """Default none: the service keeps ``desiredCount`` tasks."""
    smoke_test: SmokeTestConfig | None = Field(default=None, alias="smokeTest")
    """Default none: a deployment counts as good once ECS reports it healthy (and its bake passes)."""
    log_retention_days: int = Field(default=30, alias="logRetentionDays")
    """Retention of the service's log group. Default 30 (one of CloudWatch's allowed values)."""

    @field_validator("environment", "secrets")
    @classmethod
    def _variables(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not re.fullmatch(_ENV_VAR, k)]
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(map(repr, bad))}")
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_refs(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [v for v in value.values() if not isinstance(v, str) or not re.fullmatch(_VALUE_FROM_NAME, v)]
        if bad:
            raise ValueError("not secret names (a Secrets Manager name, or ssm:/parameter/name): "
                             + ", ".join(map(repr, bad)))
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"CloudWatch Logs accepts only {', '.join(map(str, LOG_RETENTION_DAYS))} days")
        return value

    @property
    def route_paths(self) -> list[str]:
        if self.routing.paths:
            return list(self.routing.paths)
        return [] if self.routing.hosts else [f"/{self.service}", f"/{self.service}/*"]

    @property
    def mode(self) -> str:
        return self.push_mode or "revision"

    def smoke_spec(self) -> dict[str, Any] | None:
        """The smoke test as the hook and the engine read it (``handlers.smoke_test.SmokeSpec`` JSON), or None."""
        test = self.smoke_test
        if test is None:
            return None
        spec: dict[str, Any] = {"path": test.path, "expectStatus": test.expect_status,
                                "timeoutSeconds": test.timeout_seconds, "attempts": test.attempts}
        host = smoke_host(self.routing.hosts or [])
        if host:
            spec["host"] = host
        return spec

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
        bad = [e for e in value if not re.fullmatch(_EMAIL, e)]
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
    branch: str = Field(default="main", pattern=_BRANCH)
    """Branch whose pushes release. Default ``main``."""
    connection_arn: str | None = Field(default=None, alias="connectionArn",
                                       pattern=r"^arn:aws[a-z-]*:(codestar-connections|codeconnections):")
    """Required with ``codestar``: the connection's ARN (it must be in the tools account and available)."""
    develop_branch: str | None = Field(default=None, alias="developBranch", pattern=_BRANCH)
    """``codecommit`` only: a push to this branch opens the pull request into ``branch`` (unless one is open) and
    posts the release validator's verdict on it (components/gitflow.py). Default none. A ``codestar`` repository runs
    ``examples/release-gitflow.github-workflow.yml`` instead."""

    @field_validator("branch", "develop_branch")
    @classmethod
    def _git_branch(cls, value: str | None) -> str | None:
        # git check-ref-format's rules the pattern cannot express: a name git refuses can never be pushed.
        if value is not None and (value.startswith(("-", "/", ".")) or value.endswith(("/", ".", ".lock"))
                                  or any(bad in value for bad in ("..", "//", "/.", ".lock/"))):
            raise ValueError("not a valid git branch name (no '..', '//', leading '-', '/' or '.', component "
                             "starting with '.', trailing '/', '.' or '.lock')")
        return value


class ReleaseConfig(_Strict):
    """A release pipeline: ``deployment.yaml`` in git deployed as one unit, with rollback of the whole release."""

    source: ReleaseSourceConfig
    file: str = Field(default="deployment.yaml", pattern=r"^[A-Za-z0-9_./-]{1,255}$")
    """Path of the release file in the repository. Default ``deployment.yaml``."""
    require_approval: bool = Field(default=False, alias="requireApproval")
    """Manual approval between validation and the release. Default false."""
    max_concurrency: int = Field(default=10, alias="maxConcurrency", ge=MIN_CONCURRENCY, le=MAX_CONCURRENCY)
    """Targets deployed at once **in each account-region** (1-50): every account-region of a release proceeds on its
    own, up to this bound (handlers/release_limits.py). Default 10: ECS throttles its APIs per account and region."""
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
        bad = [v for v in value if not re.fullmatch(_IAM_ROLE_NAME, v)]
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

    @property
    def workload_services(self) -> tuple[ServiceConfig, ...]:
        """Services crossdeploy creates in every environment (all but ``existing: true``)."""
        return tuple(s for s in self.services if not s.existing)

    def rule_priority(self, service: ServiceConfig) -> int:
        """The service's listener rule priority: explicit, or 10 x its position among created services."""
        if service.routing.priority is not None:
            return service.routing.priority
        return 10 * (self.workload_services.index(service) + 1)

    @property
    def uses_codedeploy(self) -> bool:
        return any(e.codedeploy for e in self.environments)

    def baked_environments(self, service: ServiceConfig) -> tuple[EnvironmentConfig, ...]:
        """Environments whose deployment of `service` is followed by an alarm bake: ``bakeMinutes`` above 0, and a
        service crossdeploy created (an existing service's alarms are not crossdeploy's to name)."""
        return () if service.existing else tuple(env for env in self.environments if env.bake > 0)

    def engine_environments(self, service: ServiceConfig) -> tuple[EnvironmentConfig, ...]:
        """The environments the deploy engine deploys `service` to: every one but CodeDeploy's, for services whose
        task definition crossdeploy renders; none for existing services (the ECS deploy action swaps their image)."""
        if service.existing:
            return ()
        return tuple(e for e in self.environments if not e.codedeploy)


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
            _CERTIFICATE_ARN: "an ACM certificate ARN (arn:aws:acm:<region>:<account>:certificate/<id>)",
            _ROLE_REF: "an IAM role name, optionally with its path (path/name)",
            _BRANCH: "a git branch name (letters, digits, '_./-', at most 255 characters)",
        }.get(error.get("ctx", {}).get("pattern"), "a value of the documented form")
        return f"expected {hint}, got {value!r}"
    if kind in ("string_too_short", "string_too_long"):
        return f"{error['msg'].lower()}, got {value!r}"
    if kind == "string_type":
        typed = getattr(value, "yaml_text", None)
        if isinstance(value, int | float) and isinstance(typed, str):
            # A number offline.stack_file read from a YAML 1.1-only spelling (012345670123 is octal there): name what
            # the user typed, not a number nobody wrote. At `pulumi up` values arrive as plain JSON numbers and take
            # the generic message below.
            number = int.__repr__(value) if isinstance(value, int) else float.__repr__(value)
            reading = getattr(value, "yaml_reading", "YAML 1.1")
            return f'{typed} was read as the number {number} ({reading}); quote it: "{typed}"'
        extra = " (quote it in YAML)" if isinstance(value, int | float) else ""
        return f"expected a string{extra}, got {value!r}"
    if kind == "bool_type":
        return f"expected true or false, got {value!r}"
    if kind in ("list_type", "model_type", "dict_type", "model_attributes_type"):
        wanted = "a list" if kind == "list_type" else "a mapping of keys"
        return f"expected {wanted}, got {value!r}"
    if kind == "too_short":
        minimum = error.get("ctx", {}).get("min_length", 1)
        return f"needs at least {minimum} items, got {value!r}" if minimum > 1 else f"must not be empty, got {value!r}"
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
        tags = env.get("pushTags") if isinstance(env.get("pushTags"), list) else None
        # Only well-formed patterns (at most 128 characters: patterns_overlap recurses once per character); the
        # field validator reports the others.
        patterns.extend((i, env["name"], t) for t in tags or [f"{env['name']}-*"]
                        if isinstance(t, str) and re.fullmatch(_TAG_PATTERN, t) and t.count("*") <= 2)
    problems = []
    for n, (i, name, tag) in enumerate(patterns):
        for j, other, other_tag in patterns[n + 1:]:
            if i != j and patterns_overlap(tag, other_tag):
                problems.append(f"environments[{j}].pushTags: {other_tag!r} and {tag!r} of environment {name!r} "
                                f"can match the same tag, so one push would deploy to both {name!r} and {other!r}")
    return problems


_WORKLOAD_KEYS = ("cpu", "memory", "port", "desiredCount", "healthCheck", "routing", "environment", "secrets",
                  "smokeTest", "autoscaling", "logRetentionDays")
# An ALB rule holds at most five condition values in total (Elastic Load Balancing quotas).
_MAX_RULE_VALUES = 5


def _environment_label(i: int, env: Mapping[str, Any]) -> str:
    name = env.get("name")
    return f"environment {name!r}" if isinstance(name, str) else f"environments[{i}]"


def _environment_workload_checks(i: int, env: Mapping[str, Any],
                                 seen_places: dict[tuple[Any, str], tuple[str, str]]) -> list[str]:
    """`seen_places`: (account, region) -> (the environment using it, its key path), across environments."""
    problems: list[str] = []
    regions = env.get("regions") if isinstance(env.get("regions"), list) else []
    strategy = env.get("strategy", "rolling")
    first_index: dict[str, int] = {}
    for j, region in enumerate(regions):
        # A bad name is reported by the field validator, at its own index; it adds no "listed twice" or "used by
        # both" message about the same key.
        if not is_region(region):
            continue
        if region in first_index:
            problems.append(f"environments[{i}].regions[{j}]: {region!r} is already listed at "
                            f"environments[{i}].regions[{first_index[region]}]; regions must be unique")
            continue
        first_index[region] = j
        place = (_key(env.get("accountId")), region)
        if place in seen_places:
            other, where = seen_places[place]
            problems.append(f"environments[{i}].regions[{j}]: {region!r} of account {place[0]!r} is used by both "
                            f"{_environment_label(i, env)} and {other} ({where}); each account and region holds "
                            "one environment (its services, load balancer and VPC would collide)")
        seen_places.setdefault(place, (_environment_label(i, env), f"environments[{i}].regions[{j}]"))
    if "blueGreen" in env and strategy == "rolling":
        problems.append(f"environments[{i}].blueGreen: only applies to strategies blue-green, canary, linear and "
                        f"codedeploy, got strategy {strategy!r}")
    certs = env.get("certificateArns")
    if isinstance(certs, Mapping):
        for region, value in certs.items():
            if not is_region(region):
                problems.append(f"environments[{i}].certificateArns.{region}: {NOT_A_REGION}, got {region!r}")
            elif region not in regions:
                problems.append(f"environments[{i}].certificateArns.{region}: not a region of this environment "
                                f"({', '.join(map(str, regions))})")
            elif isinstance(value, str) and value.count(":") >= 5:
                cert_region, cert_account = value.split(":")[3:5]
                if (cert_region, cert_account) != (region, env.get("accountId")):
                    problems.append(f"environments[{i}].certificateArns.{region}: {value!r} is in {cert_region} "
                                    f"of account {cert_account}; a load balancer can only use a certificate of "
                                    f"its own account and region ({env.get('accountId')}, {region})")
    network = env.get("network")
    vpcs = network.get("existingVpcs") if isinstance(network, Mapping) else None
    if isinstance(vpcs, Mapping):
        for region in vpcs:
            if not is_region(region):
                problems.append(f"environments[{i}].network.existingVpcs.{region}: {NOT_A_REGION}, got {region!r}")
            elif region not in regions:
                problems.append(f"environments[{i}].network.existingVpcs.{region}: not a region of this environment "
                                f"({', '.join(map(str, regions))})")
    blue_green = env.get("blueGreen")
    if isinstance(blue_green, Mapping):
        problems.extend(_traffic_checks(i, strategy, blue_green))
        port = blue_green.get("testListenerPort")
        if port in (80, 443):
            problems.append(f"environments[{i}].blueGreen.testListenerPort: {port!r} is a production listener port")
    return problems


ACM_NAMES_PER_CERTIFICATE = 10
"""ACM's default quota of domain names per certificate (the name and its subject alternative names)."""


def under_domain(host: str, domain: str) -> bool:
    """Whether host (pattern) `host` is `domain` or a name under it; DNS names and ALB host conditions ignore case."""
    host, domain = host.lower(), domain.lower()
    return host == domain or host.endswith("." + domain)


def domain_hosts(domain: str, services: Iterable[Any]) -> tuple[str, ...]:
    """The names an environment's certificate covers and its records answer: `domain` first, then every exact host
    under it that a created service routes on (``routing.hosts``), lower case, sorted. `services`: ServiceConfig or
    raw mappings; existing services have no routing here."""
    hosts: set[str] = set()
    for svc in services:
        routing = svc.get("routing") if isinstance(svc, Mapping) else getattr(svc, "routing", None)
        existing = svc.get("existing") is True if isinstance(svc, Mapping) else getattr(svc, "existing", False)
        listed = routing.get("hosts") if isinstance(routing, Mapping) else getattr(routing, "hosts", None)
        if existing or not isinstance(listed, list):
            continue
        hosts.update(h.lower() for h in listed if isinstance(h, str) and not any(c in h for c in "*?")
                     and under_domain(h, domain) and h.lower() != domain)
    return (domain, *sorted(hosts))


def _domain_checks(envs: list, services: list) -> list[str]:
    """A domain points at the load balancer crossdeploy creates in the public subnets of each region, and its
    certificate must cover every host under it the services route on."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    created = {j: s for j, s in enumerate(services) if isinstance(s, Mapping) and s.get("existing") is not True}
    for i, env in enumerate(envs):
        domain = env.get("domain") if isinstance(env, Mapping) else None
        name = domain.get("name") if isinstance(domain, Mapping) else None
        if not isinstance(name, str) or domain_name_problem(name):
            continue  # a missing or malformed name is the field validator's
        if name in seen:
            problems.append(f"environments[{i}].domain.name: {name!r} is also the domain of environments[{seen[name]}]"
                            "; each environment needs its own name (their records would replace each other)")
        seen.setdefault(name, i)
        if not created:
            problems.append(f"environments[{i}].domain: {name!r} would point at the load balancer of the services "
                            "crossdeploy creates, but every service is existing: true")
        network = env.get("network") if isinstance(env.get("network"), Mapping) else {}
        vpcs = network.get("existingVpcs") if isinstance(network.get("existingVpcs"), Mapping) else {}
        for region, vpc in vpcs.items():
            public = vpc.get("publicSubnetIds") if isinstance(vpc, Mapping) else None
            if not isinstance(public, list) or len(public) < 2:
                problems.append(
                    f"environments[{i}].domain: {name!r} points at the internet-facing load balancer in the public "
                    f"subnets of each region, but network.existingVpcs.{region}.publicSubnetIds is "
                    f"{'missing' if public is None else repr(public)}; list at least two public subnets (routed to "
                    "an internet gateway) of that VPC")
        for j, svc in created.items():
            routing = svc.get("routing") if isinstance(svc.get("routing"), Mapping) else {}
            hosts = routing.get("hosts") if isinstance(routing.get("hosts"), list) else []
            for host in hosts:
                # The fixed part after the last wildcard: ".shop.example.org" in "*.shop.example.org".
                tail = host[max(host.rfind("*"), host.rfind("?")) + 1:] if isinstance(host, str) else ""
                if tail != host and tail.startswith(".") and under_domain(tail[1:], name):
                    problems.append(
                        f"services[{j}].routing.hosts: {host!r} is a pattern under "
                        f"environments[{i}].domain {name!r}; name each host under the domain exactly (it gets a "
                        "place on the certificate and a DNS record)")
        names = domain_hosts(name, created.values())
        if len(names) > ACM_NAMES_PER_CERTIFICATE:
            problems.append(f"environments[{i}].domain: {name!r} and the hosts under it that services route on are "
                            f"{len(names)} names ({', '.join(names)}); an ACM certificate holds at most "
                            f"{ACM_NAMES_PER_CERTIFICATE} by default")
    return problems


def _traffic_checks(i: int, strategy: Any, blue_green: Mapping[str, Any]) -> list[str]:
    """The traffic shift must agree with the strategy; ECS-native strategies have ECS's tighter bounds."""
    problems: list[str] = []
    where = f"environments[{i}].blueGreen"
    shift = blue_green.get("trafficShift") if isinstance(blue_green.get("trafficShift"), Mapping) else {}
    if strategy in NATIVE_STRATEGIES and "type" in shift and shift["type"] != _shift_of(strategy, shift):
        problems.append(f"{where}.trafficShift.type: strategy {strategy!r} shifts "
                        f"{_shift_of(strategy, shift)}, got {shift['type']!r}; choose the strategy "
                        f"{'blue-green' if shift['type'] == 'all-at-once' else shift['type']!r} instead, or drop type")
    shift_type = _shift_of(strategy, shift) if isinstance(strategy, str) else "all-at-once"
    if shift_type == "all-at-once":
        for key in ("percent", "intervalMinutes"):
            if key in shift:
                problems.append(f"{where}.trafficShift.{key}: only for canary and linear, got {shift[key]!r} with "
                                f"{'strategy' if strategy in NATIVE_STRATEGIES else 'type'} "
                                f"{strategy if strategy in NATIVE_STRATEGIES else 'all-at-once'!r}")
    if strategy in NATIVE_STRATEGIES:
        percent = shift.get("percent")
        if shift_type == "linear" and isinstance(percent, int) and percent < ECS_MIN_LINEAR_PERCENT:
            problems.append(f"{where}.trafficShift.percent: ECS shifts at least {ECS_MIN_LINEAR_PERCENT} percent per "
                            f"linear step, got {percent!r}")
        for key, value in (("trafficShift.intervalMinutes", shift.get("intervalMinutes")),
                           ("terminationWaitMinutes", blue_green.get("terminationWaitMinutes"))):
            if isinstance(value, int) and value > ECS_MAX_BAKE_MINUTES:
                problems.append(f"{where}.{key}: ECS bakes at most {ECS_MAX_BAKE_MINUTES} minutes, got {value!r}")
    return problems


def _deploy_minutes(env: Mapping[str, Any]) -> int | None:
    """The minimum deploy time of a raw environment, or None while its settings are malformed (reported elsewhere)."""
    strategy = env.get("strategy", "rolling")
    if strategy == "rolling":
        return ROLLING_TIMEOUT_MINUTES
    if not isinstance(strategy, str):
        return None
    settings = env.get("blueGreen") if isinstance(env.get("blueGreen"), Mapping) else {}
    shift = settings.get("trafficShift") if isinstance(settings.get("trafficShift"), Mapping) else {}
    wait = settings.get("terminationWaitMinutes", 5)
    values = (shift.get("percent"), shift.get("intervalMinutes"), wait)
    if not all(v is None or isinstance(v, int) for v in values) or not isinstance(wait, int):
        return None
    return blue_green_minutes(_shift_of(strategy, shift), *values)


def _timeout_checks(i: int, env: Mapping[str, Any], pushed: bool) -> list[str]:
    """A deployment timeout shorter than the strategy's own course would fail every deployment; a push deploy must
    finish inside one Lambda invocation."""
    problems: list[str] = []
    needed = _deploy_minutes(env)
    timeout = env.get("deploymentTimeoutMinutes")
    if needed is None or (timeout is not None and not isinstance(timeout, int)):
        return problems
    if isinstance(timeout, int) and timeout < needed:
        problems.append(f"environments[{i}].deploymentTimeoutMinutes: {timeout} is shorter than a "
                        f"{env.get('strategy', 'rolling')} deployment here (about {needed} minutes: start, traffic "
                        f"shift, bake); set at least {needed}")
    effective = timeout if isinstance(timeout, int) else needed
    if effective > MAX_DEPLOY_MINUTES:
        problems.append(f"environments[{i}].blueGreen: a {env.get('strategy')} deployment here takes about {effective} "
                        f"minutes, but the pipeline's deploy action lives at most 24 hours and keeps one for "
                        f"restoring every region ({MAX_DEPLOY_MINUTES} minutes); shorten the shift or the bake")
    if pushed and env.get("strategy", "rolling") in NATIVE_STRATEGIES and effective > PUSH_WAIT_MINUTES:
        problems.append(f"environments[{i}].strategy: a push deploy waits for its rollout inside one Lambda "
                        f"invocation ({PUSH_WAIT_MINUTES} minutes), but a {env.get('strategy')} deployment here takes "
                        f"about {effective}; shorten the shift and bake, or use delivery: pipeline")
    return problems


def _service_workload_checks(i: int, svc: Mapping[str, Any], blue_green_envs: list[str],
                             native_envs: list[str]) -> list[str]:
    problems: list[str] = []
    existing = svc.get("existing") is True
    if existing:
        for key in _WORKLOAD_KEYS:
            if key in svc:
                problems.append(f"services[{i}].{key}: only for services crossdeploy creates, but this one is "
                                "existing: true")
        if "executionRoleName" not in svc:
            problems.append(f"services[{i}].executionRoleName: required with existing: true (the deploy role may "
                            "pass only the roles named here when it registers a new revision)")
        if blue_green_envs:
            problems.append(f"services[{i}].existing: codedeploy environments ({', '.join(blue_green_envs)}) deploy "
                            "a task definition crossdeploy generates, which it cannot for a service it did not "
                            "create; create the service with crossdeploy or deploy those environments rolling")
        if native_envs:
            problems.append(f"services[{i}].existing: {', '.join(native_envs)} shift traffic between two target "
                            "groups and listener rules of a load balancer route crossdeploy creates, which a service "
                            "it did not create has not; create the service with crossdeploy or deploy those "
                            "environments rolling")
    else:
        for key in ("executionRoleName", "taskRoleName"):
            if key in svc:
                problems.append(f"services[{i}].{key}: only for existing: true (crossdeploy names the roles of the "
                                f"services it creates), got {svc[key]!r}")
    if svc.get("delivery") == "push" and blue_green_envs:
        problems.append(f"services[{i}].delivery: push deploys update the ECS service directly, which CodeDeploy "
                        f"controls in codedeploy environments ({', '.join(blue_green_envs)}); use delivery: "
                        "pipeline or rolling environments")
    cpu, memory = svc.get("cpu", 256), svc.get("memory", 512)
    if isinstance(cpu, int) and isinstance(memory, int):
        if cpu not in FARGATE_SIZES:
            problems.append(f"services[{i}].cpu: Fargate accepts {', '.join(map(str, FARGATE_SIZES))} CPU units, "
                            f"got {cpu!r}")
        elif memory not in FARGATE_SIZES[cpu]:
            sizes = FARGATE_SIZES[cpu]
            problems.append(f"services[{i}].memory: with cpu {cpu} Fargate accepts {sizes[0]}-{sizes[-1]} MiB in "
                            f"steps of {sizes[1] - sizes[0]}, got {memory!r}")
    scaling = svc.get("autoscaling")
    if isinstance(scaling, Mapping) and isinstance(scaling.get("min"), int) and isinstance(scaling.get("max"), int):
        if scaling["min"] > scaling["max"]:
            problems.append(f"services[{i}].autoscaling.min: {scaling['min']!r} is above max {scaling['max']!r}")
    routing = svc.get("routing")
    if isinstance(routing, Mapping):
        values = [v for key in ("paths", "hosts") if isinstance(routing.get(key), list) for v in routing[key]]
        if len(values) > _MAX_RULE_VALUES:
            problems.append(f"services[{i}].routing: {len(values)} paths and hosts, but a load balancer rule holds "
                            f"at most {_MAX_RULE_VALUES}")
    problems.extend(_smoke_route_checks(i, svc))
    problems.extend(_push_smoke_checks(i, svc))
    hc = svc.get("healthCheck")
    if isinstance(hc, Mapping) and isinstance(hc.get("command"), list) and hc["command"]:
        if hc["command"][0] not in ("CMD", "CMD-SHELL"):
            problems.append(f"services[{i}].healthCheck.command: must start with 'CMD' or 'CMD-SHELL', got "
                            f"{hc['command'][0]!r}")
    return problems


def smoke_host(hosts: Iterable[str]) -> str | None:
    """The Host header a smoke test sends to a service routed by host: its first host without wildcards."""
    return next((h for h in hosts if not any(c in h for c in "*?")), None)


def _smoke_route_checks(i: int, svc: Mapping[str, Any]) -> list[str]:
    """A smoke test must reach the service: its path (and a host) must match the service's listener rule, or the
    load balancer answers 404 and every deployment fails."""
    test = svc.get("smokeTest")
    path = test.get("path") if isinstance(test, Mapping) else None
    routing = svc.get("routing") if isinstance(svc.get("routing"), Mapping) else {}
    paths, hosts = routing.get("paths"), routing.get("hosts")
    if not isinstance(path, str) or svc.get("existing") is True:
        return []
    problems = []
    name = svc.get("serviceName") or svc.get("name")
    if not isinstance(paths, list) and not isinstance(hosts, list):
        paths = [f"/{name}", f"/{name}/*"]  # ServiceConfig.route_paths
    route = path.split("?", 1)[0]
    if isinstance(paths, list) and paths and not any(
            isinstance(p, str) and fnmatch.fnmatchcase(route, p) for p in paths):
        problems.append(f"services[{i}].smokeTest.path: {path!r} is not routed to the service (its listener rule "
                        f"matches {', '.join(map(str, paths))}); the load balancer would answer 404")
    if isinstance(hosts, list) and hosts and smoke_host(h for h in hosts if isinstance(h, str)) is None:
        problems.append(f"services[{i}].smokeTest: routing.hosts {hosts!r} are all wildcards; the smoke test needs "
                        "one exact host name to send")
    return problems


PUSH_SMOKE_MAX_SECONDS = 300
"""A push deploy rolls out, smoke-tests and, on failure, restores inside one 15-minute Lambda invocation: its smoke
test may take at most this long in the worst case."""


def _push_smoke_checks(i: int, svc: Mapping[str, Any]) -> list[str]:
    test = svc.get("smokeTest")
    if svc.get("delivery") != "push" or not isinstance(test, Mapping):
        return []
    try:
        spec = smoke.SmokeSpec.from_json({k: v for k, v in test.items() if k in ("path", "timeoutSeconds",
                                                                                  "attempts")})
    except smoke.SmokeTestError:
        return []  # the field errors are reported already
    worst = smoke.worst_case_seconds(spec)
    if worst > PUSH_SMOKE_MAX_SECONDS:
        return [f"services[{i}].smokeTest: up to {worst} s (attempts x timeoutSeconds + pauses), but a push deploy "
                f"must roll out, test and possibly restore within one Lambda invocation: at most "
                f"{PUSH_SMOKE_MAX_SECONDS} s of it for the smoke test"]
    return []


# Margin for CodeDeploy to start the replacement tasks and see them healthy before it shifts any traffic.
BLUE_GREEN_START_MINUTES = 5


NATIVE_SHIFTS = {"blue-green": "all-at-once", "canary": "canary", "linear": "linear"}
"""The ECS-native strategies and the traffic shift each one is: ECS names the shift in the strategy."""
NATIVE_STRATEGIES = tuple(NATIVE_SHIFTS)
ROLLING_TIMEOUT_MINUTES = 15
"""A rolling deployment that has not finished in 15 minutes is failed (and rolled back): long enough for two waves
of tasks to start and pass health checks, short enough that nobody waits on a pipeline for an hour."""
PUSH_WAIT_MINUTES = 14
"""A push deploy waits for its rollout inside one Lambda invocation (15 minutes at most), less a margin."""
ECS_MAX_BAKE_MINUTES = 1440  # ECS's bakeTimeInMinutes and canary/linear bake times accept 0-1440
ECS_MIN_LINEAR_PERCENT = 3  # ECS's linearConfiguration.stepPercent accepts 3.0-100.0
MAX_DEPLOY_MINUTES = 1380
"""CodePipeline gives a Lambda invoke action 24 hours in all; one hour of it is kept for putting every region of
the environment back after a deployment fails at its very end."""


def _shift_of(strategy: str, shift: Mapping[str, Any]) -> str:
    """The traffic shift a strategy implies: native strategies name it, CodeDeploy takes it from the settings."""
    return NATIVE_SHIFTS.get(strategy) or str(shift.get("type", "all-at-once"))


def minimum_deploy_minutes(env: EnvironmentConfig) -> int:
    """The least time a deployment of `env` takes: 15 minutes rolling; start, traffic shift and bake otherwise."""
    if env.strategy == "rolling":
        return ROLLING_TIMEOUT_MINUTES
    settings = env.blue_green_settings
    shift = settings.traffic_shift
    return blue_green_minutes(_shift_of(env.strategy, {"type": shift.type}), shift.percent, shift.interval_minutes,
                              settings.termination_wait_minutes)


def blue_green_minutes(shift_type: str, percent: int | None, interval: int | None, termination_wait: int) -> int:
    """How long a CodeDeploy ECS deployment stays in progress: it succeeds only after the traffic shift and the
    termination wait of the original tasks, plus the time new tasks take to become healthy."""
    steps = 0
    if shift_type == "canary":
        steps = 1
    elif shift_type == "linear":
        steps = -(-100 // (percent or DEFAULT_SHIFT_PERCENT)) - 1
    return BLUE_GREEN_START_MINUTES + steps * (interval or DEFAULT_SHIFT_MINUTES) + termination_wait


def _release_outlasts_deployments(release: Mapping[str, Any], envs: list) -> list[str]:
    """A release waits for each service up to serviceTimeoutMinutes, then rolls everything back: that limit must
    outlast a whole deployment in every environment, or every release would roll back."""
    timeout = release.get("serviceTimeoutMinutes", 15)
    if not isinstance(timeout, int):
        return []
    problems = []
    for env in envs:
        if not isinstance(env, Mapping):
            continue
        needed = _deploy_minutes(env)
        if env.get("strategy", "rolling") == "rolling" or needed is None:
            continue
        explicit = env.get("deploymentTimeoutMinutes")
        needed = explicit if isinstance(explicit, int) and explicit > needed else needed
        if timeout < needed:
            problems.append(f"release.serviceTimeoutMinutes: {timeout} is shorter than a {env.get('strategy')} "
                            f"deployment in environment {env.get('name')!r} (about {needed} minutes: start, "
                            f"traffic shift, bake); set at least {needed}")
    return problems


def _unique_service_names(services: list) -> list[str]:
    """A CodeDeploy application holds one deployment group per service name, whatever the cluster."""
    problems: list[str] = []
    seen: dict[Any, int] = {}
    for i, svc in enumerate(services):
        if not isinstance(svc, Mapping):
            continue
        name = _key(svc.get("serviceName") or svc.get("name"))
        if name in seen and _cluster_of(svc) != _cluster_of(services[seen[name]]):
            problems.append(f"services[{i}].serviceName: {name!r} is also the ECS service name of "
                            f"services[{seen[name]}] (another cluster); codedeploy environments name deployment "
                            "groups after the service, so names must be unique across clusters")
        seen.setdefault(name, i)
    return problems


def _cluster_of(svc: Any) -> Any:
    return _key(svc.get("cluster", "crossdeploy")) if isinstance(svc, Mapping) else None


class _Unhashable:
    """Stands in for a value that cannot be a dict key (a list where a name belongs, a mapping where an account id
    belongs): equal to nothing, so the cross-key checks pass over it; its type is the field validator's to report,
    with its key path. Without it, those checks crashed with TypeError (unhashable type) before any report."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _key(value: Any) -> Any:
    """`value`, or an :class:`_Unhashable` standing in for it, as a key of the cross-key checks' dicts."""
    try:
        hash(value)
    except TypeError:
        return _Unhashable(value)
    return value


def _shared_clusters(services: list) -> list[str]:
    """crossdeploy creates (and on destroy deletes) the clusters of the services it creates, and lets the deploy role
    update every service in them: an existing service's cluster is someone else's and must stay out of that."""
    existing = {_cluster_of(s): i for i, s in enumerate(services) if isinstance(s, Mapping) and s.get("existing")}
    return [f"services[{i}].cluster: {_cluster_of(s)!r} is the cluster of existing services[{existing[_cluster_of(s)]}]"
            "; crossdeploy creates and owns the clusters of the services it creates, so use another cluster name"
            for i, s in enumerate(services)
            if isinstance(s, Mapping) and not s.get("existing") and _cluster_of(s) in existing]


def _priorities(services: list) -> list[str]:
    """Listener rule priorities must be unique on a load balancer; defaults follow the order of created services."""
    problems: list[str] = []
    seen: dict[Any, int] = {}
    for i, priority in _rule_priorities(services):
        if priority in seen:
            problems.append(f"services[{i}].routing.priority: {priority!r} is also the listener rule priority of "
                            f"services[{seen[priority]}]; set routing.priority explicitly on one of them")
        seen.setdefault(priority, i)
    return problems


def _rule_priorities(services: list) -> list[tuple[int, Any]]:
    """(index in ``services``, listener rule priority) of every service crossdeploy creates."""
    out = []
    position = 0
    for i, svc in enumerate(services):
        if not isinstance(svc, Mapping) or svc.get("existing") is True:
            continue
        position += 1
        routing = svc.get("routing") if isinstance(svc.get("routing"), Mapping) else {}
        out.append((i, _key(routing.get("priority", 10 * position))))
    return out


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
        name = _key(env.get("name"))
        if name in seen_env:
            problems.append(f"environments[{i}].name: duplicate environment name {name!r} (first at "
                            f"environments[{seen_env[name]}])")
        seen_env.setdefault(name, i)
        account = _key(env.get("accountId"))
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
    seen_places: dict[tuple[Any, str], tuple[str, str]] = {}
    for i, env in enumerate(envs):
        if isinstance(env, Mapping):
            problems.extend(_environment_workload_checks(i, env, seen_places))
    blue_green_envs = [str(e.get("name")) for e in envs if isinstance(e, Mapping) and e.get("strategy") == "codedeploy"]
    native_envs = [f"{e.get('strategy')} environment {e.get('name')!r}" for e in envs
                   if isinstance(e, Mapping) and e.get("strategy") in NATIVE_STRATEGIES]
    pushed = any(isinstance(s, Mapping) and s.get("delivery") == "push" for s in services)
    for i, env in enumerate(envs):
        if isinstance(env, Mapping):
            problems.extend(_timeout_checks(i, env, pushed))
    for i, svc in enumerate(services):
        if isinstance(svc, Mapping):
            problems.extend(_service_workload_checks(i, svc, blue_green_envs, native_envs))
    problems.extend(_priorities(services))
    problems.extend(_domain_checks(envs, services))
    problems.extend(_shared_clusters(services))
    if blue_green_envs:
        problems.extend(_unique_service_names(services))
    release = raw.get("release")
    if isinstance(release, Mapping):
        problems.extend(_release_outlasts_deployments(release, envs))
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
        develop = source.get("developBranch")
        if develop is not None and develop == source.get("branch", "main"):
            problems.append(f"release.source.developBranch: {develop!r} is also release.source.branch; pull requests "
                            "go from developBranch into branch, so they must differ")
        if develop is not None and provider == "codestar":
            problems.append(f"release.source.developBranch: {develop!r} is for codecommit sources only: CodePipeline "
                            "cannot open pull requests through a connection; run "
                            f"{GITFLOW_WORKFLOW} in the release repository instead")

    seen_svc: dict[Any, int] = {}
    seen_target: dict[tuple[Any, Any], int] = {}
    for i, svc in enumerate(services):
        if not isinstance(svc, Mapping):
            continue
        name = _key(svc.get("name"))
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
        target = (_cluster_of(svc), _key(svc.get("serviceName") or name))
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
    tools = data.get("tools") if isinstance(data.get("tools"), Mapping) else {}
    tools_region = tools.get("region") or aws_region
    if not tools_region:
        problems.append("tools.region: not set, and aws:region is not set either; set one of them")
    elif not tools.get("region") and not is_region(aws_region):
        # aws:region stands in for tools.region only when that is not set; a bad tools.region is its own problem,
        # reported once by the field validator.
        problems.append(f"aws:region: {NOT_A_REGION}, got {aws_region!r}")

    config = None
    if model is not None and is_region(tools_region):
        config = StackConfig(
            project=project,
            stack=stack,
            tools_account_id=model.tools.account_id,
            tools_region=tools_region,
            environments=tuple(model.environments),
            services=tuple(model.services),
            emails=tuple(model.notifications.emails),
            release=model.release,
        )
        problems.extend(_limit_problems(config, others=bool(problems)))
    if problems or config is None:
        raise ConfigError(problems)
    return config


def _limit_problems(cfg: StackConfig, *, others: bool) -> list[str]:
    """The AWS size and count limits the config would exceed (:mod:`components.limits`), measured on what the
    program would send."""
    from components import limits  # it measures with the components, which import this module

    if not others:
        return limits.problems(cfg)
    try:
        return limits.problems(cfg)
    except Exception:
        # The measurements assume the cross-key rules hold (unique names, valid ECS names): where a reported problem
        # breaks one, that problem is the one to fix first, and the sizes are measured once it is.
        return []


def namespace_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``crossdeploy:*`` entries of a stack's config (``namespace:key`` -> value) as :func:`parse` takes them:
    key without namespace, a string decoded as JSON where it is JSON (the language host hands every value over as
    text), any other value as it is (a stack file read offline, see :mod:`offline.stack_file`)."""
    raw: dict[str, Any] = {}
    for full_key, value in config.items():
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        if not isinstance(value, str):
            raw[key] = value
            continue
        try:
            raw[key] = json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the JSON decoder's stack
            raw[key] = value  # a plain string where a mapping or list is expected: validation names it
    return raw


def load() -> StackConfig:
    """Read the ``crossdeploy:*`` keys of the current stack and validate them (see :func:`parse`)."""
    # The language host hands config over either as PULUMI_CONFIG or through set_all_config; read both.
    raw = namespace_values({**get_config_env(), **CONFIG.get()})
    aws_region = pulumi.Config("aws").get("region")
    return parse(raw, project=pulumi.get_project(), stack=pulumi.get_stack(), aws_region=aws_region)
