"""Multi-label training and evaluation: the losses (BCE with per-class positive weights, the asymmetric loss),
the metrics (average precision per class and its macro mean, micro/macro F1 at per-class thresholds) and the
thresholds tuned for F1 on a validation split.

Targets are multi-hot float vectors (data.multilabel); scores are the sigmoid of the logits, each class an
independent yes/no. AP is scikit-learn's `average_precision_score` (the precision at each distinct score,
weighted by the recall gained there; tied scores count together), so figures compare with the literature's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TrainConfig, spelled
from ..core.errors import ConfigError, DataError

DEFAULT_THRESHOLD = 0.5


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """AP of one class: sum over distinct score thresholds (high to low) of precision x recall gained; None for a
    class with no positive (undefined, left out of the mean, as scikit-learn warns and returns 0 where we skip)."""
    n_pos = int(positives.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positives[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of tied scores
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0.0, tp]) / n_pos
    return float((precision * recall_gain).sum())


def f1_scores(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(micro F1, macro F1, per-class F1) of the predictions score >= threshold (per class); a class with neither
    a prediction nor a positive has F1 0 (scikit-learn's zero_division=0)."""
    pred = scores >= thresholds[None, :]
    truth = targets > 0.5
    tp = (pred & truth).sum(0).astype(np.float64)
    fp = (pred & ~truth).sum(0).astype(np.float64)
    fn = (~pred & truth).sum(0).astype(np.float64)
    denom = 2 * tp + fp + fn
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    micro_denom = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / micro_denom) if micro_denom > 0 else 0.0
    return micro, float(per_class.mean()), per_class


def tune_thresholds(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per class, the threshold that maximises the class's F1 on these scores: the midpoint between the lowest
    score kept and the next one down (so it generalises a little better than a score itself); 0.5 for a class
    with no positive."""
    out = np.full(scores.shape[1], DEFAULT_THRESHOLD)
    for c in range(scores.shape[1]):
        y = targets[:, c] > 0.5
        n_pos = int(y.sum())
        if n_pos == 0:
            continue
        order = np.argsort(-scores[:, c], kind="mergesort")
        s, t = scores[order, c], y[order]
        last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
        tp = np.cumsum(t)[last]
        kept = last + 1
        f1 = 2 * tp / (kept + n_pos)
        best = int(np.argmax(f1))
        below = s[last[best] + 1] if last[best] + 1 < len(s) else 0.0
        out[c] = float((s[last[best]] + below) / 2)
    return out


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray, classes: list[str],
                       thresholds: np.ndarray | None = None) -> dict[str, Any]:
    """mAP (macro, over classes with a positive), micro/macro F1 at the thresholds (0.5 each by default), and
    per class: AP, F1, positives, threshold."""
    n_classes = targets.shape[1]
    thr = np.full(n_classes, DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    aps = [average_precision(scores[:, c], targets[:, c] > 0.5) for c in range(n_classes)]
    defined = [a for a in aps if a is not None]
    micro, macro, per_f1 = f1_scores(scores, targets, thr)
    names = list(classes) + [str(i) for i in range(len(classes), n_classes)]
    return {
        "mAP": float(np.mean(defined)) if defined else 0.0,
        "f1_micro": micro,
        "f1_macro": macro,
        "thresholds": "tuned" if thresholds is not None else DEFAULT_THRESHOLD,
        "per_class": [{"class": names[c], "ap": aps[c], "f1": float(per_f1[c]),
                       "positives": int((targets[:, c] > 0.5).sum()), "threshold": float(thr[c])}
                      for c in range(n_classes)],
    }


def precision_at_1(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image, 1 when its top-scoring class is one of its labels (top-1 accuracy's multi-label reading)."""
    return targets.gather(1, logits.argmax(1, keepdim=True)).squeeze(1) > 0.5


def pos_weights(label_sets: list[tuple[int, ...]], num_classes: int) -> torch.Tensor:
    """BCE's pos_weight per class: negatives / positives in the training split (1 where a class has none)."""
    counts = np.zeros(num_classes)
    for ys in label_sets:
        counts[list(ys)] += 1
    n = len(label_sets)
    weights = np.where(counts > 0, (n - counts) / np.maximum(counts, 1), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over images and classes of binary cross-entropy with logits."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=pos_weight)


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                    clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    """Ridnik et al. 2021 (ASL): positives y log(p) (1 - p)^gamma_pos; negatives (1 - y) log(1 - p_m) p_m^gamma_neg
    with p_m = max(p - clip, 0), the easy negatives shifted away; summed over classes, averaged over images (the
    paper sums over the batch too: the mean keeps the lr scale of the other losses)."""
    y = targets.to(torch.float32)
    p = torch.sigmoid(logits.float())
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p
    loss_pos = y * torch.log(p.clamp(min=eps)) * (1 - p).pow(gamma_pos)
    loss_neg = (1 - y) * torch.log((1 - p_neg).clamp(min=eps)) * p_neg.pow(gamma_neg)
    return -(loss_pos + loss_neg).sum(1).mean()


class MultilabelCriterion:
    """The training loss on multi-hot (or mixed) targets: bce (with pos_weight) or asl; label smoothing pulls each
    target toward 1/2 (y (1 - s) + s / 2, the binary form of the single-label rule). Returns (loss, logits) as the
    single-label Criterion does."""

    def __init__(self, kind: str = "bce", label_smoothing: float = 0.0, pos_weight: torch.Tensor | None = None,
                 gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05):
        self.kind, self.label_smoothing, self.pos_weight = kind, label_smoothing, pos_weight
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def __call__(self, output: Any, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = output[0] if isinstance(output, tuple) else output
        y = target.to(torch.float32)
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / 2
        if self.kind == "asl":
            return asymmetric_loss(logits, y, self.gamma_neg, self.gamma_pos, self.clip), logits
        return bce_loss(logits.float(), y, self.pos_weight), logits


def build_multilabel_criterion(cfg: TrainConfig, dataset: Any, num_classes: int,
                               device: torch.device) -> MultilabelCriterion:
    """The multi-label loss a config asks for; the single-label-only settings are refused in one line."""
    lt = cfg.lt
    if lt.loss not in ("ce", "bce", "asl"):
        raise ConfigError(f"{spelled('loss', lt.loss)} is single-label; multi-label data trains with bce (the default) "
                          "or asl")
    for name, default in (("sampler", "instance"), ("class_weights", None)):
        if getattr(lt, name) != default:
            raise ConfigError(f"{spelled(name, getattr(lt, name))} balances single-label classes; multi-label data "
                              f"trains with {spelled('pos_weight', 'auto')} or {spelled('loss', 'asl')}")
    kind = "asl" if lt.loss == "asl" else "bce"
    weight = None
    if lt.pos_weight is not None:
        if lt.pos_weight != "auto":
            raise ConfigError(f"{spelled('pos_weight', lt.pos_weight)}: auto is the one choice")
        if kind != "bce":
            raise ConfigError(f"{spelled('pos_weight')} weighs bce's positives; asl has its own focusing")
        samples = getattr(dataset, "samples", None)
        if samples is None or not samples.items:
            raise DataError(f"{spelled('pos_weight', 'auto')} counts the training split's labels: not streamed data")
        weight = pos_weights(samples.targets(), num_classes).to(device)
    return MultilabelCriterion(kind, cfg.optim.label_smoothing, weight, lt.asl_gamma_neg, lt.asl_gamma_pos,
                               lt.asl_clip)


def check_single_label(cfg: TrainConfig) -> None:
    """The multi-label-only settings refused on single-label data."""
    if cfg.lt.loss == "asl" or cfg.lt.pos_weight is not None:
        what = spelled("loss", "asl") if cfg.lt.loss == "asl" else spelled("pos_weight")
        raise ConfigError(f"{what} is for multi-label data (a CSV list of label sets, or "
                          f"{spelled('task', 'multilabel')})")
