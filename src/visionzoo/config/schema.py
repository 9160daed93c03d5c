"""Typed, declarative run configuration.

A run is described by one `TrainConfig` made of small sections. Values are layered:
dataclass defaults < recipe YAML < recipe mode < user YAML (--config) < command-line flags.
Every field is a command-line flag (`--batch-size`, `--lr`, ...), unknown keys are an error,
and the resolved config is written next to every run and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import ConfigError
from ..core.files import atomic_path
from ..core.precision import parse_precision


@dataclass
class ModelConfig:
    model: str = "resnet18"
    num_classes: int | None = None  # None: taken from the data set
    pretrained: bool = False  # the library's hub weights (needs internet)
    weights: str | None = None  # local state dict / checkpoint / safetensors file
    sync_bn: bool = False
    channels_last: bool | None = None  # None: on for CUDA devices, off on CPUs (core.precision)
    compile: bool = False
    # all | classifier (cRT: backbone frozen, its norm statistics kept) | fixres (classifier trains,
    # the model's final norm layer re-estimates its statistics, everything else frozen in eval mode)
    train_scope: str = "all"
    drop_path: float | None = None  # stochastic depth rate, for models that take one (timm's drop_path_rate)
    dropout: float | None = None  # dropout before the classifier, for models that take one
    raw_weights: bool = False  # a checkpoint with EMA weights: use its raw weights instead (--weights, eval, ...)


@dataclass
class DataConfig:
    data: str | None = None  # ImageFolder root with train/ and val/, or list-file root
    train_list: str | None = None  # "relative/path label" lines
    val_list: str | None = None
    train_root: str | None = None  # where train_list paths start (default: found under --data)
    val_root: str | None = None  # e.g. a flat ILSVRC2012 val folder
    dummy: bool = False  # synthetic data for performance runs
    dummy_train_size: int = 10240
    dummy_val_size: int = 1024
    dummy_classes: int = 1000
    img_size: int | None = None  # training crops (and evaluation, unless eval_img_size); None: the model's
    eval_img_size: int | None = None  # evaluation centre crop; None: img_size (torchvision V2: train 176, eval 224)
    crop_pct: float | None = None  # eval resize = eval size / crop_pct; None: model default
    interpolation: str | None = None  # bilinear | bicubic | nearest; None: model default
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    color_jitter: float = 0.0  # brightness/contrast/saturation strength, 0 = off
    # random_resized: RandomResizedCrop (--scale, --ratio); fixres: the test-time resize and centre
    # crop with a random horizontal shift of the crop (FixRes fine-tuning at the test resolution)
    train_crop: str = "random_resized"
    # fast: decode fused with the crop (JPEG DCT scaling, one resample); pil: full decode + torchvision v2 ops,
    # the reference pixels published accuracies assume; device: JPEGs decoded on the training device (nvJPEG on
    # CUDA), crop and flip there too. None: fast for training crops, pil for every evaluation (val, eval, predict)
    decode: str | None = None
    workers: int = 4
    worker_nice: int = 19  # loader workers' CPU priority (0-19): at 19 they use what the step leaves idle
    skip_bad_images: bool = False


@dataclass
class OptimConfig:
    opt: str = "sgd"
    lr: float | None = None  # absolute lr; None: lr_base scaled to the global batch size
    lr_base: float = 0.1  # lr at lr_base_batch images per step
    lr_base_batch: int = 256
    lr_scale: str = "linear"  # linear | sqrt | none
    momentum: float = 0.9  # sgd, lars, rmsprop
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw, lamb
    eps: float = 1e-8  # adamw, lamb, rmsprop, lars
    weight_decay: float = 1e-4
    # no weight decay on 1-d parameters (norm scales and shifts, biases) and on the names a timm model lists
    # as no_weight_decay (ViT position embeddings and class tokens)
    no_decay_norm_bias: bool = False
    layer_decay: float | None = None  # layer-wise lr decay (timm models with layer groups: ViT, ConvNeXt, ...)
    accum_steps: int = 1  # micro-batches per optimizer step: the effective batch is batch_size x accum_steps
    clip_grad: float | None = None  # max global grad norm
    label_smoothing: float = 0.0
    ema: bool = False  # keep an exponential moving average of the weights (evaluated and saved beside them)
    ema_decay: float = 0.9998
    ema_warmup: bool = False  # decay min(ema_decay, (1 + n) / (10 + n)) after n updates, as timm's ModelEmaV3
    ema_every: int = 1  # optimizer steps between EMA updates


@dataclass
class SchedConfig:
    sched: str = "linear"  # linear | step | multistep | cosine | constant
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01  # lr multiplier at step 0 of warm-up
    step_size: int = 30  # epochs, for sched=step
    milestones: list[int] = field(default_factory=lambda: [30, 60, 90])  # epochs, multistep
    gamma: float = 0.1
    min_lr_factor: float = 0.0  # final lr / peak lr for linear and cosine


@dataclass
class LongTailConfig:
    """Long-tail training: sampling, loss, classifier re-training; OLTR stage 2 is the oltr_* models."""

    sampler: str = "instance"  # instance | class_balanced | sqrt | class_aware
    samples_per_class: int = 4  # class_aware: images per class per draw (OLTR stage 2)
    # ce | bce (binary cross-entropy on soft targets, as timm's "ResNet strikes back") | balanced_softmax
    # (logits + log class prior during training)
    loss: str = "ce"
    reset_classifier: bool = False  # re-initialise the classifier after loading --weights (cRT)
    head_lr_factor: float = 1.0  # classifier lr = lr * this (OLTR stage 2: 10)
    centroid_weight: float = 0.01  # OLTR (oltr_* models): discriminative centroid loss weight
    centroid_lr_factor: float = 1.0  # OLTR: centroids lr = lr * this


@dataclass
class AugConfig:
    """Augmentation beyond crop and flip: per-sample policies in the loader, batch mixing on the device."""

    auto_augment: str | None = None  # ta_wide | ra | augmix | imagenet (torchvision's policies)
    ra_magnitude: int = 9  # RandAugment magnitude (0-30)
    ra_ops: int = 2  # RandAugment ops per image
    augmix_severity: int = 3
    random_erase: float = 0.0  # probability of erasing a rectangle (with the mean colour)
    mixup: float = 0.0  # mixup alpha (0 = off)
    cutmix: float = 0.0  # cutmix alpha (0 = off)
    mixup_prob: float = 1.0  # probability a batch is mixed at all
    mixup_switch_prob: float = 0.5  # with both on: probability of cutmix rather than mixup
    mixup_off_epoch: int = 0  # epoch (1-based) from which batches are no longer mixed; 0: never
    aug_repeats: int = 0  # repeated augmentation: each image N times per epoch, on different ranks (0, 1: off)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    lt: LongTailConfig = field(default_factory=LongTailConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    epochs: int = 90
    # global (summed over all processes); small by default so a first run on a laptop-sized data set
    # takes enough steps to learn. Recipes set the seeds' 256.
    batch_size: int = 64
    iters: int | None = None  # cap on steps per epoch (performance runs)
    # auto: bf16 autocast on CUDA devices that support it (fp16 on older ones), fp32 on CPUs
    # (core.precision); the older key `amp` and the value `none` (fp32) are still read
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    deterministic: bool = False
    output: str | None = None  # run folder; None: runs/<model>-<time>
    resume: str | None = None  # PATH or "auto" (OUTPUT/last.pth)
    eval_every: int = 1  # epochs between evaluations; 0 = never
    eval_start: int = 1  # first epoch (1-based) that is evaluated
    target_top1: float | None = None  # stop once val top-1 (percent) reaches this
    log_interval: int = 20  # steps between loss read-outs (the only host syncs)
    perf_warmup_steps: int = 5  # steps per epoch left out of images/s
    progress: bool = True
    tensorboard: bool = False
    recipe: str | None = None  # recorded: the recipe and mode the run came from
    mode: str | None = None


SECTIONS = ("model", "data", "optim", "sched", "lt", "aug")
CHOICES: dict[str, tuple[str, ...]] = {
    "opt": ("sgd", "adamw", "lamb", "lars", "rmsprop"),
    "auto_augment": ("ta_wide", "ra", "augmix", "imagenet"),
    "lr_scale": ("linear", "sqrt", "none"),
    "sched": ("linear", "step", "multistep", "cosine", "constant"),
    "precision": ("auto", "fp32", "fp16", "bf16"),
    "device": ("auto", "cpu", "cuda"),
    "interpolation": ("bilinear", "bicubic", "nearest"),
    "sampler": ("instance", "class_balanced", "sqrt", "class_aware"),
    "loss": ("ce", "bce", "balanced_softmax"),
    "train_scope": ("all", "classifier", "fixres"),
    "train_crop": ("random_resized", "fixres"),
    "decode": ("fast", "pil", "device"),
}
# older names of fields, still read from YAML files, checkpoints' saved configs and the command line
KEY_ALIASES = {"amp": "precision"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise ConfigError naming the key."""
    base, optional = _unwrap_optional(tp)
    # the field's name from "recipe x: optim.sched", "config: device" or "--sched"
    name = key.replace(" ", ".").rsplit(".", 1)[-1].lstrip("-").replace("-", "_")
    name = KEY_ALIASES.get(name, name)
    if name == "precision":  # one vocabulary with its aliases (none and null = fp32)
        return parse_precision(value, CHOICES[name], key)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{key}: may not be empty")
    origin = typing.get_origin(base)
    try:
        if origin is list:
            (item_tp,) = typing.get_args(base)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            return [coerce(v, item_tp, key) for v in value]
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if base is str:
            value = str(value)
            if name in CHOICES and value not in CHOICES[name]:
                raise ConfigError(f"{key}: {value!r} is not one of {', '.join(CHOICES[name])}")
            return value
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {value!r} as {getattr(base, '__name__', base)}") from None
    raise ConfigError(f"{key}: unsupported type {base}")


def _unknown(key: str, known: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"{source}: unknown config key {key!r}{hint}")


def field_index() -> dict[str, str]:
    """Map every leaf field name to its dotted path, e.g. 'lr' -> 'optim.lr'. Names are unique."""
    index: dict[str, str] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in SECTIONS:
            for sub in dataclasses.fields(_hints(TrainConfig)[f.name]):
                assert sub.name not in index, f"duplicate config field {sub.name}"
                index[sub.name] = f"{f.name}.{sub.name}"
        else:
            assert f.name not in index, f"duplicate config field {f.name}"
            index[f.name] = f.name
    return index


def field_type(path: str) -> Any:
    parts = path.split(".")
    cls: Any = TrainConfig
    for p in parts[:-1]:
        cls = _hints(cls)[p]
    return _hints(cls)[parts[-1]]


def flatten(overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """Turn nested or flat YAML mappings into {dotted.path: value}; unknown keys raise."""
    index = field_index()
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        key = KEY_ALIASES.get(key, key)
        if key in SECTIONS and not isinstance(value, dict) and key in index:
            out[index[key]] = value  # flat `model: resnet50` / `data: DIR` (leaf named like its section)
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section {key!r} must be a mapping")
            sub_known = [f.name for f in dataclasses.fields(_hints(TrainConfig)[key])]
            for sub_key, sub_value in value.items():
                if sub_key not in sub_known:
                    raise _unknown(f"{key}.{sub_key}", [f"{key}.{k}" for k in sub_known], source)
                out[f"{key}.{sub_key}"] = sub_value
        elif key in index:
            out[index[key]] = value
        else:
            raise _unknown(key, list(index) + list(SECTIONS), source)
    return out


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    """Return a copy of cfg with overrides (nested or flat keys) applied and type-checked."""
    cfg = dataclasses.replace(
        cfg, **{s: dataclasses.replace(getattr(cfg, s)) for s in SECTIONS}
    )
    for path, value in flatten(overrides, source).items():
        parent, _, name = path.rpartition(".")
        target = getattr_path(cfg, parent) if parent else cfg
        setattr(target, name, coerce(value, field_type(path), f"{source}: {path}"))
    return cfg


MAX_IMG_SIZE = 4096  # px: a batch of 64 such images is 12 GB of uint8 already


def validate(cfg: TrainConfig) -> TrainConfig:
    """Values types alone cannot rule out, and fields that conflict; raises ConfigError naming the field."""
    _check_finite(cfg)
    checks = [
        ("epochs", cfg.epochs >= 1, ">= 1"), ("batch_size", cfg.batch_size >= 1, ">= 1"),
        ("iters", cfg.iters is None or cfg.iters >= 1, ">= 1"), ("log_interval", cfg.log_interval >= 1, ">= 1"),
        ("eval_every", cfg.eval_every >= 0, ">= 0"), ("eval_start", cfg.eval_start >= 1, ">= 1"),
        ("perf_warmup_steps", cfg.perf_warmup_steps >= 0, ">= 0"), ("workers", cfg.data.workers >= 0, ">= 0"),
        ("worker_nice", 0 <= cfg.data.worker_nice <= 19, "0..19"),
        ("step_size", cfg.sched.step_size >= 1, ">= 1"), ("warmup_epochs", cfg.sched.warmup_epochs >= 0, ">= 0"),
        ("gamma", cfg.sched.gamma > 0, "> 0"), ("min_lr_factor", 0 <= cfg.sched.min_lr_factor <= 1, "0..1"),
        ("warmup_start_factor", 0 < cfg.sched.warmup_start_factor <= 1, "(0, 1]"),
        ("lr", cfg.optim.lr is None or cfg.optim.lr > 0, "> 0"), ("lr_base", cfg.optim.lr_base > 0, "> 0"),
        ("lr_base_batch", cfg.optim.lr_base_batch >= 1, ">= 1"), ("momentum", 0 <= cfg.optim.momentum <= 1, "0..1"),
        ("weight_decay", cfg.optim.weight_decay >= 0, ">= 0"),
        ("clip_grad", cfg.optim.clip_grad is None or cfg.optim.clip_grad > 0, "> 0"),
        ("label_smoothing", 0.0 <= cfg.optim.label_smoothing < 1.0, "[0, 1)"),
        ("hflip", 0.0 <= cfg.data.hflip <= 1.0, "0..1"), ("color_jitter", cfg.data.color_jitter >= 0, ">= 0"),
        ("scale", len(cfg.data.scale) == 2 and 0 < cfg.data.scale[0] <= cfg.data.scale[1] <= 1, "0 < min <= max <= 1"),
        ("ratio", len(cfg.data.ratio) == 2 and 0 < cfg.data.ratio[0] <= cfg.data.ratio[1], "0 < min <= max"),
        ("num_classes", cfg.model.num_classes is None or cfg.model.num_classes >= 1, ">= 1"),
        ("samples_per_class", cfg.lt.samples_per_class >= 1, ">= 1"),
        ("head_lr_factor", cfg.lt.head_lr_factor > 0, "> 0"),
        ("centroid_weight", cfg.lt.centroid_weight >= 0, ">= 0"),
        ("centroid_lr_factor", cfg.lt.centroid_lr_factor > 0, "> 0"),
        ("betas", len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas), "two values in [0, 1)"),
        ("eps", cfg.optim.eps > 0, "> 0"),
        ("layer_decay", cfg.optim.layer_decay is None or 0 < cfg.optim.layer_decay <= 1, "(0, 1]"),
        ("accum_steps", cfg.optim.accum_steps >= 1, ">= 1"),
        ("ema_decay", 0 < cfg.optim.ema_decay < 1, "(0, 1)"), ("ema_every", cfg.optim.ema_every >= 1, ">= 1"),
        ("drop_path", cfg.model.drop_path is None or 0 <= cfg.model.drop_path < 1, "[0, 1)"),
        ("dropout", cfg.model.dropout is None or 0 <= cfg.model.dropout < 1, "[0, 1)"),
        ("ra_magnitude", 0 <= cfg.aug.ra_magnitude <= 30, "0..30"), ("ra_ops", cfg.aug.ra_ops >= 1, ">= 1"),
        ("augmix_severity", 1 <= cfg.aug.augmix_severity <= 10, "1..10"),
        ("random_erase", 0 <= cfg.aug.random_erase <= 1, "0..1"),
        ("mixup", cfg.aug.mixup >= 0, ">= 0"), ("cutmix", cfg.aug.cutmix >= 0, ">= 0"),
        ("mixup_prob", 0 <= cfg.aug.mixup_prob <= 1, "0..1"),
        ("mixup_switch_prob", 0 <= cfg.aug.mixup_switch_prob <= 1, "0..1"),
        ("mixup_off_epoch", cfg.aug.mixup_off_epoch >= 0, ">= 0"), ("aug_repeats", cfg.aug.aug_repeats >= 0, ">= 0"),
    ]
    _refuse([(name, allowed) for name, ok, allowed in checks if not ok], cfg)
    check_data(cfg.data)
    if cfg.model.train_scope != "all" and not (cfg.model.weights or cfg.model.pretrained or cfg.resume):
        raise ConfigError(f"--train-scope {cfg.model.train_scope} fine-tunes a trained model: pass --init-from CKPT")
    return cfg


def _refuse(bad: list[tuple[str, str]], cfg: Any) -> None:
    if bad:
        index = field_index()
        raise ConfigError(", ".join(f"{index[n]} = {getattr_path(cfg, index[n])!r} is out of range ({allowed})"
                                    for n, allowed in bad))


def _check_finite(cfg: TrainConfig) -> None:
    """NaN and infinity parse as floats; no field means anything with them."""
    for path in field_index().values():
        value = getattr_path(cfg, path)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{path} = {value!r} is not a finite number")


def check_data(data: DataConfig) -> DataConfig:
    """The data settings every command checks (training, evaluation, export): image size, crop, decode mode."""
    bad = []
    for name in ("img_size", "eval_img_size"):
        size = getattr(data, name)
        if size is not None and not 1 <= size <= MAX_IMG_SIZE:
            bad.append((name, f"1..{MAX_IMG_SIZE} px"))
    if data.crop_pct is not None and not 0 < data.crop_pct <= 1.5:
        bad.append(("crop_pct", "(0, 1.5]"))
    _refuse(bad, TrainConfig(data=data))
    return check_decode(data)


def check_decode(data: DataConfig) -> DataConfig:
    """What decode='device' cannot do, as a ConfigError: the batch decodes after the workers could have
    replaced a bad file or jittered colours, and its centre crop does not pad (crop_pct above 1)."""
    if data.decode == "device":
        clash = [flag for flag, on in (("--skip-bad-images", data.skip_bad_images),
                                       ("--color-jitter", data.color_jitter > 0),
                                       ("--crop-pct above 1", (data.crop_pct or 0) > 1)) if on]
        if clash:
            raise ConfigError(f"data.decode = 'device' does not combine with {', '.join(clash)} (use --decode fast)")
    return data


def getattr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any], source: str = "config") -> TrainConfig:
    return apply_overrides(TrainConfig(), d, source)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
