"""One extra run beside a grid's cells: a learning-rate edge check or a sensitivity check, resumably.

    python experiments/quality/run_check.py --grid experiments/quality/study.yml --output_dir out/checks \
        --task epistemic --method smart --seed 1 --learning_rate 2.5e-5 [--flags "--epochs 20"]

The run is the grid's cell for (task, method, seed): the same training rows, the grid's and the method's
train.py flags, at ``--learning_rate``, with ``--flags`` appended (train.py takes the last value of a repeated
flag, so they override the grid's). It runs as a grid of that one cell through ``run_grid`` and appends one
results row (the grid's schema, see ``results.py``) to ``<output_dir>/results.jsonl``, under the method name
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
from experiments.quality.grid import LR_FLAG, RESERVED_FLAGS, Grid, Regime, check_train_flags, load_grid  # noqa: E402
from experiments.quality.results import ResultRow  # noqa: E402
from experiments.quality.run_grid import RESULTS_FILE, run_grid  # noqa: E402
from experiments.quality.runs import Runner, subprocess_runner  # noqa: E402
from experiments.quality.tuning import lr_spelling  # noqa: E402


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


def check_grid(grid: Grid, args: argparse.Namespace) -> Grid:
    """The grid cut to the check's one cell: its task, size and seed, and one method (named by
    ``check_name``): the varied method's flags with the extras and ``--learning_rate`` appended. ``run_grid``
    then trains it like any cell (its data, flag check, resume and row)."""
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
        if flag.split("=", 1)[0] in (*RESERVED_FLAGS, LR_FLAG):
            raise UserError(f"--flags: {flag.split('=', 1)[0]} is set by the harness (or by its own option)")
    name = check_name(args.method, args.learning_rate, extra)
    flags = (*grid.methods[args.method], *extra, LR_FLAG, lr_spelling(args.learning_rate))
    return dataclasses.replace(
        grid,
        tasks=(args.task,),
        n_train=(n_train,),
        n_train_by_task={args.task: (n_train,)},
        seeds=(args.seed,),
        seeds_by_method={},
        regimes=(Regime.SINGLE,),
        methods={name: flags},
        learning_rates=(),
        tune_seed=None,
        lr_from={},
        lr_only=(),
    )


@exit_on_user_error
def main(argv: list[str] | None = None, runner: Runner = subprocess_runner) -> ResultRow:
    args = build_parser().parse_args(argv)
    grid = check_grid(load_grid(args.grid), args)
    check_train_flags(grid)
    model = args.model or grid.model
    if model is None:
        from experiments.common import minilm_path

        model = minilm_path()
    (name,) = grid.methods
    rows = run_grid(grid, args.output_dir, model, runner)
    row = next(
        row for row in rows if row.key == (Regime.SINGLE.value, name, args.task, grid.n_train[0], args.seed)
    )
    print(f"{name}: best step {row.best_step} of {row.steps} -> {args.output_dir / RESULTS_FILE}")
    return row


if __name__ == "__main__":
    main()
