"""Built-in data sets that need no download: `--data builtin:digits`.

`digits` is the UCI handwritten digits set bundled with scikit-learn (1,797 real 8x8 scans,
10 classes), written once as an ImageFolder of 32x32 PNGs: every fifth image of a class goes to val
(1,442 train / 355 val).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import DataError

PREFIX = "builtin:"  # --data builtin:NAME
BUILTIN = ("digits",)


def cache_dir() -> Path:
    return Path(os.environ.get("VISIONZOO_CACHE", Path.home() / ".cache" / "visionzoo"))


def write_digits(root: Path, size: int = 32) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    for img8, label in zip(digits.images, digits.target, strict=True):
        label = int(label)
        k = counts.get(label, 0)
        counts[label] = k + 1
        split = "val" if k % 5 == 4 else "train"  # every fifth image of each class: a stratified 20%
        arr = (img8 * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L").resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
        out = root / split / f"{label}"
        out.mkdir(parents=True, exist_ok=True)
        img.save(out / f"digit_{label}_{k:04d}.png")


def materialize(name: str) -> Path:
    """Path of a built-in data set's ImageFolder, writing it on first use (atomically)."""
    if name not in BUILTIN:
        raise DataError(f"unknown built-in data set {name!r}; built-in: {', '.join(BUILTIN)}")
    root = cache_dir() / f"{name}-v1"
    if (root / "val").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root.parent))
    try:
        write_digits(tmp)
        try:
            tmp.rename(root)
        except OSError:  # another process won the race; its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
