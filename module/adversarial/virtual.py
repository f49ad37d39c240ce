"""Virtual adversarial methods - the perturbation attacks the model's own output, not the labels: SMART,
ALUM (SMART's inner loop without the Bregman step) and R3F/R4F (random noise, no ascent)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor, nn

from module.adversarial.base import AdversarialBatch, AdversarialMethod, AdversarialStep
from module.adversarial.delta import delta_ratio, position_mask, run_with_delta
from module.adversarial.gradient_attacks import check_non_negative
from module.adversarial.hooks import capture_output
from module.adversarial.names import AdversarialMethodName
from module.adversarial.smart import SmartConfig, SmartPerturbation

__all__ = ["ALUM", "ALUMConfig", "NoiseType", "R3F", "R3FConfig", "R4F", "Smart", "spectral_normalize"]


class Smart(AdversarialMethod):
    """SMART (Jiang et al. 2020, arXiv:1911.03437): ``J(x) + alpha R`` from ``SmartPerturbation``. The
    Bregman proximal step is the training loop's (``module.bregman``), not the perturbation's."""

    name = AdversarialMethodName.SMART
    config_type: type[SmartConfig] = SmartConfig

    def __init__(self, target: nn.Module, config: SmartConfig | None = None) -> None:
        super().__init__(target)
        self.config = config or self.config_type()
        self.perturbation = SmartPerturbation(target, self.config)

    def __call__(self, batch: AdversarialBatch) -> AdversarialStep:
        result = self.perturbation(
            batch.run,
            batch.require_divergence(self.name),
            batch.token_mask,
            inner_loss_scale=batch.inner_loss_scale,
            adversarial_run=batch.perturbed_run,
            noise_seeds=batch.noise_seeds,
        )
        stats = {
            "adv_loss": result.divergence,
            "delta_ratio": result.delta_ratio,
            "adv_skipped": result.skipped,
        }
        loss = batch.loss(result.outputs) + result.loss
        return AdversarialStep(loss, result.outputs, False, stats, result.delta)


@dataclass(frozen=True)
class ALUMConfig(SmartConfig):
    """ALUM (Liu et al. 2020, arXiv:2004.08994), Alg. 1: the same inner loop as SMART - sigma = 1e-5,
    one l-inf ascent step of 1e-3, eps = 1e-5 - with ``alpha`` = 1 for fine-tuning; the paper uses 10 for
    continued pre-training (``ALUMConfig.for_pretraining()``)."""

    @classmethod
    def for_pretraining(cls) -> ALUMConfig:
        return cls(alpha=10.0)


class ALUM(Smart):
    """Virtual adversarial training on the embeddings (KL to the detached clean output), no Bregman step."""

    name = AdversarialMethodName.ALUM
    config_type = ALUMConfig


class NoiseType(StrEnum):
    NORMAL = "normal"
    UNIFORM = "uniform"


@dataclass(frozen=True)
class R3FConfig:
    """R3F (Aghajanyan et al. 2021, arXiv:2008.03156): ``J(x) + alpha KL_S(f(x) || f(x + z))`` with
    z ~ N(0, sigma^2 I) or U(-sigma, sigma); the paper's sigma = 1e-5 and alpha (their lambda) in
    {0.1, 0.5, 1, 5}, default 1. ``noise_var`` keeps our flag name for sigma (a standard deviation)."""

    alpha: float = 1.0
    noise_var: float = 1e-5
    noise_type: NoiseType = NoiseType.NORMAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_type", NoiseType(self.noise_type))
        check_non_negative("R3F", self, "alpha", "noise_var")
        if not math.isfinite(self.noise_var):
            raise ValueError(f"R3F noise_var must be finite, got {self.noise_var}")


class R3F(AdversarialMethod):
    """Noise instead of an ascent: two forwards, the divergence backpropagated through both."""

    name = AdversarialMethodName.R3F

    def __init__(self, target: nn.Module, config: R3FConfig | None = None) -> None:
        super().__init__(target)
        self.config = config or R3FConfig()

    def __call__(self, batch: AdversarialBatch) -> AdversarialStep:
        divergence = batch.require_divergence(self.name)
        with capture_output(self.target) as captured:
            outputs = batch.run()
        assert captured.value is not None
        output = captured.value
        mask = position_mask(batch.token_mask, output)
        delta = self._noise(output) * mask
        value = divergence(run_with_delta(self.target, batch.inner_run, delta), outputs)
        loss = batch.loss(outputs) + self.config.alpha * value
        stats = {
            "adv_loss": value.detach(),
            "delta_ratio": delta_ratio(delta, output, mask),
            "adv_skipped": torch.zeros((), device=output.device),
        }
        return AdversarialStep(loss, outputs, False, stats, delta)

    def _noise(self, output: Tensor) -> Tensor:
        sigma = self.config.noise_var
        if self.config.noise_type is NoiseType.NORMAL:
            return torch.randn(output.shape, device=output.device, dtype=torch.float32) * sigma
        return (torch.rand(output.shape, device=output.device, dtype=torch.float32) * 2 - 1) * sigma


class R4F(R3F):
    """R3F plus spectral normalisation of the classification head's linear layers (``prepare(head)``)."""

    name = AdversarialMethodName.R4F

    def prepare(self, model: nn.Module) -> None:
        spectral_normalize(model)


def spectral_normalize(head: nn.Module) -> None:
    """Reparametrise every ``nn.Linear`` in ``head`` as W / sigma_max(W) (one power iteration per forward)."""
    linears = [module for module in head.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"R4F: {type(head).__name__} has no nn.Linear layer to normalise")
    for module in linears:
        if not torch.nn.utils.parametrize.is_parametrized(module, "weight"):
            torch.nn.utils.parametrizations.spectral_norm(module)
