"""The momentum Bregman proximal point: EMA update, beta schedule, the term, state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from module.bregman import BregmanConfig, BregmanProximalPoint
from module.losses import sym_kl


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_beta_schedule_is_the_papers() -> None:
    bregman = BregmanProximalPoint(_model(), BregmanConfig(), total_steps=100)
    assert [bregman.beta(step) for step in (1, 10, 11, 100)] == [0.99, 0.99, 0.999, 0.999]


def test_ema_update_by_hand() -> None:
    model = _model()
    bregman = BregmanProximalPoint(model, BregmanConfig(beta=0.9, warmup_fraction=0.0), total_steps=10)
    old_teacher = [tensor.clone() for tensor in bregman.teacher.parameters()]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    assert bregman.update(step=1)
    for old, new, student in zip(old_teacher, bregman.teacher.parameters(), model.parameters(), strict=True):
        assert torch.allclose(new, 0.9 * old + 0.1 * student)
    # Float buffers (BatchNorm's running stats) follow too; the integer step counter is left alone.
    assert bregman.teacher[1].num_batches_tracked.dtype == torch.long


def test_update_every_s_steps() -> None:
    model = _model()
    bregman = BregmanProximalPoint(model, BregmanConfig(update_every=3), total_steps=10)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    before = bregman.teacher[0].weight.clone()
    assert not bregman.update(step=1)
    assert not bregman.update(step=2)
    assert torch.equal(bregman.teacher[0].weight, before)
    assert bregman.update(step=3)
    assert not torch.equal(bregman.teacher[0].weight, before)


def test_term_is_zero_for_the_initial_teacher_and_has_no_teacher_gradient() -> None:
    model = _model().eval()
    bregman = BregmanProximalPoint(model, BregmanConfig(mu=2.0), total_steps=10)
    x = torch.randn(5, 3)
    outputs = model(x)
    term = bregman.term(lambda module: module(x), outputs, sym_kl)
    assert term.item() == 0.0
    with torch.no_grad():
        model[2].weight.add_(0.5)
    outputs = model(x)
    term = bregman.term(lambda module: module(x), outputs, sym_kl)
    assert torch.isclose(term, 2.0 * sym_kl(outputs, bregman.teacher(x)))
    term.backward()
    assert all(parameter.grad is None for parameter in bregman.teacher.parameters())
    assert model[2].weight.grad is not None


def test_teacher_runs_in_eval_mode_and_is_not_a_submodule() -> None:
    model = _model().train()
    bregman = BregmanProximalPoint(model, BregmanConfig(), total_steps=10)
    assert not bregman.teacher.training
    assert all(not parameter.requires_grad for parameter in bregman.teacher.parameters())
    assert len(list(model.parameters())) == 4 + 2


def test_state_round_trip() -> None:
    model = _model()
    first = BregmanProximalPoint(model, BregmanConfig(), total_steps=10)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    first.update(step=1)
    second = BregmanProximalPoint(_model(), BregmanConfig(), total_steps=10)
    second.load_state_dict(first.state_dict())
    for a, b in zip(first.teacher.state_dict().values(), second.teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="beta"):
        BregmanConfig(beta=1.0)
    with pytest.raises(ValueError, match="update_every"):
        BregmanConfig(update_every=0)
    with pytest.raises(ValueError, match="mu"):
        BregmanConfig(mu=-1.0)


def test_a_skipped_update_leaves_the_teacher_where_it_was() -> None:
    model = _model()
    bregman = BregmanProximalPoint(model, BregmanConfig(), total_steps=10)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    before = bregman.teacher[0].weight.clone()
    bregman.update(step=1, applied=torch.tensor(False))
    assert torch.equal(bregman.teacher[0].weight, before)
    bregman.update(step=1, applied=torch.tensor(True))  # step 1: the warm-up beta, 0.99
    assert torch.allclose(bregman.teacher[0].weight, 0.99 * before + 0.01 * model[0].weight)


def test_the_teacher_runs_in_eval_mode_by_default_and_with_dropout_in_train_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    x = torch.randn(16, 4)
    eval_teacher = BregmanProximalPoint(model, BregmanConfig(), total_steps=10)
    train_teacher = BregmanProximalPoint(model, BregmanConfig(teacher_mode="train"), total_steps=10)
    assert not eval_teacher.teacher.training and train_teacher.teacher.training
    assert model.training  # the student's mode is its own
    with torch.no_grad():
        assert torch.equal(eval_teacher.teacher(x), eval_teacher.teacher(x))
        assert not torch.equal(train_teacher.teacher(x), train_teacher.teacher(x))
    # The teacher starts as an exact copy of the model.
    for (name, a), b in zip(
        model.state_dict().items(), train_teacher.teacher.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
