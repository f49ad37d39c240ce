from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from data_utils.dataset import Collator, TaskDataset
from data_utils.enums import TaskType
from data_utils.metrics import Metric, compute_metrics
from data_utils.prepro import encode_examples
from data_utils.readers import Example
from data_utils.sampler import EvalBatchSampler
from data_utils.task_def import TaskDef, parse_task_def
from mt_dnn.inference import (
    EvalResult,
    Predictions,
    evaluate,
    predict,
    prediction_records,
    ranking_probabilities,
    write_glue_submission,
    write_predictions_jsonl,
)
from mt_dnn.model import MTDNNModel

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "dog",
    "was",
    "very",
    "good",
    "but",
    "movie",
    "film",
    "is",
    "not",
    "bad",
]
ATOL = 1e-5


def make_examples(task_def: TaskDef, n: int = 11, *, labelled: bool = True) -> list[Example]:
    """Rows of very different lengths (so the length sort reorders them); ranking rows have 2-4 candidates."""
    examples = []
    for i in range(n):
        length = 1 + (i * 7) % 13
        premise = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(length))
        hypothesis: str | tuple[str, ...] | None = None
        label: int | float | None
        if task_def.task_type is TaskType.RANKING:
            n_cands = 2 + i % 3
            hypothesis = tuple(
                " ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + c * 2)) for c in range(n_cands)
            )
            label = i % n_cands
        elif task_def.task_type is TaskType.REGRESSION:
            hypothesis = " ".join(WORDS[: 1 + i % 5])
            label = 0.25 * i
        else:
            if task_def.data_format != "premise_only":
                hypothesis = " ".join(WORDS[i % 4 : i % 4 + 3])
            label = i % task_def.n_class
        examples.append(Example(f"uid-{i}", premise, hypothesis, label if labelled else None))
    return examples


def make_dataset(task_def: TaskDef, tokenizer: Any, n: int = 11, *, labelled: bool = True) -> TaskDataset:
    encoded = encode_examples(
        make_examples(task_def, n, labelled=labelled), task_def, tokenizer, max_seq_len=64
    )
    return TaskDataset(task_def, encoded)


def forward_one_row(model: MTDNNModel, dataset: TaskDataset, index: int) -> np.ndarray:
    """The reference: the model on one row alone, unpadded (padding only among a ranking row's candidates)."""
    collator = Collator({dataset.name: dataset.task_def}, pad_token_id=0, pad_to_multiple_of=None)
    batch = collator([dataset[index]])
    with torch.no_grad():
        out = model(
            batch.task,
            batch.input_ids,
            batch.attention_mask,
            batch.token_type_ids,
            n_candidates=batch.n_candidates,
        )
    return out[0].numpy()


@pytest.fixture
def collator(tiny_mtdnn_task_defs: dict[str, TaskDef]) -> Collator:
    return Collator(tiny_mtdnn_task_defs, pad_token_id=0)


@pytest.mark.parametrize("task", ["single", "pair", "score", "rank"])
def test_predict_returns_input_order_equal_to_row_by_row_forwards(
    task: str,
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    model = make_tiny_mtdnn()
    task_def = tiny_mtdnn_task_defs[task]
    dataset = make_dataset(task_def, tiny_tokenizer)
    examples = make_examples(task_def)
    # The length sort does reorder the rows: a bug putting them back would show.
    assert EvalBatchSampler(len(dataset), 3, lengths=dataset.lengths).indices.tolist() != list(
        range(len(dataset))
    )

    predictions = predict(model, dataset, collator, batch_size=3)

    assert predictions.task == task
    assert predictions.uids == [example.uid for example in examples]
    assert predictions.labels is not None
    np.testing.assert_allclose(predictions.labels, [example.label for example in examples], rtol=0, atol=1e-6)
    reference = [forward_one_row(model, dataset, i) for i in range(len(dataset))]
    if task_def.task_type is TaskType.CLASSIFICATION:
        assert predictions.scores.shape == (len(dataset), task_def.n_class)
        expected = np.stack([np.exp(r) / np.exp(r).sum() for r in reference])
        np.testing.assert_allclose(predictions.scores.sum(axis=1), 1.0, atol=1e-6)
    elif task_def.task_type is TaskType.REGRESSION:
        assert predictions.scores.shape == (len(dataset),)
        expected = np.array([float(r) for r in reference])
    else:
        counts = [len(example.hypothesis) for example in examples]  # type: ignore[arg-type]
        assert predictions.scores.shape == (len(dataset), max(counts))
        assert predictions.n_candidates is not None and predictions.n_candidates.tolist() == counts
        expected = np.full(predictions.scores.shape, -np.inf)
        for i, r in enumerate(reference):
            expected[i, : counts[i]] = r
            assert np.isneginf(predictions.scores[i, counts[i] :]).all()
            assert np.isfinite(predictions.scores[i, : counts[i]]).all()
    assert predictions.scores.dtype == np.float32
    np.testing.assert_allclose(predictions.scores, expected, rtol=0, atol=ATOL)
    # The rows are told apart far beyond the tolerance, so a permutation could not pass as equal.
    flat = np.where(np.isfinite(expected), expected, 0.0).reshape(len(dataset), -1)
    gaps = np.abs(flat[:, None, :] - flat[None, :, :]).max(axis=-1) + np.eye(len(dataset))
    assert gaps.min() > 20 * ATOL


def test_predict_restores_each_module_mode(
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    model = make_tiny_mtdnn().train()
    model.encoder.eval()  # a mixed state: frozen-style encoder, training heads
    dataset = make_dataset(tiny_mtdnn_task_defs["pair"], tiny_tokenizer, 4)
    before = {name: module.training for name, module in model.named_modules()}
    first = predict(model, dataset, collator, batch_size=2)
    assert {name: module.training for name, module in model.named_modules()} == before
    assert model.training and not model.encoder.training and model.heads.training
    # Dropout (p = 0.1 in the heads and the encoder) was off: a second run gives the same scores.
    again = predict(model, dataset, collator, batch_size=4)
    np.testing.assert_allclose(first.scores, again.scores, rtol=0, atol=ATOL)
    assert not torch.is_inference_mode_enabled()


def test_san_head_probabilities_are_the_softmax_of_its_log_probabilities(
    make_tiny_mtdnn: Callable[..., MTDNNModel], tiny_tokenizer: Any
) -> None:
    task_def = parse_task_def(
        "nli",
        {
            "task_type": "classification",
            "data_format": "premise_and_one_hypothesis",
            "n_class": 3,
            "head": "san",
        },
    )
    model = make_tiny_mtdnn({"nli": task_def})
    dataset = make_dataset(task_def, tiny_tokenizer, 5)
    predictions = predict(model, dataset, Collator({"nli": task_def}, pad_token_id=0), batch_size=2)
    log_probs = np.stack([forward_one_row(model, dataset, i) for i in range(len(dataset))])
    np.testing.assert_allclose(
        np.exp(log_probs).sum(axis=1), 1.0, atol=1e-5
    )  # the head's outputs are log-probs
    np.testing.assert_allclose(predictions.scores, np.exp(log_probs), rtol=0, atol=ATOL)


def test_predict_under_bf16_autocast_gives_float32_scores_close_to_fp32(
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    model = make_tiny_mtdnn()
    dataset = make_dataset(tiny_mtdnn_task_defs["rank"], tiny_tokenizer, 6)
    full = predict(model, dataset, collator, batch_size=4)
    half = predict(model, dataset, collator, batch_size=4, autocast_dtype=torch.bfloat16)
    assert half.scores.dtype == np.float32
    assert (np.isneginf(half.scores) == np.isneginf(full.scores)).all()
    finite = np.isfinite(full.scores)
    np.testing.assert_allclose(half.scores[finite], full.scores[finite], rtol=0, atol=0.02)


@pytest.mark.parametrize("task", ["single", "pair", "score", "rank"])
def test_evaluate_metrics_equal_compute_metrics_on_the_same_scores(
    task: str,
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    task_def = tiny_mtdnn_task_defs[task]
    dataset = make_dataset(task_def, tiny_tokenizer)
    result = evaluate(make_tiny_mtdnn(), dataset, collator, batch_size=4, device="cpu")
    assert isinstance(result, EvalResult)
    predictions = result.predictions
    assert predictions.labels is not None
    assert list(result.metrics) == [metric.value for metric in task_def.metrics]
    expected = compute_metrics(task_def.task_type, task_def.metrics, predictions.scores, predictions.labels)
    assert result.metrics == pytest.approx(expected, nan_ok=True)
    if task_def.task_type is not TaskType.REGRESSION:  # accuracy by hand
        hits = np.argmax(predictions.scores, axis=1) == np.array([e.label for e in make_examples(task_def)])
        assert result.metrics["acc"] == pytest.approx(100.0 * hits.mean())


def test_evaluate_with_chosen_metrics(
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    dataset = make_dataset(tiny_mtdnn_task_defs["single"], tiny_tokenizer)
    result = evaluate(make_tiny_mtdnn(), dataset, collator, batch_size=4, metrics=[Metric.F1, Metric.MCC])
    assert list(result.metrics) == ["f1", "mcc"]


def test_evaluate_of_a_diverged_model_gives_nan_metrics(
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    model = make_tiny_mtdnn()
    with torch.no_grad():
        model.heads["score"].out_proj.bias.fill_(float("nan"))
    dataset = make_dataset(tiny_mtdnn_task_defs["score"], tiny_tokenizer, 4)
    result = evaluate(model, dataset, collator, batch_size=2)
    assert list(result.metrics) == ["pearson", "spearman"]
    assert all(math.isnan(value) for value in result.metrics.values())
    assert np.isnan(result.predictions.scores).all()


@pytest.mark.parametrize("task", ["pair", "score", "rank"])
def test_unlabelled_split_gives_no_metrics(
    task: str,
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    task_def = tiny_mtdnn_task_defs[task]
    dataset = make_dataset(task_def, tiny_tokenizer, 5, labelled=False)
    result = evaluate(make_tiny_mtdnn(), dataset, collator, batch_size=2)
    assert result.metrics == {}
    assert result.predictions.labels is None and len(result.predictions) == 5
    assert all("label" not in record for record in prediction_records(task_def, result.predictions))


# --- records and files (hand-made predictions) ---------------------------------------------------------------

PAIR = parse_task_def(
    "pair",
    {
        "task_type": "classification",
        "data_format": "premise_and_one_hypothesis",
        "labels": ["entailment", "neutral", "contradiction"],
    },
)
UNNAMED = parse_task_def("cola", {"task_type": "classification", "data_format": "premise_only", "n_class": 2})
SCORE = parse_task_def("stsb", {"task_type": "regression", "data_format": "premise_and_one_hypothesis"})
RANK = parse_task_def("qa", {"task_type": "ranking", "data_format": "premise_and_multi_hypothesis"})


def test_records_for_classification_use_label_names() -> None:
    predictions = Predictions(
        task="pair",
        uids=["a", "b"],
        scores=np.array([[0.2, 0.7, 0.1], [0.5, 0.3, 0.2]], dtype=np.float32),
        labels=np.array([1, 2]),
    )
    records = prediction_records(PAIR, predictions)
    assert [set(record) for record in records] == [{"uid", "prediction", "probabilities", "label"}] * 2
    assert [(r["uid"], r["prediction"], r["label"]) for r in records] == [
        ("a", "neutral", "neutral"),
        ("b", "entailment", "contradiction"),
    ]
    assert records[0]["probabilities"] == pytest.approx([0.2, 0.7, 0.1])
    assert json.loads(json.dumps(records)) == records


def test_records_for_classification_without_label_names_use_indices() -> None:
    predictions = Predictions("cola", ["x"], np.array([[0.25, 0.75]], dtype=np.float32), None)
    assert prediction_records(UNNAMED, predictions) == [
        {"uid": "x", "prediction": 1, "probabilities": [0.25, 0.75]}
    ]


def test_records_for_regression_have_the_score_and_no_probabilities() -> None:
    predictions = Predictions(
        "stsb", ["x", "y"], np.array([3.5, -0.25], dtype=np.float32), np.array([4.0, 0.0])
    )
    assert prediction_records(SCORE, predictions) == [
        {"uid": "x", "prediction": 3.5, "label": 4.0},
        {"uid": "y", "prediction": -0.25, "label": 0.0},
    ]


def test_records_for_ranking_leave_padding_out_of_the_probabilities() -> None:
    predictions = Predictions(
        task="qa",
        uids=["q1", "q2"],
        scores=np.array([[1.0, 2.0, -np.inf], [0.0, 0.0, 0.0]], dtype=np.float32),
        labels=np.array([0, 2]),
        n_candidates=np.array([2, 3]),
    )
    first, second = prediction_records(RANK, predictions)
    e = math.e
    assert first["prediction"] == 1 and first["label"] == 0
    assert first["probabilities"] == pytest.approx([1 / (1 + e), e / (1 + e)])
    assert second["prediction"] == 0 and second["label"] == 2  # a tie goes to the first candidate
    assert second["probabilities"] == pytest.approx([1 / 3] * 3)
    # Without n_candidates the padding is found from the -inf scores.
    predictions.n_candidates = None
    assert prediction_records(RANK, predictions)[0]["probabilities"] == pytest.approx(first["probabilities"])


def test_ranking_probabilities_give_padding_zero() -> None:
    probs = ranking_probabilities(np.array([[0.0, np.log(3.0), -np.inf]]))
    np.testing.assert_allclose(probs, [[0.25, 0.75, 0.0]])


def test_records_refuse_nan_scores() -> None:
    predictions = Predictions("stsb", ["x"], np.array([np.nan], dtype=np.float32), None)
    with pytest.raises(ValueError, match="NaN"):
        prediction_records(SCORE, predictions)


def test_write_predictions_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "out" / "preds.jsonl"
    records = [{"uid": "a", "prediction": "neutral"}, {"uid": "é", "prediction": 2.5}]
    write_predictions_jsonl(path, records)
    assert path.read_text(encoding="utf-8") == (
        '{"uid": "a", "prediction": "neutral"}\n{"uid": "é", "prediction": 2.5}\n'
    )
    assert [p.name for p in path.parent.iterdir()] == ["preds.jsonl"]  # no temp file left
    with pytest.raises(ValueError):
        write_predictions_jsonl(path, [{"uid": "a", "prediction": float("nan")}])
    assert path.read_text(encoding="utf-8").count("\n") == 2  # the old file is intact


def test_glue_submission_classification_with_label_names(tmp_path: Path) -> None:
    predictions = Predictions(
        "pair", ["u7", "u3", "u5"], np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]), None
    )
    path = tmp_path / "MNLI-m.tsv"
    write_glue_submission(path, PAIR, predictions)
    assert path.read_text() == "index\tprediction\n0\tcontradiction\n1\tentailment\n2\tneutral\n"


def test_glue_submission_indices_and_scores(tmp_path: Path) -> None:
    write_glue_submission(
        tmp_path / "CoLA.tsv", UNNAMED, Predictions("cola", ["a", "b"], np.eye(2)[::-1], None)
    )
    assert (tmp_path / "CoLA.tsv").read_text() == "index\tprediction\n0\t1\n1\t0\n"
    scores = np.array([4.25, 0.125, 3.0], dtype=np.float32)
    write_glue_submission(tmp_path / "STS-B.tsv", SCORE, Predictions("stsb", ["a", "b", "c"], scores, None))
    assert (tmp_path / "STS-B.tsv").read_text() == (
        "index\tprediction\n0\t4.250000\n1\t0.125000\n2\t3.000000\n"
    )


# --- several ranks -------------------------------------------------------------------------------------------


def test_predict_needs_a_process_group_for_several_ranks(
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    dataset = make_dataset(tiny_mtdnn_task_defs["pair"], tiny_tokenizer, 4)
    with pytest.raises(ValueError, match="process group"):
        predict(make_tiny_mtdnn(), dataset, collator, batch_size=2, rank=1, world_size=2)


def test_predict_on_two_ranks_gathers_the_whole_split(
    monkeypatch: pytest.MonkeyPatch,
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    """Each rank predicts only its batches; the gathered shares rebuild the one-rank result exactly."""
    model = make_tiny_mtdnn()
    dataset = make_dataset(tiny_mtdnn_task_defs["rank"], tiny_tokenizer)
    single = predict(model, dataset, collator, batch_size=2)

    class Captured(Exception):
        pass

    share_of_rank1: list[Any] = []
    rows_seen: list[int] = []
    original_forward = model.forward

    def counting_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        rows_seen.append(int(args[1].shape[0]) // kwargs["n_candidates"])
        return original_forward(*args, **kwargs)

    def capture(out: list[Any], obj: Any) -> None:
        share_of_rank1.extend(obj)
        raise Captured

    def gather(out: list[Any], obj: Any) -> None:
        out[0], out[1] = obj, share_of_rank1

    monkeypatch.setattr(model, "forward", counting_forward)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_gather_object", capture)
    with pytest.raises(Captured):
        predict(model, dataset, collator, batch_size=2, rank=1, world_size=2)
    rank1_rows = sum(len(output.uids) for output in share_of_rank1)
    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    gathered = predict(model, dataset, collator, batch_size=2, rank=0, world_size=2)

    assert 0 < rank1_rows < len(dataset)  # rank 1 did only its part of the work
    assert sum(rows_seen) == len(dataset)  # the two ranks did each row once between them
    assert gathered.uids == single.uids
    np.testing.assert_array_equal(gathered.scores, single.scores)
    np.testing.assert_array_equal(gathered.labels, single.labels)  # type: ignore[arg-type]
    np.testing.assert_array_equal(gathered.n_candidates, single.n_candidates)  # type: ignore[arg-type]
