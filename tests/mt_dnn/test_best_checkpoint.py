"""Best-checkpoint selection: which evaluation is the best, ties, NaN, lower-is-better metrics, patience."""

from __future__ import annotations

import math

import pytest

from data_utils.errors import UserError
from mt_dnn.best_checkpoint import BestCheckpoint, BestKey, Verdict, parse_best_metric
from tests.mt_dnn.conftest import tiny_task_defs

NAN = math.nan


def acc(value: float) -> dict[str, dict[str, float]]:
    return {"single_dev": {"acc": value}}


def test_the_first_of_equal_scores_stays_the_best_and_nan_counts_as_no_improvement() -> None:
    best = BestCheckpoint(BestKey("single_dev", "acc"), patience=3)
    verdicts = [best.observe(step, acc(value)) for step, value in enumerate([50.0, 70.0, 70.0, NAN, 60.0], 1)]
    assert verdicts == [
        Verdict.NEW_BEST,
        Verdict.NEW_BEST,
        Verdict.NOT_BETTER,
        Verdict.NO_SCORE,
        Verdict.NOT_BETTER,
    ]
    assert (best.best_score, best.best_step, best.evals_since_best) == (70.0, 2, 3)
    assert best.patience_exhausted()


def test_nan_before_any_best_neither_picks_nor_counts() -> None:
    best = BestCheckpoint(BestKey("single_dev", "acc"), patience=1)
    assert best.observe(1, acc(NAN)) is Verdict.NO_SCORE
    assert best.observe(2, {}) is Verdict.NO_SCORE  # the split missing from the evaluation
    assert (best.best_score, best.best_step, best.evals_since_best) == (None, -1, 0)
    assert not best.patience_exhausted()
    assert best.observe(3, acc(10.0)) is Verdict.NEW_BEST and best.best_step == 3


def test_patience_zero_never_stops() -> None:
    best = BestCheckpoint(BestKey("single_dev", "acc"), patience=0)
    for step in range(1, 20):
        best.observe(step, acc(1.0))
    assert best.evals_since_best == 18 and not best.patience_exhausted()


def test_a_lower_is_better_metric_picks_the_lowest() -> None:
    best = BestCheckpoint(BestKey("text_dev", "perplexity"))
    for step, value in enumerate([9.0, 4.0, 6.0], 1):
        best.observe(step, {"text_dev": {"perplexity": value}})
    assert best.best_step == 2 and best.best_score == -4.0


def test_the_mean_key_averages_first_metrics_and_skips_nan() -> None:
    key = BestKey(None, None)
    scores = {"a_dev": {"acc": 60.0, "f1": 0.0}, "b_dev": {"pearson": NAN}, "c_dev": {"acc": 80.0}}
    assert key.score(scores) == 70.0
    assert key.score({"b_dev": {"pearson": NAN}}) is None
    assert key.describe() == "mean of first metrics"


def test_state_round_trips() -> None:
    best = BestCheckpoint(BestKey("single_dev", "acc"), patience=2)
    for step, value in enumerate([5.0, 7.0, 6.0], 1):
        best.observe(step, acc(value))
    again = BestCheckpoint(best.key, patience=2)
    again.load_state_dict(best.state_dict())
    assert (
        again.state_dict() == best.state_dict() == {"best_score": 7.0, "best_step": 2, "evals_since_best": 1}
    )
    assert again.observe(4, acc(6.5)) is Verdict.NOT_BETTER and again.patience_exhausted()


def test_parse_best_metric_needs_an_evaluated_task_with_a_dev_split_and_its_metric() -> None:
    task_defs = tiny_task_defs()
    dev = {("single", "dev"): object(), ("score", "dev"): object()}
    assert parse_best_metric("mean", task_defs, dev) == BestKey(None, None)
    assert parse_best_metric("single", task_defs, dev) == BestKey("single_dev", "acc")
    assert parse_best_metric("score:pearson", task_defs, dev) == BestKey("score_dev", "pearson")
    with pytest.raises(UserError, match="task 'nope' is not evaluated"):
        parse_best_metric("nope", task_defs, dev)
    with pytest.raises(UserError, match="task 'pair' has no labelled dev split"):
        parse_best_metric("pair", task_defs, dev)
    with pytest.raises(UserError, match="task 'single' reports acc"):
        parse_best_metric("single:pearson", task_defs, dev)
