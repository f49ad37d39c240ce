"""The SQuAD reader on hand-written fixtures (v1.1, v2.0, the flat JSONL form) and on each kind of mistake."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from data_utils.errors import UserError
from data_utils.readers_squad import SpanAnswer, read_squad

FIXTURES = Path(__file__).parent / "fixtures" / "squad"
MILL = "The river runs past the old mill. In 1820 the mill burned down, and it was rebuilt in stone."
MOTHS = "Moths are drawn to light at night. Some moths do not eat at all as adults."


def error_of(path: Path) -> str:
    with pytest.raises(UserError) as info:
        read_squad(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_squad_v1_fixture() -> None:
    result = read_squad(FIXTURES / "squad_v1.json")
    assert [e.uid for e in result.examples] == ["mill-1", "mill-2", "moth-1"]
    assert result.has_labels
    first, second, third = result.examples
    assert (first.question, first.context) == ("What does the river run past?", MILL)
    assert first.answers == (SpanAnswer("the old mill", 20),)
    assert second.answers == (SpanAnswer("in stone", 83), SpanAnswer("stone", 86))
    assert all(MILL[a.start : a.end] == a.text for a in second.answers)
    assert third.context == MOTHS and not third.is_impossible
    raw = (FIXTURES / "squad_v1.json").read_bytes()
    assert result.source_sha256 == hashlib.sha256(raw).hexdigest() and result.source_bytes == len(raw)


def test_squad_v2_fixture_has_an_impossible_question() -> None:
    examples = read_squad(FIXTURES / "squad_v2.json").examples
    by_id = {e.uid: e for e in examples}
    assert by_id["mill-1"].answers == (SpanAnswer("1820", 37),)
    assert by_id["mill-2"].answers == () and by_id["mill-2"].is_impossible
    assert by_id["moth-1"].answers == (SpanAnswer("at night", 25),)
    assert by_id["moth-1"].context == MOTHS


def test_flat_jsonl_fixture() -> None:
    examples = read_squad(FIXTURES / "flat.jsonl").examples  # a blank line is skipped
    assert [e.uid for e in examples] == ["mill-1", "moth-1", "7"]
    assert examples[0].answers == (SpanAnswer("in stone", 83), SpanAnswer("stone", 86))
    assert examples[1].is_impossible
    assert examples[2].answers == (SpanAnswer("light", 19),)


def test_unlabelled_questions_read_without_answers(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"id": "q", "question": "Who?", "context": MILL}) + "\n", encoding="utf-8")
    result = read_squad(path)
    assert not result.has_labels and result.examples[0].answers is None


# --- mistakes --------------------------------------------------------------------------------------------


def squad_document() -> dict[str, Any]:
    return json.loads((FIXTURES / "squad_v2.json").read_text(encoding="utf-8"))


def write_json(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return path


def first_qa(document: dict[str, Any]) -> dict[str, Any]:
    return document["data"][0]["paragraphs"][0]["qas"][0]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: first_qa(d).pop("question"), "qa 'mill-1': field 'question': missing"),
        (lambda d: first_qa(d).pop("id"), "data[0].paragraphs[0].qas[0]: field 'id': missing"),
        (
            lambda d: d["data"][0]["paragraphs"][0].pop("context"),
            "data[0].paragraphs[0]: field 'context': missing",
        ),
        (lambda d: d["data"][0].pop("paragraphs"), "data[0]: field 'paragraphs': missing"),
        (lambda d: d.pop("data"), "field 'data': missing"),
        (
            lambda d: first_qa(d)["answers"][0].pop("answer_start"),
            "qa 'mill-1': field 'answers[0].answer_start': missing",
        ),
        (lambda d: first_qa(d)["answers"][0].update(text=""), "qa 'mill-1': field 'answers[0].text': empty"),
        (
            lambda d: first_qa(d)["answers"][0].update(answer_start=36),
            "qa 'mill-1': field 'answers[0].answer_start': the answer '1820' is not at character 36 of the context"
            " (it reads ' 182')",
        ),
        (
            lambda d: first_qa(d).update(is_impossible=True),
            "qa 'mill-1': field 'is_impossible': true, but the question has 1 answer(s)",
        ),
        (
            lambda d: first_qa(d).update(answers=[]),
            "qa 'mill-1': field 'answers': empty, but is_impossible is false",
        ),
        (
            lambda d: first_qa(d).update(is_impossible="no"),
            "qa 'mill-1': field 'is_impossible': expected true or false, got a string",
        ),
        (
            lambda d: first_qa(d).update(id="moth-1"),
            "qa 'moth-1': field 'id': duplicate id 'moth-1' (first at data[0].paragraphs[0].qas[0])",
        ),
        (
            lambda d: first_qa(d).pop("answers") and first_qa(d).pop("is_impossible"),
            "qa 'mill-2': field 'answers': given, but earlier questions are unlabelled",
        ),
    ],
)
def test_squad_json_mistakes_name_the_question_and_key(tmp_path: Path, change: Any, expected: str) -> None:
    document = copy.deepcopy(squad_document())
    change(document)
    path = write_json(tmp_path, document)
    assert error_of(path).startswith(f"{path}: {expected}")


def test_the_duplicate_message_names_the_first_occurrence(tmp_path: Path) -> None:
    document = squad_document()
    document["data"][0]["paragraphs"][1]["qas"][0]["id"] = "mill-1"
    path = write_json(tmp_path, document)
    expected = "qa 'mill-1': field 'id': duplicate id 'mill-1' (first at data[0].paragraphs[0].qas[0])"
    assert error_of(path) == f"{path}: {expected}"


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "data": [\n    {"paragraphs": [}\n  ]\n}\n', encoding="utf-8")
    assert error_of(path).startswith(f"{path}:3: invalid JSON: ")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "q1", "question": "Who?", "context": "he sat"', "invalid JSON: "),
        ('["q1"]', "expected a JSON object, got a list"),
        ('{"question": "Who?", "context": "he sat", "answers": null}', "field 'id': missing"),
        ('{"id": "q1", "context": "he sat"}', "qa 'q1': field 'question': missing"),
        ('{"id": "q1", "question": "Who?", "context": "  "}', "qa 'q1': field 'context': empty"),
        (
            '{"id": "q1", "question": "Who?", "context": "he sat", "answers": {"text": ["he"]}}',
            "qa 'q1': field 'answers.answer_start': expected a list, got null",
        ),
        (
            '{"id": "q1", "question": "Who?", "context": "he sat", "answers": {"text": ["he"], "answer_start": [0, 3]}}',
            "qa 'q1': field 'answers': 1 texts but 2 answer_start values",
        ),
        (
            '{"id": "q1", "question": "Who?", "context": "he sat", "answers": {"text": ["sat"], "answer_start": [2]}}',
            "qa 'q1': field 'answers.answer_start[0]': the answer 'sat' is not at character 2 of the context (it reads ' sa')",
        ),
        (
            '{"id": "q1", "question": "Who?", "context": "he sat", "answers": {"text": ["he"], "answer_start": ["0"]}}',
            "qa 'q1': field 'answers.answer_start[0]': expected a character offset, got a string",
        ),
        (
            '{"id": "q1", "question": "Who?", "context": "he sat", "answers": ["he"]}',
            "qa 'q1': field 'answers': expected",
        ),
    ],
)
def test_jsonl_mistakes_name_the_line_the_question_and_key(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = (
        '{"id": "q0", "question": "What?", "context": "a b", "answers": {"text": ["a"], "answer_start": [0]}}'
    )
    path.write_text(good + "\n" + line + "\n", encoding="utf-8")
    assert error_of(path).startswith(f"{path}:2: {expected}")


def test_jsonl_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    row = (
        '{"id": "q0", "question": "What?", "context": "a b", "answers": {"text": ["a"], "answer_start": [0]}}'
    )
    path.write_text(row + "\n" + row + "\n", encoding="utf-8")
    assert error_of(path) == f"{path}:2: field 'id': duplicate id 'q0' (first at line 1)"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("squad.txt", "x", "unknown file type '.txt' (expected .json or .jsonl)"),
        ("empty.jsonl", "\n\n", "no questions"),
        ("latin1.jsonl", b'{"id": "\xe9"}\n', "not UTF-8 text"),
    ],
)
def test_file_level_mistakes(tmp_path: Path, name: str, content: str | bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert expected in error_of(path)


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.json") == f"{tmp_path / 'nope.json'}: no such file"


def test_skip_bad_rows_keeps_the_good_questions_and_the_messages(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    good = (
        '{"id": "q0", "question": "What?", "context": "a b", "answers": {"text": ["b"], "answer_start": [2]}}'
    )
    bad = (
        '{"id": "q1", "question": "What?", "context": "a b", "answers": {"text": ["b"], "answer_start": [0]}}'
    )
    path.write_text("\n".join([good, bad, "{", good]) + "\n", encoding="utf-8")
    result = read_squad(path, skip_bad_rows=True)
    assert [e.uid for e in result.examples] == ["q0"]
    assert [m.split(": ", 2)[1] for m in result.skipped] == ["qa 'q1'", "invalid JSON", "field 'id'"]
    assert result.skipped[0].startswith(f"{path}:2: ") and result.skipped[2].startswith(f"{path}:4: ")
    with pytest.raises(UserError, match=r"no questions \(1 bad questions skipped; first: "):
        path.write_text(bad + "\n", encoding="utf-8")
        read_squad(path, skip_bad_rows=True)


def test_skip_bad_rows_in_squad_json(tmp_path: Path) -> None:
    document = squad_document()
    first_qa(document)["answers"][0]["answer_start"] = 0
    document["data"][0]["paragraphs"][1]["qas"][0].pop("id")
    result = read_squad(write_json(tmp_path, document), skip_bad_rows=True)
    assert [e.uid for e in result.examples] == ["mill-2"]
    assert "qa 'mill-1': field 'answers[0].answer_start'" in result.skipped[0]
    assert "data[0].paragraphs[1].qas[0]: field 'id': missing" in result.skipped[1]
