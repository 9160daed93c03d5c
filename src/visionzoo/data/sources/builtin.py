"""Built-in data sets (`builtin:digits`): class folders written into the cache on first use."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ...config import DataConfig
from ..builtin import PREFIX, materialize
from .folders import FolderSource


class BuiltinSource(FolderSource):
    """A built-in set's class folders (data/builtin.py writes them once); train_root / val_root still win."""

    kind: ClassVar[str] = "builtin"

    @classmethod
    def matches(cls, cfg: DataConfig, split: str) -> bool:
        return bool(cfg.data and cfg.data.startswith(PREFIX))

    def root(self) -> Path:
        assert self.cfg.data is not None
        return materialize(self.cfg.data[len(PREFIX):])

    def describe(self) -> str:
        return f"built-in data set {self.cfg.data}"
