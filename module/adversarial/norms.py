"""Norms, gradient normalisation and projection onto norm balls, per token or per sentence.

A perturbation has the shape of the perturbed module's output: ``[B, L, d]`` for word embeddings (one
``d``-vector per token), ``[B, d]`` for a plain layer. ``token`` level treats each vector along the last axis
on its own; ``sentence`` level treats each example (everything but the batch axis) as one vector; ``batch``
level treats the whole batch as one vector (the normalisation of the widely copied FGM/PGD recipes, which
divide the embedding matrix's gradient by its norm). For a ``[B, d]`` output token and sentence coincide.

A radius ``epsilon`` is a float, or a tensor broadcastable to ``x`` with one value per vector
(``keepdim_shape``): a relative radius (``Radius.RELATIVE``) is a fraction of each vector's own size.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import Tensor

__all__ = ["NormLevel", "PNorm", "Radius", "keepdim_shape", "norm", "normalize", "project"]


class PNorm(StrEnum):
    INF = "inf"
    L2 = "l2"
    L1 = "l1"


class NormLevel(StrEnum):
    TOKEN = "token"
    SENTENCE = "sentence"
    BATCH = "batch"


class Radius(StrEnum):
    """How a method's lengths (radius, step size, noise scale) are read: as absolute values in the
    embedding space, or as fractions of the clean output's own size at the norm's level (see
    ``module.adversarial.delta.length_unit``), which fits any encoder's embedding scale."""

    ABSOLUTE = "absolute"
    RELATIVE = "relative"


def _rows(x: Tensor, level: NormLevel) -> Tensor:
    """A 2-D view: one row per vector whose norm is taken (a token's, a sentence's or the batch's)."""
    if x.dim() < 2:
        raise ValueError(f"a perturbation needs a batch axis and a feature axis, got shape {tuple(x.shape)}")
    if level is NormLevel.TOKEN:
        return x.reshape(-1, x.shape[-1])
    if level is NormLevel.SENTENCE:
        return x.reshape(x.shape[0], -1)
    return x.reshape(1, -1)


def keepdim_shape(shape: torch.Size | tuple[int, ...], level: NormLevel | str) -> tuple[int, ...]:
    """The shape of one value per vector, broadcastable to ``shape``: ``[B, L, 1]`` for tokens of a
    ``[B, L, d]`` tensor, ``[B, 1, 1]`` for sentences, ``[1, 1, 1]`` for the batch."""
    level = NormLevel(level)
    if level is NormLevel.TOKEN:
        return (*shape[:-1], 1)
    if level is NormLevel.SENTENCE:
        return (shape[0], *([1] * (len(shape) - 1)))
    return tuple([1] * len(shape))


def _radius_rows(epsilon: float | Tensor, x: Tensor, level: NormLevel) -> float | Tensor:
    """``epsilon`` as one value per row of ``_rows(x, level)`` (``[N, 1]``), or the float itself."""
    if not isinstance(epsilon, Tensor):
        return epsilon
    return epsilon.to(x.dtype).expand(keepdim_shape(x.shape, level)).reshape(-1, 1)


def _row_norms(rows: Tensor, p: PNorm) -> Tensor:
    if p is PNorm.INF:
        return rows.abs().amax(dim=1, keepdim=True)
    return torch.linalg.vector_norm(rows, ord=2 if p is PNorm.L2 else 1, dim=1, keepdim=True)


def norm(x: Tensor, p: PNorm | str, level: NormLevel | str) -> Tensor:
    """The ``p``-norm of every token (``[B, L]`` for ``[B, L, d]``), every sentence (``[B]``) or of the
    whole batch (a scalar)."""
    p, level = PNorm(p), NormLevel(level)
    norms = _row_norms(_rows(x, level), p)
    if level is NormLevel.BATCH:
        return norms.reshape(())
    return norms.reshape(x.shape[:-1] if level is NormLevel.TOKEN else x.shape[:1])


def normalize(grad: Tensor, p: PNorm | str, level: NormLevel | str) -> Tensor:
    """``grad`` divided by its own ``p``-norm per token or per sentence; an all-zero vector stays zero.

    ``inf``: by the largest absolute entry (entries end in [-1, 1]); ``l2``/``l1``: unit ``l2``/``l1`` norm.
    """
    p, level = PNorm(p), NormLevel(level)
    rows = _rows(grad, level)
    scale = _row_norms(rows, p)
    tiny = torch.finfo(rows.dtype).tiny
    return (rows / scale.clamp_min(tiny)).reshape(grad.shape)


def project(delta: Tensor, p: PNorm | str, epsilon: float | Tensor, level: NormLevel | str) -> Tensor:
    """Euclidean projection of every token's (sentence's, batch's) vector onto the ``p``-ball of radius
    ``epsilon`` (a float, or one radius per vector: a tensor broadcastable to ``keepdim_shape``).

    ``inf``: clamp each entry; ``l2``: rescale vectors longer than ``epsilon``; ``l1``: the exact sort-based
    projection (Duchi et al. 2008) - soft-threshold by the ``theta`` that brings the ``l1`` norm down to
    ``epsilon``. Vectors already inside the ball are returned unchanged.
    """
    p, level = PNorm(p), NormLevel(level)
    if not isinstance(epsilon, Tensor) and epsilon < 0:  # a tensor radius: a norm, unchecked
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if p is PNorm.INF:
        if isinstance(epsilon, Tensor):
            bound = epsilon.to(delta.dtype).expand(keepdim_shape(delta.shape, level))
            return torch.maximum(torch.minimum(delta, bound), -bound)
        return delta.clamp(-epsilon, epsilon)
    rows = _rows(delta, level)
    radius = _radius_rows(epsilon, delta, level)
    if p is PNorm.L2:
        lengths = _row_norms(rows, p)
        factor = torch.where(lengths > radius, radius / lengths.clamp_min(torch.finfo(rows.dtype).tiny), 1.0)
        return (rows * factor).reshape(delta.shape)
    return _project_l1(rows, radius).reshape(delta.shape)


def _project_l1(rows: Tensor, epsilon: float | Tensor) -> Tensor:
    magnitudes = rows.abs()
    outside = magnitudes.sum(dim=1, keepdim=True) > epsilon
    if not isinstance(epsilon, Tensor) and epsilon == 0:
        return torch.zeros_like(rows)
    sorted_desc = magnitudes.sort(dim=1, descending=True).values
    cumulative = sorted_desc.cumsum(dim=1) - epsilon
    ranks = torch.arange(1, rows.shape[1] + 1, device=rows.device, dtype=rows.dtype)
    # rho = the last rank j with sorted_j > (cumsum_j - eps) / j; at least rank 1 always qualifies.
    qualifies = sorted_desc * ranks > cumulative
    rho = (qualifies * ranks).amax(dim=1, keepdim=True).clamp_min(1)  # a zero radius: rank 1 (theta = max)
    theta = cumulative.gather(1, rho.long() - 1) / rho
    shrunk = rows.sign() * (magnitudes - theta).clamp_min(0)
    return torch.where(outside, shrunk, rows)
