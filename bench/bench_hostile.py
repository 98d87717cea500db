"""Benchmark: what a hostile YAML file costs the two YAML parsers before they refuse it (issue 13).

The release file validator (``handlers.release_file.validate``, what pull requests and the release build run) and
the stack file reader (``offline.stack_file.read_stack_file``, what the offline plan and diff run) get billion
laughs (10**9 values once aliases are expanded), nesting 100,000 deep (flow and block style), a 500,000-character
scalar, a mapping of 40,000 keys, a file far over the size limit, and, for comparison, the real files of this
repository. For each: the outcome (the first problem reported), wall time (best of ``--repeat`` runs) and peak
Python memory (tracemalloc, in a run of its own: tracing slows allocation several-fold).

Two verdicts, because the release file must also hold a legitimate release of ``MAX_TARGETS`` (2,500) targets:

* every **amplifying** input (aliases, nesting, a huge value, a huge collection, an oversized file) is refused in
  well under a second and a few MB (targets: 1 s, 5 MB);
* the **largest input within the limits** costs what PyYAML's pure-Python parser takes for that much YAML, linear
  in its size: it may cost no more than a legitimate release at the ceiling (2,500 services, generated here) plus
  half (target: at most 1.5 x its time and memory). Limits tight enough to refuse it in under a second would
  refuse releases the state machine can run.

    .venv/bin/python bench/bench_hostile.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handlers import release_file as rf  # noqa: E402
from offline.stack_file import StackFileError, StrictLoader, read_stack_file  # noqa: E402

TARGET_SECONDS = 1.0
TARGET_MB = 5.0
IN_LIMITS_FACTOR = 1.5
IN_LIMITS = "values (just in limits)"
CEILING = "legitimate release at the ceiling"
CONTEXT = rf.load_context({
    "version": 1, "partition": "aws", "registryId": "111111111111", "homeRegion": "us-east-2",
    "environments": {
        "test": {"accountId": "444455556666", "regions": ["us-east-2"],
                 "deployRoleArn": "arn:aws:iam::444455556666:role/crossdeploy-prod-deploy"},
        "prod": {"accountId": "777788889999", "regions": ["us-east-2", "us-west-2"],
                 "deployRoleArn": "arn:aws:iam::777788889999:role/crossdeploy-prod-deploy"}}})


def billion_laughs(indent: str = "") -> str:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)]
    return "".join(f"{indent}{line}\n" for line in lines)


def hostile(prefix: str, indent: str, limits: type[rf.LimitedLoader]) -> dict[str, str]:
    """Name -> text; ``prefix`` makes a stack file of it (the values under one config key)."""
    lists = min(limits.max_nodes // 21, limits.max_entries - 1)  # 21 values each: the list and its 20 items
    return {
        # The worst a file can cost without crossing any limit: as many values as allowed, in short lists.
        f"{lists * 21:,} values (just in limits)": prefix + f"{indent}x:\n" + f"{indent}  - [{', '.join('1' * 20)}]\n"
        * lists,
        "billion laughs": prefix + billion_laughs(indent),
        "nested 100,000 deep (flow)": prefix + f"{indent}x: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "nested 100,000 deep (block)": prefix + "".join(f"{indent}{'  ' * i}k{i}:\n" for i in range(2_000)),
        "scalar of 500,000 characters": prefix + f"{indent}x: " + "y" * 500_000 + "\n",
        "mapping of 40,000 keys": prefix + f"{indent}x: {{" + ", ".join(f"k{i}: {i}" for i in range(40_000)) + "}\n",
        "list of 40,000 items": prefix + "".join(f"{indent}- {i}\n" for i in range(40_000)),
        "file of 5 MB": prefix + f"{indent}# padding\n" * 500_000,
    }


def ceiling_release() -> str:
    """A release of MAX_TARGETS services shaped like examples/deployment.yaml's entries."""
    from handlers.release_limits import MAX_TARGETS

    entry = ("  - service: svc-{i}\n    clusterName: crossdeploy\n    serviceName: svc-{i}\n"
             "    image: \"111111111111.dkr.ecr.us-east-2.amazonaws.com/team/svc-{i}:1.4.{i}\"\n"
             "    container: app\n    environment: prod\n    region: us-west-2\n")
    return "services:\n" + "".join(entry.format(i=i) for i in range(MAX_TARGETS))


def release_cases() -> dict[str, str]:
    return {"examples/deployment.yaml (valid)": (ROOT / "examples" / "deployment.yaml").read_text(encoding="utf-8"),
            f"{CEILING} (2,500 services)": ceiling_release(),
            **hostile("", "", rf.LimitedLoader)}


def stack_cases() -> dict[str, str]:
    return {"Pulumi.prod.yaml (valid)": (ROOT / "Pulumi.prod.yaml").read_text(encoding="utf-8"),
            **hostile("config:\n  crossdeploy:x:\n", "    ", StrictLoader)}


def validate_release(text: str) -> str:
    problems = rf.validate(text, CONTEXT)
    return str(problems[0]) if problems else "valid"


def read_stack(path: Path) -> str:
    try:
        read_stack_file(path)
    except StackFileError as exc:
        return exc.problems[0].replace(str(path), path.name)
    return "read"


def measure(run: Callable[[], str], repeat: int) -> tuple[str, float, float]:
    best = float("inf")
    outcome = ""
    for _ in range(repeat):
        started = time.perf_counter()
        outcome = run()
        best = min(best, time.perf_counter() - started)
    tracemalloc.start()
    try:
        run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return outcome, best, peak / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case; the best is reported")
    args = parser.parse_args(argv)
    worst = 0.0, 0.0
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Pulumi.bench.yaml"
        suites = (("release file (handlers.release_file.validate)", release_cases(), validate_release),
                  ("stack file (offline.stack_file.read_stack_file, from disk)", stack_cases(),
                   lambda text: read_stack(path)))
        for title, cases, parse in suites:
            print(f"\n{title}")
            print(f"  {'input':34} {'chars':>10} {'seconds':>8} {'peak MB':>8}  outcome")
            for name, text in cases.items():
                path.write_text(text, encoding="utf-8")  # written before the clock starts: only reading counts
                outcome, seconds, megabytes = measure(lambda text=text, parse=parse: parse(text), args.repeat)
                print(f"  {name:34} {len(text):>10} {seconds:>8.3f} {megabytes:>8.2f}  {outcome[:110]}")
                results[f"{title}: {name}"] = seconds, megabytes
                if "(valid)" not in name and IN_LIMITS not in name and CEILING not in name:
                    worst = max(worst[0], seconds), max(worst[1], megabytes)
    ok = worst[0] < TARGET_SECONDS and worst[1] < TARGET_MB
    print(f"\nworst amplifying case: {worst[0]:.3f} s, {worst[1]:.2f} MB peak "
          f"(target under {TARGET_SECONDS:.0f} s and {TARGET_MB:.0f} MB): {'ok' if ok else 'OVER TARGET'}")
    ceiling = next(v for k, v in results.items() if CEILING in k)
    for key, (seconds, megabytes) in results.items():
        if IN_LIMITS in key:
            fits = seconds <= IN_LIMITS_FACTOR * ceiling[0] and megabytes <= IN_LIMITS_FACTOR * ceiling[1]
            print(f"largest input within the limits, {key.split(' (')[0]}: {seconds:.3f} s, {megabytes:.2f} MB = "
                  f"x{seconds / ceiling[0]:.2f} time, x{megabytes / ceiling[1]:.2f} memory of the legitimate release "
                  f"at the ceiling ({ceiling[0]:.3f} s, {ceiling[1]:.2f} MB; target at most x{IN_LIMITS_FACTOR}): "
                  f"{'ok' if fits else 'OVER TARGET'}")
            ok = ok and fits
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
