"""How large is each method's perturbation on the encoder we ship, and does it survive mixed precision?

1. ``delta_ratio`` (||delta|| / ||word embeddings|| over real positions) of every registered method at its
   defaults, on real training batches of the demo tasks, through the trainer's objective (train mode), with
   the mean l2 norm of a token's and of a sentence's word embeddings, the scale a radius is read against.
2. SMART's inner gradient (d D(f(x + delta0), f(x)) / d delta at the same initial noise delta0) under bf16
   and fp16 autocast, as its cosine to the fp32 one (model in eval mode, so only the numerics differ), at the
   paper's absolute sigma = 1e-5 and at relative radii. A cosine near 0 means the half-precision forward
   rounded the perturbation away and the ascent direction is noise.

    python experiments/bench/perturbation.py [--data_dir data/demo] [--tasks banking77,vader_movie,...]
        [--batches 3] [--batch_size 32] [--max_seq_len 64] [--threads 2] [--tiny] [--output FILE.json]

Prints two tables (markdown) and writes them as JSON with ``--output``. Needs the demo JSONL
(``python experiments/demo/prepare.py --output_dir data/demo``); ``--tiny`` uses a small random BERT instead
of MiniLM (for tests).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_utils.cache import load_split, split_dir  # noqa: E402
from data_utils.dataset import Batch, Collator, TaskDataset  # noqa: E402
from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from data_utils.prepro import preprocess  # noqa: E402
from data_utils.task_def import TaskDef  # noqa: E402
from experiments.common import read_jsonl_rows  # noqa: E402
from module.adversarial import AdversarialMethodName, Radius  # noqa: E402
from module.adversarial.delta import (  # noqa: E402
    initial_noise,
    noise_unit,
    position_mask,
    run_with_delta,
    scale_length,
)
from module.adversarial.hooks import capture_output  # noqa: E402
from module.losses import divergence  # noqa: E402
from mt_dnn.config import TrainConfig  # noqa: E402
from mt_dnn.model import MTDNNModel, forward_batch  # noqa: E402
from mt_dnn.objective import TrainingObjective  # noqa: E402
from mt_dnn.tasks import load_task_defs, task_kind  # noqa: E402

TASK_DEF = ROOT / "experiments" / "demo" / "demo_task_def.yml"
# SMART's initial noise scales whose inner gradient is compared across precisions: the paper's absolute
# sigma, and relative ones (fractions of each token's root-mean-square coordinate).
NOISE_SETTINGS: tuple[tuple[Radius, float], ...] = (
    (Radius.ABSOLUTE, 1e-5),
    (Radius.RELATIVE, 1e-3),
    (Radius.RELATIVE, 1e-2),
    (Radius.RELATIVE, 1e-1),
)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--tasks", default="banking77,vader_movie,epistemic,social_iqa")
    parser.add_argument("--batches", type=int, default=3, help="training batches per task")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a small random BERT instead of MiniLM (tests)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    return parser


def encoder_path(tiny: bool, folder: Path) -> str:
    """MiniLM's folder, or a small random BERT saved (with MiniLM's tokenizer) under ``folder``."""
    from experiments.common import minilm_path

    path = minilm_path()
    if not tiny:
        return path
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return str(folder)


def task_batches(
    task_defs: dict[str, TaskDef], tasks: Sequence[str], args: argparse.Namespace, model_path: str, work: Path
) -> dict[str, list[Batch]]:
    """The first ``batches * batch_size`` train rows of each task, through prepro and the collator."""
    rows_needed = args.batches * args.batch_size
    for task in tasks:
        source = args.data_dir / f"{task}_{task_defs[task].train_split}.jsonl"
        if not source.is_file():
            raise UserError(f"{source}: not found; run python experiments/demo/prepare.py --tasks {task}")
        rows = read_jsonl_rows(source)[:rows_needed]
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (work / source.name).write_text(text, encoding="utf-8")
    preprocess(
        task_defs,
        work,
        model_path,
        max_seq_len=args.max_seq_len,
        tasks=list(tasks),
        cache_name="cache",
        allow_missing_splits=True,
        progress=False,
    )
    collator = Collator(task_defs, pad_token_id=0)
    batches: dict[str, list[Batch]] = {}
    for task in tasks:
        dataset = TaskDataset(task_defs[task], load_split(split_dir(work / "cache", task, "train")))
        rows = [dataset[index] for index in range(len(dataset))]
        batches[task] = [
            collator(rows[start : start + args.batch_size]) for start in range(0, len(rows), args.batch_size)
        ][: args.batches]
    return batches


def embedding_scale(model: MTDNNModel, batch: Batch) -> tuple[float, float]:
    """Mean l2 norm of a real token's and of a sentence's word-embedding output in ``batch``."""
    with torch.no_grad(), capture_output(model.perturbation_target()) as captured:
        forward_batch(model, batch)
    assert captured.value is not None
    embedded = captured.value.float() * position_mask(batch.attention_mask, captured.value)
    real = batch.attention_mask.bool()
    tokens = torch.linalg.vector_norm(embedded, dim=-1)[real]
    sentences = torch.linalg.vector_norm(embedded.flatten(1), dim=1)
    return float(tokens.mean()), float(sentences.mean())


def method_ratios(model: MTDNNModel, task_defs: dict[str, TaskDef], batches: dict[str, list[Batch]]) -> dict:
    """Mean ``delta_ratio`` of every registered method at its defaults, per task (train mode, fp32)."""
    model.train()
    table: dict[str, dict[str, float]] = {}
    for method in AdversarialMethodName:
        table[method.value] = {}
        for task, task_batches_ in batches.items():
            config = TrainConfig.from_dict(
                {"adv_method": method, "train_datasets": [task], "bregman_mu": 0.0}
            )
            objective = TrainingObjective(model, config, total_steps=100)
            ratios = []
            for index, batch in enumerate(task_batches_):
                torch.manual_seed(index)
                _, stats = objective.backward_step(model, batch, _backward, noise_salt=str(index))
                ratios.append(float(stats["delta_ratio"]))
            model.zero_grad(set_to_none=True)
            table[method.value][task] = statistics.mean(ratios)
    return table


def _backward(loss: Tensor) -> None:
    loss.backward()


def inner_gradient(
    model: MTDNNModel,
    batch: Batch,
    task_def: TaskDef,
    radius: Radius,
    sigma: float,
    dtype: torch.dtype | None,
) -> Tensor:
    """SMART's first inner gradient at a fixed initial noise, under autocast ``dtype`` (None: fp32)."""
    target = model.perturbation_target()
    run = functools.partial(forward_batch, model, batch)
    diverge = functools.partial(divergence, task_def.adv_loss, mask=_candidate_mask(batch, task_def))
    amp = torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)
    with amp:
        with torch.no_grad(), capture_output(target) as captured:
            clean = run()
        assert captured.value is not None
        mask = position_mask(batch.attention_mask, captured.value)
        noise = initial_noise(captured.value, list(range(captured.value.shape[0])), mask)
        delta = (
            noise * scale_length(sigma, noise_unit(radius, captured.value, mask)) * mask
        ).requires_grad_()
        value = diverge(run_with_delta(target, run, delta), clean.detach())
        scale = 2.0**16 if dtype is torch.float16 else 1.0  # the trainer's loss scale: no underflow
        (grad,) = torch.autograd.grad(value * scale, delta)
    return (grad / scale) * mask


def _candidate_mask(batch: Batch, task_def: TaskDef) -> Tensor | None:
    return batch.candidate_mask if task_kind(task_def).multi_sequence else None


def cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    denominator = float(a.norm() * b.norm())
    return float(a @ b) / denominator if denominator > 0 else 0.0


def precision_cosines(
    model: MTDNNModel, task_defs: dict[str, TaskDef], batches: dict[str, list[Batch]]
) -> list[dict[str, Any]]:
    """Cosine of SMART's inner gradient under each half-precision dtype to the fp32 one (eval mode)."""
    model.eval()
    rows = []
    for radius, sigma in NOISE_SETTINGS:
        for task, task_batches_ in batches.items():
            batch = task_batches_[0]
            reference = inner_gradient(model, batch, task_defs[task], radius, sigma, None)
            row: dict[str, Any] = {"radius": radius.value, "sigma": sigma, "task": task}
            for name, dtype in DTYPES.items():
                row[name] = cosine(
                    inner_gradient(model, batch, task_defs[task], radius, sigma, dtype), reference
                )
            rows.append(row)
    return rows


def render(scales: dict[str, tuple[float, float]], ratios: dict, cosines: list[dict[str, Any]]) -> str:
    tasks = list(scales)
    lines = ["| | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    lines.append("| token norm | " + " | ".join(f"{scales[t][0]:.3f}" for t in tasks) + " |")
    lines.append("| sentence norm | " + " | ".join(f"{scales[t][1]:.2f}" for t in tasks) + " |")
    for method, by_task in ratios.items():
        lines.append(f"| {method} delta_ratio | " + " | ".join(f"{by_task[t]:.2e}" for t in tasks) + " |")
    lines += ["", "| SMART initial noise | task | cos(bf16, fp32) | cos(fp16, fp32) |", "|---|---|---|---|"]
    for row in cosines:
        lines.append(
            f"| {row['radius']} {row['sigma']:g} | {row['task']} | {row['bf16']:.3f} | {row['fp16']:.3f} |"
        )
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    all_defs = load_task_defs(TASK_DEF)
    unknown = [task for task in tasks if task not in all_defs]
    if unknown:
        raise UserError(f"--tasks: '{unknown[0]}' is not a task of {TASK_DEF}")
    task_defs = {task: all_defs[task] for task in tasks}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "encoder").mkdir()
        model_path = encoder_path(args.tiny, work / "encoder")
        batches = task_batches(task_defs, tasks, args, model_path, work)
        model = MTDNNModel.from_encoder(model_path, task_defs)
    scales = {task: embedding_scale(model, batch_list[0]) for task, batch_list in batches.items()}
    ratios = method_ratios(model, task_defs, batches)
    cosines = precision_cosines(model, task_defs, batches)
    print(render(scales, ratios, cosines))
    document = {
        "encoder": "tiny random BERT" if args.tiny else "all-MiniLM-L6-v2",
        "settings": {
            "batches": args.batches,
            "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len,
            "tasks": tasks,
        },
        "embedding_norm": {task: {"token": s[0], "sentence": s[1]} for task, s in scales.items()},
        "delta_ratio_at_defaults": ratios,
        "inner_gradient_cosine_to_fp32": cosines,
    }
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return document


if __name__ == "__main__":
    main()
