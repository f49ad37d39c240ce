from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import predict
from data_utils.cache import load_split, split_dir, write_split
from data_utils.dataset import Collator, TaskDataset
from data_utils.enums import TaskType
from data_utils.metrics import compute_metrics
from data_utils.prepro import encode_examples, preprocess
from data_utils.readers import read_examples
from data_utils.task_def import TaskDef
from mt_dnn.inference import evaluate, prediction_records
from mt_dnn.model import MTDNNModel, read_checkpoint_config
from tests.mt_dnn.conftest import build_tiny_mtdnn, save_tiny_checkpoint, tiny_task_defs

REPO = Path(__file__).resolve().parents[1]
TASKS = ("single", "pair", "score", "rank")
WORDS = "the cat sat on a mat and dog was very good but movie film is not bad".split()  # noqa: SIM905


def canonical_rows(task_def: TaskDef, n: int = 9, *, labelled: bool = True) -> list[dict[str, Any]]:
    """JSONL rows with uids out of any sorted order and very different lengths."""
    rows = []
    for i in range(n):
        premise = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + (i * 5) % 11))
        row: dict[str, Any] = {"uid": f"r{(i * 4) % n}-{i}", "premise": premise}
        if task_def.task_type is TaskType.RANKING:
            n_cands = 2 + i % 3
            row["hypothesis"] = [" ".join(WORDS[c : c + 1 + (i + c) % 4]) for c in range(n_cands)]
            label: Any = (i + 1) % n_cands
        elif task_def.task_type is TaskType.REGRESSION:
            row["hypothesis"] = " ".join(WORDS[i % 3 : i % 3 + 2])
            label = 0.5 * (i % 4) + 0.25 * (i % 3)
        else:
            if task_def.data_format != "premise_only":
                row["hypothesis"] = " ".join(WORDS[i % 5 : i % 5 + 3])
            assert task_def.labels is not None
            label = task_def.labels[i % task_def.n_class]
        if labelled:
            row["label"] = label
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("predict") / "best", tiny_tokenizer)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """``<task>_dev.jsonl`` (labelled) and ``<task>_test.jsonl`` (unlabelled) for every task, and their
    token-id cache under ``cache/`` made by ``preprocess`` with the checkpoint's tokenizer."""
    root = tmp_path_factory.mktemp("data")
    task_defs = tiny_task_defs()
    for name, task_def in task_defs.items():
        for split, labelled in (("dev", True), ("test", False)):
            rows = canonical_rows(task_def, labelled=labelled)
            text = "".join(json.dumps(row) + "\n" for row in rows)
            (root / f"{name}_{split}.jsonl").write_text(text, encoding="utf-8")
    preprocess(
        task_defs,
        root,
        checkpoint / "encoder",
        max_seq_len=64,
        cache_name="cache",
        allow_missing_splits=True,
        progress=False,
    )
    return root


def run_main(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = predict.main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capfd.readouterr()
    return code, out, err


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def expected_records(checkpoint: Path, task: str, jsonl: Path, tokenizer: Any) -> tuple[list[dict], dict]:
    """What the library gives for the same rows: records and metrics."""
    model = MTDNNModel.load(checkpoint)
    task_def = model.task_defs[task]
    examples = read_examples(jsonl, task_def).examples
    dataset = TaskDataset(task_def, encode_examples(examples, task_def, tokenizer, max_seq_len=64))
    result = evaluate(model, dataset, Collator({task: task_def}, pad_token_id=0), batch_size=1)
    return prediction_records(task_def, result.predictions), result.metrics


def assert_same_records(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [r["uid"] for r in got] == [r["uid"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w)
        assert g["prediction"] == pytest.approx(w["prediction"], abs=1e-5)
        assert g.get("label") == pytest.approx(w.get("label"))
        if "probabilities" in w:
            assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-5)


@pytest.mark.parametrize("source", ["jsonl", "cache"])
@pytest.mark.parametrize("task", TASKS)
def test_end_to_end_every_task(
    task: str,
    source: str,
    checkpoint: Path,
    data: Path,
    tmp_path: Path,
    tiny_tokenizer: Any,
    capfd: pytest.CaptureFixture[str],
) -> None:
    input_path = data / f"{task}_dev.jsonl" if source == "jsonl" else split_dir(data / "cache", task, "dev")
    output = tmp_path / "out" / f"{task}.jsonl"
    argv = ["--checkpoint", str(checkpoint), "--task", task, "--input", str(input_path)]
    code, out, err = run_main([*argv, "--output", str(output), "--batch_size", "4", "--device", "cpu"], capfd)
    assert code == 0, err

    records = read_jsonl(output)
    task_def = tiny_task_defs()[task]
    rows = canonical_rows(task_def)
    assert [record["uid"] for record in records] == [row["uid"] for row in rows]
    assert [record["label"] for record in records] == pytest.approx([row["label"] for row in rows])
    want_records, want_metrics = expected_records(
        checkpoint, task, data / f"{task}_dev.jsonl", tiny_tokenizer
    )
    assert_same_records(records, want_records)
    for record in records:
        if task_def.task_type is TaskType.CLASSIFICATION:
            assert record["prediction"] in task_def.labels  # type: ignore[operator]
        if "probabilities" in record:
            assert sum(record["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    if task_def.task_type is TaskType.RANKING:
        assert [len(r["probabilities"]) for r in records] == [len(row["hypothesis"]) for row in rows]

    metrics_path = tmp_path / "out" / f"{task}.metrics.json"
    document = json.loads(metrics_path.read_text(encoding="utf-8"))
    assert document["task"] == task and document["rows"] == len(rows)
    assert list(document["metrics"]) == [metric.value for metric in task_def.metrics]
    assert document["metrics"] == pytest.approx(want_metrics, abs=1e-4)
    assert out.splitlines() == [
        f"predictions: {output} ({len(rows)} rows)",
        f"{task}: "
        + "  ".join(f"{name} {value:.2f}" for name, value in document["metrics"].items())
        + f"  ({len(rows)} rows; {metrics_path})",
    ]
    assert err == ""


def test_metrics_file_matches_compute_metrics_on_the_written_probabilities(
    checkpoint: Path, data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "pair.predictions.jsonl"
    argv = ["--checkpoint", str(checkpoint), "--task", "pair", "--input", str(data / "pair_dev.jsonl")]
    assert run_main([*argv, "--output", str(output)], capfd)[0] == 0
    records = read_jsonl(output)
    labels = tiny_task_defs()["pair"].label_index()
    assert labels is not None
    scores = np.array([r["probabilities"] for r in records])
    gold = np.array([labels[r["label"]] for r in records])
    metrics = json.loads((tmp_path / "pair.predictions.metrics.json").read_text())["metrics"]
    assert metrics == pytest.approx(compute_metrics(TaskType.CLASSIFICATION, ["acc"], scores, gold))


@pytest.mark.parametrize("source", ["jsonl", "cache"])
def test_unlabelled_input_writes_no_metrics(
    source: str, checkpoint: Path, data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    input_path = data / "rank_test.jsonl" if source == "jsonl" else split_dir(data / "cache", "rank", "test")
    output = tmp_path / "rank_test.jsonl"
    argv = ["--checkpoint", str(checkpoint), "--task", "rank", "--input", str(input_path)]
    code, out, err = run_main([*argv, "--output", str(output)], capfd)
    assert code == 0, err
    assert out.splitlines() == [f"predictions: {output} (9 rows)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank_test.jsonl"]
    records = read_jsonl(output)
    assert [r["uid"] for r in records] == [row["uid"] for row in canonical_rows(tiny_task_defs()["rank"])]
    assert all(set(r) == {"uid", "prediction", "probabilities"} for r in records)


def test_tsv_input_and_glue_submission(
    checkpoint: Path, tmp_path: Path, tiny_tokenizer: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    rows = canonical_rows(tiny_task_defs()["pair"], 5)
    tsv = tmp_path / "pair_dev.tsv"
    tsv.write_text("".join(f"{r['uid']}\t{r['label']}\t{r['premise']}\t{r['hypothesis']}\n" for r in rows))
    submission = tmp_path / "glue" / "PAIR.tsv"
    argv = ["--checkpoint", str(checkpoint), "--task", "pair", "--input", str(tsv)]
    code, out, err = run_main([*argv, "--submission", str(submission)], capfd)
    assert code == 0, err
    output = tmp_path / "pair_dev.pair.predictions.jsonl"  # the default: beside the input
    assert f"predictions: {output} (5 rows)" in out.splitlines()
    assert f"submission: {submission}" in out.splitlines()
    records = read_jsonl(output)
    assert [r["uid"] for r in records] == [r["uid"] for r in rows]
    lines = submission.read_text().splitlines()
    assert lines == ["index\tprediction"] + [f"{i}\t{r['prediction']}" for i, r in enumerate(records)]
    assert (tmp_path / "pair_dev.pair.predictions.metrics.json").is_file()


def test_default_output_for_a_cache_split_sits_beside_it(
    checkpoint: Path, data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    write_split(cache / "score_test", load_split(split_dir(data / "cache", "score", "test"), mmap=False))
    argv = ["--checkpoint", str(checkpoint), "--task", "score", "--input", str(cache / "score_test")]
    code, out, err = run_main(argv, capfd)
    assert code == 0, err
    output = cache / "score_test.score.predictions.jsonl"
    assert out.splitlines() == [f"predictions: {output} (9 rows)"]
    assert all(isinstance(r["prediction"], float) for r in read_jsonl(output))


def test_skip_bad_rows(
    checkpoint: Path,
    tmp_path: Path,
    write_jsonl: Callable[..., Path],
    capfd: pytest.CaptureFixture[str],
) -> None:
    rows = canonical_rows(tiny_task_defs()["single"], 4)
    rows[1]["label"] = "sideways"
    path = write_jsonl(tmp_path / "single.jsonl", rows)
    argv = ["--checkpoint", str(checkpoint), "--task", "single", "--input", str(path)]
    code, out, err = run_main(argv, capfd)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {path}:2: field 'label': 'sideways' is not a label of the task")
    code, out, err = run_main([*argv, "--skip_bad_rows"], capfd)
    assert code == 0
    assert err.startswith(f"skipped: {path}:2: field 'label'") and len(err.splitlines()) == 1
    records = read_jsonl(tmp_path / "single.single.predictions.jsonl")
    assert [r["uid"] for r in records] == [rows[i]["uid"] for i in (0, 2, 3)]


# --- user mistakes: exit 2, one line on stderr, nothing on stdout -----------------------------------------------


def expect_error(argv: list[str], capfd: pytest.CaptureFixture[str]) -> str:
    code, out, err = run_main(argv, capfd)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err.strip()


def no_task_message(checkpoint: Path) -> str:
    tasks = ", ".join(read_checkpoint_config(checkpoint)["task_defs"])
    assert sorted(tasks.split(", ")) == sorted(TASKS)
    return f"error: {checkpoint}: no task 'mnli' in this checkpoint (its tasks: {tasks})"


def test_task_not_in_the_checkpoint(checkpoint: Path, data: Path, capfd: pytest.CaptureFixture[str]) -> None:
    argv = ["--checkpoint", str(checkpoint), "--task", "mnli", "--input", str(data / "pair_dev.jsonl")]
    assert expect_error(argv, capfd) == no_task_message(checkpoint)


@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_not_a_checkpoint(kind: str, data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "run"
    if kind == "empty":
        folder.mkdir()
    argv = ["--checkpoint", str(folder), "--task", "pair", "--input", str(data / "pair_dev.jsonl")]
    assert expect_error(argv, capfd) == f"error: {folder}: not an smart-mtdnn checkpoint (no mtdnn.json)"


def test_pair_rows_for_a_premise_only_task(
    checkpoint: Path, data: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = data / "pair_dev.jsonl"
    argv = ["--checkpoint", str(checkpoint), "--task", "single", "--input", str(path)]
    err = expect_error(argv, capfd)
    assert err == f"error: {path}:1: field 'hypothesis': given, but the task is premise_only"


def test_ranking_rows_for_a_pair_format_task_in_tsv(
    checkpoint: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rank.tsv"
    path.write_text("q1\t0\twho sat\the\tshe\tit\n")
    argv = ["--checkpoint", str(checkpoint), "--task", "score", "--input", str(path)]
    assert expect_error(argv, capfd).startswith(f"error: {path}:1: field 'columns': expected 4 tab-separated")


def test_cache_split_of_another_task(checkpoint: Path, data: Path, capfd: pytest.CaptureFixture[str]) -> None:
    folder = split_dir(data / "cache", "pair", "dev")
    argv = ["--checkpoint", str(checkpoint), "--task", "single", "--input", str(folder)]
    assert (
        expect_error(argv, capfd) == f"error: {folder}: holds a token-id cache of task 'pair', not 'single'"
    )


def test_cache_of_another_tokenizer(
    checkpoint: Path, data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    split = load_split(split_dir(data / "cache", "pair", "dev"), mmap=False)
    meta = {**split.meta, "tokenizer": {**split.meta["tokenizer"], "sha256": "0123456789abcdef"}}
    folder = tmp_path / "pair_dev"
    write_split(folder, dataclasses.replace(split, meta=meta))
    argv = ["--checkpoint", str(checkpoint), "--task", "pair", "--input", str(folder)]
    assert expect_error(argv, capfd).startswith(f"error: {folder}: task 'pair': key 'tokenizer': the cache")


def test_folder_that_is_not_a_cache(
    checkpoint: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = ["--checkpoint", str(checkpoint), "--task", "pair", "--input", str(tmp_path)]
    assert expect_error(argv, capfd) == f"error: {tmp_path}: no token-id cache here (run prepro_std.py first)"


def test_missing_input(checkpoint: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.jsonl"
    argv = ["--checkpoint", str(checkpoint), "--task", "pair", "--input", str(path)]
    assert expect_error(argv, capfd) == f"error: {path}: no such file or directory"


def test_bad_flags(checkpoint: Path, data: Path, capfd: pytest.CaptureFixture[str]) -> None:
    argv = ["--checkpoint", str(checkpoint), "--task", "pair", "--input", str(data / "pair_dev.jsonl")]
    assert expect_error([*argv, "--batch_size", "0"], capfd) == "error: --batch_size must be >= 1, got 0"
    assert expect_error([*argv, "--max_seq_len", "256"], capfd) == (
        "error: --max_seq_len 256 exceeds the encoder's max_position_embeddings 128"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_but_absent(checkpoint: Path, data: Path, capfd: pytest.CaptureFixture[str]) -> None:
    argv = ["--checkpoint", str(checkpoint), "--task", "pair", "--input", str(data / "pair_dev.jsonl")]
    assert expect_error([*argv, "--device", "cuda"], capfd) == (
        "error: --device cuda: no CUDA device is available (use --device cpu)"
    )


def test_diverged_checkpoint(
    data: Path, tmp_path: Path, tiny_tokenizer: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    model = build_tiny_mtdnn()
    with torch.no_grad():
        model.heads["score"].out_proj.bias.fill_(float("nan"))
    model.save(tmp_path / "nan", tiny_tokenizer)
    capfd.readouterr()  # the save's own progress bar
    argv = [
        "--checkpoint",
        str(tmp_path / "nan"),
        "--task",
        "score",
        "--input",
        str(data / "score_dev.jsonl"),
    ]
    assert expect_error(argv, capfd) == (
        f"error: {tmp_path / 'nan'}: task 'score': the model gives NaN scores (a diverged checkpoint?)"
    )
    assert not (data / "score_dev.score.predictions.jsonl").exists()


def test_unwritable_output(
    checkpoint: Path, data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    output = tmp_path / "taken" / "preds.jsonl"
    argv = ["--checkpoint", str(checkpoint), "--task", "pair", "--input", str(data / "pair_dev.jsonl")]
    assert expect_error([*argv, "--output", str(output)], capfd).startswith(
        f"error: {output}: cannot write: "
    )


def test_subprocess_user_mistake_has_no_traceback(checkpoint: Path, data: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    argv = ["--checkpoint", str(checkpoint), "--task", "mnli", "--input", str(data / "pair_dev.jsonl")]
    result = subprocess.run(
        [sys.executable, str(REPO / "predict.py"), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [no_task_message(checkpoint)]


@pytest.mark.parametrize("clash", ["output_is_input", "submission_is_output", "output_in_cache", "metrics"])
def test_outputs_never_overwrite_the_input_or_each_other(
    clash: str, checkpoint: Path, data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "pair_dev.jsonl"
    shutil.copy(data / "pair_dev.jsonl", source)
    before = source.read_bytes()
    argv = ["--checkpoint", str(checkpoint), "--task", "pair", "--input", str(source)]
    if clash == "output_is_input":
        argv += ["--output", str(source)]
        expected = f"error: --output {source}: would overwrite the input {source}; write elsewhere"
    elif clash == "submission_is_output":
        output = tmp_path / "preds.jsonl"
        argv += ["--output", str(output), "--submission", str(output)]
        expected = f"error: --submission {output}: is also --output; give each output its own path"
    elif clash == "metrics":
        output = tmp_path / "preds.jsonl"
        metrics = tmp_path / "preds.metrics.json"
        argv += ["--output", str(output), "--submission", str(metrics)]
        expected = f"error: --submission {metrics}: is also the metrics file; give each output its own path"
    else:
        folder = split_dir(data / "cache", "pair", "dev")
        argv = ["--checkpoint", str(checkpoint), "--task", "pair", "--input", str(folder)]
        argv += ["--output", str(folder / "labels.npy")]
        expected = (
            f"error: --output {folder / 'labels.npy'}: would overwrite the input {folder}; write elsewhere"
        )
    assert expect_error(argv, capfd) == expected
    assert source.read_bytes() == before
