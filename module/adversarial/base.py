"""The one interface every adversarial method implements, and what it is given for a batch.

A method perturbs the output of one module (``target``; for an HF encoder its word embeddings, for
``nn.Sequential(nn.Linear(1, 10), nn.Linear(10, 1))`` the first layer) through forward hooks and never
writes a parameter. The caller describes the batch with ``AdversarialBatch``: how to run the model, how to
turn outputs into the task loss, and - for methods that run several backward passes (FreeAT, YOPO, FreeLB)
- a ``backward`` callable that owns loss scaling and distributed gradient synchronisation.

Two kinds of method:

* single-backward (SMART, ALUM, R3F, R4F, FGSM, FGM, PGD): ``method(batch)`` returns the full objective
  with its graph; the caller runs the one backward (``AdversarialStep.backpropagated`` is False);
* backward-owning (FreeAT, YOPO, FreeLB): ``method(batch)`` calls ``batch.backward`` itself, once per pass,
  and returns the objective detached (``backpropagated`` is True).

``method.train_step(batch)`` does the right thing for both, for any training loop.

Distributed runs: ``batch.run`` is the forward through the DDP wrapper and ``batch.perturbed_run`` the same
forward on the unwrapped model. A method runs ``run`` exactly once per backward that must synchronise
gradients (the last one) and ``perturbed_run`` for every other pass, so DDP all-reduces once per step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn

from module.adversarial.names import AdversarialMethodName
from module.adversarial.site import AdversarialSite

__all__ = ["AdversarialBatch", "AdversarialMethod", "AdversarialStep", "Backward", "Divergence"]

Divergence = Callable[[Tensor, Tensor], Tensor]
Backward = Callable[[Tensor], None]


def _plain_backward(loss: Tensor) -> None:
    loss.backward()


@dataclass
class AdversarialBatch:
    """One batch as a method sees it.

    ``run``: the model's forward on the batch -> outputs (logits). ``loss``: outputs -> the task loss
    against the batch's labels (a scalar). ``divergence``: (outputs, reference outputs) -> D, for the
    virtual-adversarial methods (SMART, ALUM, R3F). ``token_mask``: 1 on real positions, shaped like the
    target's output without its last axis (the attention mask ``[B, L]``); padding is never perturbed.
    ``perturbed_run``: the same forward without a DDP wrapper (defaults to ``run``). ``backward``: runs one
    backward of a loss (scaling, accumulation and gradient sync are the caller's). ``inner_loss_scale``
    multiplies losses whose gradient only serves a perturbation direction (fp16: the loss scale, so tiny
    gradients do not underflow; the direction is normalised, so the scale cancels). ``noise_seeds``: one
    seed per row for methods with random initial noise. ``replay``/``key``: FreeAT's replay index of this
    micro-batch (0 = first time seen) and its position within the optimizer step; ``replay=None`` lets FreeAT
    count the replays of each ``key`` itself (0, 1, ..., m - 1, then 0 again: call it m times per batch).
    """

    run: Callable[[], Tensor]
    loss: Callable[[Tensor], Tensor]
    divergence: Divergence | None = None
    token_mask: Tensor | None = None
    perturbed_run: Callable[[], Tensor] | None = None
    backward: Backward = _plain_backward
    inner_loss_scale: float | Tensor = 1.0
    noise_seeds: Sequence[int] | None = None
    replay: int | None = None
    key: Hashable = 0

    @property
    def inner_run(self) -> Callable[[], Tensor]:
        return self.perturbed_run or self.run

    def require_divergence(self, method: str) -> Divergence:
        if self.divergence is None:
            raise ValueError(f"{method} compares two outputs: give the batch a divergence")
        return self.divergence


@dataclass
class AdversarialStep:
    """What a method returns for one batch (every tensor on the model's device; no host sync).

    ``loss``: the method's whole objective (task loss included), with its graph unless ``backpropagated``.
    ``outputs``: the clean outputs with their graph when the method ran a clean pass (the Bregman term uses
    them), else None. ``task_loss``: the task loss of that clean pass (detached; for R-Drop the mean of its
    two passes), None for the methods without one (FreeAT, YOPO, FreeLB train on perturbed passes only).
    ``stats``: detached scalars for logs: ``adv_loss`` (the adversarial loss or divergence), ``delta_ratio``
    (||delta|| / ||target output|| on real positions) and ``adv_skipped`` (1.0 when a non-finite
    perturbation gradient turned the perturbation off for this batch).
    """

    loss: Tensor
    outputs: Tensor | None
    backpropagated: bool
    stats: dict[str, Tensor] = field(default_factory=dict)
    delta: Tensor | None = None
    task_loss: Tensor | None = None


class AdversarialMethod(ABC):
    """``method(batch) -> AdversarialStep``; ``method.train_step(batch)`` also runs the backward."""

    name: ClassVar[AdversarialMethodName | str]  # a user method's name is a plain string
    owns_backward: ClassVar[bool] = False

    def __init__(self, target: nn.Module) -> None:
        self.target = target

    @classmethod
    def from_site(cls, site: AdversarialSite, config: Any) -> Self:
        """The method on ``site`` with ``config`` (what ``build_method`` calls); a method that reads more of
        the site than its target (YOPO: ``first_layer``) overrides it."""
        return cls(site.target, config)  # type: ignore[call-arg]

    @property
    def replays(self) -> int:
        """Optimizer steps a training loop takes per batch (FreeAT's m; 1 for every other method)."""
        return 1

    @abstractmethod
    def __call__(self, batch: AdversarialBatch) -> AdversarialStep: ...

    def train_step(self, batch: AdversarialBatch) -> AdversarialStep:
        """Compute the objective and backpropagate it (through ``batch.backward``) whatever the method."""
        step = self(batch)
        if not step.backpropagated:
            batch.backward(step.loss)
            step.loss = step.loss.detach()
            step.backpropagated = True
        return step

    def prepare(self, site: AdversarialSite | nn.Module) -> None:  # noqa: B027 - optional, a no-op by default
        """Change the model at ``site`` before training when the method needs it (R4F: spectral norm on
        ``site.heads``). A bare module is the plain API's head: ``AdversarialSite(target, heads=(it,))``."""


def no_skip(device: torch.device) -> Tensor:
    return torch.zeros((), device=device)
