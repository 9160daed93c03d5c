"""Train/eval transforms ending in uint8 CHW tensors, for each decode mode.

Float conversion and normalisation happen on the device (see loader.DeviceNormalizer), so
workers ship 4x fewer bytes and the host does no float work.

decode="fast" fuses decoding with the crop (crops.DecodeCrop); decode="pil" is the plain torchvision
pipeline (full decode with Pillow, then transforms.v2 ops): the reference pixels, which published
accuracies assume; decode="device" leaves the decode to the training device (device_decode). Unset
(None), training crops decode fast and evaluation uses the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from ..config import spelled
from ..core.errors import ConfigError
from .crops import INTERP, DecodeCrop, ShiftedCenterCrop, eval_resize_size
from .device_decode import DeviceDecodeCrop
from .images import EncodedFile, decode_rgb, open_image, read_file


class Fused:
    """DecodeCrop, then v2 ops on the uint8 tensor; the data set hands it the file's bytes (EncodedFile);
    an opened Pillow image works too."""

    takes_encoded_file = True

    def __init__(self, crop: DecodeCrop, rest: list):
        self.crop, self.rest = crop, v2.Compose(rest) if rest else None

    def __call__(self, img) -> torch.Tensor:
        # not made contiguous: a training crop's memory is HWC, and collate_skipping stacks such samples into a
        # channels-last batch with plain copies (a CHW transpose here cost ~90 us of a 224-px sample's ~0.8 ms)
        out = self.crop(img)
        return self.rest(out) if self.rest is not None else out


TRAIN_DECODE, EVAL_DECODE = "fast", "pil"  # what decode=None means for training crops and for evaluation


def train_transform(
    img_size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    interpolation: str = "bilinear",
    crop: str = "random_resized",
    crop_pct: float = 0.875,
    decode: str | None = None,
    policy: Sequence = (),
):
    """crop: random_resized (RandomResizedCrop by scale/ratio) or fixres (eval resize by crop_pct, then
    ShiftedCenterCrop: the FixRes fine-tuning transform). decode: fast (fused, the default) or pil (see the
    module doc). policy: per-sample ops after crop, flip and colour jitter (augment_ops: an auto-augment
    policy, random erasing), run on the uint8 tensor as on the reference's images."""
    decode = decode or TRAIN_DECODE
    if crop not in ("random_resized", "fixres"):
        raise ValueError(f"unknown train crop {crop!r}")
    jitter = [v2.ColorJitter(color_jitter, color_jitter, color_jitter)] if color_jitter > 0 else []
    mode = "center" if crop == "fixres" else "random_resized"
    if decode == "device":
        if jitter or policy or (crop == "fixres" and crop_pct > 1.0):
            raise ConfigError("--decode device crops and flips on the device; it does not run --color-jitter, "
                              "--auto-augment, --random-erase or a fixres crop with crop_pct above 1 (use --decode "
                              "fast)")
        return DeviceDecodeCrop(img_size, mode, crop_pct, scale, ratio, interpolation, shift=crop == "fixres",
                                hflip=hflip)
    if decode == "fast" and (crop != "fixres" or crop_pct <= 1.0):  # above 1 the crop pads: plain ops
        return Fused(DecodeCrop(img_size, mode, crop_pct, scale, ratio, interpolation, shift=crop == "fixres",
                                hflip=hflip), jitter + list(policy))
    rest = ([v2.RandomHorizontalFlip(hflip)] if hflip > 0 else []) + jitter
    if crop == "fixres":
        ops: list = [v2.Resize(eval_resize_size(img_size, crop_pct), interpolation=INTERP[interpolation],
                               antialias=True), ShiftedCenterCrop(img_size)]
    else:
        ops = [v2.RandomResizedCrop(img_size, scale=tuple(scale), ratio=tuple(ratio),
                                    interpolation=INTERP[interpolation], antialias=True)]
    # Pillow policies (PolicyOp on_pil) before the tensor conversion, as the reference scripts run them; the
    # rest (AugMix, random erasing) after it, in the given order
    on_pil = [p for p in policy if isinstance(p, PolicyOp) and p.on_pil]
    return v2.Compose(ops + rest + on_pil + [v2.PILToTensor()] + [p for p in policy if p not in on_pil])


class PolicyOp:
    """A v2 auto-augment policy for the uint8 CHW tensors of the pipelines here (a Pillow image passes as it
    is). TrivialAugment, RandAugment and AutoAugment run on a Pillow image: Pillow's ops are 4-5x faster than
    torch's tensor kernels at 224 px (0.14 against 0.6-0.8 ms for TrivialAugmentWide), and the reference
    scripts apply them to Pillow images too. AugMix works on tensors either way: it gets a contiguous one.
    The policy draws the same torch random numbers on either input."""

    def __init__(self, op: v2.Transform, on_pil: bool):
        self.op, self.on_pil = op, on_pil

    def __call__(self, x):
        if isinstance(x, Image.Image):
            return self.op(x)
        if not self.on_pil:
            return self.op(x.contiguous())
        hwc = x.permute(1, 2, 0).contiguous()  # no copy for the fused crop's output: its memory is HWC
        return torch.from_numpy(np.array(self.op(Image.fromarray(hwc.numpy())))).permute(2, 0, 1)

    def __repr__(self) -> str:
        return f"PolicyOp({self.op!r}, on_pil={self.on_pil})"


def augment_ops(auto_augment: str | None = None, ra_magnitude: int = 9, ra_ops: int = 2, augmix_severity: int = 3,
                random_erase: float = 0.0, mean: Sequence[float] = (0.485, 0.456, 0.406),
                interpolation: str = "bilinear") -> list:
    """torchvision's v2 policies for --auto-augment (ta_wide: TrivialAugmentWide, ra: RandAugment, augmix: AugMix,
    imagenet: AutoAugment's ImageNet policy), then RandomErasing. The reference erases after normalisation with
    zeros, i.e. the mean colour: on the uint8 image the mean colour is what is written."""
    ops: list = []
    interp = INTERP[interpolation]
    if auto_augment == "ta_wide":
        ops.append(PolicyOp(v2.TrivialAugmentWide(interpolation=interp), on_pil=True))
    elif auto_augment == "ra":
        ops.append(PolicyOp(v2.RandAugment(num_ops=ra_ops, magnitude=ra_magnitude, interpolation=interp), True))
    elif auto_augment == "augmix":
        ops.append(PolicyOp(v2.AugMix(severity=augmix_severity, interpolation=interp), on_pil=False))
    elif auto_augment == "imagenet":
        ops.append(PolicyOp(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=interp), on_pil=True))
    elif auto_augment is not None:
        raise ConfigError(f"{spelled('auto_augment', auto_augment)}: choose ta_wide, ra, augmix or imagenet")
    if random_erase > 0:
        ops.append(v2.RandomErasing(p=random_erase, value=[round(255 * m) for m in mean]))
    return ops


def eval_transform(img_size: int, crop_pct: float = 0.875, interpolation: str = "bilinear",
                   decode: str | None = None):
    """Resize(img_size / crop_pct) + CenterCrop(img_size); decode None is the reference (pil), see the module doc."""
    decode = decode or EVAL_DECODE
    if decode == "device":
        if crop_pct > 1.0:
            raise ConfigError("--decode device needs --crop-pct <= 1 (above 1 the centre crop pads; use --decode fast)")
        return DeviceDecodeCrop(img_size, "center", crop_pct, interpolation=interpolation)
    if decode == "fast" and crop_pct <= 1.0:  # above 1 the centre crop pads: the plain ops handle that
        return Fused(DecodeCrop(img_size, "center", crop_pct, interpolation=interpolation), [])
    return v2.Compose(
        [
            v2.Resize(eval_resize_size(img_size, crop_pct), interpolation=INTERP[interpolation], antialias=True),
            v2.CenterCrop(img_size),
            v2.PILToTensor(),
        ]
    )


def transform_encoded(transform, file: EncodedFile, img: Image.Image | None = None):
    """transform_file for an image already in memory (an upload): the same pixels for the same bytes. img: the
    file's Pillow image when the caller already opened it (to read its size first)."""
    if getattr(transform, "takes_encoded_file", False):
        if img is not None:
            img.close()
        return transform(file)
    return transform(decode_rgb(img if img is not None else file.open(), turbo=False))


def transform_file(transform, path: str | Path):
    """The transform's output for an image file: a fused transform gets the file's bytes (it decodes at the
    scale it needs), any other gets Pillow's full decode (the reference pipeline, as ImageDataset does)."""
    if getattr(transform, "takes_encoded_file", False):
        return transform(read_file(path))
    return transform(decode_rgb(open_image(path), turbo=False))
