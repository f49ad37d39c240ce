"""The ``span`` task type (extractive QA, SQuAD-style): the registered kind (``kind``) and its parts.

- ``head``: the start/end head, its loss and its adversarial divergence;
- ``windows``: doc-stride windows over long contexts, with each token's context characters;
- ``arrays``: a split's windows <-> the flat 1-D arrays of the token-id cache;
- ``decoding``: an example's windows' logits -> its best answer text;
- ``scoring``: SQuAD's exact match and F1;
- ``texts``: each question's context and gold texts as cache arrays;
- ``settings``: a span task's own YAML keys; ``questions``: window predictions grouped back and decoded;
- ``kind``: the ``TaskKind`` composing them (``mt_dnn.tasks`` imports it, which registers it).
"""

from mt_dnn.tasks.span.arrays import UNLABELLED, WindowArrays, encode_questions, pack_windows
from mt_dnn.tasks.span.decoding import SpanCandidate, SpanPrediction, decode_example
from mt_dnn.tasks.span.head import SpanHead, span_divergence, span_loss
from mt_dnn.tasks.span.scoring import SpanMetric, exact_match, normalize_answer, span_f1, squad_scores
from mt_dnn.tasks.span.windows import (
    NO_CHAR,
    CharSpan,
    PairLayout,
    Window,
    answer_token_span,
    doc_windows,
    tokenize_texts,
    tokenize_with_offsets,
)

__all__ = [
    "NO_CHAR",
    "UNLABELLED",
    "CharSpan",
    "PairLayout",
    "SpanCandidate",
    "SpanHead",
    "SpanMetric",
    "SpanPrediction",
    "Window",
    "WindowArrays",
    "answer_token_span",
    "decode_example",
    "doc_windows",
    "encode_questions",
    "exact_match",
    "normalize_answer",
    "pack_windows",
    "span_divergence",
    "span_f1",
    "span_loss",
    "squad_scores",
    "tokenize_texts",
    "tokenize_with_offsets",
]
