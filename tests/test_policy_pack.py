"""The CrossGuard policy pack (policy/): each policy passes what the program registers under the offline mocks and
catches a deliberately bad fixture, and the pack is one the Pulumi CLI can load and query.

The policies' validate callbacks are called directly, with the argument objects pulumi_policy's analyzer builds (no
CLI); the last tests go through the analyzer itself (gRPC request messages in, diagnostics out), where properties
arrive wrapped in the SDK's unknown-checking proxies.
"""

from __future__ import annotations

import ast
import copy
import json
import runpy
import sys
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pulumi_policy.policy
import pytest
import yaml
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import proto
from pulumi.runtime.proto import analyzer_pb2_grpc
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

from offline.mocks import PROVIDER_TYPE, ProgramRun

# The Pulumi CLI runs the pack from its own directory, which is first on its sys.path: the pack's modules import each
# other as top-level modules, and it is no package of the program. The tests put that directory on the path to import
# the very modules the CLI runs.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))

import crossdeploy_checks as checks
import crossdeploy_policies as pack
from crossdeploy_standards import UNSCOPABLE

ROOT = Path(__file__).resolve().parents[1]
POLICY_DIR = ROOT / "policy"
POLICIES = {policy.name: policy for policy in pack.POLICIES}
BAKE_POLICY = "codepipeline-approval-and-bake-before-prod"
MANDATORY_RESOURCE = [p.name for p in pack.MANDATORY
                      if isinstance(p, ResourceValidationPolicy) and p.name != BAKE_POLICY]
MANDATORY_STACK = [p.name for p in pack.MANDATORY if isinstance(p, StackValidationPolicy)]

ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ROLE = "aws:iam/role:Role"
KEY = "aws:kms/key:Key"
REPLICA_KEY = "aws:kms/replicaKey:ReplicaKey"
BUCKET = "aws:s3/bucket:Bucket"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
PIPELINE = "aws:codepipeline/pipeline:Pipeline"
LOAD_BALANCER = "aws:lb/loadBalancer:LoadBalancer"
KEY_ARN = "arn:aws:kms:us-east-2:111111111111:key/mrk-c5341003197da7bced173aedccb329df"
# The engine names a package's default provider "default_<version>" (pulumi-policy's own integration tests show it).
DEFAULT_PROVIDER_NAME = "default_" + version("pulumi_aws").replace(".", "_")


def urn(type_: str, name: str) -> str:
    return f"urn:pulumi:stack::crossdeploy::{type_}::{name}"


def provider(name: str, props: dict | None = None) -> PolicyProviderResource:
    return PolicyProviderResource(PROVIDER_TYPE, props or {}, urn(PROVIDER_TYPE, name), name)


EXPLICIT = provider("tools-us-east-2", {"region": "us-east-2"})
DEFAULT = provider(DEFAULT_PROVIDER_NAME)


def options() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])


# --------------------------------------------------------------------------- running policies


def resource_args(type_: str, props: dict, name: str = "fixture",
                  provider_: PolicyProviderResource | None = EXPLICIT) -> ResourceValidationArgs:
    return ResourceValidationArgs(type_, props, urn(type_, name), name, options(), provider_)


def violations(policy_name: str, args: ResourceValidationArgs) -> list[str]:
    found: list[str] = []
    assert POLICIES[policy_name].validate(args, lambda message, _urn=None: found.append(message)) is None
    return found


def stack_resource(type_: str, props: dict, name: str,
                   property_dependencies: dict[str, list[PolicyResource]] | None = None) -> PolicyResource:
    return PolicyResource(type_, props, urn(type_, name), name, options(), EXPLICIT, None, [],
                          property_dependencies or {})


def stack_violations(policy_name: str, resources: list[PolicyResource]) -> list[tuple[str | None, str]]:
    found: list[tuple[str | None, str]] = []
    policy = POLICIES[policy_name]
    assert policy.validate(StackValidationArgs(resources), lambda message, u=None: found.append((u, message))) is None
    return found


# --------------------------------------------------------------------------- the program's own resources


def program_resource_args(run: ProgramRun) -> list[ResourceValidationArgs]:
    """Every AWS resource the program registers, as the engine hands it to a resource policy: its inputs and its
    provider (the mocks record a provider by the id they gave it, ``<name>-id``; none means the default one)."""
    providers = {f"{p.name}-id": p for p in run.resources if p.type == PROVIDER_TYPE}
    args = []
    for r in run.custom():
        explicit = providers.get(r.provider or "")
        provider_ = provider(explicit.name, explicit.inputs) if explicit else DEFAULT
        args.append(ResourceValidationArgs(r.type, r.inputs, urn(r.type, r.name), r.name, options(), provider_))
    return args


def program_stack_resources(run: ProgramRun) -> list[PolicyResource]:
    """What a stack policy sees: each resource's outputs (for the mocks, its inputs plus what AWS adds, such as an
    auto-named bucket's name, which the bucket policy's ``bucket`` input holds)."""
    return [stack_resource(r.type, r.outputs, r.name) for r in run.custom()]


@pytest.fixture(scope="module", params=["base", "prod"])
def run(request, base_run, prod_run) -> ProgramRun:
    return base_run if request.param == "base" else prod_run


@pytest.mark.parametrize("policy_name", MANDATORY_RESOURCE)
def test_program_resources_pass_mandatory_policy(run, policy_name):
    problems = [m for args in program_resource_args(run) for m in violations(policy_name, args)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("policy_name", MANDATORY_STACK)
def test_program_stack_passes_mandatory_policy(run, policy_name):
    resources = program_stack_resources(run)
    assert any(r.resource_type == BUCKET for r in resources), "precondition: the program creates buckets"
    problems = stack_violations(policy_name, resources)
    assert problems == [], "\n".join(m for _, m in problems)


def test_program_pipelines_approve_and_bake_before_prod(run):
    # Needs the alarm bake (a Bake action after each gated Deploy action), added to the pipelines alongside this pack:
    # without it this fails with one "no Bake action" message per gated stage and nothing else (see the next test).
    problems = [m for args in program_resource_args(run) for m in violations(BAKE_POLICY, args)]
    assert problems == [], "\n".join(problems)


def _with_bake(props: dict) -> dict:
    props = copy.deepcopy(props)
    for stage in props.get("stages", []):
        if stage["name"].startswith("Deploy-") and not any(a["name"] == "Bake" for a in stage["actions"]):
            stage["actions"].append({"name": "Bake", "category": "Invoke", "provider": "Lambda", "runOrder": 2})
    return props


def test_program_gated_stages_follow_their_approval(run):
    # The approval half of the rule on its own: with a Bake added where one is missing, nothing else is reported.
    gated = 0
    for args in program_resource_args(run):
        if args.resource_type == PIPELINE:
            gated += sum(s["name"] == "Deploy-prod" for s in args.props["stages"])
            args.props = _with_bake(args.props)
            assert violations(BAKE_POLICY, args) == []
    assert gated, "precondition: the program has a gated prod stage"


def test_program_advisory_violations_are_on_load_balancers_only(run):
    load_balancers = {r.name for r in run.of_type(LOAD_BALANCER)}
    for policy in pack.ADVISORY:
        for args in program_resource_args(run):
            for message in violations(policy.name, args):
                assert (args.resource_type, args.name in load_balancers) == (LOAD_BALANCER, True), message


def test_pack_finds_every_iam_document_the_program_sends(run):
    found = {}
    for args in program_resource_args(run):
        for document in checks.iam_documents(args.resource_type, args.name, args.props):
            found[document.where] = args.resource_type
    # Whatever input holds a document, under whatever name: every JSON value with a Statement is found.
    raw = {f"{r.type} {r.name}.{key}" for r in run.custom() for key, value in r.inputs.items()
           if isinstance(value, str) and '"Statement"' in value}
    assert raw == set(found)
    assert {ROLE, ROLE_POLICY, KEY, REPLICA_KEY, BUCKET_POLICY, "aws:ecr/repositoryPolicy:RepositoryPolicy",
            "aws:sns/topicPolicy:TopicPolicy"} <= set(found.values())


# --------------------------------------------------------------------------- fixtures: IAM documents


def doc(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(actions: Any, resources: Any = "arn:aws:s3:::bucket/*", sid: str = "Fixture", **extra: Any) -> dict:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources, **extra}


def role_policy(*statements: dict) -> ResourceValidationArgs:
    return resource_args(ROLE_POLICY, {"role": "r", "policy": doc(*statements)}, name="deploy-policy")


@pytest.mark.parametrize("action", ["*", "s3:*", "s3:Get*", "s3:GetObjec?"])
def test_wildcard_actions_are_refused(action):
    (message,) = violations("iam-no-wildcard-actions", role_policy(allow(["s3:PutObject", action], sid="Wide")))
    assert "deploy-policy.policy" in message and "statement Wide" in message and repr(action) in message


def test_not_action_is_refused():
    statement = {"Sid": "AllBut", "Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:aws:s3:::b"}
    (message,) = violations("iam-no-wildcard-actions", role_policy(statement))
    assert "statement AllBut" in message and "NotAction" in message


def test_wildcard_checks_reach_inline_policies_and_trust_policies():
    role = resource_args(ROLE, {
        "assumeRolePolicy": doc({"Effect": "Allow", "Action": "sts:*", "Principal": {"Service": "x.amazonaws.com"}}),
        "inlinePolicies": [{"name": "inline", "policy": doc(allow("ecs:*", sid="Inline"))}],
    }, name="service-role")
    messages = violations("iam-no-wildcard-actions", role)
    assert len(messages) == 2
    assert any("service-role.assumeRolePolicy: statement #0" in m for m in messages)
    assert any("service-role.inlinePolicies[0](inline): statement Inline" in m for m in messages)


def test_named_actions_and_denied_wildcards_pass():
    deny = {"Sid": "DenyInsecure", "Effect": "Deny", "Action": "s3:*", "Principal": "*", "Resource": "*"}
    assert violations("iam-no-wildcard-actions", role_policy(allow(["s3:GetObject", "s3:PutObject"]), deny)) == []


def test_non_iam_policy_json_is_ignored():
    lifecycle = resource_args("aws:ecr/lifecyclePolicy:LifecyclePolicy", {"policy": json.dumps({"rules": []})})
    assert checks.iam_documents(lifecycle.resource_type, lifecycle.name, lifecycle.props) == []


def test_resource_star_is_refused_for_scopable_actions():
    args = role_policy(allow(["ecr:GetAuthorizationToken", "s3:GetObject"], "*", sid="TooBroad"))
    (message,) = violations("iam-resource-star-only-unscopable", args)
    assert "statement TooBroad" in message and "s3:GetObject" in message and "GetAuthorizationToken" not in message


def test_not_resource_is_refused():
    statement = {"Sid": "Except", "Effect": "Allow", "Action": "s3:GetObject", "NotResource": "arn:aws:s3:::secret/*"}
    (message,) = violations("iam-resource-star-only-unscopable", role_policy(statement))
    assert "statement Except" in message and "NotResource" in message


def test_resource_star_is_refused_in_resource_policies_other_than_key_policies():
    topic = resource_args("aws:sns/topicPolicy:TopicPolicy", {"arn": "t", "policy": doc(
        allow("sns:Publish", "*", sid="Publish", Principal={"Service": "events.amazonaws.com"}))})
    assert violations("iam-resource-star-only-unscopable", topic)


@pytest.mark.parametrize("action", [*sorted(UNSCOPABLE), "ECR:getauthorizationtoken"])
def test_resource_star_passes_for_unscopable_actions(action):
    assert violations("iam-resource-star-only-unscopable", role_policy(allow(action, "*"))) == []


def test_unscopable_list_has_the_describe_calls_aws_cannot_scope():
    assert {"ec2:DescribeNetworkInterfaces", "elasticloadbalancing:DescribeLoadBalancers",
            "elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeListeners"} <= UNSCOPABLE


@pytest.mark.parametrize("type_", [KEY, REPLICA_KEY])
def test_key_policies_may_use_resource_star(type_):
    key_policy = doc(allow(["kms:Decrypt", "kms:DescribeKey"], "*", Principal={"AWS": "arn:aws:iam::1:root"}))
    assert violations("iam-resource-star-only-unscopable", resource_args(type_, {"policy": key_policy})) == []


def test_trust_policies_have_no_resource_to_check():
    trust = doc({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "ecs-tasks.amazonaws.com"}})
    assert violations("iam-resource-star-only-unscopable", resource_args(ROLE, {"assumeRolePolicy": trust})) == []


PASS_ROLE_RESOURCE = "arn:aws:iam::444455556666:role/crossdeploy/prod/workload/*"


@pytest.mark.parametrize("condition", [
    None,
    {"StringNotEquals": {"iam:PassedToService": "lambda.amazonaws.com"}},
    {"StringEqualsIfExists": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
    {"StringLike": {"iam:PassedToService": "*.amazonaws.com"}},
    {"StringEquals": {"iam:AssociatedResourceARN": "arn:aws:ecs:us-east-2:1:service/c/s"}},
])
def test_pass_role_without_a_named_service_is_refused(condition):
    extra = {"Condition": condition} if condition else {}
    (message,) = violations("iam-pass-role-names-service",
                            role_policy(allow("iam:PassRole", PASS_ROLE_RESOURCE, sid="PassAny", **extra)))
    assert "statement PassAny" in message and "iam:PassRole" in message


def test_pass_role_reached_through_a_wildcard_is_refused():
    assert violations("iam-pass-role-names-service", role_policy(allow(["iam:Pass*"], PASS_ROLE_RESOURCE)))


@pytest.mark.parametrize("services", ["ecs-tasks.amazonaws.com", ["ecs-tasks.amazonaws.com", "events.amazonaws.com"]])
def test_pass_role_to_a_named_service_passes(services):
    statement = allow("iam:PassRole", PASS_ROLE_RESOURCE,
                      Condition={"StringEquals": {"iam:PassedToService": services}})
    assert violations("iam-pass-role-names-service", role_policy(statement)) == []


# --------------------------------------------------------------------------- fixtures: buckets


def tls_deny(bucket: str, **changes: Any) -> dict:
    statement = {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                 "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                 "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    statement.update(changes)
    return statement


def bucket_stack(name: str = "artifacts-1a2b3c", statements: list[dict] | None = None,
                 flags: dict[str, bool] | None = None, target: str | None = None) -> list[PolicyResource]:
    """A bucket, its policy and its public access block, as stack resources (outputs)."""
    statements = [tls_deny(name)] if statements is None else statements
    flags = dict.fromkeys(checks.PUBLIC_ACCESS_FLAGS, True) | (flags or {})
    return [
        stack_resource(BUCKET, {"bucket": name, "id": name, "arn": f"arn:aws:s3:::{name}"}, "artifacts-bucket"),
        stack_resource(BUCKET_POLICY, {"bucket": target or name, "policy": doc(*statements)}, "artifacts-policy"),
        stack_resource(PUBLIC_ACCESS_BLOCK, {"bucket": target or name, **flags}, "artifacts-public-access"),
    ]


def test_bucket_with_tls_policy_and_public_access_block_passes():
    for policy_name in MANDATORY_STACK:
        assert stack_violations(policy_name, bucket_stack()) == []


def test_bucket_without_policy_or_public_access_block_is_refused():
    bucket = bucket_stack()[0]
    ((where, message),) = stack_violations("s3-buckets-tls-only", [bucket])
    assert where == bucket.urn and "artifacts-bucket" in message and "no aws:s3/bucketPolicy" in message
    ((where, message),) = stack_violations("s3-buckets-block-public-access", [bucket])
    assert where == bucket.urn and "no aws:s3/bucketPublicAccessBlock" in message


@pytest.mark.parametrize("statement", [
    tls_deny("artifacts-1a2b3c", Effect="Allow"),
    tls_deny("artifacts-1a2b3c", Condition={"Bool": {"aws:SecureTransport": "true"}}),
    tls_deny("artifacts-1a2b3c", Condition=None),
    tls_deny("artifacts-1a2b3c", Action=["s3:GetObject"]),
    tls_deny("artifacts-1a2b3c", Principal={"AWS": "arn:aws:iam::1:root"}),
    tls_deny("artifacts-1a2b3c", Resource="arn:aws:s3:::artifacts-1a2b3c/*"),  # objects only
    tls_deny("some-other-bucket"),
], ids=["allow", "secure-true", "no-condition", "one-action", "one-principal", "objects-only", "other-bucket"])
def test_bucket_policy_without_a_tls_deny_is_refused(statement):
    ((_, message),) = stack_violations("s3-buckets-tls-only", bucket_stack(statements=[statement]))
    assert "aws:SecureTransport" in message


def test_policy_and_block_of_another_bucket_do_not_count():
    resources = bucket_stack(target="some-other-bucket")
    assert stack_violations("s3-buckets-tls-only", resources)
    assert stack_violations("s3-buckets-block-public-access", resources)


@pytest.mark.parametrize("flag", checks.PUBLIC_ACCESS_FLAGS)
def test_public_access_block_with_a_flag_off_is_refused(flag):
    ((_, message),) = stack_violations("s3-buckets-block-public-access", bucket_stack(flags={flag: False}))
    assert flag in message


def test_resources_match_their_bucket_through_property_dependencies():
    # During a preview a new bucket's id is unknown, so the policy's `bucket` input is too; the engine still says
    # which resource it comes from.
    bucket, policy, block = bucket_stack(target="<unknown>")
    policy.property_dependencies = {"bucket": [bucket]}
    block.property_dependencies = {"bucket": [bucket]}
    for policy_name in MANDATORY_STACK:
        assert stack_violations(policy_name, [bucket, policy, block]) == []


# --------------------------------------------------------------------------- fixtures: keys, artifact stores


@pytest.mark.parametrize("props", [{"enableKeyRotation": False}, {}], ids=["off", "unset"])
def test_key_without_rotation_is_refused(props):
    (message,) = violations("kms-keys-rotate", resource_args(KEY, {"description": "k", **props}, name="artifacts-key"))
    assert "artifacts-key" in message and "enableKeyRotation" in message


def test_key_with_rotation_and_replica_keys_pass():
    assert violations("kms-keys-rotate", resource_args(KEY, {"enableKeyRotation": True})) == []
    assert violations("kms-keys-rotate", resource_args(REPLICA_KEY, {"primaryKeyArn": KEY_ARN})) == []


def pipeline(stages: list[dict] | None = None, stores: list[dict] | None = None) -> dict:
    return {
        "pipelineType": "V2",
        "artifactStores": [{"type": "S3", "location": "artifacts-1a2b3c",
                            "encryptionKey": {"type": "KMS", "id": KEY_ARN}}] if stores is None else stores,
        "stages": stages if stages is not None else gated_stages(),
    }


def store(key: Any, region: str | None = None) -> dict:
    return {"type": "S3", "location": "artifacts-1a2b3c", **({"encryptionKey": key} if key else {}),
            **({"region": region} if region else {})}


@pytest.mark.parametrize("key", [
    {"type": "KMS", "id": "arn:aws:kms:us-east-2:111111111111:alias/artifacts"},
    {"type": "KMS", "id": "alias/artifacts"},
    {"type": "KMS", "id": "mrk-c5341003197da7bced173aedccb329df"},
    {"type": "KMS", "id": "arn:aws:kms:us-east-2:111111111111:key/"},
    {"type": "SSE", "id": KEY_ARN},
    None,
], ids=["alias-arn", "alias", "key-id", "no-key-part", "not-kms", "no-key"])
def test_artifact_store_without_a_kms_key_arn_is_refused(key):
    stores = [store({"type": "KMS", "id": KEY_ARN}), store(key, region="eu-west-1")]
    (message,) = violations("codepipeline-artifacts-kms-key-arn", resource_args(PIPELINE, pipeline(stores=stores)))
    assert "artifactStores[1] (eu-west-1)" in message


def test_pipeline_without_artifact_stores_is_refused():
    assert violations("codepipeline-artifacts-kms-key-arn", resource_args(PIPELINE, pipeline(stores=[])))


@pytest.mark.parametrize("key_arn", [KEY_ARN, "arn:aws-cn:kms:cn-north-1:111111111111:key/1234abcd-12ab-34cd-56ef"])
def test_artifact_stores_with_key_arns_pass(key_arn):
    stores = [store({"type": "KMS", "id": key_arn}), store({"type": "KMS", "id": key_arn}, region="us-west-2")]
    assert violations("codepipeline-artifacts-kms-key-arn", resource_args(PIPELINE, pipeline(stores=stores))) == []


# --------------------------------------------------------------------------- fixtures: approval and bake


def action(name: str, category: str, provider_: str, run_order: int = 1) -> dict:
    return {"name": name, "category": category, "owner": "AWS", "provider": provider_, "version": "1",
            "runOrder": run_order}


def deploy_stage(env: str, bake: dict | None = None) -> dict:
    actions = [action("Deploy", "Invoke", "Lambda")]
    if bake is not None:
        actions.append(bake)
    return {"name": f"Deploy-{env}", "actions": actions}


def approve_stage(env: str, approval: dict | None = None) -> dict:
    return {"name": f"Approve-{env}", "actions": [approval or action("Approve", "Approval", "Manual")]}


BAKE = action("Bake", "Invoke", "Lambda", run_order=2)


def gated_stages(env: str = "prod", bake: dict | None = BAKE) -> list[dict]:
    return [{"name": "Source", "actions": [action("Image", "Source", "ECR")]},
            deploy_stage("qa"), approve_stage(env), deploy_stage(env, bake)]


def bake_violations(stages: list[dict]) -> list[str]:
    return violations(BAKE_POLICY, resource_args(PIPELINE, pipeline(stages=stages), name="orders-pipeline"))


def test_approved_and_baked_prod_stage_passes():
    assert bake_violations(gated_stages()) == []


def test_prod_stage_without_bake_is_refused():
    (message,) = bake_violations(gated_stages(bake=None))
    assert "orders-pipeline" in message and "stage Deploy-prod" in message and "no Bake action" in message


@pytest.mark.parametrize("bake", [
    action("Bake", "Invoke", "Lambda", run_order=1),
    action("Bake", "Invoke", "StepFunctions", run_order=2),
], ids=["same-run-order-as-deploy", "not-lambda"])
def test_prod_stage_with_a_wrong_bake_is_refused(bake):
    (message,) = bake_violations(gated_stages(bake=bake))
    assert "action Bake" in message


@pytest.mark.parametrize("env", ["prod", "production", "prod-eu", "eu-prod"])
def test_prod_stage_without_approval_is_refused(env):
    stages = [deploy_stage("qa"), deploy_stage(env, BAKE)]
    (message,) = bake_violations(stages)
    assert f"stage Deploy-{env}" in message and f"right after an Approve-{env} stage" in message


def test_approval_must_come_right_before_its_deploy_stage():
    stages = [approve_stage("prod"), deploy_stage("qa"), deploy_stage("prod", BAKE)]
    (message,) = bake_violations(stages)
    assert "(after: Deploy-qa)" in message


def test_approval_stage_without_a_manual_approval_is_refused():
    stages = [deploy_stage("qa"), approve_stage("prod", action("Approve", "Invoke", "Lambda")),
              deploy_stage("prod", BAKE)]
    (message,) = bake_violations(stages)
    assert "no Manual approval action" in message


def test_an_approval_gates_a_non_prod_environment_too():
    assert bake_violations(gated_stages(env="staging")) == []
    (message,) = bake_violations(gated_stages(env="staging", bake=None))
    assert "stage Deploy-staging" in message and "no Bake action" in message


@pytest.mark.parametrize("env", ["qa", "preprod", "producer", "staging"])
def test_ungated_environments_need_neither(env):
    assert not checks.is_prod(env)
    assert bake_violations([deploy_stage(env)]) == []


# --------------------------------------------------------------------------- fixtures: providers, load balancers


@pytest.mark.parametrize("provider_", [DEFAULT, provider("default"), None],
                         ids=["default-versioned", "default", "none"])
def test_aws_resource_on_the_default_provider_is_refused(provider_):
    args = resource_args(BUCKET, {"bucket": "b"}, name="artifacts-bucket", provider_=provider_)
    (message,) = violations("aws-explicit-provider", args)
    assert "artifacts-bucket" in message


@pytest.mark.parametrize("provider_", [EXPLICIT, provider("default-tools-account")], ids=["named", "named-default-x"])
def test_aws_resource_on_an_explicit_provider_passes(provider_):
    assert violations("aws-explicit-provider", resource_args(BUCKET, {}, provider_=provider_)) == []


def test_non_aws_resources_are_not_judged_on_providers():
    assert violations("aws-explicit-provider", resource_args("crossdeploy:pipeline:ServicePipeline", {}, None)) == []
    assert violations("aws-explicit-provider", resource_args("random:index/randomId:RandomId", {}, DEFAULT)) == []


def test_application_load_balancer_without_logs_or_protection_is_reported():
    args = resource_args(LOAD_BALANCER, {"loadBalancerType": "application", "accessLogs": {"enabled": False,
                                                                                          "bucket": "logs"}})
    assert len(violations("alb-access-logs", args)) == 1
    assert len(violations("alb-deletion-protection", args)) == 1
    assert POLICIES["alb-access-logs"].enforcement_level == pulumi_policy.EnforcementLevel.ADVISORY


def test_application_load_balancer_with_logs_and_protection_passes():
    args = resource_args(LOAD_BALANCER, {"accessLogs": {"enabled": True, "bucket": "logs"},
                                         "enableDeletionProtection": True})
    assert violations("alb-access-logs", args) == violations("alb-deletion-protection", args) == []
    network = resource_args(LOAD_BALANCER, {"loadBalancerType": "network"})
    assert violations("alb-access-logs", network) == violations("alb-deletion-protection", network) == []


# --------------------------------------------------------------------------- the pack itself


def test_policy_project_file_names_the_python_runtime_and_its_venv():
    project = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text(encoding="utf-8"))
    assert project["runtime"]["name"] == "python"
    # The CLI's Python policy runner uses <pack>/venv/bin/python: the preview workflow installs into that venv.
    assert project["runtime"]["options"]["virtualenv"] == "venv"
    assert "advisory" in project["description"].lower() and "load balancer" in project["description"]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith(("#", "-")):  # "-r requirements.txt" is an include, not a pin
            name, _, pinned = line.partition("==")
            pins[name.split("[")[0].lower().replace("_", "-")] = pinned
    return pins


def test_pack_requirements_are_pinned_like_the_programs():
    # The program's pins are split: the runtime in requirements.txt, the tools (pulumi_policy among them: the tests
    # load the pack) in requirements-dev.txt. The pack must match whichever holds each of its packages.
    pack_pins = _pins(POLICY_DIR / "requirements.txt")
    program_pins = _pins(ROOT / "requirements.txt") | _pins(ROOT / "requirements-dev.txt")
    assert all(pack_pins.values()), "every requirement of the pack is pinned"
    assert {"pulumi", "pulumi-policy"} <= set(pack_pins)
    assert {name: pin for name, pin in pack_pins.items() if program_pins.get(name) != pin} == {}


def test_pack_imports_nothing_of_the_program():
    program_packages = {"components", "handlers", "offline", "tests"}
    for source in POLICY_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not {n.split(".")[0] for n in names} & program_packages, f"{source.name} imports {names}"


def test_policy_names_are_kebab_case_and_unique():
    names = [p.name for p in pack.POLICIES]
    assert len(set(names)) == len(names)
    assert all(name.replace("-", "").isalnum() and name == name.lower() for name in names)


@pytest.fixture
def served(monkeypatch):
    """Run policy/__main__.py as the CLI does and return the analyzer servicer the PolicyPack serves to the engine.

    Building a PolicyPack starts its gRPC server (on a loopback port) and then waits for the engine for ever; the
    wait is made to raise KeyboardInterrupt, on which the SDK stops the server and the constructor returns."""
    captured = {}
    register = analyzer_pb2_grpc.add_AnalyzerServicer_to_server

    def capture(servicer, server):
        captured["servicer"] = servicer
        register(servicer, server)

    def interrupt(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(analyzer_pb2_grpc, "add_AnalyzerServicer_to_server", capture)
    monkeypatch.setattr(pulumi_policy.policy, "time", SimpleNamespace(sleep=interrupt))
    runpy.run_path(str(POLICY_DIR / "__main__.py"), run_name="__main__")
    return captured["servicer"]


def test_main_builds_the_pack(served):
    info = served.GetAnalyzerInfo(None, None)
    assert info.name == pack.PACK_NAME
    levels = {p.name: proto.EnforcementLevel.Name(p.enforcementLevel) for p in info.policies}
    assert levels == {p.name: "MANDATORY" for p in pack.MANDATORY} | {p.name: "ADVISORY" for p in pack.ADVISORY}
    assert all(p.description for p in info.policies)


def test_importing_main_does_not_serve(monkeypatch):
    def serve():
        raise AssertionError("importing policy/__main__.py built the pack (and would block serving it)")

    monkeypatch.setattr(pack, "build_pack", serve)
    assert runpy.run_path(str(POLICY_DIR / "__main__.py"), run_name="crossdeploy_pack")["build_pack"] is serve


def _struct(props: dict) -> struct_pb2.Struct:
    return json_format.ParseDict(props, struct_pb2.Struct())


def analyze(servicer, type_: str, props: dict, name: str = "fixture", provider_name: str = "tools") -> list[tuple]:
    request = proto.AnalyzeRequest(
        type=type_, name=name, urn=urn(type_, name), properties=_struct(props),
        provider=proto.AnalyzerProviderResource(type=PROVIDER_TYPE, name=provider_name,
                                                urn=urn(PROVIDER_TYPE, provider_name)))
    response = servicer.Analyze(request, None)
    return [(d.policyName, proto.EnforcementLevel.Name(d.enforcementLevel), d.message) for d in response.diagnostics]


def test_engine_path_reports_violations_of_proxied_properties(served):
    bad = pipeline(stages=gated_stages(bake=None), stores=[store({"type": "KMS", "id": "alias/artifacts"})])
    found = analyze(served, PIPELINE, bad, provider_name=DEFAULT_PROVIDER_NAME)
    assert {(policy, level) for policy, level, _ in found} == {
        ("codepipeline-approval-and-bake-before-prod", "MANDATORY"),
        ("codepipeline-artifacts-kms-key-arn", "MANDATORY"),
        ("aws-explicit-provider", "MANDATORY")}
    assert analyze(served, PIPELINE, pipeline()) == []


def test_engine_path_runs_stack_policies(served):
    bucket, policy, block = bucket_stack(target="<unknown>")

    def resource(r: PolicyResource, depends_on_bucket: bool) -> proto.AnalyzerResource:
        deps = {"bucket": proto.AnalyzerPropertyDependencies(urns=[bucket.urn])} if depends_on_bucket else {}
        return proto.AnalyzerResource(type=r.resource_type, name=r.name, urn=r.urn, properties=_struct(dict(r.props)),
                                      propertyDependencies=deps)

    good = [resource(bucket, False), resource(policy, True), resource(block, True)]
    assert list(served.AnalyzeStack(proto.AnalyzeStackRequest(resources=good), None).diagnostics) == []
    unattached = [resource(bucket, False), resource(policy, False), resource(block, False)]
    found = served.AnalyzeStack(proto.AnalyzeStackRequest(resources=unattached), None).diagnostics
    assert {(d.policyName, d.urn) for d in found} == {("s3-buckets-tls-only", bucket.urn),
                                                      ("s3-buckets-block-public-access", bucket.urn)}


def test_engine_path_defers_unknown_documents_to_the_update(served):
    # During a preview a document built from outputs of new resources is unknown: the SDK reports that the policy
    # cannot run yet (advisory) instead of a violation; `pulumi up` judges the real document.
    found = analyze(served, ROLE_POLICY, {"role": "r", "policy": UNKNOWN_STRING_VALUE})
    assert found and all(level == "ADVISORY" and "during preview" in message for _, level, message in found)
