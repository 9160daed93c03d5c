"""The built-in digits (real handwritten scans) re-encoded as 256x256 quality-90 JPEGs, so that crops and
evaluation at 32 px decode at 1/2..1/8 DCT scale: a small real labelled JPEG set for the decode checks.
python tools/make_digits_jpg.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from visionzoo.data.builtin import materialize


def main() -> None:
    src, dst = materialize("digits"), Path(sys.argv[1])
    for p in src.rglob("*.png"):
        q = dst / p.relative_to(src).with_suffix(".jpg")
        q.parent.mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").resize((256, 256), Image.Resampling.BICUBIC).save(q, quality=90)


if __name__ == "__main__":
    main()
