"""Does a perturbation survive the precision of the forward it enters?

Under bf16/fp16 autocast the first matmul after the embeddings rounds its input to the half-precision
dtype. A perturbation much smaller than that dtype's resolution at the embeddings' scale (machine epsilon
relative to the values it is added to) is rounded away: the "adversarial" passes then equal the clean one up
to rounding noise, and the inner gradient points nowhere (measured by ``experiments/bench/precision.py``).
A loss scale prevents the *gradient* from underflowing, not the *perturbation* from being lost. SMART's
paper radius, 1e-5, is about 2e-5 of a MiniLM token's norm, far below bf16's 7.8e-3 and fp16's 9.8e-4.
"""

from __future__ import annotations

import torch

__all__ = ["resolution", "resolution_warning"]


def resolution(dtype: torch.dtype) -> float:
    """The relative resolution of ``dtype``: the gap between 1 and the next representable number."""
    return float(torch.finfo(dtype).eps)


def resolution_warning(method: str, delta_ratio: float, dtype: torch.dtype) -> str | None:
    """One warning line when a perturbation of relative size ``delta_ratio`` (||delta|| / ||embeddings||)
    is below ``dtype``'s resolution, else None. A ratio of 0 (no perturbation, e.g. R-Drop) is not warned."""
    floor = resolution(dtype)
    if delta_ratio <= 0 or delta_ratio >= floor:
        return None
    name = str(dtype).removeprefix("torch.")
    return (
        f"{method}: the perturbation is {delta_ratio:.1e} of the embeddings' norm (delta_ratio), below "
        f"{name}'s resolution {floor:.1e}: under autocast it is rounded away in the first layer, so the "
        f"adversarial term sees no perturbation (it only compares dropout samples, if any). Use "
        f"--adv_radius relative with --adv_epsilon/--adv_step_size/--adv_noise_var of at least "
        f"{2 * floor:.0e}, or train in fp32"
    )
