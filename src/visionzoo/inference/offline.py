"""The offline pipeline: preprocess images to binary files, run a model over them, score the dumps.

preprocess writes each image as the evaluation transform + normalisation produce it (float32 CHW,
little-endian, no header) and an info file `info.tsv` (file, label, shape, source). infer writes one
`.npy` logits file per input. metric scores dumps against labels like the seed's
vision_metric_ImageNet.py (top-1..top-5).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Sized
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

from ..config import DataConfig, spelled
from ..config.limits import check_batch_memory, check_count
from ..core.errors import ConfigError, DataError
from ..core.files import atomic_path, write_json
from ..data.loader import DeviceNormalizer
from .eval_data import eval_loader
from .model_info import ModelInfo
from .runtime import Runner

log = logging.getLogger("visionzoo")

INFO_FILE = "info.tsv"
META_FILE = "preprocess.json"
INFO_HEADER = "file\tlabel\tshape\tsource"


def _bin_names(sources: list[str]) -> list[str]:
    """Output names mirroring the sources' layout below their common folder (class folders kept)."""
    resolved = [Path(s).resolve() for s in sources]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    names = [p.relative_to(root).with_suffix(".bin").as_posix() for p in resolved]
    if len(set(names)) != len(names):  # x.png and x.jpg side by side would overwrite each other
        seen: dict[str, str] = {}
        for name, src in zip(names, sources):
            if name in seen:
                raise DataError(f"{src} and {seen[name]} would both be written as {name}; rename one")
            seen[name] = src
    return names


def preprocess(info: ModelInfo, data: DataConfig, output: str | Path, split: str = "val",
               batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Write every image of `split` preprocessed exactly as `visionzoo eval` feeds the model."""
    out = Path(output)
    if (out / INFO_FILE).exists():
        raise ConfigError(f"--output {out} already holds preprocessed data ({INFO_FILE}); choose another --output")
    # every image must map to its file, so a bad image is an error naming it rather than a skip
    loader, classes, info = eval_loader(info, replace(data, skip_bad_images=False), split, batch_size)
    ds = loader.dataset
    samples = getattr(ds, "samples", None)
    sources = [p for p, _ in samples.items] if samples is not None and samples.items else None
    names = _bin_names(sources) if sources else [f"dummy_{i:06d}.bin" for i in range(len(cast(Sized, ds)))]
    normalizer = DeviceNormalizer(info.mean, info.std, torch.device("cpu"))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    index = 0
    for images, labels, _ in tqdm(loader, desc="preprocess", disable=None if progress else True, leave=False):
        x = normalizer(images).numpy().astype("<f4")
        for arr, label in zip(x, labels.tolist()):
            source, name = (sources[index] if sources else "dummy"), names[index]
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            arr.tofile(out / name)
            rows.append(f"{name}\t{label}\t{','.join(map(str, arr.shape))}\t{source}")
            index += 1
    meta = {"dtype": "float32", "layout": "CHW", "normalised": True, "count": len(rows), "classes": classes,
            "img_size": info.img_size, "crop_pct": info.crop_pct, "interpolation": info.interpolation,
            "mean": list(info.mean), "std": list(info.std), "model": info.model_name}
    write_json(out / META_FILE, meta)
    with atomic_path(out / INFO_FILE) as tmp:  # written last: its presence means the folder is complete
        tmp.write_text(INFO_HEADER + "\n" + "\n".join(rows) + "\n")
    return {"output": str(out), "images": len(rows), "info": str(out / INFO_FILE)}


def read_info(prep: Path) -> list[tuple[str, int, tuple[int, ...]]]:
    path = prep / INFO_FILE
    if not path.is_file():
        raise DataError(f"{prep}: no {INFO_FILE}; make it with `visionzoo preprocess`")
    rows = []
    for n, line in enumerate(path.read_text().splitlines()[1:], start=2):
        parts = line.split("\t")
        try:
            rows.append((parts[0], int(parts[1]), tuple(int(s) for s in parts[2].split(","))))
        except (IndexError, ValueError):
            raise DataError(f"{path}:{n}: expected file, label, shape (3,H,W) separated by tabs") from None
    return rows


def _read_bin(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: listed in {INFO_FILE} but missing")
    arr = np.fromfile(path, dtype="<f4")
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path}: {arr.size} float32 values, expected {'x'.join(map(str, shape))}")
    return arr.reshape(shape)


def infer(runner: Runner, prep: str | Path, output: str | Path, batch_size: int = 64,
          progress: bool = True) -> dict[str, Any]:
    """Run the model over a preprocessed folder; write OUTPUT/<file>.npy logits per input."""
    prep, out = Path(prep), Path(output)
    rows = read_info(prep)
    meta = json.loads((prep / META_FILE).read_text()) if (prep / META_FILE).exists() else {}
    info = runner.info
    for key, ours in (("img_size", info.img_size), ("mean", list(info.mean)), ("std", list(info.std))):
        if key in meta and meta[key] != ours:
            log.warning("%s was preprocessed with %s=%s but the model expects %s", prep, key, meta[key], ours)
    check_count(batch_size, spelled("batch_size"))  # a batch of 0 or less would write nothing, silently
    if rows:  # the files' own size: an absurd batch of them is refused before it is read
        check_batch_memory(min(batch_size, len(rows)), max(max(shape[-2:]) for _, _, shape in rows),
                           f"{spelled('batch_size')} and the preprocessed size")
    out.mkdir(parents=True, exist_ok=True)
    t0, seconds = time.perf_counter(), 0.0
    for start in tqdm(range(0, len(rows), batch_size), desc="infer", disable=None if progress else True, leave=False):
        chunk = rows[start : start + batch_size]
        x = np.stack([_read_bin(prep / f, shape) for f, _, shape in chunk])
        t = time.perf_counter()
        logits = runner(torch.from_numpy(x).to(runner.device)).cpu().numpy()
        seconds += time.perf_counter() - t
        for (f, _, _), row in zip(chunk, logits):
            target = out / Path(f).with_suffix(".npy")
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, row)
    report = {"output": str(out), "images": len(rows), "model_seconds": round(seconds, 3),
              "total_seconds": round(time.perf_counter() - t0, 3),
              "model_images_per_s": round(len(rows) / seconds, 2) if seconds else None}
    write_json(out / "infer.json", report)
    return report


def read_labels(path: str | Path) -> dict[str, int]:
    """Labels keyed by file path without suffix: an info.tsv from preprocess, or "name label" lines."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    labels: dict[str, int] = {}
    lines = path.read_text().splitlines()
    tsv = bool(lines) and lines[0] == INFO_HEADER
    for n, line in enumerate(lines[1:] if tsv else lines, start=2 if tsv else 1):
        if not line.strip():
            continue
        parts = line.split("\t") if tsv else line.split()
        try:
            labels[str(Path(parts[0]).with_suffix(""))] = int(parts[1])
        except (IndexError, ValueError):
            raise DataError(f"{path}:{n}: expected '<file> <label>'") from None
    return labels


def load_logits(path: Path, num_classes: int | None = None) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).reshape(-1)
    if path.suffix == ".txt":
        return np.loadtxt(path, dtype=np.float32).reshape(-1)
    return np.fromfile(path, dtype="<f4")  # raw float32, as inference engines dump it


def metric(pred: str | Path, labels_file: str | Path, topk: int = 5) -> dict[str, Any]:
    """Top-1..top-k accuracy (percent) of dumped logits against labels, matched by relative path."""
    pred = Path(pred)
    labels = read_labels(labels_file)
    files = sorted(p for p in pred.rglob("*") if p.suffix in (".npy", ".bin", ".txt") and p.is_file())
    hits = np.zeros(topk)
    matched, unlabeled = 0, cast(list[str], [])
    for p in files:
        key: str | None = p.relative_to(pred).with_suffix("").as_posix()
        if key not in labels:
            # by file name alone, or without the "_<output index>" that inference tools append (x_1.txt)
            candidates = (p.stem, re.sub(r"_\d+$", "", p.stem))
            key = next((c for c in candidates if c in labels), None)
        if key is None:
            unlabeled.append(str(p))
            continue
        order = np.argsort(-load_logits(p), kind="stable")[:topk]
        ranks = np.nonzero(order == labels[key])[0]
        if len(ranks):
            hits[ranks[0]:] += 1
        matched += 1
    if not matched:
        raise DataError(f"no dump file in {pred} matches a label in {labels_file}")
    result: dict[str, Any] = {f"top{k + 1}": 100.0 * hits[k] / matched for k in range(topk)}
    result.update(num_images=matched, labels=len(labels), missing=len(labels) - matched, unlabeled_files=unlabeled[:20])
    return result
