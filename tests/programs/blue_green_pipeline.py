"""Test program: the tools-account side of blue/green delivery, wired the way ``__main__.py`` wires pipelines and
deploy roles, for the stack config it is run with (``crossdeploy:*`` keys, as in a stack file).

Only what the pipelines and deploy roles need: providers, artifact stores, the notification topic (approvals),
one deploy role per workload account with its CodeDeploy targets, one pipeline per pipeline service whose
blue-green stages carry their targets. Repository ARNs are derived from the names (what the registry creates), so
this program does not depend on the registry's other settings. Nothing of the workload side (CodeDeploy
application, deployment groups, load balancers) is created here.
"""

from __future__ import annotations

import pulumi

from components import naming
from components.artifacts import ArtifactStores, ArtifactStoresArgs
from components.config import load
from components.deploy_role import DeployRole, DeployRoleArgs, DeployTarget, codedeploy_targets
from components.notifications import Notifications, NotificationsArgs
from components.pipeline import EnvironmentStage, ServicePipeline, ServicePipelineArgs, blue_green_targets
from components.policies import arn, iam_name
from components.providers import Providers, ProvidersArgs

cfg = load()
prefix = cfg.name_prefix
providers = Providers("providers", ProvidersArgs(config=cfg))
tools_home = providers.tools(cfg.tools_region)

deploy_role_arns = {account: naming.deploy_role_arn(cfg, account) for account in cfg.workload_accounts}
artifacts = ArtifactStores("artifacts", ArtifactStoresArgs(
    providers=providers,
    partition=cfg.partition,
    tools_account_id=cfg.tools_account_id,
    regions=cfg.regions,
    reader_role_arns={account: [role] for account, role in deploy_role_arns.items()},
))

deploy_roles = {}
for account in cfg.workload_accounts:
    regions = cfg.account_regions(account)
    deploy_roles[account] = DeployRole(f"deploy-{account}", DeployRoleArgs(
        provider=providers.get(account, regions[0]),
        partition=cfg.partition,
        account_id=account,
        role_name=naming.deploy_role_name(cfg),
        path=naming.iam_path(cfg, "deploy"),
        tools_account_id=cfg.tools_account_id,
        trusted_principal_patterns=(naming.pipeline_role_pattern(cfg),),
        targets=tuple(
            DeployTarget(region, naming.ecs_cluster_arn(cfg, account, region, s.cluster),
                         naming.ecs_service_arn(cfg, account, region, s))
            for s in cfg.services for region in regions
        ),
        passable_role_arns=tuple(a for s in cfg.services for a in naming.workload_role_arns(cfg, account, s)),
        artifact_bucket_arns=tuple(artifacts.stores[r].bucket_arn for r in regions),
        artifact_key_arns=tuple(artifacts.stores[r].key_arn for r in regions),
        codedeploy_targets=codedeploy_targets(cfg, account),
    ))

notifications = Notifications("notifications", NotificationsArgs(
    provider=tools_home, partition=cfg.partition, account_id=cfg.tools_account_id, region=cfg.tools_region,
    emails=cfg.emails,
))

pipelines = {}
for service in cfg.pipeline_services:
    safe = naming.safe(service.name)
    pipelines[service.name] = ServicePipeline(f"pipeline-{safe}", ServicePipelineArgs(
        provider=tools_home,
        partition=cfg.partition,
        tools_account_id=cfg.tools_account_id,
        home_region=cfg.tools_region,
        repository_name=service.name,
        repository_arns={r: arn(cfg.partition, "ecr", r, cfg.tools_account_id, f"repository/{service.name}")
                         for r in cfg.regions},
        container_name=service.container,
        trigger_tag=service.trigger_tag,
        stages=tuple(
            EnvironmentStage(name=env.name, account_id=env.account_id, regions=tuple(env.regions),
                             deploy_role_arn=deploy_roles[env.account_id].role_arn, cluster=service.cluster,
                             service=service.service, require_approval=env.require_approval,
                             blue_green=blue_green_targets(cfg, env, service))
            for env in cfg.environments
        ),
        artifact_stores=artifacts.stores,
        pipeline_name=iam_name(prefix, safe, max_len=100),
        build_project_name=iam_name(prefix, safe, "imagedefs", max_len=150, allowed=r"A-Za-z0-9_-"),
        pipeline_role_name=iam_name(cfg.stack, safe, "pipeline"),
        pipeline_role_path=naming.iam_path(cfg, "pipeline"),
        build_role_name=iam_name(cfg.stack, safe, "build"),
        build_role_path=naming.iam_path(cfg, "build"),
        trigger_role_name=iam_name(cfg.stack, safe, "trigger"),
        notification_topic_arn=notifications.topic_arn,
        notification_key_arn=notifications.key_arn,
    ))

pulumi.export("pipelineNames", {name: p.pipeline_name for name, p in pipelines.items()})
pulumi.export("deployRoleArns", {account: role.role_arn for account, role in deploy_roles.items()})
