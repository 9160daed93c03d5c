"""visionzoo predict: top-k classes with probabilities for image files (the seeds' online demo).

A folder stands for every image under it (recursively, sorted by path), each answered on its own line.

Any decodable JPEG/PNG/WebP/BMP/TIFF works (grayscale, CMYK, palette and alpha are converted to
RGB). A file that is not an image, is truncated or is too large to decode safely gets a one-line
error naming it; the other files still get their answer. Exit status 1 when some file failed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from ..core.errors import ConfigError
from ..core.files import write_json
from ..inference.defaults import PREDICT_BATCH_SIZE
from .options import (
    TTA_HELP,
    add_model_runtime_flags,
    add_model_source_flags,
    add_tta_flag,
    model_source,
    output_flag,
    size_arg,
)


def add_parser(sub) -> None:
    p = sub.add_parser("predict", description=__doc__)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, or folders: every image under them (recursively, sorted by path)")
    add_model_source_flags(p)
    p.add_argument("--topk", "-k", type=int, default=5)
    p.add_argument("--json", metavar="FILE", help="write the predictions (and errors) as JSON")
    p.add_argument("--img-size", type=size_arg, help="override the model's evaluation size")
    p.add_argument("--decode", choices=["pil", "fast"], default=None,
                   help="pil (default): the reference pixels (Pillow, torchvision's Resize + CenterCrop), as eval; "
                        "fast: JPEGs decoded at a reduced DCT scale where the output size allows")
    p.add_argument("--thresholds", metavar="FILE",
                   help="multi-label model: per-class thresholds, 'class threshold' lines (eval --tune-thresholds "
                        "writes CHECKPOINT.thresholds.txt) [default: the model's own, else 0.5]")
    add_tta_flag(p, TTA_HELP + "; the probabilities are the softmax of the averaged logits")
    add_model_runtime_flags(p)
    p.set_defaults(batch_size=PREDICT_BATCH_SIZE, func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.model_info import with_preprocessing
    from ..inference.predict import predict_files
    from ..inference.runtime import load_runner

    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1 (got {args.topk})")
    source = model_source(args)
    runner = load_runner(source, args.device, args.precision, raw_weights=args.raw_weights)
    runner.info = with_preprocessing(runner.info, args.img_size)
    if args.thresholds:
        from ..inference.predict import is_multilabel, read_thresholds

        if not is_multilabel(runner.info):
            raise ConfigError("--thresholds is for a multi-label model (its label sets); this one is single-label")
        names = [runner.info.class_name(i) for i in range(runner.info.num_classes)]
        runner.info.extra["thresholds"] = read_thresholds(args.thresholds, names)
    results = predict_files(runner, args.images, args.topk, args.batch_size, args.decode, args.tta)
    for r in results:
        if r.error:
            print(f"visionzoo predict: error: {r.error}", file=sys.stderr)
        elif r.labels is not None:  # a multi-label model: the label set, then the top scores
            chosen = ", ".join(t["class"] for t in r.labels) or "(no label)"
            print(f"{r.file}: [{chosen}] " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r.top))
        else:
            print(f"{r.file}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r.top))
    if args.json:
        with output_flag("--json"):
            write_json(args.json, {"model": runner.info.model_name,
                                   "checkpoint": runner.info.extra.get("weights", source),
                                   "weights": runner.info.extra.get("weights_used", "raw"), "tta": args.tta,
                                   "predictions": [_as_json(r) for r in results]})
        print(f"wrote {args.json}")
    return 1 if any(r.error for r in results) else 0


def _as_json(r) -> dict:
    """A prediction as --json writes it: `labels` only for a multi-label model's."""
    return {k: v for k, v in asdict(r).items() if v is not None or k != "labels"}
