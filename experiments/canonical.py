"""What every benchmark's ``prepare.py`` shares: canonical JSONL out, official JSON lines in, the ``--tasks``
flag, and the one-line-per-task summary.

Canonical rows are ``{"uid", "label", "premise"[, "hypothesis"]}`` (no ``label`` in an unlabelled split),
one JSON object per line, written atomically.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_utils.atomic import atomic_write_text
from data_utils.errors import UserError

Row = dict[str, Any]
# {task: {split: row count, ..., "skipped": ["file:line: reason", ...]}}
Summary = dict[str, dict[str, Any]]
_BOM = b"\xef\xbb\xbf"


@dataclass
class FileResult:
    """The canonical rows of one official file, and a ``file:line: reason`` for every row left out."""

    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write canonical rows as JSONL (UTF-8, non-ASCII kept) through a temp file and a rename."""
    atomic_write_text(path, "".join(json.dumps(dict(row), ensure_ascii=False) + "\n" for row in rows))


def read_utf8(path: Path) -> str:
    """The whole of the UTF-8 text file ``path`` (a leading BOM dropped); another encoding stops with
    ``file:line``."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror or error}") from None
    data = data.removeprefix(_BOM)  # MRPC's files start with one
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(_not_utf8(path, data, error)) from None


def _not_utf8(path: Path, data: bytes, error: UnicodeDecodeError, first_line: int = 1) -> str:
    """``file:line: not UTF-8 text ...`` for a decode error at ``error.start`` of ``data``."""
    line = first_line + data.count(b"\n", 0, error.start)
    column = error.start - data.rfind(b"\n", 0, error.start)
    return (
        f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} at column {column}); "
        "convert the file to UTF-8"
    )


def read_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line; a line that is not UTF-8 or not a JSON object
    stops with ``file:line``."""
    if not path.is_file():
        raise UserError(f"{path}: not found")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(_BOM)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UserError(_not_utf8(path, raw, error, number)) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                problem = f"{error.msg}, column {error.colno}"
                raise UserError(f"{path}:{number}: invalid JSON ({problem})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def text_field(record: Mapping[str, Any], key: str, path: Path, number: int) -> str:
    """``record[key]`` as a string; absent, not a string or not valid Unicode (JSON's ``"\\ud800"``, an
    unpaired surrogate no encoder accepts) stops with ``file:line: key '<key>'``."""
    if key not in record:
        raise UserError(f"{path}:{number}: key '{key}' missing")
    value = record[key]
    if not isinstance(value, str):
        raise UserError(f"{path}:{number}: key '{key}': expected a string, got {value!r}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            code = ord(value[error.start])
            raise UserError(
                f"{path}:{number}: key '{key}': not valid Unicode text (an unpaired surrogate \\u{code:04x} "
                f"at character {error.start + 1})"
            ) from None
    return value


def parse_names(value: str, known: Sequence[str], what: str) -> list[str]:
    """A comma-separated ``--tasks`` value, every name checked against ``known`` (for argparse ``type=``)."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {unknown[0] if unknown else value!r} (known: {', '.join(known)})"
        )
    return names


def print_summary(summary: Summary, skipped_what: str, shown: int = 5) -> None:
    """One line per task (rows per split, how many rows were left out), then the first few of those."""
    for name, counts in summary.items():
        splits = ", ".join(f"{split} {n:,}" for split, n in counts.items() if split != "skipped")
        print(f"{name}: {splits}; {skipped_what}: {len(counts['skipped']):,}")
        for message in counts["skipped"][:shown]:
            print(f"  skipped {message}")
