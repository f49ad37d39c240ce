"""Ranking: K candidates per row, one score each; the gold label is the index of the right candidate.

Rows have different numbers of candidates: a batch pads them (``Batch.candidate_mask`` marks the real ones),
the loss and the divergence ignore the padding, and predictions hold ``-inf`` in its slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn

from data_utils.cache import EncodedSplit
from data_utils.dataset import Batch
from data_utils.enums import DataFormat, HeadType, LossName, TaskType
from data_utils.errors import RowError
from data_utils.kinds import ErrorFactory, LabelParser, as_index, single_output
from data_utils.metrics import Metric
from data_utils.task_def import TaskDef
from module.heads import RankingHead
from mt_dnn.tasks.base import (
    BatchScores,
    BatchShape,
    EncoderOutput,
    HeadOptions,
    HFExport,
    Predictions,
    TaskKind,
    assemble_rows,
)
from mt_dnn.tasks.registry import register_task_kind


@register_task_kind
class Ranking(TaskKind):
    """A row is one sequence per candidate; its label is the index of the right candidate."""

    name = TaskType.RANKING
    formats = (DataFormat.PREMISE_AND_MULTI_HYPOTHESIS,)
    default_metrics = (Metric.ACC, Metric.MRR)
    allowed_metrics = frozenset({Metric.ACC, Metric.MRR})
    losses = (LossName.RANK_CROSS_ENTROPY,)
    divergences = (LossName.SYM_KL, LossName.KL, LossName.JS, LossName.MSE)
    multi_sequence = True
    hf_export = HFExport("AutoModelForMultipleChoice", None, candidates=3)

    # ---------------------------------------------------------------- data side
    def n_class(self, given: object, labels: tuple[str, ...] | None, error: ErrorFactory) -> int:
        return single_output(given, labels, error, self.name, "one score per candidate")

    def label_parser(self, task_def: TaskDef) -> LabelParser:
        return _ranking_label

    def label_bounds(self, split: EncodedSplit, task_def: TaskDef) -> np.ndarray | int:
        return np.diff(split.row_offsets)

    def label_bounds_text(self, task_def: TaskDef) -> str:
        return "the row's candidates"

    def validate_scores(self, scores: np.ndarray) -> np.ndarray:
        if scores.ndim != 2 or scores.shape[1] == 0:
            raise ValueError(f"ranking scores must be shaped [N, C] with C >= 1, got {scores.shape}")
        if np.isposinf(scores).any():
            raise ValueError("ranking scores contain +inf (only -inf is allowed, as padding)")
        return scores

    def validate_labels(self, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
        labels = super().validate_labels(labels, scores)
        padded = np.isneginf(scores[np.arange(len(labels)), labels])
        if padded.any():
            row = int(np.flatnonzero(padded)[0])
            raise ValueError(f"ranking label of example {row} points at a -inf padding slot")
        return labels

    # ---------------------------------------------------------------- model side

    def build_head(self, task_def: TaskDef, options: HeadOptions) -> nn.Module:
        self.check_head_type(task_def, (HeadType.LINEAR,))
        if task_def.n_class != 1:
            raise ValueError(f"a ranking head has one output per sequence, got n_class={task_def.n_class}")
        return RankingHead(
            options.hidden_size, task_def.dropout_p, use_encoder_pooler=options.use_encoder_pooler
        )

    def run_head(self, head: nn.Module, encoded: EncoderOutput, batch_shape: BatchShape) -> Tensor:
        return head(
            encoded.hidden_states,
            encoded.attention_mask,
            encoded.token_type_ids,
            encoded.pooled,
            n_candidates=batch_shape.n_candidates,
        )

    def output_mask(self, batch: Batch) -> Tensor | None:
        return batch.candidate_mask

    def scores(self, output: Tensor, batch: Batch) -> Tensor:
        assert batch.candidate_mask is not None
        return output.masked_fill(~batch.candidate_mask, float("-inf"))

    def candidate_counts(self, host_batch: Batch) -> np.ndarray | None:
        assert host_batch.candidate_mask is not None
        return host_batch.candidate_mask.sum(dim=1).numpy().astype(np.int64)

    def assemble(self, task_def: TaskDef, outputs: Sequence[BatchScores], n_rows: int) -> Predictions:
        width = max((output.scores.shape[1] for output in outputs), default=0)
        scores = np.full((n_rows, width), -np.inf, dtype=np.float32)
        return assemble_rows(task_def, outputs, scores, count_candidates=True)

    def probabilities(self, predictions: Predictions) -> list[list[float]] | None:
        """Softmax over each row's real candidates."""
        probabilities = ranking_probabilities(predictions.scores)
        counts = predictions.n_candidates
        rows = []
        for i, row in enumerate(probabilities):
            real = row[: int(counts[i])] if counts is not None else row[np.isfinite(predictions.scores[i])]
            rows.append(real.tolist())
        return rows


def ranking_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax over each row's candidates; ``-inf`` (padding) slots get probability 0."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores.copy()
    top = scores.max(axis=1, keepdims=True)
    exp = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
    return exp / exp.sum(axis=1, keepdims=True)


def _ranking_label(value: object, hypothesis: object) -> int:
    n_candidates = len(hypothesis) if isinstance(hypothesis, tuple) else 0
    index = as_index(value)
    if index is None or not 0 <= index < n_candidates:
        raise RowError(
            "label", f"{value!r} is not a candidate index in [0, {n_candidates}) (the index of the right one)"
        )
    return index
