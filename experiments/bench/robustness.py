"""Accuracy (or the task's first metric) of fine-tuned models under a PGD attack on the word embeddings, over
a grid of radii, one curve per method; writes ``robustness.json`` and ``robustness.png``.

    # the models: one per method, trained by the quality harness with their checkpoints kept
    python experiments/quality/run_grid.py --grid experiments/quality/grid_robustness.yml \\
        --output_dir out/robust
    python experiments/bench/robustness.py --results out/robust/results.jsonl --task banking77 \\
        --output_dir out/robust/attack [--radii 0,0.01,0.02,0.05,0.1] [--steps 5] [--max_rows 300]
    # or any checkpoints: --checkpoint plain=DIR --checkpoint smart=DIR --split_dir DATA/banking77_test

With ``--results``, every row of the task whose ``best/`` checkpoint was kept is attacked on the split the run
was scored on (``--split test|dev``, from the run's own ``--data_dir``); several seeds of one method give its
mean curve (each run's own curve is in the JSON too); ``--regime`` picks the grid's regime (default single).
Run it again with the same attack settings after a kill, or after more models were trained: the targets
already attacked in ``robustness.json`` are taken from it, not redone (a file made with other settings is
replaced).

The attack is ``mt_dnn.robustness``: eval mode, PGD against the gold labels, l2 per token by default, radii
printed also as a fraction of the mean norm of a word-embedding row. ``robustness.json`` is what
``experiments/quality/report.py --robustness`` plots.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_utils.atomic import atomic_write_text  # noqa: E402
from data_utils.errors import UserError, exit_on_user_error  # noqa: E402

OUTPUT_JSON = "robustness.json"
OUTPUT_PNG = "robustness.png"


@dataclass(frozen=True)
class Target:
    """One model to attack: the method it was trained with, its checkpoint and the split folder to score."""

    method: str
    checkpoint: Path
    split_dir: Path
    seed: int | None = None


def _radii(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not value >= 0 for value in values) or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected increasing radii >= 0, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", type=Path, help="a quality-grid results.jsonl whose runs kept best/")
    source.add_argument(
        "--checkpoint", action="append", metavar="METHOD=DIR", help="a checkpoint to attack (repeatable)"
    )
    parser.add_argument("--task", required=True, help="the task to score (a classification or ranking task)")
    parser.add_argument("--split_dir", type=Path, help="with --checkpoint: the token-id cache split folder")
    parser.add_argument(
        "--split", choices=("test", "dev"), default="test", help="with --results (default test)"
    )
    parser.add_argument("--regime", default="single", help="with --results: the grid regime (default single)")
    parser.add_argument("--radii", type=_radii, default=_radii("0,0.01,0.02,0.05,0.1"))
    parser.add_argument("--steps", type=int, default=5, help="PGD ascent steps (default 5)")
    parser.add_argument("--p_norm", choices=("l2", "inf", "l1"), default="l2")
    parser.add_argument("--norm_level", choices=("token", "sentence"), default="token")
    parser.add_argument("--max_rows", type=int, default=0, help="a seeded sample of the split (0: all rows)")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--output_dir", type=Path, required=True)
    return parser


def targets_from_results(path: Path, task: str, split: str, regime: str) -> list[Target]:
    from experiments.quality.results import read_results
    from mt_dnn.model import is_checkpoint

    targets = []
    for row in read_results(path):
        checkpoint = Path(row.out_dir) / "best"
        if row.task != task or row.regime != regime or not is_checkpoint(checkpoint):
            continue
        data_dir = Path(row.train_argv[row.train_argv.index("--data_dir") + 1])
        targets.append(Target(row.method, checkpoint, data_dir / f"{task}_{split}", row.seed))
    if not targets:
        raise UserError(
            f"{path}: no {regime} run of task '{task}' with a kept best/ checkpoint "
            "(set the grid key 'keep_checkpoints: true')"
        )
    return targets


def targets_from_flags(checkpoints: list[str], split_dir: Path | None) -> list[Target]:
    if split_dir is None:
        raise UserError("--checkpoint needs --split_dir (the token-id cache folder of the split to score)")
    targets = []
    for text in checkpoints:
        method, sep, folder = text.partition("=")
        if not sep or not method or not folder:
            raise UserError(f"--checkpoint {text!r}: expected METHOD=DIR")
        targets.append(Target(method, Path(folder), split_dir))
    return targets


def attack_one(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """The target's metrics at every radius (and what was attacked), as a JSON-ready dict."""
    from data_utils.cache import load_split
    from data_utils.dataset import Collator, TaskDataset
    from data_utils.enums import TaskType
    from mt_dnn.model import MTDNNModel, is_checkpoint, load_tokenizer, quiet_loading
    from mt_dnn.robustness import EmbeddingAttack, embedding_norm, robustness_curve

    if not is_checkpoint(target.checkpoint):
        raise UserError(f"{target.checkpoint}: not a checkpoint (no mtdnn.json)")
    with quiet_loading():
        model = MTDNNModel.load(target.checkpoint, map_location=args.device)
    if args.task not in model.task_defs:
        raise UserError(
            f"{target.checkpoint}: no task '{args.task}' (its tasks: {', '.join(model.task_defs)})"
        )
    task_def = model.task_defs[args.task]
    if task_def.task_type is TaskType.MASK_LM:
        raise UserError(f"{target.checkpoint}: task '{args.task}' is mask_lm: the attack needs gold labels")
    split = load_split(target.split_dir)
    if not split.has_labels:
        raise UserError(
            f"{target.split_dir}: the split has no labels to attack (use a labelled dev/test split)"
        )
    dataset = TaskDataset(task_def, split)
    if args.max_rows and args.max_rows < len(dataset):
        rows = np.random.default_rng(args.seed).choice(len(dataset), args.max_rows, replace=False)
        dataset = dataset.subset(np.sort(rows))
    tokenizer = load_tokenizer(target.checkpoint)
    collator = Collator({task_def.name: task_def}, pad_token_id=tokenizer.pad_token_id or 0)
    attacks = [
        EmbeddingAttack(radius, steps=args.steps, p_norm=args.p_norm, norm_level=args.norm_level)
        for radius in args.radii
    ]
    start = time.perf_counter()
    curve = robustness_curve(
        model, dataset, collator, attacks, batch_size=args.batch_size, device=args.device
    )
    metric = task_def.metrics[0].value
    return {
        "method": target.method,
        "seed": target.seed,
        "checkpoint": str(target.checkpoint),
        "split_dir": str(target.split_dir),
        "rows": len(dataset),
        "metric": metric,
        "embedding_norm": embedding_norm(model),
        "scores": [point.metrics[metric] for point in curve],
        "metrics": [point.metrics for point in curve],
        "skipped_batches": [point.skipped_batches for point in curve],  # non-finite attack gradient: clean
        "seconds": round(time.perf_counter() - start, 1),
    }


def mean_curves(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per method, the mean over its runs of the metric at each radius (methods in first-seen order)."""
    by_method: dict[str, list[list[float]]] = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run["scores"])
    return {method: np.mean(np.asarray(curves), axis=0).tolist() for method, curves in by_method.items()}


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.max_rows < 0:
        raise UserError("--steps and --batch_size must be >= 1 and --max_rows >= 0")
    import torch

    from experiments.quality import plots
    from experiments.quality.robustness import load_robustness

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.results is not None:
        targets = targets_from_results(args.results, args.task, args.split, args.regime)
    else:
        targets = targets_from_flags(args.checkpoint, args.split_dir)
    settings = {
        "task": args.task, "radii": list(args.radii), "kind": "pgd", "steps": args.steps,
        "step_size": "2.5 * radius / steps", "p_norm": args.p_norm, "norm_level": args.norm_level,
        "max_rows": args.max_rows, "sample_seed": args.seed,
    }  # fmt: skip
    json_path = args.output_dir / OUTPUT_JSON
    done = finished_runs(json_path, settings)
    runs: list[dict[str, Any]] = []
    for target in targets:
        run = done.get((target.method, str(target.checkpoint), str(target.split_dir)))
        if run is None:
            run = attack_one(target, args)
        runs.append(run)
        args.output_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to write
        # Keys in order (methods as trained, plain first); a kill loses at most one run.
        atomic_write_text(json_path, json.dumps(curves_document(settings, runs), indent=2) + "\n")
        seed = "" if target.seed is None else f" seed {target.seed}"
        scores = "  ".join(f"{score:.1f}" for score in run["scores"])
        print(
            f"{target.method}{seed}: {run['metric']} {scores}  ({run['rows']} rows, {run['seconds']:.0f} s)"
        )
    document = curves_document(settings, runs)
    curves = load_robustness(json_path)
    plots.robustness(curves, plots.colours(list(curves.methods)), args.output_dir / OUTPUT_PNG)
    print_table(document)
    print(f"wrote {json_path} and {args.output_dir / OUTPUT_PNG}")
    return document


def curves_document(settings: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``robustness.json``: the mean curve per method (the report's keys), the settings and every run."""
    return {
        "task": settings["task"],
        "metric": runs[0]["metric"],
        "radii": settings["radii"],
        "methods": mean_curves(runs),
        "embedding_norm": runs[0]["embedding_norm"],
        "rows": runs[0]["rows"],
        "settings": settings,
        "runs": runs,
    }


RUN_KEYS = ("method", "checkpoint", "split_dir", "rows", "metric", "embedding_norm", "scores", "seconds")


def finished_runs(path: Path, settings: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The runs of an earlier ``robustness.json`` made with the same settings, by (method, checkpoint, split
    folder); an unreadable file, or one made with other settings, gives none (it is then replaced)."""
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or document.get("settings") != settings:
        return {}
    runs = [run for run in document.get("runs", []) if isinstance(run, dict) and set(RUN_KEYS) <= set(run)]
    return {(run["method"], run["checkpoint"], run["split_dir"]): run for run in runs}


def print_table(document: dict[str, Any]) -> None:
    norm = document["embedding_norm"]
    radii = document["radii"]
    header = "".join(f"{radius:>9g}" for radius in radii)
    settings = document["settings"]
    print(f"\n{document['task']} {document['metric']} vs radius ({settings['p_norm']} per "
          f"{settings['norm_level']}, PGD {settings['steps']} steps, {document['rows']} rows; mean "
          f"word-embedding norm {norm:.3f})")  # fmt: skip
    print(f"{'method':<12}{header}")
    print(f"{'(x norm)':<12}" + "".join(f"{radius / norm:>9.3f}" for radius in radii))
    for method, scores in document["methods"].items():
        print(f"{method:<12}" + "".join(f"{score:>9.1f}" for score in scores))


if __name__ == "__main__":
    main()
