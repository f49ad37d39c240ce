"""Regression: one real-valued score per row (the head's single output)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from data_utils.cache import EncodedSplit
from data_utils.dataset import Row
from data_utils.enums import DataFormat, HeadType, LossName, TaskType
from data_utils.errors import RowError
from data_utils.kinds import ErrorFactory, LabelParser, single_output
from data_utils.metrics import Metric
from data_utils.task_def import TaskDef
from module.heads import PooledHead
from mt_dnn.tasks.base import BatchScores, BatchShape, EncoderOutput, HeadOptions, HFExport, TaskKind
from mt_dnn.tasks.registry import register_task_kind


@register_task_kind
class Regression(TaskKind):
    """Labels are finite floats (cached as float32, NaN when unlabelled)."""

    name = TaskType.REGRESSION
    formats = (DataFormat.PREMISE_ONLY, DataFormat.PREMISE_AND_ONE_HYPOTHESIS)
    default_metrics = (Metric.PEARSON, Metric.SPEARMAN)
    allowed_metrics = frozenset({Metric.PEARSON, Metric.SPEARMAN})
    losses = (LossName.MSE,)
    divergences = (LossName.MSE,)
    hf_export = HFExport("AutoModelForSequenceClassification", "regression", squeeze=True)

    # ---------------------------------------------------------------- data side
    def n_class(self, given: object, labels: tuple[str, ...] | None, error: ErrorFactory) -> int:
        return single_output(given, labels, error, self.name, "one output")

    def label_parser(self, task_def: TaskDef) -> LabelParser:
        return _regression_label

    def label_array(self, labels: list[Any], has_labels: bool) -> np.ndarray:
        values = labels if has_labels else [float("nan")] * len(labels)
        return np.array(values, dtype=np.float32).reshape(len(labels))

    def cached_label_problem(self, split: EncodedSplit, task_def: TaskDef) -> tuple[str, str] | None:
        finite = np.isfinite(split.labels)
        if not finite.all():
            return "labels", f"row {int(np.flatnonzero(~finite)[0])} has no finite score"
        return None

    def row_label(self, split: EncodedSplit, index: int) -> Any:
        score = float(split.labels[index])
        return None if np.isnan(score) else score

    def collate_labels(
        self, task_def: TaskDef, rows: Sequence[Row], n_sequences: np.ndarray, width: int
    ) -> Tensor:
        return torch.from_numpy(np.array([row.label for row in rows], dtype=np.float32))

    def validate_scores(self, scores: np.ndarray) -> np.ndarray:
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.ndim != 1:
            raise ValueError(f"regression scores must be shaped [N] or [N, 1], got {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("regression scores contain inf")
        return scores

    def validate_labels(self, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
        labels = labels.astype(np.float64)
        if not np.isfinite(labels).all():
            raise ValueError("regression labels contain NaN or inf")
        return labels

    def predicted(self, scores: np.ndarray) -> np.ndarray:
        return scores

    # ---------------------------------------------------------------- model side

    def build_head(self, task_def: TaskDef, options: HeadOptions) -> nn.Module:
        self.check_head_type(task_def, (HeadType.LINEAR,))
        if task_def.n_class != 1:
            raise ValueError(f"a regression head has one output per sequence, got n_class={task_def.n_class}")
        return PooledHead(
            options.hidden_size, 1, task_def.dropout_p, use_encoder_pooler=options.use_encoder_pooler
        )

    def run_head(self, head: nn.Module, encoded: EncoderOutput, batch_shape: BatchShape) -> Tensor:
        return super().run_head(head, encoded, batch_shape).squeeze(-1)

    def score_buffer(self, task_def: TaskDef, outputs: Sequence[BatchScores], n_rows: int) -> np.ndarray:
        return np.zeros(n_rows, dtype=np.float32)

    def label_value(self, task_def: TaskDef, value: Any) -> str | int | float:
        return float(value)

    def export_label_names(self, task_def: TaskDef) -> list[str]:
        return [task_def.name]


def _regression_label(value: object, hypothesis: object) -> float:
    if type(value) in (int, float):
        number = float(value)  # type: ignore[arg-type]
    elif type(value) is str:
        try:
            number = float(value)
        except ValueError:
            raise RowError("label", f"{value!r} is not a number (regression task)") from None
    else:
        raise RowError("label", f"{value!r} is not a number (regression task)")
    if not math.isfinite(number):
        raise RowError("label", f"{value!r} is not a finite number (regression task)")
    return number
