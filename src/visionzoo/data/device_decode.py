"""JPEG decoding on the training device: nvJPEG through torchvision.io.decode_jpeg on CUDA.

decode="device": loader workers only read each file and draw its crop window and flip (from the same
per-sample seeded generator as the CPU pipelines, so the same windows); the batch travels as one
block of JPEG bytes, and the device decodes it in one batched call, then crops, resizes and flips
each image there. This moves the decode, the largest per-image cost, off a small host's cores.
Non-JPEG files (and CMYK JPEGs, which nvJPEG does not take) are decoded and cropped by the workers
as decode="fast" would, and join the batch as pixels.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from ..core.errors import BadImageError
from .crops import DecodeCrop, shifted_left
from .images import EncodedFile


@dataclass
class EncodedImage:
    """One sample for decoding on the device: a JPEG's bytes and what to do with its pixels, or the
    pixels themselves (size x size uint8 CHW) when the workers had to decode it."""

    data: bytes | None
    name: str
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, height, width of the crop
    resize: tuple[int, int] | None = None  # center framing: resize to (h, w) first, then crop box
    flip: bool = False
    pixels: torch.Tensor | None = None
    crop: DeviceDecodeCrop | None = None  # the transform that made it, which finishes it on the device


class DeviceDecodeCrop(DecodeCrop):
    """DecodeCrop's framing, with the decode left to the device (see the module doc)."""

    takes_encoded_file = True

    # a plan for the device instead of pixels: the loader's collate and the normaliser know both
    def __call__(self, img) -> EncodedImage:  # type: ignore[override]
        if not isinstance(img, EncodedFile):  # a Pillow image: its file's bytes, if it has a file
            img = EncodedFile.of(img) or img
        size = img.jpeg_size() if isinstance(img, EncodedFile) else None
        if size is None:  # not a JPEG nvJPEG takes (PNG, CMYK, in memory): the worker decodes it
            name = img.name if isinstance(img, EncodedFile) else "image"
            return EncodedImage(None, name, pixels=super().__call__(img).contiguous(), crop=self)
        w, h = size
        if self.mode == "random_resized":
            item = EncodedImage(img.data, img.name, self.random_window(w, h))
        else:
            nw, nh = self._resized(w, h)
            left = shifted_left(nw, self.size, self.shift)
            top = int(round((nh - self.size) / 2.0))
            item = EncodedImage(img.data, img.name, (top, left, self.size, self.size), resize=(nh, nw))
        item.flip = bool(self.hflip > 0 and torch.rand(1) < self.hflip)
        item.crop = self
        return item

    def finish(self, image: torch.Tensor, item: EncodedImage) -> torch.Tensor:
        """A decoded CHW uint8 image (on the device) -> the size x size crop."""
        top, left, ch, cw = item.box
        if item.resize is None:
            out = v2.functional.resized_crop(image, top, left, ch, cw, [self.size, self.size],
                                             interpolation=self.interpolation, antialias=True)
        else:
            out = v2.functional.resize(image, list(item.resize), interpolation=self.interpolation, antialias=True)
            out = out[:, top:top + ch, left:left + cw]
        return out.flip(-1) if item.flip else out


class EncodedBatch:
    """A batch of EncodedImage: the JPEG bytes in one uint8 block (one shared-memory transfer from a
    worker, one pinned copy), decoded by `decode` on the device."""

    def __init__(self, items: list[EncodedImage]):
        self.crop = items[0].crop
        # what to do with each image, without its bytes (those go into the blob) or the transform
        self.plans = [EncodedImage(None, it.name, it.box, it.resize, it.flip, it.pixels) for it in items]
        self.offsets = [0, *itertools.accumulate(len(it.data or b"") for it in items)]
        self.blob = torch.frombuffer(bytearray(b"".join(it.data or b"" for it in items)) or bytearray(1),
                                     dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.plans)

    def pin_memory(self) -> EncodedBatch:
        self.blob = self.blob.pin_memory()
        return self

    def _bytes(self, i: int) -> torch.Tensor:
        return self.blob[self.offsets[i]:self.offsets[i + 1]]

    def decode(self, device: torch.device) -> torch.Tensor:
        """uint8 NCHW batch on the device; an undecodable JPEG raises BadImageError naming its file."""
        jpegs = [i for i, plan in enumerate(self.plans) if plan.pixels is None]
        out: list[torch.Tensor | None] = [None] * len(self.plans)
        crop = self.crop
        assert crop is not None, "every item of a batch comes from a DeviceDecodeCrop"
        if jpegs:
            try:
                decoded = decode_jpeg([self._bytes(i) for i in jpegs], mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                self._raise_bad(jpegs, device)
            for i, image in zip(jpegs, decoded):
                out[i] = crop.finish(image, self.plans[i])
        for i, plan in enumerate(self.plans):
            if plan.pixels is not None:
                out[i] = plan.pixels.to(device, non_blocking=True)
        return torch.stack([image for image in out if image is not None])  # every slot is filled above

    def _raise_bad(self, jpegs: list[int], device: torch.device):
        for i in jpegs:  # the batched call does not say which file failed: find it
            try:
                decode_jpeg(self._bytes(i), mode=ImageReadMode.RGB, device=device)
            except RuntimeError as e:
                raise BadImageError(f"{self.plans[i].name}: cannot decode image on {device} ({e})") from None
        raise BadImageError(f"a batch of {len(jpegs)} JPEGs failed to decode on {device}, each alone decodes")
