"""visionzoo finetune-res: FixRes fine-tuning of a trained checkpoint at the test resolution.

Runs the fixres_resnet50_finetune recipe on the checkpoint's own model, classes and data: the
classifier trains (plus the final BatchNorm's statistics for ResNets), the rest stays frozen; training
images go through the test-time transform at --test-size with a shifted crop. The accuracy before
fine-tuning at that size is logged first. Every training flag applies (--epochs, --lr, --batch-size,
--data, --output, ...); the new checkpoint records --test-size, so eval and predict use it by default.
"""

from __future__ import annotations

import argparse

from ..core.errors import ConfigError
from .options import add_config_flags, cli_overrides, nest, run_training


def add_parser(sub) -> None:
    p = sub.add_parser("finetune-res", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the trained visionzoo checkpoint (.pth)")
    p.add_argument("--mode", help="mode of the fixres_resnet50_finetune recipe: full (60 epochs), reference (31), perf")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    # --test-size is an alias of --img-size: the size it fine-tunes and will test at
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..fixres import finetune_config, finetune_res

    overrides = nest(cli_overrides(args))
    test_size = (overrides.get("data") or {}).pop("img_size", None)
    if test_size is None:
        raise ConfigError("finetune-res needs --test-size S (the resolution to fine-tune and test at)")
    summary = run_training(finetune_res, finetune_config(args.checkpoint, test_size, args.mode, overrides),
                           args.print_config)
    if not summary or not summary.get("checkpoint"):  # --print-config, or another rank under torchrun
        return 0
    before, best = summary.get("before_finetune"), summary.get("best_top1")
    line = f"done: fine-tuned at {test_size} px for {summary['epochs_run']} epoch(s)"
    if before is not None:
        line += f"; top-1 at {test_size} px before {before['top1']:.2f}"
    if best is not None:
        line += f", after (best) {best:.2f}"
    print(f"{line}; checkpoint {summary.get('checkpoint')}; run folder {summary['output']}")
    return 0
