"""One loss registry keyed by ``LossName``: task losses (vs labels) and divergences (vs another output).

Task losses are what the trainer minimises against gold labels. Divergences compare two model outputs
(clean vs perturbed in SMART/ALUM/R3F, student vs teacher in distillation, model vs EMA teacher in the
Bregman term). ``mse`` is both. Everything is computed in fp32 with autocast disabled, so the values do not
depend on the caller's mixed-precision settings; probability divergences work in log-space from
``log_softmax``, so they stay finite and exact for very confident logits (e.g. +-1e4).

Shapes: the class / candidate axis is the last one. A divergence sums over it and averages over every
leading position (for ``[B, C]`` outputs: the mean over the batch). ``mask`` (bool, same shape as the
outputs, ``True`` = a real candidate) removes padded ranking candidates from the softmax; they contribute
exactly 0.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from data_utils.enums import LOSS_ALIASES, LossName, parse_enum

__all__ = [
    "LOSSES",
    "LossFn",
    "LossKind",
    "LossSpec",
    "cross_entropy",
    "divergence",
    "get_loss",
    "js",
    "kl",
    "mse",
    "rank_cross_entropy",
    "sym_kl",
    "task_loss",
]

# Finite stand-in for -inf on padded candidates in divergences: exp() of it underflows to exactly 0 in fp32,
# while staying far from overflow, so p * (log p - log q) is 0 * finite = 0 (with -inf it would be nan).
_MASK_FILL = -1e9


class LossKind(StrEnum):
    TASK = "task"  # outputs vs gold labels
    DIVERGENCE = "divergence"  # outputs vs another output of the same shape


class LossFn(Protocol):
    def __call__(self, outputs: Tensor, other: Tensor, /, *, mask: Tensor | None = None) -> Tensor: ...


@dataclass(frozen=True)
class LossSpec:
    name: LossName
    fn: LossFn
    kinds: frozenset[LossKind]
    doc: str

    def supports(self, kind: LossKind) -> bool:
        return kind in self.kinds


def _fp32(tensor: Tensor) -> contextlib.AbstractContextManager[object]:
    """Autocast off on ``tensor``'s device, so our explicit ``.float()`` casts stick in every op."""
    device_type = tensor.device.type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _check_mask(mask: Tensor | None, outputs: Tensor, loss: str) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"{loss}: mask must be a bool tensor (True = real candidate), got {mask.dtype}")
    if mask.shape != outputs.shape:
        raise ValueError(f"{loss}: mask shape {tuple(mask.shape)} != outputs shape {tuple(outputs.shape)}")


def _no_mask(mask: Tensor | None, loss: str) -> None:
    if mask is not None:
        raise ValueError(f"{loss} takes no mask (only ranking losses and divergences mask candidates)")


# ---------------------------------------------------------------- task losses


def cross_entropy(outputs: Tensor, labels: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of logits ``[B, C]`` against class indices ``[B]`` (label -100 is ignored)."""
    _no_mask(mask, "cross_entropy")
    if outputs.dim() != 2 or labels.shape != outputs.shape[:1]:
        raise ValueError(
            f"cross_entropy: expected logits [B, C] and labels [B], "
            f"got {tuple(outputs.shape)} and {tuple(labels.shape)}"
        )
    with _fp32(outputs):
        return F.cross_entropy(outputs.float(), labels.long())


def rank_cross_entropy(outputs: Tensor, labels: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over candidates: scores ``[B, K]``, label = index of the right candidate ``[B]``.

    Padded candidates (``mask`` False) get -inf before the softmax, so they take no probability mass. A row
    whose labelled candidate is padded (or with no real candidate) has an infinite loss: that is a data bug.
    """
    if outputs.dim() != 2 or labels.shape != outputs.shape[:1]:
        raise ValueError(
            f"rank_cross_entropy: expected scores [B, K] and labels [B], "
            f"got {tuple(outputs.shape)} and {tuple(labels.shape)}"
        )
    _check_mask(mask, outputs, "rank_cross_entropy")
    with _fp32(outputs):
        scores = outputs.float()
        if mask is not None:
            scores = scores.masked_fill(~mask, -math.inf)
        return F.cross_entropy(scores, labels.long())


def mse(outputs: Tensor, target: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Mean squared error; a task loss (vs float labels) and a divergence (vs another regression output).

    Both sides are reshaped to ``[B, -1]`` first, so predictions ``[B, 1]`` against labels ``[B]`` compare
    elementwise (never broadcast to ``[B, B]``); any other shape disagreement is an error. With ``mask``
    (same shape as ``outputs``), the mean runs over the ``True`` entries only.
    """
    if outputs.dim() == 0:
        raise ValueError("mse: outputs must have a batch dimension")
    batch = outputs.shape[0]
    o = outputs.reshape(batch, -1)
    if target.dim() == 0 or target.shape[0] != batch or target.numel() != o.numel():
        raise ValueError(f"mse: outputs {tuple(outputs.shape)} and target {tuple(target.shape)} do not match")
    _check_mask(mask, outputs, "mse")
    with _fp32(outputs):
        squared = (o.float() - target.reshape(batch, -1).float()).square()
        if mask is None:
            return squared.mean()
        keep = mask.reshape(batch, -1)
        return squared.masked_fill(~keep, 0.0).sum() / keep.sum().clamp_min(1)


# ---------------------------------------------------------------- divergences


def _log_probs(outputs: Tensor, target: Tensor, mask: Tensor | None, loss: str) -> tuple[Tensor, Tensor]:
    """fp32 log-softmax of both sides over the last axis; padded candidates get (numerically) zero mass."""
    if outputs.shape != target.shape or outputs.dim() == 0:
        raise ValueError(f"{loss}: outputs {tuple(outputs.shape)} and target {tuple(target.shape)} differ")
    _check_mask(mask, outputs, loss)
    o, t = outputs.float(), target.float()
    if mask is not None:
        o = o.masked_fill(~mask, _MASK_FILL)
        t = t.masked_fill(~mask, _MASK_FILL)
    return F.log_softmax(o, dim=-1), F.log_softmax(t, dim=-1)


def _reduce(terms: Tensor, mask: Tensor | None) -> Tensor:
    """Sum per-candidate terms over the last axis (padded ones forced to exactly 0), mean over the rest."""
    if mask is not None:
        terms = terms.masked_fill(~mask, 0.0)
    return terms.sum(dim=-1).mean()


def _kl_terms(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-candidate terms of KL(p || q) = sum p * (log p - log q)."""
    return log_p.exp() * (log_p - log_q)


def kl(outputs: Tensor, target: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """KL(target || outputs) of the softmax distributions, mean over the batch.

    Same direction as ``F.kl_div(log_softmax(outputs), log_softmax(target), log_target=True,
    reduction="batchmean")``: the expectation is under ``target`` (usually the detached clean or teacher
    output), and ``outputs`` is the distribution being pulled towards it.
    """
    with _fp32(outputs):
        log_q, log_p = _log_probs(outputs, target, mask, "kl")
        return _reduce(_kl_terms(log_p, log_q), mask)


def sym_kl(outputs: Tensor, target: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """KL(p || q) + KL(q || p) of the softmax distributions, mean over the batch.

    Written as sum (p - q) * (log p - log q): every term is >= 0 and the value is exactly symmetric.
    """
    with _fp32(outputs):
        log_q, log_p = _log_probs(outputs, target, mask, "sym_kl")
        return _reduce((log_p.exp() - log_q.exp()) * (log_p - log_q), mask)


def js(outputs: Tensor, target: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Jensen-Shannon divergence 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2; in [0, ln 2]."""
    with _fp32(outputs):
        log_q, log_p = _log_probs(outputs, target, mask, "js")
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        return _reduce(0.5 * (_kl_terms(log_p, log_m) + _kl_terms(log_q, log_m)), mask)


# ---------------------------------------------------------------- registry

_TASK = frozenset({LossKind.TASK})
_DIVERGENCE = frozenset({LossKind.DIVERGENCE})

LOSSES: Mapping[LossName, LossSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            LossSpec(LossName.CROSS_ENTROPY, cross_entropy, _TASK, "cross-entropy of logits vs class index"),
            LossSpec(LossName.MSE, mse, _TASK | _DIVERGENCE, "mean squared error (regression)"),
            LossSpec(
                LossName.RANK_CROSS_ENTROPY,
                rank_cross_entropy,
                _TASK,
                "cross-entropy over (masked) candidates vs the right candidate's index",
            ),
            LossSpec(LossName.KL, kl, _DIVERGENCE, "KL(target || outputs) of softmax outputs"),
            LossSpec(LossName.SYM_KL, sym_kl, _DIVERGENCE, "symmetric KL of softmax outputs"),
            LossSpec(LossName.JS, js, _DIVERGENCE, "Jensen-Shannon divergence of softmax outputs"),
        )
    }
)


def get_loss(name: LossName | str) -> LossSpec:
    """Look a loss up by our name or mt-dnn's (``CeCriterion``, ``SymKlCriterion``); ValueError if unknown."""
    return LOSSES[name if isinstance(name, LossName) else parse_enum(LossName, name, LOSS_ALIASES)]


def _names(kind: LossKind) -> str:
    return ", ".join(spec.name.value for spec in LOSSES.values() if kind in spec.kinds)


def task_loss(name: LossName | str, outputs: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scalar task loss of ``outputs`` against gold ``labels``."""
    spec = get_loss(name)
    if LossKind.TASK not in spec.kinds:
        raise ValueError(
            f"loss {spec.name.value!r} is a divergence between two model outputs, not a task loss "
            f"against labels (task losses: {_names(LossKind.TASK)})"
        )
    return spec.fn(outputs, labels, mask=mask)


def divergence(name: LossName | str, outputs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scalar divergence of ``outputs`` from ``target`` (the caller detaches ``target`` if it should be)."""
    spec = get_loss(name)
    if LossKind.DIVERGENCE not in spec.kinds:
        raise ValueError(
            f"loss {spec.name.value!r} is a task loss against labels, not a divergence between two "
            f"model outputs (divergences: {_names(LossKind.DIVERGENCE)})"
        )
    return spec.fn(outputs, target, mask=mask)
