"""``MTDNNModel``'s adversarial site (from the encoder layout) and ``prepare_for``; the trainer's use of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import GPT2Config, GPT2Model

from data_utils.errors import UserError
from module.adversarial import build_method, is_spectrally_normalized
from module.encoders import UnknownEncoderType
from mt_dnn.model import MTDNNModel
from mt_dnn.trainer import Trainer
from tests.mt_dnn.conftest import build_tiny_mtdnn, tiny_task_defs
from tests.mt_dnn.test_trainer import config_for


def test_the_site_is_the_encoders_embeddings_and_every_head() -> None:
    model = build_tiny_mtdnn()
    site = model.adversarial_site()
    assert site.target is model.encoder.embeddings.word_embeddings
    assert site.target is model.perturbation_target()
    assert site.first_layer is model.encoder.embeddings
    assert site.heads == tuple(model.heads.values()) and len(site.heads) == len(model.task_defs)
    assert model.layout.layers_of(model.encoder) is model.encoder.encoder.layer


def test_prepare_for_r4f_normalises_every_head_records_it_and_leaves_the_encoder() -> None:
    model = build_tiny_mtdnn()
    assert not model.options.spectral_norm_heads
    model.prepare_for(build_method("r4f", model.adversarial_site()))
    assert model.options.spectral_norm_heads
    assert all(is_spectrally_normalized(head) for head in model.heads.values())
    assert not any(parametrize.is_parametrized(module) for module in model.encoder.modules())


def test_prepare_for_another_method_changes_nothing() -> None:
    model = build_tiny_mtdnn()
    keys = list(model.state_dict())
    model.prepare_for(build_method("smart", model.adversarial_site()))
    assert list(model.state_dict()) == keys and not model.options.spectral_norm_heads


def test_a_prepared_r4f_model_saves_and_loads_to_identical_logits(tmp_path: Path) -> None:
    model = build_tiny_mtdnn()
    model.prepare_for(build_method("r4f", model.adversarial_site()))
    model.eval()
    model.save(tmp_path / "ckpt")
    loaded = MTDNNModel.load(tmp_path / "ckpt").eval()
    assert loaded.options.spectral_norm_heads
    ids = torch.randint(5, 30, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(loaded("pair", ids, mask), model("pair", ids, mask), rtol=0, atol=0)


def test_an_encoder_type_without_a_layout_is_one_user_error() -> None:
    gpt2 = GPT2Model(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(UnknownEncoderType, match="'gpt2' is not supported") as error:
        MTDNNModel(gpt2, tiny_task_defs())
    assert isinstance(error.value, UserError) and "\n" not in str(error.value)


def test_the_unused_pooler_is_the_layouts_and_is_dropped() -> None:
    model = build_tiny_mtdnn()
    assert model.encoder.pooler is None and model.layout.pooler_of(model.encoder) is None


def test_the_trainer_prepares_r4f_and_counts_freeats_replays_from_the_method(
    tiny_run: dict, tmp_path: Path
) -> None:
    r4f = Trainer(config_for(tiny_run, tmp_path / "r4f", adv_method="r4f", epochs=1))
    assert r4f.model.options.spectral_norm_heads
    assert all(is_spectrally_normalized(head) for head in r4f.model.heads.values())
    freeat = Trainer(config_for(tiny_run, tmp_path / "freeat", adv_method="freeat", adv_replays=3, epochs=1))
    assert freeat.replays == 3
    plain = Trainer(config_for(tiny_run, tmp_path / "plain", epochs=1))
    assert plain.replays == 1 and not plain.model.options.spectral_norm_heads
    assert not any(
        parametrize.is_parametrized(module)
        for module in plain.model.modules()
        if isinstance(module, nn.Linear)
    )
