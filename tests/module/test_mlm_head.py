"""The masked-LM head: tied decoder, logits only at the masked positions, BERT's transform."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from module.heads import MaskedLMHead


def _setup(vocab: int = 11, hidden: int = 6):
    torch.manual_seed(0)
    embedding = nn.Embedding(vocab, hidden)
    head = MaskedLMHead(hidden, vocab)
    with torch.no_grad():
        head.bias.normal_()
    states = torch.randn(2, 5, hidden)
    positions = torch.tensor([[False, True, False, True, False], [False, False, True, False, False]])
    return embedding, head, states, positions


def test_the_head_owns_no_vocabulary_matrix() -> None:
    _, head, _, _ = _setup()
    assert isinstance(head, MaskedLMHead)
    shapes = {name: tuple(p.shape) for name, p in head.named_parameters()}
    assert shapes == {
        "transform.dense.weight": (6, 6),
        "transform.dense.bias": (6,),
        "transform.LayerNorm.weight": (6,),
        "transform.LayerNorm.bias": (6,),
        "bias": (11,),
    }


def test_logits_only_at_masked_positions_equal_the_formula() -> None:
    embedding, head, states, positions = _setup()
    head.eval()
    logits = head(states, positions.long(), None, positions=positions, decoder_weight=embedding.weight)
    assert logits.shape == (3, 11)  # M = 3 masked tokens, not [2, 5, 11]
    selected = states[positions]  # row-major: (0, 1), (0, 3), (1, 2)
    dense = head.transform.dense
    hidden = F.layer_norm(F.gelu(selected @ dense.weight.T + dense.bias), (6,), eps=1e-12)
    expected = hidden @ embedding.weight.T + head.bias
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


def test_the_gradient_reaches_the_tied_embedding() -> None:
    embedding, head, states, positions = _setup()
    logits = head(states, positions.long(), None, positions=positions, decoder_weight=embedding.weight)
    F.cross_entropy(logits, torch.tensor([1, 2, 3])).backward()
    assert embedding.weight.grad is not None and embedding.weight.grad.abs().sum() > 0
    assert head.bias.grad is not None


def test_wrong_positions_or_decoder_are_refused() -> None:
    embedding, head, states, positions = _setup()
    with pytest.raises(ValueError, match="bool mask"):
        head(states, positions.long(), None, positions=positions.long(), decoder_weight=embedding.weight)
    with pytest.raises(ValueError, match="decoder_weight"):
        head(states, positions.long(), None, positions=positions, decoder_weight=embedding.weight[:5])
