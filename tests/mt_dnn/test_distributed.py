"""DDP on CPU (gloo, 2 processes): the same global batch gives the same weights as one process.

Dropout is off (encoder and heads), so one process with batch 2B and two ranks with batch B each compute the
same mean gradient; only the order of the floating-point sums differs. Each task's row count is a multiple of
the global batch, so no rank pads its last batch by wrapping around.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from mt_dnn.config import TrainConfig
from mt_dnn.distributed import Distributed, free_port, local_rank_environment, setup, teardown
from mt_dnn.model import MTDNNModel
from mt_dnn.trainer import Trainer
from tests.mt_dnn.conftest import make_tiny_run

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def deterministic_run(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> dict[str, Any]:
    run = make_tiny_run(
        tmp_path_factory.mktemp("ddp_run"), tiny_tokenizer_dir, n_train=64, encoder_overrides=NO_DROPOUT
    )
    # SGD: Adam divides by the root of the gradient's second moment, which turns the float noise on a parameter
    # whose true gradient is 0 (a ranking scorer's bias: softmax ignores a shift) into steps of size lr.
    return {**run, "dropout_p": 0.0, "epochs": 1, "batch_size": 8, "log_every_steps": 4, "optimizer": "sgd"}


def _rank_main(
    rank: int, world_size: int, port: int, config: dict[str, Any], out: str, until_step: int | None
) -> None:
    local_rank_environment(rank, world_size, port)
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    context = setup("cpu")
    try:
        trainer = Trainer(TrainConfig.from_dict(config), context)
        # Count DDP's gradient all-reduces (one call per bucket per synchronised backward).
        counter = {"calls": 0}
        trainer.train_module.register_comm_hook(counter, _counting_allreduce)
        trainer.train(until_step=until_step)
        state = {key: value.detach().clone() for key, value in trainer.model.state_dict().items()}
        torch.save(state, Path(out) / f"rank{rank}_state.pt")
        counts = {"allreduce_calls": counter["calls"], "steps": trainer.step}
        (Path(out) / f"rank{rank}_counts.json").write_text(json.dumps(counts))
    finally:
        teardown(context)


def _counting_allreduce(state, bucket):  # type: ignore[no-untyped-def] - DDP rejects other annotations
    state["calls"] += 1
    return default_hooks.allreduce_hook(None, bucket)


def all_reduces_per_step(out: Path) -> float:
    counts = json.loads((out / "rank0_counts.json").read_text())
    return counts["allreduce_calls"] / counts["steps"]


def run_on_ranks(
    world_size: int, config: dict[str, Any], out: Path, until_step: int | None = None
) -> list[dict[str, torch.Tensor]]:
    out.mkdir(parents=True, exist_ok=True)
    torch.multiprocessing.spawn(
        _rank_main,
        args=(world_size, free_port(), config, str(out), until_step),
        nprocs=world_size,
        join=True,
    )
    return [torch.load(out / f"rank{rank}_state.pt", weights_only=True) for rank in range(world_size)]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = {
        key: float((b[key].double() - value.double()).abs().max())
        for key, value in a.items()
        if value.numel()
    }
    largest = max(worst, key=worst.__getitem__)
    assert worst[largest] <= atol, f"{largest}: max |difference| {worst[largest]:.3g} > {atol}"


def test_two_ranks_equal_one_process_on_the_same_global_batch(
    deterministic_run: dict[str, Any], tmp_path: Path
) -> None:
    single = Trainer(TrainConfig.from_dict({**deterministic_run, "output_dir": str(tmp_path / "one")}))
    single.train()
    expected = single.model.state_dict()

    config = {**deterministic_run, "output_dir": str(tmp_path / "two"), "batch_size": 4}
    rank0, rank1 = run_on_ranks(2, config, tmp_path / "states")
    _assert_same_weights(rank0, rank1, atol=0.0)  # DDP keeps the replicas identical
    _assert_same_weights(expected, rank0, atol=2e-5)
    # Rank 0 alone wrote the checkpoints and the logs, and they hold the same weights.
    saved = MTDNNModel.load(tmp_path / "two" / "last").state_dict()
    _assert_same_weights(rank0, saved, atol=0.0)
    assert (tmp_path / "two" / "results.json").is_file() and (tmp_path / "two" / "metrics.jsonl").is_file()


def test_smart_with_bregman_on_two_ranks_equals_one_process(
    deterministic_run: dict[str, Any], tmp_path: Path
) -> None:
    """SMART's extra forwards and delta-only backwards do not upset DDP's reducer, and with the initial noise
    seeded per example the two ranks reach the one-process weights (Bregman teacher and accumulation on)."""
    # Micro-batches of 4 rows (1 process x 4, or 2 ranks x 2), two per optimizer step.
    smart = {
        "adv_train": True,
        "adv_epsilon": 1e-3,
        "adv_noise_var": 1e-3,
        "adv_k": 2,
        "grad_accumulation_step": 2,
    }
    single = Trainer(
        TrainConfig.from_dict(
            {**deterministic_run, **smart, "batch_size": 4, "output_dir": str(tmp_path / "one")}
        )
    )
    single.train()
    config = {
        **deterministic_run,
        **smart,
        "output_dir": str(tmp_path / "two"),
        "batch_size": 2,
    }
    rank0, rank1 = run_on_ranks(2, config, tmp_path / "states")
    _assert_same_weights(rank0, rank1, atol=0.0)
    _assert_same_weights(single.model.state_dict(), rank0, atol=2e-5)
    assert (tmp_path / "two" / "last" / "bregman_teacher.safetensors").is_file()


def test_freelb_on_two_ranks_equals_one_process_with_one_all_reduce_per_step(
    deterministic_run: dict[str, Any], tmp_path: Path
) -> None:
    """FreeLB's K backwards per micro-batch (and accumulation over 2 micro-batches) all-reduce once per
    optimizer step, like plain training; with its initial noise seeded per example, 2 ranks = 1 process."""
    freelb = {"adv_method": "freelb", "adv_k": 3, "adv_init_mag": 0.05, "grad_accumulation_step": 2}
    single = Trainer(
        TrainConfig.from_dict(
            {**deterministic_run, **freelb, "batch_size": 4, "output_dir": str(tmp_path / "one")}
        )
    )
    single.train()
    config = {**deterministic_run, **freelb, "output_dir": str(tmp_path / "two"), "batch_size": 2}
    rank0, rank1 = run_on_ranks(2, config, tmp_path / "states")
    _assert_same_weights(rank0, rank1, atol=0.0)
    _assert_same_weights(single.model.state_dict(), rank0, atol=2e-5)

    plain = {
        **deterministic_run,
        "output_dir": str(tmp_path / "plain"),
        "batch_size": 2,
        "grad_accumulation_step": 2,
    }
    run_on_ranks(2, plain, tmp_path / "plain_states")
    buckets = all_reduces_per_step(tmp_path / "plain_states")
    assert buckets >= 1 and all_reduces_per_step(tmp_path / "states") == buckets


def test_a_resumed_two_rank_run_equals_the_uninterrupted_one(
    deterministic_run: dict[str, Any], tmp_path: Path
) -> None:
    config = {**deterministic_run, "batch_size": 4, "epochs": 2, "optimizer": "adamw"}
    full = run_on_ranks(2, {**config, "output_dir": str(tmp_path / "full")}, tmp_path / "full_states")
    split = {**config, "output_dir": str(tmp_path / "split")}
    run_on_ranks(2, split, tmp_path / "first_states", until_step=11)  # mid-way through the first epoch
    resumed = run_on_ranks(2, {**split, "resume": True}, tmp_path / "resumed_states")
    _assert_same_weights(full[0], resumed[0], atol=1e-6)
    _assert_same_weights(resumed[0], resumed[1], atol=0.0)


def test_setup_without_torchrun_is_a_single_cpu_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    context = setup("cpu")
    assert context == Distributed(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    assert context.is_main and not context.enabled
