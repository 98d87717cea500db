"""How large a release can be, and how long it takes: one source for the release file's validator (pull requests,
the pipeline's build), the release's ``prepare`` step, the state machine and the plan.

Stdlib only: the validator bundle ships this file next to ``handlers/release_file.py`` (components/release.py).

Why these numbers (README, "How big a release can be"):

* The targets travel in S3, not in the execution's state: ``prepare`` writes one items file per account-region and
  the state machine's Distributed Maps read them (ItemReader) and write their results there (ResultWriter). State
  holds one small descriptor per account-region, far below Step Functions' 256 KiB, and every target runs in a child
  execution with its own 25,000-event history (a service's worst case is a few hundred events).
* What is left is ``prepare``: one Lambda (at most 900 s) reads every target through its deploy role (DescribeServices
  by ten, DescribeTaskDefinition, ListTargetsByRule, one deploy document per service) and ECR for every image.
  :data:`MAX_TARGETS` keeps that within a few minutes at ECS's describe rates, with room for throttling.
* :data:`MAX_ACCOUNT_REGIONS` and :data:`MAX_CONCURRENT_TARGETS`: every account-region runs at once (its own Map
  Run, up to the bound), so a release keeps account-regions x bound check Lambdas running; Lambda's default regional
  quota is 1,000 concurrent executions, shared with the rest of the tools account.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Services plus scheduled tasks in one release: at least 2,000 services and their scheduled tasks, with prepare's
# reading of every target a few minutes at most (bench/bench_release.py) and the release file's YAML under 1 MB.
MAX_TARGETS = 2_500
# Distinct (account, region) pairs in one release: the outer Map runs them all at once.
MAX_ACCOUNT_REGIONS = 40
# release.maxConcurrency: targets deployed at once in each account-region. ECS throttles UpdateService and the
# describe calls per account and region; 50 rollouts at once is far beyond what a team watches, and keeps
# account-regions x bound within Lambda's default 1,000 concurrent executions for 20 account-regions.
MIN_CONCURRENCY, MAX_CONCURRENCY = 1, 50
DEFAULT_CONCURRENCY = 10
# Check Lambdas running at once (account-regions x bound): Lambda's default regional concurrency is 1,000, shared
# with everything else in the tools account; keep the release to most of it.
MAX_CONCURRENT_TARGETS = 800


def waves(targets: int, bound: int) -> int:
    """How many rounds of at most ``bound`` targets an account-region with ``targets`` targets takes."""
    return math.ceil(targets / bound) if targets > 0 else 0


def ceiling_problems(targets_per_group: Mapping[tuple[str, str], int], bound: int | None = None) -> list[str]:
    """Why a release with ``targets_per_group`` ((account, region) -> services + tasks) is over what the state
    machine holds, each with its limit; empty if it fits. ``bound``: release.maxConcurrency, if known."""
    problems = []
    total = sum(targets_per_group.values())
    if total > MAX_TARGETS:
        problems.append(f"the release has {total} targets (services and scheduled tasks), over the limit of "
                        f"{MAX_TARGETS} per release (prepare reads and snapshots every target in one Lambda run of "
                        "at most 900 s): split it into several releases")
    if len(targets_per_group) > MAX_ACCOUNT_REGIONS:
        problems.append(f"the release spans {len(targets_per_group)} account-regions, over the limit of "
                        f"{MAX_ACCOUNT_REGIONS} (every account-region deploys at once): split it into several "
                        "releases")
    if bound is not None and min(len(targets_per_group), MAX_ACCOUNT_REGIONS) * bound > MAX_CONCURRENT_TARGETS:
        problems.append(f"{len(targets_per_group)} account-regions x release.maxConcurrency {bound} would run "
                        f"{len(targets_per_group) * bound} targets at once, over the limit of "
                        f"{MAX_CONCURRENT_TARGETS} (Lambda's default 1,000 concurrent executions): lower "
                        "release.maxConcurrency or split the release")
    return problems


if __name__ == "__main__":
    # Not a command line: say what it is rather than import, do nothing and exit 0 (which reads as success).
    import sys

    print("handlers.release_limits: not a command line; it holds the release ceiling that "
          "`python -m handlers.release_file validate` and the release's prepare step enforce", file=sys.stderr)
    sys.exit(2)
