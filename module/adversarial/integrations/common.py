"""What the plug-ins share: turning a divergence name (or none) into the callable a method compares with."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from data_utils.enums import LossName
from module import losses

__all__ = ["DivergenceSpec", "bernoulli_sym_kl", "default_divergence", "resolve_divergence"]

Divergence = Callable[[Tensor, Tensor], Tensor]
DivergenceSpec = LossName | str | Divergence


def bernoulli_sym_kl(outputs: Tensor, target: Tensor) -> Tensor:
    """Symmetric KL between independent Bernoulli outputs given as logits (multi-label heads).

    Per label KL(p || q) + KL(q || p) = (p - q) * (logit p - logit q), summed over labels, mean over rows.
    """
    a, b = outputs.float(), target.float()
    terms = (torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)
    return terms.reshape(terms.shape[0], -1).sum(dim=1).mean()


def default_divergence(outputs: Tensor) -> LossName:
    """mse for a regression output (a last axis of size 1, or none), symmetric KL for class logits."""
    if outputs.dim() < 2 or outputs.shape[-1] == 1:
        return LossName.MSE
    return LossName.SYM_KL


def resolve_divergence(spec: DivergenceSpec) -> Divergence:
    """A ``LossName`` (or its spelling) from ``module.losses``, or an ``(outputs, reference) -> D``."""
    if callable(spec):
        return spec
    return functools.partial(losses.divergence, LossName(spec))
