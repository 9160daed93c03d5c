"""Evaluation-style data for any model file: the model's preprocessing over a chosen split."""

from __future__ import annotations

import os
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig, eval_size, spelled
from ..config.limits import check_batch_memory, check_count, cpu_count
from ..core.errors import DataError
from ..data.datasets import DummyDataset, ImageDataset
from ..data.loader import DeviceNormalizer, find_samples, make_loader
from ..data.transforms import eval_transform
from .model_info import DATA_KEYS, ModelInfo, with_preprocessing

# the recorded data keys that are paths, each with what its flag takes (for the hint to pass it)
PATH_KEYS = {"data": "DIR", "val_list": "FILE", "val_root": "DIR", "train_list": "FILE", "train_root": "DIR"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # builtin:, hf:, pipe:, s3://, http://: not a plain path
# the settings that say where a split is: data settings without any (--img-size, --workers) refine the recorded data
LOCATION_KEYS = ("data", "val_list", "val_root", "train_list", "train_root", "dummy")


def resolve_data(info: ModelInfo, data: DataConfig | None, source: object = None) -> DataConfig:
    """The given data config, or the data the model was trained with (recorded in its file); a given config that
    says nothing about where the data is (`eval --checkpoint X --workers 2`, `--img-size 64`) takes the recorded
    data's place with its own other settings.

    A relative path recorded there meant something in the folder training ran in; with source (the model
    file) it is looked up there first (the run folder minus the recorded relative output, e.g.
    /proj for /proj/runs/x/best.pth trained with --output runs/x), then in the run folder itself, then here.
    A path found nowhere is a DataError that says to pass the flag, instead of a bare "not a folder".
    """
    if data is not None and any(getattr(data, key) for key in LOCATION_KEYS):
        return data
    recorded = _recorded_data(info, source)
    return recorded if data is None else replace(data, **{key: getattr(recorded, key) for key in DATA_KEYS})


def _recorded_data(info: ModelInfo, source: object) -> DataConfig:
    """The data the model file records, its relative paths found where training ran (see resolve_data)."""
    saved = info.extra.get("data") or {}
    if not saved.get("data") and not saved.get("dummy") and not saved.get("val_list"):
        raise DataError(f"{info.model_name}: the model file records no data set; pass {_flag_hint('data')}")
    known = {f.name for f in fields(DataConfig)}
    cfg = DataConfig(**{k: v for k, v in saved.items() if k in known})
    if cfg.dummy:
        return cfg
    label = str(source) if isinstance(source, (str, Path)) else info.model_name
    bases = training_dirs(source, info.extra.get("trained_output"))
    found: dict[str, Any] = {}
    for key in PATH_KEYS:
        value = getattr(cfg, key)
        if not value or not _plain_relative(value):
            continue
        hit = next((base / value for base in bases if (base / value).exists()), None)
        if hit is not None:
            found[key] = str(hit)
        elif not Path(value).exists() and not _under_data_root(key, value, found.get("data") or cfg.data):
            raise DataError(f"{label} records its {key} as {value!r} (relative to where it was trained), not "
                            f"found from here: pass {_flag_hint(key)}")
    return replace(cfg, **found) if found else cfg


def training_dirs(source: object, output: object) -> list[Path]:
    """Where a model file's relative data paths may start: the folder training ran in (the run folder with the
    recorded relative --output taken off its end) and the run folder itself; none for a model that is no file."""
    if not isinstance(source, (str, Path)):
        return []
    run_dir = Path(os.path.abspath(source)).parent  # abspath: the path as the user sees it, links not followed
    dirs = []
    if isinstance(output, str) and output and not Path(output).is_absolute():
        parts = Path(os.path.normpath(output)).parts
        if ".." not in parts and parts != (".",) and run_dir.parts[-len(parts):] == parts:
            dirs.append(Path(*run_dir.parts[: -len(parts)]))
    return [*dirs, run_dir] if run_dir not in dirs else dirs


def _plain_relative(value: str) -> bool:
    return not Path(value).is_absolute() and not _SCHEME.match(value) and "::" not in value


def _under_data_root(key: str, value: str, root: str | None) -> bool:
    """A list file may be named relative to the data root (find_samples looks there too)."""
    return key.endswith("_list") and root is not None and (Path(root) / value).exists()


def _flag_hint(key: str) -> str:
    """`--data DIR` on the command line, `data=DIR` in Python."""
    name = spelled(key)
    return f"{name} {PATH_KEYS[key]}" if name.startswith("--") else f"{name}={PATH_KEYS[key]}"


def eval_dataset(info: ModelInfo, data: DataConfig, split: str = "val") -> tuple[Dataset, list[str], ModelInfo]:
    """A split through the model's evaluation transform (uint8 CHW), its class names, and the info used.

    Class folders are mapped through the model's class names so labels cannot shift. The train split
    is offered too (for int8 calibration), still with the evaluation transform.
    """
    info = with_preprocessing(info, eval_size(data.eval_img_size, data.img_size), data.crop_pct, data.interpolation)
    if data.dummy:
        size = data.dummy_val_size if split == "val" else data.dummy_train_size
        ds = DummyDataset(size, info.num_classes, info.img_size, seed=1 if split == "val" else 0)
        return ds, [info.class_name(i) for i in range(info.num_classes)], info
    # num_classes 0: no model (preprocess without --checkpoint): the folders define the classes
    samples = find_samples(data, split, info.classes, info.num_classes or None)
    if info.num_classes and samples.num_classes > info.num_classes:
        raise DataError(f"data has {samples.num_classes} classes, the model has {info.num_classes}")
    tf = eval_transform(info.img_size, info.crop_pct, info.interpolation, data.decode)
    return ImageDataset(samples, tf, data.skip_bad_images), list(samples.classes), info


def eval_loader(info: ModelInfo, data: DataConfig, split: str = "val", batch_size: int = 64,
                rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> tuple[DataLoader, list[str], ModelInfo]:
    ds, classes, info = eval_dataset(info, data, split)
    # before the first batch is decoded: an absurd size x batch would end in the OOM killer, not an error
    check_count(batch_size, spelled("batch_size"))
    check_batch_memory(min(batch_size, len(ds)), info.img_size,  # type: ignore[arg-type]
                       f"{spelled('batch_size')} and {spelled('img_size')}")
    return loader_for(ds, data, batch_size, rank, world_size, pin_memory), classes, info


def loader_for(ds: Dataset, data: DataConfig, batch_size: int, rank: int = 0, world_size: int = 1,
               pin_memory: bool = False) -> DataLoader:
    """An evaluation loader (each image on exactly one rank) over any dataset, with data's workers."""
    workers = min(data.workers, cpu_count())  # more workers than cores only adds contention
    return make_loader(ds, batch_size, workers, False, 0, rank, world_size, pin_memory)


def first_batches(loader: DataLoader, normalizer: DeviceNormalizer, n: int) -> list[torch.Tensor]:
    """Up to n (>= 1) normalised batches (for calibration and export checks)."""
    out = []
    for images, _, _ in loader:
        if len(images):
            out.append(normalizer(images))
        if len(out) >= n:
            break
    return out
