"""The CoNLL reader on hand-written files: sentences, tags from the last column, DOCSTART skipped, errors that
name file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_utils.conll import TaggedSentence, read_conll
from data_utils.errors import UserError
from data_utils.task_def import TaskDef
from mt_dnn.tasks import parse_task_def

FIXTURES = Path(__file__).parent / "fixtures" / "conll"
TAGS = ["O", "B-ANI", "I-ANI", "B-PER", "I-PER"]


@pytest.fixture
def ner() -> TaskDef:
    return parse_task_def(
        "ner", {"task_type": "sequence_labeling", "data_format": "premise_only", "labels": TAGS}
    )


def test_a_good_file(ner: TaskDef) -> None:
    result = read_conll(FIXTURES / "good.conll", ner)
    assert result.has_labels and not result.skipped
    assert result.examples == [
        TaggedSentence("0", ("the", "cat", "sat"), (0, 1, 0)),
        TaggedSentence("1", ("the", "big", "dogs", "walked"), (0, 1, 2, 0)),
        TaggedSentence("2", ("he", "plays"), (3, 0)),
    ]
    assert result.source_bytes == (FIXTURES / "good.conll").stat().st_size


def test_an_unlabelled_file(ner: TaskDef) -> None:
    result = read_conll(FIXTURES / "unlabelled.conll", ner)
    assert not result.has_labels
    assert [(s.words, s.label) for s in result.examples] == [
        (("the", "cat", "sat"), None),
        (("he", "plays"), None),
    ]


def test_crlf_and_tabs_read_the_same(ner: TaskDef, tmp_path: Path) -> None:
    text = (FIXTURES / "good.conll").read_text().replace(" ", "\t").replace("\n", "\r\n")
    (tmp_path / "crlf.conll").write_text(text, newline="")
    assert (
        read_conll(tmp_path / "crlf.conll", ner).examples == read_conll(FIXTURES / "good.conll", ner).examples
    )


def test_an_unknown_tag_names_file_and_line(ner: TaskDef) -> None:
    with pytest.raises(UserError, match=r"bad_tag\.conll:5: field 'tag': 'B-DOG' is not a label of the task"):
        read_conll(FIXTURES / "bad_tag.conll", ner)


def test_skip_bad_rows_skips_the_sentence(ner: TaskDef) -> None:
    result = read_conll(FIXTURES / "bad_tag.conll", ner, skip_bad_rows=True)
    assert [s.uid for s in result.examples] == ["0", "2"]
    assert len(result.skipped) == 1 and "bad_tag.conll:5:" in result.skipped[0]


def test_a_tagged_and_untagged_mix_names_the_line(ner: TaskDef) -> None:
    with pytest.raises(UserError, match=r"mixed\.conll:3: field 'tag': the token has no tag"):
        read_conll(FIXTURES / "mixed.conll", ner, skip_bad_rows=True)


def test_not_utf8_names_the_line(ner: TaskDef, tmp_path: Path) -> None:
    (tmp_path / "latin.conll").write_bytes(b"the O\ncaf\xe9 B-ANI\n")
    with pytest.raises(UserError, match=r"latin\.conll:2: not UTF-8 text"):
        read_conll(tmp_path / "latin.conll", ner)


def test_a_file_without_sentences_and_a_missing_file(ner: TaskDef) -> None:
    with pytest.raises(UserError, match=r"empty\.conll: no sentences"):
        read_conll(FIXTURES / "empty.conll", ner)
    with pytest.raises(UserError, match="no such file"):
        read_conll(FIXTURES / "absent.conll", ner)
