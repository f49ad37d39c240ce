"""Run a grid of (regime x method x task x training-set size x seed) through the real train.py, resumably.

    python experiments/quality/run_grid.py --grid experiments/quality/grid.yml --output_dir out/quality
        [--model DIR] [--methods NAME,...] [--tasks NAME,...] [--seeds N,...] [--reuse OTHER/results.jsonl]
        [--dry_run]

Writes ``<output_dir>/results.jsonl`` (one row per finished run and task: see ``results.py``), one folder per
cell under ``<output_dir>/runs/<regime>/<method>/<tasks>/n<N>-s<SEED>/`` (train.py's logs, ``results.json``,
``train.out``) and the subsampled data under ``<output_dir>/data/``. Run the same command again after a kill:
finished cells are skipped, a killed run continues from its last checkpoint (``--resume``). A cell whose row
was made with other flags than the grid now gives is an error, not a silent mix. ``--methods`` runs only some
of the grid's methods (the cheap ones first, say); a later run without it adds the rest. ``--seeds`` runs
only the cells of some seeds: processes with disjoint ``--seeds`` can share one ``--output_dir`` (each
appends whole rows; each cell has its own folder), so a grid's seeds spread over the cores. ``--reuse`` takes
the rows of another grid's results file that are the same single-task runs (same flags, encoder, task
definition and data: see ``reuse.py``) instead of training them again.

With ``learning_rates`` in the grid, each tuned method first runs one cell per candidate at ``tune_seed``
(folders ``n<N>-s<SEED>-lr<LR>``, rows of method ``M@lr=<LR>``); its tune-seed row is then a copy of the
winning run and its other seeds train with ``--learning_rate <winner>``. ``--dry_run`` says "waits for lr
tuning of M" for a cell whose rate is not known yet. ``--methods`` naming a method that takes its rate from an
unnamed one (``lr_from``) runs that source's tuning cells too (skipped when their rows are there), not its
seeds. Learning-rate tuning runs at ``tune_seed``, so a process whose ``--seeds`` lacks it skips the cells
whose rate is not chosen yet (and says so): run it again once the tuning rows are in. The rows' paths are
relative to the current folder (``paths.py``): run from the repo root.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from data_utils.task_def import TaskDef  # noqa: E402
from experiments.quality.data import check_sizes, prepare_data  # noqa: E402
from experiments.quality.grid import (  # noqa: E402
    Cell,
    CellKind,
    Grid,
    Regime,
    cells,
    check_train_flags,
    load_grid,
)
from experiments.quality.results import Key, ResultRow, append_row, read_results  # noqa: E402
from experiments.quality.reuse import reusable_rows  # noqa: E402
from experiments.quality.runs import (  # noqa: E402
    STATE_FILE,
    Runner,
    clean_up,
    copied_row,
    failed_row,
    run_cell,
    subprocess_runner,
)
from experiments.quality.tuning import tuning_method, winning_lr  # noqa: E402

RESULTS_FILE = "results.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, required=True, help="grid YAML (experiments/quality/grid.yml)")
    parser.add_argument("--output_dir", type=Path, required=True, help="results, runs and data go here")
    parser.add_argument("--model", default=None, help="encoder folder (overrides the grid's 'model')")
    parser.add_argument(
        "--methods", default=None, help="comma-separated subset of the grid's methods to run (default: all)"
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help="comma-separated subset of the grid's tasks (default: all); two processes on disjoint tasks, "
        "each with its own --output_dir, run a single-task grid in parallel",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated subset of the grid's seeds (default: all); processes with disjoint --seeds can "
        "share one --output_dir",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="another grid's results.jsonl: take its rows of the same single-task runs instead of rerunning",
    )
    parser.add_argument("--dry_run", action="store_true", help="list the cells and their state, run nothing")
    return parser


def select_methods(grid: Grid, names: str | None) -> Grid:
    """The grid with only the named methods, in the grid's order; an unknown name is a one-line error.

    A named method that takes its learning rate from an unnamed one (``lr_from``) keeps that source's tuning
    cells (rows already in the results file count as done), but not the source's own seeds."""
    if names is None:
        return grid
    chosen = _chosen(names, "--methods", "method", list(grid.methods), grid.path)
    sources = {grid.lr_from[name] for name in chosen if name in grid.lr_from} - set(chosen)
    methods = {name: flags for name, flags in grid.methods.items() if name in chosen or name in sources}
    lr_only = tuple(name for name in methods if name in sources)
    return dataclasses.replace(grid, methods=methods, lr_only=lr_only)


def select_tasks(grid: Grid, names: str | None) -> Grid:
    """The grid with only the named tasks, in the grid's order; an unknown name is a one-line error."""
    if names is None:
        return grid
    chosen = _chosen(names, "--tasks", "task", list(grid.tasks), grid.path)
    if any(regime is not Regime.SINGLE for regime in grid.regimes) and len(chosen) < len(grid.tasks):
        raise UserError("--tasks: a grid with multi-task regimes trains all its tasks together")
    tasks = tuple(task for task in grid.tasks if task in chosen)
    by_task = {task: sizes for task, sizes in grid.n_train_by_task.items() if task in chosen}
    n_train = tuple(dict.fromkeys(size for task in tasks for size in grid.sizes(task)))
    return dataclasses.replace(grid, tasks=tasks, n_train=n_train, n_train_by_task=by_task)


def _chosen(names: str, flag: str, kind: str, known: list[str], path: Path) -> list[str]:
    """The comma-separated ``names``, each one of ``known``; else one error line naming ``flag``."""
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    for name in chosen:
        if name not in known:
            raise UserError(
                f"{flag}: '{name}' is not a {kind} of {path} (expected some of: {', '.join(known)})"
            )
    if not chosen:
        raise UserError(f"{flag}: expected at least one {kind} name")
    return chosen


def _check_done(cell: Cell, grid: Grid, done: dict[Key, ResultRow], results_path: Path) -> bool:
    """True when every row of the cell is there, made with the flags (and, for the multi-task regimes, the
    task set) the grid gives it now; rows made otherwise are an error rather than a silent mix."""
    present = [done[key] for key in cell.row_keys() if key in done]
    flags = list(grid.cell_flags(cell))
    for row in present:
        if row.flags != flags:
            raise UserError(
                f"{results_path}: {cell.describe()} was run with flags {row.flags}, the grid now gives "
                f"{flags}: use another --output_dir (or remove those rows)"
            )
        multi_task = _multi_task_set(row)
        if multi_task is not None and multi_task != list(grid.tasks):
            raise UserError(
                f"{results_path}: {cell.describe()} comes from a multi-task run on {multi_task}, the grid's "
                f"tasks are now {list(grid.tasks)}: use another --output_dir"
            )
    return len(present) == len(cell.tasks)


def _multi_task_set(row: ResultRow) -> list[str] | None:
    """The tasks of the multi-task run behind an mtl or mtl+finetune row (None for a single-task row)."""
    argv = row.train_argv
    if row.regime == Regime.MTL:
        return argv[argv.index("--train_datasets") + 1].split(",")
    if row.regime == Regime.MTL_FINETUNE:  # <output_dir>/runs/mtl/<method>/<a+b>/n<N>-s<S>/best
        return Path(argv[argv.index("--init_checkpoint") + 1]).parents[1].name.split("+")
    return None


def select_seeds(grid: Grid, names: str | None) -> frozenset[int] | None:
    """The seeds named by ``--seeds`` (None: all); a seed that is not the grid's is a one-line error."""
    if names is None:
        return None
    known = grid.all_seeds()
    chosen: set[int] = set()
    for name in (part.strip() for part in names.split(",")):
        if not name:
            continue
        if not name.lstrip("-").isdigit() or int(name) not in known:
            listed = ", ".join(str(seed) for seed in known)
            raise UserError(f"--seeds: '{name}' is not a seed of {grid.path} (expected some of: {listed})")
        chosen.add(int(name))
    if not chosen:
        raise UserError("--seeds: expected at least one seed")
    return frozenset(chosen)


@dataclass
class _GridRun:
    """One pass over the grid's cells: the rows done so far (keyed), and what each cell needs to run."""

    grid: Grid
    output_dir: Path
    model: str
    runner: Runner
    dry_run: bool
    reuse: Path | None
    seeds: frozenset[int] | None
    done: dict[Key, ResultRow]
    candidates: dict[Key, ResultRow]
    task_defs: dict[str, TaskDef]

    @property
    def results_path(self) -> Path:
        return self.output_dir / RESULTS_FILE

    def resolve(self, cell: Cell) -> Cell:
        """The cell with the learning rate it takes from tuning, once the tuning rows are all in."""
        if not cell.pending:
            return cell
        assert cell.lr_from is not None
        winner = winning_lr(self.grid, self.done, cell.lr_from, cell.tasks[0], cell.n_train)
        return cell if winner is None else dataclasses.replace(cell, learning_rate=winner)

    def process(self, cell: Cell, tag: str) -> None:
        if cell.pending and self.seeds is not None and self.grid.tune_seed not in self.seeds:
            print(f"{tag}: skipped, waits for lr tuning of {cell.lr_from} (at seed {self.grid.tune_seed}, "
                  f"not in --seeds): run again once its rows are in", flush=True)  # fmt: skip
            return
        if cell.pending:
            if not self.dry_run:  # the tuning cells come first: only a bug gets here
                raise UserError(f"{tag}: the learning-rate tuning of {cell.lr_from} has not finished")
            print(f"{tag}: waits for lr tuning of {cell.lr_from}", flush=True)
            return
        if _check_done(cell, self.grid, self.done, self.results_path):
            print(f"{tag}: done", flush=True)
            if not self.dry_run:
                clean_up(cell, self.grid, self.output_dir)
            return
        if cell.kind is CellKind.COPY:
            self.copy_winner(cell, tag)
            return
        if self.dry_run:
            resumable = (cell.out_dir(self.output_dir) / STATE_FILE).is_file()
            print(f"{tag}: {'to resume' if resumable else 'to run'}", flush=True)
            return
        self.train(cell, tag)

    def copy_winner(self, cell: Cell, tag: str) -> None:
        """A tuned method's tune-seed row: the row of its winning tuning run, under its own name."""
        assert cell.learning_rate is not None
        source = tuning_method(cell.method, cell.learning_rate)
        if self.dry_run:
            print(f"{tag}: to copy from {source} (the winning tuning run)", flush=True)
            return
        (task,) = cell.tasks
        row = copied_row(self.done[(cell.regime.value, source, task, cell.n_train, cell.seed)], cell)
        self.save([row])
        print(f"{tag}: copied from {source} (the winning tuning run)", flush=True)

    def train(self, cell: Cell, tag: str) -> None:
        cache_dir = prepare_data(
            self.grid, self.task_defs, self.output_dir, cell.n_train, cell.seed, self.model, cell.tasks
        )
        reused, why_not = reusable_rows(
            cell, self.grid, self.task_defs, self.candidates, self.output_dir, cache_dir, self.model
        )
        if reused is not None:
            self.save(reused)
            print(f"{tag}: reused from {self.reuse}", flush=True)
            return
        if why_not is not None:
            print(f"{tag}: not reusing {self.reuse}'s row: {why_not}", flush=True)
        try:
            rows = run_cell(
                cell, self.grid, self.task_defs, self.output_dir, cache_dir, self.model, self.runner
            )
        except UserError as error:
            if cell.kind is not CellKind.TUNE:
                raise
            # A candidate learning rate that diverges is a result (the worst), not the end of the grid.
            rows = [failed_row(cell, self.grid, self.task_defs, self.output_dir, str(error))]
        self.save(rows)
        clean_up(cell, self.grid, self.output_dir)
        print(f"{tag}: {_summary(rows)}", flush=True)

    def save(self, rows: list[ResultRow]) -> None:
        for row in rows:
            if row.key not in self.done:  # a kill between the rows of one mtl run: the first one is there
                append_row(self.results_path, row)
                self.done[row.key] = row


def run_grid(
    grid: Grid,
    output_dir: Path,
    model: str,
    runner: Runner,
    *,
    dry_run: bool = False,
    reuse: Path | None = None,
    seeds: frozenset[int] | None = None,
) -> list[ResultRow]:
    """Run every unfinished cell in order (only those of ``seeds``, when given; taking ``reuse``'s rows of the
    same runs) and return all the rows of the results file."""
    results_path = output_dir / RESULTS_FILE
    done = {row.key: row for row in read_results(results_path, repair=not dry_run)}
    if reuse is not None and not reuse.is_file():
        raise UserError(f"--reuse {reuse}: no such results file")
    candidates = {row.key: row for row in read_results(reuse)} if reuse is not None else {}
    task_defs = grid.task_defs()
    if not dry_run:
        check_sizes(grid, task_defs)
    state = _GridRun(grid, output_dir, model, runner, dry_run, reuse, seeds, done, candidates, task_defs)
    todo = [cell for cell in cells(grid) if seeds is None or cell.seed in seeds]
    for index, cell in enumerate(todo, start=1):
        resolved = state.resolve(cell)
        state.process(resolved, f"[{index}/{len(todo)}] {resolved.describe()}")
    return read_results(results_path)


def _summary(rows: list[ResultRow]) -> str:
    parts = [f"{row.task} dev {row.metric} {_number(row.dev)} test {_number(row.test)}" for row in rows]
    first = rows[0]
    resumed = ", resumed" if first.resumed else ""
    return f"{'; '.join(parts)} ({first.steps} steps, {first.wall_seconds:.0f} s{resumed})"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@exit_on_user_error
def main(argv: list[str] | None = None, runner: Runner = subprocess_runner) -> list[ResultRow]:
    args = build_parser().parse_args(argv)
    grid = select_tasks(select_methods(load_grid(args.grid), args.methods), args.tasks)
    check_train_flags(grid)
    seeds = select_seeds(grid, args.seeds)
    model = args.model or grid.model
    if model is None:
        from experiments.common import minilm_path

        model = minilm_path()
    rows = run_grid(grid, args.output_dir, model, runner, dry_run=args.dry_run, reuse=args.reuse, seeds=seeds)
    if not args.dry_run:
        print(f"{len(rows)} rows in {args.output_dir / RESULTS_FILE}")
    return rows


if __name__ == "__main__":
    main()
