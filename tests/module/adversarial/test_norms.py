"""Gradient normalisation and projection, per token and per sentence, on hand-made tensors."""

from __future__ import annotations

import pytest
import torch

from module.adversarial.norms import NormLevel, PNorm, norm, normalize, project

# One sentence of two tokens, two features each, and a second sentence with one zero token.
HAND = torch.tensor([[[3.0, -4.0], [1.0, 0.0]], [[0.0, 0.0], [-2.0, 2.0]]])


def test_token_level_normalisation_by_hand() -> None:
    inf = normalize(HAND, "inf", "token")
    assert torch.equal(inf, torch.tensor([[[0.75, -1.0], [1.0, 0.0]], [[0.0, 0.0], [-1.0, 1.0]]]))
    l2 = normalize(HAND, "l2", "token")
    expected = torch.tensor([[[0.6, -0.8], [1.0, 0.0]], [[0.0, 0.0], [-(0.5**0.5), 0.5**0.5]]])
    assert torch.allclose(l2, expected)
    l1 = normalize(HAND, "l1", "token")
    assert torch.allclose(l1, torch.tensor([[[3 / 7, -4 / 7], [1.0, 0.0]], [[0.0, 0.0], [-0.5, 0.5]]]))


def test_sentence_level_normalisation_by_hand() -> None:
    inf = normalize(HAND, PNorm.INF, NormLevel.SENTENCE)
    assert torch.equal(inf, torch.tensor([[[0.75, -1.0], [0.25, 0.0]], [[0.0, 0.0], [-1.0, 1.0]]]))
    l2 = normalize(HAND, PNorm.L2, NormLevel.SENTENCE)
    assert torch.allclose(l2[0], HAND[0] / 26**0.5)
    assert torch.allclose(l2[1], HAND[1] / 8**0.5)
    l1 = normalize(HAND, PNorm.L1, NormLevel.SENTENCE)
    assert torch.allclose(l1[0], HAND[0] / 8)


def test_zero_vectors_stay_zero() -> None:
    zeros = torch.zeros(2, 3, 4)
    for p in PNorm:
        for level in NormLevel:
            assert torch.equal(normalize(zeros, p, level), zeros)


def test_norm_shapes() -> None:
    x = torch.randn(2, 5, 3)
    assert norm(x, "l2", "token").shape == (2, 5)
    assert norm(x, "l2", "sentence").shape == (2,)
    assert torch.allclose(norm(x, "l2", "sentence"), x.flatten(1).norm(dim=1))


@pytest.mark.parametrize("p", list(PNorm))
@pytest.mark.parametrize("level", list(NormLevel))
def test_projection_lands_inside_the_ball(p: PNorm, level: NormLevel) -> None:
    torch.manual_seed(0)
    delta = torch.randn(4, 7, 16) * 3
    epsilon = 0.5
    projected = project(delta, p, epsilon, level)
    assert (norm(projected, p, level) <= epsilon * (1 + 1e-5)).all()
    # Vectors already inside are untouched.
    small = delta * 1e-4
    assert torch.equal(project(small, p, epsilon, level), small)


def test_l1_projection_is_the_closest_point() -> None:
    """Against a brute-force check: no other point on the ball is closer (random search + the known answer)."""
    v = torch.tensor([[0.8, -0.3, 0.1, 0.05]])
    epsilon = 0.5
    projected = project(v, "l1", epsilon, "token")
    # Sorted magnitudes 0.8, 0.3, ...: only rank 1 qualifies, theta = 0.8 - 0.5 = 0.3.
    assert torch.allclose(projected, torch.tensor([[0.5, 0.0, 0.0, 0.0]]), atol=1e-7)
    torch.manual_seed(1)
    candidates = torch.randn(20000, 4)
    candidates = candidates / candidates.abs().sum(dim=1, keepdim=True) * epsilon
    best_random = (candidates - v).norm(dim=1).min()
    assert (projected - v).norm() <= best_random + 1e-6


def test_l1_projection_hand_case() -> None:
    # |v| sorted = 3, 2, 1; eps = 3: theta = (3 + 2 - 3) / 2 = 1 -> [2, -1, 0].
    v = torch.tensor([[3.0, -2.0, 1.0]])
    assert torch.allclose(project(v, "l1", 3.0, "token"), torch.tensor([[2.0, -1.0, 0.0]]))


def test_l2_projection_keeps_direction() -> None:
    v = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(project(v, "l2", 1.0, "token"), torch.tensor([[0.6, 0.8]]))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        project(torch.ones(2, 2), "linf", 1.0, "token")
    with pytest.raises(ValueError, match="epsilon"):
        project(torch.ones(2, 2), "l2", -1.0, "token")
    with pytest.raises(ValueError, match="batch axis"):
        normalize(torch.ones(3), "l2", "token")
