"""Peak memory for the benchmarks: CUDA's allocator statistics, or on the CPU the process's resident set
(Linux's high-water mark ``VmHWM``, which ``reset_peak_memory`` restarts; ``ru_maxrss`` where there is no
``/proc``)."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when measuring, so a benchmark's parent process and --help stay light
    import torch


def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak_memory(device: torch.device | str) -> float:
    """Start a new peak (CUDA: allocator stats; Linux: the resident-set high-water mark, by writing 5 to
    /proc/self/clear_refs) and return the memory in use now, in MB."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    # Where this cannot be written, the peak below may include what loading the model took.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    current = _proc_status_mb("VmRSS")
    return current if current is not None else _max_rss_mb()


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak allocated memory on CUDA, else the peak resident set of the process since it started or since
    the last ``reset_peak_memory``, in MB."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else _max_rss_mb()
