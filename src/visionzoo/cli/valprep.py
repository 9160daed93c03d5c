"""visionzoo valprep: rearrange a flat validation folder into class folders using its label file.

The label file has `FILE LABEL` lines (e.g. `ILSVRC2012_val_00000001.JPEG 65`). Folder names come
from --class-names (one per line, label order), --train-dir (its sorted class folders, i.e. the
training labels), or zero-padded label numbers.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("valprep", description=__doc__)
    p.add_argument("--val-dir", required=True)
    p.add_argument("--labels", required=True, help="label file: FILE LABEL per line")
    p.add_argument("--output", required=True)
    names = p.add_mutually_exclusive_group()
    names.add_argument("--class-names", metavar="FILE")
    names.add_argument("--train-dir", metavar="DIR")
    p.add_argument("--method", choices=["copy", "symlink", "move"], default="copy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.valprep import rearrange_val

    counts = rearrange_val(args.val_dir, args.labels, args.output, args.class_names, args.train_dir, args.method)
    print(f"{sum(counts.values())} images into {len(counts)} class folders under {args.output}")
    return 0
