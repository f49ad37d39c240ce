"""Momentum Bregman proximal point (SMART, Jiang et al. 2020, Alg. 1 lines 11-14).

An exponential moving average of the weights, theta~, is the teacher: the term
``mu * D(f(x; theta), f(x; theta~))`` joins the loss and keeps each update close, in output space, to where
the model has recently been. After an optimizer step, ``theta~ <- beta * theta~ + (1 - beta) * theta``,
with beta 0.99 for the first 10% of updates and 0.999 after (the paper's schedule), every ``update_every``
optimizer steps. The teacher starts as an exact copy of the model when the term is built (for a fine-tuning
run: the pretrained encoder and the freshly initialised heads), so early on the term pulls the model back
towards its initialisation. It runs without gradients, by default in eval mode (no dropout: a deterministic
target; ``teacher_mode="train"`` draws dropout masks for it as well). It works on any ``nn.Module``; ``run``
is a closure that runs a given module on the current batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor, nn

__all__ = ["BregmanConfig", "BregmanProximalPoint", "TeacherMode"]


class TeacherMode(StrEnum):
    """Whether the teacher's forward runs with dropout off (``eval``, the default) or on (``train``)."""

    EVAL = "eval"
    TRAIN = "train"


@dataclass(frozen=True)
class BregmanConfig:
    mu: float = 1.0
    beta: float = 0.999
    beta_warmup: float = 0.99
    warmup_fraction: float = 0.1
    update_every: int = 1
    teacher_mode: TeacherMode = TeacherMode.EVAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "teacher_mode", TeacherMode(self.teacher_mode))
        if not (math.isfinite(self.mu) and self.mu >= 0):
            raise ValueError(f"Bregman mu must be a finite number >= 0, got {self.mu}")
        for name in ("beta", "beta_warmup"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"Bregman {name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"Bregman warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        if self.update_every < 1:
            raise ValueError(f"Bregman update_every must be >= 1, got {self.update_every}")

    def build(self, model: nn.Module, total_steps: int) -> BregmanProximalPoint | None:
        """The proximal point on ``model`` for a run of ``total_steps`` updates; None when ``mu`` is 0."""
        return BregmanProximalPoint(model, self, total_steps) if self.mu else None


class BregmanProximalPoint:
    """The EMA teacher and its proximal term. Not a submodule of the model (DDP and checkpoints ignore it)."""

    def __init__(self, model: nn.Module, config: BregmanConfig, total_steps: int) -> None:
        self.config = config
        self.total_steps = total_steps
        self.teacher = copy.deepcopy(model).requires_grad_(False)
        self.teacher.train(config.teacher_mode is TeacherMode.TRAIN)
        self._pairs = self._float_pairs(model)

    def _float_pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        """(teacher, student) floating-point tensors, parameters and buffers, matched by name."""
        student = dict(model.named_parameters()) | dict(model.named_buffers())
        teacher = dict(self.teacher.named_parameters()) | dict(self.teacher.named_buffers())
        if student.keys() != teacher.keys():
            raise ValueError("the teacher no longer matches the model's parameters")
        names = [name for name, tensor in student.items() if tensor.is_floating_point()]
        return [teacher[name] for name in names], [student[name] for name in names]

    def beta(self, step: int) -> float:
        """The EMA decay used for the update after optimizer step ``step`` (1-based)."""
        warm = step <= self.config.warmup_fraction * self.total_steps
        return self.config.beta_warmup if warm else self.config.beta

    @torch.no_grad()
    def update(self, step: int, applied: Tensor | None = None) -> bool:
        """After optimizer step ``step`` (1-based): move the teacher towards the model; True if it was due.

        ``applied`` (a bool tensor, e.g. "the update was finite") scales the move to zero on the device when
        the optimizer skipped its update, without a host synchronisation.
        """
        if step % self.config.update_every:
            return False
        teacher, student = self._pairs
        weight: float | Tensor = 1.0 - self.beta(step)
        if applied is not None:
            weight = applied.float() * weight
        torch._foreach_lerp_(teacher, [tensor.detach() for tensor in student], weight)
        return True

    def term(
        self, run: Callable[[nn.Module], Tensor], outputs: Tensor, divergence: Callable[..., Tensor]
    ) -> Tensor:
        """``mu * D(outputs, teacher outputs)``; ``run(module)`` runs a module on the batch."""
        with torch.no_grad():
            teacher_outputs = run(self.teacher)
        return self.config.mu * divergence(outputs, teacher_outputs)

    def state_dict(self) -> dict[str, Tensor]:
        return self.teacher.state_dict()

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.teacher.load_state_dict(state)
