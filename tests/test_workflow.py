"""Offline checks of the pull-request workflow (.github/workflows/preview.yml).

Two layers:

* zizmor (static analyser for GitHub Actions) run fully offline, with its most
  thorough non-auditor persona, must report nothing;
* the security properties we rely on are asserted directly on the parsed YAML,
  so they hold even if a zizmor release changes what it reports.

Both layers are shown to have teeth: zizmor must flag a deliberately bad
workflow, and every property check must flag a workflow mutated to break it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "preview.yml"

# The README documents this exact command; CI must run the same one.
TEST_COMMAND = "python -m pytest -q -n auto"
LINT_COMMAND = "ruff check ."
STACKS = {"dev", "prod"}
# The virtualenv the Pulumi CLI runs the policy pack with (policy/PulumiPolicy.yaml's runtime option, from policy/).
POLICY_VENV = "policy/venv"

# Jobs and the only write scopes each may hold. Everything else is read or none.
WRITE_SCOPES_ALLOWED = {
    "checks": set(),
    "preview": {"id-token", "pull-requests"},
}

SHA_PINNED = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[^@\s]+)?@[0-9a-f]{40}$")
USES_LINE = re.compile(r"^\s*(-\s+)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$")

# zizmor flags, all offline. `--offline` forbids every network access (and so
# disables the online audits: impostor commits, known-vulnerable actions, ...);
# `--persona pedantic` adds code-smell audits to the regular ones; severity and
# confidence floors are at their lowest so nothing is filtered; `--no-config`
# and `--no-ignores` stop a zizmor.yml or an inline `# zizmor: ignore[...]` from
# silently hiding findings (a needed exception must be made here, in review);
# `--strict-collection` makes a workflow that fails schema validation an error
# instead of a warning followed by auditing nothing.
ZIZMOR_ARGS = [
    "--offline",
    "--no-config",
    "--no-ignores",
    "--strict-collection",
    "--no-progress",
    "--color=never",
    "--persona=pedantic",
    "--min-severity=informational",
    "--min-confidence=low",
    "--format=json",
]


# --------------------------------------------------------------------------- helpers


def load_workflow(path: Path = WORKFLOW) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def triggers(wf: dict) -> dict:
    # YAML 1.1 (PyYAML) reads the bare key `on` as boolean True.
    on = wf.get("on", wf.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {name: None for name in on}
    return dict(on or {})


def steps(job: dict) -> list[dict]:
    return list(job.get("steps") or [])


def action_name(step: dict) -> str:
    return str(step.get("uses", "")).split("@", 1)[0]


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in steps(job) if action_name(s) == action]


def all_uses(wf: dict) -> list[str]:
    refs = []
    for job in wf.get("jobs", {}).values():
        if "uses" in job:  # reusable workflow call
            refs.append(str(job["uses"]))
        refs.extend(str(s["uses"]) for s in steps(job) if "uses" in s)
    return refs


def is_true(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def find_zizmor() -> str:
    beside_python = Path(sys.executable).parent / ("zizmor.exe" if os.name == "nt" else "zizmor")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("zizmor")
    if found:
        return found
    pytest.fail("zizmor not found next to the interpreter or on PATH; `pip install -r requirements.txt`")


def run_zizmor(path: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in {"GH_TOKEN", "GITHUB_TOKEN", "ZIZMOR_GITHUB_TOKEN"}}
    env["ZIZMOR_OFFLINE"] = "true"
    env["NO_COLOR"] = "1"
    proc = subprocess.run(
        [find_zizmor(), *ZIZMOR_ARGS, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    # 0: no findings; 10-14: findings (exit code encodes the highest severity);
    # anything else (1, 2, ...) is a tool or usage error.
    assert proc.returncode == 0 or 10 <= proc.returncode <= 14, (
        f"zizmor failed (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    try:
        findings = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:  # pragma: no cover - diagnostic path
        pytest.fail(f"zizmor did not emit JSON ({exc}):\n{proc.stdout}\n{proc.stderr}")
    assert isinstance(findings, list), proc.stdout
    assert (proc.returncode == 0) == (not findings), "zizmor exit code and findings disagree"
    return findings


def describe(findings: list[dict]) -> str:
    lines = []
    for f in findings:
        det = f.get("determinations", {})
        where = []
        for loc in f.get("locations", []):
            start = loc.get("concrete", {}).get("location", {}).get("start_point", {})
            if "row" in start:
                where.append(f"line {start['row'] + 1}")
        lines.append(
            f"{f.get('ident')} [{det.get('severity')}/{det.get('confidence')}/{det.get('persona')}] "
            f"{f.get('desc')} at {', '.join(where) or '?'}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- zizmor


def test_zizmor_reports_no_findings():
    findings = run_zizmor(WORKFLOW)
    assert findings == [], "zizmor findings:\n" + describe(findings)


BAD_WORKFLOW = """\
name: bad
on:
  pull_request_target:
permissions: write-all
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          ref: ${{ github.event.pull_request.head.sha }}
      - run: echo "${{ github.event.pull_request.title }}"
"""


def test_zizmor_has_teeth(tmp_path):
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(BAD_WORKFLOW, encoding="utf-8")
    idents = {f["ident"] for f in run_zizmor(bad)}
    expected = {"dangerous-triggers", "excessive-permissions", "unpinned-uses", "template-injection", "artipacked"}
    assert expected <= idents, f"zizmor missed {sorted(expected - idents)}; reported {sorted(idents)}"


# --------------------------------------------------------------------------- property checks
# Each check returns a list of human-readable problems (empty = property holds).


def check_top_level_permissions_empty(wf: dict) -> list[str]:
    if "permissions" not in wf:
        return ["no top-level `permissions:` (defaults to the repository's, possibly write-all)"]
    if wf["permissions"] != {}:
        return [f"top-level permissions must be {{}}, got {wf['permissions']!r}"]
    return []


def check_job_permissions_least(wf: dict) -> list[str]:
    problems = []
    jobs = wf.get("jobs", {})
    if set(jobs) != set(WRITE_SCOPES_ALLOWED):
        problems.append(f"jobs are {sorted(jobs)}, expected {sorted(WRITE_SCOPES_ALLOWED)} (update this test)")
    for name, job in jobs.items():
        perms = job.get("permissions")
        if not isinstance(perms, dict):
            problems.append(f"job {name}: permissions must be an explicit mapping, got {perms!r}")
            continue
        if perms.get("contents") != "read":
            problems.append(f"job {name}: needs exactly `contents: read`, got {perms.get('contents')!r}")
        allowed = WRITE_SCOPES_ALLOWED.get(name, set())
        for scope, level in perms.items():
            if level not in {"read", "write", "none"}:
                problems.append(f"job {name}: {scope}: {level!r} is not a permission level")
            elif level == "write" and scope not in allowed:
                problems.append(f"job {name}: unneeded `{scope}: write`")
        for scope in allowed:
            if perms.get(scope) != "write":
                problems.append(f"job {name}: expected `{scope}: write`")
    return problems


def check_oidc_only_in_preview(wf: dict) -> list[str]:
    problems = []
    top = wf.get("permissions")
    if isinstance(top, str) or (isinstance(top, dict) and top.get("id-token") == "write"):
        problems.append("id-token write granted at workflow level")
    for name, job in wf.get("jobs", {}).items():
        perms = job.get("permissions")
        grants = perms == "write-all" or (isinstance(perms, dict) and perms.get("id-token") == "write")
        if grants and name != "preview":
            problems.append(f"job {name} can mint OIDC tokens (id-token: write)")
    preview = wf.get("jobs", {}).get("preview", {})
    aws = steps_using(preview, "aws-actions/configure-aws-credentials")
    if len(aws) != 1:
        problems.append("preview must configure AWS exactly once, with configure-aws-credentials")
    for step in aws:
        with_ = step.get("with") or {}
        if with_.get("role-to-assume") != "${{ vars.PREVIEW_ROLE_ARN }}":
            problems.append(f"role-to-assume must be vars.PREVIEW_ROLE_ARN, got {with_.get('role-to-assume')!r}")
        if "vars.AWS_REGION" not in str(with_.get("aws-region", "")):
            problems.append("aws-region must come from vars.AWS_REGION")
        static = {"aws-access-key-id", "aws-secret-access-key", "aws-session-token"} & set(with_)
        if static:
            problems.append(f"static AWS keys used instead of OIDC: {sorted(static)}")
    return problems


def check_uses_pinned(wf: dict) -> list[str]:
    problems = []
    for ref in all_uses(wf):
        if ref.startswith("./"):
            continue
        if ref.startswith("docker://"):
            if "@sha256:" not in ref:
                problems.append(f"{ref}: docker image not pinned by digest")
            continue
        if not SHA_PINNED.match(ref):
            problems.append(f"{ref}: not pinned to a full 40-hex commit SHA")
    return problems


def check_uses_have_version_comment(text: str) -> list[str]:
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        m = USES_LINE.match(line)
        if m and not m["ref"].startswith("./") and not re.search(r"#\s*v\d+(\.\d+)*\b", m["rest"]):
            problems.append(f"line {number}: `uses: {m['ref']}` has no `# vX.Y.Z` comment")
    return problems


def check_triggers(wf: dict) -> list[str]:
    on = triggers(wf)
    problems = []
    if set(on) != {"pull_request"}:
        problems.append(f"must trigger on pull_request only, got {sorted(map(str, on))}")
    branches = (on.get("pull_request") or {}).get("branches") if "pull_request" in on else None
    if branches != ["main"]:
        problems.append(f"pull_request must target main, got branches {branches!r}")
    return problems


def check_concurrency_and_timeouts(wf: dict) -> list[str]:
    problems = []
    conc = wf.get("concurrency")
    if not isinstance(conc, dict) or not is_true(conc.get("cancel-in-progress")):
        problems.append("workflow concurrency with cancel-in-progress: true is required")
    elif "github.event.pull_request.number" not in str(conc.get("group", "")):
        problems.append("concurrency group must be per pull request")
    for name, job in wf.get("jobs", {}).items():
        timeout = job.get("timeout-minutes")
        if not isinstance(timeout, int) or not 0 < timeout <= 60:
            problems.append(f"job {name}: timeout-minutes must be set (1..60), got {timeout!r}")
    return problems


def check_checkout_no_persisted_credentials(wf: dict) -> list[str]:
    problems = []
    for name, job in wf.get("jobs", {}).items():
        checkouts = steps_using(job, "actions/checkout")
        if not checkouts:
            problems.append(f"job {name}: no actions/checkout step")
        for step in checkouts:
            value = (step.get("with") or {}).get("persist-credentials")
            if value is not False and str(value).lower() != "false":
                problems.append(f"job {name}: checkout must set persist-credentials: false")
    return problems


def check_checks_job(wf: dict) -> list[str]:
    job = wf.get("jobs", {}).get("checks", {})
    runs = [str(s.get("run", "")).strip() for s in steps(job)]
    problems = []
    for command in ("pip install -r requirements.txt", LINT_COMMAND, TEST_COMMAND):
        if not any(command in run for run in runs):
            problems.append(f"checks job does not run `{command}`")
    if not any(r == TEST_COMMAND for r in runs):
        problems.append(f"checks job must run exactly `{TEST_COMMAND}` as its test step")
    pys = steps_using(job, "actions/setup-python")
    if not pys or any(
        str((s.get("with") or {}).get("python-version")) != "3.11" or (s.get("with") or {}).get("cache") != "pip"
        for s in pys
    ):
        problems.append("checks job must set up Python 3.11 with the pip cache")
    return problems


def check_preview_job(wf: dict) -> list[str]:
    job = wf.get("jobs", {}).get("preview", {})
    problems = []
    needs = job.get("needs")
    if needs != "checks" and (not isinstance(needs, list) or "checks" not in needs):
        problems.append("preview must need checks")
    stacks = ((job.get("strategy") or {}).get("matrix") or {}).get("stack")
    if not isinstance(stacks, list) or set(stacks) != STACKS:
        problems.append(f"matrix.stack must be {sorted(STACKS)}, got {stacks!r}")
    pulumi = steps_using(job, "pulumi/actions")
    if len(pulumi) != 1:
        return [*problems, f"preview must use pulumi/actions exactly once, found {len(pulumi)}"]
    step = pulumi[0]
    with_ = step.get("with") or {}
    if with_.get("command") != "preview":
        problems.append(f"pulumi command must be preview, got {with_.get('command')!r}")
    if not is_true(with_.get("comment-on-pr")):
        problems.append("comment-on-pr must be true")
    if not with_.get("github-token"):
        problems.append("github-token must be passed for the PR comment")
    stack_name = str(with_.get("stack-name", ""))
    if "matrix.stack" not in stack_name or "vars.PULUMI_ORG" not in stack_name:
        problems.append(f"stack-name must be vars.PULUMI_ORG/matrix.stack, got {stack_name!r}")
    if (step.get("env") or {}).get("PULUMI_ACCESS_TOKEN") != "${{ secrets.PULUMI_ACCESS_TOKEN }}":
        problems.append("PULUMI_ACCESS_TOKEN must come from secrets.PULUMI_ACCESS_TOKEN on the pulumi step")
    for scope, env in (("workflow", wf.get("env")), ("preview job", job.get("env"))):
        if env and "PULUMI_ACCESS_TOKEN" in env:
            problems.append(f"PULUMI_ACCESS_TOKEN exposed at {scope} level; keep it on the pulumi step")
    # Pulumi.yaml runs the program from .venv: deps must be installed there first.
    index = steps(job).index(step)
    installs = [
        s
        for s in steps(job)[:index]
        if ".venv" in str(s.get("run", "")) and "requirements.txt" in str(s.get("run", ""))
    ]
    if not installs:
        problems.append("requirements.txt must be installed into .venv before the pulumi step")
    # The CrossGuard policy pack runs with the preview (a mandatory violation fails it), under policy/venv
    # (policy/PulumiPolicy.yaml): the pack's own requirements must be installed there first.
    if "policy" not in re.split(r"[\s,;]+", str(with_.get("policyPacks") or "")):
        problems.append(f"the preview must run the policy pack (policyPacks: policy), got {with_.get('policyPacks')!r}")
    pack_installs = [
        s
        for s in steps(job)[:index]
        if POLICY_VENV in str(s.get("run", "")) and "policy/requirements.txt" in str(s.get("run", ""))
    ]
    if not pack_installs:
        problems.append(f"policy/requirements.txt must be installed into {POLICY_VENV} before the pulumi step")
    return problems


WORKFLOW_CHECKS: dict[str, Callable[[dict], list[str]]] = {
    "top-level permissions empty": check_top_level_permissions_empty,
    "least job permissions": check_job_permissions_least,
    "OIDC only in preview": check_oidc_only_in_preview,
    "uses pinned by SHA": check_uses_pinned,
    "pull_request only": check_triggers,
    "concurrency and timeouts": check_concurrency_and_timeouts,
    "checkout without persisted credentials": check_checkout_no_persisted_credentials,
    "checks job": check_checks_job,
    "preview job": check_preview_job,
}


@pytest.mark.parametrize("check", WORKFLOW_CHECKS.values(), ids=WORKFLOW_CHECKS.keys())
def test_workflow_property(check):
    problems = check(load_workflow())
    assert problems == [], "\n".join(problems)


def test_uses_have_version_comments():
    problems = check_uses_have_version_comment(WORKFLOW.read_text(encoding="utf-8"))
    assert problems == [], "\n".join(problems)


# --------------------------------------------------------------------------- teeth of the property checks


def _job(wf, name):
    return wf["jobs"][name]


def _step(wf, job, action):
    return steps_using(_job(wf, job), action)[0]


def _set_trigger(wf, value):
    wf.pop(True, None)
    wf["on"] = value


MUTATIONS: dict[str, tuple[Callable[[dict], None], Callable[[dict], list[str]]]] = {
    "top-level write-all": (lambda wf: wf.update(permissions="write-all"), check_top_level_permissions_empty),
    "top-level permissions missing": (lambda wf: wf.pop("permissions"), check_top_level_permissions_empty),
    "checks gets contents write": (
        lambda wf: _job(wf, "checks")["permissions"].update(contents="write"),
        check_job_permissions_least,
    ),
    "preview gets write-all": (
        lambda wf: _job(wf, "preview").update(permissions="write-all"),
        check_job_permissions_least,
    ),
    "preview gets actions write": (
        lambda wf: _job(wf, "preview")["permissions"].update(actions="write"),
        check_job_permissions_least,
    ),
    "checks gets id-token": (
        lambda wf: _job(wf, "checks")["permissions"].update({"id-token": "write"}),
        check_oidc_only_in_preview,
    ),
    "static AWS keys": (
        lambda wf: _step(wf, "preview", "aws-actions/configure-aws-credentials")["with"].update(
            {"aws-access-key-id": "${{ secrets.AWS_ACCESS_KEY_ID }}"}
        ),
        check_oidc_only_in_preview,
    ),
    "tag instead of SHA": (
        lambda wf: _step(wf, "checks", "actions/checkout").update(uses="actions/checkout@v4"),
        check_uses_pinned,
    ),
    "short SHA": (
        lambda wf: _step(wf, "preview", "pulumi/actions").update(uses="pulumi/actions@8582a9e"),
        check_uses_pinned,
    ),
    "pull_request_target": (lambda wf: _set_trigger(wf, {"pull_request_target": None}), check_triggers),
    "extra push trigger": (
        lambda wf: _set_trigger(wf, {"pull_request": {"branches": ["main"]}, "push": None}),
        check_triggers,
    ),
    "no cancel-in-progress": (
        lambda wf: wf["concurrency"].update({"cancel-in-progress": False}),
        check_concurrency_and_timeouts,
    ),
    "no job timeout": (lambda wf: _job(wf, "preview").pop("timeout-minutes"), check_concurrency_and_timeouts),
    "persisted checkout credentials": (
        lambda wf: _step(wf, "preview", "actions/checkout")["with"].pop("persist-credentials"),
        check_checkout_no_persisted_credentials,
    ),
    "different test command": (
        lambda wf: [s.update(run="pytest") for s in steps(_job(wf, "checks")) if s.get("run") == TEST_COMMAND],
        check_checks_job,
    ),
    "comment-on-pr off": (
        lambda wf: _step(wf, "preview", "pulumi/actions")["with"].update({"comment-on-pr": False}),
        check_preview_job,
    ),
    "prod stack dropped": (
        lambda wf: _job(wf, "preview")["strategy"]["matrix"].update(stack=["dev"]),
        check_preview_job,
    ),
    "pulumi up instead of preview": (
        lambda wf: _step(wf, "preview", "pulumi/actions")["with"].update(command="up"),
        check_preview_job,
    ),
    "token at job level": (
        lambda wf: _job(wf, "preview").update(env={"PULUMI_ACCESS_TOKEN": "${{ secrets.PULUMI_ACCESS_TOKEN }}"}),
        check_preview_job,
    ),
    "no .venv install": (
        lambda wf: _job(wf, "preview").update(
            steps=[s for s in steps(_job(wf, "preview")) if ".venv" not in str(s.get("run", ""))]
        ),
        check_preview_job,
    ),
    "policy pack dropped": (
        lambda wf: _step(wf, "preview", "pulumi/actions")["with"].pop("policyPacks"),
        check_preview_job,
    ),
    "no policy pack venv install": (
        lambda wf: _job(wf, "preview").update(
            steps=[s for s in steps(_job(wf, "preview")) if POLICY_VENV not in str(s.get("run", ""))]
        ),
        check_preview_job,
    ),
}


@pytest.mark.parametrize("mutation", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_property_checks_catch_broken_workflow(mutation):
    mutate, check = mutation
    wf = copy.deepcopy(load_workflow())
    assert check(wf) == [], "precondition: the real workflow passes this check"
    mutate(wf)
    assert check(wf), "the check did not notice the broken workflow"


def test_version_comment_check_has_teeth():
    text = "steps:\n  - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683\n"
    assert check_uses_have_version_comment(text)


# --------------------------------------------------------------------------- consistency with the project


def test_readme_documents_the_same_test_command():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md not written yet")
    assert TEST_COMMAND in readme.read_text(encoding="utf-8"), f"README must tell to run `{TEST_COMMAND}`"


def test_pulumi_project_uses_the_venv_the_workflow_fills():
    project = ROOT / "Pulumi.yaml"
    if not project.exists():
        pytest.skip("Pulumi.yaml not written yet")
    runtime = yaml.safe_load(project.read_text(encoding="utf-8")).get("runtime")
    assert isinstance(runtime, dict), f"Pulumi.yaml runtime should name its options, got {runtime!r}"
    assert runtime.get("name") == "python"
    options = runtime.get("options") or {}
    assert options.get("virtualenv") == ".venv", "the workflow installs requirements into .venv"
    assert options.get("toolchain", "pip") == "pip"


def test_policy_pack_uses_the_venv_the_workflow_fills():
    project = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text(encoding="utf-8"))
    runtime = project.get("runtime")
    assert isinstance(runtime, dict) and runtime.get("name") == "python", f"runtime python expected, got {runtime!r}"
    virtualenv = (runtime.get("options") or {}).get("virtualenv")
    assert f"policy/{virtualenv}" == POLICY_VENV, "the workflow installs the pack's requirements into policy/venv"
