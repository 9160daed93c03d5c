"""Data sets, samplers and loaders for training and evaluation."""

from __future__ import annotations

import functools
import logging
import math
import os
import posixpath
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from ..config import AugConfig, DataConfig
from ..core.errors import ConfigError, DataError
from ..models.registry import ModelCfg
from .datasets import (
    DummyDataset,
    ImageDataset,
    Samples,
    image_folder,
    list_samples,
)
from .device_decode import EncodedBatch, EncodedImage
from .hf import hf_samples, is_hf
from .packed import is_packed, packed_samples
from .samplers import order_generator, sample_seed
from .streaming import ShardStream, StreamSource, expand_urls, info_url_for, is_url, pack_split_source, stream_source
from .transforms import augment_ops, eval_transform, train_transform

log = logging.getLogger(__name__)


class SeededSampler(Sampler):
    """Yields (index, augmentation seed) pairs; shards across ranks.

    The order and each sample's augmentation depend only on (seed, epoch, index), so an epoch
    replays identically after a resume and with any number of workers. For training, the index
    list is padded to a multiple of the world size (every rank steps equally often); for
    evaluation (pad=False) each sample goes to exactly one rank.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            idx = torch.randperm(self.size, generator=order_generator(self.seed, self.epoch)).tolist()
        else:
            idx = list(range(self.size))
        if self.pad and self.world_size > 1:
            total = math.ceil(self.size / self.world_size) * self.world_size
            idx = (idx * math.ceil(total / len(idx)))[:total]
        return idx[self.rank :: self.world_size]

    def __iter__(self):
        for i in self._indices():
            yield i, sample_seed(self.seed, self.epoch, i)

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))


def collate_skipping(batch: list[Any]) -> tuple[torch.Tensor | EncodedBatch, torch.Tensor, int]:
    """Stack (image, label) pairs, dropping the None of undecodable images; returns the skip count."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good) + sum(b[2] for b in good if len(b) == 3)  # dropped + replaced
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), skipped
    if isinstance(good[0][0], EncodedImage):  # decode="device": the device decodes the batch
        return EncodedBatch([b[0] for b in good]), torch.tensor([b[1] for b in good]), skipped
    labels = torch.tensor([b[1] for b in good])
    return stack_images([b[0] for b in good]), labels, skipped


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """One NCHW batch of equally sized samples. Samples whose memory is HWC (the fused training crop's output)
    are copied as they are into an NHWC buffer, returned as its channels-last NCHW view: a channels-last model
    takes it as it is, and DeviceNormalizer changes the layout in the pass that converts to float anyway. In a
    loader worker the buffer is shared memory, so the batch reaches the main process without a copy (as
    default_collate does)."""
    first = images[0]
    if not isinstance(first, torch.Tensor) or first.ndim != 3 or not all(
            t.shape == first.shape and t.permute(1, 2, 0).is_contiguous() for t in images):
        return default_collate(images)
    c, h, w = first.shape
    out = None
    if get_worker_info() is not None:
        storage = first._typed_storage()._new_shared(len(images) * first.numel(), device=first.device)
        out = first.new(storage).resize_(len(images), h, w, c)
    return torch.stack([t.permute(1, 2, 0) for t in images], 0, out=out).permute(0, 3, 1, 2)


@dataclass
class DataBundle:
    train: Dataset | None
    val: Dataset | None
    classes: list[str]
    img_size: int  # training crops
    crop_pct: float
    interpolation: str
    eval_img_size: int = 0  # evaluation crops; 0: img_size

    def __post_init__(self) -> None:
        self.eval_img_size = self.eval_img_size or self.img_size

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Dataset:
        """The train or val dataset, which build_data was asked for."""
        ds = self.train if name == "train" else self.val
        if ds is None:
            raise ValueError(f"the {name} split was not built (build_data splits=...)")
        return ds


def _data_root(cfg: DataConfig) -> Path | None:
    if cfg.data is None:
        return None
    if is_url(cfg.data):
        raise ConfigError(f"--data {cfg.data}: shards at a URL are streamed for training (train --data URL or "
                          "--train-urls/--val-urls); this command reads local data only")
    if cfg.data.startswith("builtin:"):
        from .builtin import materialize

        return materialize(cfg.data.split(":", 1)[1])
    return Path(cfg.data)


def find_samples(cfg: DataConfig, split: str, classes: list[str] | None = None,
                 num_classes: int | None = None) -> Samples:
    """Samples of one split from --data / --train-list / --val-list / --train-root / --val-root."""
    if is_hf(cfg.data) and not (cfg.train_list or cfg.val_list):
        assert cfg.data is not None
        return hf_samples(cfg.data, "train" if split == "train" else "val", classes, cfg.image_column,
                          cfg.label_column)
    root = _data_root(cfg)
    if root is not None and is_packed(root) and not (cfg.train_list or cfg.val_list):
        return packed_samples(root, split, classes)
    list_file = cfg.train_list if split == "train" else cfg.val_list
    split_root = cfg.train_root if split == "train" else cfg.val_root
    if list_file:
        lp = Path(list_file)
        if not lp.is_absolute() and not lp.exists() and root is not None and (root / lp).exists():
            lp = root / lp
        return list_samples(lp, split_root or root, split, classes=classes, num_classes=num_classes)
    if split_root:
        return image_folder(split_root, classes)
    if root is None:
        raise ConfigError("no data given: pass --data DIR (or --dummy for synthetic data)")
    if (root / split).is_dir():
        return image_folder(root / split, classes)
    if split == "val" and classes is not None and not (root / "train").is_dir():
        return image_folder(root, classes)  # eval on a bare class-folder tree
    raise DataError(f"{root}: no {split}/ folder (expected {root}/{split}/<class>/<image>) and no --{split}-list")


def build_data(
    cfg: DataConfig,
    model_cfg: ModelCfg,
    splits: tuple[str, ...] = ("train", "val"),
    classes: list[str] | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    aug: AugConfig | None = None,
) -> DataBundle:
    """Datasets for the requested splits, with transforms from the model's config unless overridden; aug adds
    its per-sample policies (auto-augment, random erasing) to the training transform."""
    img_size = cfg.img_size or model_cfg.input_size
    eval_size = cfg.eval_img_size or img_size
    crop_pct = cfg.crop_pct or model_cfg.crop_pct
    interp = cfg.interpolation or model_cfg.interpolation
    if cfg.dummy:
        n = num_classes or cfg.dummy_classes
        return DataBundle(DummyDataset(cfg.dummy_train_size, n, img_size, seed) if "train" in splits else None,
                          DummyDataset(cfg.dummy_val_size, n, eval_size, seed + 1) if "val" in splits else None,
                          [str(i) for i in range(n)], img_size, crop_pct, interp, eval_size)
    train: Dataset | None = None
    val: Dataset | None = None
    if "train" in splits:
        policy = augment_ops(aug.auto_augment, aug.ra_magnitude, aug.ra_ops, aug.augmix_severity, aug.random_erase,
                             model_cfg.mean, interp) if aug is not None else []
        tf = train_transform(img_size, cfg.scale, cfg.ratio, cfg.hflip, cfg.color_jitter, interp, cfg.train_crop,
                             crop_pct, cfg.decode, policy)
        streamed = stream_split(cfg, "train")
        if streamed is not None:
            train = ShardStream(streamed, tf, True, seed, cfg.shuffle_buffer, cfg.skip_bad_images, classes)
            classes = train.classes
        else:
            s = find_samples(cfg, "train", classes, num_classes)
            classes = classes or s.classes
            num_classes = num_classes or s.num_classes
            train = ImageDataset(s, tf, cfg.skip_bad_images, replace_bad=True)
    if "val" in splits:
        tf = eval_transform(eval_size, crop_pct, interp, cfg.decode)
        streamed = stream_split(cfg, "val")
        if streamed is not None:
            val = ShardStream(streamed, tf, False, seed, skip_bad=cfg.skip_bad_images, classes=classes)
            classes = val.classes
        else:
            s = find_samples(cfg, "val", classes, num_classes)
            classes = classes or s.classes
            val = ImageDataset(s, tf, cfg.skip_bad_images)
    assert classes is not None
    return DataBundle(train, val, list(classes), img_size, crop_pct, interp, eval_size)


def stream_split(cfg: DataConfig, split: str) -> StreamSource | None:
    """The streamed shards of a split, or None when the split comes from local data.

    train: --train-urls, or the pack at --data URL. val: --val-urls; the pack at --data URL; or, when only
    --train-urls is given (no local --data or --val-list), the val shards of the pack beside the train shards."""
    urls = cfg.train_urls if split == "train" else cfg.val_urls
    flag = "--train-urls" if split == "train" else "--val-urls"
    if urls:
        return stream_source(expand_urls(urls, flag), cfg.pack_info, split)
    if is_url(cfg.data):
        assert cfg.data is not None
        if cfg.data.startswith("pipe:"):
            raise ConfigError(f"--data {cfg.data}: a pipe: command streams one shard; give --train-urls 'pipe:...'")
        source = pack_split_source(cfg.data, split)
        if source is None:
            raise DataError(f"{cfg.data}: the pack has no {split} split")
        return source
    if split == "val" and cfg.train_urls and not (cfg.data or cfg.val_list or cfg.val_root):
        info = cfg.pack_info or info_url_for(expand_urls(cfg.train_urls))
        source = pack_split_source(posixpath.dirname(info) or ".", "val")
        if source is None:
            raise ConfigError(f"{info} lists no val split: give --val-urls, --data DIR or --val-list")
        return source
    return None


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """The epoch that orders (and seeds) the loader's next pass: its sampler's, or a streamed dataset's."""
    if isinstance(loader.dataset, ShardStream):
        loader.dataset.set_epoch(epoch)
    else:
        cast(Any, loader.sampler).set_epoch(epoch)  # every sampler here takes the epoch


def dataset_size(dataset: Dataset) -> int:
    """Images in the whole split (a streamed split's len() is one rank's share)."""
    return dataset.size if isinstance(dataset, ShardStream) else len(cast(Sized, dataset))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    sampler: Sampler | None = None,
    nice: int = 19,
) -> DataLoader:
    """sampler: a class-aware sampler for training (data.samplers); default SeededSampler.

    nice: the workers' niceness. At 19 they take only CPU time the training step leaves idle, so on a
    host where the step itself is CPU-bound they stop stalling its threads (resnet18 on the 2-core
    development machine: 237-243 images/s end to end against 221-223 at 0); they still get every idle
    cycle, so a loader-bound run loses nothing.
    """
    worker_init = functools.partial(_lower_priority, nice) if workers > 0 and nice > 0 else None
    if isinstance(dataset, ShardStream):
        if sampler is not None:
            raise ConfigError("streamed shards are read in order: class-aware sampling (--sampler) and repeated "
                              "augmentation (--aug-repeats) need random-access data (--data DIR or a local pack)")
        return DataLoader(dataset.for_rank(rank, world_size, batch_size, workers), batch_size=batch_size,
                          num_workers=workers, collate_fn=collate_skipping, pin_memory=pin_memory, drop_last=train,
                          persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                          worker_init_fn=worker_init)
    if sampler is None:
        sampler = SeededSampler(len(cast(Sized, dataset)), shuffle=train, seed=seed, rank=rank, world_size=world_size,
                                pad=train)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping,
        pin_memory=pin_memory,
        drop_last=train,
        persistent_workers=workers > 0,
        # a private generator: worker seeding must not consume the global RNG (exact resume)
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=worker_init,
    )


def _lower_priority(nice: int, _worker_id: int) -> None:
    os.nice(max(0, nice - os.nice(0)))  # os.nice adds: reach `nice` itself (never raise priority)


class DeviceNormalizer:
    """uint8 NCHW batch on the host -> normalised float batch on the device.

    reuse=True (a loop that consumes each batch before asking for the next: training, evaluation,
    benchmarks) writes a CPU device's result into a kept buffer, valid until the next call: a fresh
    38 MB float batch (64x3x224x224) costs more in first-touch page faults than the arithmetic
    (17 ms against 5 ms here). A CUDA device always allocates (its caching allocator already reuses).
    """

    def __init__(self, mean, std, device: torch.device, channels_last: bool = False, reuse: bool = False):
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1.0 / self.std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.reuse = reuse and device.type == "cpu"
        self._buffers: dict[tuple[int, ...], torch.Tensor] = {}

    def _buffer(self, shape: torch.Size) -> torch.Tensor:
        buf = self._buffers.get(tuple(shape))
        if buf is None:
            if len(self._buffers) >= 2:  # the full batch and an epoch's smaller last one
                self._buffers.clear()
            buf = self._buffers[tuple(shape)] = torch.empty(shape, memory_format=self.memory_format)
        return buf

    def __call__(self, images: torch.Tensor | EncodedBatch) -> torch.Tensor:
        if isinstance(images, EncodedBatch):
            images = images.decode(self.device)  # uint8 on the device already; the rest is the same
        if images.ndim != 4:  # the empty batch of an all-undecodable chunk: nothing to normalise
            return images.to(self.device).float()
        if self.reuse:
            x = self._buffer(images.shape).copy_(images)  # dtype and layout converted in one pass
        else:
            x = images.to(self.device, non_blocking=True).float()
            if x.data_ptr() == images.data_ptr():  # already a float batch here: never modify the caller's
                x = x.clone()
            x = x.contiguous(memory_format=self.memory_format)
        # in place on the one float copy: 2.4x less time than (x - mean) / std on a CPU "device"
        return x.sub_(self.mean).mul_(self.inv_std)


def device_batches(loader: Iterable, normalizer: DeviceNormalizer) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(normalised images, labels, skipped count) on the normaliser's device, one per loader batch.

    On CUDA the next batch is copied and normalised on a side stream, issued before the current batch
    is handed out, so the host-to-device copy overlaps the step that runs on it (pin the loader's memory
    for a truly asynchronous copy). Elsewhere each batch is converted when it is asked for. With a
    reusing normaliser (CPU, reuse=True) each batch is valid until the next one is asked for.
    """
    device = normalizer.device
    if device.type != "cuda":
        for images, target, skipped in loader:
            yield normalizer(images), target.to(device), skipped
        return
    side = torch.cuda.Stream(device)

    def stage(batch):
        images, target, skipped = batch
        side.wait_stream(torch.cuda.current_stream(device))  # e.g. the normaliser's constants
        with torch.cuda.stream(side):
            return normalizer(images), target.to(device, non_blocking=True), skipped

    batches = iter(loader)
    first = next(batches, None)
    ready = stage(first) if first is not None else None
    while ready is not None:
        main = torch.cuda.current_stream(device)
        main.wait_stream(side)
        x, target, skipped = ready
        # memory made on the side stream and used on the main one: keep the allocator from reusing it early
        x.record_stream(main)
        target.record_stream(main)
        following = next(batches, None)
        ready = stage(following) if following is not None else None
        yield x, target, skipped
