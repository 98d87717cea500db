"""A small in-process interpreter for the subset of Amazon States Language the release state machine uses.

It runs the real definition with the real handlers (or fakes), so tests exercise the wiring — paths, selectors,
Catch/Retry, Map fan-out — not just each piece. It is strict on purpose: any field or feature it does not implement
raises :class:`UnsupportedAsl` when the runner is built, so the definition cannot drift into something the runner
silently misreads.

Implemented: Task (``arn:aws:states:::lambda:invoke`` only), Map (inline ItemProcessor, ItemsPath, ItemSelector,
MaxConcurrency run on a thread pool of that size, peak concurrency recorded), Choice (StringEquals, BooleanEquals),
Distributed Map (``ProcessorConfig`` ``{"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}``: see below),
Wait (Seconds; advances a virtual clock, never sleeps), Pass, Succeed, Fail (Error/Cause/ErrorPath/CausePath);
Parameters/ItemSelector/ResultSelector with ``.$`` paths, InputPath/ResultPath/OutputPath, Retry, Catch; the
context object's Execution.Id/Name/StartTime, State.Name/EnteredTime and, in ItemSelector, Map.Item.Index/Value.

Semantics kept from Step Functions: States.ALL catches neither States.Runtime (a bad path) nor
States.DataLimitExceeded (a state over 256 KiB); a failed iteration fails its Map, and iterations not yet started
never start; a Lambda failure is named after the exception's class and its Cause is Lambda's JSON.
Virtual time: each branch (the execution, each Map iteration) has its own clock; a Map ends at its slowest iteration.
A function may spend virtual time itself (:func:`spend`: a check Lambda polling inside, an SDK backoff), which moves
its iteration's clock on; :func:`now` is the calling iteration's virtual time.

Distributed Map, as Step Functions documents it: items from ``ItemsPath`` or an ``ItemReader`` (``s3:getObject`` of a
JSON array, ``ReaderConfig.InputType`` JSON, read with the ``s3`` client the runner is given: moto in tests); each
item runs as a child execution with its own context (``$$.Execution.Id`` is the child's ARN) and its own history
(``Execution.max_child_history_events``), not the parent's; ``MaxConcurrency`` bounds each Map Run on its own (two
runs of one state run side by side, each up to its bound: ``peak_concurrency`` is per run, ``peak_total`` across);
``ToleratedFailureCount``/``ToleratedFailurePercentage``: a failure beyond them stops the Map Run's other children
(aborted) and fails the state with ``States.ExceedToleratedFailureThreshold`` (0 tolerated when neither is given);
``ResultWriter`` (``s3:putObject``) writes ``<Prefix>/<map run id>/manifest.json`` and ``SUCCEEDED_0.json`` /
``FAILED_0.json`` (child executions with Input, Output or Error/Cause, Status, StartDate, StopDate; aborted children
are in FAILED with Status ABORTED) also when the Map Run fails, and the state's result is then
``{"MapRunArn", "ResultWriterDetails": {"Bucket", "Key"}}``. A stop reaches nested Map Runs: when an outer Map Run
fails, the children of its children stop too. Not implemented (refused): ItemBatcher, CSV/JSONL/manifest readers,
ItemReader ``MaxItems``, ResultWriter ``WriterConfig``, Express children.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import threading
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
PAYLOAD_LIMIT = 256 * 1024
S3_GET_OBJECT = "arn:aws:states:::s3:getObject"
S3_PUT_OBJECT = "arn:aws:states:::s3:putObject"
UNCATCHABLE = {"States.Runtime", "States.DataLimitExceeded"}
DISTRIBUTED = {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
# History events per state, as Step Functions counts them (entered + exited; a Lambda Task also scheduled, started,
# succeeded/failed), so tests can check a release against the 25,000-event limit.
_EVENTS = {"Task": 5, "Map": 2, "Choice": 2, "Wait": 2, "Pass": 2, "Succeed": 2, "Fail": 1}

_COMMON = {"Type", "Comment"}
_FIELDS = {
    "Task": _COMMON | {"Resource", "Parameters", "ResultSelector", "ResultPath", "OutputPath", "InputPath", "Retry",
                       "Catch", "Next", "End"},
    "Map": _COMMON | {"ItemsPath", "ItemSelector", "ItemProcessor", "MaxConcurrency", "ResultSelector",
                      "ResultPath", "OutputPath", "InputPath", "Retry", "Catch", "Next", "End", "ItemReader",
                      "ResultWriter", "ToleratedFailureCount", "ToleratedFailurePercentage"},
    "Choice": _COMMON | {"Choices", "Default", "InputPath", "OutputPath"},
    "Wait": _COMMON | {"Seconds", "InputPath", "OutputPath", "Next", "End"},
    "Pass": _COMMON | {"Result", "Parameters", "ResultPath", "OutputPath", "InputPath", "Next", "End"},
    "Succeed": _COMMON | {"InputPath", "OutputPath"},
    "Fail": _COMMON | {"Error", "Cause", "ErrorPath", "CausePath"},
}
_MACHINE_FIELDS = {"Comment", "StartAt", "States"}
_PROCESSOR_FIELDS = {"Comment", "StartAt", "States", "ProcessorConfig"}
_RETRIER_FIELDS = {"ErrorEquals", "IntervalSeconds", "MaxAttempts", "BackoffRate", "MaxDelaySeconds",
                   "JitterStrategy"}
_CATCHER_FIELDS = {"ErrorEquals", "Next", "ResultPath"}
_RULE_OPERATORS = {"StringEquals", "BooleanEquals"}
_TASK_PARAMETERS = {"FunctionName", "Payload", "Payload.$"}
_CONTEXT_PATHS = {"$$.Execution.Id", "$$.Execution.Name", "$$.Execution.StartTime", "$$.State.Name",
                  "$$.State.EnteredTime", "$$.Map.Item.Index", "$$.Map.Item.Value"}
_PATH = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


class UnsupportedAsl(Exception):
    """The definition uses something this runner does not implement (so a test would be meaningless)."""


class StatesError(Exception):
    """An error inside the machine, with Step Functions' error name and cause."""

    def __init__(self, error: str, cause: str = "") -> None:
        super().__init__(f"{error}: {cause}")
        self.error, self.cause = error, cause


class LambdaServiceError(StatesError):
    """Raise from a fake function to simulate a Lambda service error (``Lambda.TooManyRequestsException``…)."""


class _Cancelled(Exception):
    """Another iteration of the same Map failed: stop at the next transition."""


_invocation = threading.local()


def spend(seconds: float) -> None:
    """Called from inside a function the runner invokes: it took ``seconds`` more of virtual time (a check polling
    inside its Lambda, an SDK's backoff). Its iteration's clock moves on by as much when it returns."""
    if getattr(_invocation, "branch", None) is not None:
        _invocation.spent += seconds


def now() -> dt.datetime | None:
    """The virtual time of the invocation running on this thread (None outside one)."""
    branch = getattr(_invocation, "branch", None)
    return None if branch is None else branch.now + dt.timedelta(seconds=_invocation.spent)


@dataclass
class Execution:
    status: str
    output: Any = None
    error: str | None = None
    cause: str | None = None
    peak_concurrency: dict[str, int] = field(default_factory=dict)
    invocations: Counter = field(default_factory=Counter)
    visits: Counter = field(default_factory=Counter)
    history_events: int = 0
    virtual_seconds: float = 0.0
    peak_total: dict[str, int] = field(default_factory=dict)
    child_executions: int = 0
    max_child_history_events: int = 0
    map_runs: Counter = field(default_factory=Counter)


# --------------------------------------------------------------------------------------------------------- validation

def _check_fields(where: str, obj: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(obj) - allowed
    if unknown:
        raise UnsupportedAsl(f"{where}: fields {sorted(unknown)} are not implemented by the runner")


def _check_path(where: str, path: Any, *, nullable: bool = False) -> None:
    if path is None and nullable:
        return
    if not isinstance(path, str) or not (_PATH.fullmatch(path) or path in _CONTEXT_PATHS):
        raise UnsupportedAsl(f"{where}: path {path!r} is not supported")


def _check_template(where: str, template: Any) -> None:
    if isinstance(template, Mapping):
        for key, value in template.items():
            if key.endswith(".$"):
                _check_path(f"{where}.{key}", value)
            else:
                _check_template(f"{where}.{key}", value)
    elif isinstance(template, list):
        for i, value in enumerate(template):
            _check_template(f"{where}[{i}]", value)


def _check_states(where: str, machine: Mapping[str, Any], allowed: set[str], names: set[str]) -> None:
    _check_fields(where, machine, allowed)
    states = machine.get("States")
    if not isinstance(states, Mapping) or machine.get("StartAt") not in states:
        raise UnsupportedAsl(f"{where}: StartAt must name one of States")
    for name, state in states.items():
        at = f"{where}.{name}"
        if name in names:
            raise UnsupportedAsl(f"{at}: duplicate state name")
        names.add(name)
        kind = state.get("Type")
        if kind not in _FIELDS:
            raise UnsupportedAsl(f"{at}: state type {kind!r} is not implemented")
        _check_fields(at, state, _FIELDS[kind])
        for key in ("InputPath", "OutputPath", "ItemsPath", "ErrorPath", "CausePath"):
            if key in state:
                _check_path(f"{at}.{key}", state[key])
        if "ResultPath" in state:
            _check_path(f"{at}.ResultPath", state["ResultPath"], nullable=True)
        for key in ("Parameters", "ItemSelector", "ResultSelector"):
            if key in state:
                _check_template(f"{at}.{key}", state[key])
        for next_key in ("Next", "Default"):
            if next_key in state and state[next_key] not in states:
                raise UnsupportedAsl(f"{at}.{next_key}: no state {state[next_key]!r} here")
        for i, retrier in enumerate(state.get("Retry", [])):
            _check_fields(f"{at}.Retry[{i}]", retrier, _RETRIER_FIELDS)
            if retrier.get("JitterStrategy", "NONE") not in ("NONE", "FULL"):
                raise UnsupportedAsl(f"{at}.Retry[{i}]: JitterStrategy {retrier['JitterStrategy']!r}")
        for i, catcher in enumerate(state.get("Catch", [])):
            _check_fields(f"{at}.Catch[{i}]", catcher, _CATCHER_FIELDS)
            if catcher.get("Next") not in states:
                raise UnsupportedAsl(f"{at}.Catch[{i}].Next: no state {catcher.get('Next')!r} here")
            _check_path(f"{at}.Catch[{i}].ResultPath", catcher.get("ResultPath", "$"), nullable=True)
        if kind == "Task":
            if state.get("Resource") != LAMBDA_INVOKE:
                raise UnsupportedAsl(f"{at}: only {LAMBDA_INVOKE} is implemented, not {state.get('Resource')!r}")
            params = state.get("Parameters") or {}
            _check_fields(f"{at}.Parameters", params, _TASK_PARAMETERS)
            if "FunctionName" not in params:
                raise UnsupportedAsl(f"{at}: Parameters.FunctionName is required")
        if kind == "Map":
            processor = state.get("ItemProcessor")
            config = processor.get("ProcessorConfig", {"Mode": "INLINE"}) if isinstance(processor, Mapping) else None
            if config not in ({"Mode": "INLINE"}, DISTRIBUTED):
                raise UnsupportedAsl(f"{at}: ProcessorConfig {config!r}: only INLINE and DISTRIBUTED/STANDARD are "
                                     "implemented")
            distributed_only = {"ItemReader", "ResultWriter", "ToleratedFailureCount", "ToleratedFailurePercentage"}
            if config != DISTRIBUTED and distributed_only & set(state):
                raise UnsupportedAsl(f"{at}: {sorted(distributed_only & set(state))} need a Distributed Map")
            if "ItemReader" in state and "ItemsPath" in state:
                raise UnsupportedAsl(f"{at}: ItemsPath and ItemReader together")
            reader = state.get("ItemReader")
            if reader is not None:
                _check_fields(f"{at}.ItemReader", reader, {"Resource", "ReaderConfig", "Parameters"})
                if reader.get("Resource") != S3_GET_OBJECT or reader.get("ReaderConfig") != {"InputType": "JSON"}:
                    raise UnsupportedAsl(f"{at}.ItemReader: only {S3_GET_OBJECT} of a JSON file is implemented")
                _check_fields(f"{at}.ItemReader.Parameters", reader.get("Parameters") or {},
                              {"Bucket", "Bucket.$", "Key", "Key.$"})
                _check_template(f"{at}.ItemReader.Parameters", reader.get("Parameters"))
            writer = state.get("ResultWriter")
            if writer is not None:
                _check_fields(f"{at}.ResultWriter", writer, {"Resource", "Parameters"})
                if writer.get("Resource") != S3_PUT_OBJECT:
                    raise UnsupportedAsl(f"{at}.ResultWriter: only {S3_PUT_OBJECT} is implemented")
                _check_fields(f"{at}.ResultWriter.Parameters", writer.get("Parameters") or {},
                              {"Bucket", "Bucket.$", "Prefix", "Prefix.$"})
                _check_template(f"{at}.ResultWriter.Parameters", writer.get("Parameters"))
            for key, top in (("ToleratedFailureCount", None), ("ToleratedFailurePercentage", 100)):
                value = state.get(key, 0)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (top and value > top):
                    raise UnsupportedAsl(f"{at}: {key} must be an integer from 0" + (f" to {top}" if top else ""))
            concurrency = state.get("MaxConcurrency", 0)
            if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 0:
                raise UnsupportedAsl(f"{at}: MaxConcurrency must be a non-negative integer")
            _check_states(f"{at}.ItemProcessor", processor, _PROCESSOR_FIELDS, names)
        if kind == "Choice":
            if not state.get("Choices"):
                raise UnsupportedAsl(f"{at}: Choices must not be empty")
            for i, rule in enumerate(state["Choices"]):
                operators = set(rule) - {"Variable", "Next"}
                if len(operators) != 1 or not operators <= _RULE_OPERATORS:
                    raise UnsupportedAsl(f"{at}.Choices[{i}]: only one of {sorted(_RULE_OPERATORS)} is implemented")
                _check_path(f"{at}.Choices[{i}].Variable", rule.get("Variable"))
                if rule.get("Next") not in states:
                    raise UnsupportedAsl(f"{at}.Choices[{i}].Next: no state {rule.get('Next')!r} here")
        if kind == "Wait" and (isinstance(state.get("Seconds"), bool) or not isinstance(state.get("Seconds"), int)):
            raise UnsupportedAsl(f"{at}: only an integer Seconds is implemented")
        if kind in ("Task", "Map", "Wait", "Pass") and ("Next" in state) == bool(state.get("End")):
            raise UnsupportedAsl(f"{at}: exactly one of Next and End")


# -------------------------------------------------------------------------------------------------------- evaluation

def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _get(path: str, data: Any, context: Mapping[str, Any]) -> Any:
    if path.startswith("$$."):
        key = path[3:]
        if key not in context:
            raise StatesError("States.Runtime", f"context path {path} is not available here")
        return context[key]
    value = data
    for name, index in _STEP.findall(path[1:]):
        if name:
            if not isinstance(value, Mapping) or name not in value:
                raise StatesError("States.Runtime", f"path {path} not found in the state's input")
            value = value[name]
        else:
            if not isinstance(value, list) or int(index) >= len(value):
                raise StatesError("States.Runtime", f"path {path} not found in the state's input")
            value = value[int(index)]
    return value


def _template(template: Any, data: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(template, Mapping):
        out = {}
        for key, value in template.items():
            if key.endswith(".$"):
                out[key[:-2]] = copy.deepcopy(_get(value, data, context))
            else:
                out[key] = _template(value, data, context)
        return out
    if isinstance(template, list):
        return [_template(v, data, context) for v in template]
    return copy.deepcopy(template)


def _set(path: str | None, data: Any, result: Any) -> Any:
    """ResultPath: null keeps the input, ``$`` replaces it, ``$.a.b`` sets (creating objects on the way)."""
    if path is None:
        return data
    if path == "$":
        return result
    out = copy.deepcopy(data)
    if not isinstance(out, dict):
        raise StatesError("States.Runtime", f"ResultPath {path} needs an object input")
    steps = _STEP.findall(path[1:])
    target = out
    for name, index in steps[:-1]:
        if index:
            raise UnsupportedAsl(f"ResultPath {path}: indices are not implemented")
        target = target.setdefault(name, {})
        if not isinstance(target, dict):
            raise StatesError("States.Runtime", f"ResultPath {path} crosses a non-object")
    name, index = steps[-1]
    if index:
        raise UnsupportedAsl(f"ResultPath {path}: indices are not implemented")
    target[name] = result
    return out


def _matches(names: list[str], error: str) -> bool:
    if error in names:
        return True
    if error in UNCATCHABLE:
        return False
    return "States.ALL" in names or ("States.TaskFailed" in names and error != "States.Timeout")


class _Branch:
    """One thread of control (the execution, a child execution or one Map iteration) with its own virtual clock,
    the execution it belongs to (its history and context) and every stop signal that reaches it."""

    def __init__(self, now: dt.datetime, cancels: tuple[threading.Event, ...] = (), *, execution: _Run) -> None:
        self.now = now
        self.cancels = cancels
        self.execution = execution

    def cancelled(self) -> bool:
        return any(event.is_set() for event in self.cancels)


@dataclass
class _Run:
    """An execution (the top one, or a Distributed Map's child): its ARN, name, start and history."""

    arn: str
    name: str
    start: dt.datetime
    history: int = 0


class Runner:
    """Runs a definition. ``functions``: Lambda ARN -> ``fn(payload, context)``. ``s3``: a boto3 S3 client for
    Distributed Maps' ItemReader and ResultWriter (moto in tests)."""

    def __init__(self, definition: Mapping[str, Any], functions: Mapping[str, Callable[[Any, Any], Any]], *,
                 name: str = "release-0001", start: dt.datetime | None = None,
                 state_machine_arn: str = "arn:aws:states:us-east-2:111111111111:stateMachine:crossdeploy-release",
                 context_factory: Callable[[str], Any] | None = None, s3: Any = None) -> None:
        _check_states("State Machine", definition, _MACHINE_FIELDS, set())
        arns = {s["Parameters"]["FunctionName"] for s in _all_states(definition) if s["Type"] == "Task"}
        missing = arns - set(functions)
        if missing:
            raise UnsupportedAsl(f"no Python function for {sorted(missing)}")
        if s3 is None and any("ItemReader" in s or "ResultWriter" in s for s in _all_states(definition)):
            raise UnsupportedAsl("the definition reads or writes S3 (ItemReader/ResultWriter): give the runner s3=")
        self.definition = definition
        self.functions = functions
        self.name = name
        self.start = start or dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
        self.state_machine_arn = state_machine_arn
        self.execution_arn = state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"
        self.context_factory = context_factory or (lambda _arn: None)
        self.s3 = s3
        self._lock = threading.Lock()
        self._active: Counter = Counter()
        self._result = Execution(status="RUNNING")

    # -- public
    def run(self, execution_input: Any) -> Execution:
        result = self._result
        top = _Run(self.execution_arn, self.name, self.start)
        branch = _Branch(self.start, execution=top)
        try:
            if _size(execution_input) > PAYLOAD_LIMIT:
                raise StatesError("States.DataLimitExceeded", "execution input over 256 KiB")
            result.output = self._run_states(self.definition, execution_input, branch)
            result.status = "SUCCEEDED"
        except StatesError as exc:
            result.status, result.error, result.cause = "FAILED", exc.error, exc.cause
        result.history_events = top.history
        result.virtual_seconds = (branch.now - self.start).total_seconds()
        return result

    # -- machinery
    def _count(self, name: str, kind: str, branch: _Branch) -> None:
        with self._lock:
            self._result.visits[name] += 1
            branch.execution.history += _EVENTS[kind]

    def _context(self, name: str, branch: _Branch, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        run = branch.execution
        context = {"Execution.Id": run.arn, "Execution.Name": run.name, "Execution.StartTime": _iso(run.start),
                   "State.Name": name, "State.EnteredTime": _iso(branch.now)}
        context.update(extra or {})
        return context

    def _run_states(self, machine: Mapping[str, Any], data: Any, branch: _Branch) -> Any:
        name = machine["StartAt"]
        while True:
            if branch.cancelled():
                raise _Cancelled
            state = machine["States"][name]
            kind = state["Type"]
            self._count(name, kind, branch)
            if _size(data) > PAYLOAD_LIMIT:
                raise StatesError("States.DataLimitExceeded", f"input of {name} is over 256 KiB")
            if kind == "Succeed":
                return _get(state.get("OutputPath", "$"), _get(state.get("InputPath", "$"), data, {}), {})
            if kind == "Fail":
                error = _get(state["ErrorPath"], data, {}) if "ErrorPath" in state else state.get("Error", "")
                cause = _get(state["CausePath"], data, {}) if "CausePath" in state else state.get("Cause", "")
                raise StatesError(str(error), str(cause))
            if kind == "Choice":
                effective = _get(state.get("InputPath", "$"), data, {})
                name = self._choose(state, effective)
                data = _get(state.get("OutputPath", "$"), effective, {})
                continue
            try:
                data = self._run_state(name, state, data, branch)
            except StatesError as exc:
                catcher = next((c for c in state.get("Catch", []) if _matches(c["ErrorEquals"], exc.error)), None)
                if catcher is None:
                    raise
                data = _set(catcher.get("ResultPath", "$"), data, {"Error": exc.error, "Cause": exc.cause})
                name = catcher["Next"]
                continue
            if _size(data) > PAYLOAD_LIMIT:
                raise StatesError("States.DataLimitExceeded", f"output of {name} is over 256 KiB")
            if state.get("End"):
                return data
            name = state["Next"]

    @staticmethod
    def _choose(state: Mapping[str, Any], data: Any) -> str:
        for rule in state["Choices"]:
            value = _get(rule["Variable"], data, {})
            if "StringEquals" in rule and isinstance(value, str) and value == rule["StringEquals"]:
                return rule["Next"]
            if "BooleanEquals" in rule and isinstance(value, bool) and value == rule["BooleanEquals"]:
                return rule["Next"]
        if "Default" not in state:
            raise StatesError("States.NoChoiceMatched", f"no choice matched {data!r:.200}")
        return state["Default"]

    def _run_state(self, name: str, state: Mapping[str, Any], data: Any, branch: _Branch) -> Any:
        """Task, Map, Wait, Pass: InputPath → Parameters → work (with Retry) → ResultSelector → ResultPath →
        OutputPath."""
        kind = state["Type"]
        effective = _get(state.get("InputPath", "$"), data, {})
        if kind == "Wait":
            branch.now += dt.timedelta(seconds=state["Seconds"])
            return _get(state.get("OutputPath", "$"), effective, {})
        context = self._context(name, branch)
        if kind == "Pass":
            source = _template(state["Parameters"], effective, context) if "Parameters" in state else effective
            result = copy.deepcopy(state["Result"]) if "Result" in state else source
        else:
            attempts: Counter = Counter()
            while True:
                try:
                    if kind == "Task":
                        result = self._invoke(state, effective, context, branch)
                    else:
                        result = self._map(name, state, effective, branch)
                    break
                except StatesError as exc:
                    index, retrier = next(((i, r) for i, r in enumerate(state.get("Retry", []))
                                           if _matches(r["ErrorEquals"], exc.error)), (None, None))
                    if retrier is None or attempts[index] >= retrier.get("MaxAttempts", 3):
                        raise
                    delay = retrier.get("IntervalSeconds", 1) * retrier.get("BackoffRate", 2.0) ** attempts[index]
                    branch.now += dt.timedelta(seconds=min(delay, retrier.get("MaxDelaySeconds", delay)))
                    attempts[index] += 1
                    context = self._context(name, branch)
            if "ResultSelector" in state:
                result = _template(state["ResultSelector"], result, context)
        out = _set(state.get("ResultPath", "$"), effective, result)
        return _get(state.get("OutputPath", "$"), out, {})

    def _invoke(self, state: Mapping[str, Any], data: Any, context: Mapping[str, Any], branch: _Branch) -> Any:
        params = _template(state["Parameters"], data, context)
        arn = params["FunctionName"]
        payload = json.loads(json.dumps(params.get("Payload", {})))  # what Lambda would deliver: JSON only
        with self._lock:
            self._result.invocations[arn] += 1
        _invocation.branch, _invocation.spent = branch, 0.0
        try:
            returned = self.functions[arn](payload, self.context_factory(arn))
        except StatesError:
            raise
        except Exception as exc:  # the handler failed: Step Functions sees Lambda's error shape
            error = type(exc).__name__
            cause = json.dumps({"errorMessage": str(exc), "errorType": error, "requestId": str(uuid.uuid4()),
                                "stackTrace": traceback.format_tb(exc.__traceback__)[-3:]})
            raise StatesError(error, cause) from exc
        finally:
            branch.now += dt.timedelta(seconds=_invocation.spent)
            _invocation.branch = None
        try:
            returned = json.loads(json.dumps(returned))
        except TypeError as exc:
            raise StatesError("Lambda.Unknown", f"result is not JSON: {exc}") from exc
        request = str(uuid.uuid4())
        # The integration's full result, headers and all: a Task without ResultSelector carries all of it along.
        return {"ExecutedVersion": "$LATEST", "Payload": returned, "StatusCode": 200,
                "SdkHttpMetadata": {"HttpHeaders": {"Content-Type": "application/json", "X-Amz-Executed-Version":
                                                    "$LATEST", "x-amzn-RequestId": request}, "HttpStatusCode": 200},
                "SdkResponseMetadata": {"RequestId": request}}

    def _read_items(self, name: str, reader: Mapping[str, Any], data: Any, context: Mapping[str, Any]) -> list[Any]:
        params = _template(reader["Parameters"], data, context)
        try:
            body = self.s3.get_object(Bucket=params["Bucket"], Key=params["Key"])["Body"].read()
            items = json.loads(body)
        except Exception as exc:  # Step Functions reports any reader failure the same way
            raise StatesError("States.ItemReaderFailed", f"{name}: cannot read s3://{params.get('Bucket')}/"
                                                         f"{params.get('Key')}: {exc}") from exc
        if not isinstance(items, list):
            raise StatesError("States.ItemReaderFailed", f"{name}: the JSON file is not an array")
        return items

    def _write_results(self, name: str, writer: Mapping[str, Any], data: Any, context: Mapping[str, Any],
                       run_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        params = _template(writer["Parameters"], data, context)
        bucket, prefix = params["Bucket"], str(params.get("Prefix", "")).rstrip("/")
        base = f"{prefix}/{run_id}" if prefix else run_id
        files: dict[str, list[dict[str, Any]]] = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
        try:
            for status in files:
                chosen = [r for r in records if (r["Status"] == "SUCCEEDED") == (status == "SUCCEEDED")
                          and status != "PENDING"]
                if chosen:
                    key = f"{base}/{status}_0.json"
                    body = json.dumps(chosen).encode()
                    self.s3.put_object(Bucket=bucket, Key=key, Body=body)
                    files[status].append({"Key": key, "Size": len(body)})
            map_run_arn = f"{self.state_machine_arn.replace(':stateMachine:', ':mapRun:')}/{name}:{run_id}"
            manifest = {"DestinationBucket": bucket, "MapRunArn": map_run_arn, "ResultFiles": files}
            self.s3.put_object(Bucket=bucket, Key=f"{base}/manifest.json", Body=json.dumps(manifest).encode())
        except Exception as exc:
            raise StatesError("States.ResultWriterFailed", f"{name}: {exc}") from exc
        return {"MapRunArn": map_run_arn, "ResultWriterDetails": {"Bucket": bucket, "Key": f"{base}/manifest.json"}}

    def _map(self, name: str, state: Mapping[str, Any], data: Any, branch: _Branch) -> Any:
        processor = state["ItemProcessor"]
        distributed = processor.get("ProcessorConfig") == DISTRIBUTED
        context = self._context(name, branch)
        if "ItemReader" in state:
            items = self._read_items(name, state["ItemReader"], data, context)
        else:
            items = _get(state.get("ItemsPath", "$"), data, {})
        if not isinstance(items, list):
            raise StatesError("States.Runtime", f"{name}: ItemsPath does not point at an array")
        workers = state.get("MaxConcurrency", 0) or max(1, len(items))
        count, percentage = state.get("ToleratedFailureCount"), state.get("ToleratedFailurePercentage")
        run_id = str(uuid.uuid4())
        cancel = threading.Event()
        failures: list[StatesError] = []
        records: list[dict[str, Any] | None] = [None] * len(items)
        ends: list[dt.datetime] = [branch.now]
        results: list[Any] = [None] * len(items)
        active = [0]
        with self._lock:
            self._result.map_runs[name] += 1

        def exceeded(failed: int) -> bool:
            if not distributed or (count is None and percentage is None):
                return failed > 0
            return (count is not None and failed > count) or (
                percentage is not None and failed * 100 > percentage * len(items))

        def iteration(index: int, start: dt.datetime) -> dt.datetime:
            if cancel.is_set() or branch.cancelled():
                return start
            with self._lock:
                active[0] += 1
                self._active[name] += 1
                peak, total = self._result.peak_concurrency, self._result.peak_total
                peak[name] = max(peak.get(name, 0), active[0])
                total[name] = max(total.get(name, 0), self._active[name])
                if not distributed:
                    branch.execution.history += 2  # MapIterationStarted, MapIterationSucceeded/Failed/Aborted
            cancels = (*branch.cancels, cancel)
            if distributed:
                child = _Run(f"{self.state_machine_arn.replace(':stateMachine:', ':execution:')}/{name}:"
                             f"{uuid.uuid4()}", str(uuid.uuid4()), branch.now)
                own = _Branch(start, cancels, execution=child)
                child.start = start
            else:
                child, own = None, _Branch(start, cancels, execution=branch.execution)
            value = None
            record: dict[str, Any] | None = None
            try:
                extra = {"Map.Item.Index": index, "Map.Item.Value": copy.deepcopy(items[index])}
                value = _template(state["ItemSelector"], data, self._context(name, own, extra)) \
                    if "ItemSelector" in state else items[index]
                if child is not None:
                    child.history += 2  # ExecutionStarted, ExecutionSucceeded/Failed
                results[index] = self._run_states(processor, value, own)
                record = {"Status": "SUCCEEDED", "Output": json.dumps(results[index]),
                          "OutputDetails": {"Included": True}}
            except _Cancelled:
                record = {"Status": "ABORTED"}
            except StatesError as exc:
                record = {"Status": "FAILED", "Error": exc.error, "Cause": exc.cause}
                with self._lock:
                    failures.append(exc)
                    if exceeded(len(failures)):
                        cancel.set()
            finally:
                with self._lock:
                    active[0] -= 1
                    self._active[name] -= 1
                    ends.append(own.now)
                    if child is not None:
                        self._result.child_executions += 1
                        self._result.max_child_history_events = max(self._result.max_child_history_events,
                                                                     child.history)
                if child is not None and record is not None:
                    records[index] = {
                        "ExecutionArn": child.arn, "Name": child.name, "StateMachineArn": self.state_machine_arn,
                        "Input": json.dumps(value), "InputDetails": {"Included": True},
                        "StartDate": _iso(child.start), "StopDate": _iso(own.now), "RedriveCount": 0,
                        "RedriveStatus": "NOT_REDRIVABLE", **record}
            return own.now

        # `workers` slots pull the next item until none is left: exactly MaxConcurrency iterations at a time, as
        # Step Functions does. Each slot has a virtual clock: an item starts when its slot's previous item ended, and
        # the slot that is earliest in virtual time takes the next item (a slot ahead waits for the busy ones behind
        # it), so a Map Run of n items of d seconds takes ceil(n / MaxConcurrency) x d, as it would in AWS. The
        # threads come from one shared pool: starting threads per Map costs more than the iterations themselves.
        pending = iter(range(len(items)))
        clocks: dict[int, dt.datetime] = {}
        turn = threading.Condition()

        def worker(slot: int) -> None:
            clock = branch.now
            while True:
                with turn:
                    clocks[slot] = clock
                    turn.notify_all()
                    while clock > min(clocks.values()) and not (cancel.is_set() or branch.cancelled()):
                        turn.wait(0.5)
                    index = next(pending, None)
                    if index is None:
                        del clocks[slot]
                        turn.notify_all()
                        return
                clock = iteration(index, clock)

        slots = min(workers, len(items))
        with turn:
            clocks.update({slot: branch.now for slot in range(slots)})
        for future in [_pool().submit(worker, slot) for slot in range(slots)]:
            future.result()
        branch.now = max(ends)
        if branch.cancelled():
            raise _Cancelled
        written = None
        if distributed and "ResultWriter" in state:
            written = self._write_results(name, state["ResultWriter"], data, self._context(name, branch), run_id,
                                          [r for r in records if r is not None])
        if failures and exceeded(len(failures)):
            if distributed:
                raise StatesError("States.ExceedToleratedFailureThreshold",
                                  f"{name}: {len(failures)} of {len(items)} child executions failed, over the "
                                  "tolerated failure threshold")
            raise failures[0]
        if written is not None:
            return written
        return [r for r, rec in zip(results, records, strict=True) if not distributed or
                (rec is not None and rec["Status"] == "SUCCEEDED")]


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    # Sized for nested Maps: an outer Map Run's children each hold a thread while their own Map Runs use more.
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=512, thread_name_prefix="asl-map"))
        return _POOL[0]


def _all_states(machine: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = []
    for state in machine["States"].values():
        found.append(state)
        if state.get("Type") == "Map":
            found += _all_states(state["ItemProcessor"])
    return found
