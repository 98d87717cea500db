"""Test program: CodeDeploy blue/green for one environment in one workload account and region.

Wired the way the workload component calls :mod:`components.blue_green` (names from :mod:`components.naming`,
settings from the environment's ``blueGreen`` block), with plain strings standing in for the load balancer,
listeners, target groups and ECS services that component creates. Config (namespace ``crossdeploy``):

``accountId``, ``region``   the workload account and its one region (required).
``environment``             environment name. Default ``prod``.
``blueGreen``               the environment's ``blueGreen`` block, as in a stack file. Default: none (defaults).
``services``                service entries, as in a stack file. Default ``[{"name": "orders"}]``.
``alarmTopicArn``           optional SNS topic for the alarms.
``deploymentOverrides``     BlueGreenDeploymentArgs field -> value (lists become tuples), to reach validation.
"""

from __future__ import annotations

import asyncio

import pulumi
import pulumi_aws as aws

from components import naming
from components.blue_green import (
    BlueGreenApplication,
    BlueGreenApplicationArgs,
    BlueGreenDeployment,
    BlueGreenDeploymentArgs,
)
from components.config import EnvironmentConfig, ServiceConfig, StackConfig

conf = pulumi.Config("crossdeploy")
account = conf.require("accountId")
region = conf.require("region")
raw_env = {"name": conf.get("environment") or "prod", "accountId": account, "regions": [region],
           "strategy": "codedeploy"}
if conf.get_object("blueGreen") is not None:
    raw_env["blueGreen"] = conf.get_object("blueGreen")
env = EnvironmentConfig.model_validate(raw_env)
services = tuple(ServiceConfig.model_validate(s) for s in conf.get_object("services") or [{"name": "orders"}])
cfg = StackConfig(project=pulumi.get_project(), stack=pulumi.get_stack(), tools_account_id="111111111111",
                  tools_region=region, environments=(env,), services=services, emails=())
raw_overrides = conf.get_object("deploymentOverrides") or {}
overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in raw_overrides.items()}

provider = aws.Provider(f"workload-{account}-{region}", region=region, allowed_account_ids=[account])
settings = env.blue_green_settings
application = BlueGreenApplication(
    f"{env.name}-{region}-codedeploy",
    BlueGreenApplicationArgs(
        provider=provider,
        application_name=naming.codedeploy_application_name(cfg, env.name),
        deployment_config_name=naming.deployment_config_name(cfg, env),
        traffic_shift=naming.traffic_shift(env),
        tags={"crossdeploy:environment": env.name},
    ),
)

load_balancer = f"app/{env.name}-web/50dc6c495c0c9188"
listener = f"arn:aws:elasticloadbalancing:{region}:{account}:listener/{load_balancer}"
deployments = {}
for service in services:
    svc = naming.safe(service.name)
    args = {
        "provider": provider,
        "application_name": application.application_name,
        "deployment_group_name": naming.deployment_group_name(cfg, service),
        "deployment_config_name": application.deployment_config_name,
        "service_role_arn": f"arn:aws:iam::{account}:role/{naming.codedeploy_role_name(cfg)}",
        "cluster_name": service.cluster,
        "service_name": service.service,
        "target_group_names": (f"{svc}-blue", f"{svc}-green"),
        "target_group_arn_suffixes": (f"targetgroup/{svc}-blue/73e2d6bc24d8a067",
                                      f"targetgroup/{svc}-green/8a067e2d6bc24d73"),
        "load_balancer_arn_suffix": load_balancer,
        "prod_listener_arns": (f"{listener}/f2f7dc8efc522ab2",),
        "test_listener_arns": (f"{listener}/9c7b2ad3f1e0c4a5",),
        "termination_wait_minutes": settings.termination_wait_minutes,
        "alarm_threshold": settings.rollback_alarm.threshold,
        "alarm_evaluation_periods": settings.rollback_alarm.evaluation_periods,
        "alarm_topic_arn": conf.get("alarmTopicArn"),
        "tags": {"crossdeploy:environment": env.name, "crossdeploy:service": service.name},
    }
    deployment = BlueGreenDeployment(f"{env.name}-{region}-{svc}-bluegreen",
                                     BlueGreenDeploymentArgs(**{**args, **overrides}))
    deployments[service.service] = {"groupName": deployment.deployment_group_name,
                                     "groupArn": deployment.deployment_group_arn,
                                     "alarmName": deployment.alarm_name}



async def _dependency_urns(output: pulumi.Output) -> list[str]:
    """URNs of the resources an Output waits for (the deployment groups handed it wait for them too)."""
    return sorted({await r.urn.future() for r in await output.resources()})


pulumi.export("applicationName", application.application_name)
pulumi.export("deploymentConfigNameDependsOn",
              pulumi.Output.from_input(asyncio.ensure_future(_dependency_urns(application.deployment_config_name))))
pulumi.export("deploymentConfigName", application.deployment_config_name)
pulumi.export("deployments", deployments)
