"""Data sets as (path, label) sample lists behind one Dataset class.

Sources: ImageFolder trees, list files of `relative/path label` lines, flat folders read through
such a list (ILSVRC2012 validation + label file), and synthetic data; packs (packed.py) and Hugging Face
datasets (hf.py) are Samples whose `store` holds the encoded images. Labels are never inferred
from position alone: a validation split is mapped through the training split's class names, and a
class folder that is not among them is an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..core.errors import BadImageError, DataError, SkippedImages, plural
from .images import EncodedFile, decode_rgb, open_image, read_file
from .multilabel import csv_classes, is_csv_list, label_sets, multi_hot, read_classes_file, read_csv_rows

log = logging.getLogger("visionzoo")


@dataclass
class Samples:
    # (file path, or a packed entry's name; label): a class index, or with multilabel a sorted tuple of them
    items: list[tuple[str, Any]]
    classes: list[str]  # index -> class name
    store: Any = None  # a packed.PackedStore holding the encoded images (`visionzoo pack`)
    multilabel: bool = False

    def subset(self, indices: Sequence[int]) -> Samples:
        """These samples at indices, in that order (a packed store follows along)."""
        store = self.store.subset(indices) if self.store is not None else None
        return Samples([self.items[i] for i in indices], self.classes, store, self.multilabel)

    def as_multilabel(self) -> Samples:
        """Single-label samples as multi-label ones of one class each (--task multilabel on class folders)."""
        if self.multilabel:
            return self
        return Samples([(p, (y,) if y >= 0 else ()) for p, y in self.items], self.classes, self.store, True)

    def open(self, index: int):
        """The image's header only (pixels are decoded later, at the scale the crop needs)."""
        return self.store.open(index) if self.store is not None else open_image(self.items[index][0])

    def encoded(self, index: int) -> EncodedFile:
        """The image's bytes, unparsed (for the fused transforms)."""
        return self.store.encoded(index) if self.store is not None else read_file(self.items[index][0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def targets(self) -> list[Any]:
        """Each image's label: a class index, or (multilabel) a tuple of them."""
        return [label for _, label in self.items]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def folder_classes(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    return classes


def image_folder(root: str | Path, classes: Sequence[str] | None = None) -> Samples:
    """Samples of a `root/<class>/<image>` tree; classes fixes the name -> index mapping."""
    root = Path(root)
    found = folder_classes(root)
    if classes is None:
        classes = found
    index = {c: i for i, c in enumerate(classes)}
    extra = [c for c in found if c not in index]
    if extra:
        raise DataError(
            f"{root}: class folders {extra[:5]} are not among the "
            f"{plural(len(classes), 'training class', 'training classes')}; "
            "labels would shift. Check the split or pass matching data."
        )
    items: list[tuple[str, int]] = []
    for cls in found:
        before = len(items)
        for dirpath, _, files in sorted(os.walk(root / cls, followlinks=True)):
            for f in sorted(files):
                if _is_image(f):
                    items.append((os.path.join(dirpath, f), index[cls]))
        if len(items) == before:  # the class keeps its label; it just has nothing to learn or test from here
            log.warning("%s: class folder %s has no images (extensions %s)", root, cls, ", ".join(IMG_EXTENSIONS))
    if not items:
        raise DataError(f"{root}: no images with extensions {IMG_EXTENSIONS}")
    return Samples(items, list(classes))


def remap_labels(labels: list[int], own: Sequence[str], classes: Sequence[str] | None, source: object) -> list[int]:
    """Labels of a store with its own class list (a pack, a Hugging Face dataset) in the order of `classes` (a
    model's or the training split's), matched by name; -1 (an open-set image, no class) stays -1. A class the
    store has and `classes` lacks is an error naming source."""
    if classes is None or list(classes) == list(own):
        return labels
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({own[label] for label in set(labels) if label >= 0} - set(index))
    if unknown:
        raise DataError(f"{source}: classes {unknown[:5]} are not among the "
                        f"{plural(len(classes), 'given class', 'given classes')}")
    return [index[own[label]] if label >= 0 else label for label in labels]


def check_labels(labels: Sequence[int], num_classes: int, where: Callable[[int], str], open_ok: bool) -> None:
    """Every label a class index 0..num_classes-1, or, with open_ok (never the training split), -1: no class, an
    open-set or unlabelled image, which evaluation counts in no accuracy. The first bad one is a DataError named
    by where(its position) (a file's line, an index entry, a dataset row): a bad label would crash the loss."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    bad = np.flatnonzero((y >= num_classes) | (y < (-1 if open_ok else 0)))
    if not len(bad):
        return
    i = int(bad[0])
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    if y[i] == -1:
        raise DataError(f"{where(i)}: label -1 (no class: an open-set or unlabelled image){more} where every "
                        f"image needs a class 0..{num_classes - 1} (the training split always does)")
    raise DataError(f"{where(i)}: label {int(y[i])} outside 0..{num_classes - 1} "
                    f"({plural(num_classes, 'class', 'classes')}){more}")


def read_list_file(path: str | Path) -> list[tuple[str, int]]:
    """Parse `relative/path label` lines (spaces in paths allowed: the label is the last field)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)  # the label is the last field; paths may hold spaces
        rel, label = (parts[0].strip(), parts[1]) if len(parts) == 2 else ("", line)
        try:
            value = int(label)
        except ValueError:
            value = None
        if not rel or value is None:
            raise DataError(f"{path}:{n}: expected 'relative/path label', got {line!r}")
        items.append((rel, value))
    if not items:
        raise DataError(f"{path}: empty list file")
    return items


def _label_lines(path: Path) -> list[int]:
    """The line number of each entry read_list_file returns (for messages only: read again when one is needed)."""
    return [n for n, line in enumerate(path.read_text().splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")]


def _find_root(items: Sequence[tuple[str, Any]], candidates: list[Path], list_path: Path) -> Path:
    """The first candidate folder under which the list's first entry exists."""
    first = items[0][0]
    for root in candidates:
        if (root / first).exists():
            return root
    tried = ", ".join(str(c / first) for c in candidates)
    raise DataError(f"{list_path}: first entry {first!r} not found (tried {tried}); set --train-root/--val-root")


def list_samples(
    list_path: str | Path,
    root: str | Path | None,
    split: str,
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
    allow_open: bool = False,
    task: str = "auto",
    classes_file: str | Path | None = None,
) -> Samples:
    """Samples from a list file. Paths resolve against root, or root/<split> if that is where they are.

    Labels are used exactly as written. Negative labels (open-set samples) are only accepted with
    allow_open; labels >= num_classes are an error naming the line's file. A `.csv` list is the multi-label
    layout (data.multilabel; single-label with task single).
    """
    list_path = Path(list_path)
    if is_csv_list(list_path):
        return csv_samples(list_path, root, split, classes, task, classes_file)
    items = read_list_file(list_path)
    base = Path(root) if root else list_path.parent
    root_dir = _find_root(items, [base, base / split, list_path.parent], list_path)
    labels = [label for _, label in items]
    names_file = list_path.parent / "classes.txt"  # written by `visionzoo make-lt`: names in label order
    if classes is None and names_file.is_file():
        classes = [c.strip() for c in names_file.read_text().splitlines() if c.strip()]
    n = num_classes or (len(classes) if classes else max(labels) + 1)
    check_labels(labels, n, lambda i: f"{list_path}:{_label_lines(list_path)[i]}", open_ok=allow_open)
    names = list(classes)[:n] if classes else [str(i) for i in range(n)]
    return Samples([(str(root_dir / rel), label) for rel, label in items], names)


def csv_samples(list_path: Path, root: str | Path | None, split: str, classes: Sequence[str] | None, task: str,
                classes_file: str | Path | None) -> Samples:
    """Samples of a multi-label CSV list (data.multilabel): label sets, or with task single exactly one class per
    row. classes (the training split's, for validation) > classes_file > the names the list uses, sorted."""
    rows, columns = read_csv_rows(list_path)
    if classes is None:
        classes = read_classes_file(classes_file) if classes_file else csv_classes(rows, columns)
    single = task == "single"
    sets = label_sets(list_path, rows, classes, allow_empty=not single)
    if single:
        line = next((n for (n, _, names) in rows if len(names) > 1), None)
        if line is not None:
            raise DataError(f"{list_path}:{line}: several labels where every image needs exactly one class "
                            "(--task single)")
    base = Path(root) if root else list_path.parent
    root_dir = _find_root(sets, [base, base / split, list_path.parent], list_path)
    items: list[tuple[str, Any]] = [(str(root_dir / rel), ys[0] if single else ys) for rel, ys in sets]
    return Samples(items, list(classes), multilabel=not single)


class ImageDataset(Dataset):
    """Decodes samples and applies a transform to uint8 CHW tensors.

    Indices may come as (index, seed) pairs from `SeededSampler`: the augmentation then draws from
    a generator seeded by that pair, so results do not depend on worker count or on resuming.
    With skip_bad, an undecodable image yields None (dropped and counted by the collate function).
    With replace_bad as well (training), the next decodable sample stands in and the item is
    (image, label, 1), the 1 counting one skipped sample (a SkippedImages: an int carrying its path): batches keep
    their size, so DDP ranks stay in step and BatchNorm never sees a batch of one.
    """

    def __init__(self, samples: Samples, transform: Callable, skip_bad: bool = False, replace_bad: bool = False):
        self.samples = samples
        self.transform = transform
        self.skip_bad = skip_bad
        self.replace_bad = replace_bad

    def __len__(self) -> int:
        return len(self.samples.items)

    def __getitem__(self, index):
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        path, label = self.samples.items[index]
        replaced = 0
        while True:
            try:
                out = self._decode_and_transform((index + replaced) % len(self), seed)
                break
            except BadImageError:
                if not self.skip_bad:
                    raise
                if not self.replace_bad:
                    return None
                replaced += 1
                if replaced >= len(self):
                    raise BadImageError(f"no decodable image in the data set (last tried {path})") from None
                path, label = self.samples.items[(index + replaced) % len(self)]
        if self.samples.multilabel:
            label = multi_hot(label, self.samples.num_classes)
        # this index's own image is the one skipped (the others tried count when their own index comes up)
        return (out, label, SkippedImages(1, [str(self.samples.items[index][0])])) if replaced else (out, label)

    def _decode_and_transform(self, index: int, seed: int | None):
        if getattr(self.transform, "takes_encoded_file", False):
            return seeded_transform(self.transform, self.samples.encoded(index), seed)
        return seeded_transform(self.transform, self.samples.open(index), seed)


def seeded_transform(transform: Callable, image: EncodedFile | Image.Image, seed: int | None):
    """transform(image) with the CPU generator seeded by seed (and restored after). Fused transforms
    (transforms.Fused) take the file's bytes and decode at the scale they need; the others get RGB pixels."""
    fused = getattr(transform, "takes_encoded_file", False)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            # the CPU generator only: torch.manual_seed also queues lazy seeding of every accelerator
            # backend, recording a stack trace each time (~0.5 ms a sample)
            torch.default_generator.manual_seed(seed)
        if fused:
            return transform(image)
        return transform(decode_rgb(image.open() if isinstance(image, EncodedFile) else image, turbo=False))


class DummyDataset(Dataset):
    """Synthetic uint8 images for performance runs: cheap to produce, fixed per index."""

    def __init__(self, size: int, num_classes: int, img_size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.bank = torch.randint(0, 256, (8, 3, img_size, img_size), dtype=torch.uint8, generator=g)
        self.size, self.num_classes = size, num_classes
        self.samples = Samples([], [str(i) for i in range(num_classes)])

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        if isinstance(index, tuple):
            index = index[0]
        return self.bank[index % len(self.bank)], index % self.num_classes
