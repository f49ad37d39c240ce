"""fastai callbacks: ``learn = synth_learner(model=model, cbs=SMARTCallback(model[0])); learn.fit(2)``.

fastai computes ``loss_grad`` from its own forward and backpropagates it after ``after_loss``. In
``after_loss`` the callback runs the method on the same batch (``run`` re-runs ``learn.model(*learn.xb)``,
``loss`` is ``learn.loss_func`` against ``learn.yb``) and adds the method's *extra* term to
``learn.loss_grad``: the method's objective minus its own clean task loss, so fastai's loss is counted once
(for SMART/ALUM/R3F the term is exactly ``alpha * R``), plus - SMART's default - the Bregman proximal term
``mu * D(f(x; theta), f(x; theta~))`` of ``module.bregman``'s momentum teacher, which moves towards the model
after every optimizer step fastai takes (``after_step``; a cancelled step, e.g. fp16 overflow or gradient
accumulation, does not move it). ``learn.loss`` - what the Recorder logs - stays the task loss. Only
training batches are touched. The methods that own their backward passes (FreeAT, YOPO, FreeLB) do not fit
fastai's one ``loss_grad.backward()`` and are refused.

The teacher travels with the model's weights: while the callback is attached to a Learner, the model's
``state_dict()`` also holds the teacher (keys ``bregman_teacher.*``) and its update count, and
``load_state_dict`` takes them back out, so ``learn.save(name)`` / ``learn.load(name)`` (and
``SaveModelCallback``) checkpoint and resume it. Loading such a file into a model without the callback
needs ``strict=False``.

Needs the optional extra: ``pip install -r requirements-fastai.txt && pip install --no-deps fastai==2.8.12``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

try:
    from fastai.callback.core import Callback
    from fastai.torch_core import get_model
except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "the fastai plug-in needs fastai: pip install -r requirements-fastai.txt && "
        "pip install --no-deps fastai==2.8.12 (see docs/plugins.md)"
    ) from error

from module.adversarial.base import AdversarialBatch, AdversarialMethod, AdversarialStep
from module.adversarial.integrations.common import (
    BregmanSpec,
    DivergenceSpec,
    default_divergence,
    resolve_bregman,
    resolve_divergence,
)
from module.adversarial.names import AdversarialMethodName
from module.adversarial.registry import MethodName, build_method, method_spec
from module.adversarial.site import AdversarialSite, MissingSitePart, SitePart
from module.bregman import BregmanConfig, BregmanProximalPoint

__all__ = ["TEACHER_PREFIX", "ALUMCallback", "AdversarialCallback", "SMARTCallback"]

TokenMask = Callable[[tuple[Any, ...]], Tensor | None]
TEACHER_PREFIX = "bregman_teacher."
_STEP_KEY = "bregman_teacher_step"


class AdversarialCallback(Callback):
    """Adds registry method ``method_name`` on ``module``'s output to every training batch's ``loss_grad``.

    ``params``: the method's hyper-parameters. ``head``: the task head, which ``method.prepare`` changes
    before training (R4F spectrally normalises it; required for R4F). ``bregman``: the Bregman proximal
    point (on for SMART by default, mu = 1; ``False`` turns it off; a mapping or ``BregmanConfig`` sets its
    fields). ``divergence``: a ``LossName`` or ``(outputs, reference) -> scalar``; by default mse for a
    regression output (last axis of size 1) and symmetric KL for class logits. ``token_mask``: ``xb -> mask``
    of the positions that may be perturbed (e.g. a text model's padding mask); by default every position.
    ``last_step`` keeps the last batch's ``AdversarialStep`` (its ``stats``: ``adv_loss``, ``delta_ratio``,
    ``adv_skipped``), ``last_term`` the added term and ``last_bregman`` its Bregman part.
    """

    order = 0

    def __init__(
        self,
        method_name: MethodName,
        module: nn.Module,
        *,
        head: nn.Module | None = None,
        bregman: BregmanSpec = None,
        divergence: DivergenceSpec | None = None,
        token_mask: TokenMask | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        site = AdversarialSite(module, heads=() if head is None else (head,))
        spec = method_spec(method_name)
        method = None if spec.owns_backward else build_method(method_name, site, **params)
        if method is None or method.replays > 1:
            raise ValueError(
                f"{spec.name} runs its own backward passes; a fastai callback can only add a term to "
                "loss_grad (use a single-backward method: smart, alum, r3f, r4f, fgsm, fgm, pgd, rdrop)"
            )
        try:
            method.prepare(site)
        except MissingSitePart as error:
            if error.part is not SitePart.HEADS:
                raise
            message = f"{error.method} spectrally normalises the task head: pass head= (e.g. model[-1])"
            raise ValueError(message) from None
        self.adversarial_method: AdversarialMethod = method
        self.bregman_config: BregmanConfig | None = resolve_bregman(method, bregman)
        self.bregman: BregmanProximalPoint | None = None
        self.bregman_steps = 0  # optimizer steps the teacher has followed (its schedule's clock)
        self.divergence_spec = divergence
        self.token_mask_fn = token_mask
        self.last_step: AdversarialStep | None = None
        self.last_term: Tensor | None = None
        self.last_bregman: Tensor | None = None
        self._loaded_teacher: dict[str, Tensor] | None = None
        self._step_cancelled = False
        self._hooked: nn.Module | None = None
        self._hooks: list[RemovableHandle] = []

    # ------------------------------------------------------------------ attaching to a Learner
    @property
    def learn(self) -> Any:
        return self.__dict__.get("_learn")

    @learn.setter
    def learn(self, learner: Any) -> None:
        """fastai sets ``cb.learn`` when the callback is added (None when removed): the model's state-dict
        hooks live exactly as long, so ``learn.load`` before the first fit already finds the teacher."""
        self.__dict__["_learn"] = learner
        self._hook_model(None if learner is None or learner.model is None else get_model(learner.model))

    def _hook_model(self, model: nn.Module | None) -> None:
        if model is self._hooked:
            return
        for handle in self._hooks:
            handle.remove()
        self._hooks, self._hooked = [], model
        if model is not None and self.bregman_config is not None:
            # partials, not bound methods: torch marks a state-dict hook with an attribute.
            self._hooks = [
                model.register_state_dict_post_hook(
                    functools.partial(AdversarialCallback._add_teacher, self)
                ),
                model.register_load_state_dict_pre_hook(
                    functools.partial(AdversarialCallback._take_teacher, self)
                ),
            ]

    def _add_teacher(self, module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
        teacher = self.bregman.state_dict() if self.bregman is not None else self._loaded_teacher
        if teacher is None:
            return
        for key, value in teacher.items():
            state[prefix + TEACHER_PREFIX + key] = value
        state[prefix + _STEP_KEY] = torch.tensor(self.bregman_steps)

    def _take_teacher(self, module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
        start = prefix + TEACHER_PREFIX
        teacher = {key[len(start) :]: state.pop(key) for key in list(state) if key.startswith(start)}
        steps = state.pop(prefix + _STEP_KEY, None)
        if not teacher:
            return
        if self.bregman is not None:
            self.bregman.load_state_dict(teacher)
        else:
            self._loaded_teacher = teacher
        if steps is not None:
            self.bregman_steps = int(steps)

    # ------------------------------------------------------------------ training events
    def before_fit(self) -> None:
        if self.bregman_config is None:
            return
        learn = self.learn
        model = get_model(learn.model)
        self._hook_model(model)
        steps = (learn.n_epoch - _start_epoch(learn)) * len(learn.dls.train)
        total = self.bregman_steps + max(steps, 0)
        if self.bregman is None:
            # A copy of the model as training starts (pretrained weights, fresh head), as train.py's.
            self.bregman = BregmanProximalPoint(model, self.bregman_config, max(total, 1))
            if self._loaded_teacher is not None:
                self.bregman.load_state_dict(self._loaded_teacher)
                self._loaded_teacher = None
        self.bregman.total_steps = max(total, 1)

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
        self.last_bregman = None
        if self.bregman is not None:
            bregman = self.bregman.term(
                lambda module: module(*xb), step.outputs, batch.require_divergence("Bregman")
            )
            term = term + bregman
            self.last_bregman = bregman.detach()
        learn.loss_grad = learn.loss_grad + term
        self.last_step = step
        self.last_term = term.detach()

    def after_cancel_step(self) -> None:
        self._step_cancelled = True

    def after_step(self) -> None:
        """fastai calls it after every step, cancelled or not; only a step the optimizer took counts."""
        cancelled, self._step_cancelled = self._step_cancelled, False
        if self.bregman is None or cancelled:
            return
        self.bregman_steps += 1
        self.bregman.update(self.bregman_steps)


def _start_epoch(learn: Any) -> int:
    """The epoch ``learn.fit(n, start_epoch=k)`` resumes at (fastai's ``SkipToEpoch``), else 0."""
    for callback in learn.cbs:
        if type(callback).__name__ == "SkipToEpoch":
            return int(getattr(callback, "_skip_to", 0))
    return 0


class SMARTCallback(AdversarialCallback):
    """SMART (Jiang et al. 2020): the smoothness regulariser ``alpha * R`` and, by default, the momentum
    Bregman proximal point (``bregman``; mu = 1, the teacher theta~ <- beta theta~ + (1 - beta) theta
    after every optimizer step, Alg. 1 lines 11-14). ``bregman=False`` leaves the regulariser alone."""

    def __init__(
        self,
        module: nn.Module,
        *,
        bregman: BregmanSpec = None,
        divergence: DivergenceSpec | None = None,
        token_mask: TokenMask | None = None,
        **params: Any,
    ) -> None:
        super().__init__(
            AdversarialMethodName.SMART,
            module,
            bregman=bregman,
            divergence=divergence,
            token_mask=token_mask,
            **params,
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


def teacher_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The teacher's weights inside a model state dict written while the callback was attached."""
    return {
        key[len(TEACHER_PREFIX) :]: value for key, value in state.items() if key.startswith(TEACHER_PREFIX)
    }
