"""Per-class evaluation reports: per-class precision/recall/F1, the confusion matrix, a plain-text table,
and the matrix as CSV and as a heatmap PNG.

Rows of a confusion matrix are the true class, columns the predicted one. Precision, recall and F1 are in
percent, like every accuracy visionzoo reports; a ratio with nothing to divide by (a class never
predicted, or absent from the data) counts as 0.

Counting is torch.bincount over the images' (label, prediction) pairs: per-class metrics need three
vectors of C counts, so the C x C matrix (a million cells for ImageNet) is made only when it is asked for.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.extras import require
from ..core.files import atomic_path, save_figure

# up to this many classes the heatmap writes each cell's count; beyond, the digits would overlap
ANNOTATE_MAX = 30


def _pairs(targets: Any, preds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and predictions as int64 vectors, the images whose target is a class only (open-set -1 left out)."""
    t = torch.as_tensor(targets).to(torch.int64).flatten()
    p = torch.as_tensor(preds).to(torch.int64).flatten()
    if t.shape != p.shape:
        raise ValueError(f"{t.numel()} targets but {p.numel()} predictions")
    known = t >= 0
    return t[known], p[known]


def confusion_matrix(targets: Any, preds: Any, num_classes: int) -> torch.Tensor:
    """[true, pred] counts (int64) over the images whose target is a class (open-set -1 labels are left out)."""
    t, p = _pairs(targets, preds)
    # bincount over the flattened [true, pred] index: one pass, no Python loop
    flat = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat[: num_classes * num_classes].reshape(num_classes, num_classes)


def class_counts(targets: Any, preds: Any, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class: correct (the matrix's diagonal), true images (its row sums) and predictions (its column
    sums), counted without the matrix."""
    t, p = _pairs(targets, preds)

    def count(x: torch.Tensor) -> torch.Tensor:
        return torch.bincount(x, minlength=num_classes)[:num_classes]

    return count(t[t == p]), count(t), count(p)


def per_class_metrics(cm: Any, classes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per class of a confusion matrix: class, support (true images), accuracy (None without images),
    precision, recall and F1 in percent (0 where undefined)."""
    cm = torch.as_tensor(cm)
    return metrics_from_counts(cm.diagonal(), cm.sum(dim=1), cm.sum(dim=0), classes)


def metrics_from_counts(correct: torch.Tensor, support: torch.Tensor, predicted: torch.Tensor,
                        classes: Sequence[str]) -> list[dict[str, Any]]:
    """per_class_metrics' rows from class_counts' vectors."""
    tp, support, predicted = (x.to(torch.float64) for x in (correct, support, predicted))
    # 0/0 is 0, as documented: where() picks the defined ratio, clamp_min keeps the other branch finite
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp_min(1), 0.0)
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp_min(1e-300), 0.0)
    rows = zip(support.tolist(), precision.tolist(), recall.tolist(), f1.tolist())
    return [{"class": str(name), "support": int(n), "accuracy": 100.0 * r if n > 0 else None,
             "precision": 100.0 * p, "recall": 100.0 * r, "f1": 100.0 * f}
            for name, (n, p, r, f) in zip(classes, rows)]


# the per-class table's columns, as the README's eval section lists them; a class's accuracy is its recall (the
# share of its images classified as it), shown under both names, and "-" for a class without images
TABLE_COLUMNS = ("class", "accuracy", "precision", "recall", "f1", "support")


def per_class_table(rows: Sequence[dict[str, Any]]) -> str:
    """rows of per_class_metrics as an aligned plain-text table (class names left, numbers right)."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    body = [(str(r["class"]), pct(r.get("accuracy")), pct(r["precision"]), pct(r["recall"]), pct(r["f1"]),
             str(r["support"])) for r in rows]
    widths = [max(len(row[i]) for row in [TABLE_COLUMNS, *body]) for i in range(len(TABLE_COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    return "\n".join([line(TABLE_COLUMNS)] + [line(r) for r in body])


def write_confusion(cm: Any, classes: Sequence[str], prefix: str | Path) -> list[Path]:
    """PREFIX.csv (first row the predicted class names, first column the true ones) and PREFIX.png (a heatmap);
    both written atomically. cm: a tensor, an array or nested lists. Returns the two paths."""
    cm = torch.as_tensor(cm).to(torch.int64).numpy()
    names = [str(c) for c in classes]
    csv_path, png_path = Path(f"{prefix}.csv"), Path(f"{prefix}.png")
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *names])
        for name, row in zip(names, cm.tolist()):
            w.writerow([name, *row])
    _plot_confusion(cm, names, png_path)
    return [csv_path, png_path]


def _plot_confusion(cm: Any, names: list[str], path: Path) -> None:
    matplotlib = require("matplotlib", "plots", "the confusion matrix plot")
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = len(names)
    side = min(20.0, max(4.5, 0.45 * n + 2.5))  # cells stay legible up to ~40 classes, then the figure caps
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    try:
        image = ax.imshow(cm, cmap="Blues", interpolation="nearest", vmin=0)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, shrink=0.8, label="images")
        bar.locator = MaxNLocator(integer=True)  # counts: no 0.5-image ticks on a small matrix
        bar.update_ticks()
        # tick labels only while they fit; past that the matrix is read from the CSV
        if n <= 60:
            longest = max(map(len, names), default=0)
            # short names fit level; longer ones slant, and past 15 classes stand upright so they never overlap
            rotation = 0 if longest <= 3 else 45 if n <= 15 else 90
            size = 10 if n <= 15 else 8  # cells stay >= 0.3 in (see side): 8 pt fits
            ax.set_xticks(range(n), names, rotation=rotation, fontsize=size, rotation_mode="anchor",
                          ha="center" if rotation == 0 else "right", va="top" if rotation != 90 else "center")
            ax.set_yticks(range(n), names, fontsize=size)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= ANNOTATE_MAX:
            # dark text on light cells, white on dark ones, so every count stays readable
            threshold = cm.max() / 2 if cm.size and cm.max() > 0 else 0.5
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9 if n <= 15 else 7,
                            color="white" if cm[i, j] > threshold else "black")
        ax.set_title(f"confusion matrix ({int(cm.sum())} images)")
        fig.tight_layout()
        save_figure(fig, path)
    finally:
        plt.close(fig)
