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
import functools
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
from data_utils.masking import MaskingSpec
from data_utils.metrics import compute_metrics, predictions_from_scores
from data_utils.sampler import EvalBatchSampler
from data_utils.task_def import TaskDef
from module.adversarial.hooks import add_to_output
from mt_dnn.model import forward_batch
from mt_dnn.tasks import BatchScores, Predictions, task_kind
from mt_dnn.tasks.ranking import ranking_probabilities

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


@dataclass(eq=False)
class EvalResult:
    """``metrics``: ``{metric name: value on a 0-100 scale}``, empty when the split has no labels."""

    metrics: dict[str, float]
    predictions: Predictions = field(repr=False)


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
    task_def = dataset.task_def
    kind = task_kind(task_def)
    if kind.needs_masking and masking is None:
        raise ValueError(f"task '{task_def.name}' is {task_def.task_type}: predict needs masking=MaskingSpec")
    if not kind.accepts_perturbation and perturbation is not None:
        raise ValueError(
            f"task '{task_def.name}' is {task_def.task_type}: predict takes no perturbation for it"
        )
    if perturbation is not None and torch.is_inference_mode_enabled():
        raise ValueError("a perturbation takes gradients: call predict outside torch.inference_mode")
    if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(f"world_size={world_size} needs an initialised torch.distributed process group")
    sampler = EvalBatchSampler(
        len(dataset), batch_size, lengths=dataset.lengths, rank=rank, world_size=world_size
    )
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    outputs: list[BatchScores] = []
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
        gathered: list[list[BatchScores] | None] = [None] * world_size
        torch.distributed.all_gather_object(gathered, outputs)
        outputs = [output for part in gathered for output in (part or [])]
    predictions = kind.assemble(task_def, outputs, len(dataset))
    predictions.source = dataset.split
    return predictions


def _predict_batch(
    model: nn.Module,
    task_def: TaskDef,
    batch: Batch,
    indices: np.ndarray,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    masking: MaskingSpec | None = None,
    perturbation: BatchPerturbation | None = None,
) -> BatchScores:
    pinned = batch.pin_memory() if device.type == "cuda" else batch
    on_device = pinned.to(device, non_blocking=True)
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    perturbed: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if perturbation is not None:
        perturbed = add_to_output(model.perturbation_target(), perturbation(on_device))
    forward = functools.partial(forward_batch, model)
    output = task_kind(task_def).predict_batch(
        task_def, forward, on_device, batch, masking, autocast, perturbed
    )
    output.indices = np.asarray(indices, dtype=np.int64)
    return output


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
    metrics: Sequence[str] | None = None,
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
            values = {str(metric): math.nan for metric in wanted}
        else:
            context = task_kind(task_def).metric_context(task_def, predictions)
            values = compute_metrics(
                task_def.kind, wanted, predictions.scores, predictions.labels, context=context
            )
    return EvalResult(metrics=values, predictions=predictions)


# --- output files ----------------------------------------------------------------------------------------


def prediction_records(task_def: TaskDef, predictions: Predictions) -> list[dict[str, Any]]:
    """One JSON-able dict per row, in input order: ``uid``, ``prediction``, ``probabilities`` (classes, or
    the real candidates for ranking; absent for regression) and the gold ``label`` when the split has one.

    A mask_lm row gives its masked tokens instead: ``prediction`` and ``label`` are lists of token ids
    (predicted, original), in the row's token order.

    Raises ``ValueError`` when the scores hold NaN.
    """
    return task_kind(task_def).records(task_def, predictions)


def write_predictions_jsonl(path: str | Path, records: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line (strict JSON: no NaN), written atomically."""
    text = "".join(json.dumps(dict(record), ensure_ascii=False, allow_nan=False) + "\n" for record in records)
    atomic_write_text(path, text)


def write_glue_submission(path: str | Path, task_def: TaskDef, predictions: Predictions) -> None:
    """GLUE's submission TSV: header ``index<TAB>prediction``, one row per example in input order, 0-based
    index; the label name (or class index) for classification, the score for regression."""
    kind = task_kind(task_def)
    if not kind.writes_submission:
        raise ValueError(
            f"task '{task_def.name}' is {task_def.task_type}: GLUE submissions are for labelled tasks"
        )
    predicted = predictions_from_scores(task_def.kind, predictions.scores)
    lines = ["index\tprediction"]
    for i, value in enumerate(predicted):
        shown = kind.label_value(task_def, value)
        lines.append(f"{i}\t{_format_score(shown) if isinstance(shown, float) else shown}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def _format_score(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"cannot write a non-finite score {value!r}")
    return f"{value:.6f}"
