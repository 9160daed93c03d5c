"""Packed data sets (`visionzoo pack`): images re-encoded with their longer side capped, in large shard
files with an index, read with random access by any number of workers and ranks.

Layout of OUT: pack.json (format, settings, counts; written last, so its presence marks a complete pack),
classes.txt, and per split `<split>/shard-NNNNN.bin` (encoded images back to back) with `<split>/index.npz`
(shard, offset, length, label per image, and the source file names). Shards are memory-mapped per
process, so workers share the page cache and nothing is copied until an image is decoded. The format is
numpy's and the images are ordinary JPEG/PNG files: no extra dependency, readable without visionzoo.
"""

from __future__ import annotations

import io
import json
import mmap
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import BadImageError, ConfigError, DataError
from ..core.files import write_json
from .datasets import Samples, folder_classes, image_folder, list_samples, remap_labels
from .images import EncodedFile, decode_rgb, read_file

FORMAT = "visionzoo-pack-1"
PACK_FILE = "pack.json"


def is_packed(root: str | Path | None) -> bool:
    return root is not None and (Path(root) / PACK_FILE).is_file()


class PackedStore:
    """One split's shards and index; picklable (each process maps the shards itself, lazily)."""

    def __init__(self, split_dir: str | Path):
        self.split_dir = Path(split_dir)
        index = np.load(self.split_dir / "index.npz")
        self.shard, self.offset, self.length = index["shard"], index["offset"], index["length"]
        self.labels, self.names = index["label"], index["name"]
        self._maps: dict[int, mmap.mmap] = {}

    def subset(self, indices) -> PackedStore:
        """A store of these entries only, in this order (same shard files)."""
        idx = np.asarray(indices, dtype=np.int64)
        sub = object.__new__(PackedStore)
        sub.split_dir, sub._maps = self.split_dir, {}
        for name in ("shard", "offset", "length", "labels", "names"):
            setattr(sub, name, getattr(self, name)[idx])
        return sub

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> bytes:
        s = int(self.shard[i])
        if s not in self._maps:
            with open(self.split_dir / f"shard-{s:05d}.bin", "rb") as f:
                self._maps[s] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        start = int(self.offset[i])
        return self._maps[s][start:start + int(self.length[i])]

    def encoded(self, i: int) -> EncodedFile:
        """The entry's bytes, named after the pack and the source file for error messages."""
        return EncodedFile(self.read(i), f"{self.split_dir}[{i}] ({self.names[i]})")

    def open(self, i: int) -> Image.Image:
        """The image's header only, like images.open_image; errors name the packed entry."""
        return self.encoded(i).open()


def packed_samples(root: str | Path, split: str, classes: list[str] | None = None) -> Samples:
    """Samples of one split of a pack; labels are remapped when classes (e.g. a model's) are given."""
    root = Path(root)
    meta = json.loads((root / PACK_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise DataError(f"{root / PACK_FILE}: unknown pack format {meta.get('format')!r} (expected {FORMAT})")
    if not (root / split / "index.npz").is_file():
        raise DataError(f"{root}: the pack has no {split} split (it holds {', '.join(meta['splits'])})")
    if not (root / "classes.txt").is_file():
        raise DataError(f"{root}: the pack has no classes.txt (an incomplete copy?); pack it again")
    pack_classes = (root / "classes.txt").read_text().split("\n")[:-1]
    store = PackedStore(root / split)
    labels = store.labels.tolist()
    labels = remap_labels(labels, pack_classes, classes, root)  # -1, an open-set image of a packed list, stays
    names = store.names.tolist()
    return Samples(list(zip(names, labels)), list(classes or pack_classes), store=store)


def _capped(size: tuple[int, int], max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _encode(path: str, max_size: int, quality: int) -> bytes:
    """The file's bytes if it is an RGB/gray JPEG within max_size that decodes (a damaged file fails here,
    at pack time), else a JPEG of it with the longer side capped. The file is read once; a large JPEG
    decodes at the DCT scale that still covers the capped size, as the training crops do."""
    src = read_file(path)
    size = src.jpeg_size()
    decoded = src.decode_jpeg(size, _capped(size, max_size)) if size is not None else None
    if decoded is not None and size is not None and max(size) <= max_size:
        return src.data
    rgb = Image.fromarray(decoded[0]) if decoded is not None else decode_rgb(src.open(), turbo=False)
    target = _capped(size or rgb.size, max_size)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _encode_or_error(args: tuple[str, int, int]) -> bytes | str:
    try:
        return _encode(*args)
    except BadImageError as e:
        return str(e)


def pack(data: str | Path, output: str | Path, max_size: int = 256, quality: int = 90,
         shard_bytes: int = 256 * 2**20, workers: int = 2, skip_bad: bool = False,
         progress: bool = True, lists: dict[str, str | Path] | None = None) -> dict[str, Any]:
    """Pack an ImageFolder (DATA/train/<class>/..., DATA/val/<class>/...) into OUTPUT; returns pack.json.

    lists: {split: list file} packs those splits from `relative/path label` lists under DATA instead (e.g.
    ImageNet-LT's); the class names come from a classes.txt beside the first list (`visionzoo make-lt`
    writes one) or are the label numbers, and open-set entries (label -1) keep their -1.
    """
    data, out = Path(data), Path(output)
    if max_size < 16 or not 1 <= quality <= 100:
        raise ConfigError(f"--max-size {max_size} (>= 16) or --quality {quality} (1-100) out of range")
    if is_packed(out):
        raise ConfigError(f"--output {out} already holds a pack: remove it or choose another --output")
    sources = _split_samples(data, lists)
    classes = next(iter(sources.values())).classes
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Any] = {}
    try:
        with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            for split, samples in sources.items():
                counts[split] = _pack_split(pool, samples, data, out / split, max_size, quality, shard_bytes,
                                            skip_bad, progress)
    except BaseException:
        for tmp in out.glob("*/shard-*.bin.tmp"):  # an interrupted pack leaves no half-written shards
            tmp.unlink()
        raise
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    meta = {"format": FORMAT, "source": str(data), "max_size": max_size, "quality": quality, "splits": list(sources),
            "classes": len(classes), **counts}
    write_json(out / PACK_FILE, meta)  # last: a pack without pack.json is incomplete
    return meta


def _split_samples(data: Path, lists: dict[str, str | Path] | None) -> dict[str, Samples]:
    """The splits to pack, each with the same class list: DATA's train/ and val/ folders, or the lists."""
    if lists:
        bad = [s for s in lists if not s or "/" in s or s.startswith(".")]
        if bad:
            raise ConfigError(f"--list {bad[0]!r}=...: a split name is a plain folder name (train, val, test, ...)")
        out: dict[str, Samples] = {}
        classes = num_classes = None
        for split, path in lists.items():
            s = list_samples(path, data, split, classes=classes, num_classes=num_classes, allow_open=True)
            classes, num_classes = classes or s.classes, num_classes or s.num_classes
            out[split] = s
        return out
    splits = [s for s in ("train", "val") if (data / s).is_dir()]
    if not splits:
        raise DataError(f"{data}: no train/ or val/ folder to pack (or give list files: --list SPLIT=FILE)")
    classes = folder_classes(data / splits[0])
    return {s: image_folder(data / s, classes) for s in splits}


def _pack_split(pool, samples: Samples, data: Path, split_dir: Path, max_size: int, quality: int,
                shard_bytes: int, skip_bad: bool, progress: bool) -> dict[str, Any]:
    """One split into split_dir: shards written as .tmp and renamed at the end, then index.npz."""
    from tqdm import tqdm

    split_dir.mkdir(exist_ok=True)
    cols: dict[str, list] = {k: [] for k in ("shard", "offset", "length", "label", "name")}
    shard, offset, skipped, total_bytes = 0, 0, [], 0
    f = open(split_dir / f"shard-{shard:05d}.bin.tmp", "wb")
    try:
        jobs = ((p, max_size, quality) for p, _ in samples.items)
        results = pool.map(_encode_or_error, jobs, chunksize=16)
        for (path, label), blob in tqdm(zip(samples.items, results), total=len(samples.items),
                                        desc=split_dir.name, disable=None if progress else True, leave=False):
            if isinstance(blob, str):
                if not skip_bad:
                    raise BadImageError(blob)
                skipped.append(blob)
                continue
            if offset and offset + len(blob) > shard_bytes:
                f.close()
                shard, offset = shard + 1, 0
                f = open(split_dir / f"shard-{shard:05d}.bin.tmp", "wb")
            f.write(blob)
            for k, v in (("shard", shard), ("offset", offset), ("length", len(blob)), ("label", label),
                         ("name", os.path.relpath(path, data))):
                cols[k].append(v)
            offset += len(blob)
            total_bytes += len(blob)
    finally:
        f.close()
    for s in range(shard + 1):
        os.replace(split_dir / f"shard-{s:05d}.bin.tmp", split_dir / f"shard-{s:05d}.bin")
    np.savez(split_dir / "index.npz", shard=np.array(cols["shard"], np.int32),
             offset=np.array(cols["offset"], np.int64), length=np.array(cols["length"], np.int64),
             label=np.array(cols["label"], np.int32), name=np.array(cols["name"]))
    return {"images": len(cols["label"]), "shards": shard + 1, "bytes": total_bytes, "skipped": len(skipped),
            "skipped_files": skipped[:20]}
