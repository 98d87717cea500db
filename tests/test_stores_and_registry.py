"""Artifact stores (KMS multi-region key, regional buckets) and ECR repositories, as AWS would receive them."""

from __future__ import annotations

import json

import pytest
from conftest import PROD, QA, TOOLS, bucket_policy_for, config
from iam import allows

from components.registry import ECR_MAX_FILTERS_PER_RULE, replication_rules
from offline.mocks import run_program

REGIONS = {"us-east-2", "eu-west-1"}
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"


def of_bucket(run, type_: str, bucket: str) -> dict:
    found = [r for r in run.of_type(type_) if r.inputs["bucket"] == bucket]
    assert len(found) == 1, (type_, bucket)
    return found[0].inputs


def test_one_multi_region_key_with_rotation_and_a_replica_per_other_region(base_run) -> None:
    keys = [k for k in base_run.of_type("aws:kms/key:Key") if k.inputs.get("multiRegion")]
    assert len(keys) == 1
    primary = keys[0]
    assert (primary.account, primary.region) == (TOOLS, "us-east-2")
    assert primary.inputs["enableKeyRotation"] is True
    replicas = base_run.of_type("aws:kms/replicaKey:ReplicaKey")
    assert [(r.account, r.region) for r in replicas] == [(TOOLS, "eu-west-1")]
    assert replicas[0].inputs["primaryKeyArn"] == primary.outputs["arn"]
    assert replicas[0].inputs["policy"] == primary.inputs["policy"]


def test_one_hardened_bucket_per_region(base_run) -> None:
    # (The deploy document bucket shares the hardening but not the expiry: tests/test_engine_program.py.)
    buckets = [b for b in base_run.of_type("aws:s3/bucket:Bucket") if b.name.startswith("artifacts-")]
    assert {(b.account, b.region) for b in buckets} == {(TOOLS, r) for r in REGIONS}
    keys = {r.region: r.outputs["arn"] for r in base_run.of_type("aws:kms/key:Key") if r.inputs.get("multiRegion")}
    keys.update({r.region: r.outputs["arn"] for r in base_run.of_type("aws:kms/replicaKey:ReplicaKey")})
    for b in buckets:
        name = b.outputs["bucket"]
        sse = of_bucket(base_run, SSE, name)["rules"][0]
        assert sse["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "aws:kms",
                                                             "kmsMasterKeyId": keys[b.region]}
        assert sse["bucketKeyEnabled"] is True
        block = of_bucket(base_run, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", name)
        assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                               "restrictPublicBuckets"))
        ownership = of_bucket(base_run, "aws:s3/bucketOwnershipControls:BucketOwnershipControls", name)
        assert ownership["rule"] == {"objectOwnership": "BucketOwnerEnforced"}
        versioning = of_bucket(base_run, "aws:s3/bucketVersioning:BucketVersioning", name)
        assert versioning["versioningConfiguration"]["status"] == "Enabled"
        rule = of_bucket(base_run, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", name)["rules"][0]
        assert rule["status"] == "Enabled" and rule["expiration"]["days"] > 0
        assert rule["noncurrentVersionExpiration"]["noncurrentDays"] > 0
        policy = bucket_policy_for(base_run, name)
        obj = f"arn:aws:s3:::{name}/artifact.zip"
        # Deny over plain HTTP, for everyone including the tools account.
        tools_role = f"arn:aws:iam::{TOOLS}:role/anything"
        assert not allows(policy, "s3:GetObject", obj, principal_arn=tools_role,
                          context={"aws:SecureTransport": "false"})
        deny = [s for s in json.loads(policy)["Statement"] if s["Effect"] == "Deny"]
        assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_bucket_and_key_policies_admit_exactly_the_deploy_roles(base_run) -> None:
    deploy_roles = {r.outputs["arn"] for r in base_run.of_type("aws:iam/role:Role")
                    if r.account in (QA, PROD) and "/deploy/" in r.outputs["arn"]}
    assert len(deploy_roles) == 2
    key = next(k for k in base_run.of_type("aws:kms/key:Key") if k.inputs.get("multiRegion"))
    bucket = base_run.of_type("aws:s3/bucket:Bucket")[0].outputs["bucket"]
    for role in deploy_roles:
        assert allows(key.inputs["policy"], "kms:Decrypt", principal_arn=role)
        assert allows(bucket_policy_for(base_run, bucket), "s3:GetObject", f"arn:aws:s3:::{bucket}/a",
                      principal_arn=role)
    for stranger in (f"arn:aws:iam::{QA}:role/SomethingElse", f"arn:aws:iam::{QA}:root",
                     "arn:aws:iam::999999999999:role/crossdeploy/test/deploy/crossdeploy-test-deploy"):
        assert not allows(key.inputs["policy"], "kms:Decrypt", principal_arn=stranger)
        assert not allows(bucket_policy_for(base_run, bucket), "s3:GetObject", f"arn:aws:s3:::{bucket}/a",
                          principal_arn=stranger)
    # The deploy roles may read, never write or administer.
    role = sorted(deploy_roles)[0]
    assert not allows(key.inputs["policy"], "kms:Encrypt", principal_arn=role)
    assert not allows(bucket_policy_for(base_run, bucket), "s3:PutObject", f"arn:aws:s3:::{bucket}/a",
                      principal_arn=role)


def test_repositories_in_every_region_with_immutable_tags_but_the_trigger(base_run) -> None:
    repos = base_run.of_type("aws:ecr/repository:Repository")
    assert {(r.inputs["name"], r.region) for r in repos} == {
        (name, region) for name in ("orders", "team/payments") for region in REGIONS}
    for repo in repos:
        assert repo.account == TOOLS
        assert repo.inputs["imageScanningConfiguration"] == {"scanOnPush": True}
        assert repo.inputs["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
        trigger = "release" if repo.inputs["name"] == "team/payments" else "latest"
        assert repo.inputs["imageTagMutabilityExclusionFilters"] == [{"filter": trigger, "filterType": "WILDCARD"}]


def test_every_regional_copy_carries_the_same_pull_policy_and_lifecycle(base_run) -> None:
    policies = base_run.of_type("aws:ecr/repositoryPolicy:RepositoryPolicy")
    assert {(p.inputs["repository"], p.region) for p in policies} == {
        (name, region) for name in ("orders", "team/payments") for region in REGIONS}
    assert len({p.inputs["policy"] for p in policies}) == 1
    policy = policies[0].inputs["policy"]
    for account in (QA, PROD):
        execution = f"arn:aws:iam::{account}:role/crossdeploy/test/workload/test-orders-execution"
        assert allows(policy, "ecr:BatchGetImage", principal_arn=execution)
        assert not allows(policy, "ecr:PutImage", principal_arn=execution)
        # Pulls are for the roles ECS pulls with, not every principal of the workload account.
        assert not allows(policy, "ecr:BatchGetImage", principal_arn=f"arn:aws:iam::{account}:role/exec")
    assert not allows(policy, "ecr:BatchGetImage", principal_arn="arn:aws:iam::999999999999:role/x")
    # Nobody outside the tools account pushes, whatever else grants it.
    assert not allows(policy, "ecr:PutImage", principal_arn="arn:aws:iam::999999999999:role/x")
    lifecycles = base_run.of_type("aws:ecr/lifecyclePolicy:LifecyclePolicy")
    assert len(lifecycles) == len(policies) and len({lc.inputs["policy"] for lc in lifecycles}) == 1
    rules = json.loads(lifecycles[0].inputs["policy"])["rules"]
    assert all(r["selection"]["tagStatus"] == "untagged" for r in rules), "release tags are never expired"


def test_registry_replicates_every_service_to_every_other_region(base_run) -> None:
    [replication] = base_run.of_type("aws:ecr/replicationConfiguration:ReplicationConfiguration")
    assert (replication.account, replication.region) == (TOOLS, "us-east-2")
    rules = replication.inputs["replicationConfiguration"]["rules"]
    assert [d for r in rules for d in r["destinations"]] == [{"region": "eu-west-1", "registryId": TOOLS}]
    assert sorted(f["filter"] for r in rules for f in r["repositoryFilters"]) == ["orders", "team/payments"]


def test_replication_filters_are_chunked_within_ecr_limits() -> None:
    names = [f"svc-{i:03}" for i in range(250)]
    rules = replication_rules(names, TOOLS, ("eu-west-1", "us-west-2"))
    assert [len(r.repository_filters) for r in rules] == [100, 100, 50]
    assert all(len(r.repository_filters) <= ECR_MAX_FILTERS_PER_RULE for r in rules)
    assert [f.filter for r in rules for f in r.repository_filters] == names


def test_no_replication_when_everything_is_in_the_home_region() -> None:
    run = run_program(config(**{"crossdeploy:environments": [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2"]}]}), stack="single")
    assert run.of_type("aws:ecr/replicationConfiguration:ReplicationConfiguration") == []
    assert run.of_type("aws:kms/replicaKey:ReplicaKey") == []


@pytest.mark.parametrize("bad", [(), ("us-east-2", "us-east-2")])
def test_artifact_store_args_are_validated(bad) -> None:
    from components.artifacts import ArtifactStoresArgs

    with pytest.raises(ValueError, match="regions"):
        ArtifactStoresArgs(providers=None, partition="aws", tools_account_id=TOOLS, regions=bad)  # type: ignore[arg-type]
