"""visionzoo make-lt: an ImageNet-LT style long-tailed benchmark (with an open set) from any ImageFolder.

Writes train/val/test/open list files, classes.txt and make_lt.json (settings, class sizes,
imbalance ratio); see visionzoo.longtail.make_lt for how the sizes and splits are drawn.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("make-lt", description=__doc__)
    p.add_argument("--data", required=True, help="ImageFolder root with train/<class>/ (and val/<class>/)")
    p.add_argument("--output", required=True)
    p.add_argument("--alpha", type=float, default=6.0, help="Pareto shape (ImageNet-LT: 6)")
    p.add_argument("--open-classes", type=int, default=0, help="classes held out as the open set")
    p.add_argument("--max-per-class", type=int, help="largest class (default: as many as the data allows)")
    p.add_argument("--min-per-class", type=int, default=2)
    p.add_argument("--val-per-class", type=int, default=20, help="balanced val images per class, from train/")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..longtail.make_lt import make_lt

    s = make_lt(args.data, args.output, args.alpha, args.open_classes, args.max_per_class, args.min_per_class,
                args.val_per_class, args.seed)
    print(f"{s['known_classes']} known classes: {s['train_images']} train images ({s['max_per_class']} to "
          f"{s['min_per_class']} per class, imbalance {s['imbalance']:.1f}), {s['val_images']} val, "
          f"{s['test_images']} test; {len(s['open_classes'])} open classes, {s['open_images']} open images\n"
          f"wrote {args.output}/{{train,val,test,open}}.txt, classes.txt, make_lt.json\n"
          f"next: {s['usage']}")
    return 0
