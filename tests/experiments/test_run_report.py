"""experiments/run_report.py: dev and test scores of training runs as one Markdown table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_utils.errors import UserError
from experiments import run_report


def write_run(folder: Path, final_eval: dict, test_eval: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"final_eval": final_eval, "test_eval": test_eval}))
    return folder


def test_one_row_per_run_and_split(tmp_path: Path) -> None:
    first = write_run(tmp_path / "p1", {"scitail_dev": {"acc": 81.234}}, {"scitail_test": {"acc": 80.0}})
    second = write_run(tmp_path / "mnli", {"mnli_matched_dev": {"acc": 84.0}}, {})
    table = run_report.main([str(first), str(second), "--output", str(tmp_path / "report.md")])
    assert table.splitlines() == [
        "| run | set | split | metrics |",
        "|---|---|---|---|",
        "| p1 | dev | scitail_dev | acc 81.23 |",
        "| p1 | test | scitail_test | acc 80.00 |",
        "| mnli | dev | mnli_matched_dev | acc 84.00 |",
    ]
    assert (tmp_path / "report.md").read_text() == table + "\n"


def test_a_run_without_results(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nowhere/results.json: cannot read the run's results"):
        run_report.main.__wrapped__([str(tmp_path / "nowhere")])
