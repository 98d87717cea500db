"""Property tests of the YAML parsers and the stack config (issue 13): whatever a user pastes or a script generates,
the outcome is success or the parser's own error naming the key path; never another exception, never a traceback.

Inputs start from real, valid documents (Pulumi.prod.yaml, Pulumi.dev.yaml, the base test config,
examples/deployment.yaml, the seed sample) and are mutated at any depth: values swapped for another type, keys and
items deleted, keys invented, hostile unicode, huge and empty values; YAML text gets tags, anchors, aliases, stray
indicators and control characters spliced in. The handlers' events are in test_properties_handlers.py. Profiles
(derandomized "ci" by default, HYPOTHESIS_PROFILE=thorough for a long local hunt) are in conftest.py; every failure
these found is kept as a named case in test_hostile_regressions.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml
from conftest import BASE_CONFIG, PROD, QA, ROOT, SAMPLES, TOOLS
from hypothesis import given
from hypothesis import strategies as st

from components.config import ConfigError, namespace_values, parse
from handlers import release_file as rf
from offline.stack_file import StackFileError, read_config, read_stack_file, validate_config

# --- mutation strategies (shared with test_properties_handlers.py) ----------------------------------------------

WEIRD_TEXT = [
    "", " ", "\x00", "a\x00b", "\u202eevil\u202c", "\u0645\u0631\u062d\u0628\u0627", "e\u0301", "\U0001f4a5",
    "\ufeffbom", "\u2028", "tab\there", "new\nline", "x" * 20_000, "1" * 5000, "0x1F", "012345670123", "1:30",
    "~", "null", "yes", "no", "on", "2024-13-45", "*", "&a", "!!python/object:os.system", "{{", "[[", "'", '"',
    "${AWS::AccountId}", "../../etc/passwd", "arn:aws:iam::*:role/*", "*-*-*", "\\", "%s%n", "\x7f",
]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([0, -1, 2**31, 2**63, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WEIRD_TEXT),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8) | st.sampled_from(WEIRD_TEXT[:12]), inner,
                                                 max_size=4)), max_leaves=8)
KEYS = st.sampled_from(["name", "accountId", "region", "regions", "service", "image", "version", "extra", "",
                        "\x00", "\u202ekey", "k" * 300, "__proto__", "crossdeploy:bogus", "aws:region"]) | st.text(
    max_size=10)
# YAML keys need not be strings (`1:`, `true:`, `~:`, `1.5:`); JSON's always are, so the handlers get KEYS only.
YAML_KEYS = KEYS | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every location in a JSON-like document: the root, each mapping value and each list item, at any depth."""
    out = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            out.extend(_paths(child, (*path, key)))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out.extend(_paths(child, (*path, i)))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def swap_type(value: Any) -> st.SearchStrategy[Any]:
    """A value of another JSON type than ``value`` (a list where a string was, a mapping where a list was...)."""
    kinds = {
        "list": st.lists(SCALARS, max_size=3), "dict": st.dictionaries(st.text(max_size=5), SCALARS, max_size=3),
        "int": st.integers(), "float": st.floats(), "bool": st.booleans(), "none": st.none(),
        "str": st.sampled_from(WEIRD_TEXT) | st.text(max_size=10),
    }
    own = {list: "list", dict: "dict", int: "int", float: "float", bool: "bool", type(None): "none", str: "str"}.get(
        type(value))
    return st.one_of([s for kind, s in kinds.items() if kind != own])


@st.composite
def mutated(draw: st.DrawFn, base: Any, max_mutations: int = 3, keys: st.SearchStrategy[Any] = KEYS) -> Any:
    """``base`` with 1..max_mutations mutations, each at any location: replaced by another type or a weird value,
    deleted, an invented key added, emptied, or a list item duplicated."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_mutations))):
        path = draw(st.sampled_from(_paths(doc)))
        target = _get(doc, path)
        op = draw(st.sampled_from(["swap", "weird", "delete", "invent", "empty", "duplicate"]))
        if op == "invent" and isinstance(target, dict):
            target[draw(keys)] = draw(VALUES)
            continue
        if op == "duplicate" and isinstance(target, list) and target:
            target.append(copy.deepcopy(draw(st.sampled_from(target))))
            continue
        if not path:
            if op in ("swap", "weird"):
                doc = draw(swap_type(doc) if op == "swap" else VALUES)
            continue
        parent = _get(doc, path[:-1])
        if op == "delete":
            del parent[path[-1]]
        elif op == "empty":
            parent[path[-1]] = draw(st.sampled_from(["", [], {}, None, 0]))
        elif op == "swap":
            parent[path[-1]] = draw(swap_type(target))
        else:
            parent[path[-1]] = draw(VALUES)
    return doc


YAML_SNIPPETS = [
    "!!python/object/apply:os.system ['id'] ", "!!python/name:os.system ", "!Ref ", "!foo ", "!!binary ", "!!set ",
    "!!omap ", "!!timestamp ", "!!int ", "!!bool ", "!<tag:example.com,2000:x> ", "&a ", "*a", "*nope", "<<: *a\n",
    "\x00", "\x1b", "\t", "\ufeff", "\u202e", "{", "}", "[", "]", ": ", "- ", "? ", "|\n", ">-\n", "'", '"', "#",
    "%YAML 1.1\n", "\n---\n", "\n...\n", "=", "2024-13-45", "1" * 5000, "0o17", "1_000", "~", "\\", "@", "`",
    "secure: AAABAKLz0fq7", "x" * 3000, "\n" + "  " * 40 + "deep: 1\n",
]


@st.composite
def spliced(draw: st.DrawFn, text: str) -> str:
    """``text`` with hostile YAML spliced in (or cut out) at 1..3 random places."""
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:at] + draw(st.sampled_from(YAML_SNIPPETS) | st.text(max_size=5)) + text[at:]
        else:
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
    return text


def assert_problems_name_paths(problems: list[str]) -> None:
    """A refusal lists problems, each ``<key path>: <message>`` on one line."""
    assert problems and all(isinstance(p, str) and ": " in p for p in problems), problems


# --- the stack config -------------------------------------------------------------------------------------------

PROD_CONFIG = read_config(ROOT / "Pulumi.prod.yaml")
DEV_CONFIG = read_config(ROOT / "Pulumi.dev.yaml")
CONFIGS = [BASE_CONFIG, PROD_CONFIG, DEV_CONFIG]


def check_config(config: Any) -> None:
    """validate_config (the offline plan's reading) and parse of the JSON the language host passes (pulumi up):
    a StackConfig or ConfigError, nothing else."""
    for run in (lambda: validate_config(config),
                lambda: parse(namespace_values({k: json.dumps(v) for k, v in config.items()}), project="p",
                              stack="s", aws_region=config.get("aws:region") if isinstance(
                                  config.get("aws:region"), str) else None)):
        try:
            run()
        except ConfigError as exc:
            assert_problems_name_paths(exc.problems)


@given(st.sampled_from(CONFIGS).flatmap(lambda base: mutated(base, keys=YAML_KEYS)))
def test_a_mutated_stack_config_is_accepted_or_refused_with_config_errors(config: Any) -> None:
    # Top-level keys are strings by then: read_config refuses any other (the stack file round trip tests that).
    if isinstance(config, dict) and all(isinstance(key, str) for key in config):
        check_config(config)


def _leaves(config: dict[str, Any]) -> list[tuple]:
    return [p for p in _paths(config) if len(p) > 1 and not isinstance(_get(config, p), dict | list)
            and str(p[0]).startswith("crossdeploy:")]


def _label(path: tuple) -> str:
    """The config's own notation for a location: ``environments[1].regions`` (list indexes at the end dropped:
    list items are checked as a whole by some validators)."""
    while path and isinstance(path[-1], int):
        path = path[:-1]
    out = path[0].partition(":")[2]
    for part in path[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


@st.composite
def leaf_swapped(draw: st.DrawFn) -> tuple[dict[str, Any], tuple, Any]:
    config = copy.deepcopy(draw(st.sampled_from(CONFIGS)))
    path = draw(st.sampled_from(_leaves(config)))
    value = draw(st.sampled_from([["x"], [QA], {"a": 1}, {"name": "x"}, [[]], {}]))
    _get(config, path[:-1])[path[-1]] = value
    return config, path, value


@given(leaf_swapped())
def test_a_list_or_mapping_where_a_value_belongs_is_named_by_its_key_path_and_value(case: tuple) -> None:
    """The issue's first finding, at every leaf of every real config: a list where an account id belongs, a
    mapping where a name belongs. Before the fix, unhashable values crashed the cross-key checks with TypeError."""
    config, path, value = case
    try:
        validate_config(config)
    except ConfigError as exc:
        text = "\n".join(exc.problems)
        assert _label(path) in text and repr(value) in text, (path, exc.problems)
    else:
        raise AssertionError(f"{path} = {value!r} was accepted")


# --- the stack file (YAML text) ---------------------------------------------------------------------------------

STACK_TEXTS = [(ROOT / name).read_text(encoding="utf-8") for name in ("Pulumi.prod.yaml", "Pulumi.dev.yaml")]


def check_stack_text(text: str, tmp: Path) -> None:
    path = tmp / "Pulumi.hostile.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        read_stack_file(path)
        config = read_config(path)
    except StackFileError as exc:
        assert exc.problems and all(p.startswith(str(path)) for p in exc.problems), exc.problems
        return
    check_config(config)


@given(text=st.sampled_from(STACK_TEXTS).flatmap(spliced))
def test_a_spliced_stack_file_is_read_or_refused_with_stack_file_errors(text: str, tmp_path_factory) -> None:
    check_stack_text(text, tmp_path_factory.getbasetemp())


@given(config=st.sampled_from([PROD_CONFIG, DEV_CONFIG]).flatmap(lambda base: mutated(base, keys=YAML_KEYS)))
def test_a_mutated_stack_file_round_trips_through_yaml_or_is_refused(config: Any, tmp_path_factory) -> None:
    text = yaml.safe_dump({"config": config}, allow_unicode=True)
    check_stack_text(text, tmp_path_factory.getbasetemp())


# --- the release file -------------------------------------------------------------------------------------------

ROLE = "arn:aws:iam::{}:role/crossdeploy/prod/deploy/crossdeploy-prod-deploy"
TEST_ACCOUNT = QA
# The prod stack's environments as the release context names them (offline.plan --release-context writes this).
CONTEXT = {
    "version": 1, "partition": "aws", "registryId": TOOLS, "homeRegion": "us-east-2",
    "environments": {
        "test": {"accountId": TEST_ACCOUNT, "regions": ["us-east-2"], "deployRoleArn": ROLE.format(TEST_ACCOUNT)},
        "prod": {"accountId": PROD, "regions": ["us-east-2", "us-west-2"], "deployRoleArn": ROLE.format(PROD),
                 "blueGreen": {"application": "crossdeploy-prod", "deploymentGroups": {
                     "payments": "payments-group", "storefront": "storefront-group", "orders": "orders-group"},
                     "smokeTestHooks": {"orders": "crossdeploy-prod-smoke"}}},
    },
    "services": {"crossdeploy/orders": "services/orders/deploy.json"},
}
CTX = rf.load_context(CONTEXT)
EXAMPLE = (ROOT / "examples" / "deployment.yaml").read_text(encoding="utf-8")
SEED = (SAMPLES / "deployment.yaml").read_text(encoding="utf-8")
RELEASE_TEXTS = [EXAMPLE, SEED]
RELEASE_DOCS = [yaml.safe_load(t) for t in RELEASE_TEXTS]


def check_release(text: str) -> None:
    """validate returns problems (never raises); convert returns a manifest or raises ReleaseFileError."""
    problems = rf.validate(text, CTX)
    lines = text.count("\n") + 2
    assert all(isinstance(p, rf.Problem) and 1 <= p.line <= lines and p.path and p.message for p in problems)
    try:
        manifest = rf.convert(text, CTX)
    except rf.ReleaseFileError as exc:
        assert exc.problems == problems
    else:
        assert problems == [] and json.dumps(manifest)


def test_the_release_bases_are_what_the_properties_start_from() -> None:
    assert rf.validate(EXAMPLE, CTX) == []  # the mutations start from a valid file
    assert rf.validate(SEED, CTX)  # and from the seed sample, invalid as shipped


@given(st.sampled_from(RELEASE_DOCS).flatmap(lambda base: mutated(base, keys=YAML_KEYS)))
def test_a_mutated_release_file_is_validated_without_raising(doc: Any) -> None:
    check_release(yaml.safe_dump(doc, allow_unicode=True))


@given(st.sampled_from(RELEASE_TEXTS).flatmap(spliced))
def test_a_spliced_release_file_is_validated_without_raising(text: str) -> None:
    check_release(text)


@given(st.binary(max_size=200) | st.sampled_from(RELEASE_TEXTS).flatmap(spliced).map(
    lambda t: t.encode("utf-8", "surrogatepass")[: len(t) // 2] + b"\xff\xfe"))
def test_release_file_bytes_that_are_not_utf8_are_problems(data: bytes) -> None:
    problems = rf.validate(data, CTX)
    assert all(isinstance(p, rf.Problem) for p in problems)


@given(mutated(CONTEXT))
def test_a_mutated_release_context_loads_or_raises_context_error(context: Any) -> None:
    try:
        ctx = rf.load_context(context)
    except rf.ContextError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
        return
    problems = rf.validate(EXAMPLE, ctx)
    assert all(isinstance(p, rf.Problem) for p in problems)


def test_every_yaml_tag_outside_the_core_is_refused_with_its_line() -> None:
    for tag in ("!!python/object:os.system", "!!python/name:os.system", "!Ref", "!foo", "!!binary", "!!set",
                "!!omap", "!!pairs", "!!timestamp", "!!merge", "!<tag:example.com,2000:app>", "!!str"):
        text = EXAMPLE.replace("clusterName: crossdeploy", f"clusterName: {tag} crossdeploy", 1)
        line = text[:text.index(tag)].count("\n") + 1
        problems = [str(p) for p in rf.validate(text, CTX)]
        if tag == "!!str":
            assert problems == [], problems  # a core tag saying what the value is anyway
        else:
            assert problems == [f"deployment.yaml:{line}: (yaml): tag {tag.removeprefix('!<').rstrip('>')} is not "
                                "used by a release file; only YAML's core types are (strings, numbers, true/false, "
                                "null, lists, mappings): remove the tag"], problems
        stack = STACK_TEXTS[0].replace("region: us-east-2\n", f"region: {tag} us-east-2\n", 1)
        if tag != "!!str":
            try:
                yaml.load(stack, Loader=__import__("offline.stack_file").stack_file.StrictLoader)
            except yaml.MarkedYAMLError as exc:
                assert re.search(r"tag .* is not used by a stack file", str(exc)), exc
            else:
                raise AssertionError(f"{tag} accepted in a stack file")
