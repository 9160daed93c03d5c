"""Which classes gained: per-class recall of two `visionzoo eval --json` reports side by side.

python tools/per_class_delta.py BEFORE.json AFTER.json [--names A,B]

Either report may come from a plain `eval --json` or from `eval --longtail --json` (then the training-set size
and shot group of each class are shown too). A class's recall is its per-class top-1 (the share of its test
images classified as it); classes are matched by name, in BEFORE's order.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(path: str) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: not a readable eval report ({e.__class__.__name__})")
    if not isinstance(report, dict) or not isinstance(report.get("per_class"), list):
        sys.exit(f"{path}: no per_class rows (write it with visionzoo eval --json)")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--names", default="before,after", help="the two column names (default: before,after)")
    args = p.parse_args()
    names = (args.names.split(",") + ["before", "after"])[:2]
    a, b = load(args.before), load(args.after)
    rows_b = {r["class"]: r for r in b["per_class"]}
    lt = all("train_images" in r for r in a["per_class"])
    head = ["class", *(["train images", "group"] if lt else []), f"{names[0]} recall", f"{names[1]} recall",
            "change"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    gained = lost = 0
    for r in a["per_class"]:
        other = rows_b.get(r["class"])
        ra, rb = r.get("top1"), other.get("top1") if other else None
        change = "-" if ra is None or rb is None else f"{rb - ra:+.1f}"
        if ra is not None and rb is not None:
            gained += rb > ra
            lost += rb < ra
        cells = [str(r["class"]), *([str(r["train_images"]), r["group"]] if lt else []),
                 "-" if ra is None else f"{ra:.1f}", "-" if rb is None else f"{rb:.1f}", change]
        print("| " + " | ".join(cells) + " |")
    missing = [c for c in rows_b if c not in {r["class"] for r in a["per_class"]}]
    extra = f"; only in {args.after}: {', '.join(missing)}" if missing else ""
    classes = "class" if gained == 1 else "classes"
    print(f"\n{names[1]} vs {names[0]}: {gained} {classes} gained, {lost} lost (recall in percent){extra}")


if __name__ == "__main__":
    main()
