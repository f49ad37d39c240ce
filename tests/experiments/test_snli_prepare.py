"""experiments/snli/prepare.py on hand-written files in the official SNLI 1.0 JSONL format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_utils.errors import UserError
from data_utils.readers import read_examples
from data_utils.task_def import load_task_defs
from experiments.snli import prepare

FIXTURES = Path(__file__).parent / "fixtures" / "snli"


@pytest.fixture
def snli_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "snli_1.0", tmp_path / "snli_1.0"))


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_rows_labels_and_uids_from_the_official_fields(
    snli_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    summary = prepare.main(["--snli_dir", str(snli_dir), "--output_dir", str(out)])
    assert sorted(path.name for path in out.iterdir()) == [
        "snli_dev.jsonl",
        "snli_test.jsonl",
        "snli_train.jsonl",
    ]
    assert rows_of(out / "snli_train.jsonl")[2] == {
        "uid": "snli-train-2267923837.jpg#2r1e",
        "label": "entailment",
        "premise": 'Children smile and wave at the "camera".',
        "hypothesis": "There are children present.",
    }
    assert rows_of(out / "snli_train.jsonl")[1]["hypothesis"] == "The rider is asleep in a café."
    # Pairs without a gold label ("-") are left out, counted and located.
    assert [row["uid"] for row in rows_of(out / "snli_dev.jsonl")] == [
        "snli-dev-4705552913.jpg#2r1n",
        "snli-dev-4804607632.jpg#0r1c",
    ]
    assert {k: v for k, v in summary["snli"].items() if k != "skipped"} == {"train": 3, "dev": 2, "test": 1}
    skipped = summary["snli"]["skipped"]
    assert len(skipped) == 2
    assert skipped[0].endswith("snli_1.0_dev.jsonl:2: gold_label '-' (no annotator majority)")
    assert skipped[1].endswith("snli_1.0_test.jsonl:2: gold_label '-' (no annotator majority)")
    assert "snli: train 3, dev 2, test 1; pairs without a gold label left out: 2" in capsys.readouterr().out


def test_written_files_read_back_with_the_snli_task_definition(snli_dir: Path, tmp_path: Path) -> None:
    prepare.prepare(snli_dir, tmp_path)
    task_def = load_task_defs(prepare.TASK_DEF)["snli"]
    examples = read_examples(tmp_path / "snli_dev.jsonl", task_def).examples
    assert [example.label for example in examples] == [1, 0]  # neutral, contradiction


def test_a_line_that_is_not_json_names_file_and_line(snli_dir: Path, tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "malformed" / "snli_1.0_dev.jsonl", snli_dir / "snli_1.0_dev.jsonl")
    with pytest.raises(
        UserError, match=r"snli_1.0_dev.jsonl:2: invalid JSON \(Unterminated string starting at, column 57\)$"
    ):
        prepare.prepare(snli_dir, tmp_path / "out")
    assert not (tmp_path / "out" / "snli_dev.jsonl").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"gold_label": "entails"},
            r"snli_1.0_test.jsonl:1: key 'gold_label': 'entails' is not one of entailment",
        ),
        ({"sentence2": None}, r"snli_1.0_test.jsonl:1: key 'sentence2': expected a string, got None"),
        ({"pairID": ...}, r"snli_1.0_test.jsonl:1: key 'pairID' missing"),
    ],
)
def test_a_bad_record_names_file_line_and_key(
    snli_dir: Path, tmp_path: Path, change: dict, message: str
) -> None:
    path = snli_dir / "snli_1.0_test.jsonl"
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    for key, value in change.items():
        if value is ...:
            del record[key]
        else:
            record[key] = value
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message):
        prepare.prepare(snli_dir, tmp_path / "out")


def test_a_missing_file(snli_dir: Path, tmp_path: Path) -> None:
    (snli_dir / "snli_1.0_test.jsonl").unlink()
    with pytest.raises(UserError, match=r"snli_1.0_test.jsonl: not found"):
        prepare.prepare(snli_dir, tmp_path)
