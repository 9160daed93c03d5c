"""`visionzoo <command>`: a thin dispatcher; each command lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

from ..config import flag_names, suggest
from ..core.errors import VisionZooError

# command -> (its module in this package, its line in `visionzoo --help`). Only the command that runs (or
# shows its own help) is imported: the rest of the listing needs no module, so no torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a classifier"),
    "eval": ("eval", "evaluate a checkpoint or exported model"),
    "demo": ("demo", "train + evaluate on the built-in digits data set"),
    "recipes": ("recipes", "list recipes"),
    "models": ("models", "list models"),
    "valprep": ("valprep", "flat val folder + label file -> class folders"),
    "predict": ("predict", "top-k classes for image files and folders"),
    "bench": ("bench", "throughput/latency benchmark"),
    "bench-data": ("bench_data", "input-pipeline throughput (vs torchvision with --baseline)"),
    "export": ("export", "export a checkpoint for deployment"),
    "quantize": ("quantize", "int8/int16 post-training quantisation"),
    "preprocess": ("preprocess", "images -> preprocessed binary files"),
    "infer": ("infer", "model over preprocessed files -> logits dumps"),
    "metric": ("metric", "accuracy of dumped logits"),
    "make-lt": ("make_lt", "long-tailed lists (+ open set) from an ImageFolder"),
    "pack": ("pack", "pack an ImageFolder or list-file data set into WebDataset shards for fast loading"),
    "tau-norm": ("tau_norm", "tau-normalise a classifier (long-tail)"),
    "finetune-res": ("finetune_res", "FixRes: fine-tune a checkpoint at the test resolution"),
    "average": ("average", "average checkpoints (last/best K) or make a greedy soup"),
    "serve": ("serve", "serve a model over HTTP (batched, with metrics and a web page)"),
    "bench-serve": ("bench_serve", "load-test a visionzoo server: throughput, latency percentiles"),
    "check-data": ("check_data", "find unreadable files, duplicates, train/val leakage and label errors in a data set"),
}
SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader went away (`| head`)


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
    """No abbreviations: `predict --model X` must not be read as --model-file X, nor `--epoch` as --epochs.

    A usage error is one line, `visionzoo train: error: ...`, said by the command's own parser; a misspelt
    flag or command comes with its close matches (`did you mean --sched?`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # set on the top-level parser

    def parse_known_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        if self.commands:
            given = list(sys.argv[1:] if args is None else args)
            word = next((a for a in given if not a.startswith("-")), None)
            if word is None and not {"-h", "--help"} & set(given):
                self.error(f"a command is required: {', '.join(self.commands)} (see `visionzoo --help`)")
            if word is not None and word not in self.commands:
                close = suggest(word, self.commands)
                self.error(f"unknown command {word!r}" + (f"; did you mean {' or '.join(close)}?" if close else
                                                          f"; commands: {', '.join(self.commands)}"))
        return super().parse_known_args(args, namespace)

    def parse_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> Any:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:  # said by the command's parser, which knows the flags the user meant
            where = self.commands.get(getattr(ns, "command", ""), self)
            where.error(unrecognized(extras, where))
        return ns

    def error(self, message: str) -> NoReturn:
        # no usage block in front: train's would be 60 lines of flags burying the one that matters
        self.exit(2, f"{self.prog}: error: {message}\n")


def unrecognized(extras: list[str], parser: argparse.ArgumentParser) -> str:
    """`unrecognized argument --lr-scheduler; did you mean --sched?` for the first unknown flag (a stray word
    when there is none)."""
    flag = next((e.split("=", 1)[0] for e in extras if e.startswith("-")), None)
    if flag is None:
        return f"unrecognized argument {extras[0]!r}; see `{parser.prog} --help`"
    from .options import flag_synonyms  # here: options is imported by the commands, after this module

    known = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    close = list(dict.fromkeys([*flag_synonyms(flag, known), *suggest(flag, known)]))[:3]
    hint = f"did you mean {' or '.join(close)}?" if close else f"see `{parser.prog} --help`"
    return f"unrecognized argument {flag}; {hint}"


class _Commands(argparse._SubParsersAction):
    """A command's help line comes from COMMANDS, the one place it is written (`visionzoo --help` lists it
    without importing the command's module); the module gives the rest (description, flags)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs["help"] = COMMANDS[name][1]
        return super().add_parser(name, **kwargs)


def build_parser(full: Iterable[str] | None = None) -> Parser:
    """The parser of every command; with `full`, only those commands' modules are imported and their flags
    added (the others are a name and a help line)."""
    from .options import show_defaults

    wanted = set(COMMANDS if full is None else full)
    parser = Parser(prog="visionzoo", description="Train, evaluate, benchmark and export image classifiers. "
                    "`visionzoo COMMAND --help` lists a command's flags.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser,
                                action=_Commands)
    for name, (module, _) in COMMANDS.items():
        if name in wanted:
            importlib.import_module(f"{__name__}.{module}").add_parser(sub)
            show_defaults(sub.choices[name])  # every command's help shows its defaults as train's does
        else:
            sub.add_parser(name)
    parser.commands = dict(sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error (VisionZooError) is one line on stderr and exit status 2 for usage
    errors (flags, config), 1 for failures (data, images, model files). Anything else is a bug: traceback.
    Output cut short by its reader (`visionzoo models | head -1`) ends quietly with status 141."""
    argv = sys.argv[1:] if argv is None else list(argv)
    setup_logging()
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        args = build_parser([command] if command else []).parse_args(argv)
        try:
            with flag_names():  # config errors name the flags the user typed, not the fields
                code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
            return code
        except VisionZooError as e:
            kind = "" if isinstance(e, KeyboardInterrupt) else "error: "  # Ctrl-C (core.errors.Interrupted): no error
            print(f"visionzoo {args.command}: {kind}{one_line(e)}", file=sys.stderr)
            return e.exit_code
        finally:
            _leave_process_group()
    except BrokenPipeError:
        # as the Python docs advise: point stdout at devnull so the flush at exit cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT


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
