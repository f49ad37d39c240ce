"""The token-id cache: one folder of flat numpy arrays per task split, memory-mapped on load.

Layout of ``<cache_dir>/<task>_<split>/``::

    input_ids.npy       int32   [n_tokens]      every encoded sequence, concatenated
    token_type_ids.npy  int8    [n_tokens]      segment ids (absent when the tokenizer has none)
    seq_offsets.npy     int64   [n_seqs + 1]    sequence s is input_ids[seq_offsets[s]:seq_offsets[s+1]]
    row_offsets.npy     int64   [n_rows + 1]    row r owns sequences row_offsets[r]:row_offsets[r+1]
                                                (one per row; one per candidate for ranking)
    labels.npy          int64 | float32 [n_rows]  class / candidate index, or a score; -1 / nan if unlabelled
    uids.npy            <U..    [n_rows]
    <name>.npy          arrays a task kind adds (e.g. per-token labels), listed in ``meta.json``'s
                        ``arrays``; a split without any has no ``arrays`` key (so the caches of the
                        built-in kinds are what they were before kinds could add arrays)
    meta.json           task, split, counts, truncation, tokenizer fingerprint, and what it was built
                        from: ``task_def`` (task_type, data_format, labels, n_class) and ``source``,
                        ``source_sha256``, ``source_bytes`` (the file read)

A million rows load in milliseconds: nothing is parsed, arrays are mapped. ``<cache_dir>/manifest.json``
(written last) summarises every split written there, with the same built-from fields. Before a run uses a
cache, ``verify_cache`` (a cache folder) or ``verify_split`` (one split folder) checks it against the
current task definitions and encoder: a cache that no longer fits is a ``UserError``, never a silently
wrong result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_utils.atomic import (
    aside_path,
    atomic_directory,
    atomic_write_json,
    clean_stale_temporaries,
    recover_interrupted_replace,
)
from data_utils.errors import UserError
from data_utils.task_def import TaskDef

logger = logging.getLogger("data_utils.cache")

MANIFEST = "manifest.json"
_ARRAYS = ("input_ids", "seq_offsets", "row_offsets", "labels", "uids")


@dataclass(frozen=True)
class EncodedSplit:
    """One task split as token ids. ``meta`` holds the JSON-able facts (task, split, truncated, ...)."""

    input_ids: np.ndarray
    seq_offsets: np.ndarray
    row_offsets: np.ndarray
    labels: np.ndarray
    uids: np.ndarray
    token_type_ids: np.ndarray | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    # The kind's own arrays by name (``<name>.npy``); ``DataKind.encode_split`` fills it, the kind reads it.
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = _layout_problem(self)
        if problem is not None:
            raise ValueError(problem)

    def __len__(self) -> int:
        return len(self.row_offsets) - 1

    @property
    def n_sequences(self) -> int:
        return len(self.seq_offsets) - 1

    @property
    def seq_lengths(self) -> np.ndarray:
        return np.diff(self.seq_offsets)

    @property
    def row_lengths(self) -> np.ndarray:
        """The longest sequence of each row (what a padded batch of that row needs)."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.maximum.reduceat(self.seq_lengths, self.row_offsets[:-1])  # every row has >= 1 sequence

    @property
    def has_labels(self) -> bool:
        return bool(self.meta.get("has_labels", True))

    def sequences(self, row: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``(input_ids, token_type_ids)`` of each sequence of ``row``."""
        out: list[tuple[np.ndarray, np.ndarray | None]] = []
        for seq in range(int(self.row_offsets[row]), int(self.row_offsets[row + 1])):
            start, end = int(self.seq_offsets[seq]), int(self.seq_offsets[seq + 1])
            types = None if self.token_type_ids is None else self.token_type_ids[start:end]
            out.append((self.input_ids[start:end], types))
        return out


def _layout_problem(data: EncodedSplit) -> str | None:
    """What makes ``data``'s arrays inconsistent (lengths, offsets, dtypes), or ``None``."""
    named = {name: getattr(data, name) for name in _ARRAYS}
    if data.token_type_ids is not None:
        named["token_type_ids"] = data.token_type_ids
    for name, array in named.items():
        if array.ndim != 1:
            return f"{name} has {array.ndim} dimensions, expected 1"
    for name in ("input_ids", "seq_offsets", "row_offsets", "token_type_ids"):
        if name in named and not np.issubdtype(named[name].dtype, np.integer):
            return f"{name} holds {named[name].dtype}, expected integers"
    row_offsets, seq_offsets = data.row_offsets, data.seq_offsets
    if len(row_offsets) == 0 or len(seq_offsets) == 0 or row_offsets[0] != 0 or seq_offsets[0] != 0:
        return "row_offsets and seq_offsets must start at 0"
    n_rows = len(row_offsets) - 1
    if len(data.labels) != n_rows or len(data.uids) != n_rows:
        return f"{n_rows} rows but {len(data.labels)} labels and {len(data.uids)} uids"
    if row_offsets[-1] != len(seq_offsets) - 1:
        return f"row_offsets covers {int(row_offsets[-1])} sequences, seq_offsets has {len(seq_offsets) - 1}"
    if seq_offsets[-1] != len(data.input_ids):
        return f"seq_offsets covers {int(seq_offsets[-1])} tokens, input_ids has {len(data.input_ids)}"
    if data.token_type_ids is not None and len(data.token_type_ids) != len(data.input_ids):
        return f"{len(data.token_type_ids)} token_type_ids for {len(data.input_ids)} input_ids"
    if (np.diff(row_offsets) < 1).any():
        return "a row without sequences (row_offsets must increase)"
    if (np.diff(seq_offsets) < 0).any():
        return "seq_offsets decreases"
    for name, array in data.extras.items():
        if name in _RESERVED or not _ARRAY_NAME.match(name):
            return f"extra array name {name!r} is reserved or not a plain name"
        if array.ndim != 1:
            return f"{name} has {array.ndim} dimensions, expected 1"
    return None


_RESERVED = frozenset((*_ARRAYS, "token_type_ids", "meta"))
_ARRAY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def split_dir(cache_dir: str | Path, task: str, split: str) -> Path:
    return Path(cache_dir) / f"{task}_{split}"


def write_split(path: str | Path, data: EncodedSplit) -> None:
    """Write ``data`` to the folder ``path`` atomically: a temp folder beside it, then a rename."""
    with atomic_directory(path) as tmp:
        arrays: dict[str, np.ndarray] = {name: getattr(data, name) for name in _ARRAYS}
        if data.token_type_ids is not None:
            arrays["token_type_ids"] = data.token_type_ids
        arrays.update(data.extras)
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        meta = dict(data.meta)
        if data.extras:
            meta["arrays"] = sorted(data.extras)
        atomic_write_json(tmp / "meta.json", meta)


def load_split(path: str | Path, *, mmap: bool = True) -> EncodedSplit:
    """Load a split folder written by ``write_split``; arrays are memory-mapped unless ``mmap=False``.

    A folder whose arrays disagree (a labels file one row short, offsets past the ids) is a ``UserError``.
    A split folder a crash left moved aside (``atomic_directory``) is put back first.
    """
    path = Path(path)
    if not (path / "meta.json").is_file():
        recover_interrupted_replace(path)
    if not (path / "meta.json").is_file():
        raise UserError(f"{path}: no token-id cache here (run prepro_std.py first)")
    mode = "r" if mmap else None
    try:
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode=mode, allow_pickle=False) for name in _ARRAYS}
        types_file = path / "token_type_ids.npy"
        types = np.load(types_file, mmap_mode=mode, allow_pickle=False) if types_file.is_file() else None
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        names = meta.get("arrays", []) if isinstance(meta, dict) else []
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError("meta.json's 'arrays' is not a list of names")
        extras = {
            name: np.load(path / f"{name}.npy", mmap_mode=mode, allow_pickle=False)
            for name in names
            if _ARRAY_NAME.match(name)
        }
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: damaged token-id cache ({error}); run prepro_std.py again") from None
    if not isinstance(meta, dict):
        raise UserError(
            f"{path}: damaged token-id cache (meta.json is not an object); run prepro_std.py again"
        )
    try:
        return EncodedSplit(**arrays, token_type_ids=types, meta=meta, extras=extras)
    except ValueError as error:
        raise UserError(f"{path}: damaged token-id cache ({error}); run prepro_std.py again") from None


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path}: damaged manifest ({error}); run prepro_std.py again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits", {}), dict):
        raise UserError(f"{path}: damaged manifest (not an object with 'splits'); run prepro_std.py again")
    return manifest


def write_manifest(cache_dir: str | Path, manifest: Mapping[str, Any]) -> None:
    """Atomically replace ``<cache_dir>/manifest.json``."""
    atomic_write_json(Path(cache_dir) / MANIFEST, dict(manifest))


# --- what a cache was built from, and the checks before using it --------------------------------------------


def encoding_record(task_def: TaskDef) -> dict[str, Any]:
    """The parts of a task definition the cached ids and labels depend on (recorded as ``task_def``)."""
    return {
        "task_type": str(task_def.task_type),
        "data_format": task_def.data_format.value,
        "labels": None if task_def.labels is None else list(task_def.labels),
        "n_class": task_def.n_class,
    }


def file_sha256(path: str | Path) -> str:
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_split(
    path: str | Path,
    task_def: TaskDef,
    *,
    vocab_size: int | None = None,
    max_positions: int | None = None,
    type_vocab_size: int | None = None,
    tokenizer_sha256: str | None = None,
    mmap: bool = True,
) -> EncodedSplit:
    """Load the split folder ``path`` and check it fits ``task_def`` and the encoder; return it.

    A ``UserError`` (one line: the folder, the task, the key, "re-run prepro_std.py") when the task
    definition it was encoded with differs from ``task_def`` in task type, data format or labels; its
    source file is still where it was read from but its bytes changed; its tokenizer is not
    ``tokenizer_sha256``; a sequence is longer than ``max_positions``; an id is outside
    ``[0, vocab_size)`` or a segment id outside ``[0, type_vocab_size)``; or a label is outside the
    task's classes (the row's candidates for ranking, finite scores for regression). Checks whose record a
    cache from before these fields lacks are skipped (with one warning).
    """
    split = _verified_split(
        Path(path), task_def, vocab_size, max_positions, type_vocab_size, tokenizer_sha256, mmap
    )
    if _predates_records(split.meta):
        logger.warning("%s: %s", path, _OLD_CACHE.format("its"))
    return split


_OLD_CACHE = (
    "made by an older prepro_std.py: {} task definition and source file are not checked; "
    "re-run prepro_std.py to have them checked"
)


def _predates_records(meta: Mapping[str, Any]) -> bool:
    return "task_def" not in meta or "source_sha256" not in meta


def _verified_split(
    path: Path,
    task_def: TaskDef,
    vocab_size: int | None,
    max_positions: int | None,
    type_vocab_size: int | None,
    tokenizer_sha256: str | None,
    mmap: bool = True,
) -> EncodedSplit:
    split = load_split(path, mmap=mmap)
    meta = split.meta
    where = f"{path}: task '{task_def.name}'"
    if meta.get("task", task_def.name) != task_def.name:
        raise UserError(f"{where}: key 'task': the folder holds task '{meta['task']}'")
    _check_task_def(meta, task_def, where)
    _check_tokenizer(meta, tokenizer_sha256, where)
    _check_source(meta, where)
    _check_ids(split, where, vocab_size, max_positions, type_vocab_size)
    _check_labels(split, task_def, where)
    return split


def _check_task_def(meta: Mapping[str, Any], task_def: TaskDef, where: str) -> None:
    recorded = meta.get("task_def")
    current = encoding_record(task_def)
    if not isinstance(recorded, Mapping):  # older caches: what meta.json held then
        recorded = {key: meta[key] for key in ("task_type", "data_format") if key in meta}
    for key in ("task_type", "data_format", "labels"):
        if key in recorded and recorded[key] != current[key]:
            raise UserError(
                f"{where}: key '{key}': the cache was encoded with {_shown(recorded[key])}, the task "
                f"definition now says {_shown(current[key])}; re-run prepro_std.py"
            )


def _check_tokenizer(record: Mapping[str, Any], tokenizer_sha256: str | None, where: str) -> None:
    fingerprint = record.get("tokenizer")
    if tokenizer_sha256 is None or not isinstance(fingerprint, Mapping):
        return
    cached = fingerprint.get("sha256")
    if cached is not None and cached != tokenizer_sha256:
        raise UserError(
            f"{where}: key 'tokenizer': the cache was encoded with another tokenizer "
            f"({fingerprint.get('name_or_path')}); re-run prepro_std.py with this model"
        )


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return "no labels list" if value is None else str(value)


def _check_source(meta: Mapping[str, Any], where: str) -> None:
    """The source must be unchanged where it still exists (a cache copied without it stays usable)."""
    source, recorded = meta.get("source"), meta.get("source_sha256")
    if not isinstance(source, str) or not isinstance(recorded, str) or not Path(source).is_file():
        return
    size = meta.get("source_bytes")
    try:
        changed = isinstance(size, int) and Path(source).stat().st_size != size
        changed = changed or file_sha256(source) != recorded
    except OSError as error:  # there but unreadable: it cannot be compared, which is no reason to stop
        logger.warning("%s: cannot read the source %s to compare it: %s", where, source, error)
        return
    if changed:
        raise UserError(
            f"{where}: key 'source_sha256': {source} changed after prepro_std.py encoded it; "
            "re-run prepro_std.py"
        )


def _check_ids(
    split: EncodedSplit,
    where: str,
    vocab_size: int | None,
    max_positions: int | None,
    type_vocab_size: int | None,
) -> None:
    if max_positions is not None and split.n_sequences:
        longest = int(split.seq_lengths.max())
        if longest > max_positions:
            raise UserError(
                f"{where}: key 'max_seq_len': sequences of up to {longest} tokens, the encoder has "
                f"{max_positions} positions; re-run prepro_std.py with --max_seq_len {max_positions}"
            )
    for name, array, bound, key in (
        ("input_ids", split.input_ids, vocab_size, "vocab_size"),
        ("token_type_ids", split.token_type_ids, type_vocab_size, "type_vocab_size"),
    ):
        if array is None or not len(array):
            continue
        low, high = int(array.min()), int(array.max())
        if low < 0 or (bound is not None and high >= bound):
            bad = low if low < 0 else high
            upper = "" if bound is None else f" (the encoder's {key} is {bound})"
            what = "token id" if name == "input_ids" else "segment id"
            raise UserError(
                f"{where}: key '{name}': {what} {bad} is out of range{upper}; the cache is of another "
                "tokenizer or damaged: re-run prepro_std.py"
            )


def _check_labels(split: EncodedSplit, task_def: TaskDef, where: str) -> None:
    kind = task_def.kind
    if not split.has_labels or not len(split) or kind.self_labelled:
        return
    if not kind.multi_sequence and split.n_sequences != len(split):
        raise UserError(
            f"{where}: key 'task_type': a {task_def.task_type} task has one sequence per row, the cache has "
            f"{split.n_sequences} for {len(split)} rows; re-run prepro_std.py"
        )
    problem = kind.cached_label_problem(split, task_def)
    if problem is not None:
        key, text = problem
        raise UserError(f"{where}: key '{key}': {text}; re-run prepro_std.py")


def verify_cache(
    data_dir: str | Path,
    task_defs: Mapping[str, TaskDef],
    splits: Iterable[tuple[str, str]] | None = None,
    *,
    vocab_size: int | None = None,
    max_positions: int | None = None,
    type_vocab_size: int | None = None,
    tokenizer_sha256: str | None = None,
) -> None:
    """Check the cache folder ``data_dir`` before a run uses it; a ``UserError`` (one line) if it must not.

    ``splits``: the ``(task, split)`` pairs to check; by default every split of every task in
    ``task_defs`` that is on disk or in the manifest. Besides ``verify_split``'s checks of each: a split
    folder that ``manifest.json`` does not list (or there is no manifest) was written by a
    ``prepro_std.py`` run that did not finish; a listed one must exist and agree with its entry. Leftover
    temp folders of interrupted writes are removed first (when the folder is writable).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no token-id cache folder (run prepro_std.py)")
    if os.access(data_dir, os.W_OK):
        clean_stale_temporaries(data_dir)
    manifest = read_manifest(data_dir)
    listed: Mapping[str, Any] = manifest.get("splits", {})
    _check_tokenizer(manifest, tokenizer_sha256, str(data_dir))
    older: list[str] = []
    for task, split in _splits_to_check(data_dir, task_defs, splits, listed):
        if task not in task_defs:
            raise ValueError(f"verify_cache: no task definition for '{task}'")
        folder = split_dir(data_dir, task, split)
        entry = _manifest_entry(data_dir, folder, listed, f"{task}_{split}", bool(manifest))
        loaded = _verified_split(
            folder, task_defs[task], vocab_size, max_positions, type_vocab_size, tokenizer_sha256
        )
        _check_entry(folder, loaded.meta, entry, split)
        if _predates_records(loaded.meta):
            older.append(folder.name)
    if older:
        logger.warning("%s: %s (%s)", data_dir, _OLD_CACHE.format("their"), ", ".join(older))


def _splits_to_check(
    data_dir: Path,
    task_defs: Mapping[str, TaskDef],
    splits: Iterable[tuple[str, str]] | None,
    listed: Mapping[str, Any],
) -> list[tuple[str, str]]:
    if splits is not None:
        return list(dict.fromkeys(splits))
    return [
        (task, split)
        for task, task_def in task_defs.items()
        for split in task_def.split_names
        if f"{task}_{split}" in listed
        or os.path.lexists(split_dir(data_dir, task, split))
        or os.path.lexists(aside_path(split_dir(data_dir, task, split)))
    ]


def _manifest_entry(
    data_dir: Path, folder: Path, listed: Mapping[str, Any], key: str, has_manifest: bool
) -> Mapping[str, Any]:
    on_disk = (folder / "meta.json").is_file() or recover_interrupted_replace(folder)
    if key not in listed:
        if not on_disk:
            raise UserError(f"{folder}: no token-id cache for '{key}' (run prepro_std.py)")
        why = f"is not listed in {data_dir / MANIFEST}" if has_manifest else f"has no {MANIFEST} beside it"
        raise UserError(f"{folder}: {why}: the prepro_std.py run that wrote it did not finish; re-run it")
    if not on_disk:
        raise UserError(f"{folder}: listed in {data_dir / MANIFEST} but missing; re-run prepro_std.py")
    entry = listed[key]
    return entry if isinstance(entry, Mapping) else {}


def _check_entry(folder: Path, meta: Mapping[str, Any], entry: Mapping[str, Any], split: str) -> None:
    """The manifest entry and the folder's meta.json are written by the same run; a difference means a
    later run rewrote the folder but did not reach its manifest."""
    for key in ("split", "rows", "sequences", "source_sha256", "task_def"):
        if key in entry and key in meta and entry[key] != meta[key]:
            raise UserError(
                f"{folder}: key '{key}': differs from its {MANIFEST} entry: the prepro_std.py run that "
                "rewrote it did not finish; re-run prepro_std.py"
            )
    if meta.get("split", split) != split:
        raise UserError(f"{folder}: key 'split': holds split '{meta['split']}', not '{split}'")
