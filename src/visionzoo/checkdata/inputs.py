"""The data set to check, opened through the project's own sources (data.sources), so every kind training reads
with random access works: class folders, list files, packs, Hugging Face datasets, builtin:NAME.

Streamed shards and synthetic data are refused in one line: there is no file to read one by one (pack the shards
locally, or point DATA at the pack's folder). A bare class-folder tree (DATA/<class>/<image>, no train/) is read
as one split, named train.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import DataConfig, spelled
from ..core.errors import ConfigError, DataError
from ..data.datasets import Samples
from ..data.images import EncodedFile
from ..data.sources import FolderSource, open_source, source_kind

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # builtin:, hf:, s3://, https://: not a local path
NO_LABEL = -1  # an open-set or unlabelled entry (a list's -1), and every entry of multi-label data


@dataclass
class Split:
    """One split's samples and how its entries are named in the report (relative to DATA where they are files)."""

    name: str  # train | val
    samples: Samples
    root: Path

    def __len__(self) -> int:
        return len(self.samples.items)

    @property
    def file_based(self) -> bool:
        """Entries are files on disk (folders, lists), not rows of a pack or a Hugging Face dataset."""
        return self.samples.store is None

    def name_of(self, i: int) -> str:
        """The entry's name in the report: a file relative to DATA (as given when it lies elsewhere), or a packed
        entry's or dataset row's own name."""
        item = str(self.samples.items[i][0])
        if not self.file_based:
            return item
        rel = os.path.relpath(item, self.root)
        return item if rel.startswith("..") else rel

    def encoded(self, i: int) -> EncodedFile:
        """The entry's bytes, named by name_of (a BadImageError when the file cannot be read)."""
        file = self.samples.encoded(i)
        return EncodedFile(file.data, self.name_of(i))

    def label(self, i: int) -> int:
        """The class index; NO_LABEL for an unlabelled entry or multi-label data (a set, not one class)."""
        y = self.samples.items[i][1]
        return NO_LABEL if self.samples.multilabel or not isinstance(y, int) else y


@dataclass
class DataSet:
    cfg: DataConfig
    description: str
    root: Path
    splits: list[Split]
    classes: list[str]
    multilabel: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(s) for s in self.splits)


def _explicit_val(cfg: DataConfig) -> bool:
    return bool(cfg.val_root or cfg.val_list or cfg.val_split)


def _bare_tree(cfg: DataConfig) -> bool:
    """DATA/<class>/<image> with no train/ split folder: the class folders themselves are the one split."""
    if cfg.train_root or cfg.train_list or not cfg.data or source_kind(cfg, "train") is not FolderSource:
        return False
    root = Path(cfg.data)
    return root.is_dir() and not (root / "train").is_dir() and not (root / (cfg.val_split or "val")).is_dir()


def _refuse_streams(cfg: DataConfig) -> None:
    for split in ("train", "val"):
        kind = source_kind(cfg, split)
        if kind.has_samples:
            continue
        what = "synthetic data (--dummy) has no images to check" if cfg.dummy else (
            "streamed shards are read in order, not file by file; check-data reads data with random access: point "
            "DATA at the pack's local folder (visionzoo pack writes one)")
        raise ConfigError(f"check-data: {what}")


def open_data(cfg: DataConfig) -> DataSet:
    """The train split (and the validation split where the data has one) of cfg, labels in the training split's
    class order. A validation split that was asked for (--val, --val-root, --val-list, --val-split) and cannot be
    read is an error; one merely absent is a note."""
    if cfg.data is None and not (cfg.train_list or cfg.train_root):
        raise ConfigError(f"check-data needs DATA (a folder, pack or dataset) or {spelled('train_list')}")
    if cfg.data and not _SCHEME.match(cfg.data) and not Path(cfg.data).exists():
        raise DataError(f"DATA {cfg.data}: no such file or folder")
    _refuse_streams(cfg)
    bare = _bare_tree(cfg)
    if bare:
        cfg = replace(cfg, train_root=cfg.data)
    source = open_source(cfg)
    root = Path(cfg.data) if cfg.data and Path(cfg.data).is_dir() else Path.cwd()
    train = source.samples("train")
    splits = [Split("train", train, root)]
    notes = ["a bare class-folder tree: read as one split (train)"] if bare else []
    if not bare or _explicit_val(cfg):
        try:
            splits.append(Split("val", source.samples("val", train.classes), root))
        except (DataError, ConfigError) as e:
            if _explicit_val(cfg):
                raise
            notes.append(f"no validation split ({e}): train/val leakage not measured")
    return DataSet(cfg, source.describe(), root, splits, list(train.classes), train.multilabel, notes)
