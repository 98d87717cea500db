"""The private, KMS-encrypted, versioned S3 bucket every crossdeploy bucket starts from.

The artifact stores (:mod:`components.artifacts`) and the deploy document store (:mod:`components.deploy_config`)
share it, so both get the same guarantees and a reviewer reads them once:

* public access blocked and object ownership enforced (ACLs off: the bucket policy is the only resource policy);
* SSE-KMS by default with the given key **ARN** (cross-account readers need a customer-managed key, and an alias
  does not resolve across accounts), with a bucket key, which cuts KMS requests to one data key per bucket;
* versioning on (CodePipeline's S3 source action requires it; artifact buckets keep overwritten versions a while);
* a bucket policy that refuses every request over plain HTTP, plus whatever the caller adds.

Their lifecycle rules differ in one choice, whether current objects expire (:func:`lifecycle`): artifacts do,
deploy documents never.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components import policies as p


@dataclass(frozen=True)
class EncryptedBucket:
    bucket: aws.s3.Bucket
    versioning: aws.s3.BucketVersioning


def encrypted_bucket(name: str, key_arn: pulumi.Input[str], opts: pulumi.ResourceOptions) -> EncryptedBucket:
    """``<name>-bucket`` with its public access block, ownership, encryption and versioning (logical names
    ``<name>-public-access``, ``-ownership``, ``-encryption``, ``-versioning``), all with ``opts``."""
    bucket = aws.s3.Bucket(f"{name}-bucket", force_destroy=False, opts=opts)
    aws.s3.BucketPublicAccessBlock(
        f"{name}-public-access", bucket=bucket.id, block_public_acls=True, block_public_policy=True,
        ignore_public_acls=True, restrict_public_buckets=True, opts=opts,
    )
    aws.s3.BucketOwnershipControls(
        f"{name}-ownership", bucket=bucket.id,
        rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"), opts=opts,
    )
    aws.s3.BucketServerSideEncryptionConfiguration(
        f"{name}-encryption", bucket=bucket.id,
        rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
            apply_server_side_encryption_by_default=(
                aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="aws:kms", kms_master_key_id=key_arn)),
            # Bucket keys cut KMS request costs (one data key per bucket, not per object).
            bucket_key_enabled=True,
        )],
        opts=opts,
    )
    versioning = aws.s3.BucketVersioning(
        f"{name}-versioning", bucket=bucket.id,
        versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"), opts=opts,
    )
    return EncryptedBucket(bucket, versioning)


def lifecycle(name: str, created: EncryptedBucket, opts: pulumi.ResourceOptions, *, rule_id: str,
              noncurrent_days: int, current_days: int | None = None) -> aws.s3.BucketLifecycleConfiguration:
    """``<name>-lifecycle``: replaced versions expire after `noncurrent_days`, current objects after `current_days`
    (None: never), and incomplete multipart uploads are aborted after a week."""
    return aws.s3.BucketLifecycleConfiguration(
        f"{name}-lifecycle", bucket=created.bucket.id,
        rules=[aws.s3.BucketLifecycleConfigurationRuleArgs(
            id=rule_id,
            status="Enabled",
            filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
            expiration=(aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=current_days)
                        if current_days is not None else None),
            noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                noncurrent_days=noncurrent_days),
            abort_incomplete_multipart_upload=(
                aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(days_after_initiation=7)),
        )],
        # S3 rejects lifecycle rules with noncurrent-version actions until versioning is on.
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[created.versioning])),
    )


def tls_only_policy(bucket_arn: pulumi.Input[str], *statements: p.Statement) -> dict:
    """The bucket policy: no plain HTTP, then the caller's grants."""
    return p.document([p.deny_insecure_transport(bucket_arn), *statements])
