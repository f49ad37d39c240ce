"""Results rows -> per-cell summaries: the score over seeds, the paired difference to the baseline method, the
step-time ratio to it; and, per method, each multi-task regime against single-task training."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from experiments.quality.grid import Regime
from experiments.quality.results import ResultRow
from experiments.quality.stats import PairedDifference, Spread, paired_difference, spread


class Split(StrEnum):
    TEST = "test"
    DEV = "dev"


def score(row: ResultRow, split: Split) -> float | None:
    return row.test if split is Split.TEST else row.dev


@dataclass(frozen=True)
class CellSummary:
    regime: str
    task: str
    metric: str
    n_train: int
    method: str
    score: Spread | None  # of the chosen split; None when no seed has a value
    dev: Spread | None
    versus_baseline: PairedDifference | None  # None for the baseline itself or without common seeds
    step_ratio: float | None  # median over common seeds of seconds per step / the baseline's


@dataclass(frozen=True)
class RegimeComparison:
    task: str
    metric: str
    n_train: int
    method: str
    single: Spread | None
    scores: dict[str, Spread | None]  # regime -> spread (mtl, mtl+finetune)
    versus_single: dict[str, PairedDifference | None]  # regime -> paired difference to single


def _order(values: Iterable[str], first: str | None = None) -> list[str]:
    seen = list(dict.fromkeys(values))
    return ([first] if first in seen else []) + [value for value in seen if value != first]


def _spread_of(rows: Sequence[ResultRow], get: Callable[[ResultRow], float | None]) -> Spread | None:
    values = [value for value in map(get, rows) if value is not None]
    return spread(values) if values else None


def _paired(
    rows: Sequence[ResultRow], others: Sequence[ResultRow], get: Callable[[ResultRow], float | None]
) -> tuple[list[float], list[float]]:
    """Values of ``rows`` and ``others`` on the seeds both have (in seed order)."""
    mine = {row.seed: get(row) for row in rows}
    theirs = {row.seed: get(row) for row in others}
    seeds = sorted(seed for seed in mine if mine[seed] is not None and theirs.get(seed) is not None)
    return [mine[seed] for seed in seeds], [theirs[seed] for seed in seeds]  # type: ignore[misc]


def summarise(rows: Sequence[ResultRow], split: Split, baseline: str) -> list[CellSummary]:
    """One summary per (regime, task, n_train, method), regimes in their declared order, then tasks and
    methods as they first appear (the baseline first), sizes ascending."""
    groups: dict[tuple[str, str, int, str], list[ResultRow]] = {}
    for row in rows:
        groups.setdefault((row.regime, row.task, row.n_train, row.method), []).append(row)
    regimes = [regime.value for regime in Regime if any(row.regime == regime for row in rows)]
    tasks = _order(row.task for row in rows)
    methods = _order((row.method for row in rows), baseline)
    summaries = []
    for regime in regimes:
        for task in tasks:
            for n_train in sorted({row.n_train for row in rows}):
                base = groups.get((regime, task, n_train, baseline), [])
                for method in methods:
                    group = groups.get((regime, task, n_train, method))
                    if group:
                        summaries.append(_summary(group, base, split, method == baseline))
    return summaries


def _summary(group: list[ResultRow], base: list[ResultRow], split: Split, is_baseline: bool) -> CellSummary:
    first = group[0]
    versus = None
    ratio = None
    if not is_baseline and base:
        mine, theirs = _paired(group, base, functools.partial(score, split=split))
        versus = paired_difference(mine, theirs) if mine else None
        fast, slow = _paired(base, group, lambda row: row.seconds_per_step)
        ratios = [method / plain for plain, method in zip(fast, slow, strict=True) if plain > 0]
        ratio = statistics.median(ratios) if ratios else None
    return CellSummary(
        regime=first.regime,
        task=first.task,
        metric=first.metric,
        n_train=first.n_train,
        method=first.method,
        score=_spread_of(group, functools.partial(score, split=split)),
        dev=_spread_of(group, lambda row: row.dev),
        versus_baseline=versus,
        step_ratio=ratio,
    )


def compare_regimes(rows: Sequence[ResultRow], split: Split, baseline: str) -> list[RegimeComparison]:
    """Per (task, n_train, method) with single-task rows and rows of a multi-task regime: each multi-task
    regime's spread and its paired difference to single-task training (same method, task, size and seed)."""
    others = [regime.value for regime in Regime if regime is not Regime.SINGLE]
    groups: dict[tuple[str, str, int, str], list[ResultRow]] = {}
    for row in rows:
        groups.setdefault((row.regime, row.task, row.n_train, row.method), []).append(row)
    get = functools.partial(score, split=split)
    comparisons = []
    for task in _order(row.task for row in rows):
        for n_train in sorted({row.n_train for row in rows}):
            for method in _order((row.method for row in rows), baseline):
                single = groups.get((Regime.SINGLE.value, task, n_train, method), [])
                present = {
                    regime: groups[(regime, task, n_train, method)]
                    for regime in others
                    if (regime, task, n_train, method) in groups
                }
                if not single or not present:
                    continue
                versus: dict[str, PairedDifference | None] = {}
                for regime, group in present.items():
                    mine, theirs = _paired(group, single, get)
                    versus[regime] = paired_difference(mine, theirs) if mine else None
                comparisons.append(
                    RegimeComparison(
                        task=task,
                        metric=single[0].metric,
                        n_train=n_train,
                        method=method,
                        single=_spread_of(single, get),
                        scores={regime: _spread_of(group, get) for regime, group in present.items()},
                        versus_single=versus,
                    )
                )
    return comparisons
