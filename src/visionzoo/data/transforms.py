"""Train/eval transforms (torchvision.transforms.v2) ending in uint8 CHW tensors.

Float conversion and normalisation happen on the device (see loader.DeviceNormalizer), so
workers ship 4x fewer bytes and the host does no float work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torchvision.transforms import InterpolationMode, v2

_INTERP = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def eval_resize_size(img_size: int, crop_pct: float) -> int:
    return int(math.floor(img_size / crop_pct))


def train_transform(
    img_size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    interpolation: str = "bilinear",
) -> v2.Compose:
    ops: list = [
        v2.RandomResizedCrop(
            img_size, scale=tuple(scale), ratio=tuple(ratio), interpolation=_INTERP[interpolation], antialias=True
        )
    ]
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
