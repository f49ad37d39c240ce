"""Doc-stride windows: a question and a long context -> model inputs that each fit ``max_seq_len``.

Every window is ``prefix + question + middle + context piece + suffix``, the special tokens and segment ids
taken from the tokenizer's own post-processor (``PairLayout.from_tokenizer``), so BERT (``[CLS] q [SEP] c
[SEP]``) and RoBERTa (``<s> q </s></s> c </s>``) need no code of their own. Consecutive pieces start
``doc_stride`` context tokens apart (the original BERT's meaning of doc stride; the overlap is the piece
length minus ``doc_stride``), and the last piece ends at the context's end.

Each window keeps, per position, the context characters its token covers (``(-1, -1)`` for question and
special tokens), which is what decoding maps a span back to text with, and the answer's start and end
positions inside it, or position 0 (the first special token, ``[CLS]``) when the window does not hold the
whole answer or the question has none (SQuAD v2's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NO_CHAR",
    "CharSpan",
    "PairLayout",
    "Window",
    "answer_token_span",
    "doc_windows",
    "tokenize_texts",
    "tokenize_with_offsets",
]

CharSpan = tuple[int, int]
"""Characters ``[start, end)`` of a text."""

NO_CHAR: CharSpan = (-1, -1)
"""The character span of a token that is not from the context."""


@dataclass(frozen=True)
class PairLayout:
    """Where a tokenizer puts its special tokens around a pair, and the segment id of each part."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    middle_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    question_type: int = 0
    context_type: int = 1

    def __post_init__(self) -> None:
        if not self.prefix:
            raise ValueError("a pair layout needs a leading special token (position 0 is the no-answer slot)")

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> PairLayout:
        """Read the layout off one encoded pair (the post-processor's special tokens and segment ids)."""
        encoding = tokenizer("question", "context", return_token_type_ids=True)
        ids = list(encoding["input_ids"])
        types = list(encoding.get("token_type_ids") or [0] * len(ids))
        sequence = encoding.sequence_ids()
        first = [i for i, s in enumerate(sequence) if s == 0]
        second = [i for i, s in enumerate(sequence) if s == 1]
        if not first or not second:
            raise ValueError("the tokenizer does not encode text pairs (no second sequence)")
        q_end, c_start, c_end = first[-1] + 1, second[0], second[-1] + 1
        return cls(
            prefix=tuple(ids[: first[0]]),
            middle=tuple(ids[q_end:c_start]),
            suffix=tuple(ids[c_end:]),
            prefix_types=tuple(types[: first[0]]),
            middle_types=tuple(types[q_end:c_start]),
            suffix_types=tuple(types[c_end:]),
            question_type=types[first[0]],
            context_type=types[c_start],
        )


@dataclass(frozen=True)
class Window:
    """One model input of a (question, context) pair.

    ``char_spans[i]``: the context characters of position ``i`` (``NO_CHAR`` outside the context);
    ``context_start``: the index, among the context's tokens, of the window's first context token;
    ``start_position`` / ``end_position``: the answer's first and last positions here, 0 when not inside.
    """

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]
    char_spans: tuple[CharSpan, ...]
    context_offset: int  # position of the first context token
    context_start: int
    n_context: int
    start_position: int = 0
    end_position: int = 0
    # Per position: whether this window gives the token more context than any other window does (BERT's
    # rule, see ``_max_context``); empty: every context token counts as such.
    max_context: tuple[bool, ...] = ()

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def has_answer(self) -> bool:
        return self.start_position > 0

    def span_mask(self) -> list[bool]:
        """The positions a span may point at: the no-answer slot (0) and the context tokens."""
        return [i == 0 or span != NO_CHAR for i, span in enumerate(self.char_spans)]


def tokenize_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[CharSpan]]:
    """A text's token ids without special tokens and each token's characters (a fast tokenizer's offsets)."""
    return tokenize_texts(tokenizer, [text])[0]


def tokenize_texts(tokenizer: Any, texts: Sequence[str]) -> list[tuple[list[int], list[CharSpan]]]:
    """``tokenize_with_offsets`` of many texts in one batched call of the fast tokenizer."""
    # verbose=False: a long context is the point here, not a mistake to warn about
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [
        (list(ids), [(int(a), int(b)) for a, b in offsets])
        for ids, offsets in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ]


def answer_token_span(offsets: Sequence[CharSpan], answer: CharSpan) -> tuple[int, int] | None:
    """The first and last context tokens overlapping the answer's characters; ``None`` if none does."""
    start_char, end_char = answer
    covered = [i for i, (a, b) in enumerate(offsets) if a < end_char and b > start_char and b > a]
    if not covered:
        return None
    return covered[0], covered[-1]


def doc_windows(
    question_ids: Sequence[int],
    context_ids: Sequence[int],
    offsets: Sequence[CharSpan],
    max_seq_len: int,
    doc_stride: int,
    layout: PairLayout,
    *,
    answer: CharSpan | None = None,
    max_question_len: int = 64,
) -> list[Window]:
    """Cut the context into windows of at most ``max_seq_len`` tokens, ``doc_stride`` context tokens apart.

    The question keeps its first ``max_question_len`` tokens. ``answer``: the answer's characters in the
    context (``None``: no answer). ``ValueError`` when no context token fits, when the stride would skip
    context tokens (``doc_stride`` larger than a window's context room), or when ids and offsets disagree.
    """
    if len(context_ids) != len(offsets):
        raise ValueError(f"{len(context_ids)} context ids but {len(offsets)} offsets")
    if doc_stride < 1:
        raise ValueError(f"doc_stride must be >= 1, got {doc_stride}")
    question = list(question_ids[:max_question_len])
    room = max_seq_len - len(question) - layout.n_special
    if room < 1:
        raise ValueError(
            f"max_seq_len {max_seq_len} leaves no room for the context after a {len(question)}-token question"
            f" and {layout.n_special} special tokens"
        )
    if doc_stride > room:
        raise ValueError(f"doc_stride {doc_stride} > {room} context tokens per window: some would be skipped")
    answer_tokens = None if answer is None else answer_token_span(offsets, answer)
    head = list(layout.prefix) + question + list(layout.middle)
    head_types = (
        list(layout.prefix_types) + [layout.question_type] * len(question) + list(layout.middle_types)
    )
    windows: list[Window] = []
    starts = _piece_starts(len(context_ids), room, doc_stride)
    pieces = [(start, min(start + room, len(context_ids))) for start in starts]
    for (start, end), best in zip(pieces, _max_context(pieces), strict=True):
        ids = head + list(context_ids[start:end]) + list(layout.suffix)
        types = head_types + [layout.context_type] * (end - start) + list(layout.suffix_types)
        chars = [(int(a), int(b)) for a, b in offsets[start:end]]
        spans = [NO_CHAR] * len(head) + chars + [NO_CHAR] * len(layout.suffix)
        start_position = end_position = 0
        if answer_tokens is not None and start <= answer_tokens[0] and answer_tokens[1] < end:
            start_position = len(head) + answer_tokens[0] - start
            end_position = len(head) + answer_tokens[1] - start
        windows.append(
            Window(
                input_ids=tuple(ids),
                token_type_ids=tuple(types),
                char_spans=tuple(spans),
                context_offset=len(head),
                context_start=start,
                n_context=end - start,
                start_position=start_position,
                end_position=end_position,
                max_context=tuple([False] * len(head) + best + [False] * len(layout.suffix)),
            )
        )
    return windows


def _max_context(pieces: Sequence[tuple[int, int]]) -> list[list[bool]]:
    """Per piece ``[start, end)`` and per token in it: whether no other piece gives the token more context.

    A token's context in a piece is the smaller of its left and right neighbours there, plus a hundredth of
    the piece's length (BERT's SQuAD rule); the first piece wins a tie. Decoding starts spans only at such
    tokens, so an answer near a window's edge is read from the window that sees around it.
    """
    best: dict[int, tuple[float, int]] = {}
    for k, (start, end) in enumerate(pieces):
        for i in range(start, end):
            score = min(i - start, end - 1 - i) + 0.01 * (end - start)
            if i not in best or score > best[i][0]:
                best[i] = (score, k)
    return [[best[i][1] == k for i in range(start, end)] for k, (start, end) in enumerate(pieces)]


def _piece_starts(n_tokens: int, room: int, stride: int) -> list[int]:
    """Start of each context piece: 0, stride, 2*stride, ... until a piece reaches the end (one empty
    piece for an empty context)."""
    starts = [0]
    while starts[-1] + room < n_tokens:
        starts.append(starts[-1] + stride)
    return starts
