"""Task definitions: one typed, frozen declaration per task, loaded from a YAML file.

Our spelling is lowercase (``task_type: classification``); mt-dnn's published spelling loads unchanged
(``task_type: Classification``, ``metric_meta: [ACC, F1]``, ``loss: CeCriterion``, ``enable_san``).
Every mistake in the file is a ``UserError`` naming the file, the task and the key.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from data_utils.enums import LOSS_ALIASES, DataFormat, HeadType, LossName, TaskType, parse_enum
from data_utils.errors import UserError
from data_utils.kinds import KINDS, DataKind, ErrorFactory, find_kind, get_kind
from data_utils.metrics import parse_metric
from data_utils.yaml_io import load_yaml

__all__ = [
    "AdvOverrides",
    "DataFormat",
    "HeadType",
    "LossName",
    "TaskDef",
    "TaskType",
    "load_task_defs",
    "parse_task_def",
    "read_number",
]

DEFAULT_DROPOUT_P = 0.1
DEFAULT_SPLITS: tuple[str, ...] = ("train", "dev", "test")
_TASK_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")

DEFAULT_MASK_PROBABILITY = 0.15


@dataclass(frozen=True)
class AdvOverrides:
    """Per-task adversarial hyper-parameters; ``None`` means "use the run's flag"."""

    alpha: float | None = None
    epsilon: float | None = None
    step_size: float | None = None
    noise_var: float | None = None
    k: int | None = None


@dataclass(frozen=True)
class TaskDef:
    """One task. ``task_type`` is its kind's name (a ``TaskType`` for the built-in kinds); ``kind`` is that
    kind, injected by the parser (or looked up in the global registry when a ``TaskDef`` is built directly)
    and left out of equality, ``repr`` and ``to_dict``."""

    name: str
    task_type: str
    data_format: DataFormat
    labels: tuple[str, ...] | None
    n_class: int
    metrics: tuple[str, ...]
    loss: LossName
    adv_loss: LossName
    dropout_p: float
    head: HeadType = HeadType.LINEAR
    split_names: tuple[str, ...] = DEFAULT_SPLITS
    loss_weight: float = 1.0
    adv: AdvOverrides = field(default_factory=AdvOverrides)
    # mask_lm only: the share of tokens chosen for prediction (BERT's 15%, of which 80/10/10 are replaced by
    # [MASK] / a random token / kept). A mask_lm task's ``n_class`` is 0: the encoder's vocabulary decides it.
    mask_probability: float = DEFAULT_MASK_PROBABILITY
    # The kind's own parsed YAML keys (a frozen dataclass of that kind's, e.g. span's window settings); None
    # for kinds without such keys. ``DataKind.own_fields`` fills it, ``own_dict`` writes it back.
    settings: Any = None
    kind: DataKind = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", get_kind(self.task_type))

    @property
    def train_split(self) -> str:
        return "train"

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """Every split but train: the dev and test splits, in declaration order."""
        return tuple(split for split in self.split_names if split != self.train_split)

    @property
    def dev_splits(self) -> tuple[str, ...]:
        return tuple(split for split in self.eval_splits if "test" not in split)

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(split for split in self.eval_splits if "test" in split)

    def label_index(self) -> dict[str, int] | None:
        """Label name -> class index, or ``None`` when labels are numeric."""
        return None if self.labels is None else {label: i for i, label in enumerate(self.labels)}

    def to_dict(self) -> dict[str, Any]:
        """Our spelling; ``parse_task_def(name, to_dict())`` gives back an equal ``TaskDef``."""
        out: dict[str, Any] = {
            "task_type": str(self.task_type),
            "data_format": self.data_format.value,
            "metrics": [str(metric) for metric in self.metrics],
            "loss": self.loss.value,
            "adv_loss": self.adv_loss.value,
            "dropout_p": self.dropout_p,
            "head": self.head.value,
            "split_names": list(self.split_names),
            "loss_weight": self.loss_weight,
        }
        out.update(self.kind.own_dict(self))
        if self.labels is not None:
            out["labels"] = list(self.labels)
        for adv_field in fields(AdvOverrides):
            value = getattr(self.adv, adv_field.name)
            if value is not None:
                out[f"adv_{adv_field.name}"] = value
        return out


class _Context:
    """Formats errors as ``<file>: task '<name>': key '<key>': <problem>``."""

    def __init__(self, source: str, task: str) -> None:
        self.source = source
        self.task = task

    def error(self, key: str | None, problem: str) -> UserError:
        where = f"{self.source}: task '{self.task}'"
        if key is not None:
            where += f": key '{key}'"
        return UserError(f"{where}: {problem}")


# Keys accepted in a task entry. mt-dnn's spellings map onto ours. Two of mt-dnn's keys are accepted and have
# no effect: `encoder_type` (the encoder comes from the model checkpoint, not the task) and `kd_loss`
# (its knowledge distillation is not implemented here; the value is still checked, so a typo is an error).
_KEY_ALIASES = {"metric_meta": "metrics", "enable_san": "head", "task_weight": "loss_weight"}
_COMMON_KEYS = {
    "task_type",
    "data_format",
    "labels",
    "n_class",
    "metrics",
    "loss",
    "adv_loss",
    "kd_loss",
    "dropout_p",
    "head",
    "split_names",
    "loss_weight",
    "adv_alpha",
    "adv_epsilon",
    "adv_step_size",
    "adv_noise_var",
    "adv_k",
    "encoder_type",
}
_REQUIRED_KEYS = ("task_type", "data_format")


def load_task_defs(
    path: str | Path,
    *,
    default_dropout_p: float = DEFAULT_DROPOUT_P,
    kinds: Mapping[str, DataKind] | None = None,
) -> dict[str, TaskDef]:
    """Read a task-definition YAML (``load_yaml``: safe, no duplicate keys, YAML 1.2 booleans) into
    ``{task name: TaskDef}`` in file order. ``kinds``: the task kinds by name; ``None``: the global
    registry (``data_utils.kinds.KINDS``, filled by importing ``mt_dnn.tasks``: see its load_task_defs)."""
    path = Path(path)
    document = load_yaml(path, what="task definitions")
    if not isinstance(document, Mapping):
        kind = "empty" if document is None else type(document).__name__
        raise UserError(f"{path}: expected a mapping of task name -> task definition, got {kind}")
    if not document:
        raise UserError(f"{path}: defines no tasks")
    task_defs: dict[str, TaskDef] = {}
    for key, entry in document.items():
        name = _task_name(key, path)
        if name in task_defs:  # ``1:`` and ``"1":`` are two YAML keys but one task
            raise UserError(f"{path}: task '{name}': defined twice")
        task_defs[name] = parse_task_def(
            name, entry, source=str(path), default_dropout_p=default_dropout_p, kinds=kinds
        )
    return task_defs


def _task_name(name: object, path: Path) -> str:
    """A task name as written: text, or an integer (``1:`` reads as ``1``); ``null:``/``true:`` are refused
    rather than turned into ``None``/``True``."""
    if isinstance(name, str):
        return name
    if isinstance(name, int) and not isinstance(name, bool):
        return str(name)
    raise UserError(f"{path}: task name {name!r} is not text; quote it in the YAML")


def parse_task_def(
    name: str,
    entry: object,
    *,
    source: str = "<task_def>",
    default_dropout_p: float = DEFAULT_DROPOUT_P,
    kinds: Mapping[str, DataKind] | None = None,
) -> TaskDef:
    """Validate one task entry (either spelling) into a ``TaskDef``; ``kinds`` as for ``load_task_defs``."""
    registry = KINDS if kinds is None else kinds
    ctx = _Context(source, name)
    if not _TASK_NAME.match(name):
        raise ctx.error(None, "task names may use only letters, digits, '_' and '-'")
    if not isinstance(entry, Mapping):
        raise ctx.error(None, f"expected a mapping of keys, got {type(entry).__name__}")
    raw = _canonical_keys(entry, ctx, registry)
    for key in _REQUIRED_KEYS:
        if key not in raw:
            raise ctx.error(key, "missing required key")

    try:
        kind = find_kind(raw["task_type"], registry)
    except ValueError as error:
        raise ctx.error("task_type", str(error)) from None
    task_type = kind.name
    data_format = _enum(DataFormat, raw, "data_format", ctx)
    if data_format not in kind.formats:
        allowed = ", ".join(kind.formats)
        raise ctx.error("data_format", f"{data_format} does not fit a {task_type} task (use: {allowed})")
    _foreign_keys(raw, kind, registry, ctx)

    labels = _labels(raw, ctx)
    n_class = kind.n_class(raw.get("n_class"), labels, ctx.error)
    metrics = _metrics(raw, kind, ctx)
    loss = _loss(raw, "loss", kind.losses, task_type, ctx)
    adv_loss = _loss(raw, "adv_loss", kind.divergences, task_type, ctx)
    _loss(raw, "kd_loss", kind.divergences, task_type, ctx)  # checked, then ignored
    head = _head(raw, kind, ctx)
    dropout_p = _number(raw, "dropout_p", ctx, default=default_dropout_p, low=0.0, high=1.0, high_open=True)
    split_names = _split_names(raw, ctx)
    loss_weight = _number(raw, "loss_weight", ctx, default=1.0, low=0.0, low_open=True)
    own = kind.own_fields(raw, ctx.error)
    adv = AdvOverrides(
        alpha=_optional_number(raw, "adv_alpha", ctx),
        epsilon=_optional_number(raw, "adv_epsilon", ctx),
        step_size=_optional_number(raw, "adv_step_size", ctx),
        noise_var=_optional_number(raw, "adv_noise_var", ctx),
        k=_optional_int(raw, "adv_k", ctx, low=1),
    )
    return TaskDef(
        name=name,
        task_type=task_type,
        data_format=data_format,
        labels=labels,
        n_class=n_class,
        metrics=metrics,
        loss=loss,
        adv_loss=adv_loss,
        dropout_p=dropout_p,
        head=head,
        split_names=split_names,
        loss_weight=loss_weight,
        adv=adv,
        kind=kind,
        **own,
    )


def _foreign_keys(
    raw: Mapping[str, object], kind: DataKind, kinds: Mapping[str, DataKind], ctx: _Context
) -> None:
    """A key another kind owns (``mask_probability`` on a classification task): an error naming the owners."""
    for key, value in raw.items():
        if value is None or key in _COMMON_KEYS or key in kind.yaml_keys:
            continue
        owners = [other.name for other in kinds.values() if key in other.yaml_keys]
        raise ctx.error(key, f"applies to {' and '.join(owners)} tasks only, not to a {kind.name} task")


def _canonical_keys(
    entry: Mapping[object, object], ctx: _Context, kinds: Mapping[str, DataKind]
) -> dict[str, object]:
    known = set(_COMMON_KEYS).union(*(kind.yaml_keys for kind in kinds.values()))
    raw: dict[str, object] = {}
    for key, value in entry.items():
        key_text = str(key)
        canonical = _KEY_ALIASES.get(key_text, key_text)
        if canonical not in known:
            close = difflib.get_close_matches(key_text, sorted(known | set(_KEY_ALIASES)), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ctx.error(key_text, f"unknown key{hint}")
        if canonical in raw:
            raise ctx.error(key_text, f"given twice (also as '{canonical}' or an alias of it)")
        if key_text == "enable_san":
            if not isinstance(value, bool):
                raise ctx.error(key_text, f"expected true or false, got {value!r}")
            value = HeadType.SAN.value if value else HeadType.LINEAR.value
        raw[canonical] = value
    return raw


def _enum(enum_cls: type[Any], raw: Mapping[str, object], key: str, ctx: _Context) -> Any:
    try:
        return parse_enum(enum_cls, raw[key])
    except ValueError as error:
        raise ctx.error(key, str(error)) from None


def _labels(raw: Mapping[str, object], ctx: _Context) -> tuple[str, ...] | None:
    value = raw.get("labels")
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ctx.error("labels", "expected a non-empty list of label names")
    labels: list[str] = []
    for item in value:
        # A boolean (``true``) or float label would never match the data's text: ask for quotes.
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ctx.error("labels", f"label {item!r} is not a string; quote it in the YAML")
        labels.append(str(item))
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ctx.error("labels", f"duplicate label(s): {', '.join(duplicates)}")
    return tuple(labels)


def _metrics(raw: Mapping[str, object], kind: DataKind, ctx: _Context) -> tuple[str, ...]:
    value = raw.get("metrics")
    if value is None:
        return kind.default_metrics
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ctx.error("metrics", "expected a non-empty list of metric names")
    metrics: list[str] = []
    for item in value:
        try:
            metric = parse_metric(str(item))
        except ValueError as error:
            raise ctx.error("metrics", str(error)) from None
        if metric not in kind.allowed_metrics:
            raise ctx.error("metrics", f"metric '{metric}' does not apply to a {kind.name} task")
        if metric not in metrics:
            metrics.append(metric)
    return tuple(metrics)


def _loss(
    raw: Mapping[str, object],
    key: str,
    allowed: tuple[LossName, ...],
    task_type: str,
    ctx: _Context,
) -> LossName:
    value = raw.get(key)
    if value is None:
        return allowed[0]
    try:
        loss = parse_enum(LossName, value, LOSS_ALIASES)
    except ValueError as error:
        raise ctx.error(key, str(error)) from None
    if loss not in allowed:
        names = ", ".join(allowed)
        raise ctx.error(key, f"'{loss}' does not fit a {task_type} task (use: {names})")
    return loss


def _head(raw: Mapping[str, object], kind: DataKind, ctx: _Context) -> HeadType:
    if "head" not in raw:
        return HeadType.LINEAR
    head = _enum(HeadType, raw, "head", ctx)
    if head not in kind.heads:
        servers = " and ".join(other for other in KINDS if head in KINDS[other].heads) or "no"
        raise ctx.error("head", f"the {head.upper()} head serves {servers} tasks, not {kind.name}")
    return head


def _split_names(raw: Mapping[str, object], ctx: _Context) -> tuple[str, ...]:
    value = raw.get("split_names")
    if value is None:
        return DEFAULT_SPLITS
    if not isinstance(value, list) or not value:
        raise ctx.error("split_names", "expected a non-empty list of split names")
    names = [str(item) for item in value]
    for split in names:
        if not _TASK_NAME.match(split):
            raise ctx.error("split_names", f"split name {split!r} may use only letters, digits, '_' and '-'")
    if len(set(names)) != len(names):
        raise ctx.error("split_names", "a split is listed twice")
    return tuple(names)


def _as_number(value: object, key: str, ctx: _Context, convert: Callable[[Any], Any] = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.error(key, f"expected a number, got {value!r}")
    return convert(value)


def _number(
    raw: Mapping[str, object],
    key: str,
    ctx: _Context,
    *,
    default: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    value = raw.get(key)
    if value is None:
        return default
    number = _as_number(value, key, ctx)
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open or high is None else "]"
        upper = "inf" if high is None else high
        raise ctx.error(key, f"{number} is outside {lo}{low}, {upper}{hi}")
    return number


class _Errors:
    """``_number``'s view of an ``ErrorFactory``."""

    def __init__(self, error: ErrorFactory) -> None:
        self.error = error


def read_number(raw: Mapping[str, object], key: str, error: ErrorFactory, **bounds: Any) -> float:
    """A task kind's numeric YAML key: ``default`` when absent, ``low``/``high`` bounds (``*_open``)."""
    return _number(raw, key, _Errors(error), **bounds)  # type: ignore[arg-type]


def _optional_number(raw: Mapping[str, object], key: str, ctx: _Context) -> float | None:
    if raw.get(key) is None:
        return None
    number = _as_number(raw[key], key, ctx)
    if number < 0:
        raise ctx.error(key, f"must be >= 0, got {number}")
    return number


def _optional_int(raw: Mapping[str, object], key: str, ctx: _Context, *, low: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ctx.error(key, f"expected an integer >= {low}, got {value!r}")
    return value
