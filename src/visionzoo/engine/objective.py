"""What a run optimises and how its samples are drawn: the long-tail training module.

`Objective` is the one place the trainer asks about long-tail methods and OLTR models: the sampler
(instance, class-balanced, sqrt, class-aware), the loss (cross-entropy with label smoothing, Balanced
Softmax, OLTR's discriminative centroid loss), parameter groups with per-part learning rates, cRT's
classifier reset, and OLTR stage 2's centroid initialisation. The evaluation side of long-tail
recognition (shot groups, open-set F-measure, tau-norm) is the `visionzoo.longtail` feature.

Class weights (--class-weights balanced|sqrt|FILE) weigh each image's cross-entropy by its class: balanced is
scikit-learn's n / (classes x count), sqrt 1 / sqrt(count) scaled to mean 1, FILE one weight per class. A class
with no training image gets weight 0 (it is never a training target; the samplers leave it out the same way), and
the balance is over the classes that have images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LongTailConfig, TrainConfig, spelled
from ..core.distributed import DistInfo, all_reduce_sum
from ..core.errors import ConfigError, DataError, plural
from ..data.datasets import ImageDataset
from ..data.loader import DataBundle, DeviceNormalizer, make_loader
from ..data.samplers import ClassSampler
from ..data.transforms import TRAIN_DECODE, eval_transform
from ..models import model_cfg_of, reset_classifier
from ..models.oltr import DiscCentroidsLoss, OLTRResNet
from .scope import classifier_prefixes

log = logging.getLogger("visionzoo")


def train_labels(dataset) -> list[int]:
    samples = getattr(dataset, "samples", None)
    if samples is None or not samples.items:
        raise DataError("class-aware sampling, balanced losses and class weights need the labels of a random-access "
                        f"training set (not {spelled('dummy')} data or streamed shards)")
    return samples.targets()


def build_sampler(cfg: TrainConfig, dataset, dist: DistInfo) -> ClassSampler | None:
    if cfg.lt.sampler == "instance":
        return None
    return ClassSampler(train_labels(dataset), cfg.lt.sampler, cfg.lt.samples_per_class, cfg.seed, dist.rank,
                        dist.world_size)


@dataclass
class Criterion:
    """CE (or BCE, as timm's "ResNet strikes back") on (optionally prior-adjusted) logits, plus OLTR's centroid
    loss on the model's features.

    Targets are class indices, or soft labels (B, classes) from mixup/cutmix; label smoothing applies to
    either (t * (1 - s) + s / classes, as torch's and timm's smoothing). Balanced Softmax (Ren et al. 2020)
    trains on logits + log(class prior), so at test time the plain logits are already balanced. Returns
    (loss, logits for accuracy).

    class_weight (CE only): image i's loss is weighted by its label's weight, and the batch loss is the weighted
    mean, sum_i w_i * loss_i / sum_i w_i (torch's `F.cross_entropy(weight=...)` for class indices, smoothing
    included). For soft targets t_i, w_i = sum_c w_c t_ic, the weight of the label before smoothing (a mixup of
    a and b: lam * w_a + (1 - lam) * w_b), and loss_i = -sum_c w_c t'_ic log p_ic on the smoothed t'. torch's
    own soft-target weighted CE divides by the batch size instead; here one-hot soft targets give exactly the
    class-index loss, so batches with and without mixup are on one scale. Only the ratios of the weights
    matter.
    """

    label_smoothing: float = 0.0
    log_prior: torch.Tensor | None = None
    centroid_loss: DiscCentroidsLoss | None = None
    centroid_weight: float = 0.0
    model: nn.Module | None = None  # the raw OLTR model (its centroids)
    kind: str = "ce"  # ce | bce
    class_weight: torch.Tensor | None = None  # (classes,), CE only

    def __call__(self, output, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feat = output if isinstance(output, tuple) else (output, None)
        adjusted = logits + self.log_prior if self.log_prior is not None else logits
        weight = self.class_weight
        assert weight is None or self.kind == "ce", "class weights weigh cross-entropy only"
        if self.kind == "ce" and target.ndim == 1:  # class indices: torch's own smoothing
            loss = F.cross_entropy(adjusted if weight is None else adjusted.float(), target, weight=weight,
                                   label_smoothing=self.label_smoothing)
        else:
            soft = target if target.ndim == 2 else F.one_hot(target, logits.shape[1]).to(logits.dtype)
            label_weight = (soft.float() * weight).sum() if weight is not None else None  # before smoothing
            if self.label_smoothing:
                soft = soft * (1 - self.label_smoothing) + self.label_smoothing / logits.shape[1]
            if self.kind == "bce":
                loss = F.binary_cross_entropy_with_logits(adjusted, soft.to(adjusted.dtype))
            elif label_weight is None:
                loss = F.cross_entropy(adjusted, soft.to(adjusted.dtype))
            else:
                loss = F.cross_entropy(adjusted.float(), soft.float(), weight=weight, reduction="sum") / label_weight
        if self.centroid_loss is not None and feat is not None and self.centroid_weight > 0:
            assert self.model is not None, "the centroid loss comes with its OLTR model"
            loss = loss + self.centroid_loss(feat, target, self.model.centroids, self.centroid_weight)
        return loss, logits


CLASS_WEIGHT_RULES = ("balanced", "sqrt")


def class_weights(labels: Sequence[int], num_classes: int, rule: str) -> torch.Tensor:
    """Per-class weights (float64) from the training labels: balanced = n / (C x count_c), scikit-learn's
    `compute_class_weight("balanced")`; sqrt = 1 / sqrt(count_c), scaled to mean 1. C, n and the mean are over
    the classes that have images; a class with none gets 0."""
    if rule not in CLASS_WEIGHT_RULES:
        raise ValueError(f"unknown class-weight rule {rule!r}; choose from {', '.join(CLASS_WEIGHT_RULES)}")
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).double()
    present = counts > 0
    weights = torch.zeros(num_classes, dtype=torch.float64)
    if rule == "balanced":
        weights[present] = counts.sum() / (present.sum() * counts[present])
    else:
        inv = counts[present].rsqrt()
        weights[present] = inv / inv.mean()
    return weights


def read_class_weights(path: str | Path, num_classes: int) -> torch.Tensor:
    """A weights file: one positive number per line, in class order; blank lines and # comments are skipped.
    Errors are one line naming the file (and the line)."""
    flag = spelled("class_weights", str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{flag}: no such file (give balanced, sqrt or a file of one weight per class)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{flag}: cannot read it ({e.__class__.__name__})") from None
    weights: list[float] = []
    for number, line in enumerate(text.splitlines(), 1):
        field = line.split("#", 1)[0].strip()
        if not field:
            continue
        where = f"{path}:{number}"
        try:
            value = float(field)
        except ValueError:
            raise ConfigError(f"{where}: {field[:40]!r} is not a number (class weights: one number per line, in "
                              "class order)") from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{where}: class weight {field[:40]} must be a positive number")
        if len(weights) == num_classes:
            raise ConfigError(f"{where}: more weights than the {plural(num_classes, 'class', 'classes')} "
                              "(one weight per class, in class order)")
        weights.append(value)
    if len(weights) != num_classes:
        raise ConfigError(f"{path}: {plural(len(weights), 'weight')} for {plural(num_classes, 'class', 'classes')} "
                          "(one weight per class, in class order)")
    return torch.tensor(weights, dtype=torch.float64)


def build_class_weights(rule: str, labels: Sequence[int], num_classes: int,
                        classes: Sequence[str] | None = None) -> torch.Tensor:
    """--class-weights RULE|FILE as a float64 tensor, said in the log: the rule, min and max (with their classes)
    and the classes without training images (weight 0)."""
    weights = (class_weights(labels, num_classes, rule) if rule in CLASS_WEIGHT_RULES
               else read_class_weights(rule, num_classes))
    names = list(classes) if classes is not None and len(classes) == num_classes else [str(c) for c in
                                                                                       range(num_classes)]
    used = weights > 0
    lo = int(torch.where(used, weights, math.inf).argmin())
    hi = int(weights.argmax())
    empty = [names[c] for c in torch.nonzero(~used).flatten().tolist()]
    note = ""
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        note = f"; weight 0 for {plural(len(empty), 'class', 'classes')} without training images ({shown})"
    log.info("class weights %s: min %.4g (class %s), max %.4g (class %s), max/min %.3g%s",
             rule if rule in CLASS_WEIGHT_RULES else f"from {rule}", weights[lo].item(), names[lo],
             weights[hi].item(), names[hi], (weights[hi] / weights[lo]).item(), note)
    return weights


def log_prior(labels: list[int], num_classes: int, device: torch.device) -> torch.Tensor:
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).double().clamp_min(1)
    return (counts / counts.sum()).log().float().to(device)


def build_criterion(cfg: TrainConfig, raw_model: nn.Module, dataset, num_classes: int,
                    device: torch.device) -> Criterion:
    prior = log_prior(train_labels(dataset), num_classes, device) if cfg.lt.loss == "balanced_softmax" else None
    oltr = isinstance(raw_model, OLTRResNet)
    if oltr and (cfg.aug.mixup > 0 or cfg.aug.cutmix > 0):
        raise ConfigError(f"{spelled('mixup')}/{spelled('cutmix')} mix the labels OLTR's centroid loss needs whole: "
                          "not with oltr_* models")
    weight = None
    if cfg.lt.class_weights:  # the combinations it does not go with are refused by config.validate
        samples = getattr(dataset, "samples", None)
        weight = build_class_weights(cfg.lt.class_weights, train_labels(dataset), num_classes,
                                     getattr(samples, "classes", None)).float().to(device)
    return Criterion(cfg.optim.label_smoothing, prior, DiscCentroidsLoss() if oltr else None,
                     cfg.lt.centroid_weight, raw_model if oltr else None, "bce" if cfg.lt.loss == "bce" else "ce",
                     weight)


def param_groups(model: nn.Module, lt: LongTailConfig, lr: float, weight_decay: float,
                 no_decay_norm_bias: bool = False) -> list[dict]:
    """Backbone at lr, classifier at lr * head_lr_factor, OLTR centroids at lr * centroid_lr_factor.

    With no_decay_norm_bias, 1-d parameters (norm scales/shifts, biases) of each part get no decay.
    """
    heads = classifier_prefixes(model)
    factor = {"backbone": 1.0, "head": lt.head_lr_factor, "centroids": lt.centroid_lr_factor}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = "centroids" if name == "centroids" else "head" if name.startswith(heads) else "backbone"
            groups.setdefault((part, no_decay_norm_bias and p.ndim <= 1), []).append(p)
    return [{"params": ps, "lr": lr * factor[part], "weight_decay": 0.0 if no_decay else weight_decay}
            for (part, no_decay), ps in groups.items()]


@torch.no_grad()
def init_centroids(model: OLTRResNet, dataset: ImageDataset, img_size: int, crop_pct: float, interpolation: str,
                   normalizer: DeviceNormalizer, batch_size: int, workers: int, dist: DistInfo,
                   decode: str | None = None) -> None:
    """Centroids = per-class mean feature over the training set (evaluation framing, decoded as the training
    crops are), all ranks summed."""
    tf = eval_transform(img_size, crop_pct, interpolation, decode or TRAIN_DECODE)
    plain = ImageDataset(dataset.samples, tf, dataset.skip_bad)
    loader = make_loader(plain, batch_size, workers, False, 0, dist.rank, dist.world_size)
    n_cls, dim = model.centroids.shape
    sums = torch.zeros(n_cls, dim, device=normalizer.device, dtype=torch.float64)
    counts = torch.zeros(n_cls, device=normalizer.device, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for images, target, _ in loader:
        if len(target):
            target = target.to(normalizer.device)
            sums.index_add_(0, target, model.features(normalizer(images)).double())
            counts.index_add_(0, target, torch.ones_like(target, dtype=torch.float64))
    model.train(was_training)
    all_reduce_sum(sums)
    all_reduce_sum(counts)
    model.centroids.copy_((sums / counts.clamp_min(1)[:, None]).float())
    log.info("OLTR centroids initialised from %s", plural(int(counts.sum().item()), "training image"))


@dataclass
class Objective:
    """The long-tail side of one training run, for a built (unwrapped) model; see the module doc."""

    cfg: TrainConfig
    model: nn.Module
    num_classes: int

    @property
    def oltr(self) -> bool:
        return isinstance(self.model, OLTRResNet)

    @classmethod
    def for_model(cls, cfg: TrainConfig, model: nn.Module, num_classes: int) -> Objective:
        """Check the long-tail flags against the model, and apply --reset-classifier (cRT)."""
        obj = cls(cfg, model, num_classes)
        defaults = LongTailConfig()
        if not obj.oltr and (cfg.lt.centroid_weight, cfg.lt.centroid_lr_factor) != (
                defaults.centroid_weight, defaults.centroid_lr_factor):
            raise ConfigError(f"{spelled('centroid_weight')} / {spelled('centroid_lr_factor')} apply to OLTR models "
                              "(oltr_*) only")
        if cfg.lt.reset_classifier:
            if not getattr(model, "resettable_classifier", True):
                raise ConfigError(f"{spelled('reset_classifier')} is for plain models (cRT); OLTR's classifier starts "
                                  "fresh anyway")
            reset_classifier(model, model_cfg_of(model), num_classes)
        return obj

    def sampler(self, dataset, dist: DistInfo) -> ClassSampler | None:
        return build_sampler(self.cfg, dataset, dist)

    def criterion(self, dataset, device: torch.device) -> Criterion:
        return build_criterion(self.cfg, self.model, dataset, self.num_classes, device)

    def param_groups(self, lr: float) -> list[dict] | None:
        """Groups with their own lr (classifier, OLTR centroids), or None for the optimizer's default groups."""
        if self.cfg.lt.head_lr_factor == 1 and not self.oltr:
            return None
        return param_groups(self.model, self.cfg.lt, lr, self.cfg.optim.weight_decay,
                            self.cfg.optim.no_decay_norm_bias)

    def before_training(self, data: DataBundle, normalizer: DeviceNormalizer, batch_size: int,
                        dist: DistInfo) -> None:
        """Set-up a fresh (not resumed) run needs: OLTR's centroids from the class means."""
        if self.oltr:
            assert isinstance(self.model, OLTRResNet) and isinstance(data.train, ImageDataset)
            init_centroids(self.model, data.train, data.img_size, data.crop_pct, data.interpolation, normalizer,
                           batch_size, self.cfg.data.workers, dist, self.cfg.data.decode)
