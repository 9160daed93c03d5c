"""Evaluation-style data for any model file: the model's preprocessing over a chosen split."""

from __future__ import annotations

import os
from dataclasses import fields

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig
from ..core.errors import DataError
from ..data.datasets import DummyDataset, ImageDataset
from ..data.loader import DeviceNormalizer, find_samples, make_loader
from ..data.transforms import eval_transform
from .model_info import ModelInfo, with_preprocessing


def resolve_data(info: ModelInfo, data: DataConfig | None) -> DataConfig:
    """The given data config, or the data the model was trained with (recorded in its file)."""
    if data is not None:
        return data
    saved = info.extra.get("data") or {}
    if not saved.get("data") and not saved.get("dummy") and not saved.get("val_list"):
        raise DataError(f"{info.model_name}: the model file records no data set; pass --data DIR")
    known = {f.name for f in fields(DataConfig)}
    return DataConfig(**{k: v for k, v in saved.items() if k in known})


def eval_dataset(info: ModelInfo, data: DataConfig, split: str = "val") -> tuple[Dataset, list[str], ModelInfo]:
    """A split through the model's evaluation transform (uint8 CHW), its class names, and the info used.

    Class folders are mapped through the model's class names so labels cannot shift. The train split
    is offered too (for int8 calibration), still with the evaluation transform.
    """
    info = with_preprocessing(info, data.eval_img_size or data.img_size, data.crop_pct, data.interpolation)
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
    return loader_for(ds, data, batch_size, rank, world_size, pin_memory), classes, info


def loader_for(ds: Dataset, data: DataConfig, batch_size: int, rank: int = 0, world_size: int = 1,
               pin_memory: bool = False) -> DataLoader:
    """An evaluation loader (each image on exactly one rank) over any dataset, with data's workers."""
    workers = min(data.workers, os.cpu_count() or 1)  # more workers than cores only adds contention
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
