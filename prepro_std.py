"""Turn canonical task data into the token-id cache, once per tokenizer.

    python prepro_std.py --task_def experiments/glue/glue_task_def.yml --root_dir data/canonical \\
        --model bert-base-uncased [--max_seq_len 512] [--tasks mnli,rte] [--cache_name NAME] \\
        [--skip_bad_rows] [--allow_missing_splits]

Reads ``<root_dir>/<task>_<split>.jsonl`` (else ``.tsv``) for every split of every task and writes
``<root_dir>/<cache_name>/<task>_<split>/`` plus ``manifest.json``. ``cache_name`` defaults to the model
path's last meaningful component.
"""

from __future__ import annotations

import argparse
import sys

from data_utils.errors import UserError, exit_on_user_error
from data_utils.prepro import preprocess
from mt_dnn.tasks import load_task_defs

_SHOWN_SKIPS = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepro_std.py", description="Encode canonical task data (JSONL or TSV) into the token-id cache."
    )
    parser.add_argument("--task_def", required=True, help="task-definition YAML")
    parser.add_argument("--root_dir", required=True, help="folder holding <task>_<split>.jsonl (or .tsv)")
    parser.add_argument("--model", required=True, help="tokenizer / model path or hub id (a fast tokenizer)")
    parser.add_argument("--max_seq_len", type=int, default=512, help="truncate longer inputs (default 512)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks to encode (default: all)")
    parser.add_argument(
        "--cache_name", default=None, help="cache folder under root_dir (default: from --model)"
    )
    parser.add_argument(
        "--skip_bad_rows", action="store_true", help="skip and count bad rows instead of failing"
    )
    parser.add_argument(
        "--allow_missing_splits",
        action="store_true",
        help="skip split files that are absent instead of failing",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    task_defs = load_task_defs(args.task_def)
    tasks = None
    if args.tasks is not None:
        tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
        unknown = [task for task in tasks if task not in task_defs]
        if unknown or not tasks:
            named = ", ".join(repr(task) for task in unknown) or "none"
            raise UserError(
                f"--tasks: task(s) {named} not defined in {args.task_def} (defined: {', '.join(task_defs)})"
            )
    summary = preprocess(
        task_defs,
        args.root_dir,
        args.model,
        max_seq_len=args.max_seq_len,
        tasks=tasks,
        cache_name=args.cache_name,
        skip_bad_rows=args.skip_bad_rows,
        allow_missing_splits=args.allow_missing_splits,
        progress=not args.no_progress,
    )
    width = max((len(key) for key in [*summary["splits"], *summary["missing"]]), default=0)
    for key, entry in summary["splits"].items():
        labels = "" if entry["has_labels"] else "  (unlabelled)"
        print(
            f"{key:<{width}}  rows {entry['rows']:>9,}  truncated {entry['truncated']:>7,}  "
            f"skipped {entry['skipped']:>5,}{labels}"
        )
    for key, messages in summary["skipped_rows"].items():
        for message in messages[:_SHOWN_SKIPS]:
            print(f"skipped: {message}", file=sys.stderr)
        if len(messages) > _SHOWN_SKIPS:
            print(f"skipped: ... and {len(messages) - _SHOWN_SKIPS} more in {key}", file=sys.stderr)
    for key in summary["missing"]:
        print(f"{key:<{width}}  missing (skipped)")
    print(f"cache: {summary['cache_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
