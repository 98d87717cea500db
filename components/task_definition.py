"""The one renderer: the task definition of a service crossdeploy creates, and the deploy document every deploy
reads.

:func:`task_definition` is the ``RegisterTaskDefinition`` request (camelCase, ECS API shape; a test validates it
against botocore's model of that request) for one service in one account and region. Three consumers, one source:

* the workload component registers it through ``aws.ecs.TaskDefinition`` (the service's first revision);
* :func:`deploy_document` renders it per environment and region for the deploy engine, which registers exactly it
  with the region's ``repo@sha256:`` image on every deployment (pipelines, push deploys, releases);
* the ``codedeploy`` build step writes it as ``taskdef.json`` with the image replaced by ``<IMAGE1_NAME>``.

So a change to the config changes all three at once, and what runs is what the config says.

How a new service starts: its first task definition names the tools account's regional repository at the trigger
tag (``<tools>.dkr.ecr.<region>.amazonaws.com/<repo>:<triggerTag>``). ``pulumi up`` does not wait for the service
to be steady, so it succeeds on empty accounts; until the first image is pushed, ECS cannot start tasks (the
service shows 0 running, the circuit breaker may mark that first deployment failed). The first push starts the
pipeline, which deploys the rendered task definition with the image pinned by digest.
"""

from __future__ import annotations

from typing import Any

from components import naming
from components.config import EnvironmentConfig, ServiceConfig, StackConfig
from handlers import deploy_engine

IMAGE_PLACEHOLDER = "<IMAGE1_NAME>"
"""What CodeDeployToECS replaces with the image of ``imageDetail.json`` (``Image1ContainerName: IMAGE1_NAME``)."""
DNS_SUFFIX = {"aws": "amazonaws.com", "aws-cn": "amazonaws.com.cn", "aws-us-gov": "amazonaws.com"}
LOG_STREAM_PREFIX = "ecs"
HEALTH_CHECK = {"interval": 30, "timeout": 5, "retries": 3}
"""Container health check timing (ECS's defaults, written out so the template is explicit)."""
MAX_START_PERIOD = 300  # ECS caps a container health check's startPeriod at 300 seconds


def bootstrap_image(cfg: StackConfig, region: str, service: ServiceConfig) -> str:
    """The image a new service's first task definition names: the regional replica at the trigger tag."""
    dns = DNS_SUFFIX.get(cfg.partition, "amazonaws.com")
    return f"{cfg.tools_account_id}.dkr.ecr.{region}.{dns}/{service.name}:{service.trigger_tag}"


def secret_arn(cfg: StackConfig, account: str, region: str, ref: str) -> str:
    """``valueFrom`` of a secret: a Parameter Store parameter (``ssm:/name``) or a Secrets Manager secret by its
    partial ARN (no random suffix: the name is the same in every account, the suffix is not)."""
    if ref.startswith("ssm:"):
        return f"arn:{cfg.partition}:ssm:{region}:{account}:parameter/{ref[4:].lstrip('/')}"
    return f"arn:{cfg.partition}:secretsmanager:{region}:{account}:secret:{ref}"


def secret_grant_arn(cfg: StackConfig, account: str, region: str, ref: str) -> str:
    """The resource the execution role is granted for a secret: Secrets Manager appends ``-`` and six random
    characters to every secret ARN, hence ``-??????`` (exactly six, so ``db`` does not also grant ``db-admin``)."""
    value_from = secret_arn(cfg, account, region, ref)
    return value_from if ref.startswith("ssm:") else f"{value_from}-??????"


def container_definition(cfg: StackConfig, account: str, region: str, service: ServiceConfig,
                         image: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": service.container,
        "image": image,
        "essential": True,
        "portMappings": [{"containerPort": service.port, "protocol": "tcp"}],
        "environment": [{"name": k, "value": v} for k, v in sorted(service.environment.items())],
        "secrets": [{"name": k, "valueFrom": secret_arn(cfg, account, region, v)}
                    for k, v in sorted(service.secrets.items())],
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": naming.log_group_name(cfg, service),
            "awslogs-region": region,
            "awslogs-stream-prefix": LOG_STREAM_PREFIX,
        }},
    }
    if service.health_check.command:
        container["healthCheck"] = {"command": list(service.health_check.command), **HEALTH_CHECK,
                                    "startPeriod": min(service.health_check.grace_period_seconds, MAX_START_PERIOD)}
    return container


def task_definition(cfg: StackConfig, account: str, region: str, service: ServiceConfig,
                    image: str) -> dict[str, Any]:
    """The ``RegisterTaskDefinition`` request for `service` in `account`/`region`, running `image`."""
    if service.existing:
        raise ValueError(f"{service.name}: crossdeploy does not know the task definition of an existing service")
    request: dict[str, Any] = {
        "family": naming.task_family(cfg, service),
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": str(service.cpu),
        "memory": str(service.memory),
        "executionRoleArn": naming.execution_role_arn(cfg, account, service),
        "containerDefinitions": [container_definition(cfg, account, region, service, image)],
    }
    task_role = naming.task_role_arn(cfg, account, service)
    if task_role:
        request["taskRoleArn"] = task_role
    return request


# The writer and the reader of the deploy document agree on its version and file name by sharing them.
DEPLOY_DOCUMENT_VERSION = deploy_engine.DOCUMENT_VERSION
DEPLOY_DOCUMENT_FILE = deploy_engine.DOCUMENT_FILE


def _smoke_test(env: EnvironmentConfig, region: str, service: ServiceConfig) -> dict[str, Any]:
    """The engine's check after a ``rolling`` deployment, through the region's public production listener (HTTPS
    where the environment has a certificate there). Other strategies test before production traffic, in an ECS or
    CodeDeploy hook, so their targets carry none."""
    spec = service.smoke_spec()
    if spec is None or env.strategy != "rolling" or service.existing:
        return {}
    https = env.https(region)  # with a domain, HTTP only redirects: a 301 must not pass for the service's answer
    return {"smokeTest": {"spec": spec, "protocol": "HTTPS" if https else "HTTP", "port": 443 if https else 80}}


def deploy_document(cfg: StackConfig, service: ServiceConfig) -> dict[str, Any]:
    """What every deploy of `service` renders from, whatever triggers it: per environment the deploy engine serves
    (all but ``codedeploy``), its strategy and timeout, and per region the target and the task definition rendered
    from the stack config (``None`` for an existing service, whose task definition is not ours: the engine then
    copies the running one and swaps only the image). The engine replaces the container's image with the region's
    ``repo@sha256:`` replica; everything else it registers exactly as written here.

    The pipeline receives it as a source artifact (the snapshot of the config when its execution started), push
    deploys in their package, releases from the same object the pipeline's source reads.
    """
    return {
        "version": DEPLOY_DOCUMENT_VERSION,
        "service": service.name,
        "environments": [
            {
                "name": env.name,
                "strategy": env.strategy,
                "timeoutSeconds": env.deploy_timeout_minutes * 60,
                "targets": [
                    {
                        "accountId": env.account_id,
                        "region": region,
                        "roleArn": naming.deploy_role_arn(cfg, env.account_id),
                        "cluster": service.cluster,
                        "service": service.service,
                        "container": service.container,
                        "taskDefinition": None if service.existing else task_definition(
                            cfg, env.account_id, region, service, bootstrap_image(cfg, region, service)),
                        **_smoke_test(env, region, service),
                    }
                    for region in env.regions
                ],
            }
            for env in cfg.environments if not env.codedeploy
        ],
    }
