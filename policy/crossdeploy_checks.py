"""The checks behind crossdeploy's policy pack: a resource's properties in, human-readable violations out.

Each check is a plain function so the tests can call it on hand-written properties and on what the program registers
under the offline mocks; crossdeploy_policies.py wraps each one in a pulumi_policy validate callback. Messages name
the resource, the document and statement (Sid) and the action, so a failing preview says what to change.

Under the Pulumi CLI the properties arrive wrapped in pulumi_policy's unknown-checking proxies: Mappings and
Sequences, not dicts and lists, that raise UnknownValueError when a value is not known yet (during a preview). The
checks therefore test for ``Mapping``/``Sequence``, never ``dict``/``list``, and let UnknownValueError propagate: the
SDK then reports "can't run during preview" instead of a check judging a value it cannot see.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from crossdeploy_standards import UNSCOPABLE
from pulumi_policy.proxy import UnknownValueError

Props = Mapping[str, Any]

# Inputs that hold an IAM policy document (JSON text). Every resource type is scanned for them, not a fixed list of
# types, so a document-bearing type the program starts using later (ECR registry policies, SQS queue policies, log
# resource policies...) is covered without touching the pack. Role.inlinePolicies[].policy is handled besides. Only
# these inputs are read: touching every input would trip on values unknown during a preview.
POLICY_FIELDS = ("policy", "assumeRolePolicy", "policyDocument")
# A key policy is attached to one key, and in it Resource "*" means "this key" (AWS requires exactly "*"), so rule 2
# (Resource "*" only for unscopable actions) does not apply to it. A replica key carries a key policy of its own.
KEY_POLICY_TYPES = frozenset({"aws:kms/key:Key", "aws:kms/replicaKey:ReplicaKey"})
KMS_KEY = "aws:kms/key:Key"
BUCKET_TYPES = frozenset({"aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"})
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
PIPELINE = "aws:codepipeline/pipeline:Pipeline"
LOAD_BALANCER_TYPES = frozenset({"aws:lb/loadBalancer:LoadBalancer", "aws:alb/loadBalancer:LoadBalancer"})
PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
# A key ARN, never an alias ARN, alias name or bare key id: CodePipeline resolves aliases and ids in the account of
# whoever reads the artifacts, so a cross-account deploy action would look for the key in its own account and fail.
KEY_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:kms:[a-z]{2}(?:-[a-z]+)+-\d+:\d{12}:key/[A-Za-z0-9-]+")
DEPLOY_STAGE = re.compile(r"Deploy-(?P<env>.+)")
BAKE_ACTION = "Bake"
# Names Pulumi gives the default provider of a package: "default", or "default_<version>" (default_7_51_1).
DEFAULT_PROVIDER_NAME = re.compile(r"default(_\d+_\d+_\d+.*)?")


# --------------------------------------------------------------------------- helpers


def as_list(value: Any) -> list[Any]:
    """IAM and Pulumi allow a single value where a list is expected; strings and mappings are single values."""
    if value is None:
        return []
    if isinstance(value, str | Mapping) or not isinstance(value, Sequence):
        return [value]
    return list(value)


@dataclass(frozen=True)
class Document:
    """One IAM policy document of a resource, with where it was found for the messages."""

    where: str
    statements: tuple[Mapping[str, Any], ...]


def _parse_document(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None  # not JSON: not a policy document (some `policy` inputs are other things)
    if isinstance(value, Mapping) and "Statement" in value:
        return value
    return None  # JSON of another kind, e.g. an ECR lifecycle policy ({"rules": [...]})


def iam_documents(resource_type: str, name: str, props: Props) -> list[Document]:
    """Every IAM policy document among a resource's properties."""
    found: list[tuple[str, Any]] = [(field, props[field]) for field in POLICY_FIELDS if field in props]
    for index, inline in enumerate(as_list(props.get("inlinePolicies"))):
        if isinstance(inline, Mapping) and "policy" in inline:
            found.append((f"inlinePolicies[{index}]({inline.get('name') or ''})", inline["policy"]))
    documents = []
    for field, value in found:
        doc = _parse_document(value)
        if doc is not None:
            statements = tuple(s for s in as_list(doc.get("Statement")) if isinstance(s, Mapping))
            documents.append(Document(f"{resource_type} {name}.{field}", statements))
    return documents


def _sid(statement: Mapping[str, Any], index: int) -> str:
    return str(statement.get("Sid") or f"#{index}")


def _allows(document: Document) -> list[tuple[str, Mapping[str, Any]]]:
    return [(_sid(s, i), s) for i, s in enumerate(document.statements) if s.get("Effect") == "Allow"]


def _wildcard(pattern: str) -> re.Pattern[str]:
    # IAM wildcards: '*' any run of characters, '?' one character.
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), re.IGNORECASE)


# --------------------------------------------------------------------------- rule 1: no wildcard actions


def wildcard_action_violations(resource_type: str, name: str, props: Props) -> list[str]:
    """An Allow names every action it grants: none contains a wildcard ('*' or '?', so neither "*", "s3:*" nor
    "s3:Get*"), and none uses NotAction. A wildcard also grants the actions AWS adds to the service later."""
    problems = []
    for document in iam_documents(resource_type, name, props):
        for sid, statement in _allows(document):
            if "NotAction" in statement:
                problems.append(f"{document.where}: statement {sid}: Allow with NotAction grants every action "
                                f"but {as_list(statement['NotAction'])}")
            for action in as_list(statement.get("Action")):
                if not isinstance(action, str) or "*" in action or "?" in action:
                    problems.append(f"{document.where}: statement {sid}: Allow of wildcard action {action!r}; "
                                    "name each action")
    return problems


# --------------------------------------------------------------------------- rule 2: Resource "*" only if unscopable


def resource_star_violations(resource_type: str, name: str, props: Props,
                             unscopable: frozenset[str] = UNSCOPABLE) -> list[str]:
    """An Allow on Resource "*" (or with NotResource) grants only actions AWS cannot scope to a resource."""
    if resource_type in KEY_POLICY_TYPES:
        return []  # in a key policy "*" is the key itself (see KEY_POLICY_TYPES)
    allowed = {action.lower() for action in unscopable}
    problems = []
    for document in iam_documents(resource_type, name, props):
        for sid, statement in _allows(document):
            # Statements without Resource (trust policies, ECR repository policies) apply to their own resource.
            if "NotResource" in statement:
                problems.append(f"{document.where}: statement {sid}: Allow with NotResource grants every resource "
                                f"but {as_list(statement['NotResource'])}")
            if "*" not in as_list(statement.get("Resource")):
                continue
            for action in as_list(statement.get("Action")):
                if str(action).lower() not in allowed:
                    problems.append(f'{document.where}: statement {sid}: {action} allowed on Resource "*"; name its '
                                    "ARNs (only actions with no resource type, crossdeploy_standards.UNSCOPABLE, may "
                                    'use "*")')
    return problems


# --------------------------------------------------------------------------- rule 3: PassRole names the service


def _names_passed_to_service(condition: Any) -> bool:
    if not isinstance(condition, Mapping):
        return False
    for operator, tests in condition.items():
        # Only plain positive operators pin the service: a negation, an ...IfExists or a ForAllValues: set operator
        # is also satisfied when the role goes to some other service.
        if operator not in ("StringEquals", "StringLike") or not isinstance(tests, Mapping):
            continue
        for key, values in tests.items():
            services = as_list(values)
            if key.lower() == "iam:passedtoservice" and services and all(
                    isinstance(s, str) and s and "*" not in s and "?" not in s for s in services):
                return True
    return False


def pass_role_violations(resource_type: str, name: str, props: Props) -> list[str]:
    """iam:PassRole is allowed only under an iam:PassedToService condition: without it the role can be handed to any
    service that accepts roles (Lambda, EC2, CodeBuild...) and its permissions used from there."""
    problems = []
    for document in iam_documents(resource_type, name, props):
        for sid, statement in _allows(document):
            for action in as_list(statement.get("Action")):
                if (isinstance(action, str) and _wildcard(action).fullmatch("iam:PassRole")
                        and not _names_passed_to_service(statement.get("Condition"))):
                    problems.append(f"{document.where}: statement {sid}: allows {action} without a StringEquals "
                                    "iam:PassedToService condition naming the service the role is for")
    return problems


# --------------------------------------------------------------------------- rule 4: buckets TLS-only and private


class StackResource(Protocol):
    """What the stack checks read of a resource; pulumi_policy's PolicyResource has it."""

    resource_type: str
    name: str
    urn: str
    props: Mapping[str, Any]
    property_dependencies: Mapping[str, Sequence[Any]]


def bucket_name(bucket: StackResource) -> Any:
    return bucket.props.get("bucket") or bucket.props.get("id")


def attached_to(resource: StackResource, bucket: StackResource) -> bool:
    """Whether a bucket policy or public access block is for ``bucket``: its ``bucket`` input came from that bucket
    (the engine's property dependencies: known even during a preview, before the bucket exists), or holds its name
    (what the bucket's id is, once created)."""
    if any(getattr(dep, "urn", dep) == bucket.urn for dep in resource.property_dependencies.get("bucket") or ()):
        return True
    try:
        target = resource.props.get("bucket")
    except UnknownValueError:
        return False  # not known yet; had it come from this bucket, the dependency above would say so
    return target is not None and target == bucket_name(bucket)


def _everyone(principal: Any) -> bool:
    return principal == "*" or (isinstance(principal, Mapping) and "*" in as_list(principal.get("AWS")))


def _secure_transport_false(condition: Any) -> bool:
    tests = condition.get("Bool") if isinstance(condition, Mapping) else None
    if not isinstance(tests, Mapping):
        return False
    return any(key.lower() == "aws:securetransport" and any(str(v).lower() == "false" for v in as_list(values))
               for key, values in tests.items())


def denies_insecure_transport(statements: Sequence[Mapping[str, Any]], bucket: str) -> bool:
    """A Deny of every S3 action, to everyone, on the bucket and its objects, when aws:SecureTransport is false."""
    for statement in statements:
        if statement.get("Effect") != "Deny" or not _everyone(statement.get("Principal")):
            continue
        if not {str(a).lower() for a in as_list(statement.get("Action"))} & {"*", "s3:*"}:
            continue
        patterns = [_wildcard(str(p)) for p in as_list(statement.get("Resource"))]
        covers = any(all(any(p.fullmatch(arn) for p in patterns)
                         for arn in (f"arn:{partition}:s3:::{bucket}", f"arn:{partition}:s3:::{bucket}/any/key"))
                     for partition in PARTITIONS)
        if covers and _secure_transport_false(statement.get("Condition")):
            return True
    return False


def _buckets(resources: Sequence[StackResource]) -> list[StackResource]:
    return [r for r in resources if r.resource_type in BUCKET_TYPES]


def tls_only_violations(resources: Sequence[StackResource]) -> list[tuple[str, str]]:
    """(bucket URN, message) for every bucket whose policy does not refuse plain-HTTP requests."""
    problems = []
    for bucket in _buckets(resources):
        name = bucket_name(bucket)
        statements: list[Mapping[str, Any]] = []
        policies = [r for r in resources if r.resource_type == BUCKET_POLICY and attached_to(r, bucket)]
        for holder in [*policies, bucket]:  # a bucket's own (deprecated) `policy` input counts too
            for document in iam_documents(holder.resource_type, holder.name, holder.props):
                statements.extend(document.statements)
        where = f"{bucket.resource_type} {bucket.name} ({name})"
        if not policies and not statements:
            problems.append((bucket.urn, f"{where}: no {BUCKET_POLICY}; it needs one denying requests without TLS"))
        elif not denies_insecure_transport(statements, str(name)):
            problems.append((bucket.urn, f"{where}: no bucket policy statement denies s3:* to every principal on the "
                                         'bucket and its objects when {"Bool": {"aws:SecureTransport": "false"}}'))
    return problems


def public_access_violations(resources: Sequence[StackResource]) -> list[tuple[str, str]]:
    """(bucket URN, message) for every bucket without a public access block setting all four flags."""
    problems = []
    for bucket in _buckets(resources):
        where = f"{bucket.resource_type} {bucket.name} ({bucket_name(bucket)})"
        blocks = [r for r in resources if r.resource_type == PUBLIC_ACCESS_BLOCK and attached_to(r, bucket)]
        if not blocks:
            problems.append((bucket.urn, f"{where}: no {PUBLIC_ACCESS_BLOCK}"))
            continue
        missing = sorted({flag for flag in PUBLIC_ACCESS_FLAGS if not any(b.props.get(flag) is True for b in blocks)})
        if missing:
            problems.append((bucket.urn, f"{where}: public access block leaves {', '.join(missing)} not true"))
    return problems


# --------------------------------------------------------------------------- rule 5: KMS keys rotate


def key_rotation_violations(resource_type: str, name: str, props: Props) -> list[str]:
    """Customer managed keys rotate their key material yearly (a replica follows its primary's rotation)."""
    if resource_type != KMS_KEY or props.get("enableKeyRotation") is True:
        return []
    return [f"{KMS_KEY} {name}: enableKeyRotation is {props.get('enableKeyRotation')!r}, must be true"]


# --------------------------------------------------------------------------- rule 6: artifact stores use key ARNs


def artifact_store_violations(resource_type: str, name: str, props: Props) -> list[str]:
    """Every artifact store of a pipeline is encrypted with a customer managed KMS key named by its key ARN."""
    if resource_type != PIPELINE:
        return []
    stores = as_list(props.get("artifactStores"))
    if not stores:
        return [f"{PIPELINE} {name}: no artifactStores"]
    problems = []
    for index, store in enumerate(stores):
        region = store.get("region") if isinstance(store, Mapping) else None
        where = f"{PIPELINE} {name}: artifactStores[{index}] ({region or 'pipeline region'})"
        key = store.get("encryptionKey") if isinstance(store, Mapping) else None
        if not isinstance(key, Mapping):
            problems.append(f"{where}: no encryptionKey, so the AWS managed S3 key, which no other account can use")
            continue
        if key.get("type") != "KMS":
            problems.append(f"{where}: encryptionKey.type is {key.get('type')!r}, must be 'KMS'")
        key_id = key.get("id")
        if not isinstance(key_id, str) or not KEY_ARN.fullmatch(key_id):
            problems.append(f"{where}: encryptionKey.id {key_id!r} is not a KMS key ARN "
                            "(arn:aws:kms:<region>:<account>:key/<id>); an alias or key id is looked up in the reading "
                            "account, so cross-account deploy actions cannot decrypt")
    return problems


# --------------------------------------------------------------------------- rule 7: approval and bake before prod


def is_prod(environment: str) -> bool:
    env = environment.lower()
    return env in ("prod", "production") or env.startswith("prod-") or env.endswith("-prod")


def _actions(stage: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [a for a in as_list(stage.get("actions")) if isinstance(a, Mapping)]


def _run_order(action: Mapping[str, Any]) -> int:
    return int(action.get("runOrder") or 1)  # CodePipeline's default; numbers arrive as floats from the engine


def approval_and_bake_violations(resource_type: str, name: str, props: Props) -> list[str]:
    """Every ``Deploy-<env>`` stage of a prod environment (``prod``, ``production``, ``prod-*``, ``*-prod``) or of an
    environment with an approval (an earlier ``Approve-<env>`` stage) comes right after its ``Approve-<env>`` stage,
    which holds a Manual approval action, and has a ``Bake`` action (Invoke, Lambda) after its Deploy action: the
    alarm bake that fails the stage, and so rolls the environment back, when its alarms fire after the deployment."""
    if resource_type != PIPELINE:
        return []
    stages = [s for s in as_list(props.get("stages")) if isinstance(s, Mapping)]
    names = [str(s.get("name") or "") for s in stages]
    problems = []
    for index, stage in enumerate(stages):
        match = DEPLOY_STAGE.fullmatch(names[index])
        if not match:
            continue
        env = match["env"]
        approve = f"Approve-{env}"
        if not is_prod(env) and approve not in names[:index]:
            continue
        where = f"{PIPELINE} {name}: stage {names[index]}"
        previous = names[index - 1] if index else None
        if previous != approve:
            problems.append(f"{where}: must come right after an {approve} stage (after: {previous})")
        elif not any((a.get("category"), a.get("provider")) == ("Approval", "Manual")
                     for a in _actions(stages[index - 1])):
            problems.append(f"{where}: stage {approve} has no Manual approval action (category Approval, provider "
                            "Manual)")
        actions = _actions(stage)
        bakes = [a for a in actions if a.get("name") == BAKE_ACTION]
        if not bakes:
            problems.append(f"{where}: no {BAKE_ACTION} action (category Invoke, provider Lambda) watching the "
                            "environment's alarms after the deployment")
        deploy_orders = [_run_order(a) for a in actions if str(a.get("name") or "").startswith("Deploy")]
        for bake in bakes:
            if (bake.get("category"), bake.get("provider")) != ("Invoke", "Lambda"):
                problems.append(f"{where}: action {BAKE_ACTION} is {bake.get('category')}/{bake.get('provider')}, "
                                "must be Invoke/Lambda")
            if deploy_orders and _run_order(bake) <= max(deploy_orders):
                problems.append(f"{where}: action {BAKE_ACTION} has runOrder {_run_order(bake)}, not after the Deploy "
                                f"action (runOrder {max(deploy_orders)})")
    return problems


# --------------------------------------------------------------------------- rule 8: explicit providers


class ProviderInfo(Protocol):
    """What the provider check reads; pulumi_policy's PolicyProviderResource has it."""

    name: str
    urn: str


def provider_violations(resource_type: str, name: str, provider: ProviderInfo | None) -> list[str]:
    """An AWS resource names its provider: the default one takes the credentials and region of whoever runs Pulumi,
    which in a multi-account program deploys into the wrong account."""
    if not resource_type.startswith("aws:"):
        return []
    if provider is None:
        return [f"{resource_type} {name}: registered without provider information"]
    provider_name = provider.name or provider.urn.rsplit("::", 1)[-1]
    if DEFAULT_PROVIDER_NAME.fullmatch(provider_name):
        return [f"{resource_type} {name}: uses the default AWS provider ({provider.urn}); pass the provider of the "
                "account and region it belongs to"]
    return []


# --------------------------------------------------------------------------- advisory: load balancers


def _application_load_balancer(resource_type: str, props: Props) -> bool:
    return resource_type in LOAD_BALANCER_TYPES and (props.get("loadBalancerType") or "application") == "application"


def access_log_violations(resource_type: str, name: str, props: Props) -> list[str]:
    """An application load balancer writes access logs: the record of who called what, for incidents and audits."""
    if not _application_load_balancer(resource_type, props):
        return []
    logs = props.get("accessLogs")
    if isinstance(logs, Mapping) and logs.get("enabled") is True and logs.get("bucket"):
        return []
    return [f"{resource_type} {name}: access logs are not enabled (accessLogs.enabled with a bucket)"]


def deletion_protection_violations(resource_type: str, name: str, props: Props) -> list[str]:
    """An application load balancer is protected from deletion: deleting it drops all traffic of its services."""
    if not _application_load_balancer(resource_type, props) or props.get("enableDeletionProtection") is True:
        return []
    return [f"{resource_type} {name}: enableDeletionProtection is not true"]
