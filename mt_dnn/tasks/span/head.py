"""The span head, its task loss and its adversarial divergence.

The head scores every token as the answer's start and as its end: ``[N, L, H] -> [N, 2, L]`` (row 0 the
start logits, row 1 the end logits; positions on the last axis, the axis ``module.losses`` sums its
divergences over). Positions outside ``span_mask`` (question, special and padding tokens; position 0, the
no-answer slot, stays in) get the dtype's most negative value, so they take no probability mass.

The loss is the mean of the start and end cross-entropies; a window without the answer targets position 0
(SQuAD v2). The divergence compares the start distributions and the end distributions of two outputs over
the real positions and averages the two (the task's ``adv_loss``, symmetric KL by default, from
``module.losses``: fp32, log-space, exact under autocast).
"""

from __future__ import annotations

import torch
from torch import Tensor

from data_utils.enums import LossName
from module.heads import TokenLinear
from module.losses import cross_entropy, divergence

__all__ = ["SpanHead", "span_divergence", "span_loss"]


class SpanHead(TokenLinear):
    """Token vectors -> dropout -> Linear(H, 2) -> start and end logits ``[N, 2, L]``, masked to the span
    positions."""

    def __init__(self, hidden_size: int, dropout_p: float) -> None:
        super().__init__(hidden_size, 2, dropout_p)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None,
        pooled_output: Tensor | None = None,
        *,
        span_mask: Tensor,
    ) -> Tensor:
        if span_mask.shape != hidden_states.shape[:2] or span_mask.dtype != torch.bool:
            raise ValueError(
                f"span_mask must be bool {tuple(hidden_states.shape[:2])}, "
                f"got {span_mask.dtype} {tuple(span_mask.shape)}"
            )
        logits = self.score_tokens(hidden_states).transpose(1, 2)  # [N, 2, L]
        allowed = span_mask & attention_mask.bool()
        return logits.masked_fill(~allowed[:, None, :], torch.finfo(logits.dtype).min)


def span_loss(logits: Tensor, positions: Tensor) -> Tensor:
    """Mean of the start and end cross-entropies: ``logits [N, 2, L]``, ``positions [N, 2]`` (start, end;
    0 = no answer in this window)."""
    if logits.dim() != 3 or logits.shape[1] != 2 or positions.shape != logits.shape[:2]:
        raise ValueError(
            f"span_loss: expected logits [N, 2, L] and positions [N, 2], "
            f"got {tuple(logits.shape)} and {tuple(positions.shape)}"
        )
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), positions.reshape(-1))


def span_divergence(
    outputs: Tensor, target: Tensor, span_mask: Tensor, name: LossName | str = LossName.SYM_KL
) -> Tensor:
    """The divergence ``name`` of the start and of the end distributions over the span positions
    (``span_mask [N, L]``), averaged over the two and over the rows."""
    if outputs.dim() != 3 or outputs.shape[1] != 2:
        raise ValueError(f"span_divergence: expected outputs [N, 2, L], got {tuple(outputs.shape)}")
    mask = span_mask.bool()[:, None, :].expand_as(outputs)
    return divergence(name, outputs, target, mask=mask)
