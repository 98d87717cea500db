"""Pulumi mocks that answer like AWS would, and a harness that runs the real program under them.

The tests, the offline plan and the benchmark all use this one module, so what a reviewer sees in the plan is what
the tests assert on. ``new_resource`` returns realistic outputs: ARNs, ids and URLs carrying the account and region
of the provider the resource was registered with, so a test can check that a role ARN handed to a deploy action
really lives in the workload account it should.
"""

from __future__ import annotations

import hashlib
import json
import runpy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = ROOT / "__main__.py"
PROVIDER_TYPE = "pulumi:providers:aws"


@dataclass
class Recorded:
    """One registration as the engine (and so AWS) would receive it."""

    type: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    custom: bool
    parent: str | None
    provider: str | None
    account: str | None = None
    region: str | None = None
    ignore_changes: tuple[str, ...] = ()
    """Engine property names (camelCase) the registration asked Pulumi to leave alone after creation."""

    @property
    def service(self) -> str:
        return self.type.split(":")[1].split("/")[0] if self.type.count(":") >= 2 else self.type


@dataclass
class ProgramRun:
    """What one run of the program registered, and its stack outputs."""

    resources: list[Recorded] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_]

    def named(self, type_: str, name: str) -> Recorded:
        found = [r for r in self.of_type(type_) if r.name == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources of type {type_} named {name}")
        return found[0]

    def custom(self) -> list[Recorded]:
        return [r for r in self.resources if r.custom and r.type != PROVIDER_TYPE]


def _short_hash(*parts: str, length: int = 7) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def _json_or(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _physical_name(name: str, inputs: Mapping[str, Any], key: str = "name") -> str:
    # Pulumi auto-names with a random suffix; a stable hash keeps plans and benchmarks reproducible.
    return inputs.get(key) or f"{name}-{_short_hash(name)}"


def _iam_outputs(type_: str, name: str, inputs: dict[str, Any], account: str, arn_prefix: str) -> tuple[str, dict]:
    """IAM is global: no region, and ARNs with an empty region field."""
    out = dict(inputs)
    if type_ == "aws:iam/role:Role":
        role_name = _physical_name(name, inputs)
        path = inputs.get("path", "/")
        out.update(name=role_name, arn=f"{arn_prefix}:iam::{account}:role{path}{role_name}",
                   uniqueId=f"AROA{_short_hash(account, role_name, length=17).upper()}")
        return role_name, out
    if type_ == "aws:iam/rolePolicy:RolePolicy":
        policy_name = _physical_name(name, inputs)
        out["name"] = policy_name
        return f"{inputs.get('role')}:{policy_name}", out  # IAM identifies inline policies as role:policy
    physical = _physical_name(name, inputs)
    kind = type_.split("/")[1].split(":")[0]
    out.update(name=physical, arn=f"{arn_prefix}:iam::{account}:{kind.lower()}/{physical}")
    return physical, out


def _outputs(
    type_: str, name: str, inputs: dict[str, Any], account: str, region: str, partition: str
) -> tuple[str, dict]:
    out = dict(inputs)
    arn_prefix = f"arn:{partition}"
    if type_.startswith("aws:iam/"):
        return _iam_outputs(type_, name, inputs, account, arn_prefix)
    out.setdefault("region", region)
    region = out["region"]
    if type_ == "aws:kms/key:Key":
        key_id = ("mrk-" if inputs.get("multiRegion") else "") + _short_hash(account, region, name, length=32)
        out.update(keyId=key_id, arn=f"{arn_prefix}:kms:{region}:{account}:key/{key_id}")
        return key_id, out
    if type_ == "aws:kms/replicaKey:ReplicaKey":
        key_id = str(inputs["primaryKeyArn"]).rsplit("/", 1)[-1]
        out.update(keyId=key_id, arn=f"{arn_prefix}:kms:{region}:{account}:key/{key_id}")
        return key_id, out
    if type_ == "aws:s3/bucket:Bucket":
        bucket = inputs.get("bucket") or f"{name}-{_short_hash(name)}"
        out.update(bucket=bucket, arn=f"{arn_prefix}:s3:::{bucket}", bucketDomainName=f"{bucket}.s3.amazonaws.com")
        return bucket, out
    if type_ == "aws:ecr/repository:Repository":
        repo = _physical_name(name, inputs)
        out.update(name=repo, registryId=account, arn=f"{arn_prefix}:ecr:{region}:{account}:repository/{repo}",
                   repositoryUrl=f"{account}.dkr.ecr.{region}.amazonaws.com/{repo}")
        return repo, out
    simple = {
        "aws:sns/topic:Topic": ("sns", "{n}"),
        "aws:sqs/queue:Queue": ("sqs", "{n}"),
        "aws:codebuild/project:Project": ("codebuild", "project/{n}"),
        "aws:codepipeline/pipeline:Pipeline": ("codepipeline", "{n}"),
        "aws:cloudwatch/logGroup:LogGroup": ("logs", "log-group:{n}"),
        "aws:cloudwatch/eventRule:EventRule": ("events", "rule/{n}"),
        "aws:cloudwatch/eventBus:EventBus": ("events", "event-bus/{n}"),
        "aws:lambda/function:Function": ("lambda", "function:{n}"),
        "aws:sfn/stateMachine:StateMachine": ("states", "stateMachine:{n}"),
        "aws:ecs/cluster:Cluster": ("ecs", "cluster/{n}"),
        "aws:codestarnotifications/notificationRule:NotificationRule": ("codestar-notifications",
                                                                        "notificationrule/{n}"),
    }
    if type_ in simple:
        service, template = simple[type_]
        physical = _physical_name(name, inputs)
        resource_arn = f"{arn_prefix}:{service}:{region}:{account}:{template.format(n=physical)}"
        out.update(name=physical, arn=resource_arn)
        if type_ == "aws:sqs/queue:Queue":
            out["url"] = f"https://sqs.{region}.amazonaws.com/{account}/{physical}"
            return out["url"], out
        return resource_arn, out
    out.setdefault("arn", f"{arn_prefix}:{type_.split(':')[1].split('/')[0]}:{region}:{account}:{name}")
    return f"{name}-{_short_hash(name, type_)}", out


class AwsMocks(pulumi.runtime.Mocks):
    """Answers registrations like AWS, tracking which account and region each provider points at."""

    def __init__(self) -> None:
        self.run = ProgramRun()
        self.providers: dict[str, tuple[str, str]] = {}
        self._parents: dict[tuple[str, str], str | None] = {}
        self._ignored: dict[tuple[str, str], tuple[str, ...]] = {}

    def note_parent(self, type_: str, name: str, parent: str | None, ignore_changes: tuple[str, ...] = ()) -> None:
        self._parents[(type_, name)] = parent or None
        if ignore_changes:
            self._ignored[(type_, name)] = ignore_changes

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        inputs = dict(args.inputs)
        parent = self._parents.get((args.typ, args.name))
        if args.typ == PROVIDER_TYPE:
            accounts = _json_or(inputs.get("allowedAccountIds")) or [None]
            provider_id = f"{args.name}-id"
            self.providers[provider_id] = (accounts[0], inputs.get("region"))
            self.run.resources.append(Recorded(args.typ, args.name, inputs, inputs, True, parent, None,
                                               accounts[0], inputs.get("region")))
            return provider_id, inputs
        if not args.custom:
            self.run.resources.append(Recorded(args.typ, args.name, inputs, {}, False, parent, None))
            return None, {}
        provider_id = (args.provider or "").rsplit("::", 1)[-1] or None
        account, region = self.providers.get(provider_id or "", (None, None))
        resource_id, outputs = _outputs(args.typ, args.name, inputs, account or "000000000000",
                                        region or "us-east-1", _partition(region))
        self.run.resources.append(Recorded(args.typ, args.name, inputs, outputs, True, parent, provider_id,
                                           account, None if args.typ.startswith("aws:iam/") else
                                           outputs.get("region", region),
                                           self._ignored.get((args.typ, args.name), ())))
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        # The program makes no data-source calls: every fact it needs comes from the stack config. Failing loudly
        # here keeps it that way (a lookup would need credentials during preview in a pull request).
        raise AssertionError(f"unexpected invoke {args.token}")


def _partition(region: str | None) -> str:
    if region and region.startswith("cn-"):
        return "aws-cn"
    if region and region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    def RegisterResource(self, request: Any) -> Any:  # gRPC method name, fixed by the base class
        self.mocks.note_parent(request.type, request.name, request.parent, tuple(request.ignoreChanges))
        return super().RegisterResource(request)


def run_program(
    config: Mapping[str, Any],
    *,
    stack: str = "dev",
    project: str = "crossdeploy",
    program: Path = PROGRAM,
) -> ProgramRun:
    """Run ``__main__.py`` under the mocks with ``config`` (``namespace:key`` -> value) and return what it did.

    Exceptions raised by the program (a ``ConfigError`` for bad config) propagate unchanged.
    """
    mocks = AwsMocks()
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=_RecordingMonitor(mocks))
    pulumi.runtime.set_all_config(
        {key: value if isinstance(value, str) else json.dumps(value) for key, value in config.items()}, []
    )
    from pulumi.runtime.stack import run_pulumi_func

    def body() -> None:
        runpy.run_path(str(program), run_name="__main__")

    _sync_await(run_pulumi_func(body))
    # The SDK sends registrations from a thread pool, so arrival order varies from run to run; sorting makes plans,
    # benchmarks and test failures reproducible.
    mocks.run.resources.sort(key=lambda r: (r.type, r.name))
    root = pulumi_settings.get_root_resource()
    raw_outputs = dict(getattr(root, "outputs", {}) or {})
    for key, value in raw_outputs.items():
        mocks.run.outputs[key] = _sync_await(pulumi.Output.from_input(value).future())
    return mocks.run


def stack_config(stack_file: Path) -> dict[str, Any]:
    """The ``config:`` block of a ``Pulumi.<stack>.yaml`` file, as Pulumi would hand it to the program."""
    import yaml

    data = yaml.safe_load(stack_file.read_text()) or {}
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{stack_file}: not a Pulumi stack file (expected a mapping with a 'config:' mapping)")
    return dict(config)
