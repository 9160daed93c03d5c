"""Train/eval transforms (torchvision.transforms.v2) ending in uint8 CHW tensors.

Float conversion and normalisation happen on the device (see loader.DeviceNormalizer), so
workers ship 4x fewer bytes and the host does no float work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

_INTERP = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def eval_resize_size(img_size: int, crop_pct: float) -> int:
    return int(math.floor(img_size / crop_pct))


class ShiftedCenterCrop(torch.nn.Module):
    """Centre crop whose window moves horizontally by a uniform random offset within the margin.

    FixRes's fine-tuning crop: the test-time framing (objects at test-time apparent size) with a little
    translation. Draws from torch's global RNG, which the data set seeds per sample.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, img):
        h, w = v2.functional.get_size(img)
        top = int(round((h - self.size) / 2.0))
        left = (w - self.size) // 2  # the crop may start anywhere in [0, w - size]: never past the edge
        shift = int(torch.randint(-left, w - self.size - left + 1, ()).item()) if w > self.size else 0
        return v2.functional.crop(img, top, left + shift, self.size, self.size)


def train_transform(
    img_size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    interpolation: str = "bilinear",
    crop: str = "random_resized",
    crop_pct: float = 0.875,
) -> v2.Compose:
    """crop: random_resized (RandomResizedCrop by scale/ratio) or fixres (eval resize by crop_pct, then
    ShiftedCenterCrop: the FixRes fine-tuning transform)."""
    if crop == "fixres":
        ops: list = [v2.Resize(eval_resize_size(img_size, crop_pct), interpolation=_INTERP[interpolation],
                               antialias=True), ShiftedCenterCrop(img_size)]
    elif crop == "random_resized":
        ops = [v2.RandomResizedCrop(img_size, scale=tuple(scale), ratio=tuple(ratio),
                                    interpolation=_INTERP[interpolation], antialias=True)]
    else:
        raise ValueError(f"unknown train crop {crop!r}")
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter > 0:
        ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    ops.append(v2.PILToTensor())
    return v2.Compose(ops)


def eval_transform(img_size: int, crop_pct: float = 0.875, interpolation: str = "bilinear") -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize(eval_resize_size(img_size, crop_pct), interpolation=_INTERP[interpolation], antialias=True),
            v2.CenterCrop(img_size),
            v2.PILToTensor(),
        ]
    )
