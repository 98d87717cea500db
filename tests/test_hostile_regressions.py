"""Hostile inputs that crashed a parser, were silently accepted, or cost it unbounded work before issue 13, one named
case each: found by the property tests (test_properties*.py), by the issue itself, or by hand while fixing those.
Each asserts the parser's own error, with the key path or line and the value, and each fails on the commit issue 13
started from (checked); where that failure was an exception, the docstring names it."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import QA, TOOLS, config
from test_properties import CONTEXT, CTX, EXAMPLE
from test_properties_handlers import (
    BLUE_GREEN,
    DOCUMENT,
    IMAGES,
    SMOKE_SPEC,
    TOKEN_DATA,
    TOKEN_TARGETS,
    job,
)

from components.config import ConfigError, namespace_values, parse
from handlers import deploy_engine as engine
from handlers import image_definitions as idf
from handlers import pipeline_deploy as pipeline
from handlers import push_deploy as push
from handlers import release_file as rf
from handlers import smoke_test as smoke
from offline.stack_file import StackFileError, StrictLoader, read_config, read_stack_file, validate_config


def config_problems(cfg: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate_config(cfg)
    return caught.value.problems


LIMITS = rf.LimitedLoader


def release_problems(text: str) -> list[str]:
    return [str(p) for p in rf.validate(text, CTX)]


def stack_file_problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "Pulumi.hostile.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StackFileError) as caught:
        read_stack_file(path)
    return [p.replace(str(path), "Pulumi.hostile.yaml") for p in caught.value.problems]


# --- the stack config: values that cannot be dict keys (TypeError: unhashable type) ------------------------------


def test_a_list_where_an_account_id_belongs() -> None:
    """TypeError: unhashable type: 'list' (the provisionRoleName check keyed environments by account)."""
    cfg = config()
    cfg["crossdeploy:environments"][0]["accountId"] = [QA]
    assert config_problems(cfg) == [f"environments[0].accountId: expected a string, got ['{QA}']"]


def test_a_mapping_where_a_service_name_belongs() -> None:
    """TypeError: unhashable type: 'dict' (the duplicate service name check)."""
    cfg = config()
    cfg["crossdeploy:services"][0]["name"] = {"name": "orders"}
    assert config_problems(cfg) == ["services[0].name: expected a string, got {'name': 'orders'}"]


def test_a_list_where_an_environment_name_belongs() -> None:
    """TypeError: unhashable type: 'list' (the duplicate environment name check)."""
    cfg = config()
    cfg["crossdeploy:environments"][1]["name"] = []
    assert config_problems(cfg) == ["environments[1].name: expected a string, got []"]


def test_a_mapping_where_a_listener_rule_priority_belongs() -> None:
    """TypeError: unhashable type: 'dict' (the unique listener rule priority check)."""
    cfg = config()
    cfg["crossdeploy:services"][0]["routing"] = {"priority": {"value": 10}}
    assert config_problems(cfg) == ["services[0].routing.priority: Input should be a valid integer, got "
                                    "{'value': 10}"]


def test_a_list_where_the_cluster_of_an_existing_service_belongs() -> None:
    """TypeError: unhashable type: 'list' (the shared cluster check keyed existing services by cluster)."""
    cfg = config()
    cfg["crossdeploy:services"][0].update(existing=True, executionRoleName="ecsTaskExecutionRole", cluster=["core"])
    assert config_problems(cfg) == ["services[0].cluster: expected a string, got ['core']"]


def test_a_list_where_a_service_name_belongs_in_a_codedeploy_stack() -> None:
    """TypeError: unhashable type: 'list' (deployment groups are named after services: the uniqueness check)."""
    cfg = config()
    cfg["crossdeploy:environments"][1]["strategy"] = "codedeploy"
    cfg["crossdeploy:services"][1]["serviceName"] = ["payments"]
    assert config_problems(cfg) == ["services[1].serviceName: expected a string, got ['payments']"]


def test_push_tags_that_are_a_number() -> None:
    """TypeError: 'int' object is not iterable (the push tag overlap check iterated pushTags unchecked)."""
    cfg = config()
    cfg["crossdeploy:services"][0]["delivery"] = "push"
    cfg["crossdeploy:environments"][0]["pushTags"] = 5
    assert config_problems(cfg) == ["environments[0].pushTags: expected a list, got 5"]


def test_a_push_tag_of_twenty_thousand_characters() -> None:
    """RecursionError (patterns_overlap recursed once per character of an unvalidated pattern)."""
    cfg = config()
    cfg["crossdeploy:services"][0]["delivery"] = "push"
    cfg["crossdeploy:environments"][0]["pushTags"] = ["qa-" + "*x" * 10_000]
    cfg["crossdeploy:environments"][1]["pushTags"] = ["*" + "x*" * 10_000]
    problems = config_problems(cfg)
    assert len(problems) == 2 and all(p.startswith("environments[") and "not tag patterns" in p for p in problems)


def test_an_environment_variable_name_with_a_trailing_newline() -> None:
    """Accepted: re.match with '$' lets a trailing newline through, and ECS would refuse the name at deploy time."""
    cfg = config()
    cfg["crossdeploy:services"][0]["environment"] = {"LOG_LEVEL\n": "info"}
    assert config_problems(cfg) == ["services[0].environment: not environment variable names: 'LOG_LEVEL\\n', "
                                    "got {'LOG_LEVEL\\n': 'info'}"]


def test_a_config_value_nested_deeper_than_the_json_decoder() -> None:
    """RecursionError at `pulumi up` (namespace_values decodes each value the language host passes as JSON)."""
    raw = namespace_values({**{k: json.dumps(v) for k, v in config().items()},
                            "crossdeploy:services": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(ConfigError) as caught:
        parse(raw, project="crossdeploy", stack="test", aws_region="us-east-2")
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith(
        "services: expected a list, got '[[[[")


# --- the stack file ----------------------------------------------------------------------------------------------


def test_a_stack_file_date_that_is_no_date(tmp_path: Path) -> None:
    """ValueError: month must be in 1..12 (PyYAML reads an unquoted 2024-13-45 as a timestamp)."""
    assert stack_file_problems(tmp_path, "config:\n  crossdeploy:note: 2024-13-45\n") == [
        "Pulumi.hostile.yaml: not valid YAML at line 2, column 21: cannot read '2024-13-45' as a date (quote it for "
        "a string): month must be in 1..12"]


def test_a_stack_file_number_of_five_thousand_digits(tmp_path: Path) -> None:
    """ValueError: Exceeds the limit (4300 digits) for integer string conversion."""
    problems = stack_file_problems(tmp_path, "config:\n  crossdeploy:tools:\n    accountId: " + "1" * 5000 + "\n")
    assert len(problems) == 1 and problems[0].startswith(
        "Pulumi.hostile.yaml: not valid YAML at line 3, column 16: cannot read '1111") and "4300 digits" in problems[0]


def test_a_stack_file_bool_tag_on_a_word(tmp_path: Path) -> None:
    """KeyError: 'maybe' (PyYAML's bool constructor looks the word up)."""
    assert stack_file_problems(tmp_path, "config:\n  crossdeploy:x: !!bool maybe\n") == [
        "Pulumi.hostile.yaml: not valid YAML at line 2, column 18: 'maybe' is not !!bool (remove the tag, or quote "
        "the value as a string)"]


def test_a_stack_file_python_object_tag(tmp_path: Path) -> None:
    """Refused before only by PyYAML's constructor; now as a tag the format never uses, with its line."""
    assert stack_file_problems(tmp_path, "config:\n  aws:region: !!python/object/apply:os.system [id]\n") == [
        "Pulumi.hostile.yaml: not valid YAML at line 2, column 15: tag !!python/object/apply:os.system is not used "
        "by a stack file; only YAML's core types are (strings, numbers, true/false, null, lists, mappings): remove "
        "the tag"]


def test_a_stack_file_custom_tag_on_a_key_value(tmp_path: Path) -> None:
    """Refused before only by PyYAML's constructor ("could not determine a constructor for the tag '!Ref'"); now
    as a tag the format never uses, at the tag's own line."""
    assert stack_file_problems(tmp_path, "config:\n  crossdeploy:tools: !Ref\n    accountId: '1'\n") == [
        "Pulumi.hostile.yaml: not valid YAML at line 2, column 22: tag !Ref is not used by a stack file; only YAML's "
        "core types are (strings, numbers, true/false, null, lists, mappings): remove the tag"]


def test_a_stack_file_config_key_that_is_a_number(tmp_path: Path) -> None:
    """AttributeError: 'int' object has no attribute 'partition' (namespace_values splits every key): found by
    hand."""
    path = tmp_path / "Pulumi.hostile.yaml"
    path.write_text("config:\n  1: 2\n  ~: x\n  crossdeploy:tools: {accountId: '111111111111'}\n", encoding="utf-8")
    with pytest.raises(StackFileError) as caught:
        validate_config(read_config(path))
    assert caught.value.problems == [f"{path}: config key 1 is not a string (config keys are namespace:key)",
                                     f"{path}: config key None is not a string (config keys are namespace:key)"]


def test_pulumi_secure_values_are_a_key_not_a_tag(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.secure.yaml"
    path.write_text("config:\n  crossdeploy:token:\n    secure: AAABAKLz0fq7hJ9bHV0jU4bA\n", encoding="utf-8")
    assert read_config(path) == {"crossdeploy:token": {"secure": "AAABAKLz0fq7hJ9bHV0jU4bA"}}


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


def test_a_stack_file_of_billion_laughs(tmp_path: Path) -> None:
    """10**9 values once expanded: every walk over the config (pydantic, the cross checks) would never end."""
    problems = stack_file_problems(tmp_path, "config:\n  crossdeploy:x:\n" + "    " + BILLION_LAUGHS.replace(
        "\n", "\n    "))
    assert len(problems) == 1 and re.fullmatch(
        rf"Pulumi\.hostile\.yaml: not valid YAML at line [5-9], column \d+: more than {StrictLoader.max_nodes} values "
        r"with every alias expanded \(the limit for a stack file\)", problems[0]), problems


def test_a_stack_file_nested_ten_thousand_deep(tmp_path: Path) -> None:
    """RecursionError in PyYAML's recursive composer."""
    assert stack_file_problems(tmp_path, "config:\n  crossdeploy:x: " + "[" * 10_000 + "]" * 10_000 + "\n") == [
        "Pulumi.hostile.yaml: not valid YAML at line 2, column 51: nested more than 32 levels deep (the limit for a "
        "stack file)"]


def test_a_stack_file_with_a_recursive_alias(tmp_path: Path) -> None:
    """Accepted before: a list containing itself, which no stack file means (json.dumps refuses it as circular)."""
    assert stack_file_problems(tmp_path, "config:\n  crossdeploy:x: &a [1, *a]\n") == [
        "Pulumi.hostile.yaml: not valid YAML at line 2, column 25: alias *a is inside the node it refers to (a "
        "recursive alias)"]


def test_a_stack_file_of_a_megabyte(tmp_path: Path) -> None:
    assert stack_file_problems(tmp_path, "config:\n" + "# padding\n" * 110_000) == [
        "Pulumi.hostile.yaml: not valid YAML at line 26215, column 7: the file is longer than 262144 characters, the "
        "limit for a stack file"]


# --- the release file --------------------------------------------------------------------------------------------


def test_a_release_file_nested_ten_thousand_deep() -> None:
    """The issue's RecursionError: the validator crashed with a traceback instead of reporting a problem."""
    text = EXAMPLE.replace("region: us-east-2", "region: " + "[" * 10_000 + "]" * 10_000, 1)
    line = text[:text.index("[[[")].count("\n") + 1
    assert release_problems(text) == [f"deployment.yaml:{line}: (yaml): nested more than {LIMITS.max_depth} levels "
                                      "deep (the limit for a release file)"]


def test_a_release_file_nested_ten_thousand_deep_in_block_style() -> None:
    text = "services:\n" + "".join("  " * i + "- \n" for i in range(1, 40))
    assert release_problems(text) == [f"deployment.yaml:{LIMITS.max_depth + 1}: (yaml): nested more than "
                                      f"{LIMITS.max_depth} levels deep (the limit for a release file)"]


def test_a_release_file_of_billion_laughs() -> None:
    problems = release_problems(BILLION_LAUGHS)
    assert len(problems) == 1 and re.fullmatch(rf"deployment\.yaml:[3-9]: \(yaml\): more than {LIMITS.max_nodes} "
                                               r"values with every alias expanded \(the limit for a release file\)",
                                               problems[0]), problems


def test_a_release_file_with_a_scalar_of_a_hundred_thousand_characters() -> None:
    assert release_problems(EXAMPLE.replace("serviceName: orders", "serviceName: " + "o" * 100_000, 1)) == [
        f"deployment.yaml:11: (yaml): a value of 100000 characters, over the limit of {LIMITS.max_scalar_chars} for "
        "a release file"]


def test_a_release_file_of_twice_the_entries_it_may_hold() -> None:
    text = "services:\n" + "  - {service: s}\n" * (2 * LIMITS.max_entries)
    assert release_problems(text) == [f"deployment.yaml:{LIMITS.max_entries + 2}: (yaml): more than "
                                      f"{LIMITS.max_entries} entries in one list or mapping (the limit for a release "
                                      "file)"]


def test_a_release_file_of_twice_its_size_limit() -> None:
    text = "# padding\n" * (LIMITS.max_chars // 5)
    assert release_problems(text) == [
        f"deployment.yaml:{LIMITS.max_chars // 10 + 1}: (yaml): the file is longer than {LIMITS.max_chars} "
        "characters, the limit for a release file"]


def test_a_release_file_with_a_set_tag_on_a_section() -> None:
    """Accepted silently before: `services: !!set ...` composed as a plain mapping, and the tag was dropped."""
    assert release_problems("tasks: []\nservices: !!omap\n  - a: 1\n") == [
        "deployment.yaml:2: (yaml): tag !!omap is not used by a release file; only YAML's core types are (strings, "
        "numbers, true/false, null, lists, mappings): remove the tag"]


def test_a_release_file_with_an_empty_top_level_key() -> None:
    """A problem without a key path ('deployment.yaml:1: : unknown key'): found by the property tests."""
    assert release_problems("'': null\n") == [
        "deployment.yaml:1: (root): unknown key '' (a release file holds only tasks and services)"]


def test_a_release_context_with_a_list_for_its_partition() -> None:
    """TypeError: unhashable type: 'list' (the partition was looked up in a dict unchecked): found by the property
    tests."""
    with pytest.raises(rf.ContextError) as caught:
        rf.load_context({**CONTEXT, "partition": []})
    assert caught.value.problems[0] == "partition: expected one of aws, aws-cn, aws-us-gov, aws-eusc, aws-iso, " \
                                       "aws-iso-b, aws-iso-e, aws-iso-f, got []"


def test_a_release_context_nested_deeper_than_the_json_decoder(capsys) -> None:
    """RecursionError out of the CLI instead of exit 2 with the reason."""
    assert rf.main(["validate", "deployment.yaml", "--context-json", "[" * 100_000]) == 2
    assert "--context-json: not valid JSON: maximum recursion depth exceeded" in capsys.readouterr().err


# --- the handlers' events and inputs -----------------------------------------------------------------------------


def test_user_parameters_nested_deeper_than_the_json_decoder() -> None:
    """RecursionError out of parse_job (answered 'internal error' instead of the job's own refusal): found by the
    property tests."""
    with pytest.raises(pipeline.JobError, match=r"^job: UserParameters must be the JSON object"):
        pipeline.parse_job(job("[" * 5000 + "]" * 5000))


@pytest.mark.parametrize("change", [
    pytest.param(lambda data: data.pop("t"), id="without-its-start-time"),
    pytest.param(lambda data: data.update(t=None), id="start-time-null"),
    pytest.param(lambda data: data["s"].__setitem__(0, 7), id="row-not-a-list"),
    pytest.param(lambda data: data["s"][0].__setitem__(0, [0]), id="phase-a-list"),
    pytest.param(lambda data: data["s"][0].__setitem__(0, 99), id="phase-out-of-range"),
    pytest.param(lambda data: data["s"][0].__setitem__(10, "soon"), id="start-offset-a-string"),
])
def test_an_edited_continuation_token(change: Any) -> None:
    """KeyError / TypeError / IndexError out of decode_token: found by the property tests."""
    data = json.loads(json.dumps(TOKEN_DATA))
    data["s"][0].extend([None] * (11 - len(data["s"][0])) + [None])
    change(data)
    with pytest.raises(pipeline.JobError, match=r"^continuation token is malformed"):
        pipeline.decode_token(pipeline._pack(data), "qa", TOKEN_TARGETS, 900.0)


def test_a_target_state_that_is_a_list() -> None:
    """AttributeError: 'list' object has no attribute 'get': found by the property tests."""
    with pytest.raises(ValueError, match=r"^not a target state: expected an object, got \[\]"):
        engine.TargetState.from_dict([])  # type: ignore[arg-type]


def test_hook_details_nested_deeper_than_the_json_decoder() -> None:
    """RecursionError: the ECS hook answered FAILED with 'the smoke test could not run: RecursionError'."""
    event = {"serviceArn": f"arn:aws:ecs:us-east-2:{TOOLS}:service/c/s",
             "targetServiceRevisionArn": f"arn:aws:ecs:us-east-2:{TOOLS}:service-revision/c/s/1",
             "hookDetails": '{"path": ' + "[" * 100_000}
    with pytest.raises(smoke.HookError, match=r"^hookDetails: not JSON: "):
        smoke.parse_ecs_event(event, TOOLS, "us-east-2")


def test_smoke_tests_variable_nested_deeper_than_the_json_decoder() -> None:
    with pytest.raises(smoke.HookError, match=r"^environment: SMOKE_TESTS is not JSON"):
        smoke.spec_for_group("g", {"SMOKE_TESTS": "[" * 100_000})
    assert smoke.spec_for_group("g", {"SMOKE_TESTS": json.dumps({"g": SMOKE_SPEC})}).path == SMOKE_SPEC["path"]


def test_an_image_detail_file_nested_deeper_than_the_json_decoder(tmp_path: Path) -> None:
    path = tmp_path / "imageDetail.json"
    path.write_text("[" * 100_000, encoding="utf-8")
    with pytest.raises(idf.ImageDetailError, match="not valid JSON"):
        idf.read_image_detail(str(path))


def test_blue_green_targets_nested_deeper_than_the_json_decoder(tmp_path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = idf.main(["--blue-green-targets", "[" * 100_000, "--home-region", "us-east-2",
                         "--image-detail", str(tmp_path / "none.json"), "--output-dir", str(tmp_path)])
    assert code == 1 and err.getvalue().startswith("ERROR: blue/green targets are not valid JSON")
    assert idf.parse_blue_green_targets(json.loads(json.dumps(BLUE_GREEN)))


def test_a_targets_map_nested_deeper_than_the_json_decoder(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text("[" * 100_000, encoding="utf-8")
    with pytest.raises(push.TargetsError, match="not readable JSON"):
        push.load_targets(path)


def test_a_max_concurrency_override_of_superscript_two(monkeypatch) -> None:
    """ValueError: invalid literal for int() ('²'.isdigit() is true)."""
    monkeypatch.setenv(push.MAX_CONCURRENCY_ENV, "²")
    with pytest.raises(push.TargetsError, match="expected an integer from 1 to 64, got '²'"):
        push._max_concurrency_override()


def test_the_engine_inputs_used_here_are_valid() -> None:
    assert engine.targets_for(engine.parse_document(DOCUMENT), "qa", IMAGES)


def test_a_target_state_with_a_list_for_changed() -> None:
    """Accepted as it was: a list where a flag belongs would have decided whether a failure restores the target."""
    from dataclasses import fields

    assert set(engine._STATE_TYPES) == {f.name for f in fields(engine.TargetState)}
    with pytest.raises(ValueError, match=r"wrong types: changed: \[\]"):
        engine.TargetState.from_dict({"phase": engine.DEPLOYING, "changed": []})
    with pytest.raises(ValueError, match="poll_errors: True"):
        engine.TargetState.from_dict({"phase": engine.DEPLOYING, "poll_errors": True})
    state = engine.TargetState(engine.DEPLOYING, changed=True, started_at=3, reason="x")
    assert engine.TargetState.from_dict(state.to_dict()) == state
