"""Crop-and-resize primitives the transforms are made of.

`DecodeCrop` decodes an image and crops and resizes it to size x size in one step: the crop window is
drawn from the file's header, a JPEG decodes at the smallest DCT scale (1/2, 1/4, 1/8) that still
covers the window at the output size, and the window is resampled to the output in one antialiased
resize of the uint8 array (torch's channels-last uint8 kernel, ~2x faster than Pillow's here).
`ShiftedCenterCrop` is FixRes's fine-tuning crop for the plain torchvision pipeline.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import InterpolationMode, v2

from .images import EncodedFile, decode_rgb_scaled

INTERP = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def eval_resize_size(img_size: int, crop_pct: float) -> int:
    return int(math.floor(img_size / crop_pct))


def shifted_left(width: int, size: int, shift: bool) -> int:
    """Left edge of a centred crop of `size` in `width` (rounded as torchvision's CenterCrop); with shift,
    anywhere in [0, width - size] around it."""
    if not shift or width <= size:
        return int(round((width - size) / 2.0))
    left = (width - size) // 2
    return left + int(torch.randint(-left, width - size - left + 1, ()).item())


class DecodeCrop:
    """Decode an opened image and crop-and-resize it to size x size in one step (see the module doc).

    mode "random_resized": torchvision's RandomResizedCrop window (scale, ratio), drawn from the seeded RNG.
    mode "center": the eval framing, Resize(short side = size / crop_pct) then CenterCrop(size), on the
    (DCT-reduced) image; shift=True moves the crop horizontally at random (FixRes fine-tuning).
    hflip: the probability of a horizontal flip, drawn as v2.RandomHorizontalFlip draws it (without its
    per-call dispatch, a tenth of a packed sample's time).
    Takes a decoded image too (then there is nothing to save on decoding).
    """

    def __init__(self, size: int, mode: str = "center", crop_pct: float = 0.875, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), interpolation: str = "bilinear", shift: bool = False, hflip: float = 0.0):
        self.size, self.mode, self.crop_pct, self.shift, self.hflip = size, mode, crop_pct, shift, hflip
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.interpolation = INTERP[interpolation]
        self.interp_mode = interpolation  # torch.nn.functional.interpolate's name for it
        self._log_ratio = torch.log(torch.tensor(self.ratio)).tolist()  # float32 logs, as torchvision draws

    def _resized(self, w: int, h: int) -> tuple[int, int]:
        """torchvision's Resize(int) target: short side size / crop_pct, long side truncated."""
        short = eval_resize_size(self.size, self.crop_pct)
        return (short, int(short * h / w)) if w <= h else (int(short * w / h), short)

    def __call__(self, img) -> torch.Tensor:
        out = self._crop(img)
        if self.hflip > 0 and torch.rand(1) < self.hflip:
            out = out.flip(-1)
        return out

    def random_window(self, w: int, h: int) -> tuple[int, int, int, int]:
        """(top, left, height, width): v2.RandomResizedCrop's sampler, the same torch draws in the same
        order (so every pipeline frames the same window from a seed), without its per-call input parsing
        (0.1 ms a sample, a tenth of a 128-px crop's time)."""
        area = w * h
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = torch.exp(torch.empty(1).uniform_(self._log_ratio[0], self._log_ratio[1])).item()
            cw = int(round(math.sqrt(target_area * aspect)))
            ch = int(round(math.sqrt(target_area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, size=(1,)).item())
                return top, int(torch.randint(0, w - cw + 1, size=(1,)).item()), ch, cw
        in_ratio = w / h  # fallback: the central crop at the nearest allowed ratio
        if in_ratio < min(self.ratio):
            cw, ch = w, int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            cw, ch = int(round(h * max(self.ratio))), h
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def _crop(self, img) -> torch.Tensor:
        jpeg_size = img.jpeg_size() if isinstance(img, EncodedFile) else None
        if isinstance(img, EncodedFile) and jpeg_size is None:
            img = img.open()  # not a JPEG simplejpeg takes: Pillow decodes
        w, h = jpeg_size or img.size
        if self.mode == "random_resized":
            top, left, ch, cw = self.random_window(w, h)
            # the smallest decode whose copy of the window still has >= size pixels each way: no detail lost
            arr, f = _decode(img, (w, h), (math.ceil(w * self.size / cw), math.ceil(h * self.size / ch)))
            y0, hh = _scaled_span(top, ch, f, arr.shape[0])
            x0, ww = _scaled_span(left, cw, f, arr.shape[1])
            if self.interp_mode == "bilinear":
                # the window copied out channels-last: torch's uint8 antialiased resize then reads and writes
                # HWC memory (a third faster, the same pixels as resized_crop) and an auto-augment policy
                # gets a Pillow image of it without a transposing copy (PolicyOp)
                win = _chw(arr)[None, :, y0:y0 + hh, x0:x0 + ww].contiguous(memory_format=torch.channels_last)
                return torch.nn.functional.interpolate(win, size=[self.size, self.size], mode="bilinear",
                                                       antialias=True)[0]
            return v2.functional.resized_crop(_chw(arr), y0, x0, hh, ww, [self.size, self.size],
                                              interpolation=self.interpolation, antialias=True)
        # eval framing: torchvision's Resize to (nw, nh) then a whole-pixel crop. A DCT-reduced array holds
        # ceil(w / f) columns for w / f of image, so it is resized by the same scale (nw / w per source
        # pixel), not to (nw, nh), and the crop lands on the same source window
        nw, nh = self._resized(w, h)
        arr, f = _decode(img, (w, h), (nw, nh))
        if f == 1:
            resized = v2.functional.resize(_chw(arr), [nh, nw], interpolation=self.interpolation, antialias=True)
        else:  # the exact scale, not a rounded size: interpolate maps coordinates by the factor given
            resized = torch.nn.functional.interpolate(
                _chw(arr)[None], scale_factor=(f * nh / h, f * nw / w), mode=self.interp_mode,
                antialias=self.interp_mode != "nearest", recompute_scale_factor=False)[0]
        left = shifted_left(nw, self.size, self.shift)
        top = int(round((nh - self.size) / 2.0))
        # a copy: a view would keep the whole resized image alive until the batch is stacked
        return resized[:, top:top + self.size, left:left + self.size].contiguous()


def _decode(img, size: tuple[int, int], min_size: tuple[int, int]):
    """decode_rgb_scaled for an opened image or an EncodedFile (simplejpeg straight from its bytes)."""
    if isinstance(img, EncodedFile):
        got = img.decode_jpeg(size, min_size)
        if got is not None:
            return got
        return decode_rgb_scaled(img.open(), min_size, turbo=False)  # simplejpeg refused it: Pillow decides
    return decode_rgb_scaled(img, min_size)


def _scaled_span(start: int, length: int, f: int, limit: int) -> tuple[int, int]:
    """A source span [start, start + length) in an array decoded at 1/f: (start, length), at least 1 px,
    inside [0, limit)."""
    lo = min(round(start / f), limit - 1)
    hi = min(max(round((start + length) / f), lo + 1), limit)
    return lo, hi - lo


def _chw(arr) -> torch.Tensor:
    return torch.from_numpy(arr).permute(2, 0, 1)


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
        return v2.functional.crop(img, top, shifted_left(w, self.size, True), self.size, self.size)
