"""Image decoding with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


class BadImageError(RuntimeError):
    """An image file could not be decoded; the message starts with its path."""


def load_rgb(path: str | Path) -> Image.Image:
    """Decode a file fully to an RGB PIL image (grayscale, CMYK, palette and alpha converted).

    Truncated files fail here rather than yielding a half-grey image: Pillow's
    LOAD_TRUNCATED_IMAGES stays off.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImageError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
