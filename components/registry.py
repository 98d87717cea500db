"""ECR in the tools account: one repository per service in the home region, copies in every other region in use,
and the registry's replication configuration that keeps the copies filled.

Why the regional copies are created here rather than left to replication: ECR replication creates missing
destination repositories with default settings and **no repository policy**, so workload accounts would get
misleading "not found" errors pulling from them (DESIGN.md pitfall 6), and tags there would be mutable. Creating the
copies with the same policy, tag rules and lifecycle keeps every region identical and under Pulumi's control.

Tag rules (pitfall 5): ``IMMUTABLE_WITH_EXCLUSION`` with only the service's trigger tag excluded. Release tags can
never be overwritten, while the trigger tag (what CodePipeline's ECR source watches) can move with each push.

The replication configuration is registry-wide (one per account and region): crossdeploy owns it for the tools
account. ECR allows 10 rules of 100 repository filters, so filters are chunked in rules of 100 (up to 1,000
services); filters are prefix matches, so ``orders`` also replicates ``orders-legacy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components import naming
from components import policies as p
from components.config import StackConfig
from components.providers import Providers

ECR_MAX_FILTERS_PER_RULE = 100
ECR_MAX_RULES = 10
PULL_ACTIONS = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
PUSH_ACTIONS = ["ecr:CompleteLayerUpload", "ecr:InitiateLayerUpload", "ecr:PutImage", "ecr:UploadLayerPart"]


@dataclass(frozen=True)
class RepositorySpec:
    name: str
    """Repository name (the service name)."""
    trigger_tag: str = "latest"
    """The only mutable tag. Default ``latest``."""


@dataclass(frozen=True)
class RegistryArgs:
    providers: Providers
    partition: str
    tools_account_id: str
    regions: tuple[str, ...]
    """Regions in use, the home region (where CI pushes) first; the others receive replicas."""
    repositories: tuple[RepositorySpec, ...]
    pull_account_ids: tuple[str, ...] = field(default_factory=tuple)
    """Workload accounts allowed to pull. Their execution roles still need their own ECR rights."""
    pull_principal_arns: tuple[str, ...] = field(default_factory=tuple)
    """``aws:PrincipalArn`` patterns (``ArnLike``) that narrow the pull grant to the roles ECS pulls with: the
    workload role path of each account, existing services' execution roles, scheduled tasks' roles. Default
    none: every principal of the pull accounts that its own IAM allows."""
    untagged_images_kept: int = 50
    """Untagged images (old digests the trigger tag pointed at) kept per repository. Default 50: counted, not aged,
    so a service nobody pushed to for months can still scale out on the digest it runs."""

    def __post_init__(self) -> None:
        names = [r.name for r in self.repositories]
        if len(set(names)) != len(names):
            raise ValueError("RegistryArgs.repositories: names must be unique")
        if len(names) > ECR_MAX_FILTERS_PER_RULE * ECR_MAX_RULES:
            raise ValueError(f"RegistryArgs.repositories: ECR replication holds at most "
                             f"{ECR_MAX_FILTERS_PER_RULE * ECR_MAX_RULES} repository filters")
        if self.untagged_images_kept < 1:
            raise ValueError("RegistryArgs.untagged_images_kept must be at least 1")


def registry_args(cfg: StackConfig, providers: Providers) -> RegistryArgs:
    """One repository per service, pulled by the workload accounts through the roles ECS pulls with: crossdeploy's
    (the workload role path), existing services' execution roles and scheduled tasks' roles (release)."""
    return RegistryArgs(
        providers=providers,
        partition=cfg.partition,
        tools_account_id=cfg.tools_account_id,
        regions=cfg.regions,
        repositories=tuple(RepositorySpec(s.name, s.trigger_tag) for s in cfg.services),
        pull_account_ids=tuple(cfg.workload_accounts),
        pull_principal_arns=tuple(
            arn for account in cfg.workload_accounts for arn in (
                naming.workload_role_pattern(cfg, account),
                *(naming.execution_role_arn(cfg, account, s) for s in cfg.services if s.existing),
                *(p.role_arn(cfg.partition, account, n) for n in (cfg.release.pass_role_names if cfg.release
                                                                  else ())))),
    )


@dataclass(frozen=True)
class RepositoryRefs:
    name: str
    urls: dict[str, pulumi.Output[str]]
    """Region -> repository URL (``<account>.dkr.ecr.<region>.amazonaws.com/<name>``)."""
    arns: dict[str, pulumi.Output[str]]


def repository_policy(partition: str, tools_account: str, pull_accounts: tuple[str, ...],
                      pull_principals: tuple[str, ...] = ()) -> dict:
    statements = []
    if pull_accounts:
        # Account roots narrowed by aws:PrincipalArn rather than role principals: a role named in a resource
        # policy turns into a stale unique id when it is re-created, and the workload roles may not exist yet.
        statements.append(p.statement(
            "WorkloadAccountsPull", PULL_ACTIONS, None, principals={
                "AWS": sorted(p.account_root(partition, a) for a in pull_accounts)},
            conditions=p.principal_arn_condition(sorted(set(pull_principals)), operator="ArnLike")
            if pull_principals else None))
    # Only the tools account may write, whatever a grant elsewhere might say.
    statements.append(p.statement(
        "DenyPushFromOutsideToolsAccount", [*PUSH_ACTIONS, "ecr:BatchDeleteImage"], None, effect="Deny",
        principals={"AWS": "*"}, conditions={"StringNotEquals": {"aws:PrincipalAccount": tools_account}}))
    return p.document(statements)


def lifecycle_policy(untagged_kept: int) -> dict:
    return {"rules": [{
        "rulePriority": 1,
        "description": f"keep the {untagged_kept} most recent untagged images; tagged releases are never expired",
        "selection": {"tagStatus": "untagged", "countType": "imageCountMoreThan", "countNumber": untagged_kept},
        "action": {"type": "expire"},
    }]}


def replication_rules(names: list[str], tools_account: str, destinations: tuple[str, ...]) -> list:
    return [
        aws.ecr.ReplicationConfigurationReplicationConfigurationRuleArgs(
            destinations=[aws.ecr.ReplicationConfigurationReplicationConfigurationRuleDestinationArgs(
                region=region, registry_id=tools_account) for region in destinations],
            repository_filters=[aws.ecr.ReplicationConfigurationReplicationConfigurationRuleRepositoryFilterArgs(
                filter=name, filter_type="PREFIX_MATCH") for name in names[i:i + ECR_MAX_FILTERS_PER_RULE]],
        )
        for i in range(0, len(names), ECR_MAX_FILTERS_PER_RULE)
    ]


class Registry(pulumi.ComponentResource):
    """Service repositories in every region, with one pull policy, and the replication between them."""

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:registry:Registry", name, None, opts)
        policy = p.to_json(repository_policy(args.partition, args.tools_account_id, args.pull_account_ids,
                                             args.pull_principal_arns))
        lifecycle = p.to_json(lifecycle_policy(args.untagged_images_kept))
        home, *replicas = args.regions

        self.repositories: dict[str, RepositoryRefs] = {}
        for spec in args.repositories:
            urls: dict[str, pulumi.Output[str]] = {}
            arns: dict[str, pulumi.Output[str]] = {}
            for region in args.regions:
                repo = self._repository(f"{name}-{spec.name.replace('/', '-')}-{region}", spec, region, policy,
                                        lifecycle, args)
                urls[region], arns[region] = repo.repository_url, repo.arn
            self.repositories[spec.name] = RepositoryRefs(spec.name, urls, arns)

        if replicas:
            aws.ecr.ReplicationConfiguration(
                f"{name}-replication",
                replication_configuration=aws.ecr.ReplicationConfigurationReplicationConfigurationArgs(
                    rules=replication_rules([r.name for r in args.repositories], args.tools_account_id,
                                            tuple(replicas))),
                opts=pulumi.ResourceOptions(parent=self, provider=args.providers.tools(home)),
            )
        self.register_outputs({"repositoryUrls": {n: r.urls[home] for n, r in self.repositories.items()}})

    def _repository(self, name: str, spec: RepositorySpec, region: str, policy: pulumi.Output[str],
                    lifecycle: pulumi.Output[str], args: RegistryArgs) -> aws.ecr.Repository:
        opts = pulumi.ResourceOptions(parent=self, provider=args.providers.tools(region))
        repo = aws.ecr.Repository(
            f"{name}-repo",
            name=spec.name,
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
            image_tag_mutability="IMMUTABLE_WITH_EXCLUSION",
            image_tag_mutability_exclusion_filters=[aws.ecr.RepositoryImageTagMutabilityExclusionFilterArgs(
                filter=spec.trigger_tag, filter_type="WILDCARD")],
            encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="AES256")],
            # A repository with images is never deleted by a stack change: images are what production runs.
            force_delete=False,
            opts=opts,
        )
        aws.ecr.RepositoryPolicy(f"{name}-policy", repository=repo.name, policy=policy, opts=opts)
        aws.ecr.LifecyclePolicy(f"{name}-lifecycle", repository=repo.name, policy=lifecycle, opts=opts)
        return repo
