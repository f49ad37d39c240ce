"""What every task kind provides, and the types its hooks exchange with the model, objective and inference.

A ``TaskKind`` is the behaviour of one task type, stateless and shared by every task of that type: the head
it builds, how a batch becomes the model's inputs (mask_lm masks it), how the head's output is read (by the
loss, the divergence, inference), and what a prediction file says about a row. The model, the objective,
inference, robustness and predict ask the task's kind (``mt_dnn.tasks.task_kind``) and never switch on the
type themselves. Its data side (YAML keys and their validation, labels, cache arrays, batch fields, metrics)
is the ``data_utils.kinds.DataKind`` part of the same class.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from data_utils.cache import EncodedSplit
from data_utils.dataset import Batch
from data_utils.enums import HeadType
from data_utils.kinds import DataKind
from data_utils.masking import MaskingSpec
from data_utils.metrics import MetricContext, predictions_from_scores
from data_utils.task_def import TaskDef
from module.encoders import EncoderLayout
from module.heads import SANConfig

__all__ = [
    "HFExport",
    "BatchScores",
    "BatchShape",
    "Forward",
    "EncoderOutput",
    "HeadOptions",
    "ModelInputs",
    "Predictions",
    "TaskKind",
    "as_float_list",
    "assemble_rows",
    "assemble_token_rows",
]

Forward = Callable[..., Tensor]
"""``forward(batch, **head_inputs) -> the head's output``: the model (or its wrapper) on one batch."""


@dataclass(frozen=True)
class HeadOptions:
    """What a kind needs to build a head besides the task definition."""

    hidden_size: int
    vocab_size: int
    use_encoder_pooler: bool = False
    san: SANConfig = field(default_factory=SANConfig)


@dataclass(frozen=True)
class EncoderOutput:
    """The encoder's output for one batch, as a head reads it."""

    hidden_states: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor | None
    pooled: Tensor | None
    # The word-embedding matrix [V, H] (mask_lm's tied decoder).
    word_embeddings: Tensor


@dataclass(frozen=True)
class ModelInputs:
    """A batch ready for the model: ``batch`` as the encoder sees it, keyword inputs of the head
    (``positions=`` for mask_lm) and the loss's ``targets`` when they are not the batch's labels."""

    batch: Batch
    head_inputs: Mapping[str, Tensor] = field(default_factory=dict)
    targets: Tensor | None = None

    @property
    def labels(self) -> Tensor | None:
        return self.batch.labels if self.targets is None else self.targets


@dataclass(eq=False)  # numpy fields: compare their arrays, not the objects
class Predictions:
    """One task split's model scores in input order (``mt_dnn.inference`` says their shape per type).

    ``labels``: gold class / candidate indices (int64) or scores (float32), ``None`` when unlabelled.
    ``n_candidates``: the real candidates of each ranking row (int64 ``[N]``); ``None`` for other tasks.
    ``n_masked``: the tokens of each row for per-token kinds (int64 ``[N]``): mask_lm's masked tokens,
    sequence labeling's words; ``scores`` and ``labels`` hold them row by row. ``None`` for other tasks.
    """

    task: str
    uids: list[str]
    scores: np.ndarray
    labels: np.ndarray | None
    n_candidates: np.ndarray | None = None
    n_masked: np.ndarray | None = None
    # The cache split the rows were read from (``inference.predict`` sets it): for kinds whose records and
    # metrics need more of a row than its scores (span: each window's context characters and texts).
    source: EncodedSplit | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.uids)


@dataclass(eq=False)
class BatchScores:
    """One batch's results on the host: original row indices and what the model said about those rows."""

    indices: np.ndarray
    uids: list[str]
    scores: np.ndarray
    labels: np.ndarray | None
    n_candidates: np.ndarray | None = None
    n_masked: np.ndarray | None = None


@dataclass(frozen=True)
class HFExport:
    """How a kind's linear head maps onto a transformers model class (``mt_dnn.export``)."""

    auto_class: str  # the transformers Auto class, e.g. "AutoModelForSequenceClassification"
    problem_type: str | None  # transformers' ``config.problem_type``; None: the class takes no labels config
    candidates: int = 1  # candidates per row of the check batch; > 1: the class reads [B, K, L] inputs
    squeeze: bool = False  # its logits are [B, 1] where ours are [B]


class TaskKind(DataKind, ABC):
    """The behaviour of one task type, data side (``data_utils.kinds.DataKind``: YAML keys, labels, cache,
    batches, metrics) and model side (below). Subclasses are registered once (``mt_dnn.tasks.registry``)."""

    # The tokenizer's masking spec is needed to prepare its batches (mask_lm).
    needs_masking: ClassVar[bool] = False
    # Robustness evaluation can perturb its inputs (a perturbed masked-LM score is not defined here).
    accepts_perturbation: ClassVar[bool] = True
    # Its predictions fit GLUE's one-value-per-row submission file.
    writes_submission: ClassVar[bool] = True
    # Continued pre-training rather than a task: adversarial methods take their pre-training defaults
    # (ALUM's alpha of 10) unless the flags or the YAML set them.
    pretraining: ClassVar[bool] = False
    # Its linear head as a transformers model class; None: not exportable (``export_refusal`` says why).
    hf_export: ClassVar[HFExport | None] = None
    export_refusal: ClassVar[str | None] = None

    # ---------------------------------------------------------------- model
    @abstractmethod
    def build_head(self, task_def: TaskDef, options: HeadOptions) -> nn.Module:
        """A fresh head for ``task_def`` (``ValueError`` for a head type the kind does not serve)."""

    def init_head(  # noqa: B027 - optional hook, a no-op by default
        self, head: nn.Module, encoder_folder: Path, task: str, layout: EncoderLayout
    ) -> None:
        """Start ``head`` from pretrained weights in the encoder's folder (``layout``: where the encoder type
        keeps its parts), when the kind has such weights."""

    def run_head(self, head: nn.Module, encoded: EncoderOutput, batch_shape: BatchShape) -> Tensor:
        """The head's output for the task (the model's forward returns it)."""
        return head(encoded.hidden_states, encoded.attention_mask, encoded.token_type_ids, encoded.pooled)

    # ---------------------------------------------------------------- training
    def model_inputs(
        self, task_def: TaskDef, batch: Batch, masking: MaskingSpec | None, salt: str | None
    ) -> ModelInputs:
        """The batch as the model sees it (``salt`` None: evaluation's fixed preparation)."""
        return ModelInputs(batch)

    def output_mask(self, batch: Batch) -> Tensor | None:
        """Which output entries are real (ranking: the real candidates); ``None``: all of them."""
        return None

    # ---------------------------------------------------------------- inference
    def scores(self, output: Tensor, batch: Batch) -> Tensor:
        """The head's float32 output turned into the scores predictions hold (classification: softmax)."""
        return output

    def predict_batch(
        self,
        task_def: TaskDef,
        forward: Forward,
        batch: Batch,
        host_batch: Batch,
        masking: MaskingSpec | None,
        autocast: contextlib.AbstractContextManager[object],
        perturbed: contextlib.AbstractContextManager[object],
    ) -> BatchScores:
        """Score one batch: ``batch`` is on the model's device, ``host_batch`` the same on the host (labels
        and counts are read there, so the scores are the batch's one host transfer). The caller fills in
        ``indices``."""
        inputs = self.model_inputs(task_def, batch, masking, None)
        with autocast, perturbed:
            output = forward(inputs.batch, **inputs.head_inputs)
        scores = self.scores(output.float(), batch)
        return BatchScores(
            indices=np.zeros(0, dtype=np.int64),
            uids=list(batch.uids),
            scores=scores.cpu().numpy(),  # the batch's one host transfer
            labels=None if host_batch.labels is None else host_batch.labels.numpy(),
            n_candidates=self.candidate_counts(host_batch),
        )

    def candidate_counts(self, host_batch: Batch) -> np.ndarray | None:
        """Per row, its real candidates (ranking); ``None`` for kinds without candidates."""
        return None

    def assemble(self, task_def: TaskDef, outputs: Sequence[BatchScores], n_rows: int) -> Predictions:
        """Put per-batch results back in input order (every row covered exactly once)."""
        return assemble_rows(task_def, outputs, self.score_buffer(task_def, outputs, n_rows))

    def score_buffer(self, task_def: TaskDef, outputs: Sequence[BatchScores], n_rows: int) -> np.ndarray:
        """The split's score array before the batches are scattered into it."""
        return np.zeros((n_rows, task_def.n_class), dtype=np.float32)

    def metric_context(self, task_def: TaskDef, predictions: Predictions) -> MetricContext:
        """What the task's context-using metrics read besides scores and labels (``inference.evaluate``)."""
        return MetricContext(label_names=task_def.labels, row_lengths=predictions.n_masked)

    def label_value(self, task_def: TaskDef, value: Any) -> str | int | float:
        """A predicted or gold value as a prediction file shows it (class index -> label name if named)."""
        return int(value)

    def records(self, task_def: TaskDef, predictions: Predictions) -> list[dict[str, Any]]:
        """One JSON-able dict per row, in input order (``mt_dnn.inference.prediction_records``)."""
        predicted = predictions_from_scores(task_def.kind, predictions.scores)
        probabilities = self.probabilities(predictions)
        records: list[dict[str, Any]] = []
        for i, uid in enumerate(predictions.uids):
            record: dict[str, Any] = {"uid": uid, "prediction": self.label_value(task_def, predicted[i])}
            if probabilities is not None:
                record["probabilities"] = probabilities[i]
            if predictions.labels is not None:
                record["label"] = self.label_value(task_def, predictions.labels[i])
            records.append(record)
        return records

    def probabilities(self, predictions: Predictions) -> list[list[float]] | None:
        """Per row, the probabilities a prediction file lists; ``None`` when the kind has none."""
        return None

    # ---------------------------------------------------------------- export
    def export_label_names(self, task_def: TaskDef) -> list[str]:
        """The exported config's ``id2label`` names, one per output."""
        if task_def.labels is not None:
            return list(task_def.labels)
        return [f"LABEL_{i}" for i in range(task_def.n_class)]

    # ---------------------------------------------------------------- helpers for subclasses
    @staticmethod
    def check_head_type(task_def: TaskDef, allowed: tuple[HeadType, ...]) -> None:
        if task_def.head not in allowed:
            raise ValueError(
                f"no {task_def.head} head for {task_def.task_type} tasks"
                " (the SAN head serves classification only)"
            )


@dataclass(frozen=True)
class BatchShape:
    """What a head needs to know about the batch besides the encoder's output."""

    n_candidates: int = 1
    head_inputs: Mapping[str, Tensor] = field(default_factory=dict)


def assemble_rows(
    task_def: TaskDef, outputs: Sequence[BatchScores], scores: np.ndarray, *, count_candidates: bool = False
) -> Predictions:
    """Scatter one-row-per-score batch results into ``scores`` (pre-filled) in input order;
    ``count_candidates``: also gather each row's real candidates (ranking)."""
    n_rows = len(scores)
    uids: list[str | None] = [None] * n_rows
    labelled = [output.labels is not None for output in outputs]
    if any(labelled) and not all(labelled):
        raise ValueError(f"task '{task_def.name}': some batches have labels and some do not")
    labels: np.ndarray | None = None
    if outputs and all(labelled):
        labels = np.zeros(n_rows, dtype=outputs[0].labels.dtype)  # type: ignore[union-attr]
    n_candidates = np.zeros(n_rows, dtype=np.int64) if count_candidates else None
    seen = np.zeros(n_rows, dtype=bool)
    for output in outputs:
        rows = output.indices
        if seen[rows].any():
            raise ValueError(f"task '{task_def.name}': row {int(rows[seen[rows]][0])} was predicted twice")
        seen[rows] = True
        if scores.ndim == 2:
            scores[rows, : output.scores.shape[1]] = output.scores
        else:
            scores[rows] = output.scores
        for row, uid in zip(rows.tolist(), output.uids, strict=True):
            uids[row] = uid
        if labels is not None:
            labels[rows] = output.labels
        if n_candidates is not None and output.n_candidates is not None:
            n_candidates[rows] = output.n_candidates
    if not seen.all():
        raise ValueError(f"task '{task_def.name}': row {int(np.flatnonzero(~seen)[0])} was never predicted")
    return Predictions(
        task=task_def.name,
        uids=[str(uid) for uid in uids],
        scores=scores,
        labels=labels,
        n_candidates=n_candidates,
    )


def assemble_token_rows(
    task_def: TaskDef, outputs: Sequence[BatchScores], n_rows: int, *, width: int
) -> Predictions:
    """Scatter per-token batch results (``n_masked``: each row's tokens; ``scores`` ``[tokens, width]``) back
    in input order, a row's tokens kept together (mask_lm's masked tokens, sequence labeling's words)."""
    uids: list[str | None] = [None] * n_rows
    counts = np.full(n_rows, -1, dtype=np.int64)
    pieces: list[tuple[np.ndarray, np.ndarray | None] | None] = [None] * n_rows
    labelled = [output.labels is not None for output in outputs]
    if any(labelled) and not all(labelled):
        raise ValueError(f"task '{task_def.name}': some batches have labels and some do not")
    for output in outputs:
        assert output.n_masked is not None
        starts = np.concatenate([[0], np.cumsum(output.n_masked)])
        for j, row in enumerate(output.indices.tolist()):
            if counts[row] >= 0:
                raise ValueError(f"task '{task_def.name}': row {row} was predicted twice")
            counts[row] = output.n_masked[j]
            uids[row] = output.uids[j]
            span = slice(int(starts[j]), int(starts[j + 1]))
            pieces[row] = (output.scores[span], None if output.labels is None else output.labels[span])
    if (counts < 0).any():
        missing = int(np.flatnonzero(counts < 0)[0])
        raise ValueError(f"task '{task_def.name}': row {missing} was never predicted")
    parts = [piece for piece in pieces if piece is not None]
    scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, width), np.float32)
    labels: np.ndarray | None = None
    if not outputs or all(labelled):
        gold = [p[1] for p in parts if p[1] is not None]
        labels = np.concatenate(gold) if gold else np.zeros(0, np.int64)
    return Predictions(
        task=task_def.name,
        uids=[str(uid) for uid in uids],
        scores=scores.reshape(-1, width).astype(np.float32),
        labels=labels,
        n_masked=counts,
    )


def as_float_list(rows: np.ndarray) -> list[list[float]]:
    return [row.tolist() for row in np.asarray(rows, dtype=np.float64)]
