"""A training run's configuration: one dataclass, its flags (mt-dnn's names), and ``--config run.yml``.

Precedence: dataclass defaults < ``--config`` YAML < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from data_utils.enums import parse_enum
from data_utils.errors import UserError
from data_utils.sampler import SamplingStrategyName
from module.adversarial.norms import NormLevel, PNorm


class OptimizerName(StrEnum):
    ADAMW = "adamw"
    ADAM = "adam"
    ADAMAX = "adamax"
    SGD = "sgd"


class SchedulerName(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"


@dataclass
class TrainConfig:
    """Every knob of a training run. Field names are the command-line flags (mt-dnn's where they exist)."""

    # data and tasks
    task_def: str = ""
    data_dir: str = ""
    train_datasets: list[str] = field(default_factory=list)
    test_datasets: list[str] = field(default_factory=list)
    init_checkpoint: str = ""
    output_dir: str = "out"
    # schedule
    epochs: int = 3
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
    # multi-task sampling
    sampling: SamplingStrategyName = SamplingStrategyName.PROPORTIONAL
    mix_opt: int = 0
    ratio: float = 0.0
    temperature: float = 1.0
    bucket_window: int = 20
    # adversarial training: SMART (Jiang et al. 2020); defaults are the paper's
    adv_train: bool = False
    adv_alpha: float = 1.0
    adv_k: int = 1
    adv_step_size: float = 1e-3
    adv_noise_var: float = 1e-5
    adv_epsilon: float = 1e-5
    adv_p_norm: PNorm = PNorm.INF
    adv_norm_level: NormLevel = NormLevel.TOKEN
    adv_dropout_replay: bool = False
    # momentum Bregman proximal point (SMART Alg. 1); None: 1.0 with --adv_train (the paper's SMART), else off
    bregman_mu: float | None = None
    bregman_beta: float = 0.999
    bregman_beta_warmup: float = 0.99
    bregman_warmup: float = 0.1
    bregman_steps: int = 1
    # model
    dropout_p: float = 0.1
    use_encoder_pooler: bool = False
    # evaluation, checkpoints, logs
    eval_every_steps: int = 0
    save_every_steps: int = 0
    log_every_steps: int = 50
    best_metric: str = "mean"
    resume: bool = False
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

    def __post_init__(self) -> None:
        self.optimizer = OptimizerName(self.optimizer)
        self.scheduler_type = SchedulerName(self.scheduler_type)
        self.sampling = SamplingStrategyName(self.sampling)
        self.adv_p_norm = PNorm(self.adv_p_norm)
        self.adv_norm_level = NormLevel(self.adv_norm_level)
        if self.bregman_mu is None:
            self.bregman_mu = 1.0 if self.adv_train else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            key: (value.value if isinstance(value, StrEnum) else value) for key, value in vars(self).items()
        }


_ENUM_FIELDS: dict[str, type[StrEnum]] = {
    "optimizer": OptimizerName,
    "scheduler_type": SchedulerName,
    "sampling": SamplingStrategyName,
    "adv_p_norm": PNorm,
    "adv_norm_level": NormLevel,
}
# Fields whose default is None: the type their value takes when given.
_OPTIONAL_TYPES: dict[str, type] = {"bregman_mu": float}
_HELP = {
    "task_def": "task-definition YAML",
    "data_dir": "token-id cache folder written by prepro_std.py (e.g. data/demo/minilm)",
    "train_datasets": "comma-separated tasks to train on",
    "test_datasets": "comma-separated tasks to evaluate (default: the training tasks)",
    "init_checkpoint": "HF encoder folder or one of our checkpoints",
    "warmup": "fraction of optimizer steps spent warming the learning rate up",
    "grad_clipping": "max gradient norm (0 turns clipping off)",
    "sampling": "how each step's task is chosen: proportional | mix_opt | temperature",
    "mix_opt": "mt-dnn's mix_opt: >0 puts the auxiliary tasks' batches before the main (first) task's",
    "ratio": "mt-dnn's ratio: auxiliary batches = ratio x main-task batches (0: all)",
    "bucket_window": "sort rows by length within windows of this many batches, then shuffle the batches "
    "(0: off); less padding, the same rows every epoch",
    "eval_every_steps": "also evaluate every N optimizer steps (0: once per epoch)",
    "save_every_steps": "also save the resumable 'last' checkpoint every N optimizer steps",
    "best_metric": "'mean' (of each eval task's first metric on its first dev split) or TASK:METRIC",
    "resume": "continue from <output_dir>/last if it exists",
    "max_nonfinite_steps": "stop after this many non-finite losses in a row",
    "adv_train": "SMART: adversarial regularisation of the word embeddings, plus the Bregman term",
    "adv_alpha": "weight of the adversarial term (task YAML adv_alpha overrides per task)",
    "adv_k": "inner ascent steps per batch",
    "adv_step_size": "inner ascent step size (on the normalised gradient)",
    "adv_noise_var": "std of the initial noise (mt-dnn's name; the paper's sigma)",
    "adv_epsilon": "radius of the perturbation ball in --adv_p_norm",
    "adv_p_norm": "norm of the ascent normalisation and of the ball: inf | l2 | l1",
    "adv_norm_level": "norms per token or per sentence",
    "adv_dropout_replay": "adversarial forwards reuse the clean pass's dropout masks",
    "bregman_mu": "weight of the Bregman proximal term (default: 1 with --adv_train, else 0 = off)",
    "bregman_beta": "EMA decay of the Bregman teacher after the warm-up",
    "bregman_beta_warmup": "EMA decay during the first --bregman_warmup fraction of updates",
    "bregman_warmup": "fraction of optimizer steps that use --bregman_beta_warmup",
    "bregman_steps": "update the Bregman teacher every S optimizer steps",
    "compile": "torch.compile the encoder's layers (off by default: see docs/benchmarks.md)",
    "bf16": "mixed precision: torch.autocast with bfloat16 (no loss scaling needed)",
    "fp16": "mixed precision: torch.autocast with float16 and a dynamic loss scale (torch.amp.GradScaler)",
    "gradient_checkpointing": "recompute encoder activations in the backward (non-reentrant): less memory",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Multi-task fine-tuning of a shared encoder.")
    parser.add_argument("--config", help="YAML file with any of the keys below (flags override it)")
    for item in dataclasses.fields(TrainConfig):
        flag = f"--{item.name}"
        default = item.default if item.default is not dataclasses.MISSING else None
        kwargs: dict[str, Any] = {"help": _HELP.get(item.name, "")}
        if item.name in _ENUM_FIELDS:
            choices = [member.value for member in _ENUM_FIELDS[item.name]]
            parser.add_argument(flag, type=str, choices=choices, **kwargs)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif item.name in ("train_datasets", "test_datasets"):
            parser.add_argument(flag, type=_comma_list, **kwargs)
        elif item.name in _OPTIONAL_TYPES:
            parser.add_argument(flag, type=_OPTIONAL_TYPES[item.name], **kwargs)
        else:
            parser.add_argument(flag, type=type(default), **kwargs)
    # Accepted for mt-dnn compatibility; torchrun sets LOCAL_RANK in the environment instead.
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(**{item.name: None for item in dataclasses.fields(TrainConfig)})
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Build a ``TrainConfig`` from defaults, an optional ``--config`` YAML, and the flags."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    values.update({key: value for key, value in vars(args).items() if value is not None and key != "config"})
    values.pop("local_rank", None)
    config = TrainConfig(**values)
    validate(config)
    return config


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"{path}: cannot read config: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: invalid YAML: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a mapping of training options")
    known = {item.name: item for item in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key not in known:
            raise UserError(f"{path}: key '{key}': unknown training option")
        values[key] = _coerce(path, key, value, known[key].default)
    return values


def _coerce(path: Path, key: str, value: Any, default: Any) -> Any:
    if key in _ENUM_FIELDS:
        try:
            return parse_enum(_ENUM_FIELDS[key], value)
        except ValueError as error:
            raise UserError(f"{path}: key '{key}': {error}") from None
    if key in ("train_datasets", "test_datasets"):
        if isinstance(value, str):
            return _comma_list(value)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise UserError(f"{path}: key '{key}': expected a list of task names")
    expected = _OPTIONAL_TYPES.get(key, type(default))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 3e-5 as a string: it wants 3.0e-5. Accept what the user meant.
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(f"{path}: key '{key}': expected {expected.__name__}, got {value!r}")
    return value


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def validate(config: TrainConfig) -> None:
    """Flag-level checks that need no files; each failure names the flag."""
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
        "temperature": config.temperature,
    }
    if config.sampling is SamplingStrategyName.PROPORTIONAL and (config.mix_opt > 0 or config.ratio > 0):
        config.sampling = SamplingStrategyName.MIX_OPT  # what an mt-dnn user means by --mix_opt / --ratio
    for name, value in positive.items():
        if value <= 0:
            raise UserError(f"--{name} must be > 0, got {value}")
    if config.bf16 and config.fp16:
        raise UserError("--bf16 and --fp16 exclude each other: pick one")
    for name in ("adv_k", "bregman_steps"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(config, name)}")
    for name in ("adv_alpha", "adv_step_size", "adv_noise_var", "adv_epsilon", "bregman_mu"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"--{name} must be a finite number >= 0, got {value}")
    for name in ("warmup", "dropout_p", "bregman_beta", "bregman_beta_warmup", "bregman_warmup"):
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise UserError(f"--{name} must be in [0, 1), got {value}")
    non_negative = (
        "weight_decay",
        "grad_clipping",
        "ratio",
        "bucket_window",
        "eval_every_steps",
        "save_every_steps",
        "log_every_steps",
        "num_workers",
        "mix_opt",
    )
    for name in non_negative:
        if getattr(config, name) < 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(config, name)}")
