"""visionzoo quantize: post-training static quantisation calibrated on N batches.

A checkpoint becomes an int8 torch.export program (.pt2) through PyTorch's PT2E flow with the x86
inductor quantizer; run it with `--backend compile` for int8 kernels. An ONNX file becomes a QDQ
ONNX file through ONNX Runtime (int8, or --dtype int16 as the seed's int16 mode). Afterwards the
quantised and the original model are evaluated on the same validation split (skip: --no-eval).
"""

from __future__ import annotations

import argparse

from ..core.files import write_json
from .options import add_config_flags, add_model_source_flags, data_config, model_source


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="int8/int16 post-training quantisation", description=__doc__)
    add_model_source_flags(p, file_help="visionzoo checkpoint (.pth/.safetensors) or .onnx file")
    p.add_argument("--output", required=True, metavar="FILE", help="*.pt2 for checkpoints, *.onnx for ONNX")
    p.add_argument("--calib-batches", type=int, default=10, help="calibration batches (the seed's quant_batch_num)")
    p.add_argument("--calib-split", default="train", choices=["train", "val"])
    p.add_argument("--batch-size", "-b", type=int, default=32)
    p.add_argument("--dtype", default="int8", choices=["int8", "int16"])
    p.add_argument("--no-eval", dest="eval", action="store_false", help="skip the fp32 vs quantised evaluation")
    p.add_argument("--json", metavar="FILE", help="write the report")
    add_config_flags(p, only={"data", "train_list", "train_root", "val_list", "val_root", "dummy", "workers"})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.eval_data import resolve_data
    from ..inference.evaluate import evaluate
    from ..inference.quantize import quantize, quiet_libraries
    from ..inference.runtime import detect_format, load_module, onnx_info

    source = model_source(args)
    # only the metadata is needed here (where the data is); quantize() loads the model itself
    onnx = isinstance(source, str) and detect_format(source) == "onnx"
    info = onnx_info(source) if onnx else load_module(source, args.raw_weights)[1]
    data = resolve_data(info, data_config(args))
    # torch/torchao/onnxruntime notes about their internals are not the user's business; errors still show
    with quiet_libraries():
        report = quantize(source, data, args.output, args.calib_batches, args.batch_size, args.dtype,
                          args.calib_split, args.raw_weights)
    print(f"wrote {report['output']} ({report['dtype']}, {report['method']}, "
          f"{report['calib_images']} calibration images in {report['calib_batches']} batches, {report['seconds']} s)")
    if args.eval:
        # the int8 program is measured as deployed: through inductor's int8 kernels
        runs = (("original", source, "eager"),
                ("quantized", args.output, "compile" if args.output.endswith(".pt2") else "eager"))
        for key, path, backend in runs:
            with quiet_libraries():  # inductor's int8 compile logs about CUDA and its caches
                r = evaluate(path, data, args.batch_size, "cpu", progress=False, backend=backend,
                             raw_weights=args.raw_weights)
            report[key] = {"top1": r["top1"], "top5": r["top5"], "num_images": r["num_images"]}
        o, q = report["original"], report["quantized"]
        report["top1_drop"] = o["top1"] - q["top1"]
        print(f"top-1 original {o['top1']:.2f}  {args.dtype} {q['top1']:.2f}  ({top1_change(report['top1_drop'])} "
              f"on {q['num_images']} images)")
    if args.json:
        write_json(args.json, report)
    return 0


def top1_change(drop: float) -> str:
    """A drop in top-1 as a person says it: "drop 1.20 points", "gain 0.85 points" (not "drop -0.85")."""
    if drop > 0:
        return f"drop {drop:.2f} points"
    return f"gain {-drop:.2f} points" if drop < 0 else "no change"
