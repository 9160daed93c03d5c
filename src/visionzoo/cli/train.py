"""visionzoo train: train a model from a recipe, a YAML config and/or flags."""

from __future__ import annotations

import argparse

from .options import add_config_flags, resolve_config, run_training


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a classifier", description=__doc__,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipe", help="recipe name (see `visionzoo recipes`)")
    p.add_argument("--mode", help="recipe mode, e.g. full, full_amp, perf (default: the recipe's)")
    p.add_argument("--config", metavar="FILE", help="YAML config (e.g. a run's config.yaml); flags override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.trainer import train

    summary = run_training(train, resolve_config(args), args.print_config)
    if summary and summary.get("checkpoint"):
        best = summary.get("best_top1")
        print(f"done: {summary['epochs_run']} epoch(s), best val top-1 "
              f"{'n/a' if best is None else f'{best:.2f}'}; checkpoint {summary['checkpoint']}; "
              f"run folder {summary['output']}")
    return 0
