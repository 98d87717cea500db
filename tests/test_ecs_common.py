"""Task definitions are copied whole (every registrable field ECS returns), and only the named image changes."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from handlers.ecs_common import (
    TaskDefinitionError,
    assumed_session,
    current_image,
    register_kwargs,
    registrable_fields,
    replace_image,
)

RICH = {
    "family": "orders",
    "taskRoleArn": "arn:aws:iam::123456789012:role/task",
    "executionRoleArn": "arn:aws:iam::123456789012:role/exec",
    "networkMode": "awsvpc",
    "requiresCompatibilities": ["FARGATE"],
    "cpu": "512",
    "memory": "1024",
    "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
    "ephemeralStorage": {"sizeInGiB": 30},
    "volumes": [{"name": "scratch"}],
    "containerDefinitions": [
        {"name": "app", "image": "repo/app:1", "essential": True,
         "portMappings": [{"containerPort": 8080, "protocol": "tcp"}],
         "environment": [{"name": "MODE", "value": "prod"}],
         "secrets": [{"name": "DB", "valueFrom": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db"}],
         "healthCheck": {"command": ["CMD-SHELL", "curl -f localhost:8080/health"], "interval": 30},
         "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/orders"}},
         "mountPoints": [{"sourceVolume": "scratch", "containerPath": "/tmp"}]},
        {"name": "sidecar", "image": "repo/envoy:1.30", "essential": False},
    ],
    "tags": [{"key": "team", "value": "payments"}],
}


@mock_aws
def test_registered_copy_equals_the_original_but_for_the_image() -> None:
    ecs = boto3.client("ecs", region_name="us-east-1")
    original = ecs.register_task_definition(**RICH)["taskDefinition"]
    described = ecs.describe_task_definition(taskDefinition=original["taskDefinitionArn"], include=["TAGS"])
    kwargs = replace_image(register_kwargs(described, ecs), "app", "repo/app@sha256:" + "a" * 64)
    copy_ = ecs.register_task_definition(**kwargs)["taskDefinition"]
    assert copy_["revision"] == original["revision"] + 1
    volatile = {"taskDefinitionArn", "revision", "registeredAt", "registeredBy", "containerDefinitions"}
    assert {k: v for k, v in copy_.items() if k not in volatile} == {
        k: v for k, v in original.items() if k not in volatile}
    app, sidecar = copy_["containerDefinitions"]
    assert app["image"] == "repo/app@sha256:" + "a" * 64
    assert {k: v for k, v in app.items() if k != "image"} == {
        k: v for k, v in original["containerDefinitions"][0].items() if k != "image"}
    assert sidecar == original["containerDefinitions"][1]
    assert kwargs["tags"] == RICH["tags"]


def test_fields_come_from_the_sdk_model_not_a_list() -> None:
    ecs = boto3.client("ecs", region_name="us-east-1")
    fields = registrable_fields(ecs)
    assert {"family", "containerDefinitions", "runtimePlatform", "ephemeralStorage", "pidMode", "ipcMode",
            "proxyConfiguration", "inferenceAccelerators", "enableFaultInjection"} <= fields
    assert not {"taskDefinitionArn", "revision", "status", "registeredAt"} & fields


def test_container_is_matched_by_name_never_by_image_text() -> None:
    kwargs = {"containerDefinitions": [{"name": "a", "image": "x/app:1"}, {"name": "app", "image": "x/other:1"}]}
    updated = replace_image(kwargs, "app", "new")
    assert [c["image"] for c in updated["containerDefinitions"]] == ["x/app:1", "new"]
    assert kwargs["containerDefinitions"][1]["image"] == "x/other:1", "the input is not modified"
    with pytest.raises(TaskDefinitionError, match="no container named 'web'"):
        replace_image(kwargs, "web", "new")
    with pytest.raises(TaskDefinitionError, match="2 containers"):
        replace_image(kwargs, None, "new")
    assert current_image({"containerDefinitions": [{"name": "only", "image": "i"}]}, None) == "i"


@mock_aws
def test_assumed_session_acts_in_the_role_account() -> None:
    base = boto3.Session(region_name="us-east-1")
    iam = base.client("iam")
    iam.create_role(RoleName="deploy", AssumeRolePolicyDocument="{}")
    session = assumed_session(base, "arn:aws:iam::222233334444:role/deploy", "crossdeploy-test")
    identity = session.client("sts", region_name="us-east-1").get_caller_identity()
    assert identity["Account"] == "222233334444"
    assert identity["Arn"].endswith(":assumed-role/deploy/crossdeploy-test")
