"""The offline plan (``python -m offline.plan``): grouping by account and region, the Mermaid pipeline diagrams and
the release state machine's, names only the deployment assigns, and clean failures for bad stack files.

The prod stack runs once under the mocks for the whole session (conftest's ``prod_run``, shared with other modules);
expected accounts are read from the stack file here (the plan itself must derive them from the registrations, so
this cross-checks the two).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from offline import plan as p
from offline.mocks import ProgramRun, Recorded, run_program, stack_config

ROOT = Path(__file__).resolve().parents[1]
PROD = ROOT / "Pulumi.prod.yaml"
PIPELINE = "aws:codepipeline/pipeline:Pipeline"


@pytest.fixture(scope="module")
def prod_config() -> dict:
    return stack_config(PROD)


@pytest.fixture(scope="module")
def prod_plan(prod_run) -> p.Plan:
    return p.build_plan(prod_run, "crossdeploy", "prod")


@pytest.fixture(scope="module")
def prod_doc(prod_plan) -> str:
    return p.pipelines_doc(prod_plan, "prod")


def _accounts(config: dict) -> tuple[str, dict[str, str], list[str]]:
    tools = config["crossdeploy:tools"]["accountId"]
    envs = {e["name"]: e["accountId"] for e in config["crossdeploy:environments"]}
    regions = list(dict.fromkeys([config["crossdeploy:tools"]["region"],
                                  *(r for e in config["crossdeploy:environments"] for r in e["regions"])]))
    return tools, envs, regions


# --- small functions -------------------------------------------------------------------------------------------


def test_short_type():
    assert p.short_type("aws:iam/role:Role") == "iam:Role"
    assert p.short_type("aws:codepipeline/pipeline:Pipeline") == "codepipeline:Pipeline"
    assert p.short_type("random:index/randomId:RandomId") == "random:RandomId"
    assert p.short_type("odd") == "odd"


def test_iam_is_global_whatever_the_provider_region():
    role = Recorded("aws:iam/role:Role", "r", {}, {"name": "x"}, True, None, "prov", "123456789012", "eu-west-1")
    bucket = Recorded("aws:s3/bucket:Bucket", "b", {}, {"bucket": "bk"}, True, None, "prov", "123456789012",
                      "eu-west-1")
    assert p.placement(role) == ("123456789012", "global")
    assert p.placement(bucket) == ("123456789012", "eu-west-1")
    assert p.physical_name(bucket) == "bk"
    assert p.physical_name(Recorded("aws:iam/rolePolicy:RolePolicy", "pol", {}, {}, True, None, None)) == "(pol)"


def test_arn_account():
    assert p.arn_account("arn:aws:iam::444455556666:role/a/b") == "444455556666"
    assert p.arn_account("arn:aws:s3:::bucket") is None
    assert p.arn_account(None) is None
    assert p.arn_account("not-an-arn") is None


def test_mermaid_label_escapes_what_mermaid_would_interpret():
    label = p.mermaid_label('web/storefront "x" <b> #1 & `y`', "second")
    assert label.startswith('"') and label.endswith('"')
    inner = label[1:-1]
    assert '"' not in inner and "`" not in inner and "&" not in inner
    assert re.sub(r"<br/>", "", inner).count("<") == 0 and ">" not in inner.replace("<br/>", "")
    assert "web/storefront" in inner and "#quot;x#quot;" in inner and "#35;1" in inner
    assert inner.endswith("<br/>second")


def test_stack_file_resolution(tmp_path):
    assert p.resolve_stack_file("prod") == (PROD, "prod")
    assert p.resolve_stack_file(str(PROD)) == (PROD, "prod")
    other = tmp_path / "Pulumi.staging.yml"
    other.write_text("config: {}\n")
    assert p.resolve_stack_file(str(other)) == (other, "staging")
    with pytest.raises(p.PlanError, match=r"Pulumi\.nope\.yaml.*Pulumi\.dev\.yaml"):
        p.resolve_stack_file("nope")
    with pytest.raises(p.PlanError, match="not found"):
        p.resolve_stack_file(str(tmp_path / "Pulumi.gone.yaml"))


# --- grouping of the prod stack --------------------------------------------------------------------------------


def test_accounts_are_labelled_from_the_registrations(prod_plan, prod_config):
    tools, envs, regions = _accounts(prod_config)
    infos = prod_plan.accounts
    assert list(infos) == [tools, envs["test"], envs["prod"]]  # tools first, then promotion order
    assert infos[tools].kind == "tools" and infos[tools].label == "tools"
    assert infos[tools].provider_regions == regions
    for env, account in envs.items():
        assert infos[account].kind == "workload"
        assert infos[account].environments == [env]
        assert infos[account].label == f"workload ({env})"
    assert prod_plan.home_region == prod_config["crossdeploy:tools"]["region"]


def test_grouping_puts_delivery_resources_in_the_tools_regions(prod_plan, prod_config):
    tools, _, regions = _accounts(prod_config)
    home, *replicas = regions
    grouped = prod_plan.grouping[tools]
    assert list(grouped) == [*regions, "global"]
    services = [s["name"] for s in prod_config["crossdeploy:services"]]
    pipelines = [n for n in grouped[home]["codepipeline:Pipeline"]]
    assert len(pipelines) == len(services) + ("crossdeploy:release" in prod_config)
    for region in regions:
        assert sorted(grouped[region]["ecr:Repository"]) == sorted(services)
        # An artifact bucket per region; the home region also holds the deploy documents' bucket.
        assert len(grouped[region]["s3:Bucket"]) == (2 if region == home else 1)
    # The artifacts key (multi-Region) and the notifications key; AWS picks key ids, so the plan shows none.
    assert grouped[home]["kms:Key"] == ["artifacts-key: mrk-… (assigned at deploy)",
                                        "notifications-key: … (assigned at deploy)"]
    primary = prod_plan.run.named("aws:kms/key:Key", "artifacts-key")
    for region in replicas:
        assert "codepipeline:Pipeline" not in grouped[region]
        assert grouped[region]["kms:ReplicaKey"] == [f"artifacts-key-{region}: mrk-… (assigned at deploy)"]
        replica = prod_plan.run.named("aws:kms/replicaKey:ReplicaKey", f"artifacts-key-{region}")
        assert replica.outputs["keyId"] == primary.outputs["keyId"] and replica.region == region
    # IAM is never listed under a region, whichever regional provider created it.
    for account, by_region in prod_plan.grouping.items():
        for region, types in by_region.items():
            iam = [t for t in types if t.startswith("iam:")]
            assert (region == "global") == bool(iam), (account, region, iam)


def test_deploy_roles_are_global_in_each_workload_account(prod_plan, prod_config):
    _, envs, _ = _accounts(prod_config)
    for account in envs.values():
        grouped = prod_plan.grouping[account]
        assert "crossdeploy-prod-deploy" in grouped["global"]["iam:Role"]
        # Task roles carry no policy (the team attaches its own); every other role has exactly one.
        assert len(grouped["global"]["iam:RolePolicy"]) <= len(grouped["global"]["iam:Role"])
        assert not any(t.startswith(("codepipeline:", "ecr:", "s3:", "kms:")) for types in grouped.values()
                       for t in types), "delivery resources belong to the tools account"


def test_text_plan(prod_plan, prod_config):
    tools, envs, regions = _accounts(prod_config)
    text = p.render_text(prod_plan)
    lines = text.splitlines()
    assert lines[0] == "Offline plan: crossdeploy/prod (Pulumi mocks: no Pulumi CLI, no AWS calls)"
    assert f"tools account   {tools}, home region {regions[0]}" in lines[1]
    assert f"{envs['test']} (test)" in lines[2] and f"{envs['prod']} (prod)" in lines[2]
    assert re.search(rf"\b{len(prod_plan.run.custom())} resources in 3 accounts and 2 regions; 4 pipelines", text)
    assert re.search(r"^  crossdeploy-prod-release +Source -> Validate -> approve -> Release$", text, re.M)
    assert f"  {envs['prod']}  workload (prod)" in text
    assert re.search(r"^      iam:Role +\d+  crossdeploy-prod-deploy, crossdeploy-prod-rollout-forwarder, \+\d+ more$",
                     text, re.M)
    assert re.search(r"^  crossdeploy-prod-web-storefront +web/storefront:latest \+ config -> Build -> "
                     r"test\[us-east-2\] rolling \(smoke test, rollback\) -> approve -> prod\[us-east-2, us-west-2\] "
                     r"canary \(window, smoke test, bake 20 min, rollback\)$", text, re.M)
    for output in ("repositoryUrls", "pipelineNames", "deployRoleArns", "artifactBuckets"):
        assert f"\n  {output}\n" in text
    assert f"arn:aws:iam::{envs['prod']}:role/crossdeploy/prod/deploy/crossdeploy-prod-deploy" in text
    # Default output shows counts per type; --detail lists every resource on its own line.
    assert re.search(r"^      iam:RolePolicy +\d+  deploy-", text, re.M)
    detail = p.render_text(prod_plan, detail=True)
    assert f"deploy-{envs['prod']}-policy-" in detail
    assert all(f"        {name}\n" in detail for name in ("prod-orders-build", "prod-web-storefront-trigger"))


def test_text_plan_shows_strategies_config_source_and_workloads(prod_plan, prod_config):
    _, envs, _ = _accounts(prod_config)
    text = p.render_text(prod_plan)
    assert re.search(r"^  crossdeploy-prod-orders +orders:latest \+ config -> Build -> test\[us-east-2\] rolling "
                     r"\(smoke test, rollback\) -> approve -> prod\[us-east-2, us-west-2\] canary "
                     r"\(window, smoke test, bake 20 min, rollback\)$", text, re.M)
    engine = text.split("\nDeploy engine (config travels with the run", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    # prod: start 5 + canary 5 + bake 15 minutes, from Pulumi.prod.yaml's blueGreen settings.
    assert [line.split() for line in engine] == [
        ["test", "rolling", "us-east-2;", "fails", "and", "restores", "every", "region", "after", "15", "min"],
        ["prod", "canary", "us-east-2,", "us-west-2;", "fails", "and", "restores", "every", "region", "after", "25",
         "min"]]
    section = text.split("\nWorkloads (", 1)[1].split("\n\n", 1)[0]
    rows = section.splitlines()[1:]
    assert len(rows) == 3
    assert re.match(rf"^  {envs['test']}  test  us-east-2  rolling +new VPC 10\.0\.0\.0/16 \(1 NAT\); ALB HTTP:80; "
                    r"orders:8080, payments:8080, storefront:8080$", rows[0]), rows[0]
    for row, region in zip(rows[1:], ("us-east-2", "us-west-2"), strict=True):
        assert row.startswith(f"  {envs['prod']}  prod  {region}  canary")
        # Per-AZ NAT by default; prod's domain gives HTTPS with the redirect, the test listener on HTTPS too.
        assert "(2 NAT)" in row and "ALB HTTP:80, HTTPS:443, HTTPS:8443;" in row


def test_mermaid_marks_each_stage_with_its_strategy_and_the_config_source(prod_plan):
    doc = p.render_mermaid_doc("t", prod_plan.pipelines, prod_plan.env_by_account, p.engine_environments(prod_plan.run))
    section = doc.split("## crossdeploy-prod-orders", 1)[1].split("\n## ", 1)[0]
    block = section.split("```mermaid", 1)[1].split("```", 1)[0]
    assert mermaid_problems(block) == []
    # The config source is a node of the first box; the table under the diagram says what it is.
    assert 's0a1(["config<br/>deploy document"])' in block
    assert ("| config deploy document | Source · Config | S3 · us-east-2; deploy document (config as of this run); "
            "services/orders/deploy.zip |") in section
    # Each environment's box names its strategy and its rollback; the table keeps the engine's details.
    assert 'subgraph g1 ["test · rolling · rollback on failure"]' in block
    assert 'subgraph g2 ["prod · canary · rollback on failure"]' in block
    assert "| Deploy-prod · Deploy | deploy engine · Lambda; prod: canary in us-east-2, us-west-2; " in section


def test_mermaid_marks_codedeploy_stages():
    stages = [{"name": "Deploy-prod", "actions": [
        {"name": "CodeDeploy-us-west-2", "category": "Deploy", "provider": "CodeDeployToECS", "region": "us-west-2",
         "roleArn": "arn:aws:iam::123456789012:role/r",
         "configuration": {"ApplicationName": "crossdeploy-prod-prod", "DeploymentGroupName": "orders"}}]}]
    flow = p.pipeline_flow(stages, "us-east-2", {"123456789012": ["prod"]})
    assert flow[0].title == "Deploy-prod · CodeDeploy blue/green"
    assert flow[0].nodes[0].lines[:3] == ("CodeDeploy blue/green · us-west-2", "app crossdeploy-prod-prod",
                                          "group orders")
    assert flow[0].nodes[0].short == ("CodeDeploy blue/green", "us-west-2")
    assert [g.title for g in p.flow_groups(flow)] == ["prod · CodeDeploy blue/green"]


def test_text_plan_stays_compact_for_many_entries():
    outputs = {"pipelineNames": {f"svc{i:03d}": f"crossdeploy-prod-svc{i:03d}" for i in range(300)}}
    compact = p.render_text(p.build_plan(ProgramRun(outputs=outputs), "crossdeploy", "big"))
    assert "… 295 more (--detail)" in compact and len(compact.splitlines()) < 30
    assert "svc299" in p.render_text(p.build_plan(ProgramRun(outputs=outputs), "crossdeploy", "big"), detail=True)
    names = [f"pipeline-{i:03d}" for i in range(300)]
    inline = p._inline(names)
    assert inline.endswith("more") and len(inline) <= p.INLINE_WIDTH + len(", +300 more")


# --- Mermaid ---------------------------------------------------------------------------------------------------

_ID = r"[A-Za-z_][A-Za-z0-9_]*"
_RESERVED = {"end", "subgraph", "graph", "flowchart", "direction", "style", "class", "classDef", "click", "linkStyle"}
_LABEL = r'"(?:[^"<>`&]|<br/>)*"'
_SHAPE_NODE = re.compile(rf"^({_ID})(\(\[{_LABEL}\]\)|\[{_LABEL}\]|\{{\{{{_LABEL}\}}\}}|\{{{_LABEL}\}})$")
_SUBGRAPH = re.compile(rf"^subgraph ({_ID}) \[({_LABEL})\]$")
_EDGE = re.compile(rf"^({_ID}) (-->|-\.->)(?:\|({_LABEL})\|)? ({_ID})$")


class Chart:
    """What a Mermaid flowchart of the plan's subset declares: nodes and subgraphs with their label (``<br/>``
    joined lines, quotes off) and enclosing subgraph, edges as (from, arrow, label or None, to), subgraph titles in
    order."""

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}
        self.parent: dict[str, str | None] = {}
        self.subgraphs: list[str] = []
        self.edges: list[tuple[str, str, str | None, str]] = []

    def lines(self, id_: str) -> list[str]:
        return self.labels[id_].split("<br/>")

    def inside(self, subgraph: str) -> list[str]:
        return [i for i, parent in self.parent.items() if parent == subgraph]


def parse_mermaid(block: str) -> tuple[Chart, list[str]]:
    """A strict, offline check of the subset of Mermaid the plan writes: ``flowchart TB`` or ``LR``, balanced
    subgraphs, safe identifiers, quoted labels without raw markup (edge labels too), solid or dotted edges only
    between declared ids. Returns what it read and the problems."""
    lines = [line.strip() for line in block.strip().splitlines()]
    problems = [] if lines and lines[0] in ("flowchart TB", "flowchart LR") else [
        "first line must be 'flowchart TB' or 'flowchart LR'"]
    chart = Chart()
    stack: list[str] = []
    for number, line in enumerate(lines[1:], start=2):
        if match := _SUBGRAPH.match(line):
            id_, label = match.group(1), match.group(2)
            chart.subgraphs.append(id_)
        elif line == "end":
            if not stack:
                problems.append(f"line {number}: 'end' without subgraph")
            else:
                stack.pop()
            continue
        elif match := _SHAPE_NODE.match(line):
            id_, label = match.group(1), re.search(_LABEL, match.group(2)).group(0)
        elif match := _EDGE.match(line):
            a, arrow, label, b = match.groups()
            chart.edges.append((a, arrow, label[1:-1] if label else None, b))
            continue
        else:
            problems.append(f"line {number}: not a quoted node, subgraph, end or edge: {line!r}")
            continue
        if id_.lower() in _RESERVED:
            problems.append(f"line {number}: reserved word as id: {id_!r}")
        if id_ in chart.labels:
            problems.append(f"line {number}: id declared twice: {id_!r}")
        chart.labels[id_] = label[1:-1]
        chart.parent[id_] = stack[-1] if stack else None
        if line.startswith("subgraph "):
            stack.append(id_)
    if stack:
        problems.append(f"{len(stack)} subgraph(s) without 'end'")
    problems += [f"edge to undeclared id: {a} --> {b}" for a, _, _, b in chart.edges
                 if a not in chart.labels or b not in chart.labels]
    return chart, problems


def mermaid_problems(block: str) -> list[str]:
    return parse_mermaid(block)[1]


def chart_of(block: str) -> Chart:
    chart, problems = parse_mermaid(block)
    assert problems == [], problems
    return chart


def _blocks(doc: str) -> list[str]:
    return re.findall(r"^```mermaid\n(.*?)^```$", doc, re.M | re.S)


def _section(doc: str, heading: str) -> str:
    return doc.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_mermaid_checker_has_teeth():
    good = ('flowchart TB\n  subgraph s0 ["A"]\n    s0a0["x<br/>y"]\n  end\n  subgraph s1 ["B"]\n    n{"c"}\n  end\n'
            '  s0 --> s1\n  s0a0 -.->|"catch: any error"| n\n  n -->|"status = OK"| s0a0\n')
    chart = chart_of(good)
    assert chart.parent == {"s0": None, "s0a0": "s0", "s1": None, "n": "s1"} and chart.lines("s0a0") == ["x", "y"]
    assert ("s0a0", "-.->", "catch: any error", "n") in chart.edges
    assert mermaid_problems(good.replace("  end\n", "", 1))
    assert mermaid_problems(good.replace('s0a0["x<br/>y"]', "s0a0[x y]"))  # unquoted label
    assert mermaid_problems(good.replace('s0a0["x<br/>y"]', 's0a0["a "b""]'))  # raw quote
    assert mermaid_problems(good.replace('s0a0["x<br/>y"]', 's0a0["<b>"]'))  # raw markup
    assert mermaid_problems(good.replace("s0a0", "web/storefront"))  # unsafe id
    assert mermaid_problems(good.replace("s0a0", "end"))  # reserved id
    assert mermaid_problems(good.replace("s0 --> s1", "s0 --> s9"))  # undeclared
    assert mermaid_problems(good.replace('|"status = OK"|', "|status = OK|"))  # unquoted edge label
    assert mermaid_problems(good.replace("flowchart TB", "stateDiagram-v2"))


def test_one_valid_mermaid_block_per_pipeline_and_the_state_machine(prod_doc, prod_config):
    blocks = _blocks(prod_doc)
    pipelines = len(prod_config["crossdeploy:services"]) + ("crossdeploy:release" in prod_config)
    assert len(blocks) == pipelines + ("crossdeploy:release" in prod_config)
    for block in blocks:
        assert mermaid_problems(block) == [], block
    assert "## crossdeploy-prod-web-storefront" in prod_doc
    assert '"ECR image<br/>web/storefront:latest"' in prod_doc


def _service_sections(doc: str, config: dict) -> list[str]:
    sections = [_section(doc, f"crossdeploy-prod-{s['name'].replace('/', '-')}")
                for s in config["crossdeploy:services"]]
    assert all("```mermaid" in s for s in sections)
    return sections


def test_mermaid_boxes_in_promotion_order_with_the_approval_first_in_prod(prod_doc, prod_config):
    prod_regions = next(e["regions"] for e in prod_config["crossdeploy:environments"] if e["name"] == "prod")
    for section in _service_sections(prod_doc, prod_config):
        chart = chart_of(_blocks(section)[0])
        titles = [chart.labels[g] for g in chart.subgraphs]
        assert titles == ["Source + Build", "test · rolling · rollback on failure",
                          "prod · canary · rollback on failure"]
        build, test, prod = chart.subgraphs
        # Boxes chained in promotion order, and nothing else crosses a box.
        assert [(a, b) for a, _, _, b in chart.edges if a in chart.subgraphs] == [(build, test), (test, prod)]
        assert all(chart.parent[a] == chart.parent[b] for a, _, _, b in chart.edges if a not in chart.subgraphs)

        sources = [n for n in chart.inside(build) if chart.lines(n)[0] in ("ECR image", "config")]
        builds = [n for n in chart.inside(build) if n not in sources]
        assert [chart.lines(n)[0] for n in sources] == ["ECR image", "config"]  # image and config, in parallel
        assert {(a, b) for a, _, _, b in chart.edges if chart.parent[a] == build} == {
            (s, b) for s in sources for b in builds}

        # Inside prod, in this order: approval, window, deployment with its smoke test, bake.
        approval, window, deploy, bake = chart.inside(prod)
        assert [(a, b) for a, _, _, b in chart.edges if chart.parent[a] == prod] == [
            (approval, window), (window, deploy), (deploy, bake)]
        assert chart.lines(approval) == ["manual approval"]
        assert chart.lines(window) == ["deployment window", "* * 9-16 ? * MON-THU *", "America/New_York"]
        assert chart.lines(deploy) == ["deploy engine", ", ".join(prod_regions), "smoke test on test traffic"]
        assert chart.lines(bake) == ["bake 20 min", "2 alarms watched"]
        (test_deploy,) = chart.inside(test)
        assert chart.lines(test_deploy) == ["deploy engine", "us-east-2", "smoke test after the rollout"]

        # The details the short labels leave out are in the table under the diagram, one row per node.
        rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| step")]
        assert len(rows) == sum(1 for i in chart.labels if i not in chart.subgraphs)
        assert re.search(r"\| Approve-prod · Approve \| Manual approval; notify notifications-topic-… "
                         r"\(assigned at deploy\) \|", section)
        assert re.search(r"\| Deploy-prod · Bake \| Bake · Lambda; 20 min: 2 alarms in us-east-2, us-west-2; "
                         r"read as role in \d{12}; alarm: stage fails \|", section)
        assert re.search(r"smoke test GET /\S* on test traffic \|$", section, re.M)
        assert re.search(r"\| Deploy-test · Deploy \| .*smoke test GET /\S* after the rollout \|$", section, re.M)


def test_mermaid_labels_stay_short_enough_to_read(prod_doc, prod_config):
    # Drawn at default size, the widest label sets the scale of the whole diagram: a few short lines per node.
    for section in _service_sections(prod_doc, prod_config):
        chart = chart_of(_blocks(section)[0])
        for id_ in chart.labels:
            lines = chart.lines(id_)
            assert len(lines) <= 4 and max(map(len, lines)) <= 40, (id_, lines)


def test_mermaid_run_order_within_a_stage():
    stages = [{"name": "Deploy-x", "actions": [
        {"name": "a", "category": "Deploy", "provider": "ECS", "region": "eu-west-1", "runOrder": 1,
         "roleArn": "arn:aws:iam::123456789012:role/r", "configuration": {"ClusterName": "c", "ServiceName": "s"}},
        {"name": "b", "category": "Test", "provider": "CodeBuild", "runOrder": 2, "configuration": {}},
    ]}]
    flow = p.pipeline_flow(stages, "us-east-1", {"123456789012": ["x"]})
    assert [n.shape for n in flow[0].nodes] == ["deploy", "action"]
    assert flow[0].nodes[0].lines == ("ECS · eu-west-1", "cluster c", "service s", "as role in 123456789012 (x)")
    text = p.render_mermaid(flow)
    assert "s0a0 --> s0a1" in text and mermaid_problems(text) == []


# --- the release state machine ---------------------------------------------------------------------------------


def _asl_states(states: dict, scope: tuple[str, ...] = ()):
    """(scope, name, state) of every state of an ASL definition, Map iterations included."""
    for name, state in states.items():
        yield scope, name, state
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from _asl_states(processor["States"], (*scope, name))


def test_release_state_machine_is_drawn_from_its_registered_definition(prod_doc, prod_plan):
    (machine,) = prod_plan.run.of_type(p.STATE_MACHINE_TYPE)
    definition = json.loads(machine.inputs["definition"])  # what Step Functions would receive
    section = _section(prod_doc, "State machine crossdeploy-prod-release")
    chart = chart_of(_blocks(section)[0])
    by_name = {chart.lines(i)[0].removesuffix(" · Map"): i for i in chart.labels}

    states = list(_asl_states(definition["States"]))
    assert len(states) > 20
    for scope, name, state in states:
        assert name in by_name, f"state {name} not drawn"
        node = by_name[name]
        # A Map is a box; the states of one iteration are drawn inside it.
        assert (node in chart.subgraphs) == (state["Type"] == "Map"), name
        assert chart.parent[node] == (by_name[scope[-1]] if scope else None), name
        assert f"| {' › '.join([*scope, name])} | {state['Type']} |" in section  # its row in the table
        edges = {(a, arrow, label, b) for a, arrow, label, b in chart.edges if a == node}
        if "Next" in state:
            assert (node, "-->", None, by_name[state["Next"]]) in edges, name
        for catcher in state.get("Catch", []):
            assert (node, "-.->", "catch: any error", by_name[catcher["Next"]]) in edges, name
        for rule in state.get("Choices", []):
            value = json.dumps(rule.get("BooleanEquals")) if "BooleanEquals" in rule else rule.get("StringEquals")
            assert (node, "-->", f"{rule['Variable'].rsplit('.', 1)[-1]} = {value}", by_name[rule["Next"]]) in edges
        if "Default" in state:
            assert (node, "-->", "otherwise", by_name[state["Default"]]) in edges, name

    # Any failure of the deploying Map (every account-region's tasks and services) goes the rollback's way; a
    # failure in Prepare changed nothing.
    catches = {(chart.labels[a], chart.labels[b]) for a, arrow, _, b in chart.edges if arrow == "-.->"}
    assert {("DeployGroups · Map", "SettleBeforeRollback<br/>wait 75 s"),
            ("Prepare<br/>Lambda task", "NotifyRejected<br/>Lambda task")} <= catches
    assert chart.lines(by_name["ServiceRolloutFailed"]) == ["ServiceRolloutFailed", "fails the Map"]
    assert chart.lines(by_name["ReleaseRolledBack"]) == ["ReleaseRolledBack", "execution fails"]
    start = by_name["start"]
    assert chart.edges[0] == (start, "-->", None, by_name[definition["StartAt"]])


def test_state_machine_drawing_handles_any_state_name_parallel_and_jsonata():
    definition = {"StartAt": "first step", "States": {
        "first step": {"Type": "Parallel", "Next": "end", "Branches": [
            {"StartAt": "end", "States": {"end": {"Type": "Pass", "End": True}}},
            {"StartAt": "b", "States": {"b": {"Type": "Wait", "Seconds": 5, "Next": "c"},
                                        "c": {"Type": "Succeed"}}}]},
        "end": {"Type": "Choice", "Choices": [{"Condition": "{% $states.input.ok %}", "Next": "done \"x\""},
                                              {"Variable": "$.n", "NumericGreaterThan": 3, "Next": "done \"x\""}],
                "Default": "end"},
        'done "x"': {"Type": "Fail", "Error": "Boom"}}}
    diagram, table = p.render_state_machine(definition)
    chart = chart_of(diagram)
    # "end" twice (a branch has its own scope) and a quote in a name: distinct, safe ids, escaped labels.
    ends = [i for i in chart.labels if chart.lines(i)[0] == "end"]
    assert len(ends) == 2 and len({chart.parent[i] for i in ends}) == 2
    assert [chart.labels[i] for i in chart.subgraphs] == ["first step · Parallel", "branch 1", "branch 2"]
    labels = {label for _, _, label, _ in chart.edges if label}
    assert labels == {"{% $states.input.ok %}", "n NumericGreaterThan 3", "otherwise"}
    assert "done #quot;x#quot;<br/>execution fails: Boom" in chart.labels.values()
    assert "| first step › branch 2 › b | Wait | 5 s |" in table


# --- names assigned at deploy ----------------------------------------------------------------------------------


def _resource(type_: str, name: str, inputs: dict, outputs: dict) -> Recorded:
    return Recorded(type_, name, inputs, {**inputs, **outputs}, True, None, "prov", "123456789012", "us-east-2")


def test_physical_names_mark_what_only_the_deployment_assigns():
    def shown(type_: str, name: str, inputs: dict, outputs: dict) -> str:
        return p.physical_name(_resource(type_, name, inputs, outputs))

    # Set by the program: as they are, even when they look like an auto-name.
    assert shown("aws:iam/role:Role", "r", {"name": "crossdeploy-prod-deploy"}, {}) == "crossdeploy-prod-deploy"
    assert shown("aws:s3/bucket:Bucket", "b", {"bucket": "team-logs-1a2b3c4"}, {}) == "team-logs-1a2b3c4"
    # AWS's own fixed name is real too.
    assert shown("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup", "vpc-default-sg", {}, {"name": "default"}) == \
        "default"
    # Pulumi's auto-names (logical name, "-", 7 random hex digits), shortened ones and prefixes; AWS's key ids.
    assert shown("aws:sns/topic:Topic", "notifications-topic", {}, {"name": "notifications-topic-a071602"}) == \
        "notifications-topic-… (assigned at deploy)"
    assert shown("aws:lb/loadBalancer:LoadBalancer", "workload-prod-us-east-2-alb", {},
                 {"name": "workload-prod-us-east-2--2d92f88"}) == "workload-prod-us-east-2-alb-… (assigned at deploy)"
    assert shown("aws:lb/targetGroup:TargetGroup", "tg", {"namePrefix": "blue-"}, {"name": "blue-0a1b2c"}) == \
        "blue-… (assigned at deploy)"
    assert shown("aws:kms/key:Key", "artifacts-key", {"multiRegion": True}, {"keyId": "mrk-" + "0" * 32}) == \
        "artifacts-key: mrk-… (assigned at deploy)"
    names = p.AssignedNames({"notifications-topic-a071602": "notifications-topic-…"})
    assert names.show("arn:aws:sns:us-east-2:111111111111:notifications-topic-a071602") == \
        "arn:aws:sns:us-east-2:111111111111:notifications-topic-… (assigned at deploy)"
    assert names.show("notifications-topic-a071602x") == "notifications-topic-a071602x"  # another name
    assert names.show("crossdeploy-prod-orders") == "crossdeploy-prod-orders"


def test_names_assigned_at_deploy_are_never_printed_as_real(prod_plan, prod_doc, prod_config):
    made_up = prod_plan.names.stand_ins
    assert any(v.startswith("notifications-topic-") for v in made_up)
    assert any(v.startswith("deploy-config-bucket-") for v in made_up)
    text = p.render_text(prod_plan)
    detail = p.render_text(prod_plan, detail=True)
    for value in made_up:
        for where, content in (("text", text), ("--detail", detail), ("diagrams", prod_doc)):
            assert value not in content, f"{value} printed as real in the {where}"

    outputs = text.split("\nStack outputs\n", 1)[1]
    topic = prod_plan.run.outputs["notificationTopicArn"].rsplit(":", 1)[0]
    assert f"  notificationTopicArn  {topic}:notifications-topic-… (assigned at deploy)\n" in outputs
    assert "  deployConfigBucket  deploy-config-bucket-… (assigned at deploy)\n" in outputs
    for region in prod_plan.run.outputs["artifactBuckets"]:
        assert re.search(rf"^    {region}  artifacts-{region}-bucket-… \(assigned at deploy\)$", outputs, re.M)
    assert re.search(r"^    prod/us-west-2  workload-prod-us-west-2-alb-…-\d+\.us-west-2\.elb\.amazonaws\.com "
                     r"\(assigned at deploy\)$", outputs, re.M)
    assert re.search(r"^      sns:Topic +1  notifications-topic-… \(…: assigned at deploy\)$", text, re.M)
    # Attachments carry their parent's made-up name: shown the same way.
    assert re.search(r"^      s3:BucketPolicy +2  artifacts-us-east-2-bucket-…, deploy-config-bucket-… "
                     r"\(…: assigned at deploy\)$", text, re.M)
    assert "        notifications-topic-… (assigned at deploy)\n" in detail

    # Names the program sets stay exactly as registered.
    _, envs, _ = _accounts(prod_config)
    for name in ("crossdeploy-prod-deploy", "crossdeploy-prod-orders", "crossdeploy-prod-release", "web/storefront"):
        assert re.search(rf"[ ,]{re.escape(name)}(,|$)", text, re.M), name
    for account in envs.values():
        role = f"arn:aws:iam::{account}:role/crossdeploy/prod/deploy/crossdeploy-prod-deploy"
        assert f"    {account}  {role}\n" in outputs
    assert "crossdeploy-prod-orders-imagedefs |" in prod_doc and "## State machine crossdeploy-prod-release" in prod_doc
    assert "releaseStateMachineArn  arn:aws:states:us-east-2:111111111111:stateMachine:crossdeploy-prod-release\n" in \
        outputs


# --- command line ----------------------------------------------------------------------------------------------


def _write_bad_stack(tmp_path: Path) -> Path:
    config = yaml.safe_load(PROD.read_text())
    config["config"]["crossdeploy:environments"][1]["requireAproval"] = True  # typo
    text = yaml.safe_dump(config, sort_keys=False).replace('accountId: \'111111111111\'', "accountId: 111111111111")
    assert "accountId: 111111111111\n" in text  # unquoted: YAML reads an int
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(text)
    return path


def test_bad_config_exits_2_with_every_problem(tmp_path):
    result = subprocess.run([sys.executable, "-m", "offline.plan", str(_write_bad_stack(tmp_path)),
                             "--out", str(tmp_path / "plan.md")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "2 problem(s)" in result.stderr
    assert "tools.accountId: expected a string (quote it in YAML), got 111111111111" in result.stderr
    assert "environments[1].requireAproval: unknown key" in result.stderr
    assert result.stdout == "" and not (tmp_path / "plan.md").exists()


def test_missing_or_unreadable_stack_file_exits_2(tmp_path, capsys):
    assert p.main([str(tmp_path / "Pulumi.gone.yaml")]) == 2
    assert "stack file not found" in capsys.readouterr().err
    broken = tmp_path / "Pulumi.broken.yaml"
    broken.write_text("config: {a: [\n")
    assert p.main([str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    listed = tmp_path / "Pulumi.list.yaml"
    listed.write_text("- a\n")
    assert p.main([str(listed)]) == 2
    assert "not a Pulumi stack file" in capsys.readouterr().err


def test_dev_end_to_end(tmp_path):
    out = tmp_path / "dev.md"
    result = subprocess.run([sys.executable, "-m", "offline.plan", "Pulumi.dev.yaml", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Offline plan: crossdeploy/dev")
    assert f"Mermaid diagrams (1 pipelines): {out}" in result.stdout
    blocks = _blocks(out.read_text())
    assert len(blocks) == 1 and mermaid_problems(blocks[0]) == []
    assert "Approve-" not in blocks[0]  # dev has no approval
    assert "## State machine" not in out.read_text()  # nor a release


def test_push_delivery_is_shown_in_text_and_diagram():
    from conftest import PROD, QA, config

    cfg = config(**{
        "crossdeploy:environments": [
            {"name": "qa", "accountId": QA, "regions": ["us-east-2"]},
            {"name": "prod", "accountId": PROD, "regions": ["us-east-2", "eu-west-1"], "pushTags": ["prod-*"]}],
        "crossdeploy:services": [{"name": "orders"}, {"name": "billing", "delivery": "push", "pushMode": "force"}],
    })
    plan = p.build_plan(run_program(cfg, stack="push"), "crossdeploy", "push")
    text = p.render_text(plan)
    assert "Push delivery (1 services" in text
    assert f"  billing (force): qa-* -> qa: {QA} us-east-2 crossdeploy/billing\n" in text
    assert (f"  billing (force): prod-* -> prod: {PROD} us-east-2 crossdeploy/billing; "
            f"{PROD} eu-west-1 crossdeploy/billing\n") in text
    diagram = p.render_push_mermaid(p.push_targets(plan.run))
    assert diagram.startswith("flowchart LR\n") and "fn --> t0" in diagram and "fn --> t1" in diagram
    assert mermaid_problems(diagram) == []
    assert "-#gt; prod" in diagram, "labels are escaped like the pipeline diagrams"
    assert [p_.outputs["name"] for p_ in plan.pipelines] == ["crossdeploy-push-orders"]


def test_release_context_is_written_for_pull_request_validation(tmp_path):
    out = tmp_path / "release-context.json"
    assert p.main(["prod", "--out", str(tmp_path / "plan.md"), "--release-context", str(out)]) == 0
    # The command writes the release state machine's diagram into the same document as the pipelines'.
    doc = (tmp_path / "plan.md").read_text()
    assert "\n## State machine crossdeploy-prod-release\n" in doc
    assert all(mermaid_problems(block) == [] for block in _blocks(doc))
    from handlers.release_file import load_context

    context = load_context(__import__("json").loads(out.read_text()))
    assert context is not None
    assert p.main(["dev", "--out", str(tmp_path / "dev.md"), "--release-context", str(out)]) == 2
