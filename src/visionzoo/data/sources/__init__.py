"""Where a config's images come from: one `Source` per kind of input, chosen once per config by `open_source`.

KINDS is the registry, in the order kinds are asked (`matches(cfg, split)`, the first that says yes reads the
split): the specific kinds before the class folders, which take whatever is left. A new kind is one new module
with a Source subclass and one line here (or `register_source(Kind)` from outside the package).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from torch.utils.data import Dataset

from ...config import DataConfig
from ...core.errors import ConfigError
from ..datasets import Samples
from ..streaming import StreamSource
from .base import SPLITS, Source
from .builtin import BuiltinSource
from .folders import FolderSource, ListSource
from .hf import HFSource
from .pack import PackSource
from .shards import ShardsSource
from .synthetic import DummySource

KINDS: list[type[Source]] = [
    DummySource,  # dummy: synthetic images, whatever else is set
    ShardsSource,  # train_urls / val_urls, or data at a URL
    ListSource,  # a split's list file (train_list / val_list)
    HFSource,  # a Hugging Face dataset: save_to_disk or parquet folder, hf:NAME
    PackSource,  # a local pack folder (pack.json)
    BuiltinSource,  # builtin:NAME
    FolderSource,  # class folders: data/<split>/<class>/, train_root / val_root
]


def register_source(kind: type[Source]) -> type[Source]:
    """Add a kind, asked before the built-in ones (its matches() is specific; the class folders take anything).
    Usable as a class decorator."""
    if not kind.kind:
        raise ValueError(f"{kind.__name__}: a Source needs a kind name")
    if any(k.kind == kind.kind for k in KINDS):
        raise ValueError(f"a source kind {kind.kind!r} is registered already")
    KINDS.insert(0, kind)
    return kind


def source_kind(cfg: DataConfig, split: str, with_samples: bool = False) -> type[Source]:
    """The first registered kind that reads this split of cfg (with_samples: among kinds with sample files)."""
    for kind in KINDS:
        if (kind.has_samples or not with_samples) and kind.matches(cfg, split):
            return kind
    raise ConfigError(f"no kind of data source reads the {split} split of this config")


def open_source(cfg: DataConfig, splits: Sequence[str] = SPLITS, with_samples: bool = False) -> Source:
    """The Source for cfg, its kind chosen here once per split. Splits read by different kinds (e.g. streamed
    training shards with local validation folders) come as one SplitSources.

    with_samples: kinds without sample files (streamed shards, synthetic images) are passed over, for the
    commands that read local files one by one (data at a URL is then a one-line error)."""
    chosen = {split: source_kind(cfg, split, with_samples) for split in splits}
    kinds = list(dict.fromkeys(chosen.values()))
    if len(kinds) == 1:
        return kinds[0](cfg)
    opened = {kind: kind(cfg) for kind in kinds}
    return SplitSources(cfg, {split: opened[kind] for split, kind in chosen.items()})


class SplitSources(Source):
    """Splits of one config read by different kinds: each method goes to the split's own source."""

    kind: ClassVar[str] = "split"

    def __init__(self, cfg: DataConfig, by_split: dict[str, Source]) -> None:
        super().__init__(cfg)
        self.by_split = by_split

    @classmethod
    def matches(cls, cfg: DataConfig, split: str) -> bool:
        return False  # made by open_source, never chosen

    def _of(self, split: str) -> Source:
        if split not in self.by_split:
            raise ValueError(f"the {split} split was not opened (open_source splits=...)")
        return self.by_split[split]

    def samples(self, split: str, classes: Sequence[str] | None = None, num_classes: int | None = None) -> Samples:
        return self._of(split).samples(split, classes, num_classes)

    def stream(self, split: str) -> StreamSource | None:
        return self._of(split).stream(split)

    def dataset(self, split: str, transform: Callable, *, seed: int, img_size: int,
                classes: Sequence[str] | None = None,
                num_classes: int | None = None) -> tuple[Dataset, list[str]]:
        return self._of(split).dataset(split, transform, seed=seed, img_size=img_size, classes=classes,
                                       num_classes=num_classes)

    def classes(self) -> list[str]:
        return self._of("train" if "train" in self.by_split else "val").classes()

    def describe(self) -> str:
        return "; ".join(f"{split}: {source.describe()}" for split, source in self.by_split.items())


__all__ = ["KINDS", "SPLITS", "BuiltinSource", "DummySource", "FolderSource", "HFSource", "ListSource", "PackSource",
           "ShardsSource", "Source", "SplitSources", "open_source", "register_source", "source_kind"]
