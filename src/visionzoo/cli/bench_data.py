"""visionzoo bench-data: images/s of the input pipeline alone (decode, augment, collate, to the device).

--baseline also runs torchvision's ImageFolder + transforms.v2 + PIL pipeline with the same output size,
workers and batch size, and prints the ratio. --decode pil measures visionzoo without its fused decoder.
"""

from __future__ import annotations

import argparse

from ..core.files import write_json
from .options import add_config_flags, count_arg, flags_config


def add_parser(sub) -> None:
    p = sub.add_parser("bench-data", description=__doc__)
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--batch-size", "-b", type=count_arg, default=64)
    p.add_argument("--batches", type=int, default=50, help="timed batches")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first (worker start-up)")
    p.add_argument("--baseline", action="store_true", help="also time torchvision's pipeline; print the ratio")
    p.add_argument("--baseline-data", metavar="DIR",
                   help="the ImageFolder the baseline reads (default --data; give it when --data is a pack)")
    p.add_argument("--device", default="cpu", help="where batches are delivered: cpu | cuda | cuda:N")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="time visionzoo's uint8 batches as delivered, without the normalisation on the device")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_config_flags(p, only={"data", "img_size", "crop_pct", "workers", "decode", "scale", "ratio", "hflip",
                              "interpolation", "worker_nice", "auto_augment", "ra_magnitude", "ra_ops",
                              "augmix_severity", "random_erase"})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config.limits import check_batch_memory
    from ..core.errors import ConfigError
    from ..data.pipeline_bench import bench_data
    from ..models.registry import ModelCfg

    full = flags_config(args)
    cfg = full.data
    if not cfg.data:
        raise ConfigError("bench-data needs --data DIR (an ImageFolder with train/ and val/)")
    if args.batches < 1 or args.warmup < 0 or args.batch_size < 1:
        raise ConfigError("--batches and --batch-size must be >= 1, --warmup >= 0")
    # the batches are float on the device (normalised): an absurd size x batch is refused before the workers start
    check_batch_memory(args.batch_size, cfg.img_size or ModelCfg.input_size, "--batch-size and --img-size")
    r = bench_data(cfg, args.split, args.batch_size, args.batches, args.warmup, args.device, args.baseline,
                   args.progress, args.baseline_data, args.normalize, full.aug)
    what = "normalised" if args.normalize else "uint8"
    line = (f"{r['split']} {r['img_size']} px, batch {r['batch_size']}, {r['workers']} workers, to {r['device']}: "
            f"visionzoo ({r['decode']} decode, {what}) {r['visionzoo']['images_per_sec']:.1f} images/s")
    if "ratio" in r:
        line += f"; torchvision {r['torchvision']['images_per_sec']:.1f} images/s; ratio {r['ratio']:.2f}x"
    print(line)
    if args.json:
        write_json(args.json, r)
        print(f"wrote {args.json}")
    return 0
