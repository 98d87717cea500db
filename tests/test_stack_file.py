"""Stack files are read as strictly as the Pulumi CLI reads them (offline/stack_file.py): a key named twice is refused
with both lines, and a number YAML 1.1 read from a surprising spelling (octal, sexagesimal, hexadecimal) is reported
with the text the user typed."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import yaml
from conftest import PROD, QA, ROOT

from components.config import ConfigError
from offline import plan as p
from offline.mocks import run_program, stack_config
from offline.stack_file import StackFileError, TypedFloat, TypedInt, read_config, read_stack_file, validate_config

STACK = """\
config:
  aws:region: us-east-2
  crossdeploy:tools:
    accountId: {tools}
    region: us-east-2
  crossdeploy:environments:
    - name: test
      accountId: "{qa}"
      regions: [us-east-2]
  crossdeploy:services:
    - name: orders
      environment:
        GREETING: {greeting}
"""


def stack(tmp_path: Path, text: str | None = None, **values: str) -> Path:
    """A stack file: `text`, or :data:`STACK` with tools account and GREETING replaced (typed as given)."""
    fields = {"tools": '"111111111111"', "qa": QA, "greeting": "hello", **values}
    path = tmp_path / "Pulumi.t.yaml"
    path.write_text(text if text is not None else STACK.format(**fields))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        validate_config(read_config(path))
    return exc.value.problems


# --- duplicate keys -------------------------------------------------------------------------------------------------


def test_duplicate_top_level_key_names_the_key_and_both_lines(tmp_path):
    path = stack(tmp_path, STACK.format(tools='"111111111111"', qa=QA, greeting="hi")
                 + "  crossdeploy:services:\n    - name: payments\n")
    with pytest.raises(StackFileError) as exc:
        read_config(path)
    assert exc.value.problems == [f"{path}: duplicate key 'crossdeploy:services' at lines 10 and 14"]


def test_duplicate_nested_key_names_its_path_and_both_lines(tmp_path):
    text = STACK.format(tools='"111111111111"', qa=QA, greeting="hi").replace(
        "      regions: [us-east-2]\n", "      regions: [us-east-2]\n      name: prod\n")
    text = text.replace("    region: us-east-2\n", "    region: us-east-2\n    region: us-west-2\n")
    path = stack(tmp_path, text)
    with pytest.raises(StackFileError) as exc:
        read_stack_file(path)
    # Every duplicate at once, in file order, each with its first line and its own.
    assert exc.value.problems == [
        f"{path}: duplicate key 'crossdeploy:tools.region' at lines 5 and 6",
        f"{path}: duplicate key 'crossdeploy:environments[0].name' at lines 8 and 11",
    ]


def test_duplicate_document_key_and_a_merge_key_which_is_no_duplicate(tmp_path):
    path = stack(tmp_path, "base: &base {a: 1, b: 2}\nconfig:\n  x: {<<: *base, a: 3}\nconfig: {}\n")
    with pytest.raises(StackFileError) as exc:
        read_stack_file(path)
    assert exc.value.problems == [f"{path}: duplicate key 'config' at lines 2 and 4"]
    merged = stack(tmp_path, "base: &base {a: 1, b: 2}\nconfig:\n  x: {<<: *base, a: 3}\n")
    assert read_config(merged) == {"x": {"a": 3, "b": 2}}  # `<<` keys are overridden by design, as in the CLI


def test_plan_exits_2_on_a_duplicate_key(tmp_path, capsys):
    path = stack(tmp_path, STACK.format(tools='"111111111111"', qa=QA, greeting="hi")
                 + "  crossdeploy:services:\n    - name: payments\n")
    out = tmp_path / "plan.md"
    assert p.main([str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"plan: {path}: duplicate key 'crossdeploy:services' at lines 10 and 14\n"
    assert captured.out == "" and not out.exists()


def test_invalid_yaml_and_non_stack_files_are_stack_file_errors(tmp_path):
    path = stack(tmp_path, "config: {a: [\n")
    with pytest.raises(StackFileError) as exc:
        read_config(path)
    assert str(exc.value) == (f"{path}: not valid YAML at line 2, column 1: expected the node content, but found "
                              "'<stream end>' (while parsing a flow node at line 2)")
    with pytest.raises(StackFileError, match="not a Pulumi stack file"):
        read_config(stack(tmp_path, "- a\n"))
    assert issubclass(StackFileError, ValueError)  # what stack_config's callers have always caught


def test_the_repository_stack_files_read_as_before():
    for name in ("Pulumi.dev.yaml", "Pulumi.prod.yaml"):
        assert stack_config(ROOT / name) == yaml.safe_load((ROOT / name).read_text())["config"]


# --- YAML 1.1 number traps ------------------------------------------------------------------------------------------


def test_octal_account_id_is_reported_as_typed(tmp_path):
    path = stack(tmp_path, tools="012345670123")
    assert problems(path) == ['tools.accountId: 012345670123 was read as the number 1402433619 (YAML 1.1 octal); '
                              'quote it: "012345670123"']


def test_plan_reports_the_typed_text_and_exits_2(tmp_path, capsys):
    out = tmp_path / "plan.md"
    assert p.main([str(stack(tmp_path, tools="012345670123")), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert 'tools.accountId: 012345670123 was read as the number 1402433619 (YAML 1.1 octal); quote it: ' \
           '"012345670123"' in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize(("typed", "number", "reading"), [
    ("1:30", "90", "YAML 1.1 sexagesimal"),
    ("1:30.5", "90.5", "YAML 1.1 sexagesimal"),
    ("0x1F", "31", "hexadecimal"),
    ("0b101", "5", "YAML 1.1 binary"),
    ("1_000", "1000", "YAML 1.1 digit separators"),
])
def test_other_traps_in_a_string_field(tmp_path, typed, number, reading):
    path = stack(tmp_path, greeting=typed)
    assert problems(path) == [f'services[0].environment.GREETING: {typed} was read as the number {number} '
                              f'({reading}); quote it: "{typed}"']


def test_quoted_values_and_ordinary_numbers_are_unaffected(tmp_path):
    path = stack(tmp_path, tools='"012345670123"', greeting='"1:30"')
    config = read_config(path)
    assert config["crossdeploy:tools"]["accountId"] == "012345670123"
    assert config["crossdeploy:services"][0]["environment"]["GREETING"] == "1:30"
    validate_config(config)  # valid: a quoted account id keeps its leading zero
    plain = read_config(stack(tmp_path, text="config:\n  a: [12, -3, 0, 0.5, 01.5, 1e3]\n"))["a"]
    assert plain == [12, -3, 0, 0.5, 1.5, "1e3"]
    assert not any(isinstance(v, TypedInt | TypedFloat) for v in plain)


def test_a_trap_number_where_a_number_belongs_still_works(tmp_path):
    text = STACK.format(tools='"111111111111"', qa=QA, greeting="hi") + "      port: 0x1F90\n"
    config = read_config(stack(tmp_path, text))
    cfg = validate_config(config)
    assert cfg.services[0].port == 8080 and type(cfg.services[0].port) is int


def test_the_program_sees_plain_numbers_as_at_pulumi_up(tmp_path):
    # The Pulumi CLI parses the stack file itself and hands the program JSON: no typed text survives, and the
    # program's own validation still names the problem (the generic "quote it" message).
    config = read_config(stack(tmp_path, tools="012345670123"))
    typed = config["crossdeploy:tools"]["accountId"]
    assert isinstance(typed, TypedInt) and json.dumps(typed) == "1402433619" and f"{typed}" == "1402433619"
    assert repr(typed) == "012345670123 (read as 1402433619, YAML 1.1 octal)"
    with pytest.raises(ConfigError) as exc:
        run_program(config, stack="t")
    assert exc.value.problems == ["tools.accountId: expected a string (quote it in YAML), got 1402433619"]


def test_typed_numbers_copy_and_pickle():
    for value in (TypedInt(8, "010", "YAML 1.1 octal"), TypedFloat(90.5, "1:30.5", "YAML 1.1 sexagesimal")):
        for clone in (copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
            assert clone == value and repr(clone) == repr(value)


def test_trap_values_elsewhere_show_the_typed_text(tmp_path):
    text = STACK.format(tools='"111111111111"', qa=QA, greeting="hi") + "      memory: 01024\n"
    assert problems(stack(tmp_path, text)) == [
        "services[0].memory: with cpu 256 Fargate accepts 512-2048 MiB in steps of 512, got 01024 (read as 532, "
        "YAML 1.1 octal)"]


def test_prod_stack_is_unchanged_by_the_strict_loader():
    assert validate_config(read_config(ROOT / "Pulumi.prod.yaml")).environments[1].account_id == PROD
