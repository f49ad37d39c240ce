"""Multi-task batch sampling: every batch from one task, the same on every DDP rank, reshuffled each epoch.

A *global batch* holds ``batch_size * world_size`` rows of one task. Every rank builds the same epoch plan
(an ordered list of global batches) from ``(seed, epoch)`` alone and takes its contiguous slice, so all ranks
run the same task at each step on disjoint rows, and 2 ranks x B see exactly the global batches that
1 rank x 2B sees. A sampling strategy only decides the order of tasks; which rows form a task's batches is
decided per task (shuffle, optional length bucketing, cut into global batches, shuffle the batches).

Final partial global batch of a task: with one rank it is kept (unless ``drop_last``); with several ranks it
is filled by wrapping around to the start of that task's epoch order (as ``torch``'s ``DistributedSampler``
does), so no rank gets an empty or short batch and a few rows are seen twice that epoch.

Random numbers come from ``numpy.random.Generator(PCG64)`` seeded from ``(seed, epoch)`` and, per task, the
task's name; no global RNG is touched. Each task has its own stream, so adding a task does not change the
batches of the others.
"""

from __future__ import annotations

import inspect
import math
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import numpy as np

from data_utils.enums import parse_enum
from data_utils.errors import UserError

__all__ = [
    "EvalBatchSampler",
    "MixOptStrategy",
    "MultiTaskBatchSampler",
    "ProportionalStrategy",
    "SamplingStrategy",
    "SamplingConfig",
    "SamplingStrategyName",
    "TemperatureStrategy",
    "make_strategy",
]

TaskBatch = list[tuple[str, int]]


class SamplingStrategyName(StrEnum):
    PROPORTIONAL = "proportional"
    MIX_OPT = "mix_opt"
    TEMPERATURE = "temperature"


@runtime_checkable
class SamplingStrategy(Protocol):
    """Turns one epoch's ``{task: number of global batches}`` into its ordered task names, one per step.

    ``sizes`` is ``{task: number of rows}`` (same keys, same order: the first task is the main one where that
    matters). A task may appear more often than it has batches; the sampler then cycles through a reshuffled
    copy of its batches.
    """

    def schedule(
        self, n_batches: Mapping[str, int], sizes: Mapping[str, int], rng: np.random.Generator
    ) -> list[str]: ...


def _repeat_names(n_batches: Mapping[str, int]) -> np.ndarray:
    names = list(n_batches)
    counts = [n_batches[name] for name in names]
    return np.repeat(np.array(names, dtype=object), counts)


class ProportionalStrategy:
    """Every batch of every task once per epoch, in shuffled order (mt-dnn's default)."""

    def schedule(
        self, n_batches: Mapping[str, int], sizes: Mapping[str, int], rng: np.random.Generator
    ) -> list[str]:
        names = _repeat_names(n_batches)
        return list(names[rng.permutation(len(names))])


class MixOptStrategy:
    """mt-dnn's ``--ratio`` / ``--mix_opt``. The first task is the main task.

    ``ratio > 0``: the auxiliary tasks together contribute ``min(floor(ratio * main batches), all auxiliary
    batches)`` batches, drawn at random without replacement from all auxiliary batches. ``mix_opt > 0``: the
    shuffled auxiliary batches come first, then the main task's; ``mix_opt == 0``: the whole list is shuffled.
    """

    def __init__(self, ratio: float = 0.0, mix_opt: int = 0) -> None:
        if not ratio >= 0:
            raise ValueError(f"ratio must be >= 0, got {ratio}")
        if mix_opt < 0:
            raise ValueError(f"mix_opt must be >= 0, got {mix_opt}")
        self.ratio = float(ratio)
        self.mix_opt = int(mix_opt)

    def schedule(
        self, n_batches: Mapping[str, int], sizes: Mapping[str, int], rng: np.random.Generator
    ) -> list[str]:
        names = list(n_batches)
        if not names:
            return []
        main, aux_counts = names[0], {name: n_batches[name] for name in names[1:]}
        aux = _repeat_names(aux_counts)
        if self.ratio > 0:
            keep = min(int(self.ratio * n_batches[main]), len(aux))
            aux = aux[np.sort(rng.choice(len(aux), size=keep, replace=False))]
        main_part = [main] * n_batches[main]
        if self.mix_opt > 0:
            return list(aux[rng.permutation(len(aux))]) + main_part
        everything = np.concatenate([aux, np.array(main_part, dtype=object)])
        return list(everything[rng.permutation(len(everything))])


class TemperatureStrategy:
    """As many steps as there are batches in total; each step's task is drawn with probability
    proportional to ``n_t ** (1 / T)`` (``n_t`` = rows). ``T = 1``: size-proportional in expectation;
    large ``T``: uniform over tasks."""

    def __init__(self, temperature: float = 1.0) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def probabilities(self, n_batches: Mapping[str, int], sizes: Mapping[str, int]) -> np.ndarray:
        """The draw probability of each task of ``n_batches`` (0 for a task with no batches)."""
        counts = np.array([sizes[name] if n_batches[name] > 0 else 0 for name in n_batches], dtype=np.float64)
        weights = np.where(counts > 0, np.power(counts, 1.0 / self.temperature), 0.0)
        total = weights.sum()
        return weights / total if total > 0 else weights

    def schedule(
        self, n_batches: Mapping[str, int], sizes: Mapping[str, int], rng: np.random.Generator
    ) -> list[str]:
        steps = sum(n_batches.values())
        if steps == 0:
            return []
        names = np.array(list(n_batches), dtype=object)
        return list(names[rng.choice(len(names), size=steps, p=self.probabilities(n_batches, sizes))])


_STRATEGIES: dict[SamplingStrategyName, type] = {
    SamplingStrategyName.PROPORTIONAL: ProportionalStrategy,
    SamplingStrategyName.MIX_OPT: MixOptStrategy,
    SamplingStrategyName.TEMPERATURE: TemperatureStrategy,
}


def make_strategy(name: str | SamplingStrategyName, **kwargs: Any) -> SamplingStrategy:
    """Build a strategy by name (``proportional``, ``mix_opt``, ``temperature``; ``MixOpt`` etc. accepted).

    Raises ``ValueError`` for an unknown name, a parameter the strategy does not take, or a bad value.
    """
    key = parse_enum(SamplingStrategyName, name)
    cls = _STRATEGIES[key]
    try:
        return cls(**kwargs)
    except TypeError:
        accepted = ", ".join(inspect.signature(cls).parameters) or "none"
        given = ", ".join(sorted(kwargs))
        raise ValueError(f"sampling strategy '{key}' takes parameters ({accepted}), got ({given})") from None


@dataclass(frozen=True)
class SamplingConfig:
    """A run's ``sampling:`` section: the strategy, its parameters, and length bucketing.

    ``ratio`` and ``mix_opt`` are mt-dnn's (``MixOptStrategy``), ``temperature`` is ``TemperatureStrategy``'s;
    ``build`` passes a strategy only the parameters its constructor takes. As in mt-dnn, a ``ratio`` or
    ``mix_opt`` above 0 with the default ``proportional`` strategy means ``mix_opt``.
    """

    strategy: SamplingStrategyName = SamplingStrategyName.PROPORTIONAL
    ratio: float = 0.0
    mix_opt: int = 0
    temperature: float = 1.0
    bucket_window: int = 20

    def __post_init__(self) -> None:
        strategy = parse_enum(SamplingStrategyName, self.strategy)
        if strategy is SamplingStrategyName.PROPORTIONAL and (self.mix_opt > 0 or self.ratio > 0):
            strategy = SamplingStrategyName.MIX_OPT
        object.__setattr__(self, "strategy", strategy)
        if not (math.isfinite(self.ratio) and self.ratio >= 0):
            raise ValueError(f"ratio must be a finite number >= 0, got {self.ratio}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        for name in ("mix_opt", "bucket_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def make_strategy(self) -> SamplingStrategy:
        """The strategy, given the parameters of this section its constructor takes."""
        accepted = inspect.signature(_STRATEGIES[self.strategy]).parameters
        return make_strategy(self.strategy, **{name: getattr(self, name) for name in accepted})

    def build(
        self,
        task_sizes: Mapping[str, int],
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        lengths: Mapping[str, np.ndarray] | None = None,
    ) -> MultiTaskBatchSampler:
        """The sampler this section describes (``lengths`` is used only when bucketing is on)."""
        return MultiTaskBatchSampler(
            task_sizes,
            batch_size,
            self.make_strategy(),
            seed=seed,
            rank=rank,
            world_size=world_size,
            lengths=lengths if self.bucket_window else None,
            bucket_window=self.bucket_window,
        )


def _task_word(task: str) -> int:
    return zlib.crc32(task.encode("utf-8"))


class MultiTaskBatchSampler:
    """Yields one step's batch as ``[(task, row), ...]`` (this rank's share), every batch from one task.

    ``batch_size`` is per rank. ``bucket_window > 0`` (needs ``lengths``) sorts rows by length inside windows
    of ``bucket_window`` global batches before cutting them into batches, so batches hold similar lengths and
    pad less; the batch order is still shuffled. Call ``set_epoch`` before each epoch.

    Resume: ``state_dict()`` records the epoch and the steps consumed in it. The sampler counts the batches
    it has yielded; a ``DataLoader`` with workers fetches ahead of the training loop, so pass the number of
    steps actually trained on as ``state_dict(steps_consumed=...)``. After ``load_state_dict`` the next
    iteration of that epoch starts at exactly the next batch (``set_epoch`` to another epoch cancels that).
    """

    def __init__(
        self,
        task_sizes: Mapping[str, int],
        batch_size: int,
        strategy: SamplingStrategy,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        lengths: Mapping[str, np.ndarray] | None = None,
        bucket_window: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not task_sizes:
            raise ValueError("no tasks to sample from")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if bucket_window < 0:
            raise ValueError(f"bucket_window must be >= 0, got {bucket_window}")
        if bucket_window > 0 and lengths is None:
            raise ValueError("bucket_window > 0 needs the per-row lengths")
        for task, size in task_sizes.items():
            if size < 0:
                raise ValueError(f"task '{task}' has a negative size {size}")
        self.task_sizes = {task: int(size) for task, size in task_sizes.items()}
        self.lengths: dict[str, np.ndarray] | None = None
        if lengths is not None:
            self.lengths = {}
            for task, size in self.task_sizes.items():
                if task not in lengths:
                    raise ValueError(f"no lengths for task '{task}'")
                if len(lengths[task]) != size:
                    raise ValueError(f"task '{task}': {len(lengths[task])} lengths for {size} rows")
                self.lengths[task] = np.asarray(lengths[task])
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.global_batch_size = self.batch_size * self.world_size
        self.strategy = strategy
        self.seed = int(seed)
        self.bucket_window = int(bucket_window)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._skip = 0  # steps to skip on the next iteration (set by load_state_dict)
        self._yielded = 0  # steps of the current epoch handed out so far
        self._plan_cache: tuple[int, list[tuple[str, np.ndarray]]] | None = None

    # -- epoch plan ---------------------------------------------------------------------------------------

    def _rng(self, *spawn_key: int) -> np.random.Generator:
        sequence = np.random.SeedSequence(entropy=[self.seed, self.epoch], spawn_key=spawn_key)
        return np.random.Generator(np.random.PCG64(sequence))

    def _n_global_batches(self, size: int) -> int:
        if self.drop_last:
            return size // self.global_batch_size
        return math.ceil(size / self.global_batch_size)

    def _task_batches(self, task: str, rng: np.random.Generator) -> list[np.ndarray]:
        """This epoch's global batches of ``task`` (row indices), in shuffled order."""
        size = self.task_sizes[task]
        order = rng.permutation(size)
        if self.bucket_window > 0 and self.lengths is not None:
            window = self.bucket_window * self.global_batch_size
            window_id = np.arange(size) // window
            order = order[np.lexsort((self.lengths[task][order], window_id))]
        n_batches = self._n_global_batches(size)
        gb = self.global_batch_size
        if n_batches * gb > size and self.world_size > 1:
            # Several ranks: wrap around to fill the last global batch. One rank: it simply stays short.
            order = np.resize(order, n_batches * gb)
        batches = [order[i * gb : (i + 1) * gb] for i in range(n_batches)]
        return [batches[i] for i in rng.permutation(n_batches)]

    def _plan(self) -> list[tuple[str, np.ndarray]]:
        if self._plan_cache is not None and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1]
        task_rngs = {task: self._rng(1, _task_word(task)) for task in self.task_sizes}
        batches = {task: self._task_batches(task, task_rngs[task]) for task in self.task_sizes}
        n_batches = {task: len(batches[task]) for task in self.task_sizes}
        names = self.strategy.schedule(n_batches, dict(self.task_sizes), self._rng(0))
        plan: list[tuple[str, np.ndarray]] = []
        used = dict.fromkeys(self.task_sizes, 0)
        cycles: dict[str, list[np.ndarray]] = {task: list(batches[task]) for task in self.task_sizes}
        for task in names:
            n = n_batches[task]
            if n == 0:
                raise ValueError(f"strategy scheduled task '{task}', which has no batches this epoch")
            k = used[task]
            used[task] += 1
            if k >= len(cycles[task]):  # drawn more often than it has batches: a reshuffled copy
                cycles[task].extend(batches[task][i] for i in task_rngs[task].permutation(n))
            plan.append((task, cycles[task][k]))
        self._plan_cache = (self.epoch, plan)
        return plan

    # -- sampler API --------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self._skip = 0
            self._yielded = 0
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank)."""
        return len(self._plan())

    def __iter__(self) -> Iterator[TaskBatch]:
        plan = self._plan()
        start, self._skip = self._skip, 0
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        self._yielded = start
        for task, rows in plan[start:]:
            self._yielded += 1
            yield [(task, int(row)) for row in rows[lo:hi]]

    def state_dict(self, steps_consumed: int | None = None) -> dict[str, Any]:
        """Primitives only. ``steps_consumed`` overrides the sampler's own count (see the class doc)."""
        steps = self._yielded if steps_consumed is None else int(steps_consumed)
        return {
            "epoch": self.epoch,
            "steps": steps,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "task_sizes": dict(self.task_sizes),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, now in (
            ("seed", self.seed),
            ("global_batch_size", self.global_batch_size),
            ("task_sizes", self.task_sizes),
        ):
            if key in state and state[key] != now:
                raise UserError(f"resume state: key '{key}' was {state[key]!r} when saved but is {now!r} now")
        self.epoch = int(state["epoch"])
        steps = int(state["steps"])
        if not 0 <= steps <= len(self):
            raise UserError(f"resume state: key 'steps' is {steps}, outside [0, {len(self)}]")
        self._skip = steps
        self._yielded = steps


class EvalBatchSampler:
    """Deterministic evaluation batches over ``range(size)``: longest rows first when ``lengths`` is given.

    Batches are consecutive chunks of ``order`` (the original row indices, sorted); rank ``r`` takes batches
    ``r, r + world_size, ...``. The yielded lists are original row indices, so predictions can be put back in
    input order: ``out[indices] = predictions``. ``indices`` is this rank's rows in yield order.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        lengths: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if lengths is not None and len(lengths) != size:
            raise ValueError(f"{len(lengths)} lengths for {size} rows")
        if lengths is None:
            self.order = np.arange(size, dtype=np.int64)
        else:
            self.order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
        all_batches = [self.order[i : i + batch_size] for i in range(0, size, batch_size)]
        self.batches: list[np.ndarray] = all_batches[rank::world_size]
        self.size = size
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    @property
    def indices(self) -> np.ndarray:
        """This rank's row indices, in the order they are yielded."""
        if not self.batches:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch.tolist()
