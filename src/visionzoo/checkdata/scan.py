"""The scan: every entry read once, decoded with the loader's own decoder (data.images), and reduced to a few bytes
kept per image (a hash of the decoded pixels, a perceptual hash and the 63 low-frequency DCT coefficients it is
made of, quantised to a byte each; size, mode): memory grows with the hashes,
never with the images. Loader workers decode in parallel; the main process only collects the records.

What is found per file: unreadable, zero-byte, non-image (text, HTML, unknown bytes), truncated and
decompression-bomb files with the loader's own reason, and the odd images the loader does decode, each with what
it does with them (ODD_KINDS, checked against data/images.py: RGB conversion, no EXIF orientation).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..core.errors import BadImageError
from ..core.quiet import all_warnings_silenced
from ..data.images import EncodedFile, decode_rgb_array
from .inputs import DataSet, Split

# what the loader does with each kind of image it decodes (data/images.py `_decode`/`_rgb`, data/crops.py): the
# report says it beside each count, so a user knows whether a model saw what a viewer shows
ODD_KINDS = {
    "cmyk": "CMYK: converted to RGB by Pillow's plain formula (libjpeg-turbo refuses CMYK; no ICC profile applied)",
    "16bit": "16 bits per channel: reduced to 8 bits by the high byte (16-bit grayscale repeated on 3 channels)",
    "palette_transparency": "palette with transparency: converted to RGB, transparent pixels take their palette "
                            "colour (no background compositing)",
    "alpha": "alpha channel: dropped, the colour stored under transparent pixels is kept",
    "exif_rotated": "EXIF orientation tag: NOT applied, the model sees the stored pixels (rotated or mirrored "
                    "against what a photo viewer shows)",
    "grayscale": "grayscale or 1-bit: repeated on 3 channels",
    "palette": "palette: converted to RGB through the palette",
    "multi_frame": "several frames (animation, multi-page): the first frame only",
    "over_pixel_limit": "over Pillow's MAX_IMAGE_PIXELS (up to twice it): decoded with a DecompressionBombWarning; "
                        "not decoded by the scan (no hashes)",
}
BAD_KINDS = ("zero_byte", "unreadable", "not_image", "truncated", "decompression_bomb", "decode_error")
FLAT_STD = 4.0  # grey levels: below this spread the 32x32 thumbnail is near-uniform and its phash means nothing
HASH_SIDE = 32  # the thumbnail the perceptual hash is computed on (phash's own working size)
DCT_SIDE = 8  # phash's low-frequency block: 8x8 DCT coefficients, 63 without the mean (DC)


@dataclass
class Record:
    """One entry as the scan saw it: a few numbers and hashes, never pixels."""

    pos: int  # the entry's position over all splits
    bad: str | None = None  # a BAD_KINDS value
    reason: str = ""
    fmt: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    odd: list[tuple[str, str]] = field(default_factory=list)  # (ODD_KINDS key, detail)
    pixel: bytes = b""  # SHA-256 (first 16 bytes) of the decoded RGB pixels and their shape; b"" when not decoded
    phash: int = 0
    dct: bytes = b""  # the 63 AC coefficients as a unit vector, int8 (x127): near pairs are verified on them
    flat: bool = False


def _sniff(data: bytes) -> str:
    """Why bytes Pillow does not recognise are no image: an HTML page, a text file, or unknown bytes."""
    head = data[:1024].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return "an HTML page, not an image"
    try:
        text = data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and sum(c.isprintable() or c.isspace() for c in text) >= 0.95 * len(text):
        return "a text file, not an image"
    return "not an image format Pillow reads (unknown bytes)"


def _bad_kind(e: BaseException) -> str:
    cause = e.__context__
    if isinstance(cause, Image.DecompressionBombError):
        return "decompression_bomb"
    text = str(e).lower()
    if "truncated" in text or "premature end" in text or "not enough data" in text:
        return "truncated"
    return "decode_error"


def _odd_kinds(img: Image.Image, data: bytes) -> list[tuple[str, str]]:
    """The header's odd properties (no pixel decoded yet)."""
    odd: list[tuple[str, str]] = []
    mode = img.mode
    if mode == "CMYK":
        odd.append(("cmyk", mode))
    if mode.startswith("I;16") or (data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 and data[24] == 16):
        odd.append(("16bit", f"{mode}, 16-bit PNG" if img.format == "PNG" else mode))
    if mode in ("P", "PA") and ("transparency" in img.info or mode == "PA"):
        odd.append(("palette_transparency", mode))
    elif mode == "P":
        odd.append(("palette", mode))
    if mode in ("RGBA", "LA", "La", "RGBa") or (mode == "RGB" and "transparency" in img.info):
        odd.append(("alpha", mode))
    if mode in ("L", "1", "I;16", "I;16L", "I;16B", "I"):
        odd.append(("grayscale", mode))
    orientation = _orientation(img)
    if isinstance(orientation, int) and orientation not in (0, 1):
        odd.append(("exif_rotated", f"orientation {orientation}"))
    frames = int(getattr(img, "n_frames", 1))
    if frames > 1:
        odd.append(("multi_frame", f"{frames} frames"))
    return odd


def _orientation(img: Image.Image) -> object:
    """The EXIF orientation tag from the header: a PNG's getexif() would decode the whole image to look for a late
    eXIf chunk, so a PNG's is read from an early one only."""
    if img.format != "PNG":
        return img.getexif().get(0x0112)
    raw = img.info.get("exif")
    if not raw:
        return None
    exif = Image.Exif()
    exif.load(raw)
    return exif.get(0x0112)


def _hashes(rec: Record, arr: np.ndarray) -> None:
    """The exact hash of the decoded pixels; imagehash's phash of a 32x32 grey thumbnail and the DCT block it
    thresholds, kept as a direction (brightness moves only the DC term, contrast only the length)."""
    import imagehash
    import scipy.fft

    # SHA-256 runs on the CPU's SHA instructions: 3x blake2b's speed here, the costliest step after decoding
    digest = hashlib.sha256(f"{arr.shape}".encode())  # the shape too: 2x6 and 3x4 differ
    digest.update(np.ascontiguousarray(arr).data)
    rec.pixel = digest.digest()[:16]
    thumb = Image.fromarray(arr).resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX, reducing_gap=2.0).convert("L")
    rec.flat = float(np.asarray(thumb, dtype=np.float32).std()) < FLAT_STD
    rec.phash = _bits(imagehash.phash(thumb).hash)
    coef = scipy.fft.dctn(np.asarray(thumb, np.float64), norm="ortho")[:DCT_SIDE, :DCT_SIDE].reshape(-1)[1:]
    unit = coef / max(float(np.linalg.norm(coef)), 1e-9)
    rec.dct = np.round(unit * 127).astype(np.int8).tobytes()


def _bits(hash_bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(hash_bits.reshape(-1)).tobytes(), "big")


def inspect(file: EncodedFile, pos: int) -> Record:
    """Everything the scan learns from one entry's bytes; any failure becomes the record's reason, never an
    exception (a broken file must not end a scan of a million)."""
    rec = Record(pos)
    if not file.data:
        rec.bad, rec.reason = "zero_byte", "a zero-byte file"
        return rec
    with all_warnings_silenced():  # Pillow's per-file warnings (palette transparency, big images) are counted
        try:
            img = file.open()
        except BadImageError as e:
            if isinstance(e.__context__, Image.UnidentifiedImageError):
                rec.bad, rec.reason = "not_image", _sniff(file.data)
            else:
                rec.bad, rec.reason = _bad_kind(e), _own(e, file.name)
            return rec
        rec.fmt, rec.mode, (rec.width, rec.height) = img.format or "", img.mode, img.size
        try:
            rec.odd = _odd_kinds(img, file.data)
            if rec.width * rec.height > (Image.MAX_IMAGE_PIXELS or 1 << 62):
                rec.odd.append(("over_pixel_limit", f"{rec.width}x{rec.height}"))
                img.close()
                return rec
            _hashes(rec, decode_rgb_array(img))
        except BadImageError as e:
            rec.bad, rec.reason = _bad_kind(e), _own(e, file.name)
        except Exception as e:  # any library error on a hostile file is that file's finding
            rec.bad, rec.reason = _bad_kind(e), f"{type(e).__name__}: {e}"
    return rec


def _own(e: BaseException, name: str) -> str:
    """The loader's message without the file name in front (the report names the file)."""
    text = str(e)
    return text[len(name) + 2:] if text.startswith(f"{name}: ") else text


class ScanDataset(Dataset):
    """Records of every entry of every split, position by position (the loader's workers make them)."""

    def __init__(self, splits: Sequence[Split]) -> None:
        self.splits = list(splits)
        self.starts = np.cumsum([0] + [len(s) for s in self.splits])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, pos: int) -> Record:
        k = int(np.searchsorted(self.starts, pos, side="right") - 1)
        split, i = self.splits[k], pos - int(self.starts[k])
        try:
            file = split.encoded(i)
        except BadImageError as e:
            return Record(pos, "unreadable", _own(e, str(split.samples.items[i][0])))
        except Exception as e:  # a pack or dataset row that cannot be read is that entry's finding
            return Record(pos, "unreadable", f"{type(e).__name__}: {e}")
        return inspect(file, pos)


def _records(batch: list[Record]) -> list[Record]:
    return batch


@dataclass
class ScanResult:
    """Per entry (by position over all splits) the columns the checks need; the few findings as lists."""

    split: np.ndarray  # int8: index into DataSet.splits
    index: np.ndarray  # int64: the entry's index in its split
    label: np.ndarray  # int64: class index, or inputs.NO_LABEL
    decoded: np.ndarray  # bool: pixels decoded and hashed
    width: np.ndarray
    height: np.ndarray
    pixel: np.ndarray  # S16
    phash: np.ndarray  # uint64
    dct: np.ndarray  # int8, (N, 63): phash's DCT block as a unit vector x127
    flat: np.ndarray  # bool
    bad: list[dict[str, Any]] = field(default_factory=list)  # {pos, kind, reason}
    odd: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # kind -> [{pos, detail}]
    formats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    workers: int = 0

    @classmethod
    def empty(cls, data: DataSet) -> ScanResult:
        n = data.size
        split = np.concatenate([np.full(len(s), k, np.int8) for k, s in enumerate(data.splits)])
        index = np.concatenate([np.arange(len(s), dtype=np.int64) for s in data.splits])
        label = np.asarray([s.label(i) for s in data.splits for i in range(len(s))], dtype=np.int64)
        return cls(split, index, label, np.zeros(n, bool), np.zeros(n, np.int32), np.zeros(n, np.int32),
                   np.zeros(n, "S16"), np.zeros(n, np.uint64), np.zeros((n, DCT_SIDE * DCT_SIDE - 1), np.int8),
                   np.zeros(n, bool))

    def add(self, rec: Record) -> None:
        p = rec.pos
        self.width[p], self.height[p] = rec.width, rec.height
        if rec.fmt:
            self.formats[rec.fmt] = self.formats.get(rec.fmt, 0) + 1
        for kind, detail in rec.odd:
            self.odd.setdefault(kind, []).append({"pos": p, "detail": detail})
        if rec.bad:
            self.bad.append({"pos": p, "kind": rec.bad, "reason": rec.reason})
        elif rec.pixel:
            self.decoded[p], self.pixel[p], self.flat[p] = True, rec.pixel, rec.flat
            self.phash[p], self.dct[p] = rec.phash, np.frombuffer(rec.dct, np.int8)

    @property
    def images_per_sec(self) -> float:
        return len(self.split) / self.seconds if self.seconds > 0 else 0.0


def scan(data: DataSet, workers: int, progress: bool = True, batch_size: int = 16) -> ScanResult:
    """Every entry of data through inspect(), in `workers` loader processes (0: in this one), with a progress bar;
    returns the columns and findings and the scan's own rate (images/s over the whole scan, start-up included)."""
    from ..core.extras import require

    require("imagehash", "check", "check-data's perceptual hashes")
    import scipy.fft  # noqa: F401 - imported once here: forked workers inherit it instead of importing it each
    result = ScanResult.empty(data)
    ds = ScanDataset(data.splits)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_records,
                        prefetch_factor=4 if workers else None)
    start = time.perf_counter()
    with tqdm(total=len(ds), desc="scan", unit="img", disable=None if progress else True, leave=False,
              dynamic_ncols=True) as bar:
        for batch in loader:
            for rec in batch:
                result.add(rec)
            bar.update(len(batch))
    result.seconds, result.workers = time.perf_counter() - start, workers
    return result
