"""Benchmark: a 300-service release across four account-region targets, against moto, through the real state machine.

Runs the release definition in tests/asl_runner.py with the real handlers (the same harness as
tests/test_release_handlers.py): two workload accounts x two regions, 75 services and one scheduled task each.
Rolling services go through the deploy engine from their deploy documents (S3, one version per release).
Two releases: a clean one, then one with throttling injected at the SDK (every Nth request answered 400
Throttling, before moto sees it) that botocore's standard retries must absorb, sleeping their real backoff.

Reports wall time, services per second, peak concurrency of each Map, AWS requests, Step Functions history events
and payload size. Target: each release under 30 s here with the default concurrency bound, no failure.

    .venv/bin/python bench/bench_release.py [--services-per-target 75] [--throttle-every 10] [--max-concurrency 10]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

from handlers import release  # noqa: E402
from tests.ecs_service_deployments import ServiceDeployments  # noqa: E402
from tests.test_release_handlers import (  # noqa: E402
    ACCOUNTS,
    REGIONS,
    Faults,
    Patcher,
    Rollouts,
    World,
    build_world,
    configure,
    run_release,
    share_service_models,
)

TARGET_SECONDS = 30.0


def one_release(world: World, faults: Faults, tag: str, name: str, max_concurrency: int) -> dict:
    requests, throttled = faults.requests, sum(faults.throttled.values())
    logs = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(logs):  # one JSON log line per step and target: keep them off the terminal
        execution = run_release(world.manifest(tag), max_concurrency=max_concurrency, name=name)
    wall = time.perf_counter() - started
    prepared = [json.loads(line) for line in logs.getvalue().splitlines() if '"release.prepare.done"' in line]
    services = len(world.services)
    return {
        "release": name, "status": execution.status, "error": execution.error, "cause": (execution.cause or "")[:300],
        "services": services, "tasks": len(world.tasks), "wall_seconds": round(wall, 2),
        "services_per_second": round(services / wall, 1), "peak_concurrency": execution.peak_concurrency,
        "aws_requests": faults.requests - requests, "throttled": sum(faults.throttled.values()) - throttled,
        "history_events": execution.history_events, "virtual_seconds": execution.virtual_seconds,
        "prepared_state_bytes": prepared[0]["bytes"] if prepared else None,
        "log_lines": logs.getvalue().count("\n"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services-per-target", type=int, default=75)
    parser.add_argument("--throttle-every", type=int, default=10,
                        help="throttle every Nth AWS request of each operation (run 2)")
    parser.add_argument("--max-concurrency", type=int, default=10)
    args = parser.parse_args(argv)

    patcher = Patcher()
    configure(lambda key, value: os.environ.__setitem__(key, value))
    share_service_models(patcher.setattr)
    faults = Faults(patcher.setattr)
    results = []
    try:
        with mock_aws():
            base = boto3.Session(region_name="us-east-2")
            patcher.setattr(release, "_base_session", lambda: base)
            rollouts = Rollouts(patcher.setattr, polls=1)  # each service is seen IN_PROGRESS once before it is steady
            # ECS's service deployments (the deploy engine follows them), answered from the same rollouts.
            ServiceDeployments(patcher.setattr, status_hook=rollouts.deployment_status)
            started = time.perf_counter()
            world = build_world(base, args.services_per_target, 1)
            os.environ["CROSSDEPLOY_TOPIC_ARN"] = world.topic_arn
            print(f"world: {len(world.services)} services, {len(world.tasks)} scheduled tasks in "
                  f"{len(ACCOUNTS)} accounts x {len(REGIONS)} regions, built in "
                  f"{time.perf_counter() - started:.1f}s", flush=True)
            results.append(one_release(world, faults, "2.0.0", "bench-clean", args.max_concurrency))
            faults.throttle_every = args.throttle_every
            results.append(one_release(world, faults, "1.0.0", "bench-throttled", args.max_concurrency))
            faults.throttle_every = 0
            throttled_by_operation = dict(faults.throttled.most_common())
    finally:
        patcher.undo()
    ok = True
    for result in results:
        print(json.dumps(result))
        ok &= result["status"] == "SUCCEEDED" and result["wall_seconds"] < TARGET_SECONDS
    print(f"throttled by operation: {json.dumps(throttled_by_operation)}")
    print("PASS" if ok else f"FAIL: every release must succeed in under {TARGET_SECONDS:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
