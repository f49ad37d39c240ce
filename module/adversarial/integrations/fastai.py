"""fastai callbacks: ``learn = synth_learner(model=model, cbs=SMARTCallback(model[0])); learn.fit(2)``.

fastai computes ``loss_grad`` from its own forward and backpropagates it after ``after_loss``. In
``after_loss`` the callback runs the method on the same batch (``run`` re-runs ``learn.model(*learn.xb)``,
``loss`` is ``learn.loss_func`` against ``learn.yb``) and adds the method's *extra* term to
``learn.loss_grad``: the method's objective minus its own clean task loss, so fastai's loss is counted once
(for SMART/ALUM/R3F the term is exactly ``alpha * R``). ``learn.loss`` - what the Recorder logs - stays the
task loss. Only training batches are touched. The methods that own their backward passes (FreeAT, YOPO,
FreeLB) do not fit fastai's one ``loss_grad.backward()`` and are refused.

Needs the optional extra: ``pip install -r requirements-fastai.txt && pip install --no-deps fastai==2.8.12``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastai.callback.core import Callback
from torch import Tensor, nn

from module.adversarial.base import AdversarialBatch, AdversarialMethod, AdversarialStep
from module.adversarial.integrations.common import DivergenceSpec, default_divergence, resolve_divergence
from module.adversarial.names import AdversarialMethodName
from module.adversarial.registry import build_method

__all__ = ["ALUMCallback", "AdversarialCallback", "SMARTCallback"]

TokenMask = Callable[[tuple[Any, ...]], Tensor | None]


class AdversarialCallback(Callback):
    """Adds registry method ``method_name`` on ``module``'s output to every training batch's ``loss_grad``.

    ``params``: the method's hyper-parameters. ``divergence``: a ``LossName`` or ``(outputs, reference) ->
    scalar``; by default mse for a regression output (last axis of size 1) and symmetric KL for class
    logits. ``token_mask``: ``xb -> mask`` of the positions that may be perturbed (e.g. a text model's
    padding mask); by default every position. ``last_step`` keeps the last batch's ``AdversarialStep``
    (its ``stats``: ``adv_loss``, ``delta_ratio``, ``adv_skipped``) and ``last_term`` the added term.
    """

    order = 0

    def __init__(
        self,
        method_name: AdversarialMethodName | str,
        module: nn.Module,
        *,
        divergence: DivergenceSpec | None = None,
        token_mask: TokenMask | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        method = build_method(method_name, module, **params)
        if method.owns_backward or method.replays > 1:
            raise ValueError(
                f"{method.name} runs its own backward passes; a fastai callback can only add a term to "
                "loss_grad (use a single-backward method: smart, alum, r3f, r4f, fgsm, fgm, pgd)"
            )
        self.adversarial_method: AdversarialMethod = method
        self.divergence_spec = divergence
        self.token_mask_fn = token_mask
        self.last_step: AdversarialStep | None = None
        self.last_term: Tensor | None = None

    def after_loss(self) -> None:
        learn = self.learn
        if not learn.training or not len(learn.yb):
            return
        xb, yb = tuple(learn.xb), tuple(learn.yb)
        model, loss_func = learn.model, learn.loss_func

        def run() -> Tensor:
            return model(*xb)

        def task_loss(outputs: Tensor) -> Tensor:
            return loss_func(outputs, *yb)

        spec = self.divergence_spec if self.divergence_spec is not None else default_divergence(learn.pred)
        batch = AdversarialBatch(
            run=run,
            loss=task_loss,
            divergence=resolve_divergence(spec),
            token_mask=self.token_mask_fn(xb) if self.token_mask_fn is not None else None,
        )
        step = self.adversarial_method(batch)
        if step.outputs is None:
            raise RuntimeError(f"{self.adversarial_method.name} returned no clean outputs to subtract")
        # The method's objective counts the task loss of its own clean pass; fastai's loss_grad already
        # has it, so only the rest is added (autograd sums the two opposite paths to exactly zero).
        term = step.loss - task_loss(step.outputs)
        learn.loss_grad = learn.loss_grad + term
        self.last_step = step
        self.last_term = term.detach()


class SMARTCallback(AdversarialCallback):
    """SMART's smoothness regulariser ``alpha * R`` (Jiang et al. 2020); the Bregman step is not included."""

    def __init__(
        self,
        module: nn.Module,
        *,
        divergence: DivergenceSpec | None = None,
        token_mask: TokenMask | None = None,
        **params: Any,
    ) -> None:
        super().__init__(
            AdversarialMethodName.SMART, module, divergence=divergence, token_mask=token_mask, **params
        )


class ALUMCallback(AdversarialCallback):
    """ALUM's virtual adversarial term ``alpha * R`` (Liu et al. 2020); ``alpha=10`` for pre-training."""

    def __init__(
        self,
        module: nn.Module,
        *,
        divergence: DivergenceSpec | None = None,
        token_mask: TokenMask | None = None,
        **params: Any,
    ) -> None:
        super().__init__(
            AdversarialMethodName.ALUM, module, divergence=divergence, token_mask=token_mask, **params
        )
