"""The one YAML reader of the project: safe, strict about keys, and every mistake a one-line ``UserError``.

``yaml.safe_load`` has three traps for hand-written files, all closed here:

- a key given twice keeps the last value silently (a task defined twice, ``n_class`` twice in one task);
  here it is an error naming the file, the line and the key;
- YAML 1.1 reads ``on``/``off``/``yes``/``no`` as booleans, so a task named ``on`` or ``labels: [yes, no]``
  silently becomes ``True``; here only ``true``/``false`` (any case YAML 1.2 allows) are booleans, as in
  YAML 1.2, and ``enable_san: true`` still is one;
- a deeply nested document overflows the recursive composer; here it is an error, not a traceback.

Only the safe constructors exist (``yaml.SafeLoader``): no tag can build a Python object.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from data_utils.errors import UserError

__all__ = ["StrictSafeLoader", "load_yaml", "parse_yaml"]

_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_YAML12_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class DuplicateKeyError(ConstructorError):
    """A mapping repeats a key; ``key``, ``line`` and ``first_line`` (1-based) say where."""

    def __init__(self, key: object, line: int, first_line: int, mark: yaml.Mark) -> None:
        super().__init__(None, None, f"key {key!r} given twice", mark)
        self.key = key
        self.line = line
        self.first_line = first_line


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 booleans and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(self, node)
        return super().construct_mapping(node, deep=deep)


def _refuse_duplicate_keys(loader: StrictSafeLoader, node: yaml.MappingNode) -> None:
    """Raise ``DuplicateKeyError`` at the second of two equal keys written in ``node`` (merged ``<<`` keys
    may be overridden: that is what a merge is for)."""
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = key in first_line
        except TypeError:  # an unhashable key: the base constructor reports it with its mark
            continue
        line = key_node.start_mark.line + 1
        if seen:
            raise DuplicateKeyError(key, line, first_line[key], key_node.start_mark)
        first_line[key] = line


def _yaml12_booleans(loader: type[yaml.SafeLoader]) -> None:
    """Replace YAML 1.1's boolean resolver (yes/no/on/off/...) by YAML 1.2's (true/false only)."""
    loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    loader.add_implicit_resolver(_BOOL_TAG, _YAML12_BOOL, list("tTfF"))


_yaml12_booleans(StrictSafeLoader)


def parse_yaml(text: str, source: str = "<yaml>") -> Any:
    """Parse ``text`` with ``StrictSafeLoader``; a bad document is a ``UserError`` naming ``source:line``."""
    try:
        return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 - StrictSafeLoader is a SafeLoader
    except DuplicateKeyError as error:
        raise UserError(
            f"{source}:{error.line}: key '{error.key}': given twice (first on line {error.first_line})"
        ) from None
    except yaml.YAMLError as error:
        raise UserError(_describe(error, text, source)) from None
    except RecursionError:
        raise UserError(f"{source}: invalid YAML: nested too deeply") from None


def load_yaml(path: str | Path, *, what: str = "YAML") -> Any:
    """Read the UTF-8 YAML file ``path`` (``StrictSafeLoader``); any problem is a one-line ``UserError``.

    ``what`` names the file's role in the "cannot read" message (``"task definitions"``, ``"config"``).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read {what}: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - data.rfind(b"\n", 0, error.start)
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None
    return parse_yaml(text, str(path))


def _describe(error: yaml.YAMLError, text: str, source: str) -> str:
    """``<source>[:line]: invalid YAML: <problem>`` on one line."""
    problem: object = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    if isinstance(error, yaml.reader.ReaderError):
        position = int(error.position)
        line = text.count("\n", 0, position) + 1
        problem = f"unacceptable character #x{int(error.character):04x}: {error.reason}"
    where = source if line is None else f"{source}:{line}"
    flat = " ".join(str(problem or "not a YAML document").split())
    return f"{where}: invalid YAML: {flat}"
