"""Summaries over seeds: median and min-max, and paired differences with a seeded bootstrap interval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Spread:
    """Median and range of one cell's values over seeds (with 3 seeds an IQR would say little more)."""

    median: float
    low: float
    high: float
    count: int


@dataclass(frozen=True)
class PairedDifference:
    """method - baseline on the same seeds: the mean difference, its bootstrap interval, and the seeds won."""

    mean: float
    low: float
    high: float
    count: int
    wins: int  # seeds where the method scored strictly higher


def spread(values: Sequence[float]) -> Spread:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("no values")
    return Spread(float(np.median(array)), float(array.min()), float(array.max()), int(array.size))


def bootstrap_interval(
    differences: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences: resample the seeds (pairs) with
    replacement ``resamples`` times and take the central ``confidence`` share of the resampled means.

    It never reaches past the smallest or largest difference, so with a handful of seeds it is a description
    of the spread of the gains rather than a guarantee of coverage.
    """
    array = np.asarray(differences, dtype=float)
    if array.size == 0:
        raise ValueError("no differences")
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, array.size, size=(resamples, array.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(method: Sequence[float], baseline: Sequence[float]) -> PairedDifference:
    """``method[i] - baseline[i]`` per seed (the caller pairs them), summarised."""
    if len(method) != len(baseline) or not method:
        raise ValueError("paired values must be non-empty and of equal length")
    differences = np.asarray(method, dtype=float) - np.asarray(baseline, dtype=float)
    low, high = bootstrap_interval(differences)
    wins = int((differences > 0).sum())
    return PairedDifference(float(differences.mean()), low, high, int(differences.size), wins)
