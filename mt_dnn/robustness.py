"""Robustness of a trained model: its metrics under a PGD attack on the word embeddings, over radii.

The attack is the evaluation counterpart of PGD training (Madry et al. 2018, arXiv:1706.06083): in eval mode
(no dropout), ``steps`` ascent steps on the task loss against the gold labels, each of size ``step_size``
along the normalised gradient and projected onto the ``epsilon`` ball, from delta = 0; the rows are then
scored with the final delta added to the word-embedding output. Padding positions are never perturbed.
``step_size`` defaults to ``2.5 * epsilon / steps``, Madry et al.'s choice (the walk can reach the ball's
surface from anywhere inside it). Radius 0 scores exactly the clean model.

The default ball is l2 per token: every token's word-embedding vector moves by at most ``epsilon``, a radius
that reads against ``embedding_norm`` (the mean l2 norm of a row of the word-embedding matrix) whatever the
sentence length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from data_utils.dataset import Batch, Collator, TaskDataset
from data_utils.enums import TaskType
from data_utils.task_def import TaskDef
from module.adversarial import PGD, AdversarialBatch, NormLevel, PGDConfig, PNorm
from module.losses import task_loss
from mt_dnn.inference import BatchPerturbation, evaluate
from mt_dnn.model import MTDNNModel

__all__ = ["EmbeddingAttack", "attack_perturbation", "embedding_norm", "robustness_curve"]


@dataclass(frozen=True)
class EmbeddingAttack:
    """PGD on the word embeddings: ``steps`` projected ascent steps inside the ``epsilon`` ball."""

    epsilon: float
    steps: int = 10
    step_size: float | None = None  # None: 2.5 * epsilon / steps
    p_norm: PNorm = PNorm.L2
    norm_level: NormLevel = NormLevel.TOKEN

    def __post_init__(self) -> None:
        object.__setattr__(self, "p_norm", PNorm(self.p_norm))
        object.__setattr__(self, "norm_level", NormLevel(self.norm_level))
        if not self.epsilon >= 0:
            raise ValueError(f"attack epsilon must be a number >= 0, got {self.epsilon}")
        if self.steps < 1:
            raise ValueError(f"the attack needs steps >= 1, got {self.steps}")

    @property
    def pgd_config(self) -> PGDConfig:
        step_size = 2.5 * self.epsilon / self.steps if self.step_size is None else self.step_size
        return PGDConfig(
            k=self.steps,
            step_size=step_size,
            epsilon=self.epsilon,
            p_norm=self.p_norm,
            norm_level=self.norm_level,
        )


def attack_perturbation(model: MTDNNModel, task_def: TaskDef, attack: EmbeddingAttack) -> BatchPerturbation:
    """For ``mt_dnn.inference.predict``: a labelled batch -> its PGD perturbation of the word embeddings."""
    if task_def.task_type is TaskType.MASK_LM:
        raise ValueError(f"task '{task_def.name}' is mask_lm: the attack scores classification-type tasks")
    pgd = PGD(model.perturbation_target(), attack.pgd_config)
    ranking = task_def.task_type is TaskType.RANKING

    def perturbation(batch: Batch) -> Tensor:
        if batch.labels is None:
            raise ValueError(f"task '{task_def.name}': the attack needs gold labels, the split has none")
        labels = batch.labels

        def run() -> Tensor:
            return model(
                batch.task,
                batch.input_ids,
                batch.attention_mask,
                batch.token_type_ids,
                n_candidates=batch.n_candidates,
            )

        def loss(outputs: Tensor) -> Tensor:
            return task_loss(task_def.loss, outputs, labels, mask=batch.candidate_mask if ranking else None)

        with torch.enable_grad():
            step = pgd(AdversarialBatch(run=run, loss=loss, token_mask=batch.attention_mask))
        assert step.delta is not None
        return step.delta

    return perturbation


def embedding_norm(model: MTDNNModel) -> float:
    """The mean l2 norm of a row of the word-embedding matrix (the scale of a per-token radius)."""
    weight = getattr(model.perturbation_target(), "weight", None)
    if not isinstance(weight, Tensor):
        raise ValueError("the perturbation target has no weight matrix to measure")
    return float(torch.linalg.vector_norm(weight.detach().float(), dim=1).mean())


def robustness_curve(
    model: MTDNNModel,
    dataset: TaskDataset,
    collator: Collator,
    attacks: Sequence[EmbeddingAttack],
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> list[dict[str, float]]:
    """The task's metrics (0-100 scale) on ``dataset`` under each attack, in order."""
    curve = []
    for attack in attacks:
        # Radius 0 is the clean model exactly (tested): skip the attack's passes.
        perturbation = attack_perturbation(model, dataset.task_def, attack) if attack.epsilon > 0 else None
        result = evaluate(
            model, dataset, collator, batch_size=batch_size, device=device, perturbation=perturbation
        )
        curve.append(result.metrics)
    return curve
