"""Data sets, samplers and loaders for training and evaluation."""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from ..config import AugConfig, DataConfig, eval_size
from ..core.errors import ConfigError, DataError, plural
from ..models.registry import ModelCfg
from .datasets import Samples
from .device_decode import EncodedBatch, EncodedImage
from .samplers import order_generator, sample_seed
from .sources import open_source
from .streaming import ShardStream
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
    labels = _stack_labels([b[1] for b in good])
    if isinstance(good[0][0], EncodedImage):  # decode="device": the device decodes the batch
        return EncodedBatch([b[0] for b in good]), labels, skipped
    return stack_images([b[0] for b in good]), labels, skipped


def _stack_labels(labels: list[Any]) -> torch.Tensor:
    """Class indices -> (B,) int64; multi-hot vectors (multi-label data) -> (B, classes) float."""
    return torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels)


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

    @property
    def multilabel(self) -> bool:
        """Whether the splits' labels are sets of classes (multi-hot targets): CSV lists, a label-list column, a
        multi-label pack, or --task multilabel."""
        return any(getattr(ds, "multilabel", False) or getattr(getattr(ds, "samples", None), "multilabel", False)
                   for ds in (self.train, self.val))

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


def find_samples(cfg: DataConfig, split: str, classes: list[str] | None = None,
                 num_classes: int | None = None) -> Samples:
    """Samples of one split, for the commands that read local files one by one (evaluation, export, ...): the
    split's Source among the kinds with sample files (sources.open_source)."""
    return open_source(cfg, (split,), with_samples=True).samples(split, classes, num_classes)


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
    its per-sample policies (auto-augment, random erasing) to the training transform. The data's Source is
    chosen once (sources.open_source); the training split's classes fix the validation split's labels."""
    img_size = cfg.img_size or model_cfg.input_size
    eval_img_size = eval_size(cfg.eval_img_size, img_size) or img_size
    crop_pct = cfg.crop_pct or model_cfg.crop_pct
    interp = cfg.interpolation or model_cfg.interpolation
    source = open_source(cfg, tuple(s for s in ("train", "val") if s in splits))
    log.debug("data: %s", source.describe())
    train: Dataset | None = None
    val: Dataset | None = None
    if "train" in splits:
        policy = augment_ops(aug.auto_augment, aug.ra_magnitude, aug.ra_ops, aug.augmix_severity, aug.random_erase,
                             model_cfg.mean, interp) if aug is not None else []
        tf = train_transform(img_size, cfg.scale, cfg.ratio, cfg.hflip, cfg.color_jitter, interp, cfg.train_crop,
                             crop_pct, cfg.decode, policy)
        train, classes = source.dataset("train", tf, seed=seed, img_size=img_size, classes=classes,
                                        num_classes=num_classes)
        num_classes = num_classes or len(classes)
        _check_learnable(train, classes, source.describe())
    if "val" in splits:
        tf = eval_transform(eval_img_size, crop_pct, interp, cfg.decode)
        val, classes = source.dataset("val", tf, seed=seed, img_size=eval_img_size, classes=classes,
                                      num_classes=num_classes)
        labels = _labels(val)
        # scored on 0 images, a best.pth chosen by nothing (multi-label: an empty label set is a true negative)
        if labels and not isinstance(labels[0], tuple) and max(labels) < 0:
            raise DataError(f"{source.describe()}: the {source.split_name('val')} split has no labelled image (all "
                            f"{len(labels)} are -1: open-set or unlabelled); give a validation split with classes")
    assert classes is not None
    return DataBundle(train, val, list(classes), img_size, crop_pct, interp, eval_img_size)


def _labels(ds: Dataset | None) -> list[int] | None:
    """The labels of a random-access split (None: streamed or synthetic, not known before reading)."""
    samples = getattr(ds, "samples", None)
    return samples.targets() if isinstance(samples, Samples) and samples.items else None


def _check_learnable(train: Dataset, classes: list[str], described: str) -> None:
    """A training split of one class trains a classifier that is always right and has learnt nothing."""
    labels = _labels(train)
    if labels and isinstance(labels[0], tuple):  # multi-label: the classes some image shows
        labels = [y for ys in labels for y in ys]
    present = sorted(set(labels)) if labels is not None else range(len(classes))
    if len(present) < 2:
        names = [classes[y] for y in present if 0 <= y < len(classes)]
        raise DataError(f"{described}: the training split has images of {plural(len(present), 'class')} only "
                        f"({', '.join(names) or 'none'}); a classifier of one class learns nothing: give at least "
                        "two classes")


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
