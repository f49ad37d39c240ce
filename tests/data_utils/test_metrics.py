"""Metric registry: each metric against values worked out by hand, plus parsing and edge cases."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

from data_utils.enums import TaskType
from data_utils.kinds import KINDS
from data_utils.metrics import (
    METRICS,
    Metric,
    check_metric_applicable,
    compute_metrics,
    parse_metric,
    predictions_from_scores,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLS = TaskType.CLASSIFICATION
REG = TaskType.REGRESSION
RANK = TaskType.RANKING
MLM = TaskType.MASK_LM
NEG_INF = -np.inf
MLM_SCORES = np.array([[5.0, -0.5], [7.0, -2.0], [9.0, -0.1]])


def one_hot_scores(preds: list[int], num_classes: int) -> np.ndarray:
    """Probability rows whose argmax is ``preds`` (0.8 on the predicted class, the rest spread evenly)."""
    scores = np.full((len(preds), num_classes), 0.2 / (num_classes - 1))
    scores[np.arange(len(preds)), preds] = 0.8
    return scores


@dataclass(frozen=True)
class HandCase:
    name: str
    task_type: TaskType
    metric: Metric
    scores: np.ndarray
    labels: np.ndarray
    expected: float


# Ranking fixture: 4 questions with 3, 2, 3 and 1 candidates (-inf pads the short ones).
#   q0 scores [0.2, 0.9, 0.1], right = 1 -> rank 1 (top-1 correct)
#   q1 scores [0.5, 0.7, pad], right = 0 -> rank 2 (only 0.7 is above; the pad is not)
#   q2 scores [0.1, 0.3, 0.8], right = 0 -> rank 3
#   q3 scores [-3., pad, pad], right = 0 -> rank 1 (a negative score still beats the padding)
RANK_SCORES = np.array(
    [
        [0.2, 0.9, 0.1],
        [0.5, 0.7, NEG_INF],
        [0.1, 0.3, 0.8],
        [-3.0, NEG_INF, NEG_INF],
    ]
)
RANK_LABELS = np.array([1, 0, 0, 0])

# Multi-class AUC fixture (rows are probabilities summing to 1).
#   class 0: positives (rows 0, 3) score 0.6, 0.25; negatives (rows 1, 2) score 0.2, 0.3
#            pairs: 0.6>0.2, 0.6>0.3, 0.25>0.2 win; 0.25<0.3 lose -> 3/4
#   class 1: positive (row 1) 0.5; negatives 0.3, 0.3, 0.35 -> 3/3 = 1
#   class 2: positive (row 2) 0.4; negatives 0.1, 0.3, 0.4 -> win, win, tie (1/2) -> 2.5/3
#   macro = (0.75 + 1 + 2.5/3) / 3 = 0.861111...
AUC3_SCORES = np.array(
    [
        [0.6, 0.3, 0.1],
        [0.2, 0.5, 0.3],
        [0.3, 0.3, 0.4],
        [0.25, 0.35, 0.4],
    ]
)
AUC3_LABELS = np.array([0, 1, 2, 0])

HAND_CASES: list[HandCase] = [
    # acc: labels [0,1,1,0] vs preds [0,1,0,0] -> 3 of 4 right = 75.0
    HandCase("acc", CLS, Metric.ACC, one_hot_scores([0, 1, 0, 0], 2), np.array([0, 1, 1, 0]), 75.0),
    # ranking acc: q0 and q3 have the right candidate on top -> 2/4 = 50.0
    HandCase("acc_ranking", RANK, Metric.ACC, RANK_SCORES, RANK_LABELS, 50.0),
    # f1: labels [1,1,1,0,0] vs preds [1,1,0,1,0] -> tp=2, fp=1, fn=1, tn=1;
    #     F1 = 2tp / (2tp + fp + fn) = 4/6
    HandCase("f1", CLS, Metric.F1, one_hot_scores([1, 1, 0, 1, 0], 2), np.array([1, 1, 1, 0, 0]), 400 / 6),
    # mcc: same counts; (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2-1)/sqrt(3*3*2*2) = 1/6
    HandCase("mcc", CLS, Metric.MCC, one_hot_scores([1, 1, 0, 1, 0], 2), np.array([1, 1, 1, 0, 0]), 100 / 6),
    # pearson: y = 2x + 1 is exactly linear -> r = 1
    HandCase(
        "pearson_linear", REG, Metric.PEARSON, np.array([1.0, 2, 3, 4]), np.array([3.0, 5, 7, 9]), 100.0
    ),
    # pearson: x [1,2,3], y [1,3,2]; deviations [-1,0,1], [-1,1,0]; cov = 1, var = 2, 2 -> r = 1/2
    HandCase("pearson_half", REG, Metric.PEARSON, np.array([1.0, 2, 3]), np.array([1.0, 3, 2]), 50.0),
    # spearman: y = x^3 is monotone but not linear -> rho = 1; reversed -> -1
    HandCase(
        "spearman_cubic", REG, Metric.SPEARMAN, np.array([1.0, 2, 3, 4]), np.array([1.0, 8, 27, 64]), 100.0
    ),
    HandCase(
        "spearman_reversed",
        REG,
        Metric.SPEARMAN,
        np.array([1.0, 2, 3, 4]),
        np.array([64.0, 27, 8, 1]),
        -100.0,
    ),
    # spearman: ranks [1,2,3] vs [1,3,2]; sum d^2 = 2; 1 - 6*2 / (3*(9-1)) = 1/2
    HandCase("spearman_half", REG, Metric.SPEARMAN, np.array([1.0, 2, 3]), np.array([1.0, 3, 2]), 50.0),
    # binary auc: labels [0,0,1,1], P(class 1) [0.1,0.4,0.35,0.8];
    #   (pos, neg) pairs: 0.35>0.1 win, 0.35<0.4 lose, 0.8>0.1 win, 0.8>0.4 win -> 3/4
    HandCase(
        "auc_binary",
        CLS,
        Metric.AUC,
        np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]]),
        np.array([0, 0, 1, 1]),
        75.0,
    ),
    HandCase("auc_multiclass", CLS, Metric.AUC, AUC3_SCORES, AUC3_LABELS, 100 * (0.75 + 1 + 2.5 / 3) / 3),
    # f1_macro: labels [0,0,1,1,2,2] vs preds [0,1,1,1,2,0]
    #   class 0: tp=1 fp=1 fn=1 -> 2/4; class 1: tp=2 fp=1 fn=0 -> 4/5; class 2: tp=1 fp=0 fn=1 -> 2/3
    #   macro = (0.5 + 0.8 + 2/3) / 3
    HandCase(
        "f1_macro",
        CLS,
        Metric.F1_MACRO,
        one_hot_scores([0, 1, 1, 1, 2, 0], 3),
        np.array([0, 0, 1, 1, 2, 2]),
        100 * (0.5 + 0.8 + 2 / 3) / 3,
    ),
    # f1_micro: pooled tp=4, fp=2, fn=2 -> 8 / (8 + 2 + 2) = 2/3
    HandCase(
        "f1_micro",
        CLS,
        Metric.F1_MICRO,
        one_hot_scores([0, 1, 1, 1, 2, 0], 3),
        np.array([0, 0, 1, 1, 2, 2]),
        200 / 3,
    ),
    # mrr: ranks 1, 2, 3, 1 -> (1 + 1/2 + 1/3 + 1) / 4
    HandCase("mrr", RANK, Metric.MRR, RANK_SCORES, RANK_LABELS, 100 * (1 + 1 / 2 + 1 / 3 + 1) / 4),
    # mrr ties, stable order: all three candidates score 0.5; right = 2 has two equal scores ahead -> 1/3,
    #   right = 0 is first among equals -> 1 (consistent with argmax = 0, so acc credits it too)
    HandCase("mrr_ties", RANK, Metric.MRR, np.full((2, 3), 0.5), np.array([2, 0]), 100 * (1 / 3 + 1) / 2),
    # mask_lm: three masked tokens, (predicted id, log p(gold)); gold ids [5, 8, 9]: predictions 5 and 9 right
    HandCase("mlm_acc", MLM, Metric.MLM_ACC, MLM_SCORES, np.array([5, 8, 9]), 200 / 3),
    # perplexity = exp(mean cross-entropy) = exp((0.5 + 2.0 + 0.1) / 3)
    HandCase("perplexity", MLM, Metric.PERPLEXITY, MLM_SCORES, np.array([5, 8, 9]), math.exp(2.6 / 3)),
]


def test_every_registry_entry_has_a_hand_computed_case() -> None:
    # Metrics a task kind registers itself (sequence labeling's span F1, ...) are tested with their kind.
    assert {case.metric for case in HAND_CASES} == set(Metric)
    assert set(Metric) <= set(METRICS)


@pytest.mark.parametrize("case", HAND_CASES, ids=lambda case: case.name)
def test_hand_computed_value(case: HandCase) -> None:
    result = compute_metrics(case.task_type, [case.metric], case.scores, case.labels)
    assert list(result) == [case.metric.value]
    assert result[case.metric.value] == pytest.approx(case.expected, abs=1e-9)


def test_applicability_table() -> None:
    """Which built-in metric each built-in kind allows (``DataKind.allowed_metrics``)."""
    builtin = [KINDS[task_type] for task_type in TaskType]
    table = {metric: {kind.name for kind in builtin if metric in kind.allowed_metrics} for metric in Metric}
    assert table == {
        Metric.ACC: {CLS, RANK},
        Metric.F1: {CLS},
        Metric.MCC: {CLS},
        Metric.AUC: {CLS},
        Metric.F1_MACRO: {CLS},
        Metric.F1_MICRO: {CLS},
        Metric.PEARSON: {REG},
        Metric.SPEARMAN: {REG},
        Metric.MRR: {RANK},
        Metric.MLM_ACC: {MLM},
        Metric.PERPLEXITY: {MLM},
    }
    lower_is_better = {metric for metric in Metric if not METRICS[metric].higher_is_better}
    assert lower_is_better == {Metric.PERPLEXITY}


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("ACC", Metric.ACC),
        ("F1", Metric.F1),
        ("MCC", Metric.MCC),
        ("Pearson", Metric.PEARSON),
        ("Spearman", Metric.SPEARMAN),
        ("AUC", Metric.AUC),
        ("F1MAC", Metric.F1_MACRO),
        ("F1MIC", Metric.F1_MICRO),
        ("MRR", Metric.MRR),
        ("f1mac", Metric.F1_MACRO),
        ("F1Mic", Metric.F1_MICRO),
        ("PEARSON", Metric.PEARSON),
        (" acc ", Metric.ACC),
    ],
)
def test_parse_metric_mtdnn_spellings(spelling: str, expected: Metric) -> None:
    assert parse_metric(spelling) is expected


@pytest.mark.parametrize("metric", list(Metric))
def test_parse_metric_our_values(metric: Metric) -> None:
    assert parse_metric(metric.value) is metric
    assert parse_metric(metric.value.upper()) is metric


def test_parse_metric_unknown_lists_accepted_values() -> None:
    with pytest.raises(ValueError, match="bleu") as info:
        parse_metric("bleu")
    assert all(metric.value in str(info.value) for metric in Metric)


@pytest.mark.parametrize(
    ("task_type", "metric"),
    [(CLS, Metric.PEARSON), (CLS, Metric.MRR), (REG, Metric.ACC), (RANK, Metric.F1), (RANK, Metric.AUC)],
)
def test_non_applicable_metric_names_metric_and_task_type(task_type: TaskType, metric: Metric) -> None:
    scores = {CLS: one_hot_scores([0, 1], 2), REG: np.array([0.5, 1.5]), RANK: RANK_SCORES[:2]}[task_type]
    with pytest.raises(ValueError, match=rf"'{metric.value}'.*'{task_type.value}'"):
        compute_metrics(task_type, [metric], scores, np.array([0, 1]))
    with pytest.raises(ValueError, match=rf"'{metric.value}'.*'{task_type.value}'"):
        check_metric_applicable(task_type, metric)


def test_regression_scores_shaped_n_by_1() -> None:
    flat = np.array([1.0, 2, 3])
    labels = np.array([1.0, 3, 2])
    wanted = [Metric.PEARSON, Metric.SPEARMAN]
    assert compute_metrics(REG, wanted, flat[:, None], labels) == pytest.approx(
        {"pearson": 50.0, "spearman": 50.0}
    )
    np.testing.assert_array_equal(predictions_from_scores(REG, flat[:, None]), flat)


def test_logits_and_probabilities_agree_on_acc_and_auc() -> None:
    # Logits where the raw class-1 logit orders rows differently from P(class 1):
    #   row 0: logits [5, 4]    -> P(1) = sigmoid(4 - 5)    = 0.27, label 0
    #   row 1: logits [0, -0.5] -> P(1) = sigmoid(-0.5 - 0) = 0.38, label 1
    #   row 2: logits [0, 2]    -> P(1) = sigmoid(2)        = 0.88, label 1
    #   row 3: logits [1, -1]   -> P(1) = sigmoid(-2)       = 0.12, label 0
    # By P(1) every positive outranks every negative -> AUC 100 (by the raw logit 4 it would not);
    # argmax [0, 0, 1, 0] -> acc 3/4.
    logits = np.array([[5.0, 4.0], [0.0, -0.5], [0.0, 2.0], [1.0, -1.0]])
    labels = np.array([0, 1, 1, 0])
    exp = np.exp(logits)
    probs = exp / exp.sum(axis=1, keepdims=True)
    wanted = [Metric.ACC, Metric.AUC]
    expected = {"acc": 75.0, "auc": 100.0}
    assert compute_metrics(CLS, wanted, logits, labels) == pytest.approx(expected)
    assert compute_metrics(CLS, wanted, probs, labels) == pytest.approx(expected)


def test_multiclass_logits_and_probabilities_agree() -> None:
    logits = np.log(AUC3_SCORES) + 3.0  # softmax(log p + c) == p
    wanted = [Metric.ACC, Metric.AUC]
    from_logits = compute_metrics(CLS, wanted, logits, AUC3_LABELS)
    from_probs = compute_metrics(CLS, wanted, AUC3_SCORES, AUC3_LABELS)
    assert from_logits == pytest.approx(from_probs)
    assert from_probs["auc"] == pytest.approx(100 * (0.75 + 1 + 2.5 / 3) / 3)


def test_predictions_from_scores() -> None:
    np.testing.assert_array_equal(predictions_from_scores(CLS, one_hot_scores([2, 0, 1], 3)), [2, 0, 1])
    np.testing.assert_array_equal(predictions_from_scores(RANK, RANK_SCORES), [1, 1, 2, 0])
    # ties: first index, the same tie-break that acc and mrr use
    np.testing.assert_array_equal(predictions_from_scores(RANK, np.full((1, 3), 0.5)), [0])
    assert predictions_from_scores(CLS, one_hot_scores([1], 2)).dtype == np.int64


def test_several_metrics_in_order() -> None:
    labels = np.array([1, 1, 1, 0, 0])
    result = compute_metrics(
        CLS, [Metric.MCC, Metric.ACC, Metric.F1], one_hot_scores([1, 1, 0, 1, 0], 2), labels
    )
    assert list(result) == ["mcc", "acc", "f1"]
    assert result == pytest.approx({"mcc": 100 / 6, "acc": 60.0, "f1": 400 / 6})


@pytest.mark.parametrize(
    ("task_type", "metric", "scores"),
    [
        (CLS, Metric.ACC, np.zeros((0, 2))),
        (REG, Metric.PEARSON, np.zeros(0)),
        (RANK, Metric.MRR, np.zeros((0, 3))),
    ],
)
def test_empty_input_is_a_clear_value_error(task_type: TaskType, metric: Metric, scores: np.ndarray) -> None:
    with pytest.raises(ValueError, match="no examples"):
        compute_metrics(task_type, [metric], scores, np.zeros(0))


def test_constant_inputs_give_nan_correlation_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constant_preds = compute_metrics(
            REG, [Metric.PEARSON, Metric.SPEARMAN], np.full(4, 2.5), np.array([1.0, 2, 3, 4])
        )
        constant_labels = compute_metrics(
            REG, [Metric.PEARSON, Metric.SPEARMAN], np.array([1.0, 2, 3, 4]), np.full(4, 2.5)
        )
        single = compute_metrics(REG, [Metric.PEARSON], np.array([1.0]), np.array([2.0]))
    assert all(math.isnan(value) for value in [*constant_preds.values(), *constant_labels.values()])
    assert math.isnan(single["pearson"])


def test_single_class_f1_mcc_are_zero_without_warnings() -> None:
    # Only class 0 in labels and predictions: no positives -> F1 = 0 (zero_division=0);
    # MCC's denominator is 0 -> 0.
    scores = one_hot_scores([0, 0, 0], 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compute_metrics(CLS, [Metric.F1, Metric.MCC, Metric.AUC], scores, np.array([0, 0, 0]))
    assert result["f1"] == 0.0
    assert result["mcc"] == 0.0
    assert math.isnan(result["auc"])  # one class only: AUC undefined


def test_binary_f1_refuses_more_than_two_classes() -> None:
    with pytest.raises(ValueError, match="f1_macro"):
        compute_metrics(CLS, [Metric.F1], one_hot_scores([0, 1, 2], 3), np.array([0, 1, 2]))


@pytest.mark.parametrize(
    ("task_type", "scores", "labels", "message"),
    [
        (CLS, one_hot_scores([0, 1], 2), np.array([0, 2]), r"\[0, 2\)"),
        (CLS, one_hot_scores([0, 1], 2), np.array([0, 1, 1]), "do not match"),
        (CLS, one_hot_scores([0, 1], 2), np.array([0.0, 0.5]), "integer"),
        (CLS, np.array([[0.1, np.nan], [0.5, 0.5]]), np.array([0, 1]), "NaN"),
        (RANK, RANK_SCORES, np.array([1, 2, 0, 0]), "example 1 points at a -inf padding"),
        (REG, np.ones((2, 2)), np.array([1.0, 2.0]), r"\[N\] or \[N, 1\]"),
    ],
)
def test_malformed_inputs_raise_value_error(
    task_type: TaskType, scores: np.ndarray, labels: np.ndarray, message: str
) -> None:
    metric = {CLS: Metric.ACC, RANK: Metric.MRR, REG: Metric.PEARSON}[task_type]
    with pytest.raises(ValueError, match=message):
        compute_metrics(task_type, [metric], scores, labels)


def test_integral_float_labels_are_accepted() -> None:
    result = compute_metrics(
        CLS, [Metric.ACC], one_hot_scores([0, 1, 0, 0], 2), np.array([0.0, 1.0, 1.0, 0.0])
    )
    assert result == {"acc": 75.0}
