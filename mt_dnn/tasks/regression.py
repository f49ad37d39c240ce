"""Regression: one real-valued score per row (the head's single output)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from data_utils.enums import HeadType, TaskType
from data_utils.task_def import TaskDef
from module.heads import PooledHead
from mt_dnn.tasks.base import BatchScores, BatchShape, EncoderOutput, HeadOptions, HFExport, TaskKind
from mt_dnn.tasks.registry import register_task_kind


@register_task_kind
class Regression(TaskKind):
    task_type = TaskType.REGRESSION
    hf_export = HFExport("AutoModelForSequenceClassification", "regression", squeeze=True)

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
