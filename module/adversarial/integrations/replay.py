"""FreeAT's replays as data: a sampler that yields every optimizer step's examples ``replays`` times in a row.

A loop that takes one optimizer step per batch (``transformers.Trainer``) then replays each batch m times,
one update each, as FreeAT (Shafahi et al. 2019) asks. A *chunk* is one optimizer step's examples over
every process: ``per-process batch x accumulation steps x processes``. An epoch is m times as many
optimizer steps as without replays (the paper divides the epochs by m to keep the cost).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import RandomSampler, Sampler

__all__ = ["ReplaySampler"]


class ReplaySampler(Sampler[int]):
    """The indices of ``base`` in chunks of ``chunk``, each chunk ``replays`` times in a row.

    With ``pad`` (needed when a chunk spans several batches: accumulation or several processes) a short
    last chunk is completed with indices from the start of the epoch's order, as distributed samplers pad,
    so every optimizer step holds a whole chunk and replays never straddle two steps. A ``RandomSampler``
    base is replaced by a permutation seeded by ``seed + epoch`` (``set_epoch``), so a resumed run sees the
    same order and skips exactly the batches it had trained on.
    """

    def __init__(self, base: Sampler[int], *, chunk: int, replays: int, seed: int = 0, pad: bool = False):
        if chunk < 1 or replays < 1:
            raise ValueError(f"ReplaySampler needs chunk >= 1 and replays >= 1, got {chunk}, {replays}")
        if not isinstance(base, Sized):
            raise ValueError("ReplaySampler needs a sampler with a length")
        self.base = base
        self.chunk, self.replays, self.seed, self.pad = chunk, replays, seed, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_base_epoch = getattr(self.base, "set_epoch", None)
        if callable(set_base_epoch):
            set_base_epoch(epoch)

    def _order(self) -> list[int]:
        base = self.base
        if (
            isinstance(base, RandomSampler)
            and not base.replacement
            and isinstance(base.data_source, Sized)
            and base.num_samples == len(base.data_source)
        ):
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            return torch.randperm(base.num_samples, generator=generator).tolist()
        return list(base)

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        for start in range(0, len(order), self.chunk):
            part = order[start : start + self.chunk]
            if self.pad and len(part) < self.chunk:
                part += list(itertools.islice(itertools.cycle(order), self.chunk - len(part)))
            for _ in range(self.replays):
                yield from part

    def __len__(self) -> int:
        size = len(self.base)  # type: ignore[arg-type]
        if self.pad:
            size = math.ceil(size / self.chunk) * self.chunk
        return size * self.replays
