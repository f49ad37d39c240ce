"""The multi-task training loop, top to bottom.

sampler -> batch (one task) -> forward -> task loss x task weight -> backward (x grad_accumulation_step)
-> clip -> optimizer -> scheduler -> log; evaluate every dev split each epoch (and every N steps), keep the
best checkpoint, and a resumable ``last`` checkpoint.

Output folder::

    <output_dir>/last/        checkpoint (MTDNNModel.save layout) + trainer_state.pt (resume)
    <output_dir>/best/        checkpoint with the best --best_metric so far
    <output_dir>/metrics.jsonl  one JSON object per train-log window and per evaluation
    <output_dir>/results.json   the final summary
    <output_dir>/train.log
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pickle
import random
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, set_seed

from data_utils.atomic import (
    aside_path,
    atomic_directory,
    atomic_write_json,
    clean_stale_temporaries,
    recover_interrupted_replace,
)
from data_utils.cache import EncodedSplit, load_split, split_dir, verify_cache
from data_utils.dataset import Batch, Collator, MultiTaskDataset, TaskDataset
from data_utils.errors import UserError
from data_utils.masking import MaskingSpec
from data_utils.metrics import METRICS, Metric
from data_utils.prepro import tokenizer_fingerprint
from data_utils.sampler import MultiTaskBatchSampler, SamplingStrategyName, make_strategy
from data_utils.task_def import TaskDef, load_task_defs
from module.adversarial.precision import resolution_warning
from mt_dnn.config import TrainConfig
from mt_dnn.distributed import Distributed
from mt_dnn.inference import evaluate
from mt_dnn.model import (
    ModelOptions,
    MTDNNModel,
    is_checkpoint,
    load_tokenizer,
    read_safetensors,
    usable_positions,
)
from mt_dnn.objective import TrainingObjective, run_method
from mt_dnn.optim import build_optimizer, build_scheduler
from mt_dnn.run_log import RunLog, require_tensorboard
from mt_dnn.tasks import task_kind

logger = logging.getLogger("mt_dnn.trainer")

STATE_FILE = "trainer_state.pt"
TEACHER_FILE = "bregman_teacher.safetensors"
STATE_VERSION = 1
# Config keys that must match for --resume to continue the same run.
_RESUME_KEYS = (
    "train_datasets",
    "test_datasets",
    "best_metric",
    "eval_every_steps",
    "init_checkpoint",
    "use_encoder_pooler",
    "batch_size",
    "grad_accumulation_step",
    "epochs",
    "seed",
    "sampling",
    "mix_opt",
    "ratio",
    "temperature",
    "bucket_window",
    "learning_rate",
    "scheduler_type",
    "warmup",
    "data_dir",
    "task_def",
    "optimizer",
    "weight_decay",
    "adam_eps",
    "grad_clipping",
    "dropout_p",
    "max_steps",
    "adv_train",
    "adv_method",
    "adv_alpha",
    "adv_k",
    "adv_step_size",
    "adv_noise_var",
    "adv_epsilon",
    "adv_p_norm",
    "adv_norm_level",
    "adv_dropout_replay",
    "adv_init_mag",
    "adv_replays",
    "adv_outer_steps",
    "adv_noise_type",
    "adv_radius",
    "bregman_mu",
    "bregman_beta",
    "bregman_beta_warmup",
    "bregman_warmup",
    "bregman_steps",
    "bregman_teacher_mode",
    "bf16",
    "fp16",
)


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row."""


@dataclass
class RunData:
    task_defs: dict[str, TaskDef]
    train: MultiTaskDataset
    evals: dict[tuple[str, str], TaskDataset]  # labelled dev splits: evaluated during training
    tests: dict[tuple[str, str], TaskDataset]  # labelled test splits: evaluated once, with the best model
    collator: Collator
    masking: MaskingSpec | None = None  # the tokenizer's mask token etc., when a task is mask_lm


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_run_data(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> RunData:
    """Task definitions, the train splits and every labelled dev/test split found in the token-id cache."""
    all_defs = load_task_defs(config.task_def, default_dropout_p=config.dropout_p)
    eval_tasks = config.test_datasets or config.train_datasets
    for name in [*config.train_datasets, *eval_tasks]:
        if name not in all_defs:
            raise UserError(
                f"{config.task_def}: task '{name}' is not defined (defined: {', '.join(all_defs)})"
            )
    task_defs = {name: all_defs[name] for name in dict.fromkeys([*config.train_datasets, *eval_tasks])}

    train = MultiTaskDataset(
        {
            name: _task_dataset(config.data_dir, task_defs[name], task_defs[name].train_split)
            for name in config.train_datasets
        }
    )
    evals: dict[tuple[str, str], TaskDataset] = {}
    tests: dict[tuple[str, str], TaskDataset] = {}
    for name in eval_tasks:
        for split in task_defs[name].eval_splits:
            if (split_dir(config.data_dir, name, split) / "meta.json").is_file():
                dataset = _task_dataset(config.data_dir, task_defs[name], split)
                # A self-labelled kind's text is its own label (mask_lm): every split of it can be scored.
                self_labelled = task_kind(task_defs[name]).self_labelled
                if (dataset.split.has_labels or self_labelled) and len(dataset):
                    (tests if split in task_defs[name].test_splits else evals)[(name, split)] = dataset
    _check_evaluated(config, task_defs, evals, tests)
    collator = Collator(task_defs, pad_token_id=int(tokenizer.pad_token_id or 0))
    masking = None
    if any(task_kind(task).needs_masking for task in task_defs.values()):
        masking = MaskingSpec.from_tokenizer(tokenizer)
    return RunData(
        task_defs=task_defs, train=train, evals=evals, tests=tests, collator=collator, masking=masking
    )


def _check_evaluated(
    config: TrainConfig,
    task_defs: Mapping[str, TaskDef],
    evals: Mapping[tuple[str, str], TaskDataset],
    tests: Mapping[tuple[str, str], TaskDataset],
) -> None:
    """A task named in --test_datasets must have something to evaluate; a task without a labelled dev split
    cannot pick the best checkpoint, which is said rather than left to an empty best/."""
    for name in config.test_datasets or config.train_datasets:
        has_dev = any(task == name for task, _ in evals)
        has_test = any(task == name for task, _ in tests)
        looked = ", ".join(task_defs[name].eval_splits) or "none"
        if config.test_datasets and not has_dev and not has_test:
            raise UserError(
                f"{config.data_dir}: --test_datasets task '{name}' has no labelled dev or test split in the "
                f"cache (its eval splits: {looked}); run prepro_std.py on them, or drop it from the flag"
            )
        if not has_dev:
            logger.warning(
                "task '%s' has no labelled dev split in %s (eval splits: %s): it cannot choose the best "
                "checkpoint%s",
                name,
                config.data_dir,
                looked,
                "" if any(evals) else "; no split is evaluated during training, so best/ is not written",
            )


def _task_dataset(data_dir: str, task_def: TaskDef, split: str) -> TaskDataset:
    path = split_dir(data_dir, task_def.name, split)
    if not (path / "meta.json").is_file():
        raise UserError(
            f"{path}: no token-id cache for task '{task_def.name}' split '{split}' (run prepro_std.py)"
        )
    return TaskDataset(task_def, load_split(path))


# What a run leaves in its output folder: a folder holding any of them holds a run.
RUN_OUTPUTS = ("results.json", "metrics.jsonl", "best", "last", "tensorboard")


def check_output_dir(config: TrainConfig) -> list[str]:
    """What --overwrite_output_dir will remove; refuse to write over a run (as HF's Trainer does) unless
    --resume continues it (its ``last/`` resume state must exist) or --overwrite_output_dir replaces it.
    Reads only (every rank runs it); ``repair_output_dir`` and ``clear_outputs`` change the folder."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out}: exists and is not a folder")
    if config.resume and config.overwrite_output_dir:
        raise UserError(
            "--resume continues the run in --output_dir, --overwrite_output_dir replaces it: pick one"
        )
    present = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if not present:
        return []
    if config.resume:
        resumable = (out / "last" / STATE_FILE).is_file() or (aside_path(out / "last") / STATE_FILE).is_file()
        if not resumable:
            raise UserError(
                f"--output_dir {out}: holds a run ({', '.join(present)}) but no {Path('last') / STATE_FILE} "
                "to resume from; replace it with --overwrite_output_dir or pick another folder"
            )
        return []
    if not config.overwrite_output_dir:
        raise UserError(
            f"--output_dir {out}: holds a run ({', '.join(present)}); continue it with --resume, replace it "
            "with --overwrite_output_dir, or pick another folder"
        )
    return present


def repair_output_dir(out: Path) -> None:
    """After a kill during a checkpoint save: put back a copy moved aside, drop half-written temporaries."""
    if not out.is_dir():
        return
    for name in ("last", "best"):
        if recover_interrupted_replace(out / name):
            logger.warning("%s: restored the copy an interrupted save had moved aside", out / name)
    for path in clean_stale_temporaries(out):
        logger.info("removed %s, left by an interrupted save", path)


def clear_outputs(out: Path, names: list[str]) -> None:
    """--overwrite_output_dir: remove the earlier run's outputs (train.log is appended to, not removed)."""
    for name in names:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if names:
        logger.info("--overwrite_output_dir: removed %s from %s", ", ".join(names), out)


def build_model(config: TrainConfig, task_defs: Mapping[str, TaskDef]) -> MTDNNModel:
    """A model on ``--init_checkpoint``; from one of our checkpoints, heads of tasks it shares carry over."""
    options = ModelOptions(use_encoder_pooler=config.use_encoder_pooler)
    model = MTDNNModel.from_encoder(config.init_checkpoint, task_defs, options)
    method = run_method(config, model)
    if method is not None:  # R4F: spectral norm on the heads, before heads carried over from a checkpoint
        model.prepare_for(method)
    if is_checkpoint(config.init_checkpoint):
        source = MTDNNModel.load(config.init_checkpoint)
        for name, head in model.heads.items():
            if name in source.heads and source.task_defs[name].to_dict() == model.task_defs[name].to_dict():
                head.load_state_dict(source.heads[name].state_dict())
                logger.info("head '%s' initialised from %s", name, config.init_checkpoint)
    return model


class Trainer:
    """One training run. Under torchrun, every rank builds one with its ``Distributed`` context: the model is
    wrapped in DistributedDataParallel, the sampler gives each rank its slice of every global batch, and only
    rank 0 logs, shows progress and writes checkpoints."""

    def __init__(self, config: TrainConfig, context: Distributed | None = None) -> None:
        self.config = config
        self.out = Path(config.output_dir)
        self.dist = context or Distributed(device=resolve_device(config.device))
        if self.dist.is_main:
            repair_output_dir(self.out)
            if os.path.isdir(config.data_dir) and os.access(config.data_dir, os.W_OK):
                clean_stale_temporaries(config.data_dir)  # once, before any rank reads the cache
        self._barrier()
        to_clear = check_output_dir(config)  # every rank: a refusal must stop them all
        if config.tensorboard:
            require_tensorboard()  # every rank, before any work
        self.device = self.dist.device
        set_seed(config.seed)
        self.tokenizer = load_tokenizer(config.init_checkpoint)
        self.data = load_run_data(config, self.tokenizer)
        self.model = build_model(config, self.data.task_defs).to(self.device)
        encoder = self.model.encoder.config  # the cache's ids and lengths must fit the encoder
        verify_cache(
            config.data_dir,
            self.data.task_defs,
            vocab_size=getattr(encoder, "vocab_size", None),
            max_positions=usable_positions(encoder.to_dict()),
            type_vocab_size=getattr(encoder, "type_vocab_size", None),
            tokenizer_sha256=tokenizer_fingerprint(self.tokenizer)["sha256"],
        )

        strategy_args: dict[str, Any] = {}
        if config.sampling is SamplingStrategyName.MIX_OPT:
            strategy_args = {"ratio": config.ratio, "mix_opt": config.mix_opt}
        elif config.sampling is SamplingStrategyName.TEMPERATURE:
            strategy_args = {"temperature": config.temperature}
        self.sampler = MultiTaskBatchSampler(
            self.data.train.task_sizes,
            config.batch_size,
            make_strategy(config.sampling, **strategy_args),
            seed=config.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            lengths=self.data.train.lengths if config.bucket_window else None,
            bucket_window=config.bucket_window,
        )
        self.loader = DataLoader(
            self.data.train,
            batch_sampler=self.sampler,
            collate_fn=self.data.collator,
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
            # Its own generator: creating an iterator must not draw from the global RNG (dropout's).
            generator=torch.Generator().manual_seed(config.seed),
        )
        # FreeAT replays every batch m times, one optimizer step each: m steps per batch in the schedule.
        method = run_method(config, self.model)
        self.replays = 1 if method is None else method.replays
        self.steps_per_epoch = math.ceil(len(self.sampler) / config.grad_accumulation_step) * self.replays
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps:
            if config.max_steps % self.replays:
                raise UserError(
                    f"--max_steps {config.max_steps}: FreeAT takes {self.replays} optimizer steps per batch; "
                    f"give a multiple of {self.replays}"
                )
            self.total_steps = min(self.total_steps, config.max_steps)
        self.optimizer = build_optimizer(self.model, config, self.device)
        self.scheduler = build_scheduler(self.optimizer, config, self.total_steps)
        if config.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.objective = TrainingObjective(self.model, config, self.total_steps, masking=self.data.masking)
        if self.dist.is_main:  # every check has passed: now the earlier run may go
            clear_outputs(self.out, to_clear)
        # Mixed precision: autocast around the forward passes; fp16 also scales the loss (GradScaler).
        self.amp_dtype = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.fp16)
        # Checked once, at the first adversarial step under autocast: does the perturbation survive it?
        self._check_precision = self.amp_dtype is not None and config.adv_method is not None
        # What runs the training forward: the model, or DDP around it. Every step trains one task's head, so
        # the other heads have no gradient in that step: DDP must look for unused parameters when there are
        # several tasks (all ranks draw the same task each step, so they agree on which ones).
        self.train_module: torch.nn.Module = self.model
        if self.dist.enabled:
            self.train_module = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=len(config.train_datasets) > 1,
            )
        if config.compile:
            self.model.compile_encoder()  # after the Bregman teacher's copy: the teacher stays eager

        self.step = 0  # optimizer steps taken
        self.epoch = 0
        self.batches_in_epoch = 0  # micro-batches consumed in the current epoch
        self.best_score: float | None = None
        self.best_step = -1
        self.evals_since_best = 0  # evaluations in a row without a new best (--early_stopping_patience)
        self.last_eval_step = -1  # the step last evaluated: an epoch end on an --eval_every_steps step is one
        self.skipped = _SkippedSteps(self.device)
        self.adv_skipped_total = 0
        self.seconds = {"eval": 0.0, "checkpoint": 0.0}  # wall time outside the training steps
        self.last_eval: dict[str, dict[str, float]] = {}
        self.test_eval: dict[str, dict[str, float]] = {}
        self._best_key = _parse_best_metric(config.best_metric, self.data)
        self.data_identity = self._data_identity()  # what --resume must find again (computed once)

    # ------------------------------------------------------------------ the loop

    def train(self, until_step: int | None = None) -> dict[str, Any]:
        """Train to the end (or stop, checkpointed, after ``until_step`` optimizer steps) and summarise."""
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if config.resume:
            self._resume()
        log = RunLog(
            self.out, tensorboard=config.tensorboard, resume=config.resume, enabled=self.dist.is_main
        )
        start_time = time.perf_counter()
        logger.info(
            "training %s on %s: %d steps (%d per epoch), %d eval splits",
            ", ".join(config.train_datasets),
            self.device,
            self.total_steps,
            self.steps_per_epoch,
            len(self.data.evals),
        )
        progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (config.progress and self.dist.is_main),
            desc="train",
        )
        window = _TrainWindow(self.device)
        stopped_early = False  # interrupted at until_step: resumable, not finished
        converged = self._patience_exhausted()  # early stopping: finished before the last epoch
        done = converged or self.step >= self.total_steps  # --max_steps (or a finished run resumed)
        if done and not converged and self.last_eval_step != self.step:
            # Resumed after the last step but before its evaluation (killed in it): finish that epoch end.
            if self.batches_in_epoch >= len(self.sampler):
                self.epoch, self.batches_in_epoch = self.epoch + 1, 0
            self._evaluate_and_keep_best(log)
            self._save_last()
        while self.epoch < config.epochs and not stopped_early and not done:
            self.model.train()
            self.sampler.set_epoch(self.epoch)
            for group in self._step_groups():
                steps_before = self.step
                for replay in range(self.replays):
                    self._train_step(group, replay, window)
                    progress.update(1)
                self.batches_in_epoch += len(group)
                # Periodic work at whole groups only (FreeAT: after all replays of a batch), so a resumed
                # run continues exactly where the interrupted one stopped.
                if _crossed(config.log_every_steps, steps_before, self.step):
                    self._log_window(log, window)
                if _crossed(config.eval_every_steps, steps_before, self.step):
                    self._evaluate_and_keep_best(log)
                    converged = self._patience_exhausted()
                done = converged or self.step >= self.total_steps
                if done and self.step < self.steps_per_epoch * (self.epoch + 1):  # stopped inside an epoch
                    if window.has_data():
                        self._log_window(log, window)
                    self._evaluate_and_keep_best(log)
                    self._save_last()
                    break
                if _crossed(config.save_every_steps, steps_before, self.step):
                    self._save_last()
                if until_step is not None and self.step >= until_step:
                    stopped_early = True
                    break
            if stopped_early or (done and self.batches_in_epoch < len(self.sampler)):
                break
            self.epoch += 1
            self.batches_in_epoch = 0
            if window.has_data():
                self._log_window(log, window)
            self._evaluate_and_keep_best(log)
            converged = self._patience_exhausted()
            done = converged or self.step >= self.total_steps
            self._save_last()
        progress.close()
        if converged:
            logger.info(
                "early stopping at step %d: %d evaluations without a new best (best at step %d)",
                self.step,
                self.evals_since_best,
                self.best_step,
            )
        if stopped_early:
            self._save_last()
        else:
            self._evaluate_tests_with_best(log)
        results = self._results(time.perf_counter() - start_time, finished=not stopped_early)
        results["early_stopped"] = converged
        if self.dist.is_main:
            atomic_write_json(self.out / "results.json", results)
        log.close()
        return results

    def _step_groups(self) -> Iterator[list[Batch]]:
        """The rest of the epoch's micro-batches (on the device), grouped by optimizer step."""
        group: list[Batch] = []
        for batch in self.loader:
            group.append(batch.to(self.device, non_blocking=True))
            position = self.batches_in_epoch + len(group)
            if len(group) == self.config.grad_accumulation_step or position == len(self.sampler):
                yield group
                group = []
        if group:
            yield group

    def _train_step(self, group: list[Batch], replay: int, window: _TrainWindow) -> None:
        """One optimizer step: forward and backward every micro-batch of ``group``, then update."""
        config = self.config
        # Kept on the device: read once per optimizer step, together with the gradient norm.
        losses_finite = torch.ones((), dtype=torch.bool, device=self.device)
        for index, batch in enumerate(group):
            with self._gradient_sync(index + 1 == len(group)), self._autocast():
                loss, stats = self.objective.backward_step(
                    self.train_module,
                    batch,
                    self._backward,
                    replay=replay,
                    key=index,
                    inner_loss_scale=self._inner_loss_scale(),
                    noise_salt=f"{config.seed}|{self.epoch}" + (f"|{replay}" if replay else ""),
                )
            window.add(batch.task, loss, stats)
            losses_finite = losses_finite & torch.isfinite(loss)
            if self._check_precision and "delta_ratio" in stats:
                self._warn_if_perturbation_lost(float(stats["delta_ratio"]))  # one host sync per step until
                # a perturbed step is seen (FreeAT's first replay has none)
        self._optimizer_step(losses_finite)

    def _warn_if_perturbation_lost(self, ratio: float) -> None:
        """Warn once when the perturbation is below the autocast resolution (checked until one is seen)."""
        if ratio <= 0:
            return
        self._check_precision = False
        assert self.amp_dtype is not None and self.config.adv_method is not None
        message = resolution_warning(str(self.config.adv_method), ratio, self.amp_dtype)
        if message is not None and self.dist.is_main:
            logger.warning(message)

    def _backward(self, loss: torch.Tensor) -> None:
        """One backward pass of a micro-batch's loss: averaged over the accumulation, scaled under fp16."""
        with torch.autocast(self.device.type, enabled=False):
            self.scaler.scale(loss / self.config.grad_accumulation_step).backward()

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _inner_loss_scale(self) -> float | torch.Tensor:
        """fp16: SMART's inner divergence is scaled by the loss scale, so its tiny gradient does not underflow
        (the gradient is normalised afterwards, so the scale cancels)."""
        if not self.scaler.is_enabled():
            return 1.0
        scale = self.scaler._get_scale_async()  # a device tensor: no host sync (None before the first step)
        return scale if scale is not None else self.scaler.get_scale()

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager[object]:
        """DDP all-reduces gradients in the backward of the last micro-batch of an optimizer step only."""
        if sync or not isinstance(self.train_module, torch.nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.train_module.no_sync()

    def _barrier(self) -> None:
        if self.dist.enabled:
            torch.distributed.barrier()

    def _log_window(self, log: RunLog, window: _TrainWindow) -> None:
        self._check_skipped_steps()
        stats = window.read_and_reset()
        skipped = int(sum(stats.get("adv_skipped", {}).values()))
        if skipped:
            self.adv_skipped_total += skipped
            logger.warning(
                "%d batches had a non-finite adversarial gradient: their term was skipped", skipped
            )
        log.train(self.step, self.epoch, self.scheduler.get_last_lr()[0], stats)

    def _optimizer_step(self, losses_finite: torch.Tensor) -> None:
        """Clip, step, schedule. A non-finite loss or grad norm skips the update (counted; too many stop).

        With a fused optimizer the skip is decided on the device (the kernel reads ``found_inf``, as under
        ``GradScaler``) and the Bregman teacher's EMA weight is zeroed likewise, so the step needs no host
        synchronisation; the counters are read at log time on an accelerator, every step on the CPU.
        """
        max_norm = self.config.grad_clipping if self.config.grad_clipping > 0 else math.inf
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        finite = torch.isfinite(grad_norm) & losses_finite
        if self.dist.enabled:  # a non-finite loss on any rank skips the step on every rank
            finite = finite.to(torch.int32)
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            finite = finite.bool()
        if self.scaler.is_enabled():
            # fp16: the scaler skips a step whose gradients overflowed and lowers its scale; an overflow is
            # routine there, so only a non-finite *loss* counts towards --max_nonfinite_steps.
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.objective.after_optimizer_step(self.step + 1, applied=finite)
            finite = losses_finite
        elif _skips_on_device(self.optimizer):
            self.optimizer.grad_scale = None  # type: ignore[attr-defined]
            self.optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf, self.optimizer.grad_scale  # type: ignore[attr-defined]
            self.objective.after_optimizer_step(self.step + 1, applied=finite)
        elif bool(finite):
            self.optimizer.step()
            self.objective.after_optimizer_step(self.step + 1)
        self.skipped.update(finite)
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # A skipped first update makes torch warn that the schedule stepped before the optimizer did.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.step += 1
        if self.device.type == "cpu":
            self._check_skipped_steps()

    def _check_skipped_steps(self) -> None:
        """Warn about newly skipped updates; stop when ``--max_nonfinite_steps`` came in a row."""
        new, worst_run = self.skipped.read_new()
        if new:
            logger.warning("%d update(s) skipped for a non-finite loss/gradient (by step %d)", new, self.step)
        if worst_run >= self.config.max_nonfinite_steps:
            raise TrainingDiverged(
                f"training diverged: {worst_run} non-finite losses in a row by step {self.step} "
                f"(try a lower --learning_rate or --grad_clipping)"
            )

    # ------------------------------------------------------------------ evaluation

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def _evaluate_and_keep_best(self, log: RunLog) -> None:
        if self.step == self.last_eval_step:  # an epoch ended on an --eval_every_steps step: done already
            return
        self.last_eval_step = self.step
        self._check_finite_weights()
        scores: dict[str, dict[str, float]] = {}
        with self._timed("eval"):
            for (task, split), dataset in self.data.evals.items():
                scores[f"{task}_{split}"] = self._score(self.model, dataset)
                log.eval(self.step, self.epoch, task, split, scores[f"{task}_{split}"])
        self.model.train()
        self.last_eval = scores
        score = self._best_key.score(scores)
        if score is None and scores:
            logger.warning(
                "step %d: --best_metric %s is NaN or missing on this evaluation (constant labels or "
                "predictions?); it cannot pick a best checkpoint",
                self.step,
                self._best_key.describe(),
            )
        if self.best_score is not None and (score is None or score <= self.best_score):
            self.evals_since_best += 1  # a NaN evaluation is no improvement either
        if score is not None and (self.best_score is None or score > self.best_score):
            self.best_score, self.best_step = score, self.step
            self.evals_since_best = 0
            with self._timed("checkpoint"):
                if self.dist.is_main:
                    self.model.save(self.out / "best", self.tokenizer, metadata=self._metadata(scores))
                self._barrier()
            logger.info("step %d: new best %s = %.3f", self.step, self._best_key.describe(), score)

    def _check_finite_weights(self) -> None:
        """A run whose weights became non-finite (e.g. an infinite weight decay) stops with an error."""
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in self.model.parameters()]).all()
        if not bool(finite):
            bad = next(name for name, p in self.model.named_parameters() if not torch.isfinite(p).all())
            raise TrainingDiverged(
                f"training diverged: weight '{bad}' is not finite at step {self.step} "
                f"(check --learning_rate, --weight_decay, --grad_clipping)"
            )

    def _patience_exhausted(self) -> bool:
        patience = self.config.early_stopping_patience
        return patience > 0 and self.evals_since_best >= patience

    def _evaluate_tests_with_best(self, log: RunLog) -> None:
        """Labelled test splits are scored once, by the best checkpoint (never used to choose it)."""
        self._check_finite_weights()
        if self.data.evals and self.best_score is None:
            raise UserError(
                f"--best_metric {self._best_key.describe()} was NaN or missing at every evaluation (constant "
                f"dev labels?): there is no best checkpoint; {self.out / 'last'} holds the final model. "
                "Pick another --best_metric"
            )
        self.test_eval = {}
        if not self.data.tests:
            return
        with self._timed("eval"):
            self._evaluate_tests(log)

    def _evaluate_tests(self, log: RunLog) -> None:
        best = self.out / "best"
        model = MTDNNModel.load(best, map_location=self.device) if best.is_dir() else self.model
        for (task, split), dataset in self.data.tests.items():
            self.test_eval[f"{task}_{split}"] = self._score(model, dataset)
            log.eval(self.best_step, self.epoch, task, split, self.test_eval[f"{task}_{split}"])

    def _score(self, model: MTDNNModel, dataset: TaskDataset) -> dict[str, float]:
        """The metrics of ``model`` on a split, predicted by every rank and gathered."""
        return evaluate(
            model,
            dataset,
            self.data.collator,
            batch_size=self.config.batch_size_eval,
            device=self.device,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            autocast_dtype=self.amp_dtype,
            masking=self.data.masking,
            progress=self.config.progress and self.dist.is_main,
        ).metrics

    # ------------------------------------------------------------------ checkpoints and resume

    def _metadata(self, scores: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "config": self.config.to_dict(),
            "eval": dict(scores or {}),
        }

    def _save_last(self) -> None:
        with self._timed("checkpoint"):
            if self.dist.is_main:
                self._write_last()
            self._barrier()

    def _write_last(self) -> None:
        state = {
            "version": STATE_VERSION,
            "step": self.step,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(steps_consumed=self.batches_in_epoch),
            "grad_scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "best_score": self.best_score,
            "best_step": self.best_step,
            "evals_since_best": self.evals_since_best,
            "last_eval_step": self.last_eval_step,
            "nonfinite_total": self.skipped.read()[0],
            "config": _resume_identity(self.config),
            "data": self.data_identity,
        }
        with atomic_directory(self.out / "last") as tmp:
            self.model.save_to(tmp, self.tokenizer, metadata=self._metadata(self.last_eval))
            torch.save(state, tmp / STATE_FILE)
            teacher = self.objective.state_dict()
            if teacher:
                tensors = {key: value.detach().cpu().clone().contiguous() for key, value in teacher.items()}
                safetensors.torch.save_file(tensors, str(tmp / TEACHER_FILE))

    def _resume(self) -> None:
        last = self.out / "last"
        if not (last / STATE_FILE).is_file():
            logger.info("--resume: no %s yet, starting from scratch", last / STATE_FILE)
            return
        state = _read_state(last / STATE_FILE)
        ours = _resume_identity(self.config)
        unrecorded = [key for key in _RESUME_KEYS if key not in state["config"]]
        if unrecorded:
            raise UserError(
                f"{last / STATE_FILE}: written by an older train.py that did not record --{unrecorded[0]}; "
                "resume it with that version, or start over with --overwrite_output_dir"
            )
        changed = [key for key in _RESUME_KEYS if state["config"].get(key) != ours[key]]
        if changed:
            raise UserError(
                f"{last / STATE_FILE}: cannot resume: --{changed[0]} differs from the interrupted run"
            )
        saved_data, our_data = state.get("data"), self.data_identity
        if saved_data is not None and saved_data != our_data:
            what = next(key for key in our_data if saved_data.get(key) != our_data[key])
            raise UserError(
                f"{last / STATE_FILE}: cannot resume: {what} differs from the interrupted run's "
                "(task definitions or training rows changed)"
            )
        resumed = MTDNNModel.load(last, map_location=self.device)
        self.model.load_state_dict(resumed.state_dict())
        if self.objective.bregman is not None:
            self.objective.load_state_dict(read_safetensors(last / TEACHER_FILE, self.device))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError) as error:
            raise UserError(
                f"{last / STATE_FILE}: the optimizer state does not fit this run ({error})"
            ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        _set_rng_state(state["rng"])
        self.step, self.epoch, self.batches_in_epoch = (
            state["step"],
            state["epoch"],
            state["batches_in_epoch"],
        )
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.evals_since_best = int(state.get("evals_since_best", 0))
        self.last_eval_step = int(state.get("last_eval_step", -1))
        self.skipped = _SkippedSteps(self.device, total=state["nonfinite_total"])
        logger.info("resumed from %s at step %d (epoch %d)", last, self.step, self.epoch)

    def _data_identity(self) -> dict[str, str]:
        """What a resumed run must train on: each task's definition and a fingerprint of its train rows."""
        identity: dict[str, str] = {}
        for name in self.config.train_datasets:
            definition = json.dumps(self.data.task_defs[name].to_dict(), sort_keys=True)
            identity[f"task '{name}' definition"] = hashlib.blake2b(
                definition.encode(), digest_size=16
            ).hexdigest()
            identity[f"task '{name}' train rows"] = _split_fingerprint(self.data.train.datasets[name].split)
        return identity

    def _results(self, seconds: float, finished: bool) -> dict[str, Any]:
        return {
            "finished": finished,
            "steps": self.step,
            "epochs": self.epoch,
            "train_seconds": round(seconds, 2),
            # Of which: evaluation and checkpoint writing; the rest is the training steps.
            "eval_seconds": round(self.seconds["eval"], 2),
            "checkpoint_seconds": round(self.seconds["checkpoint"], 2),
            "best_metric": self._best_key.describe(),
            "best_score": self.best_score,
            "best_step": self.best_step,
            "final_eval": self.last_eval,
            "test_eval": self.test_eval,
            "nonfinite_steps_skipped": self.skipped.read()[0],
            "adv_batches_skipped": self.adv_skipped_total,
            "config": self.config.to_dict(),
        }


@dataclass(frozen=True)
class _BestKey:
    """Which number picks the best checkpoint: one task split's metric, or the mean over eval tasks."""

    split: str | None  # "<task>_<split>" or None for the mean
    metric: str | None

    def score(self, scores: Mapping[str, Mapping[str, float]]) -> float | None:
        """Higher is better: a metric where lower is better (perplexity) counts negated."""
        if self.split is not None:
            value = scores.get(self.split, {}).get(self.metric or "")
            return None if value is None or math.isnan(value) else _oriented(self.metric or "", value)
        firsts = [_oriented(*next(iter(metrics.items()))) for metrics in scores.values() if metrics]
        firsts = [value for value in firsts if not math.isnan(value)]
        return float(np.mean(firsts)) if firsts else None

    def describe(self) -> str:
        return "mean of first metrics" if self.split is None else f"{self.split}:{self.metric}"


def _oriented(metric: str, value: float) -> float:
    """``value`` as a higher-is-better number."""
    known = metric in Metric._value2member_map_
    return -float(value) if known and not METRICS[Metric(metric)].higher_is_better else float(value)


def _parse_best_metric(text: str, data: RunData) -> _BestKey:
    if text == "mean":
        return _BestKey(None, None)
    task, _, metric = text.partition(":")
    if task not in data.task_defs:
        raise UserError(f"--best_metric {text}: task '{task}' is not evaluated")
    task_def = data.task_defs[task]
    splits = [split for split in task_def.dev_splits if (task, split) in data.evals]
    if not splits:
        raise UserError(f"--best_metric {text}: task '{task}' has no labelled dev split in the cache")
    metric = metric or task_def.metrics[0].value
    if metric not in {m.value for m in task_def.metrics}:
        raise UserError(
            f"--best_metric {text}: task '{task}' reports {', '.join(m.value for m in task_def.metrics)}"
        )
    return _BestKey(f"{task}_{splits[0]}", metric)


def _skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Fused Adam/AdamW take a ``found_inf`` tensor and skip the update in the kernel."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        group.get("fused") for group in optimizer.param_groups
    )


class _SkippedSteps:
    """Counts of skipped updates kept on the device: the total, and the longest run in a row."""

    def __init__(self, device: torch.device, total: int = 0) -> None:
        self.total = torch.tensor(total, device=device)
        self.in_a_row = torch.zeros((), dtype=torch.long, device=device)
        self.worst_run = torch.zeros((), dtype=torch.long, device=device)
        self._reported = total

    def update(self, applied: torch.Tensor) -> None:
        skipped = (~applied).long()
        self.total += skipped
        self.in_a_row = (self.in_a_row + 1) * skipped
        self.worst_run = torch.maximum(self.worst_run, self.in_a_row)

    def read(self) -> tuple[int, int]:
        """(total, the longest run in a row so far): one host sync."""
        total, worst_run = (int(value) for value in torch.stack([self.total, self.worst_run]).tolist())
        return total, worst_run

    def read_new(self) -> tuple[int, int]:
        """(skipped since the last ``read_new``, the longest run in a row so far)."""
        total, worst_run = self.read()
        new, self._reported = total - self._reported, total
        return new, worst_run


class _TrainWindow:
    """Per-task sums of the loss and of the objective's statistics, kept on the device: read (one host
    sync) only when logging. ``adv_skipped`` is reported as a count, everything else as a mean."""

    _COUNTED = frozenset({"adv_skipped"})

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, task: str, loss: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> None:
        for name, value in {"loss": loss, **stats}.items():
            sums, counts = self.sums.setdefault(name, {}), self.counts.setdefault(name, {})
            sums[task] = sums.get(task, torch.zeros((), device=self.device)) + value.float()
            counts[task] = counts.get(task, 0) + 1

    def has_data(self) -> bool:
        return bool(self.counts)

    def read_and_reset(self) -> dict[str, dict[str, float]]:
        """Means over the window (and over the ranks: every rank trains the same tasks at the same steps)."""
        stacked = torch.stack([total for sums in self.sums.values() for total in sums.values()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stacked)
            stacked = stacked / torch.distributed.get_world_size()
        values = stacked.tolist()
        out: dict[str, dict[str, float]] = {}
        position = 0
        for name, sums in self.sums.items():
            out[name] = {}
            for task in sums:
                count = 1 if name in self._COUNTED else self.counts[name][task]
                out[name][task] = values[position] / count
                position += 1
        self.sums, self.counts = {}, {}
        return out


def _crossed(every: int, before: int, after: int) -> bool:
    """Whether a multiple of ``every`` (> 0) lies in (before, after]."""
    return every > 0 and after // every > before // every


def _resume_identity(config: TrainConfig) -> dict[str, Any]:
    """The config values that must match for --resume to continue the same run."""
    values = config.to_dict()
    return {key: values[key] for key in _RESUME_KEYS}


def _read_state(path: Path) -> dict[str, Any]:
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


def _split_fingerprint(split: EncodedSplit) -> str:
    """A digest of a split's token ids, offsets, labels and uids (a few ms for 10^6 tokens)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (split.input_ids, split.seq_offsets, split.row_offsets, split.labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update("\n".join(map(str, split.uids)).encode())
    return digest.hexdigest()


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


def train(config: TrainConfig) -> dict[str, Any]:
    """Build a ``Trainer`` for ``config`` and run it to the end."""
    return Trainer(config).train()
