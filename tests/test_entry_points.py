"""Every module one can run with ``python -m`` either is a command line with ``--help`` (exit 0, usage on stdout), or
says it is not one and fails (exit 2, a message on stderr): never a silent exit 0 that reads as success.

One subprocess per module, with this interpreter (the venv's), from the repository root, writing nothing: the
cases run in parallel under xdist."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from components.buildspec import handler_source

COMMAND_LINES = (
    "offline.plan",
    "handlers.release_file",
    "handlers.image_definitions",
    "bench.bench_engine",
    "bench.bench_hostile",
    "bench.bench_program",
    "bench.bench_push_deploy",
    "bench.bench_release",
    "dev",
)
NOT_COMMAND_LINES = (
    # Lambda functions and the libraries they share: AWS calls them, nobody runs them by hand.
    "handlers.push_deploy",
    "handlers.pipeline_deploy",
    "handlers.smoke_test",
    "handlers.release",
    "handlers.deploy_engine",
    "handlers.ecs_common",
    "handlers.gitflow",
    "handlers.release_limits",
)
ELSEWHERE = {
    # The policy pack: the Pulumi CLI runs policy/__main__.py itself (`pulumi preview --policy-pack policy`), from
    # its own directory and venv; it is no `python -m` entry point of this repository.
    "policy.__main__",
}
# Where a `python -m` entry point can live; tests/ holds helpers the tests import, not commands.
SCANNED = ("*.py", "handlers/*.py", "offline/*.py", "bench/*.py", "components/*.py", "policy/*.py")
_ENTRY = re.compile(r'^if __name__ == "__main__"|ArgumentParser\(', re.MULTILINE)


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_every_runnable_module_is_classified():
    found = {module_name(path) for pattern in SCANNED for path in ROOT.glob(pattern)
             if path.name != "__init__.py" and _ENTRY.search(path.read_text(encoding="utf-8"))}
    known = set(COMMAND_LINES) | set(NOT_COMMAND_LINES) | ELSEWHERE
    assert found - known == set(), "new entry points: give them --help (argparse) or make them refuse"
    # Every Lambda module can be run with -m, guarded or not: each must be in one list or the other.
    handlers = {module_name(p) for p in (ROOT / "handlers").glob("*.py") if p.name != "__init__.py"}
    assert handlers <= known, handlers - known


@pytest.mark.parametrize("module", COMMAND_LINES)
def test_command_line_has_help(module, monkeypatch, capsys):
    if not module.startswith("bench."):
        result = run("-m", module, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: "), result.stdout
        assert "Traceback" not in result.stderr
        return
    # The benchmarks import moto and the test fakes at module level (seconds per fresh interpreter): run them as
    # `python -m` would, but in this process, where those are already imported.
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


@pytest.mark.parametrize("module", NOT_COMMAND_LINES)
def test_non_command_line_refuses_clearly(module):
    # The same guard answers any arguments; push_deploy (the one that used to exit 0 silently) is also run bare.
    for args in (["--help"], []) if module == "handlers.push_deploy" else (["--help"],):
        result = run("-m", module, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith(f"{module}: not a command line; "), result.stderr
        assert "Traceback" not in result.stderr


def test_image_definitions_help_as_the_build_runs_it(tmp_path):
    # The buildspec writes the handler's exact bytes to a temporary file outside any checkout and runs it with
    # `python3 "$script"`: --help must work there too, with nothing of the repository around.
    script = tmp_path / "script"
    script.write_bytes(handler_source().encode("utf-8"))
    result = run(str(script), "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: script ")
