"""visionzoo quantize: post-training static quantisation calibrated on N batches.

A checkpoint (or --model NAME --weights FILE) becomes an int8 torch.export program (.pt2) through PyTorch's
PT2E flow with the x86 inductor quantizer; run it with `--backend compile` for int8 kernels. An ONNX file
becomes a QDQ ONNX file through ONNX Runtime (int8, or --dtype int16 as the seed's int16 mode).

Calibration needs images, not labels: --calib-data DIR takes any folder of images (any depth, any file
names), else --calib-split of --data (its class folders need not be the model's). Afterwards the quantised
and the original model are compared (skip: --no-eval): top-1 on the validation split of --data or of the
model's own data set, or without one, how often their top-1 agrees on the calibration images.
"""

from __future__ import annotations

import argparse

from ..core.files import write_json
from .options import add_config_flags, add_model_source_flags, count_arg, data_config, model_source


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", description=__doc__)
    add_model_source_flags(p, file_help="visionzoo checkpoint (.pth/.safetensors) or .onnx file")
    p.add_argument("--output", required=True, metavar="FILE", help="*.pt2 for checkpoints, *.onnx for ONNX")
    p.add_argument("--calib-data", metavar="DIR",
                   help="calibrate on the images under DIR: any folder, any depth, any file names, no labels "
                        "(default: --calib-split of --data)")
    p.add_argument("--calib-batches", type=count_arg, default=10,
                   help="calibration batches (the seed's quant_batch_num)")
    p.add_argument("--calib-split", default="train", choices=["train", "val"])
    p.add_argument("--batch-size", "-b", type=count_arg, default=32)
    p.add_argument("--dtype", default="int8", choices=["int8", "int16"])
    p.add_argument("--no-eval", dest="eval", action="store_false", help="skip the original vs quantised comparison")
    p.add_argument("--json", metavar="FILE", help="write the report")
    add_config_flags(p, only={"data", "train_list", "train_root", "val_list", "val_root", "val_split", "dummy",
                              "workers"})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.quantize import quantize

    report = quantize(model_source(args), data_config(args), args.output, args.calib_batches, args.batch_size,
                      args.dtype, args.calib_split, args.raw_weights, calib_data=args.calib_data, compare=args.eval)
    print(f"wrote {report['output']} ({report['dtype']}, {report['method']}, "
          f"{report['calib_images']} calibration images in {report['calib_batches']} batches, {report['seconds']} s)")
    if "original" in report:
        o, q = report["original"], report["quantized"]
        print(f"top-1 original {o['top1']:.2f}  {args.dtype} {q['top1']:.2f}  ({top1_change(report['top1_drop'])} "
              f"on {q['num_images']} images)")
    elif "agreement" in report:
        print(agreement_line(report["agreement"], args.dtype))
    if args.json:
        write_json(args.json, report)
    return 0


def top1_change(drop: float) -> str:
    """A drop in top-1 as a person says it: "drop 1.20 points", "gain 0.85 points" (not "drop -0.85")."""
    if drop > 0:
        return f"drop {drop:.2f} points"
    return f"gain {-drop:.2f} points" if drop < 0 else "no change"


def agreement_line(a: dict, dtype: str) -> str:
    """The label-free comparison in one line: how often the quantised top-1 is the original's."""
    line = (f"{dtype} top-1 = original top-1 on {a['top1_agreement']:.1f}% of {a['images']} calibration images "
            "(no labels to score top-1: pass --data DIR)")
    if a["confident_images"]:
        line += (f"; {a['confident_agreement']:.1f}% of the {a['confident_images']} where the original's top "
                 f"probability is above {a['confidence']:g}")
    return line
