"""AWS size and count limits that the stack config can push a deployment over, checked when the config is loaded.

Each limit is measured on the value the program would send, built by the same function the resource code uses
(a Bake action's ``UserParameters``, the smoke-test hook's environment, a blue/green build's buildspec, the push
rule's event pattern, the push function's package, the deploy role's policies), so the check and the deployment
cannot disagree. Names and ARNs are deterministic (:mod:`components.naming`); where a value is only known after
``pulumi up`` (an Output: a load balancer's ARN suffix, a bucket or key ARN), the longest value AWS can return is
used instead, and the comment there says so. :func:`problems` is called by :func:`components.config.parse`, so a
config that would fail for a size reason is refused with the other config errors, before any resource exists::

    <key path>: <what> would be <actual> characters, over <AWS service>'s limit of <limit>; <what to do>

Limits that the config cannot reach are left to the components' own checks and noted where they are set: names
(:mod:`components.naming` shortens every generated name to its AWS limit with a stable hash), actions in a deploy
stage (one per region, and no partition has 50 regions), the engine's environment (fixed).

This module imports the components it measures inside its functions: they import the limits from here.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from components.policies import INLINE_POLICY_LIMIT, inline_policy_size

if TYPE_CHECKING:
    from components.config import EnvironmentConfig, ServiceConfig, StackConfig

CODEPIPELINE_USER_PARAMETERS_CHARS = 1000
"""CodePipeline quotas, "Maximum size of the UserParameters of a Lambda invoke action" (ActionConfiguration
UserParameters: 1-1000 characters)."""
CODEPIPELINE_STAGES = 50
"""CodePipeline quotas: "Maximum number of stages in a pipeline": 50."""
CODEPIPELINE_ACTIONS_PER_STAGE = 50
"""CodePipeline quotas: "Maximum number of actions per stage": 50 (parallel actions included)."""
CODEBUILD_INLINE_BUILDSPEC_CHARS = 25600
"""CodeBuild's limit on a project's inline buildspec (ProjectSource buildspec; DESIGN.md pitfall 17,
aws-cdk#14974)."""
LAMBDA_ENVIRONMENT_BYTES = 4096
"""Lambda quotas: "Function environment variables: 4 KB, for all environment variables associated with the
function, in aggregate" (keys and values)."""
LAMBDA_ZIPPED_PACKAGE_BYTES = 50 * 1024 * 1024
"""Lambda quotas: "Deployment package (.zip file archive) size: 50 MB (zipped, when uploaded through the Lambda
API)"; Pulumi uploads the package with the CreateFunction/UpdateFunctionCode request."""
LAMBDA_UNZIPPED_PACKAGE_BYTES = 250 * 1024 * 1024
"""Lambda quotas: "250 MB: the maximum size of the contents of a deployment package ... unzipped"."""
EVENTBRIDGE_PATTERN_CHARS = 2048
"""EventBridge quotas: "Event pattern size: 2,048, maximum size of an event pattern, in characters"."""
IAM_ROLE_INLINE_POLICIES_CHARS = INLINE_POLICY_LIMIT
"""IAM and STS quotas: "Role policy size cannot exceed 10,240 characters" (all inline policies of a role together,
whitespace not counted): the figure :mod:`components.policies` checks documents against at preview."""
IAM_TRUST_POLICY_CHARS = 2048
"""IAM and STS quotas: "Role trust policy length: 2,048 characters" (the default; AssumeRolePolicySizeQuota in
GetAccountSummary, whitespace not counted)."""

# Longest values of what is only known after `pulumi up` (upper bounds, so a config that passes always fits):
LONGEST_LOAD_BALANCER_ARN_SUFFIX = "app/" + "x" * 32 + "/" + "0" * 16
"""ELB's ARN suffix ``app/<name>/<16 hex>``; load balancer names are at most 32 characters."""
LONGEST_BUCKET_NAME = "x" * 63
"""S3 bucket names are at most 63 characters."""
KEY_ID = "mrk-" + "0" * 32
"""A multi-region KMS key id (``mrk-`` and 32 hex digits; a single-region key's UUID has the same length)."""


def lambda_environment_bytes(variables: Mapping[str, str]) -> int:
    """Lambda's measure of a function's environment: keys and values together, in UTF-8 bytes."""
    return sum(len(k.encode()) + len(str(v).encode()) for k, v in variables.items())


policy_chars = inline_policy_size
"""IAM's measure of a policy: characters, whitespace not counted."""


def bake_user_parameters_chars(cfg: StackConfig, env: EnvironmentConfig, service: ServiceConfig) -> int:
    """Length of the Bake action's UserParameters after `service`'s deployment to `env`
    (:func:`components.pipeline.stage_bake`, rendered as the pipeline renders it)."""
    from components import pipeline

    return len(pipeline.stage_bake(cfg, env, service).user_parameters(env.name))


def smoke_hook_environment(cfg: StackConfig, env: EnvironmentConfig, region: str) -> dict[str, str]:
    """The environment of `env`'s smoke-test hook in `region` (:func:`components.workload.smoke_hook_environment`),
    with the longest load balancer ARN suffix in place of the Output the function gets."""
    from components import naming, workload

    tested = workload.smoke_tested(cfg, env)
    return workload.smoke_hook_environment(
        LONGEST_LOAD_BALANCER_ARN_SUFFIX, test_port=env.blue_green_settings.test_listener_port,
        protocol="HTTPS" if env.https(region) else "HTTP", account_id=env.account_id,
        application_name=naming.codedeploy_application_name(cfg, env.name) if env.codedeploy else None,
        smoke_tests={naming.deployment_group_name(cfg, s): s.smoke_spec() for s in tested})


def blue_green_buildspec_chars(cfg: StackConfig, env: EnvironmentConfig, service: ServiceConfig) -> dict[str, int]:
    """Region -> length of the buildspec of a blue/green build carrying only that region's target: the smallest
    build the pipeline can make for it (:func:`components.pipeline.blue_green_groups`)."""
    from components import buildspec, pipeline

    return {t.region: buildspec.blue_green_buildspec_chars(
        targets=[pipeline.environment_blue_green_spec(env.name, t)], home_region=cfg.tools_region,
        timeout_seconds=_pipeline_default("replication_timeout_seconds"))
        for t in pipeline.blue_green_targets(cfg, env, service)}


def pipeline_stage_count(cfg: StackConfig) -> int:
    """The stages of every service pipeline (:func:`components.pipeline.stage_count`)."""
    from components import pipeline

    return pipeline.stage_count(env.require_approval for env in cfg.environments)


def build_action_count(cfg: StackConfig, service: ServiceConfig) -> int:
    """The actions of `service`'s Build stage: the image definitions build where an environment deploys without
    CodeDeploy, and one build per group of blue/green targets (:func:`components.pipeline.blue_green_groups`)."""
    from components import pipeline

    blue_green = [env for env in cfg.environments if env.codedeploy] if not service.existing else []
    count = 1 if len(blue_green) < len(cfg.environments) else 0
    timeout = _pipeline_default("replication_timeout_seconds")
    return count + sum(len(pipeline.blue_green_groups(
        [pipeline.environment_blue_green_spec(env.name, t) for t in pipeline.blue_green_targets(cfg, env, service)],
        cfg.tools_region, timeout)) for env in blue_green)


def push_tag_patterns(cfg: StackConfig) -> list[str]:
    """Every push tag pattern of the stack, as :attr:`components.push_deploy.PushDeployArgs.tag_patterns` has
    them (every push service deploys to every environment)."""
    return sorted({tag for env in cfg.environments for tag in env.tag_patterns})


def push_pattern_chars(cfg: StackConfig, service: ServiceConfig) -> int:
    """Length of the push rule's event pattern for `service`'s repository alone: the smallest rule that can hold it
    (:func:`components.push_deploy.event_patterns` puts repositories into as many rules as needed)."""
    from components import push_deploy

    return len(json.dumps(push_deploy.event_pattern([service.name], push_tag_patterns(cfg))))


def rollout_pattern_chars(cfg: StackConfig, account: str, region: str) -> int:
    """Length of the rollout forwarder's event pattern in `account` and `region`: one prefix per cluster of the
    stack (:func:`components.rollout_notices.deployment_pattern`, as ``__main__`` passes the clusters)."""
    from components import rollout_notices

    return len(json.dumps(rollout_notices.deployment_pattern(cfg.partition, account, region,
                                                             sorted({s.cluster for s in cfg.services}))))


def push_package_bytes(cfg: StackConfig) -> tuple[int, int | None]:
    """(unzipped, zipped) size of the push function's package: every ``handlers/`` file and the target map
    (:func:`components.push_deploy.package_documents`). Zipped is measured only where unzipped exceeds the zipped
    limit (None otherwise: a package never zips to more than it holds, a few bytes of headers aside)."""
    from components import push_deploy
    from components.lambda_code import handler_files

    document = push_deploy.target_map(
        tools_account_id=cfg.tools_account_id, home_region=cfg.tools_region, partition=cfg.partition,
        replication_timeout_seconds=_push_default("replication_timeout_seconds"),
        max_concurrency=_push_default("max_concurrency"),
        # The repository ARNs are not part of the target map.
        services=push_deploy.push_services(cfg, {s.name: () for s in cfg.push_services}))
    texts = [path.read_bytes() for path in handler_files().values()]
    texts += [text.encode() for text in push_deploy.package_documents(document).values()]
    unzipped = sum(len(t) for t in texts)
    if unzipped <= LAMBDA_ZIPPED_PACKAGE_BYTES:
        return unzipped, None
    return unzipped, sum(len(zlib.compress(t, 6)) for t in texts)


def deploy_role_policy_chars(cfg: StackConfig, account: str) -> tuple[int, int]:
    """(inline policy, trust policy) of `account`'s deploy role (:func:`components.deploy_role.deploy_role_policy`,
    :func:`components.deploy_role.deploy_trust_policy`), with the longest bucket and key ARNs in place of the
    artifact stores' Outputs."""
    from components import deploy_role
    from components import policies as p
    from components.artifacts import ArtifactStore

    stores = {r: ArtifactStore(region=r, bucket=LONGEST_BUCKET_NAME,  # type: ignore[arg-type]
                               bucket_arn=p.arn(cfg.partition, "s3", "", "", LONGEST_BUCKET_NAME),
                               key_arn=p.arn(cfg.partition, "kms", r, cfg.tools_account_id, f"key/{KEY_ID}"))
              for r in cfg.account_regions(account)}
    # The provider plays no part in the documents.
    args = deploy_role.deploy_role_args(cfg, account, None, stores)  # type: ignore[arg-type]
    # deploy_role_policy appends "/*" to each bucket ARN with Output.concat, an Output even for a plain string: the
    # document is built without them and that one statement added back from the same ARNs (the tests compare the
    # figure with the policy the program registers).
    document = deploy_role.deploy_role_policy(dataclasses.replace(args, artifact_bucket_arns=()))
    document["Statement"].append(p.statement("ReadArtifacts", ["s3:GetObject", "s3:GetObjectVersion"],
                                             [f"{arn}/*" for arn in args.artifact_bucket_arns]))
    return (policy_chars(json.dumps(document)),
            policy_chars(json.dumps(deploy_role.deploy_trust_policy(args))))


def engine_policy_chars(cfg: StackConfig) -> int:
    """The deploy engine role's inline policy (:func:`components.deploy_engine.engine_policy`): one deploy role
    per account it serves. The log group ARN, an Output there, is the one Lambda's log group name gives."""
    from components import deploy_engine
    from components import policies as p

    # The provider plays no part in the document.
    args = deploy_engine.deploy_engine_args(cfg, None)  # type: ignore[arg-type]
    log_group = p.arn(cfg.partition, "logs", cfg.tools_region, cfg.tools_account_id,
                      f"log-group:/aws/lambda/{args.function_name}")
    return policy_chars(json.dumps(deploy_engine.engine_policy(args, log_group)))


def problems(cfg: StackConfig) -> list[str]:
    """Every limit of :mod:`components.limits` the config would exceed, each naming its key path, the actual value
    and the limit."""
    from components import deploy_engine, workload

    found: list[str] = []
    env_index = {env.name: i for i, env in enumerate(cfg.environments)}
    svc_index = {s.name: j for j, s in enumerate(cfg.services)}

    stages = pipeline_stage_count(cfg)
    if cfg.pipeline_services and stages > CODEPIPELINE_STAGES:
        found.append(f"environments: the stages of each service pipeline (Source, Build, one per environment and "
                     f"one per approval) would be {stages}, over CodePipeline's limit of {CODEPIPELINE_STAGES}; "
                     "use fewer environments or approvals, or split the stack")

    for service in cfg.pipeline_services:
        j = svc_index[service.name]
        for env in cfg.baked_environments(service):
            i = env_index[env.name]
            chars = bake_user_parameters_chars(cfg, env, service)
            if chars > CODEPIPELINE_USER_PARAMETERS_CHARS:
                found.append(
                    f"environments[{i}].bakeMinutes: the Bake action's UserParameters for services[{j}] "
                    f"({service.name!r}) would be {chars} characters, over CodePipeline's limit of "
                    f"{CODEPIPELINE_USER_PARAMETERS_CHARS}; use shorter service, cluster or environment names "
                    f"or fewer regions in environments[{i}].regions, or set bakeMinutes: 0")
        for env in cfg.environments:
            if not env.codedeploy or service.existing:
                continue
            i = env_index[env.name]
            for region, chars in blue_green_buildspec_chars(cfg, env, service).items():
                if chars > CODEBUILD_INLINE_BUILDSPEC_CHARS:
                    found.append(
                        f"services[{j}]: the inline buildspec of the blue/green build for environments[{i}] "
                        f"({env.name!r}) in {region}, with that one target alone, would be {chars} characters, over "
                        f"CodeBuild's limit of {CODEBUILD_INLINE_BUILDSPEC_CHARS}; the task definition is in it: "
                        "shorten the service's environment, secrets or health check")
        actions = build_action_count(cfg, service)
        if actions > CODEPIPELINE_ACTIONS_PER_STAGE:
            found.append(f"services[{j}]: the actions of the pipeline's Build stage (one per group of blue/green "
                         f"targets) would be {actions}, over CodePipeline's limit of "
                         f"{CODEPIPELINE_ACTIONS_PER_STAGE}; use fewer codedeploy regions or a smaller task "
                         "definition")

    for env in cfg.environments:
        if not workload.smoke_tested(cfg, env):
            continue
        i = env_index[env.name]
        sizes = {r: lambda_environment_bytes(smoke_hook_environment(cfg, env, r)) for r in env.regions}
        over = [r for r, size in sizes.items() if size > LAMBDA_ENVIRONMENT_BYTES]
        if over:
            tested = len(workload.smoke_tested(cfg, env))
            found.append(f"services: the smoke-test hook's environment in environments[{i}] ({env.name!r}; "
                         f"{', '.join(over)}), with the smoke tests of {tested} services, would be "
                         f"{max(sizes.values())} bytes, over Lambda's limit of {LAMBDA_ENVIRONMENT_BYTES}; use "
                         "shorter smokeTest paths or service names, or smoke-test fewer services")

    if cfg.push_services:
        found.extend(_push_problems(cfg, svc_index))

    for account in cfg.workload_accounts:
        i = next(i for i, env in enumerate(cfg.environments) if env.account_id == account)
        chars = max(rollout_pattern_chars(cfg, account, r) for r in cfg.account_regions(account))
        if chars > EVENTBRIDGE_PATTERN_CHARS:
            found.append(f"services: the rollout forwarder's event pattern in {account} (one prefix per cluster) "
                         f"would be {chars} characters, over EventBridge's limit of {EVENTBRIDGE_PATTERN_CHARS}; "
                         "use fewer or shorter cluster names")
        inline, trust = deploy_role_policy_chars(cfg, account)
        if inline > IAM_ROLE_INLINE_POLICIES_CHARS:
            found.append(f"environments[{i}].accountId: the deploy role's policy in {account} would be {inline} "
                         f"characters, over IAM's limit of {IAM_ROLE_INLINE_POLICIES_CHARS}; it grows with the "
                         "clusters, regions, existing services and codedeploy environments of the account: use "
                         "fewer of them, or shared clusters")
        if trust > IAM_TRUST_POLICY_CHARS:
            found.append(f"environments[{i}].accountId: the deploy role's trust policy in {account} would be "
                         f"{trust} characters, over IAM's limit of {IAM_TRUST_POLICY_CHARS}; use a shorter "
                         "project or stack name")
    if cfg.release:
        found.extend(release_problems(cfg))
    if deploy_engine.engine_accounts(cfg):
        chars = engine_policy_chars(cfg)
        if chars > IAM_ROLE_INLINE_POLICIES_CHARS:
            found.append(f"environments: the deploy engine role's policy would be {chars} characters (one deploy "
                         f"role per workload account), over IAM's limit of {IAM_ROLE_INLINE_POLICIES_CHARS}; use "
                         "fewer workload accounts, or split the stack")
    return found


def release_problems(cfg: StackConfig) -> list[str]:
    """A release runs every account-region at once, each up to ``release.maxConcurrency`` check Lambdas: a release
    across every account-region of the stack must stay within :data:`handlers.release_limits.MAX_CONCURRENT_TARGETS`
    (the same bound the release file validator and prepare apply to the account-regions a release touches)."""
    from handlers import release_limits

    groups = {(env.account_id, region) for env in cfg.environments for region in env.regions}
    bound = cfg.release.max_concurrency
    running = min(len(groups), release_limits.MAX_ACCOUNT_REGIONS) * bound
    if running <= release_limits.MAX_CONCURRENT_TARGETS:
        return []
    return [f"release.maxConcurrency: the check Lambdas running at once in a release across the stack's "
            f"{len(groups)} account-regions, {bound} in each, would be {running}, over the release's limit of "
            f"{release_limits.MAX_CONCURRENT_TARGETS}; lower release.maxConcurrency (the limit keeps a release "
            "within Lambda's default 1,000 concurrent executions, shared with the tools account)"]


def _push_problems(cfg: StackConfig, svc_index: Mapping[str, int]) -> list[str]:
    found: list[str] = []
    sizes = {s.name: push_pattern_chars(cfg, s) for s in cfg.push_services}
    over = [name for name, chars in sizes.items() if chars > EVENTBRIDGE_PATTERN_CHARS]
    if over and len(over) == len(sizes):
        # Even the shortest repository name does not fit: the tag patterns are what is too long.
        chars = min(sizes.values())
        found.append(f"environments[].pushTags: the push rule's event pattern with the shortest push repository "
                     f"alone would be {chars} characters, over EventBridge's limit of {EVENTBRIDGE_PATTERN_CHARS}; "
                     "use fewer or shorter push tag patterns")
    else:
        for name in over:
            found.append(f"services[{svc_index[name]}].name: the push rule's event pattern with this repository "
                         f"alone would be {sizes[name]} characters, over EventBridge's limit of "
                         f"{EVENTBRIDGE_PATTERN_CHARS}; use a shorter repository name or fewer push tag patterns")
    unzipped, zipped = push_package_bytes(cfg)
    if unzipped > LAMBDA_UNZIPPED_PACKAGE_BYTES:
        found.append(f"services: the push function's package, unzipped (the target map holds every push service's "
                     f"deploy document for every environment and region), would be {unzipped} bytes, over Lambda's "
                     f"limit of {LAMBDA_UNZIPPED_PACKAGE_BYTES}; deliver some services by pipeline, or split the "
                     "stack")
    elif zipped is not None and zipped > LAMBDA_ZIPPED_PACKAGE_BYTES:
        found.append(f"services: the push function's package, zipped for a direct upload, would be {zipped} bytes, "
                     f"over Lambda's limit of {LAMBDA_ZIPPED_PACKAGE_BYTES}; deliver some services by pipeline, or "
                     "split the stack")
    return found


def _pipeline_default(name: str) -> Any:
    from components.pipeline import ServicePipelineArgs

    return _default(ServicePipelineArgs, name)


def _push_default(name: str) -> Any:
    from components.push_deploy import PushDeployArgs

    return _default(PushDeployArgs, name)


def _default(cls: type, name: str) -> Any:
    """A component argument's default (``__main__`` leaves these at their defaults)."""
    (found,) = [f.default for f in fields(cls) if f.name == name]
    return found
