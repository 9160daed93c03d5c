"""Top-k predictions for image files (the seeds' online demo); a bad file fails alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.errors import BadImageError
from ..data.loader import DeviceNormalizer
from ..data.transforms import eval_transform, transform_file
from .runtime import Runner


@dataclass
class Prediction:
    file: str
    top: list[dict[str, Any]] = field(default_factory=list)  # {"class", "index", "prob"}, best first
    error: str | None = None


def _decode(paths: list[Path], transform) -> tuple[list[torch.Tensor | None], list[str | None]]:
    images: list[torch.Tensor | None] = []
    errors: list[str | None] = []
    for p in paths:
        try:
            if not p.is_file():
                raise BadImageError(f"{p}: no such file")
            images.append(transform_file(transform, p))  # as eval reads its images: the same pixels
            errors.append(None)
        except BadImageError as e:
            images.append(None)
            errors.append(str(e))
    return images, errors


def predict_files(runner: Runner, paths: list[str | Path], topk: int = 5, batch_size: int = 32,
                  decode: str | None = None) -> list[Prediction]:
    """Predictions in input order; undecodable files carry an error naming them instead of classes.

    decode: None or pil is the reference pipeline (Pillow's full decode, torchvision's Resize + CenterCrop), as
    eval uses by default; fast decodes JPEGs at a reduced DCT scale where the output size allows.
    """
    info = runner.info
    transform = eval_transform(info.img_size, info.crop_pct, info.interpolation, decode)
    normalizer = DeviceNormalizer(info.mean, info.std, runner.device)
    k = min(topk, info.num_classes)
    results: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = [Path(p) for p in paths[start : start + batch_size]]
        images, errors = _decode(chunk, transform)
        good = [i for i, img in enumerate(images) if img is not None]
        probs: list[list[float]] = []
        idx: list[list[int]] = []
        if good:
            logits = runner(normalizer(torch.stack([img for img in images if img is not None])))
            top_p, top_i = logits.softmax(dim=1).topk(k, dim=1)
            probs, idx = top_p.cpu().tolist(), top_i.cpu().tolist()
        row = dict(zip(good, range(len(good))))
        for i, path in enumerate(chunk):
            if errors[i] is not None:
                results.append(Prediction(str(path), error=errors[i]))
                continue
            j = row[i]
            top = [{"class": info.class_name(c), "index": c, "prob": p} for c, p in zip(idx[j], probs[j])]
            results.append(Prediction(str(path), top))
    return results
