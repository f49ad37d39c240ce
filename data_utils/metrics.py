"""Evaluation metrics: one registry mapping each ``Metric`` to its function and applicable task types.

All values are on a 0-100 scale, as in mt-dnn and GLUE reports (accuracy 84.3, Pearson 88.1).

Inputs per task type (``scores`` and ``labels`` have the same length N, N >= 1):

- classification: ``scores`` [N, C] probabilities or logits, ``labels`` [N] class indices. The prediction
  is the argmax (first index on ties). ``f1`` is binary F1 of the positive class (index 1) and needs C == 2.
  ``auc`` uses softmax probabilities (rows that are already non-negative and sum to 1 are taken as they are):
  binary AUC scores by P(class 1), multi-class AUC is one-vs-rest, macro-averaged.
- regression: ``scores`` [N] or [N, 1], ``labels`` [N] real values.
- mask_lm: one entry per masked token, M of them: ``scores`` [M, 2] holds the model's predicted token id
  (column 0) and the log-probability it gives the gold token (column 1, <= 0); ``labels`` [M] the gold
  token ids. A summary rather than the [M, V] logits, which would not fit in memory for a real vocabulary.
  ``mlm_acc`` is the share of masked tokens predicted right; ``perplexity`` is exp(mean cross-entropy over
  the masked tokens), not on the 0-100 scale, and lower is better.
- ranking: ``scores`` [N, K] candidate scores, ``-inf`` in the padding slots of questions with fewer than K
  candidates; ``labels`` [N] index of the right candidate. ``acc`` is top-1 accuracy. ``mrr`` is the mean of
  1/rank of the right candidate, where ties are broken by stable order: a candidate with an equal score and a
  lower index ranks ahead. This matches the argmax prediction, so ``acc`` == 100 exactly when ``mrr`` == 100.

Undefined values are ``nan``, without warnings: Pearson/Spearman when either side is constant or N < 2, and
AUC when a class has no positive or no negative example. F1 and MCC follow scikit-learn's ``zero_division=0``
convention (0.0 when undefined, e.g. only one class present), also without warnings.

Malformed input (no examples, wrong shapes, NaN scores, labels out of range, a metric that does not apply to
the task type) raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from scipy import stats
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score

from data_utils.enums import normalise_spelling, parse_enum
from data_utils.kinds import DataKind, get_kind


class Metric(StrEnum):
    ACC = "acc"
    F1 = "f1"
    MCC = "mcc"
    PEARSON = "pearson"
    SPEARMAN = "spearman"
    AUC = "auc"
    F1_MACRO = "f1_macro"
    F1_MICRO = "f1_micro"
    MRR = "mrr"
    MLM_ACC = "mlm_acc"
    PERPLEXITY = "perplexity"


# mt-dnn's ``metric_meta`` spellings, lower-cased (the others match our values case-insensitively).
METRIC_ALIASES: dict[str, Metric] = {
    "f1mac": Metric.F1_MACRO,
    "f1mic": Metric.F1_MICRO,
}


def parse_metric(name: str) -> str:
    """Parse our lowercase names or mt-dnn's spellings (``ACC``, ``F1MAC``, ``Pearson``...), any case, or
    the name of a metric a task kind registered (``register_metric``)."""
    try:
        return parse_enum(Metric, name, METRIC_ALIASES)
    except ValueError:
        key = normalise_spelling(name) if isinstance(name, str) else None
        for registered in METRICS:
            if key == registered:
                return registered
        raise ValueError(f"unknown value {name!r} (expected one of: {', '.join(METRICS)})") from None


MetricFn = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class MetricContext:
    """What a metric over structured outputs needs besides scores and labels: the task's label names and,
    for per-token kinds, how many entries of the flat scores belong to each row (in row order)."""

    label_names: tuple[str, ...] | None = None
    row_lengths: np.ndarray | None = None
    # Per question id, the decoded answer text and the gold answer texts (extractive QA: the kind decodes the
    # windows' scores back to text, which a metric then compares).
    answers: Mapping[str, tuple[str, tuple[str, ...]]] | None = None


@dataclass(frozen=True)
class MetricSpec:
    """``fn(scores, labels)`` gets validated inputs (see the module docstring) and returns a 0-100 value;
    with ``uses_context`` it is called ``fn(scores, labels, context)``."""

    fn: Callable[..., float]
    higher_is_better: bool
    uses_context: bool = False


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows that are non-negative and sum to 1 are probabilities (renormalised); others get softmax."""
    sums = scores.sum(axis=1)
    if scores.min() >= 0.0 and np.allclose(sums, 1.0, rtol=0.0, atol=1e-4):
        return scores / sums[:, None]
    return _softmax(scores)


def _argmax(scores: np.ndarray) -> np.ndarray:
    """The predicted class / candidate: first index of the row maximum (the one tie-break used everywhere)."""
    return scores.argmax(axis=1).astype(np.int64)


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(_argmax(scores) == labels))


def _binary_f1(scores: np.ndarray, labels: np.ndarray) -> float:
    if scores.shape[1] != 2:
        raise ValueError(
            f"metric 'f1' is binary F1 of class 1 and needs 2 classes, got {scores.shape[1]}; "
            "use f1_macro or f1_micro"
        )
    preds = _argmax(scores)
    return 100.0 * float(f1_score(labels, preds, labels=[0, 1], pos_label=1, zero_division=0))


def _averaged_f1(average: str) -> MetricFn:
    def fn(scores: np.ndarray, labels: np.ndarray) -> float:
        # Averages over the classes present in labels or predictions (scikit-learn's default).
        return 100.0 * float(f1_score(labels, _argmax(scores), average=average, zero_division=0))

    return fn


def _mcc(scores: np.ndarray, labels: np.ndarray) -> float:
    with warnings.catch_warnings():
        # A single class in labels and predictions: MCC is 0.0; the confusion-matrix shape warning is noise.
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        return 100.0 * float(matthews_corrcoef(labels, _argmax(scores)))


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    num_classes = scores.shape[1]
    if num_classes < 2:
        raise ValueError(f"metric 'auc' needs at least 2 classes, got {num_classes}")
    probs = _as_probabilities(scores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if num_classes == 2:
            if np.unique(labels).size < 2:
                return math.nan
            value = roc_auc_score(labels, probs[:, 1])
        else:
            value = roc_auc_score(
                labels, probs, multi_class="ovr", average="macro", labels=list(range(num_classes))
            )
    return 100.0 * float(value)


def _correlation(fn: Callable[[np.ndarray, np.ndarray], Any]) -> MetricFn:
    def metric(scores: np.ndarray, labels: np.ndarray) -> float:
        # Constant input: the correlation is undefined; scipy returns nan and warns, we return nan quietly.
        if scores.size < 2 or np.ptp(scores) == 0.0 or np.ptp(labels) == 0.0:
            return math.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            result = fn(scores, labels)
        return 100.0 * float(result.statistic)

    return metric


def _mrr(scores: np.ndarray, labels: np.ndarray) -> float:
    rows = np.arange(len(labels))
    gold = scores[rows, labels][:, None]
    index = np.arange(scores.shape[1])[None, :]
    ahead = (scores > gold) | ((scores == gold) & (index < labels[:, None]))
    ranks = 1 + ahead.sum(axis=1)
    return 100.0 * float(np.mean(1.0 / ranks))


def _mlm_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(scores[:, 0].astype(np.int64) == labels))


def _perplexity(scores: np.ndarray, labels: np.ndarray) -> float:
    return math.exp(-float(np.mean(scores[:, 1])))


METRICS: dict[str, MetricSpec] = {
    Metric.ACC: MetricSpec(_accuracy, higher_is_better=True),
    Metric.F1: MetricSpec(_binary_f1, higher_is_better=True),
    Metric.MCC: MetricSpec(_mcc, higher_is_better=True),
    Metric.PEARSON: MetricSpec(_correlation(stats.pearsonr), higher_is_better=True),
    Metric.SPEARMAN: MetricSpec(_correlation(stats.spearmanr), higher_is_better=True),
    Metric.AUC: MetricSpec(_auc, higher_is_better=True),
    Metric.F1_MACRO: MetricSpec(_averaged_f1("macro"), higher_is_better=True),
    Metric.F1_MICRO: MetricSpec(_averaged_f1("micro"), higher_is_better=True),
    Metric.MRR: MetricSpec(_mrr, higher_is_better=True),
    Metric.MLM_ACC: MetricSpec(_mlm_accuracy, higher_is_better=True),
    Metric.PERPLEXITY: MetricSpec(_perplexity, higher_is_better=False),
}
"""Metric name -> its function: the built-in ``Metric``s and those a kind registers (``register_metric``).
Which metrics a task type allows is the kind's ``allowed_metrics``."""


def register_metric(name: StrEnum, spec: MetricSpec) -> None:
    """Add a metric (a task kind's own, e.g. span F1); a name given twice is an error."""
    if str(name) in METRICS:
        raise ValueError(f"metric '{name}' is registered twice")
    METRICS[name] = spec


def metric_spec(name: str) -> MetricSpec:
    try:
        return METRICS[str(name)]
    except KeyError:
        raise ValueError(f"unknown metric {name!r} (known: {', '.join(METRICS)})") from None


def _kind(kind: DataKind | str) -> DataKind:
    return kind if isinstance(kind, DataKind) else get_kind(kind)


def check_metric_applicable(kind: DataKind | str, metric: str) -> None:
    """Raise ``ValueError`` naming the metric and task type if ``metric`` does not apply to the kind."""
    data_kind = _kind(kind)
    metric_spec(metric)
    if str(metric) not in data_kind.allowed_metrics:
        allowed = ", ".join(sorted(data_kind.allowed_metrics))
        raise ValueError(
            f"metric {str(metric)!r} does not apply to task type {data_kind.name!r} (applicable: {allowed})"
        )


def _validate_scores(kind: DataKind, scores: np.ndarray) -> np.ndarray:
    """``scores`` as float64 in the kind's shape; malformed input is a ``ValueError``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim >= 1 and scores.shape[0] == 0:
        raise ValueError(f"no examples to evaluate for a {kind.name} task (scores shape {scores.shape})")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN (did the model diverge?)")
    return kind.validate_scores(scores)


def _validate_labels(kind: DataKind, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels shaped {labels.shape} do not match scores shaped {scores.shape}")
    return kind.validate_labels(labels, scores)


def predictions_from_scores(kind: DataKind | str, scores: np.ndarray) -> np.ndarray:
    """What the kind predicts from its scores: argmax indices (int64) for classification and ranking, the
    flat score [N] for regression, the predicted token ids [M] for mask_lm (``DataKind.predicted``)."""
    data_kind = _kind(kind)
    return data_kind.predicted(_validate_scores(data_kind, scores))


def compute_metrics(
    kind: DataKind | str,
    metrics: Sequence[str],
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    context: MetricContext | None = None,
) -> dict[str, float]:
    """Compute each metric (0-100 scale) and return ``{metric name: value}`` in the order given.

    ``kind``: the task's kind, or its type's name. ``context``: what metrics over structured outputs need
    besides scores and labels (label names, tokens per row); metrics that take no context ignore it."""
    data_kind = _kind(kind)
    wanted = [str(metric) for metric in metrics]
    for metric in wanted:
        check_metric_applicable(data_kind, metric)
    scores = _validate_scores(data_kind, scores)
    labels = _validate_labels(data_kind, labels, scores)
    given = context if context is not None else MetricContext()
    values: dict[str, float] = {}
    for metric in wanted:
        spec = METRICS[metric]
        values[metric] = spec.fn(scores, labels, given) if spec.uses_context else spec.fn(scores, labels)
    return values
