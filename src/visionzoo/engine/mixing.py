"""Mixup and CutMix on a device batch, with torchvision's transforms.v2 MixUp and CutMix doing the mixing.

With probability mixup_prob a batch is mixed; with both on, cutmix is chosen with mixup_switch_prob (timm's
semantics); from mixup_off_epoch on, batches are left unmixed. Targets come back as soft labels (one-hot
where a batch is not mixed), so the loss always sees the same kind of target; label smoothing is applied
by the loss on top (the same as timm's smoothing inside the mix: both are linear). The draws come from the
CPU generator, so nothing waits for the device, and a resumed epoch replays them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..config import AugConfig


class BatchMix:
    def __init__(self, aug: AugConfig, num_classes: int):
        self.num_classes = num_classes
        self.mixup = v2.MixUp(alpha=aug.mixup, num_classes=num_classes) if aug.mixup > 0 else None
        self.cutmix = v2.CutMix(alpha=aug.cutmix, num_classes=num_classes) if aug.cutmix > 0 else None
        self.prob, self.switch_prob, self.off_epoch = aug.mixup_prob, aug.mixup_switch_prob, aug.mixup_off_epoch

    @classmethod
    def from_config(cls, aug: AugConfig, num_classes: int) -> BatchMix | None:
        return cls(aug, num_classes) if aug.mixup > 0 or aug.cutmix > 0 else None

    def __call__(self, x: torch.Tensor, target: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, soft targets) for a batch of the 0-based epoch. Multi-hot targets (multi-label data) are mixed
        with the images' own weights: the op mixes one-hot vectors of the images' positions, and those weights
        applied to the label vectors give the mixed label vectors."""
        op = self.choose(epoch)
        multi_hot = target.ndim == 2
        if op is None:
            return x, (target if multi_hot else F.one_hot(target, self.num_classes)).to(x.dtype)
        if not multi_hot:
            mixed, soft = op(x, target)
            return mixed, soft.to(x.dtype)
        n = len(target)
        positions = type(op)(alpha=op.alpha, num_classes=n)  # the same draws from the generator, n "classes"
        mixed, weights = positions(x, torch.arange(n, device=target.device))
        return mixed, (weights.to(torch.float32) @ target.to(torch.float32)).to(x.dtype)

    def choose(self, epoch: int) -> v2.Transform | None:
        """The op for the next batch (draws the CPU generator as timm's Mixup does: apply, then which)."""
        if self.off_epoch and epoch + 1 >= self.off_epoch:
            return None
        if torch.rand(()).item() >= self.prob:
            return None
        if self.mixup is not None and self.cutmix is not None:
            return self.cutmix if torch.rand(()).item() < self.switch_prob else self.mixup
        return self.mixup if self.mixup is not None else self.cutmix
