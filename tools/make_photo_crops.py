"""A small real-photo ImageFolder for fine-tuning measurements, offline: crops of scikit-image's sample photos.

Each class is one photo (astronaut, coffee, a cat, a rocket, ...): the 9 colour-and-grey photos of the fine-tuning
table by default, or with --photos all those 9 and 11 more (textures, coins, a clock, a page of text, the moon, and
scikit-learn's two sample photos), 20 classes, for the distillation example. Training crops come from the left
60% of the photo and validation crops from the right 40%, so no validation pixel was seen in training: the model has to
recognise the scene from another part of it, which a linear probe on ImageNet features does well but not
perfectly. Crops are square, 20-38% of the photo's shorter side, saved at 96-160 px as quality-90 JPEGs. With
the same seed a smaller --per-class set is a prefix of a larger one (20 images are the first 20 of 300).

Usage: python tools/make_photo_crops.py OUT --per-class 20 [--val-per-class 40] [--seed 0] [--photos nine|all]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle", "camera"]
MORE_PHOTOS = ["brick", "cell", "clock", "coins", "grass", "gravel", "moon", "page", "text", "china", "flower"]
SKLEARN_PHOTOS = {"china", "flower"}  # sklearn.datasets.load_sample_image's two photos
TRAIN_BAND, VAL_BAND = (0.0, 0.6), (0.6, 1.0)  # horizontal extent of the photo each split crops from


def photo(name: str) -> Image.Image:
    if name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg")).convert("RGB")
    import skimage.data

    pixels = getattr(skimage.data, name)()
    pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # stereo_motorcycle: (left, right, disparity)
    return Image.fromarray(pixels).convert("RGB")


def crops(image: Image.Image, band: tuple[float, float], count: int, rng: np.random.Generator) -> list[Image.Image]:
    w, h = image.size
    x0, x1 = int(band[0] * w), int(band[1] * w)
    out = []
    for _ in range(count):
        side = int(rng.uniform(0.20, 0.38) * min(w, h))
        side = min(side, x1 - x0, h)
        left = int(rng.integers(x0, x1 - side + 1))
        top = int(rng.integers(0, h - side + 1))
        size = int(rng.integers(96, 161))
        out.append(image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=20, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=40, help="validation images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", choices=("nine", "all"), default="nine",
                        help="the 9 photos of the fine-tuning table, or all 20")
    args = parser.parse_args()
    photos = PHOTOS if args.photos == "nine" else PHOTOS + MORE_PHOTOS
    for index, name in enumerate(photos):
        image = photo(name)
        for split, band, count in (("train", TRAIN_BAND, args.per_class), ("val", VAL_BAND, args.val_per_class)):
            # one generator per (photo, split): a larger per-class count extends the smaller set's crops
            rng = np.random.default_rng([args.seed, index, split == "val"])
            folder = args.out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, crop in enumerate(crops(image, band, count, rng)):
                crop.save(folder / f"{name}_{i:04d}.jpg", quality=90)
    print(f"{args.out}: {len(photos)} classes, {args.per_class} train / {args.val_per_class} val images per class")


if __name__ == "__main__":
    main()
