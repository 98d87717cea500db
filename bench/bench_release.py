"""Benchmark: a 2,000-service release across four account-regions, against moto, through the real state machine.

Runs the release definition in tests/asl_runner.py (Distributed Maps: items read from S3, results written to S3)
with the real handlers (the same harness as tests/test_release_handlers.py): two workload accounts x two regions,
500 services and one scheduled task each, at the default bound (release.maxConcurrency 10 per account-region).
Rolling services go through the deploy engine from their deploy documents. Every rollout takes ``--rollout-seconds``
(180) of **virtual** time to become steady: the check Lambda polls inside itself (CROSSDEPLOY_CHECK_WAIT_SECONDS,
every poll a virtual 15 s), the state machine's Wait/Check loop turns, and the runner's clock follows both, so the
makespan is what Step Functions would take, not what moto takes.

Two releases: a clean one, then one with throttling in **one** account-region (every Nth request of each operation
there answered 400 Throttling before moto sees it): botocore's standard retries absorb it, their backoff spent in
virtual time, so only that account-region's targets take longer.

Reports, per release: status, makespan (virtual), the waves of each account-region (ceil(targets / bound), services
and scheduled tasks), the lower bound (the largest account-region's service waves x the rollout's duration: a
scheduled task's update has no rollout to wait for) and the ratio makespan / lower bound
(target: <= 1.2), each account-region's own duration (from the Map Runs' results in S3), history events (parent and
largest child), AWS requests, throttled requests; and the wall time of prepare (reading and snapshotting every
target, writing the items files) and of the release file validator on the same 2,000 services.

    .venv/bin/python bench/bench_release.py [--services-per-target 500] [--throttle-every 5] [--max-concurrency 10]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import botocore.endpoint  # noqa: E402
from moto import mock_aws  # noqa: E402

from handlers import release, release_file  # noqa: E402
from handlers.release_limits import waves  # noqa: E402
from tests.asl_runner import spend  # noqa: E402
from tests.ecs_service_deployments import ServiceDeployments  # noqa: E402
from tests.test_release_handlers import (  # noqa: E402
    ACCOUNTS,
    CLUSTER,
    ENVIRONMENT_OF,
    HOME,
    REGIONS,
    TOOLS,
    Faults,
    Patcher,
    Rollouts,
    World,
    build_world,
    configure,
    run_release,
    share_service_models,
)

TARGET_RATIO = 1.2


def _parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def group_durations(s3: Any, groups: list[dict]) -> dict[str, float]:
    """Each account-region's own duration, from its Map Runs' results (ResultWriter): first child started to last
    child stopped."""
    out = {}
    for group in groups:
        starts, stops = [], []
        for kind in ("tasks", "services"):
            location = group["results"][kind]
            manifest = json.loads(s3.get_object(Bucket=location["bucket"], Key=location["key"])["Body"].read())
            for files in manifest["ResultFiles"].values():
                for entry in files:
                    for child in json.loads(s3.get_object(Bucket=manifest["DestinationBucket"],
                                                          Key=entry["Key"])["Body"].read()):
                        starts.append(_parse(child["StartDate"]))
                        stops.append(_parse(child["StopDate"]))
        out[f"{group['accountId']}/{group['region']}"] = (max(stops) - min(starts)).total_seconds() if stops else 0
    return out


def one_release(world: World, faults: Faults, tag: str, name: str, bound: int, rollout_seconds: float) -> dict:
    requests, throttled = faults.requests, sum(faults.throttled.values())
    captured: dict[str, Any] = {}

    def wrap(step: str, fn: Callable) -> Callable:
        if step == "notify":
            def notify(event: Any, context: Any) -> Any:
                captured["groups"] = event.get("groups")
                return fn(event, context)
            return notify
        return fn

    logs = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(logs):  # one JSON log line per step and target: keep them off the terminal
        # As the pipeline starts it: a 2,000-service manifest is over Step Functions' 256 KiB of execution input.
        execution = run_release(world.manifest(tag), max_concurrency=bound, name=name, wrap=wrap, via_s3=True)
    wall = time.perf_counter() - started
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    prepare = next((line for line in lines if line.get("event") == "release.prepare.done"), {})
    per_group: dict[str, int] = {}
    for entry in world.services + world.tasks:
        key = f"{entry['accountId']}/{entry['region']}"
        per_group[key] = per_group.get(key, 0) + 1
    services = {f"{a}/{r}": sum(1 for e in world.services if (e["accountId"], e["region"]) == (a, r))
                for a in ACCOUNTS for r in REGIONS}
    tasks = {k: per_group[k] - services[k] for k in services}
    group_waves = {k: {"services": waves(services[k], bound), "tasks": waves(tasks[k], bound)} for k in services}
    # A scheduled task's update has no rollout to wait for: the services' waves set the pace.
    lower_bound = max(w["services"] for w in group_waves.values()) * rollout_seconds
    s3 = release._base_session().client("s3", region_name=HOME)
    durations = group_durations(s3, captured.get("groups") or []) if execution.status == "SUCCEEDED" else {}
    return {
        "release": name, "status": execution.status, "error": execution.error, "cause": (execution.cause or "")[:300],
        "services": len(world.services), "tasks": len(world.tasks), "bound_per_account_region": bound,
        "makespan_seconds": execution.virtual_seconds, "waves": group_waves,
        "lower_bound_seconds": lower_bound, "ratio": round(execution.virtual_seconds / lower_bound, 3),
        "account_region_seconds": durations,
        "peak_concurrency_per_map_run": execution.peak_concurrency, "peak_concurrency_total": execution.peak_total,
        "child_executions": execution.child_executions, "history_events": execution.history_events,
        "max_child_history_events": execution.max_child_history_events,
        "aws_requests": faults.requests - requests, "throttled": sum(faults.throttled.values()) - throttled,
        "prepare_state_bytes": prepare.get("bytes"), "wall_seconds": round(wall, 1),
    }


def time_prepare(world: World) -> dict:
    """prepare alone, on the whole release: every target read and snapshotted, the items files written."""
    event = {"manifest": world.manifest("2.0.0"), "executionId": "arn:aws:states:::execution:m:bench-prepare"}
    with contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        prepared = release.prepare(event)
        took = time.perf_counter() - started
    return {"prepare_wall_seconds": round(took, 1), "prepare_groups": len(prepared["groups"]),
            "prepare_state_bytes": len(json.dumps(prepared))}


def time_validator(services_per_target: int) -> dict:
    """The release file validator (pull requests, the pipeline's build) on the same release, one entry per
    service and account-region."""
    role = "arn:aws:iam::{}:role/crossdeploy/prod/deploy/crossdeploy-prod-deploy"
    context = {"version": 1, "partition": "aws", "registryId": TOOLS, "homeRegion": HOME, "environments": {
        ENVIRONMENT_OF[a]: {"accountId": a, "regions": list(REGIONS), "deployRoleArn": role.format(a)}
        for a in ACCOUNTS}}
    text = "services:\n" + "".join(
        f"  - service: svc-{i:03d}\n    clusterName: {CLUSTER}\n    serviceName: svc-{i:03d}\n"
        f"    image: \"{TOOLS}.dkr.ecr.{HOME}.amazonaws.com/team/orders:2.0.0\"\n"
        f"    environment: {ENVIRONMENT_OF[a]}\n    region: {r}\n"
        for a in ACCOUNTS for r in REGIONS for i in range(services_per_target))
    started = time.perf_counter()
    problems = release_file.validate(text, context)
    return {"validator_wall_seconds": round(time.perf_counter() - started, 2), "validator_bytes": len(text),
            "validator_problems": [str(p) for p in problems[:3]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services-per-target", type=int, default=500)
    parser.add_argument("--throttle-every", type=int, default=5,
                        help="throttle every Nth AWS request of each operation in one account-region (run 2)")
    parser.add_argument("--max-concurrency", type=int, default=10)
    parser.add_argument("--rollout-seconds", type=float, default=180.0)
    args = parser.parse_args(argv)

    patcher = Patcher()
    configure(lambda key, value: os.environ.__setitem__(key, value))
    share_service_models(patcher.setattr)
    faults = Faults(patcher.setattr)
    # botocore's retry backoff: spent in the calling iteration's virtual time, not waited out.
    patcher.setattr(botocore.endpoint.time, "sleep", spend)
    results, extra = [], {}
    try:
        with mock_aws():
            base = boto3.Session(region_name=HOME)
            patcher.setattr(release, "_base_session", lambda: base)
            rollouts = Rollouts(patcher.setattr, seconds=args.rollout_seconds)
            # ECS's service deployments (the deploy engine follows them), answered from the same rollouts.
            ServiceDeployments(patcher.setattr, status_hook=rollouts.deployment_status)
            started = time.perf_counter()
            world = build_world(base, args.services_per_target, 1, direct=True)
            os.environ["CROSSDEPLOY_TOPIC_ARN"] = world.topic_arn
            print(f"world: {len(world.services)} services, {len(world.tasks)} scheduled tasks in "
                  f"{len(ACCOUNTS)} accounts x {len(REGIONS)} regions, built in "
                  f"{time.perf_counter() - started:.1f}s", flush=True)
            world.publish()
            extra.update(time_validator(args.services_per_target))
            extra.update(time_prepare(world))
            print(json.dumps(extra), flush=True)
            results.append(one_release(world, faults, "2.0.0", "bench-clean", args.max_concurrency,
                                       args.rollout_seconds))
            print(json.dumps(results[-1]), flush=True)
            faults.throttle_every, faults.throttle_scope = args.throttle_every, (ACCOUNTS[1], REGIONS[1])
            results.append(one_release(world, faults, "1.0.0", "bench-throttled", args.max_concurrency,
                                       args.rollout_seconds))
            print(json.dumps(results[-1]), flush=True)
            faults.throttle_every = 0
            throttled_by_operation = dict(faults.throttled.most_common())
    finally:
        patcher.undo()
    ok = not extra["validator_problems"]
    for result in results:
        ok &= result["status"] == "SUCCEEDED" and result["ratio"] <= TARGET_RATIO
    print(f"throttled by operation (in {ACCOUNTS[1]}/{REGIONS[1]} only): {json.dumps(throttled_by_operation)}")
    print("PASS" if ok else f"FAIL: every release must succeed with a makespan within {TARGET_RATIO}x of the "
                            "per-account-region lower bound, and the release file must validate")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
