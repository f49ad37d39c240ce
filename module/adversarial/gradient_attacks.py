"""Adversarial training on the task loss's own gradient: FGSM, FGM and PGD (single backward each).

All three start from one clean pass whose loss gradient with respect to the target's output (delta = 0) is
taken with ``torch.autograd.grad`` - parameter ``.grad`` is untouched - and end with one adversarial pass
whose loss joins the clean loss in the caller's one backward. Padding positions are never perturbed. A
non-finite perturbation gradient turns the perturbation off for the batch (delta 0, counted in
``adv_skipped``): FGM and PGD then drop their adversarial term, and FGSM's mixture is the clean loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from module.adversarial.base import AdversarialBatch, AdversarialMethod, AdversarialStep
from module.adversarial.delta import (
    delta_ratio,
    finite_or_zero,
    length_unit,
    perturb_output,
    position_mask,
    run_with_delta,
    scale_length,
)
from module.adversarial.names import AdversarialMethodName
from module.adversarial.norms import NormLevel, PNorm, Radius, normalize, project

__all__ = ["FGM", "FGMConfig", "FGSM", "FGSMConfig", "PGD", "PGDConfig", "check_non_negative"]


def check_non_negative(method: str, config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if math.isnan(value) or value < 0:
            raise ValueError(f"{method} {name} must be a number >= 0, got {value}")


@dataclass
class CleanPass:
    outputs: Tensor  # with graph
    loss: Tensor  # the task loss of the clean pass, with graph
    grad: Tensor  # d loss / d target output (fp32, zeroed if non-finite; scaled by inner_loss_scale)
    finite: Tensor  # bool: the gradient was finite
    output: Tensor  # the target's output (detached)
    mask: Tensor  # [..., 1] positions that may be perturbed


def clean_pass_with_gradient(target: nn.Module, batch: AdversarialBatch) -> CleanPass:
    """Run the clean forward with a zero perturbation leaf on ``target`` and take the loss gradient at it."""
    with perturb_output(target, _zero_leaf) as seen:
        outputs = batch.run()
    assert seen.delta is not None and seen.output is not None
    loss = batch.loss(outputs)
    (grad,) = torch.autograd.grad(loss * batch.inner_loss_scale, seen.delta, retain_graph=True)
    grad, finite = finite_or_zero(grad)
    output = seen.output.detach()
    return CleanPass(outputs, loss, grad, finite, output, position_mask(batch.token_mask, output))


def _zero_leaf(output: Tensor) -> Tensor:
    return torch.zeros(output.shape, device=output.device, dtype=torch.float32, requires_grad=True)


def _kept(adversarial_loss: Tensor, finite: Tensor) -> Tensor:
    """The adversarial loss, or 0 when a non-finite gradient turned the perturbation off: with delta = 0 it
    would be the clean loss a second time (a doubled clean gradient). No host sync; exact when finite."""
    return torch.where(finite, adversarial_loss, 0.0)


def _stats(adversarial_loss: Tensor, delta: Tensor, clean: CleanPass) -> dict[str, Tensor]:
    return {
        "adv_loss": adversarial_loss.detach(),
        "delta_ratio": delta_ratio(delta, clean.output, clean.mask),
        "adv_skipped": (~clean.finite).float(),
    }


@dataclass(frozen=True)
class FGSMConfig:
    """Goodfellow et al. 2015 (arXiv:1412.6572), eq. 6: ``(1 - alpha) J(x) + alpha J(x + eps sign(g))``.

    ``alpha`` is the adversarial loss's weight (the paper weights both halves 0.5). The paper's eps (0.25 for
    MNIST pixels in [0, 1]) has no meaning for embeddings: the default is relative, each coordinate moves by
    1% of its token's root-mean-square coordinate (``delta_ratio`` 0.01; ``radius absolute`` reads eps in
    embedding units, where 1e-3 is about 2% of a MiniLM token).
    """

    alpha: float = 0.5
    epsilon: float = 0.01
    radius: Radius = Radius.RELATIVE

    def __post_init__(self) -> None:
        object.__setattr__(self, "radius", Radius(self.radius))
        check_non_negative("FGSM", self, "alpha", "epsilon")


class FGSM(AdversarialMethod):
    """Fast gradient sign method: ``r = eps * sign(grad_x J)`` (inf-ball), one adversarial pass."""

    name = AdversarialMethodName.FGSM

    def __init__(self, target: nn.Module, config: FGSMConfig | None = None) -> None:
        super().__init__(target)
        self.config = config or FGSMConfig()

    def __call__(self, batch: AdversarialBatch) -> AdversarialStep:
        clean = clean_pass_with_gradient(self.target, batch)
        unit = length_unit(self.config.radius, clean.output, clean.mask, PNorm.INF, NormLevel.TOKEN)
        delta = scale_length(self.config.epsilon, unit) * clean.grad.sign() * clean.mask
        adversarial = batch.loss(run_with_delta(self.target, batch.inner_run, delta))
        alpha = self.config.alpha
        loss = (1 - alpha) * clean.loss + alpha * adversarial
        return AdversarialStep(
            loss, clean.outputs, False, _stats(adversarial, delta, clean), delta.detach(), clean.loss.detach()
        )


@dataclass(frozen=True)
class FGMConfig:
    """Miyato et al. 2017 (arXiv:1605.07725): ``J(x) + alpha J(x + eps g / ||g||_2)``, g per example.

    The paper uses eps = 5 on unit-normalised embeddings and weight 1. The customary BERT setting, eps = 1
    absolute, is ~1% of a batch's embedding norm when normalised over the whole batch (the widely copied
    recipe: ``norm_level batch``) but ~24% of a short MiniLM sentence when normalised per sentence, which
    wrecks training. The default is relative: 2% of each sentence's embedding norm (``delta_ratio`` 0.02);
    ``radius absolute`` restores embedding units.
    """

    alpha: float = 1.0
    epsilon: float = 0.02
    p_norm: PNorm = PNorm.L2
    norm_level: NormLevel = NormLevel.SENTENCE
    radius: Radius = Radius.RELATIVE

    def __post_init__(self) -> None:
        object.__setattr__(self, "p_norm", PNorm(self.p_norm))
        object.__setattr__(self, "norm_level", NormLevel(self.norm_level))
        object.__setattr__(self, "radius", Radius(self.radius))
        check_non_negative("FGM", self, "alpha", "epsilon")


class FGM(AdversarialMethod):
    """Fast gradient method: the loss gradient, normalised per example, scaled to the ball's radius."""

    name = AdversarialMethodName.FGM

    def __init__(self, target: nn.Module, config: FGMConfig | None = None) -> None:
        super().__init__(target)
        self.config = config or FGMConfig()

    def __call__(self, batch: AdversarialBatch) -> AdversarialStep:
        config = self.config
        clean = clean_pass_with_gradient(self.target, batch)
        unit = length_unit(config.radius, clean.output, clean.mask, config.p_norm, config.norm_level)
        direction = normalize(clean.grad * clean.mask, config.p_norm, config.norm_level)
        delta = scale_length(config.epsilon, unit) * direction
        adversarial = batch.loss(run_with_delta(self.target, batch.inner_run, delta))
        loss = clean.loss + config.alpha * _kept(adversarial, clean.finite)
        return AdversarialStep(
            loss, clean.outputs, False, _stats(adversarial, delta, clean), delta.detach(), clean.loss.detach()
        )


@dataclass(frozen=True)
class PGDConfig:
    """Madry et al. 2018 (arXiv:1706.06083), in the form used for language models: K ascent steps of size
    ``step_size`` along the normalised loss gradient, each projected onto the ``epsilon`` ball, starting at
    delta = 0 (the first gradient is the clean pass's); the parameter gradient comes from
    ``J(x) + alpha J(x + delta_K)``. Defaults: K = 3, l2 per sentence, relative to each sentence's embedding
    norm: eps = 0.02, step 0.008 (the customary absolute eps = 1, step 0.3 is ~24% of a short MiniLM
    sentence: see ``FGMConfig``)."""

    alpha: float = 1.0
    k: int = 3
    step_size: float = 0.008
    epsilon: float = 0.02
    p_norm: PNorm = PNorm.L2
    norm_level: NormLevel = NormLevel.SENTENCE
    radius: Radius = Radius.RELATIVE

    def __post_init__(self) -> None:
        object.__setattr__(self, "p_norm", PNorm(self.p_norm))
        object.__setattr__(self, "norm_level", NormLevel(self.norm_level))
        object.__setattr__(self, "radius", Radius(self.radius))
        if self.k < 1:
            raise ValueError(f"PGD needs k >= 1 ascent steps, got {self.k}")
        check_non_negative("PGD", self, "alpha", "step_size", "epsilon")


class PGD(AdversarialMethod):
    """Projected gradient descent on the embeddings: K + 1 forwards, K - 1 delta-only backwards."""

    name = AdversarialMethodName.PGD

    def __init__(self, target: nn.Module, config: PGDConfig | None = None) -> None:
        super().__init__(target)
        self.config = config or PGDConfig()

    def __call__(self, batch: AdversarialBatch) -> AdversarialStep:
        config = self.config
        clean = clean_pass_with_gradient(self.target, batch)
        grad, finite = clean.grad, clean.finite
        unit = length_unit(config.radius, clean.output, clean.mask, config.p_norm, config.norm_level)
        step_size, epsilon = scale_length(config.step_size, unit), scale_length(config.epsilon, unit)
        delta = torch.zeros_like(grad)
        for step in range(config.k):
            step_direction = normalize(grad * clean.mask, config.p_norm, config.norm_level)
            delta = project(delta + step_size * step_direction, config.p_norm, epsilon, config.norm_level)
            if step + 1 < config.k:
                delta.requires_grad_(True)
                inner = batch.loss(run_with_delta(self.target, batch.inner_run, delta))
                (grad,) = torch.autograd.grad(inner * batch.inner_loss_scale, delta)
                grad, step_finite = finite_or_zero(grad)
                finite = finite & step_finite
                delta = delta.detach()
        delta = torch.where(finite, delta, 0.0) * clean.mask
        adversarial = batch.loss(run_with_delta(self.target, batch.inner_run, delta))
        loss = clean.loss + config.alpha * _kept(adversarial, finite)
        stats = _stats(adversarial, delta, clean)
        stats["adv_skipped"] = (~finite).float()
        return AdversarialStep(loss, clean.outputs, False, stats, delta.detach(), clean.loss.detach())
