"""The token-id cache: one folder of flat numpy arrays per task split, memory-mapped on load.

Layout of ``<cache_dir>/<task>_<split>/``::

    input_ids.npy       int32   [n_tokens]      every encoded sequence, concatenated
    token_type_ids.npy  int8    [n_tokens]      segment ids (absent when the tokenizer has none)
    seq_offsets.npy     int64   [n_seqs + 1]    sequence s is input_ids[seq_offsets[s]:seq_offsets[s+1]]
    row_offsets.npy     int64   [n_rows + 1]    row r owns sequences row_offsets[r]:row_offsets[r+1]
                                                (one per row; one per candidate for ranking)
    labels.npy          int64 | float32 [n_rows]  class / candidate index, or a score; -1 / nan if unlabelled
    uids.npy            <U..    [n_rows]
    meta.json           task, split, counts, truncation, tokenizer fingerprint

A million rows load in milliseconds: nothing is parsed, arrays are mapped. ``<cache_dir>/manifest.json``
summarises every split written there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_utils.atomic import atomic_directory, atomic_write_json
from data_utils.errors import UserError

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

    def __post_init__(self) -> None:
        n_rows = len(self.row_offsets) - 1
        if len(self.labels) != n_rows or len(self.uids) != n_rows:
            raise ValueError(f"{n_rows} rows but {len(self.labels)} labels and {len(self.uids)} uids")
        if self.row_offsets[-1] != len(self.seq_offsets) - 1:
            raise ValueError("row_offsets does not cover every sequence")
        if self.seq_offsets[-1] != len(self.input_ids):
            raise ValueError("seq_offsets does not cover every token")
        if self.token_type_ids is not None and len(self.token_type_ids) != len(self.input_ids):
            raise ValueError("token_type_ids and input_ids differ in length")

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


def split_dir(cache_dir: str | Path, task: str, split: str) -> Path:
    return Path(cache_dir) / f"{task}_{split}"


def write_split(path: str | Path, data: EncodedSplit) -> None:
    """Write ``data`` to the folder ``path`` atomically: a temp folder beside it, then a rename."""
    with atomic_directory(path) as tmp:
        arrays: dict[str, np.ndarray] = {name: getattr(data, name) for name in _ARRAYS}
        if data.token_type_ids is not None:
            arrays["token_type_ids"] = data.token_type_ids
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        atomic_write_json(tmp / "meta.json", dict(data.meta))


def load_split(path: str | Path, *, mmap: bool = True) -> EncodedSplit:
    """Load a split folder written by ``write_split``; arrays are memory-mapped unless ``mmap=False``."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise UserError(f"{path}: no token-id cache here (run prepro_std.py first)")
    mode = "r" if mmap else None
    try:
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode=mode, allow_pickle=False) for name in _ARRAYS}
        types_file = path / "token_type_ids.npy"
        types = np.load(types_file, mmap_mode=mode, allow_pickle=False) if types_file.is_file() else None
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: damaged token-id cache ({error}); run prepro_std.py again") from None
    return EncodedSplit(**arrays, token_type_ids=types, meta=meta)


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"{path}: damaged manifest ({error})") from None


def write_manifest(cache_dir: str | Path, manifest: Mapping[str, Any]) -> None:
    """Atomically replace ``<cache_dir>/manifest.json``."""
    atomic_write_json(Path(cache_dir) / MANIFEST, dict(manifest))
