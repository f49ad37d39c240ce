"""The HF Trainer plug-in beyond the objective: SMART's Bregman teacher (EMA, checkpoint, resume), the
adversarial statistics in the Trainer's logs, FreeAT's replays, YOPO's first layer and user methods."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from transformers import GPT2Config, GPT2ForSequenceClassification, TrainerCallback, TrainingArguments

from module.adversarial import FGM, FGMConfig, MethodSpec, register_method, unregister_method
from module.adversarial.integrations.hf_trainer import TEACHER_FILE, AdversarialTrainer
from module.bregman import BregmanProximalPoint
from tests.module.adversarial.test_integrations_hf import FAST_PARAMS, dataset, tiny_bert

TERMS = {"task_loss", "adv_loss", "delta_ratio", "bregman", "adv_skipped"}


def arguments(out: Path, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = {
        "output_dir": str(out),
        "use_cpu": True,
        "report_to": [],
        "per_device_train_batch_size": 4,
        "max_steps": 3,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
    }
    return TrainingArguments(**{**settings, **overrides})


class Watch(TrainerCallback):
    """What a report_to integration receives (``on_log``), and the weights after every optimizer step."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []
        self.weights: list[dict[str, Tensor]] = []

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        self.logs.append(dict(logs or {}))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.weights.append({k: v.detach().clone() for k, v in kwargs["model"].state_dict().items()})


def smart_trainer(
    out: Path, model: Any = None, rows: int = 8, **overrides: Any
) -> tuple[AdversarialTrainer, Watch]:
    watch = Watch()
    trainer = AdversarialTrainer(
        model=model or tiny_bert(),
        args=arguments(out, **overrides),
        train_dataset=dataset(rows),
        callbacks=[watch],
        adv_method="smart",
        adv_params=FAST_PARAMS["smart"],
    )
    return trainer, watch


def float_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def test_smart_trains_with_its_bregman_teacher_and_logs_every_term(tmp_path: Path) -> None:
    initial = float_state(tiny_bert())
    trainer, watch = smart_trainer(tmp_path)
    assert isinstance(trainer.bregman, BregmanProximalPoint) and trainer.bregman.config.mu == 1.0
    trainer.train()
    logged = [entry for entry in watch.logs if "loss" in entry]
    assert len(logged) == 3
    for entry in logged:
        assert entry.keys() >= TERMS
        # the Trainer's loss is the whole objective: task + alpha R + Bregman (alpha 1)
        assert entry["loss"] == pytest.approx(
            entry["task_loss"] + entry["adv_loss"] + entry["bregman"], rel=1e-4
        )
        assert entry["adv_skipped"] == 0 and entry["delta_ratio"] > 0
    history = [e for e in trainer.state.log_history if "loss" in e]
    assert all(e.keys() >= TERMS for e in history)
    assert logged[0]["bregman"] == pytest.approx(0.0, abs=1e-9)  # the teacher starts as the model
    assert logged[1]["bregman"] > 0 and logged[2]["bregman"] > 0
    # theta~ <- 0.999 theta~ + 0.001 theta after each of the 3 steps (no warm-up step: 10% of 3 < 1)
    expected = dict(initial)
    for weights in watch.weights:
        expected = {k: 0.999 * v + 0.001 * weights[k] for k, v in expected.items()}
    teacher = float_state(trainer.bregman.teacher)
    for key, value in expected.items():
        torch.testing.assert_close(teacher[key], value, rtol=1e-5, atol=1e-7, msg=key)


def test_gradient_accumulation_averages_the_logged_terms(tmp_path: Path) -> None:
    trainer, watch = smart_trainer(
        tmp_path, gradient_accumulation_steps=2, max_steps=2, per_device_train_batch_size=2
    )
    trainer.train()
    logged = [entry for entry in watch.logs if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:  # per-micro-batch means of means: still task + R + Bregman
        assert entry["loss"] == pytest.approx(
            entry["task_loss"] + entry["adv_loss"] + entry["bregman"], rel=1e-4
        )


def test_the_teacher_is_checkpointed_and_resumed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save = {"save_strategy": "steps", "save_steps": 2, "max_steps": 4}
    straight, _ = smart_trainer(tmp_path / "straight", **save)
    straight.train()
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert (checkpoint / TEACHER_FILE).is_file() and (
        tmp_path / "straight" / "checkpoint-4" / TEACHER_FILE
    ).is_file()

    resumed, _ = smart_trainer(tmp_path / "resumed", **save)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.bregman is not None and straight.bregman is not None
    for key, value in float_state(straight.bregman.teacher).items():
        torch.testing.assert_close(
            float_state(resumed.bregman.teacher)[key], value, rtol=1e-5, atol=1e-7, msg=key
        )
    for key, value in float_state(straight.model).items():
        torch.testing.assert_close(float_state(resumed.model)[key], value, rtol=1e-5, atol=1e-7, msg=key)

    # A checkpoint without the teacher (an older run): warned, and the teacher restarts as the resumed model.
    bare = tmp_path / "bare" / "checkpoint-2"
    shutil.copytree(checkpoint, bare)
    (bare / TEACHER_FILE).unlink()
    again, _ = smart_trainer(tmp_path / "again", save_strategy="no", max_steps=2)
    with caplog.at_level(logging.WARNING, logger="module.adversarial.integrations.hf_trainer"):
        again.train(resume_from_checkpoint=str(bare))  # already at step 2: no training step runs
    assert any(TEACHER_FILE in record.getMessage() for record in caplog.records)
    assert again.bregman is not None
    for key, value in float_state(again.model).items():
        torch.testing.assert_close(float_state(again.bregman.teacher)[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, None),
        ({"adv_method": "alum"}, None),
        ({"adv_bregman": False}, None),
        ({"adv_method": "fgm", "adv_bregman": {"mu": 0.5, "beta": 0.9}}, (0.5, 0.9)),
        ({"adv_bregman": {"mu": 0.0}}, None),
    ],
)
def test_the_bregman_switch(
    spec: dict[str, Any], expected: tuple[float, float] | None, tmp_path: Path
) -> None:
    kwargs = {"adv_method": "smart", **spec}
    trainer = AdversarialTrainer(
        model=tiny_bert(), args=arguments(tmp_path), train_dataset=dataset(), **kwargs
    )
    if not spec:
        assert trainer.bregman is not None and trainer.bregman.config.mu == 1.0
    elif expected is None:
        assert trainer.bregman is None
    else:
        assert trainer.bregman is not None
        assert (trainer.bregman.config.mu, trainer.bregman.config.beta) == expected


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"adv_method": "freelb", "adv_bregman": True}, "clean outputs"),
        ({"adv_bregman": {"bogus": 1}}, "takes no 'bogus'"),
        ({"adv_method": "frelb"}, r"did you mean 'freelb'\?\); the methods: smart, alum"),
    ],
)
def test_mistakes_are_named(kwargs: dict[str, Any], problem: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=problem):
        AdversarialTrainer(model=tiny_bert(), args=arguments(tmp_path), train_dataset=dataset(), **kwargs)


class RecordingTrainer(AdversarialTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, Tensor, float]] = []

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Tensor:
        step = self.state.global_step
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.seen.append((step, inputs["input_ids"].clone(), float(self.adversarial_stats["delta_ratio"])))
        return loss


@pytest.mark.parametrize(("rows", "accumulation"), [(8, 1), (8, 2), (10, 2)])
def test_freeat_replays_every_step_m_times(rows: int, accumulation: int, tmp_path: Path) -> None:
    trainer = RecordingTrainer(
        model=tiny_bert(),
        args=arguments(tmp_path, max_steps=-1, num_train_epochs=1, gradient_accumulation_steps=accumulation),
        train_dataset=dataset(rows),
        adv_method="freeat",
        adv_params={"replays": 2, "epsilon": 1e-2},
    )
    trainer.train()
    chunks = -(-rows // (4 * accumulation))
    assert trainer.state.global_step == 2 * chunks  # m optimizer steps per chunk of examples
    by_step: dict[int, list[tuple[Tensor, float]]] = {}
    for step, ids, ratio in trainer.seen:
        by_step.setdefault(step, []).append((ids, ratio))
    assert sorted(by_step) == list(range(2 * chunks)) and all(
        len(v) == accumulation for v in by_step.values()
    )
    for first in range(0, 2 * chunks, 2):
        replay0, replay1 = by_step[first], by_step[first + 1]
        for (ids0, ratio0), (ids1, ratio1) in zip(replay0, replay1, strict=True):
            assert torch.equal(ids0, ids1)  # the same micro-batch at the same position
            assert ratio0 == 0.0 and ratio1 > 0.0  # delta starts at 0 and moves by eps * sign(g)
    distinct = {tuple(row.tolist()) for step in by_step.values() for ids, _ in step for row in ids}
    assert len(distinct) == rows  # every example seen (a short last chunk is padded from the start)


def test_yopo_finds_the_embeddings_block_or_refuses(tmp_path: Path) -> None:
    model = tiny_bert()
    trainer = AdversarialTrainer(
        model=model, args=arguments(tmp_path), train_dataset=dataset(), adv_method="yopo"
    )
    assert trainer.adversarial_method.first_layer is model.bert.embeddings  # type: ignore[attr-defined]
    gpt2 = GPT2ForSequenceClassification(
        GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2, pad_token_id=0)
    )
    with pytest.raises(ValueError, match="no embeddings block.*adv_first_layer"):
        AdversarialTrainer(model=gpt2, args=arguments(tmp_path), train_dataset=dataset(), adv_method="yopo")
    custom = AdversarialTrainer(
        model=gpt2,
        args=arguments(tmp_path),
        train_dataset=dataset(),
        adv_method="yopo",
        adv_first_layer=gpt2.transformer.wte,
    )
    assert custom.adversarial_method.first_layer is gpt2.transformer.wte  # type: ignore[attr-defined]


class HalfFGM(FGM):
    """FGM at alpha 0.5 by default, registered under a name of its own."""

    name = "half-fgm"


@pytest.fixture
def half_fgm() -> Iterator[None]:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class HalfConfig(FGMConfig):
        alpha: float = 0.5

    register_method(MethodSpec("half-fgm", HalfFGM, HalfConfig, "FGM, half weight"))
    try:
        yield
    finally:
        unregister_method("half-fgm")


def test_a_registered_method_runs_in_the_trainer(half_fgm: None, tmp_path: Path) -> None:
    watch = Watch()
    trainer = AdversarialTrainer(
        model=tiny_bert(),
        args=arguments(tmp_path),
        train_dataset=dataset(),
        callbacks=[watch],
        adv_method="half-fgm",
    )
    assert isinstance(trainer.adversarial_method, HalfFGM) and trainer.bregman is None
    trainer.train()
    for entry in (e for e in watch.logs if "loss" in e):
        assert entry["loss"] == pytest.approx(entry["task_loss"] + 0.5 * entry["adv_loss"], rel=1e-4)
