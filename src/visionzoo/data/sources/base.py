"""The one interface every kind of input implements: `Source`.

A kind is a small class: `matches(cfg, split)` says whether it reads that split of a config (the registry in
`sources/__init__.py` asks each kind in order, once per split, when a config is opened); `samples(split)` gives
a split for random access, `stream(split)` one that is read in order (None: random access), `classes()` the
class names and `describe()` one line for messages. `dataset()` turns a split into the loader's dataset; a kind
overrides it only when its items are not images to decode (synthetic data).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

from torch.utils.data import Dataset

from ...config import DataConfig
from ...core.errors import ConfigError
from ..datasets import ImageDataset, Samples
from ..streaming import ShardStream, StreamSource

SPLITS = ("train", "val")


class Source(ABC):
    """One kind of input, opened for one config. Constructing it reads nothing: a split is read when asked for."""

    kind: ClassVar[str] = ""
    # False: no sample files to index (streamed shards, synthetic images); the commands that need
    # random access over files (eval, export, quantize; find_samples) pass over such kinds
    has_samples: ClassVar[bool] = True

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    @classmethod
    @abstractmethod
    def matches(cls, cfg: DataConfig, split: str) -> bool:
        """Whether this kind reads `split` ('train' or 'val') of cfg; cheap, as every kind is asked in turn."""

    @abstractmethod
    def samples(self, split: str, classes: Sequence[str] | None = None, num_classes: int | None = None) -> Samples:
        """The split's samples for random access; classes (a model's or the training split's) fix the labels."""

    def stream(self, split: str) -> StreamSource | None:
        """The split's shards when they are read in order; None: the split is random access (samples)."""
        return None

    def classes(self) -> list[str]:
        """The class names in label order, as the training split has them."""
        return list(self.samples("train").classes)

    @abstractmethod
    def describe(self) -> str:
        """One line naming the input, e.g. `class folders under photos/`."""

    def dataset(self, split: str, transform: Callable, *, seed: int, img_size: int,
                classes: Sequence[str] | None = None,
                num_classes: int | None = None) -> tuple[Dataset, list[str]]:
        """The split as the loader's dataset (images through transform) and its class names. The training split
        replaces an undecodable image by a decodable one with --skip-bad-images (full batches), evaluation drops
        it. img_size is the split's crop size (only synthetic data, which has no transform, needs it)."""
        cfg, train = self.cfg, split == "train"
        shards = self.stream(split)
        if shards is not None and shards.multilabel and cfg.task == "single":
            raise ConfigError(f"{self.describe()}: a multi-label pack (label sets) where --task single wants one "
                              "class per image")
        if shards is not None:
            ds = ShardStream(shards, transform, train, seed, cfg.shuffle_buffer, cfg.skip_bad_images,
                             list(classes) if classes is not None else None, multilabel=cfg.task == "multilabel")
            return ds, list(ds.classes)
        s = self.samples(split, classes, num_classes)
        if cfg.task == "multilabel":
            s = s.as_multilabel()  # class folders or a plain list as multi-label data of one class per image
        return ImageDataset(s, transform, cfg.skip_bad_images, replace_bad=train), list(classes or s.classes)

    def split_name(self, split: str) -> str:
        """The name the data gives the split: val_split (when set) for 'val'."""
        return (self.cfg.val_split or "val") if split == "val" else split

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def no_samples(source: Source) -> ConfigError:
    """The error of a kind without sample files asked for them (a command that reads local files only)."""
    return ConfigError(f"{source.describe()}: streamed or synthetic, not files to read one by one; this command "
                       "reads local data only")
