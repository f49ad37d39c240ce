"""SQuAD's exact match and F1, on a 0-100 scale like every metric of the project.

Answers are compared after SQuAD's normalisation: lower case, punctuation removed, the articles ``a``,
``an`` and ``the`` removed, whitespace collapsed. A prediction scores its best match over the gold answers.
A question without an answer has the gold answers ``[""]`` (or none): only an empty prediction matches it,
and F1 against an empty answer is 1 when both are empty, else 0 (SQuAD v2's rule).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from enum import StrEnum

__all__ = ["SpanMetric", "exact_match", "normalize_answer", "span_f1", "squad_scores"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class SpanMetric(StrEnum):
    """Names distinct from the metric registry's others (``f1`` is binary F1, ``span_f1`` seqeval's)."""

    EXACT_MATCH = "exact_match"
    F1 = "squad_f1"


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold_answers: Sequence[str]) -> list[str]:
    return list(gold_answers) or [""]


def exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(gold) for gold in _golds(gold_answers)))


def span_f1(prediction: str, gold_answers: Sequence[str]) -> float:
    """The best token-overlap F1 of the prediction against the gold answers, in [0, 1]."""
    return max(_f1(prediction, gold) for gold in _golds(gold_answers))


def _f1(prediction: str, gold: str) -> float:
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def squad_scores(
    predictions: Mapping[str, str], gold: Mapping[str, Sequence[str]]
) -> dict[SpanMetric, float]:
    """Mean exact match and F1 (0-100) over the questions of ``gold``; a question with no prediction scores
    as an empty answer. ``ValueError`` for no questions or a prediction of an unknown question."""
    if not gold:
        raise ValueError("squad_scores: no questions")
    unknown = sorted(set(predictions) - set(gold))
    if unknown:
        raise ValueError(f"squad_scores: prediction for unknown question {unknown[0]!r}")
    em = sum(exact_match(predictions.get(uid, ""), answers) for uid, answers in gold.items())
    f1 = sum(span_f1(predictions.get(uid, ""), answers) for uid, answers in gold.items())
    return {SpanMetric.EXACT_MATCH: 100.0 * em / len(gold), SpanMetric.F1: 100.0 * f1 / len(gold)}
