"""A training run's configuration: ``TrainConfig``, its sections, its keys' spellings, ``--config run.yml``.

``TrainConfig`` holds the run-wide knobs and three sections, each parsed by its component's own dataclass:
``adversarial`` (``module.adversarial.AdversarialConfig``: a method and its config's fields), ``bregman``
(``module.bregman.BregmanConfig``) and ``sampling`` (``data_utils.sampler.SamplingConfig``). A section key is
spelt ``section.field`` on the command line (``--bregman.update_every 2``) and nested in the YAML
(``bregman: {update_every: 2}``). mt-dnn's flat names are aliases of those keys, in flags and in the YAML
alike: ``--adv_<name>`` is ``adversarial.<name>``, ``--adv_method`` is ``adversarial.method``,
``--adv_train`` alone is ``adversarial.method: smart``, and ``FLAT_ALIASES`` lists the Bregman and sampling
ones. ``mt_dnn.flags`` derives train.py's flags from the dataclasses' fields, so a new field (or a
registered method's parameter) gets its flag.

Precedence: dataclass defaults < ``--config`` YAML < flags given on the command line. Two rules of mt-dnn's
flags are applied when a config is built from keys (``TrainConfig.from_dict``): SMART's Bregman weight
``mu`` defaults to 1 (0, off, for every other method and for plain runs), and ``ratio`` or ``mix_opt`` above 0
picks the ``mix_opt`` strategy (in ``SamplingConfig``). ``validate`` only checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from data_utils.enums import parse_enum
from data_utils.errors import UserError
from data_utils.sampler import SamplingConfig, SamplingStrategyName
from data_utils.yaml_io import load_yaml
from module.adversarial import (
    AdversarialConfig,
    AdversarialMethodName,
    method_spec,
    parameter_types,
)
from module.bregman import BregmanConfig

__all__ = [
    "ADV_TRAIN",
    "FLAT_ALIASES",
    "SECTIONS",
    "OptimizerName",
    "SamplingStrategyName",
    "SchedulerName",
    "Section",
    "TrainConfig",
    "aliases",
    "build_config",
    "canonical_keys",
    "comma_list",
    "flat_identity",
    "key_label",
    "key_types",
    "load_config_file",
    "validate",
]


class OptimizerName(StrEnum):
    ADAMW = "adamw"
    ADAM = "adam"
    ADAMAX = "adamax"
    SGD = "sgd"


class SchedulerName(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"


class Section(StrEnum):
    ADVERSARIAL = "adversarial"
    BREGMAN = "bregman"
    SAMPLING = "sampling"


SECTIONS: tuple[str, ...] = tuple(section.value for section in Section)
ADV_PREFIX = "adv_"
ADV_TRAIN = "adv_train"  # a flat switch, not a key: alone it means adversarial.method = smart
# mt-dnn's flat names of section keys (besides --adv_<parameter>, derived from the registered methods).
FLAT_ALIASES: Mapping[str, str] = types.MappingProxyType(
    {
        "adv_method": "adversarial.method",
        "bregman_mu": "bregman.mu",
        "bregman_beta": "bregman.beta",
        "bregman_beta_warmup": "bregman.beta_warmup",
        "bregman_warmup": "bregman.warmup_fraction",
        "bregman_steps": "bregman.update_every",
        "bregman_teacher_mode": "bregman.teacher_mode",
        "sampling": "sampling.strategy",
        "mix_opt": "sampling.mix_opt",
        "ratio": "sampling.ratio",
        "temperature": "sampling.temperature",
        "bucket_window": "sampling.bucket_window",
    }
)


@dataclass
class TrainConfig:
    """Every knob of a training run. Run-wide field names are the command-line flags (mt-dnn's where they
    exist); ``adversarial``, ``bregman`` and ``sampling`` are the components' sections (see the module
    doc)."""

    # data and tasks
    task_def: str = ""
    data_dir: str = ""
    train_datasets: list[str] = field(default_factory=list)
    test_datasets: list[str] = field(default_factory=list)
    init_checkpoint: str = ""
    output_dir: str = "out"
    # schedule
    epochs: int = 3
    max_steps: int = 0
    batch_size: int = 32
    batch_size_eval: int = 64
    learning_rate: float = 5e-5
    warmup: float = 0.1
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    grad_clipping: float = 1.0
    grad_accumulation_step: int = 1
    optimizer: OptimizerName = OptimizerName.ADAMW
    scheduler_type: SchedulerName = SchedulerName.LINEAR
    # model
    dropout_p: float = 0.1
    use_encoder_pooler: bool = False
    # evaluation, checkpoints, logs
    eval_every_steps: int = 0
    save_every_steps: int = 0
    log_every_steps: int = 50
    best_metric: str = "mean"
    early_stopping_patience: int = 0
    resume: bool = False
    overwrite_output_dir: bool = False
    max_nonfinite_steps: int = 20
    tensorboard: bool = False
    progress: bool = True
    # machine
    seed: int = 2018
    device: str = "auto"
    num_workers: int = 0
    compile: bool = False
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    # sections. A plain TrainConfig() trains without Bregman; from_dict gives SMART its mu of 1.
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    bregman: BregmanConfig = field(default_factory=lambda: BregmanConfig(mu=0.0))
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        self.optimizer = OptimizerName(self.optimizer)
        self.scheduler_type = SchedulerName(self.scheduler_type)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str | Path | None = None) -> TrainConfig:
        """A config from keys in any accepted spelling: run-wide names, nested sections, dotted section keys
        (``bregman.mu``) and mt-dnn's flat aliases; ``source`` (a file) is named in errors."""
        return build_config(canonical_keys(values, source))

    def to_dict(self) -> dict[str, Any]:
        """Run-wide keys and one mapping per section (enums as their values): what ``mtdnn.json`` and
        ``results.json`` record, and what ``from_dict`` reads back."""
        flat = self.flat_dict()
        nested: dict[str, Any] = {key: value for key, value in flat.items() if "." not in key}
        for section in SECTIONS:
            prefix = f"{section}."
            nested[section] = {
                key[len(prefix) :]: value
                for key, value in flat.items()
                if key.startswith(prefix) and not (section == Section.ADVERSARIAL and value is None)
            }
        return nested

    def flat_dict(self) -> dict[str, Any]:
        """Every key by its dotted name (``adversarial.epsilon``; None for a method parameter not given)."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            if item.name not in SECTIONS:
                values[item.name] = _plain(getattr(self, item.name))
        values["adversarial.method"] = _plain(self.adversarial.method)
        for name in parameter_types():
            values[f"adversarial.{name}"] = _plain(self.adversarial.parameters.get(name))
        for section in (Section.BREGMAN, Section.SAMPLING):
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                values[f"{section.value}.{key}"] = _plain(value)
        return values


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


# -- keys, their types and their spellings -------------------------------------------------------------


def _plain_type(hint: Any) -> Any:
    """``float | None`` -> ``float``; other hints stay as they are."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def key_types() -> dict[str, Any]:
    """``{dotted key: type}`` of every key, from the dataclasses' fields (and the registered methods')."""
    hints = typing.get_type_hints(TrainConfig)
    keys = {
        item.name: _plain_type(hints[item.name])
        for item in dataclasses.fields(TrainConfig)
        if item.name not in SECTIONS
    }
    keys["adversarial.method"] = str
    keys.update({f"adversarial.{name}": _plain_type(kind) for name, kind in parameter_types().items()})
    for section, owner in ((Section.BREGMAN, BregmanConfig), (Section.SAMPLING, SamplingConfig)):
        owner_hints = typing.get_type_hints(owner)
        for item in dataclasses.fields(owner):
            keys[f"{section}.{item.name}"] = _plain_type(owner_hints[item.name])
    return keys


def aliases() -> dict[str, str]:
    """``{flat name: dotted key}``: ``FLAT_ALIASES`` and ``adv_<parameter>`` for every registered method's."""
    derived = {f"{ADV_PREFIX}{name}": f"adversarial.{name}" for name in parameter_types()}
    return {**derived, **FLAT_ALIASES}


def key_label(key: str) -> str:
    """How errors name a key: ``--bregman.update_every (--bregman_steps)``; a run-wide one as ``--epochs``."""
    flat = [name for name, target in aliases().items() if target == key]
    return f"--{key}" + (f" (--{flat[0]})" if flat else "")


def _hint(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def canonical_keys(values: Mapping[str, Any], source: str | Path | None) -> dict[str, Any]:
    """``{dotted key: coerced value}`` (and ``adv_train``) from keys in any spelling; one ``UserError`` per
    mistake, naming ``source``, the section and the key."""
    where = f"{source}: " if source is not None else ""
    types_ = key_types()
    flat = aliases()
    out: dict[str, Any] = {}
    spelt: dict[str, str] = {}

    def put(key: str, value: Any, shown: str) -> None:
        if key in out:
            raise UserError(f"{where}{shown}: {spelt[key]} already sets {key}")
        if value is None and not _may_be_none(key):
            raise UserError(f"{where}{shown}: expected a value, got null")
        out[key], spelt[key] = _coerce(f"{where}{shown}", value, types_.get(key, bool)), shown

    for raw, value in values.items():
        key = str(raw)
        if key in SECTIONS and isinstance(value, Mapping):
            known = [name.split(".", 1)[1] for name in types_ if name.startswith(f"{key}.")]
            for sub, sub_value in value.items():
                if str(sub) not in known:
                    raise UserError(
                        f"{where}section '{key}': key '{sub}': unknown{_hint(str(sub), known)} "
                        f"(the section's keys: {', '.join(known)})"
                    )
                put(f"{key}.{sub}", sub_value, f"section '{key}': key '{sub}'")
            continue
        name = flat.get(key, key)
        if name not in types_ and name != ADV_TRAIN:
            spellings = [item for item in types_ if "." not in item] + [*flat, ADV_TRAIN, *SECTIONS]
            raise UserError(f"{where}key '{key}': unknown training option{_hint(key, spellings)}")
        put(name, value, f"key '{key}'")
    return out


def _may_be_none(key: str) -> bool:
    """The keys whose None means "not given": a method's parameters (its default), SMART's Bregman mu."""
    return key.startswith("adversarial.") or key in ("bregman.mu", ADV_TRAIN)


def _coerce(shown: str, value: Any, expected: Any) -> Any:
    """A YAML (or flag) value as the key's type; PyYAML's ``3e-5`` string is taken as the float meant."""
    if typing.get_origin(expected) is list:
        if isinstance(value, str):
            return comma_list(value)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise UserError(f"{shown}: expected a list of task names")
    if value is None:
        return None
    if isinstance(expected, type) and issubclass(expected, Enum):
        try:
            return parse_enum(expected, value)
        except ValueError as error:
            raise UserError(f"{shown}: {error}") from None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if expected is float and isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(f"{shown}: expected {expected.__name__}, got {value!r}")
    return value


def _method_name(value: str) -> str:
    """A built-in method by any spelling ``parse_enum`` takes (``FreeLB``), else the name as given."""
    try:
        return parse_enum(AdversarialMethodName, value)
    except ValueError:
        return value


def build_config(values: Mapping[str, Any]) -> TrainConfig:
    """The config of canonical ``values``: the sections built by their own dataclasses."""
    sections: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    run_wide: dict[str, Any] = {}
    for key, value in values.items():
        if "." in key:
            section, name = key.split(".", 1)
            sections[section][name] = value
        elif key != ADV_TRAIN:
            run_wide[key] = value
    adversarial = _adversarial(sections[Section.ADVERSARIAL], bool(values.get(ADV_TRAIN)))
    bregman = {key: value for key, value in sections[Section.BREGMAN].items() if value is not None}
    bregman.setdefault("mu", 1.0 if adversarial.method == AdversarialMethodName.SMART else 0.0)
    built: dict[str, Any] = {Section.ADVERSARIAL.value: adversarial}
    for section, owner in ((Section.BREGMAN, BregmanConfig), (Section.SAMPLING, SamplingConfig)):
        given = bregman if section is Section.BREGMAN else sections[section]
        try:
            built[section.value] = owner(**given)
        except ValueError as error:
            fields = [item.name for item in dataclasses.fields(owner)]
            raise UserError(_section_error(section, error, fields)) from None
    return TrainConfig(**run_wide, **built)


def _adversarial(given: Mapping[str, Any], adv_train: bool) -> AdversarialConfig:
    parameters = {key: value for key, value in given.items() if key != "method" and value is not None}
    method = given.get("method")
    if method is None and adv_train:
        method = AdversarialMethodName.SMART
    if method is None:
        if parameters:
            raise UserError(
                f"{key_label(f'adversarial.{next(iter(parameters))}')} needs --adv_train or --adv_method"
            )
        return AdversarialConfig()
    try:
        spec = method_spec(_method_name(str(method)))
    except ValueError as error:
        raise UserError(f"{key_label('adversarial.method')}: {error}") from None
    known = parameter_types(spec.name)
    for name in parameters:
        if name not in known:
            takes = ", ".join(f"--adv_{item}" for item in known)
            raise UserError(
                f"{key_label(f'adversarial.{name}')} does not apply to adversarial method {spec.name} "
                f"(it takes {takes})"
            )
    try:
        return AdversarialConfig(spec.name, parameters)
    except ValueError as error:
        context = f"adversarial method {spec.name}: {error}"
        raise UserError(_section_error(Section.ADVERSARIAL, context, list(known))) from None


def _section_error(section: str, error: Exception | str, fields: Sequence[str]) -> str:
    """A section's refusal, led by the flag of the field it names (``--bregman.beta (--bregman_beta): ``)."""
    message = str(error)
    for name in sorted(fields, key=len, reverse=True):
        if re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", message):
            return f"{key_label(f'{section}.{name}')}: {message}"
    return f"{section} section: {message}"


def flat_identity(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config (``resume_identity`` of its run) by dotted keys; one written before the sections
    existed (mt-dnn's flat keys: ``adv_epsilon``, ``bregman_steps``, ...) is read through the aliases, and a
    key it did not record stays absent."""
    if "adversarial.method" in saved:
        return dict(saved)
    given = canonical_keys(saved, "saved config")
    recorded = set(given) | ({"adversarial.method"} if ADV_TRAIN in given else set())
    return {key: value for key, value in build_config(given).flat_dict().items() if key in recorded}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML's keys as written (flat, nested or both), checked: an unknown key, a key given twice or a
    value of the wrong type is one ``UserError`` naming the file, the section and the key."""
    path = Path(path)
    document = load_yaml(path, what="config")
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a mapping of training options")
    canonical_keys(document, path)
    return document


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def validate(config: TrainConfig) -> None:
    """Checks across the run-wide keys and between sections, that need no files; each failure names the flag.
    The sections check themselves when built. ``config`` is not changed."""
    required = {
        "task_def": config.task_def,
        "data_dir": config.data_dir,
        "init_checkpoint": config.init_checkpoint,
    }
    for name, value in required.items():
        if not value:
            raise UserError(f"--{name} is required")
    if not config.train_datasets:
        raise UserError("--train_datasets is required (comma-separated task names)")
    positive = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "batch_size_eval": config.batch_size_eval,
        "grad_accumulation_step": config.grad_accumulation_step,
        "learning_rate": config.learning_rate,
        "max_nonfinite_steps": config.max_nonfinite_steps,
    }
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{item.name} must be a finite number, got {value}")
    for name, value in positive.items():
        if value <= 0:
            raise UserError(f"--{name} must be > 0, got {value}")
    if not 0 <= config.seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32), got {config.seed}")
    if config.bf16 and config.fp16:
        raise UserError("--bf16 and --fp16 exclude each other: pick one")
    for name in ("warmup", "dropout_p"):
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise UserError(f"--{name} must be in [0, 1), got {value}")
    non_negative = (
        "weight_decay",
        "grad_clipping",
        "eval_every_steps",
        "save_every_steps",
        "log_every_steps",
        "early_stopping_patience",
        "max_steps",
        "num_workers",
    )
    for name in non_negative:
        if getattr(config, name) < 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(config, name)}")
    method = config.adversarial.method
    if config.bregman.mu and method is not None and method_spec(method).owns_backward:
        raise UserError(
            f"{key_label('bregman.mu')} needs a clean forward pass; adversarial method {method} runs only "
            "perturbed ones"
        )
