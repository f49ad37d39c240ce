"""SAN: memories, the recurrence against a hand-written one, averaging, prediction dropout, learning."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch.nn import functional as F

from module.san import PROB_FLOOR, SANClassifier, SANConfig, memory_masks

os.environ.setdefault("HF_HUB_OFFLINE", "1")

H = 8
C = 3

# [CLS] p p [SEP] h h [SEP] <pad>: token types 0 0 0 0 1 1 1 0.
PAIR_TYPES = [0, 0, 0, 0, 1, 1, 1, 0]
PAIR_MASK = [1, 1, 1, 1, 1, 1, 1, 0]
PREMISE = [1, 2]
HYPOTHESIS = [4, 5]
SPECIAL = [0, 3, 6]


def pair_batch(n: int, hidden_size: int = H) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden = torch.randn(n, len(PAIR_MASK), hidden_size)
    mask = torch.tensor([PAIR_MASK] * n)
    types = torch.tensor([PAIR_TYPES] * n)
    return hidden, mask, types


def quiet_san(num_steps: int = 5, answer_dropout: float = 0.1, n_class: int = C) -> SANClassifier:
    """A SAN with memory and feature dropout off, so only prediction dropout is random."""
    config = SANConfig(num_steps=num_steps, answer_dropout=answer_dropout, memory_dropout=0.0)
    return SANClassifier(H, n_class, dropout_p=0.0, config=config)


def as_sets(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in mask]


def test_memory_masks_by_hand() -> None:
    attention = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1, 1, 0],  # [CLS] p p [SEP] h h [SEP] <pad>
            [1, 1, 1, 1, 0, 0, 0, 0],  # single sentence: [CLS] a b [SEP]
            [1, 1, 1, 1, 0, 0, 0, 0],  # empty premise: [CLS] [SEP] h [SEP]
            [1, 1, 1, 1, 1, 0, 0, 0],  # hypothesis truncated away: [CLS] p p [SEP] [SEP]
        ]
    )
    types = torch.tensor(
        [
            [0, 0, 0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, 0, 0, 0],
        ]
    )
    premise, hypothesis = memory_masks(attention, types)
    assert as_sets(premise) == [[1, 2], [0, 1, 2, 3], [0, 1], [1, 2]]
    assert as_sets(hypothesis) == [[4, 5], [0, 1, 2, 3], [2], [4]]
    premise, hypothesis = memory_masks(attention, None)
    assert as_sets(premise) == as_sets(hypothesis) == as_sets(attention)


def test_output_is_log_of_a_distribution() -> None:
    torch.manual_seed(0)
    san = SANClassifier(H, C, dropout_p=0.1).eval()
    hidden, mask, types = pair_batch(6)
    out = san(hidden, mask, types)
    assert out.shape == (6, C)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(6))
    # softmax/log_softmax give back the averaged distribution, so log_softmax-based losses see it exactly.
    torch.testing.assert_close(F.log_softmax(out, dim=1), out)


def manual_step_probs(
    san: SANClassifier, hidden: torch.Tensor, premise: list[int], hyp: list[int]
) -> torch.Tensor:
    """The paper's recurrence for one example, written out from the parameters."""
    m_p, m_h = hidden[premise], hidden[hyp]
    w = san.hypothesis_attention.weight[0]
    alpha = torch.softmax(m_h @ w, dim=0)
    s = alpha @ m_h
    gru, bilinear, out = san.gru, san.premise_bilinear.weight, san.classifier
    probs = []
    for _ in range(san.config.num_steps):
        beta = torch.softmax(m_p @ (bilinear @ s), dim=0)
        x = beta @ m_p
        # GRUCell(x, s) by its equations: gates r, z, n.
        gi = gru.weight_ih @ x + gru.bias_ih
        gh = gru.weight_hh @ s + gru.bias_hh
        r = torch.sigmoid(gi[:H] + gh[:H])
        z = torch.sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
        n = torch.tanh(gi[2 * H :] + r * gh[2 * H :])
        s = (1 - z) * n + z * s
        logits = out.weight @ torch.cat([s, x, (s - x).abs(), s * x]) + out.bias
        probs.append(torch.softmax(logits, dim=0))
    return torch.stack(probs)


def test_eval_output_is_the_mean_over_all_steps_of_the_paper_recurrence() -> None:
    torch.manual_seed(0)
    san = SANClassifier(H, C, dropout_p=0.1, config=SANConfig(num_steps=4)).eval()
    # Larger weights than the init so the steps' predictions differ visibly.
    with torch.no_grad():
        for p in san.parameters():
            p.normal_(0.0, 0.5)
    hidden, mask, types = pair_batch(3)
    with torch.no_grad():
        steps = san.step_probs(hidden, mask, types)
        out = san(hidden, mask, types)
    assert steps.shape == (3, 4, C)
    for i in range(3):
        torch.testing.assert_close(steps[i], manual_step_probs(san, hidden[i], PREMISE, HYPOTHESIS))
    assert (steps[:, 0] - steps[:, -1]).abs().max() > 1e-3  # the steps really differ
    torch.testing.assert_close(out, steps.mean(dim=1).log())
    torch.testing.assert_close(san(hidden, mask, types), out, rtol=0, atol=0)  # deterministic


def test_cross_entropy_on_output_is_nll_of_the_averaged_distribution() -> None:
    torch.manual_seed(0)
    san = SANClassifier(H, C, dropout_p=0.1).eval()
    hidden, mask, types = pair_batch(5)
    labels = torch.tensor([0, 1, 2, 1, 0])
    out = san(hidden, mask, types)
    averaged = san.step_probs(hidden, mask, types).mean(dim=1)
    expected = -averaged[torch.arange(5), labels].log().mean()
    torch.testing.assert_close(F.cross_entropy(out, labels), expected)


def test_training_is_stochastic_finite_and_seeded() -> None:
    torch.manual_seed(0)
    san = SANClassifier(H, C, dropout_p=0.1, config=SANConfig(answer_dropout=0.5)).train()
    hidden, mask, types = pair_batch(16)
    torch.manual_seed(1)
    first = san(hidden, mask, types)
    second = san(hidden, mask, types)
    assert not torch.allclose(first, second)
    for out in (first, second):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(16))
    torch.manual_seed(1)
    torch.testing.assert_close(san(hidden, mask, types), first, rtol=0, atol=0)


def test_train_without_any_dropout_equals_eval() -> None:
    torch.manual_seed(0)
    san = quiet_san(answer_dropout=0.0)
    hidden, mask, types = pair_batch(4)
    torch.testing.assert_close(san.train()(hidden, mask, types), san.eval()(hidden, mask, types))


def test_prediction_dropout_keeps_at_least_one_step() -> None:
    # Dropping almost surely every step: each row must fall back to exactly one whole step.
    torch.manual_seed(0)
    san = quiet_san(num_steps=4, answer_dropout=0.999)
    with torch.no_grad():
        for p in san.parameters():
            p.normal_(0.0, 0.5)
    hidden, mask, types = pair_batch(32)
    with torch.no_grad():
        steps = san.eval().step_probs(hidden, mask, types)
        out = san.train()(hidden, mask, types).exp()
    distance = (out.unsqueeze(1) - steps).abs().amax(dim=2)  # [N, T]
    assert (distance.amin(dim=1) < 1e-6).all()
    chosen = distance.argmin(dim=1)
    assert len(set(chosen.tolist())) > 1  # the kept step is drawn, not always the same


def test_step_weights_keep_rate_matches_the_dropout_rate() -> None:
    torch.manual_seed(0)
    san = quiet_san(num_steps=5, answer_dropout=0.5).train()
    weights = san.step_weights(20_000, torch.device("cpu"))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(20_000))
    kept = weights > 0
    # Each step is kept with prob 0.5, plus the rescue of all-dropped rows: 0.5 + 0.5**5 / 5.
    assert kept.float().mean().item() == pytest.approx(0.5 + 0.5**5 / 5, abs=0.01)
    # Kept steps share the weight equally.
    torch.testing.assert_close(
        weights[kept], (1.0 / kept.sum(dim=1, keepdim=True).float()).expand_as(weights)[kept]
    )
    assert torch.equal(san.eval().step_weights(3, torch.device("cpu")), torch.full((3, 5), 0.2))


def test_padding_and_special_tokens_do_not_change_the_output() -> None:
    torch.manual_seed(0)
    san = SANClassifier(H, C, dropout_p=0.1).eval()
    hidden, mask, types = pair_batch(4)
    out = san(hidden, mask, types)
    changed = hidden.clone()
    changed[:, 7] = float("nan")  # padding, even non-finite
    changed[:, SPECIAL] = torch.randn(4, len(SPECIAL), H) * 10  # [CLS] and [SEP]s are not in the memories
    torch.testing.assert_close(san(changed, mask, types), out, rtol=0, atol=0)
    # More padding gives the same answer.
    longer = torch.cat([hidden, torch.randn(4, 5, H)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(4, 5, dtype=torch.long)], dim=1)
    longer_types = torch.cat([types, torch.zeros(4, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(san(longer, longer_mask, longer_types), out)
    # Both memories matter.
    for position in (PREMISE[0], HYPOTHESIS[0]):
        moved = hidden.clone()
        moved[:, position] += 3.0
        assert not torch.allclose(san(moved, mask, types), out)


def test_without_token_types_the_whole_sequence_is_both_memories() -> None:
    torch.manual_seed(0)
    san = SANClassifier(H, C, dropout_p=0.1).eval()
    hidden, mask, _ = pair_batch(3)
    out = san(hidden, mask, None)
    assert out.shape == (3, C) and torch.isfinite(out).all()
    torch.testing.assert_close(san(hidden, mask, torch.zeros_like(mask)), out)
    valid = [i for i, m in enumerate(PAIR_MASK) if m]
    steps = san.step_probs(hidden, mask, None)
    torch.testing.assert_close(steps[0], manual_step_probs(san, hidden[0], valid, valid))


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    san = SANClassifier(H, C, dropout_p=0.1).train()
    hidden, mask, types = pair_batch(8)
    hidden.requires_grad_(True)
    F.cross_entropy(san(hidden, mask, types), torch.arange(8) % C).backward()
    for name, param in san.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert hidden.grad[:, 7].abs().sum() == 0  # nothing flows to padding


def test_learns_a_signal_in_the_premise() -> None:
    torch.manual_seed(0)
    n, hidden_size = 64, 16
    san = SANClassifier(hidden_size, 2, dropout_p=0.1)
    hidden, mask, types = pair_batch(n, hidden_size)
    labels = torch.arange(n) % 2
    direction = F.normalize(torch.randn(hidden_size), dim=0)
    hidden[:, PREMISE] += (2.0 * labels.float() - 1.0).view(n, 1, 1) * 1.5 * direction

    def eval_loss() -> float:
        san.eval()
        with torch.no_grad():
            return F.cross_entropy(san(hidden, mask, types), labels).item()

    start = eval_loss()
    assert start == pytest.approx(math.log(2), abs=0.05)
    optimizer = torch.optim.Adam(san.parameters(), lr=1e-2)
    san.train()
    for _ in range(30):
        optimizer.zero_grad()
        F.cross_entropy(san(hidden, mask, types), labels).backward()
        optimizer.step()
    end = eval_loss()
    assert end < 0.15 * start
    san.eval()
    accuracy = (san(hidden, mask, types).argmax(dim=1) == labels).float().mean().item()
    assert accuracy > 0.95


def test_confident_outputs_stay_finite() -> None:
    torch.manual_seed(0)
    san = SANClassifier(H, 2, dropout_p=0.0).eval()
    with torch.no_grad():
        san.classifier.bias.copy_(torch.tensor([200.0, -200.0]))
    hidden, mask, types = pair_batch(2)
    out = san(hidden, mask, types)
    assert torch.isfinite(out).all()
    assert out[:, 1].min().item() == pytest.approx(math.log(PROB_FLOOR))


@pytest.mark.parametrize(
    "kwargs",
    [{"num_steps": 0}, {"answer_dropout": 1.0}, {"answer_dropout": -0.1}, {"memory_dropout": 1.5}],
)
def test_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="SANConfig"):
        SANConfig(**kwargs)


def test_rejects_fewer_than_two_classes() -> None:
    with pytest.raises(ValueError, match="2 classes"):
        SANClassifier(H, 1, dropout_p=0.1)
