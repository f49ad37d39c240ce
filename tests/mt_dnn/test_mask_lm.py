"""mask_lm end to end on a tiny BERT: the tied head in the model, checkpoints, evaluation, ALUM continued
pre-training with train.py, and fine-tuning from the result."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import yaml

import predict
import train
from data_utils.cache import load_split, split_dir
from data_utils.dataset import Collator, TaskDataset
from data_utils.errors import UserError
from data_utils.masking import MaskingSpec
from data_utils.prepro import preprocess
from data_utils.task_def import load_task_defs, parse_task_def
from module.adversarial import AdversarialMethodName
from mt_dnn.config import TrainConfig
from mt_dnn.inference import evaluate
from mt_dnn.model import HEADS_FILE, MTDNNModel, load_tokenizer
from mt_dnn.objective import method_parameters_for
from mt_dnn.tasks.mask_lm import MASK_SALT, mask_batch
from mt_dnn.trainer import Trainer, build_model
from tests.conftest import TASK_ENTRIES
from tests.mt_dnn.conftest import _toy_rows, tiny_bert_config

TEXT = {"task_type": "mask_lm", "data_format": "premise_only"}
TASKS = {"text": TEXT, "single": TASK_ENTRIES["single"]}


def _text_model(seed: int = 0) -> MTDNNModel:
    from transformers import BertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MTDNNModel(BertModel(tiny_bert_config()), {"text": parse_task_def("text", TEXT)})
    return model.eval()


def _positions(ids: torch.Tensor) -> torch.Tensor:
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, [1, 4]] = True
    positions[1, 2] = True
    return positions


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> dict[str, Any]:
    """Raw text (the toy sentences, labels dropped) as task 'text', plus the labelled 'single' task."""
    root = tmp_path_factory.mktemp("mlm_run")
    data = root / "data"
    data.mkdir()
    task_def = root / "tasks.yml"
    task_def.write_text(yaml.safe_dump(TASKS, sort_keys=False), encoding="utf-8")
    sizes = {"train": 160, "dev": 32, "test": 16}
    for split, n in sizes.items():
        text_rows = [{"uid": r["uid"], "premise": r["premise"]} for r in _toy_rows("text", split, n, seed=1)]
        single_rows = _toy_rows("single", split, n, seed=0)
        for task, rows in (("text", text_rows), ("single", single_rows)):
            (data / f"{task}_{split}.jsonl").write_text(
                "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8"
            )
    preprocess(
        load_task_defs(task_def), data, tiny_tokenizer_dir, max_seq_len=32, cache_name="tiny", progress=False
    )
    encoder = root / "encoder"
    from transformers import AutoTokenizer, BertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(tiny_bert_config()).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)).save_pretrained(encoder)
    return {"root": root, "task_def": str(task_def), "data_dir": str(data / "tiny"), "encoder": str(encoder)}


def _flags(run: dict[str, Any], out: Path, *extra: str) -> list[str]:
    return [
        "--task_def", run["task_def"], "--data_dir", run["data_dir"], "--output_dir", str(out),
        "--batch_size", "16", "--batch_size_eval", "16", "--log_every_steps", "5", "--no-progress",
        "--seed", "3", "--device", "cpu", *extra,
    ]  # fmt: skip


def _dev_metrics(model: MTDNNModel, run: dict[str, Any], tokenizer: Any, batch_size: int = 16) -> dict:
    task_def = model.task_defs["text"]
    dataset = TaskDataset(task_def, load_split(split_dir(run["data_dir"], "text", "dev")))
    collator = Collator({"text": task_def}, pad_token_id=0)
    masking = MaskingSpec.from_tokenizer(tokenizer)
    return evaluate(model, dataset, collator, batch_size=batch_size, masking=masking).metrics


# --- the model ---------------------------------------------------------------------------------------------


def test_the_head_is_tied_and_scores_only_the_masked_positions() -> None:
    model = _text_model()
    embedding = model.encoder.get_input_embeddings()
    vocab, hidden = embedding.weight.shape
    head_shapes = [tuple(p.shape) for p in model.heads["text"].parameters()]
    assert (vocab, hidden) not in head_shapes  # no second vocabulary matrix
    n_params = sum(p.numel() for p in model.parameters())
    assert (
        n_params == sum(p.numel() for p in model.encoder.parameters()) + hidden * hidden + 3 * hidden + vocab
    )

    ids = torch.randint(5, vocab, (2, 7))
    mask = torch.ones_like(ids)
    logits = model("text", ids, mask, positions=_positions(ids))
    assert logits.shape == (3, vocab)
    # The decoder is the embedding matrix: the head's output is transform(h) @ E^T + bias.
    states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[_positions(ids)]
    head = model.heads["text"]
    torch.testing.assert_close(logits, head.transform(states) @ embedding.weight.T + head.bias)
    model.train()
    torch.nn.functional.cross_entropy(
        model("text", ids, mask, positions=_positions(ids)), ids[_positions(ids)]
    ).backward()
    assert embedding.weight.grad is not None and embedding.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="positions"):
        model("text", ids, mask)


def test_a_checkpoint_stores_the_head_once_and_reloads_to_identical_logits(
    tmp_path: Path, tiny_tokenizer
) -> None:
    model = _text_model(seed=4)
    with torch.no_grad():
        model.heads["text"].bias.normal_()
    model.save(tmp_path / "ckpt", tiny_tokenizer)
    heads = safetensors.torch.load_file(str(tmp_path / "ckpt" / HEADS_FILE))
    assert sorted(heads) == [
        "text.bias",
        "text.transform.LayerNorm.bias",
        "text.transform.LayerNorm.weight",
        "text.transform.dense.bias",
        "text.transform.dense.weight",
    ]
    reloaded = MTDNNModel.load(tmp_path / "ckpt").eval()
    ids = torch.randint(5, 90, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = model("text", ids, mask, positions=_positions(ids))
        actual = reloaded("text", ids, mask, positions=_positions(ids))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_a_pretrained_masked_lm_head_is_loaded_and_reproduces_its_logits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import BertForMaskedLM, BertModel

    torch.manual_seed(1)
    reference = BertForMaskedLM(tiny_bert_config(initializer_range=0.2)).eval()
    with torch.no_grad():
        reference.cls.predictions.bias.normal_()
    reference.save_pretrained(tmp_path / "mlm")
    tasks = {"text": parse_task_def("text", TEXT)}
    with caplog.at_level(logging.INFO, logger="mt_dnn.tasks.mask_lm"):
        model = MTDNNModel.from_encoder(tmp_path / "mlm", tasks).eval()
    assert "initialised from the masked-LM head (cls.predictions.*)" in caplog.text
    ids = torch.randint(5, 90, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = model("text", ids, mask, positions=_positions(ids))
        theirs = reference(input_ids=ids, attention_mask=mask).logits[_positions(ids)]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)

    caplog.clear()
    BertModel(tiny_bert_config()).save_pretrained(tmp_path / "plain")  # MiniLM's wheel is like this
    with caplog.at_level(logging.INFO, logger="mt_dnn.tasks.mask_lm"):
        MTDNNModel.from_encoder(tmp_path / "plain", tasks)
    assert "has no pretrained masked-LM head: head 'text' starts fresh" in caplog.text


# --- objective and evaluation ------------------------------------------------------------------------------


def test_alum_on_a_mask_lm_task_takes_the_pretraining_alpha() -> None:
    text = parse_task_def("text", TEXT)
    single = parse_task_def("single", TASK_ENTRIES["single"])
    base = {"task_def": "t", "data_dir": "d", "init_checkpoint": "m", "train_datasets": ["text"]}
    alum = TrainConfig.from_dict({**base, "adv_method": "alum"})
    assert method_parameters_for(alum, text)["alpha"] == 10.0
    assert "alpha" not in method_parameters_for(alum, single)  # fine-tuning: the method's default, 1
    assert (
        method_parameters_for(TrainConfig.from_dict({**base, "adv_method": "alum", "adv_alpha": 2.0}), text)[
            "alpha"
        ]
        == 2.0
    )
    override = parse_task_def("text", {**TEXT, "adv_alpha": 3})
    assert method_parameters_for(alum, override)["alpha"] == 3.0


def test_training_masks_change_with_the_salt_and_evaluation_masks_are_fixed(
    mlm_run: dict[str, Any], tiny_tokenizer: Any
) -> None:
    task_def = parse_task_def("text", TEXT)
    dataset = TaskDataset(task_def, load_split(split_dir(mlm_run["data_dir"], "text", "train")))
    batch = Collator({"text": task_def}, pad_token_id=0)([dataset[i] for i in range(16)])
    spec = MaskingSpec.from_tokenizer(tiny_tokenizer)

    def positions(salt: str) -> torch.Tensor:
        return mask_batch(batch, spec, 0.15, salt).head_inputs["positions"]

    epoch0 = mask_batch(batch, spec, 0.15, "3|0")
    assert torch.equal(positions("3|0"), positions("3|0"))
    assert not torch.equal(positions("3|1"), positions("3|0"))
    assert epoch0.targets.numel() == int(positions("3|0").sum())
    assert MASK_SALT not in ("3|0", "3|1")

    model = _text_model()
    first = _dev_metrics(model, mlm_run, tiny_tokenizer, batch_size=16)
    again = _dev_metrics(model, mlm_run, tiny_tokenizer, batch_size=5)  # other batches, other padding
    assert set(first) == {"mlm_acc", "perplexity"}
    assert first == pytest.approx(again, rel=1e-5)


# --- train.py: ALUM continued pre-training, then fine-tuning ----------------------------------------------


@pytest.fixture(scope="module")
def pretrained(mlm_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("alum_mlm")
    flags = _flags(mlm_run, out, "--init_checkpoint", mlm_run["encoder"], "--train_datasets", "text")
    flags += ["--adv_method", "alum", "--epochs", "3", "--learning_rate", "2e-3"]
    results = train.main(flags)
    return {"out": out, "results": results}


def test_alum_mlm_continued_pretraining_runs_and_lowers_the_mlm_loss(
    mlm_run: dict[str, Any], pretrained: dict[str, Any], tiny_tokenizer: Any
) -> None:
    results = pretrained["results"]
    assert results["finished"] and results["nonfinite_steps_skipped"] == 0
    assert results["config"]["adversarial"]["method"] == "alum"
    initial = MTDNNModel.from_encoder(mlm_run["encoder"], {"text": parse_task_def("text", TEXT)}).eval()
    before = _dev_metrics(initial, mlm_run, tiny_tokenizer)
    after = results["final_eval"]["text_dev"]
    # A fresh head over ~130 tokens starts near perplexity 130; the toy text uses ~25 words.
    assert before["perplexity"] > 60
    assert after["perplexity"] < 0.5 * before["perplexity"], (before, after)
    assert after["mlm_acc"] > before["mlm_acc"]
    records = [json.loads(line) for line in (pretrained["out"] / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["type"] == "train"]
    assert all(r["adv_loss"]["text"] >= 0 for r in train_records)
    first, last = train_records[0]["loss"]["text"], train_records[-1]["loss"]["text"]
    assert last < first
    # The best checkpoint reloads to the same dev metrics (deterministic evaluation masks).
    best = MTDNNModel.load(pretrained["out"] / "best").eval()
    reloaded = _dev_metrics(best, mlm_run, tiny_tokenizer)
    assert reloaded["perplexity"] == pytest.approx(
        json.loads((pretrained["out"] / "best" / "mtdnn.json").read_text())["metadata"]["eval"]["text_dev"][
            "perplexity"
        ],
        rel=1e-5,
    )


def test_a_plain_fine_tune_starts_from_the_mlm_checkpoints_encoder(
    mlm_run: dict[str, Any], pretrained: dict[str, Any], tmp_path: Path
) -> None:
    checkpoint = pretrained["out"] / "best"
    config = TrainConfig(
        task_def=mlm_run["task_def"],
        data_dir=mlm_run["data_dir"],
        init_checkpoint=str(checkpoint),
        train_datasets=["single"],
        output_dir=str(tmp_path),
    )
    model = build_model(config, {"single": parse_task_def("single", TASK_ENTRIES["single"])})
    source = MTDNNModel.load(checkpoint)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    assert list(model.heads) == ["single"]

    flags = _flags(
        mlm_run, tmp_path / "run", "--init_checkpoint", str(checkpoint), "--train_datasets", "single"
    )
    results = train.main([*flags, "--epochs", "2", "--learning_rate", "1e-3"])
    assert results["finished"] and set(results["final_eval"]) == {"single_dev"}
    assert 0 <= results["final_eval"]["single_dev"]["acc"] <= 100


def test_predict_cli_scores_a_mask_lm_split(
    mlm_run: dict[str, Any], pretrained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = pretrained["out"] / "best"
    out = tmp_path / "preds.jsonl"
    source = str(Path(mlm_run["root"]) / "data" / "text_dev.jsonl")
    argv = ["--checkpoint", str(checkpoint), "--task", "text", "--device", "cpu", "--input", source]
    assert predict.main([*argv, "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 32
    assert all(len(r["prediction"]) == len(r["label"]) >= 1 for r in records)
    metrics = json.loads(out.with_name("preds.metrics.json").read_text())["metrics"]
    expected = _dev_metrics(MTDNNModel.load(checkpoint).eval(), mlm_run, load_tokenizer(checkpoint))
    assert metrics == pytest.approx(expected, rel=1e-5)  # the same rows, the same fixed masks
    assert "perplexity" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        predict.main([*argv, "--submission", str(tmp_path / "s.tsv")])
    assert "--submission: task 'text' is mask_lm" in capsys.readouterr().err


def test_a_tokenizer_without_a_mask_token_is_a_user_error() -> None:
    class NoMask:
        mask_token_id = None
        name_or_path = "gpt-like"

    with pytest.raises(UserError, match="gpt-like: the tokenizer has no mask token"):
        MaskingSpec.from_tokenizer(NoMask())


@pytest.mark.parametrize("method", list(AdversarialMethodName))
def test_every_adversarial_method_trains_a_mask_lm_task_with_a_finite_loss(
    mlm_run: dict[str, Any], tmp_path: Path, method: str
) -> None:
    config = TrainConfig.from_dict(
        {
            "task_def": mlm_run["task_def"],
            "data_dir": mlm_run["data_dir"],
            "init_checkpoint": mlm_run["encoder"],
            "train_datasets": ["text"],
            "output_dir": str(tmp_path),
            "batch_size": 16,
            "log_every_steps": 1,
            "progress": False,
            "adversarial": {"method": method},
            "device": "cpu",
        }
    )
    trainer = Trainer(config)
    results = trainer.train(until_step=3 * trainer.replays)
    assert results["nonfinite_steps_skipped"] == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"]["text"] for r in records if r["type"] == "train"]
    assert losses and all(math.isfinite(value) and value > 0 for value in losses)
