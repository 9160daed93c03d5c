"""Rearrange a flat validation folder (ILSVRC2012_val_*.JPEG + label file) into class folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..core.errors import DataError, plural
from .datasets import folder_classes, read_list_file


def class_names_for(num_labels: int, class_names: str | None = None, train_dir: str | None = None) -> list[str]:
    """Folder name for each label: from a names file (one per line), a train tree, or zero-padded indices.

    Zero-padded names ("0007") sort in numeric order, so an ImageFolder over the result keeps labels.
    """
    if class_names:
        if not Path(class_names).is_file():
            raise DataError(f"class names file not found: {class_names}")
        names = [n.strip().split()[0] for n in Path(class_names).read_text().splitlines() if n.strip()]
    elif train_dir:
        names = folder_classes(train_dir)
    else:
        width = max(4, len(str(num_labels - 1)))
        return [f"{i:0{width}d}" for i in range(num_labels)]
    if len(names) < num_labels:
        raise DataError(f"{class_names or train_dir}: {plural(len(names), 'class name')}, but labels go up to "
                        f"{num_labels - 1}")
    return names


def rearrange_val(
    val_dir: str,
    labels: str,
    output: str,
    class_names: str | None = None,
    train_dir: str | None = None,
    method: str = "copy",
) -> dict[str, int]:
    """Place each `file label` entry of `labels` at output/<class>/<file>; returns counts per class."""
    items = read_list_file(labels)
    bad = [lab for _, lab in items if lab < 0]
    if bad:
        raise DataError(f"{labels}: negative label {bad[0]}")
    names = class_names_for(max(lab for _, lab in items) + 1, class_names, train_dir)
    src_root, out_root = Path(val_dir), Path(output)
    missing = [rel for rel, _ in items if not (src_root / rel).is_file()]
    if missing:
        raise DataError(f"{labels}: {plural(len(missing), 'listed file')} missing under {src_root}, e.g. {missing[0]}")
    counts: dict[str, int] = {}
    # every class gets its folder, empty or not, so an ImageFolder over the output indexes labels
    # the same way even when some label never occurs in this split
    for name in names[: max(lab for _, lab in items) + 1]:
        (out_root / name).mkdir(parents=True, exist_ok=True)
    for rel, lab in items:
        dst = out_root / names[lab] / Path(rel).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        src = src_root / rel
        if method == "copy":
            shutil.copy2(src, dst)
        elif method == "symlink":
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            os.symlink(src.resolve(), dst)
        elif method == "move":
            shutil.move(src, dst)
        else:
            raise ValueError(f"method must be copy, symlink or move, not {method!r}")
        counts[names[lab]] = counts.get(names[lab], 0) + 1
    return counts
