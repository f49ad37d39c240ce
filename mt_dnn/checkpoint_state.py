"""The resume state of a run (``last/trainer_state.pt``) and whether a config may continue it.

``ResumeState`` gathers what ``--resume`` restores besides the weights: where the run is (``Progress``), the
optimizer, schedule, sampler and loss-scale states, the RNGs, the best-checkpoint record and the skipped-step
count. ``state_dict()`` is the dict ``trainer_state.pt`` holds; ``load_state_dict`` puts it back.

A resumed run must be the interrupted one: every config key must match except ``RESUMABLE_CHANGES``, the keys
that change how a run is watched, where it runs or how fast, never what it computes. A key added to the
config later must match until it is listed here. Keys are ``TrainConfig.flat_dict``'s: a section's by its
dotted name (``adversarial.epsilon``, ``bregman.update_every``); a state saved before the sections existed,
with mt-dnn's flat names (``adv_epsilon``, ``bregman_steps``), is read through the aliases
(``mt_dnn.config.flat_identity``), so it still resumes.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import PreTrainedTokenizerBase

from data_utils.atomic import atomic_directory
from data_utils.cache import EncodedSplit
from data_utils.dataset import MultiTaskDataset
from data_utils.errors import UserError
from data_utils.sampler import MultiTaskBatchSampler
from data_utils.task_def import TaskDef
from mt_dnn.best_checkpoint import BestCheckpoint
from mt_dnn.config import TrainConfig, flat_identity, key_label
from mt_dnn.model import MTDNNModel
from mt_dnn.update import SkippedSteps

__all__ = [
    "RESUMABLE_CHANGES",
    "STATE_FILE",
    "STATE_VERSION",
    "TEACHER_FILE",
    "Progress",
    "ResumeState",
    "check_resumable",
    "data_identity",
    "read_state",
    "resume_identity",
    "write_checkpoint",
]

STATE_FILE = "trainer_state.pt"
TEACHER_FILE = "bregman_teacher.safetensors"
STATE_VERSION = 1

# Config keys a resumed run may change (run-wide ones; no section key is).
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir",
        "resume",
        "overwrite_output_dir",
        "device",
        "num_workers",
        "compile",
        "gradient_checkpointing",
        "progress",
        "tensorboard",
        "log_every_steps",
        "save_every_steps",
        "batch_size_eval",
        "early_stopping_patience",
        "max_nonfinite_steps",
    }
)


@dataclass
class Progress:
    """Where a run is."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches consumed in the current epoch
    last_eval_step: int = -1  # the step last evaluated: an epoch end on an --eval_every_steps step is one


def resume_identity(config: TrainConfig) -> dict[str, Any]:
    """The config values that must match for --resume to continue the same run (all but the changeable)."""
    return {key: value for key, value in config.flat_dict().items() if key not in RESUMABLE_CHANGES}


def data_identity(task_defs: Mapping[str, TaskDef], train: MultiTaskDataset) -> dict[str, str]:
    """What a resumed run must train on: each task's definition and a fingerprint of its train rows."""
    identity: dict[str, str] = {}
    for name, dataset in train.datasets.items():
        definition = json.dumps(task_defs[name].to_dict(), sort_keys=True)
        identity[f"task '{name}' definition"] = hashlib.blake2b(
            definition.encode(), digest_size=16
        ).hexdigest()
        identity[f"task '{name}' train rows"] = _split_fingerprint(dataset.split)
    return identity


def _split_fingerprint(split: EncodedSplit) -> str:
    """A digest of a split's token ids, offsets, labels and uids (a few ms for 10^6 tokens)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (split.input_ids, split.seq_offsets, split.row_offsets, split.labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update("\n".join(map(str, split.uids)).encode())
    return digest.hexdigest()


def check_resumable(
    path: Path, state: Mapping[str, Any], config: Mapping[str, Any], data: Mapping[str, str]
) -> None:
    """A one-line ``UserError`` naming the first config key or data item that differs from the saved run.

    ``config``: ``resume_identity`` of this run; ``data``: its ``data_identity``.
    """
    saved = flat_identity(state["config"])
    unrecorded = [key for key in config if key not in saved]
    if unrecorded:
        raise UserError(
            f"{path}: written by an older train.py that did not record {key_label(unrecorded[0])}; "
            "resume it with that version, or start over with --overwrite_output_dir"
        )
    changed = [key for key in config if saved.get(key) != config[key]]
    if changed:
        raise UserError(f"{path}: cannot resume: {key_label(changed[0])} differs from the interrupted run")
    saved_data = state.get("data")
    if saved_data is not None and saved_data != data:
        what = next(key for key in data if saved_data.get(key) != data[key])
        raise UserError(
            f"{path}: cannot resume: {what} differs from the interrupted run's "
            "(task definitions or training rows changed)"
        )


class ResumeState:
    """Everything ``--resume`` restores besides the weights, read from and written to the live objects."""

    def __init__(
        self,
        *,
        progress: Progress,
        best: BestCheckpoint,
        skipped: SkippedSteps,
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler,
        sampler: MultiTaskBatchSampler,
        scaler: torch.amp.GradScaler,
        config: Mapping[str, Any],
        data: Mapping[str, str],
    ) -> None:
        self.progress = progress
        self.best = best
        self.skipped = skipped
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.sampler = sampler
        self.scaler = scaler
        self.config = dict(config)  # resume_identity
        self.data = dict(data)  # data_identity

    def state_dict(self) -> dict[str, Any]:
        """The contents of ``trainer_state.pt`` (tensors and primitives only), the RNGs as they are now."""
        progress = self.progress
        return {
            "version": STATE_VERSION,
            "step": progress.step,
            "epoch": progress.epoch,
            "batches_in_epoch": progress.batches_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(steps_consumed=progress.batches_in_epoch),
            "grad_scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            **self.best.state_dict(),
            "last_eval_step": progress.last_eval_step,
            "nonfinite_total": self.skipped.read()[0],
            "config": self.config,
            "data": self.data,
        }

    def load_state_dict(self, state: Mapping[str, Any], source: Path | str = STATE_FILE) -> None:
        """Restore ``state`` (checked with ``check_resumable`` first); sets the global RNGs. ``source``: the
        file it came from, for the error when the optimizer state does not fit."""
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError) as error:
            raise UserError(f"{source}: the optimizer state does not fit this run ({error})") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        _set_rng_state(state["rng"])
        self.progress.step, self.progress.epoch = state["step"], state["epoch"]
        self.progress.batches_in_epoch = state["batches_in_epoch"]
        self.best.load_state_dict(state)
        self.progress.last_eval_step = int(state.get("last_eval_step", -1))
        self.skipped.restart(total=state["nonfinite_total"])


def read_state(path: Path) -> dict[str, Any]:
    """``trainer_state.pt`` (tensors and primitives only); a damaged file is one ``UserError`` line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise UserError(
            f"{path}: damaged or truncated resume state ({str(error).splitlines()[0]}); remove "
            f"{path.parent} to start over"
        ) from None
    if not isinstance(state, dict) or "config" not in state:
        raise UserError(f"{path}: not a resume state written by this trainer")
    return state


def write_checkpoint(
    folder: Path,
    model: MTDNNModel,
    tokenizer: PreTrainedTokenizerBase,
    metadata: Mapping[str, Any],
    state: Mapping[str, Any],
    teacher: Mapping[str, torch.Tensor],
) -> None:
    """Replace ``folder`` atomically with the model, ``STATE_FILE`` and (Bregman) ``TEACHER_FILE``."""
    with atomic_directory(folder) as tmp:
        model.save_to(tmp, tokenizer, metadata=dict(metadata))
        torch.save(dict(state), tmp / STATE_FILE)
        if teacher:
            tensors = {key: value.detach().cpu().clone().contiguous() for key, value in teacher.items()}
            safetensors.torch.save_file(tensors, str(tmp / TEACHER_FILE))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(item) for item in value) if isinstance(value, list | tuple) else value
