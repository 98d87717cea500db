"""The deploy document store: what ``pulumi up`` says each service runs, as S3 objects every deploy reads.

Per service one object, ``services/<service>/deploy.zip`` (:func:`components.naming.deploy_document_key`), a zip
holding ``deploy.json``: :func:`components.task_definition.deploy_document`, the per-environment strategy, timeout
and per-region targets with the task definition rendered from the stack config. The service pipeline's ``Config``
source action reads it (a change to it starts the pipeline through EventBridge), releases read the same object.

Why a bucket of its own rather than the home artifact bucket:

* **Current versions never expire.** A pipeline's config source must never disappear, or every later execution
  fails at Source; the artifact buckets delete objects after 90 days. Here only *noncurrent* versions expire
  (default 30 days), so the history stays long enough to compare and roll back, and the bucket does not grow.
* **Versioned** (CodePipeline's S3 source action requires it) and **EventBridge notifications on**, so an
  ``Object Created`` event starts exactly the pipeline whose document changed (the rule lives with the pipeline).
* Encrypted with the home region's **artifact key** (by ARN), which the pipeline roles already use: reading the
  source needs no further KMS grant. Private, ownership enforced, TLS only: :mod:`components.buckets`.

The zip is deterministic (one entry, ``json.dumps(..., sort_keys=True, indent=1)``), so ``pulumi up`` rewrites an
object only when a rendered task definition, target or timeout actually changed — and only then starts a pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components import naming
from components import policies as p
from components.artifacts import ArtifactStore
from components.buckets import encrypted_bucket, lifecycle, tls_only_policy
from components.config import StackConfig
from components.task_definition import DEPLOY_DOCUMENT_FILE, deploy_document


@dataclass(frozen=True)
class DeployDocument:
    """One service's document and where it goes."""

    service: str
    """The service's name (its ECR repository name)."""
    key: str
    document: dict[str, Any]

    def text(self) -> str:
        """``deploy.json`` exactly as written: stable across runs for equal documents."""
        return json.dumps(self.document, sort_keys=True, indent=1)


def deploy_documents(cfg: StackConfig) -> tuple[DeployDocument, ...]:
    """Every service's document (pipeline, push and existing services alike: releases read them all)."""
    return tuple(DeployDocument(s.name, naming.deploy_document_key(s), deploy_document(cfg, s)) for s in cfg.services)


@dataclass(frozen=True)
class DeployConfigStoreArgs:
    provider: aws.Provider
    """Tools account provider in the home region."""
    key_arn: pulumi.Input[str]
    """The home region's artifact key **ARN**: the pipeline roles already decrypt with it."""
    documents: tuple[DeployDocument, ...]
    noncurrent_expiry_days: int = 30
    """Replaced document versions are kept this long. Default 30. Current versions never expire."""

    def __post_init__(self) -> None:
        problems = []
        if not self.documents:
            problems.append("documents: at least one service is required")
        keys = [d.key for d in self.documents]
        if len(set(keys)) != len(keys):
            problems.append(f"documents: keys must be unique, got {sorted(k for k in keys if keys.count(k) > 1)}")
        if len({d.service for d in self.documents}) != len(self.documents):
            problems.append("documents: one document per service")
        if not 1 <= self.noncurrent_expiry_days <= 3650:
            problems.append(f"noncurrent_expiry_days: 1-3650, got {self.noncurrent_expiry_days}")
        if problems:
            raise ValueError("DeployConfigStoreArgs: " + "; ".join(problems))


def deploy_config_store_args(cfg: StackConfig, provider: aws.Provider,
                             stores: Mapping[str, ArtifactStore]) -> DeployConfigStoreArgs:
    """Every service's deploy document, under the home region's artifact key; `stores`: the artifact store per
    region."""
    return DeployConfigStoreArgs(
        provider=provider,
        key_arn=stores[cfg.tools_region].key_arn,
        documents=deploy_documents(cfg),
    )


def document_archive(document: DeployDocument) -> pulumi.AssetArchive:
    return pulumi.AssetArchive({DEPLOY_DOCUMENT_FILE: pulumi.StringAsset(document.text())})


class DeployConfigStore(pulumi.ComponentResource):
    """The deploy document bucket and one document object per service. ``keys[service]`` is the object key,
    ``bucket``/``bucket_arn`` the bucket's name and ARN."""

    def __init__(self, name: str, args: DeployConfigStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:deploy_config:DeployConfigStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        created = encrypted_bucket(name, args.key_arn, child)
        bucket = created.bucket
        # No current-version expiry: a current document is a pipeline's source and must never disappear.
        lifecycle(name, created, child, rule_id="expire-replaced-documents",
                  noncurrent_days=args.noncurrent_expiry_days)
        aws.s3.BucketPolicy(f"{name}-policy", bucket=bucket.id, policy=p.to_json(tls_only_policy(bucket.arn)),
                            opts=child)
        notifications = aws.s3.BucketNotification(f"{name}-eventbridge", bucket=bucket.id, eventbridge=True,
                                                  opts=child)

        self.keys: dict[str, str] = {}
        object_opts = pulumi.ResourceOptions.merge(
            child, pulumi.ResourceOptions(depends_on=[created.versioning, notifications]))
        for document in args.documents:
            aws.s3.BucketObjectv2(
                f"{name}-{naming.safe(document.service)}",
                bucket=bucket.id,
                key=document.key,
                source=document_archive(document),
                content_type="application/zip",
                server_side_encryption="aws:kms",
                kms_key_id=args.key_arn,
                bucket_key_enabled=True,
                opts=object_opts,
            )
            self.keys[document.service] = document.key

        self.bucket: pulumi.Output[str] = bucket.bucket
        self.bucket_arn: pulumi.Output[str] = bucket.arn
        self.register_outputs({"bucket": bucket.bucket, "bucketArn": bucket.arn, "keys": dict(self.keys)})
