"""Offline checks of the pull-request workflows (.github/workflows/preview.yml, and preview-comment.yml, which
posts preview.yml's offline diff).

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
COMMENT_WORKFLOW = ROOT / ".github" / "workflows" / "preview-comment.yml"

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
    "offline-diff": set(),  # runs the PR's code, forks included: read-only, no secrets
}
# The offline diff's artifact, and the command that fills it (per stack, against the PR's base branch).
DIFF_ARTIFACT = "offline-diff"
DIFF_COMMAND = re.compile(r'python -m offline\.plan "\$(?P<var>\w+)" --diff "origin/\$BASE_REF" --format markdown')
# preview-comment.yml's one job and exactly the permissions it holds: download the triggering run's artifact, comment.
COMMENT_PERMISSIONS = {"actions": "read", "pull-requests": "write"}
# A script line that would run code the PR controls: an installer or build tool, a module or file run by path, a sourced
# file. (python3 reading its program from this workflow's own heredoc is fine.)
RUNS_CODE = re.compile(r"^\s*(pip3?|npm|npx|yarn|make|source|\.|bash|sh|chmod|git)\s"
                       r"|python3? -m |\./|\$RUNNER_TEMP/\S*\.(sh|py)")

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


def check_offline_diff_job(wf: dict) -> list[str]:
    """The diff job runs PR code (forks too): nothing to steal, every stack diffed against the base, one artifact."""
    job = wf.get("jobs", {}).get("offline-diff", {})
    problems = []
    if job.get("permissions") != {"contents": "read"}:
        problems.append(f"offline-diff must hold exactly contents: read, got {job.get('permissions')!r}")
    if "secrets." in json.dumps(job) or "id-token" in json.dumps(job.get("permissions")):
        problems.append("offline-diff runs the PR's code: it must see no secrets and mint no OIDC token")
    if job.get("if"):
        problems.append("offline-diff must run for every PR, forks included (no `if:`)")
    checkouts = steps_using(job, "actions/checkout")
    if len(checkouts) != 1 or (checkouts[0].get("with") or {}).get("fetch-depth") != 0:
        problems.append("offline-diff must check out once with fetch-depth: 0 (the base branch to diff against)")
    runs = [str(s.get("run", "")) for s in steps(job)]
    if not any("pip install -r requirements-dev.txt" in run for run in runs):
        problems.append("offline-diff must install requirements-dev.txt")
    diff_steps = [s for s in steps(job) if DIFF_COMMAND.search(str(s.get("run", "")))]
    if len(diff_steps) != 1:
        return [*problems, f"offline-diff must run `{DIFF_COMMAND.pattern}` in one step, found {len(diff_steps)}"]
    env = diff_steps[0].get("env") or {}
    if env.get("BASE_REF") != "${{ github.base_ref }}":
        problems.append("BASE_REF must come from github.base_ref, through the environment")
    if set(str(env.get("STACKS", "")).split()) != STACKS:
        problems.append(f"the diff must cover every stack {sorted(STACKS)}, got {env.get('STACKS')!r}")
    if "${{" in str(diff_steps[0].get("run")):
        problems.append("no expressions in the diff script: values go through env")
    uploads = steps_using(job, "actions/upload-artifact")
    if len(uploads) != 1 or (uploads[0].get("with") or {}).get("name") != DIFF_ARTIFACT:
        problems.append(f"offline-diff must upload one artifact named {DIFF_ARTIFACT}")
    elif steps(job).index(uploads[0]) < steps(job).index(diff_steps[0]):
        problems.append("the artifact must be uploaded after the diff")
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
    "offline diff job": check_offline_diff_job,
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
    "offline diff gets pull-requests write": (
        lambda wf: _job(wf, "offline-diff")["permissions"].update({"pull-requests": "write"}),
        check_offline_diff_job,
    ),
    "offline diff sees a secret": (
        lambda wf: _job(wf, "offline-diff").update(env={"PULUMI_ACCESS_TOKEN": "${{ secrets.PULUMI_ACCESS_TOKEN }}"}),
        check_offline_diff_job,
    ),
    "offline diff skips forks": (
        lambda wf: _job(wf, "offline-diff").update({"if": "github.event.pull_request.head.repo.fork == false"}),
        check_offline_diff_job,
    ),
    "offline diff without the base branch": (
        lambda wf: _step(wf, "offline-diff", "actions/checkout")["with"].pop("fetch-depth"),
        check_offline_diff_job,
    ),
    "offline diff drops prod": (
        lambda wf: [s["env"].update(STACKS="dev") for s in steps(_job(wf, "offline-diff")) if "STACKS" in
                    (s.get("env") or {})],
        check_offline_diff_job,
    ),
    "offline diff injects the base ref": (
        lambda wf: [s.update(run=s["run"].replace("$BASE_REF", "${{ github.base_ref }}")) for s in
                    steps(_job(wf, "offline-diff")) if "BASE_REF" in str(s.get("run", ""))],
        check_offline_diff_job,
    ),
    "offline diff not uploaded": (
        lambda wf: _job(wf, "offline-diff").update(
            steps=[s for s in steps(_job(wf, "offline-diff")) if action_name(s) != "actions/upload-artifact"]),
        check_offline_diff_job,
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


# --------------------------------------------------------------------------- preview-comment.yml
# workflow_run runs with a write token in the base repository's context: it must stay data-only.


def test_comment_workflow_zizmor_reports_only_its_trigger():
    # The one reviewed exception: zizmor flags every workflow_run trigger ("almost always used insecurely"), and
    # --no-ignores leaves no way to mark this use as reviewed. Everything that makes it safe is asserted below.
    findings = run_zizmor(COMMENT_WORKFLOW)
    assert [f["ident"] for f in findings] == ["dangerous-triggers"], "zizmor findings:\n" + describe(findings)


def comment_job(wf: dict) -> dict:
    return (wf.get("jobs") or {}).get("comment") or {}


def check_comment_trigger(wf: dict) -> list[str]:
    on = triggers(wf)
    problems = []
    if set(on) != {"workflow_run"}:
        problems.append(f"must trigger on workflow_run only, got {sorted(map(str, on))}")
    run = on.get("workflow_run") or {}
    preview_name = load_workflow().get("name")
    if run.get("workflows") != [preview_name] or run.get("types") != ["completed"]:
        problems.append(f"must follow completed runs of {preview_name!r} only, got {run!r}")
    if "github.event.workflow_run.event == 'pull_request'" not in str(comment_job(wf).get("if", "")):
        problems.append("the comment job must run only for pull_request runs")
    return problems


def check_comment_permissions(wf: dict) -> list[str]:
    problems = check_top_level_permissions_empty(wf)
    if set(wf.get("jobs") or {}) != {"comment"}:
        problems.append(f"expected the one job `comment`, got {sorted(wf.get('jobs') or {})}")
    if comment_job(wf).get("permissions") != COMMENT_PERMISSIONS:
        problems.append(f"comment must hold exactly {COMMENT_PERMISSIONS}, got {comment_job(wf).get('permissions')!r}")
    return problems


def check_comment_runs_no_pr_code(wf: dict) -> list[str]:
    problems = []
    for name, job in (wf.get("jobs") or {}).items():
        for step in steps(job):
            uses = str(step.get("uses", ""))
            if uses and action_name(step) != "actions/download-artifact":
                problems.append(f"job {name}: `uses: {uses}`: no checkout and no other action in this workflow")
            if uses.startswith("./"):
                problems.append(f"job {name}: a local action runs the PR's code")
            script = str(step.get("run", ""))
            if "${{" in script:
                problems.append(f"job {name}: expression in a script (template injection): go through env")
            for line in script.splitlines():
                if RUNS_CODE.search(line):
                    problems.append(f"job {name}: `{line.strip()}`: nothing from the PR or its artifact may run here")
        if "secrets." in json.dumps(job):
            problems.append(f"job {name}: no secrets: the token is github.token")
    return problems


def check_comment_pr_from_event(wf: dict) -> list[str]:
    """The PR number comes from the event's head commit, not from anything the PR's run produced."""
    problems = []
    job = comment_job(wf)
    finders = [s for s in steps(job) if s.get("id") == "pr"]
    if len(finders) != 1:
        return ["the comment job must find the PR in a step with id `pr`"]
    env = finders[0].get("env") or {}
    if env.get("HEAD_SHA") != "${{ github.event.workflow_run.head_sha }}":
        problems.append("the PR must be matched on github.event.workflow_run.head_sha")
    if DIFF_ARTIFACT in json.dumps(finders[0]) or steps(job).index(finders[0]) != 0:
        problems.append("the PR must be found first, before and without the artifact")
    posting = [s for s in steps(job) if "PR_NUMBER" in (s.get("env") or {})]
    if not posting or any(s["env"]["PR_NUMBER"] != "${{ steps.pr.outputs.number }}" for s in posting):
        problems.append("PR_NUMBER must be steps.pr.outputs.number")
    return problems


COMMENT_CHECKS: dict[str, Callable[[dict], list[str]]] = {
    "workflow_run of preview, pull requests only": check_comment_trigger,
    "least permissions": check_comment_permissions,
    "runs no PR code": check_comment_runs_no_pr_code,
    "PR number from the event": check_comment_pr_from_event,
    "uses pinned by SHA": check_uses_pinned,
}


@pytest.mark.parametrize("check", COMMENT_CHECKS.values(), ids=COMMENT_CHECKS.keys())
def test_comment_workflow_property(check):
    problems = check(load_workflow(COMMENT_WORKFLOW))
    assert problems == [], "\n".join(problems)


def test_comment_workflow_has_timeout_and_concurrency():
    wf = load_workflow(COMMENT_WORKFLOW)
    assert 0 < comment_job(wf).get("timeout-minutes", 0) <= 10
    assert is_true((wf.get("concurrency") or {}).get("cancel-in-progress"))
    assert check_uses_have_version_comment(COMMENT_WORKFLOW.read_text(encoding="utf-8")) == []


def _comment_step(wf, step_id):
    return next(s for s in steps(comment_job(wf)) if s.get("id") == step_id)


# A stand-in for the runner's gh CLI: answers the three API reads from files, "downloads" a prepared artifact, and
# keeps the body it is asked to post.
FAKE_GH = """#!/bin/bash
echo "$*" >> "$FAKE/calls"
case "$*" in
  *" repos/o/r/pulls "*) cat "$FAKE/pulls" ;;
  *"/artifacts "*) cat "$FAKE/artifacts" ;;
  "run download "*) mkdir -p "${@: -1}" && cp -R "$FAKE/artifact/." "${@: -1}" ;;
  *"/comments --jq"*) cat "$FAKE/existing" ;;
  *"body=@"*) last="${@: -1}"; cp "${last#body=@}" "$FAKE/posted" ;;
  *) echo "unexpected gh $*" >&2; exit 1 ;;
esac
"""


class Expressions:
    """The ``${{ }}`` expressions a runner expands in a job: the event's values and earlier steps' outputs."""

    def __init__(self, event: dict[str, str]) -> None:
        self.event = event
        self.outputs: dict[str, dict[str, str]] = {}

    def value(self, expression: str) -> str:
        expression = expression.strip()
        if expression.startswith("steps."):
            _, step, _, key = expression.split(".")
            return self.outputs.get(step, {}).get(key, "")
        return self.event[expression]

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{\{(.*?)\}\}", lambda m: self.value(m.group(1)), text)

    def run(self, step: dict, env: dict[str, str], output: Path, *, cwd: Path | None = None,
            timeout: int = 30) -> subprocess.CompletedProcess:
        """Run ``step``'s script with bash as the runner does (``-eo pipefail``), its ``env:`` expanded over
        ``env``, ``GITHUB_OUTPUT`` at ``output``; keeps the step's outputs for later expressions."""
        output.write_text("")
        own = {k: self.expand(str(v)) for k, v in (step.get("env") or {}).items()}
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=cwd,
                              env={**env, "GITHUB_OUTPUT": str(output), **own}, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if step.get("id"):
            self.outputs[step["id"]] = dict(line.split("=", 1) for line in output.read_text().splitlines())
        return done


def run_comment_job(tmp_path: Path, pulls: str, artifact: dict[str, str], existing: str = "") -> Path:
    """Run preview-comment.yml's steps with bash as the runner would (env from the event, step outputs, `if:`),
    against a fake gh; returns the fake's directory (calls, posted body)."""
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "gh").write_text(FAKE_GH)
    (fake / "bin" / "gh").chmod(0o755)
    (fake / "pulls").write_text(pulls)
    (fake / "artifacts").write_text("99\n" if artifact else "")
    (fake / "existing").write_text(existing)
    (fake / "artifact").mkdir()
    for name, text in artifact.items():
        (fake / "artifact" / name).write_text(text)
    event = {
        "github.token": "token", "github.repository": "o/r",
        "github.event.workflow_run.head_repository.owner.login": "forker",
        # A branch name is the PR author's to choose: it must never run.
        "github.event.workflow_run.head_branch": 'x";touch "$FAKE/pwned',
        "github.event.workflow_run.head_sha": "a" * 40, "github.event.workflow_run.id": "1",
        "github.event.workflow_run.html_url": "https://github.com/o/r/actions/runs/1",
    }
    expressions = Expressions(event)
    for step in steps(comment_job(load_workflow(COMMENT_WORKFLOW))):
        condition = str(step.get("if", "")).strip()
        if condition:
            left, _, right = condition.partition("==")
            actual = expressions.value(left)
            if (actual != right.strip().strip("'")) if right else not actual:
                continue
        env = {"PATH": f"{fake / 'bin'}:{os.environ['PATH']}", "FAKE": str(fake), "RUNNER_TEMP": str(tmp_path)}
        done = expressions.run(step, env, tmp_path / f"output-{step.get('id', 'post')}")
        assert done.returncode == 0, done.stderr
    assert not (fake / "pwned").exists()
    return fake


MARKER = "<!-- crossdeploy:offline-diff -->"


def test_comment_job_posts_the_artifact_as_data(tmp_path):
    fake = run_comment_job(tmp_path, pulls="7\n", artifact={
        "dev.md": f"**crossdeploy/dev**: 1 to add {MARKER}\n", "prod.md": "x" * 100_000, "evil.sh": "exit 1"})
    body = (fake / "posted").read_text()
    assert body.startswith(MARKER) and body.count(MARKER) == 1  # the artifact cannot forge the marker
    assert "**crossdeploy/dev**: 1 to add" in body and "evil" not in body
    assert len(body) < 65_536  # GitHub's limit for a comment, however large the artifact
    calls = (fake / "calls").read_text()
    assert "head=forker:x" in calls and "--method POST repos/o/r/issues/7/comments" in calls


def test_comment_job_updates_its_comment(tmp_path):
    fake = run_comment_job(tmp_path, pulls="7\n", artifact={"dev.md": "d", "prod.md": "p"}, existing="123\n")
    assert "--method PATCH repos/o/r/issues/comments/123" in (fake / "calls").read_text()


@pytest.mark.parametrize("pulls, artifact", [("", {"dev.md": "d"}), ("7\n8\n", {"dev.md": "d"}), ("7\n", {})],
                         ids=["no PR has that head", "several PRs", "no artifact"])
def test_comment_job_posts_nothing_without_one_pr_and_an_artifact(tmp_path, pulls, artifact):
    fake = run_comment_job(tmp_path, pulls=pulls, artifact=artifact)
    assert not (fake / "posted").exists()


COMMENT_MUTATIONS: dict[str, tuple[Callable[[dict], None], Callable[[dict], list[str]]]] = {
    "pull_request_target": (lambda wf: _set_trigger(wf, {"pull_request_target": None}), check_comment_trigger),
    "any workflow": (lambda wf: _set_trigger(wf, {"workflow_run": {"workflows": ["*"]}}), check_comment_trigger),
    "push runs too": (lambda wf: comment_job(wf).pop("if"), check_comment_trigger),
    "contents write": (lambda wf: comment_job(wf)["permissions"].update(contents="write"), check_comment_permissions),
    "top-level write-all": (lambda wf: wf.update(permissions="write-all"), check_comment_permissions),
    "checks out the PR": (
        lambda wf: comment_job(wf)["steps"].insert(0, {
            "uses": "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683",
            "with": {"ref": "${{ github.event.workflow_run.head_sha }}", "persist-credentials": False}}),
        check_comment_runs_no_pr_code,
    ),
    "runs the artifact": (
        lambda wf: comment_job(wf)["steps"].append({"run": 'bash "$RUNNER_TEMP/offline-diff/dev.md"'}),
        check_comment_runs_no_pr_code,
    ),
    "injects the branch": (
        lambda wf: comment_job(wf)["steps"].append({"run": "echo ${{ github.event.workflow_run.head_branch }}"}),
        check_comment_runs_no_pr_code,
    ),
    "uses a secret": (
        lambda wf: _comment_step(wf, "pr")["env"].update(GH_TOKEN="${{ secrets.PAT }}"),
        check_comment_runs_no_pr_code,
    ),
    "PR number from the artifact": (
        lambda wf: [s["env"].update(PR_NUMBER="${{ env.ARTIFACT_PR }}") for s in steps(comment_job(wf))
                    if "PR_NUMBER" in (s.get("env") or {})],
        check_comment_pr_from_event,
    ),
    "PR not matched on the head commit": (
        lambda wf: _comment_step(wf, "pr")["env"].pop("HEAD_SHA"),
        check_comment_pr_from_event,
    ),
    "unpinned download": (
        lambda wf: comment_job(wf)["steps"].append({"uses": "actions/download-artifact@v4"}),
        check_uses_pinned,
    ),
}


@pytest.mark.parametrize("mutation", COMMENT_MUTATIONS.values(), ids=COMMENT_MUTATIONS.keys())
def test_comment_checks_catch_broken_workflow(mutation):
    mutate, check = mutation
    wf = copy.deepcopy(load_workflow(COMMENT_WORKFLOW))
    assert check(wf) == [], "precondition: the real workflow passes this check"
    mutate(wf)
    assert check(wf), "the check did not notice the broken workflow"


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
