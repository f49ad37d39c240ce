"""train.py's command line: one flag per key of ``TrainConfig`` (``mt_dnn.config``), parsed into a config.

Every key gets its dotted flag (``--bregman.update_every``) and its mt-dnn flat aliases (``--bregman_steps``),
grouped by section in ``--help``; ``--config run.yml`` reads the same keys from a YAML first (flags given on
the command line override it). ``check_flags`` lets a script or grid refuse a bad flag list before anything
runs; ``python -m mt_dnn.flags FLAGS...`` does the same from a shell script.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import typing
from collections.abc import Sequence
from enum import Enum
from typing import Any

from data_utils.errors import UserError, exit_on_user_error
from module.adversarial import method_names
from mt_dnn.config import (
    ADV_TRAIN,
    Section,
    TrainConfig,
    aliases,
    build_config,
    canonical_keys,
    comma_list,
    key_types,
    load_config_file,
    validate,
)

__all__ = ["build_parser", "check_flags", "parse_config"]

_HELP = {
    "task_def": "task-definition YAML",
    "data_dir": "token-id cache folder written by prepro_std.py (e.g. data/demo/minilm)",
    "train_datasets": "comma-separated tasks to train on",
    "test_datasets": "comma-separated tasks to evaluate (default: the training tasks)",
    "init_checkpoint": "HF encoder folder or one of our checkpoints",
    "warmup": "fraction of optimizer steps spent warming the learning rate up",
    "grad_clipping": "max gradient norm (0 turns clipping off)",
    "eval_every_steps": "also evaluate every N optimizer steps (0: once per epoch)",
    "save_every_steps": "also save the resumable 'last' checkpoint every N optimizer steps",
    "best_metric": "'mean' (of each eval task's first metric on its first dev split) or TASK:METRIC",
    "resume": "continue from <output_dir>/last if it exists",
    "overwrite_output_dir": "replace the run already in --output_dir (its best/, last/, metrics.jsonl, "
    "results.json); without it (or --resume) train.py refuses to write over a run",
    "max_steps": "stop after this many optimizer steps (0: --epochs decides); the schedule spans them",
    "max_nonfinite_steps": "stop after this many non-finite losses in a row",
    "early_stopping_patience": "stop after this many evaluations in a row without a new best (0: off); "
    "labelled test splits are then scored by the best checkpoint as usual",
    "compile": "torch.compile the encoder's layers (off by default: see docs/benchmarks.md)",
    "bf16": "mixed precision: torch.autocast with bfloat16 (no loss scaling needed)",
    "fp16": "mixed precision: torch.autocast with float16 and a dynamic loss scale (torch.amp.GradScaler)",
    "gradient_checkpointing": "recompute encoder activations in the backward (non-reentrant): less memory",
    ADV_TRAIN: "adversarial training; alone: SMART (adversarial term + Bregman step)",
    "adversarial.method": "adversarial method (implies --adv_train; default smart); each takes its paper's "
    "defaults",
    "adversarial.alpha": "weight of the adversarial term (task YAML adv_alpha overrides per task)",
    "adversarial.k": "ascent steps per batch (SMART/ALUM/PGD/FreeLB K; YOPO's n first-layer steps)",
    "adversarial.step_size": "ascent step size (on the normalised gradient)",
    "adversarial.noise_var": "std of the initial noise (mt-dnn's name; SMART/ALUM/R3F sigma)",
    "adversarial.epsilon": "radius of the perturbation ball in p_norm (inf: no bound)",
    "adversarial.p_norm": "norm of the ascent normalisation and of the ball",
    "adversarial.norm_level": "norms per token or per sentence",
    "adversarial.dropout_replay": "adversarial forwards reuse the clean pass's dropout masks (off, the "
    "default and mt-dnn's behaviour: the term also compares two dropout samples, R-Drop-like)",
    "adversarial.init_mag": "FreeLB: magnitude of the uniform initial perturbation",
    "adversarial.replays": "FreeAT: replays (optimizer steps) per batch, m",
    "adversarial.outer_steps": "YOPO: full forward/backward passes per batch, m",
    "adversarial.noise_type": "R3F/R4F noise",
    "adversarial.radius": "absolute: epsilon, step size and noise in embedding units (the papers'); "
    "relative: as fractions of each token's/sentence's own embedding size (delta_ratio ~ epsilon on any "
    "encoder)",
    "bregman.mu": "weight of the Bregman proximal term (default: 1 with SMART, else 0 = off)",
    "bregman.beta": "EMA decay of the Bregman teacher after the warm-up",
    "bregman.beta_warmup": "EMA decay during the first warmup_fraction of updates",
    "bregman.warmup_fraction": "fraction of optimizer steps that use beta_warmup",
    "bregman.update_every": "update the Bregman teacher every S optimizer steps",
    "bregman.teacher_mode": "the teacher's forward: eval (no dropout, the default) or train (with dropout); "
    "the teacher starts as a copy of the initial model",
    "sampling.strategy": "how each step's task is chosen",
    "sampling.mix_opt": "mt-dnn's mix_opt: >0 puts the auxiliary tasks' batches before the main (first) "
    "task's",
    "sampling.ratio": "mt-dnn's ratio: auxiliary batches = ratio x main-task batches (0: all)",
    "sampling.temperature": "temperature strategy: draw tasks with probability ~ rows ** (1 / T)",
    "sampling.bucket_window": "sort rows by length within windows of this many batches, then shuffle the "
    "batches (0: off); less padding, the same rows every epoch",
}
_GROUPS = {
    None: "run",
    Section.ADVERSARIAL: "adversarial (YAML section 'adversarial:'; a method's parameters, its defaults "
    "where not given)",
    Section.BREGMAN: "bregman (YAML section 'bregman:'; SMART's momentum Bregman proximal point)",
    Section.SAMPLING: "sampling (YAML section 'sampling:'; the multi-task batch sampler)",
}


def build_parser() -> argparse.ArgumentParser:
    """train.py's flags: one per key of ``key_types`` (its dotted name and its flat aliases), grouped by
    section."""
    parser = argparse.ArgumentParser(description="Multi-task fine-tuning of a shared encoder.")
    parser.add_argument("--config", help="YAML file with any of the keys below (flags override it)")
    groups = {
        section: parser.add_argument_group(title) if section else parser for section, title in _GROUPS.items()
    }
    flat_names: dict[str, list[str]] = {}
    for name, target in aliases().items():
        flat_names.setdefault(target, []).append(name)
    for key, kind in key_types().items():
        section = Section(key.split(".", 1)[0]) if "." in key else None
        flags = [f"--{key}", *(f"--{name}" for name in flat_names.get(key, []))]
        kwargs: dict[str, Any] = {"dest": key, "help": _HELP.get(key, "")}
        if "." in key:
            kwargs["metavar"] = key.split(".", 1)[1].upper()
        if key == "adversarial.method":
            kwargs["choices"] = list(method_names())
        if "choices" in kwargs or (isinstance(kind, type) and issubclass(kind, Enum)):
            kwargs.pop("metavar", None)  # argparse shows the choices instead
            if "choices" not in kwargs:
                kwargs["choices"] = [item.value for item in kind]
            groups[section].add_argument(*flags, type=str, **kwargs)
        elif kind is bool:
            kwargs.pop("metavar", None)
            groups[section].add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(kind) is list:
            groups[section].add_argument(*flags, type=comma_list, **kwargs)
        else:
            groups[section].add_argument(*flags, type=kind, **kwargs)
        if key == "adversarial.method":
            groups[section].add_argument(
                f"--{ADV_TRAIN}",
                dest=ADV_TRAIN,
                action=argparse.BooleanOptionalAction,
                help=_HELP[ADV_TRAIN],
            )
    # Accepted for mt-dnn compatibility; torchrun sets LOCAL_RANK in the environment instead.
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(**{key: None for key in (*key_types(), ADV_TRAIN)})
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Build a ``TrainConfig`` from defaults, an optional ``--config`` YAML, and the flags."""
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    if args["config"]:
        values.update(canonical_keys(load_config_file(args["config"]), args["config"]))
    given = {
        key: value for key, value in args.items() if value is not None and key not in ("config", "local_rank")
    }
    values.update(canonical_keys(given, None))
    config = build_config(values)
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


if __name__ == "__main__":
    main()
