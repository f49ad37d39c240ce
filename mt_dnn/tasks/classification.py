"""Classification: one label out of ``n_class`` per row; the head's softmax is the prediction."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from data_utils.dataset import Batch
from data_utils.enums import DataFormat, HeadType, LossName, TaskType
from data_utils.metrics import Metric
from data_utils.task_def import TaskDef
from module.heads import PooledHead, SANClassifier
from mt_dnn.tasks.base import HeadOptions, HFExport, Predictions, TaskKind, as_float_list
from mt_dnn.tasks.registry import register_task_kind


@register_task_kind
class Classification(TaskKind):
    """Labels are class indices (``labels:`` names them); the data-side defaults of ``DataKind`` are this
    kind's, so only its sets are declared here."""

    name = TaskType.CLASSIFICATION
    formats = (DataFormat.PREMISE_ONLY, DataFormat.PREMISE_AND_ONE_HYPOTHESIS)
    default_metrics = (Metric.ACC,)
    allowed_metrics = frozenset(
        {Metric.ACC, Metric.F1, Metric.MCC, Metric.AUC, Metric.F1_MACRO, Metric.F1_MICRO}
    )
    losses = (LossName.CROSS_ENTROPY,)
    divergences = (LossName.SYM_KL, LossName.KL, LossName.JS, LossName.MSE)
    heads = (HeadType.LINEAR, HeadType.SAN)
    hf_export = HFExport("AutoModelForSequenceClassification", "single_label_classification")

    def build_head(self, task_def: TaskDef, options: HeadOptions) -> nn.Module:
        self.check_head_type(task_def, (HeadType.LINEAR, HeadType.SAN))
        if task_def.head is HeadType.SAN:
            return SANClassifier(options.hidden_size, task_def.n_class, task_def.dropout_p, options.san)
        return PooledHead(
            options.hidden_size,
            task_def.n_class,
            task_def.dropout_p,
            use_encoder_pooler=options.use_encoder_pooler,
        )

    def scores(self, output: Tensor, batch: Batch) -> Tensor:
        # A SAN head returns log-probabilities; their softmax is the same distribution.
        return torch.softmax(output, dim=-1)

    def label_value(self, task_def: TaskDef, value: Any) -> str | int | float:
        index = int(value)
        return index if task_def.labels is None else task_def.labels[index]

    def probabilities(self, predictions: Predictions) -> list[list[float]] | None:
        return as_float_list(predictions.scores)
