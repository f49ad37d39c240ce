"""One extra run beside a grid's cells: a learning-rate edge check or a sensitivity check, resumably.

    python experiments/quality/run_check.py --grid experiments/quality/study.yml --output_dir out/checks \
        --task epistemic --method smart --seed 1 --learning_rate 2.5e-5 [--flags "--epochs 20"]

The run is the grid's cell for (task, method, seed): the same training rows, the grid's and the method's
train.py flags, at ``--learning_rate``, with ``--flags`` appended (train.py takes the last value of a repeated
flag, so they override the grid's). It trains through ``run_grid``'s own machinery and appends one results
row (the grid's schema, see ``results.py``) to ``<output_dir>/results.jsonl``, under the method name
``<method>@lr=<lr>`` plus ``+<flag>=<value>`` per extra flag: a check is compared with the grid's row of the
same seed by hand, never mixed into the grid's own results. Run it again after a kill: a finished check is
skipped, a killed one resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from experiments.quality.data import prepare_data  # noqa: E402
from experiments.quality.grid import RESERVED_FLAGS, Cell, Grid, Regime, check_train_flags, load_grid  # noqa: E402
from experiments.quality.results import ResultRow, append_row, read_results  # noqa: E402
from experiments.quality.runs import Runner, clean_up, run_cell, subprocess_runner  # noqa: E402
from experiments.quality.tuning import lr_spelling  # noqa: E402

RESULTS_FILE = "results.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, required=True, help="the grid YAML whose cell is varied")
    parser.add_argument(
        "--output_dir", type=Path, required=True, help="the check's rows, run and data go here"
    )
    parser.add_argument("--task", required=True, help="one of the grid's tasks")
    parser.add_argument("--method", required=True, help="one of the grid's methods")
    parser.add_argument(
        "--seed", type=int, required=True, help="the seed (training rows and train.py --seed)"
    )
    parser.add_argument("--learning_rate", type=float, required=True, help="the rate to train with")
    parser.add_argument("--n_train", type=int, default=None, help="training rows (default: the task's size)")
    parser.add_argument(
        "--flags", default="", help="extra train.py flags, one shell-quoted string, appended after the grid's"
    )
    parser.add_argument("--model", default=None, help="encoder folder (overrides the grid's 'model')")
    return parser


def check_name(method: str, learning_rate: float, extra: list[str]) -> str:
    """``smart@lr=2.5e-05``, ``plain@lr=1e-04+early_stopping_patience=16``: the method, rate and overrides."""
    parts = [f"{method}@lr={lr_spelling(learning_rate)}"]
    index = 0
    while index < len(extra):
        flag = extra[index].lstrip("-")
        has_value = index + 1 < len(extra) and not extra[index + 1].startswith("--")
        parts.append(f"{flag}={extra[index + 1]}" if has_value else flag)
        index += 2 if has_value else 1
    return "+".join(parts)


def check_cell(grid: Grid, args: argparse.Namespace) -> tuple[Grid, Cell]:
    """The grid with the check as one more method (the varied method's flags and the extras), and its cell."""
    if args.task not in grid.tasks:
        known = ", ".join(grid.tasks)
        raise UserError(f"--task: '{args.task}' is not a task of {grid.path} (expected one of: {known})")
    if args.method not in grid.methods:
        known = ", ".join(grid.methods)
        raise UserError(
            f"--method: '{args.method}' is not a method of {grid.path} (expected one of: {known})"
        )
    if args.learning_rate <= 0:
        raise UserError(f"--learning_rate: expected a positive rate, got {args.learning_rate}")
    sizes = grid.sizes(args.task)
    n_train = args.n_train if args.n_train is not None else sizes[0]
    if n_train not in sizes:
        raise UserError(f"--n_train: {n_train} is not a size of {args.task} in {grid.path} ({list(sizes)})")
    try:
        extra = shlex.split(args.flags)
    except ValueError as error:
        raise UserError(f"--flags: {error}") from None
    for flag in extra:
        if flag.split("=", 1)[0] in (*RESERVED_FLAGS, "--learning_rate"):
            raise UserError(f"--flags: {flag.split('=', 1)[0]} is set by the harness (or by its own option)")
    name = check_name(args.method, args.learning_rate, extra)
    methods = {name: (*grid.methods[args.method], *extra)}
    checked = dataclasses.replace(
        grid, methods=methods, learning_rates=(), tune_seed=None, lr_from={}, lr_only=(), seeds_by_method={}
    )
    cell = Cell(Regime.SINGLE, name, (args.task,), n_train, args.seed, learning_rate=args.learning_rate)
    return checked, cell


def run_check(
    grid: Grid, cell: Cell, output_dir: Path, model: str, runner: Runner = subprocess_runner
) -> ResultRow:
    """Train the check (or resume it) unless its row is there; return its row."""
    results_path = output_dir / RESULTS_FILE
    (key,) = cell.row_keys()
    done = {row.key: row for row in read_results(results_path, repair=True)}
    if key in done:
        return done[key]
    task_defs = grid.task_defs()
    cache_dir = prepare_data(grid, task_defs, output_dir, cell.n_train, cell.seed, model, cell.tasks)
    (row,) = run_cell(cell, grid, task_defs, output_dir, cache_dir, model, runner)
    append_row(results_path, row)
    clean_up(cell, grid, output_dir)
    return row


@exit_on_user_error
def main(argv: list[str] | None = None, runner: Runner = subprocess_runner) -> ResultRow:
    args = build_parser().parse_args(argv)
    grid, cell = check_cell(load_grid(args.grid), args)
    check_train_flags(grid)
    model = args.model or grid.model
    if model is None:
        from experiments.common import minilm_path

        model = minilm_path()
    row = run_check(grid, cell, args.output_dir, model, runner)
    test = "-" if row.test is None else f"{row.test:.2f}"
    dev = "-" if row.dev is None else f"{row.dev:.2f}"
    print(
        f"{cell.describe()}: {row.task} dev {row.metric} {dev} test {test} (best step {row.best_step} of "
        f"{row.steps}, {row.wall_seconds:.0f} s) -> {args.output_dir / RESULTS_FILE}"
    )
    return row


if __name__ == "__main__":
    main()
