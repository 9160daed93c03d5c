"""Packed data sets (`visionzoo pack`): WebDataset tar shards with a sidecar index for random access.

Layout of OUT (flat, so that brace patterns such as `OUT/train-{000000..000009}.tar` name a split's shards):
- `<split>-NNNNNN.tar`: WebDataset shards. Each sample is two members, `KEY.cls` (the label as decimal text;
  -1 for an open-set image of a packed list) and `KEY.jpg` (the image, longer side capped at --max-size). The
  `webdataset` library and `tar` read them as they are. A multi-label data set (CSV lists) has `KEY.labels.json`
  (a JSON list of class indices, possibly empty) in place of `KEY.cls`, and `"multilabel": true` in pack.json.
- `<split>.index.npz`: the sidecar index, numpy arrays per sample in shard order: shard, start (the byte offset
  of the sample's first tar header), offset and length (the image's bytes inside the tar), label, key and the
  source name; a multi-label pack has label -1 and the label sets as label_offsets/label_values (CSR).
  visionzoo's random-access loader memory-maps the shards and slices images out by it, so workers share the
  page cache and nothing is copied until an image is decoded.
- `classes.json`: the class names in label order.
- `pack.json`: format, settings, and per split the sample count and each shard's name and sample count (what a
  streaming reader needs to split an epoch exactly across ranks and workers); written last, so its presence
  marks a complete pack.

The older format (visionzoo-pack-1: `.bin` shards + index.npz per split folder) is converted, bytes unchanged, by
`visionzoo pack --data OLD --output NEW`; reading it for training is a one-line error saying so.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import mmap
import os
import pickle
import re
import shutil
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import BadImageError, ConfigError, DataError, VisionZooError
from ..core.files import FolderLock, write_json
from .datasets import Samples, check_labels, folder_classes, image_folder, list_samples, remap_labels
from .images import EncodedFile, decode_rgb, read_file

FORMAT = "visionzoo-wds-1"
OLD_FORMAT = "visionzoo-pack-1"
PACK_FILE = "pack.json"
CLASSES_FILE = "classes.json"
IMAGE_EXT = "jpg"
LABELS_EXT = "labels.json"  # a multi-label sample's label set
SHUFFLE_SEED = 0
STAGING = ".pack-partial-"  # OUT/.pack-partial-PID/: a pack being written, moved into OUT when complete
# a write that failed for want of room or a writable disk: one line, not a traceback
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}
CHECKED_ENTRIES = 4096  # index entries whose tar header is checked when a split is opened (evenly spread)


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def index_name(split: str) -> str:
    return f"{split}.index.npz"


def pack_format(root: str | Path | None) -> str | None:
    """The format named by root/pack.json, or None when root holds no pack."""
    if root is None or not (Path(root) / PACK_FILE).is_file():
        return None
    try:
        return str(json.loads((Path(root) / PACK_FILE).read_text()).get("format"))
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{Path(root) / PACK_FILE}: not a readable pack description ({e})") from None


def is_packed(root: str | Path | None) -> bool:
    return pack_format(root) is not None


class PackedStore:
    """One split's shards and index; picklable (each process maps the shards itself, lazily)."""

    def __init__(self, root: str | Path, split: str):
        self.root, self.split = Path(root), split
        path = self.root / index_name(split)
        try:
            with np.load(path) as index:
                self.shard, self.offset, self.length = index["shard"], index["offset"], index["length"]
                self.labels, self.keys = index["label"], index["key"]
                self.names = np.char.decode(index["name"], "utf-8")
                # a multi-label pack's label sets: entry i's classes are values[offsets[i]:offsets[i + 1]]
                self.sets: list[tuple[int, ...]] | None = None
                if "label_offsets" in index:
                    bounds, values = index["label_offsets"].tolist(), index["label_values"].tolist()
                    self.sets = [tuple(values[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
            raise DataError(f"{path}: a damaged pack index ({type(e).__name__}: {e}); pack the data again") from None
        arrays = [self.shard, self.offset, self.length, self.labels, self.keys, self.names]
        if len({len(a) for a in [*arrays, *([self.sets] if self.sets is not None else [])]}) != 1:
            raise DataError(f"{path}: a damaged pack index (its arrays differ in length); pack the data again")
        self._maps: dict[int, mmap.mmap] = {}

    def subset(self, indices) -> PackedStore:
        """A store of these entries only, in this order (same shard files)."""
        idx = np.asarray(indices, dtype=np.int64)
        sub = object.__new__(PackedStore)
        sub.root, sub.split, sub._maps = self.root, self.split, {}
        sub.sets = [self.sets[i] for i in idx.tolist()] if self.sets is not None else None
        for name in ("shard", "offset", "length", "labels", "keys", "names"):
            setattr(sub, name, getattr(self, name)[idx])
        return sub

    def check(self, limit: int = CHECKED_ENTRIES) -> None:
        """Refuse an index that does not match its shards: a missing shard, or an entry whose bytes are not its
        own image (offsets shifted by a sample would train on wrong labels). The tar header just before an
        entry's image names the member and its size; up to `limit` entries, evenly spread, are checked (a
        shifted index is wrong everywhere), so opening a large pack stays cheap."""
        index = self.root / index_name(self.split)
        sizes = {}
        for s in np.unique(self.shard).tolist():
            path = self.root / shard_name(self.split, s)
            try:
                sizes[s] = path.stat().st_size
            except OSError as e:
                raise DataError(f"{path}: {e.strerror} (a shard {index} points into); copy the pack whole or "
                                "pack the data again") from None
        n = len(self)
        for i in np.unique(np.linspace(0, n - 1, min(n, limit)).astype(np.int64)).tolist() if n else []:
            s, off, length = int(self.shard[i]), int(self.offset[i]), int(self.length[i])
            key = bytes(self.keys[i])
            shard = shard_name(self.split, s)
            if off < tarfile.BLOCKSIZE or length < 0 or off + length > sizes[s]:
                raise DataError(f"{index}: entry {i} ({key.decode(errors='replace')}) points outside {shard} "
                                f"({sizes[s]} bytes); the index does not match its shards: pack the data again")
            found = self._header_at(i)
            expected = key + f".{IMAGE_EXT}".encode()
            name_ok = found[0] == expected or (not expected.isascii() or len(expected) > 100)  # pax-named
            if not name_ok or found[1] != length:
                raise DataError(f"{index}: entry {i} ({key.decode(errors='replace')}) points at "
                                f"{found[0].decode(errors='replace') or 'no tar member'!r} in {shard}, not at its "
                                "own image; the index does not match its shards: pack the data again")

    def _header_at(self, i: int) -> tuple[bytes, int]:
        """(member name, size) of the tar header just before entry i's data; (b'', -1) if it is not one."""
        s, off = int(self.shard[i]), int(self.offset[i])
        self.read(i)  # maps the shard
        head = self._maps[s][off - tarfile.BLOCKSIZE:off]
        if head[257:262] != b"ustar":
            return b"", -1
        name, prefix = head[:100].split(b"\0", 1)[0], head[345:500].split(b"\0", 1)[0]
        try:
            size = int(head[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            size = -1
        return (prefix + b"/" + name if prefix else name), size

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> bytes:
        s = int(self.shard[i])
        if s not in self._maps:
            with open(self.root / shard_name(self.split, s), "rb") as f:
                self._maps[s] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        start = int(self.offset[i])
        return self._maps[s][start:start + int(self.length[i])]

    def encoded(self, i: int) -> EncodedFile:
        """The entry's bytes, named after its shard, key and source file for error messages."""
        shard = shard_name(self.split, int(self.shard[i]))
        return EncodedFile(self.read(i), f"{self.root / shard}:{self.keys[i].decode()} ({self.names[i]})")

    def open(self, i: int) -> Image.Image:
        """The image's header only, like images.open_image; errors name the packed entry."""
        return self.encoded(i).open()


def read_pack_meta(root: str | Path) -> dict[str, Any]:
    """pack.json of a pack in the current format; the old format and foreign files are one-line errors."""
    root = Path(root)
    fmt = pack_format(root)
    if fmt == OLD_FORMAT:
        raise DataError(f"{root} is a pack in the old format ({OLD_FORMAT}); convert it once (the images are "
                        f"copied, not re-encoded): visionzoo pack --data {root} --output NEW_FOLDER")
    if fmt != FORMAT:
        raise DataError(f"{root / PACK_FILE}: unknown pack format {fmt!r} (expected {FORMAT})")
    return json.loads((root / PACK_FILE).read_text())


def packed_samples(root: str | Path, split: str, classes: list[str] | None = None) -> Samples:
    """Samples of one split of a pack; labels are remapped when classes (e.g. a model's) are given."""
    root = Path(root)
    meta = read_pack_meta(root)
    if split not in meta["splits"] or not (root / index_name(split)).is_file():
        raise DataError(f"{root}: the pack has no {split} split (it holds {', '.join(meta['splits'])})")
    pack_classes = read_classes(root)
    store = PackedStore(root, split)
    store.check()
    index = root / index_name(split)
    if store.sets is not None:
        return _label_set_samples(store, pack_classes, classes, index)
    # -1 (an open-set image of a packed list) only outside the training split; a short classes.json is caught here
    check_labels(store.labels, len(pack_classes),
                 lambda i: f"{index}: entry {i} ({store.names[i]}; {len(pack_classes)} classes in {CLASSES_FILE})",
                 open_ok=split != "train")
    labels = remap_labels(store.labels.tolist(), pack_classes, classes, root)  # -1 (open set) stays -1
    return Samples(list(zip(store.names.tolist(), labels)), list(classes or pack_classes), store=store)


def _label_set_samples(store: PackedStore, pack_classes: list[str], classes: list[str] | None,
                       index: Path) -> Samples:
    """A multi-label pack's split: label sets checked against classes.json and remapped by name to classes."""
    assert store.sets is not None
    where = lambda i: f"{index}: entry {i} ({store.names[i]}; {len(pack_classes)} classes in {CLASSES_FILE})"  # noqa: E731
    flat = [y for ys in store.sets for y in ys]
    owner = [i for i, ys in enumerate(store.sets) for _ in ys]
    check_labels(flat, len(pack_classes), lambda k: where(owner[k]), open_ok=False)
    mapped = remap_labels(list(range(len(pack_classes))), pack_classes, classes, index.parent)
    sets = [tuple(sorted(mapped[y] for y in ys)) for ys in store.sets]
    return Samples(list(zip(store.names.tolist(), sets)), list(classes or pack_classes), store=store, multilabel=True)


def read_classes(root: Path) -> list[str]:
    if not (root / CLASSES_FILE).is_file():
        raise DataError(f"{root}: the pack has no {CLASSES_FILE} (an incomplete copy?); pack it again")
    try:
        names = json.loads((root / CLASSES_FILE).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{root / CLASSES_FILE}: not readable ({e}); pack the data again") from None
    if not isinstance(names, list):
        raise DataError(f"{root / CLASSES_FILE}: not a list of class names; pack the data again")
    return [str(c) for c in names]


# ------------------------------------------------------------------------------------------------ writing


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


def sample_key(name: str) -> str:
    """A WebDataset key from a source name: no extension, and no dots (webdataset splits a member's name at
    the first dot of its last path part); '..' and unusual characters become '_'."""
    stem = os.path.splitext(name.replace("\\", "/"))[0]
    key = re.sub(r"[^\w/-]", "_", stem).strip("/") or "_"
    return f"x{key}" if key.startswith("__") else key  # webdataset skips `__...` names as its own metadata


class ShardWriter:
    """Writes one split's samples into tar shards (`<split>-NNNNNN.tar.tmp`, renamed when the split is complete)
    and collects the index. Members are written reproducibly: mtime 0, owner root, mode 0444."""

    def __init__(self, out: Path, split: str, shard_bytes: int, shard_images: int | None = None):
        self.out, self.split = out, split
        self.shard_bytes, self.shard_images = shard_bytes, shard_images
        self.cols: dict[str, list] = {k: [] for k in ("shard", "start", "offset", "length", "label", "key", "name")}
        self.sets: list[tuple[int, ...]] = []  # a multi-label split's label sets
        self.counts: list[int] = []
        self.keys: set[str] = set()
        self.bytes = 0
        self._tar: tarfile.TarFile | None = None

    def _open_next(self) -> tarfile.TarFile:
        if self._tar is not None:
            self._tar.close()
        self.counts.append(0)
        path = self.out / f"{shard_name(self.split, len(self.counts) - 1)}.tmp"
        self._tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)
        return self._tar

    def _member(self, tar: tarfile.TarFile, name: str, data: bytes) -> int:
        """Add one member; returns the offset of its data in the tar."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "root", "root"
        tar.addfile(info, io.BytesIO(data))
        return tar.offset - tarfile.BLOCKSIZE * -(-len(data) // tarfile.BLOCKSIZE)

    def add(self, name: str, label: int | tuple[int, ...], image: bytes) -> None:
        tar = self._tar
        full = tar is not None and self.counts[-1] > 0 and (
            tar.offset + len(image) > self.shard_bytes
            or (self.shard_images is not None and self.counts[-1] >= self.shard_images))
        if tar is None or full:
            tar = self._open_next()
        key = base = sample_key(name)
        while key in self.keys:  # e.g. a.jpg and a.png, or names that differ only in characters made '_'
            key = f"{base}_{len(self.cols['key'])}_{len(self.keys)}"
            base = key
        self.keys.add(key)
        start = tar.offset
        if isinstance(label, tuple):  # a label set (multi-label): the index keeps -1 and the set beside it
            self._member(tar, f"{key}.{LABELS_EXT}", json.dumps(list(label)).encode())
            self.sets.append(label)
        else:
            self._member(tar, f"{key}.cls", str(label).encode())
        offset = self._member(tar, f"{key}.{IMAGE_EXT}", image)
        for k, v in (("shard", len(self.counts) - 1), ("start", start), ("offset", offset), ("length", len(image)),
                     ("label", label if isinstance(label, int) else -1), ("key", key.encode()),
                     ("name", name.encode())):
            self.cols[k].append(v)
        self.counts[-1] += 1
        self.bytes += len(image)

    def close(self, complete: bool) -> dict[str, Any]:
        """Finish the split: rename its shards into place and write the index (complete), or remove them."""
        if self._tar is not None:
            self._tar.close()
        tmp = [self.out / f"{shard_name(self.split, s)}.tmp" for s in range(len(self.counts))]
        if not complete:
            for t in tmp:
                t.unlink(missing_ok=True)
            return {}
        for t in tmp:
            os.replace(t, t.with_suffix(""))
        c = self.cols
        arrays = {"shard": np.array(c["shard"], np.int32), "start": np.array(c["start"], np.int64),
                  "offset": np.array(c["offset"], np.int64), "length": np.array(c["length"], np.int64),
                  "label": np.array(c["label"], np.int32), "key": np.array(c["key"], dtype=bytes),
                  "name": np.array(c["name"], dtype=bytes)}
        if self.sets:
            arrays["label_offsets"] = np.cumsum([0] + [len(ys) for ys in self.sets], dtype=np.int64)
            arrays["label_values"] = np.array([y for ys in self.sets for y in ys], np.int32)
        np.savez(self.out / index_name(self.split), **arrays)  # type: ignore[arg-type]
        files = [{"name": shard_name(self.split, s), "samples": n} for s, n in enumerate(self.counts)]
        return {"images": len(c["label"]), "shards": len(files), "files": files, "bytes": self.bytes}


def pack(data: str | Path, output: str | Path, max_size: int = 256, quality: int = 90,
         shard_bytes: int = 256 * 2**20, workers: int = 2, skip_bad: bool = False,
         progress: bool = True, lists: dict[str, str | Path] | None = None,
         shard_images: int | None = None) -> dict[str, Any]:
    """Pack an ImageFolder (DATA/train/<class>/..., DATA/val/<class>/...; or builtin:digits) into OUTPUT;
    returns pack.json.

    lists: {split: list file} packs those splits from `relative/path label` lists under DATA instead (e.g.
    ImageNet-LT's); the class names come from a classes.txt beside the first list (`visionzoo make-lt`
    writes one) or are the label numbers, and open-set entries (label -1) keep their -1.
    DATA may also be a pack in the old format: its images are copied into shards as they are.
    shard_images caps the samples per shard (smaller shards split an epoch more evenly when streaming).
    The train split is written in a random order (seed SHUFFLE_SEED): a streaming reader's shuffle buffer then
    mixes every class, where a class-by-class order would give batches of one or two classes.
    """
    if str(data).startswith("builtin:"):
        from .builtin import materialize

        data = materialize(str(data).split(":", 1)[1])
    data, out = Path(data), Path(output)
    if max_size < 16 or not 1 <= quality <= 100:
        raise ConfigError(f"--max-size {max_size} (>= 16) or --quality {quality} (1-100) out of range")
    if shard_bytes < 1 or (shard_images is not None and shard_images < 1):
        raise ConfigError("--shard-mb and --shard-images must be >= 1")
    _refuse_packed(out)
    if pack_format(data) == OLD_FORMAT:
        with _staged(out) as stage:
            return _convert_old(data, stage, out, shard_bytes, shard_images, progress)
    if pack_format(data) is not None:
        raise ConfigError(f"--data {data} is a pack already ({pack_format(data)}); give the image folder it came from")
    sources = _split_samples(data, lists)
    classes = next(iter(sources.values())).classes
    multilabel = any(s.multilabel for s in sources.values())  # CSV lists: their reader checked every name
    for split, samples in sources.items():  # what training reads back must be a class (or -1 off the train split)
        items = samples.items
        if samples.multilabel:
            continue
        check_labels(samples.targets(), len(classes), lambda i, items=items: items[i][0],  # type: ignore[misc]
                     open_ok=split != "train")
    counts: dict[str, Any] = {}
    with _staged(out) as stage, ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for split, samples in sources.items():
            items = [samples.items[i] for i in _pack_order(split, len(samples.items))]
            jobs = ((p, max_size, quality) for p, _ in items)
            blobs = pool.map(_encode_or_error, jobs, chunksize=16)
            entries = ((os.path.relpath(p, data), y, b) for (p, y), b in zip(items, blobs))
            counts[split] = _write_split(entries, len(items), stage, split, shard_bytes, shard_images,
                                         skip_bad, progress)
        meta = {"format": FORMAT, "source": str(data), "max_size": max_size, "quality": quality,
                "splits": list(sources), "classes": len(classes),
                "shuffled": {"splits": ["train"], "seed": SHUFFLE_SEED}, **({"multilabel": True} if multilabel else {}),
                **counts}
        return _finish(stage, out, classes, meta)


def _refuse_packed(out: Path) -> None:
    if is_packed(out):
        raise ConfigError(f"--output {out} already holds a pack: remove it or choose another --output")


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A private folder to write the pack into, under a lock on OUT: a second pack into OUT is refused in one
    line, and a pack that fails or is interrupted leaves nothing in OUT (_finish moves a complete one in)."""
    with FolderLock(out, "--output"):
        _refuse_packed(out)  # one that held the lock before us may have just finished
        for stale in out.glob(f"{STAGING}*"):  # a killed pack's (we hold the lock: no one else writes there)
            shutil.rmtree(stale, ignore_errors=True)
        stage = out / f"{STAGING}{os.getpid()}"
        try:
            stage.mkdir()
            yield stage
        except OSError as e:
            if e.errno not in _DISK_ERRORS:
                raise
            raise VisionZooError(f"cannot write the pack into --output {out}: {e.strerror}; nothing was "
                                 "written") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _pack_order(split: str, n: int) -> list[int]:
    """The order a split is written in: seeded random for train, as listed for the others."""
    if split != "train":
        return list(range(n))
    return np.random.default_rng(SHUFFLE_SEED).permutation(n).tolist()


def _finish(stage: Path, out: Path, classes: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    """Move the complete pack from stage into out, pack.json last: a reader sees a whole pack or none."""
    write_json(stage / CLASSES_FILE, list(classes))
    for f in sorted(stage.iterdir()):
        os.replace(f, out / f.name)
    write_json(out / PACK_FILE, meta)  # last: a pack without pack.json is incomplete
    return meta


def _write_split(entries: Iterable[tuple[str, int, bytes | str]], total: int, out: Path, split: str,
                 shard_bytes: int, shard_images: int | None, skip_bad: bool, progress: bool) -> dict[str, Any]:
    """(name, label, image bytes or an error message) entries into the split's shards and index."""
    from tqdm import tqdm

    writer = ShardWriter(out, split, shard_bytes, shard_images)
    skipped: list[str] = []
    complete = False
    try:
        for name, label, blob in tqdm(entries, total=total, desc=split, disable=None if progress else True,
                                      leave=False):
            if isinstance(blob, str):
                if not skip_bad:
                    raise BadImageError(blob)
                skipped.append(blob)
                continue
            writer.add(name, label, blob)
        complete = True
    finally:  # an interrupted pack leaves no half-written shards
        result = writer.close(complete)
    return {**result, "skipped": len(skipped), "skipped_files": skipped[:20]}


def _split_samples(data: Path, lists: dict[str, str | Path] | None) -> dict[str, Samples]:
    """The splits to pack, each with the same class list: DATA's train/ and val/ folders, or the lists."""
    if lists:
        bad = [s for s in lists if not s or "/" in s or s.startswith(".") or not re.fullmatch(r"[\w-]+", s)]
        if bad:
            raise ConfigError(f"--list {bad[0]!r}=...: a split name is a plain word (train, val, test, ...)")
        out: dict[str, Samples] = {}
        classes = num_classes = None
        for split, path in lists.items():
            # -1 (open set) only outside the training split: training reads every packed label back
            s = list_samples(path, data, split, classes=classes, num_classes=num_classes,
                             allow_open=split != "train")
            classes, num_classes = classes or s.classes, num_classes or s.num_classes
            out[split] = s
        return out
    splits = [s for s in ("train", "val") if (data / s).is_dir()]
    if not splits:
        raise DataError(f"{data}: no train/ or val/ folder to pack (or give list files: --list SPLIT=FILE)")
    classes = folder_classes(data / splits[0])
    return {s: image_folder(data / s, classes) for s in splits}


def _old_entries(root: Path, split: str, num_classes: int) -> Iterator[tuple[str, int, bytes]]:
    """The images of an old-format split (split/shard-NNNNN.bin + split/index.npz), in _pack_order."""
    with np.load(root / split / "index.npz") as index:
        shard, offset, length = index["shard"], index["offset"], index["length"]
        labels, names = index["label"], index["name"]
    check_labels(labels, num_classes, lambda i: f"{root / split / 'index.npz'}: entry {i} ({names[i]})",
                 open_ok=split != "train")
    maps: dict[int, mmap.mmap] = {}
    try:
        for i in _pack_order(split, len(labels)):
            s = int(shard[i])
            if s not in maps:
                with open(root / split / f"shard-{s:05d}.bin", "rb") as f:
                    maps[s] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            yield str(names[i]), int(labels[i]), maps[s][int(offset[i]):int(offset[i]) + int(length[i])]
    finally:
        for m in maps.values():
            m.close()


def _convert_old(old: Path, stage: Path, out: Path, shard_bytes: int, shard_images: int | None,
                 progress: bool) -> dict[str, Any]:
    """An old-format pack rewritten as WebDataset shards with the same image bytes, labels and names."""
    meta = json.loads((old / PACK_FILE).read_text())
    classes_txt = old / "classes.txt"
    if not classes_txt.is_file():
        raise DataError(f"{old}: the old pack has no classes.txt (an incomplete copy?)")
    classes = classes_txt.read_text().split("\n")[:-1]
    counts = {}
    for split in meta["splits"]:
        entries = _old_entries(old, split, len(classes))
        counts[split] = _write_split(entries, int(meta[split]["images"]), stage, split, shard_bytes, shard_images,
                                     False, progress)
    new = {"format": FORMAT, "source": meta.get("source", str(old)), "converted_from": str(old),
           "max_size": meta.get("max_size"), "quality": meta.get("quality"), "splits": list(meta["splits"]),
           "classes": len(classes), "shuffled": {"splits": ["train"], "seed": SHUFFLE_SEED}, **counts}
    return _finish(stage, out, classes, new)
