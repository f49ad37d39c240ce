"""Prediction and evaluation of one task split, and the files they are written to.

``predict`` runs the model over a ``TaskDataset`` in length-sorted batches (longest first, so a batch pads
little) and puts the scores back in input order. Scores, by task type:

- classification: ``[N, C]`` probabilities, the softmax of the head's output (a SAN head already returns
  log-probabilities; their softmax is the same distribution);
- regression: ``[N]`` scores;
- ranking: ``[N, K]`` candidate scores (``K`` the most candidates of any row), ``-inf`` in the padding slots
  of rows with fewer candidates;
- mask_lm: ``[M, 2]`` for the ``M`` masked tokens of the split, row by row in input order (``n_masked`` per
  row): the predicted token id and the log-probability of the gold token (``data_utils.metrics``); the
  labels are the gold token ids. Rows are masked as in training but with a fixed salt, so the same split
  always gets the same masks and dev metrics are deterministic.

With ``world_size > 1`` every rank predicts its share of the batches (``EvalBatchSampler``) and the shares
are exchanged with ``torch.distributed.all_gather_object``, so every rank returns the whole split.

``perturbation`` scores the model under attack: for each batch it returns a tensor that is added to the output
of the model's ``perturbation_target()`` (the word embeddings) for the scoring forward
(``mt_dnn.robustness`` builds one from PGD). Such a run uses ``torch.no_grad`` instead of inference mode,
so that the perturbation can take gradients under ``torch.enable_grad``; the perturbation runs outside
``autocast_dtype``'s autocast (only the scoring forward is under it).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from data_utils.atomic import atomic_write_text
from data_utils.dataset import Batch, Collator, TaskDataset
from data_utils.enums import TaskType
from data_utils.masking import MaskingSpec
from data_utils.metrics import Metric, compute_metrics, predictions_from_scores
from data_utils.sampler import EvalBatchSampler
from data_utils.task_def import TaskDef
from module.adversarial.hooks import add_to_output
from mt_dnn.model import forward_batch
from mt_dnn.objective import MASK_SALT, mask_batch

__all__ = [
    "BatchPerturbation",
    "EvalResult",
    "Predictions",
    "evaluate",
    "predict",
    "prediction_records",
    "ranking_probabilities",
    "write_glue_submission",
    "write_predictions_jsonl",
]


BatchPerturbation = Callable[[Batch], Tensor]
"""(a batch on the model's device) -> what to add to the output of the model's ``perturbation_target()``."""


@dataclass(eq=False)  # numpy fields: compare their arrays, not the objects
class Predictions:
    """One task split's model scores in input order (see the module docstring for their shapes).

    ``labels``: gold class / candidate indices (int64) or scores (float32), ``None`` when unlabelled.
    ``n_candidates``: the real candidates of each ranking row (int64 ``[N]``); ``None`` for other tasks.
    ``n_masked``: the masked tokens of each mask_lm row (int64 ``[N]``; ``scores`` and ``labels`` hold its
    tokens row by row); ``None`` for other tasks.
    """

    task: str
    uids: list[str]
    scores: np.ndarray
    labels: np.ndarray | None
    n_candidates: np.ndarray | None = None
    n_masked: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.uids)


@dataclass(eq=False)
class EvalResult:
    """``metrics``: ``{metric name: value on a 0-100 scale}``, empty when the split has no labels."""

    metrics: dict[str, float]
    predictions: Predictions = field(repr=False)


@dataclass(eq=False)
class _BatchOutput:
    """One batch's results on the host: original row indices and what the model said about those rows."""

    indices: np.ndarray
    uids: list[str]
    scores: np.ndarray
    labels: np.ndarray | None
    n_candidates: np.ndarray | None
    n_masked: np.ndarray | None = None


def predict(
    model: nn.Module,
    dataset: TaskDataset,
    collator: Collator,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    masking: MaskingSpec | None = None,
    perturbation: BatchPerturbation | None = None,
    progress: bool | None = False,
) -> Predictions:
    """Score every row of ``dataset`` with ``model`` (already on ``device``) and return them in input order.

    Runs in eval mode under ``torch.inference_mode``; the train/eval mode of every submodule is restored
    afterwards. ``autocast_dtype`` (``torch.bfloat16`` / ``torch.float16``) runs the forward under autocast;
    scores are always float32. One device-to-host copy per batch. ``masking`` (the tokenizer's mask token,
    specials and vocabulary) is required for a mask_lm task. ``perturbation``: score every batch with it
    added to the perturbation target's output (see the module docstring; not for mask_lm tasks).
    ``progress``: a tqdm bar over the batches (None: only when stderr is a terminal).
    """
    device = torch.device(device)
    if dataset.task_def.task_type is TaskType.MASK_LM and masking is None:
        raise ValueError(f"task '{dataset.task_def.name}' is mask_lm: predict needs masking=MaskingSpec")
    if dataset.task_def.task_type is TaskType.MASK_LM and perturbation is not None:
        raise ValueError(f"task '{dataset.task_def.name}' is mask_lm: predict takes no perturbation for it")
    if perturbation is not None and torch.is_inference_mode_enabled():
        raise ValueError("a perturbation takes gradients: call predict outside torch.inference_mode")
    if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(f"world_size={world_size} needs an initialised torch.distributed process group")
    sampler = EvalBatchSampler(
        len(dataset), batch_size, lengths=dataset.lengths, rank=rank, world_size=world_size
    )
    task_def = dataset.task_def
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    outputs: list[_BatchOutput] = []
    try:
        with torch.inference_mode() if perturbation is None else torch.no_grad():
            batches = tqdm(
                sampler.batches,
                desc=f"eval {task_def.name}",
                leave=False,
                disable=None if progress is None else not progress,
            )
            for indices in batches:
                batch = collator([dataset[int(i)] for i in indices])
                outputs.append(
                    _predict_batch(
                        model, task_def, batch, indices, device, autocast_dtype, masking, perturbation
                    )
                )
    finally:
        for module, training in modes:
            module.training = training
    if world_size > 1:
        gathered: list[list[_BatchOutput] | None] = [None] * world_size
        torch.distributed.all_gather_object(gathered, outputs)
        outputs = [output for part in gathered for output in (part or [])]
    return _assemble(task_def, outputs, len(dataset))


def _predict_batch(
    model: nn.Module,
    task_def: TaskDef,
    batch: Batch,
    indices: np.ndarray,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    masking: MaskingSpec | None = None,
    perturbation: BatchPerturbation | None = None,
) -> _BatchOutput:
    labels = None if batch.labels is None else batch.labels.numpy()
    n_candidates = None
    pinned = batch.pin_memory() if device.type == "cuda" else batch
    on_device = pinned.to(device, non_blocking=True)
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    if task_def.task_type is TaskType.MASK_LM:
        assert masking is not None
        return _predict_masked(model, task_def, on_device, indices, masking, autocast)
    perturbed = contextlib.nullcontext()
    if perturbation is not None:
        perturbed = add_to_output(model.perturbation_target(), perturbation(on_device))
    with autocast, perturbed:
        output = forward_batch(model, on_device)
    output = output.float()
    if task_def.task_type is TaskType.CLASSIFICATION:
        output = torch.softmax(output, dim=-1)
    elif task_def.task_type is TaskType.RANKING:
        assert batch.candidate_mask is not None and on_device.candidate_mask is not None
        output = output.masked_fill(~on_device.candidate_mask, float("-inf"))
        n_candidates = batch.candidate_mask.sum(dim=1).numpy().astype(np.int64)
    return _BatchOutput(
        indices=np.asarray(indices, dtype=np.int64),
        uids=list(batch.uids),
        scores=output.cpu().numpy(),  # the batch's one host transfer
        labels=labels,
        n_candidates=n_candidates,
    )


def _predict_masked(
    model: nn.Module,
    task_def: TaskDef,
    batch: Batch,
    indices: np.ndarray,
    masking: MaskingSpec,
    autocast: contextlib.AbstractContextManager[object],
) -> _BatchOutput:
    """A mask_lm batch: mask it (fixed salt), then keep per masked token the argmax and the gold log-prob."""
    inputs = mask_batch(batch, masking, task_def.mask_probability, MASK_SALT)
    assert inputs.positions is not None and inputs.targets is not None
    with autocast:
        logits = forward_batch(model, inputs.batch, positions=inputs.positions)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    gold = log_probs.gather(1, inputs.targets[:, None])[:, 0]
    summary = torch.stack([log_probs.argmax(dim=-1).float(), gold], dim=1)
    counts = inputs.positions.sum(dim=1)
    host = torch.cat([summary.flatten(), inputs.targets.float(), counts.float()]).cpu().numpy()
    n_tokens = summary.shape[0]
    return _BatchOutput(
        indices=np.asarray(indices, dtype=np.int64),
        uids=list(batch.uids),
        scores=host[: 2 * n_tokens].reshape(n_tokens, 2),
        labels=host[2 * n_tokens : 3 * n_tokens].astype(np.int64),
        n_candidates=None,
        n_masked=host[3 * n_tokens :].astype(np.int64),
    )


def _assemble_masked(task_def: TaskDef, outputs: Sequence[_BatchOutput], n_rows: int) -> Predictions:
    """mask_lm: put each row's masked tokens back in input order (rows' tokens stay together)."""
    uids: list[str | None] = [None] * n_rows
    counts = np.full(n_rows, -1, dtype=np.int64)
    pieces: list[tuple[np.ndarray, np.ndarray] | None] = [None] * n_rows
    for output in outputs:
        assert output.n_masked is not None and output.labels is not None
        starts = np.concatenate([[0], np.cumsum(output.n_masked)])
        for j, row in enumerate(output.indices.tolist()):
            if counts[row] >= 0:
                raise ValueError(f"task '{task_def.name}': row {row} was predicted twice")
            counts[row] = output.n_masked[j]
            uids[row] = output.uids[j]
            span = slice(int(starts[j]), int(starts[j + 1]))
            pieces[row] = (output.scores[span], output.labels[span])
    if (counts < 0).any():
        missing = int(np.flatnonzero(counts < 0)[0])
        raise ValueError(f"task '{task_def.name}': row {missing} was never predicted")
    parts = [piece for piece in pieces if piece is not None]
    scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 2), np.float32)
    labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    return Predictions(
        task=task_def.name,
        uids=[str(uid) for uid in uids],
        scores=scores.reshape(-1, 2).astype(np.float32),
        labels=labels,
        n_masked=counts,
    )


def _assemble(task_def: TaskDef, outputs: Sequence[_BatchOutput], n_rows: int) -> Predictions:
    """Scatter per-batch results back to input order; every row must be covered exactly once."""
    task_type = task_def.task_type
    if task_type is TaskType.MASK_LM:
        return _assemble_masked(task_def, outputs, n_rows)
    if task_type is TaskType.REGRESSION:
        scores = np.zeros(n_rows, dtype=np.float32)
    elif task_type is TaskType.RANKING:
        width = max((output.scores.shape[1] for output in outputs), default=0)
        scores = np.full((n_rows, width), -np.inf, dtype=np.float32)
    else:
        scores = np.zeros((n_rows, task_def.n_class), dtype=np.float32)
    uids: list[str | None] = [None] * n_rows
    labelled = [output.labels is not None for output in outputs]
    if any(labelled) and not all(labelled):
        raise ValueError(f"task '{task_def.name}': some batches have labels and some do not")
    labels: np.ndarray | None = None
    if outputs and all(labelled):
        labels = np.zeros(n_rows, dtype=outputs[0].labels.dtype)  # type: ignore[union-attr]
    n_candidates = np.zeros(n_rows, dtype=np.int64) if task_type is TaskType.RANKING else None
    seen = np.zeros(n_rows, dtype=bool)
    for output in outputs:
        rows = output.indices
        if seen[rows].any():
            raise ValueError(f"task '{task_def.name}': row {int(rows[seen[rows]][0])} was predicted twice")
        seen[rows] = True
        if task_type is TaskType.RANKING:
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


def evaluate(
    model: nn.Module,
    dataset: TaskDataset,
    collator: Collator,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    metrics: Sequence[Metric] | None = None,
    masking: MaskingSpec | None = None,
    perturbation: BatchPerturbation | None = None,
    progress: bool | None = False,
) -> EvalResult:
    """``predict``, then the task's metrics (``metrics`` overrides ``task_def.metrics``) when labelled.

    Scores holding NaN (a diverged model) give every metric as NaN rather than an exception, so a training
    run's evaluation logs the divergence and goes on; ``predictions`` still holds the raw scores.
    """
    predictions = predict(
        model,
        dataset,
        collator,
        batch_size=batch_size,
        device=device,
        autocast_dtype=autocast_dtype,
        rank=rank,
        world_size=world_size,
        masking=masking,
        perturbation=perturbation,
        progress=progress,
    )
    task_def = dataset.task_def
    values: dict[str, float] = {}
    if predictions.labels is not None and len(predictions.labels):
        wanted = task_def.metrics if metrics is None else tuple(metrics)
        if np.isnan(predictions.scores).any():
            values = {Metric(metric).value: math.nan for metric in wanted}
        else:
            values = compute_metrics(task_def.task_type, wanted, predictions.scores, predictions.labels)
    return EvalResult(metrics=values, predictions=predictions)


# --- output files ----------------------------------------------------------------------------------------


def ranking_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax over each row's candidates; ``-inf`` (padding) slots get probability 0."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores.copy()
    top = scores.max(axis=1, keepdims=True)
    exp = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
    return exp / exp.sum(axis=1, keepdims=True)


def _label_repr(task_def: TaskDef, value: Any) -> str | int | float:
    """A class index as its label name (when the task names its labels), a score as a float."""
    if task_def.task_type is TaskType.REGRESSION:
        return float(value)
    index = int(value)
    if task_def.task_type is TaskType.CLASSIFICATION and task_def.labels is not None:
        return task_def.labels[index]
    return index


def prediction_records(task_def: TaskDef, predictions: Predictions) -> list[dict[str, Any]]:
    """One JSON-able dict per row, in input order: ``uid``, ``prediction``, ``probabilities`` (classes, or
    the real candidates for ranking; absent for regression) and the gold ``label`` when the split has one.

    A mask_lm row gives its masked tokens instead: ``prediction`` and ``label`` are lists of token ids
    (predicted, original), in the row's token order.

    Raises ``ValueError`` when the scores hold NaN.
    """
    task_type = task_def.task_type
    predicted = predictions_from_scores(task_type, predictions.scores)
    if task_type is TaskType.MASK_LM:
        return _masked_records(predictions, predicted)
    if task_type is TaskType.RANKING:
        probabilities: np.ndarray | None = ranking_probabilities(predictions.scores)
    elif task_type is TaskType.CLASSIFICATION:
        probabilities = np.asarray(predictions.scores, dtype=np.float64)
    else:
        probabilities = None
    counts = predictions.n_candidates
    records: list[dict[str, Any]] = []
    for i, uid in enumerate(predictions.uids):
        record: dict[str, Any] = {"uid": uid, "prediction": _label_repr(task_def, predicted[i])}
        if probabilities is not None:
            row = probabilities[i]
            if task_type is TaskType.RANKING:
                row = row[: int(counts[i])] if counts is not None else row[np.isfinite(predictions.scores[i])]
            record["probabilities"] = row.tolist()
        if predictions.labels is not None:
            record["label"] = _label_repr(task_def, predictions.labels[i])
        records.append(record)
    return records


def _masked_records(predictions: Predictions, predicted: np.ndarray) -> list[dict[str, Any]]:
    assert predictions.n_masked is not None and predictions.labels is not None
    starts = np.concatenate([[0], np.cumsum(predictions.n_masked)]).tolist()
    return [
        {
            "uid": uid,
            "prediction": predicted[starts[i] : starts[i + 1]].tolist(),
            "label": predictions.labels[starts[i] : starts[i + 1]].tolist(),
        }
        for i, uid in enumerate(predictions.uids)
    ]


def write_predictions_jsonl(path: str | Path, records: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line (strict JSON: no NaN), written atomically."""
    text = "".join(json.dumps(dict(record), ensure_ascii=False, allow_nan=False) + "\n" for record in records)
    atomic_write_text(path, text)


def write_glue_submission(path: str | Path, task_def: TaskDef, predictions: Predictions) -> None:
    """GLUE's submission TSV: header ``index<TAB>prediction``, one row per example in input order, 0-based
    index; the label name (or class index) for classification, the score for regression."""
    if task_def.task_type is TaskType.MASK_LM:
        raise ValueError(f"task '{task_def.name}' is mask_lm: GLUE submissions are for labelled tasks")
    predicted = predictions_from_scores(task_def.task_type, predictions.scores)
    lines = ["index\tprediction"]
    for i, value in enumerate(predicted):
        shown = _label_repr(task_def, value)
        lines.append(f"{i}\t{_format_score(shown) if isinstance(shown, float) else shown}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def _format_score(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"cannot write a non-finite score {value!r}")
    return f"{value:.6f}"
