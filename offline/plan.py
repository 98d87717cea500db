"""Offline plan: what a stack would create in each account and region, without the Pulumi CLI or AWS credentials.

Usage::

    python -m offline.plan Pulumi.prod.yaml            # or just: python -m offline.plan prod
    python -m offline.plan prod --detail               # every resource, not only counts per type
    python -m offline.plan prod --out docs/prod.md     # where the Mermaid diagrams go (default build/plan-<stack>.md)

It runs the real program under the same mocks as the tests (:func:`offline.mocks.run_program`), so the plan shows
what the engine, and so AWS, would receive. Everything printed is derived from the *registrations* (which provider,
hence which account and region, each resource went to; the pipeline's registered stages), never from re-reading the
stack config: a component that put a resource in the wrong account shows up here as exactly that.

Exit status: 0 on success, 2 for a bad or missing stack file (the problems go to stderr, without a traceback).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.config import ConfigError
from offline.mocks import PROVIDER_TYPE, ROOT, ProgramRun, Recorded, run_program, stack_config

PIPELINE_TYPE = "aws:codepipeline/pipeline:Pipeline"
GLOBAL = "global"
# AWS services whose resources have no region: the provider's region only says which endpoint was called.
GLOBAL_SERVICES = frozenset({"iam"})
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


def physical_name(resource: Recorded) -> str:
    """The name AWS would show; a Pulumi logical name in parentheses where the resource has no name of its own
    (policies, subscriptions and other attachments)."""
    outputs = resource.outputs
    for key in ("name", "bucket", "keyId"):
        value = outputs.get(key)
        if isinstance(value, str) and value:
            return value
    return f"({resource.name})"


def _is_logical(name: str) -> bool:
    return name.startswith("(")


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


def group_resources(resources: Iterable[Recorded], account_order: Sequence[str] = ()) -> Grouping:
    """Group resources by account, then region (``global`` for IAM), then short type; names sorted.

    Regions follow ``account_order``'s providers where given: the caller passes the provider regions so the tools
    home region comes first; ``global`` goes last.
    """
    grouped: dict[str, dict[str, dict[str, list[str]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for resource in resources:
        account, region = placement(resource)
        grouped[account][region][short_type(resource.type)].append(physical_name(resource))
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
    run_order: int


@dataclass(frozen=True)
class FlowStage:
    id: str
    title: str
    nodes: tuple[FlowNode, ...]


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


def _action_lines(action: Mapping[str, Any], home_region: str, env_by_account: Mapping[str, Sequence[str]],
                  engine_envs: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[str, tuple[str, ...]]:
    category = action.get("category", "?")
    provider = action.get("provider", "?")
    config = action.get("configuration") or {}
    region = action.get("region") or home_region
    if category == "Source" and provider == "ECR":
        return "source", (f"ECR · {region}", f"{config.get('RepositoryName', '?')}:{config.get('ImageTag', 'latest')}")
    if category == "Source" and provider == "S3":
        return "source", (f"S3 · {region}", "deploy document (config as of this run)",
                          str(config.get("S3ObjectKey", "?")))
    env = engine_environment(action)
    if env is not None:
        return "deploy", _engine_lines(env, engine_envs or {})
    bake = bake_of(action)
    if bake is not None:
        return "action", ("Bake · Lambda", f"{bake.get('minutes', '?')} min: {len(bake.get('alarms') or [])} alarms "
                          f"in {', '.join(bake.get('regions') or [])}",
                          f"read as role in {arn_account(bake.get('roleArn')) or '?'}", "alarm: stage fails")
    if category == "Build":
        return "build", (f"{provider} · {region}", str(config.get("ProjectName", action.get("name", "?"))))
    if category == "Approval":
        lines = ["Manual approval"]
        if config.get("NotificationArn"):
            lines.append(f"notify {_last_segment(config['NotificationArn'])}")
        return "approval", tuple(lines)
    if category == "Deploy":
        account = arn_account(action.get("roleArn"))
        if account:
            envs = env_by_account.get(account) or ()
            role = f"as role in {account}" + (f" ({', '.join(envs)})" if envs else "")
        else:
            role = "as the pipeline role (tools account)"
        if provider == "CodeDeployToECS":
            return "deploy", (f"CodeDeploy blue/green · {region}", f"app {config.get('ApplicationName', '?')}",
                              f"group {config.get('DeploymentGroupName', '?')}", role)
        target = [f"{k.removesuffix('Name').lower()} {config[k]}" for k in ("ClusterName", "ServiceName")
                  if config.get(k)]
        return "deploy", (f"{provider} · {region}", *target, role)
    return "action", (f"{category} · {provider} · {region}", str(action.get("name", "?")))


def _window(stage: Mapping[str, Any]) -> tuple[str, str] | None:
    """(cron, time zone) of a stage's DeploymentWindow entry rule, or None."""
    for rule in ((stage.get("beforeEntry") or {}).get("condition") or {}).get("rules") or []:
        if (rule.get("ruleTypeId") or {}).get("provider") == "DeploymentWindow":
            config = rule.get("configuration") or {}
            return str(config.get("Cron", "?")), str(config.get("TimeZone", "UTC"))
    return None


def _rolls_back(stage: Mapping[str, Any]) -> bool:
    return (stage.get("onFailure") or {}).get("result") == "ROLLBACK"


def pipeline_flow(stages: Sequence[Mapping[str, Any]], home_region: str,
                  env_by_account: Mapping[str, Sequence[str]] | None = None,
                  engine_envs: Mapping[str, Mapping[str, Any]] | None = None,
                  smoke: Mapping[str, str] | None = None) -> list[FlowStage]:
    """The registered ``stages`` of one pipeline as stages of nodes, keeping stage and action order; a deployment
    window is a node before the actions (it holds them), `smoke` (environment -> line) adds the smoke test to the
    deploy nodes."""
    flow = []
    for i, stage in enumerate(stages):
        name = str(stage.get("name", f"stage {i}"))
        nodes = []
        window = _window(stage)
        if window:
            nodes.append(FlowNode(f"s{i}w", "approval", ("deployment window", *window), 0))
        for j, action in enumerate(stage.get("actions") or []):
            shape, lines = _action_lines(action, home_region, env_by_account or {}, engine_envs)
            if shape == "deploy" and (smoke or {}).get(environment_of(name)):
                lines = (*lines, (smoke or {})[environment_of(name)])
            nodes.append(FlowNode(f"s{i}a{j}", shape, lines, int(action.get("runOrder") or 1)))
        title = name
        if _is_blue_green(stage):
            title += " · CodeDeploy blue/green"
        for action in stage.get("actions") or []:
            env = engine_environment(action)
            if env is not None:
                title += f" · {(engine_envs or {}).get(env, {}).get('strategy', '?')}"
        if _rolls_back(stage):
            title += " · rollback on failure"
        flow.append(FlowStage(f"s{i}", title, tuple(nodes)))
    return flow


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


def render_mermaid(flow: Sequence[FlowStage]) -> str:
    """A ``flowchart LR``: one subgraph per stage, stages chained in order; a stage's actions sit side by side
    (they run in parallel) unless their runOrder says otherwise."""
    out = ["flowchart LR"]
    for stage in flow:
        # No `direction` here: in an LR chart nodes of the same rank stack vertically, which is how parallel
        # actions should look; TB would lay them out left to right, like a sequence.
        out.append(f"  subgraph {stage.id} [{mermaid_label(stage.title)}]")
        for node in stage.nodes:
            left, right = _SHAPES[node.shape]
            out.append(f"    {node.id}{left}{mermaid_label(*node.lines)}{right}")
        # Same runOrder = parallel; CodePipeline runs a higher runOrder only after the lower one finished.
        orders = sorted({n.run_order for n in stage.nodes})
        for before, after in itertools.pairwise(orders):
            for a in (n for n in stage.nodes if n.run_order == before):
                for b in (n for n in stage.nodes if n.run_order == after):
                    out.append(f"    {a.id} --> {b.id}")
        out.append("  end")
    for before, after in itertools.pairwise(flow):
        out.append(f"  {before.id} --> {after.id}")
    return "\n".join(out) + "\n"


def render_mermaid_doc(title: str, pipelines: Sequence[Recorded], env_by_account: Mapping[str, Sequence[str]],
                       engine_envs: Mapping[str, Mapping[str, Any]] | None = None,
                       smoke: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """A Markdown document with one ```mermaid block per pipeline, sorted by pipeline name; `smoke`: pipeline name
    -> :func:`stage_smoke_tests`."""
    parts = [f"# {title}", "",
             "Generated by `python -m offline.plan` from the pipelines as registered under the mocks: this is what "
             "CodePipeline would receive.", ""]
    for pipeline in sorted(pipelines, key=physical_name):
        parts += [f"## {physical_name(pipeline)}", "",
                  f"Account {pipeline.account}, region {pipeline.region}.", "", "```mermaid",
                  render_mermaid(pipeline_flow(pipeline.inputs.get("stages") or [], pipeline.region or "?",
                                               env_by_account, engine_envs,
                                               (smoke or {}).get(physical_name(pipeline)))).rstrip("\n"),
                  "```", ""]
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
    """The Mermaid document of a plan's pipelines, with strategies, gates and smoke tests."""
    return render_mermaid_doc(title, plan.pipelines, plan.env_by_account, engine_environments(plan.run),
                              {physical_name(p): stage_smoke_tests(plan.run, p) for p in plan.pipelines})


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
           "  push --> rule --> fn"]
    for i, (repo, route, places) in enumerate(push_routes(targets)):
        out.append(f"  t{i}[{mermaid_label(repo, route, *places)}]")
        out.append(f"  fn --> t{i}")
    return "\n".join(out) + "\n"


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
    return Plan(project, stack, run, infos, group_resources(run.custom(), list(infos)),
                sorted(run.of_type(PIPELINE_TYPE), key=physical_name))


def _inline(names: Sequence[str], width: int = INLINE_WIDTH) -> str:
    """As many distinct physical names as fit in ``width`` characters, then ``+N more``.

    Logical names of attachments (a bucket policy, a role policy) say nothing the parent's line does not.
    """
    unique = [n for n in dict.fromkeys(names) if not _is_logical(n)]
    shown: list[str] = []
    for i, name in enumerate(unique):
        rest = len(unique) - i - 1
        candidate = ", ".join([*shown, name]) + (f", +{rest} more" if rest else "")
        if shown and len(candidate) > width:
            break
        shown.append(name)
    hidden = len(unique) - len(shown)
    return ", ".join(shown) + (f", +{hidden} more" if hidden else "")


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

    targets = push_targets(plan.run)
    if targets:
        out += ["", f"Push delivery ({len(targets['repositories'])} services; EventBridge -> push-deploy Lambda)"]
        for repo, route, places in push_routes(targets):
            out.append(f"  {repo}: {route}: {'; '.join(places)}")

    out += ["", "Stack outputs"]
    for key, value in plan.run.outputs.items():
        out.extend(_render_output(key, value, detail))
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


def _render_output(key: str, value: Any, detail: bool) -> list[str]:
    if not isinstance(value, Mapping):
        return [f"  {key}  {_scalar(value)}"]
    items = list(value.items())
    shown = items if detail or len(items) <= OUTPUT_MAP_LIMIT else items[:OUTPUT_MAP_LIMIT // 2]
    width = max((len(str(k)) for k, _ in shown), default=0)
    lines = [f"  {key}"] + [f"    {k!s:<{width}}  {_scalar(v)}" for k, v in shown]
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
    """The stack file's config block, or a PlanError saying why it cannot be read."""
    try:
        return stack_config(path)
    except yaml.YAMLError as exc:
        raise PlanError(f"{path}: not valid YAML: {exc}") from None
    except (AttributeError, TypeError, ValueError):
        # stack_config expects a mapping with a `config:` mapping; anything else is not a Pulumi stack file.
        raise PlanError(f"{path}: not a Pulumi stack file (expected a mapping with a `config:` mapping)") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m offline.plan",
        description="Show what a stack would create in each account and region, offline (Pulumi mocks).")
    parser.add_argument("stack", help="stack file (Pulumi.prod.yaml) or stack name (prod)")
    parser.add_argument("--detail", action="store_true", help="list every resource instead of counts per type")
    parser.add_argument("--out", type=Path, help="Markdown file for the Mermaid diagrams "
                                                 "(default: build/plan-<stack>.md in the repository root)")
    parser.add_argument("--release-context", type=Path, metavar="PATH",
                        help="also write the release context (environments, accounts, regions, deploy roles) that "
                             "`python -m handlers.release_file validate` needs, e.g. in a release repository's CI")
    args = parser.parse_args(argv)

    try:
        path, stack = resolve_stack_file(args.stack)
        config = load_stack(path)
    except PlanError as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 2
    project = project_name()
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
        args.release_context.write_text(context)
    # The diagrams are written before anything is printed, so `... | head` still leaves a complete file.
    out = args.out or ROOT / "build" / f"plan-{stack}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = pipelines_doc(plan, f"Pipelines of {project}/{stack}")
    targets = push_targets(run)
    if targets:
        doc += "\n".join(["## Push delivery", "", "```mermaid", render_push_mermaid(targets).rstrip("\n"), "```", ""])
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
