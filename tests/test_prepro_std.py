from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import prepro_std
from data_utils.cache import load_split, read_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_root(tmp_path: Path, write_jsonl: Callable[..., Path]) -> Path:
    root = tmp_path / "data"
    rows = [
        {"uid": "p1", "label": "entailment", "premise": "a b", "hypothesis": "c"},
        {
            "uid": "p2",
            "label": "neutral",
            "premise": " ".join(["the cat sat on the mat"] * 10),
            "hypothesis": "c",
        },
    ]
    write_jsonl(root / "pair_train.jsonl", rows)
    write_jsonl(root / "pair_dev.jsonl", rows[:1])
    write_jsonl(root / "pair_test.jsonl", [{"uid": "t1", "premise": "a", "hypothesis": "b"}])
    write_jsonl(root / "single_train.jsonl", [{"uid": "s1", "label": "positive", "premise": "good"}])
    write_jsonl(root / "single_dev.jsonl", [{"uid": "s1", "label": "negative", "premise": "bad"}])
    write_jsonl(root / "score_train.jsonl", [{"uid": "r1", "label": 0.5, "premise": "a", "hypothesis": "b"}])
    write_jsonl(
        root / "rank_train.jsonl", [{"uid": "k1", "label": 0, "premise": "who", "hypothesis": ["he", "it"]}]
    )
    return root


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = prepro_std.main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_end_to_end(
    data_root: Path, all_task_defs: Path, tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--task_def",
        str(all_task_defs),
        "--root_dir",
        str(data_root),
        "--model",
        str(tiny_tokenizer_dir),
    ]
    code, out, err = run_main([*argv, "--max_seq_len", "16", "--tasks", "pair", "--no_progress"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    cache_dir = data_root / "tiny_tokenizer0"
    assert lines[-1] == f"cache: {cache_dir}"
    assert [line.split()[0] for line in lines[:-1]] == ["pair_train", "pair_dev", "pair_test"]
    assert lines[0].split() == ["pair_train", "rows", "2", "truncated", "1", "skipped", "0"]
    assert lines[2].endswith("(unlabelled)")
    assert read_manifest(cache_dir)["max_seq_len"] == 16
    assert load_split(cache_dir / "pair_dev").input_ids.tolist() == [2, 5, 6, 3, 7, 3]

    # single has no test file: an error naming it, unless missing splits are allowed.
    code, out, err = run_main([*argv, "--tasks", "single", "--cache_name", "c", "--no_progress"], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: missing split file(s): ") and "single_test" in err
    code, out, err = run_main(
        [*argv, "--tasks", "single", "--cache_name", "c", "--allow_missing_splits", "--no_progress"], capsys
    )
    assert code == 0 and ["single_test", "missing", "(skipped)"] in [
        line.split() for line in out.splitlines()
    ]
    assert f"cache: {data_root / 'c'}" in out


def test_skipped_rows_are_printed(
    data_root: Path, all_task_defs: Path, tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (data_root / "pair_train.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("{broken\n")
    argv = [
        "--task_def",
        str(all_task_defs),
        "--root_dir",
        str(data_root),
        "--model",
        str(tiny_tokenizer_dir),
    ]
    code, out, err = run_main([*argv, "--tasks", "pair", "--skip_bad_rows", "--no_progress"], capsys)
    assert code == 0
    assert out.splitlines()[0].split()[-1] == "1"  # skipped 1
    problem = "invalid JSON: Expecting property name enclosed in double quotes (column 2)"
    assert err.strip() == f"skipped: {data_root / 'pair_train.jsonl'}:3: {problem}"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--tasks", "pair,nope"],
            "error: --tasks: task(s) 'nope' not defined in {task_def} (defined: single, pair",
        ),
        (["--max_seq_len", "2"], "error: max_seq_len 2 is too small for task 'single'"),
        (
            ["--model", "{root}/missing_model"],
            "error: {root}/missing_model: no such tokenizer/model directory",
        ),
        (["--root_dir", "{root}/nowhere"], "error: {root}/nowhere: no such data directory"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(
    data_root: Path,
    all_task_defs: Path,
    tiny_tokenizer_dir: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    argv = [
        "--task_def",
        str(all_task_defs),
        "--root_dir",
        str(data_root),
        "--model",
        str(tiny_tokenizer_dir),
    ]
    argv += [arg.format(root=data_root) for arg in extra]
    code, out, err = run_main([*argv, "--allow_missing_splits", "--no_progress"], capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(expected.format(task_def=all_task_defs, root=data_root))


def test_bad_task_def_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("pair:\n  task_type: classification\n", encoding="utf-8")
    code, _, err = run_main(["--task_def", str(bad), "--root_dir", str(tmp_path), "--model", "x"], capsys)
    assert code == 2 and err == f"error: {bad}: task 'pair': key 'data_format': missing required key\n"


def test_subprocess_user_mistake_has_no_traceback(data_root: Path, all_task_defs: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    argv = ["--task_def", str(all_task_defs), "--root_dir", str(data_root), "--model", "m", "--tasks", "nope"]
    result = subprocess.run(
        [sys.executable, str(REPO / "prepro_std.py"), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: --tasks: task(s) 'nope' not defined in {all_task_defs} (defined: single, pair, score, rank)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "pair:\n  task_type: classification\n  data_format: premise_only\n  n_class: 2\n"
            "pair:\n  task_type: regression\n  data_format: premise_only\n",
            "error: {path}:5: key 'pair': given twice (first on line 1)",
        ),
        (
            "pair:\n  task_type: classification\n  data_format: premise_only\n  n_class: 2\n  n_class: 3\n",
            "error: {path}:5: key 'n_class': given twice (first on line 4)",
        ),
        ("a: " + "[" * 100_000 + "\n", "error: {path}: invalid YAML: nested too deeply"),
        (
            b"pair:\n  task_type: classification\n  data_format: premise_only\n  labels: [caf\xe9, th\xe9]\n",
            "error: {path}:4: not UTF-8 text (byte 0xe9 at column 15); save the file as UTF-8",
        ),
    ],
)
def test_a_task_def_the_yaml_loader_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes, expected: str
) -> None:
    bad = tmp_path / "bad.yml"
    if isinstance(text, bytes):
        bad.write_bytes(text)
    else:
        bad.write_text(text, encoding="utf-8")
    code, out, err = run_main(["--task_def", str(bad), "--root_dir", str(tmp_path), "--model", "x"], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines() == [expected.format(path=bad)]


def test_a_task_named_on_is_encoded_under_that_name(
    tmp_path: Path,
    write_jsonl: Callable[..., Path],
    tiny_tokenizer_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "data"
    for split in ("train", "dev", "test"):
        write_jsonl(root / f"on_{split}.jsonl", [{"uid": "1", "label": "yes", "premise": "good"}])
    task_def = tmp_path / "tasks.yml"
    task_def.write_text(
        "on:\n  task_type: classification\n  data_format: premise_only\n  labels: [no, yes]\n",
        encoding="utf-8",
    )
    argv = ["--task_def", str(task_def), "--root_dir", str(root), "--model", str(tiny_tokenizer_dir)]
    code, _, err = run_main([*argv, "--cache_name", "c", "--no_progress"], capsys)
    assert code == 0, err
    assert sorted(read_manifest(root / "c")["splits"]) == ["on_dev", "on_test", "on_train"]
    assert load_split(root / "c" / "on_train").labels.tolist() == [1]
