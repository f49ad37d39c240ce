"""Stochastic Answer Network (SAN) classifier over a shared encoder's contextual states.

Written from Liu et al. 2018, "Stochastic Answer Networks for Natural Language Inference" (arXiv 1804.07888):

* memories: the encoder's token states split into a premise memory ``M^p`` and a hypothesis memory ``M^h``
  (see :func:`memory_masks`);
* initial state ``s_0 = sum_j alpha_j M^h_j`` with ``alpha = softmax(w^T M^h)``;
* for ``t = 1..T``: ``x_t = sum_j beta_j M^p_j`` with ``beta = softmax(s_{t-1} W M^p)`` (bilinear),
  ``s_t = GRUCell(x_t, s_{t-1})`` and ``P_t = softmax(W_2 [s_t; x_t; |s_t - x_t|; s_t * x_t])``;
* stochastic prediction dropout: in training each example keeps each step with probability
  ``1 - answer_dropout`` (at least one step is always kept) and averages the kept ``P_t``; at inference
  all ``T`` steps are averaged.

The classifier returns the LOG of the averaged distribution (clamped at ``PROB_FLOOR``), not raw logits.
``softmax(log p) == p`` because ``p`` sums to one, so any loss that applies ``log_softmax`` (cross-entropy,
the KL family) sees exactly the averaged distribution: cross-entropy on the output is the NLL of the average.

All randomness uses torch's global RNG (no private ``Generator``), so ``torch.manual_seed`` reproduces runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "INIT_STD",
    "PROB_FLOOR",
    "SANClassifier",
    "SANConfig",
    "init_linear_weights",
    "memory_masks",
]

INIT_STD = 0.02
# Floor on the averaged probabilities before the log: keeps the output finite when a class gets ~0 mass.
PROB_FLOOR = 1e-12


def init_linear_weights(module: nn.Module) -> None:
    """BERT-style initialisation, shared by every head: ``nn.Linear`` weights ~ N(0, 0.02^2), biases zero.

    Use with ``model.apply(init_linear_weights)``; other modules (e.g. ``nn.GRUCell``) keep torch's defaults.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class SANConfig:
    """SAN hyper-parameters. ``answer_dropout`` is the probability of dropping a step's prediction."""

    num_steps: int = 5
    answer_dropout: float = 0.1
    memory_dropout: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"SANConfig.num_steps must be a positive integer, got {self.num_steps!r}")
        for name in ("answer_dropout", "memory_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"SANConfig.{name} must be in [0, 1), got {value!r}")


def _trim_special(segment: Tensor, drop_first: bool) -> Tensor:
    """Drop a segment's last token ([SEP]) and optionally its first ([CLS]), unless that empties it."""
    length = segment.size(1)
    positions = torch.arange(length, device=segment.device)
    last = torch.where(segment, positions, -1).amax(dim=1, keepdim=True)
    content = segment & (positions != last)
    if drop_first:
        first = torch.where(segment, positions, length).amin(dim=1, keepdim=True)
        content = content & (positions != first)
    return torch.where(content.any(dim=1, keepdim=True), content, segment)


def memory_masks(attention_mask: Tensor, token_type_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    """Boolean ``[N, L]`` masks of the premise and hypothesis memories.

    A pair is laid out BERT-style, ``[CLS] premise [SEP] hypothesis [SEP]`` with token types 0 then 1:
    the premise memory is the type-0 tokens without the segment's first and last token ([CLS], [SEP]), the
    hypothesis memory the type-1 tokens without the last ([SEP]); a segment that would become empty keeps
    its special tokens. A row with no type-1 token (``token_type_ids`` None or all zero: RoBERTa/MPNet-style
    encoders, single-sentence tasks) uses its whole unpadded sequence as both memories, as does any row
    whose premise memory would be empty. Padding (``attention_mask == 0``) is never in a memory.
    """
    valid = attention_mask.bool()
    if token_type_ids is None:
        return valid, valid
    premise = _trim_special(valid & (token_type_ids == 0), drop_first=True)
    hypothesis = _trim_special(valid & (token_type_ids == 1), drop_first=False)
    paired = hypothesis.any(dim=1, keepdim=True) & premise.any(dim=1, keepdim=True)
    return torch.where(paired, premise, valid), torch.where(paired, hypothesis, valid)


def _masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim where ``mask`` is True; masked entries get exactly zero weight."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)


class SANClassifier(nn.Module):
    """SAN answer module: ``forward`` returns ``[N, n_class]`` log-probabilities (see the module docstring).

    ``dropout_p`` is applied to the step features before the classifier ``W_2``; ``config.memory_dropout``
    to the memories. ``pooled_output`` is accepted for the common head interface and ignored.
    """

    def __init__(self, hidden_size: int, n_class: int, dropout_p: float, config: SANConfig | None = None):
        super().__init__()
        if n_class < 2:
            raise ValueError(f"a SAN classifier needs at least 2 classes, got {n_class}")
        self.config = config if config is not None else SANConfig()
        self.hidden_size = hidden_size
        self.n_class = n_class
        self.memory_dropout = nn.Dropout(self.config.memory_dropout)
        self.feature_dropout = nn.Dropout(dropout_p)
        self.hypothesis_attention = nn.Linear(hidden_size, 1, bias=False)  # w in alpha = softmax(w^T M^h)
        self.premise_bilinear = nn.Linear(hidden_size, hidden_size, bias=False)  # W in s W M^p
        self.gru = nn.GRUCell(hidden_size, hidden_size)
        self.classifier = nn.Linear(4 * hidden_size, n_class)  # W_2
        self.apply(init_linear_weights)

    def step_probs(
        self, hidden_states: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None
    ) -> Tensor:
        """Per-step class distributions ``P_1..P_T`` as a float32 ``[N, T, n_class]`` tensor."""
        premise_mask, hypothesis_mask = memory_masks(attention_mask, token_type_ids)
        # Zero the padding so nothing there (even a non-finite value) can reach the output.
        memory = hidden_states.masked_fill(~attention_mask.bool().unsqueeze(-1), 0.0)
        memory = self.memory_dropout(memory)

        alpha = _masked_softmax(self.hypothesis_attention(memory).squeeze(-1), hypothesis_mask)
        state = torch.bmm(alpha.unsqueeze(1), memory).squeeze(1)  # s_0: [N, H]
        steps = []
        for _ in range(self.config.num_steps):
            scores = torch.bmm(memory, self.premise_bilinear(state).unsqueeze(-1)).squeeze(-1)  # [N, L]
            beta = _masked_softmax(scores, premise_mask)
            x = torch.bmm(beta.unsqueeze(1), memory).squeeze(1)  # x_t: [N, H]
            state = self.gru(x, state)  # s_t
            features = torch.cat([state, x, (state - x).abs(), state * x], dim=-1)
            logits = self.classifier(self.feature_dropout(features))
            steps.append(torch.softmax(logits.float(), dim=-1))
        return torch.stack(steps, dim=1)

    def step_weights(self, batch_size: int, device: torch.device) -> Tensor:
        """Weights ``[N, T]`` for averaging the steps: uniform in eval, prediction dropout in training."""
        num_steps = self.config.num_steps
        if not self.training or self.config.answer_dropout == 0.0:
            return torch.full((batch_size, num_steps), 1.0 / num_steps, device=device)
        keep = torch.rand(batch_size, num_steps, device=device) >= self.config.answer_dropout
        # A row that dropped every step keeps one uniformly chosen step (no host sync: computed for all rows).
        rescue = F.one_hot(torch.randint(num_steps, (batch_size,), device=device), num_steps).bool()
        keep = keep | (rescue & ~keep.any(dim=1, keepdim=True))
        keep = keep.float()
        return keep / keep.sum(dim=1, keepdim=True)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None,
        pooled_output: Tensor | None = None,
    ) -> Tensor:
        probs = self.step_probs(hidden_states, attention_mask, token_type_ids)
        weights = self.step_weights(probs.size(0), probs.device)
        averaged = (probs * weights.unsqueeze(-1)).sum(dim=1)
        return averaged.clamp_min(PROB_FLOOR).log()
