"""SMART's smoothness-inducing adversarial regulariser (Jiang et al. 2020, arXiv:1911.03437, Alg. 1).

For a batch x with clean output f(x), SMART looks for the perturbation delta of the embeddings, inside an
epsilon-ball, that changes the output most, and penalises that change::

    delta ~ N(0, sigma^2), zero on padding
    K times:  g = grad_delta D(f(x + delta), f(x).detach())        (delta-only gradient; parameters untouched)
              delta = project_eps(delta + step_size * g / ||g||)
    R(theta) = D(f(x + delta), f(x))                                 (gradients flow through both outputs)

``D`` is the task's divergence (symmetric KL for classification and ranking, squared error for
regression: ``module.losses``). The caller adds ``alpha * R`` to the task loss before its one backward.
A pass count for K inner steps: K + 2 forwards, K delta-only backwards, and the caller's one backward
through the clean and the final adversarial branch.

The perturbation goes on the output of ``target`` (any module that runs once per forward pass) through a
forward hook, so the class works on any ``nn.Module``; ``run`` is a closure that runs the model on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from module.adversarial.delta import (
    delta_ratio,
    device_of,
    finite_or_zero,
    initial_noise,
    length_unit,
    noise_unit,
    position_mask,
    run_with_delta,
    scale_length,
)
from module.adversarial.hooks import RngSnapshot, capture_output
from module.adversarial.norms import NormLevel, PNorm, Radius, normalize, project

__all__ = ["AdversarialResult", "Divergence", "SmartConfig", "SmartPerturbation"]

Divergence = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SmartConfig:
    """SMART's hyper-parameters; the defaults are the paper's (and mt-dnn's flag defaults).

    ``noise_var`` keeps mt-dnn's flag name but is the *standard deviation* of the initial noise, as in
    mt-dnn's code and the paper (sigma = 1e-5). ``epsilon`` is a true radius: every delta ends inside the
    ``p_norm`` ball of that radius, per token or per sentence (``norm_level``). ``radius`` ``absolute`` (the
    paper) reads ``noise_var``, ``step_size`` and ``epsilon`` in embedding units; ``relative`` reads them as
    fractions of each token's (sentence's) own embedding size (``delta.length_unit``).

    ``dropout_replay``: False (the default, and how mt-dnn's code ran SMART) draws new dropout masks in the
    perturbed passes, so the divergence also measures two dropout samples of the model (an R-Drop-like
    consistency term on top of the perturbation); True replays the clean pass's masks, so the divergence
    measures the perturbation alone.
    """

    alpha: float = 1.0
    k: int = 1
    step_size: float = 1e-3
    noise_var: float = 1e-5
    epsilon: float = 1e-5
    p_norm: PNorm = PNorm.INF
    norm_level: NormLevel = NormLevel.TOKEN
    dropout_replay: bool = False
    radius: Radius = Radius.ABSOLUTE

    def __post_init__(self) -> None:
        object.__setattr__(self, "p_norm", PNorm(self.p_norm))
        object.__setattr__(self, "norm_level", NormLevel(self.norm_level))
        object.__setattr__(self, "radius", Radius(self.radius))
        if self.k < 1:
            raise ValueError(f"SMART needs at least one inner step (k >= 1), got {self.k}")
        for name in ("alpha", "step_size", "noise_var", "epsilon"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"SMART {name} must be a finite number >= 0, got {value}")


@dataclass
class AdversarialResult:
    """What one regularised forward returns. Every field is a tensor on the model's device (no host sync).

    ``outputs``: the clean outputs, with their graph, for the task loss. ``loss``: ``alpha * R``, ready to add
    to it. ``divergence``: ``R`` detached, for logs. ``delta_ratio``: ||delta|| / ||embedding output|| over
    the batch's real positions. ``skipped``: 1.0 when a non-finite inner gradient dropped the term, else 0.0.
    ``delta``: the final perturbation (detached; zero on padding).
    """

    outputs: Tensor
    loss: Tensor
    divergence: Tensor
    delta_ratio: Tensor
    skipped: Tensor
    delta: Tensor


class SmartPerturbation:
    """``SmartPerturbation(target, config)(run, divergence, token_mask)`` -> ``AdversarialResult``.

    ``token_mask`` (1 = real position; e.g. the attention mask ``[B, L]``) has the shape of ``target``'s
    output without its last axis; padded positions are never perturbed. ``inner_loss_scale`` multiplies the
    inner divergence before its gradient (which is normalised, so the scale cancels): with fp16 pass the loss
    scale so the tiny inner gradient does not underflow. ``adversarial_run`` runs the perturbed passes when
    they must not go through the clean pass's wrapper (DDP: only the clean pass prepares the reducer; the
    inner passes make no parameter gradient, and the final branch's gradients meet the clean branch's in the
    one backward). ``noise_seeds`` (one int per row of the target's output) draws each row's initial noise
    from its own generator, so a row's noise does not depend on which batch, rank or padding it came with
    (DDP on N ranks then equals one process on the same global batch); without it the global RNG is used.
    """

    def __init__(self, target: nn.Module, config: SmartConfig | None = None) -> None:
        self.target = target
        self.config = config or SmartConfig()

    def __call__(
        self,
        run: Callable[[], Tensor],
        divergence: Divergence,
        token_mask: Tensor | None = None,
        *,
        inner_loss_scale: float | Tensor = 1.0,
        adversarial_run: Callable[[], Tensor] | None = None,
        noise_seeds: Sequence[int] | None = None,
    ) -> AdversarialResult:
        config = self.config
        perturbed_run = adversarial_run or run
        rng = RngSnapshot.capture(device_of(self.target, token_mask)) if config.dropout_replay else None
        with capture_output(self.target) as captured:
            outputs = run()
        embedded = captured.value
        assert embedded is not None  # capture_output checked that the target ran once
        mask = position_mask(token_mask, embedded)
        unit = length_unit(config.radius, embedded, mask, config.p_norm, config.norm_level)
        step_size, epsilon = scale_length(config.step_size, unit), scale_length(config.epsilon, unit)
        noise_scale = scale_length(config.noise_var, noise_unit(config.radius, embedded, mask))

        delta = initial_noise(embedded, noise_seeds, mask) * noise_scale * mask
        finite = torch.ones((), dtype=torch.bool, device=embedded.device)
        target_outputs = outputs.detach()
        for _ in range(config.k):
            delta.requires_grad_(True)
            adversarial = run_with_delta(self.target, perturbed_run, delta * mask, rng)
            inner = divergence(adversarial, target_outputs)
            (grad,) = torch.autograd.grad(inner * inner_loss_scale, delta)
            grad, step_finite = finite_or_zero(grad)
            finite = finite & step_finite
            step = normalize(grad, config.p_norm, config.norm_level)
            delta = project(delta.detach() + step_size * step, config.p_norm, epsilon, config.norm_level)
        # A non-finite inner gradient turns the term off for this batch: delta 0, term 0, gradients finite.
        delta = torch.where(finite, delta, 0.0) * mask
        adversarial = run_with_delta(self.target, perturbed_run, delta, rng)
        value = divergence(adversarial, outputs)
        value = torch.where(finite, value, 0.0)
        return AdversarialResult(
            outputs=outputs,
            loss=config.alpha * value,
            divergence=value.detach(),
            delta_ratio=delta_ratio(delta, embedded, mask),
            skipped=(~finite).float(),
            delta=delta.detach(),
        )
