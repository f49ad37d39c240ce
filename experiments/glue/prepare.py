"""Turn the official GLUE folder (as ``download_glue_data.py`` unpacks it) into our canonical JSONL.

Usage (from the repo root)::

    python experiments/glue/prepare.py --glue_dir glue_data --output_dir data/glue [--tasks cola,mnli,...]

Writes ``<output_dir>/<task>_<split>.jsonl`` with rows ``{"uid", "label", "premise"[, "hypothesis"]}`` (test
splits have no label) for the tasks of ``experiments/glue/glue_task_def.yml``. Files are read the way GLUE
writes them: tab-separated, no quoting (a ``"`` is text), columns found by header name; CoLA's train and dev
files have no header. A row with the wrong number of fields, or a file not in UTF-8, stops the run with
``file:line``; QQP's train and dev files hold a few rows of the wrong width, which are skipped, counted and
listed instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from experiments.canonical import (  # noqa: E402
    FileResult,
    Summary,
    parse_names,
    print_summary,
    read_utf8,
    write_rows,
)

TASK_DEF = Path(__file__).resolve().parent / "glue_task_def.yml"


@dataclass(frozen=True)
class GlueFile:
    """One official file: where it is, which of our splits it becomes, and whether it has labels."""

    path: str  # relative to the GLUE folder
    split: str
    labelled: bool


@dataclass(frozen=True)
class GlueTask:
    """Which columns hold the id, the texts and the label (by header name; by position when headerless)."""

    name: str
    files: tuple[GlueFile, ...]
    premise: str
    hypothesis: str | None
    label: str
    uid: str | None = "index"  # where a file lacks this column (or None): the line number
    headerless: dict[str, int] = field(default_factory=dict)  # column -> position, for files without a header
    headerless_files: frozenset[str] = frozenset()
    skip_malformed: bool = False


def _splits(folder: str, test_name: str = "test.tsv") -> tuple[GlueFile, ...]:
    return (
        GlueFile(f"{folder}/train.tsv", "train", True),
        GlueFile(f"{folder}/dev.tsv", "dev", True),
        GlueFile(f"{folder}/{test_name}", "test", False),
    )


TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            "cola",
            _splits("CoLA"),
            premise="sentence",
            hypothesis=None,
            label="label",
            headerless={"sentence": 3, "label": 1},
            headerless_files=frozenset({"CoLA/train.tsv", "CoLA/dev.tsv"}),
        ),
        GlueTask("sst", _splits("SST-2"), premise="sentence", hypothesis=None, label="label"),
        GlueTask("mrpc", _splits("MRPC"), premise="#1 String", hypothesis="#2 String", label="Quality"),
        GlueTask("stsb", _splits("STS-B"), premise="sentence1", hypothesis="sentence2", label="score"),
        GlueTask(
            "qqp",
            _splits("QQP"),
            premise="question1",
            hypothesis="question2",
            label="is_duplicate",
            uid="id",
            skip_malformed=True,
        ),
        GlueTask(
            "mnli",
            (
                GlueFile("MNLI/train.tsv", "train", True),
                GlueFile("MNLI/dev_matched.tsv", "matched_dev", True),
                GlueFile("MNLI/dev_mismatched.tsv", "mismatched_dev", True),
                GlueFile("MNLI/test_matched.tsv", "matched_test", False),
                GlueFile("MNLI/test_mismatched.tsv", "mismatched_test", False),
            ),
            premise="sentence1",
            hypothesis="sentence2",
            label="gold_label",
        ),
        GlueTask("qnli", _splits("QNLI"), premise="question", hypothesis="sentence", label="label"),
        GlueTask("rte", _splits("RTE"), premise="sentence1", hypothesis="sentence2", label="label"),
        GlueTask("wnli", _splits("WNLI"), premise="sentence1", hypothesis="sentence2", label="label"),
        GlueTask(
            "ax",
            (GlueFile("diagnostic/diagnostic.tsv", "test", False),),
            premise="sentence1",
            hypothesis="sentence2",
            label="label",
        ),
    )
}


def read_glue_file(glue_dir: Path, task: GlueTask, source: GlueFile) -> FileResult:
    path = glue_dir / source.path
    if not path.is_file():
        raise UserError(f"{path}: not found (task {task.name}; expected the official GLUE layout)")
    lines = read_utf8(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    if source.path in task.headerless_files:
        positions, width, first = dict(task.headerless), None, 0
    else:
        if not lines:
            raise UserError(f"{path}: empty file (expected a header line)")
        header = lines[0].split("\t")
        wanted = [task.premise, task.hypothesis, task.label if source.labelled else None]
        missing = [name for name in wanted if name is not None and name not in header]
        if missing:
            raise UserError(f"{path}:1: header has no column {missing[0]!r} (columns: {', '.join(header)})")
        # The id column where the file has one (SST-2's and MRPC's train/dev have none: the line number).
        positions = {
            name: header.index(name) for name in [*wanted, task.uid] if name is not None and name in header
        }
        width, first = len(header), 1
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for number, line in enumerate(lines[first:], start=first + 1):
        fields = line.split("\t")
        problem = None
        if width is not None and len(fields) != width:
            problem = f"{len(fields)} fields, the header has {width}"
        elif len(fields) <= max(positions.values()):
            problem = f"{len(fields)} fields, expected at least {max(positions.values()) + 1}"
        if problem is not None:
            if task.skip_malformed:
                skipped.append(f"{path}:{number}: {problem}")
                continue
            raise UserError(f"{path}:{number}: {problem}")
        uid = fields[positions[task.uid]] if task.uid in positions else str(number)
        row: dict[str, Any] = {
            "uid": f"{task.name}-{source.split}-{uid}",
            "premise": fields[positions[task.premise]],
        }
        if task.hypothesis is not None:
            row["hypothesis"] = fields[positions[task.hypothesis]]
        if source.labelled:
            row["label"] = _label(task, fields[positions[task.label]], path, number)
        rows.append(row)
    return FileResult(rows, skipped)


def _label(task: GlueTask, value: str, path: Path, number: int) -> Any:
    if task.name != "stsb":
        return value
    try:
        return float(value)
    except ValueError:
        raise UserError(f"{path}:{number}: column {task.label!r}: {value!r} is not a number") from None


def prepare(glue_dir: Path, output_dir: Path, tasks: Sequence[str]) -> Summary:
    """Write every split of ``tasks``; returns ``{task: {split: rows, "skipped": [...]}}``."""
    summary: Summary = {}
    for name in tasks:
        task = TASKS[name]
        summary[name] = {"skipped": []}
        for source in task.files:
            result = read_glue_file(glue_dir, task, source)
            write_rows(output_dir / f"{name}_{source.split}.jsonl", result.rows)
            summary[name][source.split] = len(result.rows)
            summary[name]["skipped"].extend(result.skipped)
    return summary


def parse_tasks(value: str) -> list[str]:
    return parse_names(value, list(TASKS), "GLUE task")


@exit_on_user_error
def main(argv: list[str] | None = None) -> Summary:
    parser = argparse.ArgumentParser(description="Official GLUE files -> canonical JSONL.")
    parser.add_argument(
        "--glue_dir", required=True, help="the folder download_glue_data.py made (CoLA/, SST-2/, ...)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--tasks", type=parse_tasks, default=list(TASKS))
    args = parser.parse_args(argv)
    summary = prepare(Path(args.glue_dir), Path(args.output_dir), args.tasks)
    print_summary(summary, "malformed rows skipped")
    return summary


if __name__ == "__main__":
    main()
