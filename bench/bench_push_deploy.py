"""The push-deploy handler against moto: one push rolled out to 40 targets (4 account-region pairs x 10 services).

Measures the wall time of one invocation (``handlers.push_deploy.handle_push``, the code behind the Lambda entry
point) and the concurrency it actually used: the deploy engine's per-target ``start`` is wrapped to count targets in
flight, and every API call is counted through botocore's event hooks. The push registers each service's rendered
task definition (its deploy document) and follows ECS's service deployments, which moto lacks:
``tests/ecs_service_deployments.py`` answers them (in progress, then successful), and the engine polls without
waiting in between (``ENGINE_POLL_SECONDS`` 0), so the figures are the handler's own work and the API latency.
moto answers in-process in a few milliseconds, so the run with
``--latency-ms`` (default 50, a typical ECS/STS/ECR round trip) sleeps that long in each request's ``before-send``
hook: that is where real deployments spend their time, and where bounded concurrency pays off.

Each measured run gets a fresh moto world (two workload accounts x two regions, ten services each, every service
on a task definition with two containers), so every run registers and updates all 40. One warm-up run first pays
the one-off imports. The 40 targets form one environment spanning two accounts, which the stack configuration
never generates (an environment has one account); the handler does not care, and two accounts means two deploy
roles assumed, as a push reaching several accounts would.

Usage::

    .venv/bin/python bench/bench_push_deploy.py                       # concurrency 1, 8, 16; latency 0 and 50 ms
    .venv/bin/python bench/bench_push_deploy.py --concurrency 8 --latency-ms 100

A script, not a test: it prints a table; nothing is asserted except that every target was updated.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

from handlers import deploy_engine  # noqa: E402
from handlers import push_deploy as pd  # noqa: E402
from handlers.ecs_common import assumed_session  # noqa: E402
from tests.ecs_service_deployments import ServiceDeployments  # noqa: E402
from tests.test_release_handlers import Patcher  # noqa: E402

TOOLS = "123456789012"  # moto's default account: the registry's
ACCOUNTS = ("444455556666", "777788889999")
REGIONS = ("us-east-2", "eu-west-1")
SERVICES = tuple(f"svc-{i:02d}" for i in range(10))
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
               "digest": "sha256:" + "c" * 64},
    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1,
                "digest": "sha256:" + "d" * 64}],
})


def task_definition(account: str, region: str, service: str) -> dict[str, Any]:
    return {"family": service, "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "256",
            "memory": "512", "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
            "containerDefinitions": [
                {"name": "app", "image": f"{TOOLS}.dkr.ecr.{region}.amazonaws.com/app:bench-0",
                 "environment": [{"name": "SERVICE", "value": service}],
                 "secrets": [{"name": "DB", "valueFrom": f"arn:aws:ssm:{region}:{account}:parameter/db"}]},
                {"name": "envoy", "image": "public.ecr.aws/envoy:1.30", "essential": False}],
            "tags": [{"key": "service", "value": service}]}


def build_world() -> tuple[str, dict[str, Any]]:
    """Registry in both regions, then clusters, services and deploy roles; returns (digest, targets.json)."""
    base = boto3.Session(region_name=REGIONS[0])
    digest = ""
    for region in REGIONS:
        ecr = base.client("ecr", region_name=region)
        ecr.create_repository(repositoryName="app")
        digest = ecr.put_image(repositoryName="app", imageManifest=MANIFEST, imageTag="bench-1")["image"]["imageId"][
            "imageDigest"]
    targets, rendered = [], []
    for account in ACCOUNTS:
        admin = assumed_session(base, f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole", "bench")
        role = f"arn:aws:iam::{account}:role/crossdeploy/bench/deploy/crossdeploy-bench-deploy"
        for region in REGIONS:
            ecs = admin.client("ecs", region_name=region)
            ecs.create_cluster(clusterName="crossdeploy")
            for service in SERVICES:
                spec = task_definition(account, region, service)
                arn = ecs.register_task_definition(**spec)["taskDefinition"]["taskDefinitionArn"]
                ecs.create_service(cluster="crossdeploy", serviceName=service, taskDefinition=arn, desiredCount=2,
                                   launchType="FARGATE")
                targets.append({"environment": "bench", "tagPatterns": ["bench-*"], "accountId": account,
                                "region": region, "cluster": "crossdeploy", "service": service, "roleArn": role})
                # What `pulumi up` rendered: other sizing than what runs, so every target registers a revision.
                rendered.append({"accountId": account, "region": region, "roleArn": role, "cluster": "crossdeploy",
                                 "service": service, "container": "app",
                                 "taskDefinition": {**spec, "cpu": "512", "memory": "1024"}})
    # One repository, one service per target here; a document per repository is what the stack ships.
    deploy_document = {"version": 1, "service": "app", "environments": [
        {"name": "bench", "strategy": "rolling", "timeoutSeconds": 900, "targets": rendered}]}
    document = {"version": 2, "registryId": TOOLS, "homeRegion": REGIONS[0], "partition": "aws",
                "replicationTimeoutSeconds": 300, "maxConcurrency": 8,
                "repositories": {"app": {"pushMode": "revision", "containerName": "app", "targets": targets,
                                         "deployDocument": deploy_document}}}
    return digest, document


class Probe:
    """Targets in flight (peak), API calls and requests sent, and the injected latency."""

    def __init__(self, latency: float) -> None:
        self.latency, self.lock = latency, threading.Lock()
        self.in_flight = self.peak = self.calls = 0

    def install(self, session: boto3.Session) -> boto3.Session:
        session.events.register("before-parameter-build", self._call)
        if self.latency:
            session.events.register("before-send", self._delay)  # returns None: moto still answers
        return session

    def _call(self, **_: Any) -> None:
        with self.lock:
            self.calls += 1

    def _delay(self, **_: Any) -> None:
        time.sleep(self.latency)

    def wrap(self, start: Any) -> Any:
        def tracked(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
            try:
                return start(*args, **kwargs)
            finally:
                with self.lock:
                    self.in_flight -= 1

        return tracked


def run_once(concurrency: int, latency_ms: float) -> dict[str, Any]:
    with mock_aws():
        digest, document = build_world()
        targets = pd.parse_targets(document)
        event = {"version": "0", "id": "bench-0001", "detail-type": "ECR Image Action", "source": "aws.ecr",
                 "account": TOOLS, "time": "2024-01-01T00:00:00Z", "region": REGIONS[0], "resources": [],
                 "detail": {"result": "SUCCESS", "repository-name": "app", "image-digest": digest,
                            "action-type": "PUSH", "image-tag": "bench-1"}}
        probe = Probe(latency_ms / 1000)
        patcher = Patcher()
        ServiceDeployments(patcher.setattr)
        patcher.setattr(pd, "ENGINE_POLL_SECONDS", 0.0)
        real = (deploy_engine.start, pd._base_session, pd._deploy_session)
        patcher.setattr(deploy_engine, "start", probe.wrap(real[0]))
        patcher.setattr(pd, "_base_session", lambda: probe.install(real[1]()))
        patcher.setattr(pd, "_deploy_session", lambda base, arn, name: probe.install(real[2](base, arn, name)))
        try:
            with contextlib.redirect_stdout(io.StringIO()) as logs:  # the handler's JSON lines, counted below
                start = time.perf_counter()
                summary = pd.handle_push(event, targets, max_concurrency=concurrency)
                wall = time.perf_counter() - start
        finally:
            patcher.undo()
    if summary["updated"] != len(document["repositories"]["app"]["targets"]):
        raise SystemExit(f"not every target was updated: {summary}")
    return {"concurrency": concurrency, "latency_ms": latency_ms, "targets": summary["updated"], "wall_s": wall,
            "peak_in_flight": probe.peak, "api_calls": probe.calls, "log_lines": len(logs.getvalue().splitlines())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0, 50])
    args = parser.parse_args(argv)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGIONS[0],
                      AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    run_once(8, 0)  # warm-up: moto's and botocore's one-off imports
    rows = [run_once(c, lat) for lat in args.latency_ms for c in args.concurrency]
    print(f"push to {rows[0]['targets']} targets ({len(ACCOUNTS)} accounts x {len(REGIONS)} regions x "
          f"{len(SERVICES)} services), moto in-process, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"{'max concurrency':>15} {'latency/request':>16} {'wall':>8} {'peak in flight':>15} {'API calls':>10} "
          f"{'per target':>11}")
    for row in rows:
        print(f"{row['concurrency']:>15} {row['latency_ms']:>13.0f} ms {row['wall_s']:>7.2f}s "
              f"{row['peak_in_flight']:>15} {row['api_calls']:>10} {row['wall_s'] / row['targets'] * 1000:>8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
