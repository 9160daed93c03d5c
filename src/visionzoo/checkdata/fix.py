"""`--fix DIR`: list files of the cleaned data and `excluded.csv` saying why each left file was left; the data
itself is never touched.

Dropped: unreadable files; the training copy of every duplicate (exact or near) across train/val (the validation
image stays: it is the one the numbers are measured on); the extra exact copies within a split (the first kept);
every copy of an image that carries two labels. Label suspects are listed in the report, not dropped: a person
decides. For file-based data DIR gets `train.txt` / `val.txt` (`relative/path label` lines, relative to DATA) and
`classes.txt`, which `visionzoo train --data DATA --train-list DIR/train.txt --val-list DIR/val.txt` reads; packs,
Hugging Face datasets and multi-label data get excluded.csv only (their entries are no files a list could name).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.files import write_json, write_text
from .check import Findings
from .duplicates import exact_groups


def exclusions(found: Findings) -> dict[int, str]:
    """position -> why it is left out of the cleaned lists (the first reason found)."""
    res, why = found.res, dict[int, str]()
    for b in res.bad:
        why.setdefault(b["pos"], f"unreadable ({b['kind'].replace('_', ' ')}): {b['reason']}")
    for p in found.duplicates.get("duplicates", []):
        if not p["cross_split"]:
            continue
        a, b = p["pos"]
        train, val = (a, b) if found.split_name(a) == "train" else (b, a)
        why.setdefault(train, f"{p['kind']} duplicate of {found.name(val)} in {found.split_name(val)}")
    for group in exact_groups(res):
        labels = {int(res.label[p]) for p in group}
        if len(labels) > 1:
            names = ", ".join(str(found.class_name(int(p))) for p in group)
            for p in group:
                why.setdefault(int(p), f"the same pixels under different labels ({names})")
            continue
        kept: dict[int, int] = {}
        for p in group.tolist():
            first = kept.setdefault(int(res.split[p]), p)
            if first != p:
                why.setdefault(p, f"exact duplicate of {found.name(first)}")
    return why


def write_fix(found: Findings, folder: str | Path) -> dict[str, Any]:
    """DIR/excluded.csv, and for file-based single-label data DIR/{split}.txt and DIR/classes.txt; returns what was
    written and kept (also DIR/fix.json)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--fix {folder}: cannot make the folder ({e.strerror})") from None
    why = exclusions(found)
    data = found.data
    lists = all(s.file_based for s in data.splits) and not data.multilabel
    texts = {split.name: _list_text(found, k, why) for k, split in enumerate(data.splits)} if lists else {}
    rows = io.StringIO()
    out = csv.writer(rows, lineterminator="\n")
    out.writerow(["split", "file", "reason"])
    for p in sorted(why):
        out.writerow([found.split_name(p), found.name(p), why[p]])
    write_text(folder / "excluded.csv", rows.getvalue())
    summary: dict[str, Any] = {"excluded": len(why), "lists": {}, "note": "" if lists else (
        "packs, Hugging Face datasets and multi-label data: excluded.csv only (no list file can name their entries)")}
    if lists:
        write_text(folder / "classes.txt", "".join(f"{c}\n" for c in data.classes))
    for name, (text, kept, total) in texts.items():
        write_text(folder / f"{name}.txt", text)
        summary["lists"][name] = {"file": str(folder / f"{name}.txt"), "kept": kept, "of": total}
    write_json(folder / "fix.json", summary)
    return summary


def _list_text(found: Findings, k: int, why: dict[int, str]) -> tuple[str, int, int]:
    """The split's kept entries as `relative/path label` lines, and how many of how many; an entry whose name a
    line cannot hold (a line break in it) joins the exclusions."""
    res, lines = found.res, []
    split = found.data.splits[k]
    start = int((res.split < k).sum())
    for i in range(len(split)):
        p, name = start + i, split.name_of(i)
        if p in why:
            continue
        if "\n" in name or "\r" in name:
            why[p] = "a line break in its name: no list file line can hold it"
            continue
        lines.append(f"{name} {split.label(i)}\n")
    return "".join(lines), len(lines), len(split)
