"""How the offline run of crossdeploy scales with the fleet, against a bare program under the same mocks.

For each fleet size the real ``__main__.py`` runs under :func:`offline.mocks.run_program` with a generated stack
config (three environments, six account-region targets, N services). In the same process and the same way, a bare
program registers exactly as many plain ``pulumi_aws`` resources (one small string input each, one explicit
provider). The bare program is the floor set by the Pulumi SDK and the mocks; the ratio says what a resource of
ours costs over that floor (our code, plus the SDK work that its richer inputs and Output dataflow cause), and µs
per resource says whether that cost stays flat as the fleet grows.

Target (from the issue): program/bare <= 1.3 at 300 services, time per resource flat.

Usage::

    .venv/bin/python bench/bench_program.py                      # sizes 10 100 300, median of 3
    .venv/bin/python bench/bench_program.py --sizes 10 50 --repeat 1 --json out.json
    .venv/bin/python bench/bench_program.py --profile /tmp/prof  # also cProfile both programs at the largest size
    .venv/bin/python bench/bench_program.py --gc off               # the same without run_program's one collection

This is a script, not a timed test: it reports figures and a verdict; ``--strict`` turns a missed target into
exit status 1 for anyone who wants to gate on it. Single runs vary by up to 25% on a shared machine; the program
and bare runs are interleaved so that drift hits both sides of the ratio alike, and the spread of the per-pair
ratios is printed next to the median ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python bench/bench_program.py` puts bench/ on sys.path, not the project root; the program imports `components`
# and the harness lives in `offline`, both relative to the root (pytest gets the same from `pythonpath = ["."]`).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from offline.mocks import PROGRAM, ProgramRun, run_program  # noqa: E402

TOOLS_ACCOUNT = "111111111111"
HOME_REGION = "us-east-2"
# Promotion order; 1 + 2 + 3 = six account-region targets over three regions, approval only before prod.
ENVIRONMENTS: tuple[dict[str, Any], ...] = (
    {"name": "test", "accountId": "222222222222", "regions": ["us-east-2"]},
    {"name": "staging", "accountId": "333333333333", "regions": ["us-east-2", "us-west-2"]},
    {"name": "prod", "accountId": "444444444444", "regions": ["us-east-2", "us-west-2", "eu-west-1"],
     "requireApproval": True, "strategy": "canary"},
)
# Every service is created in every environment (VPC, ALB, cluster, service, ...): the workloads are most of the
# program since the workloads issue, and prod deploys blue/green (two target groups, a test rule, a deployment
# group and an alarm per service and region), the heavier of the two strategies.
TARGET_RATIO = 1.3

# The bare program: the least a Pulumi program can do to register `bench:resources` custom resources: plain
# pulumi_aws resources with one string input each, in round robin over `bench:kinds`, all on one explicit provider
# (the real program disables default providers too, so the bare one must not lean on one), answered by the same
# `AwsMocks`. The mix matters: the SDK creates an Output for every *output* property of a typed resource, so per
# resource the floor ranges from ~1.9 ms (LogGroup, Repository, Role: 11-15 properties) to ~3.6 ms (Bucket: 28)
# on the reference machine with the collector off. The default mix is neutral rather than matched to the
# program; `--bare-kinds role,repository,loggroup` gives a floor made of (light) types the program registers.
BARE_KINDS = ("topic", "queue", "loggroup", "repository", "bucket")
BARE_PROGRAM = '''\
import pulumi
import pulumi_aws as aws

config = pulumi.Config("bench")
count = config.require_int("resources")
provider = aws.Provider("bare", region="us-east-2", allowed_account_ids=["111111111111"])
opts = pulumi.ResourceOptions(provider=provider)
makers = {
    "topic": lambda i: aws.sns.Topic(f"topic-{i}", name=f"bare-topic-{i}", opts=opts),
    "queue": lambda i: aws.sqs.Queue(f"queue-{i}", name=f"bare-queue-{i}", opts=opts),
    "loggroup": lambda i: aws.cloudwatch.LogGroup(f"logs-{i}", name=f"/bare/{i}", opts=opts),
    "repository": lambda i: aws.ecr.Repository(f"repo-{i}", name=f"bare-repo-{i}", opts=opts),
    "bucket": lambda i: aws.s3.Bucket(f"bucket-{i}", bucket=f"bare-bucket-{i}", opts=opts),
    "role": lambda i: aws.iam.Role(f"role-{i}", assume_role_policy="{}", opts=opts),
}
kinds = [makers[kind] for kind in config.require("kinds").split(",")]
for i in range(count):
    kinds[i % len(kinds)](i)
'''
BARE_KIND_CHOICES = ("topic", "queue", "loggroup", "repository", "bucket", "role")



def stack_config(services: int, prod_strategy: str = "canary") -> dict[str, Any]:
    """A ``config:`` block for ``services`` services over the three environments, as a stack file would give it."""
    return {
        "pulumi:disable-default-providers": ["aws"],
        "aws:region": HOME_REGION,
        "crossdeploy:tools": {"accountId": TOOLS_ACCOUNT, "region": HOME_REGION},
        "crossdeploy:environments": [
            {**env, **({"strategy": prod_strategy} if env["name"] == "prod" else {})} for env in ENVIRONMENTS],
        "crossdeploy:services": [{"name": f"svc-{i:03d}"} for i in range(services)],
        "crossdeploy:notifications": {"emails": ["release-managers@example.com"]},
    }


def bare_config(resources: int, kinds: Sequence[str] = BARE_KINDS) -> dict[str, Any]:
    return {
        "pulumi:disable-default-providers": ["aws"],
        "aws:region": HOME_REGION,
        "bench:resources": str(resources),
        "bench:kinds": ",".join(kinds),
    }


def custom_count(run: ProgramRun) -> int:
    """Custom resources AWS would receive: providers and components excluded."""
    return len(run.custom())


def _timed_call(fn: Callable[[], ProgramRun], gc_mode: str) -> tuple[float, ProgramRun]:
    # Collect the previous run's garbage untimed, so one run's leftovers are not billed to the next.
    gc.collect()
    if gc_mode == "off":
        gc.disable()
    try:
        start = time.perf_counter()
        run = fn()
        return time.perf_counter() - start, run
    finally:
        gc.enable()


@dataclass(frozen=True)
class Setup:
    """What every measurement runs: the program copy, the bare program and its mix, and the collector mode."""

    program: Path
    bare_program: Path
    bare_kinds: tuple[str, ...] = BARE_KINDS
    gc_mode: str = "default"
    prod_strategy: str = "canary"

    def run(self, services: int) -> ProgramRun:
        return run_program(stack_config(services, self.prod_strategy), stack="bench", program=self.program)

    def run_bare(self, resources: int) -> ProgramRun:
        return run_program(bare_config(resources, self.bare_kinds), stack="bench", program=self.bare_program)


@dataclass
class Row:
    services: int
    resources: int
    resources_per_service: float
    program_s: float
    bare_s: float
    ratio: float
    """Median program time over median bare time."""
    program_us_per_resource: float
    bare_us_per_resource: float
    program_samples: list[float]
    bare_samples: list[float]

    @property
    def pair_ratios(self) -> list[float]:
        """Ratio of each interleaved (program, bare) pair: their spread shows how far to trust ``ratio``."""
        return [p / b for p, b in zip(self.program_samples, self.bare_samples, strict=True)]


def measure(services: int, repeat: int, setup: Setup) -> Row:
    """Median of ``repeat`` runs of each program; the bare program registers as many resources as the real one."""
    _, run = _timed_call(lambda: setup.run(services), setup.gc_mode)  # untimed: learn the count
    resources = custom_count(run)
    del run
    program_samples: list[float] = []
    bare_samples: list[float] = []
    # Interleaved (program, bare, program, bare, ...) rather than all of one then all of the other: on a shared
    # machine the speed drifts by 10-20% over minutes, and interleaving lets both sides see the same drift.
    for _ in range(repeat):
        seconds, _ = _timed_call(lambda: setup.run(services), setup.gc_mode)
        program_samples.append(seconds)
        seconds, bare_run = _timed_call(lambda: setup.run_bare(resources), setup.gc_mode)
        bare_samples.append(seconds)
        if custom_count(bare_run) != resources:  # the comparison means nothing unless the counts match
            raise RuntimeError(f"bare program registered {custom_count(bare_run)} resources, expected {resources}")
        del bare_run
    program_s, bare_s = statistics.median(program_samples), statistics.median(bare_samples)
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


def marginal_us_per_resource(rows: Sequence[Row], attr: str) -> float | None:
    """Least-squares slope of seconds over resources, in µs: the cost of one more resource, fixed costs aside."""
    if len(rows) < 2:
        return None
    xs = [r.resources for r in rows]
    ys = [getattr(r, attr) for r in rows]
    return statistics.linear_regression(xs, ys).slope * 1e6


def print_table(rows: Sequence[Row]) -> None:
    header = (f"{'services':>8} {'resources':>9} {'res/svc':>7} {'program s':>9} {'bare s':>8} {'ratio':>6} "
              f"{'pair ratios':>11} {'prog µs/res':>11} {'bare µs/res':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        spread = f"{min(r.pair_ratios):.2f}-{max(r.pair_ratios):.2f}"
        print(f"{r.services:>8} {r.resources:>9} {r.resources_per_service:>7.2f} {r.program_s:>9.3f} "
              f"{r.bare_s:>8.3f} {r.ratio:>6.2f} {spread:>11} {r.program_us_per_resource:>11.0f} "
              f"{r.bare_us_per_resource:>11.0f}")
    program, bare = marginal_us_per_resource(rows, "program_s"), marginal_us_per_resource(rows, "bare_s")
    if program is not None and bare is not None:
        print(f"marginal cost (slope over sizes): program {program:.0f} µs/resource, bare {bare:.0f} µs/resource, "
              f"ratio {program / bare:.2f}")


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
        if len(rows) > 2:
            # Growth between the two largest sizes shows whether the cost per resource has settled, apart from the
            # smallest fleet's start-up. (Before run_program paused the collector, the smallest fleet also finished
            # before the collector's first full collections, which cost about half of a larger run.)
            before = rows[-2]
            lines.append(f"program µs/resource {before.services} -> {last.services} services: "
                         f"x{last.program_us_per_resource / before.program_us_per_resource:.2f}")
    return ok, lines


def _category(filename: str, programs: Mapping[str, str]) -> str:
    """Which code a profiled function belongs to: ours (by path under the project), a program, or a library."""
    path = filename.replace("\\", "/")
    root = str(ROOT).replace("\\", "/")
    if filename in programs:  # the copies of __main__.py and the bare program run from a temporary directory
        return programs[filename]
    if path.startswith(f"{root}/components/"):
        return "ours: components/"
    if path.startswith(f"{root}/offline/"):
        return "ours: offline/mocks.py"
    if path == f"{root}/__main__.py":
        return "ours: __main__.py"
    for marker, name in (("/pulumi_aws/", "pulumi_aws"), ("/pulumi/", "pulumi SDK"), ("/grpc/", "grpc"),
                         ("/google/protobuf/", "protobuf"), ("/yaml/", "yaml"), ("/pydantic", "pydantic"),
                         ("/botocore/", "botocore"), ("/asyncio/", "asyncio"), ("/json/", "json"),
                         ("/traceback.py", "traceback (Pulumi's per-resource stack trace)"),
                         ("/linecache.py", "traceback (Pulumi's per-resource stack trace)"),
                         ("/pathlib.py", "pathlib (stack trace source URIs)")):
        if marker in path:
            return name
    return "other (builtins, stdlib)"


def profiled(fn: Callable[[], object]) -> pstats.Stats:
    """cProfile ``fn`` in every thread it uses, counting CPU time per thread.

    cProfile only sees the thread that enables it, and Pulumi registers each resource from the event loop's default
    executor: the MockMonitor's (de)serialisation and our ``AwsMocks.new_resource`` run there. A fresh event loop
    gets fresh executor threads, each profiled from its start by wrapping ``Thread.run``; shutting the executor
    down closes their profiles. ``thread_time`` keeps the time a thread spends waiting for the GIL out of the
    figures, so the threads' times add up to the CPU time actually spent.
    """
    profiles: list[cProfile.Profile] = []
    original_run = threading.Thread.run

    def run(thread: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()
        try:
            original_run(thread)
        finally:
            profile.disable()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    threading.Thread.run = run  # type: ignore[method-assign]
    main = cProfile.Profile(time.thread_time)
    gc.collect()
    try:
        main.enable()
        try:
            fn()
        finally:
            main.disable()
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        threading.Thread.run = original_run  # type: ignore[method-assign]
        loop.close()
        asyncio.set_event_loop(asyncio.new_event_loop())
    return pstats.Stats(main, *profiles)


StatsEntries = Mapping[tuple[str, int, str], tuple[int, int, float, float, Any]]


def _by_category(entries: StatsEntries, programs: Mapping[str, str]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for (filename, _, _), (_, _, self_time, _, _) in entries.items():
        category = _category(filename, programs)
        totals[category] = totals.get(category, 0.0) + self_time
    return totals


def report_profile(services: int, out_dir: Path, setup: Setup, top: int) -> None:
    """Profile both programs at ``services``; print where the program's extra time goes and our own hotspots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    program_file, bare_program = setup.program, setup.bare_program
    resources = custom_count(setup.run(services))
    program = profiled(lambda: setup.run(services))
    program.dump_stats(out_dir / "program.prof")
    bare = profiled(lambda: setup.run_bare(resources))
    bare.dump_stats(out_dir / "bare.prof")
    entries: StatsEntries = program.stats  # type: ignore[attr-defined]
    programs = {str(program_file): "ours: __main__.py", str(bare_program): "bare program"}
    program_cat = _by_category(entries, programs)
    bare_cat = _by_category(bare.stats, programs)  # type: ignore[attr-defined]
    program_total, bare_total = sum(program_cat.values()), sum(bare_cat.values())

    print(f"\nprofile at {services} services ({resources} resources), CPU seconds under cProfile (all threads; "
          f"profiling inflates them several-fold), saved to {out_dir}/program.prof and bare.prof")
    print(f"  {'self time by category':<48} {'program':>8} {'bare':>8} {'extra':>8} {'share of extra':>14}")
    extra_total = program_total - bare_total
    for name in sorted(set(program_cat) | set(bare_cat), key=lambda k: bare_cat.get(k, 0) - program_cat.get(k, 0)):
        p_s, b_s = program_cat.get(name, 0.0), bare_cat.get(name, 0.0)
        print(f"  {name:<48} {p_s:8.2f} {b_s:8.2f} {p_s - b_s:8.2f} {(p_s - b_s) / extra_total:14.0%}")
    print(f"  {'total':<48} {program_total:8.2f} {bare_total:8.2f} {extra_total:8.2f}")

    def cumulative(match: Callable[[str, str], bool]) -> float:
        return sum(v[3] for (f, _, name), v in entries.items() if match(f, name))

    # The mocks' own bookkeeping (building outputs, Recorded rows) versus the Pulumi MockMonitor around it.
    mocks_own = cumulative(lambda f, name: f.endswith("offline/mocks.py") and name in ("new_resource", "note_parent"))
    monitor = cumulative(lambda f, name: f.endswith("offline/mocks.py") and name == "RegisterResource")
    print(f"  AwsMocks.new_resource + note_parent: {mocks_own:.2f} s ({mocks_own / program_total:.1%} of the program); "
          f"the MockMonitor registration around it (SDK (de)serialisation): {monitor:.2f} s "
          f"({monitor / program_total:.1%})")

    ours = [(key, value) for key, value in entries.items() if _category(key[0], programs).startswith("ours")]
    print(f"  our functions by cumulative time (top {top}; includes the SDK work they call synchronously, not the "
          "asynchronous registration that follows):")
    for (filename, line, func), (_, calls, self_time, cum_time, _) in sorted(ours, key=lambda kv: -kv[1][3])[:top]:
        where = f"{'__main__.py' if filename == str(program_file) else Path(filename).relative_to(ROOT)}:{line}"
        print(f"    {cum_time:7.2f} s cum {self_time:6.2f} s self {calls:>7} calls  {func}  ({where})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 300], help="service counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--gc", choices=("default", "off"), default="default",
                        help="run_program pauses the cyclic garbage collector during a run and collects the run's "
                             "garbage once at its end; 'off' keeps the collector off for the whole timed call, so "
                             "that collection happens untimed between runs instead: shows what it costs")
    parser.add_argument("--bare-kinds", default=",".join(BARE_KINDS),
                        help=f"comma-separated resource kinds of the bare program, from {', '.join(BARE_KIND_CHOICES)}")
    parser.add_argument("--flat-tolerance", type=float, default=0.2,
                        help="µs/resource may grow this much from smallest to largest size and still count as flat")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also cProfile both programs at the largest size, writing program.prof and bare.prof")
    parser.add_argument("--top", type=int, default=15, help="our functions listed by --profile")
    parser.add_argument("--prod-strategy", choices=("rolling", "blue-green", "canary", "linear", "codedeploy"),
                        default="canary",
                        help="deployment strategy of the prod environment (three of the six targets)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    bare_kinds = tuple(k.strip() for k in args.bare_kinds.split(",") if k.strip())
    if not bare_kinds or not set(bare_kinds) <= set(BARE_KIND_CHOICES):
        parser.error(f"--bare-kinds: choose from {', '.join(BARE_KIND_CHOICES)}")

    print(f"Python {platform.python_version()} ({platform.python_implementation()}), {os.cpu_count()} CPUs, "
          f"{platform.system()} {platform.machine()}, pulumi {version('pulumi')}, pulumi_aws {version('pulumi_aws')}")
    print(f"targets: {len(ENVIRONMENTS)} environments, {sum(len(e['regions']) for e in ENVIRONMENTS)} account-region "
          f"targets; median of {args.repeat} interleaved run(s) per figure; garbage collector {args.gc}; bare mix "
          f"{', '.join(bare_kinds)}; prod {args.prod_strategy}", flush=True)

    with tempfile.TemporaryDirectory(prefix="crossdeploy-bench-") as tmp:
        # run_program re-reads the program file on every run while components/ stays as first imported, so an edit
        # made during a several-minute benchmark would mix two versions (or fail). A copy taken now, imported in
        # full by the warm-up run below, keeps every run on the same code.
        program = Path(tmp) / "program" / "__main__.py"
        program.parent.mkdir()
        program.write_text(PROGRAM.read_text())
        bare_program = Path(tmp) / "bare" / "__main__.py"
        bare_program.parent.mkdir()
        bare_program.write_text(BARE_PROGRAM)
        setup = Setup(program, bare_program, bare_kinds, args.gc, args.prod_strategy)
        # One untimed run of each first: imports, pulumi_aws module loading and botocore's region table (cached
        # by components.config) are paid once per process and would otherwise inflate only the first size.
        setup.run(1)
        setup.run_bare(len(BARE_KIND_CHOICES))

        rows = []
        for services in sizes:
            rows.append(measure(services, args.repeat, setup))
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
                "pulumi": version("pulumi"),
                "pulumi_aws": version("pulumi_aws"),
                "repeat": args.repeat,
                "gc": args.gc,
                "bare_kinds": list(bare_kinds),
                "target_ratio": TARGET_RATIO,
                "met": ok,
                "marginal_us_per_resource": {"program": marginal_us_per_resource(rows, "program_s"),
                                             "bare": marginal_us_per_resource(rows, "bare_s")},
                "rows": [{**asdict(r), "pair_ratios": r.pair_ratios} for r in rows],
            }, indent=2) + "\n")
        if args.profile:
            report_profile(sizes[-1], args.profile, setup, args.top)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
