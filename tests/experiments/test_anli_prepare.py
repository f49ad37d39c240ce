"""experiments/anli/prepare.py on hand-written files in the official ANLI v1.0 layout (R1/R2/R3 JSONL)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_utils.errors import UserError
from data_utils.readers import read_examples
from data_utils.task_def import load_task_defs
from experiments.anli import prepare

FIXTURES = Path(__file__).parent / "fixtures" / "anli"


@pytest.fixture
def anli_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "anli_v1.0", tmp_path / "anli_v1.0"))


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def uids(path: Path) -> list[str]:
    return [row["uid"].rsplit("-", 5)[0] for row in rows_of(path)]  # "<task>-<split>" of each row


def test_rounds_separately_and_combined(anli_dir: Path, tmp_path: Path) -> None:
    summary = prepare.main(["--anli_dir", str(anli_dir), "--output_dir", str(tmp_path)])
    assert summary["anli_r1"] == {"train": 2, "dev": 1, "test": 1, "skipped": []}
    assert summary["anli"] == {
        "train": 4, "dev": 3, "test": 3, "dev_r1": 1, "dev_r2": 1, "dev_r3": 1, "test_r1": 1, "test_r2": 1,
        "test_r3": 1, "skipped": [],
    }  # fmt: skip
    assert rows_of(tmp_path / "anli_r1_dev.jsonl") == [
        {
            "uid": "anli_r1-dev-ed5c37ab-77c5-4dbc-ba75-8fd617b19712",
            "label": "e",
            "premise": "Ernest Jones is a British jeweller and watchmaker founded in 1949.",
            "hypothesis": "Ernest Jones was founded before 1950.",
        }
    ]
    # Combined train: the rounds one after the other, rows as in their round's file.
    assert uids(tmp_path / "anli_train.jsonl") == [
        "anli_r1-train",
        "anli_r1-train",
        "anli_r2-train",
        "anli_r3-train",
    ]
    assert (
        rows_of(tmp_path / "anli_train.jsonl")[3]["premise"] == "Well, I'm glad you came – we've missed you."
    )
    assert uids(tmp_path / "anli_test.jsonl") == ["anli_r1-test", "anli_r2-test", "anli_r3-test"]
    # Each round's dev and test again inside the combined task, under their own names.
    assert (tmp_path / "anli_dev_r2.jsonl").read_bytes() == (tmp_path / "anli_r2_dev.jsonl").read_bytes()
    assert (tmp_path / "anli_test_r3.jsonl").read_bytes() == (tmp_path / "anli_r3_test.jsonl").read_bytes()
    assert uids(tmp_path / "anli_dev_r2.jsonl") == ["anli_r2-dev"]


def test_one_round_reads_only_its_folder(anli_dir: Path, tmp_path: Path) -> None:
    shutil.rmtree(anli_dir / "R1")
    summary = prepare.prepare(anli_dir, tmp_path / "out", ["anli_r3"])
    assert set(summary) == {"anli_r3"}
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "anli_r3_dev.jsonl", "anli_r3_test.jsonl", "anli_r3_train.jsonl"
    ]  # fmt: skip


def test_every_split_reads_back_with_the_anli_task_definitions(anli_dir: Path, tmp_path: Path) -> None:
    prepare.prepare(anli_dir, tmp_path)
    task_defs = load_task_defs(prepare.TASK_DEF)
    assert list(task_defs) == list(prepare.TASKS)
    for name, task_def in task_defs.items():
        for split in task_def.split_names:
            examples = read_examples(tmp_path / f"{name}_{split}.jsonl", task_def).examples
            assert examples and all(example.label in (0, 1, 2) for example in examples)
    combined = read_examples(tmp_path / "anli_dev.jsonl", task_defs["anli"]).examples
    assert [example.label for example in combined] == [0, 2, 2]  # e, c, c


def test_a_label_outside_e_n_c_names_file_line_and_key(anli_dir: Path, tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "malformed" / "R2_dev.jsonl", anli_dir / "R2" / "dev.jsonl")
    with pytest.raises(UserError, match=r"R2/dev.jsonl:2: key 'label': 'entailment' is not one of e, n, c$"):
        prepare.prepare(anli_dir, tmp_path)


def test_broken_json_a_missing_key_and_an_unknown_task(anli_dir: Path, tmp_path: Path) -> None:
    path = anli_dir / "R3" / "test.jsonl"
    path.write_text('{"uid": "x", "context": "A.", "hypothesis": "B.", "label": "n"\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"R3/test.jsonl:1: invalid JSON"):
        prepare.prepare(anli_dir, tmp_path, ["anli_r3"])
    path.write_text('{"uid": "x", "hypothesis": "B.", "label": "n"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"R3/test.jsonl:1: key 'context' missing"):
        prepare.prepare(anli_dir, tmp_path, ["anli_r3"])
    with pytest.raises(SystemExit):
        prepare.main(["--anli_dir", str(anli_dir), "--output_dir", str(tmp_path), "--tasks", "anli_r4"])
