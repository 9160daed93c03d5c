"""`visionzoo finetune-res`: FixRes fine-tuning of any trained checkpoint at a new test size.

The run is the `fixres_resnet50_finetune` recipe's (test-time transform with a shifted crop, SGD 1e-3 per
64 images, StepLR(30)) applied to the checkpoint's own model, classes, data and crop ratio. Which layers
train is the model's business (`train_scope: fixres`, ModelCfg.final_norm): the classifier, plus the
final BatchNorm's running statistics for ResNets. The new checkpoint records the test size, so `eval`
and `predict` use it by default.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import TrainConfig, apply_overrides
from ..config.recipes import get_recipe
from ..core.distributed import init_distributed
from ..core.errors import ConfigError, DataError, ModelFileError
from ..core.files import write_json
from ..core.precision import resolve_channels_last, resolve_precision
from ..data.loader import find_samples
from ..engine.trainer import check_output_free, train
from ..inference.evaluate import evaluate
from ..inference.model_info import DATA_KEYS, saved_data
from ..models.checkpoint import Checkpoint

log = logging.getLogger("visionzoo")

RECIPE = "fixres_resnet50_finetune"


def finetune_config(checkpoint: str | Path, test_size: int, mode: str | None = None,
                    overrides: dict[str, Any] | None = None, source: str = "command line") -> TrainConfig:
    """The recipe's config for this checkpoint at test_size; overrides (nested keys) go on top.

    Layering: recipe < recipe mode < the checkpoint's model, class count, data and crop < overrides.
    """
    if test_size < 1:
        raise ConfigError(f"--test-size {test_size} must be positive")
    ckpt = Checkpoint.load(checkpoint)
    if not ckpt.model_name:
        raise ModelFileError(f"{checkpoint}: not a visionzoo checkpoint (no model name); finetune-res needs one")
    cfg = get_recipe(RECIPE).resolve(mode)
    saved = ckpt.config or {}
    overrides = overrides or {}
    # data named on the command line replaces the checkpoint's data as a whole (no mixed lists and roots)
    location = {} if set(overrides.get("data") or {}) & set(DATA_KEYS) else saved_data(ckpt)
    from_ckpt = {
        "model": {"model": ckpt.model_name, "num_classes": ckpt.num_classes, "weights": str(checkpoint)},
        "data": {**location, "crop_pct": ckpt.crop_pct or cfg.data.crop_pct, "interpolation": ckpt.interpolation,
                 "workers": (saved.get("data") or {}).get("workers", cfg.data.workers)},
        "precision": saved.get("precision", saved.get("amp")),  # an earlier version's key; null is fp32
    }
    cfg = apply_overrides(cfg, from_ckpt, str(checkpoint))
    cfg = apply_overrides(cfg, overrides, source)
    cfg.data.img_size = test_size
    _check_classes(cfg, ckpt.classes)
    return cfg


def finetune_res(cfg: TrainConfig, evaluate_before: bool = True) -> dict[str, Any]:
    """Evaluate the source checkpoint at the test size, fine-tune, and return the training summary.

    The summary gains `before_finetune` (top-1/top-5 of the source model at the test size), also written
    to OUTPUT/before_finetune.json, so the gain is read off one run.
    """
    if not cfg.model.weights:
        raise ConfigError("finetune-res needs the checkpoint to fine-tune (model.weights)")
    check_output_free(cfg)  # before the evaluation below, not after it
    dist = init_distributed(cfg.device)
    before = None
    if evaluate_before and cfg.eval_every > 0 and not cfg.resume:
        # the precision and memory format train will resolve to
        before = evaluate(cfg.model.weights, cfg.data, max(1, cfg.batch_size // dist.world_size), cfg.device,
                          resolve_precision(cfg.precision, dist.device),
                          resolve_channels_last(cfg.model.channels_last, dist.device), cfg.progress,
                          raw_weights=cfg.model.raw_weights)
        before.pop("per_class", None)
        log.info("before fine-tuning, at %d px: top-1 %.2f  top-5 %.2f (%d images)", cfg.data.img_size,
                 before["top1"], before["top5"], before["num_images"])
    summary = train(cfg)
    if before is not None:
        summary["before_finetune"] = before
        if dist.is_main:
            write_json(Path(summary["output"]) / "before_finetune.json", before)
    return summary


def _check_classes(cfg: TrainConfig, classes: list[str] | None) -> None:
    """The fine-tuning data must name the checkpoint's classes in its order, or labels would shift."""
    if cfg.data.dummy or not classes:
        return
    found = find_samples(cfg.data, "train").classes
    if list(found) != list(classes):
        extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        order = "" if extra + missing else ", or another order"
        raise DataError(f"the fine-tuning data's classes differ from {cfg.model.weights}'s "
                        f"(new: {extra[:5]}, missing: {missing[:5]}{order})")
