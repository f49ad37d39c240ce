"""experiments/subsample.py: seeded train subsamples (fractions and row caps) beside whole dev/test copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_utils.errors import UserError
from experiments import subsample

TASK_DEF = "experiments/anli/anli_task_def.yml"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [{"uid": f"anli_r1-train-{i}", "label": "e", "premise": "p", "hypothesis": "h"} for i in range(40)]
    (folder / "anli_r1_train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "anli_r1_dev.jsonl").write_text(
        '{"uid": "d", "label": "n", "premise": "p", "hypothesis": "h"}\n'
    )
    (folder / "anli_r2_train.jsonl").write_text("")  # another task's file with the same prefix
    return folder


def uids(path: Path) -> list[str]:
    return [json.loads(line)["uid"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("total", "fraction", "max_rows", "size"), [
    (23097, 0.001, None, 23), (3, 0.1, None, 1), (40, 0.5, 10, 10), (40, None, 100, 40), (40, 1.0, None, 40),
])  # fmt: skip
def test_sample_size(total: int, fraction: float | None, max_rows: int | None, size: int) -> None:
    assert subsample.sample_size(total, fraction, max_rows) == size


def test_a_fraction_of_train_in_file_order_and_the_rest_copied(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--task_def", TASK_DEF, "--data_dir", str(data), "--output_dir", str(out), "--tasks", "anli_r1"]
    kept = subsample.main([*argv, "--fraction", "0.25", "--seed", "5"])
    assert kept == {"anli_r1": (10, 40)}
    chosen = uids(out / "anli_r1_train.jsonl")
    assert len(set(chosen)) == 10 and chosen == sorted(chosen, key=lambda uid: int(uid.rsplit("-", 1)[1]))
    assert (out / "anli_r1_dev.jsonl").read_text() == (data / "anli_r1_dev.jsonl").read_text()
    assert sorted(path.name for path in out.iterdir()) == ["anli_r1_dev.jsonl", "anli_r1_train.jsonl"]
    # The same seed draws the same rows; another seed others.
    subsample.main([*argv, "--fraction", "0.25", "--seed", "5", "--output_dir", str(tmp_path / "again")])
    assert uids(tmp_path / "again" / "anli_r1_train.jsonl") == chosen
    subsample.main([*argv, "--fraction", "0.25", "--seed", "6", "--output_dir", str(tmp_path / "other")])
    assert uids(tmp_path / "other" / "anli_r1_train.jsonl") != chosen


def test_bad_arguments(data: Path, tmp_path: Path) -> None:
    main = subsample.main.__wrapped__  # the CLI without exit_on_user_error: the UserError itself
    base = ["--task_def", TASK_DEF, "--data_dir", str(data), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(UserError, match=r"anli_r3_train.jsonl: not found \(task anli_r3"):
        main([*base, "--tasks", "anli_r3"])
    with pytest.raises(UserError, match=r"--tasks snli: not in"):
        main([*base, "--tasks", "snli"])
    with pytest.raises(UserError, match=r"must differ from --data_dir"):
        main([*base[:4], "--output_dir", str(data), "--tasks", "anli_r1"])
    with pytest.raises(SystemExit):
        subsample.main([*base, "--tasks", "anli_r1", "--fraction", "1.5"])
