"""The majority-class level of each accuracy task's dev split, as the grid scores it.

A run whose best dev accuracy is no higher never learned the task: on a small pair or multiple-choice task a
fine-tuned encoder can settle on one answer for a few epochs, and early stopping then ends the run there. The
report counts such runs per arm and compares the arms on the seeds where both learned, next to the study's
own paired difference (which keeps every seed)."""

from __future__ import annotations

from collections import Counter

from data_utils.metrics import Metric
from experiments.quality.data import eval_rows
from experiments.quality.grid import Grid

# a dev score within this of the level counts as at it (scores are percentages of whole rows)
TOLERANCE = 1e-6


def majority_levels(grid: Grid) -> dict[str, float]:
    """Task -> 100 x the share of the most frequent gold label on its first dev split, for the grid's tasks
    whose first metric is accuracy (classification labels, or the gold candidate's position for ranking)."""
    task_defs = grid.task_defs()
    levels = {}
    for task in grid.tasks:
        task_def = task_defs[task]
        if not task_def.metrics or task_def.metrics[0] != Metric.ACC or not task_def.dev_splits:
            continue
        labels = [row["label"] for row in eval_rows(grid, task_def, task_def.dev_splits[0]) if "label" in row]
        if labels and all(isinstance(label, str | int) for label in labels):
            levels[task] = 100.0 * Counter(labels).most_common(1)[0][1] / len(labels)
    return levels


def at_level(dev: float | None, level: float | None) -> bool:
    """Whether a best dev score is at or below the majority-class level (False when either is unknown)."""
    return dev is not None and level is not None and dev <= level + TOLERANCE
