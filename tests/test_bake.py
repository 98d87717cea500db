# ruff: noqa: F811 - fixtures are imported by name, and pytest passes them back as arguments
"""The alarm bake: the deploy engine's function in bake mode (the pipeline's ``Bake`` action after a deployment).

moto's CloudWatch holds the alarms in the workload account, in two regions; the function reaches them through the
deploy role it assumes from the tools account (moto's default account), exactly as in AWS. botocore's Stubber
stands in for CodePipeline and checks the exact answers; a fake clock drives the bake's minutes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import ANY
from moto import mock_aws
from test_deploy_engine import (  # noqa: F401 - fixtures
    EAST,
    REGIONS,
    TEST,
    TOOLS,
    WEST,
    Recorder,
    _Body,
    aws_env,
    error_response,
    installing,
    parse_service_models_once,
    role_arn,
)
from test_pipeline_deploy import JOB, Context, Pipeline, _ten_region_targets

from handlers import deploy_engine as engine
from handlers import pipeline_deploy as pd
from handlers.ecs_common import assumed_session

ALARMS = ("dev-test-crossdeploy-orders-target-5xx", "dev-test-crossdeploy-orders-unhealthy-targets")
LONG_LAMBDA = Context(remaining_ms=15 * 60 * 1000)  # what CodePipeline's invocations get: the 900 s timeout


def bake_parameters(minutes: int = 12, regions: tuple[str, ...] = REGIONS, alarms: tuple[str, ...] = ALARMS,
                    environment: str = "test", **bake: Any) -> str:
    """What the pipeline's Bake action sends (components.pipeline.Bake.user_parameters)."""
    return json.dumps({"environment": environment, "bake": {
        "minutes": minutes, "roleArn": role_arn(TEST), "regions": list(regions), "alarms": list(alarms), **bake}},
        separators=(",", ":"))


def bake_event(token: str | None = None, user_parameters: Any = None) -> dict[str, Any]:
    """CodePipeline's job event for an action without input artifacts (it still sends artifact credentials)."""
    data: dict[str, Any] = {
        "actionConfiguration": {"configuration": {
            "FunctionName": "crossdeploy-dev-deploy",
            "UserParameters": bake_parameters() if user_parameters is None else user_parameters}},
        "inputArtifacts": [],
        "outputArtifacts": [],
        "artifactCredentials": {"secretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                                "sessionToken": "MIICiTCCAfICCQD6m7oRw0uXOjANBgkqhkiG9w0BAQUFADCBiDELMAkGA1UEBhMC",
                                "accessKeyId": "AKIAIOSFODNN7EXAMPLE"},
    }
    if token is not None:
        data["continuationToken"] = token
    return {"CodePipeline.job": {"id": JOB, "accountId": TOOLS, "data": data}}


class Clock:
    """Wall and monotonic time in one (the bake uses both); ``at(t, action)`` runs ``action`` once the bake's
    sleeps reach ``t`` seconds after the start."""

    def __init__(self) -> None:
        self.start = self.now = 1_700_000_000.0
        self.actions: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def at(self, seconds: float, action: Callable[[], None]) -> None:
        self.actions.append((self.start + seconds, action))

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for due, action in [a for a in self.actions if a[0] <= self.now]:
            self.actions.remove((due, action))
            action()


@dataclass
class Bakery:
    recorder: Recorder
    admin: boto3.Session
    base: boto3.Session
    clock: Clock
    pipeline: Pipeline

    def cloudwatch(self, region: str) -> Any:
        return self.admin.client("cloudwatch", region_name=region)

    def set_state(self, region: str, name: str, state: str, reason: str) -> None:
        self.cloudwatch(region).set_alarm_state(AlarmName=name, StateValue=state, StateReason=reason)

    def session_for(self, deployment_id: str) -> engine.SessionFor:
        """The engine's own default (AssumeRole through STS) with the recorder on every session it hands out."""
        return installing(engine.default_session_for(deployment_id, base=self.base), self.recorder.install)


@pytest.fixture
def bakery(aws_env, monkeypatch) -> Iterator[Bakery]:
    with mock_aws():
        base = boto3.Session(region_name=EAST)
        admin = assumed_session(base, f"arn:aws:iam::{TEST}:role/OrganizationAccountAccessRole", "setup")
        admin.client("iam").create_role(
            RoleName="crossdeploy-dev-deploy", Path="/crossdeploy/dev/deploy/",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": f"arn:aws:iam::{TOOLS}:root"}}]}))
        for region in REGIONS:
            cloudwatch = admin.client("cloudwatch", region_name=region)
            for name in ALARMS:
                cloudwatch.put_metric_alarm(
                    AlarmName=name, Namespace="AWS/ApplicationELB", MetricName="HTTPCode_Target_5XX_Count",
                    Statistic="Sum", Period=60, EvaluationPeriods=2, Threshold=10.0,
                    ComparisonOperator="GreaterThanThreshold", TreatMissingData="notBreaching")
        recorder = Recorder()
        recorder.install(base, TOOLS)
        clock = Clock()
        bakery = Bakery(recorder, admin, base, clock, Pipeline())
        monkeypatch.setattr(pd, "_codepipeline", lambda: bakery.pipeline.client)
        monkeypatch.setattr(pd, "_session_for", bakery.session_for)
        monkeypatch.setattr(pd, "_sleep", clock.sleep)
        monkeypatch.setattr(pd, "_clock", clock)
        monkeypatch.setattr(pd, "_now", clock)
        monkeypatch.setenv(pd.POLL_SECONDS_ENV, "5")
        yield bakery


def reads(bakery: Bakery) -> list[Any]:
    return bakery.recorder.ops("DescribeAlarms")


# --- baking -------------------------------------------------------------------------------------------------------


def test_ok_alarms_through_the_whole_bake_continue_then_succeed(bakery, capsys):
    bakery.set_state(WEST, ALARMS[1], "INSUFFICIENT_DATA", "no targets registered yet")
    pipeline = bakery.pipeline
    pipeline.expect_progress()
    pipeline.expect_success(f"test: baked 12 min: 4 alarms in {EAST}, {WEST}, none in ALARM (1 INSUFFICIENT_DATA, "
                            "3 OK)")

    first = pd.handler(bake_event(), LONG_LAMBDA)

    assert first["status"] == "continue"
    # One invocation works up to its 600 s cap, reading every 30 s (the floor: the settings say 5).
    assert bakery.clock.now - bakery.clock.start == pytest.approx(570)
    assert len(reads(bakery)) == 20 * 2
    assert pipeline.answers[-1][1]["executionDetails"] == {
        "summary": "test: baking, 2 of 12 min left; 4 alarms watched, none in ALARM", "percentComplete": 79}
    token = pipeline.last_token
    assert len(token) < 100
    started, until = pd.decode_bake_token(token, "test", pd.parse_bake(json.loads(bake_parameters()))[1],
                                          bakery.clock.now)
    assert (started, until) == (bakery.clock.start, bakery.clock.start + 12 * 60)

    second = pd.handler(bake_event(token), LONG_LAMBDA)

    assert second["status"] == "succeeded"
    pipeline.stubber.assert_no_pending_responses()
    assert "continuationToken" not in pipeline.answers[-1][1]
    assert bakery.clock.now - bakery.clock.start == 720  # the last read falls on the bake's end, not after it
    # Every read as the deploy role, in the workload account, in its region; both alarm types asked for.
    for call in reads(bakery):
        assert call.account == TEST
        assert call.params == {"AlarmNames": list(ALARMS), "AlarmTypes": ["CompositeAlarm", "MetricAlarm"]}
    assert {c.region for c in reads(bakery)} == set(REGIONS)
    assumed = [c for c in bakery.recorder.ops("AssumeRole") if c.params["RoleArn"] == role_arn(TEST)]
    assert assumed and {c.params["RoleSessionName"] for c in assumed} == {f"crossdeploy-{JOB}"}
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events].count("bake-start") == 1
    assert events[-2]["event"] == "bake-succeeded"
    assert "artifactCredentials" not in json.dumps(events) and "wJalrXUtnFEMI" not in json.dumps(events)


def test_all_ok_says_so(bakery):
    bakery.pipeline.expect_success(f"test: baked 1 min: 2 alarms OK in {EAST}")
    assert pd.handler(bake_event(user_parameters=bake_parameters(minutes=1, regions=(EAST,))),
                      LONG_LAMBDA)["status"] == "succeeded"
    bakery.pipeline.stubber.assert_no_pending_responses()


def test_an_alarm_going_off_mid_bake_fails_the_job_naming_it(bakery):
    reason = ("Threshold Crossed: 2 out of the last 2 datapoints [14.0 (01/12/25 10:02:00), 12.0 (01/12/25 "
              "10:01:00)] were greater than the threshold (10.0)")
    bakery.clock.at(200, lambda: bakery.set_state(WEST, ALARMS[0], "ALARM", reason))
    bakery.pipeline.expect_failure(f"test: bake failed after 3 of 12 min: alarm {ALARMS[0]} in {WEST} is in ALARM: "
                                   f"{reason}")

    result = pd.handler(bake_event(), LONG_LAMBDA)

    assert result["status"] == "failed"
    bakery.pipeline.stubber.assert_no_pending_responses()
    assert bakery.clock.now - bakery.clock.start == 210  # the first read after it went off
    # Nothing is restored here: the stage's rollback redeploys the last successful execution.
    assert {c.operation for c in bakery.recorder.calls} == {"AssumeRole", "DescribeAlarms"}


def test_an_alarm_already_firing_fails_the_first_read(bakery):
    bakery.set_state(EAST, ALARMS[1], "ALARM", "Threshold Crossed:\n1 datapoint")
    bakery.set_state(WEST, ALARMS[1], "ALARM", "Threshold Crossed: 3 datapoints")
    bakery.pipeline.expect_failure(
        f"test: bake failed after 0 of 12 min: alarm {ALARMS[1]} in {EAST} is in ALARM: Threshold Crossed: 1 "
        f"datapoint; alarm {ALARMS[1]} in {WEST} is in ALARM: Threshold Crossed: 3 datapoints")
    assert pd.handler(bake_event(), LONG_LAMBDA)["status"] == "failed"
    bakery.pipeline.stubber.assert_no_pending_responses()


def test_a_missing_alarm_fails_the_bake(bakery):
    bakery.cloudwatch(WEST).delete_alarms(AlarmNames=[ALARMS[0]])
    bakery.pipeline.expect_failure(f"test: bake failed after 0 of 12 min: alarm {ALARMS[0]} does not exist in {WEST} "
                                   "(a bake that watches nothing is no evidence)")
    assert pd.handler(bake_event(), LONG_LAMBDA)["status"] == "failed"
    bakery.pipeline.stubber.assert_no_pending_responses()


def test_an_alarm_read_the_role_may_not_make_fails_the_bake(bakery, monkeypatch):
    def deny_west(model: Any, context: dict, **_: Any) -> tuple[AWSResponse, dict] | None:
        if context["client_region"] != WEST:
            return None
        return (AWSResponse("https://monitoring/", 403, {}, _Body(b"")),
                {"Error": {"Code": "AccessDenied", "Message": "User is not authorized to perform: "
                                                              "cloudwatch:DescribeAlarms"},
                 "ResponseMetadata": {"HTTPStatusCode": 403}})

    inner = bakery.session_for

    def session_for(deployment_id: str) -> engine.SessionFor:
        hand_out = inner(deployment_id)

        def session(role: str, region: str) -> boto3.Session:
            handed = hand_out(role, region)
            handed.events.register("before-call.cloudwatch.DescribeAlarms", deny_west, unique_id="deny-west")
            return handed
        return session

    monkeypatch.setattr(pd, "_session_for", session_for)
    bakery.pipeline.expect_failure(
        f"test: bake failed after 0 of 12 min: {WEST}: cannot read the alarms as {role_arn(TEST)}: AccessDenied: User "
        "is not authorized to perform: cloudwatch:DescribeAlarms")
    assert pd.handler(bake_event(), LONG_LAMBDA)["status"] == "failed"
    bakery.pipeline.stubber.assert_no_pending_responses()


def test_a_role_that_cannot_be_assumed_fails_the_bake(bakery):
    bakery.recorder.inject("before-send.sts.AssumeRole", lambda request, **_: error_response(
        request, "AccessDenied", "not authorized to perform sts:AssumeRole", 403))
    bakery.recorder.install(bakery.base, TOOLS)  # the hook must be on the base session, where AssumeRole is made
    bakery.pipeline.expect_failure(
        f"test: bake failed after 0 of 12 min: {EAST}: cannot assume {role_arn(TEST)}: AccessDenied: not authorized to "
        f"perform sts:AssumeRole; {WEST}: cannot assume {role_arn(TEST)}: AccessDenied: not authorized to perform "
        "sts:AssumeRole")
    assert pd.handler(bake_event(), LONG_LAMBDA)["status"] == "failed"
    bakery.pipeline.stubber.assert_no_pending_responses()
    assert not reads(bakery)


def test_more_than_a_hundred_alarms_are_read_a_hundred_at_a_time(bakery):
    names = tuple(f"a{i:03d}" for i in range(110))
    for name in names:
        bakery.cloudwatch(EAST).put_metric_alarm(
            AlarmName=name, Namespace="AWS/ApplicationELB", MetricName="UnHealthyHostCount", Statistic="Maximum",
            Period=60, EvaluationPeriods=1, Threshold=0.0, ComparisonOperator="GreaterThanThreshold")
    bakery.pipeline.expect_success(f"test: baked 1 min: 110 alarms OK in {EAST}")
    params = bake_parameters(minutes=1, regions=(EAST,), alarms=names)
    assert len(params) <= 1000  # CodePipeline's UserParameters limit

    assert pd.handler(bake_event(user_parameters=params), LONG_LAMBDA)["status"] == "succeeded"

    sizes = [len(c.params["AlarmNames"]) for c in reads(bakery)]
    assert sizes == [100, 10] * 3  # at 0, 30 and 60 s


def test_a_short_lambda_answers_every_invocation_with_a_fresh_token(bakery):
    # 70 s left: 10 s of work per invocation, less than one poll: one read, then a token.
    for _ in range(3):
        bakery.pipeline.expect_progress()
    token = None
    for _ in range(3):
        assert pd.handler(bake_event(token), Context(remaining_ms=70_000))["status"] == "continue"
        token = bakery.pipeline.last_token
        bakery.clock.sleep(60)  # CodePipeline re-invokes a while later
    assert len(reads(bakery)) == 3 * 2
    bakery.pipeline.stubber.assert_no_pending_responses()


# --- refusals: answered, nothing read -----------------------------------------------------------------------------


def _params(**changes: Any) -> str:
    data = json.loads(bake_parameters())
    for key, value in changes.items():
        if key == "environment":
            data["environment"] = value
        elif value is ...:
            del data["bake"][key]
        else:
            data["bake"][key] = value
    return json.dumps(data)


P, W = "job: bake: ", "UserParameters.bake"
ALARM_NAME = "an alarm name (1-255 characters, no control characters)"


@pytest.mark.parametrize(("user_parameters", "message"), [
    ('{"environment": "test", "bake": []}', f"{P}{W}: expected an object, got []"),
    ('{"environment": "test", "bake": {}, "extra": 1}', "job: UserParameters must be the JSON object"),
    ('{"bake": {}}', "job: UserParameters must be the JSON object"),
    (_params(environment="Prod!"), "job: bake: UserParameters.environment: expected an environment name, got "
                                   "'Prod!'"),
    (_params(minutes=0), f"{P}{W}.minutes: expected an integer from 1 to 1440, got 0"),
    (_params(minutes="10"), f"{P}{W}.minutes: expected an integer from 1 to 1440, got '10'"),
    (_params(minutes=True), f"{P}{W}.minutes: expected an integer from 1 to 1440, got True"),
    (_params(minutes=...), f"{P}{W}: missing key 'minutes'"),
    (_params(colour="blue"), f"{P}{W}: unknown key 'colour'"),
    (_params(roleArn="crossdeploy-dev-deploy"), f"{P}{W}.roleArn: expected an IAM role ARN, got "
                                                "'crossdeploy-dev-deploy'"),
    (_params(regions=[]), f"{P}{W}.regions: expected a non-empty list of region names, got []"),
    (_params(regions=[EAST, EAST]), f"{P}{W}.regions: repeats ['{EAST}']"),
    (_params(regions=["Ohio"]), f"{P}{W}.regions[0]: expected a region name, got 'Ohio'"),
    (_params(alarms=[]), f"{P}{W}.alarms: expected a non-empty list of alarm names, got []"),
    (_params(alarms=["x" * 256]), f"{P}{W}.alarms[0]: expected {ALARM_NAME}, got 'xxx"),
    (_params(alarms=["bad\nname"]), f"{P}{W}.alarms[0]: expected {ALARM_NAME}, got 'bad\\nname'"),
    (_params(alarms=[ALARMS[0], ALARMS[0]]), f"{P}{W}.alarms: repeats ['{ALARMS[0]}']"),
    (_params(alarms="all"), f"{P}{W}.alarms: expected a non-empty list of alarm names"),
])
def test_malformed_user_parameters_are_refused_and_nothing_is_read(bakery, user_parameters, message):
    bakery.pipeline.expect_failure(ANY)

    result = pd.handler(bake_event(user_parameters=user_parameters), LONG_LAMBDA)

    assert result["status"] == "failed" and result["message"].startswith(message), result["message"]
    bakery.pipeline.stubber.assert_no_pending_responses()
    assert bakery.recorder.calls == []


def test_every_problem_of_the_parameters_is_named_at_once():
    with pytest.raises(pd.JobError) as caught:
        pd.parse_bake({"environment": "test", "bake": {"minutes": -1, "roleArn": "x", "regions": [], "alarms": [1]}})
    assert str(caught.value) == (
        f"{P}{W}.minutes: expected an integer from 1 to 1440, got -1; {W}.roleArn: expected an IAM role ARN, got 'x'; "
        f"{W}.regions: expected a non-empty list of region names, got []; {W}.alarms[0]: expected {ALARM_NAME}, "
        "got 1")


# --- the token ----------------------------------------------------------------------------------------------------


def _bake() -> pd.Bake:
    return pd.parse_bake(json.loads(bake_parameters()))[1]


def _forged(**fields: Any) -> str:
    good = pd._unpack(pd.encode_bake_token("test", _bake(), 1_700_000_000.0))
    return pd._pack({**good, **fields})


@pytest.mark.parametrize(("token", "message"), [
    (lambda: "not-a-token", "continuation token is not readable"),
    (lambda: pd._pack({"v": 9}), "continuation token is of another version of this function"),
    (lambda: pd.fitting_token("test", (t := _ten_region_targets()), [engine.TargetState(engine.DEPLOYING)] * len(t),
                              0.0), "continuation token is not a bake's"),
    (lambda: pd.encode_bake_token("prod", _bake(), 1_700_000_000.0),
     "continuation token does not match this bake's environment, role, regions and alarms"),
    (lambda: _forged(u=1_700_000_000 + 120 * 60), "continuation token's bake does not last the 12 minutes"),
    (lambda: _forged(s="x"), "continuation token's bake does not last the 12 minutes"),
    (lambda: _forged(s=1_700_003_600, u=1_700_003_600 + 720), "continuation token's bake starts in the future"),
    (lambda: _forged(s=1_700_000_000 - 25 * 3600, u=1_700_000_000 - 25 * 3600 + 720),
     "continuation token expired: its bake started 25 h ago, longer than CodePipeline runs an action"),
])
def test_a_tampered_foreign_or_expired_token_is_refused(bakery, token, message):
    bakery.pipeline.expect_failure(ANY)

    result = pd.handler(bake_event(token()), LONG_LAMBDA)

    assert result["status"] == "failed" and result["message"].startswith(message), result["message"]
    assert bakery.recorder.calls == []


def test_a_bake_token_is_refused_by_a_deployment():
    targets = _ten_region_targets()
    with pytest.raises(pd.JobError, match="does not match this job's targets"):
        pd.decode_token(pd.encode_bake_token("test", _bake(), 0.0), "test", targets, 900)


def test_the_bake_token_is_small_and_stable_across_invocations():
    token = pd.encode_bake_token("test", _bake(), 1_700_000_000.4)
    assert len(token) < 100
    assert pd.decode_bake_token(token, "test", _bake(), 1_700_000_500.0) == (1_700_000_000.0, 1_700_000_720.0)
