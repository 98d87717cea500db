"""imageDetail.json (ECR source action) -> imagedefinitions-<region>.json per target region, for CodeBuild.

Pinned by digest (ECS resolves a tag once: a re-pushed tag would not redeploy), each on its region's ECR replica.
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


def load_image_detail(path: str) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageDetailError(f"{path}: not found (is the ECR source artifact the input?)") from None
    except ValueError as exc:
        raise ImageDetailError(f"{path}: not valid JSON ({exc})") from None
    return parse_image_detail(data)


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


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    src = env("CODEBUILD_SRC_DIR") or "."
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-detail", default=env("IMAGE_DETAIL_FILE") or os.path.join(src, "imageDetail.json"))
    p.add_argument("--container-name", default=env("CONTAINER_NAME", ""))
    p.add_argument("--regions", default=env("TARGET_REGIONS", ""))
    p.add_argument("--home-region", default=env("HOME_REGION", ""))
    p.add_argument("--output-dir", default=env("OUTPUT_DIR") or src)
    p.add_argument("--timeout", default=env("REPLICATION_TIMEOUT_SECONDS") or "600")
    p.add_argument("--interval", default=env("POLL_INTERVAL_SECONDS") or "10")
    a = p.parse_args(argv)
    try:
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
        deadline = time.monotonic() + timeout  # one budget for all: replicas copy in parallel
        for r in regions:
            if r != a.home_region:  # the pushed image is already in the home registry
                left = max(0.0, deadline - time.monotonic())
                args = (detail["registry"], detail["repo"], detail["digest"], r, left, interval)
                wait_for_replication(boto3.client("ecr", region_name=r), *args)
        out = Path(a.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for r, body in bodies.items():
            (out / f"imagedefinitions-{r}.json").write_text(body, encoding="utf-8")
            print(f"wrote imagedefinitions-{r}.json: {a.container_name} -> {uris[r]}")
    except TransformError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError, OSError) as exc:  # AWS or disk trouble: one line, not a traceback
        print(f"ERROR: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
