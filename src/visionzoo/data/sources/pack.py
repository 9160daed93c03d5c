"""A local pack (`visionzoo pack`): WebDataset shards read at random through their sidecar index."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from ...config import DataConfig
from ..datasets import Samples
from ..packed import is_packed, packed_samples, read_classes, read_pack_meta
from ..streaming import is_url
from .base import Source


class PackSource(Source):
    """The pack folder at data; a split with its own list file (train_list, val_list) is read from the list."""

    kind: ClassVar[str] = "pack"

    @classmethod
    def matches(cls, cfg: DataConfig, split: str) -> bool:
        return bool(cfg.data) and not is_url(cfg.data) and is_packed(cfg.data)

    @property
    def root(self) -> Path:
        assert self.cfg.data is not None
        return Path(self.cfg.data)

    def samples(self, split: str, classes: Sequence[str] | None = None, num_classes: int | None = None) -> Samples:
        return packed_samples(self.root, self.split_name(split), list(classes) if classes is not None else None)

    def classes(self) -> list[str]:
        read_pack_meta(self.root)  # the old format: the error that says how to convert it
        return read_classes(self.root)

    def describe(self) -> str:
        return f"pack {self.cfg.data}"
