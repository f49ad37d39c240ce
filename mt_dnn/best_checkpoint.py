"""Which evaluation is the best so far (``--best_metric``), and when to stop (``--early_stopping_patience``).

``BestKey`` turns an evaluation's scores into one higher-is-better number (or ``None`` when it is NaN or
missing); ``BestCheckpoint`` keeps the best score, its step and the evaluations since it, and says what
each new evaluation was. Ties are no improvement: the earlier step stays the best.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from data_utils.errors import UserError
from data_utils.metrics import METRICS, metric_spec
from data_utils.task_def import TaskDef

__all__ = ["BestCheckpoint", "BestKey", "Verdict", "parse_best_metric"]

Scores = Mapping[str, Mapping[str, float]]  # "<task>_<split>" -> metric -> value


@dataclass(frozen=True)
class BestKey:
    """Which number picks the best checkpoint: one task split's metric, or the mean over eval tasks."""

    split: str | None  # "<task>_<split>" or None for the mean
    metric: str | None

    def score(self, scores: Scores) -> float | None:
        """Higher is better: a metric where lower is better (perplexity) counts negated."""
        if self.split is not None:
            value = scores.get(self.split, {}).get(self.metric or "")
            return None if value is None or math.isnan(value) else _oriented(self.metric or "", value)
        firsts = [_oriented(*next(iter(metrics.items()))) for metrics in scores.values() if metrics]
        firsts = [value for value in firsts if not math.isnan(value)]
        return float(np.mean(firsts)) if firsts else None

    def describe(self) -> str:
        return "mean of first metrics" if self.split is None else f"{self.split}:{self.metric}"


def _oriented(metric: str, value: float) -> float:
    """``value`` as a higher-is-better number."""
    known = metric in METRICS
    return -float(value) if known and not metric_spec(metric).higher_is_better else float(value)


def parse_best_metric(
    text: str, task_defs: Mapping[str, TaskDef], dev_splits: Mapping[tuple[str, str], Any]
) -> BestKey:
    """``mean`` or ``<task>[:<metric>]``; the task must have a labelled dev split among ``dev_splits``."""
    if text == "mean":
        return BestKey(None, None)
    task, _, metric = text.partition(":")
    if task not in task_defs:
        raise UserError(f"--best_metric {text}: task '{task}' is not evaluated")
    task_def = task_defs[task]
    splits = [split for split in task_def.dev_splits if (task, split) in dev_splits]
    if not splits:
        raise UserError(f"--best_metric {text}: task '{task}' has no labelled dev split in the cache")
    metric = metric or task_def.metrics[0].value
    if metric not in {m.value for m in task_def.metrics}:
        raise UserError(
            f"--best_metric {text}: task '{task}' reports {', '.join(m.value for m in task_def.metrics)}"
        )
    return BestKey(f"{task}_{splits[0]}", metric)


class Verdict(StrEnum):
    NEW_BEST = "new_best"
    NOT_BETTER = "not_better"  # a score no higher than the best (a tie included)
    NO_SCORE = "no_score"  # the key's metric was NaN or missing: counts as no improvement


class BestCheckpoint:
    """The best evaluation so far and the evaluations in a row without a new one."""

    def __init__(self, key: BestKey, patience: int = 0) -> None:
        self.key = key
        self.patience = patience  # 0: never stop early
        self.best_score: float | None = None
        self.best_step = -1
        self.evals_since_best = 0

    def observe(self, step: int, scores: Scores) -> Verdict:
        """Record the evaluation at ``step``."""
        score = self.key.score(scores)
        if self.best_score is not None and (score is None or score <= self.best_score):
            self.evals_since_best += 1  # a NaN evaluation is no improvement either
        if score is not None and (self.best_score is None or score > self.best_score):
            self.best_score, self.best_step = score, step
            self.evals_since_best = 0
            return Verdict.NEW_BEST
        return Verdict.NO_SCORE if score is None else Verdict.NOT_BETTER

    def patience_exhausted(self) -> bool:
        return self.patience > 0 and self.evals_since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_step": self.best_step,
            "evals_since_best": self.evals_since_best,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.evals_since_best = int(state.get("evals_since_best", 0))
