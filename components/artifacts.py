"""Artifact stores: one S3 bucket per region in use, encrypted with one multi-region KMS key and its replicas.

Why this shape (see DESIGN.md, pitfalls 1-3 and 10):

* Cross-account actions need a customer-managed key (the AWS-managed S3 key cannot be shared), and cross-region
  actions need an artifact store in the action's region whose key is given by **ARN**. A multi-region key and its
  replicas share key material and id, so one key policy shape serves every region.
* Three policies must agree for a workload deploy role to read an artifact: the bucket policy, the key policy and
  the role's own policy. The first two are built here from the same list of deploy role ARNs; the third lives in
  :mod:`components.deploy_role`. Grants name the account root narrowed by ``aws:PrincipalArn``, because KMS and S3
  reject policies naming a role that does not exist yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components import naming
from components import policies as p
from components.buckets import encrypted_bucket, lifecycle, tls_only_policy
from components.config import StackConfig
from components.providers import Providers


@dataclass(frozen=True)
class ArtifactStoresArgs:
    providers: Providers
    """Providers; the stores use the tools account's provider in each region."""
    partition: str
    tools_account_id: str
    regions: tuple[str, ...]
    """Regions in use, the home (primary key) region first."""
    reader_role_arns: dict[str, list[str]] = field(default_factory=dict)
    """Workload account id -> deploy role ARNs allowed to read artifacts and decrypt. Default: none."""
    artifact_expiry_days: int = 90
    """Artifacts older than this are deleted. Default 90: long enough to re-run a recent execution, short enough
    that buckets don't grow forever (each pipeline run writes a source and build artifact per region)."""
    noncurrent_expiry_days: int = 30
    """Overwritten/deleted artifact versions kept this long. Default 30."""
    key_deletion_window_days: int = 30
    """Waiting period before a scheduled key deletion takes effect. Default 30 (the maximum): deleting the key
    makes every artifact unreadable."""

    def __post_init__(self) -> None:
        if not self.regions:
            raise ValueError("ArtifactStoresArgs.regions: at least one region is required")
        if len(set(self.regions)) != len(self.regions):
            raise ValueError(f"ArtifactStoresArgs.regions: duplicates in {self.regions}")
        if not 1 <= self.noncurrent_expiry_days <= self.artifact_expiry_days:
            raise ValueError("ArtifactStoresArgs: noncurrent_expiry_days must be between 1 and artifact_expiry_days")
        if not 7 <= self.key_deletion_window_days <= 30:
            raise ValueError("ArtifactStoresArgs.key_deletion_window_days: KMS accepts 7 to 30")


def artifact_stores_args(cfg: StackConfig, providers: Providers) -> ArtifactStoresArgs:
    """The stores every region in use needs, readable by each workload account's deploy role."""
    return ArtifactStoresArgs(
        providers=providers,
        partition=cfg.partition,
        tools_account_id=cfg.tools_account_id,
        regions=cfg.regions,
        reader_role_arns={account: [naming.deploy_role_arn(cfg, account)] for account in cfg.workload_accounts},
    )


@dataclass(frozen=True)
class ArtifactStore:
    region: str
    bucket: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    key_arn: pulumi.Output[str]


def key_policy(partition: str, tools_account: str, reader_role_arns: dict[str, list[str]]) -> dict:
    """The key policy shared by the primary key and every replica ("Resource": "*" means this key)."""
    statements = [
        # Lets IAM policies in the tools account (pipeline and build roles) use the key.
        p.key_owner_statement(partition, tools_account),
    ]
    roles = [arn for arns in reader_role_arns.values() for arn in arns]
    if roles:
        statements.append(p.statement(
            "WorkloadDeployRolesDecrypt", p.KMS_DECRYPT_ACTIONS, "*",
            principals={"AWS": sorted(p.account_root(partition, a) for a in reader_role_arns)},
            conditions=p.principal_arn_condition(sorted(roles)),
        ))
    return p.document(statements)


def bucket_policy(bucket_arn: pulumi.Output[str], partition: str, reader_role_arns: dict[str, list[str]]) -> dict:
    statements = []
    roles = [arn for arns in reader_role_arns.values() for arn in arns]
    if roles:
        statements.append(p.statement(
            "WorkloadDeployRolesReadArtifacts", ["s3:GetObject", "s3:GetObjectVersion"],
            [pulumi.Output.concat(bucket_arn, "/*")],
            principals={"AWS": sorted(p.account_root(partition, a) for a in reader_role_arns)},
            conditions=p.principal_arn_condition(sorted(roles)),
        ))
    return tls_only_policy(bucket_arn, *statements)


class ArtifactStores(pulumi.ComponentResource):
    """Regional, KMS-encrypted artifact buckets for every pipeline of the stack. ``stores[region]`` gives each
    region's bucket and key ARN, exactly what ``artifact_stores`` of a CodePipeline needs."""

    def __init__(self, name: str, args: ArtifactStoresArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:artifacts:ArtifactStores", name, None, opts)
        home, *replicas = args.regions
        policy = p.to_json(key_policy(args.partition, args.tools_account_id, args.reader_role_arns))

        primary = aws.kms.Key(
            f"{name}-key",
            description="crossdeploy pipeline artifacts (multi-region primary)",
            multi_region=True,
            enable_key_rotation=True,
            deletion_window_in_days=args.key_deletion_window_days,
            policy=policy,
            opts=pulumi.ResourceOptions(parent=self, provider=args.providers.tools(home)),
        )
        keys: dict[str, pulumi.Output[str]] = {home: primary.arn}
        for region in replicas:
            keys[region] = aws.kms.ReplicaKey(
                f"{name}-key-{region}",
                description=f"crossdeploy pipeline artifacts (replica in {region})",
                primary_key_arn=primary.arn,
                deletion_window_in_days=args.key_deletion_window_days,
                policy=policy,
                opts=pulumi.ResourceOptions(parent=self, provider=args.providers.tools(region)),
            ).arn

        self.stores: dict[str, ArtifactStore] = {}
        for region in args.regions:
            self.stores[region] = self._bucket(f"{name}-{region}", region, keys[region], args)

        self.register_outputs({
            "buckets": {r: s.bucket for r, s in self.stores.items()},
            "keyArns": {r: s.key_arn for r, s in self.stores.items()},
        })

    def _bucket(self, name: str, region: str, key_arn: pulumi.Output[str], args: ArtifactStoresArgs) -> ArtifactStore:
        opts = pulumi.ResourceOptions(parent=self, provider=args.providers.tools(region))
        created = encrypted_bucket(name, key_arn, opts)
        bucket = created.bucket
        lifecycle(name, created, opts, rule_id="expire-old-artifacts", noncurrent_days=args.noncurrent_expiry_days,
                  current_days=args.artifact_expiry_days)
        aws.s3.BucketPolicy(
            f"{name}-policy", bucket=bucket.id,
            policy=p.to_json(bucket_policy(bucket.arn, args.partition, args.reader_role_arns)), opts=opts,
        )
        return ArtifactStore(region, bucket.bucket, bucket.arn, key_arn)
