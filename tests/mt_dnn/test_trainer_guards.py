"""What the trainer refuses or recovers from: a run it would overwrite, flags that are not numbers, a resume
that is not the same run, damaged checkpoint files, evaluations that cannot choose a best checkpoint, weights
that stopped being finite; and the step budget flags (--max_steps, one evaluation per step)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from data_utils.errors import UserError
from mt_dnn.checkpoint_state import STATE_FILE, TEACHER_FILE
from mt_dnn.flags import parse_config
from mt_dnn.model import HEADS_FILE, MTDNNModel
from mt_dnn.trainer import Trainer, TrainingDiverged
from tests.mt_dnn.test_trainer import config_for

SINGLE: dict[str, Any] = {"train_datasets": ["single"], "epochs": 1}


def _evals(out: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if record["type"] == "eval"]


# ------------------------------------------------------------------ the output folder


def test_a_finished_run_is_not_overwritten_without_a_flag(tiny_run: dict, tmp_path: Path) -> None:
    Trainer(config_for(tiny_run, tmp_path, **SINGLE)).train()
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match="holds a run .*--resume.*--overwrite_output_dir"):
        Trainer(config_for(tiny_run, tmp_path, **SINGLE))
    assert (tmp_path / "metrics.jsonl").read_bytes() == before and (tmp_path / "best").is_dir()
    results = Trainer(config_for(tiny_run, tmp_path, overwrite_output_dir=True, **SINGLE)).train()
    assert results["finished"] and len(_evals(tmp_path)) == 1  # a new log, not the old one appended to


def test_an_output_path_that_is_a_file_is_refused(tiny_run: dict, tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_text("not a folder")
    with pytest.raises(UserError, match="exists and is not a folder"):
        Trainer(config_for(tiny_run, path, **SINGLE))
    assert path.read_text() == "not a folder"


# ------------------------------------------------------------------ numeric flags


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--grad_clipping", "nan", "--grad_clipping must be a finite number"),
        ("--learning_rate", "nan", "--learning_rate must be a finite number"),
        ("--weight_decay", "inf", "--weight_decay must be a finite number"),
        ("--warmup", "nan", "--warmup must be a finite number"),
        ("--seed", "-1", r"--seed must be in \[0, 2\*\*32\)"),
        ("--max_steps", "-3", "--max_steps must be >= 0"),
    ],
)
def test_numeric_flags_must_be_finite_and_in_range(flag: str, value: str, message: str) -> None:
    base = ["--task_def", "t", "--data_dir", "d", "--init_checkpoint", "m", "--train_datasets", "a"]
    with pytest.raises(UserError, match=message):
        parse_config([*base, flag, value])


def test_non_finite_weights_stop_the_run_with_an_error(tiny_run: dict, tmp_path: Path) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path, max_nonfinite_steps=10**6, **SINGLE))
    with torch.no_grad():
        next(trainer.model.heads.parameters()).fill_(math.nan)
    with pytest.raises(TrainingDiverged, match="is not finite at step"):
        trainer.train()
    assert not (tmp_path / "best").exists()  # no non-finite checkpoint is kept as the best


# ------------------------------------------------------------------ resume


def test_resume_refuses_another_optimizer_or_task_definition(tiny_run: dict, tmp_path: Path) -> None:
    import yaml

    task_def = tmp_path / "tasks.yml"
    shutil.copy(tiny_run["task_def"], task_def)
    options = {**SINGLE, "epochs": 2, "task_def": str(task_def)}
    Trainer(config_for(tiny_run, tmp_path / "out", **options)).train(until_step=2)
    with pytest.raises(UserError, match="cannot resume: --optimizer differs"):
        Trainer(config_for(tiny_run, tmp_path / "out", resume=True, optimizer="sgd", **options)).train()
    with pytest.raises(UserError, match="cannot resume: --weight_decay differs"):
        Trainer(config_for(tiny_run, tmp_path / "out", resume=True, weight_decay=0.5, **options)).train()
    entries = yaml.safe_load(task_def.read_text())
    entries["single"]["loss_weight"] = 2.0  # the same file, edited after the interruption
    task_def.write_text(yaml.safe_dump(entries, sort_keys=False))
    with pytest.raises(UserError, match="cannot resume: task 'single' definition differs"):
        Trainer(config_for(tiny_run, tmp_path / "out", resume=True, **options)).train()


@pytest.mark.parametrize("damage", ["state", "heads", "teacher"])
def test_damaged_checkpoint_files_are_one_line_errors(tiny_run: dict, tmp_path: Path, damage: str) -> None:
    options = {**SINGLE, "epochs": 2, "adv_train": True}
    Trainer(config_for(tiny_run, tmp_path, **options)).train(until_step=2)
    last = tmp_path / "last"
    if damage == "state":
        (last / STATE_FILE).write_bytes((last / STATE_FILE).read_bytes()[:100])
        message = "damaged or truncated resume state"
    elif damage == "heads":
        (last / HEADS_FILE).write_bytes(b"\x00" * 16)
        message = "heads.safetensors: damaged or truncated"
    else:
        (last / TEACHER_FILE).unlink()
        message = "bregman_teacher.safetensors: missing"
    with pytest.raises(UserError, match=message):
        Trainer(config_for(tiny_run, tmp_path, resume=True, **options)).train()


# ------------------------------------------------------------------ what is evaluated


def test_a_test_dataset_without_labelled_splits_is_refused(tiny_run: dict, tmp_path: Path) -> None:
    data = tmp_path / "cache"
    shutil.copytree(tiny_run["data_dir"], data)
    for split in data.glob("pair_dev*"):
        shutil.rmtree(split)  # pair keeps only its unlabelled test split (prepro run without its dev file)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"] = {name: entry for name, entry in manifest["splits"].items() if name != "pair_dev"}
    (data / "manifest.json").write_text(json.dumps(manifest))
    config = config_for(tiny_run, tmp_path / "out", test_datasets=["pair"], **SINGLE)
    config.data_dir = str(data)
    with pytest.raises(UserError, match="--test_datasets task 'pair' has no labelled dev or test split"):
        Trainer(config)


def test_a_best_metric_that_is_nan_at_every_evaluation_is_an_error(
    tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Trainer, "_score", lambda self, model, dataset: {"acc": math.nan})
    with pytest.raises(UserError, match="NaN or missing at every evaluation.*last"):
        Trainer(config_for(tiny_run, tmp_path, **SINGLE)).train()
    assert MTDNNModel.load(tmp_path / "last") is not None and not (tmp_path / "best").exists()


# ------------------------------------------------------------------ the step budget


def test_max_steps_ends_the_run_inside_an_epoch_and_the_schedule_spans_it(
    tiny_run: dict, tmp_path: Path
) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path, max_steps=5, **{**SINGLE, "epochs": 3}))
    assert trainer.total_steps == 5 < trainer.steps_per_epoch
    results = trainer.train()
    assert results["finished"] and results["steps"] == 5 and results["best_step"] == 5
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # linear decay to 0 at 5
    assert [record["step"] for record in _evals(tmp_path)] == [5]


def test_an_epoch_ending_on_an_eval_step_is_evaluated_once(tiny_run: dict, tmp_path: Path) -> None:
    probe = Trainer(config_for(tiny_run, tmp_path / "probe", **SINGLE))
    every = probe.steps_per_epoch
    Trainer(config_for(tiny_run, tmp_path / "run", eval_every_steps=every, **{**SINGLE, "epochs": 2})).train()
    steps = [record["step"] for record in _evals(tmp_path / "run")]
    assert steps == [every, 2 * every]


def test_tensorboard_without_its_package_is_a_one_line_error(
    tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(
        UserError, match="--tensorboard needs the tensorboard package: pip install tensorboard"
    ):
        Trainer(config_for(tiny_run, tmp_path, tensorboard=True, **SINGLE)).train()


# ------------------------------------------------------------------ interrupted saves


def test_a_save_killed_between_its_renames_is_recovered_and_resumes_the_same_run(
    tiny_run: dict, tmp_path: Path
) -> None:
    from data_utils.atomic import aside_path

    options = {**SINGLE, "epochs": 2}
    full = Trainer(config_for(tiny_run, tmp_path / "full", **options))
    full.train()
    interrupted = Trainer(config_for(tiny_run, tmp_path / "split", **options))
    interrupted.train(until_step=3)
    last = tmp_path / "split" / "last"
    last.rename(aside_path(last))  # the old copy moved aside, the new one never renamed in place
    stale = tmp_path / "split" / ".last.deadhost.999999.0123abcd.tmp"
    stale.mkdir()
    (stale / "heads.safetensors").write_bytes(b"half a checkpoint")
    resumed = Trainer(config_for(tiny_run, tmp_path / "split", resume=True, **options))
    assert last.is_dir() and not aside_path(last).exists()
    results = resumed.train()
    assert results["steps"] == full.step
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)


def test_stale_temporaries_of_this_host_are_removed_when_a_run_starts(tiny_run: dict, tmp_path: Path) -> None:
    from data_utils import atomic

    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / f".last.{atomic._HOST}.999999.0123abcd.tmp"  # a writer that no longer runs
    stale.mkdir()
    Trainer(config_for(tiny_run, tmp_path, **SINGLE))
    assert not stale.exists()


# ------------------------------------------------------------------ review fixes


def test_resume_without_a_resume_state_does_not_write_over_a_finished_run(
    tiny_run: dict, tmp_path: Path
) -> None:
    Trainer(config_for(tiny_run, tmp_path, **SINGLE)).train()
    shutil.rmtree(tmp_path / "last")
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match="no last/trainer_state.pt to resume from"):
        Trainer(config_for(tiny_run, tmp_path, resume=True, **SINGLE))
    with pytest.raises(UserError, match="pick one"):
        Trainer(config_for(tiny_run, tmp_path, resume=True, overwrite_output_dir=True, **SINGLE))
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_overwrite_removes_nothing_when_a_later_check_fails(tiny_run: dict, tmp_path: Path) -> None:
    Trainer(config_for(tiny_run, tmp_path, **SINGLE)).train()
    with pytest.raises(UserError, match="task 'nope' is not defined"):
        Trainer(config_for(tiny_run, tmp_path, overwrite_output_dir=True, train_datasets=["nope"], epochs=1))
    assert (tmp_path / "best").is_dir() and (tmp_path / "results.json").is_file()


def test_a_run_killed_in_its_last_evaluation_resumes_into_it(tiny_run: dict, tmp_path: Path) -> None:
    """The state saved at the last step (before the epoch-end evaluation) must not make --resume skip it."""
    options = {**SINGLE, "epochs": 2}
    full = Trainer(config_for(tiny_run, tmp_path / "full", **options)).train()
    first = Trainer(config_for(tiny_run, tmp_path / "split", save_every_steps=1, **options))
    first.train(until_step=first.total_steps)  # every step saved, stopped before the final evaluation
    resumed = Trainer(config_for(tiny_run, tmp_path / "split", resume=True, save_every_steps=1, **options))
    results = resumed.train()
    assert results["epochs"] == full["epochs"] == 2 and results["best_step"] == full["best_step"]
    assert [r["step"] for r in _evals(tmp_path / "split")] == [r["step"] for r in _evals(tmp_path / "full")]


def test_nan_evaluations_count_towards_early_stopping(
    tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = iter([{"acc": 50.0}] + [{"acc": math.nan}] * 20)
    monkeypatch.setattr(Trainer, "_score", lambda self, model, dataset: next(scores))
    results = Trainer(
        config_for(tiny_run, tmp_path, early_stopping_patience=2, **{**SINGLE, "epochs": 10})
    ).train()
    assert results["early_stopped"] and results["epochs"] == 3


def test_max_steps_must_be_a_multiple_of_freeats_replays(tiny_run: dict, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--max_steps 5: FreeAT takes 2 optimizer steps per batch"):
        Trainer(config_for(tiny_run, tmp_path, adv_method="freeat", adv_replays=2, max_steps=5, **SINGLE))
