"""Top-k predictions for image files and folders of them (the seeds' online demo); a bad file fails alone."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..config import spelled
from ..config.limits import check_batch_memory, check_count
from ..core.errors import BadImageError, ConfigError
from ..data.loader import DeviceNormalizer
from ..data.transforms import eval_transform, transform_file
from ..engine.tta import check_tta, tta_forward
from .defaults import PREDICT_BATCH_SIZE
from .runtime import ModelSource, Runner, load_runner


@dataclass
class Prediction:
    file: str
    top: list[dict[str, Any]] = field(default_factory=list)  # {"class", "index", "prob"}, best first
    error: str | None = None
    # a multi-label model: the classes whose score reaches their threshold, {"class", "index", "score"}, best first
    labels: list[dict[str, Any]] | None = None


def is_multilabel(info: Any) -> bool:
    return info.extra.get("task") == "multilabel"


def label_thresholds(info: Any) -> list[float]:
    """A multi-label model's per-class thresholds: tuned (`eval --tune-thresholds`) or 0.5 each."""
    tuned = info.extra.get("thresholds")
    return list(tuned) if tuned else [0.5] * info.num_classes


def write_thresholds(path: str | Path, classes: Sequence[str], thresholds: Sequence[float]) -> None:
    """`class threshold` lines, one per class in label order (what `predict --thresholds` reads)."""
    from ..core.files import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(f"{c}\t{t:.6f}\n" for c, t in zip(classes, thresholds)))


def read_thresholds(path: str | Path, classes: Sequence[str]) -> list[float]:
    """The thresholds of a `class threshold` file for a model of these classes; a file of another model (a class
    it lacks, one missing, another order) or a bad number is a ConfigError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--thresholds: no such file: {path}")
    rows = [(n, line.rsplit(None, 1)) for n, line in enumerate(path.read_text().splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]
    out: list[float] = []
    for i, (n, parts) in enumerate(rows):
        if len(parts) != 2:
            raise ConfigError(f"{path}:{n}: expected 'class threshold'")
        name, value = parts[0].strip(), parts[1]
        if i >= len(classes) or name != classes[i]:
            want = classes[i] if i < len(classes) else "no more classes"
            raise ConfigError(f"{path}:{n}: class {name!r} where the model has {want!r}: thresholds of another "
                              "model?")
        try:
            t = float(value)
        except ValueError:
            raise ConfigError(f"{path}:{n}: {value!r} is not a number") from None
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"{path}:{n}: threshold {t} outside 0..1")
        out.append(t)
    if len(out) != len(classes):
        raise ConfigError(f"{path}: {len(out)} thresholds for a model of {len(classes)} classes")
    return out


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """The files to predict, in input order: a file as given, a folder as every image under it (recursively,
    sorted by path; hidden files and folders left out, as a data set's are). A folder with no image stays
    itself, so its answer says so."""
    out: list[Path] = []
    for given in paths:
        p = Path(given)
        if not p.is_dir():
            out.append(p)
            continue
        found = [Path(folder) / f
                 for folder, subdirs, files in sorted(os.walk(p, followlinks=True))
                 if not any(part.startswith(".") for part in Path(folder).relative_to(p).parts)
                 for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")]
        out.extend(found or [p])
    return out


def _decode(paths: list[Path], transform) -> tuple[list[torch.Tensor | None], list[str | None]]:
    images: list[torch.Tensor | None] = []
    errors: list[str | None] = []
    for p in paths:
        try:
            if p.is_dir():
                raise BadImageError(f"{p}: a folder with no images in it ({', '.join(IMG_EXTENSIONS)})")
            if not p.is_file():
                raise BadImageError(f"{p}: no such file")
            images.append(transform_file(transform, p))  # as eval reads its images: the same pixels
            errors.append(None)
        except BadImageError as e:
            images.append(None)
            errors.append(str(e))
    return images, errors


def top_classes(runner: Runner, normalizer: DeviceNormalizer, images: list[torch.Tensor], k: int,
                tta: str | None = None) -> tuple[list[list[float]], list[list[int]]]:
    """The k most probable classes of each uint8 CHW image, (probabilities, indices) best first: the one
    computation behind predict and serve, so a served answer is predict's. A multi-label model's are its
    sigmoid scores, each class on its own."""
    if not images:
        return [], []
    x = normalizer(torch.stack(images))
    plain, averaged = tta_forward(runner, x, tta, runner.device)  # the runner applies its own precision
    logits = plain if averaged is None else averaged
    probs = logits.sigmoid() if is_multilabel(runner.info) else logits.softmax(dim=1)
    top_p, top_i = probs.topk(k, dim=1)
    return top_p.cpu().tolist(), top_i.cpu().tolist()


def predict_files(runner: Runner, paths: Sequence[str | Path], topk: int = 5, batch_size: int = PREDICT_BATCH_SIZE,
                  decode: str | None = None, tta: str | None = None) -> list[Prediction]:
    """Predictions in input order, a folder's images in its place (expand_inputs); undecodable files carry an
    error naming them instead of classes.

    decode: None or pil is the reference pipeline (Pillow's full decode, torchvision's Resize + CenterCrop), as
    eval uses by default; fast decodes JPEGs at a reduced DCT scale where the output size allows.
    tta: flip | flip+crops: the probabilities are the softmax of the logits averaged over the views (engine.tta),
    as eval's TTA numbers are measured; refused for a file with TTA built in.
    """
    info = runner.info
    tta = check_tta(tta, info.extra.get("tta"))
    transform = eval_transform(info.img_size, info.crop_pct, info.interpolation, decode)
    normalizer = DeviceNormalizer(info.mean, info.std, runner.device)
    multilabel = is_multilabel(info)
    thresholds = label_thresholds(info) if multilabel else []
    # a multi-label answer's label set needs every class's score; top is still cut to topk
    k = info.num_classes if multilabel else min(topk, info.num_classes)
    paths = expand_inputs(paths)
    # refused before decoding: a batch of 0 predicts nothing, an absurd size x batch ends in the OOM killer
    check_count(batch_size, spelled("batch_size"))
    check_batch_memory(min(batch_size, len(paths)), info.img_size, f"{spelled('batch_size')} and "
                       f"{spelled('img_size')}")
    results: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images, errors = _decode(chunk, transform)
        good = [i for i, img in enumerate(images) if img is not None]
        probs, idx = top_classes(runner, normalizer, [img for img in images if img is not None], k, tta)
        row = dict(zip(good, range(len(good))))
        for i, path in enumerate(chunk):
            if errors[i] is not None:
                results.append(Prediction(str(path), error=errors[i]))
                continue
            j = row[i]
            top = [{"class": info.class_name(c), "index": c, "prob": p} for c, p in zip(idx[j], probs[j])]
            labels = ([{"class": info.class_name(c), "index": c, "score": p} for c, p in zip(idx[j], probs[j])
                       if p >= thresholds[c]] if multilabel else None)
            results.append(Prediction(str(path), top[:topk], labels=labels))
    return results


def predict(model: ModelSource, images: list[str | Path] | str | Path, topk: int = 5, device: str = "auto",
            precision: str = "fp32", batch_size: int = PREDICT_BATCH_SIZE, decode: str | None = None,
            raw_weights: bool = False, tta: str | None = None) -> list[dict[str, Any]]:
    """The library's `visionzoo.predict`: top-k classes for image files (a folder: every image under it), as plain
    dicts in input order:
    {"file", "top": [{"class", "index", "prob"}, ...], "error"} (error names an undecodable file, else None).

    model: a checkpoint or exported file, or a ModelSpec (a model name with weights from anywhere).
    tta: flip | flip+crops, probabilities from the logits averaged over the views (engine.tta)."""
    if topk < 1:
        raise ConfigError(f"topk must be at least 1 (got {topk})")
    check_tta(tta)
    paths = [images] if isinstance(images, (str, Path)) else list(images)
    runner = load_runner(model, device, precision, raw_weights=raw_weights)
    return [{"file": r.file, "top": r.top, "error": r.error, **({"labels": r.labels} if r.labels is not None else {})}
            for r in predict_files(runner, paths, topk, batch_size, decode, tta)]
