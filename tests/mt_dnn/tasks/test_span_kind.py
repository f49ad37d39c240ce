"""The registered ``span`` kind end to end: its YAML keys, the window cache built by prepro_std.py from the
SQuAD fixtures, training (plain, SMART, FreeLB) with EM/F1 on dev, predict.py's one answer per question, a
checkpoint that reloads to the same start/end logits, and SMART's divergence at zero perturbation."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import predict
import prepro_std
import train
from data_utils.cache import load_split, split_dir
from data_utils.dataset import Collator, TaskDataset
from data_utils.errors import UserError
from module.losses import divergence
from mt_dnn.model import MTDNNModel, forward_batch
from mt_dnn.tasks import TASK_KINDS, load_task_defs, parse_task_def, task_kind
from mt_dnn.tasks.span.questions import window_arrays
from mt_dnn.tasks.span.settings import SpanSettings
from mt_dnn.tasks.span.texts import QuestionTexts
from tests.mt_dnn.conftest import tiny_bert_config
from tests.mt_dnn.tasks.runs import every_method, train_flags, train_losses

FIXTURES = Path(__file__).parents[2] / "data_utils" / "fixtures" / "squad"
ENTRY = "  task_type: span\n  data_format: premise_and_one_hypothesis\n"
COLORS = ["red", "blue", "green"]
FILLER = ["the", "cat", "dog", "sat", "on", "mat", "man", "walked", "house", "car", "tree", "river", "big"]


# --- the task definition -----------------------------------------------------------------------------------


def test_span_is_registered_and_parses_its_keys() -> None:
    assert "span" in TASK_KINDS
    entry = {"task_type": "span", "data_format": "premise_and_one_hypothesis", "doc_stride": 64}
    task_def = parse_task_def("qa", {**entry, "allow_no_answer": True, "n_best": 5})
    assert task_def.n_class == 2 and task_def.metrics == ("exact_match", "squad_f1")
    assert task_def.loss == "rank_cross_entropy" and task_def.adv_loss == "sym_kl"
    assert task_def.settings == SpanSettings(doc_stride=64, allow_no_answer=True, n_best=5)
    assert parse_task_def("qa", task_def.to_dict()) == task_def


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("  doc_stride: 0\n", "doc_stride"),
        ("  allow_no_answer: 1\n", "allow_no_answer"),
        ("  labels: [a, b]\n", "labels"),
        ("  metrics: [acc]\n", "metrics"),
        ("  max_answer_lenght: 30\n", "max_answer_lenght"),
    ],
)
def test_a_bad_key_is_one_error_naming_the_file_and_key(tmp_path: Path, line: str, key: str) -> None:
    path = tmp_path / "tasks.yml"
    path.write_text("qa:\n" + ENTRY + line)
    with pytest.raises(UserError) as caught:
        load_task_defs(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and f"key '{key}'" in message


def test_a_span_key_on_another_task_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tasks.yml"
    path.write_text(
        "c:\n  task_type: classification\n  data_format: premise_only\n  n_class: 2\n  doc_stride: 8\n"
    )
    with pytest.raises(UserError, match="key 'doc_stride': applies to span tasks only"):
        load_task_defs(path)


# --- the cache ---------------------------------------------------------------------------------------------


def test_prepro_std_builds_window_rows_that_reload(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    (tmp_path / "tasks.yml").write_text(
        "qa:\n" + ENTRY + "  allow_no_answer: true\n  doc_stride: 4\n  split_names: [train, dev]\n"
    )
    shutil.copy(FIXTURES / "squad_v2.json", tmp_path / "qa_train.json")
    shutil.copy(FIXTURES / "flat.jsonl", tmp_path / "qa_dev.jsonl")
    prepro_std.main(
        ["--task_def", str(tmp_path / "tasks.yml"), "--root_dir", str(tmp_path), "--model", str(tiny_tokenizer_dir),
         "--max_seq_len", "20", "--cache_name", "c", "--no_progress"]
    )  # fmt: skip
    task_defs = load_task_defs(tmp_path / "tasks.yml")
    for name, questions in (("train", ["mill-1", "mill-2", "moth-1"]), ("dev", ["mill-1", "moth-1", "7"])):
        split = load_split(split_dir(tmp_path / "c", "qa", name))
        assert split.meta["questions"] == 3 and split.meta["windowed_questions"] >= 1
        owners = split.extras["example_index"]
        assert len(split) > 3 and sorted(set(owners.tolist())) == [0, 1, 2]
        ids = [str(uid).rsplit("#", 1)[0] for uid in split.uids]
        assert list(dict.fromkeys(ids)) == questions
        arrays = window_arrays(split)
        texts = QuestionTexts(split.extras)
        for row in range(len(split)):
            window = arrays.window(row)
            assert (
                list(window.input_ids)
                == split.input_ids[split.seq_offsets[row] : split.seq_offsets[row + 1]].tolist()
            )
            if window.has_answer:  # the window's gold span reads as one of its question's answers
                q = int(owners[row])
                start, end = (
                    window.char_spans[window.start_position][0],
                    window.char_spans[window.end_position][1],
                )
                assert texts.context(q)[start:end].lower() in {a.lower() for a in texts.answers(q)}
        dataset = TaskDataset(task_defs["qa"], split)
        batch = Collator(task_defs, pad_token_id=0)([dataset[i] for i in range(len(dataset))])
        assert batch.labels is not None and batch.labels.shape == (2 * len(split),)
        assert batch.extra["span_mask"][:, 0].all()
        assert (batch.extra["span_mask"].sum(dim=1) > 1).all()  # every window holds context tokens
    # moth-1 has no answer: every one of its windows points at position 0
    dev = load_split(split_dir(tmp_path / "c", "qa", "dev"))
    moth = [i for i, uid in enumerate(dev.uids) if str(uid).startswith("moth-1#")]
    assert moth and (dev.labels[moth] == 0).all()


# --- training, prediction, reloading -----------------------------------------------------------------------


def qa_row(rng: random.Random, uid: str, *, answerable: bool) -> dict[str, Any]:
    """'what color ...?' over filler words; the answer is the one color word (none when unanswerable)."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(8, 20))]
    answers: dict[str, list[Any]] = {"text": [], "answer_start": []}
    if answerable:
        words.insert(rng.randrange(len(words)), rng.choice(COLORS))
    context = " ".join(words)
    for color in COLORS:
        if f" {color} " in f" {context} ":
            answers = {"text": [color], "answer_start": [f" {context} ".index(f" {color} ")]}
    return {"id": uid, "question": "what color is it?", "context": context, "answers": answers}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer, BertModel

    root = tmp_path_factory.mktemp("qa")
    rng = random.Random(0)
    data = root / "data"
    data.mkdir()
    (root / "tasks.yml").write_text(
        "qa:\n" + ENTRY + "  allow_no_answer: true\n  doc_stride: 8\n  max_answer_length: 4\n"
        "  split_names: [train, dev]\n"
    )
    write_rows(data / "qa_train.jsonl", [qa_row(rng, f"t{i}", answerable=i % 4 != 0) for i in range(64)])
    write_rows(data / "qa_dev.jsonl", [qa_row(rng, f"d{i}", answerable=i % 4 != 0) for i in range(12)])
    task_defs = load_task_defs(root / "tasks.yml")
    prepro_std.main(
        ["--task_def", str(root / "tasks.yml"), "--root_dir", str(data), "--model", str(tiny_tokenizer_dir),
         "--max_seq_len", "24", "--cache_name", "tiny", "--no_progress"]
    )  # fmt: skip
    encoder = root / "encoder"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(tiny_bert_config()).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)).save_pretrained(encoder)
    return {"root": root, "data": data, "task_defs": task_defs, "encoder": encoder}


@every_method
def test_training_has_finite_falling_losses_and_reports_em_f1(
    qa_run: dict[str, Any], tmp_path: Path, method: list[str]
) -> None:
    results = train.main(train_flags(qa_run, "qa", tmp_path, *method))
    assert results["finished"]
    losses = train_losses(tmp_path, "qa")
    assert len(losses) >= 4 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    final = results["final_eval"]["qa_dev"]
    assert set(final) == {"exact_match", "squad_f1"}
    assert all(0.0 <= value <= 100.0 for value in final.values())
    assert final["squad_f1"] >= final["exact_match"]


@pytest.fixture(scope="module")
def trained(qa_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qa_out")
    train.main(train_flags(qa_run, "qa", out))
    return out / "best"


def _dev_batch(run: dict[str, Any], task_defs: dict[str, Any]) -> Any:
    split = load_split(split_dir(run["data"] / "tiny", "qa", "dev"))
    dataset = TaskDataset(task_defs["qa"], split)
    return Collator(task_defs, pad_token_id=0)([dataset[i] for i in range(8)])


def test_a_saved_model_reloads_to_identical_start_end_logits(
    qa_run: dict[str, Any], trained: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    model = MTDNNModel.load(trained).eval()
    task_def = model.task_defs["qa"]
    assert task_def.settings == qa_run["task_defs"]["qa"].settings  # the checkpoint keeps the span keys
    batch = _dev_batch(qa_run, model.task_defs)
    inputs = task_kind(task_def).model_inputs(task_def, batch, None, None)
    with torch.no_grad():
        logits = forward_batch(model, inputs.batch, **inputs.head_inputs)
    assert logits.shape == (2 * len(batch), batch.input_ids.shape[1])
    model.save(tmp_path / "again", AutoTokenizer.from_pretrained(str(trained / "encoder")), {"note": "copy"})
    again = MTDNNModel.load(tmp_path / "again").eval()
    with torch.no_grad():
        assert torch.equal(forward_batch(again, inputs.batch, **inputs.head_inputs), logits)
    # SMART's divergence over the start and end distributions: zero at zero perturbation, else positive.
    mask = task_kind(task_def).output_mask(batch)
    assert float(divergence(task_def.adv_loss, logits, logits, mask=mask)) == 0.0
    with torch.no_grad():
        embeddings = again.encoder.get_input_embeddings()
        embeddings.weight.add_(0.5 * torch.randn_like(embeddings.weight))
        moved = forward_batch(again, inputs.batch, **inputs.head_inputs)
    assert float(divergence(task_def.adv_loss, moved, logits, mask=mask)) > 0.0


def run_predict(trained: Path, source: Path, output: Path, capfd: pytest.CaptureFixture[str]) -> list[Any]:
    """predict.py on ``source``; the records it wrote."""
    code = predict.main(
        ["--checkpoint", str(trained), "--task", "qa", "--input", str(source), "--output", str(output),
         "--device", "cpu", "--max_seq_len", "24"]
    )  # fmt: skip
    assert code in (0, None), capfd.readouterr().err
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_predict_writes_one_answer_per_question_id(
    qa_run: dict[str, Any], trained: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "preds.jsonl"
    source = qa_run["data"] / "qa_dev.jsonl"
    records = run_predict(trained, source, output, capfd)
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    assert [record["uid"] for record in records] == [row["id"] for row in rows]
    for record, row in zip(records, rows, strict=True):
        assert record["label"] == row["answers"]["text"]
        assert record["prediction"] == "" or record["prediction"] in row["context"]
        assert all(math.isfinite(candidate["score"]) for candidate in record["n_best"])
    metrics = json.loads(output.with_name("preds.metrics.json").read_text())
    assert set(metrics["metrics"]) == {"exact_match", "squad_f1"}


def test_decoding_gold_logits_scores_full_marks(qa_run: dict[str, Any]) -> None:
    """Scores pointing at each window's gold positions decode to the gold answers: EM = F1 = 100."""
    from data_utils.metrics import compute_metrics
    from mt_dnn.tasks import Predictions

    task_def = qa_run["task_defs"]["qa"]
    split = load_split(split_dir(qa_run["data"] / "tiny", "qa", "dev"))
    width = int(split.seq_lengths.max())
    scores = np.full((len(split), 2, width), -5.0, dtype=np.float32)
    rows = np.arange(len(split))
    scores[rows, 0, split.labels] = 5.0
    scores[rows, 1, split.extras["end_positions"]] = 5.0
    predictions = Predictions(
        task="qa", uids=[str(u) for u in split.uids], scores=scores, labels=split.labels.copy(), source=split
    )
    kind = task_kind(task_def)
    context = kind.metric_context(task_def, predictions)
    values = compute_metrics(kind, task_def.metrics, scores, predictions.labels, context=context)
    assert values == {"exact_match": 100.0, "squad_f1": 100.0}
    assert len(kind.records(task_def, predictions)) == split.meta["questions"] == 12


def test_the_robustness_curve_attacks_span_windows(qa_run: dict[str, Any], trained: Path) -> None:
    """PGD on the embeddings through the kind's own head inputs: radius 0 is the clean score, and a large
    radius scores no higher."""
    from mt_dnn.inference import evaluate
    from mt_dnn.robustness import EmbeddingAttack, robustness_curve

    model = MTDNNModel.load(trained)
    split = load_split(split_dir(qa_run["data"] / "tiny", "qa", "dev"))
    dataset = TaskDataset(model.task_defs["qa"], split)
    collator = Collator(model.task_defs, pad_token_id=0)
    attacks = [EmbeddingAttack(radius, steps=2) for radius in (0.0, 5.0)]
    curve = robustness_curve(model, dataset, collator, attacks, batch_size=8)
    assert curve[0].metrics == evaluate(model, dataset, collator, batch_size=8).metrics
    assert curve[1].metrics["squad_f1"] <= curve[0].metrics["squad_f1"]
    assert [point.skipped_batches for point in curve] == [0, 0]


def test_a_cache_of_other_window_settings_is_refused(qa_run: dict[str, Any]) -> None:
    from data_utils.cache import verify_split

    entry = {**qa_run["task_defs"]["qa"].to_dict(), "doc_stride": 6}
    other = parse_task_def("qa", entry, source="tasks.yml")
    with pytest.raises(UserError) as caught:
        verify_split(split_dir(qa_run["data"] / "tiny", "qa", "dev"), other)
    assert "key 'doc_stride': the cache was encoded with 8" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_predict_on_unlabelled_questions_writes_answers_only(
    qa_run: dict[str, Any], trained: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rows = [json.loads(line) for line in (qa_run["data"] / "qa_dev.jsonl").read_text().splitlines()]
    source = write_rows(
        tmp_path / "questions.jsonl", [{k: row[k] for k in ("id", "question", "context")} for row in rows]
    )
    output = tmp_path / "preds.jsonl"
    records = run_predict(trained, source, output, capfd)
    assert [record["uid"] for record in records] == [row["id"] for row in rows]
    assert all("label" not in record for record in records)
    assert not output.with_name("preds.metrics.json").exists()


def test_a_resumed_smart_run_equals_the_uninterrupted_one(qa_run: dict[str, Any], tmp_path: Path) -> None:
    from mt_dnn.flags import parse_config
    from mt_dnn.trainer import Trainer

    def trainer(out: Path, *extra: str) -> Trainer:
        return Trainer(parse_config(train_flags(qa_run, "qa", out, "--adv_train", "--epochs", "2", *extra)))

    full = trainer(tmp_path / "full")
    full.train()
    interrupted = trainer(tmp_path / "split")
    interrupted.train(until_step=interrupted.steps_per_epoch + 2)
    resumed = trainer(tmp_path / "split", "--resume")
    resumed.train()
    expected, actual = full.model.state_dict(), resumed.model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=1e-6, msg=key)


def test_span_trains_beside_a_classification_task(
    qa_run: dict[str, Any], tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    """One multi-task run: each task keeps its own metrics (the span kind's context hook leaves the others'
    as they were)."""
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev"):
        shutil.copy(qa_run["data"] / f"qa_{split}.jsonl", data / f"qa_{split}.jsonl")
        rows = [
            {"uid": f"{split}{i}", "premise": "good movie" if i % 2 else "bad film", "label": i % 2}
            for i in range(16)
        ]
        write_rows(data / f"single_{split}.jsonl", rows)
    (tmp_path / "tasks.yml").write_text(
        (qa_run["root"] / "tasks.yml").read_text()
        + "single:\n  task_type: classification\n  data_format: premise_only\n  n_class: 2\n"
        "  split_names: [train, dev]\n"
    )
    prepro_std.main(
        ["--task_def", str(tmp_path / "tasks.yml"), "--root_dir", str(data), "--model", str(tiny_tokenizer_dir),
         "--max_seq_len", "24", "--cache_name", "tiny", "--no_progress"]
    )  # fmt: skip
    run = {**qa_run, "root": tmp_path, "data": data}
    results = train.main(
        [
            *train_flags(run, "qa", tmp_path / "out", "--adv_train", "--epochs", "1"),
            "--train_datasets",
            "qa,single",
        ]
    )
    final = results["final_eval"]
    assert set(final["qa_dev"]) == {"exact_match", "squad_f1"} and set(final["single_dev"]) == {"acc"}
    assert all(math.isfinite(value) for metrics in final.values() for value in metrics.values())
