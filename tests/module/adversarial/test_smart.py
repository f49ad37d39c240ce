"""SmartPerturbation on plain modules and on the tiny MT-DNN model: exactness, bounds, masks, gradients."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor, nn

from module.adversarial import NormLevel, PNorm, SmartConfig, SmartPerturbation, add_to_output, norm
from module.losses import divergence, mse, sym_kl
from tests.mt_dnn.conftest import build_tiny_mtdnn


def _embedding_model(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Embedding(20, 8),
        nn.Dropout(dropout),
        nn.Flatten(1),
        nn.Linear(8 * 5, 16),
        nn.Tanh(),
        nn.Linear(16, 4),
    )


def _batch(seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (6, 5), generator=generator)
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    return ids, mask


def test_zero_delta_reproduces_clean_logits_exactly() -> None:
    model = build_tiny_mtdnn()
    ids = torch.randint(5, 30, (3, 9))
    attention = torch.ones_like(ids)
    clean = model("pair", ids, attention)
    target = model.perturbation_target()
    with add_to_output(target, torch.zeros(3, 9, 32)):
        perturbed = model("pair", ids, attention)
    assert torch.equal(clean, perturbed)


def test_zero_radius_gives_exactly_zero_regulariser() -> None:
    model = build_tiny_mtdnn()
    ids = torch.randint(5, 30, (3, 9))
    attention = torch.ones_like(ids)
    smart = SmartPerturbation(model.perturbation_target(), SmartConfig(epsilon=0.0))
    result = smart(lambda: model("pair", ids, attention), sym_kl, attention)
    assert torch.equal(result.delta, torch.zeros_like(result.delta))
    assert result.loss.item() == 0.0


@pytest.mark.parametrize("p", list(PNorm))
@pytest.mark.parametrize("level", list(NormLevel))
@pytest.mark.parametrize("k", [1, 3])
def test_delta_within_epsilon_and_zero_on_padding(p: PNorm, level: NormLevel, k: int) -> None:
    model = _embedding_model()
    ids, mask = _batch()
    epsilon = 1e-2
    config = SmartConfig(k=k, epsilon=epsilon, step_size=0.5, noise_var=1e-2, p_norm=p, norm_level=level)
    result = SmartPerturbation(model[0], config)(lambda: model(ids), sym_kl, mask)
    assert (norm(result.delta, p, level) <= epsilon * (1 + 1e-5)).all()
    assert torch.equal(result.delta[mask == 0], torch.zeros_like(result.delta[mask == 0]))
    assert result.delta[mask == 1].abs().sum() > 0  # it moved (step_size > epsilon: it reaches the sphere)


def test_inner_loop_leaves_parameter_gradients_untouched() -> None:
    model = _embedding_model()
    ids, mask = _batch()
    for index, parameter in enumerate(model.parameters()):
        parameter.grad = None if index % 2 else torch.full_like(parameter, 0.5)
    before = [None if parameter.grad is None else parameter.grad.clone() for parameter in model.parameters()]
    SmartPerturbation(model[0], SmartConfig(k=3))(lambda: model(ids), sym_kl, mask)
    for old, parameter in zip(before, model.parameters(), strict=True):
        assert (old is None and parameter.grad is None) or torch.equal(old, parameter.grad)


def test_regulariser_gradient_reaches_the_parameters() -> None:
    model = _embedding_model()
    ids, mask = _batch()
    config = SmartConfig(epsilon=1e-1, step_size=1.0, noise_var=1e-2, alpha=2.0)
    result = SmartPerturbation(model[0], config)(lambda: model(ids), sym_kl, mask)
    assert torch.isclose(result.loss, 2.0 * result.divergence)
    assert result.loss.item() > 0
    result.loss.backward()
    assert all(
        parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in model.parameters()
    )


def test_power_iteration_finds_the_most_sensitive_direction() -> None:
    """With f(x) = W x and a squared-error divergence, K l2-normalised steps are power iteration on W^T W."""
    weight = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    model = nn.Sequential(nn.Identity(), nn.Linear(3, 2, bias=False))
    model[1].weight.data.copy_(weight)
    x = torch.randn(4, 3)
    config = SmartConfig(k=8, epsilon=1e-3, step_size=1.0, noise_var=1e-3, p_norm="l2", norm_level="sentence")
    torch.manual_seed(3)
    result = SmartPerturbation(model[0], config)(lambda: model(x), mse)
    direction = result.delta / result.delta.norm(dim=1, keepdim=True)
    assert (direction[:, 0].abs() > 0.999).all()
    assert torch.allclose(result.delta.norm(dim=1), torch.full((4,), 1e-3))


def test_non_finite_inner_gradient_skips_the_term() -> None:
    model = _embedding_model()
    ids, mask = _batch()
    calls = {"n": 0}

    def poisoned(outputs: Tensor, target: Tensor) -> Tensor:
        calls["n"] += 1
        value = sym_kl(outputs, target)
        return value * float("nan") if calls["n"] == 1 else value

    result = SmartPerturbation(model[0], SmartConfig())(lambda: model(ids), poisoned, mask)
    assert result.skipped.item() == 1.0
    assert result.loss.item() == 0.0
    result.loss.backward()
    assert all(
        torch.isfinite(parameter.grad).all() for parameter in model.parameters() if parameter.grad is not None
    )


def test_dropout_replay_reuses_the_clean_masks() -> None:
    model = _embedding_model(dropout=0.5).train()
    ids, mask = _batch()
    zero_radius = {"epsilon": 0.0}
    replayed = SmartPerturbation(model[0], SmartConfig(dropout_replay=True, **zero_radius))
    fresh = SmartPerturbation(model[0], SmartConfig(dropout_replay=False, **zero_radius))
    assert replayed(lambda: model(ids), sym_kl, mask).loss.item() == 0.0
    assert fresh(lambda: model(ids), sym_kl, mask).loss.item() > 0.0


@pytest.mark.parametrize("replay", [True, False])
def test_same_seed_same_result(replay: bool) -> None:
    model = _embedding_model(dropout=0.5).train()
    ids, mask = _batch()
    smart = SmartPerturbation(model[0], SmartConfig(dropout_replay=replay, k=2))
    results = []
    for _ in range(2):
        torch.manual_seed(5)
        results.append(smart(lambda: model(ids), sym_kl, mask))
    assert torch.equal(results[0].loss, results[1].loss)
    assert torch.equal(results[0].delta, results[1].delta)


@pytest.mark.parametrize("task", ["single", "pair", "score", "rank"])
def test_every_task_type_on_the_tiny_model(task: str) -> None:
    model = build_tiny_mtdnn().train()
    task_def = model.task_defs[task]
    n_candidates = 3 if task == "rank" else 1
    rows = 4 * n_candidates
    ids = torch.randint(5, 30, (rows, 7))
    attention = torch.ones_like(ids)
    attention[1, 5:] = 0
    candidate_mask = torch.ones(4, 3, dtype=torch.bool) if task == "rank" else None
    smart = SmartPerturbation(model.perturbation_target(), SmartConfig(epsilon=1e-3, noise_var=1e-3))
    result = smart(
        lambda: model(task, ids, attention, n_candidates=n_candidates),
        functools.partial(divergence, task_def.adv_loss, mask=candidate_mask),
        attention,
    )
    expected_shape = {"single": (4, 2), "pair": (4, 3), "score": (4,), "rank": (4, 3)}[task]
    assert result.outputs.shape == expected_shape
    assert result.loss.dim() == 0 and torch.isfinite(result.loss) and result.loss.item() >= 0
    assert 0 < result.delta_ratio.item() < 1
    result.loss.backward()


def test_mask_shape_mismatch_is_a_clear_error() -> None:
    model = _embedding_model()
    ids, mask = _batch()
    with pytest.raises(ValueError, match="token_mask shape"):
        SmartPerturbation(model[0])(lambda: model(ids), sym_kl, mask[:, :3])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="k >= 1"):
        SmartConfig(k=0)
    with pytest.raises(ValueError, match="epsilon"):
        SmartConfig(epsilon=-1.0)
    with pytest.raises(ValueError):
        SmartConfig(p_norm="l3")


def test_seed_example_linear_regression_converges() -> None:
    """The fastai-style snippet: Linear(1, 10) -> Linear(10, 1), SMART on model[0]'s output, 2 epochs, lr 1e-3."""
    torch.manual_seed(0)
    x = torch.rand(2000, 1)
    y = 3.0 * x + 0.5 * torch.randn(2000, 1) * 0.01
    model = nn.Sequential(nn.Linear(1, 10, bias=False), nn.Linear(10, 1, bias=False))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    smart = SmartPerturbation(model[0], SmartConfig())  # the paper's defaults
    initial = mse(model(x), y).item()
    for _epoch in range(2):
        for start in range(0, len(x), 4):
            xb, yb = x[start : start + 4], y[start : start + 4]
            result = smart(lambda xb=xb: model(xb), mse)
            loss = mse(result.outputs, yb) + result.loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    final = mse(model(x), y).item()
    assert final < 0.01 * initial
    assert final < 1e-3


def test_finite_and_bounded_under_bf16_autocast() -> None:
    model = build_tiny_mtdnn().train()
    ids = torch.randint(5, 30, (4, 9))
    attention = torch.ones_like(ids)
    smart = SmartPerturbation(model.perturbation_target(), SmartConfig(epsilon=1e-3, noise_var=1e-3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = smart(lambda: model("pair", ids, attention), sym_kl, attention)
    assert result.delta.dtype == torch.float32
    assert (result.delta.abs() <= 1e-3).all()
    assert torch.isfinite(result.loss) and result.skipped.item() == 0.0
    result.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_seeded_noise_is_per_row_whatever_the_batch_and_padding() -> None:
    """With noise_seeds, a row's initial noise depends on its seed alone (not on the batch or padding)."""
    embedding = nn.Embedding(20, 4)
    config = SmartConfig(step_size=0.0, epsilon=10.0, noise_var=1.0)  # delta = the initial noise, unmoved

    def noise(n_rows: int, length: int, seeds: list[int], real: list[int]) -> Tensor:
        ids = torch.ones(n_rows, length, dtype=torch.long)
        mask = (torch.arange(length) < torch.tensor(real).unsqueeze(1)).long()
        smart = SmartPerturbation(embedding, config)
        return smart(lambda: embedding(ids).sum((1, 2)).unsqueeze(1), mse, mask, noise_seeds=seeds).delta

    short = noise(2, 3, [11, 22], real=[3, 2])
    long = noise(3, 9, [22, 33, 11], real=[2, 9, 3])
    assert torch.equal(short[0], long[2, :3]) and torch.equal(short[1], long[0, :3])
    assert torch.equal(long[0, 2:], torch.zeros(7, 4)) and torch.equal(short[1, 2:], torch.zeros(1, 4))
    assert not torch.equal(long[1, :2], long[0, :2])
    with pytest.raises(ValueError, match="noise seeds"):
        noise(2, 3, [1], real=[3, 3])
