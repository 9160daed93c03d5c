"""Markdown table for docs/longtail.md from tools/longtail_compare.sh output: mean (and spread) over seeds.

python tools/longtail_table.py OUT              # every method
python tools/longtail_table.py OUT --torchrun   # OLTR stage 2, one process vs 2 (tools/longtail_torchrun.sh)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

METHODS = [
    ("stage1", "plain softmax, instance sampling (OLTR stage 1)"),
    ("oltr_stage2", "OLTR stage 2 (from stage 1)"),
    ("balanced_softmax", "Balanced Softmax (loss)"),
    ("logit_adjust", "post-hoc logit adjustment, tau 1 (on stage 1)"),
    ("class_balanced", "class-balanced sampling"),
    ("sqrt", "square-root sampling"),
    ("crt", "cRT (stage-1 backbone, classifier re-trained class-balanced)"),
    ("tau_norm", "tau-normalised stage-1 classifier (tau chosen on val)"),
]


TORCHRUN = [("oltr_stage2", "OLTR stage 2, one process"), ("oltr_stage2_2p", "OLTR stage 2, torchrun 2 processes")]


def main(out: Path, methods: list[tuple[str, str]]) -> None:
    seeds = sorted(p for p in out.glob("s*") if p.is_dir())
    print("| method | top-1 | many | medium | few | open-set F (0.1) | open-set F (0.5) |")
    print("|---|---|---|---|---|---|---|")
    for key, label in methods:
        keys = ("top1", "many_shot", "medium_shot", "few_shot", "f01", "f05")
        vals: dict[str, list[float]] = {k: [] for k in keys}
        for s in seeds:
            a, b = s / f"{key}.eval0.1.json", s / f"{key}.eval0.5.json"
            if not a.exists():
                continue
            ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
            for k in ("top1", "many_shot", "medium_shot", "few_shot"):
                vals[k].append(ra[k])
            vals["f01"].append(ra["open_set"]["f_measure"])
            vals["f05"].append(rb["open_set"]["f_measure"])
        cell = lambda v: f"{np.mean(v):.1f} ± {np.std(v):.1f}" if len(v) > 1 else (f"{v[0]:.1f}" if v else "-")  # noqa: E731
        print(f"| {label} | " + " | ".join(cell(vals[k]) for k in keys) + " |")
    print(f"\n{len(seeds)} seed(s): {', '.join(p.name for p in seeds)}; mean ± standard deviation over seeds.")


if __name__ == "__main__":
    main(Path(sys.argv[1]), TORCHRUN if "--torchrun" in sys.argv[2:] else METHODS)
