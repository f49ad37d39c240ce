"""Per-task heads on top of a shared encoder (each task kind in ``mt_dnn.tasks`` builds its own).

Every head is called as ``head(hidden_states [N, L, H], attention_mask [N, L], token_type_ids [N, L] | None,
pooled_output [N, H] | None = None)``; :class:`RankingHead` also takes ``n_candidates=K`` (keyword).
Outputs, by task type and head:

* classification, linear: ``[N, n_class]`` logits (:class:`PooledHead`);
* classification, SAN: ``[N, n_class]`` log-probabilities (:class:`~module.san.SANClassifier`; a loss that
  applies ``log_softmax`` treats them exactly like logits);
* regression: ``[N, 1]`` (:class:`PooledHead` with ``n_out=1``; the caller squeezes);
* ranking: ``[B, K]`` scores, one per candidate (:class:`RankingHead`);
* mask_lm: ``[M, V]`` vocabulary logits at the ``M`` masked positions only (:class:`MaskedLMHead`; it also
  takes ``positions`` [N, L] bool and the tied ``decoder_weight`` [V, H], both keywords).

:class:`TokenLinear` is the per-token tail the token-level kinds build their heads on (sequence labeling's
tags, span's start and end scores).

Linear layers are initialised BERT-style (weights ~ N(0, 0.02^2), biases zero: :func:`init_linear_weights`).
Heads know nothing about the encoder or about MT-DNN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from module.san import SANClassifier, SANConfig, init_linear_weights

__all__ = [
    "MaskedLMHead",
    "PooledHead",
    "RankingHead",
    "SANClassifier",
    "SANConfig",
    "TokenLinear",
    "check_positions",
    "init_linear_weights",
]


class PooledHead(nn.Module):
    """First-token classifier/regressor: ``[N, L, H] -> [N, n_out]``.

    Default: first-token vector -> dropout -> Linear(H, H) -> tanh -> dropout -> Linear(H, n_out), i.e. the
    head owns its pooler. ``use_encoder_pooler=True`` instead takes the encoder's ``pooled_output`` (already
    dense + tanh, e.g. BERT's pooler) -> dropout -> Linear(H, n_out); it is then an error to omit it.
    """

    def __init__(self, hidden_size: int, n_out: int, dropout_p: float, use_encoder_pooler: bool = False):
        super().__init__()
        if n_out < 1:
            raise ValueError(f"a head needs at least one output, got n_out={n_out}")
        self.n_out = n_out
        self.use_encoder_pooler = use_encoder_pooler
        self.dropout = nn.Dropout(dropout_p)
        self.dense = None if use_encoder_pooler else nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, n_out)
        self.apply(init_linear_weights)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None,
        pooled_output: Tensor | None = None,
    ) -> Tensor:
        if self.dense is None:
            if pooled_output is None:
                raise ValueError("this head uses the encoder's pooler, but no pooled_output was given")
            pooled = pooled_output
        else:
            pooled = self.dense(self.dropout(hidden_states[:, 0])).tanh()
        return self.out_proj(self.dropout(pooled))


class TokenLinear(nn.Module):
    """Per-token dropout -> Linear(H, n_out): ``[..., H] -> [..., n_out]``, for heads that score every token
    (or some of them) rather than a pooled vector."""

    def __init__(self, hidden_size: int, n_out: int, dropout_p: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout_p)
        self.out_proj = nn.Linear(hidden_size, n_out)
        self.apply(init_linear_weights)

    def score_tokens(self, token_states: Tensor) -> Tensor:
        return self.out_proj(self.dropout(token_states))


class RankingHead(nn.Module):
    """Scores K candidates per row: ``[B*K, L, H] -> [B, K]``.

    The N = B*K sequences are row-major: sequence ``i*K + j`` is candidate ``j`` of row ``i``, and its
    score lands at ``[i, j]``. Each sequence is scored by a :class:`PooledHead` with one output.
    """

    def __init__(self, hidden_size: int, dropout_p: float, use_encoder_pooler: bool = False):
        super().__init__()
        self.scorer = PooledHead(hidden_size, 1, dropout_p, use_encoder_pooler=use_encoder_pooler)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None,
        pooled_output: Tensor | None = None,
        *,
        n_candidates: int,
    ) -> Tensor:
        n_seq = hidden_states.size(0)
        if n_candidates < 1 or n_seq % n_candidates:
            raise ValueError(f"{n_seq} sequences cannot be split into rows of {n_candidates} candidates")
        scores = self.scorer(hidden_states, attention_mask, token_type_ids, pooled_output)
        return scores.view(n_seq // n_candidates, n_candidates)


def check_positions(positions: Tensor, hidden_states: Tensor) -> None:
    """``positions`` must be a bool mask over the ``[N, L]`` tokens of ``hidden_states`` (``[N, L, H]``)."""
    if positions.dtype != torch.bool or positions.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"positions must be a bool mask shaped {tuple(hidden_states.shape[:2])}, "
            f"got {positions.dtype} {tuple(positions.shape)}"
        )


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head with the decoder tied to the encoder's input word embeddings.

    transform (Linear(H, H) -> GELU -> LayerNorm) -> ``hidden @ decoder_weight.T + bias``, computed only at
    the masked positions: ``[M, V]``, never ``[N, L, V]``. The head owns no ``[V, H]`` matrix: the caller
    passes the word-embedding weight as ``decoder_weight`` (tying), so gradients reach the embeddings and
    the checkpoint stores the matrix once. Parameter names follow BERT's ``cls.predictions``
    (``transform.dense``, ``transform.LayerNorm``, ``bias``), so pretrained weights map one to one.
    """

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"a masked-LM head needs a vocabulary, got vocab_size={vocab_size}")
        self.vocab_size = vocab_size
        self.transform = nn.Sequential()
        self.transform.add_module("dense", nn.Linear(hidden_size, hidden_size))
        self.transform.add_module("act", nn.GELU())
        self.transform.add_module("LayerNorm", nn.LayerNorm(hidden_size, eps=layer_norm_eps))
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.apply(init_linear_weights)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None,
        pooled_output: Tensor | None = None,
        *,
        positions: Tensor,
        decoder_weight: Tensor,
    ) -> Tensor:
        check_positions(positions, hidden_states)
        if decoder_weight.shape != (self.vocab_size, hidden_states.shape[-1]):
            raise ValueError(
                f"decoder_weight must be [{self.vocab_size}, {hidden_states.shape[-1]}], "
                f"got {tuple(decoder_weight.shape)}"
            )
        selected = self.transform(hidden_states[positions])
        return F.linear(selected, decoder_weight, self.bias)
