"""Where an HF encoder keeps its parts, one layout per ``config.model_type``: the one place that knows.

``encoder_layout(model)`` -> the ``EncoderLayout`` of an HF model (a base model such as ``BertModel``, or a
task model such as ``BertForSequenceClassification``, whose ``base_model`` is used); its methods return the
word embeddings (what adversarial methods perturb), the embeddings block (word + position (+ type)
embeddings and LayerNorm: YOPO's first layer), the transformer layers (what ``torch.compile`` wraps), the
pooler, and the key names of the masked-LM head in the type's ``...ForMaskedLM`` checkpoints. A model type
without a layout is one ``UnknownEncoderType`` error naming it and the known ones; nothing is guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from torch import nn
from transformers import PreTrainedModel

from data_utils.errors import UserError

__all__ = [
    "ENCODER_LAYOUTS",
    "EncoderLayout",
    "MaskedLMHeadNames",
    "UnknownEncoderType",
    "encoder_layout",
    "model_type_of",
]


class UnknownEncoderType(UserError, ValueError):
    """An encoder whose ``model_type`` has no layout in ``ENCODER_LAYOUTS``."""


@dataclass(frozen=True)
class MaskedLMHeadNames:
    """Where a ``...ForMaskedLM`` checkpoint keeps its head: the keys' prefix and, for each parameter of our
    ``MaskLMHead``, the names it may have under that prefix (the first one present wins)."""

    prefix: str
    names: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class EncoderLayout:
    """Dotted paths of an HF base model's parts. ``pooler``: None when the base model has none;
    ``mlm_head``: None when its masked-LM checkpoints are not read (a mask_lm head then starts fresh)."""

    embeddings: str
    word_embeddings: str
    layers: str
    pooler: str | None
    mlm_head: MaskedLMHeadNames | None

    def embeddings_block(self, model: nn.Module) -> nn.Module:
        """Word + position (+ type) embeddings and LayerNorm, run once per forward: YOPO's first layer."""
        return _base(model).get_submodule(self.embeddings)

    def word_embeddings_of(self, model: nn.Module) -> nn.Module:
        return _base(model).get_submodule(self.word_embeddings)

    def layers_of(self, model: nn.Module) -> nn.ModuleList:
        layers = _base(model).get_submodule(self.layers)
        if not isinstance(layers, nn.ModuleList):
            raise TypeError(
                f"{type(model).__name__}.{self.layers} is {type(layers).__name__}, not a ModuleList"
            )
        return layers

    def pooler_of(self, model: nn.Module) -> nn.Module | None:
        """The pooler module, or None when the layout has none or the model dropped it (set it to None)."""
        if self.pooler is None:
            return None
        return getattr(_base(model), self.pooler)


_BERT_MLM = MaskedLMHeadNames(
    "cls.predictions.",  # BertForMaskedLM, DebertaForMaskedLM, DebertaV2ForMaskedLM
    MappingProxyType(
        {
            "transform.dense.weight": ("transform.dense.weight",),
            "transform.dense.bias": ("transform.dense.bias",),
            "transform.LayerNorm.weight": ("transform.LayerNorm.weight",),
            "transform.LayerNorm.bias": ("transform.LayerNorm.bias",),
            "bias": ("bias", "decoder.bias"),
        }
    ),
)
_ROBERTA_MLM = MaskedLMHeadNames(
    "lm_head.",  # RobertaForMaskedLM and its kin
    MappingProxyType(
        {
            "transform.dense.weight": ("dense.weight",),
            "transform.dense.bias": ("dense.bias",),
            "transform.LayerNorm.weight": ("layer_norm.weight",),
            "transform.LayerNorm.bias": ("layer_norm.bias",),
            "bias": ("bias", "decoder.bias"),
        }
    ),
)

_EMBEDDINGS, _WORDS, _LAYERS = "embeddings", "embeddings.word_embeddings", "encoder.layer"
_BERT = EncoderLayout(_EMBEDDINGS, _WORDS, _LAYERS, pooler="pooler", mlm_head=_BERT_MLM)
_ROBERTA = EncoderLayout(_EMBEDDINGS, _WORDS, _LAYERS, pooler="pooler", mlm_head=_ROBERTA_MLM)
_DEBERTA = EncoderLayout(_EMBEDDINGS, _WORDS, _LAYERS, pooler=None, mlm_head=_BERT_MLM)
# ELECTRA's generator and DistilBERT's vocab_* heads are named unlike ours: their mask_lm heads start fresh.
_ELECTRA = EncoderLayout(_EMBEDDINGS, _WORDS, _LAYERS, pooler=None, mlm_head=None)
_DISTILBERT = EncoderLayout(_EMBEDDINGS, _WORDS, "transformer.layer", pooler=None, mlm_head=None)

ENCODER_LAYOUTS: Mapping[str, EncoderLayout] = MappingProxyType(
    {
        "bert": _BERT,
        "roberta": _ROBERTA,
        "xlm-roberta": _ROBERTA,
        "camembert": _ROBERTA,
        "mpnet": _ROBERTA,
        "deberta": _DEBERTA,
        "deberta-v2": _DEBERTA,
        "electra": _ELECTRA,
        "distilbert": _DISTILBERT,
    }
)


def model_type_of(model: nn.Module) -> str:
    """The HF ``config.model_type`` of ``model``; a module without an HF config is an error."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"{type(model).__name__} has no HF config with a model_type")
    return model_type


def encoder_layout(model: nn.Module) -> EncoderLayout:
    """The layout of ``model``'s ``config.model_type``; ``UnknownEncoderType`` when there is none."""
    model_type = model_type_of(model)
    layout = ENCODER_LAYOUTS.get(model_type)
    if layout is None:
        raise UnknownEncoderType(
            f"encoder model_type {model_type!r} is not supported (the supported ones: "
            f"{', '.join(sorted(ENCODER_LAYOUTS))}; module/encoders.py declares one layout per type)"
        )
    return layout


def _base(model: nn.Module) -> nn.Module:
    """An HF task model's base model (``BertForSequenceClassification.bert``); a base model as it is."""
    return model.base_model if isinstance(model, PreTrainedModel) else model
