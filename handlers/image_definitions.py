"""imageDetail.json (ECR source action) -> what the pipeline's deploy actions read, for CodeBuild.

Two modes, both pinned by digest (ECS resolves a tag once: a re-pushed tag would not redeploy), each on its region's
ECR replica:

* rolling (``TARGET_REGIONS``, ``CONTAINER_NAME``): ``imagedefinitions-<region>.json`` per target region, for the
  ECS deploy action;
* blue/green (``BLUE_GREEN_TARGETS``, a JSON list of targets): per target, a directory named after its pipeline
  artifact holding ``taskdef.json``, ``appspec.yaml`` and ``imageDetail.json``, the three files the
  CodeDeployToECS action reads from that one artifact.
"""

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

MAX_BYTES = 100 * 1024  # CodePipeline's limit for imagedefinitions files
# The dns suffix is captured, not listed: amazonaws.com.cn and new partitions just work.
_URI = re.compile(
    r"(?P<registry>\d{12})\.dkr\.ecr\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.(?P<suffix>[a-z0-9.-]+)"
    r"/(?P<repo>[a-z0-9._/-]+)@(?P<digest>sha256:[0-9a-f]{64})"
)
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
_CONTAINER = re.compile(r"[A-Za-z0-9_-]{1,255}")  # ECS's container name rule
_NOT_YET = {"ImageNotFoundException", "RepositoryNotFoundException"}


class TransformError(Exception):
    """Expected failure: main() prints one line, no traceback."""


class ImageDetailError(TransformError, ValueError):
    """imageDetail.json is malformed or inconsistent."""


class ReplicationTimeout(TransformError, TimeoutError):
    """The image did not reach a region in time."""


class BlueGreenSpecError(TransformError, ValueError):
    """The blue/green target spec is malformed or inconsistent."""


def parse_image_detail(data: Any) -> dict[str, str]:
    """Validate decoded imageDetail.json; returns ImageURI's registry, region, suffix, repo, digest."""
    if not isinstance(data, dict):
        raise ImageDetailError("imageDetail.json must hold a JSON object")
    for field in ("ImageURI", "ImageDigest", "RepositoryName"):
        if not isinstance(data.get(field), str) or not data[field]:
            raise ImageDetailError(f"imageDetail.json: {field} is missing or not a non-empty string")
    uri = data["ImageURI"]
    match = _URI.fullmatch(uri)
    if not match:
        raise ImageDetailError(
            f"imageDetail.json: ImageURI {uri!r} is not <account>.dkr.ecr.<region>.<suffix>/<repo>@sha256:<64 hex>"
        )
    parts = match.groupdict()
    # RegistryId may be absent; any mismatch means a hand-edited or mixed-up file.
    for field, key in (("ImageDigest", "digest"), ("RepositoryName", "repo"), ("RegistryId", "registry")):
        if field in data and data[field] != parts[key]:
            raise ImageDetailError(f"imageDetail.json: {field} {data[field]!r} disagrees with ImageURI {uri!r}")
    return parts


def read_image_detail(path: str) -> dict[str, Any]:
    """imageDetail.json as written (every field kept), after checking it with :func:`parse_image_detail`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageDetailError(f"{path}: not found (is the ECR source artifact the input?)") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested deeper than the decoder's stack
        raise ImageDetailError(f"{path}: not valid JSON ({exc})") from None
    parse_image_detail(data)
    return data


def load_image_detail(path: str) -> dict[str, str]:
    return parse_image_detail(read_image_detail(path))


def regional_image_uri(detail: dict[str, Any], region: str) -> str:
    """`detail` (raw imageDetail.json or parsed) served by `region`'s replica: by digest, never a tag."""
    d = parse_image_detail(detail) if "ImageURI" in detail else detail
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise TransformError(f"not an AWS region name: {region!r}")
    return f"{d['registry']}.dkr.ecr.{region}.{d['suffix']}/{d['repo']}@{d['digest']}"


def serialize(definitions: list[dict[str, str]]) -> str:
    """The exact text written to imagedefinitions-<region>.json."""
    return json.dumps(definitions, indent=2) + "\n"


def image_definitions(container_name: str, uri: str) -> list[dict[str, str]]:
    """imagedefinitions.json content for the ECS (rolling) deploy action."""
    if not isinstance(container_name, str) or not _CONTAINER.fullmatch(container_name):
        raise TransformError(f"container name {container_name!r} must be 1-255 letters, digits, '-' or '_'")
    definitions = [{"name": container_name, "imageUri": uri}]
    size = len(serialize(definitions).encode())
    if size >= MAX_BYTES:  # not `assert`, which python -O strips; CodePipeline would fail later, vaguely
        raise TransformError(f"imagedefinitions would be {size} bytes; CodePipeline needs under {MAX_BYTES}")
    return definitions


# --- blue/green (CodeDeployToECS) ------------------------------------------------------------------------------

IMAGE_PLACEHOLDER = "<IMAGE1_NAME>"
"""The action replaces this with imageDetail.json's ImageURI (``Image1ContainerName: IMAGE1_NAME``)."""
TASK_DEFINITION_PLACEHOLDER = "<TASK_DEFINITION>"
"""The action replaces this in the AppSpec with the ARN of the revision it registered from taskdef.json."""
BLUE_GREEN_FILES = ("taskdef.json", "appspec.yaml", "imageDetail.json")
_ARTIFACT = re.compile(r"[A-Za-z0-9_-]{1,100}")  # CodePipeline's artifact name rule; also a safe directory name
_TARGET_KEYS = ("artifact", "region", "taskDefinition", "containerName", "containerPort")
SMOKE_HOOK_EVENT = "AfterAllowTestTraffic"  # test traffic on the new task set, production still on the old one


def _check_task_definition(where: str, taskdef: Any, container: str, port: int) -> None:
    if not isinstance(taskdef, dict):
        raise BlueGreenSpecError(f"{where}: taskDefinition must be a JSON object (a RegisterTaskDefinition request)")
    if not isinstance(taskdef.get("family"), str) or not taskdef["family"]:
        raise BlueGreenSpecError(f"{where}: taskDefinition.family is missing or not a non-empty string")
    containers = taskdef.get("containerDefinitions")
    if not isinstance(containers, list) or not containers or not all(isinstance(c, dict) for c in containers):
        raise BlueGreenSpecError(f"{where}: taskDefinition.containerDefinitions must be a non-empty list of objects")
    # The action substitutes the placeholder text wherever it occurs: anywhere but one image field would put the
    # image URI somewhere it does not belong (or leave a container without the new image).
    occurrences = json.dumps(taskdef).count(IMAGE_PLACEHOLDER)
    marked = [c for c in containers if c.get("image") == IMAGE_PLACEHOLDER]
    if occurrences != 1 or len(marked) != 1:
        raise BlueGreenSpecError(
            f"{where}: taskDefinition must hold {IMAGE_PLACEHOLDER!r} exactly once, as one container's image "
            f"(found it {occurrences} time(s), as the image of {len(marked)} container(s))"
        )
    if marked[0].get("name") != container:
        raise BlueGreenSpecError(
            f"{where}: the container with image {IMAGE_PLACEHOLDER!r} is {marked[0].get('name')!r}, but "
            f"containerName (the AppSpec's load balancer container) is {container!r}"
        )
    mappings = marked[0].get("portMappings")
    ports = [m.get("containerPort") for m in mappings if isinstance(m, dict)] if isinstance(mappings, list) else []
    if port not in ports:
        raise BlueGreenSpecError(
            f"{where}: containerPort {port} is not among container {container!r}'s portMappings {ports}; the load "
            "balancer could not reach the new tasks"
        )


def parse_blue_green_targets(data: Any) -> list[dict[str, Any]]:
    """Validate decoded BLUE_GREEN_TARGETS: a non-empty list of objects with exactly the keys ``artifact`` (the
    pipeline artifact, also the output directory), ``region``, ``taskDefinition`` (RegisterTaskDefinition request,
    image ``<IMAGE1_NAME>``), ``containerName`` and ``containerPort`` (what the load balancer targets), and
    optionally ``smokeHookArn`` (the AppSpec's smoke-test hook)."""
    if not isinstance(data, list) or not data:
        raise BlueGreenSpecError("blue/green targets must be a non-empty JSON list")
    seen: set[str] = set()
    for i, target in enumerate(data):
        if not isinstance(target, dict):
            raise BlueGreenSpecError(f"blue/green target {i}: must be a JSON object")
        missing = [k for k in _TARGET_KEYS if k not in target]
        unknown = sorted(set(target) - {*_TARGET_KEYS, "smokeHookArn"})
        if missing or unknown:
            raise BlueGreenSpecError(f"blue/green target {i}: missing keys {missing}, unknown keys {unknown}")
        artifact = target["artifact"]
        if not isinstance(artifact, str) or not _ARTIFACT.fullmatch(artifact):
            raise BlueGreenSpecError(
                f"blue/green target {i}: artifact {artifact!r} must be 1-100 letters, digits, '-' or '_'"
            )
        if artifact in seen:
            raise BlueGreenSpecError(f"blue/green target {i}: artifact {artifact!r} is repeated")
        seen.add(artifact)
        where = f"blue/green target {artifact}"
        if not isinstance(target["region"], str) or not _REGION.fullmatch(target["region"]):
            raise BlueGreenSpecError(f"{where}: not an AWS region name: {target['region']!r}")
        container, port = target["containerName"], target["containerPort"]
        if not isinstance(container, str) or not _CONTAINER.fullmatch(container):
            raise BlueGreenSpecError(f"{where}: containerName {container!r} must be 1-255 letters, digits, '-' or '_'")
        if type(port) is not int or not 1 <= port <= 65535:
            raise BlueGreenSpecError(f"{where}: containerPort must be an integer 1-65535, got {port!r}")
        _check_task_definition(where, target["taskDefinition"], container, port)
        hook = target.get("smokeHookArn")  # CodeDeploy invokes hooks in the deployment's region
        if hook is not None and not re.fullmatch(rf"arn:[a-z-]+:lambda:{target['region']}:\d{{12}}:function:[\w-]+",
                                                 str(hook), re.ASCII):
            raise BlueGreenSpecError(f"{where}: smokeHookArn must be a Lambda function ARN in {target['region']}")
    return data


def appspec(container_name: str, container_port: int, smoke_hook_arn: str | None = None) -> str:
    """The ECS AppSpec: replace the service's task set with the revision the action registers, behind the load
    balancer on `container_name`:`container_port`, smoke-tested by `smoke_hook_arn`. Written by hand (the build
    image promises boto3, not PyYAML); the name is ``[A-Za-z0-9_-]`` and JSON-quoted, so the text is valid YAML."""
    hooks = f"Hooks:\n  - {SMOKE_HOOK_EVENT}: {json.dumps(smoke_hook_arn)}\n" if smoke_hook_arn else ""
    return (
        "version: 0.0\n"
        "Resources:\n"
        "  - TargetService:\n"
        "      Type: AWS::ECS::Service\n"
        "      Properties:\n"
        f"        TaskDefinition: {json.dumps(TASK_DEFINITION_PLACEHOLDER)}\n"
        "        LoadBalancerInfo:\n"
        f"          ContainerName: {json.dumps(container_name)}\n"
        f"          ContainerPort: {int(container_port)}\n"
        + hooks
    )


def blue_green_files(image_detail: dict[str, Any], target: dict[str, Any]) -> dict[str, str]:
    """File name -> exact text of one target's artifact. imageDetail.json keeps every source field; only ImageURI
    moves to the target region's replica (same digest), which is what the action puts in place of the placeholder."""
    detail = {**image_detail, "ImageURI": regional_image_uri(image_detail, target["region"])}
    return {
        "taskdef.json": json.dumps(target["taskDefinition"], indent=2) + "\n",
        "appspec.yaml": appspec(target["containerName"], target["containerPort"], target.get("smokeHookArn")),
        "imageDetail.json": json.dumps(detail, indent=4) + "\n",
    }


def wait_for_replication(
    ecr_client: Any,
    registry_id: str,
    repository: str,
    digest: str,
    region: str,
    timeout_seconds: float,
    interval_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Poll `region`'s ECR (checking at least once) until the digest is there; returns seconds waited."""
    query = {"registryId": registry_id, "repositoryName": repository, "imageIds": [{"imageDigest": digest}]}
    start = clock()
    while True:
        try:
            if ecr_client.describe_images(**query)["imageDetails"]:
                return clock() - start
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in _NOT_YET:
                raise
        waited = clock() - start
        if waited >= timeout_seconds:
            raise ReplicationTimeout(f"{repository}@{digest} not replicated to {region} after waiting {waited:.1f}s")
        sleep(max(0.0, min(interval_seconds, timeout_seconds - waited)))


def _number(name: str, value: str, minimum: float) -> float:
    with contextlib.suppress(ValueError):
        if float(value) >= minimum:  # NaN fails this too
            return float(value)
    raise TransformError(f"{name} must be a number >= {minimum}, got {value!r}")


def _rolling(a: argparse.Namespace) -> None:
    regions = [r.strip() for r in a.regions.split(",") if r.strip()]
    if not regions or len(set(regions)) != len(regions):
        raise TransformError(f"target regions must be non-empty and unique, got {a.regions!r}")
    if not _REGION.fullmatch(a.home_region):
        raise TransformError(f"home region must be an AWS region name, got {a.home_region!r}")
    timeout, interval = _number("timeout", a.timeout, 0), _number("poll interval", a.interval, 0.1)
    detail = load_image_detail(a.image_detail)
    if detail["region"] != a.home_region:
        raise ImageDetailError(f"ImageURI is in {detail['region']}, but the home region is {a.home_region}")
    # Render everything before writing anything: bad input must leave no partial artifact.
    uris = {r: regional_image_uri(detail, r) for r in regions}
    bodies = {r: serialize(image_definitions(a.container_name, uri)) for r, uri in uris.items()}
    _wait_for_replicas(detail, a.home_region, regions, timeout, interval)
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for r, body in bodies.items():
        (out / f"imagedefinitions-{r}.json").write_text(body, encoding="utf-8")
        print(f"wrote imagedefinitions-{r}.json: {a.container_name} -> {uris[r]}")


def _blue_green(a: argparse.Namespace) -> None:
    # TARGET_REGIONS and CONTAINER_NAME are not looked at: a stray variable in the build environment must not
    # turn a valid blue/green build into an error.
    if not _REGION.fullmatch(a.home_region):
        raise TransformError(f"home region must be an AWS region name, got {a.home_region!r}")
    timeout, interval = _number("timeout", a.timeout, 0), _number("poll interval", a.interval, 0.1)
    try:
        data = json.loads(a.blue_green_targets)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested deeper than the decoder's stack
        raise BlueGreenSpecError(f"blue/green targets are not valid JSON ({exc})") from None
    targets = parse_blue_green_targets(data)
    raw = read_image_detail(a.image_detail)
    detail = parse_image_detail(raw)
    if detail["region"] != a.home_region:
        raise ImageDetailError(f"ImageURI is in {detail['region']}, but the home region is {a.home_region}")
    # Render everything before writing anything: bad input must leave no partial artifact.
    files = {t["artifact"]: blue_green_files(raw, t) for t in targets}
    _wait_for_replicas(detail, a.home_region, list(dict.fromkeys(t["region"] for t in targets)), timeout, interval)
    out = Path(a.output_dir)
    for target in targets:
        directory = out / target["artifact"]
        directory.mkdir(parents=True, exist_ok=True)
        for name, body in files[target["artifact"]].items():
            (directory / name).write_text(body, encoding="utf-8")
        uri = json.loads(files[target["artifact"]]["imageDetail.json"])["ImageURI"]
        print(f"wrote {target['artifact']}/{{{','.join(BLUE_GREEN_FILES)}}}: {target['containerName']} -> {uri}")


def _wait_for_replicas(detail: dict[str, str], home: str, regions: list[str], timeout: float, interval: float) -> None:
    deadline = time.monotonic() + timeout  # one budget for all: replicas copy in parallel
    for r in regions:
        if r != home:  # the pushed image is already in the home registry
            left = max(0.0, deadline - time.monotonic())
            args = (detail["registry"], detail["repo"], detail["digest"], r, left, interval)
            wait_for_replication(boto3.client("ecr", region_name=r), *args)


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    src = env("CODEBUILD_SRC_DIR") or "."
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-detail", default=env("IMAGE_DETAIL_FILE") or os.path.join(src, "imageDetail.json"))
    p.add_argument("--container-name", default=env("CONTAINER_NAME", ""))
    p.add_argument("--regions", default=env("TARGET_REGIONS", ""))
    p.add_argument("--blue-green-targets", default=env("BLUE_GREEN_TARGETS", ""),
                   help="JSON list of blue/green targets (see parse_blue_green_targets); selects blue/green mode")
    p.add_argument("--home-region", default=env("HOME_REGION", ""))
    p.add_argument("--output-dir", default=env("OUTPUT_DIR") or src)
    p.add_argument("--timeout", default=env("REPLICATION_TIMEOUT_SECONDS") or "600")
    p.add_argument("--interval", default=env("POLL_INTERVAL_SECONDS") or "10")
    a = p.parse_args(argv)
    try:
        if a.blue_green_targets:
            _blue_green(a)
        else:
            _rolling(a)
    except TransformError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError, OSError) as exc:  # AWS or disk trouble: one line, not a traceback
        print(f"ERROR: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
