"""Tests for the quickstart report: baselines from hand-written canonical JSONL, and the markdown table."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from data_utils.errors import UserError
from data_utils.task_def import load_task_defs
from experiments.demo import report

TASKS = {
    "intent": {
        "task_type": "classification",
        "data_format": "premise_only",
        "labels": ["a", "b", "c"],
        "metrics": ["acc", "f1_macro"],
    },
    "nli": {
        "task_type": "classification",
        "data_format": "premise_and_one_hypothesis",
        "labels": ["no", "yes"],
        "metrics": ["acc", "f1"],
    },
    "score": {"task_type": "regression", "data_format": "premise_only", "metrics": ["pearson", "spearman"]},
    "choice": {
        "task_type": "ranking",
        "data_format": "premise_and_multi_hypothesis",
        "metrics": ["acc", "mrr"],
    },
}

WriteJsonl = Callable[[Path, Iterable[Mapping[str, Any]]], Path]


def _rows(
    task: str, split: str, labels: list[Any], hypotheses: list[Any] | None = None
) -> list[dict[str, Any]]:
    rows = []
    for i, label in enumerate(labels):
        row: dict[str, Any] = {"uid": f"{task}-{split}-{i}", "label": label, "premise": f"text {i}"}
        if hypotheses is not None:
            row["hypothesis"] = hypotheses[i]
        rows.append(row)
    return rows


@pytest.fixture
def suite(tmp_path: Path, write_task_def: Callable[..., Path], write_jsonl: WriteJsonl) -> dict[str, Path]:
    """Canonical data for the four tasks, and predict.py-style outputs for each (written by hand)."""
    data, preds = tmp_path / "data", tmp_path / "preds"
    data.mkdir()
    preds.mkdir()
    splits: dict[str, dict[str, list[dict[str, Any]]]] = {
        # train majority: b (2 of 4); test: b a b c b
        "intent": {
            "train": _rows("intent", "train", ["a", "b", "b", "c"]),
            "test": _rows("intent", "test", ["b", "a", "b", "c", "b"]),
        },
        # train majority: no (index 0); test: no yes yes no
        "nli": {
            "train": _rows("nli", "train", ["no", "no", "yes"], ["h"] * 3),
            "test": _rows("nli", "test", ["no", "yes", "yes", "no"], ["h"] * 4),
        },
        # train mean 2.0; test 0.0 and 4.0
        "score": {
            "train": _rows("score", "train", [1.0, 2.0, 3.0]),
            "test": _rows("score", "test", [0.0, 4.0]),
        },
        # test rows with 3 and 2 candidates
        "choice": {
            "train": _rows("choice", "train", [0], [["x", "y"]]),
            "test": _rows("choice", "test", [2, 0], [["x", "y", "z"], ["x", "y"]]),
        },
    }
    for task, by_split in splits.items():
        for split, rows in by_split.items():
            write_jsonl(data / f"{task}_{split}.jsonl", rows)
    model_metrics = {
        "intent": {"acc": 80.0, "f1_macro": 66.66666},
        "nli": {"acc": 75.0, "f1": 80.0},
        "score": {"pearson": 100.0, "spearman": None},
        "choice": {"acc": 50.0, "mrr": 75.0},
    }
    for task, metrics in model_metrics.items():
        rows = len(splits[task]["test"])
        document = {"task": task, "checkpoint": "ckpt", "input": "x", "rows": rows, "metrics": metrics}
        (preds / f"{task}_test.predictions.metrics.json").write_text(json.dumps(document), encoding="utf-8")
    # model predicts 1.0 and 3.0 for gold 0.0 and 4.0: MSE 1.0
    write_jsonl(
        preds / "score_test.predictions.jsonl",
        [
            {"uid": "score-test-0", "prediction": 1.0, "label": 0.0},
            {"uid": "score-test-1", "prediction": 3.0, "label": 4.0},
        ],
    )
    return {"task_def": write_task_def(TASKS), "data": data, "preds": preds}


def _reports(suite: dict[str, Path], tasks: list[str] | None = None) -> dict[str, report.TaskReport]:
    task_defs = load_task_defs(suite["task_def"])
    built = report.build_reports(task_defs, suite["data"], suite["preds"], "test", tasks)
    return {item.task: item for item in built}


def test_classification_baseline_is_the_train_majority_scored_on_test(suite: dict[str, Path]) -> None:
    intent = _reports(suite)["intent"]
    # always b on b a b c b: acc 3/5; f1(b) = 2 * 0.6 * 1 / 1.6 = 0.75, f1(a) = f1(c) = 0 -> macro 0.25
    assert intent.baseline.metrics["acc"] == pytest.approx(60.0)
    assert intent.baseline.metrics["f1_macro"] == pytest.approx(25.0)
    assert "'b'" in intent.baseline.description and "50.0% of train" in intent.baseline.description
    nli = _reports(suite)["nli"]
    # always "no" (class 0): acc 2/4, binary f1 of "yes" is 0
    assert nli.baseline.metrics == pytest.approx({"acc": 50.0, "f1": 0.0})


def test_majority_ties_go_to_the_class_declared_first(
    suite: dict[str, Path], write_jsonl: WriteJsonl
) -> None:
    write_jsonl(suite["data"] / "intent_train.jsonl", _rows("intent", "train", ["c", "b", "c", "b"]))
    intent = _reports(suite, ["intent"])["intent"]
    assert "'b'" in intent.baseline.description
    assert intent.baseline.metrics["acc"] == pytest.approx(60.0)


def test_regression_baseline_is_the_train_mean_with_mse(suite: dict[str, Path]) -> None:
    score = _reports(suite)["score"]
    # mean 2.0 on 0.0 and 4.0: squared errors 4 and 4; correlations of a constant are undefined
    assert score.baseline.metrics["mse"] == pytest.approx(4.0)
    assert all(
        score.baseline.metrics[name] != score.baseline.metrics[name] for name in ("pearson", "spearman")
    )
    assert score.model["mse"] == pytest.approx(1.0)
    assert score.model["pearson"] == 100.0
    assert score.model["spearman"] != score.model["spearman"]  # null in the file -> nan
    assert "+2.000" in score.baseline.description


def test_ranking_baseline_is_the_expected_score_of_a_random_choice(suite: dict[str, Path]) -> None:
    choice = _reports(suite)["choice"]
    # acc: (1/3 + 1/2) / 2 = 5/12; mrr: ((1 + 1/2 + 1/3) / 3 + (1 + 1/2) / 2) / 2 = (11/18 + 3/4) / 2
    assert choice.baseline.metrics["acc"] == pytest.approx(100 * 5 / 12)
    assert choice.baseline.metrics["mrr"] == pytest.approx(100 * (11 / 18 + 3 / 4) / 2)


def test_main_prints_the_table(suite: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data_dir", str(suite["data"]), "--predictions_dir", str(suite["preds"])]
    table = report.main([*argv, "--task_def", str(suite["task_def"])])
    assert capsys.readouterr().out == table + "\n"
    lines = table.splitlines()
    assert lines[:12] == [
        "| task | metric | model | baseline |",
        "|---|---|---|---|",
        "| intent | acc | 80.0 | 60.0 |",
        "| intent | f1_macro | 66.7 | 25.0 |",
        "| nli | acc | 75.0 | 50.0 |",
        "| nli | f1 | 80.0 | 0.0 |",
        "| score | pearson | 100.0 | - |",
        "| score | spearman | - | - |",
        "| score | mse (lower is better) | 1.000 | 4.000 |",
        "| choice | acc | 50.0 | 41.7 |",
        "| choice | mrr | 75.0 | 68.1 |",
        "",
    ]
    assert "- intent (5 rows): always the train majority class 'b' (50.0% of train)" in lines
    assert "- choice (2 rows): a uniformly random candidate (expected value)" in lines


def test_tasks_without_predictions_are_left_out_unless_named(
    suite: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (suite["preds"] / "nli_test.predictions.metrics.json").unlink()
    assert list(_reports(suite)) == ["intent", "score", "choice"]
    argv = ["--data_dir", str(suite["data"]), "--predictions_dir", str(suite["preds"])]
    with pytest.raises(SystemExit) as exit_info:
        report.main([*argv, "--task_def", str(suite["task_def"]), "--tasks", "intent,nli"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "nli_test.predictions.metrics.json" in error


def test_a_row_count_that_disagrees_with_the_split_is_an_error(suite: dict[str, Path]) -> None:
    path = suite["preds"] / "intent_test.predictions.metrics.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**document, "rows": 4}), encoding="utf-8")
    with pytest.raises(UserError, match=r"key 'rows': 4 predicted rows, but .*intent_test.jsonl has 5"):
        _reports(suite)


def test_a_metrics_file_of_another_task_is_an_error(suite: dict[str, Path]) -> None:
    path = suite["preds"] / "nli_test.predictions.metrics.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**document, "task": "intent"}), encoding="utf-8")
    with pytest.raises(
        UserError, match=r"nli_test.predictions.metrics.json: key 'task': holds task 'intent'"
    ):
        _reports(suite)


def test_an_empty_predictions_dir_is_an_error(suite: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no <task>_test.predictions.metrics.json"):
        report.build_reports(load_task_defs(suite["task_def"]), suite["data"], empty, "test", None)
