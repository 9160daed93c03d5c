"""Turn any ImageFolder into an ImageNet-LT style long-tailed benchmark with an open set.

Like ImageNet-LT (Liu et al. 2019), class sizes follow a Pareto distribution: a seeded draw of
Pareto(alpha) values, sorted and mapped linearly onto [min_per_class, max_per_class], so a few head
classes keep many images and most classes few. `open_classes` classes are held out entirely and
become the open set (label -1). Lists are `relative/path label` lines relative to the source root:

- train.txt: the long-tailed training set
- val.txt:   up to val_per_class left-over training images per known class (balanced)
- test.txt:  the source val/ images of the known classes (balanced, as the source)
- open.txt:  the source val/ images of the held-out classes, label -1
- classes.txt: known class names in label order; make_lt.json: the settings and class sizes
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError, DataError
from ..data.datasets import folder_classes, image_folder


def pareto_sizes(num_classes: int, alpha: float, max_per_class: int, min_per_class: int, seed: int) -> list[int]:
    """Descending class sizes from a seeded Pareto(alpha) draw mapped onto [min, max]."""
    if num_classes == 1:
        return [max_per_class]
    draw = np.sort(np.random.default_rng(seed).pareto(alpha, num_classes))[::-1]
    scaled = (draw - draw.min()) / max(draw.max() - draw.min(), 1e-12)
    return [int(round(min_per_class + s * (max_per_class - min_per_class))) for s in scaled]


def make_lt(
    data: str | Path,
    output: str | Path,
    alpha: float = 6.0,
    open_classes: int = 0,
    max_per_class: int | None = None,
    min_per_class: int = 2,
    val_per_class: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the lists described in the module docstring; returns the summary written to make_lt.json."""
    root = Path(data)
    if not (root / "train").is_dir():
        raise DataError(f"{root}: no train/ folder (make-lt expects {root}/train/<class>/<image>)")
    classes = folder_classes(root / "train")
    if open_classes >= len(classes) - 1:
        raise ConfigError(f"--open-classes {open_classes} leaves fewer than 2 known classes of {len(classes)}")
    rng = np.random.default_rng(seed)
    held_out = sorted(rng.choice(len(classes), open_classes, replace=False).tolist()) if open_classes else []
    known = [c for i, c in enumerate(classes) if i not in held_out]
    open_names = [classes[i] for i in held_out]
    train = image_folder(root / "train", classes)
    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for path, label in train.items:
        by_class[classes[label]].append(path)
    available = min(len(by_class[c]) for c in known)
    # leave val images in every class: the largest LT class keeps at most what that allows
    max_n = min(max_per_class or available, available - min(val_per_class, available // 2))
    if max_n < max(min_per_class, 1):
        raise DataError(f"{root}/train: the smallest known class has {available} images, too few for "
                        f"--min-per-class {min_per_class} plus validation images")
    sizes = pareto_sizes(len(known), alpha, max_n, min(min_per_class, max_n), seed)
    # which class gets which size is random too, so the head is not alphabetical
    order = rng.permutation(len(known)).tolist()
    size_of = {known[i]: sizes[rank] for rank, i in enumerate(order)}

    def rel(p: str) -> str:
        return Path(os.path.relpath(p, root)).as_posix()

    lines: dict[str, list[str]] = {"train": [], "val": [], "test": [], "open": []}
    for label, c in enumerate(known):
        paths = [by_class[c][i] for i in rng.permutation(len(by_class[c]))]
        n = size_of[c]
        lines["train"] += [f"{rel(p)} {label}" for p in sorted(paths[:n])]
        lines["val"] += [f"{rel(p)} {label}" for p in sorted(paths[n : n + val_per_class])]
    if (root / "val").is_dir():
        val = image_folder(root / "val", classes)
        label_of = {c: i for i, c in enumerate(known)}
        for path, label in val.items:
            name = classes[label]
            if name in label_of:
                lines["test"].append(f"{rel(path)} {label_of[name]}")
            else:
                lines["open"].append(f"{rel(path)} -1")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        if rows:
            (out / f"{split}.txt").write_text("\n".join(rows) + "\n")
    (out / "classes.txt").write_text("\n".join(known) + "\n")
    counts = [size_of[c] for c in known]
    summary = {
        "source": str(root.resolve()), "alpha": alpha, "seed": seed, "known_classes": len(known),
        "open_classes": open_names, "train_images": len(lines["train"]), "val_images": len(lines["val"]),
        "test_images": len(lines["test"]), "open_images": len(lines["open"]),
        "max_per_class": max(counts), "min_per_class": min(counts), "imbalance": max(counts) / max(min(counts), 1),
        "class_sizes": dict(zip(known, counts)),
        "usage": f"visionzoo train --data {root} --train-list {out / 'train.txt'} --val-list {out / 'val.txt'}",
    }
    (out / "make_lt.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
