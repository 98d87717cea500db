#!/usr/bin/env python3
"""crossdeploy's development commands, needing nothing on the machine but Python 3.11 or newer.

    python3 dev.py plan     # the offline plan of the prod stack: python -m offline.plan prod
    python3 dev.py test     # ruff, then the tests: python -m pytest -q -n auto

Each first makes sure .venv holds requirements-dev.txt (the runtime plus the test tools): it creates .venv when it is
missing, unusable or made by a Python older than 3.11, and runs pip when the requirement files changed since the last
install (their hash is stored in the venv), so a second run installs nothing. ``python3 dev.py --help`` lists the rest.

A Python script rather than a Makefile: python3 is the one thing a fresh machine needs anyway, make is missing on
Windows and on slim images, and the staleness check (a hash of the requirement files) is plain Python here.

Only the standard library, and nothing before the version check that an older Python 3 cannot parse: an old
interpreter must get the one-line refusal, not a SyntaxError or a traceback.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

REQUIRED = (3, 11)  # pyproject.toml's requires-python; tests/test_dev_script.py keeps the two equal
EXIT_OLD_PYTHON = 2


def version_problem(found: tuple) -> str:
    """The refusal for an interpreter older than REQUIRED ('' when it will do): one line, both versions named."""
    if tuple(found[:2]) >= REQUIRED:
        return ""
    version = ".".join(str(part) for part in found[:3])
    needed = ".".join(str(part) for part in REQUIRED)
    return f"dev.py: crossdeploy needs Python {needed} or newer, found Python {version} ({sys.executable})"


# Before anything below is even defined: their annotations (list[str], X | None) fail at definition on old Pythons.
if __name__ == "__main__" and version_problem(sys.version_info):
    print(version_problem(sys.version_info), file=sys.stderr)
    sys.exit(EXIT_OLD_PYTHON)

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"  # the one Pulumi.yaml names, so `pulumi preview` on a developer's machine uses the same venv
DEV_REQUIREMENTS = "requirements-dev.txt"
# Every file pip reads for DEV_REQUIREMENTS (it includes requirements.txt with -r): a change to any of them makes the
# venv stale. tests/test_dev_script.py checks that this covers every -r/-c line.
REQUIREMENT_FILES = ("requirements.txt", DEV_REQUIREMENTS)
# Inside the venv, so deleting .venv forgets it too and a venv never claims requirements it does not hold.
STAMP = ".requirements.sha256"
PLAN = ["-m", "offline.plan"]
DEFAULT_STACK = "prod"
LINT = ["-m", "ruff", "check", "."]
# The README's and the pull-request workflow's test command, unchanged: tests/test_workflow.py holds those two to it,
# tests/test_dev_script.py this one.
TEST = ["-m", "pytest", "-q", "-n", "auto"]


def say(message: str) -> None:
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_version(venv: Path) -> tuple[int, ...] | None:
    """The Python version recorded in the venv's pyvenv.cfg (None when absent or unreadable): no subprocess needed."""
    try:
        lines = (venv / "pyvenv.cfg").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() in ("version", "version_info"):
            try:
                return tuple(int(part) for part in value.strip().split(".")[:3])
            except ValueError:
                return None
    return None


def venv_problem(venv: Path) -> str:
    """Why the venv has to be created from scratch ('' when it can be installed into as it is)."""
    if not venv.exists():
        return f"{venv.name} does not exist"
    if not venv_python(venv).exists():  # also a dangling link: the Python that made it was removed or upgraded
        return f"{venv.name} has no working Python"
    version = venv_version(venv)
    if version is None or version[:2] < REQUIRED:
        found = ".".join(map(str, version)) if version else "an unknown Python"
        return f"{venv.name} was made by {found}, older than {'.'.join(map(str, REQUIRED))}"
    return ""


def requirements_digest(root: Path, files: tuple[str, ...] = REQUIREMENT_FILES) -> str:
    """SHA-256 over the requirement files' names and bytes: what the venv was installed from."""
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0")
        path = root / name
        digest.update(path.read_bytes() if path.exists() else b"(missing)")
        digest.update(b"\0")
    return digest.hexdigest()


def installed_digest(venv: Path) -> str:
    try:
        return (venv / STAMP).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def run(command: list[str], env: dict[str, str] | None = None) -> int:
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def ensure_venv(venv: Path = VENV, recreate: bool = False) -> int:
    """Make ``venv`` hold exactly what the requirement files pin, doing only what is missing; 0 or pip's exit code."""
    problem = "--recreate" if recreate else venv_problem(venv)
    if problem:
        say(f"creating {venv.name} with Python {sys.version.split()[0]} ({problem})")
        # `-m venv` rather than venv.EnvBuilder: where ensurepip is missing (Debian's python3 without python3-venv)
        # it prints the distribution's own advice. --clear: an unusable venv is emptied first.
        code = run([sys.executable, "-m", "venv", "--clear", str(venv)])
        if code:
            return code
    wanted = requirements_digest(ROOT)
    if installed_digest(venv) == wanted:
        say(f"{venv.name} is up to date with {DEV_REQUIREMENTS}")
        return 0
    say(f"installing {DEV_REQUIREMENTS} into {venv.name} (a fresh install takes a minute or two)")
    started = time.monotonic()
    # Over what is there: pins change versions in place and a developer's own extra tools survive. Packages dropped
    # from the files stay until `--recreate`; CI starts from a fresh clone, so it never depends on them. The venv's
    # own pip is used as it comes (no `--upgrade pip`): an unpinned upgrade would make setup depend on pip's latest.
    code = run([str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "-r", str(ROOT / DEV_REQUIREMENTS)])
    if code:
        return code  # no stamp: the next run tries again
    (venv / STAMP).write_text(wanted + "\n", encoding="utf-8")
    say(f"installed in {time.monotonic() - started:.0f} s")
    return 0


def venv_env(venv: Path) -> dict[str, str]:
    """The environment of an activated venv: tools the tests start by name (ruff, zizmor, statelint) are its own."""
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv_python(venv).parent), env.get("PATH", "")])
    return env


def plan_command(venv: Path, args: list[str]) -> list[str]:
    return [str(venv_python(venv)), *PLAN, *(args or [DEFAULT_STACK])]


def cmd_setup(args: argparse.Namespace, extra: list[str]) -> int:
    return 0


def cmd_plan(args: argparse.Namespace, extra: list[str]) -> int:
    return run(plan_command(VENV, extra), env=venv_env(VENV))


def cmd_test(args: argparse.Namespace, extra: list[str]) -> int:
    python, env = str(venv_python(VENV)), venv_env(VENV)
    linted = 0 if args.no_lint else run([python, *LINT], env=env)
    # The tests run even when ruff complains, so one run shows both; either failing fails the command.
    tested = run([python, *TEST, *extra], env=env)
    return tested or linted


def parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: arguments meant for pytest or the plan (--no-header, --det) must not be taken for
    # abbreviations of this script's own flags.
    top = argparse.ArgumentParser(
        prog="python3 dev.py",
        allow_abbrev=False,
        description="Set up .venv from requirements-dev.txt when it is missing or stale, then run a command. "
        "Needs only Python 3.11+.",
        epilog="Quick start: `python3 dev.py plan`, then `python3 dev.py test`. Running either again installs nothing "
        "unless requirements.txt or requirements-dev.txt changed.",
    )
    top.add_argument(
        "--recreate",
        action="store_true",
        help="delete .venv and build it again from the requirement files (drops packages they no longer list, as "
        "CI's fresh clone does)",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    setup = commands.add_parser("setup", allow_abbrev=False, help="only create or update .venv")
    setup.set_defaults(handler=cmd_setup)
    plan = commands.add_parser(
        "plan",
        allow_abbrev=False,
        usage="python3 dev.py plan [-h] [STACK] [offline.plan options]",
        help=f"offline plan of a stack: python -m offline.plan {DEFAULT_STACK}",
        description=f"Run `python -m offline.plan` in .venv. Arguments go to it and replace the default "
        f"`{DEFAULT_STACK}`, e.g. `python3 dev.py plan dev --detail`.",
    )
    plan.set_defaults(handler=cmd_plan)
    test = commands.add_parser(
        "test",
        allow_abbrev=False,
        usage="python3 dev.py test [-h] [--no-lint] [pytest arguments]",
        help="ruff check ., then python -m pytest -q -n auto",
        description="Run `ruff check .`, then `python -m pytest -q -n auto` in .venv (both, even if ruff fails). "
        "Other arguments go to pytest, e.g. `python3 dev.py test tests/test_plan.py -k mermaid`.",
    )
    test.add_argument("--no-lint", action="store_true", help="skip ruff")
    test.set_defaults(handler=cmd_test)
    return top


def main(argv: list[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    if extra[:1] == ["--"]:  # `python3 dev.py test -- -x`: the separator is for this script, not for pytest
        extra = extra[1:]
    if args.command == "setup" and extra:
        parser().error(f"setup takes no arguments: {' '.join(extra)}")
    code = ensure_venv(VENV, recreate=args.recreate)
    return code or args.handler(args, extra)


if __name__ == "__main__":
    sys.exit(main())
