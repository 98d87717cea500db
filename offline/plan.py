"""Offline plan: what a stack would create in each account and region, without the Pulumi CLI or AWS credentials.

Usage::

    python -m offline.plan Pulumi.prod.yaml            # or just: python -m offline.plan prod
    python -m offline.plan prod --detail               # every resource, not only counts per type
    python -m offline.plan prod --out docs/prod.md     # where the Mermaid diagrams go (default build/plan-<stack>.md)
    python -m offline.plan prod --diff origin/main     # what changes from that git ref (offline/diff.py)

It runs the real program under the same mocks as the tests (:func:`offline.mocks.run_program`), so the plan shows
what the engine, and so AWS, would receive. Everything printed is derived from the *registrations* (which provider,
hence which account and region, each resource went to; the pipeline's registered stages), never from re-reading the
stack config: a component that put a resource in the wrong account shows up here as exactly that.

Exit status: 0 on success, 2 for a bad or missing stack file (the problems go to stderr, without a traceback) or,
with ``--diff``, a bad git ref.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from components.config import ConfigError
from offline.mocks import PROVIDER_TYPE, ROOT, ProgramRun, Recorded, run_program, stack_config
from offline.stack_file import StackFileError, validate_config

PIPELINE_TYPE = "aws:codepipeline/pipeline:Pipeline"
GLOBAL = "global"
# AWS services whose resources have no region: the provider's region only says which endpoint was called.
GLOBAL_SERVICES = frozenset({"iam", "route53"})
# Above this many entries a stack-output map is cut short unless --detail: a plan for 300 services must stay readable.
OUTPUT_MAP_LIMIT = 10
# Names shown next to a type's count must fit this many characters; the rest is what --detail is for.
INLINE_WIDTH = 72
# pipeline.py names each environment's deploy stage "Deploy-<environment>"; the plan reads environment names back
# from the registered stages, so it reports what the pipeline really does rather than what the config meant.
DEPLOY_STAGE_PREFIX = "Deploy-"
ECS_SERVICE_TYPE = "aws:ecs/service:Service"


# --------------------------------------------------------------------------------------------------------------
# Resources per account and region
# --------------------------------------------------------------------------------------------------------------


def short_type(type_: str) -> str:
    """``aws:iam/role:Role`` -> ``iam:Role``; other packages keep their package name (``random:RandomId``)."""
    parts = type_.split(":")
    if len(parts) != 3:
        return type_
    package, module, name = parts
    return f"{module.split('/')[0]}:{name}" if package == "aws" else f"{package}:{name}"


def placement(resource: Recorded) -> tuple[str, str]:
    """(account, region) a resource lands in; IAM is account-wide, so its region is ``global``.

    The mocks record the provider's region for IAM too (the provider needs one to pick an endpoint), which would
    wrongly suggest a per-region role.
    """
    account = resource.account or "?"
    if resource.service in GLOBAL_SERVICES:
        return account, GLOBAL
    return account, resource.region or "?"


# Pulumi auto-names a resource the program leaves unnamed: its logical name, "-" and 7 random hex digits (load
# balancers and target groups cut the logical name short first, to stay within 32 characters).
_AUTO_NAME = re.compile(r"(.+)-[0-9a-f]{7}")
# Output keys holding a resource's own name or id, in the order physical_name prefers them.
_NAME_KEYS = ("name", "bucket", "keyId")
ASSIGNED_AT_DEPLOY = "(assigned at deploy)"


def assigned_stand_in(resource: Recorded, key: str, value: str) -> str | None:
    """What the plan shows instead of ``value`` (the resource's ``key`` output) when the program did not choose it,
    or None when it did.

    Under the mocks such a name is made up the way Pulumi's auto-naming or AWS would make it; printed as it is, it
    would pass for the real name, which only ``pulumi up`` learns. The stand-in keeps the logical name
    (``notifications-topic-…``), so a reader still knows which resource it is. A name AWS fixes itself (a VPC's
    ``default`` security group) is real and stays.
    """
    if value == resource.inputs.get(key):
        return None
    if key == "keyId":
        # AWS picks every key id; only a multi-Region key's "mrk-" prefix is known beforehand.
        return f"{resource.name}: {'mrk-' if value.startswith('mrk-') else ''}…"
    prefix = resource.inputs.get("namePrefix")
    if isinstance(prefix, str) and prefix and value.startswith(prefix):
        return f"{prefix}…"
    match = _AUTO_NAME.fullmatch(value)
    if match and resource.name.startswith(match.group(1)):
        return f"{resource.name}-…"
    return None


def physical_name(resource: Recorded) -> str:
    """The name AWS would show; ``<logical name>-… (assigned at deploy)`` where only the deployment will tell (see
    :func:`assigned_stand_in`); a Pulumi logical name in parentheses where the resource has no name of its own
    (policies, subscriptions and other attachments)."""
    outputs = resource.outputs
    for key in _NAME_KEYS:
        value = outputs.get(key)
        if isinstance(value, str) and value:
            stand_in = assigned_stand_in(resource, key, value)
            return value if stand_in is None else f"{stand_in} {ASSIGNED_AT_DEPLOY}"
    return f"({resource.name})"


def _is_logical(name: str) -> bool:
    return name.startswith("(")


class AssignedNames:
    """Every name of a run that is assigned at deploy, and its stand-in, for whatever text carries it.

    A made-up name travels: into its attachments' inputs (a bucket's policy names the bucket), ARNs, URLs, stack
    outputs and pipeline configuration (an approval's topic). So the plan replaces it wherever it appears, not only
    on the resource that owns it.
    """

    def __init__(self, stand_ins: Mapping[str, str]) -> None:
        self.stand_ins = dict(stand_ins)
        # Longest first, so a name that begins another is never replaced inside it; the lookarounds keep a name from
        # matching the middle of a longer word (ARNs and DNS names put ":", "/", "." or "-" around it).
        alternatives = "|".join(map(re.escape, sorted(self.stand_ins, key=len, reverse=True)))
        self._pattern = re.compile(rf"(?<![\w.-])(?:{alternatives})(?!\w)") if alternatives else None

    @classmethod
    def of(cls, run: ProgramRun) -> AssignedNames:
        stand_ins: dict[str, str] = {}
        # A replica key shares its primary's id: the primary, registered as a Key, names it.
        for resource in sorted(run.custom(), key=lambda r: r.type == "aws:kms/replicaKey:ReplicaKey"):
            for key in _NAME_KEYS:
                value = resource.outputs.get(key)
                stand_in = assigned_stand_in(resource, key, value) if isinstance(value, str) and value else None
                if stand_in:
                    stand_ins.setdefault(value, stand_in)
        return cls(stand_ins)

    def show(self, text: str) -> str:
        """``text`` with every made-up name replaced by its stand-in and ``(assigned at deploy)`` once at the end."""
        if self._pattern is None or ASSIGNED_AT_DEPLOY in text:
            return text
        shown, count = self._pattern.subn(lambda m: self.stand_ins[m.group(0)], text)
        return f"{shown} {ASSIGNED_AT_DEPLOY}" if count else shown


NO_ASSIGNED_NAMES = AssignedNames({})


@dataclass
class AccountInfo:
    """One AWS account as the registrations show it."""

    account: str
    kind: str
    """``tools`` or ``workload`` (or ``unknown`` for resources registered without an explicit provider)."""
    environments: list[str] = field(default_factory=list)
    """Environments deploying into this account, in promotion order (read from the pipelines' deploy stages)."""
    provider_regions: list[str] = field(default_factory=list)
    """Regions a provider was registered for, in registration order (the tools home region first)."""

    @property
    def label(self) -> str:
        if self.kind == "workload" and self.environments:
            return f"workload ({', '.join(self.environments)})"
        return self.kind


@dataclass(frozen=True)
class DeployAction:
    """One deploy action of a registered pipeline, as CodePipeline would receive it."""

    stage: str
    environment: str
    region: str
    role_account: str | None
    cluster: str | None
    service: str | None


def arn_account(arn: object) -> str | None:
    """Account field of an ARN (``arn:aws:iam::123456789012:role/x`` -> ``123456789012``), else None."""
    if not isinstance(arn, str):
        return None
    parts = arn.split(":")
    return parts[4] or None if len(parts) > 5 and parts[0] == "arn" else None


def environment_of(stage_name: str) -> str:
    return stage_name.removeprefix(DEPLOY_STAGE_PREFIX)


def deploy_actions(inputs: Mapping[str, Any], home: str | None) -> list[DeployAction]:
    """Every Deploy-category action of a registered pipeline's inputs, in stage order."""
    home = home or "?"
    found = []
    for stage in inputs.get("stages") or []:
        for action in stage.get("actions") or []:
            if action.get("category") != "Deploy":
                continue
            config = action.get("configuration") or {}
            found.append(DeployAction(
                stage=stage.get("name", "?"),
                environment=environment_of(stage.get("name", "?")),
                region=action.get("region") or home,
                role_account=arn_account(action.get("roleArn")),
                cluster=config.get("ClusterName"),
                service=config.get("ServiceName"),
            ))
    return found


def accounts(run: ProgramRun) -> dict[str, AccountInfo]:
    """Accounts in play, tools first, then workloads in promotion order, from providers and pipeline registrations.

    The tools account is the one that owns the pipelines; a pipeline's deploy action names its workload account only
    through the role it assumes, so environment names come from those role ARNs.
    """
    pipelines = run.of_type(PIPELINE_TYPE)
    tools = {p.account for p in pipelines if p.account}
    providers = run.of_type(PROVIDER_TYPE)
    if not tools:
        # No pipeline (yet): the tools providers are the ones using ambient credentials instead of assuming a role.
        tools = {p.account for p in providers if p.account and not p.inputs.get("assumeRoles")}

    envs: dict[str, list[str]] = defaultdict(list)
    engine_envs = engine_environments(run)
    for pipeline in pipelines:
        for stage in pipeline.inputs.get("stages") or []:
            # Deploy engine actions name only their environment; its account comes from the deploy document.
            for action in stage.get("actions") or []:
                env = engine_environment(action)
                targets = (engine_envs.get(env) or {}).get("targets") or [] if env else []
                if targets and env not in envs[targets[0]["accountId"]]:
                    envs[targets[0]["accountId"]].append(env)
            for action in deploy_actions({**pipeline.inputs, "stages": [stage]}, pipeline.region):
                if action.role_account and action.environment not in envs[action.role_account]:
                    envs[action.role_account].append(action.environment)

    infos: dict[str, AccountInfo] = {}

    def info(account: str) -> AccountInfo:
        if account not in infos:
            kind = "tools" if account in tools else "unknown" if account == "?" else "workload"
            infos[account] = AccountInfo(account, kind, envs.get(account, []))
        return infos[account]

    for provider in providers:
        if provider.account:
            regions = info(provider.account).provider_regions
            if provider.region and provider.region not in regions:
                regions.append(provider.region)
    for resource in run.custom():
        info(resource.account or "?")
    # Registrations arrive in no fixed order: the home region (where pipelines run) first, then alphabetical.
    home = pipelines[0].region if pipelines else None
    for account_info in infos.values():
        account_info.provider_regions.sort(key=lambda r: (r != home, r))
    promotion = list(envs)  # first seen in the pipelines' stage order, i.e. promotion order
    rank = {"tools": 0, "workload": 1, "unknown": 2}
    return dict(sorted(infos.items(), key=lambda kv: (
        rank.get(kv[1].kind, 3), promotion.index(kv[0]) if kv[0] in promotion else len(promotion), kv[0])))


Grouping = dict[str, dict[str, dict[str, list[str]]]]
"""account -> region -> short type -> physical names."""


def group_resources(resources: Iterable[Recorded], account_order: Sequence[str] = (),
                    names: AssignedNames | None = None) -> Grouping:
    """Group resources by account, then region (``global`` for IAM), then short type; names sorted, names
    assigned at deploy shown as such (``names``: those of the whole run, for attachments naming their parent).

    Regions follow ``account_order``'s providers where given: the caller passes the provider regions so the tools
    home region comes first; ``global`` goes last.
    """
    grouped: dict[str, dict[str, dict[str, list[str]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for resource in resources:
        account, region = placement(resource)
        grouped[account][region][short_type(resource.type)].append(
            (names or NO_ASSIGNED_NAMES).show(physical_name(resource)))
    order = {a: i for i, a in enumerate(account_order)}
    return {
        account: {
            region: {t: sorted(names) for t, names in sorted(types.items())}
            for region, types in sorted(grouped[account].items(), key=lambda kv: (kv[0] == GLOBAL, kv[0]))
        }
        for account in sorted(grouped, key=lambda a: (order.get(a, len(order)), a))
    }


def _order_regions(regions: Mapping[str, Any], preferred: Sequence[str]) -> list[str]:
    rank = {r: i for i, r in enumerate(preferred)}
    return sorted(regions, key=lambda r: (r == GLOBAL, rank.get(r, len(rank)), r))


# --------------------------------------------------------------------------------------------------------------
# Pipelines as CodePipeline would receive them
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowNode:
    id: str
    shape: str
    """``source``, ``build``, ``approval``, ``deploy`` or ``action``: picks the Mermaid node shape."""
    lines: tuple[str, ...]
    """Everything the plan knows about the step: the table under the diagram lists it."""
    run_order: int
    label: tuple[str, ...] = ()
    """The few short lines the diagram shows (default: ``lines``): long labels shrink a whole diagram at default
    size, so details go to the table."""
    action: str = ""
    """The action's name in the pipeline (or the entry rule's), for the table."""

    @property
    def short(self) -> tuple[str, ...]:
        return self.label or self.lines


@dataclass(frozen=True)
class FlowStage:
    id: str
    title: str
    """The stage name, then what marks it: strategy, CodeDeploy blue/green, rollback on failure."""
    nodes: tuple[FlowNode, ...]
    name: str = ""
    group: str = ""
    """Key of the box the stage is drawn in: leading source and build stages share one, an approval-only stage
    joins the stage it gates (its environment's deploy stage), every other stage has its own."""
    box_title: str = ""
    """What this stage contributes to its box's title (the environment and its marks for a deploy stage)."""


@dataclass(frozen=True)
class FlowGroup:
    """One box of the diagram: consecutive stages with the same :attr:`FlowStage.group`."""

    id: str
    title: str
    stages: tuple[FlowStage, ...]


def _last_segment(value: object) -> str:
    text = str(value)
    return re.split(r"[:/]", text)[-1] if text.startswith("arn:") else text


def _user_parameters(action: Mapping[str, Any]) -> dict[str, Any] | None:
    if (action.get("category"), action.get("provider")) != ("Invoke", "Lambda"):
        return None
    try:
        params = json.loads((action.get("configuration") or {}).get("UserParameters", "{}"))
    except (ValueError, TypeError):
        return {}
    return params if isinstance(params, dict) else {}


def engine_environment(action: Mapping[str, Any]) -> str | None:
    """The environment a deploy engine action deploys (its ``UserParameters``), or None for other actions (bakes
    included)."""
    params = _user_parameters(action)
    if params is None or "bake" in params:
        return None
    return str(params.get("environment", "?"))


def bake_of(action: Mapping[str, Any]) -> dict[str, Any] | None:
    """An alarm bake action's settings (minutes, roleArn, regions, alarms), or None for other actions."""
    params = _user_parameters(action)
    bake = params.get("bake") if params else None
    return bake if isinstance(bake, dict) else None


def smoke_tests(run: ProgramRun) -> dict[tuple[str | None, str | None, str], str]:
    """(account, region, ECS service or CodeDeploy deployment group) -> how its smoke test runs there: the ECS
    lifecycle hooks and CodeDeploy hook maps as registered, and the engine's checks as the deploy documents say."""
    found: dict[tuple[str | None, str | None, str], str] = {}
    for service in run.of_type("aws:ecs/service:Service"):
        for hook in (service.inputs.get("deploymentConfiguration") or {}).get("lifecycleHooks") or []:
            details = _json_object(hook.get("hookDetails"))
            found[(service.account, service.region, str(service.inputs.get("name")))] = (
                f"smoke test GET {details.get('path', '?')} on test traffic")
    for function in run.of_type("aws:lambda/function:Function"):
        variables = (function.inputs.get("environment") or {}).get("variables") or {}
        for group, spec in _json_object(variables.get("SMOKE_TESTS")).items():
            found[(function.account, function.region, group)] = (
                f"smoke test GET {(spec or {}).get('path', '?')} on test traffic")
    for document in deploy_documents(run).values():
        for env in document["environments"]:
            for target in env["targets"]:
                if target.get("smokeTest"):
                    found[(target["accountId"], target["region"], target["service"])] = (
                        f"smoke test GET {target['smokeTest']['spec']['path']} after the rollout")
    return found


def _json_object(value: Any) -> dict[str, Any]:
    try:
        value = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def stage_smoke_tests(run: ProgramRun, pipeline: Recorded) -> dict[str, str]:
    """Environment -> the smoke test of this pipeline's service in its deploy stage, where it has one."""
    tests = smoke_tests(run)
    stages = pipeline.inputs.get("stages") or []
    repository = ((stages[0].get("actions") or [{}])[0].get("configuration") or {}).get("RepositoryName")
    document = deploy_documents(run).get(str(repository)) or {"environments": []}
    found: dict[str, str] = {}
    for env in document["environments"]:
        for target in env["targets"]:
            line = tests.get((target["accountId"], target["region"], target["service"]))
            if line:
                found[env["name"]] = line
    for stage in stages:
        for action in stage.get("actions") or []:
            config = action.get("configuration") or {}
            if action.get("provider") == "CodeDeployToECS":
                line = tests.get((arn_account(action.get("roleArn")), action.get("region"),
                                  str(config.get("DeploymentGroupName"))))
                if line:
                    found[environment_of(str(stage.get("name", "")))] = line
    return found


def _engine_lines(env: str, engine_envs: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    spec = engine_envs.get(env) or {}
    regions = ", ".join(t["region"] for t in spec.get("targets") or []) or "?"
    minutes = int(spec.get("timeoutSeconds", 0)) // 60
    return ("deploy engine · Lambda", f"{env}: {spec.get('strategy', '?')} in {regions}",
            "rendered task definition + digest", f"all regions back on failure · timeout {minutes} min")


def _region_lines(regions: Sequence[str], per_line: int = 3) -> tuple[str, ...]:
    """Regions a few to a line: one label as wide as eight region names would shrink the whole diagram."""
    return tuple(", ".join(regions[i:i + per_line]) for i in range(0, len(regions), per_line)) or ("?",)


def _action_lines(action: Mapping[str, Any], home_region: str, env_by_account: Mapping[str, Sequence[str]],
                  engine_envs: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(shape, short label, every detail) of one action as CodePipeline would receive it."""
    category = action.get("category", "?")
    provider = action.get("provider", "?")
    config = action.get("configuration") or {}
    region = action.get("region") or home_region
    if category == "Source" and provider == "ECR":
        image = f"{config.get('RepositoryName', '?')}:{config.get('ImageTag', 'latest')}"
        return "source", ("ECR image", image), (f"ECR · {region}", image)
    if category == "Source" and provider == "S3":
        return "source", ("config", "deploy document"), (f"S3 · {region}", "deploy document (config as of this run)",
                                                         str(config.get("S3ObjectKey", "?")))
    if category == "Source":
        # A repository source (the release's CodeCommit or connection): repository and branch say what it watches.
        repository = config.get("RepositoryName") or config.get("FullRepositoryId") or action.get("name", "?")
        ref = f"{repository}@{config['BranchName']}" if config.get("BranchName") else str(repository)
        return "source", (str(provider), ref), (f"{provider} · {region}", ref)
    env = engine_environment(action)
    if env is not None:
        targets = ((engine_envs or {}).get(env) or {}).get("targets") or []
        return "deploy", ("deploy engine", *_region_lines([t["region"] for t in targets])), \
            _engine_lines(env, engine_envs or {})
    bake = bake_of(action)
    if bake is not None:
        alarms, minutes = len(bake.get("alarms") or []), bake.get("minutes", "?")
        return "action", (f"bake {minutes} min", f"{alarms} alarms watched"), (
            "Bake · Lambda", f"{minutes} min: {alarms} alarms in {', '.join(bake.get('regions') or [])}",
            f"read as role in {arn_account(bake.get('roleArn')) or '?'}", "alarm: stage fails")
    if category == "Build":
        return "build", (str(provider), str(action.get("name", "?"))), (
            f"{provider} · {region}", str(config.get("ProjectName", action.get("name", "?"))))
    if category == "Approval":
        lines = ["Manual approval"]
        if config.get("NotificationArn"):
            lines.append(f"notify {_last_segment(config['NotificationArn'])}")
        return "approval", ("manual approval",), tuple(lines)
    if category == "Deploy":
        account = arn_account(action.get("roleArn"))
        if account:
            envs = env_by_account.get(account) or ()
            role = f"as role in {account}" + (f" ({', '.join(envs)})" if envs else "")
        else:
            role = "as the pipeline role (tools account)"
        if provider == "CodeDeployToECS":
            return "deploy", ("CodeDeploy blue/green", region), (
                f"CodeDeploy blue/green · {region}", f"app {config.get('ApplicationName', '?')}",
                f"group {config.get('DeploymentGroupName', '?')}", role)
        target = [f"{k.removesuffix('Name').lower()} {config[k]}" for k in ("ClusterName", "ServiceName")
                  if config.get(k)]
        return "deploy", (f"{provider} deploy", region), (f"{provider} · {region}", *target, role)
    lines = (f"{category} · {provider} · {region}", str(action.get("name", "?")))
    if config.get("StateMachineArn"):
        lines += (f"state machine {_last_segment(config['StateMachineArn'])} (drawn below)",)
    return "action", (f"{category} · {provider}", str(action.get("name", "?"))), lines


def _window(stage: Mapping[str, Any]) -> tuple[str, str] | None:
    """(cron, time zone) of a stage's DeploymentWindow entry rule, or None."""
    for rule in ((stage.get("beforeEntry") or {}).get("condition") or {}).get("rules") or []:
        if (rule.get("ruleTypeId") or {}).get("provider") == "DeploymentWindow":
            config = rule.get("configuration") or {}
            return str(config.get("Cron", "?")), str(config.get("TimeZone", "UTC"))
    return None


def _rolls_back(stage: Mapping[str, Any]) -> bool:
    return (stage.get("onFailure") or {}).get("result") == "ROLLBACK"


def _short_smoke(line: str) -> str:
    # "smoke test GET /orders/health on test traffic" -> "smoke test on test traffic": the path is in the table.
    return re.sub(r" GET \S+", "", line)


def pipeline_flow(stages: Sequence[Mapping[str, Any]], home_region: str,
                  env_by_account: Mapping[str, Sequence[str]] | None = None,
                  engine_envs: Mapping[str, Mapping[str, Any]] | None = None,
                  smoke: Mapping[str, str] | None = None) -> list[FlowStage]:
    """The registered ``stages`` of one pipeline as stages of nodes, keeping stage and action order; a deployment
    window is a node before the actions (it holds them), `smoke` (environment -> line) adds the smoke test to the
    deploy nodes. Each stage also says which box of the diagram it belongs in (:attr:`FlowStage.group`)."""
    flow: list[FlowStage] = []
    for i, stage in enumerate(stages):
        name = str(stage.get("name", f"stage {i}"))
        actions = stage.get("actions") or []
        nodes = []
        window = _window(stage)
        if window:
            nodes.append(FlowNode(f"s{i}w", "approval", ("deployment window", *window,
                                                         "changes wait at the stage's entry until it opens"),
                                  0, ("deployment window", *window), "before entry: DeploymentWindow"))
        for j, action in enumerate(actions):
            shape, label, lines = _action_lines(action, home_region, env_by_account or {}, engine_envs)
            line = (smoke or {}).get(environment_of(name))
            if shape == "deploy" and line:
                label, lines = (*label, _short_smoke(line)), (*lines, line)
            nodes.append(FlowNode(f"s{i}a{j}", shape, lines, int(action.get("runOrder") or 1), label,
                                  str(action.get("name", "?"))))
        marks = []
        if _is_blue_green(stage):
            marks.append("CodeDeploy blue/green")
        for action in actions:
            env = engine_environment(action)
            if env is not None:
                marks.append(str((engine_envs or {}).get(env, {}).get("strategy", "?")))
        if _rolls_back(stage):
            marks.append("rollback on failure")
        categories = {a.get("category") for a in actions}
        if categories and categories <= {"Source", "Build"} and all(s.group == "build" for s in flow):
            group = "build"  # the sources and builds every execution starts with: one compact box
        elif categories == {"Approval"}:
            group = "approval"  # settled below: it joins the stage it gates
        else:
            group = f"stage{i}"
        box = environment_of(name) if name.startswith(DEPLOY_STAGE_PREFIX) else name
        flow.append(FlowStage(f"s{i}", " · ".join([name, *marks]), tuple(nodes), name, group,
                              " · ".join([box, *marks])))
    for i in reversed(range(len(flow))):
        if flow[i].group == "approval":
            # An approval gates the next stage (Approve-prod holds Deploy-prod): drawn in its box, first.
            gated = flow[i + 1].group if i + 1 < len(flow) else f"stage{i}"
            flow[i] = replace(flow[i], group=gated)
    return flow


def flow_groups(flow: Sequence[FlowStage]) -> list[FlowGroup]:
    """Consecutive stages of the same group as the boxes of the diagram, titled by what they contain:
    ``Source + Build``, ``prod · canary · rollback on failure`` (an approval adds nothing to its box's title: its
    node is the first in the box)."""
    runs: list[list[FlowStage]] = []
    for stage in flow:
        if runs and runs[-1][0].group == stage.group:
            runs[-1].append(stage)
        else:
            runs.append([stage])
    groups = []
    for k, stages in enumerate(runs):
        titled = [s for s in stages if not all(n.shape == "approval" for n in s.nodes)] or stages
        joiner = " + " if stages[0].group == "build" else " · "
        groups.append(FlowGroup(f"g{k}", joiner.join(s.box_title or s.title for s in titled), tuple(stages)))
    return groups


def _is_blue_green(stage: Mapping[str, Any]) -> bool:
    return any(a.get("provider") == "CodeDeployToECS" for a in stage.get("actions") or [])


def mermaid_label(*lines: str) -> str:
    """A double-quoted Mermaid label; characters Mermaid or its HTML rendering would interpret become entity codes.

    Mermaid decodes ``#name;`` / ``#123;`` inside labels, so ``#`` itself must be encoded first.
    """
    entities = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "`": "#96;"}
    escaped = ["".join(entities.get(c, c) for c in line) for line in lines]
    return '"' + "<br/>".join(escaped) + '"'


_SHAPES = {"source": ("([", "])"), "build": ("[", "]"), "approval": ("{{", "}}"), "deploy": ("[", "]"),
           "action": ("[", "]")}


def _ranks(stages: Sequence[FlowStage]) -> list[list[FlowNode]]:
    """The nodes of consecutive stages in the order they run: stage by stage, and inside a stage by runOrder (same
    runOrder = parallel; CodePipeline runs a higher runOrder only after the lower one finished)."""
    ranks = []
    for stage in stages:
        for order in sorted({n.run_order for n in stage.nodes}):
            ranks.append([n for n in stage.nodes if n.run_order == order])
    return ranks


def render_mermaid(flow: Sequence[FlowStage], names: AssignedNames = NO_ASSIGNED_NAMES) -> str:
    """A top-down ``flowchart TB``: one box per :func:`flow_groups` entry (sources and build together, then one
    per environment with its approval, window, deployment and bake), boxes chained in order.

    Top-down because a pipeline is long: drawn left to right, five stages of wide nodes shrink to an unreadable
    strip at default size, while top-down it only grows taller. Parallel actions sit side by side.
    """
    out = ["flowchart TB"]
    groups = flow_groups(flow)
    for group in groups:
        out.append(f"  subgraph {group.id} [{mermaid_label(names.show(group.title))}]")
        for stage in group.stages:
            for node in stage.nodes:
                left, right = _SHAPES[node.shape]
                out.append(f"    {node.id}{left}{mermaid_label(*map(names.show, node.short))}{right}")
        for before, after in itertools.pairwise(_ranks(group.stages)):
            out += [f"    {a.id} --> {b.id}" for a in before for b in after]
        out.append("  end")
    for before_group, after_group in itertools.pairwise(groups):
        out.append(f"  {before_group.id} --> {after_group.id}")
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    """Text safe in a Markdown table cell: pipes end the cell, ``*``/``_``/backticks would format, ``<`` start
    HTML."""
    for char in "\\|*_`":
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def render_legend(flow: Sequence[FlowStage], names: AssignedNames = NO_ASSIGNED_NAMES) -> str:
    """The table under a pipeline diagram: per node, the stage and action it is and the details its short label
    leaves out."""
    rows = ["| step | stage · action | details |", "|---|---|---|"]
    for stage in flow:
        for node in stage.nodes:
            details = [line for line in node.lines if line not in node.short]
            rows.append(f"| {_md_cell(names.show(' '.join(node.short)))} | {_md_cell(f'{stage.name} · {node.action}')}"
                        f" | {_md_cell(names.show('; '.join(details)))} |")
    return "\n".join(rows) + "\n"


def render_mermaid_doc(title: str, pipelines: Sequence[Recorded], env_by_account: Mapping[str, Sequence[str]],
                       engine_envs: Mapping[str, Mapping[str, Any]] | None = None,
                       smoke: Mapping[str, Mapping[str, str]] | None = None,
                       names: AssignedNames = NO_ASSIGNED_NAMES) -> str:
    """A Markdown document with one ```mermaid block and its table per pipeline, sorted by pipeline name; `smoke`:
    pipeline name -> :func:`stage_smoke_tests`."""
    parts = [f"# {title}", "",
             "Generated by `python -m offline.plan` from the pipelines as registered under the mocks: this is what "
             "CodePipeline would receive. Each pipeline reads top down: its sources and build in one box, then one "
             "box per environment, in promotion order, holding its approval, deployment window, deployment and "
             "bake. The table under each diagram has the details. A stack with a release also gets its state "
             "machine drawn. A name shown as `<name>-… (assigned at deploy)` is chosen by Pulumi or AWS when the "
             "stack is deployed.", ""]
    for pipeline in sorted(pipelines, key=physical_name):
        flow = pipeline_flow(pipeline.inputs.get("stages") or [], pipeline.region or "?", env_by_account,
                             engine_envs, (smoke or {}).get(physical_name(pipeline)))
        parts += [f"## {physical_name(pipeline)}", "",
                  f"Account {pipeline.account}, region {pipeline.region}.", "", "```mermaid",
                  render_mermaid(flow, names).rstrip("\n"), "```", "", render_legend(flow, names)]
    return "\n".join(parts)


def _gates(stage: Mapping[str, Any], smoke: Mapping[str, str]) -> str:
    """`` (window, smoke test, bake 20 min, rollback)``: what holds a deploy stage's change back."""
    gates = []
    if _window(stage):
        gates.append("window")
    if smoke.get(environment_of(str(stage.get("name", "")))):
        gates.append("smoke test")
    gates += [f"bake {b.get('minutes', '?')} min" for b in map(bake_of, stage.get("actions") or []) if b]
    if _rolls_back(stage):
        gates.append("rollback")
    return f" ({', '.join(gates)})" if gates else ""


def pipelines_doc(plan: Plan, title: str) -> str:
    """The Mermaid document of a plan's pipelines, with strategies, gates and smoke tests, then the state machine
    the release pipeline starts (when the stack has a release)."""
    doc = render_mermaid_doc(title, plan.pipelines, plan.env_by_account, engine_environments(plan.run),
                             {physical_name(p): stage_smoke_tests(plan.run, p) for p in plan.pipelines}, plan.names)
    machines = state_machines_doc(plan.run, plan.names)
    waves = release_waves_doc(plan.run, plan.stack)
    return f"{doc}\n{machines}" + (f"\n{waves}" if waves else "") if machines else doc


def stage_summary(pipeline: Recorded, engine_envs: Mapping[str, Mapping[str, Any]] | None = None,
                  smoke: Mapping[str, str] | None = None) -> str:
    """One line per pipeline for the text plan: ``orders:latest + config -> Build -> test[us-east-2] rolling -> …``,
    each deploy stage with its gates."""
    steps = []
    home = pipeline.region or "?"
    for stage in pipeline.inputs.get("stages") or []:
        gates = _gates(stage, smoke or {}) if str(stage.get("name", "")).startswith(DEPLOY_STAGE_PREFIX) else ""
        actions = [a for a in stage.get("actions") or [] if bake_of(a) is None]
        categories = {a.get("category") for a in actions}
        ecr = [a for a in actions if a.get("provider") == "ECR"]
        if categories == {"Source"} and ecr:
            config = ecr[0].get("configuration") or {}
            config_source = " + config" if any(a.get("provider") == "S3" for a in actions) else ""
            steps.append(f"{config.get('RepositoryName', '?')}:{config.get('ImageTag', 'latest')}{config_source}")
        elif len(actions) == 1 and engine_environment(actions[0]) is not None:
            env = engine_environment(actions[0]) or "?"
            spec = (engine_envs or {}).get(env) or {}
            regions = ", ".join(t["region"] for t in spec.get("targets") or []) or "?"
            steps.append(f"{env}[{regions}] {spec.get('strategy', '?')}{gates}")
        elif categories == {"Approval"}:
            steps.append("approve")
        elif categories == {"Deploy"}:
            regions = ", ".join(a.get("region") or home for a in actions)
            kind = " codedeploy" if _is_blue_green(stage) else " image-only"
            steps.append(f"{environment_of(stage.get('name', '?'))}[{regions}]{kind}{gates}")
        else:
            steps.append(str(stage.get("name", "?")))
    return " -> ".join(steps)


# --------------------------------------------------------------------------------------------------------------
# The text plan
# --------------------------------------------------------------------------------------------------------------


def push_targets(run: ProgramRun) -> dict[str, Any] | None:
    """The target map the push-deploy function ships with (its ``targets.json``), if the stack has push services."""
    for function in run.of_type("aws:lambda/function:Function"):
        assets = getattr(function.inputs.get("code"), "assets", None) or {}
        if "targets.json" in assets:
            return json.loads(assets["targets.json"].text)
    return None


def push_routes(targets: Mapping[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(repository with mode, tag patterns -> environment, "account region" targets) per repository and
    environment, in the map's order."""
    routes = []
    for repository, spec in targets["repositories"].items():
        by_env: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        for t in spec["targets"]:
            by_env.setdefault((t["environment"], tuple(t["tagPatterns"])), []).append(
                f"{t['accountId']} {t['region']} {t['cluster']}/{t['service']}")
        for (env, tags), places in by_env.items():
            routes.append((f"{repository} ({spec['pushMode']})", f"{', '.join(tags)} -> {env}", places))
    return routes


def render_push_mermaid(targets: Mapping[str, Any]) -> str:
    """Push delivery as a flowchart: pushes -> rule -> function -> one node per repository and environment."""
    repos = list(targets["repositories"])
    out = ["flowchart LR",
           f"  push([{mermaid_label('ECR push in ' + targets['homeRegion'], *repos)}])",
           f"  rule[{mermaid_label('EventBridge rule', 'successful PUSH of a configured tag')}]",
           f"  fn[{mermaid_label('push-deploy Lambda', 'revision pinned by digest', 'per target, bounded')}]",
           "  push --> rule", "  rule --> fn"]
    for i, (repo, route, places) in enumerate(push_routes(targets)):
        out.append(f"  t{i}[{mermaid_label(repo, route, *places)}]")
        out.append(f"  fn --> t{i}")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class GitflowFlow:
    """The release repository's gitflow as the stack wires it: the function's own environment and the pipeline that
    a merge (a push to the release branch) starts."""

    repository: str
    develop: str
    branch: str
    file: str
    pipeline: str | None


def mermaid_section(title: str, chart: str) -> str:
    """A Markdown section of the plan's diagram file: its title, then `chart` in a mermaid block."""
    return "\n".join([f"## {title}", "", "```mermaid", chart.rstrip("\n"), "```", ""])


def gitflow_flow(run: ProgramRun) -> GitflowFlow | None:
    """The gitflow of the release (``release.source.developBranch``), or None if the stack has none."""
    for function in run.of_type("aws:lambda/function:Function"):
        if function.inputs.get("handler") != "handlers.gitflow.handler":
            continue
        env = (function.inputs.get("environment") or {}).get("variables") or {}
        repository, branch = env.get("CROSSDEPLOY_REPOSITORY", "?"), env.get("CROSSDEPLOY_RELEASE_BRANCH", "?")
        pipeline = next((physical_name(p) for p in run.of_type(PIPELINE_TYPE)
                         for stage in (p.inputs.get("stages") or [])[:1] for action in stage.get("actions") or []
                         if action.get("provider") == "CodeCommit"
                         and (action.get("configuration") or {}).get("RepositoryName") == repository
                         and (action.get("configuration") or {}).get("BranchName") == branch), None)
        return GitflowFlow(repository, env.get("CROSSDEPLOY_DEVELOP_BRANCH", "?"), branch,
                           env.get("CROSSDEPLOY_RELEASE_FILE", "?"), pipeline)
    return None


def gitflow_lines(flow: GitflowFlow) -> list[str]:
    """The text plan's lines: push -> pull request with the verdict -> merge -> release pipeline."""
    return [f"  push to {flow.develop} -> pull request {flow.develop} -> {flow.branch} (opened unless one is open)",
            f"    + the release validator's verdict on {flow.file} at the pushed commit (a comment per push)",
            f"  merge -> push to {flow.branch} -> release pipeline {flow.pipeline or '?'}"]


def render_gitflow_mermaid(flow: GitflowFlow) -> str:
    """The gitflow as a flowchart, from the push to develop to the release pipeline a merge starts."""
    out = ["flowchart LR",
           f"  push([{mermaid_label(f'push to {flow.develop}', flow.repository)}])",
           f"  fn[{mermaid_label('gitflow Lambda', f'validate {flow.file}', 'at the pushed commit')}]",
           f"  pr{{{{{mermaid_label(f'pull request {flow.develop} -> {flow.branch}', 'verdict comment per push')}}}}}",
           f"  pipe[{mermaid_label('release pipeline', flow.pipeline or '?')}]",
           "  push --> fn", f"  fn -->|{mermaid_label('opens unless one is open; comments')}| pr",
           f"  pr -->|{mermaid_label(f'merge = push to {flow.branch}')}| pipe"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------------------
# The release state machine, drawn from the definition Step Functions would receive
# --------------------------------------------------------------------------------------------------------------

STATE_MACHINE_TYPE = "aws:sfn/stateMachine:StateMachine"


def state_machine_definition(machine: Recorded) -> dict[str, Any] | None:
    """The Amazon States Language definition a registered state machine was given (its ``definition`` input, JSON
    text), or None if it is not one."""
    definition = _json_object(machine.inputs.get("definition"))
    return definition if isinstance(definition.get("States"), dict) else None


def _choice_label(rule: Mapping[str, Any]) -> str:
    """``status = STEADY`` for ``{"Variable": "$.check.status", "StringEquals": "STEADY"}``; the operator's name for
    other comparisons, the combinator's for And/Or/Not, the expression for a JSONata ``Condition``."""
    if "Condition" in rule:
        return str(rule["Condition"])
    variable = str(rule.get("Variable", "")).rsplit(".", 1)[-1] or "input"
    for key, value in rule.items():
        if key in ("Variable", "Next", "Comment", "Assign", "Output"):
            continue
        if key in ("And", "Or", "Not"):
            return f"{key.lower()} (compound rule)"
        shown = json.dumps(value) if isinstance(value, bool) else str(value)
        if key.endswith("Equals") and not key.endswith("ThanEquals") and not key.endswith("Path"):
            return f"{variable} = {shown}"
        return f"{variable} {key} {shown}"
    return "rule"


def _catch_label(catcher: Mapping[str, Any]) -> str:
    errors = [str(e) for e in catcher.get("ErrorEquals") or []]
    return "catch: " + ("any error" if errors == ["States.ALL"] else ", ".join(errors))


def _state_node(name: str, state: Mapping[str, Any], nested: bool) -> tuple[str, str, tuple[str, ...]]:
    """(left and right Mermaid shape, short label) of one non-Map state: a Choice is a rhombus, a Wait a hexagon
    (it holds the run, like a pipeline's approval and window), where a run ends a stadium."""
    type_ = str(state.get("Type", "?"))
    if type_ == "Task":
        resource = str(state.get("Resource", ""))
        kind = "Lambda" if ":states:::lambda:invoke" in resource or ":lambda:" in resource else "Task"
        return "[", "]", (name, f"{kind} task")
    if type_ == "Wait":
        seconds = state.get("Seconds")
        return "{{", "}}", (name, f"wait {seconds} s" if seconds is not None else "wait")
    if type_ == "Choice":
        return "{", "}", (name,)
    if type_ == "Succeed":
        return "([", "])", (name, "succeeds")
    if type_ == "Fail":
        # A Fail inside a Map iteration fails the Map (its Catch decides what happens next), not the execution.
        error = state.get("Error")
        fails = "fails the Map" if nested else "execution fails"
        return "([", "])", (name, fails if error in (None, name) else f"{fails}: {error}")
    return "[", "]", (name, type_.lower())


def _retried(errors: Sequence[str]) -> str:
    """``4 Lambda.* errors`` for errors sharing a service prefix, else the errors themselves: the table stays
    narrow."""
    prefixes = {e.split(".", 1)[0] for e in errors}
    if len(errors) > 1 and len(prefixes) == 1 and all("." in e for e in errors):
        return f"{len(errors)} {prefixes.pop()}.* errors"
    return ", ".join(errors)


def _state_details(state: Mapping[str, Any]) -> str:
    details = []
    if state.get("Comment"):
        details.append(str(state["Comment"]).rstrip("."))
    if state.get("Type") == "Map":
        concurrency = state.get("MaxConcurrency")
        details.append(f"one iteration per item of {state.get('ItemsPath') or 'the input'}, "
                       + (f"at most {concurrency} at once" if concurrency else "all at once"))
    if state.get("Type") == "Wait" and state.get("Seconds") is not None:
        details.append(f"{state['Seconds']} s")
    for retrier in state.get("Retry") or []:
        details.append(f"retries {_retried([str(e) for e in retrier.get('ErrorEquals') or []])} "
                       f"up to {retrier.get('MaxAttempts', 3)} times")
    details += [f"{_catch_label(c)} → {c.get('Next')}" for c in state.get("Catch") or []]
    if state.get("Type") == "Fail":
        details.append(f"error {state.get('Error', '?')}, cause from {state.get('CausePath') or state.get('Cause')}")
    return "; ".join(details)


class _AslChart:
    """Builds the flowchart of one ASL definition: each scope (the machine, a Map's iteration, a Parallel branch)
    declares its states, nested scopes as subgraphs; every edge comes last, once every id is declared (Mermaid puts
    a node first seen in an edge outside the subgraph that declares it later)."""

    def __init__(self, names: AssignedNames) -> None:
        self.names = names
        self.lines = ["flowchart TB"]
        self.edges: list[str] = []
        self.rows: list[tuple[str, str, str]] = []
        self._ids: dict[tuple[tuple[str, ...], str], str] = {}
        self._used: set[str] = set()

    def fresh(self, base: str) -> str:
        # State names may hold any character; Mermaid ids may not. "st_" keeps them clear of Mermaid's keywords.
        candidate = base = "st_" + re.sub(r"[^A-Za-z0-9_]", "_", base)
        number = 1
        while candidate in self._used:
            number += 1
            candidate = f"{base}_{number}"
        self._used.add(candidate)
        return candidate

    def id_of(self, scope: tuple[str, ...], name: str) -> str:
        """The Mermaid id of state ``name`` as seen from ``scope``: ``Next`` names a state of its own scope only."""
        if (scope, name) not in self._ids:
            self._ids[(scope, name)] = self.fresh(name)
        return self._ids[(scope, name)]

    def label(self, *lines: str) -> str:
        return mermaid_label(*map(self.names.show, lines))

    def scope(self, states: Mapping[str, Any], start_at: str, scope: tuple[str, ...], indent: str,
              entry: str) -> None:
        self.edges.append(f"{entry} --> {self.id_of(scope, start_at)}")
        for name, state in states.items():
            self.state(name, state, scope, indent)

    def state(self, name: str, state: Mapping[str, Any], scope: tuple[str, ...], indent: str) -> None:
        node = self.id_of(scope, name)
        type_ = state.get("Type")
        self.rows.append((" › ".join([*scope, name]), str(type_), _state_details(state)))
        if type_ == "Map":
            concurrency = state.get("MaxConcurrency")
            source = state.get("ItemsPath") or ("an items file in S3" if state.get("ItemReader") else "the input")
            each = f"each of {source}" + (
                f", ≤{concurrency} at once" if concurrency else "")
            self.lines.append(f"{indent}subgraph {node} [{self.label(f'{name} · Map')}]")
            processor = state.get("ItemProcessor") or state.get("Iterator") or {}
            start = self.fresh(f"{name}_each")
            self.lines.append(f"{indent}  {start}([{self.label(each)}])")
            self.scope(processor.get("States") or {}, str(processor.get("StartAt")), (*scope, name), indent + "  ",
                       start)
            self.lines.append(f"{indent}end")
        elif type_ == "Parallel":
            self.lines.append(f"{indent}subgraph {node} [{self.label(f'{name} · Parallel')}]")
            for k, branch in enumerate(state.get("Branches") or []):
                branch_id = self.fresh(f"{name}_branch{k + 1}")
                self.lines.append(f"{indent}  subgraph {branch_id} [{self.label(f'branch {k + 1}')}]")
                start = self.fresh(f"{name}_branch{k + 1}_start")
                self.lines.append(f"{indent}    {start}([{self.label('start')}])")
                self.scope(branch.get("States") or {}, str(branch.get("StartAt")), (*scope, name, f"branch {k + 1}"),
                           indent + "    ", start)
                self.lines.append(f"{indent}  end")
            self.lines.append(f"{indent}end")
        else:
            left, right, lines = _state_node(name, state, bool(scope))
            self.lines.append(f"{indent}{node}{left}{self.label(*lines)}{right}")
        if state.get("Next"):
            self.edges.append(f"{node} --> {self.id_of(scope, str(state['Next']))}")
        for rule in state.get("Choices") or []:
            self.edges.append(f"{node} -->|{self.label(_choice_label(rule))}| {self.id_of(scope, str(rule['Next']))}")
        if state.get("Default"):
            self.edges.append(f"{node} -->|{self.label('otherwise')}| {self.id_of(scope, str(state['Default']))}")
        for catcher in state.get("Catch") or []:
            # Dotted: the failure path (here, to the rollback), apart from the normal flow at a glance.
            self.edges.append(f"{node} -.->|{self.label(_catch_label(catcher))}| "
                              f"{self.id_of(scope, str(catcher['Next']))}")


def render_state_machine(definition: Mapping[str, Any], names: AssignedNames = NO_ASSIGNED_NAMES
                         ) -> tuple[str, str]:
    """(``flowchart TB`` Mermaid text, Markdown table of the states) of an ASL definition: every state a node, a Map
    a box holding the states of one iteration, Choice branches labelled with their rule, Catch edges dotted."""
    chart = _AslChart(names)
    start = chart.fresh("start")
    chart.lines.append(f"  {start}([{mermaid_label('start')}])")
    chart.scope(definition.get("States") or {}, str(definition.get("StartAt")), (), "  ", start)
    table = ["| state | type | details |", "|---|---|---|"]
    table += [f"| {_md_cell(state)} | {_md_cell(type_)} | {_md_cell(names.show(details))} |"
              for state, type_, details in chart.rows]
    return "\n".join([*chart.lines, *(f"  {edge}" for edge in chart.edges)]) + "\n", "\n".join(table) + "\n"


def state_machines_doc(run: ProgramRun, names: AssignedNames = NO_ASSIGNED_NAMES) -> str:
    """A Markdown section per state machine the run registers (the release's), or "" if it registers none."""
    parts = []
    for machine in sorted(run.of_type(STATE_MACHINE_TYPE), key=physical_name):
        definition = state_machine_definition(machine)
        if definition is None:
            continue
        diagram, table = render_state_machine(definition, names)
        parts += [f"## State machine {names.show(physical_name(machine))}", "",
                  f"Account {machine.account}, region {machine.region}; drawn from the definition registered with "
                  "Step Functions. Solid arrows are `Next` and labelled `Choice` branches, dotted arrows `Catch` "
                  "(a failure's way out, to the rollback); a box is a Map, its states run once per item.", "",
                  "```mermaid", diagram.rstrip("\n"), "```", "", table]
    return "\n".join(parts)


# The release file that ships for a stack (the README's walk-through releases it): the plan shows its waves.
RELEASE_FILES = {"prod": ROOT / "examples" / "deployment.yaml"}


def release_bound(run: ProgramRun) -> int | None:
    """release.maxConcurrency as the registered state machine applies it: the bound of its services' Map Runs."""
    for machine in run.of_type(STATE_MACHINE_TYPE):
        todo = list(((state_machine_definition(machine) or {}).get("States") or {}).items())
        while todo:
            name, state = todo.pop()
            if name == "DeployServices" and isinstance(state.get("MaxConcurrency"), int):
                return int(state["MaxConcurrency"])
            todo += list(((state.get("ItemProcessor") or {}).get("States") or {}).items())
    return None


def release_waves(manifest: Mapping[str, Any], bound: int) -> list[tuple[str, str, int, int, int]]:
    """(account, region, services, tasks, waves) per account-region of a converted release file: every
    account-region deploys on its own, at most ``bound`` targets at once, its tasks and then its services."""
    from handlers.release_limits import waves

    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for index, kind in enumerate(("services", "tasks")):
        for entry in manifest.get(kind) or []:
            counts[(str(entry["accountId"]), str(entry["region"]))][index] += 1
    return [(account, region, services, tasks, waves(services, bound) + waves(tasks, bound))
            for (account, region), (services, tasks) in sorted(counts.items())]


@dataclass(frozen=True)
class ReleaseWaves:
    """The stack's shipped release file (:data:`RELEASE_FILES`) as the registered state machine would run it."""

    file: str
    bound: int
    rows: list[tuple[str, str, int, int, int]]
    """(account, region, services, tasks, waves), per :func:`release_waves`."""
    problem: str | None = None
    """Why the file does not validate against this stack (then no rows)."""

    @property
    def duration_waves(self) -> int:
        """The service waves of the largest account-region: what the release's duration follows (a scheduled task's
        update has no rollout to wait for)."""
        from handlers.release_limits import waves

        return max((waves(row[2], self.bound) for row in self.rows), default=0)


def stack_release_waves(run: ProgramRun, stack: str) -> ReleaseWaves | None:
    """The waves of the stack's shipped release file with the registered bound; None without a release or a file."""
    from handlers import release_file

    path, bound, context = RELEASE_FILES.get(stack), release_bound(run), release_context(run)
    if path is None or bound is None or context is None or not path.exists():
        return None
    name = str(path.relative_to(ROOT))
    try:
        manifest = release_file.convert(path.read_text(encoding="utf-8"), json.loads(context), path.name)
    except (release_file.ReleaseFileError, release_file.ContextError) as exc:
        return ReleaseWaves(name, bound, [], str(exc))
    return ReleaseWaves(name, bound, release_waves(manifest, bound))


def release_waves_lines(found: ReleaseWaves) -> list[str]:
    """The text plan's lines for :func:`stack_release_waves`."""
    if found.problem:
        return [f"  {found.file} does not validate against this stack: {found.problem}"]
    return [f"  {account}  {region}  {services} service(s), {tasks} scheduled task(s): {count} wave(s)"
            for account, region, services, tasks, count in found.rows] + [
        f"  about {found.duration_waves} rollout duration(s) end to end (the largest account-region's service waves)"]


def release_waves_doc(run: ProgramRun, stack: str) -> str:
    """Markdown: the waves per account-region of the stack's shipped release file (:data:`RELEASE_FILES`) with the
    registered bound, and what the release's duration follows from; "" without a release or a shipped file."""
    found = stack_release_waves(run, stack)
    if found is None:
        return ""
    if found.problem:
        return f"## Release waves\n\n{found.file} does not validate against this stack: {found.problem}\n"
    bound = found.bound
    table = ["| account | region | services | scheduled tasks | waves |", "|---|---|---|---|---|"]
    table += [f"| {a} | {r} | {s} | {t} | {w} |" for a, r, s, t, w in found.rows]
    return "\n".join([
        "## Release waves", "",
        f"{found.file} against this stack: every account-region deploys at once, each at most "
        f"{bound} targets at a time (release.maxConcurrency), its scheduled tasks then its services; a wave is "
        f"one round of at most {bound}. The release takes about {found.duration_waves} rollout duration(s) end to "
        "end: the service waves of its largest account-region (a scheduled task's update has no rollout to wait "
        "for).", "",
        *table, "", ""])


def deploy_documents(run: ProgramRun) -> dict[str, dict[str, Any]]:
    """Service -> the deploy document ``pulumi up`` writes for it (the pipelines' config source)."""
    documents = {}
    for obj in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2"):
        assets = getattr(obj.inputs.get("source"), "assets", None) or {}
        if "deploy.json" in assets:
            document = json.loads(assets["deploy.json"].text)
            documents[document["service"]] = document
    return documents


def engine_environments(run: ProgramRun) -> dict[str, dict[str, Any]]:
    """Environment -> strategy, timeout and targets as the deploy documents give them (alike for every service)."""
    envs: dict[str, dict[str, Any]] = {}
    for document in deploy_documents(run).values():
        for env in document["environments"]:
            envs.setdefault(env["name"], env)
    return envs


def release_context(run: ProgramRun) -> str | None:
    """The release context exactly as the release pipeline's validation bundle carries it."""
    for bundle in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2"):
        assets = getattr(bundle.inputs.get("source"), "assets", None) or {}
        if "release-context.json" in assets:
            return assets["release-context.json"].text
    return None


@dataclass
class Plan:
    project: str
    stack: str
    run: ProgramRun
    accounts: dict[str, AccountInfo]
    grouping: Grouping
    pipelines: list[Recorded]
    names: AssignedNames = NO_ASSIGNED_NAMES
    """Names the run leaves to the deployment, and how the plan shows them."""

    @property
    def env_by_account(self) -> dict[str, list[str]]:
        return {a: i.environments for a, i in self.accounts.items() if i.environments}

    @property
    def tools(self) -> list[AccountInfo]:
        return [i for i in self.accounts.values() if i.kind == "tools"]

    @property
    def home_region(self) -> str:
        if self.pipelines:
            return self.pipelines[0].region or "?"
        tools = self.tools
        return tools[0].provider_regions[0] if tools and tools[0].provider_regions else "?"


def build_plan(run: ProgramRun, project: str, stack: str) -> Plan:
    infos = accounts(run)
    names = AssignedNames.of(run)
    return Plan(project, stack, run, infos, group_resources(run.custom(), list(infos), names),
                sorted(run.of_type(PIPELINE_TYPE), key=physical_name), names)


def _inline(names: Sequence[str], width: int = INLINE_WIDTH) -> str:
    """As many distinct physical names as fit in ``width`` characters, then ``+N more``.

    Logical names of attachments (a bucket policy, a role policy) say nothing the parent's line does not. Names
    assigned at deploy keep their ``…`` and share one note at the end of the line: the note after every name would
    crowd the names out.
    """
    marker = f" {ASSIGNED_AT_DEPLOY}"
    unique = list(dict.fromkeys(n.removesuffix(marker) for n in names if not _is_logical(n)))
    shown: list[str] = []
    for i, name in enumerate(unique):
        rest = len(unique) - i - 1
        candidate = ", ".join([*shown, name]) + (f", +{rest} more" if rest else "")
        if shown and len(candidate) > width:
            break
        shown.append(name)
    hidden = len(unique) - len(shown)
    note = f" (…: {ASSIGNED_AT_DEPLOY[1:-1]})" if any(n.endswith("…") for n in shown) else ""
    return ", ".join(shown) + (f", +{hidden} more" if hidden else "") + note


def render_text(plan: Plan, *, detail: bool = False) -> str:
    """The printed plan: header, resources per account and region, pipelines, stack outputs."""
    resources = plan.run.custom()
    regions = {r for regs in plan.grouping.values() for r in regs if r != GLOBAL}
    workloads = [i for i in plan.accounts.values() if i.kind == "workload"]
    tools = ", ".join(i.account for i in plan.tools) or "?"
    out = [
        f"Offline plan: {plan.project}/{plan.stack} (Pulumi mocks: no Pulumi CLI, no AWS calls)",
        f"  tools account   {tools}, home region {plan.home_region}",
        "  workloads       " + (", ".join(f"{i.account} ({', '.join(i.environments) or '-'})" for i in workloads)
                                or "none"),
        f"  would create    {len(resources)} resources in {len(plan.grouping)} accounts and {len(regions)} regions; "
        f"{len(plan.pipelines)} pipelines; {len(plan.run.of_type(PROVIDER_TYPE))} providers",
        "",
        "Resources by account and region" + ("" if detail else " (counts; --detail lists every resource)"),
    ]
    width = max((len(t) for regs in plan.grouping.values() for types in regs.values() for t in types), default=0)
    for account, info in plan.accounts.items():
        by_region = plan.grouping.get(account, {})
        total = sum(len(n) for types in by_region.values() for n in types.values())
        out.append(f"  {account}  {info.label}  [{total}]")
        if info.kind == "unknown":
            out.append("    no explicit provider: with default providers disabled these would fail at preview")
        for region in _order_regions({**dict.fromkeys(info.provider_regions), **by_region}, info.provider_regions):
            types = by_region.get(region, {})
            count = sum(len(n) for n in types.values())
            out.append(f"    {region}  [{count}]" + ("" if types else "  provider only, nothing created here yet"))
            for type_, names in types.items():
                if detail:
                    out.append(f"      {type_:<{width}}  {len(names)}")
                    out.extend(f"        {n}" for n in names)
                else:
                    out.append(f"      {type_:<{width}}  {len(names):>4}  {_inline(names)}".rstrip())

    engine_envs = engine_environments(plan.run)
    out += ["", f"Pipelines ({len(plan.pipelines)})"]
    width = max((len(physical_name(p)) for p in plan.pipelines), default=0)
    for pipeline in plan.pipelines:
        out.append(f"  {physical_name(pipeline):<{width}}  "
                   f"{stage_summary(pipeline, engine_envs, stage_smoke_tests(plan.run, pipeline))}")
    if engine_envs:
        out += ["", "Deploy engine (config travels with the run: each execution deploys the deploy document it "
                "started with)"]
        for name, env in engine_envs.items():
            regions = ", ".join(t["region"] for t in env["targets"])
            out.append(f"  {name:<12} {env['strategy']:<10} {regions}; fails and restores every region after "
                       f"{int(env['timeoutSeconds']) // 60} min")

    rows = workload_rows(plan)
    if rows:
        out += ["", f"Workloads ({len(rows)} environment-regions; services as name:port)"]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            head = "  ".join(f"{cell:<{w}}" for cell, w in zip(row[:4], widths, strict=True))
            out.append(f"  {head}  {row[4]}")

    found = domains(plan.run)
    if found:
        out += ["", f"Domains ({len(found)}; Route 53 alias records to the load balancers, certificate per region)"]
        for domain in found:
            out.extend(domain_lines(domain))

    targets = push_targets(plan.run)
    if targets:
        out += ["", f"Push delivery ({len(targets['repositories'])} services; EventBridge -> push-deploy Lambda)"]
        for repo, route, places in push_routes(targets):
            out.append(f"  {repo}: {route}: {'; '.join(places)}")

    flow = gitflow_flow(plan.run)
    if flow:
        out += ["", f"Release gitflow (CodeCommit {flow.repository}; EventBridge -> gitflow Lambda)",
                *gitflow_lines(flow)]
    waves = stack_release_waves(plan.run, plan.stack)
    if waves:
        out += ["", f"Release waves ({waves.file}; every account-region at once, at most {waves.bound} targets at "
                    "a time in each: its scheduled tasks, then its services)", *release_waves_lines(waves)]

    out += ["", "Stack outputs"]
    for key, value in plan.run.outputs.items():
        out.extend(_render_output(key, value, detail, plan.names))
    return "\n".join(out) + "\n"


def workload_rows(plan: Plan) -> list[tuple[str, str, str, str, str]]:
    """Per workload account and region: (account, environments, region, strategy, what runs there)."""
    run = plan.run
    rows = []
    for account, region in sorted({(r.account or "?", r.region or "?") for r in run.of_type(ECS_SERVICE_TYPE)}):
        def here(type_: str, account: str = account, region: str = region) -> list[Recorded]:
            return [r for r in run.of_type(type_) if (r.account, r.region) == (account, region)]

        services = here(ECS_SERVICE_TYPE)
        strategy = "rolling"
        for svc in services:
            if (svc.inputs.get("deploymentController") or {}).get("type") == "CODE_DEPLOY":
                strategy = "codedeploy"
            native = (svc.inputs.get("deploymentConfiguration") or {}).get("strategy")
            if native and native != "ROLLING":
                strategy = str(native).lower().replace("_", "-")
        vpcs = here("aws:ec2/vpc:Vpc")
        if vpcs:
            nats = len(here("aws:ec2/natGateway:NatGateway"))
            network = f"new VPC {vpcs[0].inputs.get('cidrBlock', '?')} ({nats} NAT)"
        else:
            adopted = {sg.inputs.get("vpcId") for sg in here("aws:ec2/securityGroup:SecurityGroup")}
            network = f"adopted {', '.join(sorted(map(str, adopted)))}"
        listeners = ", ".join(f"{r.inputs.get('protocol')}:{_scalar(r.inputs.get('port'))}"
                              for r in sorted(here("aws:lb/listener:Listener"), key=lambda r: r.inputs.get("port", 0)))
        names = ", ".join(f"{s.inputs.get('name')}:"
                          f"{_scalar((s.inputs.get('loadBalancers') or [{}])[0].get('containerPort'))}"
                          for s in sorted(services, key=lambda s: str(s.inputs.get("name"))))
        envs = ", ".join(plan.accounts[account].environments) if account in plan.accounts else "?"
        rows.append((account, envs, region, strategy,
                     f"{network}; ALB {listeners}; {names}"))
    return rows


RECORD_TYPE = "aws:route53/record:Record"


@dataclass(frozen=True)
class DomainRoute:
    """One region a domain's records send clients to."""

    region: str
    load_balancer: str
    certificate: str
    """``ACM, DNS-validated``, ``given <arn>`` or ``none (HTTP only)``: what the region's HTTPS listener serves."""


@dataclass(frozen=True)
class DomainPlan:
    """A domain as the registrations show it: its alias records, the load balancers they point at and the
    certificates of those load balancers' HTTPS listeners."""

    names: tuple[str, ...]
    """The domain first, then the hosts under it that have records too."""
    account: str
    zone_id: str
    environment: str
    latency: bool
    health_evaluated: bool
    routes: tuple[DomainRoute, ...]
    validation_records: int
    """CNAME records ACM validates the certificates with, in the zone (one per name, shared by every region)."""


def _environment_at(run: ProgramRun, account: str, region: str) -> str:
    for name, env in engine_environments(run).items():
        if any(t.get("accountId") == account and t.get("region") == region for t in env.get("targets") or []):
            return name
    infos = accounts(run)
    return ", ".join(infos[account].environments) if account in infos and infos[account].environments else "?"


def domains(run: ProgramRun) -> list[DomainPlan]:
    """Every domain: alias records grouped by account, hosted zone and the load balancers they point at."""
    albs = {lb.outputs.get("dnsName"): lb for lb in run.of_type("aws:lb/loadBalancer:LoadBalancer")}
    https = {listener.inputs.get("loadBalancerArn"): listener.inputs.get("certificateArn")
             for listener in run.of_type("aws:lb/listener:Listener") if listener.inputs.get("protocol") == "HTTPS"
             and _scalar(listener.inputs.get("port")) == "443"}
    validated = {v.outputs.get("certificateArn") for v in run.of_type(
        "aws:acm/certificateValidation:CertificateValidation")}
    groups: dict[tuple[str, str, frozenset[str]], list[Recorded]] = defaultdict(list)
    by_name: dict[tuple[str, str, str], list[Recorded]] = defaultdict(list)
    records = run.of_type(RECORD_TYPE)
    for record in records:
        if record.inputs.get("aliases") and record.inputs.get("type") == "A":
            by_name[(record.account or "?", str(record.inputs.get("zoneId")), str(record.inputs.get("name")))].append(
                record)
    for (account, zone, _), named in by_name.items():
        targets = frozenset(str(r.inputs["aliases"][0].get("name")) for r in named)
        groups[(account, zone, targets)].extend(named)
    found = []
    for (account, zone, _), group in groups.items():
        names = tuple(sorted({str(r.inputs.get("name")) for r in group}, key=lambda n: (len(n), n)))
        routes = []
        for record in (r for r in group if r.inputs.get("name") == names[0]):
            alias = record.inputs["aliases"][0]
            alb = albs.get(alias.get("name"))
            region = (alb.region if alb else None) or "?"
            certificate = https.get(alb.outputs.get("arn")) if alb else None
            source = ("none (HTTP only)" if not certificate else "ACM, DNS-validated" if certificate in validated
                      else f"given {certificate}")
            routes.append(DomainRoute(region, physical_name(alb) if alb else str(alias.get("name")), source))
        routes.sort(key=lambda r: r.region)
        cnames = [r for r in records if r.account == account and r.inputs.get("zoneId") == zone
                  and r.inputs.get("type") == "CNAME"
                  and any(str(r.inputs.get("name")).rstrip(".").endswith("." + n) for n in names)]
        found.append(DomainPlan(
            names=names, account=account, zone_id=zone,
            environment=_environment_at(run, account, routes[0].region) if routes else "?",
            latency=any(r.inputs.get("latencyRoutingPolicies") for r in group),
            health_evaluated=all(r.inputs["aliases"][0].get("evaluateTargetHealth") for r in group),
            routes=tuple(routes), validation_records=len(cnames)))
    return sorted(found, key=lambda d: d.names)


def domain_lines(domain: DomainPlan) -> list[str]:
    """The plan's lines for one domain: names, routing, certificate per region, validation records."""
    others = f" (+ {', '.join(domain.names[1:])})" if len(domain.names) > 1 else ""
    health = "health-evaluated: a region whose load balancer has no healthy targets drops out" \
        if domain.health_evaluated else "not health-evaluated"
    regions = ", ".join(r.region for r in domain.routes)
    routing = (f"latency-based alias records across {regions} ({health})" if domain.latency
               else f"alias record to {regions} ({health})")
    return [f"  {domain.names[0]}{others}  environment {domain.environment}, account {domain.account}, "
            f"zone {domain.zone_id}",
            f"    routing       {routing}",
            "    certificates  " + "; ".join(f"{r.region} {r.certificate}" for r in domain.routes),
            f"    validation    {domain.validation_records} CNAME record(s) in the zone, one per name, shared by "
            "every region's certificate"]


def render_domains_mermaid(found: Sequence[DomainPlan]) -> str:
    """One flowchart: each domain, its routing, and per region the load balancer with its certificate."""
    out = ["flowchart LR"]
    for i, domain in enumerate(found):
        policy = "latency, health-evaluated" if domain.latency else "alias"
        out.append(f"  d{i}([{mermaid_label(*domain.names, f'zone {domain.zone_id}')}])")
        for j, route in enumerate(domain.routes):
            out.append(f"  d{i}r{j}[{mermaid_label(route.region, route.load_balancer, route.certificate)}]")
            out.append(f"  d{i} -->|{mermaid_label(policy)}| d{i}r{j}")
    return "\n".join(out) + "\n"


def _render_output(key: str, value: Any, detail: bool, names: AssignedNames = NO_ASSIGNED_NAMES) -> list[str]:
    if not isinstance(value, Mapping):
        return [f"  {key}  {names.show(_scalar(value))}"]
    items = list(value.items())
    shown = items if detail or len(items) <= OUTPUT_MAP_LIMIT else items[:OUTPUT_MAP_LIMIT // 2]
    width = max((len(str(k)) for k, _ in shown), default=0)
    lines = [f"  {key}"] + [f"    {k!s:<{width}}  {names.show(_scalar(v))}" for k, v in shown]
    if len(shown) < len(items):
        lines.append(f"    … {len(items) - len(shown)} more (--detail)")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # the engine hands numbers over as floats
    return value if isinstance(value, str) else json.dumps(value, default=str)


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


class PlanError(Exception):
    """A problem with the command line or the stack file: printed without a traceback, exit 2."""


def resolve_stack_file(arg: str, root: Path = ROOT) -> tuple[Path, str]:
    """``Pulumi.prod.yaml`` (a path) or ``prod`` (a stack name, looked up in the repository root) -> (file, stack)."""
    as_path = Path(arg)
    if as_path.suffix in (".yaml", ".yml") or as_path.exists() or len(as_path.parts) > 1:
        path = as_path
    else:
        path = root / f"Pulumi.{arg}.yaml"
    if not path.is_file():
        hint = ", ".join(sorted(p.name for p in root.glob("Pulumi.*.yaml")))
        raise PlanError(f"stack file not found: {path} (stack files in {root}: {hint or 'none'})")
    name = path.name
    for suffix in (".yaml", ".yml"):
        name = name.removesuffix(suffix)
    return path, name.removeprefix("Pulumi.")


def project_name(root: Path = ROOT) -> str:
    # The stack config's namespace is the project name; the program is this repository's, so its Pulumi.yaml rules.
    try:
        return str((yaml.safe_load((root / "Pulumi.yaml").read_text()) or {}).get("name") or "crossdeploy")
    except (OSError, yaml.YAMLError):
        return "crossdeploy"


def load_stack(path: Path) -> dict[str, Any]:
    """The stack file's config block, read as strictly as the Pulumi CLI reads it and validated, or a PlanError
    saying why not: not YAML, a key named twice (with both lines), not a stack file, or every config problem."""
    try:
        config = stack_config(path)
    except StackFileError as exc:
        raise PlanError(str(exc)) from None
    # The program validates the config again when it runs, but from JSON, where an unquoted 012345670123 is only
    # 1402433619; validating the values as read from the file first lets the message quote what the user typed.
    try:
        validate_config(config)
    except ConfigError as exc:
        raise PlanError(f"{path}: {exc}") from None
    return config


DEFAULT_CONTEXT = ROOT / "build" / "release-context.json"
"""Where ``--release-context`` without a path writes: generated files stay under build/, out of the source tree."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m offline.plan",
        description="Show what a stack would create in each account and region, offline (Pulumi mocks).")
    parser.add_argument("stack", help="stack file (Pulumi.prod.yaml) or stack name (prod)")
    parser.add_argument("--detail", action="store_true", help="list every resource instead of counts per type")
    parser.add_argument("--out", type=Path, help="Markdown file for the Mermaid diagrams "
                                                 "(default: build/plan-<stack>.md in the repository root)")
    parser.add_argument("--release-context", type=Path, metavar="PATH", nargs="?", const=DEFAULT_CONTEXT,
                        help="also write the release context (environments, accounts, regions, deploy roles) that "
                             "`python -m handlers.release_file validate` needs, e.g. in a release repository's CI "
                             "(default PATH: build/release-context.json in the repository root)")
    parser.add_argument("--diff", metavar="GIT_REF",
                        help="instead of the plan, print what `pulumi preview --diff` would show from GIT_REF (its "
                             "program and stack file, run in a temporary git worktree) to the working tree")
    parser.add_argument("--format", choices=("text", "markdown"),
                        help="--diff output: plain text (default), or Markdown for a pull-request comment")
    args = parser.parse_args(argv)
    if args.format and args.diff is None:
        parser.error("--format applies to --diff only")
    if args.diff is not None and (args.detail or args.out or args.release_context):
        parser.error("--diff prints only the diff: --detail, --out and --release-context apply to the plan")

    try:
        path, stack = resolve_stack_file(args.stack)
        config = load_stack(path)
    except PlanError as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 2
    project = project_name()
    if args.diff is not None:
        from offline.diff import run_diff  # only --diff needs git and the worktree machinery

        return run_diff(path, stack, project, config, args.diff, fmt=args.format or "text")
    try:
        run = run_program(config, stack=stack, project=project)
    except ConfigError as exc:
        print(f"plan: {path}: {exc}", file=sys.stderr)
        return 2

    plan = build_plan(run, project, stack)
    if args.release_context:
        context = release_context(run)
        if context is None:
            print(f"plan: {path} has no crossdeploy:release, so there is no release context", file=sys.stderr)
            return 2
        args.release_context.parent.mkdir(parents=True, exist_ok=True)
        args.release_context.write_text(context)
        print(f"plan: release context written to {args.release_context}", file=sys.stderr)
    # The diagrams are written before anything is printed, so `... | head` still leaves a complete file.
    out = args.out or ROOT / "build" / f"plan-{stack}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = pipelines_doc(plan, f"Pipelines of {project}/{stack}")
    targets, flow, found = push_targets(run), gitflow_flow(run), domains(run)
    if targets:
        doc += mermaid_section("Push delivery", render_push_mermaid(targets))
    if flow:
        doc += mermaid_section("Release gitflow", render_gitflow_mermaid(flow))
    if found:
        doc += mermaid_section("Domains", render_domains_mermaid(found))
    out.write_text(doc)
    try:
        sys.stdout.write(render_text(plan, detail=args.detail))
        print(f"\nMermaid diagrams ({len(plan.pipelines)} pipelines): {out}")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (`head`, a pager) stopped early: not an error of the plan. Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
