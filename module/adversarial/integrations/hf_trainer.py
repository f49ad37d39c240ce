"""Any registry method inside a real ``transformers.Trainer``.

``AdversarialTrainer(model=..., args=..., train_dataset=..., adv_method="freelb", adv_params={"k": 3})``
trains like ``Trainer`` with the method's objective. The perturbation goes on the output of
``model.get_input_embeddings()`` (or ``adv_target``), padding excluded through the batch's attention mask.

* Single-backward methods (SMART, ALUM, R3F, R4F, FGSM, FGM, PGD, R-Drop) replace ``compute_loss``: the
  Trainer's own ``training_step`` then runs the one backward, with its loss scaling and accumulation.
* Backward-owning methods (FreeAT, YOPO, FreeLB) replace ``training_step``: each of their passes goes
  through ``self.accelerator.backward``, scaled for gradient accumulation as the Trainer scales its loss.
  FreeAT's m replays are optimizer steps: the train sampler yields each step's examples m times in a row
  (``ReplaySampler``), so an epoch has m times as many steps.

The task loss is computed here from the logits and the labels, following the model config's
``problem_type`` the way HF heads do (cross-entropy, MSE for ``num_labels == 1``, BCE for multi-label); the
divergence of the virtual-adversarial methods is symmetric KL for classes, MSE for regression and the
Bernoulli symmetric KL for multi-label heads. Both are per-batch means, so ``loss_is_scaled_for_ga`` is
False. SMART comes with its momentum Bregman proximal point (``module.bregman``; ``adv_bregman``): an EMA
teacher updated after every optimizer step, saved in each checkpoint folder as
``bregman_teacher.safetensors`` and loaded again by ``train(resume_from_checkpoint=...)``.

Every training log (``logging_steps``) carries, besides the Trainer's ``loss`` (the whole objective), the
means since the previous log of ``task_loss``, ``adv_loss``, ``delta_ratio`` and ``bregman``, and
``adv_skipped`` (how many micro-batches had their perturbation turned off), through ``Trainer.log``, so
every ``report_to`` integration (TensorBoard, W&B, MLflow, ...) records them. Evaluation is plain.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.training_args import OptimizerNames

from data_utils.enums import LossName
from module import losses
from module.adversarial.base import AdversarialBatch, AdversarialMethod, AdversarialStep
from module.adversarial.integrations.common import (
    BregmanSpec,
    DivergenceSpec,
    bernoulli_sym_kl,
    resolve_bregman,
    resolve_divergence,
)
from module.adversarial.integrations.replay import ReplaySampler
from module.adversarial.names import AdversarialMethodName
from module.adversarial.registry import MethodName, build_method, method_spec
from module.adversarial.site import AdversarialSite, MissingSitePart, SitePart
from module.bregman import BregmanProximalPoint
from module.encoders import ENCODER_LAYOUTS, encoder_layout

__all__ = [
    "TEACHER_FILE",
    "AdversarialTrainer",
    "AdversarialTrainerMixin",
    "default_first_layer",
    "default_head",
]

logger = logging.getLogger("module.adversarial.integrations.hf_trainer")

TaskLoss = Callable[[Tensor, Tensor], Tensor]
TEACHER_FILE = "bregman_teacher.safetensors"
# Statistics summed over the micro-batches between two logs; the others are averaged.
_SUMMED = frozenset({"adv_skipped"})

if TYPE_CHECKING:
    _TrainerBase = Trainer
else:
    _TrainerBase = object

_HEAD_NAMES = ("classifier", "score", "classification_head", "qa_outputs", "lm_head")


def default_first_layer(model: nn.Module) -> nn.Module | None:
    """YOPO's first layer for an HF model: its encoder layout's embeddings block (BERT's, RoBERTa's,
    DeBERTa's ``embeddings``: word + position + type embeddings, LayerNorm); None for a model type without a
    layout (``module.encoders``), e.g. GPT-2's, whose embeddings sit directly in the base model. A first layer
    equal to the word embeddings would make YOPO's inner updates n steps along one fixed gradient."""
    if _model_type(model) not in ENCODER_LAYOUTS:
        return None
    return encoder_layout(model).embeddings_block(model)


def default_head(model: nn.Module) -> nn.Module | None:
    """The task head R4F spectrally normalises: the first of HF's usual head attribute names."""
    for name in _HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _site_error(error: MissingSitePart, model: nn.Module) -> ValueError:
    """The plug-in's argument for the site part a method missed."""
    if error.part is SitePart.HEADS:
        return ValueError(f"{error.method} normalises the classification head: pass adv_head")
    return ValueError(
        f"{error.method}: {type(model).__name__} (model_type {_model_type(model)!r}) has no embeddings block "
        f"in the encoder layouts ({', '.join(sorted(ENCODER_LAYOUTS))}); pass adv_first_layer= (a module "
        "that runs once per forward, contains the target and returns one tensor)"
    )


def _logits(outputs: Any) -> Tensor:
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, Mapping) and "logits" in outputs:
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(f"the model returned {type(outputs).__name__} without logits")


def _problem_type(model: nn.Module, labels: Tensor) -> str:
    """The config's ``problem_type``, or HF's rule when unset: 1 label -> regression, int labels -> single."""
    config = getattr(model, "config", None)
    problem = getattr(config, "problem_type", None)
    if problem:
        return str(problem)
    num_labels = int(getattr(config, "num_labels", 0) or 0)
    if num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def _regression_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return losses.task_loss(LossName.MSE, logits, labels)


def _single_label_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long())


def _multi_label_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


_TASK_LOSSES: dict[str, TaskLoss] = {
    "regression": _regression_loss,
    "single_label_classification": _single_label_loss,
    "multi_label_classification": _multi_label_loss,
}
_DIVERGENCES: dict[str, DivergenceSpec] = {
    "regression": LossName.MSE,
    "single_label_classification": LossName.SYM_KL,
    "multi_label_classification": bernoulli_sym_kl,
}


class AdversarialTrainerMixin(_TrainerBase):
    """Put before ``transformers.Trainer`` (or a subclass of it) in the bases.

    ``adv_method``: a registry name (a registered method of your own too); ``adv_params``: its
    hyper-parameters (``method_parameters(name)``); ``adv_target``: the module whose output is perturbed
    (default ``model.get_input_embeddings()``); ``adv_first_layer``: YOPO's first layer (default the encoder
    layout's embeddings block, ``default_first_layer``); ``adv_head``: the head R4F normalises (default
    ``model.classifier`` or HF's other usual names); ``adv_task_loss`` / ``adv_divergence``: override the loss
    ``(logits, labels) -> scalar`` and the divergence (a ``LossName`` or ``(outputs, reference) -> scalar``)
    chosen from ``problem_type``; ``adv_bregman``: the Bregman proximal point (``BregmanSpec``: on for SMART
    by default with mu = 1, ``False`` turns it off, a mapping sets ``BregmanConfig`` fields).
    """

    def __init__(
        self,
        *args: Any,
        adv_method: MethodName = AdversarialMethodName.SMART,
        adv_params: Mapping[str, Any] | None = None,
        adv_target: nn.Module | None = None,
        adv_first_layer: nn.Module | None = None,
        adv_head: nn.Module | None = None,
        adv_task_loss: TaskLoss | None = None,
        adv_divergence: DivergenceSpec | None = None,
        adv_bregman: BregmanSpec = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        model = self.model
        if model is None:
            raise ValueError("AdversarialTrainer needs a model (model_init would rebuild it past the hooks)")
        spec = method_spec(adv_method)
        target = adv_target if adv_target is not None else model.get_input_embeddings()
        if not isinstance(target, nn.Module):
            raise ValueError("the model has no input embeddings to perturb: pass adv_target")
        first_layer = adv_first_layer if adv_first_layer is not None else default_first_layer(model)
        head = adv_head if adv_head is not None else default_head(model)
        site = AdversarialSite(target, first_layer, () if head is None else (head,))
        try:
            method = build_method(spec.name, site, **dict(adv_params or {}))
        except MissingSitePart as error:
            raise _site_error(error, model) from None
        _check_fits_trainer(method, self.args)
        if adv_task_loss is None and (self.compute_loss_func is not None or self.label_smoother is not None):
            raise ValueError(
                "the adversarial objective computes its own task loss: pass adv_task_loss to use "
                "compute_loss_func or label smoothing in it"
            )
        try:
            method.prepare(site)  # R4F: spectral norm on the head; a no-op for most methods
        except MissingSitePart as error:
            raise _site_error(error, model) from None
        self.adversarial_method: AdversarialMethod = method
        self.adversarial_stats: dict[str, Tensor] = {}
        bregman = resolve_bregman(method, adv_bregman)
        # The teacher starts as a copy of the model as given (pretrained encoder, fresh head), as train.py's;
        # its schedule learns the run's length when training starts.
        self.bregman = (
            None if bregman is None else BregmanProximalPoint(model, bregman, max(self.args.max_steps, 1))
        )
        self._adv_task_loss = adv_task_loss
        self._adv_divergence = None if adv_divergence is None else resolve_divergence(adv_divergence)
        self._adv_sums: dict[str, Tensor] = {}
        self._adv_count = 0
        self._micro_step = (-1, 0)  # (global step, micro-batches seen in it): FreeAT's key
        self.add_callback(_AdversarialEvents(self))
        # Our losses are per-batch means: the Trainer divides them by the accumulation steps (the first
        # flag is transformers 5's, the second makes 4.x do the same).
        self.loss_is_scaled_for_ga = False
        self.model_accepts_loss_kwargs = False

    # ------------------------------------------------------------------ single-backward methods
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        method = self.adversarial_method
        if not model.training or method.owns_backward or inputs.get("labels") is None:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        batch = self._adversarial_batch(model, inputs, autocast=False)
        step = method(batch)
        loss, bregman = step.loss, None
        if self.bregman is not None:
            if step.outputs is None:
                raise RuntimeError(f"{method.name} returned no clean outputs for the Bregman term")
            features = _features(inputs)
            bregman = self.bregman.term(
                lambda module: _logits(module(**features)), step.outputs, batch.require_divergence("Bregman")
            )
            loss = loss + bregman
        self._record(step, bregman)
        if return_outputs:
            return loss, SequenceClassifierOutput(loss=loss, logits=step.outputs)
        return loss

    # ------------------------------------------------------------------ backward-owning methods
    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor | Any],
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor:
        method = self.adversarial_method
        if not method.owns_backward:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        optimizer_train = getattr(self.optimizer, "train", None)
        if callable(optimizer_train):
            optimizer_train()
        inputs = self._prepare_inputs(inputs)
        if inputs.get("labels") is None:
            raise ValueError(f"{method.name} needs labels in the training batch")
        steps = self._accumulation_steps()
        batch = self._adversarial_batch(model, inputs, autocast=True)
        # The sampler replays every step's examples m times in a row, so optimizer step s is replay s % m.
        batch.replay, batch.key = self.state.global_step % method.replays, self._micro_batch_index()
        step = method.train_step(batch)
        self._record(step, None)
        return step.loss.detach() / steps

    def _micro_batch_index(self) -> int:
        """This micro-batch's position within its optimizer step (FreeAT keeps one delta per position)."""
        step, seen = self._micro_step
        if step != self.state.global_step:
            step, seen = self.state.global_step, 0
        self._micro_step = (step, seen + 1)
        return seen

    def _backward(self, loss: Tensor) -> None:
        """One backward as the Trainer's own: n_gpu mean, accumulation scaling, the accelerator's backward."""
        if self.args.n_gpu > 1:
            loss = loss.mean()
        kwargs: dict[str, Any] = {}
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            kwargs["scale_wrt_gas"] = False
        self.accelerator.backward(loss / self._accumulation_steps(), **kwargs)

    def _accumulation_steps(self) -> int:
        """Micro-batches in this optimizer step (the last step of an epoch may have fewer)."""
        default = self.args.gradient_accumulation_steps
        return int(getattr(self, "current_gradient_accumulation_steps", default))

    # ------------------------------------------------------------------ FreeAT's replays
    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
        sampler = super()._get_train_sampler(*args, **kwargs)
        replays = self.adversarial_method.replays
        if replays == 1:
            return sampler
        if sampler is None or not hasattr(sampler, "__len__"):
            raise ValueError(
                f"{self.adversarial_method.name} replays every batch through the train sampler: the train "
                "dataset needs a length (an IterableDataset has none)"
            )
        per_process = int(self._train_batch_size)
        chunk = per_process * self.args.gradient_accumulation_steps * max(1, self.args.world_size)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return ReplaySampler(sampler, chunk=chunk, replays=replays, seed=seed, pad=chunk > per_process)

    # ------------------------------------------------------------------ the batch
    def _adversarial_batch(
        self, model: nn.Module, inputs: Mapping[str, Any], *, autocast: bool
    ) -> AdversarialBatch:
        labels: Tensor = inputs["labels"]
        features = _features(inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        problem = _problem_type(unwrapped, labels)
        if problem not in _TASK_LOSSES and self._adv_task_loss is None:
            raise ValueError(f"no task loss for problem_type {problem!r}: pass adv_task_loss")
        task_loss = self._adv_task_loss or _TASK_LOSSES[problem]
        divergence = self._adv_divergence or resolve_divergence(_DIVERGENCES.get(problem, LossName.SYM_KL))
        token_mask = features.get("attention_mask")
        return AdversarialBatch(
            run=self._runner(model, features, autocast),
            loss=functools.partial(_with_labels, task_loss, labels),
            divergence=divergence,
            token_mask=token_mask if isinstance(token_mask, Tensor) and token_mask.dim() == 2 else None,
            perturbed_run=None if unwrapped is model else self._runner(unwrapped, features, autocast),
            backward=self._backward,
        )

    def _runner(self, module: nn.Module, features: Mapping[str, Any], autocast: bool) -> Callable[[], Tensor]:
        def run() -> Tensor:
            if not autocast:
                return _logits(module(**features))
            with self.compute_loss_context_manager():
                return _logits(module(**features))

        return run

    # ------------------------------------------------------------------ statistics and logs
    def _record(self, step: AdversarialStep, bregman: Tensor | None) -> None:
        """Keep the batch's statistics (``adversarial_stats``) and add them to the sums of this log window."""
        stats = {key: value.detach() for key, value in step.stats.items()}
        if step.task_loss is not None:
            stats["task_loss"] = step.task_loss.detach()
        if bregman is not None:
            stats["bregman"] = bregman.detach()
        self.adversarial_stats = stats
        for key, value in stats.items():
            value = value.float()
            self._adv_sums[key] = self._adv_sums[key] + value if key in self._adv_sums else value
        self._adv_count += 1

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """A training log (it has ``loss``) gets the adversarial statistics of the micro-batches since the
        previous one, averaged over processes (``adv_skipped``: their total)."""
        if "loss" in logs and self._adv_count:
            logs = {**logs, **self._drain_statistics()}
        super().log(logs, *args, **kwargs)

    def _drain_statistics(self) -> dict[str, float]:
        keys = sorted(self._adv_sums)
        values = torch.stack([self._adv_sums[key] for key in keys])
        count = self._adv_count
        self._adv_sums, self._adv_count = {}, 0
        processes = max(1, self.args.world_size)
        if processes > 1:
            values = self.accelerator.gather(values[None]).reshape(processes, len(keys)).sum(dim=0)
        host = values.tolist()  # the one host sync, at logging time like the Trainer's own loss
        return {
            key: total if key in _SUMMED else total / (count * processes)
            for key, total in zip(keys, host, strict=True)
        }

    # ------------------------------------------------------------------ the Bregman teacher in checkpoints
    def _save_checkpoint(self, model: nn.Module, trial: Any, *args: Any, **kwargs: Any) -> None:
        super()._save_checkpoint(model, trial, *args, **kwargs)
        if self.bregman is None or not self.args.should_save:
            return
        folder = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        if os.path.isdir(folder):
            save_teacher(self.bregman, folder)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.bregman is None:
            return
        if os.path.isfile(os.path.join(resume_from_checkpoint, TEACHER_FILE)):
            load_teacher(self.bregman, resume_from_checkpoint)
            return
        logger.warning(
            "%s has no %s: the Bregman teacher restarts as a copy of the resumed model",
            resume_from_checkpoint,
            TEACHER_FILE,
        )
        self.bregman.load_state_dict(self.accelerator.unwrap_model(model or self.model).state_dict())


def save_teacher(bregman: BregmanProximalPoint, folder: str) -> None:
    """Write the teacher to ``<folder>/bregman_teacher.safetensors`` (atomically; tied weights once)."""
    path = os.path.join(folder, TEACHER_FILE)
    temporary = f"{path}.tmp"
    safetensors.torch.save_model(bregman.teacher, temporary)
    os.replace(temporary, path)


def load_teacher(bregman: BregmanProximalPoint, folder: str) -> None:
    missing, unexpected = safetensors.torch.load_model(
        bregman.teacher, os.path.join(folder, TEACHER_FILE), strict=False
    )
    if missing or unexpected:
        raise ValueError(
            f"{os.path.join(folder, TEACHER_FILE)} does not match the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )


class _AdversarialEvents(TrainerCallback):
    """The Trainer's events the mixin needs: the run's length (the teacher's schedule) and each update."""

    def __init__(self, trainer: AdversarialTrainerMixin) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.bregman is not None:
            self.trainer.bregman.total_steps = max(int(state.max_steps), 1)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After the optimizer step (``state.global_step`` already counts it): move the teacher, unless the
        step was skipped (fp16's GradScaler on an overflow)."""
        bregman = self.trainer.bregman
        if bregman is not None and not self.trainer.accelerator.optimizer_step_was_skipped:
            bregman.update(int(state.global_step))


def _features(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in inputs.items() if key != "labels"}


def _with_labels(task_loss: TaskLoss, labels: Tensor, logits: Tensor) -> Tensor:
    return task_loss(logits, labels)


def _check_fits_trainer(method: AdversarialMethod, args: Any) -> None:
    if method.replays > 1 and getattr(args, "train_sampling_strategy", None) == "batch_rebalance":
        raise ValueError(
            f"{method.name} replays every batch through the train sampler; train_sampling_strategy "
            "'batch_rebalance' builds its own batches (use 'random', 'sequential' or 'group_by_length')"
        )
    if method.owns_backward and args.optim in (OptimizerNames.LOMO, OptimizerNames.ADALOMO):
        raise ValueError(f"{method.name} runs several backwards per step; LOMO updates inside each one")


class AdversarialTrainer(AdversarialTrainerMixin, Trainer):
    """``transformers.Trainer`` with an adversarial method (see ``AdversarialTrainerMixin``)."""
