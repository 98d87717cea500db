"""dev.py, the README's Quick start: its logic, by importing it, in milliseconds (no venv is built, no pip runs).

The real thing, a fresh clone set up from nothing, is .ci/run: it runs the Quick start's commands as written on a clean
checkout, which a test here could only repeat at the cost of minutes of pip.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import dev

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "dev.py"


# --------------------------------------------------------------------------------------------------------------
# The Python version
# --------------------------------------------------------------------------------------------------------------


def test_required_python_is_the_one_pyproject_and_ruff_declare():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = ".".join(map(str, dev.REQUIRED))
    assert pyproject["project"]["requires-python"] == f">={needed}"
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + needed.replace(".", "")
    assert sys.version_info[:2] >= dev.REQUIRED


@pytest.mark.parametrize("found", [(3, 11, 0), (3, 11, 9), (3, 12, 1), (3, 14, 0), (4, 0, 0)])
def test_supported_pythons_pass(found):
    assert dev.version_problem((*found, "final", 0)) == ""


@pytest.mark.parametrize("found", [(3, 10, 12), (3, 9, 0), (3, 6, 15), (2, 7, 18)])
def test_older_pythons_get_one_line_naming_both_versions(found):
    problem = dev.version_problem((*found, "final", 0))
    assert "\n" not in problem
    assert "Python 3.11 or newer" in problem and f"Python {'.'.join(map(str, found))} " in problem


def test_an_old_python_running_the_script_is_refused_with_exit_2_before_anything_else(tmp_path):
    """The guard at the top of the module, as `python3 dev.py test` meets it: the interpreter reports 3.10."""
    fake_old = (
        "import runpy, sys\n"
        "sys.version_info = (3, 10, 4, 'final', 0)\n"
        f"sys.argv = [{str(SCRIPT)!r}, 'test']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", fake_old], cwd=tmp_path, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == dev.EXIT_OLD_PYTHON == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Python 3.10.4" in result.stderr and "3.11" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_script_parses_on_old_pythons_so_they_get_the_refusal_not_a_syntax_error():
    # f-strings are the newest syntax allowed: Python 3.6. (ast checks most, not all, newer syntax; the rest is the
    # reason for the rule in dev.py's docstring.)
    ast.parse(SCRIPT.read_text(encoding="utf-8"), feature_version=(3, 6))


# --------------------------------------------------------------------------------------------------------------
# Staleness: the hash of the requirement files
# --------------------------------------------------------------------------------------------------------------


def write_requirements(root: Path, runtime: str = "pulumi==1\n", tools: str = "-r requirements.txt\nruff==1\n") -> None:
    (root / "requirements.txt").write_text(runtime, encoding="utf-8")
    (root / "requirements-dev.txt").write_text(tools, encoding="utf-8")


def test_the_digest_is_stable_and_changes_with_either_file(tmp_path):
    write_requirements(tmp_path)
    first = dev.requirements_digest(tmp_path)
    assert dev.requirements_digest(tmp_path) == first
    write_requirements(tmp_path, runtime="pulumi==2\n")
    runtime_changed = dev.requirements_digest(tmp_path)
    write_requirements(tmp_path, runtime="pulumi==2\n", tools="-r requirements.txt\nruff==2\n")
    assert len({first, runtime_changed, dev.requirements_digest(tmp_path)}) == 3


def test_the_digest_tells_which_file_a_line_is_in(tmp_path):
    write_requirements(tmp_path, runtime="pulumi==1\nruff==1\n", tools="-r requirements.txt\n")
    moved = dev.requirements_digest(tmp_path)
    write_requirements(tmp_path, runtime="pulumi==1\n", tools="-r requirements.txt\nruff==1\n")
    assert dev.requirements_digest(tmp_path) != moved


def test_the_digest_covers_every_file_pip_reads():
    """requirements-dev.txt's includes (-r, -c) are all hashed: a change in any of them reinstalls."""
    included = set()
    for line in (ROOT / dev.DEV_REQUIREMENTS).read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(?:-r|-c|--requirement|--constraint)[\s=]+(\S+)", line)
        if match:
            included.add(match[1])
    assert included == {"requirements.txt"}
    assert {dev.DEV_REQUIREMENTS, *included} == set(dev.REQUIREMENT_FILES)


class FakeMachine:
    """Stands in for subprocess: `-m venv` makes a venv that looks real (pyvenv.cfg, the interpreter), pip succeeds
    or fails as told. Records every command."""

    def __init__(self, venv: Path, pip_exit: int = 0) -> None:
        self.venv, self.pip_exit, self.commands = venv, pip_exit, []

    def run(self, command: list[str], env: dict[str, str] | None = None) -> int:
        self.commands.append(command)
        if command[1:3] == ["-m", "venv"]:
            if "--clear" in command and (self.venv / dev.STAMP).exists():
                (self.venv / dev.STAMP).unlink()
            python = dev.venv_python(self.venv)
            python.parent.mkdir(parents=True, exist_ok=True)
            python.write_text("", encoding="utf-8")
            (self.venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.7\n", encoding="utf-8")
            return 0
        if command[1:4] == ["-m", "pip", "install"]:
            return self.pip_exit
        raise AssertionError(f"unexpected command {command}")

    def kinds(self) -> list[str]:
        kinds = ["venv" if command[1:3] == ["-m", "venv"] else "pip" for command in self.commands]
        self.commands.clear()
        return kinds


@pytest.fixture
def machine(tmp_path, monkeypatch):
    write_requirements(tmp_path)
    fake = FakeMachine(tmp_path / ".venv")
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    monkeypatch.setattr(dev, "run", fake.run)
    return fake


def test_a_missing_venv_is_created_and_installed_then_left_alone(machine):
    assert dev.ensure_venv(machine.venv) == 0
    assert machine.kinds() == ["venv", "pip"]
    assert (machine.venv / dev.STAMP).read_text(encoding="utf-8").strip() == dev.requirements_digest(dev.ROOT)
    assert dev.ensure_venv(machine.venv) == 0
    assert machine.kinds() == [], "a second run installs nothing"


def test_pip_installs_requirements_dev_into_the_venv(machine):
    dev.ensure_venv(machine.venv)
    venv_command, pip_command = machine.commands
    assert venv_command[:3] == [sys.executable, "-m", "venv"] and venv_command[-1] == str(machine.venv)
    assert pip_command[0] == str(dev.venv_python(machine.venv))
    assert pip_command[pip_command.index("-r") + 1] == str(dev.ROOT / "requirements-dev.txt")


def test_changed_requirements_reinstall_into_the_same_venv(machine):
    dev.ensure_venv(machine.venv)
    machine.kinds()
    write_requirements(machine.venv.parent, runtime="pulumi==2\n")
    assert dev.ensure_venv(machine.venv) == 0
    assert machine.kinds() == ["pip"]
    assert dev.ensure_venv(machine.venv) == 0
    assert machine.kinds() == []


def test_a_failed_install_is_retried_next_time(machine):
    machine.pip_exit = 1
    assert dev.ensure_venv(machine.venv) == 1
    assert not (machine.venv / dev.STAMP).exists()
    machine.kinds()
    machine.pip_exit = 0
    assert dev.ensure_venv(machine.venv) == 0
    assert machine.kinds() == ["pip"]


def test_a_venv_made_without_dev_py_is_installed_into_not_rebuilt(machine):
    """The .venv of the old README (pip install -r requirements.txt by hand): pip fills in what is missing."""
    FakeMachine(machine.venv).run([sys.executable, "-m", "venv", str(machine.venv)])
    assert dev.ensure_venv(machine.venv) == 0
    assert machine.kinds() == ["pip"]


@pytest.mark.parametrize("breakage", ["interpreter gone", "made by 3.10"])
def test_an_unusable_venv_is_rebuilt(machine, breakage):
    dev.ensure_venv(machine.venv)
    machine.kinds()
    if breakage == "interpreter gone":
        dev.venv_python(machine.venv).unlink()
    else:
        (machine.venv / "pyvenv.cfg").write_text("version = 3.10.12\n", encoding="utf-8")
    assert dev.venv_problem(machine.venv)
    assert dev.ensure_venv(machine.venv) == 0
    assert machine.kinds() == ["venv", "pip"]


def test_recreate_rebuilds_even_an_up_to_date_venv(machine):
    dev.ensure_venv(machine.venv)
    machine.kinds()
    assert dev.ensure_venv(machine.venv, recreate=True) == 0
    assert "--clear" in machine.commands[0], "the old venv's packages go: only what the files list remains"
    assert machine.kinds() == ["venv", "pip"]


def test_venv_version_reads_pyvenv_cfg(tmp_path):
    assert dev.venv_version(tmp_path) is None
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\nversion_info = 3.12.4.final.0\n", encoding="utf-8")
    assert dev.venv_version(tmp_path) == (3, 12, 4)
    (tmp_path / "pyvenv.cfg").write_text("version = 3.11.7\n", encoding="utf-8")
    assert dev.venv_version(tmp_path) == (3, 11, 7)


# --------------------------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def commands(monkeypatch):
    """main() with the venv taken as ready and the commands recorded (each exits with the code given for it)."""
    ran, exits = [], {}
    monkeypatch.setattr(dev, "ensure_venv", lambda venv, recreate=False: ran.append(("setup", recreate)) or 0)

    def run(command: list[str], env: dict[str, str] | None = None) -> int:
        assert env is not None and env["PATH"].startswith(str(dev.venv_python(dev.VENV).parent))
        ran.append(tuple(command[1:]))
        return exits.get(command[2], 0)

    monkeypatch.setattr(dev, "run", run)
    return ran, exits


def test_plan_runs_the_offline_plan_of_prod(commands):
    ran, _ = commands
    assert dev.main(["plan"]) == 0
    assert ran == [("setup", False), ("-m", "offline.plan", "prod")]


def test_plan_arguments_replace_the_default_stack(commands):
    ran, _ = commands
    dev.main(["plan", "dev", "--detail"])
    assert ran[-1] == ("-m", "offline.plan", "dev", "--detail")


def test_test_runs_ruff_then_the_readme_test_command(commands):
    ran, _ = commands
    assert dev.main(["test"]) == 0
    assert ran == [("setup", False), ("-m", "ruff", "check", "."), ("-m", "pytest", "-q", "-n", "auto")]
    assert " ".join(["python", *dev.TEST]) == "python -m pytest -q -n auto"


def test_test_passes_arguments_to_pytest_and_can_skip_ruff(commands):
    ran, _ = commands
    dev.main(["--recreate", "test", "--no-lint", "--", "tests/test_plan.py", "-k", "mermaid"])
    assert ran == [("setup", True), ("-m", "pytest", "-q", "-n", "auto", "tests/test_plan.py", "-k", "mermaid")]


@pytest.mark.parametrize(("failing", "code"), [("ruff", 1), ("pytest", 5)])
def test_a_lint_or_test_failure_fails_the_command_but_both_run(commands, failing, code):
    ran, exits = commands
    exits[failing] = code
    assert dev.main(["test"]) == code
    assert [command[1] for command in ran[1:]] == ["ruff", "pytest"]


def test_a_failed_setup_runs_nothing(monkeypatch):
    monkeypatch.setattr(dev, "ensure_venv", lambda venv, recreate=False: 1)
    monkeypatch.setattr(dev, "run", lambda command, env=None: pytest.fail(f"ran {command}"))
    assert dev.main(["test"]) == 1


def test_help_lists_the_commands_and_flags():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for word in ("setup", "plan", "test", "--recreate"):
        assert word in result.stdout
    result = subprocess.run([sys.executable, str(SCRIPT), "test", "--help"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0 and "--no-lint" in result.stdout and "python -m pytest -q -n auto" in result.stdout


# --------------------------------------------------------------------------------------------------------------
# README and CI
# --------------------------------------------------------------------------------------------------------------


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_the_quick_start_is_the_two_commands():
    assert quick_start_commands() == ["python3 dev.py plan", "python3 dev.py test"]


def test_ci_runs_the_quick_start_as_written():
    """.ci/run is the end-to-end test of the Quick start: on a fresh clone it runs the README's commands verbatim."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    run = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert [line for line in run if line.startswith("python")] == quick_start_commands()
    assert not any(re.search(r"\b(pip|venv)\b", line) for line in run), "dev.py alone sets up, as developers do"
