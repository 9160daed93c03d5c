"""Markdown table for docs/fixres.md from tools/fixres_demo.sh output: top-1 per test size, mean over seeds.

python tools/fixres_table.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(out: Path) -> None:
    sweeps = [json.loads(p.read_text()) for p in sorted(out.glob("s*/sweep.json"))]
    sizes = sweeps[0]["sizes"]
    labels = ["trained at 24 px", "trained at 24 px, finetune-res at 32 px"]
    print("| test size | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for i, size in enumerate(sizes):
        cells = []
        for m in range(len(labels)):
            v = [s["models"][m]["top1"][i] for s in sweeps]
            cells.append(f"{np.mean(v):.1f} ± {np.std(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}")
        print(f"| {size} | " + " | ".join(cells) + " |")
    best = [[s["models"][m]["best_size"] for s in sweeps] for m in range(len(labels))]
    print(f"\n{len(sweeps)} seed(s); best test size per seed: " + "; ".join(
        f"{label}: {', '.join(map(str, b))}" for label, b in zip(labels, best)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
