"""The encoder layouts: every supported model_type, on a tiny random model built from its config, resolves to
the model's own modules; an unknown type is one clear error."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import transformers as hf
from torch import nn

from data_utils.errors import UserError
from module.encoders import ENCODER_LAYOUTS, UnknownEncoderType, encoder_layout, model_type_of

SMALL = {
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 40,
}
CONFIGS: dict[str, Callable[[], hf.PretrainedConfig]] = {
    "bert": lambda: hf.BertConfig(**SMALL),
    "roberta": lambda: hf.RobertaConfig(**SMALL),
    "xlm-roberta": lambda: hf.XLMRobertaConfig(**SMALL),
    "camembert": lambda: hf.CamembertConfig(**SMALL),
    "mpnet": lambda: hf.MPNetConfig(**SMALL),
    "deberta": lambda: hf.DebertaConfig(**SMALL),
    "deberta-v2": lambda: hf.DebertaV2Config(**SMALL),
    "electra": lambda: hf.ElectraConfig(embedding_size=8, **SMALL),
    "distilbert": lambda: hf.DistilBertConfig(
        vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=40
    ),
}


def test_every_layout_has_a_tiny_model_here() -> None:
    assert set(CONFIGS) == set(ENCODER_LAYOUTS)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_a_layout_returns_the_models_own_modules(model_type: str) -> None:
    config = CONFIGS[model_type]()
    assert config.model_type == model_type
    model = hf.AutoModel.from_config(config)
    layout = encoder_layout(model)
    assert layout is ENCODER_LAYOUTS[model_type]
    assert layout.word_embeddings_of(model) is model.embeddings.word_embeddings
    assert layout.word_embeddings_of(model) is model.get_input_embeddings()
    assert layout.embeddings_block(model) is model.embeddings
    stack = model.transformer if model_type == "distilbert" else model.encoder
    assert layout.layers_of(model) is stack.layer and len(stack.layer) == 2
    assert layout.pooler_of(model) is getattr(model, "pooler", None)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_a_task_models_layout_resolves_on_its_base_model(model_type: str) -> None:
    model = hf.AutoModelForSequenceClassification.from_config(CONFIGS[model_type]())
    layout = encoder_layout(model)
    assert layout.word_embeddings_of(model) is model.get_input_embeddings()
    assert layout.embeddings_block(model) is model.base_model.embeddings


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_the_masked_lm_head_names_are_in_the_types_masked_lm_checkpoints(model_type: str) -> None:
    head = ENCODER_LAYOUTS[model_type].mlm_head
    keys = set(hf.AutoModelForMaskedLM.from_config(CONFIGS[model_type]()).state_dict())
    if head is None:  # named unlike our head: ELECTRA's generator, DistilBERT's vocab_* layers
        assert not any(key.startswith(("cls.predictions.", "lm_head.")) for key in keys)
        return
    for theirs in head.names.values():
        assert any(head.prefix + name in keys for name in theirs), (head.prefix, theirs)


def test_an_unknown_model_type_is_one_clear_error() -> None:
    gpt2 = hf.GPT2Model(hf.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(UnknownEncoderType) as error:
        encoder_layout(gpt2)
    message = str(error.value)
    assert "'gpt2'" in message and "\n" not in message
    assert all(model_type in message for model_type in ENCODER_LAYOUTS)
    assert isinstance(error.value, UserError) and isinstance(error.value, ValueError)


def test_a_module_without_an_hf_config_is_refused() -> None:
    with pytest.raises(ValueError, match="no HF config"):
        model_type_of(nn.Linear(2, 2))
