"""Optimizer, lr scaling rule and per-step lr schedules with warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig, SchedConfig


def effective_lr(cfg: OptimConfig, global_batch: int) -> float:
    """An explicit --lr wins; otherwise lr_base scaled from lr_base_batch to the global batch."""
    if cfg.lr is not None:
        return cfg.lr
    ratio = global_batch / cfg.lr_base_batch
    if cfg.lr_scale == "linear":
        return cfg.lr_base * ratio
    if cfg.lr_scale == "sqrt":
        return cfg.lr_base * math.sqrt(ratio)
    return cfg.lr_base


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    if not no_decay_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            # 1-d tensors are norm scales/shifts and biases
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, device: torch.device,
                    groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """SGD over the model's trainable parameters, or over explicit groups (each may set its own lr)."""
    groups = groups or param_groups(model, cfg.weight_decay, cfg.no_decay_norm_bias)
    if cfg.opt == "sgd":
        # fused kernels on CUDA and CPU alike: on this CPU a resnet18 update takes 5 ms fused, 11 ms in a
        # per-tensor loop and 23 ms with foreach
        kwargs = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **kwargs)
    raise ValueError(f"unknown optimizer {cfg.opt!r}")


def lr_factor(step: int, cfg: SchedConfig, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the peak lr at a global step (0-based), warm-up included."""
    total = max(1, steps_per_epoch * epochs)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * step / warmup
    epoch = step / steps_per_epoch
    if cfg.sched == "constant":
        return 1.0
    if cfg.sched == "step":
        return cfg.gamma ** int(epoch // cfg.step_size)
    if cfg.sched == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if cfg.sched == "linear":
        return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * (1 - progress)
    if cfg.sched == "cosine":
        return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {cfg.sched!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR; its state (last_epoch = steps taken) goes in the checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch, epochs)
    )
