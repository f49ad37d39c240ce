"""What the task-kind tests share to train a tiny encoder through train.py: its flags, the methods tried and
the losses it logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

every_method = pytest.mark.parametrize(
    "method", [[], ["--adv_train"], ["--adv_method", "freelb"]], ids=["plain", "smart", "freelb"]
)
"""Plain training, SMART and one method of the ``--adv_method`` family."""


def train_flags(run: dict[str, Any], task: str, out: Path, *extra: str) -> list[str]:
    """train.py's flags for ``task`` of ``run`` (``root/tasks.yml``, the ``data/tiny`` cache, ``encoder``)."""
    return [
        "--task_def", str(run["root"] / "tasks.yml"),
        "--data_dir", str(run["data"] / "tiny"),
        "--init_checkpoint", str(run["encoder"]),
        "--train_datasets", task,
        "--output_dir", str(out),
        "--epochs", "4",
        "--batch_size", "8",
        "--learning_rate", "2e-3",
        "--log_every_steps", "4",
        "--seed", "3",
        "--no-progress",
        *extra,
    ]  # fmt: skip


def train_losses(out: Path, task: str) -> list[float]:
    """The task's logged training losses, in order."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"][task] for record in records if record["type"] == "train"]
