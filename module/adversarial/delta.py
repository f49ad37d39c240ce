"""Shared mechanics of a perturbation: which positions it may touch, how big it is, and running with it."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from module.adversarial.hooks import RngSnapshot, add_to_output, capture_output
from module.adversarial.norms import NormLevel, PNorm, Radius, keepdim_shape, norm

__all__ = [
    "PerturbedOutput",
    "delta_ratio",
    "device_of",
    "finite_or_zero",
    "initial_noise",
    "length_unit",
    "noise_unit",
    "perturb_output",
    "position_mask",
    "run_with_delta",
    "scale_length",
]


def position_mask(token_mask: Tensor | None, output: Tensor) -> Tensor:
    """``[..., 1]`` fp32 mask over the target output's positions (all ones without a token mask)."""
    if token_mask is None:
        return torch.ones((*output.shape[:-1], 1), device=output.device, dtype=torch.float32)
    if token_mask.shape != output.shape[:-1]:
        raise ValueError(
            f"token_mask shape {tuple(token_mask.shape)} does not match the perturbed output "
            f"{tuple(output.shape)} without its last axis"
        )
    return token_mask.to(device=output.device, dtype=torch.float32).unsqueeze(-1)


def delta_ratio(delta: Tensor, output: Tensor, mask: Tensor) -> Tensor:
    """||delta|| / ||output|| over the real positions (detached, fp32)."""
    size = torch.linalg.vector_norm(output.detach().float() * mask)
    return (
        torch.linalg.vector_norm(delta.detach().float()) / size.clamp_min(torch.finfo(torch.float32).tiny)
    ).detach()


def _rms(output: Tensor, mask: Tensor, level: NormLevel) -> Tensor:
    """Root-mean-square coordinate of each vector at ``level`` over its real positions (``keepdim_shape``)."""
    shape = keepdim_shape(output.shape, level)
    squares = norm(output, PNorm.L2, level).reshape(shape) ** 2
    count = norm(mask.expand_as(output), PNorm.L1, level).reshape(shape)
    return torch.sqrt(squares / count.clamp_min(1.0))


def length_unit(
    radius: Radius | str, output: Tensor, mask: Tensor, p_norm: PNorm | str, level: NormLevel | str
) -> float | Tensor:
    """What a length of 1 is in this batch: 1.0 for an absolute radius; for a relative one the clean output's
    own size per vector at ``level`` (real positions only; detached fp32, shaped ``keepdim_shape``): its l2
    (l1) norm for an l2 (l1) ball, its root-mean-square coordinate for an inf ball or a sign step. So a
    relative radius r keeps ``delta_ratio`` <= r (l2) and moves no coordinate by more than r times the
    typical coordinate (inf), whatever the encoder's embedding scale."""
    if Radius(radius) is Radius.ABSOLUTE:
        return 1.0
    p_norm, level = PNorm(p_norm), NormLevel(level)
    x = output.detach().float() * mask
    if p_norm is PNorm.INF:
        return _rms(x, mask, level)
    return norm(x, p_norm, level).reshape(keepdim_shape(x.shape, level))


def noise_unit(radius: Radius | str, output: Tensor, mask: Tensor) -> float | Tensor:
    """The scale of initial noise per coordinate: 1.0 (absolute), or each token's root-mean-square
    coordinate (relative), so that noise of scale sigma has about ``sigma`` times a token's norm."""
    if Radius(radius) is Radius.ABSOLUTE:
        return 1.0
    return _rms(output.detach().float() * mask, mask, NormLevel.TOKEN)


def scale_length(epsilon: float, unit: float | Tensor) -> float | Tensor:
    """``epsilon * unit``; an infinite radius stays the float inf (no bound), whatever the unit."""
    return epsilon if math.isinf(epsilon) or isinstance(unit, float) and unit == 1.0 else epsilon * unit


def finite_or_zero(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(``grad`` with every entry zeroed if any is non-finite, the bool "all finite") - no host sync."""
    finite = torch.isfinite(grad).all()
    return torch.where(finite, grad, 0.0), finite


@dataclass
class PerturbedOutput:
    """The target's output (with its graph) and the delta that was added to it, once the pass has run."""

    output: Tensor | None = None
    delta: Tensor | None = None


@contextlib.contextmanager
def perturb_output(target: nn.Module, make_delta: Callable[[Tensor], Tensor]) -> Iterator[PerturbedOutput]:
    """While the block runs, ``target``'s output ``o`` becomes ``o + make_delta(o)`` (``make_delta`` sees the
    output detached and returns an fp32 tensor of its shape, e.g. a fresh leaf that requires grad). The
    target must run exactly once in the block."""
    seen = PerturbedOutput()

    def hook(module: nn.Module, args: object, output: object) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(f"the perturbed module {type(module).__name__} must return a single tensor")
        seen.output = output
        seen.delta = make_delta(output.detach())
        return output + seen.delta.to(output.dtype)

    with capture_output(target):  # checks that the target runs exactly once
        handle = target.register_forward_hook(hook)
        try:
            yield seen
        finally:
            handle.remove()


def run_with_delta(
    target: nn.Module, run: Callable[[], Tensor], delta: Tensor, rng: RngSnapshot | None = None
) -> Tensor:
    """``run()`` with ``delta`` added to ``target``'s output (replaying ``rng``'s dropout masks if given)."""
    with add_to_output(target, delta):
        if rng is None:
            return run()
        with rng.replay():
            return run()


def initial_noise(
    output: Tensor, seeds: Sequence[int] | None, mask: Tensor, distribution: str = "normal"
) -> Tensor:
    """Noise shaped like ``output`` (fp32): standard normal, or ``"uniform"`` on [-1, 1); zero on padding.

    With ``seeds`` (one per row) each row draws exactly one vector per real position (``mask``), in order,
    from its own generator, so its noise does not depend on the batch, rank or padding it came with.
    """

    def draw(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        if distribution == "uniform":
            return torch.rand(shape, generator=generator, device=output.device) * 2 - 1
        return torch.randn(shape, generator=generator, device=output.device)

    if seeds is None:
        return draw(tuple(output.shape), None) * mask
    if len(seeds) != output.shape[0]:
        raise ValueError(f"{len(seeds)} noise seeds for {output.shape[0]} rows")
    real = mask.squeeze(-1).bool()
    counts = real.reshape(real.shape[0], -1).sum(dim=1).tolist()
    generator = torch.Generator(device=output.device)
    noise = torch.zeros(output.shape, device=output.device, dtype=torch.float32)
    for row, (seed, count) in enumerate(zip(seeds, counts, strict=True)):
        generator.manual_seed(int(seed))
        noise[row][real[row]] = draw((int(count), output.shape[-1]), generator)
    return noise


def device_of(target: nn.Module, token_mask: Tensor | None) -> torch.device:
    """Where a batch runs: the token mask's device, else the target's parameters' (CPU without either)."""
    if token_mask is not None:
        return token_mask.device
    parameter = next(target.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
