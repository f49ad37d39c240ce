"""The benchmarks still run (on a tiny random encoder, one step): they must not rot between measurements."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from experiments.bench import adv_speed, throughput
from tests.conftest import TINY_WORDS
from tests.mt_dnn.conftest import make_tiny_run

DEMO_TASK_DEF = Path(__file__).resolve().parents[2] / "experiments" / "demo" / "demo_task_def.yml"


def write_banking_rows(data: Path, sizes: dict[str, int]) -> None:
    """banking77-shaped JSONL (the demo task's label names, tiny-vocabulary text) for ``split: rows``."""
    labels = yaml.safe_load(DEMO_TASK_DEF.read_text(encoding="utf-8"))["banking77"]["labels"][:4]
    rng = random.Random(0)
    data.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        rows = [
            {
                "uid": f"{split}{i}",
                "label": rng.choice(labels),
                "premise": " ".join(rng.sample(TINY_WORDS, 6)),
            }
            for i in range(n)
        ]
        (data / f"banking77_{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def tiny_run(tmp_path: Path, tiny_tokenizer_dir: Path) -> dict[str, Any]:
    return make_tiny_run(tmp_path / "tiny", tiny_tokenizer_dir)


def test_adv_speed_runs_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    seconds = adv_speed.main(
        ["--tiny", "--steps", "1", "--warmup", "0", "--threads", "1", "--batch_size", "4", "--seq_len", "16"]
    )
    assert {mode.name for mode in adv_speed.MODES} <= set(seconds)
    assert all(value > 0 for value in seconds.values())
    printed = capsys.readouterr().out
    assert "x plain" in printed and "SMART K=1 + Bregman" in printed


def test_throughput_runs_on_a_tiny_encoder(tmp_path: Path, tiny_run: dict[str, Any]) -> None:
    """HF loop vs ours plain vs ours SMART, end to end in subprocesses, on banking77-shaped rows."""
    data = tmp_path / "demo"
    write_banking_rows(data, {"train": 24, "dev": 8})
    results = throughput.main(
        [
            "--data_dir", str(data), "--model", tiny_run["init_checkpoint"], "--n_train", "24", "--n_dev", "8",
            "--batch_size", "8", "--threads", "1", "--no_bregman_run",
        ]
    )  # fmt: skip
    assert set(results) == {"hf loop", "ours plain", "ours SMART"}
    for row in results.values():
        assert row["steps"] == 3 and row["examples"] == 24
        assert row["seconds"] > 0 and 0 <= row["padding"] < 1 and row["peak_mb"] > 0
        assert 0 <= row["dev_acc"] <= 100


def test_ddp_scaling_runs_one_and_two_processes(tmp_path: Path, tiny_run: dict[str, Any]) -> None:
    from experiments.bench import ddp_scaling

    data = tmp_path / "demo"
    write_banking_rows(data, {"train": 32, "dev": 8})
    results = ddp_scaling.main(
        ["--data_dir", str(data), "--model", tiny_run["init_checkpoint"], "--n_train", "32", "--batch_size", "4",
         "--no_smart"]
    )  # fmt: skip
    assert set(results) == {"plain x1", "plain x2"}
    assert results["plain x1"]["steps"] == results["plain x2"]["steps"] == 4
    assert all(row["seconds"] > 0 for row in results.values())
