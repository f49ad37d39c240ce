"""mt_dnn/export.py: per-task HF folders that reproduce predict.py, on tiny random encoders (no download)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    ElectraConfig,
    ElectraModel,
    RobertaConfig,
    RobertaModel,
    pipeline,
)

import predict
from data_utils.errors import UserError
from data_utils.task_def import parse_task_def
from mt_dnn.export import TOLERANCE, export_checkpoint, export_task, main
from mt_dnn.model import ModelOptions, MTDNNModel
from tests.conftest import TASK_ENTRIES, TINY_VOCAB

ROWS: dict[str, list[dict[str, Any]]] = {
    "single": [
        {"uid": "s0", "premise": "the movie was good", "label": "positive"},
        {"uid": "s1", "premise": "a bad film", "label": "negative"},
        {"uid": "s2", "premise": "it was not very good at all", "label": "negative"},
    ],
    "pair": [
        {"uid": "p0", "premise": "the cat sat on the mat", "hypothesis": "a cat sat", "label": "entailment"},
        {"uid": "p1", "premise": "he runs", "hypothesis": "she walked to the house", "label": "neutral"},
    ],
    "score": [
        {"uid": "r0", "premise": "the dog is big", "hypothesis": "a big dog", "label": 4.5},
        {"uid": "r1", "premise": "red car", "hypothesis": "blue moon at night", "label": 0.5},
    ],
    "rank": [
        {
            "uid": "k0",
            "premise": "who sat on the mat",
            "hypothesis": ["the cat", "a tree", "two cars"],
            "label": 0,
        },
        {"uid": "k1", "premise": "what is red", "hypothesis": ["the sun", "the river"], "label": 0},
    ],
}


def predict_py(checkpoint: Path, task: str, tmp_path: Path, write_jsonl: Any) -> list[dict[str, Any]]:
    source = write_jsonl(tmp_path / f"{task}.jsonl", ROWS[task])
    output = tmp_path / f"{task}.predictions.jsonl"
    assert (
        predict.main(
            ["--checkpoint", str(checkpoint), "--task", task, "--input", str(source), "--output", str(output)]
        )
        == 0
    )
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_mtdnn_checkpoint: Path) -> Path:
    output = tmp_path_factory.mktemp("exported")
    exports, skipped = export_checkpoint(tiny_mtdnn_checkpoint, output)
    assert [item.task for item in exports] == list(TASK_ENTRIES) and skipped == []
    assert all(item.max_difference <= TOLERANCE for item in exports)
    return output


@pytest.mark.parametrize("task", ["single", "pair"])
def test_classification_pipeline_reproduces_predict_py(
    task: str, exported: Path, tiny_mtdnn_checkpoint: Path, tmp_path: Path, write_jsonl: Any
) -> None:
    records = predict_py(tiny_mtdnn_checkpoint, task, tmp_path, write_jsonl)
    folder = exported / task
    config = AutoConfig.from_pretrained(folder)
    labels = TASK_ENTRIES[task]["labels"]
    assert config.id2label == dict(enumerate(labels)) and config.problem_type == "single_label_classification"
    classifier = pipeline(
        "text-classification", model=str(folder), tokenizer=str(folder), device="cpu", top_k=None
    )
    inputs = [
        {"text": row["premise"], **({"text_pair": row["hypothesis"]} if "hypothesis" in row else {})}
        for row in ROWS[task]
    ]
    for row, record, scores in zip(ROWS[task], records, classifier(inputs), strict=True):
        by_label = {item["label"]: item["score"] for item in scores}
        probabilities = [by_label[label] for label in labels]
        assert np.abs(np.array(probabilities) - np.array(record["probabilities"])).max() < 1e-5, row["uid"]
        assert max(by_label, key=by_label.__getitem__) == record["prediction"]


def test_regression_pipeline_reproduces_predict_py(
    exported: Path, tiny_mtdnn_checkpoint: Path, tmp_path: Path, write_jsonl: Any
) -> None:
    records = predict_py(tiny_mtdnn_checkpoint, "score", tmp_path, write_jsonl)
    folder = exported / "score"
    config = AutoConfig.from_pretrained(folder)
    assert (config.num_labels, config.problem_type, config.id2label) == (1, "regression", {0: "score"})
    regressor = pipeline("text-classification", model=str(folder), tokenizer=str(folder), device="cpu")
    outputs = regressor([{"text": row["premise"], "text_pair": row["hypothesis"]} for row in ROWS["score"]])
    for record, output in zip(records, outputs, strict=True):
        assert output["label"] == "score"
        assert abs(output["score"] - record["prediction"]) < 1e-5  # the raw score: no sigmoid, no softmax


def test_ranking_multiple_choice_reproduces_predict_py(
    exported: Path, tiny_mtdnn_checkpoint: Path, tmp_path: Path, write_jsonl: Any
) -> None:
    records = predict_py(tiny_mtdnn_checkpoint, "rank", tmp_path, write_jsonl)
    folder = exported / "rank"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForMultipleChoice.from_pretrained(folder).eval()
    reference = MTDNNModel.load(tiny_mtdnn_checkpoint).eval()
    for row, record in zip(ROWS["rank"], records, strict=True):
        encoded = tokenizer(
            [row["premise"]] * len(row["hypothesis"]), row["hypothesis"], padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            logits = model(**{key: value[None] for key, value in encoded.items()}).logits[0]
            ours = reference(
                "rank",
                encoded["input_ids"],
                encoded["attention_mask"],
                encoded["token_type_ids"],
                n_candidates=len(row["hypothesis"]),
            )[0]
        assert (logits - ours).abs().max() < 1e-5
        assert np.abs(torch.softmax(logits, -1).numpy() - np.array(record["probabilities"])).max() < 1e-5
        assert int(logits.argmax()) == record["prediction"]


@pytest.mark.parametrize(
    "options",
    [ModelOptions(use_encoder_pooler=True), ModelOptions(spectral_norm_heads=True)],
    ids=["encoder-pooler", "spectral-norm"],
)
def test_every_head_option_maps_exactly(options: ModelOptions, make_tiny_mtdnn: Any, tmp_path: Path) -> None:
    model = make_tiny_mtdnn(options=options)
    model.train()
    for _ in range(3):  # R4F's power iteration moves only in training-mode forwards
        model("single", torch.tensor([[2, 5, 6, 3]]), torch.ones(1, 4, dtype=torch.long))
    for task in TASK_ENTRIES:
        result = export_task(model, task, tmp_path / task)
        assert result.max_difference <= TOLERANCE
    assert model.training  # the caller's mode is left as it was
    ids = torch.tensor([[2, 7, 8, 9, 3, 0]])
    mask = (ids != 0).long()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pair").eval()
    model.eval()
    with torch.no_grad():
        expected = model("pair", ids, mask, torch.zeros_like(ids))
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask).logits, expected, rtol=0, atol=1e-5
        )


def _model_on(encoder: Any, tasks: tuple[str, ...] = ("pair", "rank")) -> MTDNNModel:
    task_defs = {name: parse_task_def(name, TASK_ENTRIES[name]) for name in tasks}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MTDNNModel(encoder, task_defs).eval()


def test_a_roberta_encoder_maps_into_its_classification_head(tmp_path: Path) -> None:
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    config = RobertaConfig(
        vocab_size=len(TINY_VOCAB) + 2, max_position_embeddings=40, pad_token_id=0, **sizes
    )
    model = _model_on(RobertaModel(config))
    for task in ("pair", "rank"):
        assert export_task(model, task, tmp_path / task).max_difference <= TOLERANCE
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pair")
    assert type(loaded).__name__ == "RobertaForSequenceClassification"


def test_an_encoder_whose_head_is_another_function_is_refused(tmp_path: Path) -> None:
    """ELECTRA's classification head has dense + out_proj like RoBERTa's, but GELU instead of tanh."""
    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    model = _model_on(
        ElectraModel(ElectraConfig(vocab_size=len(TINY_VOCAB), embedding_size=32, **sizes)), ("pair",)
    )
    with pytest.raises(UserError, match="does not reproduce the checkpoint") as error:
        export_task(model, "pair", tmp_path / "pair")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "pair").exists()


def test_san_and_mask_lm_heads_are_refused_clearly(
    tmp_path: Path, tiny_tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = {
        "pair": TASK_ENTRIES["pair"],
        "san": {**TASK_ENTRIES["pair"], "head": "san"},
        "mlm": {"task_type": "mask_lm", "data_format": "premise_only"},
    }
    task_defs = {name: parse_task_def(name, entry) for name, entry in entries.items()}
    from transformers import BertModel

    from tests.mt_dnn.conftest import tiny_bert_config

    checkpoint = tmp_path / "checkpoint"
    MTDNNModel(BertModel(tiny_bert_config()), task_defs).save(checkpoint, tiny_tokenizer)
    capsys.readouterr()  # the save's own progress bar
    for task, reason in (("san", "SAN head"), ("mlm", "mask_lm")):
        with pytest.raises(SystemExit) as code:
            main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), "--task", task])
        assert code.value.code == 2
        err = capsys.readouterr().err
        assert (
            err.startswith(f"error: task '{task}': cannot export: ")
            and reason in err
            and err.count("\n") == 1
        )
    # By default the tasks that map are exported and the others named on stderr.
    assert main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["pair"]
    assert "skipped: task 'san'" in captured.err and "skipped: task 'mlm'" in captured.err
    assert "exported: pair ->" in captured.out


def test_an_unknown_task_names_the_checkpoints_tasks(tiny_mtdnn_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"no task 'nope' in this checkpoint \(its tasks: single, pair, score, rank\)"
    ):
        export_checkpoint(tiny_mtdnn_checkpoint, tmp_path, ["nope"])
