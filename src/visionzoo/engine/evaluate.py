"""The evaluation loop over a loader: top-1/top-5, loss and per-class accuracy, reduced over all ranks.

Used by training after each epoch and, through inference.evaluate, for every model file. Images
labelled -1 (open-set samples) count in no accuracy; with collect=True every image's top-1 class,
its softmax probability and its label come back too, gathered from all ranks (for the long-tail
and open-set metrics). With tta (engine.tta) the same pass also scores the logits averaged over the
views, reported beside the plain numbers as result["tta"].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..core.distributed import all_gather_objects, all_reduce_sum
from ..core.errors import ConfigError
from ..data.loader import DeviceNormalizer, device_batches
from .multilabel import multilabel_metrics, precision_at_1
from .tta import VIEWS, check_tta, tta_forward


@torch.no_grad()
def evaluate_model(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    normalizer: DeviceNormalizer,
    num_classes: int,
    precision: str = "fp32",
    classes: list[str] | None = None,
    progress: bool = False,
    desc: str = "eval",
    collect: bool = False,
    logit_adjust: torch.Tensor | None = None,
    tta: str | None = None,
    thresholds: np.ndarray | None = None,
    multilabel: bool = False,
    collect_logits: bool = False,
) -> dict[str, Any]:
    """Accuracy in percent over every image of the loader (summed across ranks when distributed).

    logit_adjust: subtracted from the logits before anything is measured (post-hoc logit adjustment).
    collect: add "outputs": {"pred", "conf", "label"} arrays over every image of every rank.
    collect_logits: add "logits": {"logits" (images x classes, float32), "label"} arrays of the plain logits of every
    single-label image of every rank (inference.calibration fits its temperature on them).
    tta: flip | flip+crops adds "tta": {"mode", "views", "top1", "top5", "loss"} of the logits averaged over
    the views (engine.tta); every other number, per_class and outputs included, stays the plain model's.
    Multi-label data (multi-hot targets) is scored as such (engine.multilabel): mAP, f1_micro, f1_macro at
    `thresholds` (0.5 each by default), per-class AP (multilabel=True: said ahead, as distributed runs must);
    top1/top5 are then the share of images whose best (any
    of the 5 best) class is one of theirs, loss the BCE per class; with collect, "scores" and "targets".
    """
    tta = check_tta(tta)
    device = normalizer.device
    # a plain nn.Module is switched to eval and back; other callables (inference runners) have no mode
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    # one float64 vector keeps the all-reduce to a single call: loss, top1, top5, count, skipped, and the
    # TTA logits' loss, top1, top5
    totals = torch.zeros(8, dtype=torch.float64, device=device)
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=device)  # correct, total
    adjust = logit_adjust.to(device) if logit_adjust is not None else None
    outputs: list[torch.Tensor] = []
    logit_rows: list[tuple[torch.Tensor, torch.Tensor]] = []  # collect_logits: each batch's (logits, labels)
    scored: list[torch.Tensor] = []  # multi-label: each batch's sigmoid scores beside its multi-hot targets
    k = min(5, num_classes)
    batches = device_batches(loader, normalizer)
    for x, target, skipped in tqdm(batches, total=len(loader) if isinstance(loader, Sized) else None,
                                    desc=desc, disable=None if progress else True, leave=False, dynamic_ncols=True):
        totals[4] += skipped
        if len(target) == 0:
            continue
        logits, averaged = tta_forward(model, x, tta, device, precision)
        if adjust is not None:
            logits = logits - adjust
            averaged = averaged - adjust if averaged is not None else None
        if target.ndim == 2:
            if tta:
                raise ConfigError("--tta scores single-label data; multi-label evaluation has no TTA yet")
            _score_multilabel(logits, target, k, totals[0:4])
            scored.append(torch.cat([logits.float().sigmoid(), target.float()], 1))
            continue
        known = target >= 0  # open-set images (-1) have no class to be right about
        top1 = _score(logits, target, k, totals[0:3])
        totals[3] += known.sum()
        if averaged is not None:
            _score(averaged, target, k, totals[5:8])
        index = target.clamp_min(0)
        per_class[0].index_add_(0, index, top1.double())
        per_class[1].index_add_(0, index, known.double())
        if collect:
            conf, pred = logits.softmax(1).max(1)
            outputs.append(torch.stack([pred.double(), conf.double(), target.double()]))
        if collect_logits:
            logit_rows.append((logits.float().cpu(), target.cpu()))
    all_reduce_sum(totals)
    all_reduce_sum(per_class)
    if isinstance(model, nn.Module):
        model.train(was_training)
    result = _summary(totals, per_class, classes, num_classes)
    if scored or multilabel:  # multilabel (known ahead) keeps a rank with no batch in the gather
        result.update(_multilabel_result(scored, num_classes, classes, thresholds, collect))
    if tta:
        loss, c1, c5 = totals[5:8].tolist()
        n = result["num_images"]
        result["tta"] = {"mode": tta, "views": VIEWS[tta], "top1": 100.0 * c1 / n if n else 0.0,
                         "top5": 100.0 * c5 / n if n else 0.0, "loss": loss / n if n else float("nan")}
    if collect:
        result["outputs"] = _gather_outputs(outputs)
    if collect_logits:
        result["logits"] = _gather_logits(logit_rows, num_classes)
    return result


def _score(logits: torch.Tensor, target: torch.Tensor, k: int, into: torch.Tensor) -> torch.Tensor:
    """Adds the batch's summed loss, top-1 and top-k hits to into[0:3]; returns the per-image top-1 hits."""
    into[0] += F.cross_entropy(logits, target, reduction="sum", ignore_index=-1)
    hit = logits.topk(k, dim=1).indices == target[:, None]
    into[1] += hit[:, 0].sum()
    into[2] += hit.any(dim=1).sum()
    return hit[:, 0]


def _score_multilabel(logits: torch.Tensor, target: torch.Tensor, k: int, into: torch.Tensor) -> None:
    """Adds the batch's summed loss (BCE averaged over classes), precision@1, any-of-top-k hits and count."""
    target = target.to(logits.dtype)
    into[0] += F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / target.shape[1]
    into[1] += precision_at_1(logits, target).sum()
    into[2] += (target.gather(1, logits.topk(k, dim=1).indices).amax(1) > 0.5).sum()
    into[3] += len(target)


def _multilabel_result(scored: list[torch.Tensor], num_classes: int, classes: list[str] | None,
                       thresholds: np.ndarray | None, collect: bool) -> dict[str, Any]:
    """mAP, F1 and per-class AP over every image of every rank (rank 0's first, then rank 1's, ...)."""
    mine = torch.cat(scored).cpu().numpy() if scored else np.empty((0, 2 * num_classes), dtype=np.float32)
    rows = np.concatenate(all_gather_objects(mine), axis=0)
    scores, targets = rows[:, :num_classes], rows[:, num_classes:]
    out = multilabel_metrics(scores, targets, list(classes or []), thresholds)
    if collect:
        out.update(scores=scores, targets=targets)
    return out


def _summary(totals: torch.Tensor, per_class: torch.Tensor, classes: list[str] | None,
             num_classes: int) -> dict[str, Any]:
    loss, c1, c5, n, skipped = totals[:5].tolist()
    correct, count = per_class.cpu().tolist()
    # a head larger than the data's class list (--num-classes) gets numbered names for the rest
    names = list(classes or []) + [str(i) for i in range(len(classes or []), num_classes)]
    return {
        "top1": 100.0 * c1 / n if n else 0.0,
        "top5": 100.0 * c5 / n if n else 0.0,
        "loss": loss / n if n else float("nan"),
        "num_images": int(n),
        "skipped_images": int(skipped),
        "per_class": [
            {"class": names[i], "correct": int(correct[i]), "total": int(count[i]),
             "top1": 100.0 * correct[i] / count[i] if count[i] else None}
            for i in range(num_classes)
        ],
    }


def _gather_logits(rows: list[tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> dict[str, np.ndarray]:
    """Every rank's logits and labels joined (rank 0's images first): {"logits": N x C float32, "label": N int64}."""
    mine = ((torch.cat([r[0] for r in rows]).numpy(), torch.cat([r[1] for r in rows]).numpy().astype(np.int64))
            if rows else (np.empty((0, num_classes), np.float32), np.empty(0, np.int64)))
    parts = all_gather_objects(mine)
    return {"logits": np.concatenate([p[0] for p in parts]), "label": np.concatenate([p[1] for p in parts])}


def _gather_outputs(outputs: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """Every rank's (pred, conf, label) rows joined: rank 0's images first, then rank 1's, ..."""
    mine = torch.cat(outputs, dim=1).cpu().numpy() if outputs else np.empty((3, 0))
    rows = np.concatenate(all_gather_objects(mine), axis=1)
    return {"pred": rows[0].astype(np.int64), "conf": rows[1].astype(np.float32), "label": rows[2].astype(np.int64)}
