"""Gitflow for a CodeCommit release repository (``release.source.developBranch``): a push to the develop branch opens
the pull request into the release branch unless one is open, and posts the release validator's verdict on it.

::

    push to develop --EventBridge rule (tools account, this one repository and branch)--> gitflow Lambda
        -> open pull request develop -> release branch (unless one is open)
        -> release_file.convert(deployment.yaml at the pushed commit, the release context) -> comment on the PR
    merge = push to the release branch --> the release pipeline's own trigger (components/release.py)

The function (``handlers/gitflow.py``) ships byte for byte from ``handlers/`` with the validator it calls, PyYAML's
pure-Python sources and ``release-context.json``: the same three things the pipeline's validator bundle carries,
so the verdict on the pull request is the verdict the pipeline's build step will reach. The context travels in
the package (as for the release steps), so the role needs no S3 or KMS access at all: only its own logs and the
pull-request calls on that one repository.

GitHub and other ``codestar`` sources: CodePipeline cannot open pull requests there; the release repository runs
``examples/release-gitflow.github-workflow.yml`` instead (see the README's "Gitflow").
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import yaml

from components import policies as p
from components.lambda_code import RUNTIME, handler_archive
from components.service_role import function_logs_and_role

HANDLER = "handlers.gitflow.handler"
HANDLERS = Path(__file__).resolve().parents[1] / "handlers"
# Every call handlers/gitflow.py makes, all on the one repository (each supports the repository resource type).
CODECOMMIT_ACTIONS = ("codecommit:CreatePullRequest", "codecommit:GetBranch", "codecommit:GetCommentsForPullRequest",
                      "codecommit:GetFile", "codecommit:GetPullRequest", "codecommit:ListPullRequests",
                      "codecommit:PostCommentForPullRequest")
PUSH_EVENTS = ("referenceCreated", "referenceUpdated")


@dataclass(frozen=True)
class GitflowArgs:
    provider: aws.Provider
    """Tools account provider in the home region (where the repository is)."""
    partition: str
    tools_account_id: str
    region: str
    repository: str
    """The CodeCommit repository name."""
    branch: str
    """The release branch: pull requests go into it."""
    develop_branch: str
    context: dict[str, Any]
    """The release context (``components.release.release_context``), as the pipeline's validator bundle has it."""
    function_name: str
    role_path: str
    file: str = "deployment.yaml"
    log_retention_days: int = 30
    timeout_seconds: int = 120
    """Listing open pull requests and reading each is one call per open pull request. Default 120."""
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.develop_branch == self.branch:
            raise ValueError(f"GitflowArgs: develop_branch {self.develop_branch!r} is the release branch")

    @property
    def repository_arn(self) -> str:
        return p.arn(self.partition, "codecommit", self.region, self.tools_account_id, self.repository)


def handler_modules(entry: str = "gitflow.py") -> tuple[str, ...]:
    """``handlers/`` files the function imports, followed through every ``handlers.*`` import (the validator's own
    helpers included): the package can never lack one the validator starts to use."""
    found = {"__init__.py"}
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        for node in ast.walk(ast.parse((HANDLERS / name).read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            if isinstance(node, ast.ImportFrom) and node.module == "handlers":
                names = [f"handlers.{alias.name}" for alias in node.names]
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            pending += [f"{n.split('.')[1]}.py" for n in names if n.startswith("handlers.")]
    return tuple(sorted(found))


def package_documents(context: dict[str, Any]) -> dict[str, str]:
    """What goes into the package beside the handler files: the context as the validator bundle serialises it and
    PyYAML's pure-Python package (Lambda's Python runtime has boto3, not PyYAML)."""
    yaml_dir = Path(yaml.__file__).parent
    return {"release-context.json": json.dumps(context, indent=1, sort_keys=True),
            **{f"yaml/{path.name}": path.read_text() for path in sorted(yaml_dir.glob("*.py"))}}


def event_pattern(args: GitflowArgs) -> dict[str, Any]:
    """Pushes to the develop branch of this one repository (branch created or moved; not deleted, not tags)."""
    return {"source": ["aws.codecommit"], "detail-type": ["CodeCommit Repository State Change"],
            "resources": [args.repository_arn],
            "detail": {"event": list(PUSH_EVENTS), "referenceType": ["branch"],
                       "referenceName": [args.develop_branch]}}


def function_policy(args: GitflowArgs, log_group_arn: pulumi.Input[str]) -> dict[str, Any]:
    return p.document([
        p.statement("WriteOwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                    [pulumi.Output.concat(log_group_arn, ":*")]),
        p.statement("ReviewReleasesInTheReleaseRepository", list(CODECOMMIT_ACTIONS), [args.repository_arn]),
    ])


class Gitflow(pulumi.ComponentResource):
    """The develop-branch rule, the function that opens the pull request and posts the verdict, its role and logs."""

    def __init__(self, name: str, args: GitflowArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:gitflow:Gitflow", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        log_group, role, role_policy = function_logs_and_role(
            name, function_name=args.function_name, role_name=args.function_name, path=args.role_path,
            account_id=args.tools_account_id, retention_days=args.log_retention_days,
            policy=lambda log_group_arn: function_policy(args, log_group_arn), opts=child)
        function = aws.lambda_.Function(
            f"{name}-function", name=args.function_name,
            description=f"crossdeploy gitflow: {args.develop_branch} -> pull request into {args.branch}, with the "
                        "release validator's verdict",
            runtime=RUNTIME, architectures=["arm64"], handler=HANDLER,
            code=handler_archive(handler_modules(), documents=package_documents(args.context)),
            role=role.arn, timeout=args.timeout_seconds, memory_size=256,
            environment=aws.lambda_.FunctionEnvironmentArgs(variables={
                "CROSSDEPLOY_REPOSITORY": args.repository, "CROSSDEPLOY_DEVELOP_BRANCH": args.develop_branch,
                "CROSSDEPLOY_RELEASE_BRANCH": args.branch, "CROSSDEPLOY_RELEASE_FILE": args.file,
                "CROSSDEPLOY_ACCOUNT_ID": args.tools_account_id, "CROSSDEPLOY_HOME_REGION": args.region,
                "CROSSDEPLOY_PARTITION": args.partition}),
            tags=args.tags,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[log_group, role_policy])))
        rule = aws.cloudwatch.EventRule(
            f"{name}-rule", description=f"Pushes to {args.develop_branch} of {args.repository}: open the release "
                                        "pull request and post the validator's verdict",
            event_pattern=json.dumps(event_pattern(args)), opts=child)
        aws.lambda_.Permission(
            f"{name}-invoke", action="lambda:InvokeFunction", function=function.name,
            principal="events.amazonaws.com", source_arn=rule.arn, opts=child)
        aws.cloudwatch.EventTarget(
            f"{name}-target", rule=rule.name, arn=function.arn,
            # EventBridge retries a delivery Lambda throttles for up to an hour, and Lambda retries a failed
            # asynchronous invocation twice: the handler is idempotent, so no retry opens a second pull request or
            # posts a verdict twice.
            retry_policy=aws.cloudwatch.EventTargetRetryPolicyArgs(maximum_event_age_in_seconds=3600,
                                                                   maximum_retry_attempts=10),
            opts=child)

        self.function_arn = function.arn
        self.rule_arn = rule.arn
        self.register_outputs({"functionArn": function.arn, "ruleArn": rule.arn})
