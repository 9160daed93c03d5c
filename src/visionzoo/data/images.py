"""Image decoding with errors that name the file."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import BadImageError

try:  # libjpeg-turbo with strict errors and DCT scaling; Pillow decodes when it is missing
    import simplejpeg
except ImportError:  # pragma: no cover - a dependency, but the fallback keeps decoding correct
    simplejpeg = None

# "<_io.BytesIO object at 0x7f...>": what Pillow puts in its messages for an image opened from memory
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _reason(e: BaseException) -> str:
    """Why Pillow failed, for an error that already names the file: never an object repr, never the path twice."""
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image format Pillow reads"
    return f"{type(e).__name__}: {_OBJECT_REPR.sub('the file', str(e))}"


@dataclass
class EncodedFile:
    """A file's bytes, not parsed yet. The fused transforms read a JPEG's size from them with
    libjpeg-turbo (2 us) instead of Pillow's Python header parser (40-90 us a file, a tenth of a packed
    sample's time), and open them with Pillow only when they must."""

    data: bytes
    name: str

    def jpeg_size(self) -> tuple[int, int] | None:
        """(width, height) of a JPEG that simplejpeg decodes to RGB exactly as Pillow would, else None."""
        if simplejpeg is None or self.data[:2] != b"\xff\xd8":
            return None
        try:
            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(self.data)
        except ValueError:
            return None
        if Image.MAX_IMAGE_PIXELS is not None and w * h > Image.MAX_IMAGE_PIXELS:
            return None  # a possible decompression bomb: Pillow's open() applies its pixel limit
        return (w, h) if colorspace in ("YCbCr", "Gray", "RGB") else None  # CMYK/YCCK: Pillow converts

    def decode_jpeg(self, size: tuple[int, int], min_size: tuple[int, int]) -> tuple[np.ndarray, int] | None:
        """decode_rgb_scaled for a file whose jpeg_size() is size; None when simplejpeg refuses it (then
        Pillow decides, through open())."""
        factor = _dct_factor(*size, min_size)
        arr = _turbo_decode(self.data, size, factor)
        return None if arr is None else (arr, factor)

    @classmethod
    def of(cls, img: Image.Image) -> EncodedFile | None:
        """An opened (not yet decoded) Pillow image's file bytes, closing it; None for an image in memory."""
        fp = getattr(img, "fp", None)
        if fp is None:  # made or converted in memory: no file behind it
            return None
        with img:
            fp.seek(0)
            return cls(fp.read(), str(getattr(img, "filename", "") or "image"))

    def open(self) -> Image.Image:
        """The Pillow image (header read), for everything but the fast JPEG path."""
        try:
            img = Image.open(io.BytesIO(self.data))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise BadImageError(f"{self.name}: cannot decode image ({_reason(e)})") from None
        img.filename = self.name  # for error messages downstream
        return img


def read_file(path: str | Path) -> EncodedFile:
    try:
        return EncodedFile(Path(path).read_bytes(), str(path))
    except OSError as e:
        raise BadImageError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def open_image(path: str | Path) -> Image.Image:
    """Open a file and read its header only (size, mode): no pixels decoded yet."""
    try:
        return Image.open(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImageError(f"{path}: cannot decode image ({_reason(e)})") from None


def _dct_factor(w: int, h: int, min_size: tuple[int, int]) -> int:
    """The largest of 8, 4, 2, 1 that keeps a JPEG decoded at 1/factor at least min_size (w, h).

    Powers of two only: libjpeg-turbo's other M/8 scales decode slower than full size.
    """
    for f in (8, 4, 2):
        if -(-w // f) >= min_size[0] and -(-h // f) >= min_size[1]:
            return f
    return 1


def _turbo_decode(data: bytes, size: tuple[int, int], factor: int) -> np.ndarray | None:
    """simplejpeg (libjpeg-turbo) decode of a size (w, h) JPEG at 1/factor, strict about truncation; None
    to fall back to Pillow."""
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-size[0] // factor),
                                      min_height=-(-size[1] // factor))
    except ValueError:
        return None  # CMYK, arithmetic coding, or a damaged file: Pillow decides (and names the file)


def _decode_jpeg_turbo(img: Image.Image, factor: int) -> np.ndarray | None:
    fp = getattr(img, "fp", None)
    if simplejpeg is None or fp is None:
        return None
    fp.seek(0)
    return _turbo_decode(fp.read(), img.size, factor)


def _decode(img: Image.Image, min_size: tuple[int, int] | None, turbo: bool) -> np.ndarray | Image.Image:
    """Decode an opened image to RGB (grayscale, CMYK, palette and alpha converted) and close the file:
    an HWC array from simplejpeg, or a PIL image from Pillow; callers convert only what they must.

    min_size (w, h): a JPEG may decode at 1/2, 1/4 or 1/8 scale through libjpeg-turbo's DCT scaling as
    long as both sides stay >= min_size: far less work for a small output. JPEGs decode with simplejpeg
    (libjpeg-turbo, ~1.5x faster than Pillow's decoder here) when it is installed and turbo is on, else
    with Pillow. Truncated files fail here rather than yielding a half-grey image: LOAD_TRUNCATED_IMAGES
    stays off, and simplejpeg runs strict.
    """
    try:
        with img:
            if img.format == "JPEG":
                factor = _dct_factor(*img.size, min_size) if min_size is not None else 1
                fast = _decode_jpeg_turbo(img, factor) if turbo else None
                if fast is not None:
                    return fast
                if factor > 1:
                    img.draft("RGB", (-(-img.size[0] // factor), -(-img.size[1] // factor)))
            img.load()
            return _rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        name = getattr(img, "filename", "") or "image"  # "" for an image opened from memory
        raise BadImageError(f"{name}: cannot decode image ({_reason(e)})") from None


def _rgb(img: Image.Image) -> Image.Image:
    """RGB, with 16-bit grayscale scaled to 8 bits by its high byte, as Pillow does for 48-bit RGB (its own
    convert("RGB") clips 16-bit values to 255, so all but the darkest pixels turn white)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(img).astype(np.int64)
        # mode "I" is also how older Pillow opens 16-bit PNGs; 32-bit integer images within 0..255 stay as they are
        shift = 8 if img.mode != "I" or values.max(initial=0) > 255 else 0
        gray = (values.clip(0, 65535) >> shift).clip(0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB")
    return img.convert("RGB")


def decode_rgb_array(img: Image.Image, min_size: tuple[int, int] | None = None, turbo: bool = True) -> np.ndarray:
    """_decode as an RGB uint8 HWC array."""
    out = _decode(img, min_size, turbo)
    return out if isinstance(out, np.ndarray) else np.array(out)


def decode_rgb_scaled(img: Image.Image, min_size: tuple[int, int], turbo: bool = True) -> tuple[np.ndarray, int]:
    """decode_rgb_array and the DCT factor f it decoded at: source pixel x is at x / f in the array
    (libjpeg keeps ceil(w / f) columns, the last one partial, so arr_w / w is not the scale)."""
    w, h = img.size
    arr = decode_rgb_array(img, min_size, turbo)
    factor = next((f for f in (8, 4, 2) if (-(-w // f), -(-h // f)) == (arr.shape[1], arr.shape[0])), 1)
    return arr, factor


def decode_rgb(img: Image.Image, min_size: tuple[int, int] | None = None, turbo: bool = True) -> Image.Image:
    """_decode as a PIL image; turbo=False decodes with Pillow alone (the reference pipeline)."""
    out = _decode(img, min_size, turbo)
    return Image.fromarray(out, "RGB") if isinstance(out, np.ndarray) else out


def load_rgb(path: str | Path) -> Image.Image:
    """Decode a file fully to an RGB PIL image."""
    return decode_rgb(open_image(path))
