"""An ImageNet-like JPEG folder for pipeline benchmarks: 500x375 quality-90 JPEGs of real photographs.

The pixels come from scikit-learn's two sample photographs (random crops, scales, flips and colour
shifts), so decode and resize costs are those of ImageNet-size camera JPEGs; the labels mean nothing.
python tools/make_jpeg_set.py OUT [--train 1000] [--val 200] [--classes 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(args.seed)
    for split, n in (("train", args.train), ("val", args.val)):
        for i in range(n):
            src = photos[i % len(photos)]
            w, h = src.size
            cw = int(rng.uniform(0.5, 1.0) * w)
            ch = min(h, int(cw * 0.75))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = src.crop((x, y, x + cw, y + ch)).resize((500, 375), Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.6, 1.4)))
            d = Path(args.out) / split / f"c{i % args.classes:02d}"
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / f"{split}_{i:05d}.jpg", quality=90)
    print(f"wrote {args.train} train and {args.val} val JPEGs (500x375, q90) in {args.classes} classes "
          f"under {args.out}")


if __name__ == "__main__":
    main()
