"""Input-pipeline throughput: visionzoo's loader against torchvision's reference pipeline.

Both read the same split with the same output size, workers and batch size, and both deliver batches
to the device as the training step would receive them (visionzoo: uint8 batches normalised on the
device; the baseline: float batches normalised in the workers, as torchvision's reference scripts
and timm do), so the ratio is the one a training run sees.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import AugConfig, DataConfig
from ..core.errors import ConfigError, DataError
from ..models.registry import ModelCfg
from .device_decode import EncodedBatch
from .loader import DeviceNormalizer, build_data, make_loader
from .transforms import augment_ops

MEAN, STD = ModelCfg.mean, ModelCfg.std


def torchvision_loader(root: str | Path, split: str, img_size: int, workers: int, batch_size: int,
                       cfg: DataConfig | None = None, pin_memory: bool = False,
                       aug: AugConfig | None = None) -> DataLoader:
    """The usual pipeline: ImageFolder + transforms.v2 on PIL images, float normalisation in the workers,
    with cfg's crop settings (scale, ratio, flip, interpolation, crop_pct) and aug's policy and random erasing,
    in torchvision's reference order (policy on the PIL image, erasing after normalisation), so both pipelines
    do the same work."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from .crops import INTERP

    cfg = cfg or DataConfig()
    interp = INTERP[cfg.interpolation or ModelCfg.interpolation]
    if split == "train":
        geometry = [v2.RandomResizedCrop(img_size, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
                                         interpolation=interp, antialias=True)]
        geometry += [v2.RandomHorizontalFlip(cfg.hflip)] if cfg.hflip > 0 else []
        if aug is not None:
            policy = augment_ops(aug.auto_augment, aug.ra_magnitude, aug.ra_ops, aug.augmix_severity,
                                 interpolation=cfg.interpolation or ModelCfg.interpolation)
            geometry += [p.op for p in policy]  # torchvision's own transform, on the PIL image
    else:
        geometry = [v2.Resize(int(img_size / (cfg.crop_pct or ModelCfg.crop_pct)), interpolation=interp,
                              antialias=True), v2.CenterCrop(img_size)]
    erase = [v2.RandomErasing(aug.random_erase)] if split == "train" and aug is not None and aug.random_erase else []
    tf = v2.Compose([*geometry, v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD),
                     *erase])
    try:
        ds = ImageFolder(str(Path(root) / split), transform=tf)
    except FileNotFoundError as e:  # no split folder, or no class folders or images in it
        raise DataError(f"{Path(root) / split}: the baseline reads an ImageFolder there ({e})") from None
    return DataLoader(ds, batch_size=batch_size, shuffle=split == "train", num_workers=workers, drop_last=True,
                      pin_memory=pin_memory, persistent_workers=workers > 0)


def visionzoo_loader(cfg: DataConfig, split: str, batch_size: int, pin_memory: bool = False,
                     aug: AugConfig | None = None) -> DataLoader:
    data = build_data(cfg, ModelCfg(), splits=(split,), aug=aug)
    return make_loader(data.split(split), batch_size, cfg.workers, train=split == "train", pin_memory=pin_memory,
                       nice=cfg.worker_nice)


def _forever(loader: DataLoader):
    while True:  # a small data set restarts; persistent workers keep that cheap
        yield from loader


def time_loader(loader: DataLoader, batches: int, warmup: int, device: torch.device,
                normalizer: DeviceNormalizer | None = None, progress: bool = False) -> dict[str, Any]:
    """images/s over `batches` batches after `warmup` untimed ones (worker start-up), each on the device:
    normalised by `normalizer` when given, else as the loader made them (a device-decoded batch decoded)."""
    from tqdm import tqdm

    images, t0 = 0, time.perf_counter()
    stream = _forever(loader)
    for step in tqdm(range(warmup + batches), disable=None if progress else True, leave=False, desc="batches"):
        if step == warmup:
            t0 = time.perf_counter()
        x = next(stream)[0]
        if normalizer is not None:
            x = normalizer(x)
        else:
            x = x.decode(device) if isinstance(x, EncodedBatch) else x.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            images += len(x)
    elapsed = time.perf_counter() - t0
    return {"images": images, "seconds": elapsed, "images_per_sec": images / elapsed if elapsed > 0 else 0.0}


def bench_data(cfg: DataConfig, split: str = "train", batch_size: int = 64, batches: int = 50, warmup: int = 5,
               device: str = "cpu", baseline: bool = False, progress: bool = False,
               baseline_data: str | None = None, normalize: bool = True,
               aug: AugConfig | None = None) -> dict[str, Any]:
    """images/s of visionzoo's pipeline (and with baseline, torchvision's on baseline_data or the same
    folder, and the ratio). normalize=False times visionzoo's uint8 batches as delivered, before the
    normalisation that belongs to the device (the baseline always normalises: in its workers)."""
    from .packed import is_packed

    baseline_data = baseline_data or cfg.data
    if baseline and not baseline_data:
        raise ConfigError("bench-data --baseline needs --data (or --baseline-data DIR)")
    if baseline and is_packed(baseline_data):
        raise DataError(f"{baseline_data} is a pack: give the baseline its source folder (--baseline-data DIR)")
    dev = torch.device(device)
    pin = dev.type == "cuda"
    img_size = cfg.img_size or ModelCfg.input_size
    decode = cfg.decode or ("fast" if split == "train" else "pil")  # what decode=None means for each split
    result: dict[str, Any] = {"split": split, "img_size": img_size, "workers": cfg.workers, "batch_size": batch_size,
                              "decode": decode, "device": str(dev), "data": cfg.data, "normalized": normalize}
    loader = visionzoo_loader(cfg, split, batch_size, pin, aug)
    normalizer = DeviceNormalizer(MEAN, STD, dev, reuse=True) if normalize else None
    result["visionzoo"] = time_loader(loader, batches, warmup, dev, normalizer, progress)
    if baseline:
        result["baseline_data"] = baseline_data
        assert baseline_data is not None
        ref = torchvision_loader(baseline_data, split, img_size, cfg.workers, batch_size, cfg, pin, aug)
        result["torchvision"] = time_loader(ref, batches, warmup, dev, None, progress)
        result["ratio"] = result["visionzoo"]["images_per_sec"] / result["torchvision"]["images_per_sec"]
    return result
