"""The gitflow function on the Pulumi side (components/gitflow.py), in the prod stack (Pulumi.prod.yaml sets
``developBranch: develop``): the package AWS runs, the rule, the invoke permission, least privilege through the
access-flow evaluator, and a push to develop carried end to end through what the stack registers."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TOOLS, by_output, config, delivered, role_policy
from iam import allows, statements
from test_gitflow import MAIN_TIP, PUSHED, UPDATED, CodeCommit, pull_request

from components.config import ConfigError, namespace_values, parse
from handlers import gitflow
from handlers import release_file as rf
from offline import plan
from offline.mocks import ProgramRun, run_program

REPO_ARN = f"arn:aws:codecommit:us-east-2:{TOOLS}:platform-releases"
GITFLOW_CALLS = ("CreatePullRequest", "GetBranch", "GetCommentsForPullRequest", "GetFile", "GetPullRequest",
                 "ListPullRequests", "PostCommentForPullRequest")


def gitflow_function(run: ProgramRun):
    found = [f for f in run.of_type("aws:lambda/function:Function")
             if f.inputs["handler"] == "handlers.gitflow.handler"]
    assert len(found) == 1
    return found[0]


def gitflow_rule(run: ProgramRun):
    (rule,) = [r for r in run.of_type("aws:cloudwatch/eventRule:EventRule") if r.name.endswith("-gitflow-rule")]
    return rule


def test_the_package_is_the_handler_files_byte_for_byte_with_the_pipelines_context(prod_run) -> None:
    function = gitflow_function(prod_run)
    assets = function.inputs["code"].assets
    handlers = {name: Path(asset.path) for name, asset in assets.items() if name.startswith("handlers/")}
    assert all(path == ROOT / name for name, path in handlers.items())  # the repository's files themselves
    # The validator's files are the ones the pipeline's validator bundle carries, plus this function and the
    # handlers' shared log and retry settings.
    bundle = next(o for o in prod_run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
                  if "release-context.json" in (getattr(o.inputs.get("source"), "assets", None) or {}))
    bundled = {name for name in bundle.inputs["source"].assets if name.startswith("handlers/")}
    assert set(handlers) == bundled | {"handlers/gitflow.py", "handlers/ecs_common.py"}
    # The context the verdict uses is the one the pipeline's build step validates with, character for character.
    assert assets["release-context.json"].text == plan.release_context(prod_run)
    installed = {f"yaml/{p.name}": p.read_text() for p in Path(yaml.__file__).parent.glob("*.py")}
    assert {name: asset.text for name, asset in assets.items() if name.startswith("yaml/")} == installed
    assert (function.inputs["runtime"], function.account, function.region) == ("python3.12", TOOLS, "us-east-2")


def test_the_package_imports_on_its_own(prod_run, tmp_path) -> None:
    """Unpacked alone first on the path, as in Lambda: every handlers/ and yaml module must come from the package
    (a module the package lacks would be an ImportError in Lambda; here it is one too)."""
    for name, asset in gitflow_function(prod_run).inputs["code"].assets.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(Path(asset.path).read_text() if hasattr(asset, "path") else asset.text)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import handlers.gitflow as g; "
             "g.load_context(sys.argv[1] + '/release-context.json'); "
             "bad = [m.__name__ for m in list(sys.modules.values()) if m.__name__.split('.')[0] in ('handlers', 'yaml')"
             " and not (getattr(m, '__file__', '') or '').startswith(sys.argv[1])]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-I", "-c", probe, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rule_delivers_pushes_to_develop_of_the_release_repository_only(prod_run) -> None:
    rule = gitflow_rule(prod_run)
    pattern = json.loads(rule.inputs["eventPattern"])
    assert pattern["resources"] == [REPO_ARN]

    def variant(**detail) -> dict:
        out = copy.deepcopy(UPDATED)
        out["detail"].update(detail)
        return out

    develop = variant()
    created = variant(event="referenceCreated")
    main = variant(referenceName="main", referenceFullName="refs/heads/main")
    tag = variant(referenceType="tag", referenceFullName="refs/tags/develop")
    deleted = variant(event="referenceDeleted")
    other = {**variant(repositoryName="other"), "resources": [f"arn:aws:codecommit:us-east-2:{TOOLS}:other"]}
    arrived = delivered(pattern, [develop, created, main, tag, deleted, other])
    assert sorted(e["detail"]["event"] for e in arrived) == ["referenceCreated", "referenceUpdated"]
    assert all(e["detail"]["referenceName"] == "develop" for e in arrived)

    (target,) = [t for t in prod_run.of_type("aws:cloudwatch/eventTarget:EventTarget")
                 if t.inputs["rule"] == rule.outputs["name"]]
    function = gitflow_function(prod_run)
    assert target.inputs["arn"] == function.outputs["arn"]
    (permission,) = [p for p in prod_run.of_type("aws:lambda/permission:Permission")
                     if p.inputs["function"] == function.outputs["name"]]
    assert (permission.inputs["principal"], permission.inputs["sourceArn"], permission.inputs["action"]) == (
        "events.amazonaws.com", rule.outputs["arn"], "lambda:InvokeFunction")


def test_the_role_may_review_releases_in_that_one_repository_and_nothing_else(prod_run) -> None:
    function = gitflow_function(prod_run)
    role = by_output(prod_run, "arn", function.inputs["role"])
    policy = role_policy(prod_run, role)
    other_repo = f"arn:aws:codecommit:us-east-2:{TOOLS}:other-repository"
    for call in GITFLOW_CALLS:
        assert allows(policy, f"codecommit:{call}", REPO_ARN), call
        assert not allows(policy, f"codecommit:{call}", other_repo), call
    # Merging, pushing or approving is a person's decision (or the pipeline's): never this function's.
    for action in ("codecommit:MergePullRequestByFastForward", "codecommit:GitPush", "codecommit:DeleteBranch",
                   "codecommit:UpdatePullRequestApprovalState", "codecommit:PutFile"):
        assert not allows(policy, action, REPO_ARN), action
    # The context is in the package: no bucket, no key.
    assert not [s for s in statements(policy) if any(a.split(":")[0] in ("s3", "kms") for a in s["Action"])]
    (own_logs,) = [g for g in prod_run.of_type("aws:cloudwatch/logGroup:LogGroup")
                   if g.inputs["name"] == f"/aws/lambda/{function.outputs['name']}"]
    assert allows(policy, "logs:PutLogEvents", own_logs.outputs["arn"] + ":log-stream:x")
    assert not allows(policy, "logs:PutLogEvents", f"arn:aws:logs:us-east-2:{TOOLS}:log-group:/aws/lambda/x:*")
    (trust,) = statements(role.inputs["assumeRolePolicy"])
    assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}


def test_done_when_a_push_to_develop_opens_the_pull_request_with_the_verdict(prod_run) -> None:
    """Pulumi.prod.yaml's release repository: the function's own wiring and package, the shipped example release."""
    function = gitflow_function(prod_run)
    settings = gitflow.Settings.from_env(function.inputs["environment"]["variables"])
    context = rf.load_context(json.loads(function.inputs["code"].assets["release-context.json"].text))
    release = (ROOT / "examples" / "deployment.yaml").read_text()
    cc = CodeCommit()
    cc.no_pull_request()
    cc.creates()
    cc.file(release)
    cc.comments()
    event = copy.deepcopy(UPDATED)
    event["detail"]["commitId"] = PUSHED
    result = gitflow.handle_push(event, settings, cc.client, lambda: context)
    cc.stub.assert_no_pending_responses()
    assert result["status"] == "verdictPosted" and result["opened"] and result["valid"]
    (create,) = cc.of("CreatePullRequest")
    assert create["targets"] == [{"repositoryName": "platform-releases", "sourceReference": "develop",
                                  "destinationReference": "main"}]
    (post,) = cc.of("PostCommentForPullRequest")
    assert (post["beforeCommitId"], post["afterCommitId"]) == (MAIN_TIP, PUSHED) and "PASS: valid" in post["content"]
    assert pull_request()["pullRequestTargets"][0]["destinationReference"] == "refs/heads/main"
    # Merging is a push to main: the release pipeline's own trigger takes it from there.
    (trigger,) = [r for r in prod_run.of_type("aws:cloudwatch/eventRule:EventRule") if r.name == "release-trigger"]
    assert json.loads(trigger.inputs["eventPattern"])["detail"]["referenceName"] == ["main"]


@pytest.fixture(scope="module")
def without_develop_run() -> ProgramRun:
    return run_program(config(**{"crossdeploy:release": {"source": {"provider": "codecommit",
                                                                    "repository": "platform-releases"}}}),
                       stack="rel")


def test_no_gitflow_without_develop_branch(without_develop_run) -> None:
    assert without_develop_run.of_type("aws:codepipeline/pipeline:Pipeline")  # the release is there ...
    assert not [r for r in without_develop_run.custom() if "gitflow" in r.name]  # ... gitflow is not
    assert not [f for f in without_develop_run.of_type("aws:lambda/function:Function")
                if f.inputs["handler"] == "handlers.gitflow.handler"]


CODESTAR = {"provider": "codestar", "repository": "acme/releases",
            "connectionArn": "arn:aws:codeconnections:us-east-2:111111111111:connection/abc"}
BAD = {
    "same as branch": ({"provider": "codecommit", "repository": "r", "branch": "release", "developBranch": "release"},
                       "release.source.developBranch: 'release' is also release.source.branch"),
    "same as the default branch": ({"provider": "codecommit", "repository": "r", "developBranch": "main"},
                                   "release.source.developBranch: 'main' is also release.source.branch"),
    "codestar": ({**CODESTAR, "developBranch": "develop"},
                 "release.source.developBranch: 'develop' is for codecommit sources only"),
    "not a branch name": ({"provider": "codecommit", "repository": "r", "developBranch": "dev elop"},
                          "release.source.developBranch: expected a git branch name"),
    "a name git refuses": ({"provider": "codecommit", "repository": "r", "developBranch": "release/..x"},
                           "release.source.developBranch: not a valid git branch name"),
    "a .lock name": ({"provider": "codecommit", "repository": "r", "developBranch": "develop.lock"},
                     "release.source.developBranch: not a valid git branch name"),
    "not a string": ({"provider": "codecommit", "repository": "r", "developBranch": True},
                     "release.source.developBranch:"),
}


@pytest.mark.parametrize("source, expected", BAD.values(), ids=BAD.keys())
def test_develop_branch_config_errors_name_the_key_and_value(source, expected) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(namespace_values(config(**{"crossdeploy:release": {"source": source}})), project="crossdeploy",
              stack="t", aws_region="us-east-2")
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems
    if source.get("provider") == "codestar":
        message = next(p for p in caught.value.problems if p.startswith(expected))
        workflow = message.rsplit("run ", 1)[1].split()[0]
        assert (ROOT / workflow).is_file(), workflow  # the message points to the workflow that ships


def test_develop_branch_parses() -> None:
    cfg = parse(namespace_values(config(**{"crossdeploy:release": {"source": {
        "provider": "codecommit", "repository": "r", "developBranch": "develop"}}})), project="crossdeploy",
        stack="t", aws_region="us-east-2")
    assert cfg.release and (cfg.release.source.branch, cfg.release.source.develop_branch) == ("main", "develop")


def test_the_plan_shows_the_gitflow_from_push_to_release(prod_run) -> None:
    from test_plan import chart_of

    flow = plan.gitflow_flow(prod_run)
    assert flow == plan.GitflowFlow("platform-releases", "develop", "main", "deployment.yaml",
                                    "crossdeploy-prod-release")
    text = plan.render_text(plan.build_plan(prod_run, "crossdeploy", "prod"))
    section = text.split("Release gitflow (CodeCommit platform-releases; EventBridge -> gitflow Lambda)\n", 1)[1]
    assert section.startswith("\n".join(plan.gitflow_lines(flow)))
    assert "push to develop -> pull request develop -> main" in section
    assert "merge -> push to main -> release pipeline crossdeploy-prod-release" in section
    chart = chart_of(plan.render_gitflow_mermaid(flow))
    assert [(a, b) for a, _, _, b in chart.edges] == [("push", "fn"), ("fn", "pr"), ("pr", "pipe")]
    assert chart.lines("pipe") == ["release pipeline", "crossdeploy-prod-release"]


def test_no_gitflow_in_the_plan_without_develop_branch(without_develop_run) -> None:
    assert plan.gitflow_flow(without_develop_run) is None
