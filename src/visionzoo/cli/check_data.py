"""visionzoo check-data: find what is wrong with a data set before it costs a training run.

Reads DATA as training reads it (class folders, list files, a pack, a Hugging Face dataset, builtin:NAME; not
streamed shards) and reports: unreadable, truncated, zero-byte, non-image and decompression-bomb files; odd images
(CMYK, 16-bit, palette, alpha, EXIF-rotated, grayscale) with what the loader does with each; exact duplicates (the
same decoded pixels) and near duplicates (perceptual hash) within and across splits, the train/val leakage first;
the same image under two labels; with a model, the images whose label it doubts most (confident learning); class
balance, image sizes, aspect ratios, tiny images. The data is only read, never written.
--report DIR writes report.json and report.html (thumbnails of every duplicate pair and suspect); --fix DIR writes
cleaned list files and excluded.csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import ConfigError
from .options import add_config_flags, add_model_source_flags, count_arg, output_flag

# the data flags check-data takes besides DATA (where the splits are, and how a dataset names its columns)
CHECK_DATA_FLAGS = {"train_list", "val_list", "train_root", "val_root", "val_split", "image_column", "label_column",
                    "task", "workers"}


def add_parser(sub) -> None:
    p = sub.add_parser("check-data", description=__doc__)
    p.add_argument("data", nargs="?", metavar="DATA",
                   help="the data set: a folder with train/ and val/ (or one class-folder tree), a list-file root, "
                        "a pack, a Hugging Face dataset folder or hf:NAME, builtin:NAME")
    p.add_argument("--val", metavar="PATH", help="the validation split elsewhere: a class-folder tree or a list file")
    p.add_argument("--report", metavar="DIR", help="write DIR/report.json and DIR/report.html (outside DATA)")
    p.add_argument("--json", metavar="FILE", help="write report.json's content to FILE")
    p.add_argument("--fix", metavar="DIR", help="write cleaned list files (train.txt, val.txt, classes.txt) and "
                                                "excluded.csv with why each left file was left (outside DATA)")
    p.add_argument("--min-side", type=count_arg, default=32, metavar="PX", help="a side below this: a tiny image")
    p.add_argument("--phash-threshold", type=int, default=None, metavar="BITS",
                   help="near duplicates: phash bits (of 64) that may differ [default: 22, with the DCT cosine "
                        "check of docs/check_data.md]")
    p.add_argument("--near-cosine", type=float, metavar="C",
                   help="with a model: pairs whose embeddings have cosine >= C are near duplicates too (e.g. 0.97)")
    p.add_argument("--max-suspects", type=count_arg, default=200, metavar="N", help="label suspects listed")
    add_model_source_flags(p, file_help="a visionzoo checkpoint (or exported file) trained on these classes: its "
                                        "probabilities rank the label suspects; --model NAME --weights FILE "
                                        "instead: cross-validated linear probes on its embeddings")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (the model's batches)")
    p.add_argument("--batch-size", "-b", type=count_arg, default=64, help="the model's batch size")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_config_flags(p, only=CHECK_DATA_FLAGS)
    p.set_defaults(func=run)


def data_settings(args: argparse.Namespace):
    """The DataConfig of DATA, --val and the data flags."""
    from ..config import TrainConfig, apply_overrides
    from ..config import check_data as check_settings
    from .options import cli_overrides, nest

    flat = dict(cli_overrides(args))
    if args.data:
        flat["data.data"] = args.data
    if args.val:
        val = Path(args.val)
        if not val.exists():
            raise ConfigError(f"--val {args.val}: no such file or folder")
        flat["data.val_root" if val.is_dir() else "data.val_list"] = args.val
    if not (args.data or flat.get("data.train_list") or flat.get("data.train_root")):
        raise ConfigError("give DATA (a folder, pack or dataset), or --train-list / --train-root")
    return check_settings(apply_overrides(TrainConfig(), nest(flat), "command line").data)


def _model(args: argparse.Namespace):
    from .options import model_source

    named = args.checkpoint or args.model or args.weights or args.pretrained or args.classes or args.num_classes
    return model_source(args) if named else None


def _refuse_inside(args: argparse.Namespace, root: Path) -> None:
    from ..checkdata.report import inside

    for flag in ("report", "fix", "json"):
        value = getattr(args, flag)
        if value and root.is_dir() and inside(Path(value).parent if flag == "json" else value, root):
            raise ConfigError(f"--{flag} {value} is inside the data folder {root}: write it elsewhere (check-data "
                              "never changes the data)")


def run(args: argparse.Namespace) -> int:
    from ..checkdata import CheckOptions, check_data
    from ..checkdata.duplicates import PHASH_THRESHOLD
    from ..checkdata.report import build_report, summary_lines, write_report
    from ..core.files import write_json

    if args.near_cosine is not None and not 0 < args.near_cosine <= 1:
        raise ConfigError(f"--near-cosine {args.near_cosine}: a cosine in (0, 1]")
    if args.phash_threshold is not None and not 0 <= args.phash_threshold <= 64:
        raise ConfigError(f"--phash-threshold {args.phash_threshold}: bits of a 64-bit hash, 0..64")
    cfg = data_settings(args)
    if args.data and Path(args.data).is_dir():
        _refuse_inside(args, Path(args.data))
    model = _model(args)
    if args.near_cosine is not None and model is None:
        raise ConfigError("--near-cosine compares a model's embeddings: give --checkpoint or --model/--weights")
    options = CheckOptions(workers=cfg.workers, progress=args.progress, model=model, device=args.device,
                           batch_size=args.batch_size, min_side=args.min_side,
                           phash_threshold=PHASH_THRESHOLD if args.phash_threshold is None else args.phash_threshold,
                           near_cosine=args.near_cosine, max_suspects=args.max_suspects)
    found = check_data(cfg, options)
    report = build_report(found)
    print("\n".join(summary_lines(report)))
    if args.json:
        with output_flag("--json"):
            write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.report:
        with output_flag("--report"):
            paths = write_report(found, report, args.report)
        print(f"wrote {', '.join(map(str, paths))}")
    if args.fix:
        _fix(found, args, cfg)
    return 0


def _fix(found, args: argparse.Namespace, cfg) -> None:
    from ..checkdata.fix import write_fix

    with output_flag("--fix"):
        summary = write_fix(found, args.fix)
    kept = ", ".join(f"{name} {s['kept']} of {s['of']}" for name, s in summary["lists"].items())
    print(f"wrote {args.fix}/excluded.csv ({summary['excluded']} excluded)" + (f"; kept {kept}" if kept else ""))
    if summary["lists"]:
        lists = " ".join(f"--{name}-list {Path(s['file']).resolve()}" for name, s in summary["lists"].items())
        print(f"train on it: visionzoo train --data {Path(found.data.root).resolve()} {lists} ...")
    elif summary["note"]:
        print(f"note: {summary['note']}")
