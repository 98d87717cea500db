"""Gitflow for a CodeCommit release repository: a push to ``developBranch`` opens the pull request into the release
branch (unless one is open already) and posts the release validator's verdict on the pushed commit as a comment.

Lambda entry point: ``handlers.gitflow.handler``, triggered by EventBridge ("CodeCommit Repository State Change",
``referenceCreated``/``referenceUpdated`` of the develop branch; CodeCommit user guide, "Monitoring CodeCommit events
in EventBridge"). Merging the pull request is a push to the release branch, which starts the release pipeline.

* The verdict is the release pipeline's own: :func:`handlers.release_file.convert` (what the pipeline's build step
  runs) on the release file at the pushed commit (``GetFile`` at that commit id), with the same release context,
  ``release-context.json`` packaged next to this code exactly as in the pipeline's validator bundle.
* Refusals: an event for another repository, account or region, another branch, a tag, a deletion, or anything
  malformed is logged once with a reason and answered ``{"status": "ignored"}`` before any AWS call; nothing is
  raised, so a foreign event is never retried.
* Idempotent on retries (EventBridge and Lambda's async retries deliver the same event again): the open pull request
  is looked up before one is created, and the create carries a client request token derived from the event and
  commit, so a retry that does not see the first call's pull request yet gets that same pull request back from
  CodeCommit rather than a second one. One comment per pushed commit: a comment for that commit already on the pull
  request is not posted again, and the post carries a token too. A later push gets its own comment.
* AWS errors propagate (the invocation fails and is retried); a release file that is missing or invalid is a
  verdict, not an error.

Environment: ``CROSSDEPLOY_REPOSITORY``, ``CROSSDEPLOY_DEVELOP_BRANCH``, ``CROSSDEPLOY_RELEASE_BRANCH``,
``CROSSDEPLOY_RELEASE_FILE``, ``CROSSDEPLOY_ACCOUNT_ID``, ``CROSSDEPLOY_HOME_REGION``, ``CROSSDEPLOY_PARTITION``;
``CROSSDEPLOY_CONTEXT_FILE`` overrides where the release context is read from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from handlers import release_file
from handlers.ecs_common import RETRY, log

DETAIL_TYPE = "CodeCommit Repository State Change"
PUSH_EVENTS = ("referenceCreated", "referenceUpdated")
# The package root: /var/task/release-context.json in Lambda, wherever the package is unpacked otherwise.
DEFAULT_CONTEXT_FILE = Path(__file__).resolve().parents[1] / "release-context.json"
COMMENT_LIMIT = 10_000
"""CodeCommit refuses a comment over 10,240 characters (CommentContentSizeLimitExceededException); the bound is
counted in UTF-8 bytes, which is never fewer than the characters, with room to spare."""
HEADER = "crossdeploy release validator"
"""First words of every verdict comment: with the commit id it identifies this function's comment for a commit."""
_COMMIT = re.compile(r"[0-9a-f]{40}")
ENV = {"repository": "CROSSDEPLOY_REPOSITORY", "develop_branch": "CROSSDEPLOY_DEVELOP_BRANCH",
       "branch": "CROSSDEPLOY_RELEASE_BRANCH", "file": "CROSSDEPLOY_RELEASE_FILE",
       "account_id": "CROSSDEPLOY_ACCOUNT_ID", "region": "CROSSDEPLOY_HOME_REGION",
       "partition": "CROSSDEPLOY_PARTITION"}


@dataclass(frozen=True)
class Settings:
    repository: str
    develop_branch: str
    branch: str
    file: str
    account_id: str
    region: str
    partition: str

    @property
    def repository_arn(self) -> str:
        return f"arn:{self.partition}:codecommit:{self.region}:{self.account_id}:{self.repository}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The function's wiring; a missing variable is a deployment fault (raised: the event is kept)."""
        environ = os.environ if environ is None else environ
        missing = [name for name in ENV.values() if not environ.get(name)]
        if missing:
            raise RuntimeError(f"gitflow: environment variables not set: {', '.join(missing)}")
        return cls(**{key: environ[name] for key, name in ENV.items()})


@dataclass(frozen=True)
class Push:
    commit: str
    """The commit the develop branch now points to."""
    event_id: str


def read_push(event: Any, settings: Settings) -> Push | str:
    """The push this function acts on, or why the event is not one (a refusal reason for the log)."""
    if not isinstance(event, Mapping):
        return f"not an EventBridge event object: {type(event).__name__}"
    if event.get("source") != "aws.codecommit" or event.get("detail-type") != DETAIL_TYPE:
        return f"not a {DETAIL_TYPE!r} event: source {event.get('source')!r}, detail-type {event.get('detail-type')!r}"
    if event.get("account") != settings.account_id or event.get("region") != settings.region:
        return (f"event from account {event.get('account')!r} region {event.get('region')!r}; this function serves "
                f"{settings.account_id} {settings.region}")
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        return "event has no detail object"
    resources = event.get("resources")
    if detail.get("repositoryName") != settings.repository or not isinstance(resources, list) \
            or settings.repository_arn not in resources:
        return (f"repository {detail.get('repositoryName')!r} ({resources!r}) is not the release repository "
                f"{settings.repository_arn}")
    kind = detail.get("event")
    if kind == "referenceDeleted":
        return f"{detail.get('referenceType')} {detail.get('referenceName')!r} was deleted; nothing to review"
    if kind not in PUSH_EVENTS:
        return f"event {kind!r} is not a push ({', '.join(PUSH_EVENTS)})"
    if detail.get("referenceType") != "branch":
        return f"{detail.get('referenceType')!r} {detail.get('referenceName')!r} is not a branch"
    name = detail.get("referenceName")
    if name != settings.develop_branch:
        return f"branch {name!r} is not the develop branch {settings.develop_branch!r}"
    full = detail.get("referenceFullName")
    if full is not None and full != f"refs/heads/{name}":
        return f"referenceFullName {full!r} does not name branch {name!r}"
    commit = detail.get("commitId")
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        return f"commitId {commit!r} is not a full commit id"
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        return "event has no id"
    return Push(commit, event_id)


def token(*parts: str) -> str:
    """A client request token: the same call for the same event and commit gets the same one."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _branch(reference: Any) -> Any:
    return reference.removeprefix("refs/heads/") if isinstance(reference, str) else reference


def target_of(pull_request: Mapping[str, Any], settings: Settings) -> Mapping[str, Any] | None:
    """The pull request's target from the develop branch into the release branch of this repository, if it is one."""
    for target in pull_request.get("pullRequestTargets") or []:
        if (target.get("repositoryName") == settings.repository
                and _branch(target.get("sourceReference")) == settings.develop_branch
                and _branch(target.get("destinationReference")) == settings.branch):
            return target
    return None


def find_pull_request(client: Any, settings: Settings) -> dict[str, Any] | None:
    """The open pull request from the develop branch into the release branch (a person's counts too), or None."""
    for page in client.get_paginator("list_pull_requests").paginate(repositoryName=settings.repository,
                                                                      pullRequestStatus="OPEN"):
        for pull_request_id in page.get("pullRequestIds") or []:
            pull_request = client.get_pull_request(pullRequestId=pull_request_id)["pullRequest"]
            if pull_request.get("pullRequestStatus") == "OPEN" and target_of(pull_request, settings):
                return pull_request
    return None


def open_pull_request(client: Any, settings: Settings, push: Push) -> dict[str, Any]:
    description = (f"Opened by crossdeploy on a push to `{settings.develop_branch}`. Merging it releases "
                   f"`{settings.file}`: every push to `{settings.branch}` starts the release pipeline. Each push to "
                   f"`{settings.develop_branch}` gets the release validator's verdict as a comment.")
    return client.create_pull_request(
        title=f"Release: {settings.develop_branch} into {settings.branch}"[:150],
        description=description,
        targets=[{"repositoryName": settings.repository, "sourceReference": settings.develop_branch,
                  "destinationReference": settings.branch}],
        clientRequestToken=token("pull-request", settings.repository, settings.develop_branch, settings.branch,
                                 push.event_id, push.commit),
    )["pullRequest"]


@dataclass(frozen=True)
class Verdict:
    valid: bool
    summary: str
    problems: tuple[str, ...] = ()


@lru_cache(maxsize=4)
def load_context(path: str) -> release_file.ReleaseContext:
    """The release context the pipeline's build step validates with (a bad one is a deployment fault: raised)."""
    return release_file.load_context(json.loads(Path(path).read_text(encoding="utf-8")))


def verdict(client: Any, settings: Settings, commit: str, context: release_file.ReleaseContext) -> Verdict:
    """What the pipeline's build step would say of the release file at ``commit``."""
    try:
        content = client.get_file(repositoryName=settings.repository, commitSpecifier=commit,
                                  filePath=settings.file)["fileContent"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code == "FileDoesNotExistException":
            return Verdict(False, f"`{settings.file}` does not exist at this commit; the release pipeline needs it")
        if code == "FileTooLargeException":
            return Verdict(False, f"`{settings.file}` is too large for CodeCommit to return ({exc})")
        raise
    try:
        manifest = release_file.convert(content, context, settings.file)
    except release_file.ReleaseFileError as exc:
        return Verdict(False, f"{len(exc.problems)} problem(s); the release pipeline would refuse this file",
                       tuple(map(str, exc.problems)))
    return Verdict(True, f"valid: {len(manifest['services'])} service target(s), {len(manifest['tasks'])} task "
                         f"target(s); merging releases it")


def comment(settings: Settings, commit: str, result: Verdict, limit: int = COMMENT_LIMIT) -> str:
    """The comment's Markdown, at most ``limit`` UTF-8 bytes however many problems there are."""
    head = [f"**{HEADER}**: `{settings.file}` at commit {commit}", "",
            f"{'PASS' if result.valid else 'FAIL'}: {result.summary}"]
    tail = ["", "Run the same check locally: `python -m handlers.release_file validate "
            f"{settings.file} --context release-context.json`."]
    if not result.problems:
        return "\n".join(head + tail)
    fence = ["", "```"]
    size = len("\n".join(head + fence + ["```"] + tail).encode()) + 200  # 200: the "... more" line
    shown: list[str] = []
    for problem in result.problems:
        line = problem.replace("```", "'''")  # a problem quoting the file must not close the code block
        if size + len(line.encode()) + 1 > limit:
            break
        shown.append(line)
        size += len(line.encode()) + 1
    if len(shown) < len(result.problems):
        shown.append(f"... and {len(result.problems) - len(shown)} more problem(s) (the comment limit); run the "
                     "validator to see them all")
    return "\n".join(head + fence + shown + ["```"] + tail)


def already_commented(client: Any, settings: Settings, pull_request_id: str, before: str, commit: str) -> bool:
    for page in client.get_paginator("get_comments_for_pull_request").paginate(
            pullRequestId=pull_request_id, repositoryName=settings.repository, beforeCommitId=before,
            afterCommitId=commit):
        for data in page.get("commentsForPullRequestData") or []:
            for item in data.get("comments") or []:
                text = item.get("content") or ""
                if text.startswith(f"**{HEADER}**") and commit in text.split("\n", 1)[0]:
                    return True
    return False


def handle_push(event: Any, settings: Settings, client: Any,
                context: Callable[[], release_file.ReleaseContext]) -> dict[str, Any]:
    """Act on one event; ``context`` reads the release context (only for a push this function acts on)."""
    push = read_push(event, settings)
    if isinstance(push, str):
        log("gitflow.ignored", reason=push,
            eventId=event.get("id") if isinstance(event, Mapping) else None)
        return {"status": "ignored", "reason": push}
    fields = {"eventId": push.event_id, "commitId": push.commit, "repository": settings.repository}
    pull_request = find_pull_request(client, settings)
    opened = pull_request is None
    if pull_request is None:
        try:
            tip = client.get_branch(repositoryName=settings.repository,
                                    branchName=settings.branch)["branch"]["commitId"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BranchDoesNotExistException":
                raise
            # A retry cannot help: the release branch must be pushed first (the pipeline needs it too).
            log("gitflow.noReleaseBranch", reason=f"branch {settings.branch!r} does not exist", **fields)
            return {"status": "noReleaseBranch"}
        if tip == push.commit:
            # develop was just created from (or reset to) the release branch: CodeCommit has nothing to compare.
            log("gitflow.nothingToReview", reason=f"{settings.develop_branch} is at {settings.branch}'s tip", **fields)
            return {"status": "nothingToReview"}
        pull_request = open_pull_request(client, settings, push)
        log("gitflow.pullRequestOpened", pullRequestId=pull_request["pullRequestId"], **fields)
    pull_request_id = pull_request["pullRequestId"]
    target = target_of(pull_request, settings) or {}
    before = target.get("destinationCommit")
    result = verdict(client, settings, push.commit, context())
    out = {"pullRequestId": pull_request_id, "opened": opened, "valid": result.valid}
    if not isinstance(before, str) or before == push.commit:
        log("gitflow.noComment", reason="the pull request has no destination commit to compare with",
            pullRequestId=pull_request_id, **fields)
        return {"status": "noComment", **out}
    if already_commented(client, settings, pull_request_id, before, push.commit):
        log("gitflow.verdictAlreadyPosted", pullRequestId=pull_request_id, valid=result.valid, **fields)
        return {"status": "verdictAlreadyPosted", **out}
    client.post_comment_for_pull_request(
        pullRequestId=pull_request_id, repositoryName=settings.repository, beforeCommitId=before,
        afterCommitId=push.commit, content=comment(settings, push.commit, result),
        clientRequestToken=token("verdict", pull_request_id, push.commit))
    log("gitflow.verdictPosted", pullRequestId=pull_request_id, valid=result.valid, problems=len(result.problems),
        **fields)
    return {"status": "verdictPosted", **out}


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Lambda entry point (asynchronous invocation by EventBridge)."""
    settings = Settings.from_env()
    path = os.environ.get("CROSSDEPLOY_CONTEXT_FILE") or str(DEFAULT_CONTEXT_FILE)
    client = boto3.client("codecommit", region_name=settings.region, config=RETRY)
    return handle_push(event, settings, client, lambda: load_context(path))


if __name__ == "__main__":
    print("handlers.gitflow: not a command line; it is the gitflow Lambda function (AWS Lambda calls "
          "handlers.gitflow.handler when the release repository's develop branch is pushed)", file=sys.stderr)
    sys.exit(2)
