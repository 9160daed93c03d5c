"""Class balance, image size and aspect-ratio distributions, tiny and near-uniform images."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .inputs import DataSet
from .scan import ScanResult

ASPECT_BINS = [0.0, 0.5, 0.75, 0.9, 1.1, 1.34, 2.0, float("inf")]  # w/h: tall ... square ... wide
LIST_MAX = 1000  # files listed per finding in report.json beyond its count


def class_counts(data: DataSet) -> dict[str, dict[str, int]]:
    """split -> class name -> entries (readable or not: what the data holds); multi-label entries count once per
    label, unlabelled ones under "(none)"."""
    out: dict[str, dict[str, int]] = {}
    for split in data.splits:
        counts: Counter[str] = Counter()
        for _, y in split.samples.items:
            ys = y if isinstance(y, tuple) else (y,)
            for label in ys or (-1,):
                counts[data.classes[label] if 0 <= label < len(data.classes) else "(none)"] += 1
        out[split.name] = {c: counts.get(c, 0) for c in data.classes} | (
            {"(none)": counts["(none)"]} if counts.get("(none)") else {})
    return out


def balance(counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The training split's smallest and largest class and their ratio (inf with an empty class)."""
    train = {c: n for c, n in next(iter(counts.values()), {}).items() if c != "(none)"}
    if not train:
        return {}
    small, large = min(train, key=train.__getitem__), max(train, key=train.__getitem__)
    ratio = train[large] / train[small] if train[small] else float("inf")
    return {"smallest": {"class": small, "images": train[small]}, "largest": {"class": large, "images": train[large]},
            "ratio": round(ratio, 3) if ratio != float("inf") else None}


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    q = np.percentile(values, [0, 5, 50, 95, 100])
    return {k: round(float(v), 3) for k, v in zip(("min", "p5", "median", "p95", "max"), q)}


def size_stats(res: ScanResult) -> dict[str, Any]:
    """Width, height and aspect-ratio percentiles over every image whose header was read, the aspect histogram
    and the formats."""
    known = res.width > 0
    w, h = res.width[known].astype(np.float64), res.height[known].astype(np.float64)
    aspect = w / np.maximum(h, 1)
    hist, _ = np.histogram(aspect, ASPECT_BINS)
    labels = [f"{lo:g}-{hi:g}" if hi != float("inf") else f">{lo:g}" for lo, hi in zip(ASPECT_BINS, ASPECT_BINS[1:])]
    return {"width": _percentiles(w), "height": _percentiles(h), "aspect_ratio": _percentiles(aspect),
            "aspect_histogram": dict(zip(labels, hist.tolist())), "formats": dict(sorted(res.formats.items()))}


def tiny_images(res: ScanResult, min_side: int, name: Any) -> dict[str, Any]:
    """Images whose shorter side is below min_side px: upscaled many times to the model's input, little to learn."""
    short = np.minimum(res.width, res.height)
    pos = np.flatnonzero((res.width > 0) & (short < min_side))
    files = [{"file": name(int(p)), "width": int(res.width[p]), "height": int(res.height[p])} for p in pos[:LIST_MAX]]
    return {"min_side": min_side, "count": len(pos), "files": files}


def flat_images(res: ScanResult, name: Any) -> dict[str, Any]:
    """Near-uniform images: their perceptual hash is noise, so they are left out of the near-duplicate search."""
    pos = np.flatnonzero(res.flat & res.decoded)
    return {"count": len(pos), "files": [name(int(p)) for p in pos[:LIST_MAX]]}
