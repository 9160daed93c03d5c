"""Class folders (`data/train/<class>/<image>`, train_root / val_root) and list files (train_list / val_list:
`relative/path label` lines, e.g. ImageNet-LT's or a flat ILSVRC2012 validation folder's)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from ...config import DataConfig, spelled
from ...core.errors import ConfigError, DataError
from ..builtin import PREFIX as BUILTIN_PREFIX
from ..builtin import materialize
from ..datasets import Samples, folder_classes, image_folder, list_samples
from ..streaming import is_url
from .base import Source


def local_root(cfg: DataConfig) -> Path | None:
    """cfg.data as a local folder: None when not set; `builtin:NAME` written on first use. Shards at a URL
    are a ConfigError: only training streams them."""
    if cfg.data is None:
        return None
    if is_url(cfg.data):
        raise ConfigError(f"{spelled('data', cfg.data)}: shards at a URL are streamed for training ({spelled('data')} "
                          f"URL or {spelled('train_urls')}/{spelled('val_urls')}); this command reads local data only")
    if cfg.data.startswith(BUILTIN_PREFIX):
        return materialize(cfg.data[len(BUILTIN_PREFIX):])
    return Path(cfg.data)


class FolderSource(Source):
    """One folder per class: data/<split>/<class>/<image>, or the split's own root (train_root, val_root).
    The last kind tried: it takes whatever no other kind claims, and says what is missing."""

    kind: ClassVar[str] = "folders"

    @classmethod
    def matches(cls, cfg: DataConfig, split: str) -> bool:
        return True

    def root(self) -> Path | None:
        return local_root(self.cfg)

    def split_root(self, split: str) -> str | None:
        return self.cfg.train_root if split == "train" else self.cfg.val_root

    def samples(self, split: str, classes: Sequence[str] | None = None, num_classes: int | None = None) -> Samples:
        split_root = self.split_root(split)
        if split_root:
            return image_folder(split_root, classes)
        root = self.root()
        if root is None:
            raise ConfigError(f"no data given: set {spelled('data')} (or {spelled('dummy')} for synthetic data)")
        if not root.exists():
            raise DataError(f"{spelled('data', self.cfg.data)}: {os.path.abspath(root)} does not exist")
        name = self.split_name(split)
        if (root / name).is_dir():
            return image_folder(root / name, classes)
        if split == "val" and not self.cfg.val_split and classes is not None and not (root / "train").is_dir():
            return image_folder(root, classes)  # eval on a bare class-folder tree
        list_flag = spelled("train_list" if split == "train" else "val_list")
        raise DataError(f"{root}: no {name}/ folder (expected {root}/{name}/<class>/<image>) and no {list_flag}")

    def classes(self) -> list[str]:
        split_root = self.split_root("train")
        if split_root:
            return folder_classes(split_root)
        root = self.root()
        if root is not None and (root / "train").is_dir():
            return folder_classes(root / "train")
        return super().classes()  # the error that says what is missing

    def describe(self) -> str:
        roots = [r for r in (self.cfg.train_root, self.cfg.val_root) if r]
        if roots:
            return f"class folders {', '.join(roots)}"
        return f"class folders under {self.cfg.data}" if self.cfg.data else "class folders (no data given)"


class ListSource(Source):
    """A split's list file: `relative/path label` lines, the paths under the split's root, the data folder or
    the list's own folder (list_samples); relative list names are also looked up under the data folder."""

    kind: ClassVar[str] = "lists"

    @classmethod
    def matches(cls, cfg: DataConfig, split: str) -> bool:
        return bool(cfg.train_list if split == "train" else cfg.val_list)

    def samples(self, split: str, classes: Sequence[str] | None = None, num_classes: int | None = None) -> Samples:
        cfg = self.cfg
        list_file = cfg.train_list if split == "train" else cfg.val_list
        split_root = cfg.train_root if split == "train" else cfg.val_root
        if not list_file:
            raise ConfigError(f"no {spelled('train_list' if split == 'train' else 'val_list')} for the {split} split")
        root = local_root(cfg)
        lp = Path(list_file)
        if not lp.is_absolute() and not lp.exists() and root is not None and (root / lp).exists():
            lp = root / lp
        return list_samples(lp, split_root or root, split, classes=classes, num_classes=num_classes,
                            task=cfg.task, classes_file=cfg.classes)

    def classes(self) -> list[str]:
        return list(self.samples("train" if self.cfg.train_list else "val").classes)

    def describe(self) -> str:
        lists = [f for f in (self.cfg.train_list, self.cfg.val_list) if f]
        return f"list files {', '.join(lists)}"
