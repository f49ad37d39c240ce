"""Per-task heads on top of a shared encoder, and the one registry that builds them.

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

Linear layers are initialised BERT-style (weights ~ N(0, 0.02^2), biases zero: :func:`init_linear_weights`).
Heads know nothing about the encoder or about MT-DNN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_utils.enums import HeadType, TaskType
from module.san import SANClassifier, SANConfig, init_linear_weights

__all__ = [
    "HEAD_BUILDERS",
    "MaskedLMHead",
    "PooledHead",
    "RankingHead",
    "SANClassifier",
    "SANConfig",
    "build_head",
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
        if positions.dtype != torch.bool or positions.shape != hidden_states.shape[:2]:
            raise ValueError(
                f"positions must be a bool mask shaped {tuple(hidden_states.shape[:2])}, "
                f"got {positions.dtype} {tuple(positions.shape)}"
            )
        if decoder_weight.shape != (self.vocab_size, hidden_states.shape[-1]):
            raise ValueError(
                f"decoder_weight must be [{self.vocab_size}, {hidden_states.shape[-1]}], "
                f"got {tuple(decoder_weight.shape)}"
            )
        selected = self.transform(hidden_states[positions])
        return F.linear(selected, decoder_weight, self.bias)


HeadBuilder = Callable[[int, int, float, bool, SANConfig | None], nn.Module]


def _check_single_output(task_type: TaskType, n_class: int) -> None:
    if n_class != 1:
        raise ValueError(f"a {task_type} head has one output per sequence, got n_class={n_class}")


def _classification_linear(
    hidden_size: int, n_class: int, dropout_p: float, use_encoder_pooler: bool, san_config: SANConfig | None
) -> nn.Module:
    return PooledHead(hidden_size, n_class, dropout_p, use_encoder_pooler=use_encoder_pooler)


def _classification_san(
    hidden_size: int, n_class: int, dropout_p: float, use_encoder_pooler: bool, san_config: SANConfig | None
) -> nn.Module:
    return SANClassifier(hidden_size, n_class, dropout_p, san_config)


def _regression_linear(
    hidden_size: int, n_class: int, dropout_p: float, use_encoder_pooler: bool, san_config: SANConfig | None
) -> nn.Module:
    _check_single_output(TaskType.REGRESSION, n_class)
    return PooledHead(hidden_size, 1, dropout_p, use_encoder_pooler=use_encoder_pooler)


def _ranking_linear(
    hidden_size: int, n_class: int, dropout_p: float, use_encoder_pooler: bool, san_config: SANConfig | None
) -> nn.Module:
    _check_single_output(TaskType.RANKING, n_class)
    return RankingHead(hidden_size, dropout_p, use_encoder_pooler=use_encoder_pooler)


def _mask_lm(
    hidden_size: int, n_class: int, dropout_p: float, use_encoder_pooler: bool, san_config: SANConfig | None
) -> nn.Module:
    return MaskedLMHead(hidden_size, n_class)


# The one registry of heads: every supported (task type, head type) pair, declared once.
HEAD_BUILDERS: dict[tuple[TaskType, HeadType], HeadBuilder] = {
    (TaskType.CLASSIFICATION, HeadType.LINEAR): _classification_linear,
    (TaskType.CLASSIFICATION, HeadType.SAN): _classification_san,
    (TaskType.REGRESSION, HeadType.LINEAR): _regression_linear,
    (TaskType.RANKING, HeadType.LINEAR): _ranking_linear,
    # n_class: the vocabulary size (the model passes its word embeddings' row count).
    (TaskType.MASK_LM, HeadType.LINEAR): _mask_lm,
}


def build_head(
    task_type: TaskType,
    head_type: HeadType,
    hidden_size: int,
    n_class: int,
    dropout_p: float,
    use_encoder_pooler: bool = False,
    san_config: SANConfig | None = None,
) -> nn.Module:
    """Build the head for one task. ``n_class`` must be 1 for regression and ranking, the vocabulary size
    for mask_lm.

    ``san_config`` is used by SAN heads only (``None``: :class:`SANConfig` defaults) and ignored otherwise;
    ``use_encoder_pooler`` applies to the linear heads (a SAN reads the token states, not the pooler).
    Raises ``ValueError`` for an unsupported pair (SAN serves classification only).
    """
    builder = HEAD_BUILDERS.get((TaskType(task_type), HeadType(head_type)))
    if builder is None:
        raise ValueError(
            f"no {head_type} head for {task_type} tasks (the SAN head serves classification only)"
        )
    return builder(hidden_size, n_class, dropout_p, use_encoder_pooler, san_config)
