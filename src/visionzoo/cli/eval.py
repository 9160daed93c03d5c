"""visionzoo eval: top-1/top-5, loss and per-class accuracy of a model file on a validation split.

The model file is a visionzoo checkpoint or anything `visionzoo export` / `quantize` wrote
(.onnx via onnxruntime, .pt2, .ts, .safetensors).
"""

from __future__ import annotations

import argparse
import os

from ..engine.runlog import write_json
from .options import DATA_FLAGS, add_config_flags, add_model_runtime_flags, data_config


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint or exported model", description=__doc__)
    p.add_argument("--checkpoint", "--model-file", dest="checkpoint", required=True,
                   help="checkpoint (.pth) or exported file (.onnx, .pt2, .ts, .safetensors)")
    p.add_argument("--json", metavar="FILE", help="write top1, top5, loss, num_images and per-class accuracy")
    p.add_argument("--backend", default="eager", choices=["eager", "compile"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_model_runtime_flags(p)
    p.set_defaults(batch_size=128)
    add_config_flags(p, only=DATA_FLAGS - {"train_list", "train_root"})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.evaluate import evaluate

    # no data flags: evaluate on the validation split the model was trained with
    result = evaluate(args.checkpoint, data_config(args), args.batch_size, args.device, args.precision,
                      args.channels_last, args.progress, args.backend)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports for all
        return 0
    print(f"top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  loss {result['loss']:.4f}  "
          f"images {result['num_images']}" + (f"  skipped {result['skipped_images']}" if result["skipped_images"] else ""))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
