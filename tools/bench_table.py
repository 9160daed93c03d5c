"""Markdown table for docs/performance.md from `visionzoo bench --json` files and timm benchmark.py CSVs.

python tools/bench_table.py OUTDIR   (the folder tools/bench_cpu_resnet50.sh wrote)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    rows = [r for f in sorted(out.glob("*.json")) for r in json.loads(f.read_text())["rows"] if r["status"] == "ok"]
    order = ["eager", "compile", "torchscript", "onnxruntime", "tensorrt"]
    groups = sorted({(r["backend"], r["precision"]) for r in rows}, key=lambda g: (g[1] != "fp32", order.index(g[0])))
    sizes = sorted({r["batch_size"] for r in rows})
    timm = {}
    for f in out.glob("timm_*_b*.csv"):
        kind, bs = f.stem.split("_")[1], int(f.stem.split("_b")[-1])
        rec = next(csv.DictReader(f.open()), None)
        if rec and rec.get("infer_samples_per_sec"):
            timm[(kind, bs)] = float(rec["infer_samples_per_sec"])
    cell = {(r["backend"], r["precision"], r["batch_size"]): r for r in rows}
    print("| batch | " + " | ".join(f"{b} {p}" for b, p in groups) + " | timm eager | timm compile |")
    print("|---" * (len(groups) + 3) + "|")
    for bs in sizes:
        cells = []
        for b, p in groups:
            r = cell.get((b, p, bs))
            if r is None:
                cells.append("-")
                continue
            cells.append(f"{r['images_per_s']:.1f}{' *' if r['best'] else ''} ({r['p50_ms']:.0f} ms)")
        cells += [f"{timm[(k, bs)]:.1f}" if (k, bs) in timm else "-" for k in ("eager", "compile")]
        print(f"| {bs} | " + " | ".join(cells) + " |")
    print()
    print("| batch | visionzoo eager / timm eager | visionzoo compile / timm compile |")
    print("|---|---|---|")
    for bs in sizes:
        ratios = []
        for ours, k in (("eager", "eager"), ("compile", "compile")):
            r = cell.get((ours, "fp32", bs))
            ratios.append(f"{r['images_per_s'] / timm[(k, bs)]:.2f}" if r and (k, bs) in timm else "-")
        print(f"| {bs} | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
