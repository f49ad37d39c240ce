"""The MT-DNN model: one shared HF encoder, one head per task, saved as an HF folder plus safetensors heads.

Checkpoint layout (``save`` / ``load``)::

    <dir>/encoder/            encoder.save_pretrained + tokenizer (loads with plain AutoModel.from_pretrained)
    <dir>/heads.safetensors   every head's weights, keys "<task>.<param>"
    <dir>/mtdnn.json          task definitions, model options, versions, and the caller's extra metadata
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import transformers
from torch import Tensor, nn
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from data_utils import prepro
from data_utils.atomic import atomic_directory
from data_utils.dataset import Batch
from data_utils.errors import UserError
from data_utils.task_def import TaskDef
from module.adversarial import (
    AdversarialMethod,
    AdversarialSite,
    is_spectrally_normalized,
    spectral_normalize,
)
from module.encoders import EncoderLayout, encoder_layout
from module.heads import SANConfig
from mt_dnn.tasks import BatchShape, EncoderOutput, HeadOptions, parse_task_def, task_kind

logger = logging.getLogger("mt_dnn.model")

CHECKPOINT_FORMAT = 1
ENCODER_DIR = "encoder"
HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "mtdnn.json"


@dataclass(frozen=True)
class ModelOptions:
    """How heads are built on the encoder (saved with the checkpoint)."""

    use_encoder_pooler: bool = False
    san: SANConfig = field(default_factory=SANConfig)
    # R4F (Aghajanyan et al. 2021): every head's linear layers spectrally normalised.
    spectral_norm_heads: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "use_encoder_pooler": self.use_encoder_pooler,
            "san": asdict(self.san),
            "spectral_norm_heads": self.spectral_norm_heads,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelOptions:
        return cls(
            use_encoder_pooler=bool(data.get("use_encoder_pooler", False)),
            san=SANConfig(**data.get("san", {})),
            spectral_norm_heads=bool(data.get("spectral_norm_heads", False)),
        )


class MTDNNModel(nn.Module):
    """``model(task, input_ids, attention_mask, token_type_ids, n_candidates=K)`` -> the task head's output.

    Outputs: classification ``[B, C]`` logits (SAN: log-probabilities), regression ``[B]``, ranking ``[B, K]``
    candidate scores (ranking inputs are ``[B*K, L]``, candidate ``k`` of row ``b`` at ``b*K + k``), mask_lm
    ``[M, V]`` vocabulary logits at the ``positions=`` ([B, L] bool, M of them True) the caller masked; the
    mask_lm head's decoder is the encoder's word-embedding matrix (tied).
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        task_defs: Mapping[str, TaskDef],
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__()
        if not task_defs:
            raise ValueError("a model needs at least one task")
        self.options = options or ModelOptions()
        layout = encoder_layout(encoder)  # an encoder type without a layout stops here, with one clear error
        if not self.options.use_encoder_pooler and layout.pooler_of(encoder) is not None:
            # An unused pooler would hold parameters without gradients (DDP's unused-parameter error).
            setattr(encoder, str(layout.pooler), None)
        self.encoder = encoder
        self.task_defs: dict[str, TaskDef] = dict(task_defs)
        head_options = HeadOptions(
            hidden_size=int(encoder.config.hidden_size),
            vocab_size=int(encoder.get_input_embeddings().num_embeddings),
            use_encoder_pooler=self.options.use_encoder_pooler,
            san=self.options.san,
        )
        self.heads = nn.ModuleDict(
            {name: task_kind(task).build_head(task, head_options) for name, task in self.task_defs.items()}
        )
        if self.options.spectral_norm_heads:
            for head in self.heads.values():
                spectral_normalize(head)

    @classmethod
    def from_encoder(
        cls, encoder_path: str | Path, task_defs: Mapping[str, TaskDef], options: ModelOptions | None = None
    ) -> MTDNNModel:
        """A fresh model on a pretrained encoder (HF folder or our checkpoint's ``encoder/``). Each head may
        start from pretrained weights in the folder (``TaskKind.init_head``: mask_lm's masked-LM head)."""
        model = cls(load_encoder(encoder_path), task_defs, options)
        for name, task in model.task_defs.items():
            task_kind(task).init_head(model.heads[name], encoder_dir(encoder_path), name, model.layout)
        return model

    @property
    def layout(self) -> EncoderLayout:
        """Where the encoder keeps its parts (``module.encoders``, by its ``config.model_type``)."""
        return encoder_layout(self.encoder)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute encoder activations in the backward; non-reentrant, so extra forwards (SMART's) and
        ``torch.autograd.grad`` with respect to a perturbation work as without it."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.encoder, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def compile_encoder(self, backend: str = "inductor") -> None:
        """``torch.compile`` each transformer layer in place (dynamic shapes: batches vary in length).

        The layers (the encoder layout's), not the whole encoder: the embedding module stays eager, so
        adversarial forward hooks on it never force a recompile, and parameter names do not change.
        """
        for module in self.layout.layers_of(self.encoder):
            module.compile(backend=backend, dynamic=True)

    def perturbation_target(self) -> nn.Module:
        """The module whose output adversarial methods perturb: the encoder's word embeddings."""
        return self.layout.word_embeddings_of(self.encoder)

    def adversarial_site(self) -> AdversarialSite:
        """Where adversarial methods act: the word embeddings' output is perturbed, the embeddings block
        (word + position + type embeddings, LayerNorm) is YOPO's first layer, rerun alone for its cheap
        updates, and the heads, in task order, are what ``method.prepare`` may change (R4F)."""
        return AdversarialSite(
            self.perturbation_target(), self.layout.embeddings_block(self.encoder), tuple(self.heads.values())
        )

    def prepare_for(self, method: AdversarialMethod) -> None:
        """``method.prepare`` on this model's site before training; the options then record whether the heads
        are spectrally normalised (R4F), so the checkpoint loads with the same parametrisation."""
        method.prepare(self.adversarial_site())
        normalized = all(is_spectrally_normalized(head) for head in self.heads.values())
        self.options = replace(self.options, spectral_norm_heads=normalized)

    def forward(
        self,
        task: str,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        *,
        n_candidates: int = 1,
        **head_inputs: Tensor,
    ) -> Tensor:
        """``head_inputs``: what the task's kind prepared for its head besides the encoder's inputs
        (mask_lm: ``positions=``)."""
        task_def = self.task_defs.get(task)
        if task_def is None:
            raise KeyError(f"task '{task}' has no head (tasks: {', '.join(self.task_defs)})")
        encoder_inputs: dict[str, Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            encoder_inputs["token_type_ids"] = token_type_ids
        encoded = self.encoder(**encoder_inputs, return_dict=True)
        head_view = EncoderOutput(
            hidden_states=encoded.last_hidden_state,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pooled=getattr(encoded, "pooler_output", None),
            word_embeddings=self.encoder.get_input_embeddings().weight,
        )
        shape = BatchShape(n_candidates=n_candidates, head_inputs=head_inputs)
        return task_kind(task_def).run_head(self.heads[task], head_view, shape)

    # ------------------------------------------------------------------ checkpoints

    def save(
        self,
        path: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the checkpoint folder atomically (a kill mid-save keeps the previous one)."""
        with atomic_directory(path) as tmp:
            self.save_to(tmp, tokenizer, metadata)

    def save_to(
        self,
        folder: Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the checkpoint files into an existing (temporary) folder; ``save`` makes it atomic."""
        self.encoder.save_pretrained(folder / ENCODER_DIR, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder / ENCODER_DIR)
        heads = {key: value.detach().cpu().contiguous() for key, value in self.heads.state_dict().items()}
        safetensors.torch.save_file(heads, str(folder / HEADS_FILE), metadata={"format": "pt"})
        config = {
            "format_version": CHECKPOINT_FORMAT,
            "task_defs": {name: task.to_dict() for name, task in self.task_defs.items()},
            "model": self.options.to_dict(),
            "versions": _versions(),
            "metadata": dict(metadata or {}),
        }
        # Not sort_keys: task order matters (the first task is the main one for mix_opt).
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> MTDNNModel:
        config = read_checkpoint_config(path)
        path = Path(path)
        source = str(path / CONFIG_FILE)
        task_defs = {
            name: parse_task_def(name, entry, source=source) for name, entry in config["task_defs"].items()
        }
        model = cls(
            load_encoder(path / ENCODER_DIR), task_defs, ModelOptions.from_dict(config.get("model", {}))
        )
        heads = read_safetensors(path / HEADS_FILE, map_location)
        try:
            missing, unexpected = model.heads.load_state_dict(heads, strict=False)
        except RuntimeError as error:  # a shape mismatch
            raise UserError(
                f"{path / HEADS_FILE}: heads do not match {CONFIG_FILE}: {_first_line(error)}"
            ) from None
        if missing or unexpected:
            raise UserError(
                f"{path / HEADS_FILE}: heads do not match {CONFIG_FILE} "
                f"(missing {missing}, unexpected {unexpected})"
            )
        return model.to(map_location)


def forward_batch(model: Callable[..., Tensor], batch: Batch, **extra: Tensor) -> Tensor:
    """The head's output for one collated batch: ``model`` is an ``MTDNNModel`` or a wrapper of one (DDP);
    ``extra`` goes to ``forward`` as it is (``positions=`` for a masked-LM batch)."""
    return model(
        batch.task,
        batch.input_ids,
        batch.attention_mask,
        batch.token_type_ids,
        n_candidates=batch.n_candidates,
        **extra,
    )


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{path}: not an smart-mtdnn checkpoint (no {CONFIG_FILE})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"{config_path}: damaged checkpoint config ({error})") from None
    if config.get("format_version") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{config_path}: checkpoint format {config.get('format_version')} is not {CHECKPOINT_FORMAT}"
        )
    return config


def read_safetensors(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """A safetensors file's tensors; a missing, truncated or corrupt file is one ``UserError`` line."""
    if not path.is_file():
        raise UserError(f"{path}: missing (the checkpoint is incomplete)")
    try:
        return safetensors.torch.load_file(str(path), device=str(map_location))
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path}: damaged or truncated ({_first_line(error)})") from None


# Encoders whose position ids start after the padding index (RoBERTa's scheme): max_position_embeddings
# counts pad_token_id + 1 positions no token can use.
_OFFSET_POSITIONS = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text", "mpnet", "ibert"}
)


def usable_positions(config: Mapping[str, Any]) -> int | None:
    """How many tokens an encoder with this ``config.json`` takes (``None`` when it does not say)."""
    limit = config.get("max_position_embeddings")
    if not isinstance(limit, int) or limit <= 0:
        return None
    if config.get("model_type") in _OFFSET_POSITIONS:
        limit -= int(config.get("pad_token_id") or 0) + 1
    return limit


def encoder_dir(path: str | Path) -> Path:
    """An HF model folder as given, or our checkpoint's ``encoder/`` subfolder."""
    path = Path(path)
    return path / ENCODER_DIR if is_checkpoint(path) else path


def load_encoder(path: str | Path) -> PreTrainedModel:
    try:
        return AutoModel.from_pretrained(str(encoder_dir(path)))
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot load an encoder: {str(error).splitlines()[0]}") from None


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The fast tokenizer of an HF folder or of our checkpoint."""
    return prepro.load_tokenizer(encoder_dir(path))


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)


def _versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """While loading: no "Loading weights" bar and no load report (e.g. the pooler we do not use) on
    stderr, which a CLI keeps for its own messages. Real failures still raise."""
    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
