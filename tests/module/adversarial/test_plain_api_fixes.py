"""The plain-API paths (no per-example noise seeds, no replay index): dropout masks shared across FreeLB's
and YOPO's passes, FGM/PGD without a doubled clean gradient, FreeAT counting its replays, R4F's head check,
and each step's task loss."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_utils.enums import LossName
from module.adversarial import AdversarialBatch, build_method
from module.losses import divergence
from tests.module.adversarial.test_methods import grads, token_batch, token_problem


def dropout_model(seed: int = 0) -> nn.Sequential:
    """Dropout before and after the perturbed layer (index 1), so both sides of the target are replayed."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 16), nn.Dropout(0.5), nn.Tanh(), nn.Linear(16, 1))


def recording_batch(
    model: nn.Module, x: Tensor, y: Tensor, seen: list[Tensor], **extra: Any
) -> AdversarialBatch:
    def loss(outputs: Tensor) -> Tensor:
        seen.append(outputs.detach().clone())
        return F.mse_loss(outputs, y)

    return AdversarialBatch(
        run=lambda: model(x), loss=loss, divergence=functools.partial(divergence, LossName.MSE), **extra
    )


def test_freelb_passes_share_dropout_masks_without_noise_seeds() -> None:
    """At init_mag 0 and step 0 every pass computes the same function: equal outputs iff equal masks."""
    model = dropout_model()
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    seen: list[Tensor] = []
    torch.manual_seed(1)
    build_method("freelb", model[1], k=3, init_mag=0.0, step_size=0.0).train_step(
        recording_batch(model, x, y, seen)
    )
    assert len(seen) == 3
    for later in seen[1:]:
        torch.testing.assert_close(later, seen[0], rtol=0, atol=0)


def test_freelb_with_noise_seeds_also_shares_masks() -> None:
    model = dropout_model()
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    seen: list[Tensor] = []
    batch = recording_batch(model, x, y, seen, noise_seeds=list(range(8)))
    build_method("freelb", model[1], k=2, init_mag=0.0, step_size=0.0).train_step(batch)
    torch.testing.assert_close(seen[1], seen[0], rtol=0, atol=0)


def test_yopo_inner_reruns_of_the_first_pass_use_its_dropout_masks() -> None:
    """The first layer (Linear + Dropout) rerun at the same delta gives the outer pass's output exactly."""
    torch.manual_seed(0)
    first = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5))
    model = nn.Sequential(first, nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 1))
    outputs: list[Tensor] = []
    first.register_forward_hook(lambda module, args, out: outputs.append(out.detach().clone()))
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    torch.manual_seed(1)
    method = build_method("yopo", first[0], first_layer=first, outer_steps=2, k=1, step_size=0.0)
    method.train_step(recording_batch(model, x, y, []))
    # outer pass 0, its one inner rerun (step 0: delta unchanged), outer pass 1
    assert len(outputs) == 3
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["fgm", "pgd"])
def test_a_skipped_perturbation_drops_the_term_instead_of_doubling_the_clean_gradient(name: str) -> None:
    model, ids, mask, labels = token_problem()
    F.cross_entropy(model(ids, mask), labels).backward()
    plain = grads(model)
    model.zero_grad()
    step = build_method(name, model.embed).train_step(
        token_batch(model, ids, mask, labels, inner_loss_scale=math.inf)
    )
    assert step.stats["adv_skipped"] == 1
    clean = F.cross_entropy(model(ids, mask), labels)
    torch.testing.assert_close(step.loss, clean)
    for key, value in grads(model).items():
        torch.testing.assert_close(value, plain[key], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["fgm", "pgd"])
def test_a_finite_batch_keeps_the_papers_objective(name: str) -> None:
    model, ids, mask, labels = token_problem()
    step = build_method(name, model.embed, alpha=0.5)(token_batch(model, ids, mask, labels))
    clean = F.cross_entropy(model(ids, mask), labels)
    handle = model.embed.register_forward_hook(lambda m, a, out: out + step.delta)
    try:
        adversarial = F.cross_entropy(model(ids, mask), labels)
    finally:
        handle.remove()
    torch.testing.assert_close(step.loss, clean + 0.5 * adversarial)
    torch.testing.assert_close(step.task_loss, clean.detach())


def test_freeat_counts_its_replays_when_the_caller_does_not() -> None:
    """The documented loop without ``replay=``: replay 0 starts at zero, replay 1 moves by eps * sign(g)."""
    model, ids, mask, labels = token_problem()
    method = build_method("freeat", model.embed, replays=2, epsilon=0.02)
    deltas = []
    for _ in range(2):  # two batches
        for _ in range(method.replays):
            model.zero_grad()
            deltas.append(method.train_step(token_batch(model, ids, mask, labels)).delta)
    assert torch.all(deltas[0] == 0) and torch.all(deltas[2] == 0)
    assert deltas[1].abs().max() == pytest.approx(0.02) and deltas[3].abs().max() == pytest.approx(0.02)
    assert torch.all(deltas[1][mask == 0] == 0)


def test_r4f_refuses_to_normalise_anything_but_a_head() -> None:
    model, _, _, _ = token_problem()
    method = build_method("r4f", model.embed)
    with pytest.raises(ValueError, match="contains the perturbed module"):
        method.prepare(model)
    encoder = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match="embedding layer"):
        method.prepare(encoder)
    method.prepare(model.out)
    assert torch.nn.utils.parametrize.is_parametrized(model.out, "weight")
    assert not torch.nn.utils.parametrize.is_parametrized(model.mix, "weight")


@pytest.mark.parametrize("name", ["smart", "alum", "r3f", "fgsm", "fgm", "pgd", "rdrop"])
def test_single_backward_methods_report_their_clean_task_loss(name: str) -> None:
    model, ids, mask, labels = token_problem()
    model.eval()
    step = build_method(name, model.embed)(token_batch(model, ids, mask, labels))
    assert step.task_loss is not None and not step.task_loss.requires_grad
    torch.testing.assert_close(step.task_loss, F.cross_entropy(model(ids, mask), labels).detach())


@pytest.mark.parametrize("name", ["freeat", "yopo", "freelb"])
def test_backward_owning_methods_have_no_clean_task_loss(name: str) -> None:
    model, ids, mask, labels = token_problem()
    assert build_method(name, model.embed).train_step(token_batch(model, ids, mask, labels)).task_loss is None
