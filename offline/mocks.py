"""Pulumi mocks that answer like AWS would, and a harness that runs the real program under them.

The tests, the offline plan and the benchmark all use this one module, so what a reviewer sees in the plan is what
the tests assert on. ``new_resource`` returns realistic outputs: ARNs, ids and URLs carrying the account and region
of the provider the resource was registered with, so a test can check that a role ARN handed to a deploy action
really lives in the workload account it should.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import hashlib
import json
import re
import runpy
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = ROOT / "__main__.py"
PROVIDER_TYPE = "pulumi:providers:aws"
GLOBAL_TYPES = ("aws:iam/", "aws:route53/")
"""Services without regions: their resources are recorded without one (the provider's only picks an endpoint)."""


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
    dependencies: tuple[str, ...] = ()
    """URNs of the resources it waits for: those its inputs come from and its ``depends_on``."""
    lifecycle: tuple[str, ...] = ()
    """The replace and delete options it was registered with: ``deleteBeforeReplace``, ``retainOnDelete``."""

    @property
    def service(self) -> str:
        return self.type.split(":")[1].split("/")[0] if self.type.count(":") >= 2 else self.type


@dataclass
class Invoked:
    """One data-source call, with the account and region of the provider it went through."""

    token: str
    args: dict[str, Any]
    provider: str | None
    account: str | None
    region: str | None


@dataclass
class ProgramRun:
    """What one run of the program registered, and its stack outputs."""

    resources: list[Recorded] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    invokes: list[Invoked] = field(default_factory=list)

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


# Workload side: VPCs, load balancers, ECS, CodeDeploy, alarms and scaling. Ids, ARNs and names follow AWS's formats;
# where AWS makes up random digits, a hash of the registration stands in so plans and benchmarks stay reproducible.

ELB_NAME_MAX = 32
"""Load balancer and target group names: at most 32 characters (ELB API reference)."""
_LB_KINDS = {"application": "app", "network": "net", "gateway": "gwy"}
_COMPASS = {"northeast": "ne", "northwest": "nw", "southeast": "se", "southwest": "sw"}
# type -> (id prefix, resource type in the ARN); EC2 ids carry 17 hex digits.
_EC2_KINDS = {
    "aws:ec2/vpc:Vpc": ("vpc", "vpc"),
    "aws:ec2/subnet:Subnet": ("subnet", "subnet"),
    "aws:ec2/internetGateway:InternetGateway": ("igw", "internet-gateway"),
    "aws:ec2/eip:Eip": ("eipalloc", "elastic-ip"),
    "aws:ec2/natGateway:NatGateway": ("nat", "natgateway"),
    "aws:ec2/routeTable:RouteTable": ("rtb", "route-table"),
    "aws:ec2/securityGroup:SecurityGroup": ("sg", "security-group"),
}


@dataclass(frozen=True)
class _Registration:
    """A custom resource registration: everything its outputs are derived from."""

    type: str
    name: str
    inputs: dict[str, Any]
    account: str
    region: str
    partition: str

    def arn(self, service: str, resource: str) -> str:
        return f"arn:{self.partition}:{service}:{self.region}:{self.account}:{resource}"

    def hex(self, length: int, *salt: str) -> str:
        """Hex digits unique to this registration (and ``salt``), where AWS would use random ones."""
        return _short_hash(self.account, self.region, self.type, self.name, *salt, length=length)

    def uuid(self) -> str:
        h = self.hex(32, "uuid")
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def zone_id(region: str, zone: str) -> str:
    """The zone id of a zone name (``us-east-2b`` -> ``use2-az2``). AWS shuffles letters against ids per account;
    the mocks pair them in order."""
    parts = region.split("-")
    short = parts[0] + "".join(_COMPASS.get(p, p[0]) for p in parts[1:-1]) + parts[-1]
    return f"{short}-az{ord(zone[len(region)]) - ord('a') + 1}"


def _default_security_group_id(account: str, region: str, vpc_id: str) -> str:
    return f"sg-{_short_hash(account, region, vpc_id, 'default', length=17)}"


def _ec2(r: _Registration, out: dict) -> str:
    prefix, kind = _EC2_KINDS[r.type]
    resource_id = f"{prefix}-{r.hex(17)}"
    out.update(arn=r.arn("ec2", f"{kind}/{resource_id}"), ownerId=r.account)
    if r.type == "aws:ec2/vpc:Vpc":
        out.update(defaultSecurityGroupId=_default_security_group_id(r.account, r.region, resource_id),
                   mainRouteTableId=f"rtb-{r.hex(17, 'main')}", defaultNetworkAclId=f"acl-{r.hex(17, 'acl')}")
    elif r.type == "aws:ec2/subnet:Subnet" and re.fullmatch(rf"{r.region}[a-z]", str(r.inputs.get("availabilityZone"))):
        out["availabilityZoneId"] = zone_id(r.region, r.inputs["availabilityZone"])
    elif r.type == "aws:ec2/eip:Eip":
        octets = bytes.fromhex(r.hex(6, "ip"))
        out.update(allocationId=resource_id, domain=r.inputs.get("domain", "vpc"),
                   publicIp=f"3.{octets[0]}.{octets[1]}.{octets[2] or 1}")
    elif r.type == "aws:ec2/securityGroup:SecurityGroup":
        out["name"] = _physical_name(r.name, r.inputs)
    return resource_id


def _default_security_group(r: _Registration, out: dict) -> str:
    """Not created but adopted: its id is the one the VPC reported."""
    resource_id = _default_security_group_id(r.account, r.region, str(r.inputs.get("vpcId")))
    out.update(name="default", arn=r.arn("ec2", f"security-group/{resource_id}"), ownerId=r.account)
    return resource_id


def _elb_name(r: _Registration) -> str:
    given = r.inputs.get("name")
    if given:
        if len(given) > ELB_NAME_MAX:
            raise ValueError(f"{r.type} {r.name}: name {given!r} is {len(given)} characters, AWS allows "
                             f"{ELB_NAME_MAX}")
        return given
    if r.inputs.get("namePrefix"):
        return f"{r.inputs['namePrefix']}{_short_hash(r.name, length=26)}"[:ELB_NAME_MAX]
    # Pulumi auto-names with a random suffix, shortening the logical name to stay within the limit.
    suffix = _short_hash(r.name)
    return f"{r.name[: ELB_NAME_MAX - len(suffix) - 1]}-{suffix}"


def _load_balancer(r: _Registration, out: dict) -> str:
    name = _elb_name(r)
    kind = _LB_KINDS.get(r.inputs.get("loadBalancerType") or "application", "app")
    suffix = f"{kind}/{name}/{r.hex(16)}"
    domain = "amazonaws.com.cn" if r.partition == "aws-cn" else "amazonaws.com"
    internal = "internal-" if r.inputs.get("internal") else ""
    if kind == "app":
        dns = f"{internal}{name}-{int(r.hex(10, 'dns'), 16) % 10**10}.{r.region}.elb.{domain}"
    else:
        dns = f"{name}-{r.hex(16, 'dns')}.elb.{r.region}.{domain}"
    resource_arn = r.arn("elasticloadbalancing", f"loadbalancer/{suffix}")
    # One canonical hosted zone per region, like AWS's (not its real values).
    out.update(name=name, arn=resource_arn, arnSuffix=suffix, dnsName=dns,
               zoneId=f"Z{_short_hash('elb', r.region, length=13).upper()}")
    return resource_arn


def _target_group(r: _Registration, out: dict) -> str:
    name = _elb_name(r)
    suffix = f"targetgroup/{name}/{r.hex(16)}"
    resource_arn = r.arn("elasticloadbalancing", suffix)
    out.update(name=name, arn=resource_arn, arnSuffix=suffix)
    return resource_arn


def _listener(r: _Registration, out: dict) -> str:
    lb = str(r.inputs.get("loadBalancerArn", ""))
    lb_part = lb.split(":loadbalancer/", 1)[1] if ":loadbalancer/" in lb else f"app/{r.name}/{r.hex(16, 'lb')}"
    out["arn"] = r.arn("elasticloadbalancing", f"listener/{lb_part}/{r.hex(16)}")
    return out["arn"]


def _listener_rule(r: _Registration, out: dict) -> str:
    listener = str(r.inputs.get("listenerArn", ""))
    listener_part = (listener.split(":listener/", 1)[1] if ":listener/" in listener
                     else f"app/{r.name}/{r.hex(16, 'lb')}/{r.hex(16, 'listener')}")
    out["arn"] = r.arn("elasticloadbalancing", f"listener-rule/{listener_part}/{r.hex(16)}")
    return out["arn"]


def _ecs_service(r: _Registration, out: dict) -> str:
    name = _physical_name(r.name, r.inputs)
    cluster = str(r.inputs.get("cluster") or "default")  # an ARN or a name; ECS's default cluster without one
    cluster_name = cluster.rsplit("/", 1)[-1] if cluster.startswith("arn:") else cluster
    out.update(name=name, arn=r.arn("ecs", f"service/{cluster_name}/{name}"))
    return out["arn"]


def _task_definition(r: _Registration, out: dict) -> str:
    family = str(r.inputs["family"])
    base = r.arn("ecs", f"task-definition/{family}")
    out.update(arn=f"{base}:1", arnWithoutRevision=base, revision=1)
    return family


def _codedeploy_application(r: _Registration, out: dict) -> str:
    name = _physical_name(r.name, r.inputs)
    app_id = r.uuid()
    out.update(name=name, arn=r.arn("codedeploy", f"application:{name}"), applicationId=app_id)
    return f"{app_id}:{name}"


def _deployment_group(r: _Registration, out: dict) -> str:
    group_id = r.uuid()
    out.update(arn=r.arn("codedeploy", f"deploymentgroup:{r.inputs['appName']}/{r.inputs['deploymentGroupName']}"),
               deploymentGroupId=group_id)
    return group_id


def _deployment_config(r: _Registration, out: dict) -> str:
    name = str(r.inputs["deploymentConfigName"])
    out.update(arn=r.arn("codedeploy", f"deploymentconfig:{name}"), deploymentConfigId=r.uuid())
    return name


def _metric_alarm(r: _Registration, out: dict) -> str:
    name = _physical_name(r.name, r.inputs)
    out.update(name=name, arn=r.arn("cloudwatch", f"alarm:{name}"))
    return name


def _scaling_target(r: _Registration, out: dict) -> str:
    out["arn"] = r.arn("application-autoscaling", f"scalable-target/{r.hex(36)}")
    return str(r.inputs.get("resourceId"))


def _scaling_policy(r: _Registration, out: dict) -> str:
    name = _physical_name(r.name, r.inputs)
    resource = f"{r.inputs.get('serviceNamespace')}/{r.inputs.get('resourceId')}"
    out.update(name=name, arn=r.arn("autoscaling", f"scalingPolicy:{r.uuid()}:resource/{resource}:policyName/{name}"))
    return name


def acm_validation_record(partition: str, account: str, domain_name: str) -> tuple[str, str]:
    """(name, value) of the CNAME record ACM asks for to validate `domain_name` by DNS. ACM derives it from the
    account and the name, not the region: every certificate for the name in one account, in any region, asks for the
    same record; ``*.example.org`` asks for example.org's."""
    base = domain_name.removeprefix("*.").rstrip(".").lower()
    token = _short_hash(partition, account, base, "acm", length=32)
    target = "".join(chr(ord("a") + int(c, 16) % 26) for c in _short_hash(account, base, "target", length=10))
    return f"_{token}.{base}.", f"_{_short_hash(account, base, 'value', length=32)}.{target}.acm-validations.aws."


def _certificate(r: _Registration, out: dict) -> str:
    """An Amazon-issued certificate just requested: pending validation, one DNS validation option per name."""
    names = list(dict.fromkeys([str(r.inputs["domainName"]), *(r.inputs.get("subjectAlternativeNames") or ())]))
    options = []
    for name in names:
        record_name, record_value = acm_validation_record(r.partition, r.account, name)
        options.append({"domainName": name, "resourceRecordName": record_name, "resourceRecordType": "CNAME",
                        "resourceRecordValue": record_value})
    out.update(arn=r.arn("acm", f"certificate/{r.uuid()}"), domainValidationOptions=options,
               subjectAlternativeNames=names[1:], status="PENDING_VALIDATION", type="AMAZON_ISSUED",
               keyAlgorithm=r.inputs.get("keyAlgorithm") or "RSA_2048", validationEmails=[])
    return out["arn"]


def _certificate_validation(r: _Registration, out: dict) -> str:
    """Completes once the certificate is issued; its certificate_arn is the certificate's own ARN."""
    out["certificateArn"] = r.inputs["certificateArn"]
    return "2026-01-01 00:00:00 +0000 UTC"  # the provider's id is the time ACM issued the certificate


def _route53_record(r: _Registration, out: dict) -> str:
    """Route 53 is global: no region, and the id is zone_name_type[_setIdentifier] (the import format)."""
    out.pop("region", None)
    name = str(r.inputs["name"]).rstrip(".").lower()
    out["fqdn"] = name
    resource_id = f"{r.inputs['zoneId']}_{name}_{r.inputs['type']}"
    return f"{resource_id}_{r.inputs['setIdentifier']}" if r.inputs.get("setIdentifier") else resource_id


_WORKLOAD_OUTPUTS: dict[str, Callable[[_Registration, dict], str]] = {
    **dict.fromkeys(_EC2_KINDS, _ec2),
    "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": _default_security_group,
    "aws:lb/loadBalancer:LoadBalancer": _load_balancer,
    "aws:lb/targetGroup:TargetGroup": _target_group,
    "aws:lb/listener:Listener": _listener,
    "aws:lb/listenerRule:ListenerRule": _listener_rule,
    "aws:ecs/service:Service": _ecs_service,
    "aws:ecs/taskDefinition:TaskDefinition": _task_definition,
    "aws:codedeploy/application:Application": _codedeploy_application,
    "aws:codedeploy/deploymentGroup:DeploymentGroup": _deployment_group,
    "aws:codedeploy/deploymentConfig:DeploymentConfig": _deployment_config,
    "aws:cloudwatch/metricAlarm:MetricAlarm": _metric_alarm,
    "aws:appautoscaling/target:Target": _scaling_target,
    "aws:appautoscaling/policy:Policy": _scaling_policy,
    "aws:acm/certificate:Certificate": _certificate,
    "aws:acm/certificateValidation:CertificateValidation": _certificate_validation,
    "aws:route53/record:Record": _route53_record,
}
"""Resource type -> builder: fills in the outputs (a copy of the inputs) and returns the resource id."""

AVAILABILITY_ZONES_INVOKE = "aws:index/getAvailabilityZones:getAvailabilityZones"
_ZONE_FILTERS = ("zone-name", "zone-id", "state", "opt-in-status", "region-name", "group-name", "zone-type")
AVAILABILITY_ZONE_LETTERS: dict[str, str] = {}
"""Region -> letters of the zones the mocked accounts see there, in the order AWS lists them. Default ``abc``.
Tests set a region to, say, ``cb`` to prove nothing assumes letters (AWS maps them per account)."""


def availability_zones(region: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """What ``getAvailabilityZones`` returns in ``region``: all zones available and without opt-in."""
    zones = []
    for letter in AVAILABILITY_ZONE_LETTERS.get(region, "abc"):
        name = f"{region}{letter}"
        zones.append({"zone-name": name, "zone-id": zone_id(region, name), "state": "available",
                      "opt-in-status": "opt-in-not-required", "region-name": region, "group-name": region,
                      "zone-type": "availability-zone"})
    for flt in args.get("filters") or ():
        if flt["name"] not in _ZONE_FILTERS:
            raise AssertionError(f"getAvailabilityZones: AWS rejects the filter name {flt['name']!r}")
        zones = [z for z in zones if z[flt["name"]] in flt["values"]]
    zones = [z for z in zones if z["state"] == (args.get("state") or "available")
             and z["zone-name"] not in (args.get("excludeNames") or ())
             and z["zone-id"] not in (args.get("excludeZoneIds") or ())]
    return {"id": region, "region": region, "names": [z["zone-name"] for z in zones],
            "zoneIds": [z["zone-id"] for z in zones], "groupNames": sorted({z["group-name"] for z in zones}),
            "state": args.get("state"), "filters": args.get("filters"),
            "excludeNames": args.get("excludeNames"), "excludeZoneIds": args.get("excludeZoneIds")}


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
    if type_ in _WORKLOAD_OUTPUTS:
        # Bridged providers report the id among the outputs too (``outputs["id"]``), as in a stack export.
        out["id"] = _WORKLOAD_OUTPUTS[type_](_Registration(type_, name, inputs, account, region, partition), out)
        return out["id"], out
    out.setdefault("arn", f"{arn_prefix}:{type_.split(':')[1].split('/')[0]}:{region}:{account}:{name}")
    return f"{name}-{_short_hash(name, type_)}", out


class AwsMocks(pulumi.runtime.Mocks):
    """Answers registrations like AWS, tracking which account and region each provider points at."""

    def __init__(self) -> None:
        self.run = ProgramRun()
        self.providers: dict[str, tuple[str, str]] = {}
        self._parents: dict[tuple[str, str], str | None] = {}
        self._ignored: dict[tuple[str, str], tuple[str, ...]] = {}
        self._dependencies: dict[tuple[str, str], tuple[str, ...]] = {}
        self._lifecycle: dict[tuple[str, str], tuple[str, ...]] = {}

    def note_parent(self, type_: str, name: str, parent: str | None, ignore_changes: tuple[str, ...] = (),
                    dependencies: tuple[str, ...] = (), lifecycle: tuple[str, ...] = ()) -> None:
        if lifecycle:
            self._lifecycle[(type_, name)] = lifecycle
        self._parents[(type_, name)] = parent or None
        if ignore_changes:
            self._ignored[(type_, name)] = ignore_changes
        if dependencies:
            self._dependencies[(type_, name)] = dependencies

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
                                           account, None if args.typ.startswith(GLOBAL_TYPES) else
                                           outputs.get("region", region),
                                           self._ignored.get((args.typ, args.name), ()),
                                           self._dependencies.get((args.typ, args.name), ()),
                                           self._lifecycle.get((args.typ, args.name), ())))
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        # The program makes one data-source call, for the availability zones of a region it creates a VPC in (their
        # letters differ per account); every other fact comes from the stack config. Failing loudly on anything
        # else keeps it that way (a lookup needs credentials during preview in a pull request).
        provider_id = (args.provider or "").rsplit("::", 1)[-1] or None
        account, region = self.providers.get(provider_id or "", (None, None))
        self.run.invokes.append(Invoked(args.token, dict(args.args), provider_id, account, region))
        if args.token != AVAILABILITY_ZONES_INVOKE:
            raise AssertionError(f"unexpected invoke {args.token}")
        if region is None:
            raise AssertionError(f"{args.token} without an explicit provider: it would ask the default credentials")
        return availability_zones(args.args.get("region") or region, args.args), []


def _partition(region: str | None) -> str:
    if region and region.startswith("cn-"):
        return "aws-cn"
    if region and region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    def RegisterResource(self, request: Any) -> Any:  # gRPC method name, fixed by the base class
        self.mocks.note_parent(request.type, request.name, request.parent, tuple(request.ignoreChanges),
                               tuple(sorted(request.dependencies)),
                               tuple(o for o in ("deleteBeforeReplace", "retainOnDelete") if getattr(request, o)))
        return super().RegisterResource(request)


def _thread_event_loop(loops: list[asyncio.AbstractEventLoop]) -> None:
    """Give an executor thread, as it starts and so in its empty context, the event loop the MockMonitor needs."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loops.append(loop)


def run_program(
    config: Mapping[str, Any],
    *,
    stack: str = "dev",
    project: str = "crossdeploy",
    program: Path = PROGRAM,
) -> ProgramRun:
    """Run ``__main__.py`` under the mocks with ``config`` (``namespace:key`` -> value) and return what it did.

    Exceptions raised by the program (a ``ConfigError`` for bad config) propagate unchanged.

    The cyclic garbage collector is paused while the program runs, and the run's object graph is released and
    collected once at its end (unless the caller had paused the collector itself, as ``bench_program.py --gc off``
    does). Nearly everything a run allocates stays alive until the run ends: every resource is reachable from the
    stack (``Resource._childResources``) with its Outputs and their asyncio tasks and contexts, 1.45 million objects
    at 100 services. With the collector running, its full collections (14-16 a run, up to 3.6 s each) rescanned
    that growing graph for little garbage: 22-30 s of a 38-47 s run at 100 services. Paused, a run holds ~30 MB
    more garbage until it ends (peak RSS ~900 MB against ~875 MB) and the one collection at the end takes ~5 s:
    100 services now run in ~21 s, 300 in 58 s instead of 106 s (bench_program.py on a 2-CPU machine).
    """
    collecting = gc.isenabled()
    gc.disable()
    # An event loop keeps a copy of the context it was created in for as long as it lives (its self-pipe reader's
    # handle). Created inside a run, in a context whose root is the run's stack, a loop would keep the stack and so
    # the run's whole graph alive after the run. So the main thread's loop is created in an empty context, and the
    # MockMonitor's registrations run on executor threads of this run only, each given its loop as it starts; the
    # threads end with the run, so no worker still holds a registration (with its context) when the graph is
    # collected.
    loop = contextvars.Context().run(_ensure_event_loop)
    thread_loops: list[asyncio.AbstractEventLoop] = []
    executor = ThreadPoolExecutor(thread_name_prefix="asyncio", initializer=_thread_event_loop,
                                  initargs=(thread_loops,))
    loop.set_default_executor(executor)
    try:
        return _run_program(config, stack=stack, project=project, program=program)
    finally:
        executor.shutdown(wait=True)
        for thread_loop in thread_loops:
            thread_loop.close()
        # The stack stays the root in this thread's context after the run, and holds the whole graph through its
        # children: left there, the graph outlived the run until the next one started (1.45 million objects,
        # ~650 MB at 100 services), slowing that run's collections and inflating a test worker's memory (the test
        # suite's largest process peaked at 807 MB with it, 645 MB without).
        pulumi_settings.ROOT.set(None)
        pulumi_settings.SETTINGS.outputs.clear()
        pulumi_settings.SETTINGS.rpc_manager.clear()
        if collecting:
            gc.enable()
            # The run's objects are all still in the youngest generation (the collector was paused), so collecting
            # that generation alone frees the run's garbage without rescanning the older objects (the imported
            # modules, a test session's fixtures): 0.17 s less per run.
            gc.collect(0)


def _run_program(config: Mapping[str, Any], *, stack: str, project: str, program: Path) -> ProgramRun:
    mocks = AwsMocks()
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=_RecordingMonitor(mocks))
    # A run that failed leaves its failed outputs and RPCs behind; without this the next run re-raises their errors
    # (the same reset pulumi.runtime.test does).
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()
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
    """The ``config:`` block of a ``Pulumi.<stack>.yaml`` file, as Pulumi would hand it to the program.

    Read as strictly as the Pulumi CLI reads it (a duplicate key is an error; see :mod:`offline.stack_file`, which
    the offline plan shares): tests and the plan must never run a stack file ``pulumi up`` would refuse. Raises
    ``offline.stack_file.StackFileError`` (a ValueError) naming the file and line."""
    # Imported here: run_program's callers that never read a stack file need not load PyYAML.
    from offline.stack_file import read_config

    return read_config(stack_file)
