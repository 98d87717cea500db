"""The release state machine (Amazon States Language) as a plain dict: no Pulumi, so tests lint and run it as is.

Shape (all names unique across the machine, so logs, the console and the tests can name any state)::

    Prepare ──(fails: nothing changed yet)──────────────────────────────► NotifyRejected ─► ReleaseRejected (Fail)
       │
    DeployTasks     Map ≤N: UpdateTask
       │
    DeployServices  Map ≤N: DeployService ─► WaitForService ─► CheckService ─► IsServiceSteady
       │                                         ▲──── IN_PROGRESS ─────────────────┘ │ STEADY ─► ServiceDeployed
       │                                                 FAILED / TIMED_OUT / other ─► Fail (fails the Map)
    NotifySuccess ─► ReleaseSucceeded (Succeed)

    any failure of DeployTasks / DeployServices (the Maps' Catch)
       ─► SettleBeforeRollback (Wait: in-flight step Lambdas finish)
       ─► RollBackServices  Map ≤N: RollBackService ─► IsServiceRestored ─► WaitForRollback ─► CheckRollback ─┐
       │                                                      ▲──────────────── IN_PROGRESS ──────────────────┘
       ─► RollBackTasks     Map ≤N: RollBackTask
       ─► NotifyFailure ─► IsRollbackComplete ─► ReleaseRolledBack (Fail) | RollbackIncomplete (Fail)
    a failing notification ─► NotificationFailed (Fail)

Why it is built this way:

* Rollback trusts no Map result. It walks **every** target of the release and restores whatever differs from the
  snapshot ``Prepare`` took, so it is right whichever iterations ran, were aborted, or half-finished, and it is
  idempotent (a retry, or a second run, changes nothing more). Each rollback iteration catches its own failure, so
  one target that cannot be restored never stops the others, and it is reported by name.
* Payloads stay far below Step Functions' 256 KiB: every Lambda result goes through ``ResultSelector``, the Maps
  discard their results (``ResultPath: null``) or keep one tiny object per item, and ``Prepare`` refuses a release
  whose prepared state would not fit (see ``handlers.release``).
* History stays below Standard workflows' 25,000 events: the check steps wait inside the Lambda
  (``CROSSDEPLOY_CHECK_WAIT_SECONDS``) before returning IN_PROGRESS, so the Wait/Check/Choice loop turns a handful of
  times per service rather than once every ``poll_seconds``; ``Prepare`` refuses releases whose worst case would not
  fit.
* Both Maps are bounded: ECS throttles its APIs per account and region, and an unbounded inline Map runs 40 at once.
"""

from __future__ import annotations

import copy
from typing import Any

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"

# Step name -> handler (module.function), for the Pulumi side: one Lambda per step.
_HANDLERS = {
    "prepare": "handlers.release.prepare",
    "updateTask": "handlers.release.update_task",
    "deployService": "handlers.release.deploy_service",
    "checkService": "handlers.release.check_service",
    "rollbackTarget": "handlers.release.rollback_target",
    "checkRollback": "handlers.release.check_rollback",
    "notify": "handlers.release.notify",
}

# Lambda timeout per step. The check steps wait up to CROSSDEPLOY_CHECK_WAIT_SECONDS (default 300) inside the Lambda,
# so their timeout must exceed that; prepare reads every target of a release one by one. checkService may also run a
# rolling service's smoke test once its rollout completes (up to 645 s: 10 attempts of 60 s and the pauses, plus the
# load balancer lookup), so it gets Lambda's maximum; the handler never starts a check it could not finish.
_TIMEOUTS = {
    "prepare": 300,
    "updateTask": 60,
    "deployService": 60,
    "checkService": 900,
    "rollbackTarget": 60,
    "checkRollback": 360,
    "notify": 30,
}

# An inline Map never runs more than 40 iterations at once, whatever MaxConcurrency says.
MAX_INLINE_CONCURRENCY = 40

# Transient Lambda-service errors: the function did not run (or its result was lost), so invoking it again is safe;
# the handlers are written to be re-run. A failure *of the handler* is never retried here: it goes to the rollback.
_LAMBDA_RETRY = [{
    "ErrorEquals": ["Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                    "Lambda.TooManyRequestsException"],
    "IntervalSeconds": 2,
    "MaxAttempts": 6,
    "BackoffRate": 2.0,
    "MaxDelaySeconds": 30,
    "JitterStrategy": "FULL",
}]


def lambda_functions() -> dict[str, str]:
    """Step name -> handler path (``handlers.release.prepare``…): the Pulumi side creates one Lambda per entry."""
    return dict(_HANDLERS)


def lambda_timeouts() -> dict[str, int]:
    """Step name -> Lambda timeout in seconds the Pulumi side should configure (the definition relies on them)."""
    return dict(_TIMEOUTS)


def _settle_seconds() -> int:
    # When a Map fails, Step Functions stops its other iterations but their Lambda invocations run to completion.
    # Waiting out the longest forward step means no UpdateService or PutTargets lands after the rollback looked.
    return max(_TIMEOUTS["updateTask"], _TIMEOUTS["deployService"]) + 15


def _invoke(arn: str, payload: dict[str, Any], selector: dict[str, str], result_path: str | None,
            **rest: Any) -> dict[str, Any]:
    """A Lambda Task: the SDK-free ``lambda:invoke`` integration, keeping only the named parts of the payload."""
    return {
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "Parameters": {"FunctionName": arn, "Payload": payload},
        "ResultSelector": selector,
        "ResultPath": result_path,
        "Retry": copy.deepcopy(_LAMBDA_RETRY),
        **rest,
    }


def _catch_all(next_state: str, result_path: str) -> list[dict[str, Any]]:
    return [{"ErrorEquals": ["States.ALL"], "ResultPath": result_path, "Next": next_state}]


def _map(items_path: str, item_selector: dict[str, Any], max_concurrency: int, start_at: str,
         states: dict[str, Any], **rest: Any) -> dict[str, Any]:
    return {
        "Type": "Map",
        "ItemsPath": items_path,
        "ItemSelector": item_selector,
        "MaxConcurrency": max_concurrency,
        "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": start_at, "States": states},
        **rest,
    }


def _validate(function_arns: dict[str, str], max_concurrency: int, poll_seconds: int) -> None:
    problems = []
    if set(function_arns) != set(_HANDLERS):
        missing, extra = sorted(set(_HANDLERS) - set(function_arns)), sorted(set(function_arns) - set(_HANDLERS))
        problems.append(f"function_arns: missing {missing}, unexpected {extra}")
    for step, arn in function_arns.items():
        if not isinstance(arn, str) or not arn.startswith("arn:") or ":lambda:" not in arn:
            problems.append(f"function_arns[{step!r}]: not a Lambda function ARN: {arn!r}")
    # bool is an int in Python; True as a concurrency is a bug, not 1.
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) \
            or not 1 <= max_concurrency <= MAX_INLINE_CONCURRENCY:
        problems.append(f"max_concurrency must be an integer from 1 to {MAX_INLINE_CONCURRENCY} (0 would mean "
                        f"unbounded, and ECS throttles per account and region), got {max_concurrency!r}")
    if isinstance(poll_seconds, bool) or not isinstance(poll_seconds, int) or not 1 <= poll_seconds <= 3600:
        problems.append(f"poll_seconds must be an integer from 1 to 3600, got {poll_seconds!r}")
    if problems:
        raise ValueError("release state machine: " + "; ".join(problems))


def definition(function_arns: dict[str, str], *, max_concurrency: int = 10, poll_seconds: int = 15) -> dict[str, Any]:
    """The release state machine.

    ``function_arns``: one Lambda ARN per step of :func:`lambda_functions`. ``max_concurrency``: how many targets
    each Map updates at once (1-40; default 10 keeps well inside ECS's per-account, per-region API rates).
    ``poll_seconds``: the Wait between two checks of a service, and the check Lambda's own polling interval.
    """
    _validate(function_arns, max_concurrency, poll_seconds)
    fn = function_arns
    per_item = {"item.$": "$$.Map.Item.Value", "release.$": "$.release"}
    target = {"item.$": "$.item", "release.$": "$.release"}

    deploy_service_states = {
        "DeployService": _invoke(
            fn["deployService"], {**target, "startedAt.$": "$$.State.EnteredTime"},
            # deploymentId: the CodeDeploy deployment of a blue/green service (CheckService follows it), else null;
            # engine: the deploy engine's state of a rolling service (a few ARNs: no task definition), else null.
            {"taskDefinitionArn.$": "$.Payload.taskDefinitionArn", "deadline.$": "$.Payload.deadline",
             "deploymentId.$": "$.Payload.deploymentId", "engine.$": "$.Payload.engine"},
            "$.deploy", Next="WaitForService",
            Comment="Deploy engine: register the task definition rendered from the service's deploy document with "
                    "the pinned image, update the service (blue/green: a CodeDeploy deployment of a copy)."),
        "WaitForService": {"Type": "Wait", "Seconds": poll_seconds, "Next": "CheckService"},
        "CheckService": _invoke(
            fn["checkService"],
            {**target, "deploy.$": "$.deploy", "now.$": "$$.State.EnteredTime", "pollSeconds": poll_seconds},
            {"status.$": "$.Payload.status", "reason.$": "$.Payload.reason"}, "$.check", Next="IsServiceSteady"),
        "IsServiceSteady": {
            "Type": "Choice",
            "Choices": [
                {"Variable": "$.check.status", "StringEquals": "STEADY", "Next": "ServiceDeployed"},
                {"Variable": "$.check.status", "StringEquals": "IN_PROGRESS", "Next": "WaitForService"},
                {"Variable": "$.check.status", "StringEquals": "FAILED", "Next": "ServiceRolloutFailed"},
                {"Variable": "$.check.status", "StringEquals": "TIMED_OUT", "Next": "ServiceTimedOut"},
            ],
            "Default": "UnexpectedServiceStatus",
        },
        # One small object per item: the Map's aggregated result must stay small however many services there are.
        "ServiceDeployed": {"Type": "Pass", "Parameters": {"taskDefinitionArn.$": "$.deploy.taskDefinitionArn"},
                            "End": True},
        # A Fail inside an iteration fails the Map, whose Catch starts the rollback; the reason names the service.
        "ServiceRolloutFailed": {"Type": "Fail", "Error": "ServiceRolloutFailed", "CausePath": "$.check.reason"},
        "ServiceTimedOut": {"Type": "Fail", "Error": "ServiceTimedOut", "CausePath": "$.check.reason"},
        "UnexpectedServiceStatus": {"Type": "Fail", "Error": "UnexpectedServiceStatus",
                                    "CausePath": "$.check.reason"},
    }

    rollback_service_states = {
        "RollBackService": _invoke(
            fn["rollbackTarget"], {**target, "kind": "service", "startedAt.$": "$$.State.EnteredTime"},
            {"status.$": "$.Payload.status", "reason.$": "$.Payload.reason", "deadline.$": "$.Payload.deadline",
             "engine.$": "$.Payload.engine"},
            "$.rollback", Next="IsServiceRestored",
            Catch=_catch_all("ServiceNotRestored", "$.failure"),
            Comment="Put the service back on its snapshot task definition if it is not on it."),
        "IsServiceRestored": {
            "Type": "Choice",
            "Choices": [
                {"Variable": "$.rollback.status", "StringEquals": "STEADY", "Next": "ServiceRestored"},
                {"Variable": "$.rollback.status", "StringEquals": "IN_PROGRESS", "Next": "WaitForRollback"},
            ],
            "Default": "ServiceRollbackFailed",
        },
        "WaitForRollback": {"Type": "Wait", "Seconds": poll_seconds, "Next": "CheckRollback"},
        "CheckRollback": _invoke(
            fn["checkRollback"],
            {**target, "rollback.$": "$.rollback", "now.$": "$$.State.EnteredTime", "pollSeconds": poll_seconds},
            {"status.$": "$.Payload.status", "reason.$": "$.Payload.reason", "deadline.$": "$.Payload.deadline",
             "engine.$": "$.Payload.engine"},
            "$.rollback", Next="IsServiceRestored", Catch=_catch_all("ServiceNotRestored", "$.failure")),
        "ServiceRestored": {"Type": "Pass", "Parameters": {"name.$": "$.item.name", "restored": True},
                            "End": True},
        "ServiceRollbackFailed": {"Type": "Pass", "End": True, "Parameters": {
            "name.$": "$.item.name", "restored": False, "error.$": "$.rollback.status",
            "reason.$": "$.rollback.reason"}},
        "ServiceNotRestored": {"Type": "Pass", "End": True, "Parameters": {
            "name.$": "$.item.name", "restored": False, "error.$": "$.failure.Error"}},
    }

    rollback_task_states = {
        "RollBackTask": _invoke(
            fn["rollbackTarget"], {**target, "kind": "task", "startedAt.$": "$$.State.EnteredTime"},
            {"status.$": "$.Payload.status"}, "$.rollback", Next="TaskRestored",
            Catch=_catch_all("TaskNotRestored", "$.failure"),
            Comment="Put back every snapshot rule target that differs from what the rule has now."),
        "TaskRestored": {"Type": "Pass", "Parameters": {"name.$": "$.item.name", "restored": True}, "End": True},
        "TaskNotRestored": {"Type": "Pass", "End": True, "Parameters": {
            "name.$": "$.item.name", "restored": False, "error.$": "$.failure.Error"}},
    }

    execution = {"executionId.$": "$$.Execution.Id"}
    notified = {"summary.$": "$.Payload.summary", "rollbackComplete.$": "$.Payload.rollbackComplete"}
    notification_failed = _catch_all("NotificationFailed", "$.notifyError")
    states: dict[str, Any] = {
        "Prepare": _invoke(
            fn["prepare"], {"manifest.$": "$.manifest", **execution, "pollSeconds": poll_seconds},
            {"release.$": "$.Payload.release", "services.$": "$.Payload.services", "tasks.$": "$.Payload.tasks"},
            "$", Next="DeployTasks",
            # Prepare changes nothing (it reads, resolves and snapshots), so its failure has nothing to roll back.
            Catch=_catch_all("NotifyRejected", "$.error"),
            Comment="Validate, pin every image to its digest, snapshot every target."),
        "DeployTasks": _map(
            "$.tasks", per_item, max_concurrency, "UpdateTask", {
                "UpdateTask": _invoke(fn["updateTask"], target, {"taskDefinitionArn.$": "$.Payload.taskDefinitionArn"},
                                      "$", End=True),
            },
            ResultPath=None, Next="DeployServices", Catch=_catch_all("SettleBeforeRollback", "$.error"),
            Comment="Point each scheduled task's rule target at a copy of its task definition with the new image."),
        "DeployServices": _map(
            "$.services", per_item, max_concurrency, "DeployService", deploy_service_states,
            ResultPath=None, Next="NotifySuccess", Catch=_catch_all("SettleBeforeRollback", "$.error")),
        "NotifySuccess": _invoke(
            fn["notify"], {"outcome": "SUCCEEDED", "release.$": "$.release", **execution}, notified, "$.notified",
            Next="ReleaseSucceeded", Catch=notification_failed),
        "ReleaseSucceeded": {"Type": "Succeed", "OutputPath": "$.release"},
        "SettleBeforeRollback": {"Type": "Wait", "Seconds": _settle_seconds(), "Next": "RollBackServices"},
        "RollBackServices": _map(
            "$.services", per_item, max_concurrency, "RollBackService", rollback_service_states,
            ResultPath="$.rolledBackServices", Next="RollBackTasks",
            # Iterations catch their own failures; this only sees the Map itself failing. Roll the tasks back anyway.
            Catch=_catch_all("RollBackTasks", "$.rolledBackServices")),
        "RollBackTasks": _map(
            "$.tasks", per_item, max_concurrency, "RollBackTask", rollback_task_states,
            ResultPath="$.rolledBackTasks", Next="NotifyFailure",
            Catch=_catch_all("NotifyFailure", "$.rolledBackTasks")),
        "NotifyFailure": _invoke(
            fn["notify"], {"outcome": "ROLLED_BACK", "release.$": "$.release", **execution, "error.$": "$.error",
                           "services.$": "$.rolledBackServices", "tasks.$": "$.rolledBackTasks"},
            notified, "$.notified", Next="IsRollbackComplete", Catch=notification_failed),
        "IsRollbackComplete": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.notified.rollbackComplete", "BooleanEquals": True,
                         "Next": "ReleaseRolledBack"}],
            "Default": "RollbackIncomplete",
        },
        "ReleaseRolledBack": {"Type": "Fail", "Error": "ReleaseRolledBack", "CausePath": "$.notified.summary"},
        "RollbackIncomplete": {"Type": "Fail", "Error": "RollbackIncomplete", "CausePath": "$.notified.summary"},
        "NotifyRejected": _invoke(
            fn["notify"], {"outcome": "REJECTED", **execution, "error.$": "$.error"}, notified, "$.notified",
            Next="ReleaseRejected", Catch=notification_failed),
        "ReleaseRejected": {"Type": "Fail", "Error": "ReleaseRejected", "CausePath": "$.notified.summary"},
        "NotificationFailed": {"Type": "Fail", "Error": "NotificationFailed", "CausePath": "$.notifyError.Cause"},
    }
    return {
        "Comment": "crossdeploy release: every service and scheduled task of deployment.yaml as one unit, "
                   "rolled back as one unit",
        "StartAt": "Prepare",
        "States": states,
    }
