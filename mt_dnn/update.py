"""One optimizer update that is skipped when its step was not finite, and the count of skipped updates.

Where the skip is decided is fixed once per run (``SkipBy``): under fp16 the ``GradScaler`` decides (an
overflow is routine there: it skips and lowers its scale); a fused AdamW skips inside its kernel, reading
``found_inf`` on the device as it does under a ``GradScaler``, so a step needs no host synchronisation;
any other optimizer is stepped or not after reading the verdict on the host.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import Tensor

__all__ = ["GuardedUpdate", "SkipBy", "SkippedSteps", "skip_mode", "skips_on_device"]


class SkipBy(StrEnum):
    SCALER = "scaler"  # fp16: the GradScaler's own overflow check
    KERNEL = "kernel"  # a fused optimizer: found_inf, on the device
    HOST = "host"  # the verdict read on the host


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Fused Adam/AdamW take a ``found_inf`` tensor and skip the update in the kernel."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        group.get("fused") for group in optimizer.param_groups
    )


def skip_mode(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> SkipBy:
    if scaler.is_enabled():
        return SkipBy.SCALER
    return SkipBy.KERNEL if skips_on_device(optimizer) else SkipBy.HOST


class GuardedUpdate:
    """``step(applied)``: the optimizer's update, or none when ``applied`` (a bool tensor) is False."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        self.optimizer = optimizer
        self.scaler = scaler
        self.mode = skip_mode(optimizer, scaler)

    def step(self, applied: Tensor) -> None:
        if self.mode is SkipBy.SCALER:
            self.scaler.step(self.optimizer)  # skips an overflowed step itself (``applied`` is not needed)
            self.scaler.update()
        elif self.mode is SkipBy.KERNEL:
            self._kernel_step(found_inf=(~applied).float())
        elif bool(applied):
            self.optimizer.step()

    def _kernel_step(self, found_inf: Tensor) -> None:
        """The hand-over torch's fused optimizers read (``GradScaler.step`` makes the same one): attributes
        present for the one call and removed after it, whatever happens."""
        optimizer = self.optimizer
        optimizer.grad_scale = None  # type: ignore[attr-defined]
        optimizer.found_inf = found_inf  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale  # type: ignore[attr-defined]


class SkippedSteps:
    """Counts of skipped updates kept on the device: the total, and the longest run in a row."""

    def __init__(self, device: torch.device, total: int = 0) -> None:
        self.device = device
        self.restart(total)

    def restart(self, total: int) -> None:
        """Start counting from ``total`` (a resumed run's); a run in a row does not carry over."""
        self.total = torch.tensor(total, device=self.device)
        self.in_a_row = torch.zeros((), dtype=torch.long, device=self.device)
        self.worst_run = torch.zeros((), dtype=torch.long, device=self.device)
        self._reported = total

    def update(self, applied: Tensor) -> None:
        skipped = (~applied).long()
        self.total += skipped
        self.in_a_row = (self.in_a_row + 1) * skipped
        self.worst_run = torch.maximum(self.worst_run, self.in_a_row)

    def read(self) -> tuple[int, int]:
        """(total, the longest run in a row so far): one host sync."""
        total, worst_run = (int(value) for value in torch.stack([self.total, self.worst_run]).tolist())
        return total, worst_run

    def read_new(self) -> tuple[int, int]:
        """(skipped since the last ``read_new``, the longest run in a row so far)."""
        total, worst_run = self.read()
        new, self._reported = total - self._reported, total
        return new, worst_run
