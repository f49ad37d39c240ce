"""A training run's configuration: one dataclass, its flags (mt-dnn's names), and ``--config run.yml``.

Precedence: dataclass defaults < ``--config`` YAML < flags given on the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from data_utils.enums import parse_enum
from data_utils.errors import UserError, exit_on_user_error
from data_utils.sampler import SamplingStrategyName
from data_utils.yaml_io import load_yaml
from module.adversarial import (
    METHODS,
    AdversarialMethodName,
    NoiseType,
    NormLevel,
    PNorm,
    Radius,
    method_parameters,
)
from module.bregman import TeacherMode


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
    # multi-task sampling
    sampling: SamplingStrategyName = SamplingStrategyName.PROPORTIONAL
    mix_opt: int = 0
    ratio: float = 0.0
    temperature: float = 1.0
    bucket_window: int = 20
    # adversarial training: --adv_train alone is SMART (Jiang et al. 2020); --adv_method picks any registered
    # method (and implies --adv_train). A hyper-parameter left at None takes the method's paper default.
    adv_train: bool = False
    adv_method: AdversarialMethodName | None = None
    adv_alpha: float | None = None
    adv_k: int | None = None
    adv_step_size: float | None = None
    adv_noise_var: float | None = None
    adv_epsilon: float | None = None
    adv_p_norm: PNorm | None = None
    adv_norm_level: NormLevel | None = None
    adv_dropout_replay: bool | None = None
    adv_init_mag: float | None = None
    adv_replays: int | None = None
    adv_outer_steps: int | None = None
    adv_noise_type: NoiseType | None = None
    adv_radius: Radius | None = None
    # momentum Bregman proximal point (SMART Alg. 1); None: 1.0 with --adv_train (the paper's SMART), else off
    bregman_mu: float | None = None
    bregman_beta: float = 0.999
    bregman_beta_warmup: float = 0.99
    bregman_warmup: float = 0.1
    bregman_steps: int = 1
    bregman_teacher_mode: TeacherMode = TeacherMode.EVAL
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

    def __post_init__(self) -> None:
        for name, enum in _ENUM_FIELDS.items():
            if getattr(self, name) is not None:
                setattr(self, name, enum(getattr(self, name)))
        if self.adv_method is not None:
            self.adv_train = True
        elif self.adv_train:
            self.adv_method = AdversarialMethodName.SMART
        if self.bregman_mu is None:
            self.bregman_mu = 1.0 if self.adv_method is AdversarialMethodName.SMART else 0.0

    def adversarial_parameters(self) -> dict[str, Any]:
        """The adversarial hyper-parameters given (flags or YAML), by the method's parameter names."""
        values = {name: getattr(self, f"{_ADV_PREFIX}{name}") for name in ADVERSARIAL_PARAMETERS}
        return {name: value for name, value in values.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            key: (value.value if isinstance(value, StrEnum) else value) for key, value in vars(self).items()
        }


_ENUM_FIELDS: dict[str, type[StrEnum]] = {
    "optimizer": OptimizerName,
    "scheduler_type": SchedulerName,
    "sampling": SamplingStrategyName,
    "adv_method": AdversarialMethodName,
    "adv_p_norm": PNorm,
    "adv_norm_level": NormLevel,
    "adv_noise_type": NoiseType,
    "adv_radius": Radius,
    "bregman_teacher_mode": TeacherMode,
}
_ADV_PREFIX = "adv_"
# The adversarial flags that are method hyper-parameters: --adv_<name> sets the method config's <name>.
ADVERSARIAL_PARAMETERS = (
    "alpha",
    "k",
    "step_size",
    "noise_var",
    "epsilon",
    "p_norm",
    "norm_level",
    "dropout_replay",
    "init_mag",
    "replays",
    "outer_steps",
    "noise_type",
    "radius",
)
# Fields whose default is None: the type their value takes when given.
_OPTIONAL_TYPES: dict[str, type] = {
    "bregman_mu": float,
    "adv_alpha": float,
    "adv_k": int,
    "adv_step_size": float,
    "adv_noise_var": float,
    "adv_epsilon": float,
    "adv_dropout_replay": bool,
    "adv_init_mag": float,
    "adv_replays": int,
    "adv_outer_steps": int,
}
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
    "overwrite_output_dir": "replace the run already in --output_dir (its best/, last/, metrics.jsonl, "
    "results.json); without it (or --resume) train.py refuses to write over a run",
    "max_steps": "stop after this many optimizer steps (0: --epochs decides); the schedule spans them",
    "max_nonfinite_steps": "stop after this many non-finite losses in a row",
    "adv_train": "adversarial training; alone: SMART (adversarial term + Bregman step)",
    "adv_method": "adversarial method (implies --adv_train; default smart); each takes its paper's defaults",
    "adv_alpha": "weight of the adversarial term (task YAML adv_alpha overrides per task)",
    "adv_k": "ascent steps per batch (SMART/ALUM/PGD/FreeLB K; YOPO's n first-layer steps)",
    "adv_step_size": "ascent step size (on the normalised gradient)",
    "adv_noise_var": "std of the initial noise (mt-dnn's name; SMART/ALUM/R3F sigma)",
    "adv_epsilon": "radius of the perturbation ball in --adv_p_norm",
    "adv_p_norm": "norm of the ascent normalisation and of the ball: inf | l2 | l1",
    "adv_norm_level": "norms per token or per sentence",
    "adv_dropout_replay": "adversarial forwards reuse the clean pass's dropout masks (off, the default and "
    "mt-dnn's behaviour: the term also compares two dropout samples, R-Drop-like)",
    "adv_init_mag": "FreeLB: magnitude of the uniform initial perturbation",
    "adv_replays": "FreeAT: replays (optimizer steps) per batch, m",
    "adv_outer_steps": "YOPO: full forward/backward passes per batch, m",
    "adv_noise_type": "R3F/R4F noise: normal | uniform",
    "adv_radius": "absolute: epsilon, step size and noise in embedding units (the papers'); relative: as "
    "fractions of each token's/sentence's own embedding size (delta_ratio ~ epsilon on any encoder)",
    "bregman_mu": "weight of the Bregman proximal term (default: 1 with --adv_train, else 0 = off)",
    "bregman_beta": "EMA decay of the Bregman teacher after the warm-up",
    "bregman_beta_warmup": "EMA decay during the first --bregman_warmup fraction of updates",
    "bregman_warmup": "fraction of optimizer steps that use --bregman_beta_warmup",
    "bregman_steps": "update the Bregman teacher every S optimizer steps",
    "bregman_teacher_mode": "the teacher's forward: eval (no dropout, the default) or train (with dropout); "
    "the teacher starts as a copy of the initial model",
    "early_stopping_patience": "stop after this many evaluations in a row without a new best (0: off); "
    "labelled test splits are then scored by the best checkpoint as usual",
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
        elif isinstance(default, bool) or _OPTIONAL_TYPES.get(item.name) is bool:
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


# Stand-ins for the flags every run must give, so a list of other flags can be checked on its own.
_PLACEHOLDERS = ["--task_def", "t.yml", "--data_dir", "d", "--init_checkpoint", "m", "--train_datasets", "t"]


def check_flags(flags: Sequence[str]) -> None:
    """Parse a list of train.py flags as train.py would (the required ones stood in for), so a script or a
    grid can refuse a misspelt or invalid flag before anything runs. Raises ``UserError`` with argparse's or
    the validation's message."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parse_config([*_PLACEHOLDERS, *flags])
    except SystemExit:  # argparse: "usage: ...\ntrain.py: error: <message>"
        lines = errors.getvalue().strip().splitlines() or ["invalid flags"]
        raise UserError(f"train.py: {lines[-1].split('error: ', 1)[-1]}") from None
    except UserError as error:
        raise UserError(f"train.py: {error}") from None


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """``python -m mt_dnn.config FLAGS...``: exit 0 when train.py would accept FLAGS, else one error line."""
    check_flags(sys.argv[1:] if argv is None else argv)


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    document = load_yaml(path, what="config")
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
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, float) and not math.isfinite(value) and item.name != "adv_epsilon":
            raise UserError(f"--{item.name} must be a finite number, got {value}")
    if config.adv_epsilon is not None and math.isnan(config.adv_epsilon):
        raise UserError(f"--adv_epsilon must be a number (inf: no bound), got {config.adv_epsilon}")
    for name, value in positive.items():
        if value <= 0:
            raise UserError(f"--{name} must be > 0, got {value}")
    if not 0 <= config.seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32), got {config.seed}")
    if config.bf16 and config.fp16:
        raise UserError("--bf16 and --fp16 exclude each other: pick one")
    if config.bregman_steps < 1:
        raise UserError(f"--bregman_steps must be >= 1, got {config.bregman_steps}")
    if not (math.isfinite(config.bregman_mu) and config.bregman_mu >= 0):
        raise UserError(f"--bregman_mu must be a finite number >= 0, got {config.bregman_mu}")
    _validate_adversarial(config)
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
        "early_stopping_patience",
        "max_steps",
        "num_workers",
        "mix_opt",
    )
    for name in non_negative:
        if getattr(config, name) < 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(config, name)}")


def _validate_adversarial(config: TrainConfig) -> None:
    """The method's hyper-parameters: each given one must be the method's, and its config must accept them."""
    given = config.adversarial_parameters()
    if config.adv_method is None:
        if given:
            raise UserError(f"--{_ADV_PREFIX}{next(iter(given))} needs --adv_train or --adv_method")
        return
    spec = METHODS[config.adv_method]
    known = method_parameters(spec.name)
    for name in given:
        if name not in known:
            flags = ", ".join(f"--{_ADV_PREFIX}{item}" for item in known)
            raise UserError(
                f"--{_ADV_PREFIX}{name} does not apply to --adv_method {spec.name} (it takes {flags})"
            )
    try:
        spec.config(**given)
    except ValueError as error:
        raise UserError(f"--adv_method {spec.name}: {error}") from None
    if config.bregman_mu and spec.owns_backward:
        raise UserError(
            f"--bregman_mu needs a clean forward pass; --adv_method {spec.name} runs only perturbed ones"
        )


if __name__ == "__main__":
    main()
