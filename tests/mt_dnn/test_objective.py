"""SMART and Bregman inside the multi-task trainer: config, per-task overrides, logs, a real step, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from data_utils.errors import UserError
from data_utils.task_def import parse_task_def
from module.adversarial import METHODS, AdversarialMethodName, NormLevel, PNorm
from mt_dnn.checkpoint_state import TEACHER_FILE
from mt_dnn.config import TrainConfig
from mt_dnn.flags import parse_config
from mt_dnn.objective import TrainingObjective, method_parameters_for
from mt_dnn.trainer import Trainer
from tests.conftest import TASK_ENTRIES
from tests.mt_dnn.test_trainer import config_for, state_of


def _flags(*extra: str) -> list[str]:
    base = ["--task_def", "t.yml", "--data_dir", "d", "--init_checkpoint", "e", "--train_datasets", "a"]
    return [*base, *extra]


def test_adv_flags_parse_with_the_papers_defaults() -> None:
    config = parse_config(_flags("--adv_train"))
    assert config.adversarial.method is AdversarialMethodName.SMART
    assert config.bregman.mu == 1.0  # the paper's SMART includes the Bregman term
    smart = build_trainer_method(config)
    assert (smart.alpha, smart.k, smart.step_size, smart.noise_var, smart.epsilon) == (
        1.0,
        1,
        1e-3,
        1e-5,
        1e-5,
    )
    assert smart.p_norm is PNorm.INF and smart.norm_level is NormLevel.TOKEN
    assert parse_config(_flags()).bregman.mu == 0.0 and parse_config(_flags()).adversarial.method is None
    assert parse_config(_flags("--adv_train", "--bregman_mu", "0")).bregman.mu == 0.0
    flags = ("--adv_train", "--adv_p_norm", "l2", "--adv_norm_level", "sentence", "--adv_k", "3")
    smart = build_trainer_method(parse_config(_flags(*flags)))
    assert (smart.p_norm, smart.norm_level, smart.k) == (PNorm.L2, NormLevel.SENTENCE, 3)


@pytest.mark.parametrize("name", list(AdversarialMethodName))
def test_adv_method_implies_adv_train_and_takes_the_methods_defaults(name: str) -> None:
    config = parse_config(_flags("--adv_method", name))
    assert config.adversarial.enabled and config.adversarial.method == name
    assert config.bregman.mu == (1.0 if name == "smart" else 0.0)  # Bregman: SMART's, opt-in for the others
    assert build_trainer_method(config) == METHODS[AdversarialMethodName(name)].config()


def test_method_specific_flags_reach_the_method() -> None:
    config = parse_config(
        _flags("--adv_method", "freelb", "--adv_init_mag", "0.3", "--no-adv_dropout_replay")
    )
    freelb = build_trainer_method(config)
    assert freelb.init_mag == 0.3 and freelb.dropout_replay is False and freelb.k == 2
    config = parse_config(_flags("--adv_method", "r3f", "--adv_noise_type", "uniform"))
    assert build_trainer_method(config).noise_type == "uniform"


def build_trainer_method(config: TrainConfig) -> Any:
    """The method config a run would build (no task overrides)."""
    assert config.adversarial.method is not None
    return METHODS[config.adversarial.method].config(**config.adversarial.parameters_for())


def test_adv_options_from_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yml"
    path.write_text("adv_train: true\nadv_epsilon: 1e-4\nadv_p_norm: l1\nbregman_mu: 2\n", encoding="utf-8")
    config = parse_config(_flags("--config", str(path)))
    assert config.adversarial.parameters == {"epsilon": 1e-4, "p_norm": PNorm.L1} and config.bregman.mu == 2.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--adv_train", "--adv_k", "0"],
            r"--adversarial.k \(--adv_k\): adversarial method smart: SMART needs at least one inner step",
        ),
        (
            ["--adv_train", "--adv_epsilon", "-1"],
            r"\(--adv_epsilon\): adversarial method smart: SMART epsilon must be a finite number >= 0",
        ),
        (["--adv_epsilon", "1e-3"], r"\(--adv_epsilon\) needs --adv_train or --adv_method"),
        (["--adv_method", "fgm", "--adv_k", "2"], r"\(--adv_k\) does not apply to adversarial method fgm"),
        (["--adv_method", "freelb", "--bregman_mu", "1"], r"\(--bregman_mu\) needs a clean forward pass"),
        (["--bregman_beta", "1.0"], r"--bregman.beta \(--bregman_beta\): Bregman beta must be in \[0, 1\)"),
        (["--bregman_steps", "0"], r"--bregman.update_every \(--bregman_steps\): Bregman update_every must"),
    ],
)
def test_bad_adv_flags_name_the_flag(flags: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_config(_flags(*flags))


def test_task_yaml_overrides_the_run_flags() -> None:
    task_def = parse_task_def("pair", {**TASK_ENTRIES["pair"], "adv_alpha": 5.0, "adv_k": 2})
    config = TrainConfig.from_dict({"adv_train": True, "adv_alpha": 1.0, "adv_epsilon": 3e-5})
    assert method_parameters_for(config, task_def) == {"alpha": 5.0, "k": 2, "epsilon": 3e-5}
    # A method without K keeps the override it can use and ignores the other.
    fgm = TrainConfig.from_dict({"adversarial": {"method": "fgm"}})
    assert method_parameters_for(fgm, task_def) == {"alpha": 5.0}


def _first_batch(trainer: Trainer, task: str) -> Any:
    for batch in trainer.loader:
        if batch.task == task:
            return batch.to(trainer.device)
    raise AssertionError(f"no {task} batch")


@pytest.mark.parametrize("task", ["single", "score", "rank"])
def test_an_adv_train_step_lowers_the_combined_loss(tiny_run: dict, tmp_path: Path, task: str) -> None:
    config = config_for(tiny_run, tmp_path, adv_train=True, adv_epsilon=1e-3, learning_rate=1e-3, warmup=0.0)
    trainer = Trainer(config)
    trainer.model.train()
    batch = _first_batch(trainer, task)
    losses = []
    for _ in range(4):
        torch.manual_seed(0)
        loss, stats = trainer.objective(trainer.model, batch)
        assert set(stats) == {"adv_loss", "delta_ratio", "adv_skipped", "bregman"}
        losses.append(loss.item())
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    assert losses[-1] < losses[0]


def test_adv_train_logs_the_adversarial_statistics_and_saves_the_teacher(
    tiny_run: dict, tmp_path: Path
) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path, epochs=1, adv_train=True, log_every_steps=5))
    results = trainer.train()
    assert results["finished"] and results["adv_batches_skipped"] == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["type"] == "train"]
    assert train_records and all(
        {"loss", "adv_loss", "delta_ratio", "bregman"} <= set(r) for r in train_records
    )
    ratios = [value for r in train_records for value in r["delta_ratio"].values()]
    assert all(0 < value < 1e-3 for value in ratios)  # epsilon 1e-5 per entry vs embeddings of size ~1
    assert (tmp_path / "last" / TEACHER_FILE).is_file()
    # The teacher has moved away from the initial weights, but lags behind the model.
    initial = Trainer(config_for(tiny_run, tmp_path / "fresh", adv_train=True)).model.state_dict()
    teacher = trainer.objective.bregman.teacher.state_dict()
    model = trainer.model.state_dict()
    key = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(teacher[key], initial[key]) and not torch.equal(teacher[key], model[key])


def test_plain_training_has_no_adversary_and_no_teacher(tiny_run: dict, tmp_path: Path) -> None:
    objective = TrainingObjective(Trainer(config_for(tiny_run, tmp_path)).model, TrainConfig(), 10)
    assert not objective.methods and objective.bregman is None and objective.state_dict() == {}


def test_resumed_smart_run_equals_the_uninterrupted_one(tiny_run: dict, tmp_path: Path) -> None:
    options = {"adv_train": True, "adv_dropout_replay": True, "adv_k": 2}
    full = Trainer(config_for(tiny_run, tmp_path / "full", **options))
    full.train()
    interrupted = Trainer(config_for(tiny_run, tmp_path / "split", **options))
    interrupted.train(until_step=interrupted.steps_per_epoch + 2)
    resumed = Trainer(config_for(tiny_run, tmp_path / "split", resume=True, **options))
    resumed.train()
    for a, b in (
        (full.model, resumed.model),
        (full.objective.bregman.teacher, resumed.objective.bregman.teacher),
    ):
        expected, actual = state_of(a), state_of(b)
        for key, value in expected.items():
            torch.testing.assert_close(actual[key], value, rtol=0, atol=1e-6, msg=key)


def test_resume_refuses_a_changed_adversarial_setting(tiny_run: dict, tmp_path: Path) -> None:
    Trainer(config_for(tiny_run, tmp_path, adv_train=True)).train(until_step=2)
    with pytest.raises(UserError, match=r"--adversarial.epsilon \(--adv_epsilon\) differs"):
        Trainer(config_for(tiny_run, tmp_path, adv_train=True, adv_epsilon=1e-3, resume=True)).train()
