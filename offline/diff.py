"""Offline diff: what ``pulumi preview --diff`` would show for a change, without the Pulumi CLI or AWS credentials.

Usage::

    python -m offline.plan prod --diff origin/main                     # plain text
    python -m offline.plan prod --diff origin/main --format markdown   # a collapsible pull-request comment

The program runs twice under the offline mocks: as of the git ref, in a temporary ``git worktree`` (its own
``components/``, ``handlers/``, mocks and stack file; removed afterwards, the working tree is never touched), and as
the working tree has it. The two sets of registrations are compared resource by resource:

* **Identity** is the URN without stack and project: parent URN, type and logical name, as the mocks record them
  (``Recorded``). A renamed or re-parented resource is a delete plus a create, as for Pulumi without aliases.
* **Inputs** are compared property by property, with the path of each change
  (``containerDefinitions[0].environment[2].value: "info" → "debug"``). String inputs holding a JSON object or array
  (policies, container definitions, event patterns, deploy documents) and CodeBuild ``buildspec`` YAML are compared
  as documents; lists of objects that carry a ``Sid``/``name``/``id`` are matched on it, so one new IAM statement is
  one change, not a shifted list. Multi-line text (handler code, scripts) shows as a unified diff. Properties the
  registration lists in ``ignore_changes`` are left out, as Pulumi leaves them out.
* **Assets and archives** (Lambda code, the deploy documents) are compared by content, file by file; a file holding
  JSON is diffed as JSON.
* **Secrets** (Pulumi secret inputs: ``Output.secret``, secret config) print as ``[secret]``. Whether a secret changed
  is decided on an HMAC under a key made for this one comparison; neither the value nor a hash of it is ever printed.
* **Names and ids the mocks make up** (random suffixes of auto-named resources, EC2 ids, the hex in ARNs) are not
  changes: each made-up hex run is replaced by ``*`` where Pulumi's auto-name pattern ``<logical name>-<suffix>``
  already says whose it is, else by ``<logical name>`` of the resource that owns it. Neither depends on how the mocks
  compute their hashes (a new hash in ``offline/mocks.py`` changes nothing here), and two security groups' ids stay
  distinct. No hook in the mocks is needed: a made-up part is one an output has and the registration's inputs do not.
* **Replace** is an estimate, and says so: the provider decides at ``pulumi preview`` from its schema, which is not
  available offline. A resource is "replace" when it moves to another account or region, or when a property in
  :data:`REPLACE_ON_CHANGE` (or a ``name``/``namePrefix`` of an AWS resource: almost no AWS resource can be renamed)
  changes; any other change is "update". Task definitions are immutable (every change is a new revision), so any change
  to one is a replace.

Exit status: 0 with or without changes; 2 for a bad stack file (here or at the ref) or a bad git ref; 1 if the program
at the ref fails in some other way.

This module also runs *inside the ref's worktree* (:func:`dump_run`, loaded there by file path), against that
revision's ``offline.mocks``; so it imports nothing of the project at module level.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pulumi
import yaml
from pulumi.runtime import rpc

if TYPE_CHECKING:
    from offline.mocks import ProgramRun, Recorded

ROOT = Path(__file__).resolve().parents[1]

HIDDEN = "[secret]"
"""How a secret value prints. In normalised data a secret is ``{HIDDEN: <hmac>}``, compared but never printed."""
HMAC_KEY_ENV = "CROSSDEPLOY_DIFF_HMAC_KEY"
"""Hands the comparison's HMAC key to the process running the ref (an environment variable: not in ``ps`` output)."""

# The mocks' made-up parts are hex runs: 7 (auto-name suffixes), 16-17 (EC2 ids, ELB ARN parts), 32 (KMS key ids) or
# 36 digits, uuid groups, an ALB's 10 decimal digits. Account ids are 12 decimal digits and are excluded by value.
_HEX_RUN = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{7,}(?![0-9A-Fa-f])")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOP_PROPERTY = re.compile(r'[A-Za-z_][A-Za-z0-9_]*|\["(?:[^"\\]|\\.)*"\]')

# Keys that identify the elements of a list of objects (IAM statements by Sid, container definitions, environment
# variables and deploy-document environments by name): matching on them makes an insertion one change.
LIST_IDENTITY_KEYS = ("Sid", "name", "Name", "id", "Id", "key", "Key")

ALL = frozenset({"*"})
"""Every input forces a replacement (except :data:`UPDATABLE_EVERYWHERE`)."""
UPDATABLE_EVERYWHERE = frozenset({"tags", "tagsAll", "skipDestroy", "trackLatest"})
"""Properties that never replace (tags are always updated in place; skipDestroy/trackLatest are Pulumi-side)."""

REPLACE_ON_CHANGE: dict[str, frozenset[str]] = {
    # Task definitions are immutable: any change registers a new revision (Pulumi shows a replace).
    "aws:ecs/taskDefinition:TaskDefinition": ALL,
    # A Lambda permission is one statement of the function's resource policy, added and removed, never edited.
    "aws:lambda/permission:Permission": ALL,
    # CodeDeploy deployment configs cannot be modified, only created and deleted.
    "aws:codedeploy/deploymentConfig:DeploymentConfig": ALL,
    "aws:codedeploy/deploymentGroup:DeploymentGroup": frozenset({"appName"}),
    "aws:iam/role:Role": frozenset({"path"}),
    "aws:iam/rolePolicy:RolePolicy": frozenset({"role"}),
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": frozenset({"role", "policyArn"}),
    "aws:s3/bucket:Bucket": frozenset({"bucket", "bucketPrefix"}),
    "aws:s3/bucketObjectv2:BucketObjectv2": frozenset({"bucket", "key"}),
    "aws:kms/key:Key": frozenset({"multiRegion", "customerMasterKeySpec", "keyUsage"}),
    "aws:kms/replicaKey:ReplicaKey": frozenset({"primaryKeyArn"}),
    "aws:ecr/repositoryPolicy:RepositoryPolicy": frozenset({"repository"}),
    "aws:ecr/lifecyclePolicy:LifecyclePolicy": frozenset({"repository"}),
    "aws:ecs/service:Service": frozenset({"cluster"}),
    "aws:ec2/vpc:Vpc": frozenset({"cidrBlock"}),
    "aws:ec2/subnet:Subnet": frozenset({"vpcId", "cidrBlock", "availabilityZone"}),
    "aws:ec2/securityGroup:SecurityGroup": frozenset({"vpcId", "description"}),
    "aws:ec2/natGateway:NatGateway": frozenset({"subnetId", "allocationId"}),
    "aws:lb/loadBalancer:LoadBalancer": frozenset({"internal", "loadBalancerType"}),
    "aws:lb/targetGroup:TargetGroup": frozenset({"port", "protocol", "vpcId", "targetType"}),
    "aws:cloudwatch/eventTarget:EventTarget": frozenset({"rule", "targetId", "eventBusName"}),
    "aws:sns/topicSubscription:TopicSubscription": frozenset({"topic", "protocol", "endpoint"}),
    "aws:appautoscaling/target:Target": frozenset({"resourceId", "scalableDimension", "serviceNamespace"}),
    "aws:appautoscaling/policy:Policy": frozenset({"resourceId", "scalableDimension", "serviceNamespace"}),
    # An ACM certificate's names and validation are fixed at request: a new host under a domain is a new
    # certificate (created, validated and swapped into the listener before the old one goes).
    "aws:acm/certificate:Certificate": frozenset({"domainName", "subjectAlternativeNames", "validationMethod",
                                                  "keyAlgorithm"}),
    "aws:acm/certificateValidation:CertificateValidation": ALL,
    # A record set is keyed by zone, name and type (and set identifier): another zone is another record; the name
    # is covered by the rule for every ``name``. A new set identifier the provider applies as delete and create in
    # one change batch, which Pulumi shows as an update.
    "aws:route53/record:Record": frozenset({"zoneId"}),
}
"""Resource type -> top-level input properties AWS cannot change in place (a new value means delete and create).

Not the provider's schema (not available offline): the types crossdeploy registers, from the AWS API references.
Every ``aws:`` type also replaces on ``name``/``namePrefix``, and every ``aws:s3/`` type on ``bucket``. A property
missing here shows as an update; ``pulumi preview`` has the last word."""

SHOW_WIDTH = 160
"""A value longer than this (as JSON) is cut with ``…``: the path says where, the reviewer opens the file for more."""
MAX_TEXT_LINES = 80
"""Lines of one multi-line text diff (handler code) shown before ``… N more lines``."""
MARKDOWN_LIMIT = 30_000
"""Characters of one stack's Markdown: a PR comment holds 65,536, and the workflow posts two stacks in one."""
MARKDOWN_GROUP_LINES = 150
"""Resources listed in one group of additions or deletions (a new environment adds hundreds); the count has the rest."""

Op = Literal["create", "update", "replace", "delete"]
SYMBOLS: dict[str, str] = {"create": "+", "update": "~", "replace": "+-", "delete": "-"}
# Riskiest first: a reviewer should meet replacements and deletions before the routine updates and additions.
OP_ORDER: dict[str, int] = {"replace": 0, "delete": 1, "update": 2, "create": 3}

LEGEND = (
    "Legend: + create, ~ update in place, +- replace (delete and create), - delete.",
    "Replace is an offline estimate (the AWS provider decides at `pulumi preview`): a resource moving to another "
    "account or region, or a change to a property AWS cannot change in place (names, task definitions, …: "
    "REPLACE_ON_CHANGE in offline/diff.py), is marked \"forces replacement\"; every other change is an update.",
    "Names and ids the offline mocks make up show as `*` (after the logical name, in auto-names) or `<logical name>` "
    "of the resource they belong to; secret values as [secret]. Assets are compared by content, JSON and buildspec "
    "YAML as documents; ignore_changes properties are left out.",
)


# --------------------------------------------------------------------------------------------------------------
# The diff
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One changed input, at its path (``containerDefinitions[0].cpu``, ``source["deploy.json"].service``)."""

    path: str
    kind: Literal["add", "remove", "update"]
    old: Any = None
    new: Any = None
    replaces: bool = False
    """The change forces a replacement (see :func:`forces_replacement`)."""
    lines: tuple[str, ...] = ()
    """For multi-line text: a unified diff (hunks only) instead of old -> new."""


@dataclass(frozen=True)
class ResourceDiff:
    op: Op
    type: str
    name: str
    parent: str
    """Parent URN without stack and project (``crossdeploy:workload:Workload::workload-qa-us-east-2``); ``""`` at the
    stack's root."""
    account: str | None
    region: str | None
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True)
class Diff:
    resources: tuple[ResourceDiff, ...]
    unchanged: int

    def count(self, op: Op) -> int:
        return sum(1 for r in self.resources if r.op == op)

    def summary(self) -> str:
        """``N to add, M to change, K to replace, L to delete``."""
        return (f"{self.count('create')} to add, {self.count('update')} to change, {self.count('replace')} to "
                f"replace, {self.count('delete')} to delete")

    @property
    def empty(self) -> bool:
        return not self.resources


@dataclass(frozen=True)
class Snapshot:
    """One registration, normalised for comparison."""

    type: str
    name: str
    parent: str
    custom: bool
    account: str | None
    region: str | None
    inputs: dict[str, Any]
    ignore_changes: tuple[str, ...] = field(default=())


Identity = tuple[str, str, str]
"""(parent URN without stack and project, type, logical name): Pulumi's URN, less what two runs may not share."""


def strip_urn(urn: str | None) -> str:
    """``urn:pulumi:prod::crossdeploy::a$b::name`` -> ``a$b::name`` (the stack and project are not identity)."""
    if not urn:
        return ""
    parts = urn.split("::")
    return "::".join(parts[2:]) if len(parts) >= 4 else urn


def identity(resource: Recorded) -> Identity:
    return strip_urn(resource.parent), resource.type, resource.name


def diff_runs(old: ProgramRun, new: ProgramRun, *, secret_key: bytes | None = None) -> Diff:
    """What changes from ``old`` to ``new``: pure, no git, no files. ``secret_key`` must be the one ``old`` was
    normalised with if it comes from :func:`dump_run` (a run in this process needs none)."""
    key = secret_key or _PROCESS_KEY
    before = snapshot(old, key)
    after = snapshot(new, key)
    resources: list[ResourceDiff] = []
    unchanged = 0
    for ident, now in after.items():
        was = before.get(ident)
        if was is None:
            resources.append(_resource_diff("create", now))
            continue
        changes = resource_changes(was, now)
        if not changes:
            unchanged += 1
            continue
        op: Op = "replace" if any(c.replaces for c in changes) else "update"
        resources.append(_resource_diff(op, now, changes))
    resources += [_resource_diff("delete", was) for ident, was in before.items() if ident not in after]
    resources.sort(key=lambda r: (OP_ORDER[r.op], r.type, r.name, r.parent))
    return Diff(tuple(resources), unchanged)


def _resource_diff(op: Op, snap: Snapshot, changes: Sequence[Change] = ()) -> ResourceDiff:
    return ResourceDiff(op, snap.type, snap.name, snap.parent, snap.account, snap.region, tuple(changes))


def resource_changes(old: Snapshot, new: Snapshot) -> list[Change]:
    """The input changes of one resource, each marked whether it forces a replacement."""
    changes = []
    # The provider (so the account and region) is not an input, but a resource cannot move: AWS creates a new one.
    for label, was, now in (("(account)", old.account, new.account), ("(region)", old.region, new.region)):
        if was != now:
            changes.append(Change(label, "update", was, now, replaces=True))
    found: list[Change] = []
    diff_values(old.inputs, new.inputs, "", found)
    for change in found:
        if not ignored(change.path, new.ignore_changes):
            changes.append(replace(change, replaces=forces_replacement(new.type, change.path)))
    return changes


def ignored(path: str, ignore_changes: Sequence[str]) -> bool:
    """Whether ``path`` is (inside) a property the registration's ``ignore_changes`` names."""
    return any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in ignore_changes)


def top_property(path: str) -> str:
    match = _TOP_PROPERTY.match(path)
    return match.group() if match else path


def forces_replacement(type_: str, path: str) -> bool:
    """Whether a change at ``path`` replaces a resource of ``type_``: crossdeploy's table, not the provider's schema
    (see :data:`REPLACE_ON_CHANGE`)."""
    prop = top_property(path)
    if prop in UPDATABLE_EVERYWHERE:
        return False
    if type_.startswith("aws:") and prop in ("name", "namePrefix"):
        return True
    if type_.startswith("aws:s3/") and prop == "bucket":
        return True
    rule = REPLACE_ON_CHANGE.get(type_, frozenset())
    return rule is ALL or prop in rule


def diff_values(old: Any, new: Any, path: str, out: list[Change]) -> None:
    """Append the changes from ``old`` to ``new`` (normalised values) under ``path`` to ``out``."""
    if is_secret(old) or is_secret(new):
        if old != new:  # compares HMACs; both print as [secret]
            out.append(Change(path, "update", old, new))
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*new, *(k for k in old if k not in new)]:
            child = join_path(path, key)
            if key not in old:
                out.append(Change(child, "add", new=new[key]))
            elif key not in new:
                out.append(Change(child, "remove", old=old[key]))
            else:
                diff_values(old[key], new[key], child, out)
        return
    if isinstance(old, list) and isinstance(new, list):
        _diff_lists(old, new, path, out)
        return
    if isinstance(old, str) and isinstance(new, str) and ("\n" in old or "\n" in new):
        if old != new:
            out.append(Change(path, "update", old, new, lines=text_diff(old, new)))
        return
    # type() too: True == 1 in Python, but a bool becoming a number is a change.
    if type(old) is not type(new) or old != new:
        out.append(Change(path, "update", old, new))


def _diff_lists(old: list[Any], new: list[Any], path: str, out: list[Change]) -> None:
    key = _list_identity_key(old, new)

    def element_key(value: Any) -> str:
        return json.dumps(value[key]) if key else canonical(value)

    matcher = difflib.SequenceMatcher(None, [element_key(v) for v in old], [element_key(v) for v in new],
                                      autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            if key:  # same identity, maybe other content
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                    diff_values(old[i], new[j], f"{path}[{j}]", out)
            continue
        # A changed element without an identity key: pair it with the one in its place, so the change has a path.
        paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for offset in range(paired):
            diff_values(old[i1 + offset], new[j1 + offset], f"{path}[{j1 + offset}]", out)
        out.extend(Change(f"{path}[{i}]", "remove", old=old[i]) for i in range(i1 + paired, i2))
        out.extend(Change(f"{path}[{j}]", "add", new=new[j]) for j in range(j1 + paired, j2))


def _list_identity_key(old: list[Any], new: list[Any]) -> str | None:
    """A key every element of both lists has, as a string unique within its list; None if there is none."""
    elements = [*old, *new]
    if not elements or not all(isinstance(e, dict) for e in elements):
        return None
    for key in LIST_IDENTITY_KEYS:
        if all(isinstance(e.get(key), str) for e in elements) and all(
                len({e[key] for e in side}) == len(side) for side in (old, new)):
            return key
    return None


def text_diff(old: str, new: str) -> tuple[str, ...]:
    """Unified diff hunks of two texts, at most :data:`MAX_TEXT_LINES` lines."""
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=2))[2:]  # no ---/+++
    if len(lines) > MAX_TEXT_LINES:
        lines = [*lines[:MAX_TEXT_LINES], f"… {len(lines) - MAX_TEXT_LINES} more lines"]
    return tuple(lines)


def join_path(path: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


# --------------------------------------------------------------------------------------------------------------
# Normalisation: live registrations -> plain, comparable data
# --------------------------------------------------------------------------------------------------------------

_PROCESS_KEY = secrets.token_bytes(32)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and HIDDEN in value


def plain(value: Any, key: bytes) -> Any:
    """Registration inputs as plain JSON data: secrets as ``{HIDDEN: hmac}``, assets and archives by content, whole
    numbers as ints (the engine hands numbers over as floats). Idempotent: plain data passes through unchanged."""
    if rpc.is_rpc_secret(value):
        inner = plain(rpc.unwrap_rpc_secret(value), key)
        return {HIDDEN: hmac.new(key, canonical(inner).encode(), hashlib.sha256).hexdigest()}
    if isinstance(value, dict):
        return {str(k): plain(v, key) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, key) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, pulumi.StringAsset):
        return value.text
    if isinstance(value, pulumi.FileAsset):
        return _file_content(Path(value.path))
    if isinstance(value, pulumi.AssetArchive):
        return {name: plain(asset, key) for name, asset in sorted(value.assets.items())}
    if isinstance(value, pulumi.FileArchive):
        return _archive_content(Path(value.path))
    if isinstance(value, pulumi.RemoteAsset | pulumi.RemoteArchive):
        return f"<remote {value.uri}>"
    return f"<{type(value).__name__}>"


def _bytes_content(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return f"<{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}>"


def _file_content(path: Path) -> str:
    try:
        return _bytes_content(path.read_bytes())
    except OSError:
        return f"<missing file {path.name}>"


def _archive_content(path: Path) -> dict[str, str] | str:
    """A directory or zip file as ``relative path -> content``."""
    if path.is_dir():
        return {p.relative_to(path).as_posix(): _file_content(p) for p in sorted(path.rglob("*")) if p.is_file()}
    try:
        with zipfile.ZipFile(path) as archive:
            return {n: _bytes_content(archive.read(n)) for n in sorted(archive.namelist()) if not n.endswith("/")}
    except (OSError, zipfile.BadZipFile):
        return _file_content(path)


def structure(value: Any, key: str | None = None) -> Any:
    """Strings that hold a JSON object or array (and ``buildspec`` YAML) parsed, recursively, to diff as documents."""
    if is_secret(value):
        return value
    if isinstance(value, dict):
        return {k: structure(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [structure(v) for v in value]
    if isinstance(value, str):
        document = _document(value, key)
        if document is not None:
            return structure(document)
    return value


def _document(text: str, key: str | None) -> dict[str, Any] | list[Any] | None:
    stripped = text.lstrip()
    parsed: Any = None
    if stripped[:1] in ("{", "["):
        with suppress(ValueError):
            parsed = json.loads(text)
    elif key == "buildspec" and "\n" in text:
        with suppress(yaml.YAMLError):
            parsed = yaml.safe_load(text)
    return parsed if isinstance(parsed, dict | list) else None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict) and not is_secret(value):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def invented_outputs(resource: Recorded) -> dict[str, Any]:
    """The outputs the mocks added to a registration's inputs (``new_resource`` starts from a copy of the inputs)."""
    return {k: v for k, v in resource.outputs.items()
            if k not in resource.inputs or (resource.inputs[k] is not v and resource.inputs[k] != v)}


def invented_runs(resources: Sequence[tuple[Recorded, dict[str, Any], dict[str, Any]]]) -> dict[str, str]:
    """Hex run the mocks made up -> logical name of the resource it belongs to.

    ``resources``: (registration, plain inputs, plain made-up outputs). A run is made up when an output has it and the
    registration's own inputs do not (a replica key's id comes from its primary's ARN: the primary made it up); the
    accounts, 12 decimal digits that ARNs carry, are facts of the config.
    """
    accounts = {r.account for r, _, _ in resources if r.account}
    found: dict[str, str] = {}
    for resource, inputs, outputs in resources:
        own = {run for text in _strings(inputs) for run in _HEX_RUN.findall(text)}
        for text in _strings(outputs):
            for run in _HEX_RUN.findall(text):
                if run not in own and run not in accounts:
                    found.setdefault(run, resource.name)
    return found


def mask(value: Any, invented: Mapping[str, str]) -> Any:
    """``value`` with every made-up hex run replaced (see the module docstring)."""
    if not invented or is_secret(value):
        return value
    if isinstance(value, str):
        return _mask_text(value, invented)
    if isinstance(value, list):
        return [mask(v, invented) for v in value]
    if isinstance(value, dict):
        masked = {k: mask(v, invented) for k, v in value.items()}
        keys = {k: _mask_text(k, invented) for k in masked}
        # Keys are masked too, unless two would become one (then the made-up part is what tells them apart).
        if len(set(keys.values())) == len(keys):
            return {keys[k]: v for k, v in masked.items()}
        return masked
    return value


def _mask_text(text: str, invented: Mapping[str, str]) -> str:
    def token(match: re.Match[str]) -> str:
        owner = invented.get(match.group())
        if owner is None:
            return match.group()
        # Pulumi auto-names are "<logical name>-<random>": the name already says whose it is.
        return "*" if text[: match.start()].endswith(f"{owner}-") else f"<{owner}>"

    return _HEX_RUN.sub(token, text)


def snapshot(run: ProgramRun, key: bytes) -> dict[Identity, Snapshot]:
    """Every registration of a run (providers and components included, not the stack), normalised."""
    plained = [(r, plain(r.inputs, key), plain(invented_outputs(r), key)) for r in run.resources]
    invented = invented_runs(plained)
    return {
        identity(r): Snapshot(r.type, r.name, strip_urn(r.parent), r.custom, r.account, r.region,
                              mask(structure(inputs), invented), tuple(getattr(r, "ignore_changes", ())))
        for r, inputs, _ in plained
    }


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


def show(value: Any, width: int = SHOW_WIDTH) -> str:
    """A value as JSON on one line, secrets as [secret], cut at ``width``."""
    text = HIDDEN if is_secret(value) else json.dumps(_printable(value), ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def _printable(value: Any) -> Any:
    if is_secret(value):
        return HIDDEN
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def change_lines(change: Change, indent: str = "    ") -> list[str]:
    """One change as diff lines; a multi-line text diff's own lines follow under ``indent``."""
    note = "  (forces replacement)" if change.replaces else ""
    if change.kind == "add":
        return [f"+ {change.path}: {show(change.new)}{note}"]
    if change.kind == "remove":
        return [f"- {change.path}: {show(change.old)}{note}"]
    if change.lines and not (is_secret(change.old) or is_secret(change.new)):
        return [f"~ {change.path}:{note}", *(f"{indent}{line}" for line in change.lines)]
    return [f"~ {change.path}: {show(change.old)} → {show(change.new)}{note}"]


def where(resource: ResourceDiff) -> str:
    place = " ".join(p for p in (resource.account, resource.region) if p)
    return f"[{place}]" if place else ""


def _labels(resources: Sequence[ResourceDiff]) -> dict[int, str]:
    """``type name``, plus the parent where two shown resources would otherwise read the same."""
    seen: dict[tuple[str, str], int] = {}
    for r in resources:
        seen[(r.type, r.name)] = seen.get((r.type, r.name), 0) + 1
    return {id(r): f"{r.type} {r.name}" + (f" (in {r.parent.rsplit('::', 1)[-1]})"
                                             if seen[(r.type, r.name)] > 1 and r.parent else "")
            for r in resources}


def render_text(diff: Diff, title: str) -> str:
    """The printed diff: title, summary, every changed resource with its changes, the legend."""
    out = [title, f"{diff.summary()}; {diff.unchanged} unchanged", ""]
    labels = _labels(diff.resources)
    if diff.empty:
        out.append("No changes.")
    for resource in diff.resources:
        out.append(f"{SYMBOLS[resource.op]:<2} {resource.op:<7}  {labels[id(resource)]}  {where(resource)}".rstrip())
        for change in resource.changes:
            out.extend(f"      {line}" for line in change_lines(change))
    out += ["", *LEGEND]
    return "\n".join(out) + "\n"


def _fence(body: str) -> str:
    """A code fence longer than any backtick run in ``body``, so no value can close it early."""
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    return "`" * max(3, longest + 1)


def _details(summary: str, lines: Sequence[str]) -> str:
    body = "\n".join(lines)
    fence = _fence(body)
    return f"<details><summary>{summary}</summary>\n\n{fence}diff\n{body}\n{fence}\n\n</details>\n"


def render_markdown(diff: Diff, stack: str, base: str, *, limit: int = MARKDOWN_LIMIT) -> str:
    """A pull-request comment: the summary line first, then one collapsed block per replaced or changed resource and
    one per group of additions and deletions; cut at about ``limit`` characters, saying so."""
    counts = diff.summary() if not diff.empty else f"no changes ({diff.summary()})"
    head = (f"**{html.escape(stack)}**: {counts} · offline diff against <code>{html.escape(base)}</code> "
            f"(Pulumi mocks, no AWS calls; {diff.unchanged} unchanged)\n")
    labels = _labels(diff.resources)
    blocks = []
    for resource in diff.resources:
        if resource.op not in ("update", "replace"):
            continue
        lines = [line for change in resource.changes for line in change_lines(change, indent="")]
        noun = "change" if len(resource.changes) == 1 else "changes"
        blocks.append(_details(
            f"<code>{SYMBOLS[resource.op]} {resource.op}</code> {html.escape(labels[id(resource)])} "
            f"{html.escape(where(resource))} · {len(resource.changes)} {noun}", lines))
    for op, verb in (("delete", "to delete"), ("create", "to add")):
        group = [r for r in diff.resources if r.op == op]
        if group:
            lines = [f"{SYMBOLS[op]} {labels[id(r)]} {where(r)}".rstrip() for r in group[:MARKDOWN_GROUP_LINES]]
            if len(group) > MARKDOWN_GROUP_LINES:
                lines.append(f"… and {len(group) - MARKDOWN_GROUP_LINES} more")
            blocks.append(_details(f"<code>{SYMBOLS[op]}</code> {len(group)} {verb}", lines))
    # The legend is this module's own text (no escaping: its `<logical name>` sits in a code span).
    legend = "\n" + "\n".join(f"<sub>{line}</sub><br>" for line in LEGEND) + "\n"
    out = [head]
    size = len(head) + len(legend)
    for shown, block in enumerate(blocks):
        if size + len(block) > limit:
            out.append(f"\n… {len(blocks) - shown} more blocks not shown (comment size): run "
                       f"`python -m offline.plan <stack> --diff <ref>` locally for all of it.\n")
            break
        out.append(block)
        size += len(block)
    out.append(legend)
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# The ref's run: a temporary worktree and a child process
# --------------------------------------------------------------------------------------------------------------


class DiffError(Exception):
    """A bad git ref or stack file: printed without a traceback; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)


def resolve_ref(ref: str, root: Path = ROOT) -> tuple[str, Path]:
    """(commit id, repository top level) of ``ref``, or a DiffError saying why not."""
    if not ref or ref.startswith("-"):  # never let a "ref" become a git option
        raise DiffError(f"not a git ref: {ref!r}")
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode:
        raise DiffError(f"{root} is not in a git repository ({top.stderr.strip()})")
    found = _git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if found.returncode:
        raise DiffError(f"{ref!r} is not a commit of {top.stdout.strip()} (a branch, tag or commit id; for a remote "
                        f"branch, fetch it first: git fetch origin <branch>)")
    return found.stdout.strip(), Path(top.stdout.strip())


@contextmanager
def worktree(commit: str, root: Path = ROOT) -> Iterator[Path]:
    """A detached worktree of ``commit`` in a temporary directory, removed afterwards (the working tree, its index and
    HEAD are never touched)."""
    tmp = Path(tempfile.mkdtemp(prefix="crossdeploy-diff-"))
    tree = tmp / "tree"
    # No hooks: a post-checkout hook has no business running in a throwaway checkout.
    added = _git(root, "-c", f"core.hooksPath={os.devnull}", "worktree", "add", "--detach", "--quiet", str(tree),
                 commit)
    if added.returncode:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiffError(f"git worktree add {commit[:12]} failed: {added.stderr.strip()}", status=1)
    try:
        yield tree
    finally:
        removed = _git(root, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
        if removed.returncode:
            _git(root, "worktree", "prune")  # the directory is gone: forget its administrative files


# Runs in the child: loads this very file by path (the ref may predate it), then dump_run, whose project imports then
# resolve to the ref's worktree (the child's cwd and PYTHONPATH).
_CHILD = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('crossdeploy_offline_diff', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "sys.exit(module.dump_run(sys.argv[2:]))\n"
)


@dataclass
class RefRun:
    """The program at the ref, running in a child process while this one runs the working tree."""

    process: subprocess.Popen[bytes]
    output: Path
    errors: Path
    label: str
    tree: Path

    @classmethod
    def start(cls, program_root: Path, stack_file: Path, stack: str, key: bytes, scratch: Path,
              label: str) -> RefRun:
        env = {**os.environ, "PYTHONPATH": str(program_root), HMAC_KEY_ENV: key.hex()}
        env.pop("PYTHONSAFEPATH", None)
        output, errors = scratch / "run.json", scratch / "stderr.txt"
        with errors.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(Path(__file__).resolve()), str(stack_file), stack, str(output)],
                cwd=program_root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        return cls(process, output, errors, label, program_root)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def result(self) -> ProgramRun:
        status = self.process.wait()
        if status:
            # The worktree is gone by the time anyone reads this: name files as the repository does.
            message = self.errors.read_text(errors="replace").strip().replace(f"{self.tree}{os.sep}", "")
            if status == 2:
                raise DiffError(f"{self.label}: {message}")
            raise DiffError(f"the program at {self.label} failed (exit {status}):\n{message}", status=1)
        return load_run(json.loads(self.output.read_text()))


class _NeverRaised(Exception):
    pass


def dump_run(argv: Sequence[str]) -> int:
    """In the ref's worktree: run that revision's program under that revision's mocks, write the registrations.

    ``argv``: stack file, stack name, output file. Inputs are written already :func:`plain` (with the comparison's
    secret key from the environment): nothing secret reaches the file, and assets are read where they are.
    """
    stack_file, stack, output = argv
    key = bytes.fromhex(os.environ.pop(HMAC_KEY_ENV, "") or secrets.token_hex(32))
    from offline import mocks

    try:
        config = _ref_stack_config(Path(stack_file))
    except Exception as exc:  # whatever this revision's loader raises for a bad file
        message = str(exc)
        # Newer loaders name the file themselves; older ones do not.
        named = message if Path(stack_file).name in message.split(":", 1)[0] else f"{Path(stack_file).name}: {message}"
        print(named, file=sys.stderr)
        return 2
    config_error: type[Exception]
    try:
        from components.config import ConfigError as config_error
    except ImportError:  # a revision without typed config errors: every failure is then a crash (exit 1)
        config_error = _NeverRaised
    project = (yaml.safe_load(Path("Pulumi.yaml").read_text()) or {}).get("name") or "crossdeploy"
    try:
        run = mocks.run_program(config, stack=stack, project=str(project))
    except config_error as exc:
        print(f"{Path(stack_file).name}: {exc}", file=sys.stderr)
        return 2
    resources = [{
        "type": r.type, "name": r.name, "parent": r.parent, "custom": r.custom, "provider": r.provider,
        "account": r.account, "region": r.region, "ignore_changes": list(getattr(r, "ignore_changes", ())),
        "inputs": plain(r.inputs, key), "outputs": plain(invented_outputs(r), key),
    } for r in run.resources]
    Path(output).write_text(json.dumps({"resources": resources}))
    return 0


def _ref_stack_config(path: Path) -> dict[str, Any]:
    """The stack file's config as the ref's own plan loads it (its loader may differ from today's)."""
    try:
        from offline.plan import load_stack
    except ImportError:
        from offline.mocks import stack_config as load_stack
    return dict(load_stack(path))


def load_run(data: Mapping[str, Any]) -> ProgramRun:
    """A :class:`ProgramRun` from :func:`dump_run`'s file (inputs already plain)."""
    from offline.mocks import ProgramRun, Recorded

    return ProgramRun(resources=[
        Recorded(r["type"], r["name"], r["inputs"], r["outputs"], r["custom"], r["parent"], r["provider"],
                 r["account"], r["region"], tuple(r["ignore_changes"]))
        for r in data["resources"]])


def run_diff(stack_file: Path, stack: str, project: str, config: Mapping[str, Any], ref: str, *,
             fmt: str = "text", root: Path = ROOT) -> int:
    """``python -m offline.plan <stack> --diff <ref>``: print the diff from ``ref`` to the working tree; exit status."""
    from components.config import ConfigError
    from offline.mocks import ProgramRun, run_program

    key = secrets.token_bytes(32)
    try:
        commit, top = resolve_ref(ref, root)
        with worktree(commit, root) as tree:
            program_root = tree / root.resolve().relative_to(top.resolve())
            try:
                ref_stack = tree / stack_file.resolve().relative_to(top.resolve())
            except ValueError:  # a stack file outside the repository: the same file on both sides
                ref_stack = stack_file.resolve()
            label = f"{ref_stack.relative_to(tree) if ref_stack.is_relative_to(tree) else ref_stack} at {ref}"
            # The ref's program runs in a child process (its own modules) while this one runs the working tree's.
            # No stack file at the ref: the stack is new, everything in it is an addition.
            pending = (RefRun.start(program_root, ref_stack, stack, key, tree.parent, label)
                       if ref_stack.is_file() else None)
            try:
                new = run_program(config, stack=stack, project=project, program=root / "__main__.py")
                old = pending.result() if pending is not None else ProgramRun()
            except ConfigError as exc:
                print(f"plan: {stack_file}: {exc}", file=sys.stderr)
                return 2
            finally:
                if pending is not None:
                    pending.stop()  # a no-op once it finished; else it must not outlive its worktree
    except DiffError as exc:
        print(f"plan: --diff {ref}: {exc}", file=sys.stderr)
        return exc.status

    diff = diff_runs(old, new, secret_key=key)
    if fmt == "markdown":
        text = render_markdown(diff, f"{project}/{stack}", f"{ref} ({commit[:12]})")
    else:
        text = render_text(diff, f"Offline diff of {project}/{stack}: {ref} ({commit[:12]}) → working tree "
                                 "(Pulumi mocks: no Pulumi CLI, no AWS calls)")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
