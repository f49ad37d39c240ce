"""Sequence labeling: one tag per word (NER, POS), the tags named by the task's ``labels:`` (BIO for spans).

Data: CoNLL files (``data_utils.conll``). Words are split into word pieces by the fast tokenizer
(``is_split_into_words``); the first piece of each word carries the word's tag, the others are ignored by the
loss, the divergence and the metrics. The cache stores ``token_labels`` (int64, one per token: the tag at a
word's first piece, ``-1`` there when unlabelled, ``-100`` elsewhere) beside the token ids, and ``labels.npy``
holds each row's number of encoded words. A sentence longer than ``max_seq_len`` pieces is cut: its rows
count as ``truncated`` (prepro_std.py prints it per split) and the words lost as ``words_cut`` in
``meta.json``; its predictions cover the words kept.

Model: a linear layer per token, applied at the words' first pieces only: outputs are ``[T, C]`` logits for
the batch's ``T`` words (like mask_lm's masked positions), so the task loss is the cross-entropy per word and
SMART's divergence is averaged over the real (labelled) words. Metrics: span F1 / precision / recall with
seqeval (CoNLL's conlleval rules) and token accuracy, all 0-100.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from enum import StrEnum
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from data_utils.cache import EncodedSplit
from data_utils.conll import TaggedSentence, read_conll
from data_utils.dataset import Batch, Row
from data_utils.enums import DataFormat, HeadType, LossName
from data_utils.kinds import ErrorFactory, class_count
from data_utils.masking import MaskingSpec
from data_utils.metrics import MetricContext, MetricSpec, predictions_from_scores, register_metric
from data_utils.prepro import check_max_seq_len, split_meta
from data_utils.readers import ReadResult
from data_utils.task_def import TaskDef
from module.heads import TokenLinear, check_positions
from mt_dnn.tasks.base import (
    BatchScores,
    BatchShape,
    EncoderOutput,
    Forward,
    HeadOptions,
    ModelInputs,
    Predictions,
    TaskKind,
    assemble_token_rows,
)
from mt_dnn.tasks.registry import register_task_kind

__all__ = ["IGNORED", "UNLABELLED", "SequenceLabeling", "TagMetric", "TokenHead", "align_labels"]

IGNORED = -100  # a piece that is not a word's first: no tag (PyTorch's ignore_index convention)
UNLABELLED = -1  # a word's first piece in an unlabelled split


class TagMetric(StrEnum):
    SPAN_F1 = "span_f1"
    SPAN_PRECISION = "span_precision"
    SPAN_RECALL = "span_recall"
    TOKEN_ACC = "token_acc"


# --- metrics -----------------------------------------------------------------------------------------------


def _tag_sequences(ids: np.ndarray, context: MetricContext) -> list[list[str]]:
    if context.label_names is None or context.row_lengths is None:
        raise ValueError("span metrics need the task's tag names and the words of each row")
    names = context.label_names
    starts = np.concatenate([[0], np.cumsum(context.row_lengths)])
    if int(starts[-1]) != len(ids):
        raise ValueError(f"row lengths cover {int(starts[-1])} words, the scores hold {len(ids)}")
    return [[names[i] for i in ids[starts[r] : starts[r + 1]]] for r in range(len(starts) - 1)]


def _span_metric(name: str) -> Any:
    def metric(scores: np.ndarray, labels: np.ndarray, context: MetricContext) -> float:
        from seqeval import metrics as seqeval_metrics  # imported when a span metric is first computed

        fn = getattr(seqeval_metrics, name)
        gold = _tag_sequences(labels, context)
        predicted = _tag_sequences(scores.argmax(axis=1), context)
        return 100.0 * float(fn(gold, predicted, zero_division=0))

    return metric


def _token_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(scores.argmax(axis=1) == labels))


register_metric(
    TagMetric.SPAN_F1, MetricSpec(_span_metric("f1_score"), higher_is_better=True, uses_context=True)
)
register_metric(
    TagMetric.SPAN_PRECISION,
    MetricSpec(_span_metric("precision_score"), higher_is_better=True, uses_context=True),
)
register_metric(
    TagMetric.SPAN_RECALL, MetricSpec(_span_metric("recall_score"), higher_is_better=True, uses_context=True)
)
register_metric(TagMetric.TOKEN_ACC, MetricSpec(_token_accuracy, higher_is_better=True))


# --- word-piece alignment ----------------------------------------------------------------------------------


def align_labels(word_ids: Sequence[int | None], tags: Sequence[int] | None) -> tuple[np.ndarray, int]:
    """Per token: the word's tag at its first piece (``UNLABELLED`` when ``tags`` is None), ``IGNORED`` at
    the other pieces and the special tokens; and how many words got a first piece."""
    out = np.full(len(word_ids), IGNORED, dtype=np.int64)
    previous: int | None = None
    words = 0
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            out[position] = UNLABELLED if tags is None else tags[word]
            words += 1
        previous = word
    return out, words


# --- the head ----------------------------------------------------------------------------------------------


class TokenHead(TokenLinear):
    """dropout -> Linear(H, C) at the words' first pieces (``positions``): ``[N, L, H]`` -> ``[T, C]``."""

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None,
        pooled_output: Tensor | None = None,
        *,
        positions: Tensor,
    ) -> Tensor:
        check_positions(positions, hidden_states)
        return self.score_tokens(hidden_states[positions])


# --- the kind ----------------------------------------------------------------------------------------------


@register_task_kind
class SequenceLabeling(TaskKind):
    name = "sequence_labeling"
    aliases = ("seqence_labeling", "sequencelabeling", "seqencelabeling")  # mt-dnn spells it SeqenceLabeling
    formats = (DataFormat.PREMISE_ONLY,)
    default_metrics = (TagMetric.SPAN_F1, TagMetric.TOKEN_ACC)
    allowed_metrics = frozenset(TagMetric)
    losses = (LossName.CROSS_ENTROPY,)
    divergences = (LossName.SYM_KL, LossName.KL, LossName.JS)
    suffixes = (".conll", ".txt")
    accepts_perturbation = False
    writes_submission = False
    export_refusal = "sequence labeling has no HF export yet (its head is a per-token linear layer on words)"

    # ---------------------------------------------------------------- YAML
    def n_class(self, given: object, labels: tuple[str, ...] | None, error: ErrorFactory) -> int:
        if labels is None:
            raise error("labels", "a sequence_labeling task names its tags (e.g. [O, B-PER, I-PER])")
        return class_count(given, labels, error, self.name)

    # ---------------------------------------------------------------- reading and encoding
    def read_split(self, path: Path, task_def: TaskDef, *, skip_bad_rows: bool = False) -> ReadResult:
        return read_conll(path, task_def, skip_bad_rows=skip_bad_rows)

    def encode_split(
        self,
        examples: Sequence[Any],
        task_def: TaskDef,
        tokenizer: Any,
        *,
        max_seq_len: int,
        batch_size: int = 2048,
        split: str = "",
        skipped: int = 0,
        progress: bool = False,
        fingerprint: Mapping[str, Any] | None = None,
    ) -> EncodedSplit:
        check_max_seq_len(tokenizer, task_def, max_seq_len)
        sentences: Sequence[TaggedSentence] = examples
        ids: list[list[int]] = []
        types: list[list[int]] | None = []
        token_labels: list[np.ndarray] = []
        words_kept = np.zeros(len(sentences), dtype=np.int64)
        for start in range(0, len(sentences), batch_size):
            chunk = sentences[start : start + batch_size]
            encoded = tokenizer(
                [list(sentence.words) for sentence in chunk],
                is_split_into_words=True,
                truncation=True,
                max_length=max_seq_len,
                return_attention_mask=False,
            )
            ids.extend(encoded["input_ids"])
            if types is not None and encoded.get("token_type_ids") is not None:
                types.extend(encoded["token_type_ids"])
            else:
                types = None
            for j, sentence in enumerate(chunk):
                aligned, words = align_labels(encoded.word_ids(j), sentence.label)
                token_labels.append(aligned)
                words_kept[start + j] = words
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        seq_offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=seq_offsets[1:])
        n_words = np.array([len(sentence.words) for sentence in sentences], dtype=np.int64)
        has_labels = bool(sentences) and sentences[0].label is not None
        meta = split_meta(
            task_def,
            tokenizer,
            split=split,
            n_rows=len(sentences),
            lengths=lengths,
            truncated=int((words_kept < n_words).sum()),
            skipped=skipped,
            has_labels=has_labels,
            max_seq_len=max_seq_len,
            fingerprint=fingerprint,
        )
        meta["words_cut"] = int((n_words - words_kept).sum())
        flat_types = None if types is None else np.fromiter(chain.from_iterable(types), dtype=np.int8)
        return EncodedSplit(
            input_ids=np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())),
            seq_offsets=seq_offsets,
            row_offsets=np.arange(len(ids) + 1, dtype=np.int64),
            labels=words_kept,
            uids=np.array([sentence.uid for sentence in sentences], dtype=str),
            token_type_ids=flat_types,
            meta=meta,
            extras={"token_labels": np.concatenate(token_labels) if token_labels else np.zeros(0, np.int64)},
        )

    # ---------------------------------------------------------------- the cache
    def cached_label_problem(self, split: EncodedSplit, task_def: TaskDef) -> tuple[str, str] | None:
        tags = split.extras.get("token_labels")
        if tags is None:
            return "token_labels", "missing (the cache is not of a sequence_labeling task)"
        if len(tags) != len(split.input_ids):
            return "token_labels", f"{len(tags)} for {len(split.input_ids)} tokens"
        bad = np.flatnonzero((tags != IGNORED) & ((tags < 0) | (tags >= task_def.n_class)))
        if bad.size:
            return "token_labels", f"token {int(bad[0])} has tag {int(tags[bad[0]])}, outside the task's tags"
        return None

    # ---------------------------------------------------------------- rows and batches
    def _tags(self, split: EncodedSplit, index: int) -> np.ndarray:
        start, end = int(split.seq_offsets[index]), int(split.seq_offsets[index + 1])
        return np.asarray(split.extras["token_labels"][start:end])

    def row_label(self, split: EncodedSplit, index: int) -> Any:
        return self._tags(split, index)

    def row_extra(self, split: EncodedSplit, index: int) -> Mapping[str, np.ndarray]:
        return {"word_starts": self._tags(split, index) != IGNORED}

    def collate_labels(
        self, task_def: TaskDef, rows: Sequence[Row], n_sequences: np.ndarray, width: int
    ) -> Tensor:
        labels = np.full((len(rows), width), IGNORED, dtype=np.int64)
        for i, row in enumerate(rows):
            labels[i, : len(row.label)] = row.label
        return torch.from_numpy(labels)

    def collate_extra(self, task_def: TaskDef, rows: Sequence[Row], width: int) -> dict[str, Tensor]:
        starts = np.zeros((len(rows), width), dtype=bool)
        for i, row in enumerate(rows):
            starts[i, : len(row.extra["word_starts"])] = row.extra["word_starts"]
        return {"word_starts": torch.from_numpy(starts)}

    # ---------------------------------------------------------------- model
    def build_head(self, task_def: TaskDef, options: HeadOptions) -> nn.Module:
        self.check_head_type(task_def, (HeadType.LINEAR,))
        return TokenHead(options.hidden_size, task_def.n_class, task_def.dropout_p)

    def run_head(self, head: nn.Module, encoded: EncoderOutput, batch_shape: BatchShape) -> Tensor:
        positions = batch_shape.head_inputs.get("positions")
        if positions is None:
            raise ValueError("a sequence_labeling task needs its words' first pieces (positions=)")
        return head(
            encoded.hidden_states,
            encoded.attention_mask,
            encoded.token_type_ids,
            encoded.pooled,
            positions=positions,
        )

    def model_inputs(
        self, task_def: TaskDef, batch: Batch, masking: MaskingSpec | None, salt: str | None
    ) -> ModelInputs:
        positions = batch.extra["word_starts"]
        targets = None if batch.labels is None else batch.labels[positions]
        return ModelInputs(batch, {"positions": positions}, targets)

    # ---------------------------------------------------------------- inference
    def predict_batch(
        self,
        task_def: TaskDef,
        forward: Forward,
        batch: Batch,
        host_batch: Batch,
        masking: MaskingSpec | None,
        autocast: contextlib.AbstractContextManager[object],
        perturbed: contextlib.AbstractContextManager[object],
    ) -> BatchScores:
        """Per word its tag probabilities (and gold tag), with one host transfer for the batch."""
        inputs = self.model_inputs(task_def, batch, masking, None)
        with autocast, perturbed:
            logits = forward(inputs.batch, **inputs.head_inputs)
        probabilities = torch.softmax(logits.float(), dim=-1)
        counts = inputs.head_inputs["positions"].sum(dim=1)
        parts = [probabilities.flatten(), counts.float()]
        if inputs.targets is not None:
            parts.append(inputs.targets.float())
        host = torch.cat(parts).cpu().numpy()
        n_words, n_class = probabilities.shape
        scores = host[: n_words * n_class].reshape(n_words, n_class)
        rest = host[n_words * n_class :]
        return BatchScores(
            indices=np.zeros(0, dtype=np.int64),
            uids=list(batch.uids),
            scores=scores,
            labels=None if inputs.targets is None else rest[len(batch) :].astype(np.int64),
            n_masked=rest[: len(batch)].astype(np.int64),
        )

    def assemble(self, task_def: TaskDef, outputs: Sequence[BatchScores], n_rows: int) -> Predictions:
        return assemble_token_rows(task_def, outputs, n_rows, width=task_def.n_class)

    def records(self, task_def: TaskDef, predictions: Predictions) -> list[dict[str, Any]]:
        """Per row its words' tags, in word order: ``prediction`` (and the gold ``label`` when labelled)."""
        names = task_def.labels or ()
        predicted = (
            predictions_from_scores(self, predictions.scores) if len(predictions.scores) else np.zeros(0, int)
        )
        assert predictions.n_masked is not None
        starts = np.concatenate([[0], np.cumsum(predictions.n_masked)]).tolist()
        records: list[dict[str, Any]] = []
        for i, uid in enumerate(predictions.uids):
            span = slice(starts[i], starts[i + 1])
            record: dict[str, Any] = {"uid": uid, "prediction": [names[k] for k in predicted[span]]}
            if predictions.labels is not None:
                record["label"] = [names[k] for k in predictions.labels[span]]
            records.append(record)
        return records

    def label_value(self, task_def: TaskDef, value: Any) -> str | int | float:
        return (task_def.labels or ())[int(value)]
