"""Loss registry: every entry against hand-worked values, plus the numerical properties the trainer and the
adversarial code rely on (symmetry, non-negativity, fp32 under autocast, confident logits, masks)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from data_utils.enums import LossName
from module.losses import LOSSES, LossKind, LossSpec, divergence, get_loss, kl, sym_kl, task_loss

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LN = math.log
DIVERGENCES = [name for name, spec in LOSSES.items() if LossKind.DIVERGENCE in spec.kinds]
PROB_DIVERGENCES = [LossName.KL, LossName.SYM_KL, LossName.JS]


def t(*rows: list[float]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# Two 2-class distributions used throughout:
#   p = softmax([0, ln 3]) = [1/4, 3/4]   (the "target")
#   q = softmax([0, 0])    = [1/2, 1/2]   (the "outputs")
P_LOGITS = t([0.0, LN(3)])
Q_LOGITS = t([0.0, 0.0])
# KL(p || q) = 1/4 ln((1/4)/(1/2)) + 3/4 ln((3/4)/(1/2)) = 1/4 ln(1/2) + 3/4 ln(3/2)
KL_PQ = 0.25 * LN(0.5) + 0.75 * LN(1.5)
# KL(q || p) = 1/2 ln((1/2)/(1/4)) + 1/2 ln((1/2)/(3/4)) = 1/2 ln 2 + 1/2 ln(2/3)
KL_QP = 0.5 * LN(2) + 0.5 * LN(2 / 3)
# m = (p + q) / 2 = [3/8, 5/8]
# KL(p || m) = 1/4 ln((1/4)/(3/8)) + 3/4 ln((3/4)/(5/8)) = 1/4 ln(2/3) + 3/4 ln(6/5)
# KL(q || m) = 1/2 ln((1/2)/(3/8)) + 1/2 ln((1/2)/(5/8)) = 1/2 ln(4/3) + 1/2 ln(4/5)
JS_PQ = 0.5 * (0.25 * LN(2 / 3) + 0.75 * LN(6 / 5)) + 0.5 * (0.5 * LN(4 / 3) + 0.5 * LN(4 / 5))


def _cross_entropy() -> tuple[Tensor, float]:
    # row 0: softmax([0, ln 3]) = [1/4, 3/4], label 1 -> -ln(3/4)
    # row 1: softmax([0, 0]) = [1/2, 1/2], label 0 -> ln 2
    value = task_loss("cross_entropy", t([0.0, LN(3)], [0.0, 0.0]), torch.tensor([1, 0]))
    return value, (-LN(3 / 4) + LN(2)) / 2


def _mse() -> tuple[Tensor, float]:
    # predictions [1, 2, 3] vs labels [1, 0, 0]: (0 + 4 + 9) / 3 = 13/3
    return task_loss(LossName.MSE, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 0.0])), 13 / 3


def _rank_cross_entropy() -> tuple[Tensor, float]:
    # candidates [0, ln 3, <padded 5.0>], right one = 1: softmax over the real two = [1/4, 3/4] -> -ln(3/4)
    scores = t([0.0, LN(3), 5.0])
    mask = torch.tensor([[True, True, False]])
    return task_loss(LossName.RANK_CROSS_ENTROPY, scores, torch.tensor([1]), mask=mask), -LN(3 / 4)


def _kl() -> tuple[Tensor, float]:
    # kl(outputs=q, target=p) = KL(p || q); a second identical pair (KL 0) halves the batch mean.
    outputs = torch.cat([Q_LOGITS, Q_LOGITS])
    target = torch.cat([P_LOGITS, Q_LOGITS])
    return divergence(LossName.KL, outputs, target), KL_PQ / 2


def _sym_kl() -> tuple[Tensor, float]:
    return divergence(LossName.SYM_KL, Q_LOGITS, P_LOGITS), KL_PQ + KL_QP


def _js() -> tuple[Tensor, float]:
    return divergence(LossName.JS, Q_LOGITS, P_LOGITS), JS_PQ


HAND_CASES: dict[LossName, Callable[[], tuple[Tensor, float]]] = {
    LossName.CROSS_ENTROPY: _cross_entropy,
    LossName.MSE: _mse,
    LossName.RANK_CROSS_ENTROPY: _rank_cross_entropy,
    LossName.KL: _kl,
    LossName.SYM_KL: _sym_kl,
    LossName.JS: _js,
}


def test_every_registry_entry_has_a_hand_computed_case() -> None:
    assert set(HAND_CASES) == set(LossName) == set(LOSSES)


@pytest.mark.parametrize("name", list(HAND_CASES))
def test_hand_computed_value(name: LossName) -> None:
    value, expected = HAND_CASES[name]()
    assert value.shape == () and value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_registry_shape() -> None:
    for name, spec in LOSSES.items():
        assert isinstance(spec, LossSpec) and spec.name is name and spec.doc
    kinds = {name: spec.kinds for name, spec in LOSSES.items()}
    assert kinds == {
        LossName.CROSS_ENTROPY: {LossKind.TASK},
        LossName.MSE: {LossKind.TASK, LossKind.DIVERGENCE},
        LossName.RANK_CROSS_ENTROPY: {LossKind.TASK},
        LossName.KL: {LossKind.DIVERGENCE},
        LossName.SYM_KL: {LossKind.DIVERGENCE},
        LossName.JS: {LossKind.DIVERGENCE},
    }
    assert set(DIVERGENCES) == {LossName.MSE, *PROB_DIVERGENCES}


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("CeCriterion", LossName.CROSS_ENTROPY),
        ("MseCriterion", LossName.MSE),
        ("RankCeCriterion", LossName.RANK_CROSS_ENTROPY),
        ("KlCriterion", LossName.KL),
        ("SymKlCriterion", LossName.SYM_KL),
        ("JSCriterion", LossName.JS),
        ("sym_kl", LossName.SYM_KL),
        ("SymKl", LossName.SYM_KL),
        (LossName.JS, LossName.JS),
    ],
)
def test_mt_dnn_and_our_names_resolve(spelling: str, expected: LossName) -> None:
    assert get_loss(spelling) is LOSSES[expected]


def test_unknown_name_lists_accepted_values() -> None:
    with pytest.raises(ValueError, match="sym_kl"):
        get_loss("StableKlCriterion")


def test_kind_mismatch_raises() -> None:
    logits = torch.randn(3, 2)
    with pytest.raises(ValueError, match="not a divergence"):
        divergence("CeCriterion", logits, logits)
    with pytest.raises(ValueError, match="not a task loss"):
        task_loss(LossName.SYM_KL, logits, torch.tensor([0, 1, 0]))
    # mse is both kinds
    assert task_loss("mse", torch.zeros(3), torch.ones(3)).item() == 1.0
    assert divergence("mse", torch.zeros(3, 1), torch.ones(3, 1)).item() == 1.0


def test_bad_inputs_raise() -> None:
    logits = torch.randn(2, 3)
    with pytest.raises(ValueError, match="bool"):
        divergence(LossName.KL, logits, logits, mask=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mask shape"):
        divergence(LossName.KL, logits, logits, mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="differ"):
        divergence(LossName.SYM_KL, logits, logits[:, :2])
    with pytest.raises(ValueError, match="takes no mask"):
        task_loss(
            LossName.CROSS_ENTROPY, logits, torch.tensor([0, 1]), mask=torch.ones(2, 3, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="do not match"):
        task_loss(LossName.MSE, torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"labels \[B\]"):
        task_loss(LossName.CROSS_ENTROPY, logits, torch.tensor([[0], [1]]))


# ---------------------------------------------------------------- mse shapes


def test_mse_column_predictions_do_not_broadcast() -> None:
    preds = torch.tensor([[1.0], [2.0], [3.0]])  # [B, 1], as a regression head emits
    labels = torch.tensor([1.0, 0.0, 0.0])  # [B]
    # elementwise: (0 + 4 + 9) / 3 = 13/3.  The [B, B] broadcast would give
    # (0+1+1 + 1+4+4 + 4+9+9) / 9 = 33/9 = 11/3.
    value = task_loss(LossName.MSE, preds, labels)
    assert value.item() == pytest.approx(13 / 3)
    assert ((preds - labels) ** 2).mean().item() == pytest.approx(11 / 3)  # what the broadcast bug gives
    assert divergence(LossName.MSE, preds, labels.unsqueeze(1)).item() == pytest.approx(13 / 3)


def test_mse_mask_averages_kept_entries_only() -> None:
    outputs = torch.tensor([[1.0, 5.0], [2.0, 7.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 100.0]])
    mask = torch.tensor([[True, True], [True, False]])
    # kept squared errors: 1, 25, 4 -> 30 / 3 = 10
    assert divergence(LossName.MSE, outputs, target, mask=mask).item() == pytest.approx(10.0)


# ---------------------------------------------------------------- divergence properties


def test_kl_direction_matches_torch_kl_div() -> None:
    torch.manual_seed(0)
    outputs, target = torch.randn(6, 5), torch.randn(6, 5)
    expected = F.kl_div(
        F.log_softmax(outputs, -1), F.log_softmax(target, -1), log_target=True, reduction="batchmean"
    )
    assert kl(outputs, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_sym_kl_is_sum_of_both_kls_and_exactly_symmetric() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(8, 4) * 3, torch.randn(8, 4) * 3
    sym = divergence(LossName.SYM_KL, a, b)
    assert sym.item() == pytest.approx((kl(a, b) + kl(b, a)).item(), rel=1e-5)
    assert torch.equal(sym, divergence(LossName.SYM_KL, b, a))


def test_sym_kl_matches_a_float64_reference() -> None:
    torch.manual_seed(11)
    a, b = torch.randn(16, 7) * 4, torch.randn(16, 7) * 4
    p, q = torch.softmax(a.double(), -1), torch.softmax(b.double(), -1)
    reference = ((p * (p.log() - q.log())).sum(-1) + (q * (q.log() - p.log())).sum(-1)).mean()
    assert sym_kl(a, b).item() == pytest.approx(reference.item(), rel=1e-5)
    assert sym_kl(a, a).item() == 0.0


def test_js_symmetric_and_at_most_ln2() -> None:
    torch.manual_seed(2)
    a, b = torch.randn(8, 4) * 5, torch.randn(8, 4) * 5
    value = divergence(LossName.JS, a, b)
    assert value.item() == pytest.approx(divergence(LossName.JS, b, a).item(), rel=1e-6)
    assert 0 < value.item() <= LN(2)
    # disjoint supports reach ln 2
    disjoint = divergence(LossName.JS, t([1e4, -1e4]), t([-1e4, 1e4]))
    assert disjoint.item() == pytest.approx(LN(2), rel=1e-6)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_zero_for_identical_and_nonnegative_on_random(name: LossName) -> None:
    torch.manual_seed(3)
    shape = (16, 1) if name is LossName.MSE else (16, 7)
    a = torch.randn(shape) * 4
    assert divergence(name, a, a.clone()).item() == pytest.approx(0.0, abs=1e-7)
    for _ in range(20):
        assert divergence(name, a, torch.randn(shape) * 4).item() >= -1e-7


@pytest.mark.parametrize("name", PROB_DIVERGENCES)
def test_confident_logits_finite_with_known_value(name: LossName) -> None:
    # p = softmax([1e4, -1e4]) = [1, 0] and q = softmax([-1e4, 1e4]) = [0, 1] in fp32, with
    # log p = [0, -2e4] and log q = [-2e4, 0]:
    #   KL(p || q) = 1 * (0 - (-2e4)) + 0 = 2e4;  sym = 2e4 + 2e4;  JS = ln 2 (disjoint supports).
    expected = {LossName.KL: 2e4, LossName.SYM_KL: 4e4, LossName.JS: LN(2)}[name]
    outputs = t([-1e4, 1e4]).requires_grad_()
    value = divergence(name, outputs, t([1e4, -1e4]))
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    assert torch.isfinite(outputs.grad).all()


@pytest.mark.parametrize("name", DIVERGENCES)
def test_huge_random_logits_finite_with_finite_gradients(name: LossName) -> None:
    torch.manual_seed(4)
    shape = (8, 1) if name is LossName.MSE else (8, 6)
    outputs = (torch.randn(shape) * 1e4).requires_grad_()
    target = torch.randn(shape) * 1e4
    value = divergence(name, outputs, target)
    value.backward()
    assert torch.isfinite(value) and value.item() >= 0
    assert torch.isfinite(outputs.grad).all()


@pytest.mark.parametrize("name", PROB_DIVERGENCES)
def test_gradient_is_zero_at_the_minimum_and_matches_kl_div(name: LossName) -> None:
    torch.manual_seed(5)
    a = torch.randn(4, 3, requires_grad=True)
    divergence(name, a, a.detach().clone()).backward()
    assert torch.allclose(a.grad, torch.zeros_like(a.grad), atol=1e-6)
    if name is LossName.KL:
        b = torch.randn(4, 3)
        ours = torch.autograd.grad(kl(a, b), a)[0]
        ref = F.kl_div(F.log_softmax(a, -1), F.log_softmax(b, -1), log_target=True, reduction="batchmean")
        assert torch.allclose(ours, torch.autograd.grad(ref, a)[0], atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_autocast_inputs_give_the_fp32_value(name: LossName, dtype: torch.dtype) -> None:
    torch.manual_seed(6)
    layer = torch.nn.Linear(8, 1 if name is LossName.MSE else 5)
    x, x_adv = torch.randn(6, 8), torch.randn(6, 8)
    with torch.autocast("cpu", dtype=dtype):
        clean, adv = layer(x), layer(x_adv)
        assert clean.dtype == dtype
        value = divergence(name, adv, clean.detach())
    assert value.dtype == torch.float32 and torch.isfinite(value)
    # exactly what fp32 arithmetic gives on the same low-precision logits ...
    assert value.item() == pytest.approx(divergence(name, adv.float(), clean.float()).item(), rel=1e-6)
    # ... and close to the all-fp32 model's value (the only difference is the logits' rounding)
    reference = divergence(name, layer(x_adv), layer(x)).item()
    assert value.item() == pytest.approx(reference, rel=3e-2, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", PROB_DIVERGENCES)
def test_low_precision_confident_logits_finite(name: LossName, dtype: torch.dtype) -> None:
    torch.manual_seed(7)
    outputs = (torch.randn(4, 6) * 1e4).to(dtype).requires_grad_()
    target = (torch.randn(4, 6) * 1e4).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = divergence(name, outputs, target)
    value.backward()
    assert torch.isfinite(value) and value.item() >= 0
    assert value.item() == pytest.approx(divergence(name, outputs.float(), target.float()).item(), rel=1e-6)
    assert torch.isfinite(outputs.grad).all()


# ---------------------------------------------------------------- ranking masks

# Row 0 has 3 real candidates, row 1 has 2; padded slots hold garbage that must not matter.
RANK_MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])
LENGTHS = [3, 2]


def _padded(real: Tensor) -> Tensor:
    garbage = torch.tensor([[1e4, 1e4, 1e4, 1e4], [-7.0, 3.0, 1e4, -1e4]])
    return torch.where(RANK_MASK, real, garbage)


@pytest.mark.parametrize("name", PROB_DIVERGENCES)
def test_padded_candidates_do_not_change_divergence(name: LossName) -> None:
    torch.manual_seed(8)
    real_out, real_tgt = torch.randn(2, 4) * 3, torch.randn(2, 4) * 3
    outputs = _padded(real_out).requires_grad_()
    value = divergence(name, outputs, _padded(real_tgt), mask=RANK_MASK)
    unpadded = sum(
        divergence(name, real_out[i : i + 1, :k], real_tgt[i : i + 1, :k]).item()
        for i, k in enumerate(LENGTHS)
    ) / len(LENGTHS)
    assert value.item() == pytest.approx(unpadded, rel=1e-5)
    value.backward()
    assert torch.isfinite(outputs.grad).all()
    assert (outputs.grad[~RANK_MASK] == 0).all()


@pytest.mark.parametrize("name", PROB_DIVERGENCES)
def test_fully_padded_row_contributes_zero(name: LossName) -> None:
    mask = torch.tensor([[True, True], [False, False]])
    outputs, target = t([0.0, 0.0], [5.0, -5.0]), t([0.0, LN(3)], [-5.0, 5.0])
    value = divergence(name, outputs, target, mask=mask)
    assert torch.isfinite(value)
    # row 0 is the hand-worked pair (outputs q, target p); row 1 adds 0 but still counts in the batch mean
    single = divergence(name, outputs[:1], target[:1])
    assert value.item() == pytest.approx(single.item() / 2, rel=1e-6)


def test_rank_cross_entropy_mask_matches_unpadded() -> None:
    torch.manual_seed(9)
    real = torch.randn(2, 4) * 3
    scores = _padded(real).requires_grad_()
    labels = torch.tensor([2, 0])
    value = task_loss(LossName.RANK_CROSS_ENTROPY, scores, labels, mask=RANK_MASK)
    unpadded = sum(
        F.cross_entropy(real[i : i + 1, :k], labels[i : i + 1]).item() for i, k in enumerate(LENGTHS)
    ) / len(LENGTHS)
    assert value.item() == pytest.approx(unpadded, rel=1e-6)
    value.backward()
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad[~RANK_MASK] == 0).all()


@pytest.mark.parametrize("name", [LossName.CROSS_ENTROPY, LossName.RANK_CROSS_ENTROPY, LossName.MSE])
def test_task_losses_fp32_under_autocast(name: LossName) -> None:
    torch.manual_seed(10)
    layer = torch.nn.Linear(8, 1 if name is LossName.MSE else 4)
    x = torch.randn(5, 8)
    labels = torch.randn(5) if name is LossName.MSE else torch.tensor([0, 1, 2, 3, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = layer(x)
        value = task_loss(name, outputs, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert value.item() == pytest.approx(task_loss(name, outputs.float(), labels).item(), rel=1e-6)
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
