"""Registering a method of your own, and the names the registry suggests for a misspelt one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from module.adversarial import (
    METHODS,
    AdversarialBatch,
    AdversarialMethod,
    AdversarialMethodName,
    AdversarialStep,
    MethodSpec,
    build_method,
    method_names,
    method_parameters,
    register_method,
    unregister_method,
)
from module.adversarial.delta import run_with_delta
from tests.module.adversarial.test_methods import token_batch, token_problem


@dataclass(frozen=True)
class ShiftConfig:
    """A toy method: the task loss at the target's output shifted by a constant ``shift``."""

    alpha: float = 1.0
    shift: float = 0.1


class Shift(AdversarialMethod):
    name = "shift"

    def __init__(self, target: nn.Module, config: ShiftConfig | None = None) -> None:
        super().__init__(target)
        self.config = config or ShiftConfig()

    def __call__(self, batch: AdversarialBatch) -> AdversarialStep:
        outputs = batch.run()
        task = batch.loss(outputs)
        delta = self._delta(batch)
        shifted = batch.loss(run_with_delta(self.target, batch.inner_run, delta))
        zero = torch.zeros(())
        stats = {"adv_loss": shifted.detach(), "delta_ratio": zero, "adv_skipped": zero}
        return AdversarialStep(
            task + self.config.alpha * shifted, outputs, False, stats, delta, task.detach()
        )

    def _delta(self, batch: AdversarialBatch) -> torch.Tensor:
        assert batch.token_mask is not None
        return self.config.shift * batch.token_mask[..., None].float().expand(*batch.token_mask.shape, 8)


SPEC = MethodSpec("shift", Shift, ShiftConfig, "task loss at a shifted embedding")


@pytest.fixture
def registered() -> Iterator[MethodSpec]:
    register_method(SPEC)
    try:
        yield SPEC
    finally:
        unregister_method("shift")


def test_a_registered_method_builds_and_trains_like_a_built_in_one(registered: MethodSpec) -> None:
    assert "shift" in method_names() and method_names()[: len(METHODS)] == tuple(METHODS)
    assert method_parameters("shift") == ("alpha", "shift")
    model, ids, mask, labels = token_problem()
    method = build_method("shift", model.embed, shift=0.5, alpha=2.0)
    step = method.train_step(token_batch(model, ids, mask, labels))
    handle = model.embed.register_forward_hook(lambda m, a, out: out + 0.5 * mask[..., None])
    try:
        shifted = F.cross_entropy(model(ids, mask), labels)
    finally:
        handle.remove()
    torch.testing.assert_close(step.loss, F.cross_entropy(model(ids, mask), labels) + 2.0 * shifted)
    with pytest.raises(ValueError, match="shift takes no parameter 'k'.*alpha, shift"):
        build_method("shift", model.embed, k=1)


def test_duplicates_and_built_in_names_are_refused(registered: MethodSpec) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_method(SPEC)
    with pytest.raises(ValueError, match="built-in"):
        register_method(MethodSpec("smart", Shift, ShiftConfig, "x"))
    with pytest.raises(ValueError, match="built-in entries cannot be removed"):
        unregister_method("smart")
    with pytest.raises(TypeError):
        METHODS[AdversarialMethodName.SMART] = SPEC  # type: ignore[index]
    assert set(METHODS) == set(AdversarialMethodName)  # user methods never join the built-in table


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (MethodSpec("Bad Name", Shift, ShiftConfig, ""), "lowercase"),
        (MethodSpec("other", Shift, ShiftConfig, ""), "Shift.name is 'shift'"),
        (MethodSpec("shift", nn.Linear, ShiftConfig, ""), "not an AdversarialMethod"),  # type: ignore[arg-type]
        (MethodSpec("shift", Shift, dict, ""), "must be a dataclass"),
    ],
)
def test_a_malformed_spec_is_refused(spec: MethodSpec, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        register_method(spec)
    assert "shift" not in method_names()


def test_after_unregistering_the_name_is_unknown_again() -> None:
    register_method(SPEC)
    assert unregister_method("shift") is SPEC
    with pytest.raises(ValueError, match="unknown adversarial method 'shift'"):
        build_method("shift", nn.Linear(1, 1))


def test_a_misspelt_name_lists_the_methods_and_the_closest_one() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown adversarial method 'frelb' \(did you mean 'freelb'\?\); the methods: smart, alum, ",
    ) as error:
        build_method("frelb", nn.Linear(1, 1))
    assert "rdrop" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="the methods: smart"):
        method_parameters("nothing-like-it")
