"""What the trainer minimises on one batch: the task loss, the adversarial method's term, the Bregman term.

    loss = task_weight * (objective of the adversarial method (task loss + its term) + mu * Bregman)

The method (``--adv_method``; ``--adv_train`` alone is SMART) comes from ``module.adversarial``'s registry
and perturbs the encoder's word embeddings; its divergence is the task's ``adv_loss`` (symmetric KL for
classification and ranking, squared error for regression); the Bregman term is
``mu * D(f(x; theta), f(x; theta~))`` with ``module.bregman``'s EMA teacher. Per-task YAML keys
``adv_alpha``, ``adv_epsilon``, ``adv_step_size``, ``adv_noise_var``, ``adv_k`` override the run's flags for
the methods that take them.

A ``mask_lm`` batch is masked here, on its device (``data_utils.masking``), seeded per example from the
salt the trainer passes (its seed and epoch): dynamic masks that DDP ranks and resumed runs agree on. Its
outputs are ``[M, V]`` logits at the masked positions; the task loss is their cross-entropy against the
original tokens, and every adversarial divergence compares those ``[M, V]`` outputs. A mask_lm task takes
the method's pre-training defaults (``MethodSpec.pretraining``: ALUM's ``alpha`` of 10, the paper's).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from torch import Tensor, nn

from data_utils.dataset import Batch, example_seeds
from data_utils.masking import MaskingSpec
from data_utils.task_def import TaskDef
from module.adversarial import (
    AdversarialBatch,
    AdversarialMethod,
    Backward,
    build_method,
    method_parameters,
)
from module.bregman import BregmanProximalPoint
from module.losses import divergence, task_loss
from mt_dnn.config import TrainConfig
from mt_dnn.model import MTDNNModel, forward_batch
from mt_dnn.tasks import ModelInputs, task_kind

__all__ = [
    "TrainingObjective",
    "method_parameters_for",
    "run_method",
]

logger = logging.getLogger("mt_dnn.objective")


def method_parameters_for(config: TrainConfig, task_def: TaskDef) -> dict[str, Any]:
    """The run's adversarial hyper-parameters with the task definition's overrides applied (for the ones the
    method takes; an override the method has no use for is reported and ignored)."""
    adversarial = config.adversarial
    assert adversarial.method is not None
    known = method_parameters(adversarial.method)
    overrides: dict[str, Any] = {}
    for key, value in dataclasses.asdict(task_def.adv).items():
        if value is None:
            continue
        if key in known:
            overrides[key] = value
        else:
            logger.warning(
                "task '%s': adv_%s does not apply to --adv_method %s; ignored",
                task_def.name,
                key,
                adversarial.method,
            )
    return adversarial.parameters_for(overrides, pretraining=task_kind(task_def).pretraining)


def run_method(config: TrainConfig, model: MTDNNModel) -> AdversarialMethod | None:
    """The run's method on ``model``'s site with the run's parameters (no task overrides), or None: what
    prepares the model before training (``model.prepare_for``) and says how many optimizer steps a batch
    takes (``replays``: FreeAT's m) before the objective, with its per-task methods, exists."""
    if config.adversarial.method is None:
        return None
    return config.adversarial.build(model.adversarial_site())


class TrainingObjective:
    """``objective.backward_step(model, batch, backward)`` -> (loss, statistics), both detached.

    ``model`` is what runs the forward pass (the model itself, or its DDP wrapper); ``base_model`` is the
    unwrapped ``MTDNNModel`` whose word embeddings are perturbed and whose weights the teacher follows.
    ``objective(model, batch)`` returns the loss with its graph instead, for methods with one backward.
    """

    def __init__(
        self,
        base_model: MTDNNModel,
        config: TrainConfig,
        total_steps: int,
        masking: MaskingSpec | None = None,
    ) -> None:
        """``masking``: the tokenizer's mask token, specials and vocabulary (needed by mask_lm tasks)."""
        self.base_model = base_model
        self.task_defs = base_model.task_defs
        self.masking = masking
        unmasked = [name for name in config.train_datasets if task_kind(self.task_defs[name]).needs_masking]
        if unmasked and masking is None:
            task = self.task_defs[unmasked[0]]
            raise ValueError(f"task '{task.name}' is {task.task_type}: the objective needs a MaskingSpec")
        self.methods: dict[str, AdversarialMethod] = {}
        if config.adversarial.method is not None:
            site = base_model.adversarial_site()
            self.methods = {
                name: build_method(
                    config.adversarial.method, site, **method_parameters_for(config, self.task_defs[name])
                )
                for name in config.train_datasets
            }
        self.bregman: BregmanProximalPoint | None = config.bregman.build(base_model, total_steps)

    def __call__(
        self,
        model: nn.Module,
        batch: Batch,
        *,
        inner_loss_scale: float | Tensor = 1.0,
        noise_salt: str | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss with its graph (for one backward) and per-batch statistics (device tensors).

        ``noise_salt`` (e.g. the run's seed and epoch) seeds the methods' initial noise per example (its uid),
        so the noise does not depend on the batch or the rank an example lands in."""
        method = self.methods.get(batch.task)
        if method is not None and method.owns_backward:
            raise RuntimeError(f"{method.name} runs its own backward passes: use backward_step")
        task_def = self.task_defs[batch.task]
        inputs = self._inputs(batch, noise_salt)
        stats: dict[str, Tensor] = {}
        if method is None:
            outputs = _forward(model, inputs=inputs)
            loss = self._task_loss(inputs, outputs)
        else:
            step = method(self._adversarial_batch(model, inputs, inner_loss_scale, noise_salt))
            assert step.outputs is not None
            outputs, loss = step.outputs, step.loss
            stats.update(step.stats)
        if self.bregman is not None:
            run = functools.partial(_forward, inputs=inputs)
            term = self.bregman.term(run, outputs, self._divergence(batch))
            loss = loss + term
            stats["bregman"] = term.detach()
        return loss * task_def.loss_weight, stats

    def backward_step(
        self,
        model: nn.Module,
        batch: Batch,
        backward: Backward,
        *,
        replay: int = 0,
        key: Hashable = 0,
        inner_loss_scale: float | Tensor = 1.0,
        noise_salt: str | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss and run its backward pass(es) through ``backward``; returns it detached.

        ``replay``/``key``: FreeAT's replay index of this micro-batch and its position in the step."""
        method = self.methods.get(batch.task)
        if method is None or not method.owns_backward:
            loss, stats = self(model, batch, inner_loss_scale=inner_loss_scale, noise_salt=noise_salt)
            backward(loss)
            return loss.detach(), stats
        weight = self.task_defs[batch.task].loss_weight
        inputs = self._inputs(batch, noise_salt)
        adversarial = self._adversarial_batch(model, inputs, inner_loss_scale, noise_salt)
        adversarial.backward = lambda loss: backward(loss * weight)
        adversarial.replay, adversarial.key = replay, key
        step = method(adversarial)
        return step.loss * weight, step.stats

    def _inputs(self, batch: Batch, salt: str | None) -> ModelInputs:
        """The batch as the model sees it, as the task's kind prepares it (mask_lm: masked, with targets)."""
        task_def = self.task_defs[batch.task]
        return task_kind(task_def).model_inputs(task_def, batch, self.masking, salt)

    def _adversarial_batch(
        self, model: nn.Module, inputs: ModelInputs, inner_loss_scale: float | Tensor, noise_salt: str | None
    ) -> AdversarialBatch:
        batch = inputs.batch
        return AdversarialBatch(
            run=lambda: _forward(model, inputs=inputs),
            loss=functools.partial(self._task_loss, inputs),
            divergence=self._divergence(batch),
            token_mask=batch.attention_mask,
            # DDP: only the pass whose backward synchronises gradients goes through the wrapper.
            perturbed_run=lambda: _forward(self.base_model, inputs=inputs),
            inner_loss_scale=inner_loss_scale,
            noise_seeds=None if noise_salt is None else example_seeds(noise_salt, batch),
        )

    def _output_mask(self, batch: Batch) -> Tensor | None:
        return task_kind(self.task_defs[batch.task]).output_mask(batch)

    def _task_loss(self, inputs: ModelInputs, outputs: Tensor) -> Tensor:
        batch = inputs.batch
        task_def = self.task_defs[batch.task]
        return task_loss(task_def.loss, outputs, inputs.labels, mask=self._output_mask(batch))

    def _divergence(self, batch: Batch) -> Callable[[Tensor, Tensor], Tensor]:
        adv_loss = self.task_defs[batch.task].adv_loss
        return functools.partial(divergence, adv_loss, mask=self._output_mask(batch))

    def after_optimizer_step(self, step: int, applied: Tensor | None = None) -> None:
        """After optimizer step ``step`` (1-based); ``applied``: bool tensor, False if it was skipped."""
        if self.bregman is not None:
            self.bregman.update(step, applied=applied)

    def state_dict(self) -> Mapping[str, Tensor]:
        """What a resumed run needs (the Bregman teacher's weights); empty when there is no teacher."""
        return self.bregman.state_dict() if self.bregman is not None else {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if self.bregman is not None:
            self.bregman.load_state_dict(state)


def _forward(model: Callable[..., Tensor], *, inputs: ModelInputs) -> Tensor:
    return forward_batch(model, inputs.batch, **inputs.head_inputs)
