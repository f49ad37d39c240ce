"""One cell = one train.py run in its own folder: its command line, resume-or-restart, and its result rows.

A cell folder with ``last/trainer_state.pt`` (the run was killed after a checkpoint) is continued with
``--resume``, which reaches the same weights as an uninterrupted run; a folder without it is emptied and the
run starts over. The runner is any ``(train.py argv, log path) -> exit status``; the default runs train.py in
a subprocess (its memory is its own, and a kill of the grid kills it). The runner gets absolute paths; the
rows record them portably (``paths.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data_utils.atomic import recover_interrupted_replace
from data_utils.errors import UserError
from data_utils.task_def import TaskDef
from experiments.quality.grid import LR_FLAG, Cell, CellKind, Grid, Regime
from experiments.quality.paths import portable_argv, portable_path
from experiments.quality.results import ResultRow

ROOT = Path(__file__).resolve().parents[2]
TRAIN_PY = ROOT / "train.py"
LOG_FILE = "train.out"
STATE_FILE = Path("last") / "trainer_state.pt"
CHECKPOINT_CONFIG = "mtdnn.json"

Runner = Callable[[Sequence[str], Path], int]


def subprocess_runner(argv: Sequence[str], log_path: Path) -> int:
    """``python train.py ARGV`` with stdout and stderr appended to ``log_path``; returns its exit status."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log_path.open("a", encoding="utf-8") as log:
        completed = subprocess.run(
            [sys.executable, str(TRAIN_PY), *argv], stdout=log, stderr=subprocess.STDOUT, env=env, check=False
        )
    return completed.returncode


def mtl_source(cell: Cell, grid: Grid, output_dir: Path) -> Path:
    """The best checkpoint of the multi-task run a fine-tuning cell starts from."""
    source = Cell(Regime.MTL, cell.method, grid.tasks, cell.n_train, cell.seed)
    return source.out_dir(output_dir) / "best"


def train_argv(
    cell: Cell, grid: Grid, output_dir: Path, cache_dir: Path, model: str, *, resume: bool
) -> list[str]:
    init = mtl_source(cell, grid, output_dir) if cell.regime is Regime.MTL_FINETUNE else Path(model)
    argv = [
        "--task_def", str(grid.task_def.resolve()),
        "--data_dir", str(cache_dir.resolve()),
        "--init_checkpoint", str(init.resolve()) if init.exists() else str(init),
        "--train_datasets", ",".join(cell.tasks),
        "--output_dir", str(cell.out_dir(output_dir).resolve()),
        "--seed", str(cell.seed),
        "--no-progress",
    ]  # fmt: skip
    if resume:
        argv.append("--resume")
    return argv + list(grid.cell_flags(cell))


def row_argv(
    cell: Cell, grid: Grid, output_dir: Path, cache_dir: Path, model: str, *, resume: bool
) -> list[str]:
    """``train_argv`` as a row records it (portable paths): what ``reuse.py`` compares a row with."""
    return portable_argv(train_argv(cell, grid, output_dir, cache_dir, model, resume=resume))


def _checkpoint_metadata(folder: Path) -> dict[str, Any]:
    path = folder / CHECKPOINT_CONFIG
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("metadata", {})


def start_state(out: Path) -> int | None:
    """The step a killed run will resume from, or None when there is nothing to resume (folder emptied)."""
    recover_interrupted_replace(out / "last")  # killed between a save's two renames: its old copy is kept
    if (out / STATE_FILE).is_file():
        return int(_checkpoint_metadata(out / "last").get("step", 0))
    if out.exists():
        shutil.rmtree(out)
    return None


def _last_line(path: Path) -> str:
    if not path.is_file():
        return ""
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def run_cell(
    cell: Cell,
    grid: Grid,
    task_defs: dict[str, TaskDef],
    output_dir: Path,
    cache_dir: Path,
    model: str,
    runner: Runner,
) -> list[ResultRow]:
    """Run (or continue) one cell and return its rows; a failed run is one error line naming its log."""
    if cell.kind is CellKind.COPY or cell.pending:
        raise ValueError(f"{cell.describe()}: not a cell to train")
    out = cell.out_dir(output_dir)
    if (
        cell.regime is Regime.MTL_FINETUNE
        and not (mtl_source(cell, grid, output_dir) / CHECKPOINT_CONFIG).is_file()
    ):
        raise UserError(
            f"{mtl_source(cell, grid, output_dir)}: the multi-task checkpoint to fine-tune is missing"
        )
    resumed_from = start_state(out)
    out.mkdir(parents=True, exist_ok=True)
    argv = train_argv(cell, grid, output_dir, cache_dir, model, resume=resumed_from is not None)
    log = out / LOG_FILE
    start = time.perf_counter()
    status = runner(argv, log)
    wall = time.perf_counter() - start
    if status != 0:
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        raise UserError(f"{cell.describe()}: train.py {how}; see {log} ({_last_line(log)})")
    results_path = out / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8"))
    if not results.get("finished"):
        raise UserError(f"{results_path}: the run did not finish")
    best_eval = _checkpoint_metadata(out / "best").get("eval", {})
    timed_steps = int(results["steps"]) - (resumed_from or 0)
    step_seconds = results["train_seconds"] - results["eval_seconds"] - results["checkpoint_seconds"]
    rows = []
    for task in cell.tasks:
        task_def = task_defs[task]
        metric = task_def.metrics[0].value
        dev = best_eval.get(f"{task}_{task_def.dev_splits[0]}", {}) if task_def.dev_splits else {}
        test_eval = results.get("test_eval", {})
        test = test_eval.get(f"{task}_{task_def.test_splits[0]}", {}) if task_def.test_splits else {}
        rows.append(
            ResultRow(
                regime=cell.regime.value,
                method=cell.row_method,
                task=task,
                n_train=cell.n_train,
                seed=cell.seed,
                metric=metric,
                dev=dev.get(metric),
                test=test.get(metric),
                dev_metrics=dev,
                test_metrics=test,
                steps=int(results["steps"]),
                timed_steps=timed_steps,
                train_step_seconds=round(float(step_seconds), 3),
                wall_seconds=round(wall, 3),
                resumed=resumed_from is not None,
                out_dir=portable_path(out),
                flags=list(grid.cell_flags(cell)),
                train_argv=portable_argv(argv),
                learning_rate=_learning_rate(results, argv),
                lr_source=cell.lr_source,
                best_step=_optional_step(results.get("best_step")),
                epochs=_optional_step(results.get("epochs")),
            )
        )
    return rows


def _learning_rate(results: dict[str, Any], argv: list[str]) -> float | None:
    """The rate the run trained with: train.py's recorded config, else the last --learning_rate flag."""
    recorded = results.get("config", {}).get("learning_rate")
    if isinstance(recorded, int | float) and not isinstance(recorded, bool):
        return float(recorded)
    values = [argv[index + 1] for index, flag in enumerate(argv[:-1]) if flag == LR_FLAG]
    return float(values[-1]) if values else None


def _optional_step(value: Any) -> int | None:
    """A step or epoch count from results.json; None when absent (or -1: no best checkpoint)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def copied_row(row: ResultRow, cell: Cell) -> ResultRow:
    """The tune-seed row of a tuned method: its winning tuning run's row, under the method's own name."""
    return dataclasses.replace(row, method=cell.method, lr_source=cell.lr_source, copy_of=row.method)


def failed_row(
    cell: Cell, grid: Grid, task_defs: dict[str, TaskDef], output_dir: Path, failure: str
) -> ResultRow:
    """The row of a tuning run that failed (diverged, crashed): no scores, so selection ranks it last."""
    (task,) = cell.tasks
    flags = list(grid.cell_flags(cell))
    return ResultRow(
        regime=cell.regime.value,
        method=cell.row_method,
        task=task,
        n_train=cell.n_train,
        seed=cell.seed,
        metric=task_defs[task].metrics[0].value,
        dev=None,
        test=None,
        dev_metrics={},
        test_metrics={},
        steps=0,
        timed_steps=0,
        train_step_seconds=0.0,
        wall_seconds=0.0,
        resumed=False,
        out_dir=portable_path(cell.out_dir(output_dir)),
        flags=flags,
        train_argv=[],
        learning_rate=cell.learning_rate,
        failure=failure,
    )


def clean_up(cell: Cell, grid: Grid, output_dir: Path) -> None:
    """After the rows are saved: drop ``last/`` (optimizer state; only needed to resume) and, unless the grid
    keeps checkpoints, ``best/`` (a multi-task run keeps it: its fine-tuning cells start from it)."""
    out = cell.out_dir(output_dir)
    shutil.rmtree(out / "last", ignore_errors=True)
    if not grid.keep_checkpoints and cell.regime is not Regime.MTL:
        shutil.rmtree(out / "best", ignore_errors=True)
