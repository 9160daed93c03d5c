"""visionzoo models: list registered models (and timm's with --timm)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("models", description=__doc__)
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--timm", action="store_true", help="include every timm architecture")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import get_model_cfg, list_models

    for name in list_models(include_timm=args.timm, pattern=args.pattern):
        if args.timm:
            print(name)
        else:
            c = get_model_cfg(name)
            print(f"{name:<22} {c.source:<12} input {c.input_size}  crop_pct {c.crop_pct}  {c.interpolation}")
    return 0
