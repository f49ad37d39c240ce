"""Any registry method inside a real ``transformers.Trainer``.

``AdversarialTrainer(model=..., args=..., train_dataset=..., adv_method="freelb", adv_params={"k": 3})``
trains like ``Trainer`` with the method's objective. The perturbation goes on the output of
``model.get_input_embeddings()`` (or ``adv_target``), padding excluded through the batch's attention mask.

* Single-backward methods (SMART, ALUM, R3F, R4F, FGSM, FGM, PGD) replace ``compute_loss``: the Trainer's
  own ``training_step`` then runs the one backward, with its loss scaling and gradient accumulation.
* Backward-owning methods (FreeAT, YOPO, FreeLB) replace ``training_step``: each of their passes goes
  through ``self.accelerator.backward``, scaled for gradient accumulation as the Trainer scales its loss.

The task loss is computed here from the logits and the labels, following the model config's
``problem_type`` the way HF heads do (cross-entropy, MSE for ``num_labels == 1``, BCE for multi-label); the
divergence of the virtual-adversarial methods is symmetric KL for classes, MSE for regression and the
Bernoulli symmetric KL for multi-label heads. Both are per-batch means, so ``loss_is_scaled_for_ga`` is
False. SMART's Bregman proximal term is not part of the mixin (it needs a teacher copy of the model and an
optimizer hook; ``train.py`` has it); ``adv_method="smart"`` here is its adversarial regulariser only.
Evaluation runs the Trainer's plain ``compute_loss``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType
from torch import Tensor, nn
from transformers import Trainer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.training_args import OptimizerNames

from data_utils.enums import LossName
from module import losses
from module.adversarial.base import AdversarialBatch, AdversarialMethod, AdversarialStep
from module.adversarial.integrations.common import DivergenceSpec, bernoulli_sym_kl, resolve_divergence
from module.adversarial.names import AdversarialMethodName
from module.adversarial.registry import build_method

__all__ = ["AdversarialTrainer", "AdversarialTrainerMixin", "default_head", "default_first_layer"]

TaskLoss = Callable[[Tensor, Tensor], Tensor]

if TYPE_CHECKING:
    _TrainerBase = Trainer
else:
    _TrainerBase = object

_HEAD_NAMES = ("classifier", "score", "classification_head", "qa_outputs", "lm_head")


def default_first_layer(model: nn.Module) -> nn.Module | None:
    """YOPO's first layer for an HF encoder: the embeddings block (word + position + type, LayerNorm)."""
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    return embeddings if isinstance(embeddings, nn.Module) else None


def default_head(model: nn.Module) -> nn.Module | None:
    """The task head R4F spectrally normalises: the first of HF's usual head attribute names."""
    for name in _HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


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

    ``adv_method``: a registry name; ``adv_params``: its hyper-parameters (``method_parameters(name)``);
    ``adv_target``: the module whose output is perturbed (default ``model.get_input_embeddings()``);
    ``adv_first_layer``: YOPO's first layer (default the embeddings block); ``adv_head``: the head R4F
    normalises (default ``model.classifier`` or HF's other usual names); ``adv_task_loss`` /
    ``adv_divergence``: override the loss ``(logits, labels) -> scalar`` and the divergence (a
    ``LossName`` or ``(outputs, reference) -> scalar``) chosen from ``problem_type``.
    """

    def __init__(
        self,
        *args: Any,
        adv_method: AdversarialMethodName | str = AdversarialMethodName.SMART,
        adv_params: Mapping[str, Any] | None = None,
        adv_target: nn.Module | None = None,
        adv_first_layer: nn.Module | None = None,
        adv_head: nn.Module | None = None,
        adv_task_loss: TaskLoss | None = None,
        adv_divergence: DivergenceSpec | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        model = self.model
        if model is None:
            raise ValueError("AdversarialTrainer needs a model (model_init would rebuild it past the hooks)")
        name = AdversarialMethodName(adv_method)
        target = adv_target if adv_target is not None else model.get_input_embeddings()
        if not isinstance(target, nn.Module):
            raise ValueError("the model has no input embeddings to perturb: pass adv_target")
        first_layer = adv_first_layer if adv_first_layer is not None else default_first_layer(model)
        method = build_method(
            name,
            target,
            first_layer=first_layer if name is AdversarialMethodName.YOPO else None,
            **dict(adv_params or {}),
        )
        _check_fits_trainer(method, self.args.optim)
        if adv_task_loss is None and (self.compute_loss_func is not None or self.label_smoother is not None):
            raise ValueError(
                "the adversarial objective computes its own task loss: pass adv_task_loss to use "
                "compute_loss_func or label smoothing in it"
            )
        if name is AdversarialMethodName.R4F:
            head = adv_head if adv_head is not None else default_head(model)
            if head is None:
                raise ValueError("R4F normalises the classification head: pass adv_head")
            method.prepare(head)
        self.adversarial_method: AdversarialMethod = method
        self.adversarial_stats: dict[str, Tensor] = {}
        self._adv_task_loss = adv_task_loss
        self._adv_divergence = None if adv_divergence is None else resolve_divergence(adv_divergence)
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
        step = method(self._adversarial_batch(model, inputs, autocast=False))
        self._record(step)
        if return_outputs:
            return step.loss, SequenceClassifierOutput(loss=step.loss, logits=step.outputs)
        return step.loss

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
        step = method.train_step(self._adversarial_batch(model, inputs, autocast=True))
        self._record(step)
        return step.loss.detach() / steps

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

    # ------------------------------------------------------------------ the batch
    def _adversarial_batch(
        self, model: nn.Module, inputs: Mapping[str, Any], *, autocast: bool
    ) -> AdversarialBatch:
        labels: Tensor = inputs["labels"]
        features = {key: value for key, value in inputs.items() if key != "labels"}
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

    def _record(self, step: AdversarialStep) -> None:
        self.adversarial_stats = {key: value.detach() for key, value in step.stats.items()}


def _with_labels(task_loss: TaskLoss, labels: Tensor, logits: Tensor) -> Tensor:
    return task_loss(logits, labels)


def _check_fits_trainer(method: AdversarialMethod, optim: str) -> None:
    if method.replays > 1:
        raise ValueError(
            f"{method.name} with replays={method.replays} takes {method.replays} optimizer steps per batch, "
            "which transformers.Trainer's loop cannot do (one step per batch); use replays=1 here, or "
            "train.py / your own loop with method.replays"
        )
    if method.owns_backward and optim in (OptimizerNames.LOMO, OptimizerNames.ADALOMO):
        raise ValueError(f"{method.name} runs several backwards per step; LOMO updates inside each one")


class AdversarialTrainer(AdversarialTrainerMixin, Trainer):
    """``transformers.Trainer`` with an adversarial method (see ``AdversarialTrainerMixin``)."""
