"""visionzoo metric: top-1..top-5 accuracy of dumped logits (like the seed's vision_metric_ImageNet.py).

--labels is the info.tsv that `visionzoo preprocess` wrote, or `FILE LABEL` lines; dumps are
matched to labels by their path without suffix (.npy, raw float32 .bin or whitespace .txt).
"""

from __future__ import annotations

import argparse

from ..core.files import write_json


def add_parser(sub) -> None:
    p = sub.add_parser("metric", description=__doc__)
    p.add_argument("--pred", required=True, metavar="DUMP")
    p.add_argument("--labels", required=True, metavar="FILE")
    p.add_argument("--output", metavar="RESULT.json")
    p.add_argument("--topk", type=int, default=5)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.offline import metric

    r = metric(args.pred, args.labels, args.topk)
    print("  ".join(f"top-{k} {r[f'top{k}']:.2f}" for k in range(1, args.topk + 1)) + f"  images {r['num_images']}"
          + (f"  missing {r['missing']}" if r["missing"] else ""))
    if args.output:
        write_json(args.output, r)
        print(f"wrote {args.output}")
    return 0
