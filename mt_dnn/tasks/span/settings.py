"""A span task's own YAML keys, parsed into ``TaskDef.settings`` by the kind."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SpanSettings"]


@dataclass(frozen=True)
class SpanSettings:
    """A span task's own YAML keys (``TaskDef.settings``)."""

    max_answer_length: int = 30  # tokens
    doc_stride: int = 128  # context tokens between the starts of consecutive windows
    max_question_len: int = 64  # tokens of the question kept
    n_best: int = 20  # start and end candidates per window, and spans listed per question
    allow_no_answer: bool = False  # SQuAD v2: an empty answer may win
    max_context_only: bool = False  # BERT's rule: a span starts where its window gives most context

    # What the cached windows depend on (a change asks for prepro_std.py again).
    ENCODING = ("doc_stride", "max_question_len")

    def encoding(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in self.ENCODING}
