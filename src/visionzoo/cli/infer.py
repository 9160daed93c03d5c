"""visionzoo infer: run a model file over `visionzoo preprocess` output; one .npy logits file per image."""

from __future__ import annotations

import argparse

from .options import add_model_runtime_flags


def add_parser(sub) -> None:
    p = sub.add_parser("infer", description=__doc__)
    p.add_argument("--model", "--checkpoint", dest="model", required=True, metavar="FILE",
                   help="exported file (.onnx, .pt2, .ts, .safetensors) or checkpoint")
    p.add_argument("--input", required=True, metavar="PREP")
    p.add_argument("--output", required=True, metavar="DUMP")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_model_runtime_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.offline import infer
    from ..inference.runtime import load_runner

    r = infer(load_runner(args.model, args.device, args.precision), args.input, args.output, args.batch_size,
              args.progress)
    print(f"wrote {r['images']} logits files to {r['output']} ({r['model_images_per_s']} images/s in the model)")
    return 0
