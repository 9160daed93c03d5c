"""visionzoo recipes: list the shipped recipes and their modes, or show one resolved."""

from __future__ import annotations

import argparse
import sys

import yaml

from ..config import to_dict


def add_parser(sub) -> None:
    p = sub.add_parser("recipes", description=__doc__)
    p.add_argument("name", nargs="?", help="show this recipe's resolved config")
    p.add_argument("--mode", help="mode to resolve (with NAME)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config.recipes import get_recipe, list_recipes

    if args.name:
        yaml.safe_dump(to_dict(get_recipe(args.name).resolve(args.mode)), sys.stdout, sort_keys=False)
        return 0
    print(f"{'recipe':<22} {'modes':<24} description")
    for name in list_recipes():
        r = get_recipe(name)
        modes = ", ".join(m + ("*" if m == r.default_mode else "") for m in r.modes)
        print(f"{name:<22} {modes:<24} {r.description}")
    print("\n* default mode.  Run: visionzoo train --recipe NAME [--mode MODE] --data DIR [--flag value ...]")
    return 0
