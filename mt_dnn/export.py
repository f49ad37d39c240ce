"""Export a checkpoint's tasks as standard Hugging Face folders (``transformers.pipeline`` loads them).

    python -m mt_dnn.export --checkpoint out/best --output exported [--task rte --task stsb]
    smart-mtdnn-export ...                                (the same, installed as a console script)

Each task becomes ``<output>/<task>/``: ``config.json`` (``id2label`` from the task's labels,
``problem_type``), ``model.safetensors`` and the checkpoint's tokenizer, loadable with
``AutoModelForSequenceClassification`` (classification and regression; ``pipeline("text-classification")``)
or ``AutoModelForMultipleChoice`` (ranking: inputs ``[B, K, L]``, one score per candidate).

Why the mapping is exact. Our linear head reads the encoder's first-token state ``h``; in eval mode (no
dropout) it is ``W2 tanh(W1 h + b1) + b2`` with its own ``W1`` (or, with ``use_encoder_pooler``, the encoder's
pooler, which is the same ``tanh(W1 h + b1)``). HF's heads compute exactly that in one of two places: BERT-
style models (``BertForSequenceClassification``, ``BertForMultipleChoice``, RoBERTa's multiple choice) put
``tanh(W1 h + b1)`` in the base model's pooler and ``W2`` in ``classifier``; RoBERTa-style sequence
classifiers put both in ``classifier.dense`` / ``classifier.out_proj``. So ``W1`` goes to whichever the
exported class has - the pooler our encoder folder dropped (``best/encoder`` has none when the head owns its
``W1``) is rebuilt from the head - and R4F's spectrally normalised weights are written as the normalised
matrices. Every export is checked: the exported model and the checkpoint score the same random batch, and
a difference above 1e-5 refuses the export (an encoder family whose head differs, e.g. ELECTRA's GELU head,
or DistilBERT's ReLU pre-classifier).

Heads that cannot map are refused: SAN (a multi-step answer module over all token states; no HF class has
it) and mask_lm (a pre-training head over the vocabulary, not a task head; ``encoder/`` already loads with
``AutoModel``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from data_utils.atomic import atomic_directory
from data_utils.enums import HeadType
from data_utils.errors import UserError, exit_on_user_error
from data_utils.task_def import TaskDef
from module.heads import PooledHead, RankingHead
from mt_dnn.model import MTDNNModel, load_tokenizer, quiet_loading
from mt_dnn.tasks import HFExport, task_kind

__all__ = ["TOLERANCE", "ExportedTask", "export_checkpoint", "export_task", "main", "refusal"]

TOLERANCE = 1e-5
PROVENANCE_FILE = "smart_mtdnn_export.json"


@dataclass(frozen=True)
class ExportedTask:
    task: str
    folder: Path
    auto_class: str  # the transformers Auto class that loads it
    max_difference: float  # between the checkpoint's and the export's outputs on the check batch


def refusal(task_def: TaskDef) -> str | None:
    """Why ``task_def``'s head has no exact HF equivalent, or None when it exports."""
    kind = task_kind(task_def)
    if kind.hf_export is None:
        return kind.export_refusal or f"a {task_def.task_type} task has no transformers model class"
    if task_def.head is HeadType.SAN:
        return (
            "a SAN head (multi-step answer module) has no transformers equivalent; only linear heads export"
        )
    return None


def export_task(
    model: MTDNNModel,
    task: str,
    folder: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    provenance: dict[str, Any] | None = None,
) -> ExportedTask:
    """Write ``task``'s encoder + head as an HF folder at ``folder`` (atomically), checked against ``model``.

    Raises ``UserError`` for a task the model does not have, a head that cannot map (``refusal``), or an
    encoder family whose HF head is not the same function (the check batch differs by more than 1e-5).
    """
    task_def = model.task_defs.get(task)
    if task_def is None:
        raise UserError(f"no task '{task}' in this checkpoint (its tasks: {', '.join(model.task_defs)})")
    reason = refusal(task_def)
    if reason is not None:
        raise UserError(f"task '{task}': cannot export: {reason}")
    spec = task_kind(task_def).hf_export
    assert spec is not None
    auto_class = getattr(transformers, spec.auto_class)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        exported = _build(model, task_def, auto_class, spec)
        difference = _max_difference(model, exported, task_def, spec)
    finally:
        for module, training in modes:
            module.training = training
    if not difference <= TOLERANCE:
        raise UserError(
            f"task '{task}': the exported {type(exported).__name__} does not reproduce the checkpoint "
            f"(max difference {difference:.2e}); its head is not the same function as ours"
        )
    folder = Path(folder)
    with atomic_directory(folder) as tmp, quiet_loading():
        exported.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        record = {
            "task": task,
            "task_def": task_def.to_dict(),
            "max_difference": difference,
            **(provenance or {}),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return ExportedTask(task, folder, auto_class.__name__, difference)


def export_checkpoint(
    checkpoint: str | Path, output: str | Path, tasks: Sequence[str] | None = None
) -> tuple[list[ExportedTask], list[str]]:
    """Export ``tasks`` (default: every task whose head maps) of the checkpoint at ``checkpoint`` into
    ``<output>/<task>/``. Returns the exports and, for the default, the skipped tasks' reasons. A named
    task that cannot export raises ``UserError``."""
    with quiet_loading():
        model = MTDNNModel.load(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    skipped: list[str] = []
    if tasks is None:
        tasks = []
        for name, task_def in model.task_defs.items():
            reason = refusal(task_def)
            if reason is None:
                tasks.append(name)
            else:
                skipped.append(f"task '{name}': {reason}")
        if not tasks:
            raise UserError(f"{checkpoint}: no task of this checkpoint can export ({'; '.join(skipped)})")
    provenance = {"checkpoint": str(Path(checkpoint).resolve())}
    exports = [
        export_task(model, task, Path(output) / task, tokenizer, provenance=provenance) for task in tasks
    ]
    return exports, skipped


# ---------------------------------------------------------------------------------------------- building


def _build(model: MTDNNModel, task_def: TaskDef, auto_class: Any, spec: HFExport) -> PreTrainedModel:
    config = copy.deepcopy(model.encoder.config)
    config.architectures = None
    config.problem_type = spec.problem_type
    if spec.problem_type is not None:
        labels = task_kind(task_def).export_label_names(task_def)
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    if hasattr(config, "classifier_dropout"):
        config.classifier_dropout = task_def.dropout_p
    with torch.random.fork_rng(devices=[]), quiet_loading():
        exported: PreTrainedModel = auto_class.from_config(config)
    _copy_encoder(model, exported)
    head = model.heads[task_def.name]
    pooled = head.scorer if isinstance(head, RankingHead) else head
    if not isinstance(pooled, PooledHead):
        raise UserError(f"task '{task_def.name}': cannot export a {type(head).__name__}")
    first = pooled.dense if pooled.dense is not None else _encoder_pooler_dense(model)
    dense, out = _head_layers(exported, task_def.name)
    with torch.no_grad():
        _copy_linear(first, dense)
        _copy_linear(pooled.out_proj, out)
    return exported.eval()


def _copy_encoder(model: MTDNNModel, exported: PreTrainedModel) -> None:
    """The encoder's weights into the exported model's base model (a pooler either side may be absent)."""
    weights = model.encoder.state_dict()
    missing, unexpected = exported.base_model.load_state_dict(weights, strict=False)
    missing = [key for key in missing if not key.startswith("pooler.")]
    unexpected = [key for key in unexpected if not key.startswith("pooler.")]
    if missing or unexpected:
        raise UserError(
            f"the encoder does not fit {type(exported).__name__} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def _encoder_pooler_dense(model: MTDNNModel) -> nn.Linear:
    dense = getattr(getattr(model.encoder, "pooler", None), "dense", None)
    if not isinstance(dense, nn.Linear):
        raise UserError("the heads use the encoder's pooler, but the encoder has no pooler.dense to export")
    return dense


def _head_layers(exported: PreTrainedModel, task: str) -> tuple[nn.Linear, nn.Linear]:
    """(where ``tanh(W1 h + b1)``'s W1 goes, where W2 goes) in the exported class."""
    classifier = getattr(exported, "classifier", None)
    pooler = getattr(exported.base_model, "pooler", None)
    pooler_dense = getattr(pooler, "dense", None)
    if isinstance(classifier, nn.Linear) and isinstance(pooler_dense, nn.Linear):
        return pooler_dense, classifier
    dense, out = getattr(classifier, "dense", None), getattr(classifier, "out_proj", None)
    if isinstance(dense, nn.Linear) and isinstance(out, nn.Linear):
        return dense, out
    raise UserError(
        f"task '{task}': {type(exported).__name__}'s head is neither pooler + linear nor dense + out_proj; "
        "export maps BERT- and RoBERTa-style heads only"
    )


def _copy_linear(source: nn.Linear, target: nn.Linear) -> None:
    """``source``'s effective weights (R4F: the spectrally normalised matrix, read in eval mode)."""
    if target.weight.shape != source.weight.shape:
        raise UserError(f"head shapes differ: {tuple(source.weight.shape)} vs {tuple(target.weight.shape)}")
    target.weight.copy_(source.weight.detach())
    if source.bias is None or target.bias is None:
        raise UserError("export needs linear layers with biases")
    target.bias.copy_(source.bias.detach())


# ---------------------------------------------------------------------------------------------- the check


def _max_difference(model: MTDNNModel, exported: PreTrainedModel, task_def: TaskDef, spec: HFExport) -> float:
    """Score one random padded batch with both; max |difference| of the task outputs (ours as predict.py
    gets them: classification logits ``[B, C]``, regression ``[B]``, ranking ``[B, K]``)."""
    rows, candidates, length = 3, spec.candidates, 12
    config = model.encoder.config
    generator = torch.Generator().manual_seed(0)
    sequences = rows * candidates
    ids = torch.randint(0, int(config.vocab_size), (sequences, length), generator=generator)
    lengths = torch.tensor([length - (i % 4) for i in range(sequences)])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    types = None
    if int(getattr(config, "type_vocab_size", 0) or 0) > 1:
        types = (torch.arange(length)[None, :] >= (lengths[:, None] // 2)).long() * mask
    device = next(model.parameters()).device
    exported.to(device)
    ids, mask = ids.to(device), mask.to(device)
    types = types.to(device) if types is not None else None
    with torch.no_grad():
        ours = model(task_def.name, ids * mask, mask, types, n_candidates=candidates).float()
        inputs: dict[str, Tensor] = {"input_ids": ids * mask, "attention_mask": mask}
        if types is not None:
            inputs["token_type_ids"] = types
        if candidates > 1:
            inputs = {key: value.view(rows, candidates, length) for key, value in inputs.items()}
        theirs = exported(**inputs).logits.float()
    exported.to("cpu")
    if spec.squeeze:
        theirs = theirs.squeeze(-1)
    if theirs.shape != ours.shape:
        return float("inf")
    return float((ours - theirs).abs().max())


# ---------------------------------------------------------------------------------------------- the CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mt_dnn.export",
        description="Export a smart-mtdnn checkpoint's tasks as Hugging Face folders (one per task).",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (holds mtdnn.json)")
    parser.add_argument("--output", required=True, help="folder for <task>/ subfolders")
    parser.add_argument(
        "--task",
        action="append",
        default=None,
        help="a task to export (repeatable; default: every task with a linear head)",
    )
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exports, skipped = export_checkpoint(args.checkpoint, args.output, args.task)
    for reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    for item in exports:
        shown = f"{item.auto_class}; max difference {item.max_difference:.1e}"
        print(f"exported: {item.task} -> {item.folder} ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
