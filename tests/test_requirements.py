"""The two requirement files: requirements.txt is exactly the program's runtime (what `pulumi up` imports, and what
those import), requirements-dev.txt adds the tools on top of it, and both are fully pinned.

The runtime is derived here from the program's own import statements and the installed packages' metadata, so adding
an import of a new package, or a test tool to requirements.txt, fails a test instead of surfacing in a deployment.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "requirements.txt"
DEV = ROOT / "requirements-dev.txt"
# What `pulumi up` runs: __main__.py and the packages it imports (offline/ is the dev-only plan; tests/ and bench/
# are tools).
PROGRAM_SOURCES = [ROOT / "__main__.py", *sorted((ROOT / "components").glob("*.py")),
                   *sorted((ROOT / "handlers").glob("*.py"))]
LOCAL_PACKAGES = {"components", "handlers"}
# Needed without being imported: zoneinfo (components/config.py) reads the IANA database from this package where the
# system has none (Windows, slim images).
DATA_PACKAGES = {"tzdata"}
# What `pip freeze` leaves out: venv installs them itself. setuptools is asked for by pulumi_policy's metadata only
# (nothing imports it); on Python 3.11 the venv already has it, on 3.12+ pip adds it.
PACKAGING_TOOLS = {"pip", "setuptools", "wheel"}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[a-z0-9,_-]+\])?==(?P<version>[^\s=;#]+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """Package -> version of every requirement line (comments and -r options left out)."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith(("#", "-")):
            match = PIN.match(line)
            assert match, f"{path.name}: {line!r} is not pinned as name==version"
            found[canonical(match["name"])] = match["version"]
    return found


def imported_top_level_modules(paths: list[Path]) -> set[str]:
    """Every module the sources import, anywhere (also inside functions), by its top-level name."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def distribution_closure(roots: set[str]) -> set[str]:
    """The installed distributions ``roots`` need, themselves included, following each one's requirements (no
    extras; environment markers evaluated for this interpreter, as pip does)."""
    seen: set[str] = set()
    todo = [canonical(root) for root in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return seen


def program_distributions() -> set[str]:
    modules = imported_top_level_modules(PROGRAM_SOURCES) - LOCAL_PACKAGES - set(sys.stdlib_module_names)
    by_module = metadata.packages_distributions()
    unknown = sorted(module for module in modules if module not in by_module)
    assert not unknown, f"the program imports {unknown}, which no installed package provides"
    return {canonical(dist) for module in modules for dist in by_module[module]}


def test_every_line_of_both_files_is_pinned():
    for path in (RUNTIME, DEV):
        assert pins(path), f"{path.name} pins nothing"


def test_runtime_requirements_are_exactly_what_the_program_imports_and_their_dependencies():
    direct = program_distributions()
    assert {"pulumi", "pulumi-aws", "boto3", "pydantic", "pyyaml"} <= direct, direct
    needed = distribution_closure(direct | DATA_PACKAGES)
    pinned = set(pins(RUNTIME))
    assert sorted(needed - pinned) == [], "the program needs these, requirements.txt lacks them"
    assert sorted(pinned - needed) == [], "requirements.txt has these, the program does not need them: dev tools " \
        "belong in requirements-dev.txt"


def test_no_test_tool_is_in_the_runtime():
    assert not {"pytest", "pytest-xdist", "moto", "ruff", "cfn-lint", "zizmor", "statelint", "pulumi-policy",
                "flask"} & set(pins(RUNTIME))


def test_dev_requirements_add_the_tools_to_the_runtime_and_pin_nothing_twice():
    lines = [line for line in DEV.read_text(encoding="utf-8").splitlines() if line.strip() and line[0] != "#"]
    assert lines[0] == "-r requirements.txt", "requirements-dev.txt starts from the runtime"
    assert [line for line in lines if line.startswith("-")] == ["-r requirements.txt"]
    assert set(pins(RUNTIME)) & set(pins(DEV)) == set(), "a package pinned in both files could drift apart"
    assert {"pytest", "pytest-xdist", "moto", "ruff", "zizmor", "statelint", "pulumi-policy", "cryptography"} <= set(
        pins(DEV)
    )


def test_dev_requirements_are_closed_under_their_dependencies():
    """Fully resolved: nothing the tools need is left for pip to choose (moto with the server extra the tests use)."""
    everything = set(pins(RUNTIME)) | set(pins(DEV))
    needed = distribution_closure(everything)
    for line in metadata.requires("moto") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and requirement.marker.evaluate({"extra": "server"}):
            needed |= distribution_closure({requirement.name})
    assert sorted(needed - everything - PACKAGING_TOOLS) == []


def test_the_environment_running_the_tests_has_the_pinned_versions():
    """What the files pin is what the tests ran with: a stale venv is caught here (`python3 dev.py` updates it)."""
    wrong = {}
    for name, pinned in {**pins(RUNTIME), **pins(DEV)}.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != pinned:
            wrong[name] = (pinned, installed)
    if wrong and sys.prefix == sys.base_prefix:
        pytest.skip(f"not in a virtualenv, so not an environment dev.py built: {wrong}")
    assert wrong == {}, "pinned vs installed; run `python3 dev.py setup`"
