"""visionzoo eval: top-1/top-5, loss and per-class precision/recall/F1 of a model file on a validation split.

With few classes the per-class table is printed; --confusion writes the confusion matrix as CSV and PNG.
--tta flip|flip+crops also measures the logits averaged over test-time views, printed and written (--json "tta")
beside the plain numbers, which stay the model's own.
--calibrate fits a softmax temperature T on the split (temperature scaling), prints ECE, NLL and Brier before and
after it (--json "calibration"), draws the reliability diagram (--plot, else beside the model file) and stores T in
the checkpoint, after which predict, serve and export return calibrated probabilities; eval's own numbers stay
the model's (T changes no top-1).
The model file is a visionzoo checkpoint or anything `visionzoo export` / `quantize` wrote
(.onnx via onnxruntime, .pt2, .ts, .safetensors).
"""

from __future__ import annotations

import argparse

from ..config.limits import check_size
from ..core.errors import ConfigError
from ..core.files import write_json
from ..inference.defaults import CONFUSION_UNASKED_MAX
from .options import (
    DATA_FLAGS,
    TTA_HELP,
    add_config_flags,
    add_model_runtime_flags,
    add_model_source_flags,
    add_tta_flag,
    data_config,
    model_source,
    output_flag,
)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", description=__doc__)
    add_model_source_flags(p, several=True, file_help="visionzoo checkpoint (.pth) or exported file (.onnx, .pt2, "
                           ".ts, .safetensors); with --sizes, repeat it to compare files (e.g. before and after "
                           "finetune-res)")
    p.add_argument("--json", metavar="FILE",
                   help="write top1, top5, loss, num_images, per-class accuracy/precision/recall/F1 and the "
                   f"confusion matrix (up to {CONFUSION_UNASKED_MAX} classes, or with --confusion)")
    p.add_argument("--confusion", metavar="PREFIX",
                   help="write the confusion matrix to PREFIX.csv and a heatmap to PREFIX.png")
    p.add_argument("--sizes", metavar="S,S,...", type=_sizes,
                   help="test-resolution sweep: top-1 at each size (the file's crop ratio), table + --json/--plot")
    p.add_argument("--plot", metavar="FILE.png",
                   help="--sizes: top-1 against test size; --longtail: per-class accuracy against class size; "
                   "--calibrate: the reliability diagram (default: MODEL.reliability.png beside the model file)")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a softmax temperature on this split (LBFGS on NLL), report ECE (15 bins), NLL and Brier "
                   "before and after (--json \"calibration\"), draw the reliability diagram and store the "
                   "temperature in the checkpoint (rewritten atomically; other formats: reported, not stored), "
                   "so predict, serve and export return calibrated probabilities; top-1 never changes")
    p.add_argument("--tune-thresholds", action="store_true",
                   help="multi-label model: per-class score thresholds maximising F1 on this split (--json \"tuned\"), "
                   "stored in the checkpoint (rewritten atomically) for predict's label sets")
    add_tta_flag(p, TTA_HELP + "; reported beside the plain numbers (--json: \"tta\")")
    p.add_argument("--backend", default="eager", choices=["eager", "compile"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_model_runtime_flags(p)
    p.set_defaults(batch_size=128)
    add_config_flags(p, only=DATA_FLAGS - {"train_root"})
    lt = p.add_argument_group("long-tail / open-set (--longtail)")
    lt.add_argument("--longtail", action="store_true",
                    help="many/medium/few-shot accuracy by --train-list class sizes (default: the model's own)")
    lt.add_argument("--open-list", metavar="FILE", help="open-set images (label -1): adds the F-measure")
    lt.add_argument("--open-threshold", type=float, default=0.1, help="reject below this max softmax")
    lt.add_argument("--many", type=int, default=100, help="many-shot: more than this many training images")
    lt.add_argument("--few", type=int, default=20, help="few-shot: fewer than this many training images")
    lt.add_argument("--logit-adjust", type=float, default=0.0, metavar="TAU",
                    help="post-hoc logit adjustment: logits - TAU * log(train class prior) (1.0 is the usual)")
    p.set_defaults(func=run)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of sizes: {text!r}") from None
    if not sizes:
        raise argparse.ArgumentTypeError(f"not a comma list of sizes: {text!r}")
    try:
        return sorted({check_size(s, "") for s in sizes})  # the one size check of every command
    except ConfigError as e:
        raise argparse.ArgumentTypeError(f"sizes {e}") from None


# the per-class table is printed up to this many classes; beyond, it is in --json and --confusion
TABLE_MAX_CLASSES = 20


def run(args: argparse.Namespace) -> int:
    # heavy imports (torch, numpy) only once a command runs, so `visionzoo eval --help` stays quick
    from ..core.distributed import is_main_process
    from ..core.extras import require
    from ..inference.evaluate import evaluate
    from ..inference.reports import per_class_table, write_confusion

    source = model_source(args)
    sources = source if isinstance(source, list) else [source]
    if args.confusion and (args.sizes or args.longtail):
        raise ConfigError("--confusion is for a plain evaluation, not --sizes or --longtail")
    if args.tta and (args.sizes or args.longtail):
        raise ConfigError(f"--tta {args.tta} is for a plain evaluation, not --sizes or --longtail")
    if args.calibrate and (args.sizes or args.longtail):
        raise ConfigError("--calibrate is for a plain evaluation, not --sizes or --longtail")
    if args.plot or args.confusion:  # before a long evaluation, not after it
        require("matplotlib", "plots", "--plot" if args.plot else "--confusion")
    if args.sizes:
        return _run_sizes(args, sources)
    if len(sources) > 1:
        raise ConfigError("several --checkpoint files are compared only with --sizes")
    if args.longtail:
        return _run_longtail(args, sources[0])
    if args.plot and not args.calibrate:
        raise ConfigError("--plot draws a --sizes sweep, a --longtail evaluation or a --calibrate reliability diagram")
    # no data flags: evaluate on the validation split the model was trained with
    # the matrix is in --json unasked for a few classes only (inference.evaluate); --confusion asks for it
    result = evaluate(sources[0], data_config(args), args.batch_size, args.device, args.precision,
                      args.channels_last, args.progress, args.backend, args.raw_weights,
                      confusion=True if args.confusion else None, tta=args.tta, calibrate=args.calibrate,
                      tune_thresholds=args.tune_thresholds)
    if not is_main_process():  # under torchrun, rank 0 reports for all
        return 0
    print(summary_line(result))
    if "mAP" in result:  # multi-label: AP and F1 per class
        _print_multilabel(result)
    elif len(result["per_class"]) <= TABLE_MAX_CLASSES:
        print(per_class_table(_table_rows(result)))
    if args.calibrate:
        _report_calibration(args, result, sources[0])
    if args.confusion:
        for path in write_confusion(result["confusion_matrix"], [row["class"] for row in result["per_class"]],
                                    args.confusion):
            print(f"wrote {path}")
    if args.json:
        with output_flag("--json"):
            write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _report_calibration(args: argparse.Namespace, result: dict, source) -> None:
    """The calibration's line, where T went, and the reliability diagram (--plot, or MODEL.reliability.png)."""
    import importlib.util
    from pathlib import Path

    from ..inference.calibration import reliability_plot
    from ..inference.calibration import summary_line as calibration_line
    from ..inference.model_spec import source_label

    c = result["calibration"]
    print(calibration_line(c))
    print(f"stored T {c['temperature']:.4f} in {c['stored']}: predict, serve and export now return calibrated "
          "probabilities" if c["stored"] else f"T not stored: {c['not_stored']}")
    if args.plot:
        plot = Path(args.plot)
    elif isinstance(source, (str, Path)) and importlib.util.find_spec("matplotlib") is not None:
        plot = Path(source).with_suffix(".reliability.png")
    else:
        print("reliability diagram not drawn: give --plot FILE.png (needs pip install 'visionzoo[plots]')")
        return
    with output_flag("--plot"):
        reliability_plot(c, plot, f"{source_label(source)}: {c['num_images']} images")
    print(f"wrote {plot} (reliability diagram, before and after T)")


def _print_multilabel(result: dict) -> None:
    if len(result["per_class"]) <= TABLE_MAX_CLASSES:
        print(f"{'class':<24} {'AP':>7} {'F1':>7} {'positives':>9} {'threshold':>9}")
        for r in result["per_class"]:
            ap = "n/a" if r["ap"] is None else f"{r['ap']:.4f}"
            print(f"{r['class'][:24]:<24} {ap:>7} {r['f1']:>7.4f} {r['positives']:>9} {r['threshold']:>9.3f}")
    tuned = result.get("tuned")
    if tuned:
        where = f"stored in {tuned['stored']}" if tuned["stored"] else "not stored (not a checkpoint)"
        print(f"tuned thresholds: F1 micro {tuned['f1_micro']:.4f}, macro {tuned['f1_macro']:.4f} on this split; "
              f"{where}")


def summary_line(result: dict) -> str:
    """top-1 (and top-5 where it means something: with 5 classes or fewer every image is a top-5 hit), loss,
    image count; a multi-label model's mAP and F1 first."""
    if "mAP" in result:
        at = "tuned thresholds" if result.get("thresholds") == "tuned" else "threshold 0.5"
        return (f"mAP {result['mAP']:.4f}  F1 micro {result['f1_micro']:.4f}  macro {result['f1_macro']:.4f} "
                f"({at})  top-1 {result['top1']:.2f}  images {result['num_images']}")
    top5 = f"  top-5 {result['top5']:.2f}" if len(result["per_class"]) > 5 else ""
    skipped = f"  skipped {result['skipped_images']}" if result["skipped_images"] else ""
    ema = "  (EMA weights)" if result["weights"] == "ema" else ""
    baked = f"  ({result['built_in_tta']} TTA built into the file)" if result.get("built_in_tta") else ""
    line = (f"top-1 {result['top1']:.2f}{top5}  loss {result['loss']:.4f}  images {result['num_images']}"
            f"{skipped}{ema}{baked}")
    tta = result.get("tta")
    if tta:  # beside the plain numbers, on the same line: the two read against each other
        tta5 = f"  top-5 {tta['top5']:.2f}" if top5 else ""
        line += f"  |  TTA {tta['mode']} ({tta['views']} views): top-1 {tta['top1']:.2f}{tta5}  loss {tta['loss']:.4f}"
    return line


def _table_rows(result: dict) -> list[dict]:
    """per_class rows as per_class_table wants them (support is the number of true images of the class)."""
    return [{"class": r["class"], "support": r["total"], "accuracy": r["top1"], "precision": r["precision"],
             "recall": r["recall"], "f1": r["f1"]} for r in result["per_class"]]


def _run_sizes(args: argparse.Namespace, sources: list) -> int:
    from ..core.distributed import is_main_process
    from ..fixres import evaluate_sizes, plot_sizes, sizes_table

    if args.longtail:
        raise ConfigError("--sizes and --longtail are separate evaluations: run them one at a time")
    data = data_config(args)
    if data is not None and data.img_size is not None:
        raise ConfigError("--img-size/--test-size and --sizes both set the test size: give --sizes only")
    r = evaluate_sizes(sources, args.sizes, data, args.batch_size, args.device, args.precision,
                       args.progress, args.backend, args.channels_last)
    if not is_main_process():
        return 0
    print(sizes_table(r))
    for m in r["models"]:
        print(f"{m['checkpoint']}: best {m['best_top1']:.2f} at {m['best_size']} px "
              f"({m['num_images']} images, crop ratio {m['crop_pct']})")
    return _write(args, r, plot_sizes)


def _run_longtail(args: argparse.Namespace, source) -> int:
    from ..config import TrainConfig, apply_overrides
    from ..core.distributed import is_main_process
    from ..inference.eval_data import resolve_data
    from ..inference.runtime import load_runner
    from ..longtail.evaluate import evaluate_longtail, plot_per_class
    from .options import cli_overrides, nest

    # the flags given refine the data the model was trained with (its train list gives the shot groups)
    info = load_runner(source).info
    base = resolve_data(info, None, source) if (info.extra.get("data") or {}).get("data") else TrainConfig().data
    data = apply_overrides(TrainConfig(data=base), nest(cli_overrides(args)), "command line").data
    if not data.train_list:
        raise ConfigError("--longtail needs --train-list (the training list whose class sizes define the shot groups)")
    r = evaluate_longtail(source, data.train_list, data, args.open_list, args.open_threshold, args.many,
                          args.few, args.batch_size, args.device, args.precision, args.logit_adjust)
    if not is_main_process():  # under torchrun, rank 0 reports for all
        return 0

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    print(f"top-1 {r['top1']:.2f}  many {fmt(r['many_shot'])} ({r['many_classes']} cl)  "
          f"medium {fmt(r['medium_shot'])} ({r['medium_classes']} cl)  few {fmt(r['few_shot'])} ({r['few_classes']} cl)"
          f"  images {r['num_images']}")
    if "open_set" in r:
        o = r["open_set"]
        print(f"open-set F-measure {o['f_measure']:.2f} (precision {o['precision']:.2f}, recall {o['recall']:.2f}, "
              f"threshold {o['threshold']}, {r['open_images']} open images)")
    return _write(args, r, plot_per_class)


def _write(args: argparse.Namespace, result: dict, plot) -> int:
    """--json and --plot outputs of a sweep or long-tail evaluation."""
    if args.json:
        with output_flag("--json"):
            write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0
