"""Turn the official SNLI 1.0 folder (``snli_1.0/`` from ``snli_1.0.zip``) into our canonical JSONL.

Usage (from the repo root)::

    python experiments/snli/prepare.py --snli_dir snli_1.0 --output_dir data/snli

Reads ``snli_1.0_{train,dev,test}.jsonl`` (one JSON object per line: ``gold_label``, ``sentence1``,
``sentence2``, ``pairID``, ...) and writes ``<output_dir>/snli_{train,dev,test}.jsonl`` with rows
``{"uid": "snli-<split>-<pairID>", "label", "premise", "hypothesis"}``. Pairs whose ``gold_label`` is ``-``
(no majority among the five annotators) are left out: there is nothing to learn or score; each is counted
and located in the summary. Any other problem (a line that is not JSON, a missing key, an unknown label) stops
the run with ``file:line``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from experiments.canonical import (  # noqa: E402
    FileResult,
    Summary,
    print_summary,
    read_json_lines,
    text_field,
    write_rows,
)

TASK = "snli"
TASK_DEF = Path(__file__).resolve().parent / "snli_task_def.yml"
SPLITS = ("train", "dev", "test")
LABELS = ("entailment", "neutral", "contradiction")
NO_GOLD_LABEL = "-"


def read_snli_file(path: Path, split: str) -> FileResult:
    result = FileResult()
    for number, record in read_json_lines(path):
        label = text_field(record, "gold_label", path, number)
        if label == NO_GOLD_LABEL:
            result.skipped.append(f"{path}:{number}: gold_label '-' (no annotator majority)")
            continue
        if label not in LABELS:
            expected = ", ".join((*LABELS, NO_GOLD_LABEL))
            raise UserError(f"{path}:{number}: key 'gold_label': {label!r} is not one of {expected}")
        result.rows.append(
            {
                "uid": f"{TASK}-{split}-{text_field(record, 'pairID', path, number)}",
                "label": label,
                "premise": text_field(record, "sentence1", path, number),
                "hypothesis": text_field(record, "sentence2", path, number),
            }
        )
    return result


def prepare(snli_dir: Path, output_dir: Path) -> Summary:
    """Write the three splits; returns ``{"snli": {split: rows, "skipped": [...]}}``."""
    counts: dict[str, object] = {}
    skipped: list[str] = []
    for split in SPLITS:
        result = read_snli_file(snli_dir / f"snli_1.0_{split}.jsonl", split)
        write_rows(output_dir / f"{TASK}_{split}.jsonl", result.rows)
        counts[split] = len(result.rows)
        skipped.extend(result.skipped)
    return {TASK: {**counts, "skipped": skipped}}


@exit_on_user_error
def main(argv: list[str] | None = None) -> Summary:
    parser = argparse.ArgumentParser(description="Official SNLI 1.0 files -> canonical JSONL.")
    parser.add_argument("--snli_dir", required=True, help="the snli_1.0 folder of snli_1.0.zip")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    summary = prepare(Path(args.snli_dir), Path(args.output_dir))
    print_summary(summary, "pairs without a gold label left out")
    return summary


if __name__ == "__main__":
    main()
