"""Shared fixtures: the real program run under the offline mocks, and lookups into what it registered."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from moto import mock_aws

from offline.mocks import ProgramRun, Recorded, run_program, stack_config

# moto's EC2 backend registers thousands of default AMIs, each with random ids, the first time a test touches EC2
# or ELB in an account-region: ~0.6 s of CPU per such test, for images no test uses (the suite: ~15 s of CPU).
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

ROOT = Path(__file__).resolve().parents[1]
# AWS's documented payloads live in ../shared/samples beside the checkout; tests/samples is a verbatim copy for
# checkouts without it (GitHub Actions). test_samples_copy_is_verbatim keeps the two identical.
SHARED_SAMPLES = ROOT.parent / "shared" / "samples"
VENDORED_SAMPLES = ROOT / "tests" / "samples"
SAMPLES = SHARED_SAMPLES if SHARED_SAMPLES.is_dir() else VENDORED_SAMPLES

# Property tests (tests/test_properties*.py): "ci" by default, reproducible (derandomized, no example database) and
# bounded so the suite keeps its time; HYPOTHESIS_PROFILE=thorough for a long local hunt (random, with a database
# under build/ so a failure found once is replayed first next time).
settings.register_profile("ci", derandomize=True, database=None, max_examples=60, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=2000, deadline=None, print_blob=True,
                          database=DirectoryBasedExampleDatabase(ROOT / "build" / "hypothesis"),
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TOOLS = "111111111111"
QA = "444455556666"
PROD = "777788889999"

BASE_CONFIG: dict[str, Any] = {
    "aws:region": "us-east-2",
    "crossdeploy:tools": {"accountId": TOOLS, "region": "us-east-2"},
    "crossdeploy:environments": [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2"]},
        {"name": "prod", "accountId": PROD, "regions": ["us-east-2", "eu-west-1"], "requireApproval": True},
    ],
    "crossdeploy:services": [
        {"name": "orders"},
        {"name": "team/payments", "containerName": "app", "serviceName": "payments", "cluster": "core",
         "triggerTag": "release"},
    ],
    "crossdeploy:notifications": {"emails": ["ops@example.com"]},
}


def config(**overrides: Any) -> dict[str, Any]:
    """A fresh copy of the base config with top-level keys (``crossdeploy:...``) replaced."""
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg.update(copy.deepcopy(overrides))
    return cfg


@pytest.fixture(scope="session")
def base_run() -> ProgramRun:
    return run_program(config(), stack="test")


@pytest.fixture(scope="session")
def smoke_codedeploy_run() -> ProgramRun:
    """tests/test_smoke_hooks.py's codedeploy stack, run once for it and tests/test_alarms.py."""
    from test_smoke_hooks import CODEDEPLOY_CONFIG

    return run_program(CODEDEPLOY_CONFIG, stack="test")


@pytest.fixture(scope="session")
def prod_run() -> ProgramRun:
    return run_program(stack_config(ROOT / "Pulumi.prod.yaml"), stack="prod")


def by_output(run: ProgramRun, key: str, value: Any, type_: str | None = None) -> Recorded:
    found = [r for r in run.custom() if r.outputs.get(key) == value and (type_ is None or r.type == type_)]
    assert len(found) == 1, f"{len(found)} resources with {key}={value!r}"
    return found[0]


def role_policy(run: ProgramRun, role: Recorded) -> str:
    """The inline policy of a role (crossdeploy gives each role exactly one)."""
    policies = [r for r in run.of_type("aws:iam/rolePolicy:RolePolicy")
                if r.inputs["role"] == role.outputs["name"] and r.account == role.account]
    assert len(policies) == 1, f"{role.outputs['name']} has {len(policies)} inline policies"
    return policies[0].inputs["policy"]


def key_policy_for(run: ProgramRun, key_arn: str) -> str:
    return by_output(run, "arn", key_arn).inputs["policy"]


def bucket_policy_for(run: ProgramRun, bucket: str) -> str:
    found = [r for r in run.of_type("aws:s3/bucketPolicy:BucketPolicy") if r.inputs["bucket"] == bucket]
    assert len(found) == 1
    return found[0].inputs["policy"]


def pipelines(run: ProgramRun) -> list[Recorded]:
    """The service pipelines (ECR source); the release pipeline has its own tests."""
    return [p for p in run.of_type("aws:codepipeline/pipeline:Pipeline")
            if p.inputs["stages"][0]["actions"][0]["provider"] == "ECR"]


def deploy_actions(pipeline: Recorded) -> list[tuple[str, dict]]:
    """(stage name, action) for every ECS deploy action of a pipeline."""
    return [(stage["name"], action) for stage in pipeline.inputs["stages"] for action in stage["actions"]
            if action["category"] == "Deploy"]


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def delivered(pattern: dict, events: list[dict]) -> list[dict]:
    """Put events through moto's EventBridge with an SQS target; return the events that arrived."""
    with mock_aws():
        events_client = boto3.client("events", region_name="us-east-2")
        sqs = boto3.client("sqs", region_name="us-east-2")
        queue = sqs.create_queue(QueueName="probe")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events_client.put_rule(Name="probe", EventPattern=json.dumps(pattern))
        events_client.put_targets(Rule="probe", Targets=[{"Id": "q", "Arn": arn}])
        for event in events:
            events_client.put_events(Entries=[{
                "Source": event["source"], "DetailType": event["detail-type"], "Detail": json.dumps(event["detail"]),
                "Resources": event.get("resources", []),
            }])
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]


@pytest.fixture
def dns(monkeypatch) -> dict[str, str]:
    """DNS name -> address for the engine's smoke test: a test fills it with the names moto gave its load balancers
    (pointing at a local HTTP server); the rest of the lookup (elbv2, scheme, port, request) stays real."""
    from handlers import deploy_engine

    names: dict[str, str] = {}

    def connect_address(dns_name: str) -> str:
        return names[dns_name]  # a name elbv2 never reported is a test failure, not a silent localhost

    monkeypatch.setattr(deploy_engine, "connect_address", connect_address)
    return names
