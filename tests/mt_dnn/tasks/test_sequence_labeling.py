"""sequence_labeling end to end: word-piece alignment, the cache, span F1, training (plain, SMART, FreeLB),
predict.py's tag sequences and a checkpoint that reloads to the same token logits."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import predict
import train
from data_utils.cache import load_split, split_dir
from data_utils.dataset import Collator, TaskDataset
from data_utils.metrics import MetricContext, compute_metrics
from data_utils.prepro import preprocess
from module.losses import divergence
from mt_dnn.model import MTDNNModel, forward_batch
from mt_dnn.tasks import load_task_defs, task_kind
from mt_dnn.tasks.sequence_labeling import IGNORED, UNLABELLED, align_labels
from tests.mt_dnn.conftest import tiny_bert_config
from tests.mt_dnn.tasks.runs import every_method, train_flags, train_losses

TAGS = ["O", "B-ANI", "I-ANI", "B-PER"]
ANIMALS = ["cat", "dog", "cats", "dogs"]  # "cats" is two pieces: cat ##s
PEOPLE = ["man", "woman", "he", "she"]
OTHER = ["the", "sat", "on", "mat", "walked", "walking", "runs", "a", "house", "played"]


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    """Words with tags a rule decides: people are B-PER, animals B-ANI (I-ANI after 'big'/'small' B-ANI)."""
    out: list[tuple[str, str]] = []
    for _ in range(rng.randint(3, 7)):
        roll = rng.random()
        if roll < 0.2:
            out.append((rng.choice(PEOPLE), "B-PER"))
        elif roll < 0.4:
            if rng.random() < 0.5:
                out.append((rng.choice(["big", "small"]), "B-ANI"))
                out.append((rng.choice(ANIMALS), "I-ANI"))
            else:
                out.append((rng.choice(ANIMALS), "B-ANI"))
        else:
            out.append((rng.choice(OTHER), "O"))
    return out


def write_conll(path: Path, sentences: list[list[tuple[str, str]]], *, labelled: bool = True) -> Path:
    lines = ["-DOCSTART- O", ""]
    for words in sentences:
        lines += [f"{word} {tag}" if labelled else word for word, tag in words] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer, BertModel

    root = tmp_path_factory.mktemp("ner")
    rng = random.Random(0)
    data = root / "data"
    data.mkdir()
    (root / "tasks.yml").write_text(
        f"ner:\n  task_type: sequence_labeling\n  data_format: premise_only\n  labels: {TAGS}\n"
        "  metrics: [span_f1, span_precision, span_recall, token_acc]\n  split_names: [train, dev]\n"
    )
    write_conll(data / "ner_train.conll", [sentence(rng) for _ in range(64)])
    write_conll(data / "ner_dev.conll", [sentence(rng) for _ in range(16)])
    task_defs = load_task_defs(root / "tasks.yml")
    summary = preprocess(
        task_defs, data, tiny_tokenizer_dir, max_seq_len=32, cache_name="tiny", progress=False
    )
    encoder = root / "encoder"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(tiny_bert_config()).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)).save_pretrained(encoder)
    return {"root": root, "data": data, "task_defs": task_defs, "summary": summary, "encoder": encoder}


def test_the_first_piece_of_each_word_carries_its_tag(tiny_tokenizer: Any) -> None:
    encoded = tiny_tokenizer([["the", "cats", "walking", "sat"]], is_split_into_words=True)
    tokens = tiny_tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    assert tokens == ["[CLS]", "the", "cat", "##s", "walk", "##ing", "sat", "[SEP]"]
    aligned, words = align_labels(encoded.word_ids(0), [0, 1, 0, 3])
    assert aligned.tolist() == [IGNORED, 0, 1, IGNORED, 0, IGNORED, 3, IGNORED] and words == 4
    unlabelled, _ = align_labels(encoded.word_ids(0), None)
    assert (unlabelled != IGNORED).tolist() == (aligned != IGNORED).tolist()
    assert set(unlabelled[unlabelled != IGNORED].tolist()) == {UNLABELLED}


def test_the_cache_holds_token_labels_and_counts_cut_sentences(
    tmp_path: Path, tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import prepro_std

    (tmp_path / "tasks.yml").write_text(
        f"ner:\n  task_type: sequence_labeling\n  data_format: premise_only\n  labels: {TAGS}\n"
        "  split_names: [train]\n"
    )
    long = [("the", "O")] * 3 + [("cats", "B-ANI")] + [("sat", "O")] * 4  # 9 pieces + 2 specials
    write_conll(tmp_path / "ner_train.conll", [[("he", "B-PER"), ("sat", "O")], long])
    prepro_std.main(
        ["--task_def", str(tmp_path / "tasks.yml"), "--root_dir", str(tmp_path), "--model", str(tiny_tokenizer_dir),
         "--max_seq_len", "8", "--cache_name", "c", "--no_progress"]
    )  # fmt: skip
    assert "truncated       1" in capsys.readouterr().out
    split = load_split(split_dir(tmp_path / "c", "ner", "train"))
    assert split.meta["arrays"] == ["token_labels"]
    assert split.meta["truncated"] == 1 and split.meta["words_cut"] == 3  # 'the the the cat ##s' kept
    assert split.labels.tolist() == [2, 5]  # words encoded per row
    tags = split.extras["token_labels"]
    assert tags[: split.seq_offsets[1]].tolist() == [IGNORED, 3, 0, IGNORED]
    assert tags[split.seq_offsets[1] :].tolist() == [IGNORED, 0, 0, 0, 1, IGNORED, 0, IGNORED]


def test_span_f1_on_a_hand_computed_example() -> None:
    # Gold spans: PER(0-1), LOC(3), LOC(0 of row 2); predicted: PER(0-1), PER(0 of row 2).
    names = ("O", "B-PER", "I-PER", "B-LOC")
    gold = np.array([1, 2, 0, 3, 3])
    predicted = np.array([1, 2, 0, 0, 1])
    scores = np.eye(4)[predicted]
    context = MetricContext(label_names=names, row_lengths=np.array([4, 1]))
    values = compute_metrics(
        "sequence_labeling", ["span_precision", "span_recall", "span_f1", "token_acc"], scores, gold,
        context=context,
    )  # fmt: skip
    assert values["span_precision"] == pytest.approx(50.0)
    assert values["span_recall"] == pytest.approx(100.0 / 3)
    assert values["span_f1"] == pytest.approx(40.0)
    assert values["token_acc"] == pytest.approx(60.0)


@every_method
def test_training_has_finite_falling_losses(
    ner_run: dict[str, Any], tmp_path: Path, method: list[str]
) -> None:
    results = train.main(train_flags(ner_run, "ner", tmp_path, *method))
    assert results["finished"]
    losses = train_losses(tmp_path, "ner")
    assert len(losses) >= 4 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    final = results["final_eval"]["ner_dev"]
    assert set(final) == {"span_f1", "span_precision", "span_recall", "token_acc"}
    assert all(math.isfinite(value) for value in final.values())


@pytest.fixture(scope="module")
def trained(ner_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ner_out")
    train.main(train_flags(ner_run, "ner", out))
    return out / "best"


def _dev_batch(run: dict[str, Any], task_defs: dict[str, Any]) -> Any:
    split = load_split(split_dir(run["data"] / "tiny", "ner", "dev"))
    dataset = TaskDataset(task_defs["ner"], split)
    return Collator(task_defs, pad_token_id=0)([dataset[i] for i in range(6)])


def test_a_saved_model_reloads_to_identical_token_logits(
    ner_run: dict[str, Any], trained: Path, tmp_path: Path
) -> None:
    model = MTDNNModel.load(trained).eval()
    batch = _dev_batch(ner_run, model.task_defs)
    kind = task_kind(model.task_defs["ner"])
    inputs = kind.model_inputs(model.task_defs["ner"], batch, None, None)
    with torch.no_grad():
        logits = forward_batch(model, inputs.batch, **inputs.head_inputs)
    assert logits.shape == (int(batch.extra["word_starts"].sum()), len(TAGS))
    from transformers import AutoTokenizer

    model.save(tmp_path / "again", AutoTokenizer.from_pretrained(str(trained / "encoder")), {"note": "copy"})
    again = MTDNNModel.load(tmp_path / "again").eval()
    with torch.no_grad():
        assert torch.equal(forward_batch(again, inputs.batch, **inputs.head_inputs), logits)
    # SMART's divergence per real token: zero between identical outputs, positive between different ones.
    assert float(divergence("sym_kl", logits, logits)) == 0.0
    assert float(divergence("sym_kl", logits, logits.roll(1, dims=0))) > 0.0


def test_predict_writes_tag_sequences(
    ner_run: dict[str, Any], trained: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "preds.jsonl"
    source = ner_run["data"] / "ner_dev.conll"
    code = predict.main(
        ["--checkpoint", str(trained), "--task", "ner", "--input", str(source), "--output", str(output),
         "--device", "cpu"]
    )  # fmt: skip
    assert code in (0, None), capfd.readouterr().err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    sentences = [block.strip().split("\n") for block in source.read_text().split("\n\n")[1:] if block.strip()]
    assert len(records) == len(sentences) == 16
    for record, lines in zip(records, sentences, strict=True):
        assert record["label"] == [line.split()[-1] for line in lines]
        assert len(record["prediction"]) == len(lines) and set(record["prediction"]) <= set(TAGS)
    metrics = json.loads(output.with_name("preds.metrics.json").read_text())
    assert "span_f1" in json.dumps(metrics)
