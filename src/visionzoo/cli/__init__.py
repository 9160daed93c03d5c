"""`visionzoo <command>`: a thin dispatcher; each command lives in its own module."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..config import ConfigError
from ..data.datasets import DataError
from ..data.images import BadImageError
from ..inference.export import ExportCheckError
from ..inference.runtime import ModelFileError
from ..models.registry import UnknownModelError
from ..models.weights import WeightsError
from . import (
    bench,
    bench_data,
    demo,
    export,
    finetune_res,
    infer,
    make_lt,
    metric,
    models,
    pack,
    predict,
    preprocess,
    quantize,
    recipes,
    tau_norm,
    train,
    valprep,
)
from . import eval as eval_cmd

COMMANDS = {
    "train": train,
    "eval": eval_cmd,
    "demo": demo,
    "recipes": recipes,
    "models": models,
    "valprep": valprep,
    "predict": predict,
    "bench": bench,
    "bench-data": bench_data,
    "export": export,
    "quantize": quantize,
    "preprocess": preprocess,
    "infer": infer,
    "metric": metric,
    "make-lt": make_lt,
    "pack": pack,
    "tau-norm": tau_norm,
    "finetune-res": finetune_res,
}

# errors whose message already says what is wrong and where: print it, not a traceback
USER_ERRORS = (ConfigError, DataError, BadImageError, UnknownModelError, WeightsError, FileNotFoundError,
               ModelFileError, ExportCheckError)


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(message)s" if rank == 0 else f"[rank {rank}] %(message)s",
        stream=sys.stderr,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionzoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(f"visionzoo {args.command}: error: {e}", file=sys.stderr)
        return 2
