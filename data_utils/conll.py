"""CoNLL files -> tagged sentences, for per-token tasks (``sequence_labeling``).

One token per line, its columns separated by whitespace: the word first, the tag in the last column (the
columns between, e.g. CoNLL-2003's POS and chunk tags, are ignored). A blank line ends a sentence;
``-DOCSTART-`` lines (document boundaries) are skipped. An unlabelled file has the word alone on each line.
A split is either all labelled or all unlabelled. Tags must be among the task's ``labels:``.

Every problem is a ``UserError`` naming ``file:line``; with ``skip_bad_rows`` a sentence holding a bad line is
skipped instead and its message returned in ``ReadResult.skipped``. Sentences are numbered in file order
from 0; that number is the row's uid.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from data_utils.errors import RowError, UserError
from data_utils.readers import ReadResult
from data_utils.task_def import TaskDef

__all__ = ["DOCSTART", "TaggedSentence", "read_conll"]

DOCSTART = "-DOCSTART-"
_SHOWN_TAGS = 5


@dataclass(frozen=True, slots=True)
class TaggedSentence:
    """One sentence: its words and their tag indices (``label``; ``None`` when the file is unlabelled)."""

    uid: str
    words: tuple[str, ...]
    label: tuple[int, ...] | None


def read_conll(path: str | Path, task_def: TaskDef, *, skip_bad_rows: bool = False) -> ReadResult:
    """Read one CoNLL split file of ``task_def`` (whose ``labels`` are the tags)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror or error}") from None
    tags = task_def.label_index() or {}
    reader = _Sentences(path, tags, skip_bad_rows)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for line_no, raw in enumerate(lines, 1):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        reader.line(line_no, raw)
    reader.end_sentence()
    if not reader.examples:
        why = (
            f" ({len(reader.skipped)} bad sentences skipped; first: {reader.skipped[0]})"
            if reader.skipped
            else ""
        )
        raise UserError(f"{path}: no sentences{why}")
    return ReadResult(
        examples=reader.examples,  # type: ignore[arg-type] # the kind's own example type
        skipped=reader.skipped,
        has_labels=bool(reader.has_labels),
        source_sha256=hashlib.sha256(data).hexdigest(),
        source_bytes=len(data),
    )


class _Sentences:
    """Collects the sentences of one file, line by line."""

    def __init__(self, path: Path, tags: dict[str, int], skip_bad_rows: bool) -> None:
        self.path = path
        self.tags = tags
        self.skip_bad_rows = skip_bad_rows
        self.examples: list[TaggedSentence] = []
        self.skipped: list[str] = []
        self.has_labels: bool | None = None
        self.words: list[str] = []
        self.labels: list[int] = []
        self.problem: str | None = None  # the first bad line of the current sentence

    def line(self, line_no: int, raw: bytes) -> None:
        try:
            text = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError as error:
            self._bad(line_no, RowError(None, f"not UTF-8 text (byte {error.start + 1})"))
            return
        columns = text.split()
        if not columns:
            self.end_sentence()
            return
        if columns[0] == DOCSTART:
            self.end_sentence()
            return
        labelled = len(columns) > 1
        if self.has_labels is not None and labelled != self.has_labels:
            state = "labelled" if self.has_labels else "unlabelled"
            problem = "has a tag" if labelled else "has no tag"
            raise UserError(
                f"{self.path}:{line_no}: field 'tag': the token {problem} but earlier tokens are {state} "
                "(a split is either all labelled or all unlabelled)"
            )
        self.has_labels = labelled
        self.words.append(columns[0])
        if labelled:
            tag = columns[-1]
            index = self.tags.get(tag)
            if index is None:
                self._bad(
                    line_no, RowError("tag", f"{tag!r} is not a label of the task (expected {self._shown()})")
                )
                return
            self.labels.append(index)

    def _shown(self) -> str:
        names = list(self.tags)
        more = ", ..." if len(names) > _SHOWN_TAGS else ""
        return "one of " + ", ".join(repr(name) for name in names[:_SHOWN_TAGS]) + more

    def _bad(self, line_no: int, error: RowError) -> None:
        message = f"{self.path}:{line_no}: {error}"
        if not self.skip_bad_rows:
            raise UserError(message)
        if self.problem is None:
            self.problem = message

    def end_sentence(self) -> None:
        index = len(self.examples) + len(self.skipped)
        if self.problem is not None:
            self.skipped.append(self.problem)
        elif self.words:
            label = tuple(self.labels) if self.has_labels else None
            self.examples.append(TaggedSentence(str(index), tuple(self.words), label))
        self.words, self.labels, self.problem = [], [], None
