"""The release state machine definition: statelint, structure (bounded Maps, every failure reaching the rollback,
no dead states), and the ASL runner that the handler tests rely on, run here against fake steps."""

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

import pytest

from components.release_state_machine import (
    MAX_INLINE_CONCURRENCY,
    definition,
    lambda_functions,
    lambda_timeouts,
)
from tests.asl_runner import LambdaServiceError, Runner, UnsupportedAsl

STATELINT = Path(sys.executable).with_name("statelint")
ARNS = {step: f"arn:aws:lambda:us-east-2:111111111111:function:crossdeploy-release-{step}"
        for step in lambda_functions()}
FORWARD_TASKS = {"UpdateTask", "DeployService", "CheckService"}
ROLLBACK_TASKS = {"RollBackService", "CheckRollback", "RollBackTask"}
NOTIFY_TASKS = {"NotifySuccess", "NotifyFailure", "NotifyRejected"}


def lint(machine: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "release.asl.json"
    path.write_text(json.dumps(machine, indent=2))
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


def test_statelint_has_teeth(machine, tmp_path):
    broken = json.loads(json.dumps(machine))
    broken["States"]["DeployServices"]["Next"] = "NoSuchState"
    del broken["States"]["IsRollbackComplete"]["Default"]
    broken["States"]["Prepare"]["Retry"][0]["BackoffRate"] = 2  # an integer: ASL wants a float
    result = lint(broken, tmp_path)
    assert result.returncode == 1
    assert "NoSuchState" in result.stdout and "BackoffRate" in result.stdout


@pytest.mark.parametrize("bound", [1, 10, MAX_INLINE_CONCURRENCY])
def test_both_maps_are_bounded_by_the_configured_concurrency(bound, tmp_path):
    machine = definition(ARNS, max_concurrency=bound)
    maps = {name: state for name, state, _ in states(machine) if state["Type"] == "Map"}
    assert {"DeployTasks", "DeployServices"} <= set(maps)
    for state in maps.values():
        assert type(state["MaxConcurrency"]) is int and state["MaxConcurrency"] == bound > 0
    if bound == MAX_INLINE_CONCURRENCY:
        assert lint(machine, tmp_path).returncode == 0


@pytest.mark.parametrize("bound", [0, -1, MAX_INLINE_CONCURRENCY + 1, True, 2.5, None])
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
    # The Maps keep nothing per item but a small object (deploy) or nothing (rollback keeps one line per item).
    assert index["DeployTasks"][0]["ResultPath"] is None and index["DeployServices"][0]["ResultPath"] is None


def test_every_forward_failure_reaches_the_whole_rollback_then_fails(index):
    rollback = {"SettleBeforeRollback", "RollBackServices", "RollBackTasks", "NotifyFailure"}
    fails = {name for name, (state, _) in index.items() if state["Type"] == "Fail"}
    forward = FORWARD_TASKS | {name for name, (state, parent) in index.items()
                               if state["Type"] == "Fail" and parent == "DeployServices"}
    for name in forward:
        targets = failure_targets(name, index)
        assert targets == {"SettleBeforeRollback"}, name
        after = reachable(targets, index)
        assert rollback <= after, name
        assert after & fails and "ReleaseSucceeded" not in after, name
    for name in ("DeployTasks", "DeployServices"):
        assert failure_targets(name, index) == {"SettleBeforeRollback"}


def test_rollback_and_notify_failures_still_notify_and_fail(index):
    fails = {name for name, (state, _) in index.items() if state["Type"] == "Fail"}
    for name in ROLLBACK_TASKS:
        # A target that cannot be restored is reported, and the others still are restored: the iteration catches.
        targets = failure_targets(name, index)
        assert targets and all(index[t][1] == index[name][1] for t in targets), name
        after = reachable(targets, index)
        assert "NotifyFailure" in after and after & fails and "ReleaseSucceeded" not in after, name
    for name in ("RollBackServices", "RollBackTasks"):
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
    assert path == ["Prepare", "DeployTasks", "DeployServices", "NotifySuccess"]
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

class FakeSteps:
    """Stand-ins for the handlers that record what ran and can fail on demand."""

    def __init__(self, services: int = 25, tasks: int = 3) -> None:
        self.items = {"services": [{"name": f"s{i}", "snapshot": "td:1"} for i in range(services)],
                      "tasks": [{"name": f"t{i}", "snapshot": [{"Id": "x"}]} for i in range(tasks)]}
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
        assert payload["executionId"].endswith(":release-0001")
        return {"release": {"id": "release-0001"}, **self.items, "ignored": "x" * 1000}

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
        complete = all(r["restored"] for r in payload.get("services") or []) if "services" in payload else True
        return {"summary": f"{payload['outcome']}", "rollbackComplete": complete}


def test_runner_runs_the_success_path_within_the_bound():
    steps = FakeSteps()
    execution = Runner(definition(ARNS, max_concurrency=4), steps.functions()).run({"manifest": {}})
    assert execution.status == "SUCCEEDED", execution.cause
    assert execution.output == {"id": "release-0001"}
    assert len(steps.calls["deployService"]) == 25 and len(steps.calls["updateTask"]) == 3
    assert execution.peak_concurrency == {"DeployTasks": 3, "DeployServices": 4} and steps.peak <= 4
    assert [p["outcome"] for p in steps.calls["notify"]] == ["SUCCEEDED"]
    assert execution.virtual_seconds == 15  # one Wait per service, run side by side


def test_blue_green_deployment_id_reaches_the_check_and_nothing_else_does():
    steps = FakeSteps(services=4, tasks=0)
    for item in steps.items["services"][::2]:
        item["blueGreen"] = {"application": "app", "deploymentGroup": item["name"]}
    execution = Runner(definition(ARNS), steps.functions()).run({"manifest": {}})
    assert execution.status == "SUCCEEDED", execution.cause
    # checkService asserts what it was given; here: every check saw its own deployment (or null when rolling).
    assert sorted(p["deploy"]["deploymentId"] or "-" for p in steps.calls["checkService"]) == ["-", "-", "d-s0", "d-s2"]


def test_runner_routes_a_failed_service_through_the_whole_rollback():
    steps = FakeSteps()
    steps.fail_service = "s3"
    execution = Runner(definition(ARNS, max_concurrency=2), steps.functions()).run({"manifest": {}})
    assert (execution.status, execution.error) == ("FAILED", "ReleaseRolledBack")
    assert len(steps.calls["deployService"]) < 25, "iterations after the failure never start"
    # Rollback walks every item, not only those that ran.
    assert len(steps.calls["rollbackTarget"]) == 28 and len(steps.calls["checkRollback"]) == 25
    [notified] = steps.calls["notify"]
    assert notified["outcome"] == "ROLLED_BACK"
    assert notified["error"] == {"Error": "ServiceRolloutFailed", "Cause": "s3: rollout FAILED"}
    assert notified["services"] == [{"name": f"s{i}", "restored": True} for i in range(25)]
    assert execution.visits["SettleBeforeRollback"] == 1


def test_runner_retries_lambda_service_errors_but_not_handler_errors():
    steps = FakeSteps(services=3, tasks=1)
    steps.throttle_first = {"prepare", "notify"}
    execution = Runner(definition(ARNS), steps.functions()).run({"manifest": {}})
    assert execution.status == "SUCCEEDED", execution.cause
    assert len(steps.calls["prepare"]) == 2 and len(steps.calls["notify"]) == 2

    steps = FakeSteps(services=3, tasks=1)

    def broken(payload: dict) -> dict:
        raise KeyError("boom")
    steps.updateTask = broken
    execution = Runner(definition(ARNS), steps.functions()).run({"manifest": {}})
    assert execution.error == "ReleaseRolledBack"
    assert len(steps.calls["updateTask"]) == 1
    assert json.loads(steps.calls["notify"][0]["error"]["Cause"])["errorType"] == "KeyError"


def test_runner_fails_on_payloads_over_256_kib_and_on_unknown_fields():
    steps = FakeSteps(services=1, tasks=0)
    steps.prepare = lambda payload: {"release": {"id": "r"}, "services": [{"name": "x" * 300_000}], "tasks": []}
    execution = Runner(definition(ARNS), steps.functions()).run({"manifest": {}})
    assert (execution.status, execution.error) == ("FAILED", "States.DataLimitExceeded")
    for mutate in (lambda m: m["States"]["Prepare"].update(TimeoutSecondsPath="$.t"),
                   lambda m: m["States"]["DeployServices"].update(ToleratedFailurePercentage=5),
                   lambda m: m["States"]["IsRollbackComplete"]["Choices"][0].update(IsPresent=True),
                   lambda m: m["States"]["Prepare"]["Parameters"].update({"Payload.$": "States.JsonMerge($, $)"}),
                   lambda m: m["States"].update(Extra={"Type": "Parallel", "Branches": [], "End": True})):
        broken = definition(ARNS)
        mutate(broken)
        with pytest.raises(UnsupportedAsl):
            Runner(broken, steps.functions())
