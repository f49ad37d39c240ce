"""What the trainer minimises on one batch: the task loss, SMART's adversarial term and the Bregman term.

    loss = task_weight * (task_loss + alpha_task * R_adv + mu * D(f(x; theta), f(x; theta~)))

R_adv is ``module.adversarial.SmartPerturbation``'s regulariser on the encoder's word embeddings; D is the
task's ``adv_loss`` divergence (symmetric KL for classification and ranking, squared error for
regression); theta~ is ``module.bregman.BregmanProximalPoint``'s EMA teacher. Per-task YAML keys
``adv_alpha``, ``adv_epsilon``, ``adv_step_size``, ``adv_noise_var``, ``adv_k`` override the run's flags.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from data_utils.dataset import Batch
from data_utils.enums import TaskType
from data_utils.task_def import TaskDef
from module.adversarial import SmartConfig, SmartPerturbation
from module.bregman import BregmanConfig, BregmanProximalPoint
from module.losses import divergence, task_loss
from mt_dnn.config import TrainConfig
from mt_dnn.model import MTDNNModel

__all__ = ["TrainingObjective", "smart_config"]


def smart_config(config: TrainConfig, task_def: TaskDef) -> SmartConfig:
    """The run's SMART flags with the task definition's overrides applied."""
    base = SmartConfig(
        alpha=config.adv_alpha,
        k=config.adv_k,
        step_size=config.adv_step_size,
        noise_var=config.adv_noise_var,
        epsilon=config.adv_epsilon,
        p_norm=config.adv_p_norm,
        norm_level=config.adv_norm_level,
        dropout_replay=config.adv_dropout_replay,
    )
    overrides = {key: value for key, value in dataclasses.asdict(task_def.adv).items() if value is not None}
    return dataclasses.replace(base, **overrides)


class TrainingObjective:
    """``objective(model, batch)`` -> (scalar loss, per-batch statistics as device tensors).

    ``model`` is what runs the forward pass (the model itself, or its DDP wrapper); ``base_model`` is the
    unwrapped ``MTDNNModel`` whose word embeddings are perturbed and whose weights the teacher follows.
    """

    def __init__(self, base_model: MTDNNModel, config: TrainConfig, total_steps: int) -> None:
        self.base_model = base_model
        self.task_defs = base_model.task_defs
        self.adversaries: dict[str, SmartPerturbation] = {}
        if config.adv_train:
            target = base_model.perturbation_target()
            self.adversaries = {
                name: SmartPerturbation(target, smart_config(config, self.task_defs[name]))
                for name in config.train_datasets
            }
        self.bregman: BregmanProximalPoint | None = None
        if config.bregman_mu:
            bregman_config = BregmanConfig(
                mu=float(config.bregman_mu),
                beta=config.bregman_beta,
                beta_warmup=config.bregman_beta_warmup,
                warmup_fraction=config.bregman_warmup,
                update_every=config.bregman_steps,
            )
            self.bregman = BregmanProximalPoint(base_model, bregman_config, total_steps)

    def __call__(
        self,
        model: nn.Module,
        batch: Batch,
        *,
        inner_loss_scale: float | Tensor = 1.0,
        noise_salt: str | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``noise_salt`` (e.g. the run's seed and epoch) seeds SMART's initial noise per example (its uid),
        so the noise does not depend on the batch or the rank an example lands in."""
        task_def = self.task_defs[batch.task]
        candidate_mask = batch.candidate_mask if task_def.task_type is TaskType.RANKING else None
        run = functools.partial(_forward, batch=batch)
        output_divergence = functools.partial(divergence, task_def.adv_loss, mask=candidate_mask)
        stats: dict[str, Tensor] = {}

        adversary = self.adversaries.get(batch.task)
        if adversary is None:
            outputs = run(model)
            loss = task_loss(task_def.loss, outputs, batch.labels, mask=candidate_mask)
        else:
            result = adversary(
                lambda: run(model),
                output_divergence,
                batch.attention_mask,
                inner_loss_scale=inner_loss_scale,
                adversarial_run=lambda: run(self.base_model),
                noise_seeds=None if noise_salt is None else example_seeds(noise_salt, batch),
            )
            outputs = result.outputs
            loss = task_loss(task_def.loss, outputs, batch.labels, mask=candidate_mask) + result.loss
            stats.update(
                adv_loss=result.divergence, delta_ratio=result.delta_ratio, adv_skipped=result.skipped
            )
        if self.bregman is not None:
            term = self.bregman.term(run, outputs, output_divergence)
            loss = loss + term
            stats["bregman"] = term.detach()
        return loss * task_def.loss_weight, stats

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


def example_seeds(salt: str, batch: Batch) -> list[int]:
    """One 63-bit seed per input sequence from (salt, uid, candidate): ranking rows have one per candidate."""
    return [
        int.from_bytes(hashlib.blake2b(f"{salt}|{uid}|{k}".encode(), digest_size=8).digest(), "little") >> 1
        for uid in batch.uids
        for k in range(batch.n_candidates)
    ]


def _forward(model: Callable[..., Tensor], *, batch: Batch) -> Tensor:
    return model(
        batch.task,
        batch.input_ids,
        batch.attention_mask,
        batch.token_type_ids,
        n_candidates=batch.n_candidates,
    )
