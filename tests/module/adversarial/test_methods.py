"""The adversarial family on toy models: bounds, each paper's update rule recomputed here, zero strength.

Two toys: the paper snippet ``Linear(1, 10) -> Linear(10, 1)`` perturbed at ``model[0]``, and a token model
(embedding -> masked mean -> linear, 3 classes) whose ``[B, L, d]`` embedding output has padding, so the
per-example norms and the "never perturb padding" rule are exercised.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_utils.enums import LossName
from module.adversarial import (
    METHODS,
    AdversarialBatch,
    AdversarialMethodName,
    FreeLBConfig,
    build_method,
    norm,
)
from module.losses import divergence

ALL = list(AdversarialMethodName)
# A strength of zero: the method's objective and gradient are plain training's.
ZERO_STRENGTH: dict[str, dict[str, Any]] = {
    "smart": {"alpha": 0.0},
    "alum": {"alpha": 0.0},
    "r3f": {"alpha": 0.0},
    "r4f": {"alpha": 0.0},
    "fgsm": {"alpha": 0.0},
    "fgm": {"alpha": 0.0},
    "pgd": {"alpha": 0.0},
    "freeat": {"epsilon": 0.0, "replays": 1},
    "yopo": {"epsilon": 0.0},
    "freelb": {"init_mag": 0.0, "step_size": 0.0},
    "rdrop": {"alpha": 0.0},
}


class TokenModel(nn.Module):
    def __init__(self, vocab: int = 30, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.out = nn.Linear(width, classes)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        hidden = torch.tanh(self.mix(self.embed(ids)))
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.out(pooled)


def token_problem(seed: int = 0) -> tuple[TokenModel, Tensor, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = TokenModel()
    ids = torch.randint(1, 30, (4, 6))
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    ids = ids * mask.long()
    labels = torch.tensor([0, 1, 2, 1])
    return model, ids, mask, labels


def token_batch(
    model: TokenModel, ids: Tensor, mask: Tensor, labels: Tensor, **extra: Any
) -> AdversarialBatch:
    return AdversarialBatch(
        run=lambda: model(ids, mask),
        loss=lambda logits: F.cross_entropy(logits, labels),
        divergence=functools.partial(divergence, LossName.SYM_KL),
        token_mask=mask,
        **extra,
    )


def toy_regression(seed: int = 0) -> tuple[nn.Sequential, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(1, 10, bias=False), nn.Linear(10, 1, bias=False))
    x = torch.rand(32, 1)
    return model, x, 2 * x


def regression_batch(model: nn.Module, x: Tensor, y: Tensor, **extra: Any) -> AdversarialBatch:
    return AdversarialBatch(
        run=lambda: model(x),
        loss=lambda out: F.mse_loss(out, y),
        divergence=functools.partial(divergence, LossName.MSE),
        **extra,
    )


def grads(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def embedding_gradient(model: TokenModel, ids: Tensor, mask: Tensor, labels: Tensor, delta: Tensor) -> Tensor:
    """d CE / d delta at ``delta`` (computed here, independently of the library)."""
    delta = delta.clone().requires_grad_(True)
    handle = model.embed.register_forward_hook(lambda m, a, out: out + delta)
    try:
        loss = F.cross_entropy(model(ids, mask), labels)
    finally:
        handle.remove()
    return torch.autograd.grad(loss, delta)[0]


def loss_at(model: TokenModel, ids: Tensor, mask: Tensor, labels: Tensor, delta: Tensor) -> Tensor:
    handle = model.embed.register_forward_hook(lambda m, a, out: out + delta)
    try:
        return F.cross_entropy(model(ids, mask), labels)
    finally:
        handle.remove()


# ------------------------------------------------------------------ the registry


def test_every_method_is_registered_once_with_a_paper_citation() -> None:
    assert set(METHODS) == set(AdversarialMethodName)
    for name, spec in METHODS.items():
        assert spec.method.name is name
        doc = (spec.config.__doc__ or "") + (spec.method.__doc__ or "")
        assert "arXiv" in doc or name in ("r4f",), f"{name}: cite the paper"
    owning = {name for name, spec in METHODS.items() if spec.owns_backward}
    assert owning == {"freeat", "yopo", "freelb"}


def test_build_method_names_the_parameters_it_takes() -> None:
    with pytest.raises(ValueError, match="fgm takes no parameter 'k'.*alpha, epsilon"):
        build_method("fgm", nn.Linear(1, 1), k=3)
    with pytest.raises(ValueError, match="PGD needs k >= 1"):
        build_method("pgd", nn.Linear(1, 1), k=0)


# ------------------------------------------------------------------ bounds and padding


def token_rms(output: Tensor, mask: Tensor) -> Tensor:
    """Each token's root-mean-square coordinate ``[B, L, 1]`` (0 on padding), computed here."""
    return (output * mask.unsqueeze(-1)).pow(2).mean(-1, keepdim=True).sqrt()


PERTURBING = [name for name in ALL if name != "rdrop"]


@pytest.mark.parametrize("name", PERTURBING)
def test_the_perturbation_is_zero_on_padding_and_inside_its_ball(name: str) -> None:
    model, ids, mask, labels = token_problem()
    method = build_method(name, model.embed)
    step = method.train_step(token_batch(model, ids, mask, labels))
    delta = step.delta
    assert delta is not None and delta.shape == (4, 6, 8)
    assert torch.all(delta[mask == 0] == 0)
    assert torch.isfinite(step.loss) and step.stats["adv_skipped"] == 0
    config = method.config  # type: ignore[attr-defined]
    embedded = model.embed(ids).detach() * mask.unsqueeze(-1)
    if name == "fgsm":  # relative by default: each coordinate within eps x its token's rms coordinate
        assert torch.all(delta.abs() <= config.epsilon * token_rms(embedded, mask) * (1 + 1e-5))
        assert step.stats["delta_ratio"] == pytest.approx(config.epsilon, rel=0.05)
    elif name in ("freeat", "yopo", "smart", "alum"):
        assert delta.abs().max() <= config.epsilon * (1 + 1e-6)
    elif name in ("fgm", "pgd"):  # relative by default: eps x each sentence's embedding norm
        bound = config.epsilon * norm(embedded, "l2", "sentence")
        assert torch.all(norm(delta, "l2", "sentence") <= bound * (1 + 1e-5))
        assert step.stats["delta_ratio"] <= config.epsilon * (1 + 1e-5)
    elif name == "freelb":
        lengths = mask.sum(1)  # the initial uniform draw is bounded by init_mag / sqrt(L d) per example
        assert torch.all(norm(delta, "l2", "sentence") > 0) and math.isinf(config.epsilon)
        assert lengths.min() > 0
    else:  # r3f / r4f: N(0, sigma^2) noise, sigma relative to each token's rms coordinate by default
        assert (
            torch.all(delta.abs() <= 10 * config.noise_var * token_rms(embedded, mask))
            and delta.abs().max() > 0
        )


def test_freelb_respects_a_finite_ball_and_its_initial_scale() -> None:
    model, ids, mask, labels = token_problem()
    method = build_method("freelb", model.embed, k=1, init_mag=0.5, radius="absolute")
    torch.manual_seed(3)
    step = method.train_step(token_batch(model, ids, mask, labels))
    bound = 0.5 / torch.sqrt(mask.sum(1) * 8)  # per example, every entry of delta_0
    assert torch.all(step.delta.abs().amax(dim=(1, 2)) <= bound)
    bounded = build_method("freelb", model.embed, k=3, step_size=1.0, epsilon=0.05, radius="absolute")
    step = bounded.train_step(token_batch(model, ids, mask, labels))
    assert torch.all(norm(step.delta, "l2", "sentence") <= 0.05 * (1 + 1e-5))


# ------------------------------------------------------------------ each update rule, recomputed here


def test_fgsm_is_a_signed_step_and_the_papers_mixture() -> None:
    model, ids, mask, labels = token_problem()
    method = build_method("fgsm", model.embed, epsilon=0.01, alpha=0.3, radius="absolute")
    step = method(token_batch(model, ids, mask, labels))
    grad = embedding_gradient(model, ids, mask, labels, torch.zeros(4, 6, 8))
    expected = 0.01 * grad.sign() * mask.unsqueeze(-1)
    torch.testing.assert_close(step.delta, expected, rtol=0, atol=0)
    clean = loss_at(model, ids, mask, labels, torch.zeros(4, 6, 8))
    adversarial = loss_at(model, ids, mask, labels, expected)
    torch.testing.assert_close(step.loss, 0.7 * clean + 0.3 * adversarial)


def test_fgm_is_the_gradient_normalised_per_example() -> None:
    model, ids, mask, labels = token_problem()
    step = build_method("fgm", model.embed, epsilon=0.5, radius="absolute")(
        token_batch(model, ids, mask, labels)
    )
    grad = embedding_gradient(model, ids, mask, labels, torch.zeros(4, 6, 8)) * mask.unsqueeze(-1)
    expected = 0.5 * grad / grad.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    torch.testing.assert_close(step.delta, expected)
    torch.testing.assert_close(norm(step.delta, "l2", "sentence"), torch.full((4,), 0.5))
    clean = loss_at(model, ids, mask, labels, torch.zeros(4, 6, 8))
    torch.testing.assert_close(step.loss, clean + loss_at(model, ids, mask, labels, expected))


def test_pgd_takes_k_projected_steps_from_zero() -> None:
    model, ids, mask, labels = token_problem()
    step = build_method("pgd", model.embed, k=3, step_size=0.2, epsilon=0.3, radius="absolute")(
        token_batch(model, ids, mask, labels)
    )
    delta = torch.zeros(4, 6, 8)
    for _ in range(3):
        grad = embedding_gradient(model, ids, mask, labels, delta) * mask.unsqueeze(-1)
        delta = delta + 0.2 * grad / grad.flatten(1).norm(dim=1).reshape(-1, 1, 1)
        lengths = delta.flatten(1).norm(dim=1).reshape(-1, 1, 1)
        delta = delta * torch.clamp(0.3 / lengths, max=1.0)
    torch.testing.assert_close(step.delta, delta)
    clean = loss_at(model, ids, mask, labels, torch.zeros(4, 6, 8))
    torch.testing.assert_close(step.loss, clean + loss_at(model, ids, mask, labels, delta))


def test_freelb_gradient_is_the_mean_of_the_k_adversarial_gradients() -> None:
    model, ids, mask, labels = token_problem()
    k, step_size, init_mag = 3, 0.1, 0.2
    torch.manual_seed(7)
    step = build_method(
        "freelb", model.embed, k=k, step_size=step_size, init_mag=init_mag, radius="absolute"
    ).train_step(token_batch(model, ids, mask, labels))
    library = grads(model)
    model.zero_grad()

    torch.manual_seed(7)
    delta = (torch.rand(4, 6, 8) * 2 - 1) * mask.unsqueeze(-1)
    delta = delta * (init_mag / torch.sqrt(mask.sum(1) * 8)).reshape(-1, 1, 1)
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for t in range(k):
        leaf = delta.clone().requires_grad_(True)
        loss = loss_at(model, ids, mask, labels, leaf)
        parameter_grads = torch.autograd.grad(loss, [p for _, p in model.named_parameters()] + [leaf])
        for (name, _), grad in zip(model.named_parameters(), parameter_grads[:-1], strict=True):
            expected[name] += grad / k
        if t + 1 < k:
            g = parameter_grads[-1] * mask.unsqueeze(-1)
            delta = delta + step_size * g / g.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    for name, value in expected.items():
        torch.testing.assert_close(library[name], value, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(step.delta, delta)


def test_freeat_replays_update_the_parameters_and_step_delta_by_its_sign() -> None:
    model, ids, mask, labels = token_problem()
    epsilon = 0.02
    method = build_method("freeat", model.embed, replays=3, epsilon=epsilon)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert method.replays == 3
    used, updates = [], 0
    expected_next = torch.zeros(4, 6, 8)
    for replay in range(method.replays):
        grad = embedding_gradient(model, ids, mask, labels, expected_next)
        optimizer.zero_grad()
        step = method.train_step(token_batch(model, ids, mask, labels, replay=replay))
        used.append(step.delta)
        torch.testing.assert_close(step.delta, expected_next, rtol=0, atol=0)
        expected_next = (expected_next + epsilon * grad.sign()).clamp(-epsilon, epsilon) * mask.unsqueeze(-1)
        optimizer.step()
        updates += 1
    assert updates == 3 and torch.all(used[0] == 0) and used[2].abs().max() == pytest.approx(epsilon)
    # A new batch (replay 0) starts from zero again.
    assert torch.all(method.train_step(token_batch(model, ids, mask, labels, replay=0)).delta == 0)


def test_yopo_inner_updates_rerun_only_the_first_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 10, bias=False), nn.Tanh(), nn.Linear(10, 1, bias=False))
    x, y = torch.rand(16, 1), torch.rand(16, 1)
    calls = {"first": 0, "rest": 0}
    model[0].register_forward_hook(lambda *a: calls.__setitem__("first", calls["first"] + 1))
    model[2].register_forward_hook(lambda *a: calls.__setitem__("rest", calls["rest"] + 1))
    method = build_method("yopo", model[0], outer_steps=3, k=4, epsilon=0.05, step_size=0.01)

    torch.manual_seed(1)
    grad_snapshots: list[dict[str, Tensor]] = []

    def backward(loss: Tensor) -> None:
        loss.backward()
        grad_snapshots.append(grads(model))

    step = method(regression_batch(model, x, y, backward=backward))
    # 3 full passes; 4 first-layer-only reruns after each of the first 2: the rest of the net ran 3 times.
    assert calls == {"first": 3 + 2 * 4, "rest": 3}
    assert len(grad_snapshots) == 3  # parameter gradients come from the full passes only
    assert step.delta.abs().max() <= 0.05 + 1e-9

    # With f0 = the target itself, <p, f0 + delta> has gradient p, so the n inner steps move delta by
    # n * step * sign(p) (clipped), with p = dJ/d f0 at the previous full pass.
    torch.manual_seed(1)
    model.zero_grad()
    delta = (torch.rand(16, 10) * 2 - 1) * 0.05
    for _ in range(2):
        leaf_out = model[0](x).detach().requires_grad_(True)
        loss = F.mse_loss(model[2](model[1](leaf_out + delta)), y) / 3
        (p,) = torch.autograd.grad(loss, leaf_out)
        for _ in range(4):
            delta = (delta + 0.01 * p.sign()).clamp(-0.05, 0.05)
    torch.testing.assert_close(step.delta, delta)


def test_r3f_adds_the_symmetric_kl_to_noised_outputs() -> None:
    model, ids, mask, labels = token_problem()
    torch.manual_seed(5)
    step = build_method(
        "r3f", model.embed, alpha=2.0, noise_var=0.1, noise_type="uniform", radius="absolute"
    )(token_batch(model, ids, mask, labels))
    torch.manual_seed(5)
    noise = (torch.rand(4, 6, 8) * 2 - 1) * 0.1 * mask.unsqueeze(-1)
    torch.testing.assert_close(step.delta, noise)
    clean = model(ids, mask)
    noised = loss_logits(model, ids, mask, noise)
    p, q = F.log_softmax(clean, -1), F.log_softmax(noised, -1)
    sym_kl = F.kl_div(q, p, log_target=True, reduction="batchmean") + F.kl_div(
        p, q, log_target=True, reduction="batchmean"
    )
    torch.testing.assert_close(step.loss, F.cross_entropy(clean, labels) + 2.0 * sym_kl)
    assert noise.abs().max() <= 0.1


def loss_logits(model: TokenModel, ids: Tensor, mask: Tensor, delta: Tensor) -> Tensor:
    handle = model.embed.register_forward_hook(lambda m, a, out: out + delta)
    try:
        return model(ids, mask)
    finally:
        handle.remove()


def test_r4f_spectrally_normalises_the_head() -> None:
    model, ids, mask, labels = token_problem()
    with torch.no_grad():
        model.out.weight.mul_(10)
    method = build_method("r4f", model.embed)
    method.prepare(model.out)
    for _ in range(20):  # power iterations run in training-mode forwards
        model(ids, mask)
    assert torch.linalg.matrix_norm(model.out.weight, ord=2).item() == pytest.approx(1.0, rel=1e-3)
    assert torch.isfinite(method.train_step(token_batch(model, ids, mask, labels)).loss)


def test_alum_is_smarts_inner_loop_with_its_own_defaults() -> None:
    alum = METHODS[AdversarialMethodName.ALUM].config
    assert (alum().alpha, alum().k, alum().epsilon, alum().step_size) == (1.0, 1, 1e-5, 1e-3)
    assert alum.for_pretraining().alpha == 10.0
    model, ids, mask, labels = token_problem()
    torch.manual_seed(0)
    a = build_method("alum", model.embed, epsilon=1e-3)(token_batch(model, ids, mask, labels))
    torch.manual_seed(0)
    b = build_method("smart", model.embed, epsilon=1e-3)(token_batch(model, ids, mask, labels))
    torch.testing.assert_close(a.loss, b.loss)


# ------------------------------------------------------------------ zero strength and non-finite gradients


@pytest.mark.parametrize("name", ALL)
def test_zero_strength_reproduces_plain_training(name: str) -> None:
    model, ids, mask, labels = token_problem()
    method = build_method(name, model.embed, **ZERO_STRENGTH[name])
    method.prepare(model.out)
    F.cross_entropy(model(ids, mask), labels).backward()
    plain = grads(model)
    model.zero_grad()
    step = method.train_step(token_batch(model, ids, mask, labels))
    for key, value in grads(model).items():
        torch.testing.assert_close(value, plain[key], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(step.loss, F.cross_entropy(model(ids, mask), labels))


@pytest.mark.parametrize("name", ["fgsm", "fgm", "pgd"])
def test_a_non_finite_perturbation_gradient_turns_the_perturbation_off(name: str) -> None:
    model, ids, mask, labels = token_problem()
    step = build_method(name, model.embed)(token_batch(model, ids, mask, labels, inner_loss_scale=math.inf))
    assert step.stats["adv_skipped"] == 1 and torch.all(step.delta == 0) and torch.isfinite(step.loss)


# ------------------------------------------------------------------ the paper snippet trains with every method


@pytest.mark.parametrize("name", ALL)
def test_every_method_trains_the_sequential_example(name: str) -> None:
    model, x, y = toy_regression()
    small = {"fgm": {"epsilon": 1e-2}, "pgd": {"epsilon": 1e-2, "step_size": 5e-3}}
    method = build_method(name, model[0], **small.get(name, {}))
    if name == "r4f":
        method.prepare(model[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    first = F.mse_loss(model(x), y).item()
    for _ in range(200 // method.replays):
        for replay in range(method.replays):
            optimizer.zero_grad()
            method.train_step(regression_batch(model, x, y, replay=replay))
            optimizer.step()
    last = F.mse_loss(model(x), y).item()
    assert math.isfinite(last) and last < first / 20, (first, last)


def test_freelb_defaults_are_relative_with_the_authors_k() -> None:
    config = FreeLBConfig()
    assert (config.k, config.step_size, config.init_mag, config.dropout_replay) == (2, 0.02, 0.02, True)
    assert math.isinf(config.epsilon) and config.radius == "relative"


# ------------------------------------------------------------------ relative radii and the batch level


def test_fgm_relative_radius_is_a_fraction_of_each_sentences_embedding_norm() -> None:
    model, ids, mask, labels = token_problem()
    step = build_method("fgm", model.embed, epsilon=0.1)(token_batch(model, ids, mask, labels))
    embedded = model.embed(ids).detach() * mask.unsqueeze(-1)
    grad = embedding_gradient(model, ids, mask, labels, torch.zeros(4, 6, 8)) * mask.unsqueeze(-1)
    sentence_norms = embedded.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    expected = 0.1 * sentence_norms * grad / grad.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    torch.testing.assert_close(step.delta, expected)
    # l2 per sentence at the boundary: the logged ratio is eps exactly.
    assert step.stats["delta_ratio"] == pytest.approx(0.1, rel=1e-5)


def test_the_relative_ball_scales_with_the_embeddings() -> None:
    """The same relative radius on embeddings 10x larger gives a perturbation 10x larger (same ratio)."""
    model, ids, mask, labels = token_problem()
    small = build_method("pgd", model.embed)(token_batch(model, ids, mask, labels))
    with torch.no_grad():
        model.embed.weight.mul_(10)
        model.mix.weight.div_(10)  # the same function of the input: only the embedding scale changed
    large = build_method("pgd", model.embed)(token_batch(model, ids, mask, labels))
    torch.testing.assert_close(large.delta, 10 * small.delta, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(large.stats["delta_ratio"], small.stats["delta_ratio"], rtol=1e-4, atol=0)


@pytest.mark.parametrize("p_norm", ["l2", "inf", "l1"])
def test_a_relative_smart_ball_bounds_every_token_and_keeps_padding_zero(p_norm: str) -> None:
    model, ids, mask, labels = token_problem()
    method = build_method(
        "smart", model.embed, radius="relative", epsilon=0.05, step_size=1.0, noise_var=0.01, p_norm=p_norm
    )
    step = method(token_batch(model, ids, mask, labels))
    embedded = model.embed(ids).detach() * mask.unsqueeze(-1)
    if p_norm == "inf":
        bound = 0.05 * token_rms(embedded, mask).squeeze(-1)
        assert torch.all(norm(step.delta, "inf", "token") <= bound * (1 + 1e-5))
    else:
        bound = 0.05 * norm(embedded, p_norm, "token")
        assert torch.all(norm(step.delta, p_norm, "token") <= bound * (1 + 1e-5))
    assert torch.all(step.delta[mask == 0] == 0)
    assert step.stats["delta_ratio"] > 0.02  # one unit ascent step reaches the boundary


def test_batch_level_fgm_normalises_over_the_whole_batch() -> None:
    """The widely copied FGM recipe: r = eps g / ||g|| with the norm over every token of the batch."""
    model, ids, mask, labels = token_problem()
    step = build_method("fgm", model.embed, epsilon=0.5, radius="absolute", norm_level="batch")(
        token_batch(model, ids, mask, labels)
    )
    grad = embedding_gradient(model, ids, mask, labels, torch.zeros(4, 6, 8)) * mask.unsqueeze(-1)
    torch.testing.assert_close(step.delta, 0.5 * grad / grad.norm())
    assert float(norm(step.delta, "l2", "batch")) == pytest.approx(0.5, rel=1e-5)


# ------------------------------------------------------------------ R-Drop


def test_rdrop_is_the_mean_task_loss_plus_the_divergence_of_two_dropout_samples() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.Linear(16, 3))
    x, labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
    batch = AdversarialBatch(
        run=lambda: model(x),
        loss=lambda logits: F.cross_entropy(logits, labels),
        divergence=functools.partial(divergence, LossName.SYM_KL),
    )
    torch.manual_seed(1)
    step = build_method("rdrop", model[0], alpha=0.7)(batch)
    torch.manual_seed(1)
    first, second = model(x), model(x)  # the same two dropout draws, in the same order
    p, q = F.log_softmax(first, -1), F.log_softmax(second, -1)
    sym_kl = F.kl_div(q, p, log_target=True, reduction="batchmean") + F.kl_div(
        p, q, log_target=True, reduction="batchmean"
    )
    task = (F.cross_entropy(first, labels) + F.cross_entropy(second, labels)) / 2
    torch.testing.assert_close(step.loss, task + 0.7 * sym_kl)
    torch.testing.assert_close(step.stats["adv_loss"], sym_kl.detach())
    assert step.stats["adv_loss"] > 0 and step.delta is None and step.stats["delta_ratio"] == 0
    torch.testing.assert_close(step.outputs, first)
    model.eval()  # no dropout: the two passes agree, the term vanishes
    assert build_method("rdrop", model[0])(batch).stats["adv_loss"] == pytest.approx(0.0, abs=1e-7)
