"""The buildspecs of the pipeline's build steps (CodeBuild, Lambda compute).

The rolling build turns the ECR source action's ``imageDetail.json`` into one ``imagedefinitions-<region>.json`` per
target region, each pinned by digest to that region's ECR replica (see ``handlers/image_definitions.py``). A
blue/green build writes, per target, one output artifact holding ``taskdef.json``, ``appspec.yaml`` and a regional
``imageDetail.json`` for a CodeDeployToECS action. Both run the same handler, embedded once.

Why the handler's source is embedded in the buildspec instead of fetched or checked out:

* the code the tests exercise is byte for byte the code that runs: there is no second copy, no S3 object or image to
  drift, and a change to the handler changes the buildspec, so ``pulumi preview`` shows it;
* the build's only input is the ECR source artifact, so no source checkout is needed, and Lambda compute builds
  start in seconds with just ``python3`` and ``boto3`` from the curated image.

The shell writes the source with a *quoted* heredoc, so neither ``$`` nor backticks in it are expanded.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import yaml

from components import limits
from handlers import image_definitions as idf

HANDLER_PATH = Path(__file__).resolve().parents[1] / "handlers" / "image_definitions.py"
HEREDOC_DELIMITER = "CROSSDEPLOY_IMAGE_DEFINITIONS_PY"
# Lambda compute builds are stopped after 15 minutes; keep the replication wait well inside that.
MAX_TIMEOUT_SECONDS = 840
# CodePipeline allows a CodeBuild action at most five output artifacts: one blue/green target each.
MAX_OUTPUT_ARTIFACTS = 5
MAX_BUILDSPEC_CHARS = limits.CODEBUILD_INLINE_BUILDSPEC_CHARS
"""CodeBuild's limit on an inline buildspec (DESIGN.md pitfall 17, aws-cdk#14974); the embedded handler takes most
of it, so a blue/green build carries as many targets as fit, up to :data:`MAX_OUTPUT_ARTIFACTS`."""
BLUE_GREEN_FILES = idf.BLUE_GREEN_FILES

_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
_CONTAINER = re.compile(r"[A-Za-z0-9_-]{1,255}")  # ECS's container name rule, also keeps the env value plain


@functools.lru_cache(maxsize=1)
def handler_source() -> str:
    """The handler file's exact text (bytes decoded, no newline translation), checked to be heredoc-safe."""
    source = HANDLER_PATH.read_bytes().decode("utf-8")
    if not source.endswith("\n"):
        raise RuntimeError(f"{HANDLER_PATH} must end with a newline, or the heredoc would alter it")
    if HEREDOC_DELIMITER in source.splitlines():
        raise RuntimeError(f"{HANDLER_PATH} contains the heredoc delimiter line {HEREDOC_DELIMITER!r}")
    return source


def artifact_file(region: str) -> str:
    """Name of the file the deploy action for `region` reads (its ``FileName``)."""
    return f"imagedefinitions-{region}.json"


def _validate(container_name: str, target_regions: list[str], home_region: str, timeout_seconds: int) -> None:
    if not isinstance(container_name, str) or not _CONTAINER.fullmatch(container_name):
        raise ValueError(f"container_name must be 1-255 letters, digits, '-' or '_', got {container_name!r}")
    if isinstance(target_regions, str) or not target_regions:
        raise ValueError(f"target_regions must be a non-empty list of region names, got {target_regions!r}")
    for region in target_regions:
        if not isinstance(region, str) or not _REGION.fullmatch(region):
            raise ValueError(f"not an AWS region name: {region!r}")
    duplicates = sorted({r for r in target_regions if target_regions.count(r) > 1})
    if duplicates:
        raise ValueError(f"target_regions must be unique, repeated: {', '.join(duplicates)}")
    _validate_wait(home_region, timeout_seconds)


def _validate_wait(home_region: str, timeout_seconds: int) -> None:
    if not isinstance(home_region, str) or not _REGION.fullmatch(home_region):
        raise ValueError(f"not an AWS region name: {home_region!r}")
    if type(timeout_seconds) is not int or not 0 <= timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise ValueError(f"timeout_seconds must be an int in 0..{MAX_TIMEOUT_SECONDS}, got {timeout_seconds!r}")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks (readable source in the console); booleans as CodeBuild's yes/no."""


_Dumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None),
)
_Dumper.add_representer(
    bool, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:bool", "yes" if value else "no")
)


def render_buildspec(
    *, container_name: str, target_regions: list[str], home_region: str, timeout_seconds: int = 600
) -> str:
    """Buildspec (version 0.2) YAML writing ``imagedefinitions-<region>.json`` for each of `target_regions`.

    Inputs reach the handler as ``env.variables`` (CONTAINER_NAME, TARGET_REGIONS, HOME_REGION,
    REPLICATION_TIMEOUT_SECONDS), so a pipeline action's environment variables can override them without a new
    buildspec. `timeout_seconds` bounds the wait for ECR replication to all non-home regions together.
    """
    _validate(container_name, target_regions, home_region, timeout_seconds)
    spec = {
        "version": 0.2,
        "env": {
            "variables": {
                "CONTAINER_NAME": container_name,
                "TARGET_REGIONS": ",".join(target_regions),
                "HOME_REGION": home_region,
                "REPLICATION_TIMEOUT_SECONDS": str(timeout_seconds),
            }
        },
        "phases": {"build": {"commands": [_COMMAND_PLACEHOLDER]}},
        # The deploy actions name these files; discard-paths keeps them at the artifact root.
        "artifacts": {"files": [artifact_file(r) for r in target_regions], "discard-paths": True},
    }
    return _emit(spec)


def render_blue_green_buildspec(
    *, targets: list[dict[str, Any]], home_region: str, timeout_seconds: int = 600
) -> str:
    """Buildspec (version 0.2) YAML writing one output artifact per target: a directory named after the target's
    ``artifact`` holding ``taskdef.json``, ``appspec.yaml`` and ``imageDetail.json`` (pinned to the target region's
    replica).

    `targets` are the handler's blue/green targets (see ``handlers.image_definitions.parse_blue_green_targets``),
    at most five: CodePipeline's limit of output artifacts for one CodeBuild action. They reach the handler as the
    ``BLUE_GREEN_TARGETS`` variable, next to HOME_REGION and REPLICATION_TIMEOUT_SECONDS. The artifacts section
    follows CodePipeline's rule: a single output artifact is the primary artifact; with several, every one is a
    ``secondary-artifacts`` entry whose identifier is the pipeline's output artifact name.
    """
    return _checked(_blue_green_text(targets, home_region, timeout_seconds))


def blue_green_buildspec_chars(*, targets: list[dict[str, Any]], home_region: str, timeout_seconds: int = 600) -> int:
    """The length of :func:`render_blue_green_buildspec`'s buildspec for `targets`, over the limit or not: the
    config check (:mod:`components.limits`) measures one target alone with it, before any resource exists."""
    return len(_blue_green_text(targets, home_region, timeout_seconds))


def _blue_green_text(targets: list[dict[str, Any]], home_region: str, timeout_seconds: int) -> str:
    if isinstance(targets, dict | str) or not targets or len(targets) > MAX_OUTPUT_ARTIFACTS:
        raise ValueError(f"targets must be a list of 1-{MAX_OUTPUT_ARTIFACTS} blue/green targets (CodePipeline's "
                         f"output artifact limit for one CodeBuild action), got {targets!r:.200}")
    try:
        idf.parse_blue_green_targets(list(targets))
    except idf.TransformError as exc:
        raise ValueError(str(exc)) from None
    _validate_wait(home_region, timeout_seconds)
    # Compact JSON, and every '$' as its JSON escape: the value stays one plain line (no YAML folding), and no
    # variable expansion between the buildspec and the handler can alter it (a health check may well say "$PORT").
    encoded = json.dumps(list(targets), separators=(",", ":")).replace("$", "\\u0024")
    if not (encoded.isascii() and encoded.isprintable()):
        raise RuntimeError("the blue/green targets did not encode as one line of printable ASCII")
    # The targets value (kilobytes of JSON) is written as the emitter writes a line starting with '[': single-quoted,
    # each "'" doubled, into the rest of the buildspec emitted once per set of artifacts. PyYAML's emitter takes
    # milliseconds per build, and the config check renders every target (components.limits); the tests load every
    # buildspec back and compare the value.
    text = _blue_green_skeleton(tuple(t["artifact"] for t in targets), home_region, timeout_seconds)
    quoted = "'" + encoded.replace("'", "''") + "'"
    return text.replace(_TARGETS_LINE, f"    BLUE_GREEN_TARGETS: {quoted}\n", 1)


@functools.lru_cache(maxsize=64)
def _blue_green_skeleton(artifacts: tuple[str, ...], home_region: str, timeout_seconds: int) -> str:
    outputs = {a: {"base-directory": a, "files": list(BLUE_GREEN_FILES)} for a in artifacts}
    spec = {
        "version": 0.2,
        "env": {
            "variables": {
                "BLUE_GREEN_TARGETS": _TARGETS_PLACEHOLDER,
                "HOME_REGION": home_region,
                "REPLICATION_TIMEOUT_SECONDS": str(timeout_seconds),
            }
        },
        "phases": {"build": {"commands": [_COMMAND_PLACEHOLDER]}},
        "artifacts": next(iter(outputs.values())) if len(outputs) == 1 else {"secondary-artifacts": outputs},
    }
    text = _render(spec)
    if text.count(_TARGETS_LINE) != 1:
        raise RuntimeError("the blue/green targets placeholder was not emitted where the variable belongs")
    return text


_TARGETS_PLACEHOLDER = "CROSSDEPLOY_TARGETS_PLACEHOLDER"
_TARGETS_LINE = f"    BLUE_GREEN_TARGETS: {_TARGETS_PLACEHOLDER}\n"


class BuildspecTooLarge(ValueError):
    """A rendered buildspec CodeBuild would refuse for its size."""


def _emit(spec: dict[str, Any]) -> str:
    return _checked(_render(spec))


def _checked(rendered: str) -> str:
    if len(rendered) > MAX_BUILDSPEC_CHARS:
        raise BuildspecTooLarge(f"the buildspec is {len(rendered)} characters; CodeBuild accepts at most "
                                f"{MAX_BUILDSPEC_CHARS} inline")
    return rendered


def _render(spec: dict[str, Any]) -> str:
    # The small per-build part goes through the YAML emitter; the large command block (the whole handler) is
    # emitted once and reused: emitting ~8 KB of literal block per service was the program's main cost at scale.
    # The width keeps long values (the blue/green targets) on one line.
    text = yaml.dump(spec, Dumper=_Dumper, sort_keys=False, width=1 << 30, allow_unicode=False)
    line = f"    - {_COMMAND_PLACEHOLDER}\n"
    if text.count(line) != 1:
        raise RuntimeError("the buildspec placeholder was not emitted where the command block belongs")
    return text.replace(line, _command_item(), 1)


_COMMAND_PLACEHOLDER = "CROSSDEPLOY_COMMAND_PLACEHOLDER"


@functools.lru_cache(maxsize=1)
def _command_item() -> str:
    """The single command item as emitted YAML (at the indentation ``phases.build.commands`` uses)."""
    d = HEREDOC_DELIMITER
    # One command item: the heredoc, the write and the run must share a shell, and its status is python's.
    command = f'script="$(mktemp)"\ncat > "$script" <<\'{d}\'\n{handler_source()}{d}\npython3 "$script"\n'
    emitted = yaml.dump({"phases": {"build": {"commands": [command]}}}, Dumper=_Dumper, sort_keys=False,
                        width=1000, allow_unicode=False)
    item = emitted.split("commands:\n", 1)[1]
    if not item.startswith("    - ") or yaml.safe_load(emitted)["phases"]["build"]["commands"] != [command]:
        raise RuntimeError("the buildspec command block did not round-trip through YAML")
    return item
