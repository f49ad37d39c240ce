"""Learning-rate selection on dev: the candidate runs' names, the winner, and its lookup in the results.

A tuned method ``M`` runs once per candidate learning rate at the grid's ``tune_seed``; those rows carry the
method name ``M@lr=<lr>`` (``smart@lr=2e-04``), which no grid method can have ('@' is not allowed in a
method name), so the report can tell them apart. The winner is the candidate with the best dev score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from data_utils.errors import UserError
from data_utils.metrics import metric_spec

if TYPE_CHECKING:
    from experiments.quality.grid import Grid
    from experiments.quality.results import Key, ResultRow

TUNING_MARK = "@lr="
LR_TUNED = "tuned"  # a row's lr_source when its method's own tuning chose the learning rate


def lr_spelling(learning_rate: float) -> str:
    """A short, stable spelling: 2e-04, 2.5e-05 (also what the runs get as ``--learning_rate``)."""
    mantissa, exponent = f"{learning_rate:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def tuning_method(method: str, learning_rate: float) -> str:
    """The method name of ``method``'s tuning run at ``learning_rate``: ``smart@lr=2e-04``."""
    return f"{method}{TUNING_MARK}{lr_spelling(learning_rate)}"


def split_tuning_method(name: str) -> tuple[str, float] | None:
    """(method, learning rate) of a tuning run's method name; None for any other name."""
    method, mark, spelling = name.partition(TUNING_MARK)
    if not mark:
        return None
    try:
        return method, float(spelling)
    except ValueError:
        return None


def is_tuning_row(row: ResultRow) -> bool:
    return split_tuning_method(row.method) is not None


def higher_is_better(metric: str) -> bool:
    try:
        return metric_spec(metric).higher_is_better
    except ValueError:
        raise UserError(f"key 'metric': unknown metric {metric!r}") from None


def pick_winner(dev_by_lr: Mapping[float, float | None], metric: str) -> float:
    """The learning rate with the best dev score; a missing score (a failed evaluation) counts as the worst,
    and a tie goes to the smaller learning rate."""
    if not dev_by_lr:
        raise ValueError("no candidates")
    sign = 1.0 if higher_is_better(metric) else -1.0

    def badness(learning_rate: float) -> tuple[bool, float, float]:
        dev = dev_by_lr[learning_rate]
        missing = dev is None or math.isnan(dev)  # a failed or undefined evaluation: the worst
        return (missing, 0.0 if missing else -sign * dev, learning_rate)  # type: ignore[operator]

    return min(dev_by_lr, key=badness)


def candidate_keys(grid: Grid, method: str, task: str, n_train: int) -> dict[float, Key]:
    """The result-row key of each of ``method``'s tuning runs for (task, size)."""
    from experiments.quality.grid import Regime

    return {
        lr: (Regime.SINGLE.value, tuning_method(method, lr), task, n_train, grid.tune_seed)
        for lr in grid.learning_rates
    }


def winning_lr(
    grid: Grid, done: Mapping[Key, ResultRow], method: str, task: str, n_train: int
) -> float | None:
    """``method``'s winning learning rate for (task, size); None until all its tuning rows are in ``done``."""
    keys = candidate_keys(grid, method, task, n_train)
    if not keys or any(key not in done for key in keys.values()):
        return None
    rows = {lr: done[key] for lr, key in keys.items()}
    metric = next(iter(rows.values())).metric
    return pick_winner({lr: row.dev for lr, row in rows.items()}, metric)
