"""crossdeploy: continuous delivery of ECS Fargate services from one tools account into workload accounts.

This file only wires the validated stack config to components; every decision lives in ``components/``.
Order matters in one place: the config is loaded and validated before anything is registered.
"""

import pulumi

from components import naming
from components.artifacts import ArtifactStores, ArtifactStoresArgs
from components.config import load
from components.deploy_config import DeployConfigStore, DeployConfigStoreArgs, deploy_documents
from components.deploy_engine import DeployEngine, DeployEngineArgs, engine_deploy_role_arns
from components.deploy_role import DeployRole, deploy_role_args
from components.domain import domain_certificates, domain_records, listener_certificate_arn
from components.network import NetworkArgs
from components.notifications import Notifications, NotificationsArgs
from components.pipeline import EngineWiring, ServicePipeline, ServicePipelineArgs, environment_stages
from components.policies import iam_name, role_arn
from components.providers import Providers, ProvidersArgs
from components.push_deploy import PushDeploy, PushDeployArgs, push_services
from components.registry import Registry, RegistryArgs, RepositorySpec
from components.release import Release, ReleaseArgs, ReleaseSource, release_context
from components.rollout_notices import RolloutForwarder, RolloutForwarderArgs, RolloutNotices, RolloutNoticesArgs
from components.workload import (
    BlueGreenSettings,
    Workload,
    WorkloadArgs,
    WorkloadRoles,
    WorkloadRolesArgs,
    codedeploy_hook_arns,
    native_settings,
    needs_infrastructure_role,
    service_roles,
    smoke_hook_settings,
    workload_services,
)

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

registry = Registry("registry", RegistryArgs(
    providers=providers,
    partition=cfg.partition,
    tools_account_id=cfg.tools_account_id,
    regions=cfg.regions,
    repositories=tuple(RepositorySpec(s.name, s.trigger_tag) for s in cfg.services),
    pull_account_ids=tuple(cfg.workload_accounts),
    # ECS pulls with execution roles: crossdeploy's, existing services' and scheduled tasks' (release).
    pull_principal_arns=tuple(
        arn for account in cfg.workload_accounts for arn in (
            naming.workload_role_pattern(cfg, account),
            *(naming.execution_role_arn(cfg, account, s) for s in cfg.services if s.existing),
            *(role_arn(cfg.partition, account, n) for n in (cfg.release.pass_role_names if cfg.release else ())))),
))

deploy_roles = {
    account: DeployRole(f"deploy-{account}", deploy_role_args(
        cfg, account, providers.get(account, cfg.account_regions(account)[0]), artifacts.stores))
    for account in cfg.workload_accounts
}

# What `pulumi up` says each service runs: the documents every deploy reads, and the engine that deploys them.
deploy_config = DeployConfigStore("deploy-config", DeployConfigStoreArgs(
    provider=tools_home,
    key_arn=artifacts.stores[cfg.tools_region].key_arn,
    documents=deploy_documents(cfg),
))
engine = None
if engine_deploy_role_arns(cfg):
    engine = DeployEngine("deploy-engine", DeployEngineArgs(
        provider=tools_home,
        tools_account_id=cfg.tools_account_id,
        function_name=naming.engine_function_name(cfg),
        role_name=naming.engine_function_name(cfg),
        role_path=naming.iam_path(cfg, "engine"),
        deploy_role_arns=engine_deploy_role_arns(cfg),
        # The function assumes deploy roles that must exist first.
    ), opts=pulumi.ResourceOptions(depends_on=list(deploy_roles.values())))

workload_roles = {}
for account in cfg.workload_accounts if cfg.workload_services else ():
    uses_blue_green = any(e.strategy == "codedeploy" for e in cfg.environments if e.account_id == account)
    workload_roles[account] = WorkloadRoles(f"workload-roles-{account}", WorkloadRolesArgs(
        provider=providers.get(account, cfg.account_regions(account)[0]),
        partition=cfg.partition,
        account_id=account,
        path=naming.iam_path(cfg, "workload"),
        services=service_roles(cfg, account),
        codedeploy_role_name=naming.codedeploy_role_name(cfg) if uses_blue_green else None,
        codedeploy_role_path=naming.iam_path(cfg, "codedeploy"),
        codedeploy_hook_arns=codedeploy_hook_arns(cfg, account),
        infrastructure_role_name=(naming.infrastructure_role_name(cfg) if needs_infrastructure_role(cfg, account)
                                  else None),
        infrastructure_role_path=naming.iam_path(cfg, "infrastructure"),
    ))

workloads = {}
certificates = domain_certificates(cfg, providers)
if cfg.workload_services:
    for env in cfg.environments:
        for region in env.regions:
            provider = providers.get(env.account_id, region)
            roles = workload_roles[env.account_id]
            workloads[(env.name, region)] = Workload(f"workload-{env.name}-{region}", WorkloadArgs(
                provider=provider,
                environment=env.name,
                region=region,
                network=NetworkArgs(provider=provider, cidr=env.network.cidr, nat_gateways=env.network.nat_gateways,
                                    existing=env.network.existing_vpcs.get(region),
                                    name=iam_name(prefix, env.name)),
                services=workload_services(cfg, env, region),
                certificate_arn=listener_certificate_arn(env, region, certificates),
                blue_green=BlueGreenSettings(
                    application_name=naming.codedeploy_application_name(cfg, env.name),
                    deployment_config_name=naming.deployment_config_name(cfg, env),
                    traffic_shift=naming.traffic_shift(env),
                    settings=env.blue_green_settings,
                    service_role_arn=roles.codedeploy_role_arn,
                ) if env.strategy == "codedeploy" else None,
                native=native_settings(cfg, env, roles),
                rollback_alarm=env.blue_green_settings.rollback_alarm,
                smoke_hook=smoke_hook_settings(cfg, env, region),
            ), opts=pulumi.ResourceOptions(depends_on=roles.execution_role_policies))
domain_records(cfg, providers, workloads)

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
        repository_arns=registry.repositories[service.name].arns,
        container_name=service.container,
        trigger_tag=service.trigger_tag,
        stages=environment_stages(cfg, service, {a: r.role_arn for a, r in deploy_roles.items()}),
        engine=EngineWiring(engine.function_name, engine.function_arn, deploy_config.bucket, deploy_config.bucket_arn,
                            deploy_config.keys[service.name]) if engine else None,
        artifact_stores=artifacts.stores,
        pipeline_name=iam_name(prefix, safe, max_len=100),
        # CodeBuild project names allow no '.', which ECR repository names may contain.
        build_project_name=iam_name(prefix, safe, "imagedefs", max_len=150, allowed=r"A-Za-z0-9_-"),
        pipeline_role_name=iam_name(cfg.stack, safe, "pipeline"),
        pipeline_role_path=naming.iam_path(cfg, "pipeline"),
        build_role_name=iam_name(cfg.stack, safe, "build"),
        build_role_path=naming.iam_path(cfg, "build"),
        trigger_role_name=iam_name(cfg.stack, safe, "trigger"),
        notification_topic_arn=notifications.topic_arn,
        notification_key_arn=notifications.key_arn,
    ))

push = None
if cfg.push_services:
    push = PushDeploy("push-deploy", PushDeployArgs(
        provider=tools_home,
        partition=cfg.partition,
        tools_account_id=cfg.tools_account_id,
        home_region=cfg.tools_region,
        services=push_services(cfg, {s.name: tuple(registry.repositories[s.name].arns.values())
                                     for s in cfg.push_services}),
        function_name=naming.push_function_name(cfg),
        role_name=naming.push_function_name(cfg),
        role_path=naming.iam_path(cfg, "push"),
        notification_topic_arn=notifications.topic_arn,
        # The function assumes deploy roles that must exist first.
    ), opts=pulumi.ResourceOptions(depends_on=list(deploy_roles.values())))

release = None
if cfg.release:
    release = Release("release", ReleaseArgs(
        provider=tools_home,
        partition=cfg.partition,
        tools_account_id=cfg.tools_account_id,
        home_region=cfg.tools_region,
        regions=cfg.regions,
        context=release_context(cfg),
        source=ReleaseSource(cfg.release.source.provider, cfg.release.source.repository, cfg.release.source.branch,
                             cfg.release.source.connection_arn, cfg.release.source.develop_branch),
        artifact_store=artifacts.stores[cfg.tools_region],
        notification_topic_arn=notifications.topic_arn,
        notification_key_arn=notifications.key_arn,
        name_prefix=prefix,
        # Rolling services deploy from their deploy documents: the steps read them (one version per release).
        config_bucket=deploy_config.bucket,
        config_bucket_arn=deploy_config.bucket_arn,
        config_key_arn=artifacts.stores[cfg.tools_region].key_arn,
        steps_role_name=naming.release_steps_role_name(cfg),
        notify_role_name=iam_name(prefix, "release-notify"),
        role_path=naming.iam_path(cfg, "release"),
        file=cfg.release.file,
        require_approval=cfg.release.require_approval,
        max_concurrency=cfg.release.max_concurrency,
        service_timeout_seconds=cfg.release.service_timeout_minutes * 60,
    ), opts=pulumi.ResourceOptions(depends_on=list(deploy_roles.values())))

notices = RolloutNotices("rollout-notices", RolloutNoticesArgs(
    provider=tools_home,
    partition=cfg.partition,
    tools_account_id=cfg.tools_account_id,
    bus_name=iam_name(prefix, "rollouts"),
    notification_topic_arn=notifications.topic_arn,
    forwarder_role_arns={account: naming.forwarder_role_arn(cfg, account) for account in cfg.workload_accounts},
))
for account in cfg.workload_accounts:
    regions = cfg.account_regions(account)
    forwarder_arn = naming.forwarder_role_arn(cfg, account)
    RolloutForwarder(f"rollout-forwarder-{account}", RolloutForwarderArgs(
        providers={region: providers.get(account, region) for region in regions},
        partition=cfg.partition,
        tools_account_id=cfg.tools_account_id,
        account_id=account,
        role_name=forwarder_arn.rsplit("/", 1)[-1],
        role_path=naming.iam_path(cfg, "notices"),
        bus_arn=notices.bus_arn,
        clusters={region: sorted({s.cluster for s in cfg.services}) for region in regions},
    ))

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
