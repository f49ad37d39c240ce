"""What the plug-ins share: turning a divergence name (or none) into the callable a method compares with,
and the plug-ins' Bregman switch into a ``BregmanConfig`` (or none)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from data_utils.enums import LossName
from module import losses
from module.adversarial.base import AdversarialMethod
from module.adversarial.names import AdversarialMethodName
from module.bregman import BregmanConfig

__all__ = [
    "BregmanSpec",
    "DivergenceSpec",
    "bernoulli_sym_kl",
    "default_divergence",
    "resolve_bregman",
    "resolve_divergence",
]

# None: the method's default (on for SMART, as in train.py); False / True: off / on with the defaults; a
# BregmanConfig or a mapping of its fields (mu, beta, beta_warmup, warmup_fraction, update_every,
# teacher_mode).
BregmanSpec = BregmanConfig | Mapping[str, Any] | bool | None

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


def resolve_bregman(method: AdversarialMethod, spec: BregmanSpec) -> BregmanConfig | None:
    """The Bregman proximal point's config for ``method``, or None when it is off (``mu`` 0 included).

    By default it is on for SMART (mu = 1, the paper's Alg. 1 and ``train.py``'s default) and off for the
    other methods. Raises ``ValueError`` for unknown fields, and for a method without a clean forward pass
    (FreeAT, YOPO, FreeLB), whose outputs the term would compare.
    """
    if spec is None:
        spec = method.name == AdversarialMethodName.SMART
    if spec is False:
        return None
    if spec is True:
        config = BregmanConfig()
    elif isinstance(spec, BregmanConfig):
        config = spec
    else:
        known = [item.name for item in dataclasses.fields(BregmanConfig)]
        unknown = sorted(set(spec) - set(known))
        if unknown:
            raise ValueError(f"the Bregman term takes no {unknown[0]!r} (its fields: {', '.join(known)})")
        config = BregmanConfig(**spec)
    if not config.mu:
        return None
    if method.owns_backward:
        raise ValueError(
            f"the Bregman term compares the clean outputs with the teacher's; {method.name} runs only "
            "perturbed passes (turn it off: bregman=False)"
        )
    return config
