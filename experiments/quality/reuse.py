"""Rows of another grid's results file that are the very runs a cell of this grid would make.

Two grids often share cells: ``grid_mtl.yml``'s single-task cells are ``grid.yml``'s 500-row plain and SMART
cells. ``run_grid.py --reuse OTHER/results.jsonl`` takes such a row instead of training again, and only when
nothing that decides the run differs: a single-task cell (a multi-task cell's checkpoint lives in the other
output folder), the same key (method, task, size, seed), the same train.py flags, task definition and
encoder (compared with the command line ``runs.row_argv`` gives the cell here, both spelt by
``paths.portable_path``, so a row of an older version with absolute paths compares too), and byte-identical
data (every split's JSONL and the cache's spec in the other run's data folder). A tuned method's tune-seed row
(a copy of its winning tuning run) is never taken: it is copied here from this grid's own tuning row.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from data_utils.task_def import TaskDef
from experiments.quality.data import SPEC_FILE
from experiments.quality.grid import Cell, CellKind, Grid, Regime
from experiments.quality.paths import PATH_FLAGS, portable_path
from experiments.quality.results import Key, ResultRow
from experiments.quality.runs import row_argv


def _value(argv: list[str], flag: str) -> str | None:
    if flag not in argv[:-1]:
        return None
    value = argv[argv.index(flag) + 1]
    return portable_path(value) if flag in PATH_FLAGS else value


def _same_file(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


# The command-line values (besides the grid's flags) that decide a single-task run; --data_dir is compared by
# content below, --output_dir does not matter.
_SAME_VALUES = {"--task_def": "task definition", "--init_checkpoint": "encoder", "--train_datasets": "tasks",
                "--seed": "seed"}  # fmt: skip


def why_not_reusable(
    row: ResultRow,
    cell: Cell,
    grid: Grid,
    task_defs: Mapping[str, TaskDef],
    output_dir: Path,
    cache_dir: Path,
    model: str,
) -> str | None:
    """None when ``row`` is the run this grid would make for ``cell`` on the data in ``cache_dir``; else why
    not, in a few words."""
    if row.flags != list(grid.cell_flags(cell)):
        return f"other train.py flags {row.flags}"
    ours = row_argv(cell, grid, output_dir, cache_dir, model, resume=False)
    for flag, what in _SAME_VALUES.items():
        if _value(row.train_argv, flag) != _value(ours, flag):
            return f"another {what} ({flag} {_value(row.train_argv, flag)})"
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
    output_dir: Path,
    cache_dir: Path,
    model: str,
) -> tuple[list[ResultRow] | None, str | None]:
    """(the rows to take for ``cell``, None) or (None, why not; None when the other file has no such row)."""
    if cell.regime is not Regime.SINGLE or cell.kind is CellKind.COPY:
        return None, None
    found = [candidates[key] for key in cell.row_keys() if key in candidates]
    if len(found) != len(cell.tasks):
        return None, None
    for row in found:
        reason = why_not_reusable(row, cell, grid, task_defs, output_dir, cache_dir, model)
        if reason is not None:
            return None, reason
    return found, None
