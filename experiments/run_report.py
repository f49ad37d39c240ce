"""Print the dev and test scores of finished training runs as one Markdown table (from their results.json).

    python experiments/run_report.py out/scitail/p0.1 out/scitail/p1 out/scitail/p10 out/scitail/p100

One row per run and evaluated split: the run's folder name, ``<task>_<split>``, then each metric. Dev scores
are the last evaluation (``final_eval``), test scores those of the best checkpoint (``test_eval``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_utils.atomic import atomic_write_text  # noqa: E402
from data_utils.errors import UserError, exit_on_user_error  # noqa: E402


def report_rows(run: Path) -> list[tuple[str, str, str, dict[str, float]]]:
    """``(run name, "dev" | "test", "<task>_<split>", metrics)`` for every scored split of ``run``."""
    path = run / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read the run's results ({error})") from None
    rows = []
    for kind, key in (("dev", "final_eval"), ("test", "test_eval")):
        for split, metrics in (results.get(key) or {}).items():
            rows.append((run.name, kind, split, metrics))
    return rows


def format_table(rows: list[tuple[str, str, str, dict[str, float]]]) -> str:
    lines = ["| run | set | split | metrics |", "|---|---|---|---|"]
    for run, kind, split, metrics in rows:
        scores = ", ".join(f"{name} {value:.2f}" for name, value in metrics.items())
        lines.append(f"| {run} | {kind} | {split} | {scores} |")
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Dev/test scores of training runs as a Markdown table.")
    parser.add_argument("runs", nargs="+", help="train.py output folders (each holds results.json)")
    parser.add_argument("--output", help="also write the table here (Markdown)")
    args = parser.parse_args(argv)
    table = format_table([row for run in args.runs for row in report_rows(Path(run))])
    print(table)
    if args.output:
        atomic_write_text(args.output, table + "\n")
    return table


if __name__ == "__main__":
    main()
