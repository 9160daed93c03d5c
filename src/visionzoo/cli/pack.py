"""visionzoo pack: WebDataset tar shards of an ImageFolder or of list-file splits (--list SPLIT=FILE, e.g.
ImageNet-LT), with a sidecar index for fast random access (see visionzoo.data.packed).

Each sample is KEY.jpg + KEY.cls; images are re-encoded as JPEG with their longer side capped at --max-size (RGB and
grayscale JPEGs already within it are copied byte for byte). OUT holds <split>-NNNNNN.tar, <split>.index.npz,
classes.json and pack.json. Train and eval read the pack directly (`--data OUT`), or stream its shards
(`--train-urls 'URL/train-{000000..000009}.tar'`, `--data URL`); the webdataset library reads them too.
A pack in visionzoo's older format given as --data is converted (images copied as they are).
Packing runs in --workers processes.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("pack", description=__doc__)
    p.add_argument("--data", required=True, help="ImageFolder root with train/<class>/ and/or val/<class>/ "
                   "(or builtin:digits), or the folder a --list's paths start from")
    p.add_argument("--list", dest="lists", action="append", default=[], metavar="SPLIT=FILE",
                   help="pack SPLIT from a 'relative/path label' list (repeat: --list train=A.txt --list val=B.txt)")
    p.add_argument("--output", required=True)
    p.add_argument("--max-size", type=int, default=256, help="cap on the longer side, px")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images")
    p.add_argument("--shard-mb", type=int, default=256, help="shard file size, MiB")
    p.add_argument("--shard-images", type=int, default=None, metavar="N",
                   help="at most N images per shard (more, smaller shards share an epoch more evenly when streamed)")
    p.add_argument("--workers", "-j", type=int, default=2)
    p.add_argument("--skip-bad-images", action="store_true", help="leave undecodable images out (counted)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import ConfigError
    from ..data.packed import pack

    lists = {}
    for item in args.lists:
        split, sep, path = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--list {item!r}: expected SPLIT=FILE, e.g. --list train=ImageNet_LT_train.txt")
        lists[split] = path
    m = pack(args.data, args.output, args.max_size, args.quality, args.shard_mb * 2**20, args.workers,
             args.skip_bad_images, args.progress, lists, args.shard_images)
    for split in m["splits"]:
        s = m[split]
        print(f"{split}: {s['images']} images in {s['shards']} shard(s), {s['bytes'] / 2**20:.1f} MiB"
              + (f", {s['skipped']} undecodable left out" if s["skipped"] else ""))
    source = f"converted from {m['converted_from']}" if "converted_from" in m else f"longer side <= {m['max_size']} px"
    print(f"wrote {args.output} ({m['classes']} classes, {source}); "
          f"use it as --data {args.output}")
    return 0
