"""Predict one task of a trained checkpoint on a file of canonical rows or a token-id cache split.

    python predict.py --checkpoint out/best --task rte --input data/rte_test.jsonl \\
        [--output preds.jsonl] [--submission RTE.tsv] [--batch_size 64] [--max_seq_len 512] \\
        [--skip_bad_rows] [--device auto|cpu|cuda] [--precision fp32|bf16|fp16]

``--input`` is a canonical ``.jsonl`` / ``.tsv`` file (read with the checkpoint's task definition, encoded
with the checkpoint's tokenizer) or a split folder of the token-id cache (``prepro_std.py``'s output). The
predictions go to ``--output`` (default: ``<input name>.<task>.predictions.jsonl`` beside the input), one JSON
object per row in input order. When the rows carry labels the task's metrics are printed and written beside
the predictions as ``<output without .jsonl>.metrics.json``. ``--submission`` also writes GLUE's
``index<TAB>prediction`` TSV. A ``mask_lm`` task masks its rows as evaluation does (a fixed salt), prints
masked-token accuracy and perplexity, and writes each row's predicted and original masked token ids.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_utils.atomic import atomic_write_text
from data_utils.cache import EncodedSplit
from data_utils.dataset import TaskDataset
from data_utils.errors import UserError, exit_on_user_error
from data_utils.task_def import TaskDef
from mt_dnn.distributed import resolve_device
from mt_dnn.inference import (
    evaluate,
    prediction_records,
    write_glue_submission,
    write_predictions_jsonl,
)
from mt_dnn.model import (
    CONFIG_FILE,
    MTDNNModel,
    encoder_dir,
    load_tokenizer,
    quiet_loading,
    read_checkpoint_config,
    usable_positions,
)
from mt_dnn.run_data import CacheCheck, collator_for, masking_for
from mt_dnn.tasks import parse_task_def, task_kind

DEFAULT_MAX_SEQ_LEN = 512
_SHOWN_SKIPS = 3
_PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py", description="Predict one task of a smart-mtdnn checkpoint (metrics when labelled)."
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (holds mtdnn.json)")
    parser.add_argument("--task", required=True, help="the checkpoint's task to predict")
    parser.add_argument(
        "--input", required=True, help="canonical .jsonl / .tsv file, or a token-id cache split folder"
    )
    parser.add_argument(
        "--output", default=None, help="predictions JSONL (default: <input>.<task>.predictions.jsonl)"
    )
    parser.add_argument("--submission", default=None, help="also write a GLUE submission TSV here")
    parser.add_argument("--batch_size", type=int, default=64, help="rows per batch (default 64)")
    parser.add_argument(
        "--max_seq_len",
        type=int,
        default=None,
        help=f"for a .jsonl/.tsv input: truncate longer inputs (default {DEFAULT_MAX_SEQ_LEN}, or the "
        "encoder's limit when smaller)",
    )
    parser.add_argument(
        "--skip_bad_rows", action="store_true", help="skip and report bad input rows instead of failing"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument(
        "--precision", choices=tuple(_PRECISIONS), default="fp32", help="autocast precision (default fp32)"
    )
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    checkpoint = Path(args.checkpoint)
    task_def = _checkpoint_task(checkpoint, args.task)
    input_path = Path(args.input)
    if not input_path.exists():
        raise UserError(f"{input_path}: no such file or directory")
    kind = task_kind(task_def)
    if args.submission and not kind.writes_submission:
        raise UserError(
            f"--submission: task '{task_def.name}' is {task_def.task_type} (GLUE submissions need labels)"
        )
    output = Path(args.output) if args.output else _default_output(input_path, task_def.name)
    _check_outputs(input_path, output, args.submission)
    device = resolve_device(args.device)
    autocast_dtype = _PRECISIONS[args.precision]

    tokenizer = load_tokenizer(checkpoint)
    position_limit = _position_limit(checkpoint)
    if input_path.is_dir():
        split = _cached_split(input_path, task_def, tokenizer, checkpoint)
    else:
        split = _encoded_file(input_path, task_def, tokenizer, args, position_limit)

    with quiet_loading():
        model = MTDNNModel.load(checkpoint, map_location=device)
    dataset = TaskDataset(task_def, split)
    result = evaluate(
        model,
        dataset,
        collator_for({task_def.name: task_def}, tokenizer),
        batch_size=args.batch_size,
        device=device,
        autocast_dtype=autocast_dtype,
        masking=masking_for({task_def.name: task_def}, tokenizer),
        progress=None,  # a bar on a terminal, nothing in logs
    )
    predictions = result.predictions
    if np.isnan(predictions.scores).any():
        raise UserError(
            f"{checkpoint}: task '{task_def.name}': the model gives NaN scores (a diverged checkpoint?)"
        )

    with _writing(output):
        write_predictions_jsonl(output, prediction_records(task_def, predictions))
    print(f"predictions: {output} ({len(predictions)} rows)")
    if args.submission:
        with _writing(args.submission):
            write_glue_submission(args.submission, task_def, predictions)
        print(f"submission: {args.submission}")
    if result.metrics:
        metrics_path = _metrics_path(output)
        with _writing(metrics_path):
            _write_metrics(metrics_path, task_def, checkpoint, input_path, len(predictions), result.metrics)
        shown = "  ".join(f"{name} {value:.2f}" for name, value in result.metrics.items())
        print(f"{task_def.name}: {shown}  ({len(predictions)} rows; {metrics_path})")
    return 0


def _check_outputs(input_path: Path, output: Path, submission: str | None) -> None:
    """No output may overwrite the input (or a file of an input cache folder) or another output."""
    written = {"--output": output, "the metrics file": _metrics_path(output)}
    if submission:
        written["--submission"] = Path(submission)
    source = input_path.resolve()
    seen: dict[Path, str] = {}
    for name, path in written.items():
        target = path.resolve()
        if target == source or (input_path.is_dir() and source in target.parents):
            raise UserError(f"{name} {path}: would overwrite the input {input_path}; write elsewhere")
        if target in seen:
            raise UserError(f"{name} {path}: is also {seen[target]}; give each output its own path")
        seen[target] = f"{name}"
        if target.is_dir():
            raise UserError(f"{name} {path}: is a folder, not a file")


@contextlib.contextmanager
def _writing(path: str | Path) -> Iterator[None]:
    """An output that cannot be written (no permission, a folder in the way) is a user mistake."""
    try:
        yield
    except OSError as error:
        raise UserError(f"{path}: cannot write: {error.strerror or error}") from None


def _checkpoint_task(checkpoint: Path, task: str) -> TaskDef:
    """The task's definition as saved in the checkpoint (read before any weights are loaded)."""
    config = read_checkpoint_config(checkpoint)
    entries = config.get("task_defs") or {}
    if task not in entries:
        have = ", ".join(entries) or "none"
        raise UserError(f"{checkpoint}: no task '{task}' in this checkpoint (its tasks: {have})")
    return parse_task_def(task, entries[task], source=str(checkpoint / CONFIG_FILE))


def _encoder_config(checkpoint: Path) -> dict[str, Any]:
    try:
        config = json.loads((encoder_dir(checkpoint) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{checkpoint}: cannot read the encoder's config.json ({error})") from None
    return config if isinstance(config, dict) else {}


def _position_limit(checkpoint: Path) -> int | None:
    """How many tokens the encoder takes (``None`` when its config does not say)."""
    limit = usable_positions(_encoder_config(checkpoint))
    return limit if isinstance(limit, int) and limit > 0 else None


def _encoded_file(
    path: Path, task_def: TaskDef, tokenizer: Any, args: argparse.Namespace, position_limit: int | None
) -> EncodedSplit:
    max_seq_len = args.max_seq_len
    if max_seq_len is None:
        max_seq_len = min(DEFAULT_MAX_SEQ_LEN, position_limit or DEFAULT_MAX_SEQ_LEN)
    elif position_limit is not None and max_seq_len > position_limit:
        raise UserError(
            f"--max_seq_len {max_seq_len} exceeds the encoder's max_position_embeddings {position_limit}"
        )
    result = task_def.kind.read_split(path, task_def, skip_bad_rows=args.skip_bad_rows)
    for message in result.skipped[:_SHOWN_SKIPS]:
        print(f"skipped: {message}", file=sys.stderr)
    if len(result.skipped) > _SHOWN_SKIPS:
        print(f"skipped: ... and {len(result.skipped) - _SHOWN_SKIPS} more in {path}", file=sys.stderr)
    return task_def.kind.encode_split(
        result.examples,
        task_def,
        tokenizer,
        max_seq_len=max_seq_len,
        split=path.stem,
        skipped=len(result.skipped),
    )


def _cached_split(path: Path, task_def: TaskDef, tokenizer: Any, checkpoint: Path) -> EncodedSplit:
    """A cache split folder, checked against the task, the checkpoint's tokenizer and its encoder."""
    return CacheCheck.for_config_json(tokenizer, _encoder_config(checkpoint)).split(path, task_def)


def _default_output(input_path: Path, task: str) -> Path:
    name = input_path.name.rstrip("/") if input_path.is_dir() else input_path.stem
    return input_path.resolve().parent / f"{name}.{task}.predictions.jsonl"


def _metrics_path(output: Path) -> Path:
    base = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{base}.metrics.json")


def _write_metrics(
    path: Path, task_def: TaskDef, checkpoint: Path, input_path: Path, rows: int, metrics: dict[str, float]
) -> None:
    """Strict JSON: an undefined metric (e.g. Pearson of a constant) is written as null."""
    document = {
        "task": task_def.name,
        "checkpoint": str(checkpoint),
        "input": str(input_path),
        "rows": rows,
        "metrics": {name: (value if math.isfinite(value) else None) for name, value in metrics.items()},
    }
    atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
