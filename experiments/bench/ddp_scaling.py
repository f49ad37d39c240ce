"""DDP scaling on one machine: the same run (same rows, global batch, steps) on 1 process vs N processes.

One process trains with ``--batch_size B*N``; N processes (gloo on CPU, nccl on GPUs; started like torchrun,
one rank each) train with ``--batch_size B`` each, so every optimizer step sees the same global batch. On CPU
the cores are shared: 1 process gets ``--threads`` threads, each of the N ranks ``--threads / N``. It prints
the training time (evaluation and checkpoints excluded), examples/s and the ratio N-process / 1-process,
plain and (unless ``--no_smart``) with ``--adv_train``.

    python experiments/bench/ddp_scaling.py [--data_dir data/demo] [--task banking77] [--n_train 1024]
        [--batch_size 16] [--world_size 2] [--threads 2] [--device cpu] [--model DIR] [--no_smart]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.bench.throughput import model_path, prepare_cache, sample_rows  # noqa: E402
from mt_dnn.distributed import free_port  # noqa: E402


def _rank_main(rank: int, world_size: int, port: int, job: dict[str, Any], results: Any) -> None:
    import torch

    from mt_dnn.config import TrainConfig
    from mt_dnn.distributed import local_rank_environment, setup, teardown
    from mt_dnn.trainer import Trainer

    local_rank_environment(rank, world_size, port)
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(max(1, job["threads"] // world_size))
    context = setup(job["device"])
    try:
        summary = Trainer(TrainConfig.from_dict(job["config"]), context).train()
    finally:
        teardown(context)
    if rank == 0:
        results.put(summary)


def run(job: dict[str, Any], world_size: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(
        _rank_main, args=(world_size, free_port(), job, queue), nprocs=world_size, start_method="spawn"
    )
    summary = queue.get()
    seconds = summary["train_seconds"] - summary["eval_seconds"] - summary["checkpoint_seconds"]
    return {"seconds": seconds, "steps": summary["steps"]}


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(ROOT / "data" / "demo"))
    parser.add_argument("--task", default="banking77")
    parser.add_argument("--n_train", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=16, help="per rank")
    parser.add_argument("--world_size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads shared by all ranks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no_smart", action="store_true")
    parsed = parser.parse_args(argv)
    args = {**vars(parsed), "n_dev": 64}

    data = Path(parsed.data_dir)
    train = sample_rows(data / f"{parsed.task}_train.jsonl", parsed.n_train, parsed.seed)
    dev = sample_rows(data / f"{parsed.task}_dev.jsonl", 64, parsed.seed)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir, task_def_path = prepare_cache(args, Path(tmp), train, dev)
        variants = {"plain": {}} if parsed.no_smart else {"plain": {}, "SMART": {"adv_train": True}}
        for name, flags in variants.items():
            for world_size in (1, parsed.world_size):
                config = {
                    "task_def": task_def_path,
                    "data_dir": cache_dir,
                    "train_datasets": [parsed.task],
                    "init_checkpoint": model_path(args),
                    "output_dir": str(Path(tmp) / f"{name}_{world_size}"),
                    "epochs": 1,
                    "batch_size": parsed.batch_size * parsed.world_size // world_size,
                    "seed": parsed.seed,
                    "progress": False,
                    "log_every_steps": 0,
                    **flags,
                }
                job = {"config": config, "threads": parsed.threads, "device": parsed.device}
                results[f"{name} x{world_size}"] = run(job, world_size)

    print(
        f"{parsed.task}: {len(train)} rows, global batch {parsed.batch_size * parsed.world_size}, one epoch, "
        f"{parsed.device}, {parsed.threads} threads shared"
    )
    print(f"{'run':<12} {'steps':>5} {'s':>8} {'ex/s':>8}")
    for name, row in results.items():
        row["examples_per_s"] = len(train) / row["seconds"]
        print(f"{name:<12} {row['steps']:>5} {row['seconds']:>8.1f} {row['examples_per_s']:>8.1f}")
    for name in ("plain", "SMART"):
        one, many = results.get(f"{name} x1"), results.get(f"{name} x{parsed.world_size}")
        if one and many:
            print(
                f"{name}: {parsed.world_size} processes / 1 process examples/s = "
                f"{many['examples_per_s'] / one['examples_per_s']:.2f}x"
            )
    return results


if __name__ == "__main__":
    main()
