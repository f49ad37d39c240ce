"""Each (training-set size, seed) of the grid gets its own data folder: the train subsamples of the grid tasks
that a cell of that size and seed trains (built when the first such cell needs them; with per-task sizes a
folder holds only the tasks of its size), the (optionally capped) dev and test splits, and their token-id
cache.

The train subsample of a task for (n, seed) is the first n rows of one seeded permutation of its train split
(``quality:<task>:train:<seed>``), kept in file order. So it depends on the task, n and the seed only, never
on the method or the regime: every method sees the same rows for a seed, and a comparison across methods is
paired. The sizes are nested (the 500 rows of a seed are among its 2000). The seed is also train.py's
``--seed``. Dev and test caps draw one fixed subsample per task and split, the same for every cell.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from data_utils.atomic import atomic_write_json, atomic_write_text
from data_utils.cache import read_manifest
from data_utils.errors import UserError
from data_utils.prepro import preprocess
from data_utils.task_def import TaskDef
from experiments.common import Row, read_jsonl_rows
from experiments.quality.grid import Grid

CACHE_NAME = "cache"
SPEC_FILE = "spec.json"


def first_of_permutation(total: int, n: int, key: str) -> list[int]:
    """The first ``n`` of a permutation of ``range(total)`` seeded by ``key``, in ascending order."""
    order = list(range(total))
    random.Random(key).shuffle(order)
    return sorted(order[:n])


def train_subsample(rows: Sequence[Row], n: int, task: str, seed: int) -> list[Row]:
    return [rows[i] for i in first_of_permutation(len(rows), n, f"quality:{task}:train:{seed}")]


def eval_subsample(rows: Sequence[Row], limit: int | None, task: str, split: str) -> list[Row]:
    if limit is None or len(rows) <= limit:
        return list(rows)
    return [rows[i] for i in first_of_permutation(len(rows), limit, f"quality:{task}:{split}")]


def data_folder(output_dir: Path, n_train: int, seed: int) -> Path:
    return output_dir / "data" / f"n{n_train}-s{seed}"


def _source(grid: Grid, task_def: TaskDef, split: str) -> Path:
    source = grid.data_dir / f"{task_def.name}_{split}.jsonl"
    if not source.is_file():
        raise UserError(
            f"{source}: not found (key 'data_dir' of {grid.path}); write it with "
            f"python experiments/demo/prepare.py --output_dir {grid.data_dir} --tasks {task_def.name}"
        )
    return source


def _check_size(grid: Grid, task: str, n_train: int, source: Path, available: int) -> None:
    if available < n_train:
        key = f"n_train.{task}" if grid.n_train_by_task else "n_train"
        raise UserError(
            f"{grid.path}: key '{key}': {n_train} rows asked, {source} has {available} "
            "(prepare the task without --max_train, or lower n_train)"
        )


def check_sizes(grid: Grid, task_defs: dict[str, TaskDef]) -> None:
    """Before any run: every task's train split has rows enough for its largest size (the data folders are
    built cell by cell, so this would otherwise fail only when the first cell of that task comes)."""
    for task in grid.tasks:
        source = _source(grid, task_defs[task], task_defs[task].train_split)
        with source.open(encoding="utf-8") as handle:
            available = sum(1 for line in handle if line.strip())
        _check_size(grid, task, max(grid.sizes(task)), source, available)


def _split_rows(grid: Grid, task_def: TaskDef, split: str, n_train: int, seed: int) -> list[Row]:
    source = _source(grid, task_def, split)
    rows = read_jsonl_rows(source)
    if split == task_def.train_split:
        _check_size(grid, task_def.name, n_train, source, len(rows))
        return train_subsample(rows, n_train, task_def.name, seed)
    return _evaluation_rows(grid, task_def, split, rows)


def eval_rows(grid: Grid, task_def: TaskDef, split: str) -> list[Row]:
    """An evaluation split's rows as every cell of the grid scores them (the same for every size and seed)."""
    return _evaluation_rows(grid, task_def, split, read_jsonl_rows(_source(grid, task_def, split)))


def _evaluation_rows(grid: Grid, task_def: TaskDef, split: str, rows: Sequence[Row]) -> list[Row]:
    limit = grid.n_test if split in task_def.test_splits else grid.n_dev
    return eval_subsample(rows, limit, task_def.name, split)


def prepare_data(
    grid: Grid,
    task_defs: dict[str, TaskDef],
    output_dir: Path,
    n_train: int,
    seed: int,
    model: str,
    tasks: Sequence[str],
) -> Path:
    """The cache folder for (n_train, seed) with ``tasks`` in it (a cell's); builds what is missing.

    A task counts as present once the cache's manifest (written last, atomically) lists all its splits, so a
    kill while building leaves it missing and it is built again. A folder built with other settings
    (caps, sequence length) is refused rather than silently reused.
    """
    folder = data_folder(output_dir, n_train, seed)
    cache = folder / CACHE_NAME
    spec = {
        "n_train": n_train,
        "seed": seed,
        "n_dev": grid.n_dev,
        "n_test": grid.n_test,
        "max_seq_len": grid.max_seq_len,
    }
    spec_path = folder / SPEC_FILE
    if spec_path.is_file():
        previous = json.loads(spec_path.read_text(encoding="utf-8"))
        if previous != spec:
            changed = next(key for key in spec if previous.get(key) != spec[key])
            raise UserError(
                f"{spec_path}: built with {changed}={previous.get(changed)!r}, the grid now says "
                f"{spec[changed]!r}: use another --output_dir"
            )
    else:
        atomic_write_json(spec_path, spec)
    listed = read_manifest(cache).get("splits", {})
    missing = [
        task
        for task in tasks
        if not all(f"{task}_{split}" in listed for split in task_defs[task].split_names)
    ]
    for task in missing:
        for split in task_defs[task].split_names:
            rows = _split_rows(grid, task_defs[task], split, n_train, seed)
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            atomic_write_text(folder / f"{task}_{split}.jsonl", text)
    if missing:
        preprocess(
            task_defs,
            folder,
            model,
            max_seq_len=grid.max_seq_len,
            tasks=missing,
            cache_name=CACHE_NAME,
            progress=False,
        )
    return cache
