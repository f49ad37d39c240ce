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

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from data_utils.dataset import Batch, Collator, TaskDataset
from data_utils.task_def import TaskDef
from module.adversarial import PGD, AdversarialBatch, NormLevel, PGDConfig, PNorm, Radius
from module.losses import task_loss
from mt_dnn.inference import evaluate
from mt_dnn.model import MTDNNModel, forward_batch
from mt_dnn.tasks import task_kind

__all__ = [
    "CurvePoint",
    "EmbeddingAttack",
    "PGDPerturbation",
    "embedding_norm",
    "robustness_curve",
]


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
            radius=Radius.ABSOLUTE,  # the attack's radii are in embedding units (read against embedding_norm)
        )


class PGDPerturbation:
    """For ``mt_dnn.inference.predict`` (which runs the model in eval mode): a labelled batch -> its PGD
    perturbation of the word embeddings. A batch whose attack gradient is not finite gets no perturbation
    (PGD's own rule); ``skipped_batches`` counts them, so a robust score is never silently a clean one.

    PGD also runs the perturbed pass once with its graph, which the scoring forward then repeats: K + 2
    forwards a batch instead of K + 1, the price of reusing the training method as it is.
    """

    def __init__(self, model: MTDNNModel, task_def: TaskDef, attack: EmbeddingAttack) -> None:
        if not task_kind(task_def).accepts_perturbation:
            raise ValueError(
                f"task '{task_def.name}' is {task_def.task_type}: the attack scores classification-type tasks"
            )
        self.model = model
        self.task_def = task_def
        self.pgd = PGD(model.perturbation_target(), attack.pgd_config)
        self._skipped: Tensor | int = 0  # summed on the device: no host sync per batch

    @property
    def skipped_batches(self) -> int:
        """Batches scored clean because their attack gradient was not finite (one host sync, read once)."""
        return int(self._skipped)

    def __call__(self, batch: Batch) -> Tensor:
        task_def = self.task_def
        if batch.labels is None:
            raise ValueError(f"task '{task_def.name}': the attack needs gold labels, the split has none")
        kind = task_kind(task_def)
        inputs = kind.model_inputs(task_def, batch, None, None)  # the head's own inputs (span: span_mask)
        labels = inputs.labels
        mask = kind.output_mask(batch)

        def run() -> Tensor:
            return forward_batch(self.model, inputs.batch, **inputs.head_inputs)

        def loss(outputs: Tensor) -> Tensor:
            return task_loss(task_def.loss, outputs, labels, mask=mask)

        with torch.enable_grad():
            step = self.pgd(AdversarialBatch(run=run, loss=loss, token_mask=batch.attention_mask))
        assert step.delta is not None
        self._skipped = self._skipped + step.stats["adv_skipped"].detach()
        return step.delta


@dataclass(frozen=True)
class CurvePoint:
    """The metrics (0-100 scale) under one attack, and the batches whose attack had to be skipped."""

    metrics: dict[str, float]
    skipped_batches: int = 0


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
) -> list[CurvePoint]:
    """The task's metrics on ``dataset`` under each attack, in order. The model runs in eval mode; its modes
    and its parameters' ``requires_grad`` are restored afterwards, and no ``.grad`` is written."""
    curve = []
    with _parameters_frozen(
        model
    ):  # the attack needs gradients for delta only: keep no weight-gradient state
        for attack in attacks:
            # Radius 0 is the clean model exactly (tested): skip the attack's passes.
            perturbation = PGDPerturbation(model, dataset.task_def, attack) if attack.epsilon > 0 else None
            result = evaluate(
                model, dataset, collator, batch_size=batch_size, device=device, perturbation=perturbation
            )
            skipped = perturbation.skipped_batches if perturbation is not None else 0
            curve.append(CurvePoint(result.metrics, skipped))
    return curve


@contextlib.contextmanager
def _parameters_frozen(model: nn.Module) -> Iterator[None]:
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)
