from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_utils.cache import EncodedSplit
from data_utils.dataset import (
    Batch,
    Collator,
    MultiTaskDataset,
    Row,
    TaskDataset,
    padded_length,
    padding_fraction,
)
from data_utils.errors import UserError
from data_utils.sampler import EvalBatchSampler, MultiTaskBatchSampler, ProportionalStrategy
from data_utils.task_def import parse_task_def

PAD = 0

CLS = parse_task_def("cls", {"task_type": "classification", "data_format": "premise_only", "n_class": 3})
REG = parse_task_def("reg", {"task_type": "regression", "data_format": "premise_and_one_hypothesis"})
RANK = parse_task_def("rank", {"task_type": "ranking", "data_format": "premise_and_multi_hypothesis"})
TASK_DEFS = {t.name: t for t in (CLS, REG, RANK)}


def make_split(
    rows: list[list[int]],
    labels: list[float] | list[int],
    *,
    with_types: bool = True,
    has_labels: bool = True,
    label_dtype: type = np.int64,
    task: str | None = None,
) -> EncodedSplit:
    """``rows[r]`` lists the lengths of row r's sequences; ids are 100 + a running count, types 0 then 1."""
    seq_lengths = [n for row in rows for n in row]
    seq_offsets = np.concatenate([[0], np.cumsum(seq_lengths)]).astype(np.int64)
    row_offsets = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int64)
    input_ids = (100 + np.arange(int(seq_offsets[-1]))).astype(np.int32)
    types = None
    if with_types:
        types = np.concatenate([(np.arange(n) >= n // 2).astype(np.int8) for n in seq_lengths])
        types = types.astype(np.int8)
    meta = {"has_labels": has_labels}
    if task is not None:
        meta["task"] = task
    return EncodedSplit(
        input_ids=input_ids,
        seq_offsets=seq_offsets,
        row_offsets=row_offsets,
        labels=np.asarray(labels, dtype=label_dtype),
        uids=np.array([f"u{i}" for i in range(len(rows))]),
        token_type_ids=types,
        meta=meta,
    )


def collate(rows: list[Row], multiple: int | None = 8) -> Batch:
    return Collator(TASK_DEFS, pad_token_id=PAD, pad_to_multiple_of=multiple)(rows)


def test_task_dataset_rows_are_views_with_labels_and_lengths() -> None:
    data = TaskDataset(CLS, make_split([[5], [9], [3]], [0, 2, 1]))
    assert len(data) == 3
    row = data[1]
    assert data[-2].uid == row.uid
    assert (row.task, row.uid, row.label) == ("cls", "u1", 2)
    ids, types = row.sequences[0]
    np.testing.assert_array_equal(ids, 100 + np.arange(5, 14))
    np.testing.assert_array_equal(types, [0, 0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(data.lengths, [5, 9, 3])
    with pytest.raises(IndexError):
        data[3]


def test_subset_serves_the_chosen_rows_in_the_given_order() -> None:
    data = TaskDataset(CLS, make_split([[5], [9], [3], [7]], [0, 2, 1, 0]))
    subset = data.subset([3, 1])
    assert len(subset) == 2 and subset.task_def is CLS
    assert [subset[i].uid for i in range(2)] == ["u3", "u1"] and subset[-1].uid == "u1"
    assert [subset[i].label for i in range(2)] == [0, 2]
    np.testing.assert_array_equal(subset[0].sequences[0][0], data[3].sequences[0][0])
    np.testing.assert_array_equal(subset.lengths, [7, 9])
    with pytest.raises(IndexError):
        subset[2]
    with pytest.raises(IndexError, match="row 4 out of range"):
        data.subset([0, 4])
    assert len(data.subset([])) == 0


def test_task_dataset_rejects_mismatched_cache() -> None:
    with pytest.raises(UserError, match="one sequence per row"):
        TaskDataset(CLS, make_split([[5, 4]], [0]))
    with pytest.raises(UserError, match="holds task 'other'"):
        TaskDataset(CLS, make_split([[5]], [0], task="other"))


def test_collate_pads_to_multiple_of_8_with_mask_and_types() -> None:
    data = TaskDataset(CLS, make_split([[5], [9], [8]], [0, 2, 1]))
    batch = collate([data[0], data[1]])
    assert batch.task == "cls"
    assert batch.input_ids.shape == (2, 16)
    assert batch.input_ids.dtype == torch.int64
    expected_ids = np.zeros((2, 16), dtype=np.int64)
    expected_ids[0, :5] = 100 + np.arange(5)
    expected_ids[1, :9] = 105 + np.arange(9)
    np.testing.assert_array_equal(batch.input_ids.numpy(), expected_ids)
    np.testing.assert_array_equal(batch.attention_mask.sum(1).numpy(), [5, 9])
    np.testing.assert_array_equal(batch.attention_mask.numpy(), (expected_ids != 0).astype(np.int64))
    expected_types = np.zeros((2, 16), dtype=np.int64)
    expected_types[0, 2:5] = 1
    expected_types[1, 4:9] = 1
    np.testing.assert_array_equal(batch.token_type_ids.numpy(), expected_types)
    assert batch.labels.dtype == torch.int64
    assert batch.labels.tolist() == [0, 2]
    assert batch.uids == ["u0", "u1"]
    assert batch.candidate_mask is None

    assert collate([data[2]]).input_ids.shape == (1, 8)  # exactly 8 stays 8
    assert collate([data[0], data[1]], multiple=None).input_ids.shape == (2, 9)


def test_collate_without_token_types_and_custom_pad() -> None:
    data = TaskDataset(CLS, make_split([[2], [3]], [0, 1], with_types=False))
    batch = Collator(TASK_DEFS, pad_token_id=7)([data[0], data[1]])
    assert batch.token_type_ids is None
    assert batch.input_ids[0].tolist() == [100, 101] + [7] * 6


def test_collate_ranking_pads_candidates() -> None:
    data = TaskDataset(RANK, make_split([[3, 4], [2, 5, 9]], [1, 2]))
    batch = collate([data[0], data[1]])
    assert batch.input_ids.shape == (2 * 3, 16)
    assert batch.n_candidates == 3
    np.testing.assert_array_equal(batch.candidate_mask.numpy(), [[True, True, False], [True, True, True]])
    np.testing.assert_array_equal(batch.attention_mask.sum(1).numpy(), [3, 4, 0, 2, 5, 9])
    assert (batch.input_ids[2] == PAD).all() and (batch.token_type_ids[2] == 0).all()
    # row 1's second candidate is the 4th sequence of the split: tokens 100+3+4+2 ...
    assert batch.input_ids[4, :5].tolist() == list(range(109, 114))
    assert batch.labels.tolist() == [1, 2]


def test_collate_regression_labels_are_float() -> None:
    data = TaskDataset(REG, make_split([[4], [6]], [0.5, 3.25], label_dtype=np.float32))
    batch = collate([data[0], data[1]])
    assert batch.labels.dtype == torch.float32
    assert batch.labels.tolist() == [0.5, 3.25]


def test_collate_unlabelled_gives_none() -> None:
    data = TaskDataset(CLS, make_split([[4], [6]], [-1, -1], has_labels=False))
    assert data[0].label is None
    assert collate([data[0], data[1]]).labels is None
    reg = TaskDataset(REG, make_split([[4]], [np.nan], label_dtype=np.float32))
    assert reg[0].label is None


def test_collate_errors() -> None:
    cls = TaskDataset(CLS, make_split([[4], [6]], [0, 1]))
    reg = TaskDataset(REG, make_split([[4]], [0.5], label_dtype=np.float32))
    with pytest.raises(ValueError, match="one task"):
        collate([cls[0], reg[0]])
    bad = TaskDataset(CLS, make_split([[4]], [3]))
    with pytest.raises(ValueError, match="out of range"):
        collate([bad[0]])
    unlabelled = TaskDataset(CLS, make_split([[4]], [-1]))
    with pytest.raises(ValueError, match="mixes labelled and unlabelled"):
        collate([cls[0], unlabelled[0]])


def test_batch_to_and_pin_memory_keep_fields() -> None:
    data = TaskDataset(RANK, make_split([[3, 4]], [0]))
    batch = collate([data[0]])
    moved = batch.to("cpu")
    assert moved.task == "rank" and moved.uids == ["u0"]
    assert torch.equal(moved.candidate_mask, batch.candidate_mask)


def test_padding_fraction_hand_computed() -> None:
    # [5, 9] -> 2 x 16 slots, 14 real; [8] -> 8 slots, 8 real: 1 - 22/40
    assert padding_fraction([[5, 9], [8]]) == pytest.approx(1 - 22 / 40)
    assert padding_fraction([[4, 4]], multiple=1) == 0.0
    assert padding_fraction([]) == 0.0
    assert [padded_length(n) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]


def _multi() -> MultiTaskDataset:
    rng = np.random.default_rng(0)
    cls_lengths = rng.integers(2, 30, size=23)
    rank_rows = [list(rng.integers(2, 20, size=int(k))) for k in rng.integers(2, 5, size=11)]
    return MultiTaskDataset(
        {
            "cls": TaskDataset(CLS, make_split([[int(n)] for n in cls_lengths], rng.integers(0, 3, 23))),
            "rank": TaskDataset(RANK, make_split([[int(n) for n in r] for r in rank_rows], [0] * 11)),
        }
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_over_multitask_dataset(num_workers: int) -> None:
    multi = _multi()
    assert multi.task_sizes == {"cls": 23, "rank": 11}
    assert len(multi) == 34
    sampler = MultiTaskBatchSampler(multi.task_sizes, 4, ProportionalStrategy(), seed=3)
    sampler.set_epoch(1)
    loader = DataLoader(
        multi, batch_sampler=sampler, collate_fn=Collator(TASK_DEFS, PAD), num_workers=num_workers
    )
    expected = list(sampler)
    seen = []
    for batch, rows in zip(loader, expected, strict=True):
        assert isinstance(batch, Batch)
        assert batch.task == rows[0][0]
        assert batch.input_ids.shape[1] % 8 == 0
        assert batch.uids == [f"u{i}" for _, i in rows]
        seen.extend((batch.task, uid) for uid in batch.uids)
    assert sorted(seen) == sorted(
        [("cls", f"u{i}") for i in range(23)] + [("rank", f"u{i}") for i in range(11)]
    )


def test_eval_loader_restores_input_order() -> None:
    data = TaskDataset(CLS, make_split([[n] for n in (3, 12, 7, 12, 1)], [0, 1, 2, 0, 1]))
    sampler = EvalBatchSampler(len(data), 2, lengths=data.lengths)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=Collator(TASK_DEFS, PAD))
    uids = [uid for batch in loader for uid in batch.uids]
    assert uids == ["u1", "u3", "u2", "u0", "u4"]  # longest first, stable on ties
    restored = np.empty(len(data), dtype=object)
    restored[sampler.indices] = uids
    assert restored.tolist() == [f"u{i}" for i in range(5)]
