"""Virtual adversarial methods - the perturbation attacks the model's own output, not the labels: SMART,
ALUM (SMART's inner loop without the Bregman step) and R3F/R4F (random noise, no ascent); and R-Drop, their
control without any perturbation (two dropout samples of the model made consistent)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor, nn

from module.adversarial.base import AdversarialBatch, AdversarialMethod, AdversarialStep
from module.adversarial.delta import delta_ratio, noise_unit, position_mask, run_with_delta, scale_length
from module.adversarial.gradient_attacks import check_non_negative
from module.adversarial.hooks import capture_output
from module.adversarial.names import AdversarialMethodName
from module.adversarial.norms import Radius
from module.adversarial.site import AdversarialSite, MissingSitePart, SitePart, as_site
from module.adversarial.smart import SmartConfig, SmartPerturbation

__all__ = [
    "ALUM",
    "ALUMConfig",
    "NoiseType",
    "R3F",
    "R3FConfig",
    "R4F",
    "RDrop",
    "RDropConfig",
    "Smart",
    "check_is_head",
    "is_spectrally_normalized",
    "spectral_normalize",
]


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
        task = batch.loss(result.outputs)
        return AdversarialStep(task + result.loss, result.outputs, False, stats, result.delta, task.detach())


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
    z ~ N(0, sigma^2 I) or U(-sigma, sigma); the paper's sigma = 1e-5 (``radius absolute``) and alpha (their
    lambda) in {0.1, 0.5, 1, 5}, default 1. ``noise_var`` keeps our flag name for sigma (a standard
    deviation). An absolute 1e-5 is ~2e-4 of a MiniLM token's norm, below the resolution of bf16 and fp16
    forwards (the noise is rounded away) and of the same order as nothing in fp32, so the term is mostly a
    dropout-consistency one. The default reads sigma relative to each token's root-mean-square coordinate:
    0.01, noise of about 1% of the token's norm."""

    alpha: float = 1.0
    noise_var: float = 0.01
    noise_type: NoiseType = NoiseType.NORMAL
    radius: Radius = Radius.RELATIVE

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_type", NoiseType(self.noise_type))
        object.__setattr__(self, "radius", Radius(self.radius))
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
        delta = self._noise(output) * scale_length(1.0, noise_unit(self.config.radius, output, mask)) * mask
        value = divergence(run_with_delta(self.target, batch.inner_run, delta), outputs)
        task = batch.loss(outputs)
        loss = task + self.config.alpha * value
        stats = {
            "adv_loss": value.detach(),
            "delta_ratio": delta_ratio(delta, output, mask),
            "adv_skipped": torch.zeros((), device=output.device),
        }
        return AdversarialStep(loss, outputs, False, stats, delta, task.detach())

    def _noise(self, output: Tensor) -> Tensor:
        sigma = self.config.noise_var
        if self.config.noise_type is NoiseType.NORMAL:
            return torch.randn(output.shape, device=output.device, dtype=torch.float32) * sigma
        return (torch.rand(output.shape, device=output.device, dtype=torch.float32) * 2 - 1) * sigma


class R4F(R3F):
    """R3F plus spectral normalisation of the task heads' linear layers (``prepare(site)``)."""

    name = AdversarialMethodName.R4F

    def prepare(self, site: AdversarialSite | nn.Module) -> None:
        """Spectrally normalise every one of ``site.heads`` (at least one); a module that holds the perturbed
        target or any embedding (an encoder, the whole model) is refused: R4F constrains the heads only."""
        site = as_site(site, self.target)
        if not site.heads:
            raise MissingSitePart(self.name, SitePart.HEADS, "R4F spectrally normalises the task heads")
        for head in site.heads:
            check_is_head(head, self.target)
        for head in site.heads:
            spectral_normalize(head)


def check_is_head(head: nn.Module, target: nn.Module) -> None:
    """Raise ``ValueError`` when ``head`` contains ``target`` or an embedding layer (it is not a head)."""
    name = type(head).__name__
    if any(module is target for module in head.modules()):
        raise ValueError(f"R4F: {name} contains the perturbed module; pass the task head, not the model")
    if any(isinstance(module, nn.Embedding | nn.EmbeddingBag) for module in head.modules()):
        raise ValueError(f"R4F: {name} holds an embedding layer (an encoder?); pass the task head only")


@dataclass(frozen=True)
class RDropConfig:
    """R-Drop (Liang et al. 2021, arXiv:2106.14448): two forward passes of the same batch with independent
    dropout masks, ``mean(J(f1), J(f2)) + alpha * D(f1, f2)`` with gradients through both passes. ``D`` is the
    task's divergence: symmetric KL ``KL(p1||p2) + KL(p2||p1)`` for classification and ranking, squared error
    for regression. The paper writes ``J1 + J2 + a/2 * D``; halved, that is ``alpha = a / 4`` here. The
    default ``alpha`` = 1 is SMART's weight: SMART at a tiny epsilon without dropout replay computes nearly
    the same term (its perturbed pass is a second dropout sample), so R-Drop is the control for that
    effect."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_non_negative("R-Drop", self, "alpha")


class RDrop(AdversarialMethod):
    """Two dropout samples, both trained on the task, pulled together; no perturbation (``delta_ratio`` 0).
    Without dropout (eval mode, or dropout 0) the two passes agree and the term is 0."""

    name = AdversarialMethodName.RDROP

    def __init__(self, target: nn.Module, config: RDropConfig | None = None) -> None:
        super().__init__(target)
        self.config = config or RDropConfig()

    def __call__(self, batch: AdversarialBatch) -> AdversarialStep:
        divergence = batch.require_divergence(self.name)
        outputs = batch.run()
        second = batch.inner_run()  # new dropout masks: the global RNG has moved on
        value = divergence(outputs, second)
        task = (batch.loss(outputs) + batch.loss(second)) / 2
        loss = task + self.config.alpha * value
        zero = torch.zeros((), device=outputs.device)
        stats = {"adv_loss": value.detach(), "delta_ratio": zero, "adv_skipped": zero}
        return AdversarialStep(loss, outputs, False, stats, None, task.detach())


def spectral_normalize(head: nn.Module) -> None:
    """Reparametrise every ``nn.Linear`` in ``head`` as W / sigma_max(W) (one power iteration per forward)."""
    linears = [module for module in head.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"R4F: {type(head).__name__} has no nn.Linear layer to normalise")
    for module in linears:
        if not torch.nn.utils.parametrize.is_parametrized(module, "weight"):
            torch.nn.utils.parametrizations.spectral_norm(module)


def is_spectrally_normalized(head: nn.Module) -> bool:
    """Whether every ``nn.Linear`` in ``head`` (at least one) has its weight reparametrised, as
    ``spectral_normalize`` leaves it."""
    linears = [module for module in head.modules() if isinstance(module, nn.Linear)]
    return bool(linears) and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in linears)
