"""SMARTCallback's Bregman proximal point (the momentum teacher), its checkpoint through Learner.save/load,
and R4F's head in the fastai callback."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

if os.environ.get("SMART_MTDNN_ALLOW_NO_FASTAI") == "1":
    pytest.importorskip("fastai")

from fastai.callback.core import Callback, CancelStepException  # noqa: E402
from fastai.learner import Learner  # noqa: E402

from data_utils.enums import LossName  # noqa: E402
from module.adversarial.integrations.fastai import (  # noqa: E402
    TEACHER_PREFIX,
    AdversarialCallback,
    ALUMCallback,
    SMARTCallback,
)
from module.losses import divergence  # noqa: E402
from tests.module.adversarial.test_integrations_fastai import STRONG, learner  # noqa: E402


class After(Callback):
    """The weights after every optimizer step, and the Bregman term recomputed on every batch."""

    order = 50

    def __init__(self, smart: AdversarialCallback) -> None:
        super().__init__()
        self.smart = smart
        self.weights: list[list[Tensor]] = []
        self.terms: list[tuple[float, float]] = []

    def after_loss(self) -> None:
        if not self.learn.training:
            return
        assert self.smart.bregman is not None and self.smart.last_bregman is not None
        with torch.no_grad():
            expected = divergence(
                LossName.MSE, self.learn.model(*self.learn.xb), self.smart.bregman.teacher(*self.learn.xb)
            )
        self.terms.append((float(self.smart.last_bregman), float(expected)))

    def after_step(self) -> None:
        self.weights.append([p.detach().clone() for p in self.learn.model.parameters()])


def test_smart_includes_the_momentum_teacher_by_default() -> None:
    learn = learner()
    initial = [p.detach().clone() for p in learn.model.parameters()]
    smart = SMARTCallback(learn.model[0], **STRONG)
    watch = After(smart)
    learn.add_cbs([smart, watch])
    learn.fit(2)
    assert smart.bregman is not None and smart.bregman_steps == len(watch.weights) == 20
    # Alg. 1 lines 11-14: theta~ <- beta theta~ + (1 - beta) theta; beta 0.99 for the first 10% of 20 steps
    expected = initial
    for step, weights in enumerate(watch.weights, start=1):
        beta = 0.99 if step <= 2 else 0.999
        expected = [beta * t + (1 - beta) * w for t, w in zip(expected, weights, strict=True)]
    for teacher, value in zip(smart.bregman.teacher.parameters(), expected, strict=True):
        torch.testing.assert_close(teacher, value, rtol=1e-5, atol=1e-7)
    # the term added to loss_grad is mu * D(f(x; theta), f(x; theta~)) on every batch (mu = 1)
    assert len(watch.terms) == 20 and watch.terms[0][0] == 0.0 and max(t for t, _ in watch.terms) > 1e-6
    assert [t for t, _ in watch.terms] == pytest.approx([e for _, e in watch.terms], rel=1e-4, abs=1e-9)
    # ... so SMART no longer trains to ALUM's weights
    alum_learn = learner()
    alum_learn.add_cb(ALUMCallback(alum_learn.model[0], **STRONG))
    alum_learn.fit(2)
    assert not all(
        torch.equal(a, b)
        for a, b in zip(learn.model.parameters(), alum_learn.model.parameters(), strict=True)
    )


class CancelOddSteps(Callback):
    order = -5

    def before_step(self) -> None:
        if self.learn.iter % 2:
            raise CancelStepException()


def test_a_cancelled_step_does_not_move_the_teacher() -> None:
    learn = learner()
    smart = SMARTCallback(learn.model[0], **STRONG)
    learn.add_cbs([CancelOddSteps(), smart])
    learn.fit(1)
    assert smart.bregman_steps == 5  # 10 batches, every other step cancelled


def _fit_again(learn: Learner, epochs: int = 1) -> None:
    """The same shuffling (fastai's loader keeps its own RNG) and the same noise for both learners."""
    learn.dls.train.rng.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    learn.fit(epochs)


def test_learner_save_and_load_carry_the_teacher(tmp_path: Path) -> None:
    learn = learner()
    learn.path = tmp_path
    smart = SMARTCallback(learn.model[0], **STRONG)
    learn.add_cb(smart)
    learn.fit(1)
    learn.save("smart")
    saved = torch.load(learn.save("weights-only", with_opt=False), weights_only=True)
    assert any(key.startswith(TEACHER_PREFIX) for key in saved)

    resumed = learner()  # the same data; other weights, so everything must come from the file
    resumed.path = tmp_path
    with torch.no_grad():
        for parameter in resumed.model.parameters():
            parameter.normal_()
    smart2 = SMARTCallback(resumed.model[0], **STRONG)
    resumed.add_cb(smart2)
    resumed.load("smart")  # before any fit: the teacher waits for before_fit
    assert smart2.bregman_steps == smart.bregman_steps == 10
    _fit_again(learn)
    _fit_again(resumed)
    assert smart.bregman is not None and smart2.bregman is not None
    for a, b in zip(smart.bregman.teacher.parameters(), smart2.bregman.teacher.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    for a, b in zip(learn.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)

    # A learner without the callback: the extra keys need strict=False; the model weights load.
    plain = learner(seed=2)
    plain.path = tmp_path
    with pytest.raises(RuntimeError, match="Unexpected key"):
        plain.load("smart")
    plain.load("smart", strict=False)
    removed = learner(seed=3)
    removed.path = tmp_path
    callback = SMARTCallback(removed.model[0])
    removed.add_cb(callback)
    removed.remove_cb(callback)  # detached: the model's state dict is plain again
    assert not any(key.startswith(TEACHER_PREFIX) for key in removed.model.state_dict())


def test_r4f_normalises_the_head_it_is_given() -> None:
    learn = learner()
    with pytest.raises(ValueError, match="pass head="):
        AdversarialCallback("r4f", learn.model[0])
    with pytest.raises(ValueError, match="contains the perturbed module"):
        AdversarialCallback("r4f", learn.model[0], head=learn.model)
    learn.add_cb(AdversarialCallback("r4f", learn.model[0], head=learn.model[1], noise_var=0.1))
    assert torch.nn.utils.parametrize.is_parametrized(learn.model[1], "weight")
    learn.fit(1)
    assert torch.linalg.matrix_norm(learn.model[1].weight, ord=2).item() == pytest.approx(1.0, rel=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "bregman"), [({}, False), ({"bregman": True}, True), ({"bregman": {"mu": 0.5}}, True)]
)
def test_alum_and_the_others_have_no_teacher_unless_asked(kwargs: dict[str, Any], bregman: bool) -> None:
    learn = learner()
    callback = (
        ALUMCallback(learn.model[0], **kwargs)
        if "bregman" not in kwargs
        else AdversarialCallback("alum", learn.model[0], **kwargs)
    )
    assert (callback.bregman_config is not None) is bregman
