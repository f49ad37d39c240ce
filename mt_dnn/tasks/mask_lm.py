"""Masked language modelling on raw text (ALUM's continued pre-training): the text is its own label.

A batch is masked on its device (BERT's 15%, 80/10/10), one seed per row from ``(salt, uid)``: training
salts with the run's seed and epoch, evaluation uses the fixed ``MASK_SALT`` so dev metrics are
deterministic. The head predicts the vocabulary at the masked positions only, its decoder tied to the word
embeddings. Predictions hold, per masked token, the predicted id and the gold token's log-probability.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from torch import Tensor, nn

from data_utils.dataset import Batch, example_seeds
from data_utils.enums import DataFormat, HeadType, LossName, TaskType
from data_utils.kinds import ErrorFactory, integer_labels
from data_utils.masking import MaskingSpec, mask_tokens
from data_utils.metrics import Metric, predictions_from_scores
from data_utils.task_def import DEFAULT_MASK_PROBABILITY, TaskDef, read_number
from module.encoders import EncoderLayout, MaskedLMHeadNames
from module.heads import MaskedLMHead
from mt_dnn.tasks.base import (
    BatchScores,
    BatchShape,
    EncoderOutput,
    Forward,
    HeadOptions,
    ModelInputs,
    Predictions,
    TaskKind,
    assemble_token_rows,
)
from mt_dnn.tasks.registry import register_task_kind

__all__ = ["MASK_SALT", "MaskLM", "mask_batch", "pretrained_mlm_head"]

logger = logging.getLogger("mt_dnn.tasks.mask_lm")

# The masks of evaluation and of calls without a salt: fixed, so dev metrics are deterministic.
MASK_SALT = "mask_lm"


def mask_batch(batch: Batch, masking: MaskingSpec, probability: float, salt: str) -> ModelInputs:
    """Mask a mask_lm batch on its device, one seed per example from ``(salt, uid)``."""
    masked = mask_tokens(
        batch.input_ids,
        batch.attention_mask,
        example_seeds(f"mask|{salt}", batch),
        mask_token_id=masking.mask_token_id,
        special_ids=masking.special_ids,
        vocab_size=masking.vocab_size,
        probability=probability,
    )
    masked_batch = dataclasses.replace(batch, input_ids=masked.input_ids)
    return ModelInputs(masked_batch, {"positions": masked.positions}, masked.targets)


def pretrained_mlm_head(folder: str | Path, head: MaskedLMHeadNames) -> tuple[dict[str, Tensor], str] | None:
    """The masked-LM head weights in an HF folder's safetensors files, under our head's names (``head``: where
    the encoder type's checkpoints keep them), and their prefix; ``None`` when the folder has no complete
    masked-LM head."""
    prefix, names = head.prefix, head.names
    files = sorted(Path(folder).glob("*.safetensors"))
    stored: dict[str, tuple[Path, str]] = {}
    for file in files:
        with safetensors.safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                if key.startswith(prefix):
                    stored[key] = (file, key)
    found: dict[str, Tensor] = {}
    for ours, theirs in names.items():
        key = next((prefix + name for name in theirs if prefix + name in stored), None)
        if key is None:
            return None
        file, name = stored[key]
        with safetensors.safe_open(str(file), framework="pt") as handle:
            found[ours] = handle.get_tensor(name)
    return found, prefix


@register_task_kind
class MaskLM(TaskKind):
    """Raw text; its own YAML key is ``mask_probability``, and its n_class is 0 (the vocabulary decides)."""

    name = TaskType.MASK_LM
    aliases = ("masklm",)
    formats = (DataFormat.PREMISE_ONLY,)
    default_metrics = (Metric.MLM_ACC, Metric.PERPLEXITY)
    allowed_metrics = frozenset({Metric.MLM_ACC, Metric.PERPLEXITY})
    losses = (LossName.CROSS_ENTROPY,)
    # ALUM's pre-training divergence is KL over the vocabulary (Liu et al. 2020).
    divergences = (LossName.KL, LossName.SYM_KL, LossName.JS)
    yaml_keys = frozenset({"mask_probability"})
    needs_masking = True
    accepts_perturbation = False
    writes_submission = False
    self_labelled = True
    pretraining = True
    export_refusal = (
        "a mask_lm head is a pre-training head, not a task head (encoder/ loads with AutoModel as it is)"
    )

    # ---------------------------------------------------------------- data side
    def n_class(self, given: object, labels: tuple[str, ...] | None, error: ErrorFactory) -> int:
        # The targets are the text's own tokens: the encoder's vocabulary is the class set.
        for key, value in (("labels", labels), ("n_class", given)):
            if value is not None:
                raise error(key, "a mask_lm task predicts the encoder's vocabulary; remove it")
        return 0

    def own_fields(self, raw: Mapping[str, object], error: ErrorFactory) -> dict[str, Any]:
        probability = read_number(
            raw, "mask_probability", error, default=DEFAULT_MASK_PROBABILITY, low=0.0, high=1.0, low_open=True
        )
        return {"mask_probability": probability}

    def own_dict(self, task_def: TaskDef) -> dict[str, Any]:
        return {"mask_probability": task_def.mask_probability}

    def validate_scores(self, scores: np.ndarray) -> np.ndarray:
        if scores.ndim != 2 or scores.shape[1] != 2:
            raise ValueError(
                f"mask_lm scores must be shaped [M, 2] (predicted id, gold log-prob), got {scores.shape}"
            )
        ids = scores[:, 0]
        if not np.isfinite(ids).all() or (ids < 0).any() or (ids != np.round(ids)).any():
            raise ValueError("mask_lm scores: column 0 must hold predicted token ids")
        if (scores[:, 1] > 0).any() or np.isposinf(scores[:, 1]).any():
            raise ValueError("mask_lm scores: column 1 must hold log-probabilities (<= 0)")
        return scores

    def validate_labels(self, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
        labels = integer_labels(self.name, labels)
        if labels.min() < 0:
            raise ValueError(f"mask_lm labels must be token ids >= 0, got {labels.min()}")
        return labels

    def predicted(self, scores: np.ndarray) -> np.ndarray:
        return scores[:, 0].astype(np.int64)

    # ---------------------------------------------------------------- model side

    def build_head(self, task_def: TaskDef, options: HeadOptions) -> nn.Module:
        self.check_head_type(task_def, (HeadType.LINEAR,))
        return MaskedLMHead(options.hidden_size, options.vocab_size)

    def init_head(self, head: nn.Module, encoder_folder: Path, task: str, layout: EncoderLayout) -> None:
        """Start from the folder's pretrained masked-LM head when it has one (e.g. a ``BertForMaskedLM``)."""
        found = None if layout.mlm_head is None else pretrained_mlm_head(encoder_folder, layout.mlm_head)
        if found is None:
            logger.info("%s has no pretrained masked-LM head: head '%s' starts fresh", encoder_folder, task)
            return
        weights, prefix = found
        wanted = dict(head.state_dict())
        if any(weights[key].shape != value.shape for key, value in wanted.items()):
            logger.warning(
                "%s: its masked-LM head does not fit; head '%s' starts fresh", encoder_folder, task
            )
            return
        head.load_state_dict(weights)
        logger.info("head '%s' initialised from the masked-LM head (%s*) of %s", task, prefix, encoder_folder)

    def run_head(self, head: nn.Module, encoded: EncoderOutput, batch_shape: BatchShape) -> Tensor:
        positions = batch_shape.head_inputs.get("positions")
        if positions is None:
            raise ValueError("a mask_lm task needs the masked positions (positions=)")
        return head(
            encoded.hidden_states,
            encoded.attention_mask,
            encoded.token_type_ids,
            encoded.pooled,
            positions=positions,
            decoder_weight=encoded.word_embeddings,
        )

    def model_inputs(
        self, task_def: TaskDef, batch: Batch, masking: MaskingSpec | None, salt: str | None
    ) -> ModelInputs:
        if masking is None:
            raise ValueError(f"task '{task_def.name}' is mask_lm: its batches need a MaskingSpec")
        return mask_batch(batch, masking, task_def.mask_probability, MASK_SALT if salt is None else salt)

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
        """Per masked token the argmax and the gold log-prob, with one host transfer for the batch."""
        inputs = self.model_inputs(task_def, batch, masking, None)
        assert inputs.targets is not None
        positions = inputs.head_inputs["positions"]
        with autocast:
            logits = forward(inputs.batch, **inputs.head_inputs)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        gold = log_probs.gather(1, inputs.targets[:, None])[:, 0]
        summary = torch.stack([log_probs.argmax(dim=-1).float(), gold], dim=1)
        counts = positions.sum(dim=1)
        host = torch.cat([summary.flatten(), inputs.targets.float(), counts.float()]).cpu().numpy()
        n_tokens = summary.shape[0]
        return BatchScores(
            indices=np.zeros(0, dtype=np.int64),
            uids=list(batch.uids),
            scores=host[: 2 * n_tokens].reshape(n_tokens, 2),
            labels=host[2 * n_tokens : 3 * n_tokens].astype(np.int64),
            n_masked=host[3 * n_tokens :].astype(np.int64),
        )

    def assemble(self, task_def: TaskDef, outputs: Sequence[BatchScores], n_rows: int) -> Predictions:
        """Each row's masked tokens back in input order (a row's tokens stay together)."""
        return assemble_token_rows(task_def, outputs, n_rows, width=2)

    def records(self, task_def: TaskDef, predictions: Predictions) -> list[dict[str, Any]]:
        """Per row its masked tokens: ``prediction`` and ``label`` are lists of token ids, in token order."""
        predicted = predictions_from_scores(task_def.kind, predictions.scores)
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
