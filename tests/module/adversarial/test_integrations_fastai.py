"""The fastai callbacks, used the fastai way on ``synth_learner`` (y = a x + b, MSE) and the paper's toy model.

fastai is an optional extra that CI installs (requirements-fastai.txt): a missing fastai fails here unless
SMART_MTDNN_ALLOW_NO_FASTAI=1 says this machine deliberately goes without it.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
import torch
from torch import Tensor, nn

if os.environ.get("SMART_MTDNN_ALLOW_NO_FASTAI") == "1":
    pytest.importorskip("fastai")

from fastai.callback.core import Callback  # noqa: E402
from fastai.learner import Learner  # noqa: E402
from fastai.test_utils import synth_learner  # noqa: E402

from data_utils.enums import LossName  # noqa: E402
from module.adversarial.integrations.fastai import (  # noqa: E402
    AdversarialCallback,
    ALUMCallback,
    SMARTCallback,
)
from module.losses import divergence  # noqa: E402

# Visible settings: on this toy the paper's eps = 1e-5 makes R ~ 1e-12.
STRONG: dict[str, Any] = {"alpha": 1.0, "epsilon": 0.5, "step_size": 0.5, "noise_var": 0.1}


def toy_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(1, 10, bias=False), nn.Linear(10, 1, bias=False))


def learner(cbs: list[Callback] | None = None, seed: int = 0) -> Learner:
    """The same data, weights and shuffling for every seed-equal call; the callbacks get ``model[0]``."""
    random.seed(seed)
    torch.manual_seed(seed)
    model = toy_model()
    return synth_learner(model=model, lr=1e-2, cbs=cbs or [])


class GradientLog(Callback):
    """Every parameter gradient after each backward, and each training batch's task loss."""

    order = 50

    def before_fit(self) -> None:
        self.grads: list[list[Tensor]] = []
        self.losses: list[float] = []

    def after_backward(self) -> None:
        self.grads.append([p.grad.detach().clone() for p in self.learn.model.parameters()])
        self.losses.append(float(self.learn.loss.detach()))


class TermLog(Callback):
    """``loss_grad - loss`` after the adversarial callback (order 0) has added its term, and R recomputed
    independently from the callback's perturbation on the same batch, before the optimizer step."""

    order = 10

    def __init__(self, adversarial: AdversarialCallback) -> None:
        super().__init__()
        self.adversarial = adversarial

    def before_fit(self) -> None:
        self.added: list[float] = []
        self.recomputed: list[float] = []

    def after_loss(self) -> None:
        if not self.learn.training:
            return
        self.added.append((self.learn.loss_grad - self.learn.loss).item())
        step = self.adversarial.last_step
        assert step is not None and step.delta is not None
        model, xb = self.learn.model, self.learn.xb
        with torch.no_grad():
            clean = model(*xb)
            perturbed = model[1](model[0](*xb) + step.delta)
            self.recomputed.append(divergence(LossName.MSE, perturbed, clean).item())


def fit(cb_factory: Any = None, epochs: int = 2) -> tuple[Learner, GradientLog]:
    log = GradientLog()
    learn = learner()
    if cb_factory is not None:
        learn.add_cb(cb_factory(learn.model[0]))
    learn.add_cb(log)
    learn.fit(epochs)
    return learn, log


@pytest.mark.parametrize("params", [{}, STRONG], ids=["paper-defaults", "strong"])
@pytest.mark.parametrize("callback", [SMARTCallback, ALUMCallback])
def test_fit_trains_the_paper_toy(callback: type[AdversarialCallback], params: dict[str, Any]) -> None:
    random.seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 10, bias=False), nn.Linear(10, 1, bias=False))
    learn = synth_learner(model=model, cbs=callback(model[0], **params))
    learn.fit(2)
    train_losses = [row[0] for row in learn.recorder.values]
    valid_losses = [row[1] for row in learn.recorder.values]
    assert len(train_losses) == 2
    assert all(torch.isfinite(torch.tensor(train_losses + valid_losses)))
    assert train_losses[1] < train_losses[0]
    assert valid_losses[1] < valid_losses[0]
    term = learn.cbs.filter(lambda cb: isinstance(cb, callback))[0].last_term
    assert term is not None and torch.isfinite(term)
    if params:
        assert float(term) > 1e-3


@pytest.mark.parametrize("callback", [SMARTCallback, ALUMCallback])
def test_zero_alpha_reproduces_plain_training(callback: type[AdversarialCallback]) -> None:
    """(SMART without its Bregman term: ``test_integrations_fastai_bregman.py`` covers that.)"""
    extra = {"bregman": False} if callback is SMARTCallback else {}
    plain, plain_log = fit()
    zero, zero_log = fit(lambda target: callback(target, **{**STRONG, "alpha": 0.0}, **extra))
    assert len(plain_log.grads) == len(zero_log.grads) == 20
    for left, right in zip(plain_log.grads, zero_log.grads, strict=True):
        for a, b in zip(left, right, strict=True):
            assert torch.equal(a, b)
    for a, b in zip(plain.model.parameters(), zero.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_term_is_alpha_times_r() -> None:
    """loss_grad - loss = alpha * R on every batch, R the mse between the perturbed and clean outputs."""
    alpha = 3.0
    learn = learner()
    smart = SMARTCallback(learn.model[0], bregman=False, **{**STRONG, "alpha": alpha})
    terms = TermLog(smart)
    learn.add_cbs([smart, terms])
    learn.fit(1)
    assert len(terms.added) == len(terms.recomputed) == 10
    assert min(terms.recomputed) > 1e-4
    assert terms.added == pytest.approx([alpha * r for r in terms.recomputed], rel=1e-4)
    assert smart.last_step is not None and smart.last_term is not None
    r = float(smart.last_step.stats["adv_loss"])
    assert r == pytest.approx(terms.recomputed[-1], rel=1e-5)
    assert float(smart.last_term) == pytest.approx(alpha * r, rel=1e-5)


def test_a_positive_alpha_changes_the_gradient() -> None:
    _, plain_log = fit(epochs=1)
    _, smart_log = fit(lambda target: SMARTCallback(target, **STRONG), epochs=1)
    assert plain_log.losses[0] == smart_log.losses[0]  # the logged task loss is fastai's own
    # The toy is linear, so R = mse(W2 delta) has no gradient on W1 (delta is a constant): only W2 moves.
    assert torch.equal(plain_log.grads[0][0], smart_log.grads[0][0])
    assert not torch.allclose(plain_log.grads[0][1], smart_log.grads[0][1])


def test_classification_outputs_get_symmetric_kl() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    xb = torch.randn(6, 4)
    yb = torch.randint(0, 3, (6,))
    callback = AdversarialCallback("r3f", model[0], noise_var=0.5)
    learn = Learner.__new__(Learner)  # only the attributes after_loss reads
    learn.__dict__.update(
        training=True, xb=(xb,), yb=(yb,), model=model, loss_func=nn.CrossEntropyLoss(), pred=model(xb)
    )
    learn.__dict__["loss_grad"] = learn.loss_func(learn.pred, yb)
    callback.learn = learn
    callback.after_loss()
    assert callback.last_step is not None
    delta = callback.last_step.delta
    clean = model(xb)
    expected = divergence(LossName.SYM_KL, model[2](model[1](model[0](xb) + delta)), clean)
    assert float(callback.last_step.stats["adv_loss"]) == pytest.approx(expected.item(), rel=1e-5)


def test_backward_owning_methods_are_refused() -> None:
    with pytest.raises(ValueError, match="own backward"):
        AdversarialCallback("freelb", toy_model()[0])
