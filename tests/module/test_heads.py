"""Heads: shapes, which inputs they read, candidate layout, initialisation (the kinds build them:
tests/mt_dnn/tasks)."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from module.heads import PooledHead, RankingHead, TokenLinear
from module.san import INIT_STD

os.environ.setdefault("HF_HUB_OFFLINE", "1")

H = 8


def inputs(n: int, length: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden = torch.randn(n, length, H)
    mask = torch.ones(n, length, dtype=torch.long)
    types = torch.zeros(n, length, dtype=torch.long)
    return hidden, mask, types


def test_pooled_head_shape_and_formula() -> None:
    torch.manual_seed(0)
    head = PooledHead(H, 3, dropout_p=0.1).eval()
    hidden, mask, types = inputs(4)
    out = head(hidden, mask, types)
    assert out.shape == (4, 3)
    expected = head.out_proj(torch.tanh(head.dense(hidden[:, 0])))
    torch.testing.assert_close(out, expected)


def test_pooled_head_reads_only_the_first_token() -> None:
    torch.manual_seed(0)
    head = PooledHead(H, 2, dropout_p=0.0).eval()
    hidden, mask, types = inputs(3)
    out = head(hidden, mask, types)
    other = hidden.clone()
    other[:, 1:] = torch.randn_like(other[:, 1:]) * 10
    torch.testing.assert_close(head(other, mask, types), out, rtol=0, atol=0)
    first = hidden.clone()
    first[:, 0] += 1.0
    assert not torch.allclose(head(first, mask, types), out)


def test_pooled_head_encoder_pooler_option_uses_pooled_output() -> None:
    torch.manual_seed(0)
    head = PooledHead(H, 2, dropout_p=0.0, use_encoder_pooler=True).eval()
    assert head.dense is None
    hidden, mask, types = inputs(3)
    pooled = torch.randn(3, H)
    out = head(hidden, mask, types, pooled)
    torch.testing.assert_close(out, pooled @ head.out_proj.weight.T + head.out_proj.bias)
    # The token states are not read at all.
    torch.testing.assert_close(head(torch.randn_like(hidden), mask, types, pooled), out, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pooled_output"):
        head(hidden, mask, types)


def test_dropout_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    head = PooledHead(H, 2, dropout_p=0.5)
    hidden, mask, types = inputs(16)
    assert not torch.allclose(head(hidden, mask, types), head(hidden, mask, types))
    head.eval()
    torch.testing.assert_close(head(hidden, mask, types), head(hidden, mask, types))


def test_linear_init_is_bert_style() -> None:
    torch.manual_seed(0)
    head = PooledHead(256, 64, dropout_p=0.1)
    for linear in (head.dense, head.out_proj):
        assert torch.count_nonzero(linear.bias) == 0
        assert abs(linear.weight.mean().item()) < 0.002
        assert linear.weight.std().item() == pytest.approx(INIT_STD, rel=0.05)


def test_ranking_head_shape_and_candidate_order() -> None:
    torch.manual_seed(0)
    batch, k = 2, 3
    head = RankingHead(H, dropout_p=0.0).eval()
    hidden, mask, types = inputs(batch * k)
    scores = head(hidden, mask, types, n_candidates=k)
    assert scores.shape == (batch, k)
    # Sequence i*K + j is candidate j of row i: scoring it alone gives scores[i, j].
    for i, j in itertools.product(range(batch), range(k)):
        seq = i * k + j
        alone = head.scorer(hidden[seq : seq + 1], mask[seq : seq + 1], types[seq : seq + 1])
        assert alone.item() == pytest.approx(scores[i, j].item(), abs=1e-6)
    # Changing only sequence 4 (row 1, candidate 1) changes only scores[1, 1].
    changed = hidden.clone()
    changed[4, 0] += 1.0
    diff = (head(changed, mask, types, n_candidates=k) - scores).abs() > 0
    assert diff.nonzero().tolist() == [[1, 1]]


def test_ranking_head_rejects_a_batch_that_does_not_split() -> None:
    head = RankingHead(H, dropout_p=0.0)
    hidden, mask, types = inputs(5)
    with pytest.raises(ValueError, match="rows of 2 candidates"):
        head(hidden, mask, types, n_candidates=2)


def test_ranking_head_with_encoder_pooler() -> None:
    torch.manual_seed(0)
    head = RankingHead(H, dropout_p=0.0, use_encoder_pooler=True).eval()
    hidden, mask, types = inputs(4)
    pooled = torch.randn(4, H)
    scores = head(hidden, mask, types, pooled, n_candidates=2)
    expected = (pooled @ head.scorer.out_proj.weight.T + head.scorer.out_proj.bias).view(2, 2)
    torch.testing.assert_close(scores, expected)


def test_token_linear_scores_every_token_by_one_linear_map() -> None:
    torch.manual_seed(0)
    head = TokenLinear(16, 3, dropout_p=0.5).eval()
    states = torch.randn(2, 5, 16)
    scores = head.score_tokens(states)
    assert scores.shape == (2, 5, 3)
    torch.testing.assert_close(scores, states @ head.out_proj.weight.T + head.out_proj.bias)
    torch.testing.assert_close(head.score_tokens(states[:, 2]), scores[:, 2])  # no mixing across tokens
    assert torch.all(head.out_proj.bias == 0) and abs(head.out_proj.weight.std().item() - INIT_STD) < 0.01
    head.train()
    assert not torch.equal(head.score_tokens(states), scores)  # dropout before the projection in training
