"""Synthetic images (dummy): no files, cheap to produce, for performance runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from torch.utils.data import Dataset

from ...config import DataConfig
from ..datasets import DummyDataset, Samples
from .base import Source, no_samples


class DummySource(Source):
    """dummy_train_size / dummy_val_size random images of dummy_classes classes (the model's count, when set)."""

    kind: ClassVar[str] = "dummy"
    has_samples: ClassVar[bool] = False

    @classmethod
    def matches(cls, cfg: DataConfig, split: str) -> bool:
        return cfg.dummy

    def samples(self, split: str, classes: Sequence[str] | None = None, num_classes: int | None = None) -> Samples:
        raise no_samples(self)

    def classes(self) -> list[str]:
        return [str(i) for i in range(self.cfg.dummy_classes)]

    def dataset(self, split: str, transform: Callable, *, seed: int, img_size: int,
                classes: Sequence[str] | None = None,
                num_classes: int | None = None) -> tuple[Dataset, list[str]]:
        # already uint8 tensors at the crop size: the transform is not applied (no decoding to measure)
        cfg, train = self.cfg, split == "train"
        n = num_classes or cfg.dummy_classes
        size = cfg.dummy_train_size if train else cfg.dummy_val_size
        return DummyDataset(size, n, img_size, seed if train else seed + 1), [str(i) for i in range(n)]

    def describe(self) -> str:
        return f"synthetic images ({self.cfg.dummy_classes} classes)"
