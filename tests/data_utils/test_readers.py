from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from data_utils.errors import UserError
from data_utils.readers import Example, read_examples
from data_utils.task_def import TaskDef, parse_task_def
from tests.conftest import TASK_ENTRIES

PAIR = parse_task_def("pair", TASK_ENTRIES["pair"])
SINGLE = parse_task_def("single", TASK_ENTRIES["single"])
SCORE = parse_task_def("score", TASK_ENTRIES["score"])
RANK = parse_task_def("rank", TASK_ENTRIES["rank"])
UNNAMED = parse_task_def(
    "unnamed", {"task_type": "classification", "data_format": "premise_only", "n_class": 3}
)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[object]) -> Path:
    return write_lines(path, [json.dumps(row) for row in rows])


def error_of(path: Path, task_def: TaskDef) -> str:
    with pytest.raises(UserError) as info:
        read_examples(path, task_def)
    message = str(info.value)
    assert "\n" not in message
    return message


PAIR_ROW = {"uid": "1", "label": "neutral", "premise": "a cat sat", "hypothesis": "a dog sat"}


# --- good files --------------------------------------------------------------------------------------------


def test_jsonl_pair_rows_become_examples(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "pair_train.jsonl",
        [PAIR_ROW, {"uid": 7, "label": "contradiction", "premise": "x", "hypothesis": "y", "extra": 1}],
    )
    result = read_examples(path, PAIR)
    assert result.examples == [
        Example("1", "a cat sat", "a dog sat", 1),
        Example("7", "x", "y", 2),
    ]
    assert result.has_labels and result.skipped == []


def test_tsv_and_jsonl_give_identical_examples(tmp_path: Path) -> None:
    rows = [
        {"uid": "r1", "label": "entailment", "premise": "the sun", "hypothesis": "a star"},
        {"uid": "r2", "label": "contradiction", "premise": "one dog", "hypothesis": "two cats"},
    ]
    from_jsonl = read_examples(jsonl(tmp_path / "p.jsonl", rows), PAIR)
    tsv = write_lines(
        tmp_path / "p.tsv", [f"{r['uid']}\t{r['label']}\t{r['premise']}\t{r['hypothesis']}" for r in rows]
    )
    assert read_examples(tsv, PAIR) == from_jsonl

    rank_rows = [{"uid": "q", "label": 2, "premise": "who", "hypothesis": ["he", "she", "it"]}]
    rank_tsv = write_lines(tmp_path / "r.tsv", ["q\t2\twho\the\tshe\tit"])
    assert read_examples(rank_tsv, RANK) == read_examples(jsonl(tmp_path / "r.jsonl", rank_rows), RANK)
    assert read_examples(rank_tsv, RANK).examples == [Example("q", "who", ("he", "she", "it"), 2)]

    single_tsv = write_lines(tmp_path / "s.tsv", ["u\tpositive\tgood film"])
    single_jsonl = jsonl(tmp_path / "s.jsonl", [{"uid": "u", "label": "positive", "premise": "good film"}])
    assert read_examples(single_tsv, SINGLE) == read_examples(single_jsonl, SINGLE)


def test_label_names_and_indices(tmp_path: Path) -> None:
    # Index strings map to classes; a label name wins over an index that reads the same.
    path = write_lines(tmp_path / "p.tsv", ["a\t0\tx\ty", "b\tcontradiction\tx\ty", "c\t1\tx\ty"])
    assert [e.label for e in read_examples(path, PAIR).examples] == [0, 2, 1]
    numeric_names = parse_task_def(
        "t", {"task_type": "classification", "data_format": "premise_only", "labels": ["1", "0"]}
    )
    path = write_lines(tmp_path / "n.tsv", ["a\t1\tx", "b\t0\tx"])
    assert [e.label for e in read_examples(path, numeric_names).examples] == [0, 1]
    path = jsonl(
        tmp_path / "n.jsonl",
        [{"uid": "a", "label": 1, "premise": "x"}, {"uid": "b", "label": "0", "premise": "x"}],
    )
    assert [e.label for e in read_examples(path, numeric_names).examples] == [0, 1]
    # Without names, integer labels are class indices (JSON ints, integral floats or digit strings).
    path = jsonl(
        tmp_path / "u.jsonl",
        [{"uid": "a", "label": 2, "premise": "x"}, {"uid": "b", "label": "1", "premise": "x"}],
    )
    assert [e.label for e in read_examples(path, UNNAMED).examples] == [2, 1]


def test_regression_and_ranking_labels(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.tsv", ["a\t3.5\tx\ty", "b\t-1\tx\ty"])
    labels = [e.label for e in read_examples(path, SCORE).examples]
    assert labels == [3.5, -1.0] and all(isinstance(label, float) for label in labels)
    path = jsonl(tmp_path / "s.jsonl", [{"uid": "a", "label": 4, "premise": "x", "hypothesis": "y"}])
    assert read_examples(path, SCORE).examples[0].label == 4.0


def test_unlabelled_test_files(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "t.jsonl",
        [
            {"uid": "a", "premise": "x", "hypothesis": "y"},
            {"uid": "b", "label": None, "premise": "x", "hypothesis": "y"},
        ],
    )
    result = read_examples(path, PAIR)
    assert not result.has_labels and [e.label for e in result.examples] == [None, None]
    tsv = write_lines(tmp_path / "t.tsv", ["a\t\tx\ty", "b\t\tx\ty"])
    assert read_examples(tsv, PAIR) == result
    rank = write_lines(tmp_path / "r.tsv", ["a\t\tq\tc1\tc2"])
    assert read_examples(rank, RANK).examples == [Example("a", "q", ("c1", "c2"), None)]


def test_blank_lines_crlf_and_bom_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "p.tsv"
    path.write_bytes(b"\xef\xbb\xbfa\tneutral\tx\ty\r\n\r\nb\tentailment\tx\ty\r\n")
    assert read_examples(path, PAIR).examples == [Example("a", "x", "y", 1), Example("b", "x", "y", 0)]


# --- errors: each names file:line, the field and the problem -----------------------------------------------

BAD_JSONL = [
    ("{not json", None, "invalid JSON"),
    ("[1, 2]", None, "expected a JSON object, got a list"),
    ('{"label": "neutral", "premise": "x", "hypothesis": "y"}', "uid", "missing"),
    ('{"uid": "", "label": "neutral", "premise": "x", "hypothesis": "y"}', "uid", "empty"),
    ('{"uid": "z", "label": "neutral", "hypothesis": "y"}', "premise", "missing"),
    ('{"uid": "z", "label": "neutral", "premise": "  ", "hypothesis": "y"}', "premise", "empty"),
    ('{"uid": "z", "label": "neutral", "premise": 5, "hypothesis": "y"}', "premise", "expected a string"),
    ('{"uid": "z", "label": "neutral", "premise": "x"}', "hypothesis", "missing"),
    ('{"uid": "z", "label": "neutral", "premise": "x", "hypothesis": ""}', "hypothesis", "empty"),
    ('{"uid": "z", "label": "maybe", "premise": "x", "hypothesis": "y"}', "label", "'maybe' is not a label"),
    ('{"uid": "z", "label": 3, "premise": "x", "hypothesis": "y"}', "label", "3 is not a label"),
    ('{"uid": "z", "label": true, "premise": "x", "hypothesis": "y"}', "label", "True is not a label"),
    ('{"uid": "1", "label": "neutral", "premise": "x", "hypothesis": "y"}', "uid", "duplicate uid '1'"),
]


@pytest.mark.parametrize(("line", "field", "problem"), BAD_JSONL)
def test_jsonl_row_errors_name_file_line_and_field(
    tmp_path: Path, line: str, field: str | None, problem: str
) -> None:
    path = write_lines(tmp_path / "pair_train.jsonl", [json.dumps(PAIR_ROW), "", line])
    message = error_of(path, PAIR)
    assert message.startswith(f"{path}:3: ")
    if field is not None:
        assert f"field '{field}'" in message
    assert problem in message


def test_label_error_lists_allowed_labels(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", [{**PAIR_ROW, "label": "Neutral"}])
    assert "'entailment', 'neutral', 'contradiction'" in error_of(path, PAIR)
    many = parse_task_def(
        "m",
        {"task_type": "classification", "data_format": "premise_only", "labels": [f"l{i}" for i in range(9)]},
    )
    message = error_of(jsonl(tmp_path / "m.jsonl", [{"uid": "a", "label": "x", "premise": "p"}]), many)
    assert "'l4', ..." in message and "'l5'" not in message


def test_format_specific_errors(tmp_path: Path) -> None:
    single = jsonl(
        tmp_path / "s.jsonl", [{"uid": "a", "label": "positive", "premise": "x", "hypothesis": "y"}]
    )
    assert re.fullmatch(
        rf"{re.escape(str(single))}:1: field 'hypothesis': given, but the task is premise_only",
        error_of(single, SINGLE),
    )
    regression = jsonl(
        tmp_path / "r.jsonl", [{"uid": "a", "label": "high", "premise": "x", "hypothesis": "y"}]
    )
    assert "r.jsonl:1: field 'label': 'high' is not a number" in error_of(regression, SCORE)
    nan = write_lines(tmp_path / "r.tsv", ["a\tnan\tx\ty"])
    assert "r.tsv:1: field 'label': 'nan' is not a finite number" in error_of(nan, SCORE)
    rank_label = jsonl(
        tmp_path / "k.jsonl", [{"uid": "a", "label": 2, "premise": "x", "hypothesis": ["p", "q"]}]
    )
    assert "k.jsonl:1: field 'label': 2 is not a candidate index in [0, 2)" in error_of(rank_label, RANK)
    one_candidate = jsonl(
        tmp_path / "o.jsonl", [{"uid": "a", "label": 0, "premise": "x", "hypothesis": ["p"]}]
    )
    assert "o.jsonl:1: field 'hypothesis': expected a list of >= 2 candidate strings, got 1" in error_of(
        one_candidate, RANK
    )
    empty_candidate = jsonl(
        tmp_path / "e.jsonl", [{"uid": "a", "label": 0, "premise": "x", "hypothesis": ["p", ""]}]
    )
    assert "e.jsonl:1: field 'hypothesis': candidate 1: empty" in error_of(empty_candidate, RANK)
    string_for_list = jsonl(
        tmp_path / "l.jsonl", [{"uid": "a", "label": 0, "premise": "x", "hypothesis": "p"}]
    )
    assert "field 'hypothesis': expected a list of >= 2 candidate strings, got a string" in error_of(
        string_for_list, RANK
    )


def test_tsv_errors(tmp_path: Path) -> None:
    columns = write_lines(tmp_path / "p.tsv", ["a\tneutral\tx\ty", "b\tneutral\tx"])
    assert f"{columns}:2: field 'columns': expected 4 tab-separated columns" in error_of(columns, PAIR)
    assert "got 3" in error_of(columns, PAIR)
    rank = write_lines(tmp_path / "r.tsv", ["a\t0\tx\tonly"])
    assert f"{rank}:1: field 'columns': expected >= 5" in error_of(rank, RANK)
    empty = write_lines(tmp_path / "e.tsv", ["a\t0\tx\tp\t "])
    assert f"{empty}:1: field 'hypothesis': candidate 1 (column 5): empty" in error_of(empty, RANK)
    label = write_lines(tmp_path / "l.tsv", ["a\t7\tx\ty"])
    assert f"{label}:1: field 'label': '7' is not a label" in error_of(label, PAIR)
    dup = write_lines(tmp_path / "d.tsv", ["a\t0\tx\ty", "b\t0\tx\ty", "a\t0\tx\ty"])
    assert error_of(dup, PAIR) == f"{dup}:3: field 'uid': duplicate uid 'a' (first on line 1)"
    bad_bytes = tmp_path / "b.tsv"
    bad_bytes.write_bytes(b"a\t0\tx\ty\nb\t0\t\xff\ty\n")
    assert f"{bad_bytes}:2: not UTF-8 text" in error_of(bad_bytes, PAIR)


def test_mixing_labelled_and_unlabelled_fails_at_first_offending_line(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "m.jsonl",
        [PAIR_ROW, {**PAIR_ROW, "uid": "2", "label": "entailment"}, {**PAIR_ROW, "uid": "3", "label": None}],
    )
    message = error_of(path, PAIR)
    assert message.startswith(f"{path}:3: field 'label': row has no label but earlier rows are labelled")
    tsv = write_lines(tmp_path / "m.tsv", ["a\t\tx\ty", "b\tneutral\tx\ty"])
    assert error_of(tsv, PAIR).startswith(
        f"{tsv}:2: field 'label': row has a label but earlier rows are unlabelled"
    )
    # Mixing is fatal even when skipping bad rows: skipping would silently drop one half of the split.
    with pytest.raises(UserError, match=":2: field 'label'"):
        read_examples(tsv, PAIR, skip_bad_rows=True)


def test_file_level_errors(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.jsonl", PAIR) == f"{tmp_path / 'nope.jsonl'}: no such file"
    csv = write_lines(tmp_path / "p.csv", ["a,b"])
    assert error_of(csv, PAIR) == f"{csv}: unknown file type '.csv' (expected .jsonl or .tsv)"
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    assert error_of(empty, PAIR) == f"{empty}: no examples"


def test_skip_bad_rows_counts_and_keeps_messages(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            json.dumps(PAIR_ROW),
            "{oops",
            json.dumps({**PAIR_ROW, "uid": "2", "label": "bogus"}),
            json.dumps(PAIR_ROW),
            json.dumps({**PAIR_ROW, "uid": "3"}),
        ],
    )
    result = read_examples(path, PAIR, skip_bad_rows=True)
    assert [e.uid for e in result.examples] == ["1", "3"]
    assert len(result.skipped) == 3
    assert [m.split(": ", 1)[0] for m in result.skipped] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert (
        "invalid JSON" in result.skipped[0]
        and "'bogus'" in result.skipped[1]
        and "duplicate" in result.skipped[2]
    )
    only_bad = write_lines(tmp_path / "bad.jsonl", ["{oops"])
    with pytest.raises(
        UserError, match=r"no examples \(1 bad rows skipped; first: .*bad.jsonl:1: invalid JSON"
    ):
        read_examples(only_bad, PAIR, skip_bad_rows=True)


def test_regression_labels_are_floats_and_nan_free(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", [{"uid": "a", "label": "2.25", "premise": "x", "hypothesis": "y"}])
    label = read_examples(path, SCORE).examples[0].label
    assert label == 2.25 and not math.isnan(label)
