"""Typed, declarative run configuration.

A run is described by one `TrainConfig` made of small sections. Values are layered:
dataclass defaults < recipe YAML < recipe mode < user YAML (--config) < command-line flags.
Every field is a command-line flag (`--batch-size`, `--lr`, ...), unknown keys are an error,
and the resolved config is written next to every run and inside every checkpoint.

Each field carries its one-line help (`setting(default, "help")`): `visionzoo train --help` is generated
from it, so the schema is the one place a setting is described.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import difflib
import functools
import math
import numbers
import os
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import ConfigError
from ..core.files import atomic_path
from ..core.precision import parse_precision
from .limits import MAX_IMG_SIZE, MAX_SEED
from .sizes import parse_size_schedule


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its one-line help text (the source of the command line's --help)."""
    assert help, "every config field needs a help text"
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def default_workers() -> int:
    """min(4, the CPUs this process may run on): more loader processes than CPUs only contend (and torch warns)."""
    try:
        cpus = len(os.sched_getaffinity(0))  # a container's or taskset's share, not the machine's count
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


class _Checked:
    """Types and choices checked when a section is built: `TrainConfig(model="resnet18")` fails here, naming the
    field, instead of with an AttributeError deep in a run."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ModelConfig(_Checked):
    """The network: its architecture, weights and which parts train."""

    model: str = setting("resnet18", "registered or timm model name (see `visionzoo models`)")
    num_classes: int | None = setting(None, "classifier size; none: the data set's class count")
    pretrained: bool = setting(False, "start from the library's hub weights (needs internet)")
    weights: str | None = setting(None, "start from a local state dict, checkpoint or .safetensors file")
    sync_bn: bool = setting(False, "synchronise batch-norm statistics across GPUs (multi-GPU runs)")
    channels_last: bool | None = setting(None, "NHWC memory layout; none: on for CUDA devices, off on CPUs")
    compile: bool = setting(False, "run the model through torch.compile")
    # classifier is cRT (backbone frozen, its norm statistics kept); fixres trains the classifier while the
    # final norm layer re-estimates its statistics, everything else frozen in eval mode
    train_scope: str = setting("all", "what trains: all | classifier (cRT) | fixres (classifier + final norm)")
    drop_path: float | None = setting(None, "stochastic depth rate, for models that take one (timm's drop_path_rate)")
    dropout: float | None = setting(None, "dropout before the classifier, for models that take one")
    grad_checkpointing: bool = setting(False, "recompute activations in the backward pass instead of keeping them "
                                              "(less memory, more compute; timm models that support it)")
    raw_weights: bool = setting(False, "a checkpoint with EMA weights: load its raw weights, not the average")
    # measured in docs/recipes.md ("Fine-tuning on small data sets"): a random head's large first logits push
    # the pretrained features around before the head has learnt anything
    head_init: str = setting("zero", "a classifier that starts fresh on pretrained weights (another class count): "
                                     "zero (BiT) or random (the model's own initialisation)")


@dataclass
class DataConfig(_Checked):
    """Where images come from and how they become batches."""

    data: str | None = setting(None, "ImageFolder root with train/ and val/, a list-file root, a pack, "
                                     "builtin:digits, a Hugging Face dataset (save_to_disk folder, parquet "
                                     "folder or hf:NAME)")
    train_list: str | None = setting(None, "training list file: 'relative/path label' lines")
    val_list: str | None = setting(None, "validation list file: 'relative/path label' lines")
    train_root: str | None = setting(None, "where train_list paths start; none: found under data")
    val_root: str | None = setting(None, "where val_list paths start, e.g. a flat ILSVRC2012 val folder")
    # WebDataset shards read in order (a pack's, or any URLs with a pack.json beside them): http(s)://, s3://,
    # gs:// through fsspec, pipe:COMMAND, local paths; several patterns are joined with '::' as webdataset does
    train_urls: str | None = setting(None, "stream training shards from these URLs, e.g. "
                                           "'https://host/pack/train-{000000..000099}.tar'")
    val_urls: str | None = setting(None, "stream validation shards from these URLs")
    pack_info: str | None = setting(None, "the pack.json of streamed shards (shard sizes, classes); none: beside "
                                          "the first URL")
    shuffle_buffer: int = setting(2000, "streamed training samples held and drawn from at random")
    # http(s) shards are read at training's pace, so a read may last minutes: the limit is between bytes
    stream_timeout: float = setting(60.0, "streamed http(s) shards: seconds without a byte before the read is "
                                          "tried again (resuming where it stopped)")
    stream_retries: int = setting(5, "streamed http(s) shards: tries again after a stall, reset or 5xx answer, "
                                     "with backoff, before the run stops")
    image_column: str | None = setting(None, "Hugging Face data: the image column; none: the first Image feature")
    label_column: str | None = setting(None, "Hugging Face data: the label column; none: the first ClassLabel "
                                             "feature")
    # a Hugging Face dataset published with train and test only validates on test (said in the log)
    val_split: str | None = setting(None, "the split validated on: a folder under data, a pack's split or a Hugging "
                                          "Face dataset's; none: val (Hugging Face: validation or val, else test)")
    # multi-label list files are CSV with a header: `path,labels` (space-separated names) or `path,<class>,...` (0/1)
    task: str = setting("auto", "single (one class per image) or multilabel (a set of classes per image); auto: "
                                "from the data (a multi-label CSV list makes it multilabel)")
    classes: str | None = setting(None, "class names, one per line, in label order (multi-label CSV lists); none: "
                                        "sorted by name")
    dummy: bool = setting(False, "synthetic images instead of a data set (performance runs)")
    dummy_train_size: int = setting(10240, "synthetic training images")
    dummy_val_size: int = setting(1024, "synthetic validation images")
    dummy_classes: int = setting(1000, "synthetic classes")
    img_size: int | None = setting(None, "training crop size in px (and evaluation's, unless eval_img_size); "
                                         "none: the model's")
    # int | str: a size, or the keyword auto (KEYWORDS)
    eval_img_size: int | str | None = setting(None, "evaluation centre crop in px; auto: ~1.15x the final training "
                                                    "size (FixRes' rule, to a multiple of 8); none: img_size (the "
                                                    "schedule's final size)")
    img_size_schedule: str | None = setting(None, "progressive resizing: START:END px (ffcv's linear ramp, "
                                                  "size_start/end_epochs place it) or SIZE@EPOCH,... (e.g. "
                                                  "64@1,96@4,128@8); none: img_size every epoch")
    size_start_epochs: int | None = setting(None, "epochs at START px before the ramp; none: as ffcv (74% of "
                                                  "the run)")
    size_end_epochs: int | None = setting(None, "epochs at END px after the ramp (at least 1); none: as ffcv "
                                                "(the last 14% of the run)")
    batch_size_schedule: str | None = setting(None, "progressive resizing: auto scales the batch at each smaller "
                                                    "size by (largest / size)^2, down to a multiple of 8, keeping "
                                                    "the memory of the largest size's batch; the lr is unchanged")
    size_step: int | None = setting(None, "the ramp's sizes are multiples of this; none: the model's patch size "
                                          "(ViTs), else 32 as ffcv")
    crop_pct: float | None = setting(None, "evaluation resize = eval size / crop_pct; none: the model's")
    interpolation: str | None = setting(None, "resize filter; none: the model's")
    scale: list[float] = setting(help="RandomResizedCrop area range (min,max)", factory=lambda: [0.08, 1.0])
    ratio: list[float] = setting(help="RandomResizedCrop aspect-ratio range (min,max)", factory=lambda: [3 / 4, 4 / 3])
    hflip: float = setting(0.5, "probability of a horizontal flip")
    color_jitter: float = setting(0.0, "brightness/contrast/saturation jitter strength; 0: off")
    # fixres: the test-time resize and centre crop with a random horizontal shift of the crop (FixRes
    # fine-tuning at the test resolution)
    train_crop: str = setting("random_resized", "training crop: RandomResizedCrop (scale, ratio) or FixRes' "
                                                "shifted test crop")
    # fast: decode fused with the crop (JPEG DCT scaling, one resample); pil: full decode + torchvision v2 ops,
    # the reference pixels published accuracies assume; device: JPEGs decoded on the training device (nvJPEG on
    # CUDA), crop and flip there too
    decode: str | None = setting(None, "JPEG decoding: fused with the crop, PIL, or on the device; none: fast "
                                       "for training, pil for evaluation")
    workers: int = setting(help="loader processes per rank; default min(4, CPUs available)", factory=default_workers)
    worker_nice: int = setting(19, "loader processes' CPU priority (0-19): at 19 they use what the step leaves idle")
    skip_bad_images: bool = setting(False, "replace unreadable images with another one instead of stopping")


@dataclass
class OptimConfig(_Checked):
    """The optimizer, learning rate, weight decay and weight averaging."""

    opt: str = setting("sgd", "optimizer")
    lr: float | None = setting(None, "absolute learning rate; none: lr_base scaled to the global batch size")
    lr_base: float = setting(0.1, "learning rate at lr_base_batch images per step")
    lr_base_batch: int = setting(256, "the batch size lr_base is given for")
    # timm's rule (its --lr-base-scale default): adaptive optimizers' updates grow more slowly with the batch
    lr_scale: str = setting("auto", "how lr_base scales with the batch size; auto: sqrt for adamw and lamb, "
                                    "linear for sgd, lars and rmsprop")
    momentum: float = setting(0.9, "momentum (sgd, lars, rmsprop)")
    nesterov: bool = setting(False, "Nesterov momentum (sgd)")
    betas: list[float] = setting(help="Adam betas (adamw, lamb)", factory=lambda: [0.9, 0.999])
    eps: float = setting(1e-8, "denominator epsilon (adamw, lamb, rmsprop, lars)")
    weight_decay: float = setting(1e-4, "weight decay")
    # also the names a timm model lists as no_weight_decay (ViT position embeddings and class tokens)
    no_decay_norm_bias: bool = setting(False, "no weight decay on 1-d parameters (norm scales and shifts, biases)")
    layer_decay: float | None = setting(None, "layer-wise lr decay (timm models with layer groups: ViT, ConvNeXt, "
                                              "...)")
    accum_steps: int = setting(1, "micro-batches per optimizer step: the effective batch is batch_size x this")
    clip_grad: float | None = setting(None, "max global gradient norm; none: no clipping")
    label_smoothing: float = setting(0.0, "label smoothing of the targets")
    ema: bool = setting(False, "keep an exponential moving average of the weights (evaluated and saved beside "
                               "them)")
    ema_decay: float = setting(0.9998, "EMA decay per update")
    ema_warmup: bool = setting(False, "EMA decay min(ema_decay, (1 + n) / (10 + n)) after n updates (timm's "
                                      "ModelEmaV3)")
    ema_every: int = setting(1, "optimizer steps between EMA updates")


@dataclass
class SchedConfig(_Checked):
    """The learning-rate schedule, per step."""

    sched: str = setting("linear", "learning-rate schedule after warm-up")
    warmup_epochs: float = setting(0.0, "linear warm-up length in epochs (fractions allowed); at most a fifth of "
                                        "the run")
    # small data sets have few steps an epoch: a fine-tune says its warm-up in steps
    warmup_steps: int | None = setting(None, "linear warm-up length in optimizer steps, instead of warmup_epochs; at "
                                             "most a fifth of the run")
    warmup_start_factor: float = setting(0.01, "lr multiplier at the first warm-up step")
    step_size: int = setting(30, "epochs between decays (sched step)")
    milestones: list[int] = setting(help="epochs at which the lr decays (sched multistep)",
                                    factory=lambda: [30, 60, 90])
    gamma: float = setting(0.1, "lr multiplier at each decay (step, multistep)")
    min_lr_factor: float = setting(0.0, "final lr / peak lr (linear, cosine)")


@dataclass
class LongTailConfig(_Checked):
    """Long-tail training: sampling, loss, classifier re-training; OLTR stage 2 is the oltr_* models."""

    sampler: str = setting("instance", "training sampler: per image, class-balanced, square-root or class-aware")
    samples_per_class: int = setting(4, "images per class per draw (sampler class_aware, OLTR stage 2)")
    # bce is binary cross-entropy on soft targets, as timm's "ResNet strikes back"; balanced_softmax adds the
    # log class prior to the logits during training
    loss: str = setting("ce", "training loss (multi-label: bce, or asl, the asymmetric loss of Ridnik et al. 2021)")
    class_weights: str | None = setting(None, "weighted cross-entropy for imbalanced single-label data: balanced "
                                              "(n / (classes x count)), sqrt (1 / sqrt(count), mean 1) or a FILE "
                                              "of one weight per class, in class order")
    pos_weight: str | None = setting(None, "multi-label bce: auto weighs each class's positives by its negatives / "
                                           "positives in the training split")
    asl_gamma_neg: float = setting(4.0, "asl: focusing exponent of the negatives")
    asl_gamma_pos: float = setting(0.0, "asl: focusing exponent of the positives")
    asl_clip: float = setting(0.05, "asl: probability margin shifted off the negatives")
    reset_classifier: bool = setting(False, "re-initialise the classifier after loading weights (cRT)")
    head_lr_factor: float = setting(1.0, "classifier lr = lr x this (OLTR stage 2: 10)")
    centroid_weight: float = setting(0.01, "discriminative centroid loss weight (oltr_* models)")
    centroid_lr_factor: float = setting(1.0, "centroids' lr = lr x this (oltr_* models)")


@dataclass
class AugConfig(_Checked):
    """Augmentation beyond crop and flip: per-sample policies in the loader, batch mixing on the device."""

    auto_augment: str | None = setting(None, "torchvision auto-augment policy; none: off")
    ra_magnitude: int = setting(9, "RandAugment magnitude (0-30)")
    ra_ops: int = setting(2, "RandAugment operations per image")
    augmix_severity: int = setting(3, "AugMix severity (1-10)")
    random_erase: float = setting(0.0, "probability of erasing a rectangle (with the mean colour)")
    mixup: float = setting(0.0, "mixup alpha; 0: off")
    cutmix: float = setting(0.0, "cutmix alpha; 0: off")
    mixup_prob: float = setting(1.0, "probability a batch is mixed at all")
    mixup_switch_prob: float = setting(0.5, "with mixup and cutmix both on: probability of cutmix")
    mixup_off_epoch: int = setting(0, "epoch (1-based) from which batches are no longer mixed; 0: never")
    aug_repeats: int = setting(0, "repeated augmentation: each image N times per epoch on different ranks; 0, 1: "
                                  "off")


@dataclass
class DistillConfig(_Checked):
    """Knowledge distillation: a frozen teacher, fine-tuned on the same classes, teaches the student.

    The teacher sees the student's augmented (and mixed) batch on the device, with its own normalisation and
    input size (consistent teaching, Beyer et al. 2022)."""

    teacher: str | None = setting(None, "the teacher: a visionzoo checkpoint or run folder, a state dict or "
                                        ".safetensors (with teacher_model), a hub-layout folder, or a model name "
                                        "(with teacher_pretrained); none: no distillation")
    teacher_model: str | None = setting(None, "the teacher's architecture, for a bare state dict or .safetensors")
    teacher_pretrained: bool = setting(False, "the teacher is the hub's ImageNet weights of the model teacher "
                                              "names (students of ImageNet's 1000 classes)")
    teacher_img_size: int | None = setting(None, "the teacher's input size (the student's crop resized on the "
                                                 "device); none: the student's")
    # logit: Hinton et al. 2015; hard: DeiT's hard-label; token: DeiT's distillation token (deit_*_distilled);
    # feature: MSE of a learned projection of the student's pooled features to the teacher's (as timm's)
    distill: str = setting("logit", "distillation loss, with teacher")
    kd_alpha: float = setting(0.5, "weight of the teacher's term: (1 - a) x task + a x KD (logit); task + a x MSE "
                                   "(feature)")
    kd_temperature: float = setting(4.0, "softening temperature of logit and token distillation (with the T^2 "
                                         "factor)")
    kd_token_hard: bool = setting(False, "token distillation against the teacher's top class instead of its "
                                         "softened distribution (DeiT's hard variant)")


@dataclass
class TrainConfig(_Checked):
    """A whole run: the sections, and the run's own settings."""

    model: ModelConfig = setting(help="the network", factory=ModelConfig)
    data: DataConfig = setting(help="the data and its pipeline", factory=DataConfig)
    optim: OptimConfig = setting(help="the optimizer", factory=OptimConfig)
    sched: SchedConfig = setting(help="the learning-rate schedule", factory=SchedConfig)
    lt: LongTailConfig = setting(help="long-tail training", factory=LongTailConfig)
    aug: AugConfig = setting(help="augmentation", factory=AugConfig)
    kd: DistillConfig = setting(help="knowledge distillation", factory=DistillConfig)
    epochs: int = setting(90, "epochs to train")
    # small by default so a first run on a laptop-sized data set takes enough steps to learn; recipes set the
    # seeds' 256
    batch_size: int = setting(64, "global batch size (summed over all processes)")
    iters: int | None = setting(None, "cap on steps per epoch (performance runs); none: the whole epoch")
    # measured for fine-tuning in docs/recipes.md: on 540 images, 10 epochs of 8 steps at batch 64 learn less
    # than the same epochs at batch 16
    min_steps: int = setting(0, "optimizer steps the run aims for: a training set too small for them at "
                                "batch_size gets a smaller batch (halved, down to 16 per process)")
    # the older key `amp` and the value `none` (fp32) are still read
    precision: str = setting("auto", "autocast precision; auto: bf16 on CUDA devices that support it (fp16 on "
                                     "older ones), fp32 on CPUs")
    device: str = setting("auto", "where to train; auto: CUDA when available")
    seed: int = setting(0, "random seed (model init, sampling, augmentation)")
    deterministic: bool = setting(False, "deterministic kernels (slower; bitwise repeatable runs)")
    output: str | None = setting(None, "run folder; none: runs/<model>-<time>")
    resume: str | None = setting(None, "continue from a checkpoint PATH, or auto: OUTPUT/last.pth if there is one")
    eval_every: int = setting(1, "epochs between evaluations; 0: never")
    eval_start: int = setting(1, "first epoch (1-based) that is evaluated")
    target_top1: float | None = setting(None, "stop once validation top-1 (percent) reaches this")
    early_stop: int = setting(0, "stop after this many evaluations without a better validation top-1 (EMA's with "
                                 "ema); 0: never")
    keep_last: int = setting(0, "keep the last K epochs' checkpoints (epoch-N.pth, for `visionzoo average`); 0: only "
                                "last.pth and best.pth")
    tta: str | None = setting(None, "test-time augmentation of the end-of-run evaluation (flip | flip+crops), "
                                    "reported beside the plain top-1; none: off")
    log_interval: int = setting(20, "steps between loss read-outs (the only host syncs)")
    perf_warmup_steps: int = setting(5, "steps per epoch left out of images/s")
    progress: bool = setting(True, "progress bars")
    tensorboard: bool = setting(False, "write TensorBoard event files to the run folder")
    mlflow: bool = setting(False, "log config, metrics and summary to MLflow (MLFLOW_TRACKING_URI, "
                                  "MLFLOW_EXPERIMENT_NAME)")
    wandb: bool = setting(False, "log config, metrics and summary to Weights & Biases (WANDB_PROJECT, WANDB_MODE, "
                                 "WANDB_DIR)")
    recipe: str | None = setting(None, "the recipe the run came from (recorded)")
    mode: str | None = setting(None, "the recipe mode the run came from (recorded)")


SECTIONS = ("model", "data", "optim", "sched", "lt", "aug", "kd")
CHOICES: dict[str, tuple[str, ...]] = {
    "opt": ("sgd", "adamw", "lamb", "lars", "rmsprop"),
    "auto_augment": ("ta_wide", "ra", "augmix", "imagenet"),
    "lr_scale": ("auto", "linear", "sqrt", "none"),
    "head_init": ("zero", "random"),
    "distill": ("logit", "hard", "token", "feature"),
    "tta": ("flip", "flip+crops"),
    "sched": ("linear", "step", "multistep", "cosine", "constant"),
    "precision": ("auto", "fp32", "fp16", "bf16"),
    "device": ("auto", "cpu", "cuda"),
    "interpolation": ("bilinear", "bicubic", "nearest"),
    "sampler": ("instance", "class_balanced", "sqrt", "class_aware"),
    "loss": ("ce", "bce", "balanced_softmax", "asl"),
    "task": ("auto", "single", "multilabel"),
    "batch_size_schedule": ("auto",),
    "train_scope": ("all", "classifier", "fixres"),
    "train_crop": ("random_resized", "fixres"),
    "decode": ("fast", "pil", "device"),
}
# older names of fields, still read from YAML files, checkpoints' saved configs and the command line
KEY_ALIASES = {"amp": "precision"}
# words a numeric field takes besides its numbers (eval_img_size: auto)
KEYWORDS: dict[str, tuple[str, ...]] = {"eval_img_size": ("auto",)}
# ints that only mean something from 1 up: refused as soon as a section is built (validate() checks the rest)
_AT_LEAST_1 = {"epochs", "batch_size", "iters", "log_interval", "eval_start", "step_size", "lr_base_batch",
               "num_classes", "samples_per_class", "teacher_img_size", "accum_steps", "ema_every", "ra_ops",
               "shuffle_buffer"}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_LIST_WORDS = {int: "integers", float: "numbers", str: "strings"}


def check_fields(section: Any) -> None:
    """Check (and normalise: paths to str, ints to float where a float is asked) a section's fields; ConfigError
    naming the field. Run when a section is built; apply_overrides copies without it (its values are coerced)."""
    hints = _hints(section.__class__)
    for f in dataclasses.fields(section):
        tp, value = hints[f.name], getattr(section, f.name)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                raise ConfigError(_wrong_section(f.name, tp, value))
            continue
        setattr(section, f.name, _checked_value(value, tp, f.name))


def _wrong_section(name: str, cls: type, value: Any) -> str:
    fix = (f"to set {name}.{name} use TrainConfig({name}={cls.__name__}({name}=...)) or "
           f"visionzoo.train({name}={value!r})" if isinstance(value, str) and name in _hints(cls)
           else f"use TrainConfig({name}={cls.__name__}(...)) or visionzoo.train(field=value, ...)")
    got = f"{type(value).__name__} {value!r}" if len(repr(value)) <= 60 else f"a {type(value).__name__}"
    article = "an" if cls.__name__[0] in "AEIOU" else "a"
    return f"{name}: expected {article} {cls.__name__}, got {got}; {fix}"


def _checked_value(value: Any, tp: Any, name: str) -> Any:
    if name == "precision":  # one vocabulary with its aliases (none = fp32)
        return parse_precision(value, CHOICES[name], name)
    if value in KEYWORDS.get(name, ()):
        return value
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: may not be None")
    if typing.get_origin(base) is list:
        if isinstance(value, list | tuple):
            (item_tp,) = typing.get_args(base)
            return [_checked_value(v, item_tp, name) for v in value]
        ok = False
    elif base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        value = int(value) if ok else value
    elif base is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        value = os.fspath(value) if isinstance(value, os.PathLike) else value  # a Path for a path field is fine
        ok = isinstance(value, str)
        if ok and name in CHOICES and value not in CHOICES[name]:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(CHOICES[name])}")
    if not ok:
        words = (f"a list of {_LIST_WORDS[typing.get_args(base)[0]]}" if typing.get_origin(base) is list
                 else _TYPE_WORDS[base])
        raise ConfigError(f"{name}: expected {words}{' or None' if optional else ''}, got {type(value).__name__} "
                          f"{value!r}")
    if name in _AT_LEAST_1 and value < 1:
        raise ConfigError(f"{name} = {value!r} is out of range (>= 1)")
    return value


# True while the command line runs a command: messages then name settings as flags (--train-scope), as the user
# typed them; the library's callers (visionzoo.train, a notebook) know them as fields (train_scope)
_FLAG_NAMES: contextvars.ContextVar[bool] = contextvars.ContextVar("visionzoo_flag_names", default=False)


@contextlib.contextmanager
def flag_names() -> Iterator[None]:
    """Within it, config errors name settings by their command-line flags; the CLI runs each command inside."""
    token = _FLAG_NAMES.set(True)
    try:
        yield
    finally:
        _FLAG_NAMES.reset(token)


def spelled(name: str, value: Any = dataclasses.MISSING) -> str:
    """A setting (with a value) as the caller writes it: `--train-scope fixres` on the command line,
    `train_scope='fixres'` in Python."""
    if _FLAG_NAMES.get():
        flag = "--" + name.replace("_", "-")
        return flag if value is dataclasses.MISSING else f"{flag} {value}"
    return name if value is dataclasses.MISSING else f"{name}={value!r}"


def suggest(word: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names closest to a misspelt one, best first: difflib's, and names whose last part the word
    contains or is part of (--lr-scheduler -> --sched), which difflib's ratio alone ranks too low."""
    known = list(known)

    def leaf(name: str) -> str:  # "optim.lr_base" -> "lr_base", "--lr-base" -> "lr-base"
        return name.rsplit(".", 1)[-1].lstrip("-")

    stem = leaf(word)
    contained = {k for k in known if min(len(leaf(k)), len(stem)) >= 4 and (leaf(k) in stem or stem in leaf(k))}
    candidates = contained | set(difflib.get_close_matches(word, known, n=n))
    score = {k: difflib.SequenceMatcher(None, word, k).ratio() + (0.2 if k in contained else 0) for k in candidates}
    return sorted(candidates, key=lambda k: (-score[k], k))[:n]


@functools.cache  # every section built checks its fields against these
def _hints(cls: Any) -> dict[str, Any]:
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
    if isinstance(value, str) and value in KEYWORDS.get(name, ()):
        return value
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
    close = suggest(key, known)
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


def field_help(path: str) -> str:
    """The one-line help of the field at a dotted path ('optim.lr'), as written in its setting()."""
    parts = path.split(".")
    cls: Any = TrainConfig
    for p in parts[:-1]:
        cls = _hints(cls)[p]
    return next(f for f in dataclasses.fields(cls) if f.name == parts[-1]).metadata["help"]


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
    # copies that skip __post_init__: a value set by an earlier layer is checked by validate(), in one place
    cfg = copy.copy(cfg)
    for s in SECTIONS:
        setattr(cfg, s, copy.copy(getattr(cfg, s)))
    for path, value in flatten(overrides, source).items():
        parent, _, name = path.rpartition(".")
        target = getattr_path(cfg, parent) if parent else cfg
        setattr(target, name, coerce(value, field_type(path), f"{source}: {path}"))
    return cfg


def validate(cfg: TrainConfig) -> TrainConfig:
    """Values types alone cannot rule out, and fields that conflict; raises ConfigError naming the field."""
    _check_finite(cfg)
    checks = [
        ("epochs", cfg.epochs >= 1, ">= 1"), ("batch_size", cfg.batch_size >= 1, ">= 1"),
        ("iters", cfg.iters is None or cfg.iters >= 1, ">= 1"), ("log_interval", cfg.log_interval >= 1, ">= 1"),
        ("eval_every", cfg.eval_every >= 0, ">= 0"), ("eval_start", cfg.eval_start >= 1, ">= 1"),
        ("perf_warmup_steps", cfg.perf_warmup_steps >= 0, ">= 0"), ("workers", cfg.data.workers >= 0, ">= 0"),
        ("seed", 0 <= cfg.seed <= MAX_SEED, "0..2**63-1"),  # what torch.manual_seed takes
        ("worker_nice", 0 <= cfg.data.worker_nice <= 19, "0..19"),
        ("step_size", cfg.sched.step_size >= 1, ">= 1"), ("warmup_epochs", cfg.sched.warmup_epochs >= 0, ">= 0"),
        ("warmup_steps", cfg.sched.warmup_steps is None or cfg.sched.warmup_steps >= 0, ">= 0"),
        ("min_steps", cfg.min_steps >= 0, ">= 0"),
        ("early_stop", cfg.early_stop >= 0, ">= 0"), ("keep_last", cfg.keep_last >= 0, ">= 0"),
        ("kd_alpha", 0 <= cfg.kd.kd_alpha <= 1, "0..1"), ("kd_temperature", cfg.kd.kd_temperature > 0, "> 0"),
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
    # the streaming settings, named as the caller wrote them (--shuffle-buffer 0 on the command line)
    streaming = [("shuffle_buffer", cfg.data.shuffle_buffer >= 1, ">= 1"),
                 ("stream_timeout", cfg.data.stream_timeout > 0, "> 0"),
                 ("stream_retries", cfg.data.stream_retries >= 0, ">= 0")]
    if bad := [f"{spelled(n, getattr(cfg.data, n))} is out of range ({allowed})" for n, ok, allowed in streaming
               if not ok]:
        raise ConfigError(", ".join(bad))
    check_data(cfg.data)
    if cfg.model.train_scope != "all" and not (cfg.model.weights or cfg.model.pretrained or cfg.resume):
        scope = spelled("train_scope", cfg.model.train_scope)
        source = "pass --init-from CKPT" if _FLAG_NAMES.get() else "set weights (a checkpoint), pretrained or resume"
        raise ConfigError(f"{scope} fine-tunes a trained model: {source}")
    _check_distill(cfg.kd)
    _check_size_schedule(cfg)
    _check_class_weights(cfg)
    return cfg


def _check_size_schedule(cfg: TrainConfig) -> None:
    """A schedule that does not parse or fit the epochs fails before the run; its settings without one are
    refused rather than ignored."""
    data = cfg.data
    if data.img_size_schedule is None:
        given = [n for n in ("size_start_epochs", "size_end_epochs", "size_step", "batch_size_schedule")
                 if getattr(data, n) is not None]
        if given:
            raise ConfigError(f"{spelled(given[0], getattr(data, given[0]))} needs {spelled('img_size_schedule')}")
        return
    if data.img_size is not None:
        raise ConfigError(f"{spelled('img_size', data.img_size)} and {spelled('img_size_schedule')} both set the "
                          "training size: give one ({spelled('img_size', 'none')} drops a recipe's)")
    parse_size_schedule(data.img_size_schedule, cfg.epochs, data.size_start_epochs, data.size_end_epochs,
                        data.size_step or 32, spelled("img_size_schedule"))


def _check_distill(kd: DistillConfig) -> None:
    """Teacher settings without a teacher would be silently ignored: refused, naming the first."""
    if kd.teacher:
        return
    defaults = DistillConfig()
    given = [f.name for f in dataclasses.fields(kd) if f.name != "teacher" and getattr(kd, f.name) != getattr(
        defaults, f.name)]
    if given:
        raise ConfigError(f"{spelled(given[0], getattr(kd, given[0]))} needs a teacher ({spelled('teacher')})")


def _check_class_weights(cfg: TrainConfig) -> None:
    """--class-weights (issue 28): weighted cross-entropy for single-label data, so not with a loss that corrects
    for the class prior already or a multi-label loss; a FILE must exist (its contents are read at the start)."""
    rule, loss = cfg.lt.class_weights, cfg.lt.loss
    if not rule:
        return
    weights = spelled("class_weights", rule)
    if loss == "balanced_softmax":
        raise ConfigError(f"{weights} and {spelled('loss', loss)} both correct for the class sizes (it would count "
                          "twice): give one")
    if loss in ("bce", "asl") or cfg.data.task == "multilabel":
        what = spelled("loss", loss) if loss in ("bce", "asl") else spelled("task", "multilabel")
        raise ConfigError(f"{weights} weighs single-label cross-entropy, not {what} (multi-label bce weighs "
                          f"classes by {spelled('pos_weight', 'auto')})")
    if rule not in ("balanced", "sqrt") and not Path(rule).is_file():
        raise ConfigError(f"{weights}: not balanced, sqrt or an existing file of one weight per class")


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
        if isinstance(size, int) and not 1 <= size <= MAX_IMG_SIZE:
            bad.append((name, f"1..{MAX_IMG_SIZE} px"))
    if data.crop_pct is not None and not 0 < data.crop_pct <= 1.5:
        bad.append(("crop_pct", "(0, 1.5]"))
    _refuse(bad, TrainConfig(data=data))
    return check_decode(data)


def check_decode(data: DataConfig) -> DataConfig:
    """What decode='device' cannot do, as a ConfigError: the batch decodes after the workers could have
    replaced a bad file or jittered colours, and its centre crop does not pad (crop_pct above 1)."""
    if data.decode == "device":
        clash = [what for what, on in ((spelled("skip_bad_images"), data.skip_bad_images),
                                       (spelled("color_jitter"), data.color_jitter > 0),
                                       (f"{spelled('crop_pct')} above 1", (data.crop_pct or 0) > 1)) if on]
        if clash:
            raise ConfigError(f"data.decode = 'device' does not combine with {', '.join(clash)} "
                              f"(use {spelled('decode', 'fast')})")
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
