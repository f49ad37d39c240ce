"""The ``span`` task kind: extractive QA (SQuAD v1.1 / v2.0), composed of the parts of this package.

Data: SQuAD JSON or flat JSONL (``data_utils.readers_squad``). A cache row is a doc-stride window, not a
question: a context longer than ``max_seq_len`` gives several windows, which train as rows of their own and
are grouped back by question for decoding. Window uids are ``<question id>#<k>``; ``labels.npy`` holds the
answer's start position in the window (0: not in this window, or no answer; -1: unlabelled), and the extra
arrays hold the rest (``arrays.WindowArrays``: per-token context characters, end positions, the question of
each window) and each question's context and gold texts (``texts``).

Model: ``SpanHead``'s ``[N, 2, L]`` start and end logits, flattened to ``[2N, L]`` (a start row and an end
row per window) with ``span_mask`` repeated to match as the output mask. The generic masked losses then are
``span_loss`` (``rank_cross_entropy`` over the positions) and ``span_divergence`` (the task's ``adv_loss``
over the start and end distributions), so SMART and every ``--adv_method`` need no span code.

Inference: scores are the windows' ``[N, 2, L]`` logits (``-inf`` past a window's end); each question's
windows are decoded (``decoding.decode_example``) into its answer, which the metrics (SQuAD's exact match
and F1, 0-100) and the prediction records (one per question id) read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from data_utils.cache import EncodedSplit
from data_utils.dataset import Batch, Row
from data_utils.enums import DataFormat, HeadType, LossName
from data_utils.errors import UserError
from data_utils.kinds import ErrorFactory, checked_n_class
from data_utils.masking import MaskingSpec
from data_utils.metrics import MetricContext, MetricSpec, register_metric
from data_utils.prepro import check_max_seq_len, split_meta
from data_utils.readers import ReadResult
from data_utils.readers_squad import SQUAD_SUFFIXES, SpanExample, read_squad
from data_utils.task_def import TaskDef
from mt_dnn.tasks.base import (
    BatchScores,
    BatchShape,
    EncoderOutput,
    HeadOptions,
    ModelInputs,
    Predictions,
    TaskKind,
    assemble_rows,
)
from mt_dnn.tasks.registry import register_task_kind
from mt_dnn.tasks.span.arrays import EXTRA_ARRAYS, encode_questions, pack_windows
from mt_dnn.tasks.span.head import SpanHead
from mt_dnn.tasks.span.questions import decode_questions, window_uid
from mt_dnn.tasks.span.scoring import SpanMetric, squad_scores
from mt_dnn.tasks.span.settings import SpanSettings
from mt_dnn.tasks.span.texts import TEXT_ARRAYS, pack_texts
from mt_dnn.tasks.span.windows import PairLayout

__all__ = ["Span"]

# --- metrics -----------------------------------------------------------------------------------------------


def _squad_metric(name: SpanMetric) -> Any:
    def metric(scores: np.ndarray, labels: np.ndarray, context: MetricContext) -> float:
        if context.answers is None:
            raise ValueError(f"{name} needs the decoded and gold answers of each question")
        predicted = {uid: text for uid, (text, _) in context.answers.items()}
        gold = {uid: answers for uid, (_, answers) in context.answers.items()}
        return squad_scores(predicted, gold)[name]

    return metric


for _metric in SpanMetric:
    register_metric(_metric, MetricSpec(_squad_metric(_metric), higher_is_better=True, uses_context=True))


# --- the kind ----------------------------------------------------------------------------------------------


def _positive_int(raw: Mapping[str, object], key: str, default: int, error: ErrorFactory) -> int:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(key, f"expected an integer >= 1, got {value!r}")
    return value


def _flag(raw: Mapping[str, object], key: str, default: bool, error: ErrorFactory) -> bool:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise error(key, f"expected true or false, got {value!r}")
    return value


@register_task_kind
class Span(TaskKind):
    name = "span"
    formats = (DataFormat.PREMISE_AND_ONE_HYPOTHESIS,)  # the question and its context
    default_metrics = (SpanMetric.EXACT_MATCH, SpanMetric.F1)
    allowed_metrics = frozenset(SpanMetric)
    losses = (LossName.RANK_CROSS_ENTROPY,)
    divergences = (LossName.SYM_KL, LossName.KL, LossName.JS)
    yaml_keys = frozenset(field.name for field in dataclasses.fields(SpanSettings))
    suffixes = SQUAD_SUFFIXES
    writes_submission = False
    export_refusal = (
        "span has no HF export yet (AutoModelForQuestionAnswering's logits are not masked to the context)"
    )

    # ---------------------------------------------------------------- YAML
    def n_class(self, given: object, labels: tuple[str, ...] | None, error: ErrorFactory) -> int:
        n_class = checked_n_class(given, error)
        if labels is not None:
            raise error("labels", "a span task's labels are answer spans in its files; remove 'labels'")
        if n_class is not None and n_class != 2:
            raise error("n_class", f"a span task scores a start and an end: n_class must be 2, got {n_class}")
        return 2

    def own_fields(self, raw: Mapping[str, object], error: ErrorFactory) -> dict[str, Any]:
        defaults = SpanSettings()
        values: dict[str, Any] = {}
        for field in dataclasses.fields(SpanSettings):
            default = getattr(defaults, field.name)
            read = _flag if isinstance(default, bool) else _positive_int
            values[field.name] = read(raw, field.name, default, error)
        return {"settings": SpanSettings(**values)}

    def own_dict(self, task_def: TaskDef) -> dict[str, Any]:
        return {"n_class": task_def.n_class, **dataclasses.asdict(task_def.settings)}

    # ---------------------------------------------------------------- reading and encoding
    def read_split(self, path: Path, task_def: TaskDef, *, skip_bad_rows: bool = False) -> ReadResult:
        return read_squad(path, skip_bad_rows=skip_bad_rows)

    def encode_split(
        self,
        examples: Sequence[Any],
        task_def: TaskDef,
        tokenizer: Any,
        *,
        max_seq_len: int,
        batch_size: int = 1024,
        split: str = "",
        skipped: int = 0,
        progress: bool = False,
        fingerprint: Mapping[str, Any] | None = None,
    ) -> EncodedSplit:
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(f"{type(tokenizer).__name__} is a slow tokenizer; span windows need a fast one")
        check_max_seq_len(tokenizer, task_def, max_seq_len)
        settings: SpanSettings = task_def.settings
        questions: Sequence[SpanExample] = examples
        asked = [
            (ex.question, ex.context, (ex.answers[0].start, ex.answers[0].end) if ex.answers else None)
            for ex in questions
        ]
        try:
            per_question = encode_questions(
                tokenizer,
                PairLayout.from_tokenizer(tokenizer),
                asked,
                max_seq_len=max_seq_len,
                doc_stride=settings.doc_stride,
                max_question_len=settings.max_question_len,
                batch_size=batch_size,
            )
        except ValueError as error:
            hint = "lower doc_stride or max_question_len, or raise --max_seq_len"
            raise UserError(f"task '{task_def.name}': key 'doc_stride': {error} ({hint})") from None
        labelled = bool(questions) and questions[0].answers is not None
        arrays = pack_windows(per_question, labelled=labelled)
        uids = [
            window_uid(ex.uid, k)
            for ex, windows in zip(questions, per_question, strict=True)
            for k in range(len(windows))
        ]
        lengths = np.diff(arrays.seq_offsets)
        meta = split_meta(
            task_def,
            tokenizer,
            split=split,
            n_rows=len(arrays),
            lengths=lengths,
            truncated=0,  # a long context is windowed, not cut
            skipped=skipped,
            has_labels=labelled,
            max_seq_len=max_seq_len,
            fingerprint=fingerprint,
        )
        meta["questions"] = len(questions)
        meta["windowed_questions"] = sum(len(windows) > 1 for windows in per_question)
        meta["span"] = settings.encoding()
        return EncodedSplit(
            input_ids=arrays.input_ids,
            seq_offsets=arrays.seq_offsets,
            row_offsets=np.arange(len(arrays) + 1, dtype=np.int64),
            labels=arrays.start_positions,
            uids=np.array(uids, dtype=str),
            token_type_ids=arrays.token_type_ids,
            meta=meta,
            extras={**arrays.extras(), **pack_texts(questions)},
        )

    # ---------------------------------------------------------------- the cache
    def cached_label_problem(self, split: EncodedSplit, task_def: TaskDef) -> tuple[str, str] | None:
        missing = [name for name in (*EXTRA_ARRAYS, *TEXT_ARRAYS) if name not in split.extras]
        if missing:
            return missing[0], "missing (the cache is not of a span task)"
        recorded = split.meta.get("span", {})
        for key, value in task_def.settings.encoding().items():
            if key in recorded and recorded[key] != value:
                return key, f"the cache was encoded with {recorded[key]}, the task definition says {value}"
        starts, ends = split.labels, split.extras["end_positions"]
        bad = np.flatnonzero((starts < 0) | (ends < starts) | (ends >= split.seq_lengths))
        if bad.size:
            row = int(bad[0])
            return "labels", (
                f"window {row} (uid {str(split.uids[row])!r}) has the span"
                f" {int(starts[row])}..{int(ends[row])}, outside its {int(split.seq_lengths[row])} tokens"
            )
        return None

    # ---------------------------------------------------------------- rows and batches
    def row_label(self, split: EncodedSplit, index: int) -> Any:
        start = int(split.labels[index])
        return None if start < 0 else (start, int(split.extras["end_positions"][index]))

    def row_extra(self, split: EncodedSplit, index: int) -> Mapping[str, np.ndarray]:
        a, b = int(split.seq_offsets[index]), int(split.seq_offsets[index + 1])
        mask = np.asarray(split.extras["char_starts"][a:b]) >= 0
        mask[0] = True  # the no-answer slot
        return {"span_mask": mask}

    def collate_labels(
        self, task_def: TaskDef, rows: Sequence[Row], n_sequences: np.ndarray, width: int
    ) -> Tensor:
        """Per window its start then its end position: ``[2B]``, matching the flattened ``[2B, L]`` logits."""
        return torch.tensor([position for row in rows for position in row.label], dtype=torch.int64)

    def collate_extra(self, task_def: TaskDef, rows: Sequence[Row], width: int) -> dict[str, Tensor]:
        mask = np.zeros((len(rows), width), dtype=bool)
        for i, row in enumerate(rows):
            mask[i, : len(row.extra["span_mask"])] = row.extra["span_mask"]
        return {"span_mask": torch.from_numpy(mask)}

    # ---------------------------------------------------------------- model
    def build_head(self, task_def: TaskDef, options: HeadOptions) -> nn.Module:
        self.check_head_type(task_def, (HeadType.LINEAR,))
        return SpanHead(options.hidden_size, task_def.dropout_p)

    def run_head(self, head: nn.Module, encoded: EncoderOutput, batch_shape: BatchShape) -> Tensor:
        span_mask = batch_shape.head_inputs.get("span_mask")
        if span_mask is None:
            raise ValueError("a span task needs the positions an answer may take (span_mask=)")
        logits = head(
            encoded.hidden_states,
            encoded.attention_mask,
            encoded.token_type_ids,
            encoded.pooled,
            span_mask=span_mask,
        )
        return logits.reshape(-1, logits.shape[-1])  # [N, 2, L] -> [2N, L]: start, end, start, ...

    def model_inputs(
        self, task_def: TaskDef, batch: Batch, masking: MaskingSpec | None, salt: str | None
    ) -> ModelInputs:
        return ModelInputs(batch, {"span_mask": batch.extra["span_mask"]})

    def output_mask(self, batch: Batch) -> Tensor | None:
        return batch.extra["span_mask"].repeat_interleave(2, dim=0)

    # ---------------------------------------------------------------- inference
    def scores(self, output: Tensor, batch: Batch) -> Tensor:
        """The flattened ``[2B, L]`` logits back as ``[B, 2, L]``: each window's start and end logits."""
        return output.reshape(len(batch), 2, -1)

    def score_buffer(self, task_def: TaskDef, outputs: Sequence[BatchScores], n_rows: int) -> np.ndarray:
        width = max((output.scores.shape[-1] for output in outputs), default=0)
        return np.full((n_rows, 2, width), -np.inf, dtype=np.float32)

    def assemble(self, task_def: TaskDef, outputs: Sequence[BatchScores], n_rows: int) -> Predictions:
        scores = self.score_buffer(task_def, outputs, n_rows)
        padded = [  # each window's start position stands for its labels (the gold texts are in the cache)
            dataclasses.replace(
                output,
                scores=_pad(output.scores, scores.shape[-1]),
                labels=None if output.labels is None else output.labels.reshape(-1, 2)[:, 0],
            )
            for output in outputs
        ]
        return assemble_rows(task_def, padded, scores)

    def metric_context(self, task_def: TaskDef, predictions: Predictions) -> MetricContext:
        answers = {
            question.uid: (question.prediction.text, question.gold or ())
            for question in decode_questions(task_def, predictions)
        }
        return MetricContext(answers=answers)

    def validate_scores(self, scores: np.ndarray) -> np.ndarray:
        if scores.ndim != 3 or scores.shape[1] != 2:
            raise ValueError(f"span scores must be shaped [N, 2, L], got {scores.shape}")
        return scores

    def validate_labels(self, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return labels.astype(np.int64)

    def records(self, task_def: TaskDef, predictions: Predictions) -> list[dict[str, Any]]:
        """One record per question: its answer text (``""``: no answer), its best spans and the gold texts."""
        records: list[dict[str, Any]] = []
        for question in decode_questions(task_def, predictions):
            record: dict[str, Any] = {
                "uid": question.uid,
                "prediction": question.prediction.text,
                "n_best": [{"text": c.text, "score": c.score} for c in question.prediction.n_best],
            }
            if question.gold is not None:
                record["label"] = list(question.gold)
            records.append(record)
        return records


def _pad(scores: np.ndarray, width: int) -> np.ndarray:
    if scores.shape[-1] == width:
        return scores
    out = np.full((*scores.shape[:-1], width), -np.inf, dtype=scores.dtype)
    out[..., : scores.shape[-1]] = scores
    return out
