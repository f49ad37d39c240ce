"""Turn the official ANLI v1.0 folder (``anli_v1.0/`` from ``anli_v1.0.zip``) into our canonical JSONL.

Usage (from the repo root)::

    python experiments/anli/prepare.py --anli_dir anli_v1.0 --output_dir data/anli [--tasks anli_r1,anli]

Reads ``R1/``, ``R2/`` and ``R3/``, each with ``{train,dev,test}.jsonl`` (one JSON object per line:
``uid``, ``context``, ``hypothesis``, ``label`` in ``e``/``n``/``c``, ``reason``, ...). Writes rows
``{"uid": "anli_r<N>-<split>-<uid>", "label", "premise", "hypothesis"}`` for

- each round on its own: ``anli_r1_{train,dev,test}.jsonl``, likewise ``anli_r2`` and ``anli_r3``;
- all rounds, task ``anli``: ``anli_train.jsonl`` (the three train files one after the other),
  ``anli_dev.jsonl`` and ``anli_test.jsonl`` (likewise), and each round's dev and test again as
  ``anli_dev_r<N>.jsonl`` / ``anli_test_r<N>.jsonl``, so one run reports every round and the total.

A line that is not JSON, a missing key or a label other than e/n/c stops the run with ``file:line``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from experiments.canonical import (  # noqa: E402
    FileResult,
    Row,
    Summary,
    parse_names,
    print_summary,
    read_json_lines,
    text_field,
    write_rows,
)

TASK_DEF = Path(__file__).resolve().parent / "anli_task_def.yml"
ROUNDS = ("r1", "r2", "r3")
SPLITS = ("train", "dev", "test")
LABELS = ("e", "n", "c")
COMBINED = "anli"
TASKS = (*(f"anli_{round_}" for round_ in ROUNDS), COMBINED)


def read_anli_file(path: Path, task: str, split: str) -> FileResult:
    result = FileResult()
    for number, record in read_json_lines(path):
        label = text_field(record, "label", path, number)
        if label not in LABELS:
            raise UserError(f"{path}:{number}: key 'label': {label!r} is not one of {', '.join(LABELS)}")
        result.rows.append(
            {
                "uid": f"{task}-{split}-{text_field(record, 'uid', path, number)}",
                "label": label,
                "premise": text_field(record, "context", path, number),
                "hypothesis": text_field(record, "hypothesis", path, number),
            }
        )
    return result


def combined_files(rounds: dict[str, dict[str, list[Row]]]) -> dict[str, list[Row]]:
    """The ``anli`` task's split files from every round's rows: the splits concatenated in round order, and
    each round's dev and test under ``dev_r<N>`` / ``test_r<N>``."""
    files: dict[str, list[Row]] = {split: [] for split in SPLITS}
    for round_ in ROUNDS:
        for split in SPLITS:
            files[split].extend(rounds[round_][split])
    for split in SPLITS[1:]:
        for round_ in ROUNDS:
            files[f"{split}_{round_}"] = rounds[round_][split]
    return files


def prepare(anli_dir: Path, output_dir: Path, tasks: Sequence[str] = TASKS) -> Summary:
    """Write the splits of ``tasks``; returns ``{task: {split: rows, "skipped": []}}``."""
    needed = ROUNDS if COMBINED in tasks else tuple(task.removeprefix("anli_") for task in tasks)
    rounds: dict[str, dict[str, list[Row]]] = {}
    for round_ in needed:
        folder = anli_dir / round_.upper()
        rounds[round_] = {
            split: read_anli_file(folder / f"{split}.jsonl", f"anli_{round_}", split).rows for split in SPLITS
        }
    summary: Summary = {}
    for task in tasks:
        files = combined_files(rounds) if task == COMBINED else rounds[task.removeprefix("anli_")]
        for split, rows in files.items():
            write_rows(output_dir / f"{task}_{split}.jsonl", rows)
        summary[task] = {**{split: len(rows) for split, rows in files.items()}, "skipped": []}
    return summary


def parse_tasks(value: str) -> list[str]:
    return parse_names(value, TASKS, "ANLI task")


@exit_on_user_error
def main(argv: list[str] | None = None) -> Summary:
    parser = argparse.ArgumentParser(description="Official ANLI v1.0 files -> canonical JSONL.")
    parser.add_argument(
        "--anli_dir", required=True, help="the anli_v1.0 folder of anli_v1.0.zip (R1/ R2/ R3/)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--tasks", type=parse_tasks, default=list(TASKS))
    args = parser.parse_args(argv)
    summary = prepare(Path(args.anli_dir), Path(args.output_dir), args.tasks)
    print_summary(summary, "rows skipped")
    return summary


if __name__ == "__main__":
    main()
