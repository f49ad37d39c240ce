"""Per-task datasets over the token-id cache, a multi-task view, and the collator (dynamic padding).

A ``TaskDataset`` serves ``Row``s (numpy views into the cache, no copies). ``MultiTaskDataset`` is indexed by
``(task, row)`` pairs, which is what ``MultiTaskBatchSampler`` yields, so a ``DataLoader`` with
``batch_sampler=`` and ``collate_fn=Collator(...)`` works with worker processes. The collator pads every
sequence of a batch to the batch's longest, rounded up to a multiple of 8 (tensor-core friendly), with one
numpy fill per array.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from data_utils.cache import EncodedSplit
from data_utils.errors import UserError
from data_utils.task_def import TaskDef

__all__ = [
    "example_seeds",
    "Batch",
    "Collator",
    "MultiTaskDataset",
    "Row",
    "TaskDataset",
    "padded_length",
    "padding_fraction",
]

Sequences = tuple[tuple[np.ndarray, np.ndarray | None], ...]


@dataclass(frozen=True, eq=False)  # numpy fields: compare rows by their fields, not with ==
class Row:
    """One example: ``sequences`` holds one ``(input_ids, token_type_ids)`` pair, or one per candidate
    for ranking. ``label`` is a class / candidate index (int), a score (float), what the task's kind reads
    from the cache (``DataKind.row_label``), or ``None`` if unlabelled."""

    task: str
    uid: str
    label: Any
    sequences: Sequences
    # Kind-specific per-row arrays (``DataKind.row_extra``), e.g. per-token labels.
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)


class TaskDataset:
    """The rows of one task split, read from an ``EncodedSplit`` (memory-mapped arrays stay mapped)."""

    def __init__(self, task_def: TaskDef, split: EncodedSplit) -> None:
        self.task_def = task_def
        self.split = split
        cached_task = split.meta.get("task")
        if cached_task is not None and cached_task != task_def.name:
            raise UserError(f"task '{task_def.name}': the token-id cache given holds task '{cached_task}'")
        if not task_def.kind.multi_sequence and len(split):
            per_row = np.diff(split.row_offsets)
            if (per_row != 1).any():
                raise UserError(
                    f"task '{task_def.name}': key 'task_type': a {task_def.task_type} task needs one sequence"
                    f" per row, but the cache has rows with {int(per_row.max())}; run prepro_std.py again"
                )
        self._lengths: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.task_def.name

    def __len__(self) -> int:
        return len(self.split)

    @property
    def lengths(self) -> np.ndarray:
        """Per row, the longest of its sequences: the length a padded batch needs for that row."""
        if self._lengths is None:
            self._lengths = np.asarray(self.split.row_lengths, dtype=np.int64)
        return self._lengths

    def __getitem__(self, index: int) -> Row:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"task '{self.name}': row {index} out of range for {n} rows")
        kind = self.task_def.kind
        return Row(
            task=self.name,
            uid=str(self.split.uids[i]),
            label=kind.row_label(self.split, i) if self.split.has_labels else None,
            sequences=tuple(self.split.sequences(i)),
            extra=kind.row_extra(self.split, i),
        )

    def subset(self, indices: Sequence[int] | np.ndarray) -> TaskDataset:
        """The rows at ``indices``, in that order, as a dataset of their own (row ``i`` of the subset is row
        ``indices[i]`` here); the cache is shared, nothing is copied."""
        return _TaskSubset(self, indices)


class _TaskSubset(TaskDataset):
    def __init__(self, parent: TaskDataset, indices: Sequence[int] | np.ndarray) -> None:
        # No super().__init__: the parent has checked the split already.
        self.task_def = parent.task_def
        self.split = parent.split
        self._parent = parent
        self._indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(parent)
        if len(self._indices) and (self._indices.min() < 0 or self._indices.max() >= n):
            bad = self._indices[(self._indices < 0) | (self._indices >= n)][0]
            raise IndexError(f"task '{self.name}': row {int(bad)} out of range for {n} rows")
        self._lengths = parent.lengths[self._indices]

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> Row:
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"task '{self.name}': row {index} out of range for {n} rows")
        return self._parent[int(self._indices[i])]


class MultiTaskDataset:
    """Several ``TaskDataset``s behind one index: ``dataset[(task, row)]``."""

    def __init__(self, datasets: Mapping[str, TaskDataset]) -> None:
        for name, dataset in datasets.items():
            if dataset.name != name:
                raise ValueError(f"dataset registered as '{name}' holds task '{dataset.name}'")
        self.datasets: dict[str, TaskDataset] = dict(datasets)

    def __len__(self) -> int:
        return sum(len(dataset) for dataset in self.datasets.values())

    def __getitem__(self, key: tuple[str, int]) -> Row:
        task, index = key
        try:
            dataset = self.datasets[task]
        except KeyError:
            raise KeyError(f"no task '{task}' in this dataset (have: {', '.join(self.datasets)})") from None
        return dataset[index]

    @property
    def task_sizes(self) -> dict[str, int]:
        """``{task: number of rows}`` in insertion order (the sampler's ``task_sizes``)."""
        return {name: len(dataset) for name, dataset in self.datasets.items()}

    @property
    def lengths(self) -> dict[str, np.ndarray]:
        """``{task: per-row padded length}`` (the sampler's ``lengths``, for bucketing)."""
        return {name: dataset.lengths for name, dataset in self.datasets.items()}


@dataclass
class Batch:
    """A padded batch from one task.

    ``input_ids`` / ``attention_mask`` / ``token_type_ids`` are ``[B, L]``, or ``[B*K, L]`` for ranking with
    ``K`` candidate slots per row (row ``b``'s candidate ``k`` is sequence ``b*K + k``) and
    ``candidate_mask`` ``[B, K]`` marking the real candidates. ``labels`` is int64 (class / candidate index)
    or float32 (regression), or what the task's kind collates (``DataKind.collate_labels``); ``None`` when
    the split has no labels. ``extra``: the kind's own batch fields (``DataKind.collate_extra``).
    """

    task: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    labels: torch.Tensor | None
    uids: list[str]
    candidate_mask: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.uids)

    @property
    def n_candidates(self) -> int:
        """``K`` for a ranking batch, else 1."""
        return 1 if self.candidate_mask is None else int(self.candidate_mask.shape[1])

    def _map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = fn(value)
        if self.extra:
            changes["extra"] = {name: fn(tensor) for name, tensor in self.extra.items()}
        return replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)`` on custom batch types."""
        return self._map_tensors(lambda t: t.pin_memory())


def padded_length(longest: int, multiple: int | None = 8) -> int:
    """``longest`` rounded up to a multiple of ``multiple`` (unchanged when ``multiple`` is None or 1)."""
    if not multiple or multiple <= 1:
        return int(longest)
    return -(-int(longest) // multiple) * multiple


def padding_fraction(batches_of_lengths: Iterable[Sequence[int] | np.ndarray], multiple: int = 8) -> float:
    """Fraction of token slots that are padding when each batch is padded to its longest (rounded up)."""
    real = 0
    slots = 0
    for batch in batches_of_lengths:
        lengths = np.asarray(batch, dtype=np.int64)
        if lengths.size == 0:
            continue
        real += int(lengths.sum())
        slots += lengths.size * padded_length(int(lengths.max()), multiple)
    return 0.0 if slots == 0 else 1.0 - real / slots


class Collator:
    """Turns a list of ``Row``s from one task into a ``Batch``."""

    def __init__(
        self, task_defs: Mapping[str, TaskDef], pad_token_id: int, pad_to_multiple_of: int | None = 8
    ) -> None:
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1 or None, got {pad_to_multiple_of}")
        self.task_defs = dict(task_defs)
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: Sequence[Row]) -> Batch:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        task = rows[0].task
        others = sorted({row.task for row in rows} - {task})
        if others:
            raise ValueError(f"a batch must come from one task, got '{task}' and {', '.join(others)}")
        try:
            task_def = self.task_defs[task]
        except KeyError:
            raise ValueError(f"no task definition for '{task}'") from None
        kind = task_def.kind
        ranking = kind.multi_sequence

        n_cands = np.fromiter((len(row.sequences) for row in rows), dtype=np.int64, count=len(rows))
        if (n_cands == 0).any():
            raise ValueError(f"task '{task}': a row without sequences")
        if not ranking and (n_cands != 1).any():
            raise ValueError(f"task '{task}': a {task_def.task_type} row must have exactly one sequence")
        slots = int(n_cands.max()) if ranking else 1
        n_seqs = len(rows) * slots

        pairs = [pair for row in rows for pair in row.sequences]
        seq_lengths = np.zeros(n_seqs, dtype=np.int64)
        # Sequence slot of each real sequence: row b's candidate k sits at b*slots + k.
        slot_index = np.repeat(np.arange(len(rows)) * slots, n_cands) + _ranks_within(n_cands)
        seq_lengths[slot_index] = [len(ids) for ids, _ in pairs]
        width = padded_length(int(seq_lengths.max()), self.pad_to_multiple_of)
        mask = np.arange(width) < seq_lengths[:, None]

        input_ids = np.full((n_seqs, width), self.pad_token_id, dtype=np.int64)
        input_ids[mask] = np.concatenate([ids for ids, _ in pairs])
        attention_mask = mask.astype(np.int64)

        has_types = [types is not None for _, types in pairs]
        token_type_ids = None
        if any(has_types):
            if not all(has_types):
                raise ValueError(f"task '{task}': some sequences have token types and some do not")
            token_type_ids = np.zeros((n_seqs, width), dtype=np.int64)
            token_type_ids[mask] = np.concatenate([types for _, types in pairs])

        candidate_mask = None
        if ranking:
            candidate_mask = torch.from_numpy(np.arange(slots) < n_cands[:, None])

        return Batch(
            task=task,
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask),
            token_type_ids=None if token_type_ids is None else torch.from_numpy(token_type_ids),
            labels=self._labels(task, task_def, rows, n_cands, width),
            uids=[row.uid for row in rows],
            candidate_mask=candidate_mask,
            extra=kind.collate_extra(task_def, rows, width),
        )

    @staticmethod
    def _labels(
        task: str, task_def: TaskDef, rows: Sequence[Row], n_cands: np.ndarray, width: int
    ) -> torch.Tensor | None:
        missing = [row.label is None for row in rows]
        if all(missing):
            return None
        if any(missing):
            raise ValueError(f"task '{task}': a batch mixes labelled and unlabelled rows")
        return task_def.kind.collate_labels(task_def, rows, n_cands, width)


def _ranks_within(counts: np.ndarray) -> np.ndarray:
    """``[2, 3] -> [0, 1, 0, 1, 2]``: the position of each item inside its group."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - starts


def example_seeds(salt: str, batch: Batch) -> list[int]:
    """One 63-bit seed per input sequence from (salt, uid, candidate): ranking rows have one per candidate."""
    return [
        int.from_bytes(hashlib.blake2b(f"{salt}|{uid}|{k}".encode(), digest_size=8).digest(), "little") >> 1
        for uid in batch.uids
        for k in range(batch.n_candidates)
    ]
