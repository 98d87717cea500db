"""The offline plan (``python -m offline.plan``): grouping by account and region, the Mermaid pipeline diagrams,
and clean failures for bad stack files.

The prod stack runs once under the mocks for the whole module; expected accounts are read from the stack file here
(the plan itself must derive them from the registrations, so this cross-checks the two).
"""

from __future__ import annotations

import itertools
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
def prod_plan(prod_config) -> p.Plan:
    return p.build_plan(run_program(prod_config, stack="prod"), "crossdeploy", "prod")


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
    assert len(grouped[home]["kms:Key"]) == 2  # the artifacts key (multi-region) and the notifications key
    assert any(k.startswith("mrk-") for k in grouped[home]["kms:Key"])
    for region in replicas:
        assert "codepipeline:Pipeline" not in grouped[region]
        assert grouped[region]["kms:ReplicaKey"] == [k for k in grouped[home]["kms:Key"] if k.startswith("mrk-")]
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
        assert "(2 NAT)" in row and "HTTP:8443" in row  # per-AZ NAT by default, the test listener


def test_mermaid_marks_each_stage_with_its_strategy_and_the_config_source(prod_plan):
    doc = p.render_mermaid_doc("t", prod_plan.pipelines, prod_plan.env_by_account, p.engine_environments(prod_plan.run))
    block = doc.split("## crossdeploy-prod-orders", 1)[1].split("```mermaid", 1)[1].split("```", 1)[0]
    assert mermaid_problems(block) == []
    assert "S3 · us-east-2<br/>deploy document (config as of this run)<br/>services/orders/deploy.zip" in block
    assert 'subgraph s4 ["Deploy-prod · canary · rollback on failure"]' in block
    assert "deploy engine · Lambda<br/>prod: canary in us-east-2, us-west-2" in block
    assert 'subgraph s2 ["Deploy-test · rolling · rollback on failure"]' in block


def test_mermaid_marks_codedeploy_stages():
    stages = [{"name": "Deploy-prod", "actions": [
        {"name": "CodeDeploy-us-west-2", "category": "Deploy", "provider": "CodeDeployToECS", "region": "us-west-2",
         "roleArn": "arn:aws:iam::123456789012:role/r",
         "configuration": {"ApplicationName": "crossdeploy-prod-prod", "DeploymentGroupName": "orders"}}]}]
    flow = p.pipeline_flow(stages, "us-east-2", {"123456789012": ["prod"]})
    assert flow[0].title == "Deploy-prod · CodeDeploy blue/green"
    assert flow[0].nodes[0].lines[:3] == ("CodeDeploy blue/green · us-west-2", "app crossdeploy-prod-prod",
                                          "group orders")


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
_SHAPE_NODE = re.compile(rf"^({_ID})(?:\(\[{_LABEL}\]\)|\[{_LABEL}\]|\{{\{{{_LABEL}\}}\}}|\{{{_LABEL}\}})$")
_SUBGRAPH = re.compile(rf"^subgraph ({_ID}) \[{_LABEL}\]$")
_EDGE = re.compile(rf"^({_ID}) --> ({_ID})$")


def mermaid_problems(block: str) -> list[str]:
    """A strict, offline check of the subset of Mermaid the plan writes: balanced subgraphs, safe identifiers,
    quoted labels without raw markup, edges only between declared ids."""
    lines = [line.strip() for line in block.strip().splitlines()]
    problems = [] if lines and lines[0] == "flowchart LR" else ["first line must be 'flowchart LR'"]
    declared: set[str] = set()
    edges: list[tuple[str, str]] = []
    depth = 0
    for number, line in enumerate(lines[1:], start=2):
        if match := _SUBGRAPH.match(line):
            depth += 1
            ids = [match.group(1)]
        elif line == "end":
            depth -= 1
            if depth < 0:
                problems.append(f"line {number}: 'end' without subgraph")
            continue
        elif match := _SHAPE_NODE.match(line):
            ids = [match.group(1)]
        elif match := _EDGE.match(line):
            edges.append((match.group(1), match.group(2)))
            continue
        else:
            problems.append(f"line {number}: not a quoted node, subgraph, end or edge: {line!r}")
            continue
        for id_ in ids:
            if id_.lower() in _RESERVED:
                problems.append(f"line {number}: reserved word as id: {id_!r}")
            if id_ in declared:
                problems.append(f"line {number}: id declared twice: {id_!r}")
            declared.add(id_)
    if depth:
        problems.append(f"{depth} subgraph(s) without 'end'")
    problems += [f"edge to undeclared id: {a} --> {b}" for a, b in edges if a not in declared or b not in declared]
    return problems


def _blocks(doc: str) -> list[str]:
    return re.findall(r"^```mermaid\n(.*?)^```$", doc, re.M | re.S)


def test_mermaid_checker_has_teeth():
    good = 'flowchart LR\n  subgraph s0 ["A"]\n    s0a0["x<br/>y"]\n  end\n  subgraph s1 ["B"]\n  end\n  s0 --> s1\n'
    assert mermaid_problems(good) == []
    assert mermaid_problems(good.replace("  end\n", "", 1))
    assert mermaid_problems(good.replace('s0a0["x<br/>y"]', "s0a0[x y]"))  # unquoted label
    assert mermaid_problems(good.replace('s0a0["x<br/>y"]', 's0a0["a "b""]'))  # raw quote
    assert mermaid_problems(good.replace('s0a0["x<br/>y"]', 's0a0["<b>"]'))  # raw markup
    assert mermaid_problems(good.replace("s0a0", "web/storefront"))  # unsafe id
    assert mermaid_problems(good.replace("s0a0", "end"))  # reserved id
    assert mermaid_problems(good.replace("s0 --> s1", "s0 --> s9"))  # undeclared


def test_one_valid_mermaid_block_per_pipeline(prod_doc, prod_config):
    blocks = _blocks(prod_doc)
    assert len(blocks) == len(prod_config["crossdeploy:services"]) + ("crossdeploy:release" in prod_config)
    for block in blocks:
        assert mermaid_problems(block) == [], block
    assert "## crossdeploy-prod-web-storefront" in prod_doc
    assert '"ECR · us-east-2<br/>web/storefront:latest"' in prod_doc


def test_mermaid_stages_in_order_with_approval_before_prod(prod_doc, prod_config):
    prod_regions = next(e["regions"] for e in prod_config["crossdeploy:environments"] if e["name"] == "prod")
    service_blocks = [b for b in _blocks(prod_doc) if "ECR · " in b]
    assert len(service_blocks) == len(prod_config["crossdeploy:services"])
    for block in service_blocks:
        titles = re.findall(r'^\s*subgraph (\w+) \["([^"]*)"\]$', block, re.M)
        test_title = "Deploy-test · rolling · rollback on failure"
        prod_title = "Deploy-prod · canary · rollback on failure"
        assert [t for _, t in titles] == ["Source", "Build", test_title, "Approve-prod", prod_title]
        ids = [i for i, _ in titles]
        chain = [edge for edge in re.findall(r"^\s*(\w+) --> (\w+)$", block, re.M) if edge[0] in ids]
        assert chain == list(itertools.pairwise(ids))
        sections = dict(zip([t for _, t in titles], re.split(r"^\s*subgraph .*$", block, flags=re.M)[1:],
                            strict=True))
        assert "{{\"Manual approval" in sections["Approve-prod"]
        # One engine action per environment covers all its regions at once.
        prod = re.findall(r'^\s*\w+\["deploy engine · Lambda<br/>prod: canary in ([a-z0-9, -]+)<br/>',
                          sections[prod_title], re.M)
        assert prod == [", ".join(prod_regions)]
        # The window holds the deployment, the bake follows it, the smoke test runs inside it.
        assert re.search(r'(\w+)\{\{"deployment window<br/>\* \* 9-16 \? \* MON-THU \*<br/>America/New_York"\}\}',
                         sections[prod_title])
        assert re.search(r'\["Bake · Lambda<br/>20 min: 2 alarms in us-east-2, us-west-2<br/>read as role in \d{12}',
                         sections[prod_title])
        assert "smoke test GET " in sections[prod_title] and "on test traffic" in sections[prod_title]
        assert "after the rollout" in sections[test_title]
        assert "ECR · us-east-2" in sections["Source"] and "deploy document" in sections["Source"]
        assert re.search(r"test: rolling in us-east-2<br/>", sections[test_title])


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
    assert "-#gt; prod" in diagram, "labels are escaped like the pipeline diagrams"
    assert [p_.outputs["name"] for p_ in plan.pipelines] == ["crossdeploy-push-orders"]


def test_release_context_is_written_for_pull_request_validation(tmp_path):
    out = tmp_path / "release-context.json"
    assert p.main(["prod", "--out", str(tmp_path / "plan.md"), "--release-context", str(out)]) == 0
    from handlers.release_file import load_context

    context = load_context(__import__("json").loads(out.read_text()))
    assert context is not None
    assert p.main(["dev", "--out", str(tmp_path / "dev.md"), "--release-context", str(out)]) == 2
