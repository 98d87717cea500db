"""crossdeploy: continuous delivery of ECS Fargate services from one tools account into workload accounts.

This file only wires the validated stack config to components; every decision lives in ``components/``, where
planner functions beside each component's Args (``*_args``) turn the config into its arguments.
Order matters in one place: the config is loaded and validated before anything is registered.
"""

import pulumi

from components import naming
from components.artifacts import ArtifactStores, artifact_stores_args
from components.config import load
from components.deploy_config import DeployConfigStore, deploy_config_store_args
from components.deploy_engine import DeployEngine, deploy_engine_args, engine_accounts
from components.deploy_role import DeployRole, deploy_role_args
from components.domain import domain_certificates, domain_records, listener_certificate_arn
from components.notifications import Notifications, notifications_args
from components.pipeline import ServicePipeline, service_pipeline_args
from components.providers import Providers, ProvidersArgs
from components.push_deploy import PushDeploy, push_deploy_args
from components.registry import Registry, registry_args
from components.release import Release, release_args
from components.rollout_notices import RolloutForwarder, RolloutNotices, rollout_forwarder_args, rollout_notices_args
from components.workload import Workload, WorkloadRoles, workload_args, workload_roles_args

cfg = load()
providers = Providers("providers", ProvidersArgs(config=cfg))
tools_home = providers.tools(cfg.tools_region)

artifacts = ArtifactStores("artifacts", artifact_stores_args(cfg, providers))
registry = Registry("registry", registry_args(cfg, providers))
deploy_roles = {account: DeployRole(f"deploy-{account}", deploy_role_args(
    cfg, account, providers.get(account, cfg.account_regions(account)[0]), artifacts.stores))
    for account in cfg.workload_accounts}
after_deploy_roles = pulumi.ResourceOptions(depends_on=list(deploy_roles.values()))  # they assume them

# What `pulumi up` says each service runs: the documents every deploy reads, and the engine that deploys them.
deploy_config = DeployConfigStore("deploy-config", deploy_config_store_args(cfg, tools_home, artifacts.stores))
engine = DeployEngine("deploy-engine", deploy_engine_args(cfg, tools_home),
                      opts=after_deploy_roles) if engine_accounts(cfg) else None

workload_roles = {account: WorkloadRoles(f"workload-roles-{account}", workload_roles_args(cfg, account, providers))
                  for account in (cfg.workload_accounts if cfg.workload_services else ())}
certificates = domain_certificates(cfg, providers)
workloads = {(env.name, region): Workload(f"workload-{env.name}-{region}", workload_args(
    cfg, env, region, providers, workload_roles[env.account_id], listener_certificate_arn(env, region, certificates)),
    opts=pulumi.ResourceOptions(depends_on=workload_roles[env.account_id].execution_role_policies))
    for env in (cfg.environments if cfg.workload_services else ()) for region in env.regions}
domain_records(cfg, providers, workloads)

notifications = Notifications("notifications", notifications_args(cfg, tools_home))
pipelines = {service.name: ServicePipeline(f"pipeline-{naming.safe(service.name)}", service_pipeline_args(
    cfg, service, tools_home, registry, artifacts, deploy_roles, deploy_config, engine, notifications))
    for service in cfg.pipeline_services}
push = PushDeploy("push-deploy", push_deploy_args(cfg, tools_home, registry, notifications),
                  opts=after_deploy_roles) if cfg.push_services else None
release = Release("release", release_args(cfg, tools_home, artifacts, deploy_config, notifications),
                  opts=after_deploy_roles) if cfg.release else None
notices = RolloutNotices("rollout-notices", rollout_notices_args(cfg, tools_home, notifications))
for account in cfg.workload_accounts:
    RolloutForwarder(f"rollout-forwarder-{account}", rollout_forwarder_args(cfg, account, providers, notices))

pulumi.export("repositoryUrls", {name: repo.urls[cfg.tools_region] for name, repo in registry.repositories.items()})
pulumi.export("pipelineNames", {name: p.pipeline_name for name, p in pipelines.items()})
pulumi.export("deployRoleArns", {account: role.role_arn for account, role in deploy_roles.items()})
pulumi.export("artifactBuckets", {region: store.bucket for region, store in artifacts.stores.items()})
pulumi.export("notificationTopicArn", notifications.topic_arn)
pulumi.export("deployConfigBucket", deploy_config.bucket)
if engine is not None:
    pulumi.export("deployEngineFunctionArn", engine.function_arn)
pulumi.export("loadBalancers", {f"{env}/{region}": w.load_balancer_dns for (env, region), w in workloads.items()})
if push is not None:
    pulumi.export("pushDeployFunctionArn", push.function_arn)
    pulumi.export("pushDeployDeadLetterQueueArn", push.queue_arn)
if release is not None:
    pulumi.export("releasePipelineName", release.pipeline_name)
    pulumi.export("releaseStateMachineArn", release.state_machine_arn)
