"""The offline diff (offline/diff.py, ``python -m offline.plan <stack> --diff <ref>``).

Two program runs serve most tests: OLD (orders in qa and prod) and NEW (prod gone, orders with another log level, cpu
and secret, a new payments service), diffed once by the pure :func:`offline.diff.diff_runs`. The command line and its
git worktree are exercised once on a temporary repository (a copy of this checkout); everything else is in-process.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROD, QA, TOOLS

from offline import diff as offline_diff
from offline import plan
from offline.diff import Diff, ResourceDiff, diff_runs, render_markdown, render_text
from offline.mocks import ProgramRun, Recorded, run_program

ROOT = Path(__file__).resolve().parents[1]
TASK_DEFINITION = "aws:ecs/taskDefinition:TaskDefinition"
DEPLOY_DOCUMENT = "aws:s3/bucketObjectv2:BucketObjectv2"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


def existing_vpc(n: int) -> dict:
    """An adopted VPC: fewer registrations than a new one, so the two runs stay fast."""
    return {"vpcId": f"vpc-0{n}aaaaaaaaaaaaaaa",
            "publicSubnetIds": [f"subnet-0{n}aaaaaaaaaaaaaa1", f"subnet-0{n}aaaaaaaaaaaaaa2"],
            "privateSubnetIds": [f"subnet-0{n}aaaaaaaaaaaaaa3"]}


def stack(environments: list[dict], services: list[dict]) -> dict:
    return {
        "aws:region": "us-east-2",
        "crossdeploy:tools": {"accountId": TOOLS, "region": "us-east-2"},
        "crossdeploy:environments": environments,
        "crossdeploy:services": services,
        "crossdeploy:notifications": {"emails": ["ops@example.com"]},
    }


QA_ENV = {"name": "qa", "accountId": QA, "regions": ["us-east-2"],
          "network": {"existingVpcs": {"us-east-2": existing_vpc(1)}}}
PROD_ENV = {"name": "prod", "accountId": PROD, "regions": ["us-east-2"], "requireApproval": True,
            "network": {"existingVpcs": {"us-east-2": existing_vpc(2)}}}
ORDERS = {"name": "orders", "cpu": 256, "memory": 512, "environment": {"LOG_LEVEL": "info", "REGION_HINT": "east"},
          "secrets": {"DB_PASSWORD": "orders/db"}}
OLD_CONFIG = stack([QA_ENV, PROD_ENV], [ORDERS])
NEW_CONFIG = stack([QA_ENV], [
    {**ORDERS, "cpu": 512, "memory": 1024, "environment": {"LOG_LEVEL": "debug", "REGION_HINT": "east"},
     "secrets": {"DB_PASSWORD": "orders/db-v2"}},
    {"name": "payments", "port": 8081, "routing": {"paths": ["/payments/*"], "priority": 20}},
])


@pytest.fixture(scope="module")
def old_run() -> ProgramRun:
    return run_program(OLD_CONFIG, stack="test")


@pytest.fixture(scope="module")
def new_run() -> ProgramRun:
    return run_program(NEW_CONFIG, stack="test")


@pytest.fixture(scope="module")
def changes(old_run, new_run) -> Diff:
    return diff_runs(old_run, new_run)


def only(diff: Diff, type_: str, name_part: str) -> ResourceDiff:
    found = [r for r in diff.resources if r.type == type_ and name_part in r.name]
    assert len(found) == 1, f"{len(found)} diffs of {type_} *{name_part}*: {[r.name for r in found]}"
    return found[0]


def paths(resource: ResourceDiff) -> dict[str, offline_diff.Change]:
    return {c.path: c for c in resource.changes}


# --------------------------------------------------------------------------------------------------------------
# diff_runs on the two runs
# --------------------------------------------------------------------------------------------------------------


def test_changed_env_var_shows_the_container_definition_path_and_the_deploy_document(changes):
    task = only(changes, TASK_DEFINITION, "qa-us-east-2-orders")
    change = paths(task)["containerDefinitions[0].environment[0].value"]
    assert (change.old, change.new) == ("info", "debug")
    # The deploy document (a JSON file in an asset archive) is diffed as JSON, at the same place inside it.
    document = only(changes, DEPLOY_DOCUMENT, "orders")
    assert document.op == "update"
    inside = [c for c in document.changes if c.path.startswith('source["deploy.json"].')
              and c.path.endswith("containerDefinitions[0].environment[0].value")]
    assert [(c.old, c.new) for c in inside] == [("info", "debug")]
    # The unchanged variable next to it is not reported.
    assert not any("environment[1]" in c.path for c in task.changes + document.changes)
    text = render_text(changes, "title")
    assert '~ containerDefinitions[0].environment[0].value: "info" → "debug"  (forces replacement)' in text


def test_cpu_change_replaces_the_task_definition(changes):
    task = only(changes, TASK_DEFINITION, "qa-us-east-2-orders")
    assert task.op == "replace"  # task definitions are immutable: a new revision
    cpu = paths(task)["cpu"]
    assert (cpu.old, cpu.new, cpu.replaces) == ("256", "512", True)
    # The ECS service ignores its taskDefinition (the pipeline owns it): no change there.
    assert not [r for r in changes.resources if r.type == "aws:ecs/service:Service" and "qa-us-east-2-orders" in r.name]


def test_new_service_is_added(changes):
    created = {r.name for r in changes.resources if r.op == "create"}
    assert {"registry-payments-us-east-2-repo", "pipeline-payments-pipeline", "deploy-config-payments",
            "workload-qa-us-east-2-payments-task"} <= created
    assert all(r.op == "create" for r in changes.resources if "payments" in r.name)


def test_removed_environment_is_deleted(changes, old_run):
    deleted = [r for r in changes.resources if r.op == "delete"]
    in_prod = {r.name for r in old_run.resources if r.account == PROD and r.type != "pulumi:providers:aws"}
    assert in_prod and in_prod <= {r.name for r in deleted}
    assert not [r for r in changes.resources if r.account == PROD and r.op != "delete"]
    # The orders deploy document loses its prod environment: one removal at its index, not a shifted list.
    document = only(changes, DEPLOY_DOCUMENT, "orders")
    removed = [c for c in document.changes if c.kind == "remove"]
    assert [c.path for c in removed] == ['source["deploy.json"].environments[1]']
    assert removed[0].old["name"] == "prod"


def test_changed_iam_statement_is_diffed_inside_the_policy(changes):
    policy = only(changes, ROLE_POLICY, f"{QA}-test-orders-execution")
    (change,) = policy.changes
    assert re.fullmatch(r"policy\.Statement\[\d+\]\.Resource\[0\]", change.path), change.path
    assert change.old.endswith(":secret:orders/db-??????") and change.new.endswith(":secret:orders/db-v2-??????")
    assert policy.op == "update"


def test_no_change_is_an_empty_diff(old_run):
    same = diff_runs(old_run, old_run)
    assert same.empty and same.unchanged == len(old_run.resources)
    assert "No changes." in render_text(same, "t")
    assert render_markdown(same, "crossdeploy/test", "main").startswith(
        "**crossdeploy/test**: no changes (0 to add, 0 to change, 0 to replace, 0 to delete)")


def test_mock_invented_names_are_not_changes(old_run, changes):
    # Another version of the mocks makes up other suffixes and ids: the diff must not care.
    invented = offline_diff.invented_runs(
        [(r, r.inputs, offline_diff.invented_outputs(r)) for r in old_run.resources])
    assert "artifacts-us-east-2-bucket" in invented.values()
    other = {run: hashlib.sha256(run.encode()).hexdigest()[: len(run)] for run in invented}
    pattern = re.compile("|".join(map(re.escape, sorted(other, key=len, reverse=True))))

    def swap(value):
        if isinstance(value, str):
            return pattern.sub(lambda m: other[m.group()], value)
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    remade = ProgramRun(resources=[
        Recorded(r.type, r.name, swap(offline_diff.plain(r.inputs, b"k")), swap(r.outputs), r.custom, r.parent,
                 r.provider, r.account, r.region, r.ignore_changes) for r in old_run.resources])
    assert remade.resources != old_run.resources
    assert diff_runs(old_run, remade, secret_key=b"k").empty
    # And no made-up hex is printed for a real change (here: the stack's new resources' neighbours).
    text = render_text(changes, "t") + render_markdown(changes, "s", "b")
    assert not [run for run in invented if run in text]


def test_masked_names_stay_distinct():
    # Two security groups' ids differ only in the made-up part: masking must keep them apart.
    def run(group: str) -> ProgramRun:
        sgs = [Recorded("aws:ec2/securityGroup:SecurityGroup", n, {"name": n}, {"name": n, "id": f"sg-{h}"}, True,
                        None, "p", TOOLS, "us-east-2") for n, h in (("a-sg", "1234567890abcdef1"),
                                                                     ("b-sg", "fedcba09876543210"))]
        svc = Recorded("aws:ecs/service:Service", "svc", {"securityGroups": [group]}, {}, True, None, "p", TOOLS,
                       "us-east-2")
        return ProgramRun(resources=[*sgs, svc])

    result = diff_runs(run("sg-1234567890abcdef1"), run("sg-fedcba09876543210"))
    (svc,) = result.resources
    assert [(c.old, c.new) for c in svc.changes] == [("sg-<a-sg>", "sg-<b-sg>")]


SECRET_PROGRAM = """\
import pulumi, pulumi_aws as aws
config = pulumi.Config("t")
provider = aws.Provider("p", region="us-east-2", allowed_account_ids=["111111111111"])
aws.ssm.Parameter("db", type="SecureString", value=config.require_secret("db"), description=config.require("d"),
                  opts=pulumi.ResourceOptions(provider=provider))
aws.lambda_.Function("fn", role="arn:aws:iam::111111111111:role/r", runtime="python3.12", handler="h.handler",
                     environment={"variables": {"TOKEN": pulumi.Output.secret(config.require("token"))}},
                     code=pulumi.AssetArchive({"h.py": pulumi.StringAsset(config.require("code"))}),
                     opts=pulumi.ResourceOptions(provider=provider))
"""


def test_secrets_are_masked(tmp_path):
    program = tmp_path / "secret_program.py"
    program.write_text(SECRET_PROGRAM)
    base = {"t:db": "hunter2", "t:d": "same", "t:token": "tok-1", "t:code": "def handler(e, c):\n    return 1\n"}
    before = run_program(base, program=program)
    after = run_program({**base, "t:db": "correct-horse", "t:token": "tok-2"}, program=program)
    result = diff_runs(before, after)
    text = render_text(result, "t") + render_markdown(result, "s", "b")
    for value in ("hunter2", "correct-horse", "tok-1", "tok-2"):
        assert value not in text
    changed = {c.path: c for r in result.resources for c in r.changes}
    assert set(changed) == {"value", "environment"}  # the secret moves up to the top-level property
    assert "~ value: [secret] → [secret]" in text
    # An unchanged secret is no change; the handler file is compared by content, as a text diff.
    assert diff_runs(before, run_program(base, program=program)).empty
    code = diff_runs(before, run_program({**base, "t:code": "def handler(e, c):\n    return 2\n"}, program=program))
    (fn,) = code.resources
    (change,) = fn.changes
    assert change.path == 'code["h.py"]' and "-    return 1" in change.lines and "+    return 2" in change.lines


def test_json_and_lists_are_structural():
    found: list[offline_diff.Change] = []
    old = {"policy": json.dumps({"Statement": [{"Sid": "A", "Action": ["s3:GetObject"]}, {"Sid": "B", "Action": "x"}]})}
    new = {"policy": json.dumps({"Statement": [{"Sid": "N", "Action": "y"}, {"Sid": "A", "Action": ["s3:GetObject"]},
                                               {"Sid": "B", "Action": "z"}]})}
    offline_diff.diff_values(offline_diff.structure(old), offline_diff.structure(new), "", found)
    assert [(c.kind, c.path) for c in found] == [("add", "policy.Statement[0]"),
                                                  ("update", "policy.Statement[2].Action")]
    buildspec = "version: 0.2\nphases:\n  build:\n    commands: [a, b]\n"
    found = []
    offline_diff.diff_values(offline_diff.structure({"source": {"buildspec": buildspec}}),
                             offline_diff.structure({"source": {"buildspec": buildspec.replace("b]", "c]")}}), "",
                             found)
    assert [(c.path, c.old, c.new) for c in found] == [("source.buildspec.phases.build.commands[1]", "b", "c")]


def test_domain_changes_that_aws_cannot_make_in_place_are_replacements():
    # A host added under prod's domain is a new certificate; moving the records to another zone, new records.
    cert, record = "aws:acm/certificate:Certificate", "aws:route53/record:Record"
    validation = "aws:acm/certificateValidation:CertificateValidation"
    assert offline_diff.forces_replacement(cert, "subjectAlternativeNames[1]")
    assert offline_diff.forces_replacement(cert, "domainName")
    assert not offline_diff.forces_replacement(cert, "tags.team")
    assert offline_diff.forces_replacement(validation, "validationRecordFqdns[0]")
    assert offline_diff.forces_replacement(record, "zoneId") and offline_diff.forces_replacement(record, "name")
    assert not offline_diff.forces_replacement(record, "aliases[0].evaluateTargetHealth")
    assert not offline_diff.forces_replacement(record, "setIdentifier")


# --------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------


def test_markdown_is_a_collapsible_comment(changes):
    text = render_markdown(changes, "crossdeploy/test", "origin/main")
    first = text.splitlines()[0]
    counts = re.search(r"(\d+) to add, (\d+) to change, (\d+) to replace, (\d+) to delete", first)
    assert counts, first
    assert tuple(map(int, counts.groups())) == tuple(changes.count(op) for op in ("create", "update", "replace",
                                                                                    "delete"))
    assert text.count("<details><summary>") == text.count("</details>") > 3
    replaced = re.search(r"<details><summary><code>\+- replace</code> aws:ecs/taskDefinition:TaskDefinition "
                         r"workload-qa-us-east-2-orders-task .*?</details>", text, re.S)
    assert replaced and '~ cpu: "256" → "512"' in replaced.group()
    assert re.search(r"<summary><code>-</code> \d+ to delete</summary>", text)
    assert re.search(r"<summary><code>\+</code> \d+ to add</summary>", text)
    # Cut at the limit, saying so, still well-formed.
    short = render_markdown(changes, "crossdeploy/test", "origin/main", limit=2_000)
    assert len(short) < 4_000 and "not shown" in short
    assert short.count("<details>") == short.count("</details>")


def test_markdown_fences_cannot_be_closed_by_a_value():
    resource = ResourceDiff("update", "t:x:Y", "r", "", None, None,
                            (offline_diff.Change("a", "update", "```\n</details>", "x"),))
    text = render_markdown(Diff((resource,), 0), "s", "b")
    assert "````diff" in text


# --------------------------------------------------------------------------------------------------------------
# The command line, on a temporary git repository
# --------------------------------------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git repository holding this checkout's files (as they are now) in one commit."""
    target = tmp_path_factory.mktemp("repo")
    files = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git(target, "init", "-q")
    git(target, "add", "-A")
    git(target, "commit", "-qm", "base")
    return target


def test_cli_diff_against_a_git_ref(repo):
    stack_file = repo / "Pulumi.dev.yaml"
    original = stack_file.read_text()
    changed = original.replace("      desiredCount: 1\n", "      desiredCount: 1\n      environment:\n"
                                                        "        LOG_LEVEL: debug\n")
    assert changed != original
    stack_file.write_text(changed)
    try:
        result = subprocess.run([sys.executable, "-m", "offline.plan", "dev", "--diff", "HEAD", "--format",
                                 "markdown"], cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    finally:
        stack_file.write_text(original)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("**crossdeploy/dev**: 0 to add, 1 to change, 1 to replace, 0 to delete"), first
    assert '+ containerDefinitions[0].environment[0]: {"name": "LOG_LEVEL", "value": "debug"}' in result.stdout
    # The temporary worktree is gone, and the user's working tree was never touched.
    assert len(git(repo, "worktree", "list", "--porcelain").split("\nworktree ")) == 1
    assert git(repo, "status", "--porcelain") == ""


def test_stack_missing_at_the_ref_is_all_additions(repo, old_run, monkeypatch, capsys):
    extra = repo / "Pulumi.extra.yaml"
    extra.write_text((repo / "Pulumi.dev.yaml").read_text())
    # The working tree side is not what this test is about: hand it a finished run instead of running the program.
    monkeypatch.setattr("offline.mocks.run_program", lambda *args, **kwargs: old_run)
    try:
        status = offline_diff.run_diff(extra, "extra", "crossdeploy", {}, "HEAD", root=repo)
    finally:
        extra.unlink()
    out = capsys.readouterr().out
    assert status == 0
    assert f"{len(old_run.resources)} to add, 0 to change, 0 to replace, 0 to delete" in out


def test_bad_stack_file_at_the_ref_exits_2(repo, old_run, monkeypatch, capsys):
    broken = repo / "Pulumi.broken.yaml"
    broken.write_text("config: [not, a, mapping\n")
    git(repo, "add", broken.name)
    git(repo, "commit", "-qm", "broken stack file")
    try:
        broken.write_text((repo / "Pulumi.dev.yaml").read_text())
        monkeypatch.setattr("offline.mocks.run_program", lambda *args, **kwargs: old_run)
        status = offline_diff.run_diff(broken, "broken", "crossdeploy", {}, "HEAD", root=repo)
    finally:
        git(repo, "reset", "-q", "--hard", "HEAD~1")
    assert status == 2
    assert "Pulumi.broken.yaml at HEAD" in capsys.readouterr().err


def test_bad_ref_exits_2(capsys):
    assert plan.main(["dev", "--diff", "no-such-ref-anywhere"]) == 2
    err = capsys.readouterr().err
    assert "'no-such-ref-anywhere' is not a commit" in err
    assert plan.main(["dev", "--diff=--upload-pack=evil"]) == 2  # never a git option
    assert "not a git ref" in capsys.readouterr().err


def test_bad_stack_file_exits_2_before_any_git(tmp_path, capsys):
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text("config: [1, 2\n")
    assert plan.main([str(bad), "--diff", "HEAD"]) == 2
    assert "Pulumi.bad.yaml" in capsys.readouterr().err


def test_format_needs_diff():
    with pytest.raises(SystemExit) as exc:
        plan.main(["dev", "--format", "markdown"])
    assert exc.value.code == 2


def test_plain_is_idempotent(old_run):
    data = [offline_diff.plain(r.inputs, b"k") for r in old_run.resources]
    assert [offline_diff.plain(d, b"k") for d in data] == data
    assert copy.deepcopy(data) == json.loads(json.dumps(data))
