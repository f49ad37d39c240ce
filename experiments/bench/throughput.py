"""Training throughput: a minimal HF fine-tuning loop vs our trainer (plain and SMART), side by side.

On the same real rows (a seeded subsample of a demo task's train split, default banking77), the same
pretrained MiniLM-L6, batch size, learning-rate schedule and number of optimizer steps (one epoch), it times:

- ``hf loop``: what a user writes from the transformers docs: ``AutoModelForSequenceClassification``,
  ``torch.optim.AdamW``, a linear schedule with warm-up, ``DataLoader(shuffle=True)`` with
  ``DataCollatorWithPadding`` (dynamic padding to the batch's longest row);
- ``ours plain``: ``Trainer`` (what ``train.py`` runs) with its defaults: length-bucketed batches padded to a
  multiple of 8, fused AdamW, device-side loss accumulation;
- ``ours SMART``: the same with ``--adv_train --bregman_mu 0`` (SMART K=1, the adversarial term alone), and
  ``ours SMART+Bregman`` with ``--adv_train`` (the paper's SMART) unless ``--no_bregman_run``.

Each mode runs in its own process (its peak resident memory is its own; on CUDA the peak allocated memory).
Time is the training steps only (our trainer's evaluation and checkpoint time is reported by the trainer and
subtracted; tokenisation is done before the clock starts in every mode). It prints examples/s, the padding
fraction of the training batches, peak memory, the dev accuracy of each run (speed must not be bought with
quality) and the ratios to the HF loop.

    python experiments/bench/throughput.py [--data_dir data/demo] [--task banking77] [--n_train 2000]
        [--n_dev 500] [--batch_size 32] [--learning_rate 1e-4] [--threads 2] [--device cpu] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.bench.memory import peak_memory_mb  # noqa: E402
from experiments.common import minilm_path, sample_rows  # noqa: E402

MAX_SEQ_LEN = 128
WARMUP = 0.1
WEIGHT_DECAY = 0.01


def model_path(args: dict[str, Any]) -> str:
    return args["model"] or minilm_path()


def padding_fraction(masks: list[Any]) -> float:
    real = sum(int(mask.sum()) for mask in masks)
    total = sum(mask.numel() for mask in masks)
    return 1.0 - real / total


# ---------------------------------------------------------------------------------------------- HF loop


def run_hf_loop(
    args: dict[str, Any], labels: list[str], train: list[dict], dev: list[dict]
) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        get_linear_schedule_with_warmup,
        set_seed,
    )

    torch.set_num_threads(args["threads"])
    set_seed(args["seed"])
    device = torch.device(args["device"])
    tokenizer = AutoTokenizer.from_pretrained(model_path(args))
    label_ids = {label: index for index, label in enumerate(labels)}

    def encode(rows: list[dict]) -> list[dict[str, Any]]:
        encoded = tokenizer([row["premise"] for row in rows], truncation=True, max_length=MAX_SEQ_LEN)
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": label_ids[row["label"]]}
            for ids, mask, row in zip(encoded["input_ids"], encoded["attention_mask"], rows, strict=True)
        ]

    train_features, dev_features = encode(train), encode(dev)
    model = AutoModelForSequenceClassification.from_pretrained(model_path(args), num_labels=len(labels))
    model = model.to(device)
    collator = DataCollatorWithPadding(tokenizer)
    loader = DataLoader(train_features, batch_size=args["batch_size"], shuffle=True, collate_fn=collator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args["learning_rate"], weight_decay=WEIGHT_DECAY)
    steps = len(loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(WARMUP * steps), steps)

    masks = []
    model.train()
    start = time.perf_counter()
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        masks.append(batch["attention_mask"])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in DataLoader(dev_features, batch_size=64, collate_fn=collator):
            batch = {key: value.to(device) for key, value in batch.items()}
            correct += int((model(**batch).logits.argmax(-1) == batch["labels"]).sum())
    return {
        "seconds": seconds,
        "steps": steps,
        "examples": len(train_features),
        "padding": padding_fraction(masks),
        "peak_mb": peak_memory_mb(args["device"]),
        "dev_acc": 100.0 * correct / len(dev_features),
    }


# ---------------------------------------------------------------------------------------------- ours


def run_ours(
    args: dict[str, Any], cache_dir: str, task_def_path: str, flags: dict[str, Any]
) -> dict[str, Any]:
    import torch

    from mt_dnn.config import TrainConfig
    from mt_dnn.trainer import Trainer

    torch.set_num_threads(args["threads"])
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_dict(
            dict(
                task_def=task_def_path,
                data_dir=cache_dir,
                train_datasets=[args["task"]],
                init_checkpoint=model_path(args),
                output_dir=out,
                epochs=1,
                batch_size=args["batch_size"],
                learning_rate=args["learning_rate"],
                warmup=WARMUP,
                weight_decay=WEIGHT_DECAY,
                seed=args["seed"],
                device=args["device"],
                progress=False,
                log_every_steps=0,
                **flags,
            )
        )
        trainer = Trainer(config)
        results = trainer.train()
        trainer.sampler.set_epoch(0)
        masks = [batch.attention_mask for batch in trainer.loader]
    task = args["task"]
    return {
        "seconds": results["train_seconds"] - results["eval_seconds"] - results["checkpoint_seconds"],
        "steps": results["steps"],
        "examples": sum(len(mask) for mask in masks),
        "padding": padding_fraction(masks),
        "peak_mb": peak_memory_mb(args["device"]),
        "dev_acc": results["final_eval"][f"{task}_dev"]["acc"],
    }


def prepare_cache(args: dict[str, Any], work: Path, train: list[dict], dev: list[dict]) -> tuple[str, str]:
    """The same rows as JSONL, the demo task's definition, and our token-id cache of them."""
    import yaml

    from data_utils.prepro import preprocess
    from mt_dnn.tasks import load_task_defs

    task = args["task"]
    entry = yaml.safe_load((ROOT / "experiments/demo/demo_task_def.yml").read_text(encoding="utf-8"))[task]
    entry["split_names"] = ["train", "dev"]
    task_def_path = work / "task.yml"
    task_def_path.write_text(yaml.safe_dump({task: entry}), encoding="utf-8")
    for split, rows in (("train", train), ("dev", dev)):
        (work / f"{task}_{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    preprocess(
        load_task_defs(task_def_path),
        work,
        model_path(args),
        max_seq_len=MAX_SEQ_LEN,
        cache_name="cache",
        progress=False,
    )
    return str(work / "cache"), str(task_def_path)


def in_subprocess(function: Any, *arguments: Any) -> dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, arguments)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(ROOT / "data" / "demo"))
    parser.add_argument("--task", default="banking77")
    parser.add_argument("--n_train", type=int, default=2000)
    parser.add_argument("--n_dev", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default="", help="an HF encoder folder (default: the MiniLM-L6 wheel's)")
    parser.add_argument("--no_smart_runs", action="store_true", help="time the HF loop and ours plain only")
    parser.add_argument("--no_bregman_run", action="store_true", help="skip the SMART+Bregman run")
    parsed = parser.parse_args(argv)
    args = vars(parsed)

    data = Path(parsed.data_dir)
    train_file, dev_file = data / f"{parsed.task}_train.jsonl", data / f"{parsed.task}_dev.jsonl"
    if not train_file.is_file() or not dev_file.is_file():
        raise SystemExit(
            f"{train_file}: not found; run python experiments/demo/prepare.py --output_dir {data} "
            f"--tasks {parsed.task}"
        )
    train = sample_rows(train_file, parsed.n_train, parsed.seed)
    dev = sample_rows(dev_file, parsed.n_dev, parsed.seed)
    labels = sorted({row["label"] for row in train} | {row["label"] for row in dev})

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir, task_def_path = prepare_cache(args, Path(tmp), train, dev)
        results["hf loop"] = in_subprocess(run_hf_loop, args, labels, train, dev)
        results["ours plain"] = in_subprocess(run_ours, args, cache_dir, task_def_path, {})
        if not parsed.no_smart_runs:
            smart = {"adv_train": True, "bregman_mu": 0.0}
            results["ours SMART"] = in_subprocess(run_ours, args, cache_dir, task_def_path, smart)
            if not parsed.no_bregman_run:
                results["ours SMART+Bregman"] = in_subprocess(
                    run_ours, args, cache_dir, task_def_path, {"adv_train": True}
                )

    print(
        f"{parsed.task}: {len(train)} train rows, {len(dev)} dev rows, batch {parsed.batch_size}, one epoch, "
        f"{parsed.model or 'MiniLM-L6'}, {parsed.device} ({parsed.threads} threads)"
    )
    print(
        f"{'mode':<20} {'steps':>5} {'s':>7} {'ex/s':>7} {'s/step':>7} {'padding':>8} {'peak MB':>8} "
        f"{'dev acc':>8}"
    )
    for name, row in results.items():
        row["examples_per_s"] = row["examples"] / row["seconds"]
        row["seconds_per_step"] = row["seconds"] / row["steps"]
        print(
            f"{name:<20} {row['steps']:>5} {row['seconds']:>7.1f} {row['examples_per_s']:>7.1f} "
            f"{row['seconds_per_step']:>7.3f} {100 * row['padding']:>7.1f}% {row['peak_mb']:>8.0f} "
            f"{row['dev_acc']:>8.1f}"
        )
    hf, plain = results["hf loop"], results["ours plain"]
    print(
        f"\nours plain / hf loop examples/s: {plain['examples_per_s'] / hf['examples_per_s']:.2f}x "
        "(target >= 1.4)"
    )
    for name in ("ours SMART", "ours SMART+Bregman"):
        if name in results:
            ratio = results[name]["seconds_per_step"] / plain["seconds_per_step"]
            print(
                f"{name} / ours plain step time: {ratio:.2f}x"
                + (" (target <= 2.7)" if name == "ours SMART" else "")
            )
    if not math.isclose(hf["steps"], plain["steps"]):
        print(f"note: step counts differ (hf {hf['steps']}, ours {plain['steps']})")
    return results


if __name__ == "__main__":
    main()
