"""A split's windows <-> the flat 1-D arrays the token-id cache stores, and questions -> their windows.

The cache keeps every array 1-D (``data_utils.cache``), so a window's parts are spread over per-token arrays
(``input_ids``, ``token_type_ids``, ``char_starts``, ``char_ends``, ``max_context``, cut by ``seq_offsets``)
and per-window arrays (``start_positions``, ``end_positions``, ``context_starts``, ``example_index``: the
question, in split order, that the window belongs to). Unlabelled questions get positions ``-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mt_dnn.tasks.span.windows import NO_CHAR, CharSpan, PairLayout, Window, doc_windows, tokenize_texts

__all__ = ["EXTRA_ARRAYS", "UNLABELLED", "WindowArrays", "encode_questions", "pack_windows"]

UNLABELLED = -1
EXTRA_ARRAYS = ("char_starts", "char_ends", "max_context", "end_positions", "context_starts", "example_index")


@dataclass(frozen=True, eq=False)
class WindowArrays:
    """A split's windows as flat arrays (``T`` tokens over ``N`` windows)."""

    input_ids: np.ndarray  # int32 [T]
    token_type_ids: np.ndarray  # int8 [T]
    seq_offsets: np.ndarray  # int64 [N + 1]
    char_starts: np.ndarray  # int32 [T], -1 outside the context
    char_ends: np.ndarray  # int32 [T]
    max_context: np.ndarray  # int8 [T], 0/1
    start_positions: np.ndarray  # int64 [N], -1 when unlabelled
    end_positions: np.ndarray  # int64 [N]
    context_starts: np.ndarray  # int64 [N]
    example_index: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.seq_offsets) - 1

    def extras(self) -> dict[str, np.ndarray]:
        """The arrays beyond a cache split's own (ids, types, offsets; ``start_positions`` as its labels)."""
        return {name: getattr(self, name) for name in EXTRA_ARRAYS}

    def window(self, i: int) -> Window:
        """Window ``i`` back as a ``Window`` (unlabelled positions read as 0, no answer; a window without
        context tokens gets its length as ``context_offset``)."""
        a, b = int(self.seq_offsets[i]), int(self.seq_offsets[i + 1])
        starts, ends = self.char_starts[a:b], self.char_ends[a:b]
        inside = np.flatnonzero(starts >= 0)
        spans: tuple[CharSpan, ...] = tuple(
            (int(s), int(e)) if s >= 0 else NO_CHAR
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
        )
        return Window(
            input_ids=tuple(self.input_ids[a:b].tolist()),
            token_type_ids=tuple(self.token_type_ids[a:b].tolist()),
            char_spans=spans,
            context_offset=int(inside[0]) if inside.size else b - a,
            context_start=int(self.context_starts[i]),
            n_context=int(inside.size),
            start_position=max(int(self.start_positions[i]), 0),
            end_position=max(int(self.end_positions[i]), 0),
            max_context=tuple(bool(flag) for flag in self.max_context[a:b].tolist()),
        )

    def by_example(self) -> list[np.ndarray]:
        """Per question (in split order), the indices of its windows."""
        n_examples = int(self.example_index.max()) + 1 if len(self) else 0
        order = np.argsort(self.example_index, kind="stable")
        bounds = np.searchsorted(self.example_index[order], np.arange(n_examples + 1))
        return [order[bounds[q] : bounds[q + 1]] for q in range(n_examples)]


def encode_questions(
    tokenizer: Any,
    layout: PairLayout,
    questions: Sequence[tuple[str, str, CharSpan | None]],
    *,
    max_seq_len: int,
    doc_stride: int,
    max_question_len: int = 64,
    batch_size: int = 1024,
) -> list[list[Window]]:
    """``(question, context, answer characters or None)`` -> each question's windows.

    Questions and contexts are tokenized in batches, each distinct context once (SQuAD asks about five
    questions per paragraph)."""
    contexts = list(dict.fromkeys(context for _, context, _ in questions))
    tokenized = _batched(tokenizer, contexts, batch_size)
    by_context = dict(zip(contexts, tokenized, strict=True))
    asked = _batched(tokenizer, [question for question, _, _ in questions], batch_size)
    windows = []
    for (question_ids, _), (_, context, answer) in zip(asked, questions, strict=True):
        context_ids, offsets = by_context[context]
        windows.append(
            doc_windows(
                question_ids,
                context_ids,
                offsets,
                max_seq_len,
                doc_stride,
                layout,
                answer=answer,
                max_question_len=max_question_len,
            )
        )
    return windows


def _batched(tokenizer: Any, texts: list[str], size: int) -> list[tuple[list[int], list[CharSpan]]]:
    return [
        piece for i in range(0, len(texts), size) for piece in tokenize_texts(tokenizer, texts[i : i + size])
    ]


def pack_windows(per_question: Sequence[Sequence[Window]], *, labelled: bool = True) -> WindowArrays:
    """Flatten each question's windows, in order, into ``WindowArrays``."""
    windows = [window for question in per_question for window in question]
    owner = [q for q, question in enumerate(per_question) for _ in question]
    lengths = np.array([len(w) for w in windows], dtype=np.int64)
    seq_offsets = np.zeros(len(windows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=seq_offsets[1:])
    spans = np.array([span for w in windows for span in w.char_spans], dtype=np.int32).reshape(-1, 2)

    def per_window(values: list[int]) -> np.ndarray:
        return np.array(values, dtype=np.int64).reshape(len(windows))

    def per_token(values: list[int], dtype: type) -> np.ndarray:
        return np.array(values, dtype=dtype).reshape(int(seq_offsets[-1]))

    return WindowArrays(
        input_ids=per_token([i for w in windows for i in w.input_ids], np.int32),
        token_type_ids=per_token([t for w in windows for t in w.token_type_ids], np.int8),
        seq_offsets=seq_offsets,
        char_starts=np.ascontiguousarray(spans[:, 0]),
        char_ends=np.ascontiguousarray(spans[:, 1]),
        max_context=per_token([int(f) for w in windows for f in (w.max_context or [0] * len(w))], np.int8),
        start_positions=per_window([w.start_position if labelled else UNLABELLED for w in windows]),
        end_positions=per_window([w.end_position if labelled else UNLABELLED for w in windows]),
        context_starts=per_window([w.context_start for w in windows]),
        example_index=per_window(owner),
    )
