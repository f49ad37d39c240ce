"""The resume state: it round-trips, and a resumed config may change only the keys listed as changeable."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from data_utils.errors import UserError
from mt_dnn.checkpoint_state import (
    RESUMABLE_CHANGES,
    STATE_FILE,
    check_resumable,
    read_state,
    resume_identity,
)
from mt_dnn.config import TrainConfig, flat_identity
from mt_dnn.trainer import Trainer
from tests.mt_dnn.test_trainer import config_for


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_load_state_dict_of_state_dict_is_the_same_state(tiny_run: dict, tmp_path: Path) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path / "a", epochs=1, bregman_mu=1.0))
    trainer.train(until_step=5)
    saved = trainer.resume_state.state_dict()
    assert saved["step"] == 5 and saved["last_eval_step"] == -1

    fresh = Trainer(config_for(tiny_run, tmp_path / "b", epochs=1, bregman_mu=1.0))
    assert fresh.resume_state.state_dict()["step"] == 0
    fresh.resume_state.load_state_dict(saved)
    assert_same(fresh.resume_state.state_dict(), saved)
    assert fresh.step == 5 and fresh.progress == trainer.progress
    # What the trainer wrote is that state too (the RNGs as they were when it was written).
    written = read_state(tmp_path / "a" / "last" / STATE_FILE)
    assert_same(
        {k: v for k, v in written.items() if k != "rng"}, {k: v for k, v in saved.items() if k != "rng"}
    )


def test_a_changeable_key_resumes_and_any_other_is_refused_naming_it(tiny_run: dict, tmp_path: Path) -> None:
    Trainer(config_for(tiny_run, tmp_path, epochs=1)).train(until_step=2)
    for key, value in (("learning_rate", 5e-4), ("epochs", 3), ("max_steps", 4), ("seed", 8)):
        with pytest.raises(UserError) as refused:
            Trainer(config_for(tiny_run, tmp_path, **{"epochs": 1, "resume": True, key: value})).train()
        message = str(refused.value)
        assert (
            message
            == f"{tmp_path / 'last' / STATE_FILE}: cannot resume: --{key} differs from the interrupted run"
        )
        assert "\n" not in message
    changed = {
        "log_every_steps": 3,
        "batch_size_eval": 4,
        "early_stopping_patience": 9,
        "max_nonfinite_steps": 7,
    }
    results = Trainer(config_for(tiny_run, tmp_path, epochs=1, resume=True, **changed)).train()
    assert results["finished"] and results["steps"] > 2


def test_every_changeable_key_is_a_config_key_and_the_rest_must_match() -> None:
    keys = set(TrainConfig().flat_dict())
    assert keys > RESUMABLE_CHANGES
    assert set(resume_identity(TrainConfig())) == keys - RESUMABLE_CHANGES
    assert {"adversarial.method", "adversarial.epsilon", "bregman.update_every", "sampling.strategy"} <= keys
    # What decides the numbers is never changeable.
    assert not RESUMABLE_CHANGES & {
        "learning_rate",
        "seed",
        "batch_size",
        "epochs",
        "max_steps",
        "fp16",
        "bf16",
    }


def test_check_resumable_names_the_first_differing_or_unrecorded_key(tmp_path: Path) -> None:
    ours = resume_identity(TrainConfig(output_dir="here"))
    path = tmp_path / STATE_FILE
    check_resumable(path, {"config": dict(ours)}, ours, {})
    relaxed = {**ours, "output_dir": "elsewhere"}  # a changeable key is not compared at all
    check_resumable(path, {"config": dict(ours)}, {k: v for k, v in relaxed.items() if k in ours}, {})
    with pytest.raises(UserError, match=r"cannot resume: --warmup differs"):
        check_resumable(path, {"config": {**ours, "warmup": 0.5}}, ours, {})
    older = {key: value for key, value in ours.items() if key != "adversarial.radius"}
    with pytest.raises(
        UserError, match=r"older train.py that did not record --adversarial.radius \(--adv_radius\)"
    ):
        check_resumable(path, {"config": older}, ours, {})
    data = {"task 'a' train rows": "1"}
    with pytest.raises(UserError, match=r"cannot resume: task 'a' train rows differs"):
        check_resumable(path, {"config": dict(ours), "data": {"task 'a' train rows": "2"}}, ours, data)


# A resume state written before the config had sections (flat keys: adv_epsilon, bregman_steps, sampling, ...).
MAIN_IDENTITY = json.loads(
    (Path(__file__).parent / "fixtures" / "main_flat_resume_identity.json").read_text()
)


def _main_identity(name: str, tiny_run: dict) -> dict[str, Any]:
    identity = dict(MAIN_IDENTITY["identity"][name])
    for key in ("task_def", "data_dir", "init_checkpoint"):
        identity[key] = tiny_run[key]
    return identity


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("smart", {"adv_train": True, "adv_epsilon": 1e-4, "bregman_steps": 2}),
        ("mix_opt", {"mix_opt": 1, "ratio": 0.5}),
    ],
)
def test_a_flat_identity_saved_by_the_flat_config_matches_the_same_run(
    name: str, options: dict[str, Any], tiny_run: dict
) -> None:
    config = config_for(tiny_run, Path("out"), epochs=1, **options)
    saved = _main_identity(name, tiny_run)
    assert flat_identity(saved) == resume_identity(config)
    check_resumable(Path(STATE_FILE), {"config": saved}, resume_identity(config), {})
    changed = config_for(tiny_run, Path("out"), epochs=1, **{**options, "seed": 8})
    with pytest.raises(UserError, match="cannot resume: --seed differs"):
        check_resumable(Path(STATE_FILE), {"config": saved}, resume_identity(changed), {})


def test_a_flat_state_written_before_the_sections_resumes(tiny_run: dict, tmp_path: Path) -> None:
    """The resume state of an interrupted SMART run, its config as the flat train.py wrote it, resumes and
    ends where the uninterrupted run does; a changed section key is still refused, named."""
    options = {"adv_train": True, "adv_epsilon": 1e-4, "bregman_steps": 2, "epochs": 1}
    full = Trainer(config_for(tiny_run, tmp_path / "full", **options))
    full.train()
    interrupted = Trainer(config_for(tiny_run, tmp_path / "split", **options))
    interrupted.train(until_step=3)
    path = tmp_path / "split" / "last" / STATE_FILE
    state = read_state(path)
    state["config"] = _main_identity("smart", tiny_run)
    torch.save(state, path)
    with pytest.raises(UserError, match=r"--adversarial.epsilon \(--adv_epsilon\) differs"):
        Trainer(
            config_for(tiny_run, tmp_path / "split", resume=True, **{**options, "adv_epsilon": 1e-3})
        ).train()
    resumed = Trainer(config_for(tiny_run, tmp_path / "split", resume=True, **options))
    results = resumed.train()
    assert results["finished"] and results["steps"] == full.progress.step
    for a, b in (
        (full.model, resumed.model),
        (full.objective.bregman.teacher, resumed.objective.bregman.teacher),
    ):
        expected, actual = a.state_dict(), b.state_dict()
        for key, value in expected.items():
            assert torch.equal(actual[key], value), key
