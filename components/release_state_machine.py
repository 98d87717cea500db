"""The release state machine (Amazon States Language) as a plain dict: no Pulumi, so tests lint and run it as is.

Shape (all names unique across the machine, so logs, the console and the tests can name any state)::

    Prepare ──(fails: nothing changed yet)──────────────────────────────► NotifyRejected ─► ReleaseRejected (Fail)
       │   writes one items file per account-region to S3: <bucket>/release-runs/<execution>/items/…
    DeployGroups    Distributed Map over the account-regions (all at once), one child execution each:
       │              DeployTasks     Distributed Map ≤N, items from S3: UpdateTask ─► TaskDeployed
       │              DeployServices  Distributed Map ≤N, items from S3:
       │                DeployService ─► WaitForService ─► CheckService ─► IsServiceSteady
       │                                     ▲──── IN_PROGRESS ─────────────────┘ │ STEADY ─► ServiceDeployed
       │                                             FAILED / TIMED_OUT / other ─► Fail (fails the child)
       │              GroupDeployed (the Map Runs' result manifests)
    NotifySuccess ─► ReleaseSucceeded (Succeed)

    any failure in any account-region (tolerated failures: 0, at every level)
       ─► SettleBeforeRollback (Wait: in-flight step Lambdas finish)
       ─► RollBackGroups  Distributed Map over the account-regions, one child execution each:
              RollBackServices  Distributed Map ≤N, every service of the items file:
                RollBackService ─► IsServiceRestored ─► WaitForRollback ─► CheckRollback ─┐
                                        ▲──────────────── IN_PROGRESS ──────────────────┘
              RollBackTasks     Distributed Map ≤N: RollBackTask
              GroupRolledBack
       ─► NotifyFailure ─► IsRollbackComplete ─► ReleaseRolledBack (Fail) | RollbackIncomplete (Fail)
    a failing notification ─► NotificationFailed (Fail)

Why it is built this way:

* ``release.maxConcurrency`` (N) bounds each account-region: ECS throttles per account and region, so each
  account-region gets its own Map Run with ``MaxConcurrency`` N (a Distributed Map's MaxConcurrency is the Map Run's
  total, so one Map over every target would share N among all account-regions). A throttle in one account-region
  slows only its Map Run; the Lambda retries and the SDK's backoff happen inside that group's children.
* One failure anywhere stops the release: every Map tolerates 0 failures, so a failed target fails its Map Run
  (``States.ExceedToleratedFailureThreshold``), which fails its account-region's child execution, which fails the
  outer Map Run, whose Catch starts the rollback; Step Functions stops the other children.
* Rollback trusts no Map result. It walks **every** target of the release (the same items files) and restores
  whatever differs from the snapshot ``Prepare`` took, so it is right whichever iterations ran, were aborted, or
  half-finished, and it is idempotent. Each rollback iteration catches its own failure and the rollback Maps
  tolerate every failure, so one target that cannot be restored never stops the others; it is reported by name.
* Nothing grows with the release in the execution's state: targets are read from S3 (``ItemReader``), results go to
  S3 (``ResultWriter``: a manifest and result files per Map Run, which ``notify`` reads), the state holds one small
  descriptor per account-region. Every target runs in its own child execution with its own 25,000-event history.
  The ceiling that remains (``handlers.release_limits``) is what ``Prepare`` can read in one Lambda run; the release
  file's validator enforces the same.
* History per child stays small: the check steps wait inside the Lambda (``CROSSDEPLOY_CHECK_WAIT_SECONDS``) before
  returning IN_PROGRESS, so the Wait/Check/Choice loop turns a handful of times per service.
"""

from __future__ import annotations

import copy
from typing import Any

from handlers.release_limits import MAX_ACCOUNT_REGIONS, MAX_CONCURRENCY, MIN_CONCURRENCY

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
S3_GET_OBJECT = "arn:aws:states:::s3:getObject"
S3_PUT_OBJECT = "arn:aws:states:::s3:putObject"

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
# so their timeout must exceed that; prepare reads and snapshots every target of a release (up to
# release_limits.MAX_TARGETS) and writes the items files, so it gets Lambda's maximum. checkService may also run a
# rolling service's smoke test once its rollout completes (up to 645 s: 10 attempts of 60 s and the pauses, plus the
# load balancer lookup), so it gets Lambda's maximum; the handler never starts a check it could not finish. notify
# reads every Map Run's result files.
_TIMEOUTS = {
    "prepare": 900,
    "updateTask": 60,
    "deployService": 60,
    "checkService": 900,
    "rollbackTarget": 60,
    "checkRollback": 360,
    "notify": 120,
}

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
# Every child execution of a Distributed Map is a Standard workflow: a service's rollout loop can last longer than an
# Express workflow's 5 minutes, and a Standard child is exactly-once.
_DISTRIBUTED = {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}


def lambda_functions() -> dict[str, str]:
    """Step name -> handler path (``handlers.release.prepare``…): the Pulumi side creates one Lambda per entry."""
    return dict(_HANDLERS)


def lambda_timeouts() -> dict[str, int]:
    """Step name -> Lambda timeout in seconds the Pulumi side should configure (the definition relies on them)."""
    return dict(_TIMEOUTS)


def _settle_seconds() -> int:
    # When a Map Run fails, Step Functions stops its other child executions but their Lambda invocations run to
    # completion. Waiting out the longest forward step means no UpdateService or PutTargets lands after the rollback
    # looked.
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


def _tolerance(tolerate_all: bool) -> dict[str, int]:
    # Forward: 0, so one failed target fails the Map Run. Rollback: every failure, so one target that cannot be
    # restored never stops the others (its iterations catch their own errors; this covers the child itself failing).
    return {"ToleratedFailurePercentage": 100} if tolerate_all else {"ToleratedFailureCount": 0,
                                                                     "ToleratedFailurePercentage": 0}


def _groups_map(item_selector: dict[str, Any], start_at: str, states: dict[str, Any], *, tolerate_all: bool,
                **rest: Any) -> dict[str, Any]:
    """The outer Distributed Map: one child execution per account-region descriptor (``$.groups``), all at once."""
    return {
        "Type": "Map",
        "ItemsPath": "$.groups",
        "ItemSelector": item_selector,
        "MaxConcurrency": MAX_ACCOUNT_REGIONS,
        **_tolerance(tolerate_all),
        "ItemProcessor": {"ProcessorConfig": dict(_DISTRIBUTED), "StartAt": start_at, "States": states},
        **rest,
    }


def _targets_map(items_key: str, results_prefix: str, max_concurrency: int, start_at: str,
                 states: dict[str, Any], *, tolerate_all: bool, **rest: Any) -> dict[str, Any]:
    """A Distributed Map over one account-region's items file, at most ``max_concurrency`` targets at once, its
    results written to S3 (the Map's output is only where they are)."""
    return {
        "Type": "Map",
        "ItemReader": {"Resource": S3_GET_OBJECT, "ReaderConfig": {"InputType": "JSON"},
                       "Parameters": {"Bucket.$": "$.release.bucket", "Key.$": items_key}},
        "ItemSelector": {"item.$": "$$.Map.Item.Value", "release.$": "$.release"},
        "MaxConcurrency": max_concurrency,
        **_tolerance(tolerate_all),
        "ItemProcessor": {"ProcessorConfig": dict(_DISTRIBUTED), "StartAt": start_at, "States": states},
        "ResultWriter": {"Resource": S3_PUT_OBJECT,
                         "Parameters": {"Bucket.$": "$.release.bucket", "Prefix.$": results_prefix}},
        "ResultSelector": {"bucket.$": "$.ResultWriterDetails.Bucket", "key.$": "$.ResultWriterDetails.Key"},
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
            or not MIN_CONCURRENCY <= max_concurrency <= MAX_CONCURRENCY:
        problems.append(f"max_concurrency must be an integer from {MIN_CONCURRENCY} to {MAX_CONCURRENCY} per "
                        f"account-region (0 would mean unbounded, and ECS throttles per account and region), got "
                        f"{max_concurrency!r}")
    if isinstance(poll_seconds, bool) or not isinstance(poll_seconds, int) or not 1 <= poll_seconds <= 3600:
        problems.append(f"poll_seconds must be an integer from 1 to 3600, got {poll_seconds!r}")
    if problems:
        raise ValueError("release state machine: " + "; ".join(problems))


def definition(function_arns: dict[str, str], *, max_concurrency: int = 10, poll_seconds: int = 15) -> dict[str, Any]:
    """The release state machine.

    ``function_arns``: one Lambda ARN per step of :func:`lambda_functions`. ``max_concurrency``: how many targets of
    **each account-region** are updated at once (1-50; default 10 keeps well inside ECS's per-account, per-region API
    rates). ``poll_seconds``: the Wait between two checks of a service, and the check Lambda's own polling interval.
    """
    _validate(function_arns, max_concurrency, poll_seconds)
    fn = function_arns
    target = {"item.$": "$.item", "release.$": "$.release"}
    per_group = {"group.$": "$$.Map.Item.Value", "release.$": "$.release"}

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
        # The child execution's output, in the Map Run's result file: which target, and on what it ended. Its start
        # and stop times are the child execution's own (the notice's slowest targets).
        "ServiceDeployed": {"Type": "Pass", "End": True, "Parameters": {
            "name.$": "$.item.name", "taskDefinitionArn.$": "$.deploy.taskDefinitionArn"}},
        # A Fail inside an iteration fails the Map Run, hence the release; the reason names the service.
        "ServiceRolloutFailed": {"Type": "Fail", "Error": "ServiceRolloutFailed", "CausePath": "$.check.reason"},
        "ServiceTimedOut": {"Type": "Fail", "Error": "ServiceTimedOut", "CausePath": "$.check.reason"},
        "UnexpectedServiceStatus": {"Type": "Fail", "Error": "UnexpectedServiceStatus",
                                    "CausePath": "$.check.reason"},
    }
    deploy_task_states = {
        "UpdateTask": _invoke(fn["updateTask"], target, {"taskDefinitionArn.$": "$.Payload.taskDefinitionArn"},
                              "$.deploy", Next="TaskDeployed",
                              Comment="Point the rule's ECS target at a copy of its task definition with the new "
                                      "image."),
        "TaskDeployed": {"Type": "Pass", "End": True, "Parameters": {
            "name.$": "$.item.name", "taskDefinitionArn.$": "$.deploy.taskDefinitionArn"}},
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

    # One account-region, forward: its scheduled tasks, then its services; a failure fails this child execution.
    deploy_group_states = {
        "DeployTasks": _targets_map(
            "$.group.items.tasks", "$.group.results.deploy", max_concurrency, "UpdateTask", deploy_task_states,
            tolerate_all=False, ResultPath="$.deployedTasks", Next="DeployServices"),
        "DeployServices": _targets_map(
            "$.group.items.services", "$.group.results.deploy", max_concurrency, "DeployService",
            deploy_service_states, tolerate_all=False, ResultPath="$.deployedServices", Next="GroupDeployed"),
        "GroupDeployed": {"Type": "Pass", "End": True, "Parameters": {
            "accountId.$": "$.group.accountId", "region.$": "$.group.region", "services.$": "$.group.services",
            "tasks.$": "$.group.tasks", "results": {"tasks.$": "$.deployedTasks", "services.$": "$.deployedServices"}}},
    }
    # One account-region, back: every service, then every task, whatever happened forward.
    rollback_group_states = {
        "RollBackServices": _targets_map(
            "$.group.items.services", "$.group.results.rollback", max_concurrency, "RollBackService",
            rollback_service_states, tolerate_all=True, ResultPath="$.rolledBackServices", Next="RollBackTasks",
            # Iterations catch their own failures; this only sees the Map Run itself failing. Roll the tasks back.
            Catch=_catch_all("RollBackTasks", "$.rolledBackServices")),
        "RollBackTasks": _targets_map(
            "$.group.items.tasks", "$.group.results.rollback", max_concurrency, "RollBackTask",
            rollback_task_states, tolerate_all=True, ResultPath="$.rolledBackTasks", Next="GroupRolledBack",
            Catch=_catch_all("GroupRolledBack", "$.rolledBackTasks")),
        "GroupRolledBack": {"Type": "Pass", "End": True, "Parameters": {
            "accountId.$": "$.group.accountId", "region.$": "$.group.region", "services.$": "$.group.services",
            "tasks.$": "$.group.tasks",
            "results": {"services.$": "$.rolledBackServices", "tasks.$": "$.rolledBackTasks"}}},
    }

    execution = {"executionId.$": "$$.Execution.Id", "now.$": "$$.State.EnteredTime",
                 "maxConcurrency": max_concurrency}
    notified = {"summary.$": "$.Payload.summary", "rollbackComplete.$": "$.Payload.rollbackComplete"}
    notification_failed = _catch_all("NotificationFailed", "$.notifyError")
    states: dict[str, Any] = {
        "Prepare": _invoke(
            fn["prepare"], {"input.$": "$", "executionId.$": "$$.Execution.Id",
                            "startedAt.$": "$$.Execution.StartTime", "pollSeconds": poll_seconds},
            {"release.$": "$.Payload.release", "groups.$": "$.Payload.groups"},
            "$", Next="DeployGroups",
            # Prepare changes nothing (it reads, resolves, snapshots and writes the items files), so its failure
            # has nothing to roll back.
            Catch=_catch_all("NotifyRejected", "$.error"),
            Comment="Validate, pin every image to its digest, snapshot every target, write the items to S3."),
        "DeployGroups": _groups_map(
            per_group, "DeployTasks", deploy_group_states, tolerate_all=False, ResultPath="$.deployed",
            Next="NotifySuccess", Catch=_catch_all("SettleBeforeRollback", "$.error"),
            Comment="Every account-region at once, each bounded by maxConcurrency."),
        "NotifySuccess": _invoke(
            fn["notify"], {"outcome": "SUCCEEDED", "release.$": "$.release", **execution, "groups.$": "$.deployed"},
            notified, "$.notified", Next="ReleaseSucceeded", Catch=notification_failed),
        "ReleaseSucceeded": {"Type": "Succeed", "OutputPath": "$.release"},
        "SettleBeforeRollback": {"Type": "Wait", "Seconds": _settle_seconds(), "Next": "RollBackGroups"},
        "RollBackGroups": _groups_map(
            per_group, "RollBackServices", rollback_group_states, tolerate_all=True, ResultPath="$.rolledBack",
            Next="NotifyFailure", Catch=_catch_all("NotifyFailure", "$.rolledBack")),
        "NotifyFailure": _invoke(
            fn["notify"], {"outcome": "ROLLED_BACK", "release.$": "$.release", **execution, "error.$": "$.error",
                           "groups.$": "$.rolledBack"},
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
