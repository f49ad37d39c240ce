"""Extractive-QA rows (SQuAD v1.1 / v2.0) -> ``SpanExample``s, for one task split of a ``span`` task.

Two formats, chosen by the file's suffix:

- ``.json``: SQuAD's own file, ``{"data": [{"paragraphs": [{"context", "qas": [{"id", "question",
  "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}``. ``is_impossible`` (v2.0) is optional; when
  given it must agree with the answers (true: none; false: at least one). ``plausible_answers`` and the other
  keys are ignored.
- ``.jsonl``: one question per line, ``{"id", "question", "context", "answers": {"text": [...],
  "answer_start": [...]}}`` (the flat form of the common dataset exports); empty lists mean no answer.

``answer_start`` is a character offset into the context, and the answer's text must be found there. Questions
without ``answers`` (absent or null) are unlabelled (``answers=None``, for prediction); a split is either all
labelled or all unlabelled. Every problem is one ``UserError`` naming the file, the line (``.jsonl``) or the
question's id (or its place in the file when the id itself is wrong), and the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_utils.errors import UserError
from data_utils.readers import ReadResult

__all__ = ["SQUAD_SUFFIXES", "SpanAnswer", "SpanExample", "read_squad"]

SQUAD_SUFFIXES: tuple[str, ...] = (".json", ".jsonl")
_SHOWN = 40  # characters of a text shown in a message


@dataclass(frozen=True, slots=True)
class SpanAnswer:
    """An answer's text and its first character in the context."""

    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass(frozen=True, slots=True)
class SpanExample:
    """One question. ``answers``: the gold answers, ``()`` when it has none, ``None`` when unlabelled."""

    uid: str
    question: str
    context: str
    answers: tuple[SpanAnswer, ...] | None

    @property
    def is_impossible(self) -> bool:
        return self.answers == ()


class _Problem(Exception):
    """A problem with one question; the caller adds the file and where."""

    def __init__(self, key: str | None, problem: str) -> None:
        super().__init__(f"field '{key}': {problem}" if key else problem)


def read_squad(path: str | Path, *, skip_bad_rows: bool = False) -> ReadResult:
    """Read one split file in SQuAD's JSON or the flat JSONL form; ``ReadResult.examples`` holds
    ``SpanExample``s. With ``skip_bad_rows`` a bad question (or a duplicate id) is left out and its message
    kept in ``ReadResult.skipped``; a broken file, a labelled/unlabelled mix and no question stay fatal."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SQUAD_SUFFIXES:
        raise UserError(f"{path}: unknown file type '{suffix or '(none)'}' (expected .json or .jsonl)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror or error}") from None
    rows = _squad_rows(path, raw) if suffix == ".json" else _jsonl_rows(path, raw)
    examples: list[SpanExample] = []
    skipped: list[str] = []
    first: dict[str, str] = {}  # uid -> where it was first read
    has_labels: bool | None = None
    for prefix, place, item in rows:
        if isinstance(item, SpanExample) and item.uid in first:
            item = f"{prefix}: field 'id': duplicate id {item.uid!r} (first at {first[item.uid]})"
        if isinstance(item, str):
            if not skip_bad_rows:
                raise UserError(item)
            skipped.append(item)
            continue
        labelled = item.answers is not None
        if has_labels is not None and labelled != has_labels:
            state = "labelled" if has_labels else "unlabelled"
            raise UserError(
                f"{prefix}: field 'answers': {'given' if labelled else 'missing'}, but earlier"
                f" questions are {state} (a split is either all labelled or all unlabelled)"
            )
        has_labels = labelled
        first[item.uid] = place
        examples.append(item)
    if not examples:
        why = f" ({len(skipped)} bad questions skipped; first: {skipped[0]})" if skipped else ""
        raise UserError(f"{path}: no questions{why}")
    return ReadResult(
        examples=examples,  # type: ignore[arg-type]  # a span kind's examples
        skipped=skipped,
        has_labels=bool(has_labels),
        source_sha256=hashlib.sha256(raw).hexdigest(),
        source_bytes=len(raw),
    )


_Row = tuple[str, str, "SpanExample | str"]
"""(the prefix of its messages, where it is, the question or the message of its problem)."""


# --- SQuAD JSON ------------------------------------------------------------------------------------------


def _squad_rows(path: Path, raw: bytes) -> Iterator[_Row]:
    document = _parse_json(path, raw)
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise UserError(f"{path}: field 'data': {_expected('a list of articles', data, document)}")
    for a, article in enumerate(data):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            got = _expected("a list", paragraphs, article)
            raise UserError(f"{path}: data[{a}]: field 'paragraphs': {got}")
        for p, paragraph in enumerate(paragraphs):
            place = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict):
                raise UserError(f"{path}: {place}: expected an object, got {_json_type(paragraph)}")
            try:
                context = _text(paragraph, "context")
            except _Problem as problem:
                raise UserError(f"{path}: {place}: {problem}") from None
            qas = paragraph.get("qas")
            if not isinstance(qas, list):
                raise UserError(f"{path}: {place}: field 'qas': {_expected('a list', qas, paragraph)}")
            for q, qa in enumerate(qas):
                where = f"{place}.qas[{q}]"
                if not isinstance(qa, dict):
                    raise UserError(f"{path}: {where}: expected an object, got {_json_type(qa)}")
                try:
                    uid = _uid(qa)
                except _Problem as problem:
                    yield f"{path}: {where}", where, f"{path}: {where}: {problem}"
                    continue
                prefix = f"{path}: qa '{uid}'"
                try:
                    yield prefix, where, _squad_example(uid, qa, context)
                except _Problem as problem:
                    yield prefix, where, f"{prefix}: {problem}"


def _squad_example(uid: str, qa: dict[str, object], context: str) -> SpanExample:
    question = _text(qa, "question")
    answers_value = qa.get("answers")
    impossible = qa.get("is_impossible")
    if impossible is not None and type(impossible) is not bool:
        raise _Problem("is_impossible", f"expected true or false, got {_json_type(impossible)}")
    if answers_value is None:
        if impossible:
            return SpanExample(uid, question, context, ())
        return SpanExample(uid, question, context, None)
    if not isinstance(answers_value, list):
        raise _Problem("answers", f"expected a list of answers, got {_json_type(answers_value)}")
    answers = []
    for i, answer in enumerate(answers_value):
        if not isinstance(answer, dict):
            raise _Problem(f"answers[{i}]", f"expected an object, got {_json_type(answer)}")
        key = f"answers[{i}]"
        text, start = answer.get("text"), answer.get("answer_start")
        answers.append(_answer(f"{key}.text", text, f"{key}.answer_start", start, context))
    _check_impossible(impossible, answers)
    return SpanExample(uid, question, context, tuple(answers))


def _check_impossible(impossible: object, answers: list[SpanAnswer]) -> None:
    if impossible is True and answers:
        raise _Problem("is_impossible", f"true, but the question has {len(answers)} answer(s)")
    if impossible is False and not answers:
        raise _Problem("answers", "empty, but is_impossible is false")


def _parse_json(path: Path, raw: bytes) -> object:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start + 1})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: invalid JSON: {error.msg} (column {error.colno})") from None


# --- flat JSONL ------------------------------------------------------------------------------------------


def _jsonl_rows(path: Path, raw: bytes) -> Iterator[_Row]:
    lines = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
    for line_no, line in enumerate(lines.split(b"\n"), 1):
        if not line.strip():
            continue
        prefix = f"{path}:{line_no}"
        try:
            yield prefix, f"line {line_no}", _jsonl_example(line)
        except _Problem as problem:
            yield prefix, f"line {line_no}", f"{prefix}: {problem}"


def _jsonl_example(line: bytes) -> SpanExample:
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise _Problem(None, f"not UTF-8 text (byte {error.start + 1})") from None
    except json.JSONDecodeError as error:
        raise _Problem(None, f"invalid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(obj, dict):
        raise _Problem(None, f"expected a JSON object, got {_json_type(obj)}")
    uid = _uid(obj)
    try:
        question, context = _text(obj, "question"), _text(obj, "context")
        value = obj.get("answers")
        if value is None:
            return SpanExample(uid, question, context, None)
        if not isinstance(value, dict):
            wanted = "{'text': [...], 'answer_start': [...]}"
            raise _Problem("answers", f"expected {wanted}, got {_json_type(value)}")
        texts, starts = value.get("text"), value.get("answer_start")
        for key, items in (("answers.text", texts), ("answers.answer_start", starts)):
            if not isinstance(items, list):
                raise _Problem(key, f"expected a list, got {_json_type(items)}")
        assert isinstance(texts, list) and isinstance(starts, list)
        if len(texts) != len(starts):
            raise _Problem("answers", f"{len(texts)} texts but {len(starts)} answer_start values")
        answers = tuple(
            _answer(f"answers.text[{i}]", text, f"answers.answer_start[{i}]", start, context)
            for i, (text, start) in enumerate(zip(texts, starts, strict=True))
        )
    except _Problem as problem:
        raise _Problem(None, f"qa '{uid}': {problem}") from None
    return SpanExample(uid, question, context, answers)


# --- fields ----------------------------------------------------------------------------------------------


def _uid(obj: dict[str, object]) -> str:
    uid = obj.get("id")
    if type(uid) is int:
        return str(uid)
    if type(uid) is not str:
        raise _Problem("id", "missing" if uid is None else f"expected a string, got {_json_type(uid)}")
    if not uid.strip():
        raise _Problem("id", "empty")
    return uid


def _text(obj: dict[str, object], key: str) -> str:
    value = obj.get(key)
    if type(value) is not str:
        raise _Problem(key, "missing" if value is None else f"expected a string, got {_json_type(value)}")
    if not value.strip():
        raise _Problem(key, "empty")
    return value


def _answer(text_key: str, text: object, start_key: str, start: object, context: str) -> SpanAnswer:
    if type(text) is not str:
        raise _Problem(text_key, "missing" if text is None else f"expected a string, got {_json_type(text)}")
    if not text.strip():
        raise _Problem(text_key, "empty")
    if type(start) is not int:
        got = "missing" if start is None else f"expected a character offset, got {_json_type(start)}"
        raise _Problem(start_key, got)
    found = context[start : start + len(text)] if start >= 0 else ""
    if found != text:
        where = f"is not at character {start} of the context (it reads {_shown(found)})"
        raise _Problem(start_key, f"the answer {_shown(text)} {where}")
    return SpanAnswer(text, start)


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _expected(what: str, value: object, parent: object) -> str:
    if not isinstance(parent, dict):
        return f"expected {what} inside an object, got {_json_type(parent)}"
    return "missing" if value is None else f"expected {what}, got {_json_type(value)}"


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
