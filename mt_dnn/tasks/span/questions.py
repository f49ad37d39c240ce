"""A split's window predictions grouped back into questions and decoded into answers.

Window uids are ``<question id>#<k>``; ``example_index`` (a cache array) names each window's question in
split order, and the cache's text arrays give that question's context and gold answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_utils.cache import EncodedSplit
from data_utils.task_def import TaskDef
from mt_dnn.tasks.base import Predictions
from mt_dnn.tasks.span.arrays import EXTRA_ARRAYS, WindowArrays
from mt_dnn.tasks.span.decoding import SpanPrediction, decode_example
from mt_dnn.tasks.span.settings import SpanSettings
from mt_dnn.tasks.span.texts import QuestionTexts

__all__ = ["DecodedQuestion", "decode_questions", "question_id", "window_arrays", "window_uid"]

_WINDOW_MARK = "#"


def window_uid(question: str, k: int) -> str:
    """The uid of a question's ``k``-th window."""
    return f"{question}{_WINDOW_MARK}{k}"


@dataclass(frozen=True)
class DecodedQuestion:
    """One question's answer: its id, the decoding and the gold texts (``None`` when unlabelled)."""

    uid: str
    prediction: SpanPrediction
    gold: tuple[str, ...] | None


def question_id(uid: str) -> str:
    """A window's uid ``<question id>#<k>`` -> the question id."""
    return uid.rsplit(_WINDOW_MARK, 1)[0]


def window_arrays(split: EncodedSplit) -> WindowArrays:
    """A span cache split's arrays as ``WindowArrays``."""
    extras = split.extras
    types = split.token_type_ids
    return WindowArrays(
        input_ids=split.input_ids,
        token_type_ids=np.zeros(len(split.input_ids), np.int8) if types is None else types,
        seq_offsets=split.seq_offsets,
        start_positions=split.labels,
        **{name: extras[name] for name in EXTRA_ARRAYS},
    )


def _split_rows(uids: Sequence[str], split: EncodedSplit) -> np.ndarray:
    """The split row of each predicted window (the whole split in order, or a subset found by uid)."""
    if len(uids) == len(split) and all(a == b for a, b in zip(uids, split.uids.tolist(), strict=True)):
        return np.arange(len(uids))
    index = {str(uid): i for i, uid in enumerate(split.uids.tolist())}
    return np.array([index[uid] for uid in uids], dtype=np.int64)


def decode_questions(task_def: TaskDef, predictions: Predictions) -> list[DecodedQuestion]:
    """Each question's answer from its windows' scores, questions in split order."""
    split = predictions.source
    if split is None:
        raise ValueError(f"task '{task_def.name}': span predictions need their cache split (source)")
    settings: SpanSettings = task_def.settings
    rows = _split_rows(predictions.uids, split)
    arrays = window_arrays(split)
    texts = QuestionTexts(split.extras)
    owner = np.asarray(split.extras["example_index"])[rows]
    order = np.argsort(owner, kind="stable")
    bounds = np.flatnonzero(np.diff(owner[order])) + 1
    decoded: list[DecodedQuestion] = []
    for group in np.split(order, bounds) if len(order) else []:
        q = int(owner[group[0]])
        windows = [arrays.window(int(rows[i])) for i in group]
        prediction = decode_example(
            texts.context(q),
            windows,
            [predictions.scores[i, 0] for i in group],
            [predictions.scores[i, 1] for i in group],
            n_best=settings.n_best,
            max_answer_length=settings.max_answer_length,
            allow_no_answer=settings.allow_no_answer,
            max_context_only=settings.max_context_only,
        )
        gold = texts.answers(q) if split.has_labels else None
        decoded.append(DecodedQuestion(question_id(predictions.uids[group[0]]), prediction, gold))
    return decoded
