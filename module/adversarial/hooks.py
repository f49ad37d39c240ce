"""Forward hooks on the perturbed module, and replay of the random state (dropout masks) of a clean pass.

The perturbation is added to the *output* of one module (for an HF encoder, its word-embedding module), so
everything after it - position and token-type embeddings, LayerNorm, the encoder - runs exactly once on the
perturbed input. No parameter is ever written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["RngSnapshot", "add_to_output", "capture_output"]


def _single_tensor(output: Any, module: nn.Module) -> Tensor:
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the perturbed module {type(module).__name__} must return a single tensor, "
            f"got {type(output).__name__}"
        )
    return output


@dataclass
class CapturedOutput:
    """The perturbed module's output during a clean pass (detached); ``None`` until it has run."""

    value: Tensor | None = None
    calls: int = 0


@contextlib.contextmanager
def capture_output(module: nn.Module) -> Iterator[CapturedOutput]:
    """Record (detached) what ``module`` returns while the block runs; it must run exactly once."""
    captured = CapturedOutput()

    def hook(mod: nn.Module, args: Any, output: Any) -> None:
        captured.value = _single_tensor(output, mod).detach()
        captured.calls += 1

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
    if captured.calls != 1:
        raise RuntimeError(
            f"the perturbed module {type(module).__name__} ran {captured.calls} times in one forward pass; "
            "adversarial training needs a module that runs exactly once (e.g. the word embeddings)"
        )


@contextlib.contextmanager
def add_to_output(module: nn.Module, delta: Tensor) -> Iterator[None]:
    """While the block runs, ``module``'s output becomes ``output + delta`` (shapes must match exactly)."""

    def hook(mod: nn.Module, args: Any, output: Any) -> Tensor:
        output = _single_tensor(output, mod)
        if output.shape != delta.shape:
            raise ValueError(
                f"perturbation shape {tuple(delta.shape)} != "
                f"{type(mod).__name__} output {tuple(output.shape)}"
            )
        return output + delta.to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class RngSnapshot:
    """The CPU (and current accelerator) random state at one moment, to rerun a pass with the same dropout.

    ``replay()`` restores it inside a fork: the block sees the snapshot's state, and the global state after
    the block is what it was before (the replayed pass consumes nothing).
    """

    cpu: Tensor
    device: torch.device
    accelerator: Tensor | None = field(default=None)

    @classmethod
    def capture(cls, device: torch.device | str) -> RngSnapshot:
        device = torch.device(device)
        accelerator = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(cpu=torch.get_rng_state(), device=device, accelerator=accelerator)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        cuda_devices = [self.device] if self.accelerator is not None else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.set_rng_state(self.cpu)
            if self.accelerator is not None:
                torch.cuda.set_rng_state(self.accelerator, self.device)
            yield
