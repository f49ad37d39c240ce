"""The demo_text mask_lm task built from the demo suite's own files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_utils.errors import UserError
from data_utils.readers import read_examples
from data_utils.task_def import TaskType, load_task_defs
from experiments.demo import prepare_text
from mt_dnn.config import load_config_file

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, premises: list[str]) -> None:
    rows = [{"uid": f"{path.stem}-{i}", "label": "x", "premise": p} for i, p in enumerate(premises)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_train_and_dev_text_come_from_the_tasks_premises(tmp_path: Path, capsys) -> None:
    _write(tmp_path / "banking77_train.jsonl", ["card lost", "card  lost", "top up failed", "pin blocked"])
    _write(tmp_path / "banking77_dev.jsonl", ["card lost", "refund please", "refund please"])
    _write(tmp_path / "vader_movie_train.jsonl", ["a fine film"])
    _write(tmp_path / "vader_movie_dev.jsonl", ["dull"])
    prepare_text.main(["--data_dir", str(tmp_path)])
    assert capsys.readouterr().out.strip() == (
        "demo_text: 4 train / 2 dev sentences from banking77, vader_movie"
    )
    task_defs = load_task_defs(REPO / "experiments" / "demo" / "alum_text_task_def.yml")
    task = task_defs["demo_text"]
    assert task.task_type is TaskType.MASK_LM and task.split_names == ("train", "dev")
    train = read_examples(tmp_path / "demo_text_train.jsonl", task).examples
    dev = read_examples(tmp_path / "demo_text_dev.jsonl", task).examples
    # Whitespace-normalised duplicates written once; dev never repeats a train sentence.
    assert [e.premise for e in train] == ["card lost", "top up failed", "pin blocked", "a fine film"]
    assert [e.premise for e in dev] == ["refund please", "dull"]
    assert train[0].uid == "demo_text-train-000000" and train[0].label is None


def test_a_seeded_sample_and_missing_files(tmp_path: Path) -> None:
    _write(tmp_path / "banking77_train.jsonl", [f"sentence {i}" for i in range(50)])
    _write(tmp_path / "banking77_dev.jsonl", [f"other {i}" for i in range(20)])
    first = prepare_text.build_text(tmp_path, ["banking77"], 10, 5, seed=1)
    assert len(first["train"]) == 10 and len(first["dev"]) == 5
    assert prepare_text.build_text(tmp_path, ["banking77"], 10, 5, seed=1) == first
    assert prepare_text.build_text(tmp_path, ["banking77"], 10, 5, seed=2) != first
    with pytest.raises(UserError, match="social_iqa_train.jsonl: missing"):
        prepare_text.build_text(tmp_path, ["social_iqa"], None, None, seed=1)


def test_the_run_config_trains_demo_text_with_alum() -> None:
    config = load_config_file(REPO / "experiments" / "demo" / "alum_pretraining.yml")
    assert config["train_datasets"] == ["demo_text"] and config["adv_method"] == "alum"
    assert "demo_text" in load_task_defs(REPO / config["task_def"])
