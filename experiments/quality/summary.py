"""Results rows -> per-cell summaries: the score over seeds, the paired difference to the baseline method, the
step-time and training-time ratios to it, the seeds still improving at their last step; per method, each
multi-task regime against single-task training; and the learning-rate selections of a tuning grid.

The tuning runs (method ``M@lr=<lr>``) are left out of the method summaries and only enter the selections."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from experiments.quality.grid import Regime
from experiments.quality.majority import at_level
from experiments.quality.results import ResultRow
from experiments.quality.stats import PairedDifference, Spread, paired_difference, spread
from experiments.quality.tuning import LR_TUNED, is_tuning_row, pick_winner, split_tuning_method


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
    # median over common seeds of the training time of all steps / the baseline's (early stopping: the
    # methods take different numbers of steps, so the step-time ratio alone understates the cost)
    train_ratio: float | None = None
    # (seeds whose best checkpoint is their last step, seeds whose best step is known); None: none known
    not_converged: tuple[int, int] | None = None
    # with a majority-class level for the task: (seeds whose best dev is at or below it, seeds) ...
    at_majority: tuple[int, int] | None = None
    # ... and the paired difference over the seeds on which neither this method nor the baseline is at it
    versus_baseline_learned: PairedDifference | None = None


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


def _ratio(
    group: Sequence[ResultRow], base: Sequence[ResultRow], get: Callable[[ResultRow], float | None]
) -> float | None:
    """Median over common seeds of ``get`` of the method over the baseline's."""
    theirs, mine = _paired(base, group, get)
    ratios = [method / plain for plain, method in zip(theirs, mine, strict=True) if plain > 0]
    return statistics.median(ratios) if ratios else None


def _not_converged(group: Sequence[ResultRow]) -> tuple[int, int] | None:
    known = [row.not_converged for row in group if row.not_converged is not None]
    return (sum(known), len(known)) if known else None


def summarise(
    rows: Sequence[ResultRow], split: Split, baseline: str, majority: Mapping[str, float] | None = None
) -> list[CellSummary]:
    """One summary per (regime, task, n_train, method), regimes in their declared order, then tasks and
    methods as they first appear (the baseline first), sizes ascending. Tuning runs are left out.
    ``majority``: task -> its dev majority-class level (``majority.py``), for the tasks that have one."""
    rows = [row for row in rows if not is_tuning_row(row)]
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
                        level = (majority or {}).get(task)
                        summaries.append(_summary(group, base, split, method == baseline, level))
    return summaries


def _summary(
    group: list[ResultRow], base: list[ResultRow], split: Split, is_baseline: bool, level: float | None
) -> CellSummary:
    first = group[0]
    versus = None
    versus_learned = None
    ratio = None
    train_ratio = None
    get = functools.partial(score, split=split)
    if not is_baseline and base:
        mine, theirs = _paired(group, base, get)
        versus = paired_difference(mine, theirs) if mine else None
        ratio = _ratio(group, base, lambda row: row.seconds_per_step)
        train_ratio = _ratio(group, base, lambda row: row.train_seconds)
        if level is not None:
            learned = [row for row in group if not at_level(row.dev, level)]
            base_learned = [row for row in base if not at_level(row.dev, level)]
            mine, theirs = _paired(learned, base_learned, get)
            versus_learned = paired_difference(mine, theirs) if mine else None
    return CellSummary(
        regime=first.regime,
        task=first.task,
        metric=first.metric,
        n_train=first.n_train,
        method=first.method,
        score=_spread_of(group, get),
        dev=_spread_of(group, lambda row: row.dev),
        versus_baseline=versus,
        step_ratio=ratio,
        train_ratio=train_ratio,
        not_converged=_not_converged(group),
        at_majority=None if level is None else (sum(at_level(row.dev, level) for row in group), len(group)),
        versus_baseline_learned=versus_learned,
    )


def compare_regimes(rows: Sequence[ResultRow], split: Split, baseline: str) -> list[RegimeComparison]:
    """Per (task, n_train, method) with single-task rows and rows of a multi-task regime: each multi-task
    regime's spread and its paired difference to single-task training (same method, task, size and seed)."""
    others = [regime.value for regime in Regime if regime is not Regime.SINGLE]
    rows = [row for row in rows if not is_tuning_row(row)]
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


@dataclass(frozen=True)
class LrSelection:
    """One tuned method's learning-rate choice for a (task, size): each candidate's dev score, the winner."""

    task: str
    metric: str
    n_train: int
    method: str
    seed: int  # the tuning seed
    dev_by_lr: dict[float, float | None]
    winner: float  # among the candidates in the rows (as the grid chose it once all had run)
    reused_by: tuple[str, ...]  # methods whose rows took this method's winner (lr_from)


def lr_selections(rows: Sequence[ResultRow]) -> list[LrSelection]:
    """One selection per (task, n_train, tuned method, seed) of the tuning rows: tasks and methods as they
    first appear, sizes ascending."""
    groups: dict[tuple[str, int, str, int], dict[float, ResultRow]] = {}
    for row in rows:
        tuned = split_tuning_method(row.method)
        if tuned is not None:
            groups.setdefault((row.task, row.n_train, tuned[0], row.seed), {})[tuned[1]] = row
    followers: dict[tuple[str, int, str], list[str]] = {}
    for row in rows:
        if row.lr_source not in (None, LR_TUNED) and not is_tuning_row(row):
            followers.setdefault((row.task, row.n_train, str(row.lr_source)), []).append(row.method)
    selections = []
    for task in _order(key[0] for key in groups):
        for n_train in sorted({key[1] for key in groups if key[0] == task}):
            for (task_, size, method, seed), candidates in groups.items():
                if (task_, size) != (task, n_train):
                    continue
                metric = next(iter(candidates.values())).metric
                dev_by_lr = {lr: candidates[lr].dev for lr in sorted(candidates)}
                selections.append(
                    LrSelection(
                        task=task,
                        metric=metric,
                        n_train=n_train,
                        method=method,
                        seed=seed,
                        dev_by_lr=dev_by_lr,
                        winner=pick_winner(dev_by_lr, metric),
                        reused_by=tuple(dict.fromkeys(followers.get((task, n_train, method), []))),
                    )
                )
    return selections
