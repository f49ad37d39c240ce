"""Start and end logits of an example's windows -> its best answer text.

Per window, the ``n_best`` highest start logits and the ``n_best`` highest end logits among the context
positions are paired; a pair is a candidate when ``end >= start`` and it spans at most ``max_answer_length``
tokens, scored ``start logit + end logit``. The best candidate over all windows wins and is cut out of the
context through the windows' character spans (from its start token's first character to its end token's
last). The no-answer score is the lowest ``start[0] + end[0]`` over the windows (the window most sure there
is an answer speaks for the example); with ``allow_no_answer`` the prediction is empty when that score
beats the best span's by more than ``no_answer_threshold``, or when no window has a valid span.

``max_context_only`` (BERT's original rule) also requires a span to start at a token to which its window
gives the most context (``Window.max_context``). It is off by default, as in transformers' QA examples. With
it on, a window that holds the whole answer is refused whenever the answer's start sits nearer that window's
edge than in another window that cuts the answer off. With logits pointed at the gold windows of Disfl-QA's
dev split, turning it on loses one answer of 599 and gains none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mt_dnn.tasks.span.windows import NO_CHAR, Window

__all__ = ["SpanCandidate", "SpanPrediction", "decode_example"]


@dataclass(frozen=True)
class SpanCandidate:
    """One scored span: its window, its positions there and its characters in the context."""

    text: str
    score: float
    window: int
    start_position: int
    end_position: int
    start_char: int
    end_char: int


@dataclass(frozen=True)
class SpanPrediction:
    """An example's answer (``""``: no answer), its best spans and its no-answer score."""

    text: str
    n_best: tuple[SpanCandidate, ...]
    no_answer_score: float

    @property
    def is_no_answer(self) -> bool:
        return self.text == ""


def decode_example(
    context: str,
    windows: Sequence[Window],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    allow_no_answer: bool = False,
    no_answer_threshold: float = 0.0,
    max_context_only: bool = False,
) -> SpanPrediction:
    """The best answer to one example from its windows' logits (each ``[L_w]``, padding allowed past the
    window's length)."""
    if not len(windows) == len(start_logits) == len(end_logits):
        raise ValueError(
            f"{len(windows)} windows but {len(start_logits)} start and {len(end_logits)} end logit rows"
        )
    if n_best < 1 or max_answer_length < 1:
        raise ValueError(f"n_best and max_answer_length must be >= 1, got {n_best} and {max_answer_length}")
    candidates: list[SpanCandidate] = []
    no_answer_score = math.inf
    for w, (window, starts, ends) in enumerate(zip(windows, start_logits, end_logits, strict=True)):
        starts = np.asarray(starts, dtype=np.float64)[: len(window)]
        ends = np.asarray(ends, dtype=np.float64)[: len(window)]
        no_answer_score = min(no_answer_score, float(starts[0] + ends[0]))
        found = _window_candidates(
            context, w, window, starts, ends, n_best, max_answer_length, max_context_only
        )
        candidates.extend(found)
    candidates.sort(key=lambda c: (-c.score, c.window, c.start_position, c.end_position))
    best = tuple(candidates[:n_best])
    text = best[0].text if best else ""
    if allow_no_answer and (not best or no_answer_score - best[0].score > no_answer_threshold):
        text = ""
    return SpanPrediction(text=text, n_best=best, no_answer_score=no_answer_score)


def _window_candidates(
    context: str,
    w: int,
    window: Window,
    starts: np.ndarray,
    ends: np.ndarray,
    n_best: int,
    max_answer_length: int,
    max_context_only: bool,
) -> list[SpanCandidate]:
    spans = window.char_spans
    in_context = np.array([span != NO_CHAR for span in spans], dtype=bool)
    in_context[0] = False  # the no-answer slot is scored separately
    positions = np.flatnonzero(in_context)
    if positions.size == 0:
        return []
    start_positions = positions
    if max_context_only and window.max_context:
        start_positions = positions[np.array(window.max_context, dtype=bool)[positions]]
    if start_positions.size == 0:
        return []
    top_starts = start_positions[np.argsort(-starts[start_positions], kind="stable")[:n_best]]
    top_ends = positions[np.argsort(-ends[positions], kind="stable")[:n_best]]
    found = []
    for s in top_starts.tolist():
        for e in top_ends.tolist():
            if e < s or e - s + 1 > max_answer_length:
                continue
            start_char, end_char = spans[s][0], spans[e][1]
            if not np.isfinite(starts[s] + ends[e]):
                continue
            found.append(
                SpanCandidate(
                    text=context[start_char:end_char],
                    score=float(starts[s] + ends[e]),
                    window=w,
                    start_position=s,
                    end_position=e,
                    start_char=start_char,
                    end_char=end_char,
                )
            )
    return found
