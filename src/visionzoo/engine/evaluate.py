"""Evaluation loop: top-1/top-5, loss and per-class accuracy, reduced over all ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..config import DataConfig
from ..data.loader import DeviceNormalizer, device_batches
from .distributed import all_reduce_sum, init_distributed

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, amp: str | None):
    """Autocast to fp16/bf16; None or "fp32" runs as is."""
    if amp in (None, "fp32"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: Iterable,
    normalizer: DeviceNormalizer,
    num_classes: int,
    amp: str | None = None,
    classes: list[str] | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, Any]:
    """Accuracy in percent over every image of the loader (summed across ranks when distributed)."""
    device = normalizer.device
    # a plain nn.Module is switched to eval and back; other callables (inference runners) have no mode
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    # one float64 vector keeps the all-reduce to a single call: loss, top1, top5, count, skipped
    totals = torch.zeros(5, dtype=torch.float64, device=device)
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=device)  # correct, total
    k = min(5, num_classes)
    batches = device_batches(loader, normalizer)
    for x, target, skipped in tqdm(batches, total=len(loader) if hasattr(loader, "__len__") else None,
                                    desc=desc, disable=None if progress else True, leave=False, dynamic_ncols=True):
        totals[4] += skipped
        if len(target) == 0:
            continue
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        totals[0] += F.cross_entropy(logits, target, reduction="sum")
        topk = logits.topk(k, dim=1).indices
        hit = topk == target[:, None]
        top1 = hit[:, 0]
        totals[1] += top1.sum()
        totals[2] += hit.any(dim=1).sum()
        totals[3] += len(target)
        per_class[0].index_add_(0, target, top1.double())
        per_class[1].index_add_(0, target, torch.ones_like(target, dtype=torch.float64))
    all_reduce_sum(totals)
    all_reduce_sum(per_class)
    if isinstance(model, nn.Module):
        model.train(was_training)
    loss, c1, c5, n, skipped = totals.tolist()
    correct, count = per_class.cpu().tolist()
    # a head larger than the data's class list (--num-classes) gets numbered names for the rest
    names = list(classes or []) + [str(i) for i in range(len(classes or []), num_classes)]
    n_int = int(n)
    return {
        "top1": 100.0 * c1 / n if n else 0.0,
        "top5": 100.0 * c5 / n if n else 0.0,
        "loss": loss / n if n else float("nan"),
        "num_images": n_int,
        "skipped_images": int(skipped),
        "per_class": [
            {"class": names[i], "correct": int(correct[i]), "total": int(count[i]),
             "top1": 100.0 * correct[i] / count[i] if count[i] else None}
            for i in range(num_classes)
        ],
    }


def evaluate(
    model_path: str,
    data: DataConfig | None = None,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = True,
    backend: str = "eager",
) -> dict[str, Any]:
    """Evaluate a model file on a validation split; preprocessing defaults to the file's own.

    model_path: a visionzoo checkpoint or any file `visionzoo export`/`quantize` wrote (.onnx, .pt2,
    .ts, .safetensors). data: where the split is; None uses the data the model was trained with.
    Validation class folders are mapped through the model's class names, so a missing or extra
    folder cannot shift labels. Returns top1/top5 (percent), loss, num_images, per_class.
    """
    from ..inference.data import eval_loader, resolve_data
    from ..inference.runtime import load_runner

    dist = init_distributed(device)
    runner = load_runner(model_path, dist.device, precision, backend, channels_last)
    loader, classes, info = eval_loader(runner.info, resolve_data(runner.info, data), "val", batch_size,
                                        dist.rank, dist.world_size, dist.device.type == "cuda")
    normalizer = DeviceNormalizer(info.mean, info.std, dist.device, channels_last, reuse=True)
    result = evaluate_model(runner, loader, normalizer, info.num_classes, None, classes, progress and dist.is_main)
    result.update(checkpoint=str(model_path), model=info.model_name, format=runner.fmt, precision=precision,
                  quantized=info.quantized, img_size=info.img_size, crop_pct=info.crop_pct,
                  interpolation=info.interpolation)
    return result
