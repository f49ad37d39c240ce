"""Processes and devices for a run: one process, or torchrun's world (``RANK``/``LOCAL_RANK``/``WORLD_SIZE``).

``torchrun --nproc_per_node=N train.py ...`` starts N processes; each calls ``setup`` and gets its rank, its
device (``cuda:LOCAL_RANK`` on GPUs, the CPU otherwise) and a process group (nccl on GPUs, gloo on CPU).
mt-dnn's ``--local_rank`` flag is accepted and ignored: torchrun's environment says the same.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from data_utils.errors import UserError

__all__ = ["Distributed", "free_port", "local_rank_environment", "resolve_device", "setup", "teardown"]


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r}: expected an integer") from None


def setup(device: str = "auto") -> Distributed:
    """Read torchrun's environment, pick the device, and join the process group when there are several ranks.

    ``device``: ``auto`` (``cuda:LOCAL_RANK`` when CUDA is available, else the CPU), ``cpu``, or ``cuda``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    chosen = resolve_device(device, local_rank if world_size > 1 else None)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return Distributed(rank=rank, local_rank=local_rank, world_size=world_size, device=chosen)


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``--device``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; a CUDA
    device always with its index (a torchrun rank's ``local_rank``, else N or 0). Reads only: ``setup``
    selects it."""
    use_cuda = torch.cuda.is_available() if name == "auto" else name.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available (use --device cpu)")
    if not use_cuda:
        return torch.device("cpu") if name == "auto" else torch.device(name)
    if local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device("cuda", 0 if name == "auto" else (torch.device(name).index or 0))


def teardown(context: Distributed) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port free on this machine right now (for a one-machine world started without torchrun)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_rank_environment(rank: int, world_size: int, port: int) -> None:
    """Set what torchrun would set for ``rank`` of a one-machine world (benchmarks and tests spawn ranks)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
