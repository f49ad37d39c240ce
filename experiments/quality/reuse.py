"""Rows of another grid's results file that are the very runs a cell of this grid would make.

Two grids often share cells: ``grid_mtl.yml``'s single-task cells are ``grid.yml``'s 500-row plain and SMART
cells. ``run_grid.py --reuse OTHER/results.jsonl`` takes such a row instead of training again, and only when
nothing that decides the run differs: a single-task cell (a multi-task cell's checkpoint lives in the other
output folder), the same key (method, task, size, seed), the same train.py flags, task definition and
encoder, and byte-identical data (every split's JSONL and the cache's spec in the other run's data folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from data_utils.task_def import TaskDef
from experiments.quality.data import SPEC_FILE
from experiments.quality.grid import Cell, Grid, Regime
from experiments.quality.results import Key, ResultRow


def _value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def _same_file(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def why_not_reusable(
    row: ResultRow, cell: Cell, grid: Grid, task_defs: Mapping[str, TaskDef], cache_dir: Path, model: str
) -> str | None:
    """None when ``row`` is the run this grid would make for ``cell`` on the data in ``cache_dir``; else why
    not, in a few words."""
    if row.flags != list(grid.flags(cell.method, cell.n_train)):
        return f"other train.py flags {row.flags}"
    if _value(row.train_argv, "--task_def") != str(grid.task_def.resolve()):
        return "another task definition"
    if _value(row.train_argv, "--init_checkpoint") != str(Path(model).resolve()):
        return "another encoder"
    data_dir = _value(row.train_argv, "--data_dir")
    if data_dir is None:
        return "no --data_dir in its command line"
    theirs, ours = Path(data_dir).parent, cache_dir.parent
    names = [SPEC_FILE, *(f"{row.task}_{split}.jsonl" for split in task_defs[row.task].split_names)]
    for name in names:
        if not _same_file(theirs / name, ours / name):
            return f"its {theirs / name} is missing or differs from {ours / name}"
    return None


def reusable_rows(
    cell: Cell,
    grid: Grid,
    task_defs: Mapping[str, TaskDef],
    candidates: Mapping[Key, ResultRow],
    cache_dir: Path,
    model: str,
) -> tuple[list[ResultRow] | None, str | None]:
    """(the rows to take for ``cell``, None) or (None, why not; None when the other file has no such row)."""
    if cell.regime is not Regime.SINGLE:
        return None, None
    rows = [candidates.get(key) for key in cell.row_keys()]
    if any(row is None for row in rows):
        return None, None
    found = [row for row in rows if row is not None]
    for row in found:
        reason = why_not_reusable(row, cell, grid, task_defs, cache_dir, model)
        if reason is not None:
            return None, reason
    return found, None
