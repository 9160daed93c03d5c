"""`visionzoo <command>`: a thin dispatcher; each command lives in its own module."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from ..core.errors import VisionZooError
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


def setup_logging() -> None:
    """visionzoo's own messages at INFO (rank 0); other libraries' only from WARNING up, so their progress
    chatter (onnxruntime's shape inference, ...) stays out of the output."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s" if rank == 0 else f"[rank {rank}] %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("visionzoo").setLevel(logging.INFO if rank == 0 else logging.WARNING)


class Parser(argparse.ArgumentParser):
    """No abbreviations: `predict --model X` must not be read as --model-file X, nor `--epoch` as --epochs."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="visionzoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error (VisionZooError) is one line on stderr and exit status 2 for usage
    errors (flags, config), 1 for failures (data, images, model files). Anything else is a bug: traceback."""
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VisionZooError as e:
        print(f"visionzoo {args.command}: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    finally:
        _leave_process_group()


def one_line(e: BaseException) -> str:
    """The error's message on one line (a message quoting a library's multi-line error is joined).

    An error raised in a DataLoader worker comes back with the worker's traceback in front of its message
    ("Caught BadImageError in DataLoader worker process 0. Original Traceback ..."): its own last line is the
    message.
    """
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and "Original Traceback" in str(e):
        lines = [re.sub(rf"^[\w.]*{type(e).__name__}: ", "", lines[-1])]
    return " ".join(lines)


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before the interpreter exits: an undestroyed gloo group can
    abort the process at shutdown. Nothing to do (and torch not to import) when none was made."""
    if "torch.distributed" in sys.modules:
        from ..core.distributed import cleanup

        cleanup()
