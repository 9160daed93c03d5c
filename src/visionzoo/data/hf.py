"""Hugging Face datasets as --data: a `DatasetDict.save_to_disk` folder, a folder of parquet files, or `hf:NAME`.

The image column is read undecoded (`datasets.Image(decode=False)`): rows carry the encoded bytes, which go
to the transforms as an `EncodedFile` exactly as a file's or a pack entry's would, so the fused JPEG decoder,
per-sample seeding and --skip-bad-images behave as for every other source. Class names come from the label
column's `ClassLabel` feature.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import spelled
from ..core.errors import ConfigError, DataError
from ..core.extras import require
from .datasets import Samples, check_labels, remap_labels
from .images import EncodedFile, read_file

log = logging.getLogger(__name__)

PREFIX = "hf:"
# the validation split's names, in order of preference (HF's own convention first)
VAL_SPLITS = ("validation", "val")
# what a dataset published with train and test only (many on the hub) validates on, said in the log
TEST_SPLIT = "test"
# a hub id: NAME or OWNER/NAME of letters, digits, '-', '_' and '.' (no '..': never a path out of the cache)
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def _parquet_files(root: Path, extra: str | None = None) -> dict[str, list[str]]:
    """split -> parquet files: ROOT/<split>-*.parquet, ROOT/<split>.parquet, ROOT/<split>/*.parquet, or the
    hub's ROOT/data/<split>-*.parquet layout; for train, validation, val, test and the split extra names."""
    found: dict[str, list[str]] = {}
    for split in dict.fromkeys(("train", *VAL_SPLITS, TEST_SPLIT, *([extra] if extra else []))):
        for base in (root, root / "data"):
            files = sorted({*base.glob(f"{split}-*.parquet"), *base.glob(f"{split}.parquet"),
                            *base.glob(f"{split}/*.parquet")})
            if files:
                found[split] = [str(f) for f in files]
                break
    return found


def is_hf(data: str | None) -> bool:
    """Whether --data names a Hugging Face dataset (checked without importing datasets)."""
    if not data:
        return False
    if data.startswith(PREFIX):
        return True
    root = Path(data)
    return root.is_dir() and ((root / "dataset_dict.json").is_file() or bool(_parquet_files(root)))


def _hub_id(data: str) -> str:
    name = data[len(PREFIX):]
    if not _HUB_ID.fullmatch(name) or ".." in name.split("/") or name.startswith("."):
        raise ConfigError(f"{spelled('data', data)}: {PREFIX}NAME takes a Hugging Face hub id (NAME or OWNER/NAME), "
                          "e.g. hf:cifar10; a dataset on disk is given by its folder")
    return name


@functools.lru_cache(maxsize=4)  # train and val come from one load (parquet conversion, hub resolution)
def _load(data: str, val_split: str | None = None) -> Any:
    name = _hub_id(data) if data.startswith(PREFIX) else None
    datasets = require("datasets", "hf", f"--data {data} (a Hugging Face dataset)")
    try:
        if name is not None:
            return datasets.load_dataset(name)  # the hub or a local loading script: needs network
        root = Path(data)
        if (root / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(root))
        return datasets.load_dataset("parquet", data_files=_parquet_files(root, val_split))
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - the hub, fsspec, arrow and datasets each raise their own kinds
        raise DataError(f"{data}: {_unreadable(e, name)}") from None


def _unreadable(e: BaseException, hub_name: str | None) -> str:
    """One line for a dataset that could not be loaded: a truncated parquet/arrow file, a save_to_disk folder
    missing its state.json, a hub name that cannot be reached."""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    if hub_name is not None:
        return (f"cannot load {hub_name!r} from the Hugging Face hub ({type(e).__name__}: {first}); without "
                "network, give a save_to_disk or parquet folder")
    return f"not a readable Hugging Face dataset ({type(e).__name__}: {first})"


def _split(dd: Any, data: str, split: str, val_split: str | None = None) -> Any:
    """The train split, or the validation one: val_split when named, else validation or val, else test."""
    names = ("train",) if split == "train" else (val_split,) if val_split else VAL_SPLITS
    for name in names:
        if name in dd:
            return dd[name]
    there = ", ".join(dd) or "none"
    if split != "train" and not val_split and TEST_SPLIT in dd:
        log.info("%s has no validation split (it has %s): validating on %s (%s chooses another)", data, there,
                 TEST_SPLIT, spelled("val_split"))
        return dd[TEST_SPLIT]
    if val_split and split != "train":
        raise DataError(f"{data}: no {val_split!r} split for {spelled('val_split')} (it has {there})")
    hint = f"; name the split to validate on with {spelled('val_split')}" if split != "train" and len(dd) else ""
    raise DataError(f"{data}: no {' or '.join(names)} split (it has {there}){hint}")


def _column(ds: Any, data: str, given: str | None, flag: str, kind: Callable[[Any], bool], what: str) -> str:
    """The named column, or the first one whose feature kind accepts."""
    columns = list(ds.features)
    if given is not None:
        if given not in ds.features:
            raise DataError(f"{data}: no column {given!r} for {flag} (columns: {', '.join(columns)})")
        return given
    for name, feature in ds.features.items():
        if kind(feature):
            return name
    raise DataError(f"{data}: no {what} column; name one with {flag} (columns: {', '.join(columns)})")


class HFStore:
    """One split's undecoded image column; the `store` of its Samples (like packed.PackedStore).

    Picklable: a dataset loaded from disk or the cache pickles as a reference to its memory-mapped arrow
    files, so loader workers share them."""

    def __init__(self, ds: Any, column: str, source: str):
        self.ds, self.column, self.source = ds, column, source

    def subset(self, indices: Sequence[int]) -> HFStore:
        return HFStore(self.ds.select(list(indices)), self.column, self.source)

    def __len__(self) -> int:
        return len(self.ds)

    def encoded(self, i: int) -> EncodedFile:
        cell = self.ds[int(i)][self.column]
        path = cell.get("path")
        if cell.get("bytes") is None:  # stored as a path only (e.g. a dataset built from local files)
            if not path:
                return EncodedFile(b"", f"{self.source}[{i}]")  # neither bytes nor path: a bad image
            return read_file(path)
        return EncodedFile(cell["bytes"], f"{self.source}[{i}]" + (f" ({path})" if path else ""))

    def open(self, i: int):
        """The image's header only, like images.open_image; errors name the row."""
        return self.encoded(i).open()


def hf_samples(data: str, split: str, classes: Sequence[str] | None = None, image_column: str | None = None,
               label_column: str | None = None, val_split: str | None = None, task: str = "auto") -> Samples:
    """Samples of one split ('train' or 'val', which val_split names); labels are remapped by name when classes
    (e.g. a model's) are given. A column of label lists (`Sequence(ClassLabel)`) is multi-label data, or with
    task single one class per row."""
    datasets = require("datasets", "hf", f"--data {data} (a Hugging Face dataset)")
    ds = _split(_load(data, val_split), data, split, val_split)
    try:
        return _samples(datasets, ds, data, split, classes, image_column, label_column, task)
    except (OSError, ValueError) as e:  # an arrow file that maps but is damaged further on (pyarrow's errors)
        if isinstance(e, DataError):
            raise
        raise DataError(f"{data}: {_unreadable(e, None)}") from None


def _label_list(datasets: Any, feature: Any) -> Any:
    """The inner feature of a label-list column (datasets' List / Sequence of a ClassLabel or integers), else None."""
    inner = getattr(feature, "feature", None) if type(feature).__name__ in ("List", "Sequence", "LargeList") else None
    if isinstance(inner, datasets.ClassLabel) or (isinstance(inner, datasets.Value) and _is_int(inner)):
        return inner
    return None


def _is_int(feature: Any) -> bool:
    return str(getattr(feature, "dtype", "")).startswith(("int", "uint"))


def _class_names(datasets: Any, feature: Any, labels: Sequence[int], data: str, column: str) -> list[str]:
    """A ClassLabel's names; for plain integers the numbers are the names."""
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(feature, datasets.Value) and _is_int(feature):
        return [str(i) for i in range(max(labels, default=-1) + 1)]
    raise DataError(f"{data}: label column {column!r} is {feature}, not a ClassLabel, integer or list-of-labels column")


def _samples(datasets: Any, ds: Any, data: str, split: str, classes: Sequence[str] | None, image_column: str | None,
             label_column: str | None, task: str = "auto") -> Samples:
    img_col = _column(ds, data, image_column, "--image-column", lambda f: isinstance(f, datasets.Image), "Image")
    lab_col = _column(ds, data, label_column, "--label-column",
                      lambda f: isinstance(f, datasets.ClassLabel) or _label_list(datasets, f) is not None,
                      "ClassLabel")  # or a list of them: said in docs/multilabel.md
    if not isinstance(ds.features[img_col], datasets.Image):
        raise DataError(f"{data}: image column {img_col!r} is {ds.features[img_col]}, not an Image feature")
    source = f"{data}[{ds.split or split}]"
    inner = _label_list(datasets, ds.features[lab_col])
    if inner is not None:
        own, items = _label_set_items(datasets, inner, list(ds[lab_col]), source, lab_col, classes, task)
    else:
        labels = list(ds[lab_col])
        own = _class_names(datasets, ds.features[lab_col], labels, data, lab_col)
        # -1 is HF's "no label" (ClassLabel): allowed where evaluation can leave it out, never for training
        check_labels(labels, len(own), lambda i: f"{source} row {i} (column {lab_col!r})", open_ok=split != "train")
        labels = remap_labels(labels, own, classes, data)
        items = [(f"{source}[{i}]", int(label)) for i, label in enumerate(labels)]
    # only the image column, undecoded: a row read is then one bytes cell, and the transforms decode it
    images = ds.select_columns([img_col]).cast_column(img_col, datasets.Image(decode=False))
    multilabel = inner is not None and task != "single"
    return Samples(items, list(classes or own), store=HFStore(images, img_col, source), multilabel=multilabel)


def _label_set_items(datasets: Any, inner: Any, rows: list[list[int]], source: str, column: str,
                     classes: Sequence[str] | None, task: str) -> tuple[list[str], list[tuple[str, Any]]]:
    """(the dataset's class names, items) of a label-list column: sorted tuples of class indices in the order of
    classes (when given), or with task single each row's one class. An empty list is an image of none of the
    classes (a true negative everywhere), refused with task single."""
    own = _class_names(datasets, inner, [y for row in rows for y in row], source, column)
    index = {c: i for i, c in enumerate(classes)} if classes is not None else None
    items: list[tuple[str, Any]] = []
    for i, row in enumerate(rows):
        where = f"{source} row {i} (column {column!r})"
        check_labels(row, len(own), lambda _, where=where: str(where), open_ok=False)  # type: ignore[misc]
        names = [own[y] for y in row]
        if index is not None and any(n not in index for n in names):
            missing = next(n for n in names if n not in index)
            raise DataError(f"{where}: label {missing!r} is not among the {len(index)} given classes")
        ys = tuple(sorted({index[n] for n in names} if index is not None else set(row)))
        if task == "single":
            if len(ys) != 1:
                raise DataError(f"{where}: {len(ys)} labels where every image needs exactly one class (--task single)")
            items.append((f"{source}[{i}]", ys[0]))
        else:
            items.append((f"{source}[{i}]", ys))
    return own, items
