"""Turn the official SciTail folder (``SciTailV1.1/`` from ``SciTailV1.1.zip``) into our canonical JSONL.

Usage (from the repo root)::

    python experiments/scitail/prepare.py --scitail_dir SciTailV1.1 --output_dir data/scitail

Reads the tsv format, ``tsv_format/scitail_1.0_{train,dev,test}.tsv``: no header, no quoting (a ``"`` is
text), three tab-separated fields per line, ``premise<TAB>hypothesis<TAB>label`` with the label ``entails``
or ``neutral``. Writes ``<output_dir>/scitail_{train,dev,test}.jsonl`` with rows
``{"uid": "scitail-<split>-<line>", "label", "premise", "hypothesis"}``. A line with another number of
fields or another label stops the run with ``file:line``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from experiments.canonical import FileResult, Summary, print_summary, read_utf8, write_rows  # noqa: E402

TASK = "scitail"
TASK_DEF = Path(__file__).resolve().parent / "scitail_task_def.yml"
SPLITS = ("train", "dev", "test")
LABELS = ("entails", "neutral")
FIELDS = ("premise", "hypothesis", "label")


def read_scitail_file(path: Path, split: str) -> FileResult:
    if not path.is_file():
        raise UserError(f"{path}: not found (expected the official SciTailV1.1/tsv_format layout)")
    result = FileResult()
    lines = read_utf8(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        fields = line.removesuffix("\r").split("\t")
        if len(fields) != len(FIELDS):
            raise UserError(
                f"{path}:{number}: {len(fields)} fields, expected {len(FIELDS)} ({', '.join(FIELDS)})"
            )
        premise, hypothesis, label = fields
        if label not in LABELS:
            raise UserError(f"{path}:{number}: column 'label': {label!r} is not one of {', '.join(LABELS)}")
        result.rows.append(
            {"uid": f"{TASK}-{split}-{number}", "label": label, "premise": premise, "hypothesis": hypothesis}
        )
    return result


def prepare(scitail_dir: Path, output_dir: Path) -> Summary:
    """Write the three splits; returns ``{"scitail": {split: rows, "skipped": []}}``."""
    counts: dict[str, object] = {}
    for split in SPLITS:
        result = read_scitail_file(scitail_dir / "tsv_format" / f"scitail_1.0_{split}.tsv", split)
        write_rows(output_dir / f"{TASK}_{split}.jsonl", result.rows)
        counts[split] = len(result.rows)
    return {TASK: {**counts, "skipped": []}}


@exit_on_user_error
def main(argv: list[str] | None = None) -> Summary:
    parser = argparse.ArgumentParser(description="Official SciTail (tsv format) files -> canonical JSONL.")
    parser.add_argument("--scitail_dir", required=True, help="the SciTailV1.1 folder of SciTailV1.1.zip")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    summary = prepare(Path(args.scitail_dir), Path(args.output_dir))
    print_summary(summary, "rows skipped")
    return summary


if __name__ == "__main__":
    main()
