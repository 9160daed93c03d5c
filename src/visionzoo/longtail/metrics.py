"""Long-tail metrics: many/medium/few-shot accuracy and the open-set F-measure (Liu et al., CVPR 2019).

Shot groups use the paper's strict thresholds by default: many > 100 training images, few < 20,
medium in between (the original code drifted to >= 100 / <= 20). The F-measure counts every known
sample that is not correctly accepted, rejected ones included, as a false positive (the original
once left rejected samples out) and every accepted open-set sample as a false negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MANY, FEW = 100, 20


def shot_group(train_count: int, many: int = MANY, few: int = FEW) -> str:
    if train_count > many:
        return "many"
    if train_count < few:
        return "few"
    return "medium"


def shot_accuracy(correct: Sequence[int], total: Sequence[int], train_counts: Sequence[int],
                  many: int = MANY, few: int = FEW) -> dict[str, Any]:
    """Mean per-class accuracy (percent) within each shot group; classes without test images are left out."""
    groups: dict[str, list[float]] = {"many": [], "medium": [], "few": []}
    for c, t, n in zip(correct, total, train_counts):
        if t:
            groups[shot_group(n, many, few)].append(100.0 * c / t)
    out: dict[str, Any] = {f"{g}_shot": (float(np.mean(v)) if v else None) for g, v in groups.items()}
    out.update({f"{g}_classes": len(v) for g, v in groups.items()})
    return out


def open_set_f_measure(pred: np.ndarray, confidence: np.ndarray, labels: np.ndarray,
                       threshold: float) -> dict[str, Any]:
    """F-measure with rejection: a sample whose confidence (max softmax) < threshold is predicted -1.

    labels: -1 for open-set samples. TP: known, accepted and correct; FP: known and not (wrong or
    rejected); FN: open-set but accepted.
    """
    final = np.where(confidence < threshold, -1, pred)
    known = labels != -1
    tp = int(np.sum(known & (final == labels)))
    fp = int(np.sum(known & (final != labels)))
    fn = int(np.sum(~known & (final != -1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f_measure": 100.0 * f, "precision": 100.0 * precision, "recall": 100.0 * recall,
            "threshold": threshold, "tp": tp, "fp": fp, "fn": fn,
            "known_rejected": int(np.sum(known & (final == -1))), "open_rejected": int(np.sum(~known & (final == -1)))}


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    return np.bincount(np.asarray([x for x in labels if x >= 0], dtype=np.int64), minlength=num_classes).tolist()
