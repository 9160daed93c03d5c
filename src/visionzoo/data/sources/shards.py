"""WebDataset shards read in order (data/streaming.py): train_urls / val_urls (local paths, file://, http(s)://,
s3://, gs://, pipe:), or the pack at a URL given as data."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import ClassVar

from ...config import DataConfig, spelled
from ...core.errors import ConfigError, DataError
from ..datasets import Samples
from ..streaming import StreamSource, comma_joined, expand_urls, info_url_for, is_url, pack_split_source, stream_source
from .base import Source, no_samples


def _val_beside_train(cfg: DataConfig) -> bool:
    """train_urls alone (no val_urls and no local validation data): the val shards of the pack beside them."""
    return bool(cfg.train_urls) and not (cfg.data or cfg.val_list or cfg.val_root)


class ShardsSource(Source):
    """train: train_urls, or the pack at data URL. val: val_urls; the pack at data URL; or, with train_urls
    alone, the val split of the pack beside the train shards."""

    kind: ClassVar[str] = "shards"
    has_samples: ClassVar[bool] = False

    @classmethod
    def matches(cls, cfg: DataConfig, split: str) -> bool:
        if split == "train":
            return bool(cfg.train_urls) or is_url(cfg.data)
        return bool(cfg.val_urls) or is_url(cfg.data) or _val_beside_train(cfg)

    def stream(self, split: str) -> StreamSource:
        cfg, name = self.cfg, self.split_name(split)
        field = "train_urls" if split == "train" else "val_urls"
        urls = getattr(cfg, field)
        if urls:
            return stream_source(expand_urls(urls, spelled(field)), cfg.pack_info, split, *self._patience())
        if is_url(cfg.data):
            assert cfg.data is not None
            self._check_pack_url(cfg.data)
            source = pack_split_source(cfg.data, name, *self._patience())
            if source is None:
                raise DataError(f"{cfg.data}: the pack has no {name} split")
            return source
        if split == "val" and cfg.train_urls:
            info = cfg.pack_info or info_url_for(expand_urls(cfg.train_urls, spelled("train_urls")))
            source = pack_split_source(posixpath.dirname(info) or ".", name, *self._patience())
            if source is None:
                raise ConfigError(f"{info} lists no {name} split: give {spelled('val_urls')}, {spelled('data')} DIR "
                                  f"or {spelled('val_list')}")
            return source
        raise ConfigError(f"no shards for the {split} split: give {spelled(field)}")

    def _patience(self) -> tuple[float, int]:
        """http(s) reads: the seconds between bytes and the tries again, carried by the StreamSource into workers."""
        return self.cfg.stream_timeout, self.cfg.stream_retries

    @staticmethod
    def _check_pack_url(data: str) -> None:
        """data at a URL names a pack's folder; shard URLs (one, or several joined) belong in train_urls."""
        flag = spelled("data", data)
        if data.startswith("pipe:"):
            raise ConfigError(f"{flag}: a pipe: command streams one shard; give {spelled('train_urls')} 'pipe:...'")
        joined = comma_joined(data)
        if joined is not None:
            raise ConfigError(f"{flag}: the URL of one pack's folder (with its pack.json), not a list of shards; "
                              f"stream shards with {spelled('train_urls')} '{'::'.join(joined)}' (joined with '::', "
                              "not ',')")
        if data.split("?", 1)[0].endswith(".tar"):
            raise ConfigError(f"{flag}: the URL of a pack's folder (with its pack.json), not of a shard; stream "
                              f"shards with {spelled('train_urls')} URL (several joined with '::')")

    def samples(self, split: str, classes: Sequence[str] | None = None, num_classes: int | None = None) -> Samples:
        raise no_samples(self)

    def classes(self) -> list[str]:
        return list(self.stream("train").classes)

    def describe(self) -> str:
        urls = [u for u in (self.cfg.train_urls, self.cfg.val_urls) if u]
        return f"streamed shards {', '.join(urls)}" if urls else f"the pack streamed from {self.cfg.data}"
