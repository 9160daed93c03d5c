"""The report of a check: report.json (every finding, files named relative to DATA), the terminal summary, and the
report folder (report.json + the self-contained report.html of page.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.files import write_json, write_text
from .check import Findings
from .duplicates import COSINE_PER_BIT, MIN_DCT_COSINE
from .scan import FLAT_STD, ODD_KINDS
from .stats import LIST_MAX, balance, class_counts, flat_images, size_stats, tiny_images

REPORT_VERSION = 1


def _strip(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings without their internal positions (the report names files, not scan indices)."""
    return [{k: v for k, v in e.items() if k != "pos"} for e in entries]


def build_report(found: Findings) -> dict[str, Any]:
    """report.json's content (see docs/check_data.md for each key)."""
    data, res, opts = found.data, found.res, found.options
    counts = class_counts(data)
    unreadable = [{"file": found.name(b["pos"]), "split": found.split_name(b["pos"]), "kind": b["kind"],
                   "reason": b["reason"]} for b in res.bad]
    odd = {kind: {"count": len(rows), "loader": ODD_KINDS[kind],
                  "files": [{"file": found.name(r["pos"]), "split": found.split_name(r["pos"]), "detail": r["detail"]}
                            for r in rows[:LIST_MAX]]}
           for kind, rows in sorted(res.odd.items())}
    dups = found.duplicates
    return {
        "version": REPORT_VERSION, "data": data.cfg.data, "description": data.description, "root": str(data.root),
        "notes": data.notes,
        "splits": {s.name: {"images": len(s), "unreadable": sum(u["split"] == s.name for u in unreadable)}
                   for s in data.splits},
        "classes": data.classes, "class_counts": counts, "class_balance": balance(counts),
        "unreadable": unreadable, "odd_images": odd,
        "duplicates": _strip(dups.get("duplicates", [])), "near_pairs_not_listed": dups.get("near_pairs_not_listed", 0),
        "leakage": dups.get("leakage", {}), "label_conflicts": dups.get("label_conflicts", []),
        "label_suspects": _strip(found.suspects), "label_suspects_note": found.suspects_note,
        "sizes": size_stats(res), "tiny": tiny_images(res, opts.min_side, found.name),
        "flat": flat_images(res, found.name),
        "scan": {"images": len(res.split), "seconds": round(res.seconds, 3),
                 "images_per_sec": round(res.images_per_sec, 1), "workers": res.workers,
                 "ms_per_image": round(1000 * res.seconds / max(len(res.split), 1), 3)},
        "settings": {"phash_threshold": opts.phash_threshold, "min_dct_cosine": MIN_DCT_COSINE,
                     "cosine_per_bit": COSINE_PER_BIT, "flat_std": FLAT_STD, "min_side": opts.min_side,
                     "near_cosine": opts.near_cosine},
    }


def _count_kinds(entries: list[dict[str, Any]], key: str) -> str:
    kinds: dict[str, int] = {}
    for e in entries:
        kinds[e[key]] = kinds.get(e[key], 0) + 1
    return ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in sorted(kinds.items()))


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The terminal summary: one finding a line, the train/val leakage first."""
    scan, dups, leak = report["scan"], report["duplicates"], report["leakage"]
    split_text = ", ".join(f"{name} {s['images']}" for name, s in report["splits"].items())
    rows = [("data", f"{report['description']}: {split_text} images, {len(report['classes'])} classes"),
            ("scan", f"{scan['images']} images in {scan['seconds']:.1f} s: {scan['images_per_sec']:.0f} images/s "
                     f"({scan['ms_per_image']:.2f} ms an image, {scan['workers']} workers)")]
    if leak.get("val_images"):
        rows.append(("train/val leakage", f"{leak['val_images_with_train_copy']} of {leak['val_images']} val images "
                     f"({100 * leak['fraction']:.1f}%) have a copy in train ({leak['exact']} exact, "
                     f"{leak['near_only']} near only)"))
    bad = report["unreadable"]
    rows.append(("unreadable", f"{len(bad)}" + (f" ({_count_kinds(bad, 'kind')})" if bad else "")))
    for kind in ("exact", "near"):
        pairs = [d for d in dups if d["kind"] == kind]
        cross = sum(d["cross_split"] for d in pairs)
        rows.append((f"{kind} duplicates", f"{len(pairs)} pairs ({cross} across splits)"))
    rows.append(("label conflicts", str(len(report["label_conflicts"]))))
    suspects = report["label_suspects"]
    rows.append(("label suspects", f"{len(suspects)}: {report['label_suspects_note']}" if suspects
                 else report["label_suspects_note"]))
    for kind, odd in report["odd_images"].items():
        rows.append((f"odd: {kind.replace('_', ' ')}", f"{odd['count']}: {odd['loader']}"))
    rows.append(("tiny images", f"{report['tiny']['count']} with a side under {report['tiny']['min_side']} px"))
    rows.append(("near-uniform", f"{report['flat']['count']} (left out of the near-duplicate search)"))
    rows += _shape_rows(report)
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {text}" for name, text in rows] + [f"note: {n}" for n in report["notes"]]


def _shape_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    bal = report["class_balance"]
    if bal:
        ratio = f"{bal['ratio']:.2f}x" if bal["ratio"] is not None else "an empty class"
        rows.append(("class balance", f"smallest {bal['smallest']['class']} ({bal['smallest']['images']}), largest "
                     f"{bal['largest']['class']} ({bal['largest']['images']}): {ratio} (train)"))
    sizes = report["sizes"]
    if sizes["width"]:
        w, h, a = sizes["width"], sizes["height"], sizes["aspect_ratio"]
        rows.append(("image sizes", f"median {w['median']:.0f}x{h['median']:.0f} px, width {w['min']:.0f}-"
                     f"{w['max']:.0f}, height {h['min']:.0f}-{h['max']:.0f}; aspect w/h {a['p5']:.2f}-{a['p95']:.2f}"
                     " (5-95%)"))
    return rows


def write_report(found: Findings, report: dict[str, Any], folder: str | Path) -> list[Path]:
    """report.json and report.html in folder (made if missing), each written atomically."""
    from .page import render_page

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "report.json", report)
    html = render_page(found, report, summary_lines(report))
    write_text(folder / "report.html", html)
    return [folder / "report.json", folder / "report.html"]


def inside(path: str | Path, folder: Path) -> bool:
    """Whether path is folder or lies under it (links resolved): outputs there would change the data."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)
