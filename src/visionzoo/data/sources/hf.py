"""A Hugging Face dataset: a `save_to_disk` folder, a folder of parquet files or `hf:NAME` (data/hf.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from ...config import DataConfig
from ..datasets import Samples
from ..hf import hf_samples, is_hf
from .base import Source


class HFSource(Source):
    """The dataset's train split and its validation split (val_split; else validation, val or test)."""

    kind: ClassVar[str] = "hf"

    @classmethod
    def matches(cls, cfg: DataConfig, split: str) -> bool:
        return is_hf(cfg.data)

    def samples(self, split: str, classes: Sequence[str] | None = None, num_classes: int | None = None) -> Samples:
        cfg = self.cfg
        assert cfg.data is not None
        return hf_samples(cfg.data, split, classes, cfg.image_column, cfg.label_column, cfg.val_split,
                          cfg.task)

    def describe(self) -> str:
        return f"Hugging Face dataset {self.cfg.data}"
