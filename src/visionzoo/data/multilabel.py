"""Multi-label list files: CSV with a header, one image per row, and the classes each image shows.

Two layouts, told apart by the header:
  path,labels            the class names of the row, separated by spaces (an empty field: no class)
  path,<class>,<class>   one 0/1 column per class
Classes are sorted by name unless a classes file (`--classes`, one name per line) fixes their order; a
validation list reads through the training split's classes, and a name outside them is an error naming
the file and line. A label set is a sorted tuple of class indices; the dataset turns it into a multi-hot
float vector (`multi_hot`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch

from ..core.errors import DataError

LabelSet = tuple[int, ...]


def is_csv_list(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".csv"


def read_classes_file(path: str | Path) -> list[str]:
    """Names in label order, one per line (blank lines and # comments skipped); a repeated name is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"classes file not found: {path}")
    names: list[str] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in names:
            raise DataError(f"{path}:{n}: class {name!r} is listed twice")
        names.append(name)
    if not names:
        raise DataError(f"{path}: no class names in it")
    return names


def read_csv_rows(path: str | Path) -> tuple[list[tuple[int, str, list[str]]], list[str] | None]:
    """(line number, relative path, the row's class names) per row, and the header's class columns (None for the
    `path,labels` layout)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: empty list file") from None
        if not header or header[0].lower() != "path" or len(header) < 2:
            raise DataError(f"{path}:1: expected a header 'path,labels' or 'path,<class>,<class>,...', got "
                            f"{','.join(header)!r}")
        columns = None if [h.lower() for h in header] == ["path", "labels"] else header[1:]
        if columns is not None and len(set(columns)) != len(columns):
            raise DataError(f"{path}:1: a class column is repeated")
        rows: list[tuple[int, str, list[str]]] = []
        for fields in reader:
            n = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            rel = fields[0].strip()
            if not rel:
                raise DataError(f"{path}:{n}: no image path")
            if columns is None:
                if len(fields) > 2:
                    raise DataError(f"{path}:{n}: {len(fields)} fields where the header has 2 (quote a path with "
                                    "commas)")
                names = (fields[1] if len(fields) > 1 else "").split()
            else:
                if len(fields) != len(header):
                    raise DataError(f"{path}:{n}: {len(fields)} fields where the header has {len(header)}")
                flags = [v.strip() for v in fields[1:]]
                bad = next((v for v in flags if v not in ("0", "1")), None)
                if bad is not None:
                    raise DataError(f"{path}:{n}: {bad!r} in a 0/1 class column")
                names = [c for c, v in zip(columns, flags) if v == "1"]
            rows.append((n, rel, names))
    if not rows:
        raise DataError(f"{path}: no images listed")
    return rows, columns


def label_sets(path: str | Path, rows: list[tuple[int, str, list[str]]], classes: Sequence[str],
               allow_empty: bool = True) -> list[tuple[str, LabelSet]]:
    """(relative path, sorted class indices) per row; a name outside classes, a repeated name or (allow_empty
    False) an empty set is a DataError naming the file and line."""
    index = {c: i for i, c in enumerate(classes)}
    out: list[tuple[str, LabelSet]] = []
    for n, rel, names in rows:
        unknown = [c for c in names if c not in index]
        if unknown:
            raise DataError(f"{path}:{n}: label {unknown[0]!r} is not among the {len(classes)} classes "
                            f"({', '.join(list(classes)[:8])}{', ...' if len(classes) > 8 else ''})")
        if len(set(names)) != len(names):
            raise DataError(f"{path}:{n}: a label is repeated")
        if not names and not allow_empty:
            raise DataError(f"{path}:{n}: an empty label set, where every image needs exactly one class "
                            "(--task single)")
        out.append((rel, tuple(sorted(index[c] for c in names))))
    return out


def csv_classes(rows: list[tuple[int, str, list[str]]], columns: list[str] | None) -> list[str]:
    """Every class a training list names, sorted by name (the header's columns for the 0/1 layout)."""
    return sorted(columns if columns is not None else {c for _, _, names in rows for c in names})


def multi_hot(labels: LabelSet, num_classes: int) -> torch.Tensor:
    target = torch.zeros(num_classes)
    target[list(labels)] = 1.0
    return target


def is_multilabel(label_sets: Sequence[LabelSet]) -> bool:
    """Data is multi-label when some image has no class or more than one."""
    return any(len(s) != 1 for s in label_sets)
