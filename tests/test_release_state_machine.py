"""The release state machine definition: statelint, structure (Distributed Maps bounded per account-region, every
failure reaching the whole rollback, no dead states), and the ASL runner that the handler tests rely on, run here
against fake steps and moto's S3 (items read by ItemReader, results written by ResultWriter)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from components.release_state_machine import definition, lambda_functions, lambda_timeouts
from handlers.release_limits import MAX_ACCOUNT_REGIONS, MAX_CONCURRENCY
from tests.asl_runner import LambdaServiceError, Runner, UnsupportedAsl, spend

STATELINT = Path(sys.executable).with_name("statelint")
ARNS = {step: f"arn:aws:lambda:us-east-2:111111111111:function:crossdeploy-release-{step}"
        for step in lambda_functions()}
FORWARD_TASKS = {"UpdateTask", "DeployService", "CheckService"}
ROLLBACK_TASKS = {"RollBackService", "CheckRollback", "RollBackTask"}
NOTIFY_TASKS = {"NotifySuccess", "NotifyFailure", "NotifyRejected"}
TARGET_MAPS = {"DeployTasks", "DeployServices", "RollBackServices", "RollBackTasks"}
GROUP_MAPS = {"DeployGroups", "RollBackGroups"}
BUCKET = "crossdeploy-artifacts"
# statelint 3.1.0 predates ItemReader's ReaderConfig.InputType (AWS added it with JSONL and manifest readers; a JSON
# file is read with InputType JSON). lint() takes exactly that field out before linting, and the test below checks
# that the unmodified definition draws no other complaint.
STATELINT_UNKNOWN = ('Field "InputType" not allowed in State Machine.States.{}.ItemProcessor.States.{}.ItemReader.'
                     "ReaderConfig")


def without_input_type(machine: dict) -> dict:
    copy_ = json.loads(json.dumps(machine))
    for _, state, _ in states(copy_):
        (state.get("ItemReader") or {}).get("ReaderConfig", {}).pop("InputType", None)
    return copy_


def lint(machine: dict, tmp_path: Path, *, as_is: bool = False) -> subprocess.CompletedProcess:
    path = tmp_path / "release.asl.json"
    path.write_text(json.dumps(machine if as_is else without_input_type(machine), indent=2))
    return subprocess.run([str(STATELINT), str(path)], capture_output=True, text=True, timeout=60)


def states(machine: dict, parent: str | None = None) -> Iterator[tuple[str, dict, str | None]]:
    """(name, state, enclosing Map or None) for every state, nested ones included."""
    for name, state in machine["States"].items():
        yield name, state, parent
        if state["Type"] == "Map":
            yield from states(state["ItemProcessor"], name)


@pytest.fixture(scope="module")
def machine() -> dict:
    return definition(ARNS)


@pytest.fixture(scope="module")
def index(machine) -> dict[str, tuple[dict, str | None]]:
    found = list(states(machine))
    assert len({name for name, _, _ in found}) == len(found), "state names are unique machine-wide"
    return {name: (state, parent) for name, state, parent in found}


def successors(name: str, index: dict) -> set[str]:
    """Where control can go from a state: Next/Default/Choices/Catch, into a Map's processor, and out of an
    iteration (its end continues after the Map; its failure takes the Map's Catch)."""
    state, parent = index[name]
    out = {state[k] for k in ("Next", "Default") if k in state}
    out |= {rule["Next"] for rule in state.get("Choices", [])}
    out |= {catcher["Next"] for catcher in state.get("Catch", [])}
    if state["Type"] == "Map":
        out.add(state["ItemProcessor"]["StartAt"])
    if parent is not None:
        if state.get("End"):
            out |= successors_after_map(parent, index)
        if state["Type"] == "Fail" or (state["Type"] == "Task" and not state.get("Catch")):
            out |= failure_targets(name, index)
    return out


def successors_after_map(map_name: str, index: dict) -> set[str]:
    map_state, _ = index[map_name]
    return {map_state["Next"]} if "Next" in map_state else set()


def failure_targets(name: str, index: dict) -> set[str]:
    """Where a failure of this state goes: its own catch-all, else the enclosing Map's (else nowhere)."""
    state, parent = index[name]
    catch_all = [c["Next"] for c in state.get("Catch", []) if "States.ALL" in c["ErrorEquals"]]
    if catch_all:
        return set(catch_all)
    return failure_targets(parent, index) if parent else set()


def reachable(start: set[str], index: dict) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += successors(name, index)
    return seen


def test_statelint_accepts_the_definition(machine, tmp_path):
    result = lint(machine, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # As is, statelint objects only to the field it does not know, once per ItemReader.
    complaints = {line.strip() for line in lint(machine, tmp_path, as_is=True).stdout.splitlines()[1:]}
    assert complaints == {STATELINT_UNKNOWN.format(group, inner) for group, inner in (
        ("DeployGroups", "DeployTasks"), ("DeployGroups", "DeployServices"), ("RollBackGroups", "RollBackServices"),
        ("RollBackGroups", "RollBackTasks"))}


def test_statelint_has_teeth(machine, tmp_path):
    broken = json.loads(json.dumps(machine))
    broken["States"]["DeployGroups"]["Next"] = "NoSuchState"
    del broken["States"]["IsRollbackComplete"]["Default"]
    broken["States"]["Prepare"]["Retry"][0]["BackoffRate"] = 2  # an integer: ASL wants a float
    result = lint(broken, tmp_path)
    assert result.returncode == 1
    assert "NoSuchState" in result.stdout and "BackoffRate" in result.stdout


@pytest.mark.parametrize("bound", [1, 10, MAX_CONCURRENCY])
def test_every_map_is_distributed_and_bounded_per_account_region(bound, tmp_path):
    machine = definition(ARNS, max_concurrency=bound)
    maps = {name: (state, parent) for name, state, parent in states(machine) if state["Type"] == "Map"}
    assert set(maps) == TARGET_MAPS | GROUP_MAPS
    for name, (state, parent) in maps.items():
        assert state["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
        assert type(state["MaxConcurrency"]) is int and state["MaxConcurrency"] > 0, "0 would be unbounded"
        if name in GROUP_MAPS:  # every account-region at once, from the descriptors Prepare returns
            assert parent is None and state["ItemsPath"] == "$.groups" and "ItemReader" not in state
            assert state["MaxConcurrency"] == MAX_ACCOUNT_REGIONS
        else:  # the bound applies inside one account-region's child execution, over its items file in S3
            assert parent in GROUP_MAPS and state["MaxConcurrency"] == bound
            assert state["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject"
            assert state["ItemReader"]["Parameters"]["Key.$"].startswith("$.group.items.")
            assert state["ResultWriter"]["Parameters"]["Prefix.$"].startswith("$.group.results.")
    if bound == MAX_CONCURRENCY:
        assert lint(machine, tmp_path).returncode == 0


@pytest.mark.parametrize("bound", [0, -1, MAX_CONCURRENCY + 1, True, 2.5, None])
def test_unbounded_or_silly_concurrency_is_refused(bound):
    with pytest.raises(ValueError, match="max_concurrency"):
        definition(ARNS, max_concurrency=bound)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="missing \\['notify'\\]"):
        definition({k: v for k, v in ARNS.items() if k != "notify"})
    with pytest.raises(ValueError, match="not a Lambda function ARN"):
        definition({**ARNS, "prepare": "prepare"})
    with pytest.raises(ValueError, match="poll_seconds"):
        definition(ARNS, poll_seconds=0)


def test_every_lambda_task_invokes_selects_and_retries(index):
    tasks = {name: state for name, (state, _) in index.items() if state["Type"] == "Task"}
    assert set(tasks) == FORWARD_TASKS | ROLLBACK_TASKS | NOTIFY_TASKS | {"Prepare"}
    for name, state in tasks.items():
        assert state["Resource"] == "arn:aws:states:::lambda:invoke", name
        assert state["Parameters"]["FunctionName"] in ARNS.values(), name
        assert "Payload" in state["Parameters"] or "Payload.$" in state["Parameters"], name
        # Only the handler's own answer travels on: never the integration's headers and metadata.
        assert state["ResultSelector"] and all(v.startswith("$.Payload") for v in state["ResultSelector"].values())
        retried = {e for r in state["Retry"] for e in r["ErrorEquals"]}
        assert {"Lambda.ServiceException", "Lambda.TooManyRequestsException", "Lambda.AWSLambdaException",
                "Lambda.SdkClientException"} <= retried, name
        assert all(r["BackoffRate"] > 1 and r["MaxAttempts"] >= 3 for r in state["Retry"]), name
    # Nothing per target travels in the state: the target Maps write their results to S3 and keep only where.
    for name in TARGET_MAPS:
        assert set(index[name][0]["ResultSelector"].values()) == {"$.ResultWriterDetails.Bucket",
                                                                  "$.ResultWriterDetails.Key"}, name
    # Forward: no failure tolerated, at every level. Back: every failure tolerated, so every target is tried.
    for name in ("DeployGroups", "DeployTasks", "DeployServices"):
        assert index[name][0]["ToleratedFailureCount"] == 0 and index[name][0]["ToleratedFailurePercentage"] == 0
    for name in ("RollBackGroups", "RollBackServices", "RollBackTasks"):
        assert index[name][0]["ToleratedFailurePercentage"] == 100 and "ToleratedFailureCount" not in index[name][0]


def test_every_forward_failure_reaches_the_whole_rollback_then_fails(index):
    rollback = {"SettleBeforeRollback", "RollBackGroups", "RollBackServices", "RollBackTasks", "NotifyFailure"}
    fails = {name for name, (state, _) in index.items() if state["Type"] == "Fail"}
    forward = FORWARD_TASKS | {name for name, (state, parent) in index.items()
                               if state["Type"] == "Fail" and parent == "DeployServices"}
    for name in forward:
        # No Catch on the way out: the target's child fails its Map Run, hence its account-region's child, hence
        # DeployGroups, whose Catch starts the rollback of every account-region.
        targets = failure_targets(name, index)
        assert targets == {"SettleBeforeRollback"}, name
        after = reachable(targets, index)
        assert rollback <= after, name
        assert after & fails and "ReleaseSucceeded" not in after, name
    for name in ("DeployTasks", "DeployServices", "DeployGroups"):
        assert failure_targets(name, index) == {"SettleBeforeRollback"}


def test_rollback_and_notify_failures_still_notify_and_fail(index):
    fails = {name for name, (state, _) in index.items() if state["Type"] == "Fail"}
    for name in ROLLBACK_TASKS:
        # A target that cannot be restored is reported, and the others still are restored: the iteration catches.
        targets = failure_targets(name, index)
        assert targets and all(index[t][1] == index[name][1] for t in targets), name
        after = reachable(targets, index)
        assert "NotifyFailure" in after and after & fails and "ReleaseSucceeded" not in after, name
    for name in ("RollBackServices", "RollBackTasks", "RollBackGroups"):
        assert "NotifyFailure" in reachable(failure_targets(name, index), index)
    for name in NOTIFY_TASKS:
        assert failure_targets(name, index) == {"NotificationFailed"}
        assert index["NotificationFailed"][0]["Type"] == "Fail"
    # Prepare changes nothing: its failure is reported and fails the execution, with no rollback to run.
    after_prepare = reachable(failure_targets("Prepare", index), index)
    assert "NotifyRejected" in after_prepare and "ReleaseRejected" in after_prepare
    assert not after_prepare & {"SettleBeforeRollback", "RollBackServices", "DeployTasks"}


def test_every_choice_has_a_default_and_no_state_is_unreachable(machine, index):
    for name, (state, _) in index.items():
        if state["Type"] == "Choice":
            assert state.get("Default") in index, name
    assert reachable({machine["StartAt"]}, index) == set(index)


def test_success_path_ends_in_succeed(machine, index):
    name, path = machine["StartAt"], []
    while "Next" in index[name][0]:
        path.append(name)
        name = index[name][0]["Next"]
    assert path == ["Prepare", "DeployGroups", "NotifySuccess"]
    group = index["DeployGroups"][0]["ItemProcessor"]
    assert group["StartAt"] == "DeployTasks" and group["States"]["DeployTasks"]["Next"] == "DeployServices"
    assert index[name][0]["Type"] == "Succeed"


def test_lambda_functions_name_real_handlers_with_timeouts_that_fit():
    functions = lambda_functions()
    assert set(functions) == set(ARNS) == set(lambda_timeouts())
    for step, path in functions.items():
        module, attribute = path.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attribute)), step
    timeouts = lambda_timeouts()
    settle = definition(ARNS)["States"]["SettleBeforeRollback"]["Seconds"]
    assert settle > max(timeouts["updateTask"], timeouts["deployService"])  # no forward step lands after rollback
    assert all(0 < t <= 900 for t in timeouts.values())


# --------------------------------------------------------------------------------------- the runner, with fake steps

ACCOUNTS_REGIONS = [("111122223333", "us-east-2"), ("111122223333", "eu-west-1"), ("444455556666", "us-east-2"),
                    ("444455556666", "eu-west-1")]


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-2", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-east-2"})
        yield client


class FakeSteps:
    """Stand-ins for the handlers that record what ran and can fail on demand. ``prepare`` writes the items files
    as the real one does (one per account-region and kind); ``per_group``: services in each account-region."""

    def __init__(self, s3: Any, services: int = 25, tasks: int = 3, per_group: list[int] | None = None,
                 service_seconds: float = 0) -> None:
        per_group = per_group or [services]
        self.s3 = s3
        self.items = {"services": [], "tasks": []}
        for g, count in enumerate(per_group):
            account, region = ACCOUNTS_REGIONS[g]
            self.items["services"] += [{"name": f"s{len(self.items['services']) + i}", "snapshot": "td:1",
                                        "accountId": account, "region": region} for i in range(count)]
        account, region = ACCOUNTS_REGIONS[0]
        self.items["tasks"] = [{"name": f"t{i}", "snapshot": [{"Id": "x"}], "accountId": account, "region": region}
                               for i in range(tasks)]
        self.service_seconds = service_seconds
        self.fail_service: str | None = None
        self.throttle_first: set[str] = set()
        self.calls: dict[str, list[Any]] = {step: [] for step in ARNS}
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def functions(self) -> dict[str, Any]:
        return {ARNS[step]: self._wrap(step, getattr(self, step)) for step in ARNS}

    def _wrap(self, step: str, fn: Any) -> Any:
        def call(payload: Any, context: Any) -> Any:
            with self._lock:
                self.calls[step].append(payload)
                first = len(self.calls[step]) == 1
                self.active += 1
                self.peak = max(self.peak, self.active)
            try:
                if first and step in self.throttle_first:
                    raise LambdaServiceError("Lambda.TooManyRequestsException", "Rate exceeded")
                time.sleep(0.02)  # long enough that iterations overlap even on a loaded machine
                return fn(payload)
            finally:
                with self._lock:
                    self.active -= 1
        return call

    def prepare(self, payload: dict) -> dict:
        assert payload["executionId"].endswith(":release-0001") and payload["input"] == {"manifest": {}}
        release = {"id": "release-0001", "bucket": BUCKET}
        groups = []
        for account, region in ACCOUNTS_REGIONS:
            mine = {kind: [i for i in items if (i["accountId"], i["region"]) == (account, region)]
                    for kind, items in self.items.items()}
            if not any(mine.values()):
                continue
            where = f"release-runs/release-0001/items/{account}-{region}"
            keys = {kind: f"{where}/{kind}.json" for kind in mine}
            for kind, key in keys.items():
                self.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(mine[kind]).encode())
            groups.append({"accountId": account, "region": region, "services": len(mine["services"]),
                           "tasks": len(mine["tasks"]), "items": keys,
                           "results": {"deploy": f"release-runs/release-0001/results/deploy/{account}-{region}",
                                       "rollback": f"release-runs/release-0001/results/rollback/{account}-{region}"}})
        return {"release": release, "groups": groups, "ignored": "x" * 1000}

    def updateTask(self, payload: dict) -> dict:
        return {"taskDefinitionArn": "td:2"}

    def deployService(self, payload: dict) -> dict:
        assert payload["startedAt"].endswith("Z") and set(payload) == {"item", "release", "startedAt"}
        # A blue/green service's step answers with its CodeDeploy deployment; a rolling one's with the engine's state.
        blue_green = payload["item"].get("blueGreen")
        deployment = f"d-{payload['item']['name']}" if blue_green else None
        engine = None if blue_green else {"phase": "deploying", "serviceDeployment": "sd"}
        return {"taskDefinitionArn": "td:2", "deadline": "2025-01-01T00:15:00.000Z", "deploymentId": deployment,
                "engine": engine, "ignored": "x" * 100}

    def checkService(self, payload: dict) -> dict:
        blue_green = payload["item"].get("blueGreen")
        expected = f"d-{payload['item']['name']}" if blue_green else None
        assert payload["deploy"] == {"taskDefinitionArn": "td:2", "deadline": "2025-01-01T00:15:00.000Z",
                                     "deploymentId": expected,
                                     "engine": None if blue_green else {"phase": "deploying",
                                                                        "serviceDeployment": "sd"}}
        spend(self.service_seconds)  # polling inside the Lambda until the rollout is done
        if payload["item"]["name"] == self.fail_service:
            return {"status": "FAILED", "reason": f"{payload['item']['name']}: rollout FAILED"}
        return {"status": "STEADY", "reason": "steady"}

    def rollbackTarget(self, payload: dict) -> dict:
        return {"status": "IN_PROGRESS" if payload["kind"] == "service" else "STEADY", "reason": "",
                "deadline": "2025-01-01T00:30:00.000Z", "engine": {"phase": "restoring"}}

    def checkRollback(self, payload: dict) -> dict:
        assert payload["rollback"]["engine"] == {"phase": "restoring"}  # the restore's state reaches the check
        return {"status": "STEADY", "reason": "", "deadline": payload["rollback"]["deadline"], "engine": None}

    def notify(self, payload: dict) -> dict:
        # What the real notify reads: each account-region's Map Run results, as ResultWriter wrote them.
        complete = True
        for group in payload.get("groups") or []:
            for kind in ("services", "tasks"):
                location = group["results"][kind]
                manifest = json.loads(self.s3.get_object(Bucket=location["bucket"], Key=location["key"])["Body"]
                                      .read())
                entries = [e for files in manifest["ResultFiles"].values() for f in files
                           for e in json.loads(self.s3.get_object(Bucket=BUCKET, Key=f["Key"])["Body"].read())]
                group.setdefault("outputs", {})[kind] = [json.loads(e["Output"]) for e in entries
                                                         if e["Status"] == "SUCCEEDED"]
                if payload["outcome"] == "ROLLED_BACK":
                    complete &= all(o["restored"] for o in group["outputs"][kind]) and len(entries) == group[kind]
        return {"summary": f"{payload['outcome']}", "rollbackComplete": complete}


def run(steps: FakeSteps, s3: Any, **kwargs: Any) -> Any:
    return Runner(definition(ARNS, **kwargs), steps.functions(), s3=s3).run({"manifest": {}})


def test_runner_runs_the_success_path_within_the_bound(s3):
    steps = FakeSteps(s3)
    execution = run(steps, s3, max_concurrency=4)
    assert execution.status == "SUCCEEDED", execution.cause
    assert execution.output == {"id": "release-0001", "bucket": BUCKET}
    assert len(steps.calls["deployService"]) == 25 and len(steps.calls["updateTask"]) == 3
    assert execution.peak_concurrency["DeployTasks"] == 3 and execution.peak_concurrency["DeployServices"] == 4
    assert steps.peak <= 4
    [notified] = steps.calls["notify"]
    assert notified["outcome"] == "SUCCEEDED" and notified["maxConcurrency"] == 4
    # The notice reads every target's result from S3 (one child execution each), none from the state.
    [group] = notified["groups"]
    assert sorted(o["name"] for o in group["outputs"]["services"]) == sorted(f"s{i}" for i in range(25))
    assert execution.child_executions == 1 + 3 + 25  # the account-region, its tasks, its services
    # As ResultWriter writes them: <Prefix>/<map run id>/manifest.json naming the result files by status.
    location = group["results"]["services"]
    assert location["key"].startswith(f"release-runs/release-0001/results/deploy/{ACCOUNTS_REGIONS[0][0]}-")
    assert location["key"].endswith("/manifest.json")
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=location["key"])["Body"].read())
    assert manifest["DestinationBucket"] == BUCKET and ":mapRun:" in manifest["MapRunArn"]
    assert set(manifest["ResultFiles"]) == {"FAILED", "PENDING", "SUCCEEDED"}
    [succeeded] = manifest["ResultFiles"]["SUCCEEDED"]
    [entry, *_] = json.loads(s3.get_object(Bucket=BUCKET, Key=succeeded["Key"])["Body"].read())
    assert {"ExecutionArn", "Input", "Output", "Status", "StartDate", "StopDate"} <= set(entry)
    assert entry["ExecutionArn"].split(":execution:")[1].startswith("crossdeploy-release/DeployServices:")
    assert execution.virtual_seconds == 7 * 15  # ceil(25 / 4) waves of one Wait each


def test_the_bound_applies_per_account_region_and_the_makespan_follows_the_waves(s3):
    # 23 services over four account-regions, 3 at once in each: the largest account-region's 12 services take
    # four waves. One bound over the whole release would take ceil(23 / 3) = 8.
    steps = FakeSteps(s3, tasks=0, per_group=[7, 3, 12, 1], service_seconds=180)
    execution = run(steps, s3, max_concurrency=3)
    assert execution.status == "SUCCEEDED", execution.cause
    assert execution.map_runs["DeployServices"] == 4
    assert execution.peak_concurrency["DeployServices"] == 3  # per Map Run: never more than the bound
    assert execution.peak_total["DeployServices"] > 3  # and the account-regions run side by side
    assert execution.virtual_seconds == 4 * (15 + 180)
    # Each target ran in a child execution with its own (small) history; the parent's stays small too.
    assert execution.max_child_history_events < 100 and execution.history_events < 100


def test_blue_green_deployment_id_reaches_the_check_and_nothing_else_does(s3):
    steps = FakeSteps(s3, services=4, tasks=0)
    for item in steps.items["services"][::2]:
        item["blueGreen"] = {"application": "app", "deploymentGroup": item["name"]}
    execution = run(steps, s3)
    assert execution.status == "SUCCEEDED", execution.cause
    # checkService asserts what it was given; here: every check saw its own deployment (or null when rolling).
    assert sorted(p["deploy"]["deploymentId"] or "-" for p in steps.calls["checkService"]) == ["-", "-", "d-s0", "d-s2"]


def test_one_failure_in_one_account_region_rolls_back_every_target_of_every_account_region(s3):
    steps = FakeSteps(s3, tasks=3, per_group=[10, 10, 10, 10], service_seconds=60)
    steps.fail_service = "s23"  # third account-region
    execution = run(steps, s3, max_concurrency=2)
    assert (execution.status, execution.error) == ("FAILED", "ReleaseRolledBack")
    assert len(steps.calls["deployService"]) < 40, "children after the failure never start, in any account-region"
    # Rollback walks every item of every account-region, not only those that ran.
    assert len(steps.calls["rollbackTarget"]) == 43 and len(steps.calls["checkRollback"]) == 40
    [notified] = steps.calls["notify"]
    assert notified["outcome"] == "ROLLED_BACK"
    # The Map-level error names no target: the notice reads the failed child from the forward results.
    assert notified["error"]["Error"] == "States.ExceedToleratedFailureThreshold"
    assert sorted(o["name"] for g in notified["groups"] for o in g["outputs"]["services"]) == sorted(
        f"s{i}" for i in range(40))
    assert all(o["restored"] for g in notified["groups"] for o in g["outputs"]["services"])
    assert execution.visits["SettleBeforeRollback"] == 1
    failed = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="release-runs/release-0001/"
                                                                                    "results/deploy/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("FAILED_0.json"):
                failed += json.loads(s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
    mine = [e for e in failed if e["Status"] == "FAILED"]
    assert [(e["Error"], e["Cause"]) for e in mine] == [("ServiceRolloutFailed", "s23: rollout FAILED")]
    assert json.loads(mine[0]["Input"])["item"]["name"] == "s23"


def test_runner_retries_lambda_service_errors_but_not_handler_errors(s3):
    steps = FakeSteps(s3, services=3, tasks=1)
    steps.throttle_first = {"prepare", "notify"}
    execution = run(steps, s3)
    assert execution.status == "SUCCEEDED", execution.cause
    assert len(steps.calls["prepare"]) == 2 and len(steps.calls["notify"]) == 2

    steps = FakeSteps(s3, services=3, tasks=1)

    def broken(payload: dict) -> dict:
        raise KeyError("boom")
    steps.updateTask = broken
    execution = run(steps, s3)
    assert execution.error == "ReleaseRolledBack"
    assert len(steps.calls["updateTask"]) == 1
    assert steps.calls["notify"][0]["error"]["Error"] == "States.ExceedToleratedFailureThreshold"


def test_runner_fails_on_payloads_over_256_kib_and_on_unknown_fields(s3):
    steps = FakeSteps(s3, services=1, tasks=0)
    steps.prepare = lambda payload: {"release": {"id": "r"}, "groups": [{"name": "x" * 300_000}]}
    execution = run(steps, s3)
    assert (execution.status, execution.error) == ("FAILED", "States.DataLimitExceeded")
    group = ("States", "DeployGroups", "ItemProcessor", "States")
    for mutate in (lambda m: m["States"]["Prepare"].update(TimeoutSecondsPath="$.t"),
                   lambda m: _at(m, *group, "DeployServices").update(ItemBatcher={"MaxItemsPerBatch": 5}),
                   lambda m: _at(m, *group, "DeployServices")["ItemReader"].update(
                       ReaderConfig={"InputType": "CSV"}),
                   lambda m: _at(m, *group, "DeployServices")["ItemProcessor"].update(
                       ProcessorConfig={"Mode": "DISTRIBUTED", "ExecutionType": "EXPRESS"}),
                   lambda m: _at(m, *group, "DeployServices").update(ToleratedFailurePercentage=101),
                   lambda m: m["States"]["IsRollbackComplete"]["Choices"][0].update(IsPresent=True),
                   lambda m: m["States"]["Prepare"]["Parameters"].update({"Payload.$": "States.JsonMerge($, $)"}),
                   lambda m: m["States"].update(Extra={"Type": "Parallel", "Branches": [], "End": True})):
        broken = definition(ARNS)
        mutate(broken)
        with pytest.raises(UnsupportedAsl):
            Runner(broken, steps.functions(), s3=s3)
    with pytest.raises(UnsupportedAsl, match="s3="):
        Runner(definition(ARNS), steps.functions())


def _at(machine: dict, *path: str) -> dict:
    for key in path:
        machine = machine[key]
    return machine
