"""How the offline run of crossdeploy scales with the fleet, against a bare program under the same mocks.

For each fleet size the real ``__main__.py`` runs under :func:`offline.mocks.run_program` with a generated stack
config (three environments, six account-region targets, N services). In the same process and the same way, a bare
program registers exactly as many plain ``pulumi_aws`` resources (one small string input each, one explicit
provider). The bare program is the floor set by the Pulumi SDK and the mocks; the ratio says what our components
add on top of it, and µs per resource says whether that overhead stays flat as the fleet grows.

Target (from the issue): program/bare <= 1.3 at 300 services, time per resource flat.

Usage::

    .venv/bin/python bench/bench_program.py                      # sizes 10 100 300, median of 3
    .venv/bin/python bench/bench_program.py --sizes 10 50 --repeat 1 --json out.json
    .venv/bin/python bench/bench_program.py --profile prog.prof  # also cProfile the largest program run

This is a script, not a timed test: it reports figures and a verdict; ``--strict`` turns a missed target into
exit status 1 for anyone who wants to gate on it.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python bench/bench_program.py` puts bench/ on sys.path, not the project root; the program imports `components`
# and the harness lives in `offline`, both relative to the root (pytest gets the same from `pythonpath = ["."]`).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from offline.mocks import ProgramRun, run_program  # noqa: E402

TOOLS_ACCOUNT = "111111111111"
HOME_REGION = "us-east-2"
# Promotion order; 1 + 2 + 3 = six account-region targets over three regions, approval only before prod.
ENVIRONMENTS: tuple[dict[str, Any], ...] = (
    {"name": "test", "accountId": "222222222222", "regions": ["us-east-2"]},
    {"name": "staging", "accountId": "333333333333", "regions": ["us-east-2", "us-west-2"]},
    {"name": "prod", "accountId": "444444444444", "regions": ["us-east-2", "us-west-2", "eu-west-1"],
     "requireApproval": True},
)
TARGET_RATIO = 1.3

# The bare program: the least a Pulumi program can do to register `bench:resources` custom resources. A mix of
# types (rather than N copies of one) so no single mock branch in `_outputs` dominates; each type is answered by
# the same `AwsMocks` as the real program, with one string input, all on one explicit provider (the real program
# disables default providers too, so the bare one must not lean on one).
BARE_PROGRAM = '''\
import pulumi
import pulumi_aws as aws

count = pulumi.Config("bench").require_int("resources")
provider = aws.Provider("bare", region="us-east-2", allowed_account_ids=["111111111111"])
opts = pulumi.ResourceOptions(provider=provider)
kinds = (
    lambda i: aws.sns.Topic(f"topic-{i}", name=f"bare-topic-{i}", opts=opts),
    lambda i: aws.sqs.Queue(f"queue-{i}", name=f"bare-queue-{i}", opts=opts),
    lambda i: aws.cloudwatch.LogGroup(f"logs-{i}", name=f"/bare/{i}", opts=opts),
    lambda i: aws.ecr.Repository(f"repo-{i}", name=f"bare-repo-{i}", opts=opts),
    lambda i: aws.s3.Bucket(f"bucket-{i}", bucket=f"bare-bucket-{i}", opts=opts),
)
for i in range(count):
    kinds[i % len(kinds)](i)
'''


def stack_config(services: int) -> dict[str, Any]:
    """A ``config:`` block for ``services`` services over the three environments, as a stack file would give it."""
    return {
        "pulumi:disable-default-providers": ["aws"],
        "aws:region": HOME_REGION,
        "crossdeploy:tools": {"accountId": TOOLS_ACCOUNT, "region": HOME_REGION},
        "crossdeploy:environments": [dict(env) for env in ENVIRONMENTS],
        "crossdeploy:services": [{"name": f"svc-{i:03d}"} for i in range(services)],
        "crossdeploy:notifications": {"emails": ["release-managers@example.com"]},
    }


def bare_config(resources: int) -> dict[str, Any]:
    return {
        "pulumi:disable-default-providers": ["aws"],
        "aws:region": HOME_REGION,
        "bench:resources": str(resources),
    }


def custom_count(run: ProgramRun) -> int:
    """Custom resources AWS would receive: providers and components excluded."""
    return len(run.custom())


def timed(fn: Callable[[], ProgramRun], repeat: int) -> tuple[float, list[float], ProgramRun]:
    """Median wall time of ``repeat`` calls, every sample, and the last run (for counting)."""
    samples: list[float] = []
    run = ProgramRun()
    for _ in range(repeat):
        # Collect leftovers of the previous run first, so one run's garbage is not billed to the next.
        gc.collect()
        start = time.perf_counter()
        run = fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples, run


@dataclass
class Row:
    services: int
    resources: int
    resources_per_service: float
    program_s: float
    bare_s: float
    ratio: float
    program_us_per_resource: float
    bare_us_per_resource: float
    program_samples: list[float]
    bare_samples: list[float]


def measure(services: int, repeat: int, bare_program: Path) -> Row:
    program_s, program_samples, run = timed(lambda: run_program(stack_config(services), stack="bench"), repeat)
    resources = custom_count(run)
    bare_s, bare_samples, bare_run = timed(
        lambda: run_program(bare_config(resources), stack="bench", program=bare_program), repeat)
    if custom_count(bare_run) != resources:  # the comparison means nothing unless the counts match
        raise RuntimeError(f"bare program registered {custom_count(bare_run)} resources, expected {resources}")
    return Row(
        services=services,
        resources=resources,
        resources_per_service=resources / services,
        program_s=program_s,
        bare_s=bare_s,
        ratio=program_s / bare_s,
        program_us_per_resource=program_s / resources * 1e6,
        bare_us_per_resource=bare_s / resources * 1e6,
        program_samples=program_samples,
        bare_samples=bare_samples,
    )


def print_table(rows: Sequence[Row]) -> None:
    header = (f"{'services':>8} {'resources':>9} {'res/svc':>7} {'program s':>9} {'bare s':>8} {'ratio':>6} "
              f"{'prog µs/res':>11} {'bare µs/res':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.services:>8} {r.resources:>9} {r.resources_per_service:>7.2f} {r.program_s:>9.3f} "
              f"{r.bare_s:>8.3f} {r.ratio:>6.2f} {r.program_us_per_resource:>11.0f} {r.bare_us_per_resource:>11.0f}")


def verdict(rows: Sequence[Row], flat_tolerance: float) -> tuple[bool, list[str]]:
    """Judge the issue's two targets on the largest size and on growth of µs/resource smallest -> largest."""
    first, last = rows[0], rows[-1]
    lines = []
    ratio_ok = last.ratio <= TARGET_RATIO
    lines.append(f"ratio at {last.services} services: {last.ratio:.2f} (target <= {TARGET_RATIO}) "
                 f"-> {'ok' if ratio_ok else 'MISSED'}")
    ok = ratio_ok
    if len(rows) > 1:
        growth = last.program_us_per_resource / first.program_us_per_resource
        bare_growth = last.bare_us_per_resource / first.bare_us_per_resource
        flat_ok = growth <= 1 + flat_tolerance
        lines.append(f"program µs/resource {first.services} -> {last.services} services: x{growth:.2f} "
                     f"(bare x{bare_growth:.2f}; flat = within +{flat_tolerance:.0%}) "
                     f"-> {'ok' if flat_ok else 'MISSED'}")
        ok = ok and flat_ok
    return ok, lines


def _category(filename: str) -> str:
    """Which code a profiled function belongs to: ours (by path under the project) or a library."""
    path = filename.replace("\\", "/")
    root = str(ROOT).replace("\\", "/")
    if path.startswith(f"{root}/components/"):
        return "ours: components/"
    if path.startswith(f"{root}/offline/"):
        return "ours: offline/mocks.py"
    if path == f"{root}/__main__.py":
        return "ours: __main__.py"
    for marker, name in (("/pulumi_aws/", "pulumi_aws"), ("/pulumi/", "pulumi SDK"), ("/grpc/", "grpc"),
                         ("/google/protobuf/", "protobuf"), ("/pydantic", "pydantic"), ("/botocore/", "botocore"),
                         ("/asyncio/", "asyncio"), ("/json/", "json")):
        if marker in path:
            return name
    return "other (stdlib, builtins)"


def profile(services: int, out: Path, top: int) -> None:
    """cProfile one program run and print self time by category, then our own functions by cumulative time."""
    config = stack_config(services)
    gc.collect()
    profiler = cProfile.Profile()
    profiler.enable()
    run_program(config, stack="bench")
    profiler.disable()
    profiler.dump_stats(out)
    stats = pstats.Stats(profiler)
    entries: Mapping[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in entries.values())
    by_category: dict[str, float] = {}
    for (filename, _, _), (_, _, tt, _, _) in entries.items():
        by_category[_category(filename)] = by_category.get(_category(filename), 0.0) + tt
    print(f"\nprofile of the {services}-service program ({total:.2f} s self time under cProfile), saved to {out}")
    print("self time by category:")
    for name, tt in sorted(by_category.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<28} {tt:7.2f} s {tt / total:6.1%}")
    ours = [(key, value) for key, value in entries.items() if _category(key[0]).startswith("ours")]
    print(f"our functions by cumulative time (top {top}; cumulative includes the SDK work they trigger):")
    for (filename, line, func), (_, calls, tt, ct, _) in sorted(ours, key=lambda kv: -kv[1][3])[:top]:
        where = f"{Path(filename).relative_to(ROOT)}:{line}"
        print(f"  {ct:7.2f} s cum {tt:6.2f} s self {calls:>8} calls  {func}  ({where})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 300], help="service counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--flat-tolerance", type=float, default=0.2,
                        help="µs/resource may grow this much from smallest to largest size and still count as flat")
    parser.add_argument("--profile", type=Path, help="cProfile one program run at the largest size into this file")
    parser.add_argument("--top", type=int, default=20, help="our functions listed by --profile")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))

    print(f"Python {platform.python_version()} ({platform.python_implementation()}), {os.cpu_count()} CPUs, "
          f"{platform.system()} {platform.machine()}")
    print(f"targets: 3 environments, {sum(len(e['regions']) for e in ENVIRONMENTS)} account-region targets; "
          f"median of {args.repeat} run(s) per figure", flush=True)

    with tempfile.TemporaryDirectory(prefix="crossdeploy-bench-") as tmp:
        bare_program = Path(tmp) / "__main__.py"
        bare_program.write_text(BARE_PROGRAM)
        # One untimed run of each first: imports, pulumi_aws module loading and botocore's region table (cached
        # by components.config) are paid once per process and would otherwise inflate only the first size.
        run_program(stack_config(1), stack="bench")
        run_program(bare_config(5), stack="bench", program=bare_program)

        rows = []
        for services in sizes:
            rows.append(measure(services, args.repeat, bare_program))
            print(f"  measured {services} services", flush=True)

    print()
    print_table(rows)
    ok, lines = verdict(rows, args.flat_tolerance)
    print()
    for line in lines:
        print(line)

    if args.json:
        args.json.write_text(json.dumps({
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "repeat": args.repeat,
            "target_ratio": TARGET_RATIO,
            "met": ok,
            "rows": [asdict(r) for r in rows],
        }, indent=2) + "\n")
    if args.profile:
        profile(sizes[-1], args.profile, args.top)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
