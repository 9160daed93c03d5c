"""visionzoo train: train a model from a recipe, a YAML config and/or flags.

Layers, each overriding the one before: the defaults shown below < --recipe (and its --mode) < --config YAML
< flags. `visionzoo train --recipe NAME --print-config` shows what a recipe sets.
"""

from __future__ import annotations

import argparse

from .options import add_config_flags, resolve_config, run_training


def add_parser(sub) -> None:
    p = sub.add_parser("train", description=__doc__,
                       usage="visionzoo train [--recipe NAME [--mode MODE]] [--config FILE] [--FLAG VALUE ...]",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", metavar="NAME", help="recipe name (see `visionzoo recipes`) [default: none]")
    p.add_argument("--mode", help="recipe mode, e.g. full, full_amp, perf [default: the recipe's]")
    p.add_argument("--config", metavar="FILE",
                   help="YAML config (e.g. a run's config.yaml); flags override it [default: none]")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit [default: off]")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    def train(cfg):  # imported here: --print-config needs no torch
        from ..engine.trainer import train

        return train(cfg)

    summary = run_training(train, resolve_config(args), args.print_config)
    if summary and summary.get("checkpoint"):
        from ..engine.runlog import describe_epochs  # torch is loaded by now

        best = summary.get("best_top1")
        tta = summary.get("tta")  # --tta: the end-of-run evaluation's plain and TTA top-1, side by side
        tta_text = (f"; end-of-run val top-1 {tta['plain_top1']:.2f}, with TTA {tta['mode']} {tta['top1']:.2f}"
                    if tta else "")
        best_text = f"best val top-1 {'n/a' if best is None else f'{best:.2f}'}"
        if "best_mAP" in summary:  # multi-label
            best_map = summary["best_mAP"]
            best_text = f"best val mAP {'n/a' if best_map is None else f'{best_map:.4f}'}"
        print(f"done: {describe_epochs(summary)}, {best_text}{tta_text}; checkpoint {summary['checkpoint']}; "
              f"run folder {summary['output']}")
    return 0
