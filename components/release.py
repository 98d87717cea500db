"""Releases: one ``deployment.yaml`` in git deploys many services and scheduled tasks, across accounts and regions,
as one unit, with rollback of the whole release on any failure.

::

    Source    the release repository (CodeCommit, or a CodeStar connection to GitHub/Bitbucket/GitLab); with a
              CodeCommit ``developBranch``, pushes there get a pull request into the branch, with the validator's
              verdict (:mod:`components.gitflow`), and merging it is the push that starts this pipeline
    Validate  CodeBuild: handlers/release_file.py (from this repository, with PyYAML's pure-Python sources, shipped
              as one zip in the artifact bucket: nothing is downloaded from the internet at build time) validates
              the file — every problem with its line — and converts it to the release manifest
    Approve   optional manual approval
    Release   Step Functions: prepare (pin digests, snapshot, items to S3) -> per account-region, at most
              maxConcurrency at once in each: scheduled tasks -> services (Distributed Maps); any failure rolls
              the whole release back

The state machine and its step handlers live in :mod:`components.release_state_machine` and
``handlers/release.py``; this module only wires them: one Lambda per step, two roles (the steps that reach into
workload accounts, and the notifier), the state machine and its role, and the pipeline.

Rolling services deploy through the deploy engine (``handlers/deploy_engine.py``, in the step Lambdas' package) from
their **deploy document**, the object ``components/deploy_config.py`` keeps per service in the config bucket: the
release context (:func:`release_context`) maps every service of the stack (``<cluster>/<serviceName>``) to its
document's key; it ships in the validator bundle and in the step Lambdas' package (``release-context.json``), and
the steps read the documents with ``s3:GetObject``/``s3:GetObjectVersion`` on ``services/*`` of that bucket and
``kms:Decrypt`` on its key. In the artifact bucket, *prepare* reads the manifest the build put there
(``release-manifests/``) and writes the items files (``release-runs/<execution>/items/``), which the state machine's
role reads for its Distributed Maps (``ItemReader``) next to the results it writes (``release-runs/<execution>/
results/``, ``ResultWriter``); the notifier reads those results. The state machine's role also starts, follows and
stops its own child executions (Distributed Map), nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi_aws as aws
import yaml

from components import naming
from components import policies as p
from components.artifacts import ArtifactStore, ArtifactStores
from components.config import StackConfig
from components.gitflow import Gitflow, GitflowArgs
from components.lambda_code import handler_archive
from components.pipeline import NOTICE_EVENTS
from components.release_state_machine import definition, lambda_functions, lambda_timeouts
from components.service_role import service_role
from handlers.release_limits import MAX_CONCURRENCY, MAX_CONCURRENT_TARGETS, MIN_CONCURRENCY

if TYPE_CHECKING:  # components releases are wired to (their modules need not load with this one)
    from components.deploy_config import DeployConfigStore
    from components.notifications import Notifications

ROOT = Path(__file__).resolve().parents[1]
HANDLERS = ROOT / "handlers"
RUNTIME = "python3.12"
BUILD_IMAGE = "aws/codebuild/amazonlinux-x86_64-standard:5.0"
STEPS_THAT_NOTIFY = ("notify",)


@dataclass(frozen=True)
class ReleaseSource:
    provider: str
    """``codecommit`` or ``codestar``."""
    repository: str
    branch: str
    connection_arn: str | None = None
    develop_branch: str | None = None
    """codecommit only: pushes to it open the pull request into ``branch`` with the validator's verdict
    (:mod:`components.gitflow`). Default none."""


@dataclass(frozen=True)
class ReleaseArgs:
    provider: aws.Provider
    """Tools account provider in the home region."""
    partition: str
    tools_account_id: str
    home_region: str
    regions: tuple[str, ...]
    """Every region in use (prepare checks each target region's ECR replica)."""
    context: dict[str, Any]
    """The release context (:func:`release_context`): environments with their accounts, regions and deploy roles,
    and every service's deploy document key."""
    source: ReleaseSource
    artifact_store: ArtifactStore
    """The home region's store: pipeline artifacts and the validator bundle."""
    notification_topic_arn: pulumi.Input[str]
    notification_key_arn: pulumi.Input[str]
    name_prefix: str
    config_bucket: pulumi.Input[str]
    """The deploy config bucket's name (``DeployConfigStore.bucket``): where the steps read deploy documents."""
    config_bucket_arn: pulumi.Input[str]
    config_key_arn: pulumi.Input[str]
    """The key **ARN** the documents are encrypted with (the home region's artifact key)."""
    steps_role_name: str
    notify_role_name: str
    role_path: str
    file: str = "deployment.yaml"
    require_approval: bool = False
    max_concurrency: int = 10
    """Targets deployed at once in each account-region (1-50; the bound of every target Map Run). Default 10."""
    service_timeout_seconds: int = 900
    log_retention_days: int = 30
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.source.provider not in ("codecommit", "codestar"):
            problems.append(f"source.provider: codecommit or codestar, got {self.source.provider!r}")
        if self.source.provider == "codestar" and not self.source.connection_arn:
            problems.append("source.connection_arn: required for codestar")
        if self.source.develop_branch and (self.source.provider != "codecommit"
                                           or self.source.develop_branch == self.source.branch):
            problems.append("source.develop_branch: only for codecommit, and not the release branch")
        if not MIN_CONCURRENCY <= self.max_concurrency <= MAX_CONCURRENCY:
            problems.append(f"max_concurrency: {MIN_CONCURRENCY}-{MAX_CONCURRENCY} per account-region, got "
                            f"{self.max_concurrency}")
        account_regions = {(env.get("accountId"), region) for env in self.context.get("environments", {}).values()
                           for region in env.get("regions", [])}
        if len(account_regions) * self.max_concurrency > MAX_CONCURRENT_TARGETS:
            problems.append(f"max_concurrency: {len(account_regions)} account-regions x {self.max_concurrency} "
                            f"would run {len(account_regions) * self.max_concurrency} check Lambdas at once, over "
                            f"{MAX_CONCURRENT_TARGETS} (Lambda's default 1,000 concurrent executions)")
        if self.home_region not in self.regions:
            problems.append("regions: must include the home region")
        if not isinstance(self.context.get("services"), dict):
            problems.append("context.services: every service's deploy document key is required (release_context)")
        if problems:
            raise ValueError("ReleaseArgs: " + "; ".join(problems))

    @property
    def deploy_role_arns(self) -> list[str]:
        return sorted({env["deployRoleArn"] for env in self.context["environments"].values()})


def release_context(cfg: StackConfig) -> dict[str, Any]:
    """What the release file's validator and the release steps know of the stack: the tools registry, every
    environment (account, regions, deploy role; CodeDeploy names and smoke-test hooks for a ``codedeploy`` one) and
    every service's deploy document key by ``<cluster>/<serviceName>`` (a service not listed is not the stack's)."""
    return {
        "version": 1, "partition": cfg.partition, "registryId": cfg.tools_account_id, "homeRegion": cfg.tools_region,
        "environments": {env.name: {"accountId": env.account_id, "regions": list(env.regions),
                                    "deployRoleArn": naming.deploy_role_arn(cfg, env.account_id),
                                    **({"blueGreen": naming.release_blue_green_context(cfg, env)}
                                       if env.strategy == "codedeploy" else {})}
                         for env in cfg.environments},
        "services": {f"{s.cluster}/{s.service}": naming.deploy_document_key(s) for s in cfg.services},
    }


def release_args(cfg: StackConfig, provider: aws.Provider, artifacts: ArtifactStores,
                 deploy_config: DeployConfigStore, notifications: Notifications) -> ReleaseArgs:
    """The release pipeline the stack config's ``release`` asks for (which must be set); `provider`: the tools
    account's, in the home region."""
    release = cfg.release
    if release is None:
        raise ValueError("release_args: the stack config has no release")
    home_store = artifacts.stores[cfg.tools_region]
    return ReleaseArgs(
        provider=provider,
        partition=cfg.partition,
        tools_account_id=cfg.tools_account_id,
        home_region=cfg.tools_region,
        regions=cfg.regions,
        context=release_context(cfg),
        source=ReleaseSource(release.source.provider, release.source.repository, release.source.branch,
                             release.source.connection_arn, release.source.develop_branch),
        artifact_store=home_store,
        notification_topic_arn=notifications.topic_arn,
        notification_key_arn=notifications.key_arn,
        name_prefix=cfg.name_prefix,
        # Rolling services deploy from their deploy documents: the steps read them (one version per release).
        config_bucket=deploy_config.bucket,
        config_bucket_arn=deploy_config.bucket_arn,
        config_key_arn=home_store.key_arn,
        steps_role_name=naming.release_steps_role_name(cfg),
        notify_role_name=p.iam_name(cfg.name_prefix, "release-notify"),
        role_path=naming.iam_path(cfg, "release"),
        file=release.file,
        require_approval=release.require_approval,
        max_concurrency=release.max_concurrency,
        service_timeout_seconds=release.service_timeout_minutes * 60,
    )


def tools_bundle_assets(context: dict[str, Any]) -> dict[str, str]:
    """Archive path -> file text of the validator bundle the build step runs: the validator, PyYAML's pure-Python
    package (the pinned requirement; its C extension is left out, PyYAML falls back without it) and the context."""
    files = {"handlers/__init__.py": (HANDLERS / "__init__.py").read_text(),
             "handlers/release_file.py": (HANDLERS / "release_file.py").read_text(),
             # The ceiling the validator enforces is the one prepare enforces: one module, shipped with both.
             "handlers/release_limits.py": (HANDLERS / "release_limits.py").read_text(),
             "release-context.json": json.dumps(context, indent=1, sort_keys=True)}
    yaml_dir = Path(yaml.__file__).parent
    files.update({f"yaml/{path.name}": path.read_text() for path in sorted(yaml_dir.glob("*.py"))})
    return files


def buildspec(file: str, bundle_uri: pulumi.Input[str], bucket: pulumi.Input[str]) -> pulumi.Output[str]:
    """Validate and convert ``file``, put the manifest in the artifact bucket (``release-manifests/<build id>.json``:
    a large release's manifest is over Step Functions' 256 KiB of execution input); the Step Functions action reads
    ``sfn-input.json`` (``{"manifestLocation": {"bucket", "key"}}``)."""
    def render(uri: str, bucket_name: str) -> str:
        spec = {
            "version": 0.2,
            "env": {"variables": {"RELEASE_FILE": file, "TOOLS_BUNDLE": uri, "RELEASE_BUCKET": bucket_name}},
            "phases": {
                "install": {"runtime-versions": {"python": "3.12"}},
                "build": {"commands": [
                    # A private directory (buildspec 0.2 runs every command in one shell, so it carries over).
                    'TOOLS_DIR="${TOOLS_DIR:-$(mktemp -d)}"',
                    'aws s3 cp "$TOOLS_BUNDLE" "$TOOLS_DIR.zip"',
                    'mkdir -p "$TOOLS_DIR" && python3 -m zipfile -e "$TOOLS_DIR.zip" "$TOOLS_DIR"',
                    # -S: only the bundle's code runs, exactly as tested (no site-packages of the build image).
                    'cd "$CODEBUILD_SRC_DIR" && PYTHONPATH="$TOOLS_DIR" python3 -S -m handlers.release_file convert '
                    '"$RELEASE_FILE" --context "$TOOLS_DIR/release-context.json" --out release.json',
                    'export MANIFEST_KEY="release-manifests/${CODEBUILD_BUILD_ID##*:}.json"',
                    'cd "$CODEBUILD_SRC_DIR" && aws s3 cp release.json "s3://$RELEASE_BUCKET/$MANIFEST_KEY"',
                    'cd "$CODEBUILD_SRC_DIR" && python3 -S -c "import json, os; json.dump({\'manifestLocation\': '
                    "{'bucket': os.environ['RELEASE_BUCKET'], 'key': os.environ['MANIFEST_KEY']}}, "
                    "open('sfn-input.json', 'w'))\"",
                ]},
            },
            "artifacts": {"files": ["sfn-input.json", "release.json"]},
        }
        return yaml.safe_dump(spec, sort_keys=False, width=1000)

    return pulumi.Output.all(bundle_uri, bucket).apply(lambda values: render(*values))


# Under the artifact bucket: what the build converted (a large release's manifest is over Step Functions' 256 KiB of
# execution input), and per execution what prepare wrote (items) and the Distributed Maps wrote (results).
MANIFESTS = "release-manifests/*"
ITEMS = "release-runs/*/items/*"
RESULTS = "release-runs/*/results/*"


def _under(bucket_arn: pulumi.Input[str], pattern: str) -> pulumi.Output[str]:
    return pulumi.Output.concat(bucket_arn, "/", pattern)


def steps_policy(args: ReleaseArgs, log_group_arns: list[pulumi.Output[str]]) -> dict:
    store = args.artifact_store
    return p.document([
        p.statement("WriteOwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                    [pulumi.Output.concat(a, ":*") for a in log_group_arns]),
        # Releases may name any repository of the tools registry: prepare resolves tags and checks replicas.
        p.statement("ResolveDigests", ["ecr:DescribeImages"],
                    [p.arn(args.partition, "ecr", r, args.tools_account_id, "repository/*") for r in args.regions]),
        p.statement("AssumeDeployRoles", ["sts:AssumeRole"], args.deploy_role_arns),
        # Deploy documents: read one version (prepare pins it), never write, nothing else in the bucket.
        p.statement("ReadDeployDocuments", ["s3:GetObject", "s3:GetObjectVersion"],
                    [pulumi.Output.concat(args.config_bucket_arn, "/services/*")]),
        p.statement("DecryptDeployDocuments", ["kms:Decrypt"], [args.config_key_arn]),
        # prepare: reads the manifest the build put in the artifact bucket, writes the items files the state
        # machine's Distributed Maps read; nothing else of the bucket.
        p.statement("ReadReleaseManifests", ["s3:GetObject"], [_under(store.bucket_arn, MANIFESTS)]),
        p.statement("WriteReleaseItems", ["s3:PutObject"], [_under(store.bucket_arn, ITEMS)]),
        p.statement("ReleaseArtifactKey", ["kms:Decrypt", "kms:GenerateDataKey"], [store.key_arn]),
    ])


def notify_policy(args: ReleaseArgs, log_group_arn: pulumi.Output[str]) -> dict:
    store = args.artifact_store
    return p.document([
        p.statement("WriteOwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                    [pulumi.Output.concat(log_group_arn, ":*")]),
        p.statement("Notify", ["sns:Publish"], [args.notification_topic_arn]),
        p.statement("EncryptNotices", ["kms:Decrypt", "kms:GenerateDataKey"], [args.notification_key_arn]),
        # The notice reads the Map Runs' results (targets, times, failures); the forward ones are found by listing,
        # as a failed Map Run's output never reaches the state.
        p.statement("ReadReleaseResults", ["s3:GetObject"], [_under(store.bucket_arn, RESULTS)]),
        p.statement("ListReleaseResults", ["s3:ListBucket"], [store.bucket_arn],
                    conditions={"StringLike": {"s3:prefix": ["release-runs/*"]}}),
        p.statement("DecryptReleaseResults", ["kms:Decrypt"], [store.key_arn]),
    ])


def machine_policy(args: ReleaseArgs, function_arns: list[pulumi.Output[str]], machine_name: str) -> dict:
    """The state machine's role: invoke its steps; run its Distributed Maps (start, follow and stop its own child
    executions: AWS's documented policy for Distributed Map), read the items files, write the results."""
    store = args.artifact_store
    states = p.arn(args.partition, "states", args.home_region, args.tools_account_id, "")
    return p.document([
        p.statement("InvokeSteps", ["lambda:InvokeFunction"],
                    [*function_arns, *(pulumi.Output.concat(a, ":*") for a in function_arns)]),
        p.statement("StartChildExecutions", ["states:StartExecution"], [f"{states}stateMachine:{machine_name}"]),
        # Child executions are named <machine>/<Map state>:<id>.
        p.statement("FollowChildExecutions", ["states:DescribeExecution", "states:StopExecution"],
                    [f"{states}execution:{machine_name}/*"]),
        p.statement("ReadReleaseItems", ["s3:GetObject"], [_under(store.bucket_arn, ITEMS)]),
        # ResultWriter writes large result files in parts: it may need to list and abort its own uploads.
        p.statement("WriteMapResults", ["s3:PutObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
                    [_under(store.bucket_arn, RESULTS)]),
        p.statement("ReleaseArtifactKey", ["kms:Decrypt", "kms:GenerateDataKey"], [store.key_arn]),
    ])


def _function_code(context: dict[str, Any]) -> pulumi.AssetArchive:
    # Every handler file (the steps, the deploy engine and what they import) and the release context (the stack's
    # services and their document keys: over Lambda's 4 KB of environment for a few hundred services).
    return handler_archive(documents={"release-context.json": json.dumps(context, indent=1, sort_keys=True)})


class Release(pulumi.ComponentResource):
    """The release pipeline, its validation build, the state machine and one Lambda per step."""

    def __init__(self, name: str, args: ReleaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:release:Release", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        store = args.artifact_store
        prefix = args.name_prefix
        functions, timeouts = lambda_functions(), lambda_timeouts()

        log_groups = {step: aws.cloudwatch.LogGroup(
            f"{name}-{step}-logs", name=f"/aws/lambda/{p.iam_name(prefix, 'release', step)}",
            retention_in_days=args.log_retention_days, opts=child) for step in functions}
        steps_role = self._role(f"{name}-steps", args.steps_role_name, args, "lambda.amazonaws.com", steps_policy(
            args, [g.arn for s, g in log_groups.items() if s not in STEPS_THAT_NOTIFY]), child)
        notify_role = self._role(f"{name}-notify", args.notify_role_name, args, "lambda.amazonaws.com",
                                 notify_policy(args, log_groups["notify"].arn), child)
        environment = {
            "CROSSDEPLOY_REGISTRY_ID": args.tools_account_id,
            "CROSSDEPLOY_HOME_REGION": args.home_region,
            "CROSSDEPLOY_PARTITION": args.partition,
            "CROSSDEPLOY_SERVICE_TIMEOUT_SECONDS": str(args.service_timeout_seconds),
            "CROSSDEPLOY_CONFIG_BUCKET": args.config_bucket,
            "CROSSDEPLOY_RELEASE_BUCKET": store.bucket,
        }
        code = _function_code(args.context)
        arns: dict[str, pulumi.Output[str]] = {}
        for step, handler in functions.items():
            notify = step in STEPS_THAT_NOTIFY
            variables = {**environment, "CROSSDEPLOY_TOPIC_ARN": args.notification_topic_arn} if notify else environment
            arns[step] = aws.lambda_.Function(
                f"{name}-{step}",
                name=p.iam_name(prefix, "release", step),
                description=f"crossdeploy release step: {step}",
                runtime=RUNTIME, architectures=["arm64"], handler=handler, code=code,
                role=(notify_role if notify else steps_role).arn, timeout=timeouts[step], memory_size=512,
                environment=aws.lambda_.FunctionEnvironmentArgs(variables=variables),
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[log_groups[step]])),
            ).arn

        machine_name = p.iam_name(prefix, "release", max_len=80)
        machine_role, machine_role_policy = service_role(
            f"{name}-machine", role_name=p.iam_name(prefix, "release-machine"), path=args.role_path,
            service="states.amazonaws.com", account_id=args.tools_account_id,
            policy=machine_policy(args, list(arns.values()), machine_name), opts=child)
        machine = aws.sfn.StateMachine(
            f"{name}-machine", name=machine_name, type="STANDARD",
            role_arn=machine_role.arn,
            definition=pulumi.Output.all(**arns).apply(
                lambda resolved: json.dumps(definition(dict(resolved), max_concurrency=args.max_concurrency))),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[machine_role_policy])))

        assets = tools_bundle_assets(args.context)
        digest = hashlib.sha256(json.dumps(assets, sort_keys=True).encode()).hexdigest()[:16]
        bundle_key = f"release-tools/{digest}.zip"
        bundle = aws.s3.BucketObjectv2(
            f"{name}-tools", bucket=store.bucket, key=bundle_key,
            source=pulumi.AssetArchive({k: pulumi.StringAsset(v) for k, v in assets.items()}), opts=child)
        bundle_uri = pulumi.Output.concat("s3://", store.bucket, "/", bundle.key)

        build_logs = aws.cloudwatch.LogGroup(
            f"{name}-build-logs", name=f"/aws/codebuild/{p.iam_name(prefix, 'release-validate')}",
            retention_in_days=args.log_retention_days, opts=child)
        build_role = self._role(f"{name}-build", p.iam_name(prefix, "release-build"), args,
                                "codebuild.amazonaws.com", p.document([
                                    p.statement("WriteOwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                                                [pulumi.Output.concat(build_logs.arn, ":*")]),
                                    p.statement("ArtifactsAndBundle", ["s3:GetObject", "s3:GetObjectVersion",
                                                                       "s3:PutObject"],
                                                [pulumi.Output.concat(store.bucket_arn, "/*")]),
                                    p.statement("ArtifactKey", ["kms:Decrypt", "kms:DescribeKey", "kms:Encrypt",
                                                                "kms:GenerateDataKey"], [store.key_arn]),
                                ]), child)
        project = aws.codebuild.Project(
            f"{name}-validate", name=p.iam_name(prefix, "release-validate", allowed=r"A-Za-z0-9_-"),
            description="Validates deployment.yaml and converts it to the release manifest",
            service_role=build_role.arn,
            environment=aws.codebuild.ProjectEnvironmentArgs(
                type="LINUX_CONTAINER", compute_type="BUILD_GENERAL1_SMALL", image=BUILD_IMAGE),
            source=aws.codebuild.ProjectSourceArgs(type="CODEPIPELINE",
                                                   buildspec=buildspec(args.file, bundle_uri, store.bucket)),
            artifacts=aws.codebuild.ProjectArtifactsArgs(type="CODEPIPELINE"),
            encryption_key=store.key_arn, build_timeout=10,
            logs_config=aws.codebuild.ProjectLogsConfigArgs(
                cloudwatch_logs=aws.codebuild.ProjectLogsConfigCloudwatchLogsArgs(
                    status="ENABLED", group_name=build_logs.name)),
            opts=child)

        pipeline_name = p.iam_name(prefix, "release", max_len=100)
        pipeline_role = self._role(
            f"{name}-pipeline", p.iam_name(prefix, "release-pipeline"), args, "codepipeline.amazonaws.com",
            self._pipeline_policy(args, project.arn, machine.arn, machine.name), child)
        pipeline = aws.codepipeline.Pipeline(
            f"{name}-pipeline", name=pipeline_name, pipeline_type="V2", execution_mode="QUEUED",
            role_arn=pipeline_role.arn,
            artifact_stores=[aws.codepipeline.PipelineArtifactStoreArgs(
                location=store.bucket, type="S3",
                encryption_key=aws.codepipeline.PipelineArtifactStoreEncryptionKeyArgs(id=store.key_arn,
                                                                                        type="KMS"))],
            stages=self._stages(args, project.name, machine.arn),
            triggers=self._triggers(args),
            tags=args.tags,
            opts=child)
        if args.source.provider == "codecommit":
            self._codecommit_trigger(name, args, pipeline, child)
        if args.source.develop_branch:
            # Merging the pull request it opens is a push to the release branch: the trigger above releases it.
            Gitflow(f"{name}-gitflow", GitflowArgs(
                provider=args.provider, partition=args.partition, tools_account_id=args.tools_account_id,
                region=args.home_region, repository=args.source.repository, branch=args.source.branch,
                develop_branch=args.source.develop_branch, context=args.context,
                function_name=p.iam_name(prefix, "release-gitflow"), role_path=args.role_path, file=args.file,
                log_retention_days=args.log_retention_days, tags=args.tags), pulumi.ResourceOptions(parent=self))
        aws.codestarnotifications.NotificationRule(
            f"{name}-notices", name=p.iam_name(pipeline_name, max_len=64, allowed=r"A-Za-z0-9_-"),
            resource=pipeline.arn, detail_type="FULL",
            event_type_ids=list(NOTICE_EVENTS),
            targets=[aws.codestarnotifications.NotificationRuleTargetArgs(address=args.notification_topic_arn,
                                                                           type="SNS")],
            opts=child)

        self.state_machine_arn = machine.arn
        self.pipeline_name = pipeline.name
        self.steps_role_arn = steps_role.arn
        self.register_outputs({"pipelineName": pipeline.name, "stateMachineArn": machine.arn})

    @staticmethod
    def _role(name: str, role_name: str, args: ReleaseArgs, service: str, policy: dict,
              opts: pulumi.ResourceOptions) -> aws.iam.Role:
        return service_role(name, role_name=role_name, path=args.role_path, service=service,
                            account_id=args.tools_account_id, policy=policy, opts=opts)[0]

    @staticmethod
    def _pipeline_policy(args: ReleaseArgs, project_arn: pulumi.Output[str], machine_arn: pulumi.Output[str],
                         machine_name: pulumi.Output[str]) -> dict:
        store = args.artifact_store
        statements = [
            p.statement("ArtifactObjects", ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"],
                        [pulumi.Output.concat(store.bucket_arn, "/*")]),
            p.statement("ArtifactBucket", ["s3:GetBucketLocation", "s3:GetBucketVersioning"], [store.bucket_arn]),
            p.statement("ArtifactKey", ["kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey"],
                        [store.key_arn]),
            p.statement("Validate", ["codebuild:BatchGetBuilds", "codebuild:StartBuild"], [project_arn]),
            p.statement("StartRelease", ["states:DescribeStateMachine", "states:StartExecution"], [machine_arn]),
            p.statement("FollowRelease", ["states:DescribeExecution", "states:StopExecution"], [
                pulumi.Output.concat(p.arn(args.partition, "states", args.home_region, args.tools_account_id,
                                           "execution:"), machine_name, ":*")]),
        ]
        if args.source.provider == "codecommit":
            statements.append(p.statement(
                "ReadReleaseRepository", ["codecommit:CancelUploadArchive", "codecommit:GetBranch",
                                          "codecommit:GetCommit", "codecommit:GetUploadArchiveStatus",
                                          "codecommit:UploadArchive"],
                [p.arn(args.partition, "codecommit", args.home_region, args.tools_account_id,
                       args.source.repository)]))
        else:
            statements.append(p.statement("UseConnection", ["codeconnections:UseConnection",
                                                            "codestar-connections:UseConnection"],
                                          [args.source.connection_arn]))
        if args.require_approval:
            statements.append(p.statement("NotifyApprovers", ["sns:Publish"], [args.notification_topic_arn]))
            statements.append(p.statement("EncryptApprovalNotices", ["kms:Decrypt", "kms:GenerateDataKey"],
                                          [args.notification_key_arn]))
        return p.document(statements)

    @staticmethod
    def _stages(args: ReleaseArgs, project_name: pulumi.Output[str], machine_arn: pulumi.Output[str]) -> list:
        if args.source.provider == "codecommit":
            source = aws.codepipeline.PipelineStageActionArgs(
                name="Source", category="Source", owner="AWS", provider="CodeCommit", version="1",
                output_artifacts=["ReleaseSource"],
                # An EventBridge rule starts the pipeline; polling is slower and deprecated.
                configuration={"RepositoryName": args.source.repository, "BranchName": args.source.branch,
                               "PollForSourceChanges": "false"})
        else:
            source = aws.codepipeline.PipelineStageActionArgs(
                name="Source", category="Source", owner="AWS", provider="CodeStarSourceConnection", version="1",
                output_artifacts=["ReleaseSource"],
                configuration={"ConnectionArn": args.source.connection_arn,
                               "FullRepositoryId": args.source.repository, "BranchName": args.source.branch,
                               "DetectChanges": "false"})
        stages = [
            aws.codepipeline.PipelineStageArgs(name="Source", actions=[source]),
            aws.codepipeline.PipelineStageArgs(name="Validate", actions=[aws.codepipeline.PipelineStageActionArgs(
                name="ValidateAndConvert", category="Build", owner="AWS", provider="CodeBuild", version="1",
                input_artifacts=["ReleaseSource"], output_artifacts=["ReleaseManifest"],
                configuration={"ProjectName": project_name})]),
        ]
        if args.require_approval:
            stages.append(aws.codepipeline.PipelineStageArgs(name="Approve", actions=[
                aws.codepipeline.PipelineStageActionArgs(
                    name="Approve", category="Approval", owner="AWS", provider="Manual", version="1",
                    configuration={"NotificationArn": args.notification_topic_arn,
                                   "CustomData": f"Approve the release in {args.file}"})]))
        stages.append(aws.codepipeline.PipelineStageArgs(name="Release", actions=[
            aws.codepipeline.PipelineStageActionArgs(
                name="Release", category="Invoke", owner="AWS", provider="StepFunctions", version="1",
                input_artifacts=["ReleaseManifest"],
                configuration={"StateMachineArn": machine_arn, "InputType": "FilePath", "Input": "sfn-input.json",
                               "ExecutionNamePrefix": "release"})]))
        return stages

    @staticmethod
    def _triggers(args: ReleaseArgs) -> list | None:
        if args.source.provider != "codestar":
            return None
        # Only pushes that touch the release file start a release.
        return [aws.codepipeline.PipelineTriggerArgs(
            provider_type="CodeStarSourceConnection",
            git_configuration=aws.codepipeline.PipelineTriggerGitConfigurationArgs(
                source_action_name="Source",
                pushes=[aws.codepipeline.PipelineTriggerGitConfigurationPushArgs(
                    branches=aws.codepipeline.PipelineTriggerGitConfigurationPushBranchesArgs(
                        includes=[args.source.branch]),
                    file_paths=aws.codepipeline.PipelineTriggerGitConfigurationPushFilePathsArgs(
                        includes=[args.file]))]))]

    @staticmethod
    def _codecommit_trigger(name: str, args: ReleaseArgs, pipeline: aws.codepipeline.Pipeline,
                            opts: pulumi.ResourceOptions) -> None:
        repo_arn = p.arn(args.partition, "codecommit", args.home_region, args.tools_account_id, args.source.repository)
        role = Release._role(f"{name}-trigger", p.iam_name(args.name_prefix, "release-trigger"), args,
                             "events.amazonaws.com", p.document([p.statement(
                                 "StartReleasePipeline", ["codepipeline:StartPipelineExecution"], [pipeline.arn])]),
                             opts)
        rule = aws.cloudwatch.EventRule(
            f"{name}-trigger", description="A push to the release branch starts the release pipeline",
            event_pattern=json.dumps({
                "source": ["aws.codecommit"], "detail-type": ["CodeCommit Repository State Change"],
                "resources": [repo_arn],
                "detail": {"event": ["referenceCreated", "referenceUpdated"], "referenceType": ["branch"],
                           "referenceName": [args.source.branch]}}),
            opts=opts)
        aws.cloudwatch.EventTarget(f"{name}-trigger-target", rule=rule.name, arn=pipeline.arn, role_arn=role.arn,
                                   opts=opts)
