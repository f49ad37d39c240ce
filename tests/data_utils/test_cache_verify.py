"""``verify_cache`` / ``verify_split``: a token-id cache that no longer fits its task definitions, its
sources or the encoder is a one-line ``UserError``; one that fits (or predates the records) is used."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_utils import prepro as prepro_module
from data_utils.cache import MANIFEST, load_split, read_manifest, split_dir, verify_cache, verify_split
from data_utils.errors import UserError
from data_utils.prepro import preprocess, tokenizer_fingerprint
from data_utils.task_def import TaskDef, parse_task_def
from tests.conftest import TASK_ENTRIES, TINY_VOCAB

REPO = Path(__file__).resolve().parents[2]
VOCAB = len(TINY_VOCAB)
ROWS: dict[str, list[dict[str, Any]]] = {
    "single": [
        {"uid": "s1", "label": "positive", "premise": "good film"},
        {"uid": "s2", "label": "negative", "premise": "bad"},
    ],
    "pair": [
        {"uid": "p1", "label": "entailment", "premise": "a b", "hypothesis": "c"},
        {"uid": "p2", "label": "contradiction", "premise": "the cat sat on the mat", "hypothesis": "c"},
    ],
    "score": [{"uid": "r1", "label": 2.5, "premise": "a", "hypothesis": "b"}],
    "rank": [{"uid": "k1", "label": 1, "premise": "who", "hypothesis": ["he", "she"]}],
}


def task_defs(**changes: dict[str, Any]) -> dict[str, TaskDef]:
    """The four test tasks, ``changes[name]`` merged into that task's entry."""
    return {
        name: parse_task_def(name, {**entry, **changes.get(name, {})}) for name, entry in TASK_ENTRIES.items()
    }


@pytest.fixture
def cache(tmp_path: Path, write_jsonl: Callable[..., Path], tiny_tokenizer_dir: Path) -> Path:
    root = tmp_path / "data"
    for task, rows in ROWS.items():
        write_jsonl(root / f"{task}_train.jsonl", rows)
        write_jsonl(root / f"{task}_dev.jsonl", rows)
        write_jsonl(root / f"{task}_test.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in rows])
    preprocess(task_defs(), root, tiny_tokenizer_dir, max_seq_len=16, cache_name="tiny", progress=False)
    return root / "tiny"


def error_of(call: Callable[[], Any]) -> str:
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resave(folder: Path, name: str, array: np.ndarray) -> None:
    np.save(folder / f"{name}.npy", array, allow_pickle=False)


def edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


# --- a cache that fits -------------------------------------------------------------------------------------


def test_a_fresh_cache_passes_every_check(cache: Path, tiny_tokenizer: Any) -> None:
    sources = {p: sha(p) for p in cache.parent.glob("*.jsonl")}
    sha16 = tokenizer_fingerprint(tiny_tokenizer)["sha256"]
    assert (
        verify_cache(
            cache, task_defs(), vocab_size=VOCAB, max_positions=16, type_vocab_size=2, tokenizer_sha256=sha16
        )
        is None
    )
    verify_cache(cache, task_defs(), [("pair", "train"), ("rank", "dev")], vocab_size=VOCAB)
    split = verify_split(split_dir(cache, "rank", "dev"), task_defs()["rank"], vocab_size=VOCAB)
    assert split.labels.tolist() == [1]
    assert {p: sha(p) for p in cache.parent.glob("*.jsonl")} == sources  # inputs untouched


def test_meta_and_manifest_record_what_the_split_was_built_from(cache: Path) -> None:
    source = cache.parent / "pair_dev.jsonl"
    meta = load_split(split_dir(cache, "pair", "dev")).meta
    entry = read_manifest(cache)["splits"]["pair_dev"]
    for record in (meta, entry):
        assert record["source"] == str(source)
        assert record["source_sha256"] == sha(source) and record["source_bytes"] == source.stat().st_size
        assert record["task_def"] == {
            "task_type": "classification",
            "data_format": "premise_and_one_hypothesis",
            "labels": ["entailment", "neutral", "contradiction"],
            "n_class": 3,
        }
    assert read_manifest(cache)["splits"]["score_dev"]["task_def"]["labels"] is None


# --- the task definition changed after prepro ---------------------------------------------------------------


def test_reordered_labels(cache: Path) -> None:
    changed = task_defs(pair={"labels": ["contradiction", "neutral", "entailment"]})
    assert error_of(lambda: verify_cache(cache, changed)) == (
        f"{cache / 'pair_train'}: task 'pair': key 'labels': the cache was encoded with "
        "[entailment, neutral, contradiction], the task definition now says [contradiction, neutral, entailment]; "
        "re-run prepro_std.py"
    )


def test_a_changed_task_type_and_data_format(cache: Path) -> None:
    as_regression = task_defs(single={"task_type": "regression", "labels": None})
    assert error_of(lambda: verify_cache(cache, as_regression)) == (
        f"{cache / 'single_train'}: task 'single': key 'task_type': the cache was encoded with "
        "classification, the task definition now says regression; re-run prepro_std.py"
    )
    as_premise_only = task_defs(pair={"data_format": "premise_only"})
    assert error_of(lambda: verify_cache(cache, as_premise_only)) == (
        f"{cache / 'pair_train'}: task 'pair': key 'data_format': the cache was encoded with "
        "premise_and_one_hypothesis, the task definition now says premise_only; re-run prepro_std.py"
    )


def test_changes_that_do_not_touch_the_encoding_are_fine(cache: Path) -> None:
    verify_cache(cache, task_defs(pair={"dropout_p": 0.3, "metrics": ["f1"], "loss_weight": 2.0}))


# --- the source changed -------------------------------------------------------------------------------------


def test_an_edited_source_same_size_or_not(cache: Path) -> None:
    source = cache.parent / "pair_dev.jsonl"
    text = source.read_text(encoding="utf-8")
    source.write_text(text.replace('"c"', '"d"', 1), encoding="utf-8")  # same size: the hash tells
    expected = (
        f"{cache / 'pair_dev'}: task 'pair': key 'source_sha256': {source} changed after prepro_std.py "
        "encoded it; re-run prepro_std.py"
    )
    assert error_of(lambda: verify_cache(cache, task_defs())) == expected
    source.write_text(text + '{"uid": "p3", "label": "neutral", "premise": "a", "hypothesis": "b"}\n')
    assert error_of(lambda: verify_cache(cache, task_defs())) == expected
    assert error_of(lambda: verify_split(split_dir(cache, "pair", "dev"), task_defs()["pair"])) == expected


def test_a_cache_without_its_sources_still_works(cache: Path, tmp_path: Path) -> None:
    for source in cache.parent.glob("*.jsonl"):
        source.unlink()
    verify_cache(cache, task_defs(), vocab_size=VOCAB)
    copy = tmp_path / "copied"
    shutil.copytree(cache, copy)
    verify_cache(copy, task_defs(), vocab_size=VOCAB)


# --- the encoder does not fit -------------------------------------------------------------------------------


def test_sequences_longer_than_the_encoder_positions(cache: Path) -> None:
    # pair_train's longest sequence: [CLS] the cat sat on the mat [SEP] c [SEP] = 10 tokens
    assert error_of(lambda: verify_cache(cache, task_defs(), [("pair", "train")], max_positions=9)) == (
        f"{cache / 'pair_train'}: task 'pair': key 'max_seq_len': sequences of up to 10 tokens, the encoder "
        "has 9 positions; re-run prepro_std.py with --max_seq_len 9"
    )
    verify_cache(cache, task_defs(), [("pair", "train")], max_positions=10)


def test_ids_beyond_the_vocabulary(cache: Path) -> None:
    folder = split_dir(cache, "single", "train")
    largest = int(load_split(folder).input_ids.max())
    verify_cache(cache, task_defs(), [("single", "train")], vocab_size=largest + 1)
    assert error_of(lambda: verify_cache(cache, task_defs(), [("single", "train")], vocab_size=largest)) == (
        f"{folder}: task 'single': key 'input_ids': token id {largest} is out of range (the encoder's "
        f"vocab_size is {largest}); the cache is of another tokenizer or damaged: re-run prepro_std.py"
    )
    ids = np.array(load_split(folder, mmap=False).input_ids)
    ids[1] = -3
    resave(folder, "input_ids", ids)
    assert "token id -3 is out of range;" in error_of(lambda: verify_cache(cache, task_defs()))


def test_segment_ids_beyond_the_type_vocabulary(cache: Path) -> None:
    message = error_of(lambda: verify_cache(cache, task_defs(), [("pair", "dev")], type_vocab_size=1))
    assert message.startswith(
        f"{cache / 'pair_dev'}: task 'pair': key 'token_type_ids': segment id 1 is out of range"
    )


def test_another_tokenizer(cache: Path) -> None:
    message = error_of(lambda: verify_cache(cache, task_defs(), tokenizer_sha256="0123456789abcdef"))
    assert re.fullmatch(
        rf"{re.escape(str(cache))}: key 'tokenizer': the cache was encoded with another tokenizer \(.*\); "
        "re-run prepro_std.py with this model",
        message,
    )


# --- labels and arrays --------------------------------------------------------------------------------------


def test_a_label_index_beyond_n_class(cache: Path) -> None:
    folder = split_dir(cache, "pair", "dev")
    resave(folder, "labels", np.array([0, 3], dtype=np.int64))
    assert error_of(lambda: verify_cache(cache, task_defs())) == (
        f"{folder}: task 'pair': key 'labels': row 1 (uid 'p2') has label 3, outside the task's 3 classes; "
        "re-run prepro_std.py"
    )


def test_a_ranking_label_beyond_the_rows_candidates(cache: Path) -> None:
    folder = split_dir(cache, "rank", "train")
    resave(folder, "labels", np.array([2], dtype=np.int64))
    assert error_of(lambda: verify_cache(cache, task_defs())) == (
        f"{folder}: task 'rank': key 'labels': row 0 (uid 'k1') has label 2, outside the row's candidates; "
        "re-run prepro_std.py"
    )


def test_a_regression_label_that_is_not_finite(cache: Path) -> None:
    folder = split_dir(cache, "score", "dev")
    resave(folder, "labels", np.array([np.nan], dtype=np.float32))
    assert error_of(lambda: verify_cache(cache, task_defs())) == (
        f"{folder}: task 'score': key 'labels': row 0 has no finite score; re-run prepro_std.py"
    )


def test_unlabelled_splits_are_not_label_checked(cache: Path) -> None:
    assert load_split(split_dir(cache, "pair", "test")).labels.tolist() == [-1, -1]
    verify_cache(cache, task_defs(), [("pair", "test")])


@pytest.mark.parametrize(
    ("name", "array", "problem"),
    [
        ("labels", np.array([0], dtype=np.int64), "2 rows but 1 labels and 2 uids"),
        ("uids", np.array(["p1", "p2", "p3"]), "2 rows but 2 labels and 3 uids"),
        ("seq_offsets", np.array([0, 5, 99], dtype=np.int64), "seq_offsets covers 99 tokens, input_ids has"),
        (
            "row_offsets",
            np.array([0, 1, 3], dtype=np.int64),
            "row_offsets covers 3 sequences, seq_offsets has 2",
        ),
        ("row_offsets", np.array([0, 2, 2], dtype=np.int64), "a row without sequences"),
        ("input_ids", np.zeros((2, 2), dtype=np.int32), "input_ids has 2 dimensions, expected 1"),
    ],
)
def test_arrays_that_disagree(cache: Path, name: str, array: np.ndarray, problem: str) -> None:
    folder = split_dir(cache, "pair", "dev")
    resave(folder, name, array)
    for call in (lambda: load_split(folder), lambda: verify_cache(cache, task_defs())):
        message = error_of(call)
        assert message.startswith(f"{folder}: damaged token-id cache ({problem}") and message.endswith(
            "; run prepro_std.py again"
        ), message


# --- a prepro that did not finish ---------------------------------------------------------------------------


def test_a_split_the_manifest_does_not_list(cache: Path) -> None:
    edit_json(cache / MANIFEST, lambda manifest: manifest["splits"].pop("pair_dev"))
    assert error_of(lambda: verify_cache(cache, task_defs())) == (
        f"{cache / 'pair_dev'}: is not listed in {cache / MANIFEST}: the prepro_std.py run that wrote it did "
        "not finish; re-run it"
    )
    verify_cache(cache, task_defs(), [("pair", "train")])  # the splits asked for are fine


def test_a_prepro_killed_before_its_manifest(
    tmp_path: Path,
    write_jsonl: Callable[..., Path],
    tiny_tokenizer_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "data"
    for split in ("train", "dev", "test"):
        write_jsonl(root / f"pair_{split}.jsonl", ROWS["pair"])

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prepro_module, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        preprocess({"pair": task_defs()["pair"]}, root, tiny_tokenizer_dir, cache_name="c", progress=False)
    cache = root / "c"
    assert sorted(p.name for p in cache.iterdir()) == ["pair_dev", "pair_test", "pair_train"]
    assert error_of(lambda: verify_cache(cache, {"pair": task_defs()["pair"]})) == (
        f"{cache / 'pair_train'}: has no {MANIFEST} beside it: the prepro_std.py run that wrote it did not "
        "finish; re-run it"
    )


def test_a_rewrite_that_did_not_reach_the_manifest(cache: Path) -> None:
    edit_json(split_dir(cache, "single", "dev") / "meta.json", lambda meta: meta.update(rows=7))
    assert error_of(lambda: verify_cache(cache, task_defs())) == (
        f"{cache / 'single_dev'}: key 'rows': differs from its {MANIFEST} entry: the prepro_std.py run that "
        "rewrote it did not finish; re-run prepro_std.py"
    )


def test_a_listed_split_that_is_gone(cache: Path) -> None:
    shutil.rmtree(split_dir(cache, "rank", "test"))
    assert error_of(lambda: verify_cache(cache, task_defs())) == (
        f"{cache / 'rank_test'}: listed in {cache / MANIFEST} but missing; re-run prepro_std.py"
    )


def test_a_split_asked_for_that_was_never_made(cache: Path) -> None:
    more = {**task_defs(), "extra": parse_task_def("extra", TASK_ENTRIES["single"])}
    assert error_of(lambda: verify_cache(cache, more, [("extra", "train")])) == (
        f"{cache / 'extra_train'}: no token-id cache for 'extra_train' (run prepro_std.py)"
    )
    verify_cache(cache, more)  # by default, only what is there is checked


def test_a_split_moved_aside_by_a_crash_is_put_back(cache: Path) -> None:
    folder = split_dir(cache, "pair", "dev")
    folder.rename(cache / ".pair_dev.atomic.old")
    verify_cache(cache, task_defs())
    assert (folder / "meta.json").is_file() and not (cache / ".pair_dev.atomic.old").exists()


def test_a_kill_9_inside_a_split_write_is_cleaned_by_the_next_prepro_and_load(
    cache: Path, tiny_tokenizer_dir: Path
) -> None:
    script = (
        "import os, signal, sys\n"
        "import numpy as np\n"
        "from data_utils.cache import load_split, write_split\n"
        "split = load_split(sys.argv[1], mmap=False)\n"
        "real = np.save\n"
        "def save(path, array, **kwargs):\n"
        "    real(path, array, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "np.save = save\n"
        "write_split(sys.argv[1], split)\n"
    )
    for _ in range(2):
        folder = split_dir(cache, "pair", "train")
        result = subprocess.run([sys.executable, "-c", script, str(folder)], cwd=REPO, timeout=120)
        assert result.returncode == -9
    leftovers = sorted(p.name for p in cache.iterdir() if p.name.endswith(".tmp"))
    assert len(leftovers) == 2 and all(name.startswith(".pair_train.") for name in leftovers)
    verify_cache(cache, task_defs())  # the load removes them (and the split itself is intact)
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]

    subprocess.run([sys.executable, "-c", script, str(folder)], cwd=REPO, timeout=120)
    assert [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    preprocess(
        task_defs(),
        cache.parent,
        tiny_tokenizer_dir,
        max_seq_len=16,
        cache_name="tiny",
        tasks=["single"],
        progress=False,
    )
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == []


# --- caches from before these records -----------------------------------------------------------------------


def strip_records(record: dict[str, Any]) -> None:
    for key in ("task_def", "source_sha256", "source_bytes"):
        record.pop(key, None)


def test_an_older_cache_still_loads_with_one_warning(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    for folder in cache.iterdir():
        if folder.is_dir():
            edit_json(folder / "meta.json", strip_records)
    edit_json(cache / MANIFEST, lambda manifest: [strip_records(e) for e in manifest["splits"].values()])
    (cache.parent / "pair_dev.jsonl").write_text("edited\n", encoding="utf-8")  # cannot be told any more
    with caplog.at_level(logging.WARNING, logger="data_utils.cache"):
        verify_cache(cache, task_defs(pair={"labels": ["x", "y", "z"]}), vocab_size=VOCAB)
    warnings = [r.getMessage() for r in caplog.records if r.name == "data_utils.cache"]
    assert len(warnings) == 1 and "made by an older prepro_std.py" in warnings[0]
    # what the old meta.json did record is still checked, and so is everything read from the arrays
    assert "key 'task_type'" in error_of(
        lambda: verify_cache(cache, task_defs(single={"task_type": "regression", "labels": None}))
    )
    assert "key 'input_ids'" in error_of(lambda: verify_cache(cache, task_defs(), vocab_size=6))


# --- one split folder (predict --input <folder>) ------------------------------------------------------------


def test_verify_split_on_a_folder_copied_alone(cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "alone" / "pair_dev"
    shutil.copytree(split_dir(cache, "pair", "dev"), folder)
    assert len(verify_split(folder, task_defs()["pair"], vocab_size=VOCAB, max_positions=16)) == 2
    changed = task_defs(pair={"labels": ["neutral", "entailment", "contradiction"]})["pair"]
    assert "key 'labels'" in error_of(lambda: verify_split(folder, changed))
    assert error_of(lambda: verify_split(folder, task_defs()["single"])) == (
        f"{folder}: task 'single': key 'task': the folder holds task 'pair'"
    )
