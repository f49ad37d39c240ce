"""Optimizer and learning-rate schedule for a run."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

from mt_dnn.config import OptimizerName, SchedulerName, TrainConfig

# Our schedule names -> transformers' (each warms up linearly over `warmup` of the steps first).
_HF_SCHEDULES = {
    SchedulerName.LINEAR: "linear",
    SchedulerName.COSINE: "cosine",
    SchedulerName.CONSTANT: "constant_with_warmup",
}


_FUSED_ADAMW_DEVICES = frozenset({"cuda", "cpu"})


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Decay matrices only: biases and LayerNorm weights (every parameter with < 2 dims) get none."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    lr = config.learning_rate
    if config.optimizer is OptimizerName.ADAMW:
        # The fused kernel (CUDA and CPU) is one pass over all parameters: on 2 CPU threads it updates
        # MiniLM-L6's 22.7M parameters about 2.5x faster than the default foreach path.
        fused = True if device.type in _FUSED_ADAMW_DEVICES else None
        return torch.optim.AdamW(groups, lr=lr, eps=config.adam_eps, fused=fused)
    if config.optimizer is OptimizerName.ADAM:
        return torch.optim.Adam(groups, lr=lr, eps=config.adam_eps)
    if config.optimizer is OptimizerName.ADAMAX:
        return torch.optim.Adamax(groups, lr=lr, eps=config.adam_eps)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> LRScheduler:
    return get_scheduler(
        _HF_SCHEDULES[config.scheduler_type],
        optimizer,
        num_warmup_steps=int(config.warmup * total_steps),
        num_training_steps=total_steps,
    )
