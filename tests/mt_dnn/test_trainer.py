from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from data_utils.errors import UserError
from mt_dnn.checkpoint_state import STATE_FILE
from mt_dnn.config import TrainConfig
from mt_dnn.model import MTDNNModel
from mt_dnn.objective import TrainingObjective
from mt_dnn.trainer import Trainer, TrainingDiverged
from mt_dnn.update import skips_on_device
from tests.mt_dnn.conftest import make_tiny_run


def config_for(tiny_run: dict[str, Any], out: Path, **overrides: Any) -> TrainConfig:
    return TrainConfig.from_dict({**tiny_run, "output_dir": str(out), **overrides})


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def test_training_updates_every_head_and_the_encoder_and_writes_logs(tiny_run: dict, tmp_path: Path) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path, epochs=1))
    before = state_of(trainer.model)
    results = trainer.train()
    after = state_of(trainer.model)

    for name, _ in trainer.model.named_parameters():
        if name.startswith("heads.") or ".encoder.layer." in f".{name}":
            assert not torch.equal(before[name], after[name]), f"{name} did not change"
    assert results["finished"] and results["steps"] == trainer.steps_per_epoch

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = {(r["task"], r["split"]) for r in records if r["type"] == "eval"}
    assert evals == {(task, "dev") for task in tiny_run["train_datasets"]}  # test splits are unlabelled
    assert all(r["type"] in ("train", "eval") for r in records)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["steps"] == results["steps"] and set(saved["final_eval"]) == {
        f"{t}_dev" for t in evals and tiny_run["train_datasets"]
    }
    assert (tmp_path / "best" / "mtdnn.json").is_file()
    assert (tmp_path / "last" / STATE_FILE).is_file()


def test_training_learns_the_toy_tasks(tiny_run: dict, tmp_path: Path) -> None:
    config = config_for(tiny_run, tmp_path, epochs=12, learning_rate=2e-3, train_datasets=["single"])
    results = Trainer(config).train()
    accuracy = results["final_eval"]["single_dev"]["acc"]
    assert accuracy >= 80.0, results["final_eval"]  # one sentiment word decides the label; chance is ~50


def test_resumed_run_equals_the_uninterrupted_one(tiny_run: dict, tmp_path: Path) -> None:
    full = Trainer(config_for(tiny_run, tmp_path / "full"))
    full.train()

    interrupted = Trainer(config_for(tiny_run, tmp_path / "split"))
    stop_at = interrupted.steps_per_epoch + 3  # mid-way through the second epoch
    partial = interrupted.train(until_step=stop_at)
    assert not partial["finished"] and partial["steps"] == stop_at

    resumed = Trainer(config_for(tiny_run, tmp_path / "split", resume=True))
    results = resumed.train()
    assert results["finished"] and results["steps"] == full.step

    expected, actual = state_of(full.model), state_of(resumed.model)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=1e-6, msg=key)
    # The saved `last` checkpoints agree too.
    a = MTDNNModel.load(tmp_path / "full" / "last").state_dict()
    b = MTDNNModel.load(tmp_path / "split" / "last").state_dict()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=1e-6, msg=key)


def test_resume_refuses_a_changed_run(tiny_run: dict, tmp_path: Path) -> None:
    Trainer(config_for(tiny_run, tmp_path)).train(until_step=2)
    with pytest.raises(UserError, match="--batch_size differs"):
        Trainer(config_for(tiny_run, tmp_path, resume=True, batch_size=4)).train()


def test_gradient_accumulation_counts_optimizer_steps(tiny_run: dict, tmp_path: Path) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path, epochs=1, grad_accumulation_step=3))
    results = trainer.train()
    assert results["steps"] == -(-len(trainer.sampler) // 3)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])  # fused: skipped in the kernel; else on the host
def test_non_finite_losses_are_skipped_then_stop_the_run(
    tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimizer: str
) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path, epochs=1, max_nonfinite_steps=3, optimizer=optimizer))
    assert skips_on_device(trainer.optimizer) == (optimizer == "adamw")
    calls = {"n": 0}
    real_call = TrainingObjective.__call__

    def sometimes_nan(
        self: TrainingObjective, model: Any, batch: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, dict]:
        calls["n"] += 1
        loss, stats = real_call(self, model, batch, **kwargs)
        return (loss * float("nan") if calls["n"] in (2, 5, 6) else loss), stats

    monkeypatch.setattr(TrainingObjective, "__call__", sometimes_nan)
    before = state_of(trainer.model)
    results = trainer.train()
    assert results["nonfinite_steps_skipped"] == 3
    assert all(
        torch.isfinite(value).all() for value in state_of(trainer.model).values() if value.is_floating_point()
    )
    assert any(not torch.equal(before[k], v) for k, v in state_of(trainer.model).items())

    diverging = Trainer(config_for(tiny_run, tmp_path / "diverge", epochs=1, max_nonfinite_steps=3))
    monkeypatch.setattr(
        TrainingObjective,
        "__call__",
        lambda self, model, batch, **kwargs: (torch.tensor(float("nan"), requires_grad=True), {}),
    )
    with pytest.raises(TrainingDiverged, match="3 non-finite losses in a row"):
        diverging.train()


def test_init_from_our_checkpoint_carries_heads_over(tiny_run: dict, tmp_path: Path) -> None:
    first = Trainer(config_for(tiny_run, tmp_path / "a", epochs=1))
    first.train()
    second = Trainer(config_for(tiny_run, tmp_path / "b", init_checkpoint=str(tmp_path / "a" / "last")))
    for key, value in first.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_best_metric_names_a_task_and_metric(tiny_run: dict, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="task 'nope' is not evaluated"):
        Trainer(config_for(tiny_run, tmp_path, best_metric="nope:acc"))
    with pytest.raises(UserError, match="reports acc"):
        Trainer(config_for(tiny_run, tmp_path, best_metric="single:pearson"))
    trainer = Trainer(config_for(tiny_run, tmp_path, best_metric="score:pearson", epochs=1))
    assert trainer.train()["best_metric"] == "score_dev:pearson"


def test_unknown_task_and_missing_cache_are_user_errors(tiny_run: dict, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="task 'nope' is not defined"):
        Trainer(config_for(tiny_run, tmp_path, train_datasets=["nope"]))
    with pytest.raises(UserError, match="no token-id cache"):
        Trainer(config_for(tiny_run, tmp_path, data_dir=str(tmp_path)))


def test_labelled_test_splits_are_scored_once_by_the_best_checkpoint(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    run = make_tiny_run(tmp_path / "run", tiny_tokenizer_dir, n_train=32, labelled_test=True)
    results = Trainer(config_for(run, tmp_path / "out", epochs=2, train_datasets=["single", "score"])).train()
    assert set(results["final_eval"]) == {"single_dev", "score_dev"}  # only dev splits pick the best
    assert set(results["test_eval"]) == {"single_test", "score_test"}
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    test_records = [r for r in records if r["type"] == "eval" and r["split"] == "test"]
    assert len(test_records) == 2 and all(r["step"] == results["best_step"] for r in test_records)


def test_logged_window_loss_is_the_mean_of_the_step_losses(
    tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, float]] = []
    real_call = TrainingObjective.__call__

    def recording(
        self: TrainingObjective, model: Any, batch: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, dict]:
        loss, stats = real_call(self, model, batch, **kwargs)
        seen.append((batch.task, loss.item()))
        return loss, stats

    monkeypatch.setattr(TrainingObjective, "__call__", recording)
    Trainer(config_for(tiny_run, tmp_path, epochs=1, log_every_steps=4)).train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if r["type"] == "train"]
    assert windows and windows[0]["step"] == 4
    position = 0
    for record in windows:
        steps = record["step"] - position
        window = seen[position : position + steps]  # one micro-batch per step (no accumulation)
        for task, logged in record["loss"].items():
            losses = [value for name, value in window if name == task]
            assert logged == pytest.approx(sum(losses) / len(losses), rel=1e-5)
        assert set(record["loss"]) == {task for task, _ in window}
        position = record["step"]
    assert position == len(seen)


def test_results_split_the_wall_time(tiny_run: dict, tmp_path: Path) -> None:
    results = Trainer(config_for(tiny_run, tmp_path, epochs=1)).train()
    assert results["eval_seconds"] > 0 and results["checkpoint_seconds"] > 0
    assert results["eval_seconds"] + results["checkpoint_seconds"] < results["train_seconds"]


def test_bucketing_is_on_by_default(tiny_run: dict, tmp_path: Path) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path))
    assert trainer.sampler.bucket_window == TrainConfig().sampling.bucket_window > 0


# ------------------------------------------------------------------ early stopping


def test_early_stopping_ends_the_run_after_patience_evaluations_without_a_new_best(
    tiny_run: dict, tmp_path: Path
) -> None:
    """A learning rate too small to move dev: the first evaluation is the best, the next two are not."""
    config = config_for(
        tiny_run,
        tmp_path,
        epochs=10,
        learning_rate=1e-12,
        early_stopping_patience=2,
        train_datasets=["single"],
    )
    results = Trainer(config).train()
    assert results["finished"] and results["early_stopped"]
    assert results["epochs"] == 3 and results["best_step"] == results["steps"] // 3
    assert (tmp_path / "best").is_dir() and (tmp_path / "last").is_dir()
    no_patience = Trainer(config_for(tiny_run, tmp_path / "off", epochs=4, learning_rate=1e-12)).train()
    assert not no_patience["early_stopped"] and no_patience["epochs"] == 4


def test_a_resumed_run_keeps_its_early_stopping_count(tiny_run: dict, tmp_path: Path) -> None:
    options: dict[str, Any] = {
        "epochs": 10,
        "learning_rate": 1e-12,
        "early_stopping_patience": 2,
        "train_datasets": ["single"],
    }
    full = Trainer(config_for(tiny_run, tmp_path / "full", **options)).train()
    first = Trainer(config_for(tiny_run, tmp_path / "split", **options))
    first.train(until_step=2 * first.steps_per_epoch + 1)  # after the second evaluation (one without a best)
    resumed = Trainer(config_for(tiny_run, tmp_path / "split", resume=True, **options)).train()
    assert (
        resumed["early_stopped"] and resumed["steps"] == full["steps"] and resumed["epochs"] == full["epochs"]
    )
