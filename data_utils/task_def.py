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
from data_utils.metrics import METRICS, Metric, parse_metric
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
]

DEFAULT_DROPOUT_P = 0.1
DEFAULT_SPLITS: tuple[str, ...] = ("train", "dev", "test")
_TASK_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")

DEFAULT_METRICS: dict[TaskType, tuple[Metric, ...]] = {
    TaskType.CLASSIFICATION: (Metric.ACC,),
    TaskType.REGRESSION: (Metric.PEARSON, Metric.SPEARMAN),
    TaskType.RANKING: (Metric.ACC, Metric.MRR),
    TaskType.MASK_LM: (Metric.MLM_ACC, Metric.PERPLEXITY),
}
# The task loss each task type allows; the first is the default.
TASK_LOSSES: dict[TaskType, tuple[LossName, ...]] = {
    TaskType.CLASSIFICATION: (LossName.CROSS_ENTROPY,),
    TaskType.REGRESSION: (LossName.MSE,),
    TaskType.RANKING: (LossName.RANK_CROSS_ENTROPY,),
    TaskType.MASK_LM: (LossName.CROSS_ENTROPY,),
}
# Divergences between two model outputs (adversarial and distillation terms); the first is the default.
OUTPUT_DIVERGENCES: dict[TaskType, tuple[LossName, ...]] = {
    TaskType.CLASSIFICATION: (LossName.SYM_KL, LossName.KL, LossName.JS, LossName.MSE),
    TaskType.REGRESSION: (LossName.MSE,),
    TaskType.RANKING: (LossName.SYM_KL, LossName.KL, LossName.JS, LossName.MSE),
    # ALUM's pre-training divergence is KL over the vocabulary (Liu et al. 2020).
    TaskType.MASK_LM: (LossName.KL, LossName.SYM_KL, LossName.JS),
}
FORMATS_FOR_TASK: dict[TaskType, tuple[DataFormat, ...]] = {
    TaskType.CLASSIFICATION: (DataFormat.PREMISE_ONLY, DataFormat.PREMISE_AND_ONE_HYPOTHESIS),
    TaskType.REGRESSION: (DataFormat.PREMISE_ONLY, DataFormat.PREMISE_AND_ONE_HYPOTHESIS),
    TaskType.RANKING: (DataFormat.PREMISE_AND_MULTI_HYPOTHESIS,),
    TaskType.MASK_LM: (DataFormat.PREMISE_ONLY,),
}
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
    name: str
    task_type: TaskType
    data_format: DataFormat
    labels: tuple[str, ...] | None
    n_class: int
    metrics: tuple[Metric, ...]
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
            "task_type": self.task_type.value,
            "data_format": self.data_format.value,
            "metrics": [metric.value for metric in self.metrics],
            "loss": self.loss.value,
            "adv_loss": self.adv_loss.value,
            "dropout_p": self.dropout_p,
            "head": self.head.value,
            "split_names": list(self.split_names),
            "loss_weight": self.loss_weight,
        }
        if self.task_type is TaskType.MASK_LM:
            out["mask_probability"] = self.mask_probability
        else:
            out["n_class"] = self.n_class
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
_KNOWN_KEYS = {
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
    "mask_probability",
}
_REQUIRED_KEYS = ("task_type", "data_format")


def load_task_defs(path: str | Path, *, default_dropout_p: float = DEFAULT_DROPOUT_P) -> dict[str, TaskDef]:
    """Read a task-definition YAML (``load_yaml``: safe, no duplicate keys, YAML 1.2 booleans) into
    ``{task name: TaskDef}`` in file order."""
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
        task_defs[name] = parse_task_def(name, entry, source=str(path), default_dropout_p=default_dropout_p)
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
) -> TaskDef:
    """Validate one task entry (either spelling) into a ``TaskDef``."""
    ctx = _Context(source, name)
    if not _TASK_NAME.match(name):
        raise ctx.error(None, "task names may use only letters, digits, '_' and '-'")
    if not isinstance(entry, Mapping):
        raise ctx.error(None, f"expected a mapping of keys, got {type(entry).__name__}")
    raw = _canonical_keys(entry, ctx)
    for key in _REQUIRED_KEYS:
        if key not in raw:
            raise ctx.error(key, "missing required key")

    task_type = _enum(TaskType, raw, "task_type", ctx)
    data_format = _enum(DataFormat, raw, "data_format", ctx)
    if data_format not in FORMATS_FOR_TASK[task_type]:
        allowed = ", ".join(FORMATS_FOR_TASK[task_type])
        raise ctx.error("data_format", f"{data_format} does not fit a {task_type} task (use: {allowed})")

    labels = _labels(raw, ctx)
    n_class = _n_class(raw, task_type, labels, ctx)
    metrics = _metrics(raw, task_type, ctx)
    loss = _loss(raw, "loss", TASK_LOSSES[task_type], task_type, ctx)
    adv_loss = _loss(raw, "adv_loss", OUTPUT_DIVERGENCES[task_type], task_type, ctx)
    _loss(raw, "kd_loss", OUTPUT_DIVERGENCES[task_type], task_type, ctx)  # checked, then ignored
    head = _head(raw, task_type, ctx)
    dropout_p = _number(raw, "dropout_p", ctx, default=default_dropout_p, low=0.0, high=1.0, high_open=True)
    split_names = _split_names(raw, ctx)
    loss_weight = _number(raw, "loss_weight", ctx, default=1.0, low=0.0, low_open=True)
    mask_probability = _mask_probability(raw, task_type, ctx)
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
        mask_probability=mask_probability,
    )


def _mask_probability(raw: Mapping[str, object], task_type: TaskType, ctx: _Context) -> float:
    if task_type is not TaskType.MASK_LM:
        if raw.get("mask_probability") is not None:
            raise ctx.error("mask_probability", f"applies to mask_lm tasks only, not to a {task_type} task")
        return DEFAULT_MASK_PROBABILITY
    return _number(
        raw, "mask_probability", ctx, default=DEFAULT_MASK_PROBABILITY, low=0.0, high=1.0, low_open=True
    )


def _canonical_keys(entry: Mapping[object, object], ctx: _Context) -> dict[str, object]:
    raw: dict[str, object] = {}
    for key, value in entry.items():
        key_text = str(key)
        canonical = _KEY_ALIASES.get(key_text, key_text)
        if canonical not in _KNOWN_KEYS:
            close = difflib.get_close_matches(key_text, sorted(_KNOWN_KEYS | set(_KEY_ALIASES)), n=1)
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


def _n_class(
    raw: Mapping[str, object], task_type: TaskType, labels: tuple[str, ...] | None, ctx: _Context
) -> int:
    given = raw.get("n_class")
    if task_type is TaskType.MASK_LM:
        # The targets are the text's own tokens: the encoder's vocabulary is the class set.
        for key in ("labels", "n_class"):
            if raw.get(key) is not None:
                raise ctx.error(key, "a mask_lm task predicts the encoder's vocabulary; remove it")
        return 0
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 1):
        raise ctx.error("n_class", f"expected a positive integer, got {given!r}")
    if task_type is TaskType.CLASSIFICATION:
        if labels is not None:
            if given is not None and given != len(labels):
                raise ctx.error("n_class", f"n_class is {given} but {len(labels)} labels are listed")
            n_class = len(labels)
        elif given is None:
            raise ctx.error("n_class", "missing required key (a classification task needs n_class or labels)")
        else:
            n_class = given
        if n_class < 2:
            raise ctx.error("n_class", f"a classification task needs at least 2 classes, got {n_class}")
        return n_class
    if labels is not None:
        raise ctx.error("labels", f"a {task_type} task has numeric labels; remove 'labels'")
    if given is not None and given != 1:
        what = "one output" if task_type is TaskType.REGRESSION else "one score per candidate"
        raise ctx.error("n_class", f"a {task_type} task has {what}: n_class must be 1, got {given}")
    return 1


def _metrics(raw: Mapping[str, object], task_type: TaskType, ctx: _Context) -> tuple[Metric, ...]:
    value = raw.get("metrics")
    if value is None:
        return DEFAULT_METRICS[task_type]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ctx.error("metrics", "expected a non-empty list of metric names")
    metrics: list[Metric] = []
    for item in value:
        try:
            metric = parse_metric(str(item))
        except ValueError as error:
            raise ctx.error("metrics", str(error)) from None
        if task_type not in METRICS[metric].task_types:
            raise ctx.error("metrics", f"metric '{metric}' does not apply to a {task_type} task")
        if metric not in metrics:
            metrics.append(metric)
    return tuple(metrics)


def _loss(
    raw: Mapping[str, object],
    key: str,
    allowed: tuple[LossName, ...],
    task_type: TaskType,
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


def _head(raw: Mapping[str, object], task_type: TaskType, ctx: _Context) -> HeadType:
    if "head" not in raw:
        return HeadType.LINEAR
    head = _enum(HeadType, raw, "head", ctx)
    if head is HeadType.SAN and task_type is not TaskType.CLASSIFICATION:
        raise ctx.error("head", f"the SAN head serves classification tasks, not {task_type}")
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
