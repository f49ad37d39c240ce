"""The grid's results file: one JSON object per finished (regime, method, task, n_train, seed), appended.

A line is appended (and fsynced) only after its run finished, so a row present means the cell is done. A kill
in the middle of an append leaves a last line without its newline: ``read_results(..., repair=True)`` cuts it
off (the run is redone); any other unreadable line is an error naming ``file:line``. The fields after
``train_argv`` came later: a row without them (an older results file) reads with None there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_utils.errors import UserError

Key = tuple[str, str, str, int, int]  # regime, method, task, n_train, seed


@dataclass(frozen=True)
class ResultRow:
    regime: str
    method: str
    task: str
    n_train: int
    seed: int
    metric: str  # the task's first metric: the one compared
    dev: float | None  # on the first dev split, at the best checkpoint (chosen on dev)
    test: float | None  # on the first test split, scored once by the best checkpoint (None: unlabelled)
    dev_metrics: dict[str, float]
    test_metrics: dict[str, float]
    steps: int  # optimizer steps of the whole run
    timed_steps: int  # steps taken by the process that finished the run (fewer after a resume)
    train_step_seconds: float  # that process's training time without evaluation and checkpoints
    wall_seconds: float  # that process's wall time, start-up, evaluation and checkpoints included
    resumed: bool  # continued a killed run with --resume
    out_dir: str  # relative to the folder the grid ran in (older rows: as given, often absolute)
    flags: list[str]  # the grid's train.py flags for this cell (common, per size, method, learning rate)
    train_argv: list[str]  # the whole train.py command line, its paths portable (see paths.py)
    learning_rate: float | None = None  # what the run trained with (None: not recorded)
    lr_source: str | None = None  # a selected rate's origin: "tuned" (own tuning) or the source method
    copy_of: str | None = None  # the tuning row (its method, M@lr=...) that this tune-seed row copies
    best_step: int | None = None  # the best dev checkpoint's step; == steps: still improving at the end
    epochs: int | None = None  # epochs completed (fewer than asked after an early stop)
    failure: str | None = None  # a tuning candidate whose run failed: why (dev/test None: the worst)

    @property
    def key(self) -> Key:
        return (self.regime, self.method, self.task, self.n_train, self.seed)

    @property
    def seconds_per_step(self) -> float | None:
        return self.train_step_seconds / self.timed_steps if self.timed_steps > 0 else None

    @property
    def train_seconds(self) -> float | None:
        """Training time of all the run's steps (per-step time x steps: a resumed run counts whole)."""
        per_step = self.seconds_per_step
        return per_step * self.steps if per_step is not None else None

    @property
    def not_converged(self) -> bool | None:
        """True when the best checkpoint is the last step's (dev was still improving); None: unknown."""
        return None if self.best_step is None else self.best_step >= self.steps

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=False)


_TYPES: dict[str, tuple[type, ...]] = {
    "regime": (str,),
    "method": (str,),
    "task": (str,),
    "n_train": (int,),
    "seed": (int,),
    "metric": (str,),
    "dev": (int, float, type(None)),
    "test": (int, float, type(None)),
    "dev_metrics": (dict,),
    "test_metrics": (dict,),
    "steps": (int,),
    "timed_steps": (int,),
    "train_step_seconds": (int, float),
    "wall_seconds": (int, float),
    "resumed": (bool,),
    "out_dir": (str,),
    "flags": (list,),
    "train_argv": (list,),
    "learning_rate": (int, float, type(None)),
    "lr_source": (str, type(None)),
    "copy_of": (str, type(None)),
    "best_step": (int, type(None)),
    "epochs": (int, type(None)),
    "failure": (str, type(None)),
}
FIELDS = tuple(field.name for field in dataclasses.fields(ResultRow))
OPTIONAL = frozenset(field.name for field in dataclasses.fields(ResultRow) if field.default is None)
assert set(_TYPES) == set(FIELDS)


def parse_row(data: Any, where: str) -> ResultRow:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object")
    for name in FIELDS:
        if name not in data:
            if name in OPTIONAL:
                continue
            raise UserError(f"{where}: key '{name}': missing")
        value = data[name]
        bad_bool = isinstance(value, bool) and bool not in _TYPES[name]
        if bad_bool or not isinstance(value, _TYPES[name]):
            raise UserError(f"{where}: key '{name}': unexpected value {value!r}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UserError(f"{where}: key '{unknown[0]}': unknown")
    return ResultRow(**{name: data[name] for name in FIELDS if name in data})


def read_results(path: Path, *, repair: bool = False) -> list[ResultRow]:
    """The rows of ``path`` (none if it does not exist). A torn last line (no newline, the start of a JSON
    object but not a whole one) is ignored, and with ``repair`` cut from the file so the next append starts on
    a fresh line; any other unreadable last line is an error, never cut. Repeated keys: error."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # after the last newline: b"" when the file ends cleanly
    if torn.strip():
        try:
            json.loads(torn)
        except ValueError:
            if not torn.lstrip().startswith(b"{"):  # not the start of a row: not ours to cut
                raise UserError(
                    f"{path}:{len(lines) + 1}: not a JSON object (and not a row torn by a kill)"
                ) from None
            if repair:
                with path.open("r+b") as handle:
                    handle.truncate(len(data) - len(torn))
        else:  # a whole row that only lacks its newline: keep it
            lines.append(torn)
            if repair:
                with path.open("ab") as handle:
                    handle.write(b"\n")
    rows: list[ResultRow] = []
    seen: dict[Key, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data_line = json.loads(line)
        except ValueError:
            raise UserError(f"{where}: not a JSON object") from None
        row = parse_row(data_line, where)
        if row.key in seen:
            raise UserError(f"{where}: repeats the row of line {seen[row.key]} for {row.key}")
        seen[row.key] = number
        rows.append(row)
    return rows


def append_row(path: Path, row: ResultRow) -> None:
    """Append one line and fsync it: once this returns, the cell counts as done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(row.to_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
