"""Each question's context and gold answer texts as flat 1-D cache arrays, and read back.

Decoding cuts the answer out of the context and EM/F1 compare it with the gold texts, neither of which the
token ids hold. The cache allows only 1-D arrays without pickles, and a numpy string array is as wide as its
longest entry, so the texts are stored as UTF-8 bytes: ``text_bytes`` (uint8) cut by ``text_offsets``
(int64 ``[T + 1]``), and ``question_texts`` (int64 ``[Q + 1]``) giving each question its run of texts:
the context first, then its gold answers (none for a question without an answer, or an unlabelled one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from data_utils.readers_squad import SpanExample

__all__ = ["TEXT_ARRAYS", "QuestionTexts", "pack_texts"]

TEXT_ARRAYS = ("text_bytes", "text_offsets", "question_texts")


def pack_texts(examples: Sequence[SpanExample]) -> dict[str, np.ndarray]:
    """The three text arrays of a split's questions, in split order."""
    encoded: list[bytes] = []
    per_question = np.zeros(len(examples) + 1, dtype=np.int64)
    for q, example in enumerate(examples):
        texts = [example.context, *(answer.text for answer in example.answers or ())]
        encoded.extend(text.encode("utf-8") for text in texts)
        per_question[q + 1] = per_question[q] + len(texts)
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return {"text_bytes": blob, "text_offsets": offsets, "question_texts": per_question}


class QuestionTexts:
    """Read access to the text arrays of one split (``extras``: the split's named arrays)."""

    def __init__(self, extras: Mapping[str, np.ndarray]) -> None:
        self._bytes = extras["text_bytes"]
        self._offsets = extras["text_offsets"]
        self._questions = extras["question_texts"]

    def __len__(self) -> int:
        return len(self._questions) - 1

    def _text(self, t: int) -> str:
        start, end = int(self._offsets[t]), int(self._offsets[t + 1])
        return bytes(self._bytes[start:end]).decode("utf-8")

    def context(self, q: int) -> str:
        return self._text(int(self._questions[q]))

    def answers(self, q: int) -> tuple[str, ...]:
        """Question ``q``'s gold answer texts (``()``: no answer, or unlabelled)."""
        first, end = int(self._questions[q]) + 1, int(self._questions[q + 1])
        return tuple(self._text(t) for t in range(first, end))
