"""The visionzoo checkpoint: one schema, written by training and read by everything else.

A checkpoint is a dict saved with torch.save and read back with `weights_only=True` (tensors and plain
containers only, no code). Its keys, in the order they are written:

    model                 the weights (state dict of the unwrapped model)
    ema                   the exponential moving average of the weights (--ema): what inference uses
    optimizer, scheduler, scaler, epoch, step, best_top1, rng
                          training state for an exact resume; derived files (e.g. tau-norm's) keep only
                          epoch, step and best_top1
    config                the resolved run config as a dict
    metrics               the epoch's record
    model_name, num_classes, classes, img_size, crop_pct, interpolation, visionzoo_version
                          what eval/predict/export need to rebuild the model and its preprocessing
    tau_norm              set by `visionzoo tau-norm`
    temperature           set by `visionzoo eval --calibrate` (inference.calibration): the T > 0 that predict,
                          serve and export divide the logits by; absent (or None): uncalibrated
    task, thresholds      a multi-label model: "multilabel" and its per-class thresholds (`eval --tune-thresholds`)
    digest                the content digest of all of the above (core.integrity), checked on every load


Files from earlier versions load as they are: every key but `model` is optional, DDP `module.` and
torch.compile `_orig_mod.` prefixes are stripped, and keys this version does not know are kept in
`extra` and written back unchanged. A file without a digest loads with a warning that it is unverified;
one whose content does not match its digest is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ModelFileError
from ..core.files import atomic_save
from ..core.integrity import DIGEST, content_digest
from .factory import create_model
from .weights import read_weights_only, strip_prefixes

# what resuming needs beyond the weights and the position (epoch, step, best_top1); derived files drop it
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng")
OPTIONAL = (*TRAINING_STATE, "ema", "tau_norm", "task", "thresholds",
            "temperature")  # written only when set


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    ema: dict[str, Any] | None = None  # {"state_dict", "steps", "updates"}: the averaged weights (--ema)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    epoch: int | None = None
    step: int | None = None
    best_top1: float | None = None
    rng: list[dict[str, Any]] | None = None  # one RNG state per rank
    config: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    model_name: str | None = None
    num_classes: int | None = None
    classes: list[str] | None = None
    img_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    visionzoo_version: str | None = None
    tau_norm: dict[str, Any] | None = None
    task: str | None = None  # "multilabel" for a multi-label model (sigmoid scores); None: single-label
    thresholds: list[float] | None = None  # multi-label: per-class score thresholds (`eval --tune-thresholds`)
    temperature: float | None = None  # softmax temperature fitted by `eval --calibrate`; None: uncalibrated
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_training_state(self) -> bool:
        return self.optimizer is not None

    def to_dict(self) -> dict[str, Any]:
        """The dict torch.save writes, keys in the order above; training state and tau_norm only when set."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and not (f.name in OPTIONAL and getattr(self, f.name) is None)}
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = "checkpoint") -> Checkpoint:
        if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
            raise ModelFileError(f"{source} is not a visionzoo checkpoint (no 'model' entry); "
                                 "use --weights for bare state dicts")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        fields = {k: v for k, v in d.items() if k in known}
        fields["model"] = strip_prefixes(d["model"])
        return cls(**fields, extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint (weights_only: no code runs); ModelFileError naming the file otherwise."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"checkpoint not found: {path}")
        d = read_weights_only(path, f"cannot read checkpoint {path}",
                              f"{path} is empty (0 bytes): a checkpoint whose write never finished?")
        return cls.from_dict(d, path)

    def save(self, path: str | Path) -> None:
        """Atomically (a kill mid-write leaves the previous file as it was), with its content digest."""
        d = self.to_dict()
        d[DIGEST] = content_digest(d)
        atomic_save(d, path)

    def without_training_state(self) -> Checkpoint:
        """A copy without optimizer, scheduler, loss-scaler and RNG state (epoch and step stay, as a record).

        The temperature goes too: every such copy (a run's best.pth and snapshots, tau-norm's and average's
        files) holds other weights than the ones it was fitted for."""
        return dataclasses.replace(self, optimizer=None, scheduler=None, scaler=None, rng=None,  # TRAINING_STATE
                                   temperature=None)

    def weights(self, raw: bool = False) -> dict[str, torch.Tensor]:
        """The EMA weights where the checkpoint has them (unless raw), else the trained weights."""
        return self.ema["state_dict"] if self.ema is not None and not raw else self.model

    def weights_kind(self, raw: bool = False) -> str:
        return "ema" if self.ema is not None and not raw else "raw"

    def build_model(self, source: str | Path = "checkpoint", raw: bool = False) -> nn.Module:
        """The model this checkpoint was trained as, with its weights loaded (the EMA ones unless raw)."""
        if not self.model_name:
            raise ModelFileError(f"{source} has no model name; build the model and use --weights instead")
        model = create_model(self.model_name, num_classes=self.num_classes)
        try:
            model.load_state_dict(self.weights(raw))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0][:300]
            raise ModelFileError(f"{source}: the weights do not fit {self.model_name} ({first})") from None
        return model


def model_from_checkpoint(path: str | Path, raw: bool = False) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model a visionzoo checkpoint was trained as and load its weights (EMA ones unless raw)."""
    ckpt = Checkpoint.load(path)
    return ckpt.build_model(path, raw), ckpt


def store_temperature(path: str | Path, temperature: float) -> None:
    """Write `temperature` into the checkpoint at path, atomically, every other entry left as it is.

    The file is read as stored (no prefix stripping, no keys added or reordered): only the temperature entry
    (replaced in place, or added last) and the content digest, written over the new content, change."""
    if not 0 < temperature < float("inf"):
        raise ValueError(f"a temperature must be a positive number, not {temperature!r}")
    _store_entry(path, "temperature", float(temperature))


def store_thresholds(path: str | Path, thresholds: list[float]) -> None:
    """Write a multi-label model's per-class `thresholds` (`eval --tune-thresholds`) into its checkpoint, as
    store_temperature writes its entry: atomically, everything else as it was."""
    ckpt = Checkpoint.load(path)
    if ckpt.task != "multilabel":
        raise ModelFileError(f"{path}: not a multi-label model; thresholds are for one")
    if ckpt.num_classes is not None and len(thresholds) != ckpt.num_classes:
        raise ModelFileError(f"{path}: {len(thresholds)} thresholds for a model of {ckpt.num_classes} classes")
    _store_entry(path, "thresholds", [float(t) for t in thresholds])


def _store_entry(path: str | Path, key: str, value: Any) -> None:
    path = Path(path)
    d = read_weights_only(path, f"cannot read checkpoint {path}",
                          f"{path} is empty (0 bytes): a checkpoint whose write never finished?")
    Checkpoint.from_dict(d, path)  # a visionzoo checkpoint, or the one-line error saying it is not
    out = {**d, key: value}  # read_weights_only dropped the digest: it comes last again
    out[DIGEST] = content_digest(out)
    atomic_save(out, path)
