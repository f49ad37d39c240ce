"""The multi-task training loop, top to bottom.

sampler -> batch (one task) -> forward -> task loss x task weight -> backward (x grad_accumulation_step)
-> unscale, clip -> optimizer (skipped when not finite) -> scheduler -> log; evaluate every dev split each
epoch (and every N steps), keep the best checkpoint, and a resumable ``last`` checkpoint.

What the loop uses, each in its module: the cache's tasks and loaders (``mt_dnn.run_data``), the guarded
update and its skip count (``mt_dnn.update``), best-checkpoint selection and patience
(``mt_dnn.best_checkpoint``), the resume state and its checkpoint files (``mt_dnn.checkpoint_state``).

Output folder::

    <output_dir>/last/        checkpoint (MTDNNModel.save layout) + trainer_state.pt (resume)
    <output_dir>/best/        checkpoint with the best --best_metric so far
    <output_dir>/metrics.jsonl  one JSON object per train-log window and per evaluation
    <output_dir>/results.json   the final summary
    <output_dir>/train.log
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import set_seed

from data_utils.atomic import (
    aside_path,
    atomic_write_json,
    clean_stale_temporaries,
    recover_interrupted_replace,
)
from data_utils.dataset import Batch, TaskDataset
from data_utils.errors import UserError
from data_utils.task_def import TaskDef
from module.adversarial.precision import resolution_warning
from mt_dnn.best_checkpoint import BestCheckpoint, Verdict, parse_best_metric
from mt_dnn.checkpoint_state import (
    STATE_FILE,
    TEACHER_FILE,
    Progress,
    ResumeState,
    check_resumable,
    data_identity,
    read_state,
    resume_identity,
    write_checkpoint,
)
from mt_dnn.config import TrainConfig
from mt_dnn.distributed import Distributed, resolve_device
from mt_dnn.inference import evaluate
from mt_dnn.model import ModelOptions, MTDNNModel, is_checkpoint, load_tokenizer, read_safetensors
from mt_dnn.objective import TrainingObjective, run_method
from mt_dnn.optim import build_optimizer, build_scheduler
from mt_dnn.run_data import CacheCheck, load_run_data, train_loader
from mt_dnn.run_log import RunLog, require_tensorboard
from mt_dnn.update import GuardedUpdate, SkipBy, SkippedSteps

logger = logging.getLogger("mt_dnn.trainer")


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row."""


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
        # The cache's ids and lengths must fit the encoder, and be of its tokenizer.
        CacheCheck.for_encoder(self.tokenizer, self.model.encoder.config).cache(
            config.data_dir, self.data.task_defs
        )
        self.sampler, self.loader = train_loader(
            config,
            self.data.train,
            self.data.collator,
            self.device,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
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
        self.update = GuardedUpdate(self.optimizer, self.scaler)
        # Checked once, at the first adversarial step under autocast: does the perturbation survive it?
        self._check_precision = self.amp_dtype is not None and config.adversarial.method is not None
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

        self.progress = Progress()
        self.skipped = SkippedSteps(self.device)
        self.adv_skipped_total = 0
        self.seconds = {"eval": 0.0, "checkpoint": 0.0}  # wall time outside the training steps
        self.last_eval: dict[str, dict[str, float]] = {}
        self.test_eval: dict[str, dict[str, float]] = {}
        self.best = BestCheckpoint(
            parse_best_metric(config.best_metric, self.data.task_defs, self.data.evals),
            patience=config.early_stopping_patience,
        )
        self.resume_state = ResumeState(
            progress=self.progress,
            best=self.best,
            skipped=self.skipped,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            sampler=self.sampler,
            scaler=self.scaler,
            config=resume_identity(config),
            data=data_identity(self.data.task_defs, self.data.train),  # what --resume must find again
        )

    @property
    def step(self) -> int:
        """Optimizer steps taken."""
        return self.progress.step

    # ------------------------------------------------------------------ the loop

    def train(self, until_step: int | None = None) -> dict[str, Any]:
        """Train to the end (or stop, checkpointed, after ``until_step`` optimizer steps) and summarise."""
        config, at = self.config, self.progress
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
            initial=at.step,
            disable=not (config.progress and self.dist.is_main),
            desc="train",
        )
        window = _TrainWindow(self.device)
        stopped_early = False  # interrupted at until_step: resumable, not finished
        converged = self.best.patience_exhausted()  # early stopping: finished before the last epoch
        done = converged or at.step >= self.total_steps  # --max_steps (or a finished run resumed)
        if done and not converged and at.last_eval_step != at.step:
            # Resumed after the last step but before its evaluation (killed in it): finish that epoch end.
            if at.batches_in_epoch >= len(self.sampler):
                at.epoch, at.batches_in_epoch = at.epoch + 1, 0
            self._evaluate_and_save(log, window)
        while at.epoch < config.epochs and not stopped_early and not done:
            self.model.train()
            self.sampler.set_epoch(at.epoch)
            for group in self._step_groups():
                steps_before = at.step
                for replay in range(self.replays):
                    self._train_step(group, replay, window)
                    progress.update(1)
                at.batches_in_epoch += len(group)
                # Periodic work at whole groups only (FreeAT: after all replays of a batch), so a resumed
                # run continues exactly where the interrupted one stopped.
                if _crossed(config.log_every_steps, steps_before, at.step):
                    self._log_window(log, window)
                if _crossed(config.eval_every_steps, steps_before, at.step):
                    self._evaluate_and_keep_best(log)
                    converged = self.best.patience_exhausted()
                done = converged or at.step >= self.total_steps
                if done and at.step < self.steps_per_epoch * (at.epoch + 1):  # stopped inside an epoch
                    self._evaluate_and_save(log, window)
                    break
                if _crossed(config.save_every_steps, steps_before, at.step):
                    self.save_checkpoint()
                if until_step is not None and at.step >= until_step:
                    stopped_early = True
                    break
            if stopped_early or (done and at.batches_in_epoch < len(self.sampler)):
                break
            at.epoch += 1
            at.batches_in_epoch = 0
            self._evaluate_and_save(log, window)
            converged = self.best.patience_exhausted()
            done = converged or at.step >= self.total_steps
        progress.close()
        if converged:
            logger.info(
                "early stopping at step %d: %d evaluations without a new best (best at step %d)",
                at.step,
                self.best.evals_since_best,
                self.best.best_step,
            )
        if stopped_early:
            self.save_checkpoint()
        else:
            self._evaluate_tests_with_best(log)
        results = self._results(time.perf_counter() - start_time, finished=not stopped_early)
        results["early_stopped"] = converged
        if self.dist.is_main:
            atomic_write_json(self.out / "results.json", results)
        log.close()
        return results

    def _evaluate_and_save(self, log: RunLog, window: _TrainWindow) -> None:
        """An epoch end, or the last step: the train log so far, an evaluation, the ``last`` checkpoint."""
        if window.has_data():
            self._log_window(log, window)
        self._evaluate_and_keep_best(log)
        self.save_checkpoint()

    def _step_groups(self) -> Iterator[list[Batch]]:
        """The rest of the epoch's micro-batches (on the device), grouped by optimizer step."""
        group: list[Batch] = []
        for batch in self.loader:
            group.append(batch.to(self.device, non_blocking=True))
            position = self.progress.batches_in_epoch + len(group)
            if len(group) == self.config.grad_accumulation_step or position == len(self.sampler):
                yield group
                group = []
        if group:
            yield group

    def _train_step(self, group: list[Batch], replay: int, window: _TrainWindow) -> None:
        """One optimizer step: the loss and backward of every micro-batch of ``group``, then the update."""
        # Kept on the device: read once per optimizer step, together with the gradient norm.
        losses_finite = torch.ones((), dtype=torch.bool, device=self.device)
        for index, batch in enumerate(group):
            loss, stats = self._loss_step(batch, index, last=index + 1 == len(group), replay=replay)
            window.add(batch.task, loss, stats)
            losses_finite = losses_finite & torch.isfinite(loss)
            if self._check_precision and "delta_ratio" in stats:
                self._warn_if_perturbation_lost(float(stats["delta_ratio"]))  # one host sync per step until
                # a perturbed step is seen (FreeAT's first replay has none)
        self._optimizer_step(losses_finite)

    def _loss_step(
        self, batch: Batch, index: int, *, last: bool, replay: int
    ) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        """Forward and backward of one micro-batch through the objective (which may run several backward
        passes: the adversarial methods'); DDP all-reduces in the ``last`` micro-batch's backward only."""
        with self._gradient_sync(last), self._autocast():
            return self.objective.backward_step(
                self.train_module,
                batch,
                self._backward,
                replay=replay,
                key=index,
                inner_loss_scale=self._inner_loss_scale(),
                noise_salt=f"{self.config.seed}|{self.progress.epoch}" + (f"|{replay}" if replay else ""),
            )

    def _optimizer_step(self, losses_finite: torch.Tensor) -> None:
        """Unscale, clip, update (skipped when not finite), schedule; all on the device but the CPU's check.

        A non-finite loss or grad norm on any rank skips the update on every rank. It counts towards
        --max_nonfinite_steps, except under fp16: there an overflow is routine (the scaler skips the step and
        lowers its scale), so only a non-finite *loss* counts. The schedule advances either way.
        """
        self.scaler.unscale_(self.optimizer)  # fp16: true gradients for clipping; a no-op otherwise
        max_norm = self.config.grad_clipping if self.config.grad_clipping > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        applied = self._on_every_rank(torch.isfinite(grad_norm) & losses_finite)
        self.update.step(applied)
        self.objective.after_optimizer_step(self.progress.step + 1, applied=applied)  # the Bregman teacher
        self.skipped.update(losses_finite if self.update.mode is SkipBy.SCALER else applied)
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # A skipped first update makes torch warn that the schedule stepped before the optimizer did.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.progress.step += 1
        if self.device.type == "cpu":  # a read costs nothing here; on an accelerator it waits for log time
            self._check_skipped_steps()

    def _on_every_rank(self, finite: torch.Tensor) -> torch.Tensor:
        """True where every rank's ``finite`` is."""
        if not self.dist.enabled:
            return finite
        finite = finite.to(torch.int32)
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return finite.bool()

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

    def _warn_if_perturbation_lost(self, ratio: float) -> None:
        """Warn once when the perturbation is below the autocast resolution (checked until one is seen)."""
        if ratio <= 0:
            return
        self._check_precision = False
        assert self.amp_dtype is not None and self.config.adversarial.method is not None
        message = resolution_warning(str(self.config.adversarial.method), ratio, self.amp_dtype)
        if message is not None and self.dist.is_main:
            logger.warning(message)

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
        log.train(self.progress.step, self.progress.epoch, self.scheduler.get_last_lr()[0], stats)

    def _check_skipped_steps(self) -> None:
        """Warn about newly skipped updates; stop when ``--max_nonfinite_steps`` came in a row."""
        new, worst_run = self.skipped.read_new()
        step = self.progress.step
        if new:
            logger.warning("%d update(s) skipped for a non-finite loss/gradient (by step %d)", new, step)
        if worst_run >= self.config.max_nonfinite_steps:
            raise TrainingDiverged(
                f"training diverged: {worst_run} non-finite losses in a row by step {step} "
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
        at = self.progress
        if at.step == at.last_eval_step:  # an epoch ended on an --eval_every_steps step: done already
            return
        at.last_eval_step = at.step
        self._check_finite_weights()
        scores: dict[str, dict[str, float]] = {}
        with self._timed("eval"):
            for (task, split), dataset in self.data.evals.items():
                scores[f"{task}_{split}"] = self._score(self.model, dataset)
                log.eval(at.step, at.epoch, task, split, scores[f"{task}_{split}"])
        self.model.train()
        self.last_eval = scores
        verdict = self.best.observe(at.step, scores)
        if verdict is Verdict.NO_SCORE and scores:
            logger.warning(
                "step %d: --best_metric %s is NaN or missing on this evaluation (constant labels or "
                "predictions?); it cannot pick a best checkpoint",
                at.step,
                self.best.key.describe(),
            )
        if verdict is Verdict.NEW_BEST:
            with self._timed("checkpoint"):
                if self.dist.is_main:
                    self.model.save(self.out / "best", self.tokenizer, metadata=self._metadata(scores))
                self._barrier()
            logger.info(
                "step %d: new best %s = %.3f", at.step, self.best.key.describe(), self.best.best_score
            )

    def _check_finite_weights(self) -> None:
        """A run whose weights became non-finite (e.g. an infinite weight decay) stops with an error."""
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in self.model.parameters()]).all()
        if not bool(finite):
            bad = next(name for name, p in self.model.named_parameters() if not torch.isfinite(p).all())
            raise TrainingDiverged(
                f"training diverged: weight '{bad}' is not finite at step {self.progress.step} "
                f"(check --learning_rate, --weight_decay, --grad_clipping)"
            )

    def _evaluate_tests_with_best(self, log: RunLog) -> None:
        """Labelled test splits are scored once, by the best checkpoint (never used to choose it)."""
        self._check_finite_weights()
        if self.data.evals and self.best.best_score is None:
            raise UserError(
                f"--best_metric {self.best.key.describe()} was NaN or missing at every evaluation (constant "
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
            log.eval(self.best.best_step, self.progress.epoch, task, split, self.test_eval[f"{task}_{split}"])

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
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "config": self.config.to_dict(),
            "eval": dict(scores or {}),
        }

    def save_checkpoint(self) -> None:
        """The resumable ``last/`` checkpoint (rank 0 writes; every rank waits for it)."""
        with self._timed("checkpoint"):
            if self.dist.is_main:
                write_checkpoint(
                    self.out / "last",
                    self.model,
                    self.tokenizer,
                    self._metadata(self.last_eval),
                    self.resume_state.state_dict(),
                    self.objective.state_dict(),
                )
            self._barrier()

    def _resume(self) -> None:
        last = self.out / "last"
        if not (last / STATE_FILE).is_file():
            logger.info("--resume: no %s yet, starting from scratch", last / STATE_FILE)
            return
        state = read_state(last / STATE_FILE)
        check_resumable(last / STATE_FILE, state, self.resume_state.config, self.resume_state.data)
        resumed = MTDNNModel.load(last, map_location=self.device)
        self.model.load_state_dict(resumed.state_dict())
        if self.objective.bregman is not None:
            self.objective.load_state_dict(read_safetensors(last / TEACHER_FILE, self.device))
        self.resume_state.load_state_dict(state, source=last / STATE_FILE)
        logger.info("resumed from %s at step %d (epoch %d)", last, self.progress.step, self.progress.epoch)

    def _results(self, seconds: float, finished: bool) -> dict[str, Any]:
        return {
            "finished": finished,
            "steps": self.progress.step,
            "epochs": self.progress.epoch,
            "train_seconds": round(seconds, 2),
            # Of which: evaluation and checkpoint writing; the rest is the training steps.
            "eval_seconds": round(self.seconds["eval"], 2),
            "checkpoint_seconds": round(self.seconds["checkpoint"], 2),
            "best_metric": self.best.key.describe(),
            "best_score": self.best.best_score,
            "best_step": self.best.best_step,
            "final_eval": self.last_eval,
            "test_eval": self.test_eval,
            "nonfinite_steps_skipped": self.skipped.read()[0],
            "adv_batches_skipped": self.adv_skipped_total,
            "config": self.config.to_dict(),
        }


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


def train(config: TrainConfig) -> dict[str, Any]:
    """Build a ``Trainer`` for ``config`` and run it to the end."""
    return Trainer(config).train()
