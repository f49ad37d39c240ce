"""Norms, gradient normalisation and projection onto norm balls, per token or per sentence.

A perturbation has the shape of the perturbed module's output: ``[B, L, d]`` for word embeddings (one
``d``-vector per token), ``[B, d]`` for a plain layer. ``token`` level treats each vector along the last axis
on its own; ``sentence`` level treats each example (everything but the batch axis) as one vector. For a
``[B, d]`` output the two coincide.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import Tensor

__all__ = ["NormLevel", "PNorm", "norm", "normalize", "project"]


class PNorm(StrEnum):
    INF = "inf"
    L2 = "l2"
    L1 = "l1"


class NormLevel(StrEnum):
    TOKEN = "token"
    SENTENCE = "sentence"


def _rows(x: Tensor, level: NormLevel) -> Tensor:
    """A 2-D view: one row per vector whose norm is taken (a token's or a sentence's)."""
    if x.dim() < 2:
        raise ValueError(f"a perturbation needs a batch axis and a feature axis, got shape {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1]) if level is NormLevel.TOKEN else x.reshape(x.shape[0], -1)


def _row_norms(rows: Tensor, p: PNorm) -> Tensor:
    if p is PNorm.INF:
        return rows.abs().amax(dim=1, keepdim=True)
    return torch.linalg.vector_norm(rows, ord=2 if p is PNorm.L2 else 1, dim=1, keepdim=True)


def norm(x: Tensor, p: PNorm | str, level: NormLevel | str) -> Tensor:
    """The ``p``-norm of every token (``[B, L]`` for ``[B, L, d]``) or of every sentence (``[B]``)."""
    p, level = PNorm(p), NormLevel(level)
    return _row_norms(_rows(x, level), p).reshape(x.shape[:-1] if level is NormLevel.TOKEN else x.shape[:1])


def normalize(grad: Tensor, p: PNorm | str, level: NormLevel | str) -> Tensor:
    """``grad`` divided by its own ``p``-norm per token or per sentence; an all-zero vector stays zero.

    ``inf``: by the largest absolute entry (entries end in [-1, 1]); ``l2``/``l1``: unit ``l2``/``l1`` norm.
    """
    p, level = PNorm(p), NormLevel(level)
    rows = _rows(grad, level)
    scale = _row_norms(rows, p)
    tiny = torch.finfo(rows.dtype).tiny
    return (rows / scale.clamp_min(tiny)).reshape(grad.shape)


def project(delta: Tensor, p: PNorm | str, epsilon: float, level: NormLevel | str) -> Tensor:
    """Euclidean projection of every token's (or sentence's) vector onto the ``p``-ball of radius ``epsilon``.

    ``inf``: clamp each entry (the same at both levels); ``l2``: rescale vectors longer than ``epsilon``;
    ``l1``: the exact sort-based projection (Duchi et al. 2008) - soft-threshold by the ``theta`` that
    brings the ``l1`` norm down to ``epsilon``. Vectors already inside the ball are returned unchanged.
    """
    p, level = PNorm(p), NormLevel(level)
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if p is PNorm.INF:
        return delta.clamp(-epsilon, epsilon)
    rows = _rows(delta, level)
    if p is PNorm.L2:
        lengths = _row_norms(rows, p)
        factor = torch.where(
            lengths > epsilon, epsilon / lengths.clamp_min(torch.finfo(rows.dtype).tiny), 1.0
        )
        return (rows * factor).reshape(delta.shape)
    return _project_l1(rows, epsilon).reshape(delta.shape)


def _project_l1(rows: Tensor, epsilon: float) -> Tensor:
    magnitudes = rows.abs()
    outside = magnitudes.sum(dim=1, keepdim=True) > epsilon
    if epsilon == 0:
        return torch.zeros_like(rows)
    sorted_desc = magnitudes.sort(dim=1, descending=True).values
    cumulative = sorted_desc.cumsum(dim=1) - epsilon
    ranks = torch.arange(1, rows.shape[1] + 1, device=rows.device, dtype=rows.dtype)
    # rho = the last rank j with sorted_j > (cumsum_j - eps) / j; at least rank 1 always qualifies.
    qualifies = sorted_desc * ranks > cumulative
    rho = (qualifies * ranks).amax(dim=1, keepdim=True)
    theta = cumulative.gather(1, rho.long() - 1) / rho
    shrunk = rows.sign() * (magnitudes - theta).clamp_min(0)
    return torch.where(outside, shrunk, rows)
