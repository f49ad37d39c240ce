"""Dynamic, deterministic BERT masking for ``mask_lm`` tasks, done on the batch's device.

``mask_tokens`` chooses each real, non-special token with probability ``probability`` (at least one per row
that has a candidate) and replaces a chosen token by the mask token 80% of the time, by a random vocabulary
token 10% of the time, and keeps it 10% of the time (Devlin et al. 2019). Padding and special tokens are
never chosen.

Every random number is a hash of (the row's seed, the token's position, a stream index): no generator state,
no host round trip, and a row gets the same masks whatever batch, padding width, device or rank it lands in.
The training objective seeds rows with ``example_seeds(salt, batch)`` (salt: the run's seed and epoch), so
masks change every epoch, agree across DDP ranks and repeat exactly in a resumed run.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from data_utils.errors import UserError

__all__ = ["MaskedTokens", "MaskingSpec", "mask_tokens"]

_MASK32 = 0xFFFFFFFF
# Stream indices: which uniform a position draws for which decision.
_CHOOSE, _REPLACE, _RANDOM_TOKEN = 0, 1, 2
_STREAMS = 4


@dataclass(frozen=True)
class MaskingSpec:
    """What masking needs from the tokenizer: its mask token, its special tokens and its vocabulary size."""

    mask_token_id: int
    special_ids: tuple[int, ...]
    vocab_size: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> MaskingSpec:
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
            raise UserError(f"{name}: the tokenizer has no mask token, which a mask_lm task needs")
        special = sorted({int(i) for i in tokenizer.all_special_ids})
        return cls(mask_token_id=int(mask_id), special_ids=tuple(special), vocab_size=len(tokenizer))


@dataclass(frozen=True)
class MaskedTokens:
    """``input_ids`` [B, L] with the chosen tokens replaced, ``positions`` bool [B, L] marking the chosen
    tokens, and ``targets`` [M] their original ids in row-major order (M = ``positions.sum()``)."""

    input_ids: Tensor
    positions: Tensor
    targets: Tensor


def mask_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    seeds: Sequence[int],
    *,
    mask_token_id: int,
    special_ids: Collection[int],
    vocab_size: int,
    probability: float,
) -> MaskedTokens:
    """Mask a batch ``[B, L]`` with one seed per row (see the module docstring)."""
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"mask_tokens: expected input_ids and attention_mask [B, L], "
            f"got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    if len(seeds) != input_ids.shape[0]:
        raise ValueError(f"mask_tokens: {len(seeds)} seeds for {input_ids.shape[0]} rows")
    if not 0.0 < probability < 1.0:
        raise ValueError(f"mask_tokens: probability must be in (0, 1), got {probability}")
    if vocab_size < 1:
        raise ValueError(f"mask_tokens: vocab_size must be >= 1, got {vocab_size}")
    device = input_ids.device
    n_rows, width = input_ids.shape
    keys = torch.tensor([_row_key(int(seed)) for seed in seeds], dtype=torch.int64, device=device)
    position = torch.arange(width, dtype=torch.int64, device=device)

    def draw(stream: int) -> Tensor:
        """32-bit hash of (row key, position, stream), ``[B, L]`` int64 in [0, 2**32)."""
        salt = _hash32(position * _STREAMS + stream)
        return _hash32((keys[:, None] + salt[None, :]) & _MASK32)

    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=device)
    candidates = attention_mask.bool() & ~torch.isin(input_ids, special)
    choose = _uniform(draw(_CHOOSE))
    chosen = candidates & (choose < probability)
    # A row with candidates but no chosen token gets its lowest-drawn candidate: no row goes unsupervised.
    empty = candidates.any(dim=1) & ~chosen.any(dim=1)
    lowest = torch.where(candidates, choose, 2.0).argmin(dim=1, keepdim=True)
    chosen = chosen.scatter(1, lowest, chosen.gather(1, lowest) | empty[:, None])

    replace = _uniform(draw(_REPLACE))
    random_ids = (draw(_RANDOM_TOKEN) % vocab_size).to(input_ids.dtype)
    masked = torch.where(chosen & (replace < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(chosen & (replace >= 0.8) & (replace < 0.9), random_ids, masked)
    return MaskedTokens(input_ids=masked, positions=chosen, targets=input_ids[chosen])


def _uniform(bits: Tensor) -> Tensor:
    """The top 24 of 32 random bits as a float32 in [0, 1) (exact: float32 has a 24-bit significand)."""
    return (bits >> 8).to(torch.float32) / float(1 << 24)


def _mul32(x: Tensor | int, constant: int) -> Tensor | int:
    """``x * constant mod 2**32`` for ``x`` in [0, 2**32) without leaving int64's range (no overflow)."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: Tensor | int) -> Tensor | int:
    """A 32-bit integer finaliser (Wellons's lowbias32); works on Python ints and int64 tensors alike."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _row_key(seed: int) -> int:
    """A 32-bit key from a (up to 64-bit) seed."""
    return int(_hash32(_hash32(seed & _MASK32) ^ ((seed >> 32) & _MASK32)))
