"""visionzoo eval: top-1/top-5, loss and per-class accuracy of a checkpoint on a validation split."""

from __future__ import annotations

import argparse
import os

from ..config import DataConfig, apply_overrides
from ..engine.runlog import write_json
from .options import add_config_flags, cli_overrides, nest

DATA_FLAGS = {"data", "val_list", "val_root", "img_size", "crop_pct", "interpolation", "workers", "skip_bad_images"}


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="visionzoo checkpoint (last.pth / best.pth)")
    p.add_argument("--json", metavar="FILE", help="write top1, top5, loss, num_images and per-class accuracy")
    p.add_argument("--batch-size", "-b", type=int, default=128)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", choices=["fp16", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_config_flags(p, only=DATA_FLAGS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import TrainConfig
    from ..engine.evaluate import evaluate

    overrides = cli_overrides(args)
    # no data flags: evaluate on the validation split the checkpoint was trained with
    data: DataConfig | None = apply_overrides(TrainConfig(), nest(overrides), "command line").data if overrides else None
    result = evaluate(args.checkpoint, data, args.batch_size, args.device, args.amp, args.channels_last, args.progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports for all
        return 0
    print(f"top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  loss {result['loss']:.4f}  "
          f"images {result['num_images']}" + (f"  skipped {result['skipped_images']}" if result["skipped_images"] else ""))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
