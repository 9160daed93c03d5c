"""visionzoo tau-norm: tau-normalise a trained classifier (Kang et al. 2020), optionally choosing tau on val.

With several --tau values each candidate is evaluated on the validation split (the checkpoint's
own, or the data flags') and the best one by mean per-class accuracy is written.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..core.files import write_json
from .options import add_config_flags, data_config


def add_parser(sub) -> None:
    p = sub.add_parser("tau-norm", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tau", default="1.0", help="a value, or a comma list to choose from on val (e.g. 0,0.5,1,1.5,2)")
    p.add_argument("--output", required=True)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--device", default="auto")
    add_config_flags(p, only={"data", "val_list", "val_root", "workers"})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import ConfigError
    from ..core.files import atomic_copy
    from ..inference.evaluate import evaluate
    from ..longtail.tau_norm import tau_norm_checkpoint

    try:
        taus = [float(t) for t in args.tau.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--tau: expected numbers, got {args.tau!r}") from None
    if len(taus) == 1:
        r = tau_norm_checkpoint(args.checkpoint, taus[0], args.output)
        print(f"wrote {r['output']} ({r['classifier']} normalised with tau {taus[0]})")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tau in taus:
            path = Path(tmp) / f"tau{tau}.pth"
            tau_norm_checkpoint(args.checkpoint, tau, path)
            e = evaluate(str(path), data_config(args), 128, args.device, progress=False)
            mean_cls = [c["top1"] for c in e["per_class"] if c["top1"] is not None]
            rows.append({"tau": tau, "top1": e["top1"], "mean_class_accuracy": sum(mean_cls) / len(mean_cls)})
            print(f"tau {tau:<5} top-1 {e['top1']:.2f}  mean class accuracy {rows[-1]['mean_class_accuracy']:.2f}")
        best = max(rows, key=lambda r: r["mean_class_accuracy"])
        atomic_copy(Path(tmp) / f"tau{best['tau']}.pth", args.output)
    print(f"best tau {best['tau']}: wrote {args.output}")
    if args.json:
        write_json(args.json, {"best": best, "candidates": rows})
    return 0
