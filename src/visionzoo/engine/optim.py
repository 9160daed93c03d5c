"""Optimizer, lr scaling rule and per-step lr schedules with warm-up."""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from ..config import OptimConfig, SchedConfig, spelled
from ..core.errors import ConfigError

ADAPTIVE = ("adamw", "lamb")  # the optimizers whose lr scales with the square root of the batch (timm's rule)


def lr_scale_rule(cfg: OptimConfig) -> str:
    """linear, sqrt or none: lr_scale with auto resolved for the optimizer."""
    if cfg.lr_scale != "auto":
        return cfg.lr_scale
    return "sqrt" if cfg.opt in ADAPTIVE else "linear"


def effective_lr(cfg: OptimConfig, global_batch: int) -> float:
    """An explicit --lr wins; otherwise lr_base scaled from lr_base_batch to the global batch."""
    if cfg.lr is not None:
        return cfg.lr
    ratio = global_batch / cfg.lr_base_batch
    rule = lr_scale_rule(cfg)
    if rule == "linear":
        return cfg.lr_base * ratio
    if rule == "sqrt":
        return cfg.lr_base * math.sqrt(ratio)
    return cfg.lr_base


def describe_lr(cfg: OptimConfig, global_batch: int) -> str:
    """The first line's lr: '0.0005 (1e-3 per 256, sqrt scaling to 64)', or '0.01 (--lr)'."""
    lr = effective_lr(cfg, global_batch)
    if cfg.lr is not None:
        return f"{lr:.4g} ({spelled('lr')})"
    rule = lr_scale_rule(cfg)
    if rule == "none" or global_batch == cfg.lr_base_batch:
        return f"{lr:.4g} ({spelled('lr_base')} {cfg.lr_base:g} at {cfg.lr_base_batch})"
    return f"{lr:.4g} ({cfg.lr_base:g} per {cfg.lr_base_batch}, {rule} scaling to {global_batch})"


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameters a timm model lists as taking no weight decay (ViT position embeddings, class tokens)."""
    listed = getattr(model, "no_weight_decay", None)
    return set(listed()) if callable(listed) else set()


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """One group, or with no_decay_norm_bias a decayed group and an undecayed one: 1-d tensors (norm scales and
    shifts, biases) and the model's no_weight_decay names, as timm's param_groups_weight_decay splits them."""
    if not no_decay_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    skip = no_weight_decay_names(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def layer_decay_groups(model: nn.Module, cfg: OptimConfig, lr: float) -> list[dict]:
    """timm's layer-wise lr decay groups (lr x layer_decay ** (depth - layer)), each with its own lr."""
    if not hasattr(model, "group_matcher"):
        raise ConfigError(f"{spelled('layer_decay')} needs a model with layer groups (timm's ViTs, ConvNeXts, ...); "
                          f"{getattr(model, 'visionzoo_name', type(model).__name__)} has none")
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(model, cfg.weight_decay, no_weight_decay_list=no_weight_decay_names(model),
                                      weight_decay_exclude_1d=cfg.no_decay_norm_bias,
                                      layer_decay=cfg.layer_decay or 1.0)
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)  # LambdaLR scales each group's own initial lr
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, device: torch.device,
                    groups: list[dict] | None = None, extra: list[nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """The optimizer cfg.opt names over the model's trainable parameters, or over explicit groups (each may set
    its own lr): torch's SGD, AdamW and RMSprop (fused where torch has the kernels), timm's LAMB and LARS.
    extra: parameters outside the model that train with it (feature distillation's projection), one group."""
    if groups is None:
        groups = layer_decay_groups(model, cfg, lr) if cfg.layer_decay else param_groups(
            model, cfg.weight_decay, cfg.no_decay_norm_bias)
    elif cfg.layer_decay:
        raise ConfigError(f"{spelled('layer_decay')} does not combine with per-part learning rates "
                          f"({spelled('head_lr_factor')}, OLTR)")
    if extra:
        groups = [*groups, {"params": extra, "weight_decay": cfg.weight_decay}]
    # fused kernels on CUDA and CPU alike: on this CPU a resnet18 SGD update takes 5 ms fused, 11 ms in a
    # per-tensor loop and 23 ms with foreach
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    betas = (cfg.betas[0], cfg.betas[1])
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.eps, **fused)
    if cfg.opt == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=cfg.eps, momentum=cfg.momentum)
    from timm.optim import Lamb, Lars  # what torch lacks

    if cfg.opt == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=cfg.eps)
    if cfg.opt == "lars":
        return Lars(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, eps=cfg.eps)
    raise ConfigError(f"{spelled('opt', cfg.opt)}: choose sgd, adamw, lamb, lars or rmsprop")


# a run never spends more than this share of its steps warming up: a 20-step fine-tune with a 1-epoch warm-up
# of 10 steps would otherwise reach its peak lr at half time
MAX_WARMUP_SHARE = 0.2


def warmup_steps(cfg: SchedConfig, steps_per_epoch: int, epochs: int) -> tuple[int, int]:
    """(warm-up steps the run takes, the steps asked for): warmup_steps if set, else warmup_epochs in steps,
    at most MAX_WARMUP_SHARE of the run's steps."""
    asked = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_epochs * steps_per_epoch))
    return min(asked, int(MAX_WARMUP_SHARE * steps_per_epoch * epochs)), asked


def lr_factor(step: float, cfg: SchedConfig, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the peak lr at a global step (0-based), warm-up included."""
    total = max(1, steps_per_epoch * epochs)
    warmup = warmup_steps(cfg, steps_per_epoch, epochs)[0]
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
    optimizer: torch.optim.Optimizer, cfg: SchedConfig, steps_per_epoch: int, epochs: int,
    epoch_steps: list[int] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR; its state (last_epoch = steps taken) goes in the checkpoint.

    epoch_steps: each epoch's own step count, where it varies (--batch-size-schedule): a step is then placed by
    the fraction of its epoch done, so the lr follows the epochs as with steps_per_epoch steps in each."""
    if epoch_steps is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch, epochs))
    starts = [0]
    for n in epoch_steps:
        starts.append(starts[-1] + n)

    def nominal(step: int) -> float:
        e = min(bisect.bisect_right(starts, step) - 1, len(epoch_steps) - 1)
        return steps_per_epoch * (e + (step - starts[e]) / max(1, epoch_steps[e]))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(nominal(step), cfg, steps_per_epoch,
                                                                               epochs))
