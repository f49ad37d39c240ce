"""Heads: shapes, which inputs they read, candidate layout, initialisation, and the registry."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from data_utils.enums import HeadType, TaskType
from module.heads import HEAD_BUILDERS, MaskedLMHead, PooledHead, RankingHead, build_head
from module.san import INIT_STD, SANClassifier, SANConfig

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


EXPECTED = {
    (TaskType.CLASSIFICATION, HeadType.LINEAR): (PooledHead, 3, (4, 3)),
    (TaskType.CLASSIFICATION, HeadType.SAN): (SANClassifier, 3, (4, 3)),
    (TaskType.REGRESSION, HeadType.LINEAR): (PooledHead, 1, (4, 1)),
    (TaskType.RANKING, HeadType.LINEAR): (RankingHead, 1, (2, 2)),
    # n_class: the vocabulary; two masked positions in each of the 4 rows -> [8, 13] logits
    (TaskType.MASK_LM, HeadType.LINEAR): (MaskedLMHead, 13, (8, 13)),
}


@pytest.mark.parametrize("pair", list(itertools.product(TaskType, HeadType)), ids=str)
def test_registry_covers_every_pair(pair: tuple[TaskType, HeadType]) -> None:
    task_type, head_type = pair
    if head_type is HeadType.SAN and task_type is not TaskType.CLASSIFICATION:
        assert pair not in HEAD_BUILDERS
        with pytest.raises(ValueError, match="SAN head serves classification only"):
            build_head(task_type, head_type, H, 1, 0.1)
        return
    cls, n_class, shape = EXPECTED[pair]
    head = build_head(task_type, head_type, H, n_class, 0.1, san_config=SANConfig(num_steps=2))
    assert type(head) is cls
    hidden, mask, types = inputs(4)
    extra: dict = {"n_candidates": 2} if task_type is TaskType.RANKING else {}
    if task_type is TaskType.MASK_LM:
        positions = torch.zeros(4, 5, dtype=torch.bool)
        positions[:, 1:3] = True
        extra = {"positions": positions, "decoder_weight": torch.randn(n_class, H)}
    assert head.eval()(hidden, mask, types, **extra).shape == shape


def test_registry_has_exactly_the_supported_pairs() -> None:
    assert set(HEAD_BUILDERS) == set(EXPECTED)


def test_build_head_accepts_spelled_values_and_passes_options() -> None:
    head = build_head("classification", "san", H, 2, 0.1, san_config=SANConfig(num_steps=7))
    assert isinstance(head, SANClassifier) and head.config.num_steps == 7
    pooled = build_head(TaskType.REGRESSION, HeadType.LINEAR, H, 1, 0.1, use_encoder_pooler=True)
    assert isinstance(pooled, PooledHead) and pooled.dense is None
    ranking = build_head(TaskType.RANKING, HeadType.LINEAR, H, 1, 0.1, use_encoder_pooler=True)
    assert isinstance(ranking, RankingHead) and ranking.scorer.dense is None


@pytest.mark.parametrize("task_type", [TaskType.REGRESSION, TaskType.RANKING])
def test_single_output_heads_reject_n_class_above_one(task_type: TaskType) -> None:
    with pytest.raises(ValueError, match="n_class=3"):
        build_head(task_type, HeadType.LINEAR, H, 3, 0.1)
