"""JPEG decoders side by side on one folder of JPEGs, one thread: Pillow, simplejpeg, torchvision.io.

python tools/bench_decoders.py DIR [--n 300]   (DIR e.g. from tools/make_jpeg_set.py)
Prints images/s for a full decode to RGB and for a 1/2-scale decode where the decoder can do it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def rate(fn, items) -> float:
    fn(items[0])
    t = time.perf_counter()
    for x in items:
        fn(x)
    return len(items) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dir")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = sorted(Path(args.dir).rglob("*.jpg"))[: args.n]
    blobs = [p.read_bytes() for p in paths]
    rows = {"Pillow full": rate(lambda p: np.asarray(Image.open(p).convert("RGB")), paths)}

    def pillow_half(p):
        img = Image.open(p)
        img.draft("RGB", (img.size[0] // 2, img.size[1] // 2))
        return np.asarray(img.convert("RGB"))

    rows["Pillow 1/2 (draft)"] = rate(pillow_half, paths)
    import simplejpeg

    rows["simplejpeg full"] = rate(lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB"), blobs)
    w, h = Image.open(paths[0]).size
    rows["simplejpeg 1/2"] = rate(lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB", min_width=-(-w // 2),
                                                                  min_height=-(-h // 2)), blobs)
    from torchvision.io import decode_jpeg

    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    rows["torchvision.io full"] = rate(decode_jpeg, tensors)
    for name, r in rows.items():
        print(f"{name:22s} {r:8.0f} images/s")


if __name__ == "__main__":
    main()
