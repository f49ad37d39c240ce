"""Copy tasks' canonical JSONL files into another folder with a seeded subsample of each train split.

    python experiments/subsample.py --task_def experiments/scitail/scitail_task_def.yml \
        --data_dir data/scitail --output_dir out/scitail/p1/data --tasks scitail --fraction 0.01 [--seed 13]
    python experiments/subsample.py --task_def experiments/glue/glue_task_def.yml \
        --data_dir data/glue --output_dir out/small --tasks rte,mnli --max_rows 64

Every ``<task>_<split>.jsonl`` of the named tasks (splits from the task definitions; absent files are left
out) is copied unchanged except the train file, of which ``round(fraction x rows)`` rows (at least one) or at
most ``--max_rows`` rows are kept, drawn with the seed and kept in file order. The run scripts use it for the
domain-adaptation runs (0.1%, 1%, 10%, 100% of the training data) and for their ``MAX_TRAIN_ROWS`` knob.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_utils.atomic import atomic_write_text  # noqa: E402
from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from data_utils.task_def import TaskDef  # noqa: E402
from experiments.canonical import read_utf8  # noqa: E402
from mt_dnn.tasks import load_task_defs  # noqa: E402


def sample_size(total: int, fraction: float | None, max_rows: int | None) -> int:
    """Rows to keep of ``total``: ``round(fraction * total)`` (at least 1), capped by ``max_rows``."""
    size = total if fraction is None else max(1, round(fraction * total))
    return min(size, total if max_rows is None else max_rows)


def subsample_lines(lines: list[str], size: int, seed: int, task: str) -> list[str]:
    """``size`` of ``lines`` drawn with ``(seed, task)``, in their original order."""
    if size >= len(lines):
        return lines
    keep = sorted(random.Random(f"{seed}:{task}:train").sample(range(len(lines)), size))
    return [lines[i] for i in keep]


def subsample_tasks(
    data_dir: Path,
    output_dir: Path,
    tasks: list[TaskDef],
    fraction: float | None,
    max_rows: int | None,
    seed: int,
) -> dict[str, tuple[int, int]]:
    """Write the copies; returns ``{task: (train rows kept, train rows in the source)}``."""
    kept: dict[str, tuple[int, int]] = {}
    output_dir.mkdir(parents=True, exist_ok=True)
    for task_def in tasks:
        task = task_def.name
        train = data_dir / f"{task}_{task_def.train_split}.jsonl"
        if not train.is_file():
            raise UserError(f"{train}: not found (task {task}; run the benchmark's prepare.py first)")
        for split in task_def.eval_splits:
            source = data_dir / f"{task}_{split}.jsonl"
            if source.is_file():
                shutil.copyfile(source, output_dir / source.name)
        lines = [line for line in read_utf8(train).splitlines(keepends=True) if line.strip()]
        chosen = subsample_lines(lines, sample_size(len(lines), fraction, max_rows), seed, task)
        atomic_write_text(output_dir / train.name, "".join(chosen))
        kept[task] = (len(chosen), len(lines))
    return kept


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1]")
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, tuple[int, int]]:
    parser = argparse.ArgumentParser(description="Copy tasks' JSONL files with a seeded subsample of train.")
    parser.add_argument("--task_def", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--tasks", required=True, help="comma-separated")
    parser.add_argument("--fraction", type=_fraction, help="share of the train rows to keep, in (0, 1]")
    parser.add_argument("--max_rows", type=_positive, help="keep at most this many train rows")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    task_defs = load_task_defs(args.task_def)
    names = [task.strip() for task in args.tasks.split(",") if task.strip()]
    unknown = [name for name in names if name not in task_defs]
    if unknown or not names:
        raise UserError(f"--tasks {args.tasks}: not in {args.task_def} (tasks: {', '.join(task_defs)})")
    data_dir, output_dir = Path(args.data_dir), Path(args.output_dir)
    if data_dir.resolve() == output_dir.resolve():
        raise UserError(f"--output_dir {output_dir}: must differ from --data_dir")
    tasks = [task_defs[name] for name in names]
    kept = subsample_tasks(data_dir, output_dir, tasks, args.fraction, args.max_rows, args.seed)
    for task, (n, total) in kept.items():
        print(f"{task}: train {n:,} of {total:,} rows -> {output_dir}")
    return kept


if __name__ == "__main__":
    main()
