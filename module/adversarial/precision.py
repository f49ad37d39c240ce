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

import math

import torch

__all__ = ["resolution", "resolution_warning"]


def resolution(dtype: torch.dtype) -> float:
    """The relative resolution of ``dtype``: the gap between 1 and the next representable number."""
    return float(torch.finfo(dtype).eps)


# Below this many resolutions a perturbation is partly rounded away (SMART's inner-gradient cosine under bf16
# is 0.41..0.78 at 1.3 resolutions, >= 0.98 at 13; fp16 0.97..0.99 at 10). 2 keeps the relative defaults
# (1-2.3% of the norm) quiet under fp16 and warns for the 1% ones under bf16.
MARGIN = 2.0


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
        f"{_round_up(MARGIN * floor)}, or train in fp32"
    )


def _round_up(value: float) -> str:
    """``value`` rounded up to two significant digits (a threshold the hint's value clears)."""
    exponent = math.floor(math.log10(value)) - 1
    return f"{math.ceil(value / 10**exponent) * 10**exponent:.2g}"
