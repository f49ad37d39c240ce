"""The adversarial site: what a method reads from it, what it refuses, and that a site-built method is the
plain-API method bit for bit."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from data_utils.enums import LossName
from module.adversarial import (
    METHODS,
    AdversarialBatch,
    AdversarialMethodName,
    AdversarialSite,
    ALUMConfig,
    MissingSitePart,
    SitePart,
    build_method,
    is_spectrally_normalized,
)
from module.losses import divergence

ALL = list(AdversarialMethodName)


class BlockModel(nn.Module):
    """Token ids -> an embeddings block (word embeddings + LayerNorm, YOPO's first layer) -> mix -> head."""

    def __init__(self, vocab: int = 30, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Embedding(vocab, width), nn.LayerNorm(width), nn.Dropout(0.1))
        self.mix = nn.Linear(width, width)
        self.head = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, classes))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        hidden = torch.tanh(self.mix(self.block(ids)))
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled)


def problem() -> tuple[BlockModel, Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    model = BlockModel()
    ids = torch.randint(1, 30, (4, 6))
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    labels = torch.tensor([0, 1, 2, 1])
    return model, ids * mask.long(), mask, labels


def batch(model: BlockModel, ids: Tensor, mask: Tensor, labels: Tensor) -> AdversarialBatch:
    return AdversarialBatch(
        run=lambda: model(ids, mask),
        loss=lambda logits: F.cross_entropy(logits, labels),
        divergence=functools.partial(divergence, LossName.SYM_KL),
        token_mask=mask,
        noise_seeds=[11, 12, 13, 14],
    )


def train_once(name: str, use_site: bool) -> tuple[Tensor, dict[str, Tensor]]:
    model, ids, mask, labels = problem()
    target, first_layer = model.block[0], model.block
    if use_site:
        site = AdversarialSite(target, first_layer, heads=(model.head,))
        method = build_method(name, site)
        method.prepare(site)
    else:
        method = build_method(name, target, first_layer=first_layer)
        method.prepare(model.head)
    model.train()
    torch.manual_seed(1)
    step = method.train_step(batch(model, ids, mask, labels))
    grads = {key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None}
    return step.loss, grads


@pytest.mark.parametrize("name", ALL)
def test_a_site_built_method_is_the_plain_api_method_bit_for_bit(name: str) -> None:
    loss, grads = train_once(name, use_site=True)
    plain_loss, plain_grads = train_once(name, use_site=False)
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys() and grads
    assert all(torch.equal(grads[key], plain_grads[key]) for key in grads)


def test_yopo_reads_its_first_layer_from_the_site() -> None:
    model, *_ = problem()
    method = build_method("yopo", AdversarialSite(model.block[0], model.block))
    assert method.first_layer is model.block  # type: ignore[attr-defined]
    assert method.target is model.block[0]


def test_yopo_without_a_first_layer_is_refused() -> None:
    model, *_ = problem()
    with pytest.raises(MissingSitePart, match="yopo: the site has no first_layer") as error:
        build_method("yopo", AdversarialSite(model.block[0]))
    assert error.value.part is SitePart.FIRST_LAYER
    assert isinstance(error.value, ValueError)


def test_yopo_refuses_a_first_layer_that_does_not_hold_the_target() -> None:
    model, *_ = problem()
    with pytest.raises(ValueError, match="must contain the target|does not contain the target"):
        build_method("yopo", AdversarialSite(model.block[0], model.mix))


def test_the_other_methods_need_no_first_layer() -> None:
    model, *_ = problem()
    for name in ALL:
        if name is not AdversarialMethodName.YOPO:
            assert build_method(name, AdversarialSite(model.block[0])).target is model.block[0]


def test_a_first_layer_beside_a_site_is_refused() -> None:
    model, *_ = problem()
    with pytest.raises(ValueError, match="in the AdversarialSite"):
        build_method("yopo", AdversarialSite(model.block[0], model.block), first_layer=model.block)


def test_r4f_prepare_normalises_the_sites_heads_and_nothing_else() -> None:
    model, *_ = problem()
    other = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    site = AdversarialSite(model.block[0], model.block, heads=(model.head, other))
    build_method("r4f", site).prepare(site)
    for head in site.heads:
        assert is_spectrally_normalized(head)
        assert all(
            parametrize.is_parametrized(module, "weight")
            for module in head.modules()
            if isinstance(module, nn.Linear)
        )
    assert not parametrize.is_parametrized(model.mix, "weight")
    assert not any(parametrize.is_parametrized(module) for module in model.block.modules())


def test_r4f_prepare_refuses_a_site_without_heads_or_a_head_holding_the_target() -> None:
    model, *_ = problem()
    method = build_method("r4f", model.block[0])
    with pytest.raises(MissingSitePart) as error:
        method.prepare(AdversarialSite(model.block[0]))
    assert error.value.part is SitePart.HEADS
    with pytest.raises(ValueError, match="contains the perturbed module"):
        method.prepare(AdversarialSite(model.block[0], heads=(model.head, model)))
    assert not is_spectrally_normalized(model.head)  # every head is checked before any is changed


@pytest.mark.parametrize("name", [name for name in ALL if name is not AdversarialMethodName.R4F])
def test_prepare_changes_nothing_for_the_other_methods(name: str) -> None:
    model, *_ = problem()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    site = AdversarialSite(model.block[0], model.block, heads=(model.head,))
    build_method(name, site).prepare(site)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_only_alum_declares_pretraining_defaults_and_they_are_the_papers() -> None:
    assert dict(METHODS[AdversarialMethodName.ALUM].pretraining) == {
        "alpha": ALUMConfig.for_pretraining().alpha
    }
    assert all(
        not spec.pretraining for name, spec in METHODS.items() if name is not AdversarialMethodName.ALUM
    )


def test_a_registered_method_with_pretraining_defaults_outside_its_config_is_refused() -> None:
    from module.adversarial import FGM, FGMConfig, MethodSpec, register_method

    class Other(FGM):
        name = "other-fgm"

    with pytest.raises(ValueError, match="no config field 'beta'"):
        register_method(MethodSpec("other-fgm", Other, FGMConfig, "FGM", {"beta": 1.0}))
