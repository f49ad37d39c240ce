"""Run logs: JSONL metrics (one object per train window / evaluation), a text log, optional TensorBoard."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data_utils.errors import UserError

logger = logging.getLogger("mt_dnn")


def require_tensorboard() -> Any:
    """TensorBoard's ``SummaryWriter``; without the package, one ``UserError`` line saying how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            "(or pip install '.[tensorboard]'), or drop the flag"
        ) from None
    return SummaryWriter


class RunLog:
    """Appends to ``<out>/metrics.jsonl`` and mirrors scalars to TensorBoard when asked and installed."""

    def __init__(
        self, out: Path, tensorboard: bool = False, resume: bool = False, enabled: bool = True
    ) -> None:
        """``enabled=False`` (ranks other than 0) writes nothing and opens no file."""
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        # A resumed run continues its log; a fresh run into the same folder starts a new one.
        self._file = self.path.open("a" if resume else "w", encoding="utf-8")
        self._start = time.perf_counter()
        if tensorboard:
            self._writer = require_tensorboard()(log_dir=str(out / "tensorboard"))

    def _write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({**record, "time": round(time.perf_counter() - self._start, 3)}) + "\n")
        self._file.flush()

    def train(self, step: int, epoch: int, lr: float, stats: Mapping[str, Mapping[str, float]]) -> None:
        """One training window: ``stats[name][task]``, with ``name`` = ``loss`` and, when adversarial training
        is on, ``adv_loss``, ``delta_ratio``, ``adv_skipped`` (a count) and ``bregman``."""
        if not self.enabled:
            return
        self._write(
            {
                "type": "train",
                "step": step,
                "epoch": epoch,
                "lr": lr,
                **{k: dict(v) for k, v in stats.items()},
            }
        )
        logger.info(
            "step %d epoch %d lr %.3g %s",
            step,
            epoch,
            lr,
            " ".join(
                f"{name}:{task}={value:.4g}"
                for name, values in stats.items()
                for task, value in values.items()
            ),
        )
        if self._writer is not None:
            self._writer.add_scalar("train/lr", lr, step)
            for name, values in stats.items():
                for task, value in values.items():
                    self._writer.add_scalar(f"train/{name}/{task}", value, step)

    def eval(self, step: int, epoch: int, task: str, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self._write(
            {
                "type": "eval",
                "step": step,
                "epoch": epoch,
                "task": task,
                "split": split,
                "metrics": dict(metrics),
            }
        )
        logger.info(
            "step %d eval %s/%s %s",
            step,
            task,
            split,
            " ".join(f"{name}={value:.2f}" for name, value in metrics.items()),
        )
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(f"eval/{task}_{split}/{name}", value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._writer is not None:
            self._writer.close()
