"""Uploaded bytes -> the uint8 CHW image predict would make of the same file, with limits a server needs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from ..core.errors import BadImageError
from ..data.images import EncodedFile
from ..data.transforms import eval_transform, transform_encoded
from ..inference.model_info import ModelInfo


class TooManyPixels(BadImageError):
    """An image whose header promises more pixels than the server decodes (a decompression bomb, or a photo
    beyond --max-pixels): refused before a byte of it is decompressed."""


def upload_decoder(info: ModelInfo, max_pixels: int, decode: str | None = None) -> Callable[[bytes, str], torch.Tensor]:
    """A function (bytes, name) -> uint8 CHW tensor at the model's input size, through predict's transform
    (inference.predict uses the same eval_transform and data.transforms.transform_* pair). Raises BadImageError
    naming the image for anything undecodable; thread-safe, so a pool of threads can share it."""
    transform = eval_transform(info.img_size, info.crop_pct, info.interpolation, decode)

    def decode_upload(data: bytes, name: str) -> torch.Tensor:
        file = EncodedFile(data, name)
        try:
            img = file.open()  # the header only: the size is known before any pixel is decompressed
        except BadImageError as e:  # Pillow's own bomb check (over twice its MAX_IMAGE_PIXELS) fired first
            if isinstance(e.__context__, Image.DecompressionBombError):
                raise TooManyPixels(f"{name}: a decompression bomb, refused unread ({e.__context__})") from None
            raise
        width, height = img.size
        if width * height > max_pixels:
            img.close()
            raise TooManyPixels(f"{name}: {width}x{height} is {width * height:,} pixels, over the server's limit of "
                                f"{max_pixels:,} (--max-pixels)")
        return transform_encoded(transform, file, img)

    return decode_upload
