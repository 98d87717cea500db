"""The deploy engine against moto with simulated API latency and rollouts.

Scenarios (each in a fresh moto world, three workload accounts x two regions):

* ``one-service``: one service to six account-region targets (3 accounts x 2 regions) through ``run``.
* ``release``: 300 services, each to 4 targets (2 accounts x 2 regions), each service one ``run`` (its targets in
  parallel), services bounded by an outer pool (``--services-at-once``, like the release's Map concurrency), clean
  and with injected throttling: a fraction of the requests moto answers (STS, DescribeServices,
  DescribeTaskDefinition, RegisterTaskDefinition, UpdateService) get ``ThrottlingException`` first, and the SDK's
  standard retry mode resends them after its real backoff.

Every ECS call waits ``--latency-ms`` (``before-call`` hook, so calls answered by the fake service deployments wait
too). ECS service deployments (which moto lacks) come from tests/test_deploy_engine.py's ``FakeRollouts``: each
finishes after ``--polls`` DescribeServiceDeployments reads.

Usage::

    .venv/bin/python bench/bench_engine.py                      # all scenarios, 5 ms latency, 20 % throttled
    .venv/bin/python bench/bench_engine.py --services 100 --throttle 0.3

A script, not a test: it prints wall time and calls; it asserts only that every deployment succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

for _name, _value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_SESSION_TOKEN": "bench",
                      "AWS_DEFAULT_REGION": "us-east-2", "AWS_CONFIG_FILE": os.devnull,
                      "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
    os.environ[_name] = _value

import boto3  # noqa: E402
import botocore.loaders  # noqa: E402
import botocore.session  # noqa: E402
import test_deploy_engine as world_lib  # noqa: E402
from moto import mock_aws  # noqa: E402
from moto.core.botocore_stubber import BotocoreStubber  # noqa: E402

from handlers import deploy_engine as engine  # noqa: E402
from handlers.ecs_common import assumed_session  # noqa: E402

TOOLS = "123456789012"
ACCOUNTS = ("444455556666", "777788889999", "222233334444")
REGIONS = ("us-east-2", "us-west-2")
DIGEST = "sha256:" + "f" * 64

# One botocore loader for every session: the model is parsed once (as in a warm Lambda), not per session.
_shared_loader = botocore.loaders.create_loader()
botocore.session.create_loader = lambda *a, **k: _shared_loader

_moto_answer = BotocoreStubber.__call__


def _unless_answered(self: Any, event_name: str, request: Any, **kwargs: Any) -> Any:
    return None if getattr(request, "answered_by_test", False) else _moto_answer(self, event_name, request, **kwargs)


BotocoreStubber.__call__ = _unless_answered


class Probe:
    """Latency, throttling and counting, installed on every session the engine gets."""

    def __init__(self, latency: float, throttle: float, seed: int = 7) -> None:
        self.latency, self.throttle = latency, throttle
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.throttled = 0

    def install(self, session: boto3.Session) -> None:
        # before-parameter-build: every call passes it, also those the fake service deployments answer
        session.events.register("before-parameter-build", self._call)
        if self.throttle:
            session.events.register_first("before-send", self._maybe_throttle)

    def _call(self, model: Any, **_: Any) -> None:
        with self.lock:
            self.calls[model.name] += 1
        if self.latency:
            time.sleep(self.latency)

    def _maybe_throttle(self, request: Any, **_: Any) -> Any:
        with self.lock:
            hit = self.random.random() < self.throttle
            self.throttled += hit
        request.answered_by_test = hit
        return world_lib.error_response(request, "ThrottlingException", "Rate exceeded") if hit else None


def build(services: list[str], accounts: tuple[str, ...]) -> tuple[dict[str, boto3.Session], dict]:
    base = boto3.Session(region_name=REGIONS[0])
    admin, originals = {}, {}
    for account in accounts:
        admin[account] = assumed_session(base, f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole", "bench")
        admin[account].client("iam").create_role(
            RoleName="crossdeploy-dev-deploy", Path="/crossdeploy/dev/deploy/",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": f"arn:aws:iam::{TOOLS}:root"}}]}))
        for region in REGIONS:
            ecs = admin[account].client("ecs", region_name=region)
            ecs.create_cluster(clusterName="crossdeploy")
            for service in services:
                td = world_lib.rendered_task_definition(account, region)
                td["family"] = service
                td["containerDefinitions"][0]["image"] = f"{TOOLS}.dkr.ecr.{region}.amazonaws.com/app@{DIGEST}"
                arn = ecs.register_task_definition(**td)["taskDefinition"]["taskDefinitionArn"]
                ecs.create_service(cluster="crossdeploy", serviceName=service, taskDefinition=arn, desiredCount=2,
                                   launchType="FARGATE")
                originals[(account, region, service)] = arn
    return admin, originals


def targets_of(service: str, accounts: tuple[str, ...]) -> list[engine.Target]:
    doc = world_lib.document(accounts=accounts, mode="bench")
    doc["service"] = service
    for target in doc["environments"][0]["targets"]:
        target["service"] = service
        target["taskDefinition"]["family"] = service
    return engine.targets_for(engine.parse_document(doc), "test", world_lib.images())


def scenario(name: str, services: int, accounts: tuple[str, ...], args: argparse.Namespace, throttle: float) -> None:
    names = ["orders"] if services == 1 else [f"svc-{i:03d}" for i in range(services)]
    with mock_aws():
        admin, originals = build(names, accounts)
        fake = world_lib.FakeRollouts(admin, initial={(a, r): "" for a in accounts for r in REGIONS})
        world_lib.SUCCESS = ("IN_PROGRESS",) * (args.polls - 1) + ("SUCCESSFUL",)
        probe = Probe(args.latency_ms / 1000, throttle)
        session_for = world_lib.installing(engine.default_session_for(f"bench-{name}"),
                                           lambda session, _account: probe.install(session), fake.install)

        plans = [targets_of(s, accounts) for s in names]

        def deploy(targets: list[engine.Target]) -> engine.Outcome:
            return engine.run(targets, session_for=session_for, deployment_id=f"bench-{name}", timeout_seconds=900,
                              max_concurrency=len(targets), poll_seconds=args.poll_seconds)

        quiet = io.StringIO()  # the engine's JSON logs: thousands of lines, not what is measured
        began = time.perf_counter()
        with contextlib.redirect_stdout(quiet), ThreadPoolExecutor(max_workers=args.services_at_once) as pool:
            outcomes = list(pool.map(deploy, plans))
        wall = time.perf_counter() - began
        failed = [o.reason for o in outcomes if not o.succeeded]
        assert not failed, failed[:3]
        for (account, region, service), original in list(originals.items())[:: max(1, len(originals) // 20)]:
            now = admin[account].client("ecs", region_name=region).describe_services(
                cluster="crossdeploy", services=[service])["services"][0]["taskDefinition"]
            assert now != original, (account, region, service)
        targets = sum(len(p) for p in plans)
        calls = sum(probe.calls.values())
        print(f"{name:<22} {services:>4} svc x {len(plans[0])} = {targets:>5} targets  wall {wall:6.2f} s  "
              f"calls {calls:>6}  throttled {probe.throttled:>5}  ({calls / wall:6.0f} calls/s)")
        print("    " + ", ".join(f"{op} {n}" for op, n in sorted(probe.calls.items())))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=300)
    p.add_argument("--services-at-once", type=int, default=40)
    p.add_argument("--latency-ms", type=float, default=5.0)
    p.add_argument("--throttle", type=float, default=0.2, help="fraction of moto-answered requests throttled")
    p.add_argument("--polls", type=int, default=3, help="status reads until a rollout succeeds")
    p.add_argument("--poll-seconds", type=float, default=0.05)
    args = p.parse_args()
    print(f"latency {args.latency_ms} ms/call, rollouts succeed on read {args.polls}, poll every "
          f"{args.poll_seconds} s, {args.services_at_once} services at once")
    scenario("one-service", 1, ACCOUNTS, args, 0.0)
    scenario("release clean", args.services, ACCOUNTS[:2], args, 0.0)
    scenario(f"release throttled {args.throttle:.0%}", args.services, ACCOUNTS[:2], args, args.throttle)


if __name__ == "__main__":
    main()
