"""Exponential moving average of the weights, through torch.optim.swa_utils.AveragedModel.

Parameters and buffers (BatchNorm statistics) alike are averaged, updated every `every` optimizer steps;
with warm-up the decay after n updates is min(decay, (1 + n) / (10 + n)), so early averages are not held
to the random initial weights. The update count is a Python int: no host sync per step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = False, every: int = 1):
        self.decay, self.warmup, self.every = decay, warmup, every
        self.steps = 0  # optimizer steps seen
        self.updates = 0  # averages taken
        avg_fn = self._warmup_avg if warmup else get_ema_multi_avg_fn(decay)
        self.averaged = AveragedModel(model, multi_avg_fn=avg_fn, use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def _warmup_avg(self, ema: tuple[torch.Tensor, ...] | list[torch.Tensor],
                    current: tuple[torch.Tensor, ...] | list[torch.Tensor], _num: torch.Tensor | int) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if torch.is_floating_point(ema[0]) or torch.is_complex(ema[0]):
            torch._foreach_lerp_(ema, current, 1 - decay)
        else:
            for e, c in zip(ema, current):
                e.copy_(e * decay + c * (1 - decay))

    def update(self, model: nn.Module) -> None:
        """After each optimizer step."""
        self.steps += 1
        if self.steps % self.every == 0:
            self.averaged.update_parameters(model)
            self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the averaged weights as a plain model state dict, and the counters."""
        return {"state_dict": self.module.state_dict(), "steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.steps, self.updates = int(state["steps"]), int(state["updates"])
        self.averaged.n_averaged.fill_(self.updates)
