"""A multi-label data set of real photos, offline: each image is a 2x2 mosaic of tiles cut from 2 or 3 different
scikit-image sample photos, and its labels are the photos present (visionzoo's multi-label CSV layout).

Training tiles come from the left 60% of each photo and validation tiles from the right 40%, so no validation pixel
was seen in training. Images are 64 px (32-px tiles) by default, quality-90 JPEGs. Writes OUT/images/{train,val}/,
OUT/train.csv and OUT/val.csv (`path,labels`, names separated by spaces) and OUT/classes.txt.

Usage: python tools/make_multilabel_photos.py OUT [--train 400] [--val 150] [--classes 6] [--size 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle", "camera"]
BANDS = {"train": (0.0, 0.6), "val": (0.6, 1.0)}


def photo(name: str) -> Image.Image:
    import skimage.data

    pixels = getattr(skimage.data, name)()
    pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # stereo_motorcycle: (left, right, disparity)
    return Image.fromarray(pixels).convert("RGB")


def tile(image: Image.Image, band: tuple[float, float], size: int, rng: np.random.Generator) -> Image.Image:
    """A random square crop (15-35% of the photo's shorter side) within the band, resized to size."""
    w, h = image.size
    x0, x1 = int(band[0] * w), int(band[1] * w)
    side = min(int(rng.uniform(0.15, 0.35) * min(w, h)), x1 - x0, h)
    left, top = int(rng.integers(x0, x1 - side + 1)), int(rng.integers(0, h - side + 1))
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def make(out: str | Path, n_train: int = 400, n_val: int = 150, n_classes: int = 6, size: int = 64,
         seed: int = 0) -> Path:
    out = Path(out)
    names = PHOTOS[:n_classes]
    photos = {n: photo(n) for n in names}
    rng = np.random.default_rng(seed)
    half = size // 2
    for split, count in (("train", n_train), ("val", n_val)):
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            present = sorted(rng.choice(n_classes, size=int(rng.integers(2, 4)), replace=False).tolist())
            # 4 tiles: every present photo at least once, the rest drawn from them again, in random places
            tiles = present + rng.choice(present, size=4 - len(present)).tolist()
            rng.shuffle(tiles)
            canvas = Image.new("RGB", (size, size))
            for k, c in enumerate(tiles):
                canvas.paste(tile(photos[names[c]], BANDS[split], half, rng), ((k % 2) * half, (k // 2) * half))
            rel = f"images/{split}/{i:05d}.jpg"
            canvas.save(out / rel, quality=90)
            rows.append((rel, " ".join(names[c] for c in present)))
        with open(out / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "labels"])
            writer.writerows(rows)
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--val", type=int, default=150)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    make(a.out, a.train, a.val, a.classes, a.size, a.seed)
    print(f"wrote {a.train} train and {a.val} val images of {a.classes} classes under {a.out}")


if __name__ == "__main__":
    main()
