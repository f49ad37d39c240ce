"""The guarded optimizer update: where a run skips a non-finite step, and that a skipped step changes nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mt_dnn.update import GuardedUpdate, SkipBy, SkippedSteps


def optimizer_for(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "fused_adamw":
        return torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=0.1, foreach=False)
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize(
    ("name", "fp16", "mode"),
    [("fused_adamw", False, SkipBy.KERNEL), ("adamw", False, SkipBy.HOST), ("sgd", False, SkipBy.HOST),
     ("fused_adamw", True, SkipBy.SCALER), ("sgd", True, SkipBy.SCALER)],
)  # fmt: skip
def test_the_skip_is_decided_once_per_run(name: str, fp16: bool, mode: SkipBy) -> None:
    optimizer = optimizer_for(name, nn.Linear(2, 2))
    assert GuardedUpdate(optimizer, torch.amp.GradScaler("cpu", enabled=fp16)).mode is mode


@pytest.mark.parametrize("name", ["fused_adamw", "adamw", "sgd"])
def test_a_skipped_update_changes_neither_weights_nor_optimizer_state(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = optimizer_for(name, model)
    update = GuardedUpdate(optimizer, torch.amp.GradScaler("cpu", enabled=False))

    def step(applied: bool) -> None:
        model(torch.randn(4, 3)).sum().backward()
        update.step(torch.tensor(applied))
        optimizer.zero_grad(set_to_none=True)

    step(True)
    weights = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for s in optimizer.state.values() for k, v in s.items() if torch.is_tensor(v)}
    step(False)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))
    after = {k: v for s in optimizer.state.values() for k, v in s.items() if torch.is_tensor(v)}
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert not hasattr(optimizer, "found_inf") and not hasattr(optimizer, "grad_scale")
    step(True)
    assert not all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))


def test_skipped_steps_count_the_total_and_the_longest_run() -> None:
    skipped = SkippedSteps(torch.device("cpu"))
    for applied in [True, False, False, True, False, False, False, True]:
        skipped.update(torch.tensor(applied))
    assert skipped.read() == (5, 3)
    assert skipped.read_new() == (5, 3) and skipped.read_new() == (0, 3)
    skipped.restart(total=5)  # a resumed run: the total carries over, a run in a row does not
    skipped.update(torch.tensor(False))
    assert skipped.read() == (6, 1) and skipped.read_new() == (1, 1)
