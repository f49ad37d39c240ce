"""experiments/scitail/prepare.py on hand-written files in SciTail's official tsv format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_utils.errors import UserError
from data_utils.readers import read_examples
from data_utils.task_def import load_task_defs
from experiments.scitail import prepare

FIXTURES = Path(__file__).parent / "fixtures" / "scitail"


@pytest.fixture
def scitail_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "SciTailV1.1", tmp_path / "SciTailV1.1"))


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_split_with_line_numbered_uids(scitail_dir: Path, tmp_path: Path) -> None:
    summary = prepare.main(["--scitail_dir", str(scitail_dir), "--output_dir", str(tmp_path)])
    assert summary == {"scitail": {"train": 3, "dev": 2, "test": 2, "skipped": []}}
    train = rows_of(tmp_path / "scitail_train.jsonl")
    assert train[0] == {
        "uid": "scitail-train-1",
        "label": "neutral",
        "premise": "Pluto rotates once on its axis every 6.39 Earth days.",
        "hypothesis": "Earth rotates on its axis once in one day.",
    }
    assert train[2]["premise"] == 'A "joule" is the unit of energy in the SI system.'  # no quoting
    assert [row["label"] for row in rows_of(tmp_path / "scitail_test.jsonl")] == ["entails", "neutral"]


def test_two_classes_read_back_with_the_task_definition(scitail_dir: Path, tmp_path: Path) -> None:
    prepare.prepare(scitail_dir, tmp_path)
    task_def = load_task_defs(prepare.TASK_DEF)["scitail"]
    assert task_def.n_class == 2
    examples = read_examples(tmp_path / "scitail_train.jsonl", task_def).examples
    assert [example.label for example in examples] == [0, 1, 1]


def test_crlf_line_endings_are_read_like_lf(scitail_dir: Path, tmp_path: Path) -> None:
    path = scitail_dir / "tsv_format" / "scitail_1.0_dev.tsv"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    prepare.prepare(scitail_dir, tmp_path)
    assert rows_of(tmp_path / "scitail_dev.jsonl")[1]["label"] == "neutral"


def test_a_row_without_its_label_column_names_file_and_line(scitail_dir: Path, tmp_path: Path) -> None:
    shutil.copy(
        FIXTURES / "malformed" / "scitail_1.0_dev.tsv", scitail_dir / "tsv_format" / "scitail_1.0_dev.tsv"
    )
    with pytest.raises(
        UserError, match=r"scitail_1.0_dev.tsv:2: 2 fields, expected 3 \(premise, hypothesis, label\)$"
    ):
        prepare.prepare(scitail_dir, tmp_path)


def test_an_unknown_label_and_a_missing_file(scitail_dir: Path, tmp_path: Path) -> None:
    (scitail_dir / "tsv_format" / "scitail_1.0_test.tsv").write_text(
        "A.\tB.\tcontradiction\n", encoding="utf-8"
    )
    with pytest.raises(
        UserError, match=r"scitail_1.0_test.tsv:1: column 'label': 'contradiction' is not one of"
    ):
        prepare.prepare(scitail_dir, tmp_path)
    (scitail_dir / "tsv_format" / "scitail_1.0_test.tsv").unlink()
    with pytest.raises(UserError, match=r"scitail_1.0_test.tsv: not found"):
        prepare.prepare(scitail_dir, tmp_path)
