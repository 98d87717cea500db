"""Reading ``Pulumi.<stack>.yaml`` for the offline plan and the tests, as strictly as the Pulumi CLI reads it.

Two things PyYAML (YAML 1.1) does silently would make the offline plan and the tests disagree with ``pulumi up`` or
with the author:

* **Duplicate keys.** The CLI refuses a mapping that names a key twice; PyYAML silently keeps the last value, so the
  offline plan would show a stack that ``pulumi up`` refuses to run, or half of a config the author wrote twice.
  :func:`read_stack_file` refuses them at any depth, naming the key and both lines.
* **Numbers spelt in YAML 1.1 forms.** To PyYAML an unquoted ``012345670123`` is octal (1402433619), ``1:30``
  sexagesimal (90), ``0x10`` hexadecimal (16). The value stays what PyYAML reads (a deliberate ``port: 0x1F90``
  still works), but as a :class:`TypedInt` / :class:`TypedFloat` that remembers the text the user typed, so a
  validation message can say ``012345670123 was read as the number 1402433619 (YAML 1.1 octal); quote it:
  "012345670123"`` instead of naming a number nobody wrote.

Only the offline plan and the tests read stack files through this module. At ``pulumi up`` the CLI parses the stack
file itself and hands the program JSON values, so there the program sees plain numbers, and
:mod:`components.config` must (and does) work with those: the texts kept here only improve the offline messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from components.config import NAMESPACE, StackConfig, namespace_values, parse
from handlers.release_file import LimitedLoader

_MERGE = "tag:yaml.org,2002:merge"
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")


class StackFileError(ValueError):
    """A stack file that the Pulumi CLI would not read, or that is not a stack file: one line per problem, each
    starting with the file name. A ValueError, as the loader's callers have always caught."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class _Spelt:
    """What :class:`TypedInt` and :class:`TypedFloat` share: the number, plus the text the user typed and how YAML
    1.1 read it. ``_number`` is the plain type (``int`` or ``float``) the value is everywhere but in ``repr``."""

    _number: type
    yaml_text: str
    yaml_reading: str

    def __new__(cls, value: float, text: str, reading: str) -> _Spelt:
        self = super().__new__(cls, value)  # type: ignore[call-arg]  # the number type next in the MRO
        self.yaml_text, self.yaml_reading = text, reading
        return self

    def __getnewargs__(self) -> tuple[float, str, str]:  # copy/pickle need all three
        return self._number(self), self.yaml_text, self.yaml_reading

    def __repr__(self) -> str:
        return f"{self.yaml_text} (read as {self._number(self)!r}, {self.yaml_reading})"


class TypedInt(_Spelt, int):
    """An int the stack file spelt in a form only YAML 1.1 (or only some parsers) reads as a number.

    ``yaml_text`` is what the user typed (``012345670123``), ``yaml_reading`` how it was read (``YAML 1.1 octal``).
    It is an ``int`` everywhere (pydantic, comparisons, ``json.dumps`` writes the plain number); only ``repr`` tells
    the story, so every validation message that shows the value (``got {value!r}``) shows what the user wrote.
    """

    _number = int
    __str__ = int.__repr__  # f"{value}" stays the number: only repr, used in "got ..." messages, tells the story


class TypedFloat(_Spelt, float):
    """A float the stack file spelt in a YAML 1.1-only form (``1:30.5``, ``1_000.5``); see :class:`TypedInt`."""

    _number = float
    __str__ = float.__repr__


def number_reading(text: str, *, is_float: bool = False) -> str | None:
    """How YAML 1.1 read the plain scalar `text` (an int, or a float with `is_float`), when that is a trap: a form
    YAML 1.2 reads as a string, or one the author most likely meant as digits (a leading zero). None for ordinary
    decimal numbers (``12``, ``-3``, ``0.5``, ``01.5``, which every YAML reads alike)."""
    digits = text.lstrip("+-")
    if _SEXAGESIMAL.fullmatch(text):
        return "YAML 1.1 sexagesimal"
    if not is_float:
        if digits.startswith(("0x", "0X")):
            return "hexadecimal"
        if digits.startswith(("0b", "0B")):
            return "YAML 1.1 binary"
        if len(digits) > 1 and digits.startswith("0"):
            return "YAML 1.1 octal"
    if "_" in digits:
        return "YAML 1.1 digit separators"
    return None


class StrictLoader(LimitedLoader):
    """SafeLoader (the pure-Python one: identical marks with or without libyaml) whose numbers keep their text when
    YAML 1.1 reads them differently from what was typed. Duplicate keys are found by :func:`read_stack_file`, on the
    composed nodes, which still have every key and its line.

    Bounded and core tags only, as :class:`handlers.release_file.LimitedLoader` (the limits below; Pulumi's
    ``secure:`` is a key of a mapping, not a tag, so encrypted values pass). A value PyYAML's own constructors
    cannot build (``2024-13-45`` reads as a date, a 5000-digit number is over Python's int conversion limit) is a
    ConstructorError with its line, not a ValueError from deep inside PyYAML."""

    what = "a stack file"
    max_chars = 256 * 1024  # this repository's largest is 5 KiB (160 values for three services)
    max_depth = 32  # a stack file nests 7 deep (config, key, list, item, block, block, value)
    # PyYAML spends ~0.65 KB and ~45 us per value: 10,000 is ~0.5 s and ~6 MB, and room for 200 configured services
    max_nodes = 10_000
    max_entries = 2_000
    max_scalar_chars = 64 * 1024  # PEM certificates and Pulumi's ciphertexts are a few KiB

    def _construct(self, construct: Any, node: ScalarNode, what: str) -> Any:
        try:
            return construct(self, node)
        except (ValueError, OverflowError) as exc:
            raise ConstructorError(None, None, f"cannot read {node.value[:60]!r} as {what}: {exc}",
                                   node.start_mark) from None

    def construct_yaml_int(self, node: ScalarNode) -> int:  # type: ignore[override]
        value = self._construct(SafeConstructor.construct_yaml_int, node, "a number")
        reading = number_reading(node.value)
        return TypedInt(value, node.value, reading) if reading else value

    def construct_yaml_float(self, node: ScalarNode) -> float:  # type: ignore[override]
        value = self._construct(SafeConstructor.construct_yaml_float, node, "a number")
        reading = number_reading(node.value, is_float=True)
        return TypedFloat(value, node.value, reading) if reading else value

    def construct_yaml_timestamp(self, node: ScalarNode) -> Any:  # type: ignore[override]
        return self._construct(SafeConstructor.construct_yaml_timestamp, node, "a date (quote it for a string)")


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)
StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", StrictLoader.construct_yaml_timestamp)


def _child_label(parent: str | None, key: Any) -> str:
    # Keys of the document and of its `config:` block are named alone (`crossdeploy:services`), deeper ones by their
    # path below those (`crossdeploy:environments[1].name`), the notation the config's own messages use.
    return str(key) if parent is None else f"{parent}.{key}"


def _duplicate_keys(loader: StrictLoader, root: Node, file: str) -> list[str]:
    problems: list[str] = []
    seen_nodes: set[int] = set()  # an aliased node is one node: walk it (and report its duplicates) once

    def walk(node: Node, label: str | None, top: bool) -> None:
        if id(node) in seen_nodes:
            return
        seen_nodes.add(id(node))
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{label or ''}[{i}]", False)
            return
        if not isinstance(node, MappingNode):
            return
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE:
                # `<<` merges are meant to be overridden; complex keys do not occur in stack files.
                walk(value_node, label, False)
                continue
            # Keys compare as values, as YAML defines key equality (`1` and `0x1` are one key). A key that cannot be
            # constructed fails construction below, with its mark.
            try:
                key = loader.construct_object(key_node)
                hash(key)
            except (yaml.YAMLError, TypeError):
                continue
            child = _child_label(None if top else label, key)
            line = key_node.start_mark.line + 1  # PyYAML marks are 0-based
            if key in first_line:
                problems.append(f"{file}: duplicate key {child!r} at lines {first_line[key]} and {line}")
            else:
                first_line[key] = line
            # The document's keys and the keys of its `config:` block are "top": named without a prefix.
            walk(value_node, child, top and label is None and key == "config")

    walk(root, None, True)
    return problems


def read_stack_file(path: Path) -> Any:
    """The stack file's YAML document, read by :class:`StrictLoader`; StackFileError when it is not valid YAML or
    names a key twice in one mapping (every duplicate is reported, each with both lines)."""
    file = str(path)
    try:
        with path.open(encoding="utf-8") as handle:  # no further than StrictLoader refuses to go
            text = handle.read(StrictLoader.max_chars + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise StackFileError([f"{file}: cannot read: {exc}"]) from None
    try:
        loader = StrictLoader(text)
    except yaml.YAMLError as exc:  # the reader rejects control characters before anything is parsed
        raise StackFileError([f"{file}: not valid YAML: {exc}"]) from None
    loader.name = file  # marks (and so error messages) name the file, not "<unicode string>"
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems = _duplicate_keys(loader, node, file)
        if problems:
            raise StackFileError(problems)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise StackFileError([f"{file}: not valid YAML{_where(exc)}"]) from None
    finally:
        loader.dispose()


def _where(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line: where, what, and in what context (its own str spans four lines)."""
    if not isinstance(exc, yaml.MarkedYAMLError) or not (exc.problem_mark or exc.context_mark):
        return f": {exc}"
    mark = exc.problem_mark or exc.context_mark
    assert mark is not None
    text = f" at line {mark.line + 1}, column {mark.column + 1}: {exc.problem or exc.context}"
    if exc.context and exc.problem:
        at = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        text += f" ({exc.context}{at})"
    return text


def read_config(path: Path) -> dict[str, Any]:
    """The ``config:`` block of a stack file (``namespace:key`` -> value), as Pulumi would hand it to the program,
    YAML 1.1 number traps kept as :class:`TypedInt` / :class:`TypedFloat`; StackFileError otherwise."""
    data = read_stack_file(path)
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict):
        raise StackFileError([f"{path}: not a Pulumi stack file (expected a mapping with a `config:` mapping)"])
    # Pulumi's config keys are `namespace:key` strings; an unquoted `1:` or `true:` is a number or a bool to YAML.
    keys = [key for key in config if not isinstance(key, str)]
    if keys:
        raise StackFileError([f"{path}: config key {key!r} is not a string (config keys are namespace:key)"
                              for key in keys])
    return dict(config)


def validate_config(config: Mapping[str, Any], *, project: str = NAMESPACE, stack: str = "offline") -> StackConfig:
    """:func:`components.config.parse` on a stack file's config block as read by :func:`read_config`: the values the
    program would see, but with the typed text of trap numbers still attached (ConfigError when invalid).
    `project` and `stack` only name the returned StackConfig; no check depends on them.

    The program validates again when it runs (:func:`components.config.load`), from the JSON the language host
    passes: by then ``012345670123`` is only 1402433619. Validating here first lets the offline plan say what the
    user typed."""
    if "aws:region" in config:
        # The program reads aws:region through pulumi.Config, which hands any non-string value over as JSON text.
        value = config["aws:region"]
        aws_region: str | None = value if isinstance(value, str) else json.dumps(value)
    else:
        aws_region = None
    return parse(namespace_values(config), project=project, stack=stack, aws_region=aws_region)
