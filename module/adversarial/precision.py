"""Does a perturbation survive the precision of the forward it enters?

Under bf16/fp16 autocast the first matmul after the embeddings rounds its input to the half-precision
dtype. A perturbation near or below that dtype's resolution relative to the values it is added to (machine
epsilon: bf16 7.8e-3, fp16 9.8e-4) is rounded away, wholly or in part: the "adversarial" passes then equal
the clean one up to rounding noise, and SMART's inner gradient points nowhere. A loss scale prevents the
*gradient* from underflowing, not the *perturbation* from being lost. Measured on MiniLM-L6
(``experiments/bench/perturbation.py``, docs/results/perturbation_minilm.json): the cosine of SMART's inner
gradient to the fp32 one is -0.14..0.27 (bf16) and -0.03..0.17 (fp16) at the paper's sigma = 1e-5 (1.7e-4
of a token's norm); 0.41..0.78 (bf16) and 0.97..0.99 (fp16) at 1e-2 of the norm; >= 0.98 for both at 1e-1.
"""

from __future__ import annotations

import torch

__all__ = ["resolution", "resolution_warning"]


def resolution(dtype: torch.dtype) -> float:
    """The relative resolution of ``dtype``: the gap between 1 and the next representable number."""
    return float(torch.finfo(dtype).eps)


# Below this many resolutions a perturbation is partly rounded away (SMART's inner-gradient cosine < ~0.8).
MARGIN = 4.0


def resolution_warning(method: str, delta_ratio: float, dtype: torch.dtype) -> str | None:
    """One warning line when a perturbation of relative size ``delta_ratio`` (||delta|| / ||embeddings||)
    is below ``MARGIN`` times ``dtype``'s resolution, else None. A ratio of 0 (no perturbation, e.g.
    R-Drop) is not warned."""
    floor = resolution(dtype)
    if delta_ratio <= 0 or delta_ratio >= MARGIN * floor:
        return None
    name = str(dtype).removeprefix("torch.")
    how = "below" if delta_ratio < floor else f"within {MARGIN:g}x of"
    lost = "rounded away" if delta_ratio < floor else "partly rounded away"
    return (
        f"{method}: the perturbation is {delta_ratio:.1e} of the embeddings' norm (delta_ratio), {how} "
        f"{name}'s resolution {floor:.1e}: under autocast it is {lost} in the first layer, so the "
        f"adversarial term sees little or none of it (it still compares dropout samples, if any). Use "
        f"--adv_radius relative with --adv_epsilon/--adv_step_size/--adv_noise_var of at least "
        f"{MARGIN * floor:.0e}, or train in fp32"
    )
