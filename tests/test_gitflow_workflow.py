"""The gitflow workflow shipped for GitHub release repositories (examples/release-gitflow.github-workflow.yml),
checked like crossdeploy's own workflows (tests/test_workflow.py): zizmor offline and pedantic, pinned actions,
least permissions, no template injection; then its steps run with bash as the runner would, against a fake ``gh``
and the real validator, on a real git repository."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SAMPLES
from test_release_file import CONTEXT, extended_seed
from test_workflow import (
    USES_LINE,
    WORKFLOW,
    Expressions,
    all_uses,
    check_uses_have_version_comment,
    check_uses_pinned,
    describe,
    run_zizmor,
    steps,
    triggers,
)

from components.config import GITFLOW_WORKFLOW
from handlers import release_file as rf

GITFLOW = ROOT / GITFLOW_WORKFLOW
MARKER = "<!-- crossdeploy:release-verdict -->"
PERMISSIONS = {"contents": "read", "pull-requests": "write"}
NOT_RUN = {"Install the validator's one dependency"}  # pip from PyPI: the test's interpreter already has PyYAML


def load(text: str | None = None) -> dict:
    return yaml.safe_load(text if text is not None else GITFLOW.read_text(encoding="utf-8"))


def job(wf: dict) -> dict:
    (only,) = wf["jobs"].values()
    return only


def check_permissions(wf: dict) -> list[str]:
    problems = []
    if wf.get("permissions") != {}:
        problems.append(f"top-level permissions must be {{}}, got {wf.get('permissions')!r}")
    if [j.get("permissions") for j in wf["jobs"].values()] != [PERMISSIONS]:
        problems.append(f"one job with exactly {PERMISSIONS}")
    return problems


def check_trigger(wf: dict) -> list[str]:
    expected = {"push": {"branches": [wf["env"]["DEVELOP_BRANCH"]]}}
    return [] if triggers(wf) == expected else [f"trigger must be {expected}, got {triggers(wf)}"]


def check_no_expressions_in_scripts(wf: dict) -> list[str]:
    # Values reach scripts through env only: an expression in a script is text substituted into shell code.
    return [f"step {s.get('name')!r}: ${{{{ }}}} in its script" for s in steps(job(wf)) if "${{" in s.get("run", "")]


def check_checkouts(wf: dict) -> list[str]:
    problems = []
    for step in steps(job(wf)):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            with_ = step.get("with") or {}
            if with_.get("persist-credentials") is not False:
                problems.append(f"{step.get('name')}: persist-credentials must be false")
            if "repository" in with_ and with_.get("ref") != "${{ vars.CROSSDEPLOY_REF }}":
                problems.append(f"{step.get('name')}: the validator must be checked out at vars.CROSSDEPLOY_REF")
    return problems


def check_pins(wf: dict) -> list[str]:
    # The same pins as crossdeploy's own workflow, so a reviewed bump of one is a bump of both.
    ours = {ref.split("@")[0]: ref for ref in all_uses(yaml.safe_load(WORKFLOW.read_text(encoding="utf-8")))}
    return check_uses_pinned(wf) + [f"{ref}: pinned differently from {WORKFLOW.name}" for ref in all_uses(wf)
                                    if ref.split("@")[0] in ours and ours[ref.split("@")[0]] != ref]


CHECKS = {"permissions": check_permissions, "trigger": check_trigger, "scripts": check_no_expressions_in_scripts,
          "checkouts": check_checkouts, "pins": check_pins}


def test_zizmor_reports_no_findings() -> None:
    findings = run_zizmor(GITFLOW)
    assert findings == [], "zizmor findings:\n" + describe(findings)


def test_zizmor_has_teeth_here(tmp_path) -> None:
    bad = tmp_path / "release-gitflow.yml"
    injected = 'echo "${{ github.event.head_commit.message }}"'
    bad.write_text(GITFLOW.read_text().replace('echo "number=$number"', injected))
    assert "template-injection" in {f["ident"] for f in run_zizmor(bad)}


@pytest.mark.parametrize("check", CHECKS.values(), ids=CHECKS.keys())
def test_workflow_property(check) -> None:
    assert check(load()) == []
    assert check_uses_have_version_comment(GITFLOW.read_text(encoding="utf-8")) == []
    assert any(USES_LINE.match(line) for line in GITFLOW.read_text().splitlines())


MUTATIONS = {
    "write-all": (check_permissions, lambda wf: wf.__setitem__("permissions", "write-all")),
    "contents write": (check_permissions, lambda wf: job(wf)["permissions"].__setitem__("contents", "write")),
    "push to main": (check_trigger, lambda wf: wf["on" if "on" in wf else True].__setitem__("push", {
        "branches": ["main"]})),
    "expression in a script": (check_no_expressions_in_scripts, lambda wf: steps(job(wf))[-1].__setitem__(
        "run", "echo ${{ github.event.head_commit.message }}")),
    "persisted credentials": (check_checkouts, lambda wf: steps(job(wf))[1]["with"].pop("persist-credentials")),
    "validator at a branch": (check_checkouts, lambda wf: steps(job(wf))[2]["with"].__setitem__("ref", "main")),
    "tag pin": (check_pins, lambda wf: steps(job(wf))[1].__setitem__("uses", "actions/checkout@v4")),
}


@pytest.mark.parametrize("check, mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_property_checks_have_teeth(check, mutate) -> None:
    wf = copy.deepcopy(load())
    mutate(wf)
    assert check(wf)


# ------------------------------------------------------------------------------------------- the steps, run

FAKE_GH = """#!/bin/bash
echo "$*" >> "$FAKE/calls"
case "$*" in
  "api --method GET repos/o/r/pulls "*) cat "$FAKE/pulls" ;;
  "api repos/o/r/compare/"*) cat "$FAKE/ahead" ;;
  "api --method POST repos/o/r/pulls "*) echo 12 ;;
  *"/comments --jq"*) cat "$FAKE/existing" ;;
  *"body=@"*) last="${@: -1}"; cp "${last#body=@}" "$FAKE/posted" ;;
  *) echo "unexpected gh $*" >&2; exit 1 ;;
esac
"""


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def run_workflow(tmp_path: Path, release: str, *, pulls: str = "", ahead: str = "3", existing: str = "",
                 pin: str = "a" * 40, context: bool = True) -> tuple[Path, str | None, str]:
    """Run the job's scripts in order as the runner would (env, step outputs, `if:`), in a git checkout of a release
    repository with main (holding the context) and develop (holding ``release``). Returns the fake's directory,
    the name of the step that failed (None: the job passed) and the head commit."""
    fake, work = tmp_path / "fake", tmp_path / "work"
    (fake / "bin").mkdir(parents=True)
    work.mkdir()
    for name, text in {"gh": FAKE_GH, "python": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n'}.items():
        (fake / "bin" / name).write_text(text)
        (fake / "bin" / name).chmod(0o755)
    for name, text in {"pulls": pulls, "ahead": ahead, "existing": existing}.items():
        (fake / name).write_text(text)
    git(work, "init", "-q", "-b", "main")
    if context:
        (work / ".crossdeploy").mkdir()
        (work / ".crossdeploy" / "release-context.json").write_text(json.dumps(CONTEXT))
    (work / "README").write_text("releases\n")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "main")
    git(work, "update-ref", "refs/remotes/origin/main", "HEAD")
    git(work, "checkout", "-qb", "develop")
    (work / "deployment.yaml").write_text(release)
    (work / "handlers").mkdir()  # a release repository's own "handlers" package must never shadow the validator
    (work / "handlers" / "__init__.py").write_text("raise SystemExit('the release repository ran its own code')\n")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "release")
    head = git(work, "rev-parse", "HEAD")
    (work / ".crossdeploy-tools").symlink_to(ROOT)

    wf = load()
    event = {"github.token": "token", "github.repository": "o/r", "github.repository_owner": "o", "github.sha": head,
             "vars.CROSSDEPLOY_REF": pin}
    expressions = Expressions(event)
    for step in steps(job(wf)):
        if "run" not in step or any(step["name"].startswith(n) for n in NOT_RUN):
            continue
        condition = str(step.get("if", "")).strip()
        if condition and not expressions.value(condition):
            continue
        env = {"PATH": f"{fake / 'bin'}:{os.environ['PATH']}", "FAKE": str(fake), "RUNNER_TEMP": str(tmp_path),
               "HOME": str(tmp_path), **wf["env"]}
        done = expressions.run(step, env, tmp_path / f"output-{step.get('id', 'x')}", cwd=work, timeout=60)
        if done.returncode != 0:
            return fake, step["name"], head
    return fake, None, head


def test_a_push_opens_the_pull_request_and_posts_a_passing_verdict(tmp_path) -> None:
    fake, failed, head = run_workflow(tmp_path, extended_seed())
    assert failed is None
    calls = (fake / "calls").read_text()
    assert "head=o:develop" in calls and "base=main" in calls
    assert "--method POST repos/o/r/pulls -f head=develop -f base=main" in calls
    assert "--method POST repos/o/r/issues/12/comments" in calls
    body = (fake / "posted").read_text()
    assert body.startswith(MARKER) and head in body and "PASS" in body
    assert "deployment.yaml: valid" in body  # the validator's own summary line


def test_a_later_push_updates_the_verdict_with_the_validators_messages_and_fails(tmp_path) -> None:
    seed = (SAMPLES / "deployment.yaml").read_text(encoding="utf-8")
    fake, failed, _ = run_workflow(tmp_path, seed, pulls="7\n", existing="55\n")
    calls = (fake / "calls").read_text()
    assert "-f head=develop" not in calls and "compare" not in calls  # the open pull request is reused
    assert "--method PATCH repos/o/r/issues/comments/55" in calls
    assert failed == "Fail on an invalid release file"  # the commit's check is red too
    body = (fake / "posted").read_text()
    problems = rf.validate(seed, rf.load_context(CONTEXT), "deployment.yaml")
    assert "FAIL" in body and problems
    for problem in problems:
        assert str(problem) in body


def test_develop_level_with_main_opens_nothing_and_a_missing_context_is_no_pass(tmp_path) -> None:
    fake, failed, _ = run_workflow(tmp_path, extended_seed(), ahead="0\n", context=False)
    calls = (fake / "calls").read_text()
    assert "--method POST" not in calls and not (fake / "posted").exists()
    assert failed == "Fail on an invalid release file"
    assert "no release context" in (tmp_path / "verdict.txt").read_text()


def test_an_unpinned_validator_is_refused_first(tmp_path) -> None:
    fake, failed, _ = run_workflow(tmp_path, extended_seed(), pin="main")
    assert failed == "Check the validator pin" and not (fake / "calls").exists()
