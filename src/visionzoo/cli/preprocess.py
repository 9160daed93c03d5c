"""visionzoo preprocess: write each image of a split, preprocessed exactly as eval does, to a .bin file.

Each file is float32 CHW, normalised, little-endian, no header; OUTPUT/info.tsv lists file, label,
shape and source; OUTPUT/preprocess.json records the preprocessing. The preprocessing is the
model's when --checkpoint is given, else ImageNet's (mean/std, crop 0.875, bilinear).
"""

from __future__ import annotations

import argparse

from .options import add_config_flags, count_arg, data_config


def add_parser(sub) -> None:
    p = sub.add_parser("preprocess", description=__doc__)
    p.add_argument("--output", required=True, metavar="PREP")
    p.add_argument("--checkpoint", help="take preprocessing and class names from this model file")
    p.add_argument("--split", default="val", choices=["val", "train"])
    p.add_argument("--batch-size", "-b", type=count_arg, default=64)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_config_flags(p, only={"data", "val_list", "val_root", "train_list", "train_root", "img_size", "crop_pct",
                              "interpolation", "workers"})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import DataConfig
    from ..inference.model_info import ModelInfo
    from ..inference.offline import preprocess
    from ..inference.runtime import load_runner
    from ..models.registry import ModelCfg

    data = data_config(args) or DataConfig()
    if args.checkpoint:
        info = load_runner(args.checkpoint).info
    else:
        d = ModelCfg()
        info = ModelInfo("none", 0, d.input_size, d.crop_pct, d.interpolation, tuple(d.mean), tuple(d.std))
    r = preprocess(info, data, args.output, args.split, args.batch_size, args.progress)
    print(f"wrote {r['images']} files to {r['output']} (list: {r['info']})")
    return 0
