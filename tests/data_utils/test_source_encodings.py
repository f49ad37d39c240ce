"""Text that is not UTF-8, or not valid Unicode, in any reader of source files: one line naming the file, the
line and the field (or the row skipped and counted under --skip_bad_rows), never a traceback downstream."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from data_utils.cache import read_manifest
from data_utils.errors import UserError
from data_utils.prepro import preprocess
from data_utils.readers import read_examples
from data_utils.task_def import parse_task_def
from experiments.canonical import read_json_lines, read_utf8, text_field
from experiments.scitail import prepare as scitail_prepare
from experiments.snli import prepare as snli_prepare
from tests.conftest import TASK_ENTRIES

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "experiments" / "fixtures"
PAIR = parse_task_def("pair", TASK_ENTRIES["pair"])
RANK = parse_task_def("rank", TASK_ENTRIES["rank"])
GOOD = '{"uid": "1", "label": "neutral", "premise": "a cat", "hypothesis": "a dog"}'


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def error_of(call: Any) -> str:
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- data_utils/readers.py ----------------------------------------------------------------------------------


def test_a_latin1_line_in_jsonl_and_tsv(tmp_path: Path) -> None:
    latin = '{"uid": "2", "label": "neutral", "premise": "caf\u00e9", "hypothesis": "b"}'.encode("latin-1")
    path = write(tmp_path / "pair_train.jsonl", GOOD.encode() + b"\n" + latin + b"\n")
    assert error_of(lambda: read_examples(path, PAIR)) == f"{path}:2: not UTF-8 text (byte 49)"
    result = read_examples(path, PAIR, skip_bad_rows=True)
    assert [e.uid for e in result.examples] == ["1"] and result.skipped == [
        f"{path}:2: not UTF-8 text (byte 49)"
    ]
    tsv = write(
        tmp_path / "pair_train.tsv",
        b"1\tneutral\ta\tb\n" + "2\tneutral\tth\u00e9\tb\n".encode("cp1252"),
    )
    assert error_of(lambda: read_examples(tsv, PAIR)) == f"{tsv}:2: not UTF-8 text (byte 13)"


GOOD_RANK = '{"uid": "0", "label": 0, "premise": "p", "hypothesis": ["x", "y"]}'


@pytest.mark.parametrize(
    ("row", "ranking", "problem"),
    [
        (r'"uid": "1", "label": 0, "premise": "a \ud800 b", "hypothesis": "c"', False, "field 'premise': "),
        (r'"uid": "1", "label": 0, "premise": "a", "hypothesis": "\udfff"', False, "field 'hypothesis': "),
        (r'"uid": "\uDBFF", "label": 0, "premise": "a", "hypothesis": "b"', False, "field 'uid': "),
        (
            r'"uid": "1", "label": 0, "premise": "a", "hypothesis": ["x", "yy \udc00"]',
            True,
            "field 'hypothesis': candidate 1: ",
        ),
    ],
)
def test_an_unpaired_surrogate_names_file_line_and_field(
    tmp_path: Path, row: str, ranking: bool, problem: str
) -> None:
    json.loads("{" + row + "}")  # valid JSON: only its strings are not text
    task_def = RANK if ranking else PAIR
    path = write(tmp_path / "t.jsonl", (GOOD_RANK if ranking else GOOD) + "\n{" + row + "}\n")
    message = error_of(lambda: read_examples(path, task_def))
    assert message.startswith(f"{path}:2: {problem}not valid Unicode text (an unpaired surrogate \\u")
    result = read_examples(path, task_def, skip_bad_rows=True)
    assert len(result.examples) == 1 and result.skipped == [message]


def test_the_message_gives_the_code_point_and_character(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.jsonl", r'{"uid": "1", "label": 0, "premise": "ab \uDBFF", "hypothesis": "c"}' + "\n"
    )
    assert error_of(lambda: read_examples(path, PAIR)) == (
        f"{path}:1: field 'premise': not valid Unicode text (an unpaired surrogate \\udbff at character 4)"
    )


def test_a_surrogate_pair_is_one_character(tmp_path: Path) -> None:
    row = r'{"uid": "1", "label": 0, "premise": "ok \ud83d\ude00", "hypothesis": "b"}'
    assert read_examples(write(tmp_path / "t.jsonl", row + "\n"), PAIR).examples[0].premise == "ok \U0001f600"


BAD = r'{"uid": "2", "label": "neutral", "premise": "a \ud800", "hypothesis": "b"}'
UNLABELLED = '{"uid": "1", "premise": "a cat", "hypothesis": "a dog"}'


def test_preprocess_reports_the_row_not_a_tokenizer_type_error(
    tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    root = tmp_path / "data"
    write(root / "pair_train.jsonl", f"{GOOD}\n{BAD}\n")
    write(root / "pair_dev.jsonl", f"{GOOD}\n{BAD}\n")
    write(root / "pair_test.jsonl", f"{UNLABELLED}\n")
    before = {p: sha(p) for p in root.iterdir()}
    assert error_of(lambda: preprocess({"pair": PAIR}, root, tiny_tokenizer_dir, progress=False)) == (
        f"{root / 'pair_train.jsonl'}:2: field 'premise': not valid Unicode text (an unpaired surrogate "
        "\\ud800 at character 3)"
    )
    summary = preprocess(
        {"pair": PAIR}, root, tiny_tokenizer_dir, skip_bad_rows=True, cache_name="c", progress=False
    )
    assert summary["splits"]["pair_train"]["rows"] == 1 and summary["splits"]["pair_train"]["skipped"] == 1
    assert summary["skipped_rows"]["pair_dev"] == [
        f"{root / 'pair_dev.jsonl'}:2: field 'premise': not valid Unicode text (an unpaired surrogate "
        "\\ud800 at character 3)"
    ]
    assert read_manifest(root / "c")["splits"]["pair_dev"]["skipped"] == 1
    assert {p: sha(p) for p in before} == before  # the inputs are untouched


def test_prepro_std_exits_2_with_one_line(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    root = tmp_path / "data"
    write(root / "pair_train.jsonl", f"{GOOD}\n")
    write(
        root / "pair_dev.jsonl", f"{GOOD}\n" + BAD.replace(r'"a \ud800"', '"p"').replace('"b"', r'"\ud800"')
    )
    write(root / "pair_test.jsonl", f"{UNLABELLED}\n")
    task_def = write(
        tmp_path / "tasks.yml",
        "pair:\n  task_type: classification\n  data_format: premise_and_one_hypothesis\n"
        "  labels: [entailment, neutral, contradiction]\n",
    )
    argv = ["--task_def", str(task_def), "--root_dir", str(root), "--model", str(tiny_tokenizer_dir)]
    result = subprocess.run(
        [sys.executable, "prepro_std.py", *argv, "--no_progress"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {root / 'pair_dev.jsonl'}:2: field 'hypothesis': not valid Unicode text (an unpaired "
        "surrogate \\ud800 at character 1)"
    ]


# --- experiments/canonical.py and the prepare scripts -------------------------------------------------------


def test_canonical_json_lines_in_another_encoding(tmp_path: Path) -> None:
    path = write(tmp_path / "x.jsonl", b'{"a": "ok"}\n\n{"a": "na\xefve"}\n')
    with pytest.raises(UserError) as caught:
        list(read_json_lines(path))
    assert (
        str(caught.value) == f"{path}:3: not UTF-8 text (byte 0xef at column 10); convert the file to UTF-8"
    )
    bom = write(tmp_path / "bom.jsonl", b'\xef\xbb\xbf{"a": "ok"}\n')
    assert list(read_json_lines(bom)) == [(1, {"a": "ok"})]


def test_canonical_text_field_with_an_unpaired_surrogate(tmp_path: Path) -> None:
    record = json.loads(r'{"sentence1": "x \udc01"}')
    with pytest.raises(UserError) as caught:
        text_field(record, "sentence1", tmp_path / "s.jsonl", 4)
    assert str(caught.value) == (
        f"{tmp_path / 's.jsonl'}:4: key 'sentence1': not valid Unicode text (an unpaired surrogate \\udc01 "
        "at character 3)"
    )
    assert text_field({"k": "caf\u00e9 \U0001f600"}, "k", tmp_path, 1) == "caf\u00e9 \U0001f600"


def test_read_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", b"a\tb\nc\td\xe9\n")
    assert error_of(lambda: read_utf8(path)) == (
        f"{path}:2: not UTF-8 text (byte 0xe9 at column 4); convert the file to UTF-8"
    )
    assert read_utf8(write(tmp_path / "bom.tsv", b"\xef\xbb\xbfa\n")) == "a\n"


def test_snli_prepare_with_a_latin1_line_and_a_surrogate(tmp_path: Path) -> None:
    snli_dir = Path(shutil.copytree(FIXTURES / "snli" / "snli_1.0", tmp_path / "snli_1.0"))
    dev = snli_dir / "snli_1.0_dev.jsonl"
    lines = dev.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[0])
    record["sentence2"] = "caf\u00e9"
    original = dev.read_bytes()
    dev.write_bytes(lines[0] + json.dumps(record, ensure_ascii=False).encode("latin-1") + b"\n")
    assert error_of(lambda: snli_prepare.prepare(snli_dir, tmp_path / "out")).startswith(
        f"{dev}:2: not UTF-8 text (byte 0xe9 at column "
    )
    record["sentence2"] = "\ud800"
    dev.write_bytes(original + json.dumps(record).encode() + b"\n")  # ensure_ascii spells it \ud800
    n = len(original.splitlines()) + 1
    assert error_of(lambda: snli_prepare.prepare(snli_dir, tmp_path / "out")) == (
        f"{dev}:{n}: key 'sentence2': not valid Unicode text (an unpaired surrogate \\ud800 at character 1)"
    )


def test_scitail_prepare_with_a_latin1_line(tmp_path: Path) -> None:
    scitail_dir = Path(shutil.copytree(FIXTURES / "scitail" / "SciTailV1.1", tmp_path / "SciTailV1.1"))
    train = scitail_dir / "tsv_format" / "scitail_1.0_train.tsv"
    train.write_bytes(train.read_bytes() + "Na\u00efve premise.\tA hypothesis.\tneutral\n".encode("latin-1"))
    n = len(train.read_bytes().splitlines())
    assert error_of(lambda: scitail_prepare.prepare(scitail_dir, tmp_path / "out")) == (
        f"{train}:{n}: not UTF-8 text (byte 0xef at column 3); convert the file to UTF-8"
    )
