"""What any model file says about its model: class names and preprocessing (ModelInfo).

Every format carries the same metadata, so eval, predict, bench and infer treat an exported file
exactly like the checkpoint it came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.errors import ModelFileError
from ..models.checkpoint import Checkpoint
from ..models.registry import ModelCfg

META_KEY = "visionzoo"  # name of the metadata entry in every exported format
# the data keys worth carrying from a checkpoint into exported files: where its validation split is
DATA_KEYS = ("data", "val_list", "val_root", "train_list", "train_root", "dummy", "dummy_val_size", "dummy_classes",
             "task")


@dataclass
class ModelInfo:
    """What is needed to feed a model and name its outputs, whatever file it lives in."""

    model_name: str
    num_classes: int
    img_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] | None = None
    quantized: str | None = None  # "int8" / "int16" for quantised files
    # the softmax temperature fitted by `eval --calibrate` (inference.calibration): the runner divides the logits
    # by it, unless temperature_baked says the file's graph already does (`export` of a calibrated checkpoint)
    temperature: float | None = None
    temperature_baked: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, source: str | Path) -> ModelInfo:
        try:
            d = json.loads(text)
            return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})
        except (ValueError, TypeError, KeyError) as e:
            raise ModelFileError(f"{source}: unreadable visionzoo metadata ({e})") from None

    def class_name(self, index: int) -> str:
        return self.classes[index] if self.classes and index < len(self.classes) else str(index)

    @classmethod
    def from_model_cfg(cls, model_cfg: ModelCfg, model_name: str, ckpt: Checkpoint | None = None) -> ModelInfo:
        """The checkpoint records the preprocessing it was trained/evaluated with; the model cfg the rest."""
        info = cls(
            model_name=model_name,
            num_classes=model_cfg.num_classes,
            img_size=model_cfg.input_size,
            crop_pct=model_cfg.crop_pct,
            interpolation=model_cfg.interpolation,
            mean=tuple(model_cfg.mean),
            std=tuple(model_cfg.std),
        )
        if ckpt is None:
            return info
        # an earlier version's checkpoint may lack the preprocessing keys: the model's defaults stand in
        info = with_preprocessing(info, ckpt.img_size, ckpt.crop_pct, ckpt.interpolation)
        info.classes = ckpt.classes
        info.temperature = ckpt.temperature
        info.extra["data"] = saved_data(ckpt)
        # where training wrote the run, as given (often relative): with the checkpoint's own path it tells the
        # folder training ran in, where the data's relative paths start (eval_data.resolve_data)
        info.extra["trained_output"] = (ckpt.config or {}).get("output")
        info.extra["train_scope"] = ((ckpt.config or {}).get("model") or {}).get("train_scope", "all")
        if ckpt.task == "multilabel":  # sigmoid scores and label sets (predict), carried into exported files
            info.extra["task"] = "multilabel"
            info.extra["thresholds"] = ckpt.thresholds
        return info


def with_preprocessing(info: ModelInfo, img_size: int | None = None, crop_pct: float | None = None,
                       interpolation: str | None = None) -> ModelInfo:
    """The info with explicit preprocessing flags applied over the file's own."""
    return replace(info, img_size=img_size or info.img_size, crop_pct=crop_pct or info.crop_pct,
                   interpolation=interpolation or info.interpolation)


def saved_data(ckpt: Checkpoint) -> dict[str, Any]:
    """Where the checkpoint's data set is (its run config's data keys that locate the splits)."""
    saved = (ckpt.config or {}).get("data") or {}
    return {k: saved[k] for k in DATA_KEYS if k in saved}
