"""The gitflow function (handlers/gitflow.py) with CodeCommit's documented "CodeCommit Repository State Change" events.

moto's CodeCommit has no pull requests, so every CodeCommit call is answered by botocore's Stubber: requests and
responses are validated against botocore's own CodeCommit model, and each request the function sends is recorded
(botocore's ``provide-client-params`` hook) so the tests assert on exactly what CodeCommit would receive."""

from __future__ import annotations

import copy
import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from conftest import SAMPLES, TOOLS
from test_release_file import CONTEXT, extended_seed

from handlers import gitflow
from handlers import release_file as rf

REPO = "platform-releases"
REPO_ARN = f"arn:aws:codecommit:us-east-2:{TOOLS}:{REPO}"
SETTINGS = gitflow.Settings(repository=REPO, develop_branch="develop", branch="main", file="deployment.yaml",
                            account_id=TOOLS, region="us-east-2", partition="aws")
CTX = rf.load_context(CONTEXT)
MAIN_TIP = "3e5983aa" + "0" * 32
PUSHED = "7f35d2dc" + "1" * 32
LATER = "9c1b2a3d" + "2" * 32
VALID = extended_seed()
INVALID = (SAMPLES / "deployment.yaml").read_text(encoding="utf-8")  # the seed as shipped: four problems

# The referenceUpdated example of the CodeCommit user guide ("Monitoring CodeCommit events in Amazon EventBridge and
# Amazon CloudWatch Events"), with account, region, repository, branch and commit ids rewritten.
UPDATED = {
    "version": "0", "id": "01234567-EXAMPLE", "detail-type": "CodeCommit Repository State Change",
    "source": "aws.codecommit", "account": TOOLS, "time": "2019-06-12T10:23:43Z", "region": "us-east-2",
    "resources": [REPO_ARN],
    "detail": {"callerUserArn": f"arn:aws:iam::{TOOLS}:user/Mary_Major", "commitId": PUSHED,
               "event": "referenceUpdated", "oldCommitId": MAIN_TIP, "referenceFullName": "refs/heads/develop",
               "referenceName": "develop", "referenceType": "branch",
               "repositoryId": "12345678-1234-5678-abcd-12345678abcd", "repositoryName": REPO},
}
# The same page's referenceDeleted example (no commitId: the branch points nowhere now).
DELETED = {**UPDATED, "detail": {k: v for k, v in UPDATED["detail"].items() if k != "commitId"}
           | {"event": "referenceDeleted"}}


def event(commit: str = PUSHED, event_id: str = "01234567-EXAMPLE", **detail: Any) -> dict[str, Any]:
    out = copy.deepcopy(UPDATED)
    out["id"] = event_id
    out["detail"].update(commitId=commit, **detail)
    return out


def pull_request(pr_id: str = "42", source: str = "develop", destination: str = "main",
                 status: str = "OPEN") -> dict[str, Any]:
    # GetPullRequest/CreatePullRequest name references in full (refs/heads/...).
    return {"pullRequestId": pr_id, "title": "t", "pullRequestStatus": status, "pullRequestTargets": [{
        "repositoryName": REPO, "sourceReference": f"refs/heads/{source}",
        "destinationReference": f"refs/heads/{destination}", "destinationCommit": MAIN_TIP, "sourceCommit": PUSHED,
        "mergeBase": MAIN_TIP}]}


class CodeCommit:
    """A stubbed CodeCommit client and the requests it received, in order: (operation, params)."""

    def __init__(self) -> None:
        self.client = boto3.client("codecommit", region_name="us-east-2", aws_access_key_id="test",
                                   aws_secret_access_key="test")
        self.stub = Stubber(self.client)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.client.meta.events.register(
            "provide-client-params.codecommit",
            lambda params, model, **_: self.calls.append((model.name, copy.deepcopy(params))))
        self.stub.activate()

    def no_pull_request(self, others: tuple[dict[str, Any], ...] = ()) -> None:
        self.stub.add_response("list_pull_requests", {"pullRequestIds": [o["pullRequestId"] for o in others]})
        for other in others:
            self.stub.add_response("get_pull_request", {"pullRequest": other})

    def open_one(self, pr: dict[str, Any] | None = None) -> None:
        pr = pr or pull_request()
        self.stub.add_response("list_pull_requests", {"pullRequestIds": [pr["pullRequestId"]]})
        self.stub.add_response("get_pull_request", {"pullRequest": pr})

    def creates(self, pr: dict[str, Any] | None = None, tip: str = MAIN_TIP) -> None:
        self.stub.add_response("get_branch", {"branch": {"branchName": "main", "commitId": tip}})
        self.stub.add_response("create_pull_request", {"pullRequest": pr or pull_request()})

    def file(self, text: str) -> None:
        self.stub.add_response("get_file", {"commitId": PUSHED, "blobId": "b", "filePath": "deployment.yaml",
                                            "fileMode": "NORMAL", "fileSize": len(text),
                                            "fileContent": text.encode()})

    def comments(self, *contents: str, posts: bool = True) -> None:
        self.stub.add_response("get_comments_for_pull_request", {"commentsForPullRequestData": [
            {"pullRequestId": "42", "repositoryName": REPO, "beforeCommitId": MAIN_TIP,
             "comments": [{"commentId": str(i), "content": c} for i, c in enumerate(contents)]}] if contents else []})
        if posts:
            self.stub.add_response("post_comment_for_pull_request", {})

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == operation]

    def run(self, evt: Any) -> dict[str, Any]:
        result = gitflow.handle_push(evt, SETTINGS, self.client, lambda: CTX)
        self.stub.assert_no_pending_responses()
        return result


@pytest.fixture
def codecommit() -> CodeCommit:
    return CodeCommit()


def posted(cc: CodeCommit) -> str:
    (post,) = cc.of("PostCommentForPullRequest")
    return post["content"]


# ------------------------------------------------------------------------------------------ the pull request


def test_a_push_to_develop_opens_one_pull_request_into_main_with_a_passing_verdict(codecommit, capsys) -> None:
    unrelated = pull_request("7", source="feature/x")
    codecommit.no_pull_request((unrelated,))
    codecommit.creates()
    codecommit.file(VALID)
    codecommit.comments()
    result = codecommit.run(event())
    assert result == {"status": "verdictPosted", "pullRequestId": "42", "opened": True, "valid": True}
    assert codecommit.of("ListPullRequests") == [{"repositoryName": REPO, "pullRequestStatus": "OPEN"}]
    (create,) = codecommit.of("CreatePullRequest")
    assert create["targets"] == [{"repositoryName": REPO, "sourceReference": "develop", "destinationReference": "main"}]
    assert create["clientRequestToken"] and len(create["title"]) <= 150
    assert codecommit.of("GetFile") == [{"repositoryName": REPO, "commitSpecifier": PUSHED,
                                         "filePath": "deployment.yaml"}]
    (post,) = codecommit.of("PostCommentForPullRequest")
    assert (post["pullRequestId"], post["beforeCommitId"], post["afterCommitId"]) == ("42", MAIN_TIP, PUSHED)
    manifest = rf.convert(VALID, CTX)
    assert f"PASS: valid: {len(manifest['services'])} service target(s), {len(manifest['tasks'])} task" \
        in post["content"]
    assert PUSHED in post["content"].splitlines()[0]
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [entry["event"] for entry in logs] == ["gitflow.pullRequestOpened", "gitflow.verdictPosted"]


def test_a_later_push_opens_no_second_pull_request_and_gets_its_own_verdict(codecommit) -> None:
    codecommit.open_one()
    codecommit.file(INVALID)
    codecommit.comments(gitflow.comment(SETTINGS, PUSHED, gitflow.Verdict(True, "valid")))  # the first push's
    result = codecommit.run(event(LATER, event_id="second"))
    assert result["status"] == "verdictPosted" and result["opened"] is False and result["valid"] is False
    assert codecommit.of("CreatePullRequest") == [] and codecommit.of("GetBranch") == []
    (post,) = codecommit.of("PostCommentForPullRequest")
    assert (post["beforeCommitId"], post["afterCommitId"]) == (MAIN_TIP, LATER)
    assert codecommit.of("GetFile")[0]["commitSpecifier"] == LATER


def test_only_a_pull_request_from_develop_into_main_counts(codecommit) -> None:
    elsewhere = pull_request("4", destination="release/1.x")  # develop into another branch: not the release's
    codecommit.stub.add_response("list_pull_requests", {"pullRequestIds": ["4", "5"]})
    codecommit.stub.add_response("get_pull_request", {"pullRequest": elsewhere})
    codecommit.stub.add_response("get_pull_request", {"pullRequest": pull_request("5")})  # e.g. opened by a person
    codecommit.file(VALID)
    codecommit.comments()
    assert codecommit.run(event())["pullRequestId"] == "5"
    assert codecommit.of("CreatePullRequest") == []


def test_failures_are_reported_with_the_validators_own_messages(codecommit) -> None:
    codecommit.open_one()
    codecommit.file(INVALID)
    codecommit.comments()
    assert codecommit.run(event())["valid"] is False
    content = posted(codecommit)
    problems = rf.validate(INVALID, CTX, "deployment.yaml")
    assert len(problems) == 4 and f"FAIL: {len(problems)} problem(s)" in content
    for problem in problems:
        assert str(problem) in content
    assert "registry '11111111111' is not a 12-digit account id" in content


def test_a_missing_release_file_is_a_failing_verdict(codecommit) -> None:
    codecommit.open_one()
    codecommit.stub.add_client_error("get_file", service_error_code="FileDoesNotExistException", http_status_code=400)
    codecommit.comments()
    assert codecommit.run(event())["valid"] is False
    assert "FAIL: `deployment.yaml` does not exist at this commit" in posted(codecommit)


def test_the_comment_stays_within_codecommits_limit(codecommit) -> None:
    entries = "".join(f"  - service: s{i}\n    clusterName: c\n    serviceName: s{i}\n    image: nope-{i}\n"
                      "    environment: nowhere\n" for i in range(400))
    text = "services:\n" + entries
    codecommit.open_one()
    codecommit.file(text)
    codecommit.comments()
    codecommit.run(event())
    content = posted(codecommit)
    problems = rf.validate(text, CTX)
    assert len(problems) > 400
    assert len(content.encode()) <= 10_240 and "more problem(s)" in content
    assert str(problems[0]) in content and content.count("```") == 2


def test_a_new_develop_branch_at_mains_tip_opens_nothing(codecommit) -> None:
    codecommit.no_pull_request()
    codecommit.stub.add_response("get_branch", {"branch": {"branchName": "main", "commitId": PUSHED}})
    assert codecommit.run(event(event="referenceCreated"))["status"] == "nothingToReview"
    assert codecommit.of("CreatePullRequest") == []


def test_no_release_branch_yet_opens_nothing_and_is_not_retried(codecommit) -> None:
    codecommit.no_pull_request()
    codecommit.stub.add_client_error("get_branch", service_error_code="BranchDoesNotExistException",
                                     http_status_code=400)
    assert codecommit.run(event())["status"] == "noReleaseBranch"
    assert codecommit.of("CreatePullRequest") == []


# ------------------------------------------------------------------------------------------------- retries


def test_a_retry_after_the_pull_request_was_opened_opens_none_and_posts_once(codecommit) -> None:
    codecommit.no_pull_request()
    codecommit.creates()
    codecommit.file(VALID)
    codecommit.comments(posts=False)
    codecommit.stub.add_client_error("post_comment_for_pull_request", service_error_code="ThrottlingException",
                                     http_status_code=400)
    with pytest.raises(ClientError):  # AWS errors fail the invocation: Lambda retries the same event
        codecommit.run(event())
    codecommit.open_one()  # the retry: the pull request the first attempt opened is listed now
    codecommit.file(VALID)
    codecommit.comments()
    assert codecommit.run(event())["status"] == "verdictPosted"
    first, second = codecommit.of("PostCommentForPullRequest")
    assert first == second  # same content, same token: CodeCommit keeps one comment even if the first had landed
    codecommit.open_one()  # a third delivery, after the comment landed: nothing new
    codecommit.file(VALID)
    codecommit.comments(second["content"], posts=False)
    assert codecommit.run(event())["status"] == "verdictAlreadyPosted"
    assert len(codecommit.of("CreatePullRequest")) == 1 and len(codecommit.of("PostCommentForPullRequest")) == 2


def test_a_retry_that_does_not_see_its_pull_request_yet_asks_with_the_same_token(codecommit) -> None:
    for _ in range(2):  # ListPullRequests is eventually consistent: the second attempt still sees nothing
        codecommit.no_pull_request()
        codecommit.creates()
        codecommit.file(VALID)
        codecommit.comments()
        codecommit.run(event())
    first, second = codecommit.of("CreatePullRequest")
    assert first == second  # same token: CodeCommit answers with the pull request it already created
    other_push = CodeCommit()
    other_push.no_pull_request()
    other_push.creates()
    other_push.file(VALID)
    other_push.comments()
    other_push.run(event(LATER, event_id="another"))
    assert other_push.of("CreatePullRequest")[0]["clientRequestToken"] != first["clientRequestToken"]


def test_aws_errors_propagate(codecommit) -> None:
    codecommit.stub.add_client_error("list_pull_requests", service_error_code="AccessDeniedException",
                                     http_status_code=400)
    with pytest.raises(ClientError):
        codecommit.run(event())


# ---------------------------------------------------------------------------------------------------- refusals


REFUSED = {
    "another branch": event(referenceName="main", referenceFullName="refs/heads/main"),
    "a feature branch": event(referenceName="feature/develop", referenceFullName="refs/heads/feature/develop"),
    "a tag": event(referenceType="tag", referenceName="develop", referenceFullName="refs/tags/develop"),
    "a deletion": DELETED,
    "another repository": {**event(repositoryName="other"),
                           "resources": [f"arn:aws:codecommit:us-east-2:{TOOLS}:other"]},
    "a resource that is not the repository": {**event(), "resources": [f"arn:aws:codecommit:us-east-2:{TOOLS}:x"]},
    "another account": {**event(), "account": "222222222222"},
    "another region": {**event(), "region": "eu-west-1"},
    "another detail-type": {**event(), "detail-type": "CodeCommit Pull Request State Change"},
    "a comment event": event(event="commentOnPullRequestCreated"),
    "no commit id": {**event(), "detail": {k: v for k, v in UPDATED["detail"].items() if k != "commitId"}},
    "a short commit id": event(commit="7f35d2dc"),
    "no detail": {k: v for k, v in UPDATED.items() if k != "detail"},
    "not an object": ["referenceUpdated"],
    "nothing": None,
}


@pytest.mark.parametrize("evt", REFUSED.values(), ids=REFUSED.keys())
def test_foreign_and_malformed_events_are_refused_before_any_call(codecommit, capsys, evt) -> None:
    result = codecommit.run(evt)  # no response is stubbed: any CodeCommit call would fail the test
    assert result["status"] == "ignored" and result["reason"]
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["event"] == "gitflow.ignored" and json.loads(line)["reason"] == result["reason"]
    assert codecommit.calls == []


def test_handler_reads_its_wiring_and_context_from_the_package(monkeypatch, tmp_path) -> None:
    (tmp_path / "release-context.json").write_text(json.dumps(CONTEXT))
    env = {"CROSSDEPLOY_REPOSITORY": REPO, "CROSSDEPLOY_DEVELOP_BRANCH": "develop",
           "CROSSDEPLOY_RELEASE_BRANCH": "main", "CROSSDEPLOY_RELEASE_FILE": "deployment.yaml",
           "CROSSDEPLOY_ACCOUNT_ID": TOOLS, "CROSSDEPLOY_HOME_REGION": "us-east-2", "CROSSDEPLOY_PARTITION": "aws",
           "CROSSDEPLOY_CONTEXT_FILE": str(tmp_path / "release-context.json")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cc = CodeCommit()
    monkeypatch.setattr(gitflow.boto3, "client", lambda *a, **k: cc.client)
    cc.open_one()
    cc.file(VALID)
    cc.comments()
    assert gitflow.handler(event(), None)["status"] == "verdictPosted"
    monkeypatch.delenv("CROSSDEPLOY_RELEASE_BRANCH")
    with pytest.raises(RuntimeError, match="CROSSDEPLOY_RELEASE_BRANCH"):
        gitflow.handler(event(), None)
