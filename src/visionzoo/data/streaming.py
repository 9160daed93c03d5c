"""Streamed WebDataset shards (`--train-urls`, `--val-urls`, `--data URL`): sequential reads, a seeded shuffle
buffer, and an epoch split exactly across ranks and loader workers.

URLs: local paths, `file://`, `http(s)://` (the standard library's client, resumable: below), `s3://`, `gs://`
(through fsspec, with s3fs or gcsfs) and `pipe:COMMAND` (the command's standard output is the shard, as in
webdataset). Brace patterns (`train-{000000..000099}.tar`) expand with braceexpand; several patterns are joined
with `::`.

The epoch's rule (what makes "each sample read once per epoch" hold on many nodes):
1. The shards' order is shuffled per epoch (training), seeded by (seed, epoch): all ranks agree on it without
   talking. Their sample counts come from the pack.json beside the shards (`visionzoo pack` writes it).
2. That order, as one sequence of N samples, is cut into one contiguous range per rank. Training ranges are
   equal, ceil(N / world) samples, the last ones wrapping around to the epoch's first samples (at most
   world - 1 repeats, as torch's DistributedSampler pads); evaluation ranges are N // world or one more,
   with no repeats.
3. Training keeps the whole batches of a rank's range (drop_last, as for folders); the batches are dealt to
   the loader workers in contiguous runs, so each worker streams its own part of the sequence.
4. A worker whose run starts inside a shard reads that shard from its beginning and skips to its first sample
   (a non-seekable stream cannot jump); at most one shard a worker an epoch is read in part twice.
Every rank computes the same plan, so each step count is equal across ranks and each sample is read once an
epoch across all processes (apart from the wrap-around and the dropped partial batch). A sample's augmentation
seed is that of its index in the pack, as for random access; the order of an epoch depends on (seed, epoch) and
also on the world size and the number of workers (a resumed run replays it with the same settings).
The shuffle buffer holds encoded images: --shuffle-buffer 2000 ImageNet JPEGs are ~220 MB per loader worker.
`visionzoo pack` writes training splits in a seeded random order, so that a buffer mixes all classes.

An http(s) shard is one GET read at the pace training takes its samples, so a read may span minutes on a healthy
server: there is no total time limit, only one between bytes (--stream-timeout). A stall, a reset connection, a
short body or a 5xx answer is tried again (--stream-retries, with backoff), resuming at the byte reached with an
HTTP Range request, so every sample is still read exactly once.
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import math
import multiprocessing
import os
import posixpath
import random
import re
import signal
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..config import spelled
from ..core.errors import BadImageError, ConfigError, DataError, plural
from ..core.extras import require
from .datasets import remap_labels, seeded_transform
from .images import EncodedFile
from .multilabel import multi_hot
from .packed import CLASSES_FILE, FORMAT, LABELS_EXT, OLD_FORMAT, PACK_FILE
from .samplers import order_generator, sample_seed

URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "gcs://", "file://", "pipe:")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
Label = int | tuple[int, ...]  # a class index, or a multi-label sample's sorted class indices
_SHARD_NAME = re.compile(r"([^/\s'\"]+\.tar)(?:\s|$|['\"?#])")
_PLAIN_NAME = re.compile(r"[\w.-]+\.tar")  # a shard named in a pack.json: a file beside it, nothing else
_SHARD_URL = re.compile(r"\.tar(?:[?#].*)?$")  # a URL or path that names one shard (a query may follow)
STREAM_TIMEOUT_S, STREAM_RETRIES = 60.0, 5  # DataConfig's stream_timeout and stream_retries defaults
# answers that say "busy or restarting", not "wrong URL": worth another try
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_BACKOFF_S, _BACKOFF_MAX_S = 0.5, 30.0  # the wait before try k is 0.5 * 2**(k - 1) s, at most 30 s
_CHUNK = 1 << 16
log = logging.getLogger(__name__)
_pipe_logged = False  # the first pipe: command this process runs is logged (a shared config runs commands)


def is_url(spec: str | None) -> bool:
    return spec is not None and spec.startswith(URL_SCHEMES)


def comma_joined(spec: str) -> list[str] | None:
    """The shard URLs of a spec that joins them with commas ('a.tar,b.tar'; webdataset joins with '::'), else
    None. Commas inside brace patterns ('train-{a,b}.tar') are braceexpand's, not joins."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append(spec[start:i].strip())
            start = i + 1
    parts.append(spec[start:].strip())
    if len(parts) > 1 and all(_SHARD_URL.search(p) for p in parts):
        return parts
    return None


def expand_urls(spec: str, flag: str = "--train-urls") -> list[str]:
    """'a-{000..002}.tar::b.tar' -> ['a-000.tar', 'a-001.tar', 'a-002.tar', 'b.tar']."""
    joined = comma_joined(spec)
    if joined is not None:
        raise ConfigError(f"{flag} {spec!r}: several URLs are joined with '::', not ',': {flag} '{'::'.join(joined)}'")
    braceexpand = require("braceexpand", "stream", flag)
    urls = [u for part in spec.split("::") if part.strip() for u in braceexpand.braceexpand(part.strip())]
    if not urls:
        raise ConfigError(f"{flag} {spec!r}: no URLs")
    return urls


def open_url(url: str, timeout: float = STREAM_TIMEOUT_S, retries: int = STREAM_RETRIES) -> IO[bytes]:
    """A readable binary stream of the URL (see the module's list of schemes). http(s): timeout is the most
    seconds between bytes, retries the further tries after a transient failure (see the module's docstring)."""
    if url.startswith("pipe:"):
        global _pipe_logged
        if not _pipe_logged:
            _pipe_logged = True
            log.info("running the shell command of a pipe: URL: %s", url[len("pipe:"):])
        return cast(IO[bytes], _PipeStream(url))
    path = url[len("file://"):] if url.startswith("file://") else url
    if not url.startswith(URL_SCHEMES) or url.startswith("file://"):
        try:
            return open(path, "rb")
        except OSError as e:
            raise DataError(f"{url}: cannot open ({e.strerror or e})") from None
    if url.startswith(("http://", "https://")):
        stream = _HTTPStream(url, timeout, retries)
        stream.open()
        return cast(IO[bytes], stream)
    fsspec = require("fsspec", "stream", "streaming shards")
    try:
        return fsspec.open(url, "rb").open()
    except ImportError as e:  # s3fs / gcsfs: fsspec names the package
        raise ConfigError(f"{url}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a missing object is an OSError, a denied one the client's own error
        raise DataError(f"{url}: cannot open ({type(e).__name__}: {e})") from None


class _Transient(Exception):
    """A failure another try may not meet: a 5xx answer, a body that ended early."""


class _HTTPStream:
    """An http(s) URL read as one streaming GET that resumes where it broke off: a stall (no byte for timeout
    seconds), a reset or a 5xx answer is tried again after a backoff, with a Range request from the byte reached
    (a server that ignores Range sends the whole body again and the bytes already read are passed over). retries
    counts the tries in a row without progress, so a long read over a flaky network is not cut short."""

    def __init__(self, url: str, timeout: float, retries: int) -> None:
        self.url, self.timeout, self.retries = url, timeout, retries
        self.offset = 0  # bytes handed out so far
        self.length: int | None = None  # the body's size, when the server says
        self.validator: str | None = None  # the first answer's ETag or Last-Modified: a resumed body must match
        self.resp: http.client.HTTPResponse | None = None
        self.failures = 0

    def open(self) -> None:
        self._tried(self._connect)

    def read(self, n: int | None = -1) -> bytes:
        return self._tried(lambda: self._read_once(n))

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> _HTTPStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tried(self, step: Callable[[], bytes]) -> bytes:
        while True:
            try:
                return step()
            except (OSError, http.client.HTTPException, _Transient) as e:
                self._drop()
                self.failures += 1
                if self.failures > self.retries:
                    raise DataError(self._gave_up(e)) from None
                time.sleep(min(_BACKOFF_S * 2 ** (self.failures - 1), _BACKOFF_MAX_S))

    def _read_once(self, n: int | None) -> bytes:
        if self.length is not None and self.offset >= self.length:
            return b""
        if self.resp is None:
            self._connect()
        assert self.resp is not None
        data = self.resp.read() if n is None or n < 0 else self.resp.read(n)
        if not data and n != 0 and self.length is not None and self.offset < self.length:
            raise _Transient("the connection closed early")
        self.offset += len(data)
        if data:
            self.failures = 0
        return data

    def _connect(self) -> bytes:
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        try:
            resp = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code in _RETRY_STATUS:
                raise _Transient(f"HTTP {e.code} {e.reason}") from None
            raise DataError(f"{self.url}: cannot open (HTTP {e.code} {e.reason})") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, OSError) and not isinstance(e.reason, ssl.SSLCertVerificationError):
                raise e.reason from None  # refused, unreachable, timed out: tried again
            raise DataError(f"{self.url}: cannot open ({e.reason})") from None
        self.resp = resp
        validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        if not self.offset:
            self.validator = validator
            size = resp.headers.get("Content-Length", "")
            self.length = int(size) if size.isdigit() else None
            return b""
        if self.validator and validator and validator != self.validator:
            raise DataError(f"{self.url}: the file changed on the server while it was read (at byte {self.offset})")
        if resp.status == 206:
            got = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if got is None or int(got.group(1)) != self.offset:
                raise DataError(f"{self.url}: asked to resume at byte {self.offset}, the server sent "
                                f"{resp.headers.get('Content-Range')!r}")
            return b""
        skip = self.offset  # a 200: the server ignores Range; pass over what was read already
        while skip:
            chunk = resp.read(min(skip, _CHUNK))
            if not chunk:
                raise _Transient("the connection closed early")
            skip -= len(chunk)
        return b""

    def _drop(self) -> None:
        if self.resp is not None:
            try:
                self.resp.close()
            except OSError:
                pass
            self.resp = None

    def _gave_up(self, e: BaseException) -> str:
        if isinstance(e, ConnectionRefusedError):
            why = "the server refused the connection"
        elif isinstance(e, TimeoutError):
            why = f"no data for {self.timeout:g} s ({spelled('stream_timeout')})"
        elif isinstance(e, ConnectionResetError):
            why = "the connection was reset"
        elif isinstance(e, _Transient):
            why = str(e)
        else:
            why = f"{type(e).__name__}: {e}"
        where = f", stopped at byte {self.offset}" + (f" of {self.length}" if self.length is not None else "")
        return (f"{self.url}: {why} ({plural(self.failures, 'try', 'tries')}, {spelled('stream_retries')} "
                f"{self.retries}{where if self.offset else ''})")


class _PipeStream:
    """The standard output of `pipe:COMMAND`; a failing command is a DataError naming it, once read to the end."""

    def __init__(self, url: str):
        self.url = url
        # its own process group: stopping early stops every process of a pipeline (curl ... | ...), not the shell
        self.proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE,  # noqa: S602
                                     start_new_session=True)  # (the user's own command, as in webdataset)
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout

    def read(self, n: int = -1) -> bytes:
        return self.stdout.read(n)

    def close(self) -> None:
        """Stop the command if it is still writing (a partial read, or tar's end marker before its EOF: not the
        command's failure); a command that ended by itself with a non-zero status is a DataError."""
        stopped = self.proc.poll() is None
        if stopped:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.stdout.close()
        code = self.proc.wait()
        if not stopped and code != 0:
            raise DataError(f"{self.url}: the command exited with status {code}")

    def __enter__(self) -> _PipeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_url(url: str, timeout: float = STREAM_TIMEOUT_S, retries: int = STREAM_RETRIES) -> bytes:
    with open_url(url, timeout, retries) as f:
        return f.read()


def shard_name_of(url: str) -> str:
    """The shard's file name in a URL or pipe command (the last `*.tar` word)."""
    found = _SHARD_NAME.findall(url + " ")
    if not found:
        raise DataError(f"{url}: no shard file name (*.tar) in the URL")
    return found[-1]


def info_url_for(urls: list[str]) -> str:
    """Where pack.json lies when --pack-info does not say: beside the first shard."""
    first = urls[0]
    if first.startswith("pipe:"):
        raise ConfigError(f"{first}: a pipe: URL has no folder to find pack.json in; give --pack-info URL")
    return posixpath.join(posixpath.dirname(first), PACK_FILE)


@dataclass
class StreamSource:
    """A split's shard URLs with their sample counts, in pack order, and the pack's classes."""

    urls: list[str]
    counts: list[int]
    firsts: list[int]  # each shard's first sample's index in the pack's split (augmentation seeds)
    classes: list[str]
    info: str  # the pack.json it came from (for messages)
    # http(s) reads: seconds between bytes and tries again (DataConfig's stream_*); attributes, not globals, as
    # the source is pickled into the loader workers
    timeout: float = STREAM_TIMEOUT_S
    retries: int = STREAM_RETRIES
    multilabel: bool = False  # pack.json's "multilabel": samples carry label sets (KEY.labels.json)

    @property
    def size(self) -> int:
        return sum(self.counts)


def read_pack_info(info_url: str, timeout: float = STREAM_TIMEOUT_S, retries: int = STREAM_RETRIES) -> dict[str, Any]:
    try:
        meta = json.loads(read_url(info_url, timeout, retries))
    except ValueError as e:
        raise DataError(f"{info_url}: not a pack description ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        hint = " (convert it with visionzoo pack --data OLD --output NEW)" if fmt == OLD_FORMAT else ""
        raise DataError(f"{info_url}: format {fmt!r}, not a pack of WebDataset shards ({FORMAT}){hint}")
    return meta


def stream_source(urls: list[str], info_url: str | None, split_hint: str, timeout: float = STREAM_TIMEOUT_S,
                  retries: int = STREAM_RETRIES) -> StreamSource:
    """Counts and classes for these shard URLs from the pack.json beside them (or info_url)."""
    info_url = info_url or info_url_for(urls)
    meta = read_pack_info(info_url, timeout, retries)
    by_name: dict[str, tuple[int, int]] = {}
    for split in meta["splits"]:
        first = 0
        for f in meta[split]["files"]:
            if not _PLAIN_NAME.fullmatch(str(f["name"])):
                raise DataError(f"{info_url}: shard name {f['name']!r} is not a plain *.tar file name")
            by_name[f["name"]] = (int(f["samples"]), first)
            first += int(f["samples"])
    counts, firsts = [], []
    for url in urls:
        name = shard_name_of(url)
        if name not in by_name:
            raise DataError(f"{url}: shard {name} is not among those {info_url} lists")
        counts.append(by_name[name][0])
        firsts.append(by_name[name][1])
    classes_url = posixpath.join(posixpath.dirname(info_url), CLASSES_FILE)
    try:
        classes = [str(c) for c in json.loads(read_url(classes_url, timeout, retries))]
    except ValueError as e:
        raise DataError(f"{classes_url}: not a JSON list of class names ({e})") from None
    if sum(counts) == 0:
        raise DataError(f"{info_url}: the {split_hint} shards hold no samples")
    return StreamSource(urls, counts, firsts, classes, info_url, timeout, retries, bool(meta.get("multilabel")))


def pack_split_source(base: str, split: str, timeout: float = STREAM_TIMEOUT_S,
                      retries: int = STREAM_RETRIES) -> StreamSource | None:
    """The split of the pack at URL base (`--data URL`), or None when the pack has no such split."""
    info_url = posixpath.join(base.rstrip("/"), PACK_FILE)
    meta = read_pack_info(info_url, timeout, retries)
    if split not in meta["splits"]:
        return None
    urls = [posixpath.join(base.rstrip("/"), str(f["name"])) for f in meta[split]["files"]]
    return stream_source(urls, info_url, split, timeout, retries)


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Segment:
    shard: int  # index into the source's URLs
    skip: int  # samples of the shard before the first one read
    take: int


def _rank_range(n: int, rank: int, world: int, pad: bool) -> tuple[int, int]:
    """[start, stop) of this rank in the epoch's sequence; stop may pass n (wrap-around) when pad."""
    if pad:
        per = math.ceil(n / world)
        return rank * per, rank * per + per
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def epoch_plan(counts: list[int], epoch: int, seed: int, shuffle: bool, rank: int, world: int, batch: int,
               drop_last: bool, worker: int, workers: int) -> list[Segment]:
    """The segments of shards this (rank, worker) reads this epoch, in order (see the module's rule)."""
    order = list(range(len(counts)))
    if shuffle:
        order = torch.randperm(len(counts), generator=order_generator(seed, epoch)).tolist()
    n = sum(counts)
    start, stop = _rank_range(n, rank, world, pad=drop_last)
    length = stop - start
    if drop_last:
        length -= length % batch
    batches = math.ceil(length / batch)
    b0, b1 = worker * batches // workers, (worker + 1) * batches // workers
    lo, hi = start + b0 * batch, start + min(b1 * batch, length)
    segments: list[Segment] = []
    pos = lo
    while pos < hi:  # walk the shard order from the epoch position pos (mod n), shard by shard
        offset = pos % n
        for shard in order:
            if offset < counts[shard]:
                take = min(counts[shard] - offset, hi - pos)
                segments.append(Segment(shard, offset, take))
                pos += take
                break
            offset -= counts[shard]
    return segments


def samples_in_plan(n: int, rank: int, world: int, batch: int, drop_last: bool) -> int:
    start, stop = _rank_range(n, rank, world, pad=drop_last)
    length = stop - start
    return length - length % batch if drop_last else length


# ------------------------------------------------------------------------------------------------ reading


def _key_and_ext(name: str) -> tuple[str, str] | None:
    """webdataset's rule: the key runs up to the first dot of the member's last path part; members without an
    extension and webdataset's own `__...__` entries are not sample parts (None), as webdataset skips them."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or name.startswith("__"):
        return None
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def sample_label(parts: dict[str, bytes], where: str) -> Label:
    """A sample's label: `.cls`, a class index as decimal text; or a label set (multi-label data), from
    `.labels.json` (a JSON list of class indices) or a `.cls` of several indices separated by spaces or commas."""
    if LABELS_EXT in parts:
        try:
            value = json.loads(parts[LABELS_EXT])
        except ValueError:
            value = None
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise DataError(f"{where} has a .{LABELS_EXT} that is not a JSON list of class indices")
        return tuple(sorted(set(value)))
    text = parts["cls"].decode(errors="replace")
    try:
        values = [int(f) for f in text.replace(",", " ").split()]
    except ValueError:
        raise DataError(f"{where} has a .cls that is not an integer") from None
    if len(values) == 1 and "," not in text:
        return values[0]
    return tuple(sorted(set(values)))


def tar_samples(url: str, skip: int = 0, take: int | None = None, timeout: float = STREAM_TIMEOUT_S,
                retries: int = STREAM_RETRIES) -> Iterator[tuple[str, bytes, Label]]:
    """(key, image bytes, label) of a shard's samples, after the first `skip`, at most `take` of them; a label is
    a class index, or a tuple of them (sample_label)."""
    seen = 0
    current: str | None = None
    parts: dict[str, bytes] = {}

    def finished() -> tuple[str, bytes, Label]:
        image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        if image is None or not {"cls", LABELS_EXT} & parts.keys():
            raise DataError(f"{url}: sample {current!r} lacks {'an image' if image is None else 'a .cls label'} "
                            f"(has {', '.join(sorted(parts)) or 'nothing'})")
        return current or "", image, sample_label(parts, f"{url}: sample {current!r}")

    with open_url(url, timeout, retries) as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r|")
            for member in tar:
                parsed = _key_and_ext(member.name) if member.isfile() else None
                if parsed is None:
                    continue
                key, ext = parsed
                if key != current:
                    if current is not None:
                        if seen >= skip:
                            yield finished()
                        seen += 1
                        if take is not None and seen >= skip + take:
                            return
                    current, parts = key, {}
                if seen < skip:  # not needed: let tarfile skip the data
                    continue
                data = tar.extractfile(member)
                if data is not None:
                    parts[ext] = data.read()
            if current is not None and seen >= skip and (take is None or seen < skip + take):
                yield finished()
        except tarfile.TarError as e:
            raise DataError(f"{url}: not a readable tar shard ({e})") from None
        except (DataError, GeneratorExit):
            raise
        except Exception as e:  # noqa: BLE001 - a connection lost mid-shard: the HTTP client's or the OS's error
            raise DataError(f"{url}: reading failed ({type(e).__name__}: {e})") from None


def _shuffled(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A shuffle buffer: hold up to size items, hand out a random one as each new one arrives."""
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


class ShardStream(IterableDataset):
    """One split's streamed shards as a loader's dataset: decoded, transformed (image, label) items.

    make_loader calls for_rank() with the rank, world size, per-rank batch and workers; the trainer calls
    set_epoch() before each epoch (a shared value, so persistent workers see it). len() is this rank's sample
    count for the epoch. keys=True yields (key, label) instead of images (for checks of the plan)."""

    def __init__(self, source: StreamSource, transform: Callable, train: bool, seed: int = 0,
                 shuffle_buffer: int = 2000, skip_bad: bool = False, classes: list[str] | None = None,
                 multilabel: bool = False):
        self.source, self.transform, self.train = source, transform, train
        # label sets as multi-hot targets: the pack says so (pack.json), or --task multilabel on a single-label one
        self.multilabel = multilabel or source.multilabel
        self.seed, self.shuffle_buffer, self.skip_bad = seed, shuffle_buffer, skip_bad
        own = source.classes
        self.label_map = remap_labels(list(range(len(own))), own, classes, source.info)
        self.classes = list(classes or own)
        self.rank, self.world, self.batch, self.workers = 0, 1, 1, 0
        self.keys = False
        self._epoch = multiprocessing.get_context().RawValue("q", 0)

    def for_rank(self, rank: int, world: int, batch: int, workers: int) -> ShardStream:
        """A copy for one loader (the epoch value stays shared with this one)."""
        out = copy.copy(self)
        out.rank, out.world, out.batch, out.workers = rank, world, batch, workers
        return out

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    def __len__(self) -> int:
        return samples_in_plan(self.source.size, self.rank, self.world, self.batch, self.train)

    @property
    def size(self) -> int:
        """Samples in the whole split (all ranks)."""
        return self.source.size

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = int(self._epoch.value)
        plan = epoch_plan(self.source.counts, epoch, self.seed, self.train, self.rank, self.world, self.batch,
                          self.train, worker, workers)
        items = self._read(plan)
        if self.train and self.shuffle_buffer > 1:
            rng = random.Random(sample_seed(self.seed, epoch, self.rank * 1009 + worker))
            items = _shuffled(items, self.shuffle_buffer, rng)
        last_good: tuple[str, bytes, Label, int] | None = None
        owed = 0  # training: undecodable samples that a decodable one still has to stand in for
        for item in items:
            key, image, label, index = item
            label = self._mapped(label)
            if self.keys:
                yield key, label
                continue
            try:
                out = seeded_transform(self.transform, EncodedFile(image, key), sample_seed(self.seed, epoch, index))
            except BadImageError:
                if not self.skip_bad:
                    raise
                if not self.train:
                    yield None  # dropped and counted by collate_skipping (evaluation counts what it could read)
                    continue
                owed += 1
                if last_good is None:
                    continue
                out, label = self._stand_in(last_good, epoch), self._mapped(last_good[2])
                owed -= 1
                yield out, label, 1
                continue
            yield out, label
            last_good = item
            while owed:  # bad samples before the first good one of this worker's stream
                owed -= 1
                yield self._stand_in(item, epoch), label, 1
        if owed:
            raise BadImageError(f"{self.source.info}: no decodable image in this worker's part of the epoch")

    def _mapped(self, label: Label) -> Any:
        if isinstance(label, tuple) or self.multilabel:
            ys = label if isinstance(label, tuple) else (label,) if label >= 0 else ()
            if not self.multilabel:
                raise DataError(f"{self.source.info}: a sample with a set of labels in a single-label pack; train "
                                "it with --task multilabel")
            return multi_hot(tuple(self.label_map[y] for y in ys), len(self.classes))
        return self.label_map[label] if label >= 0 else label  # -1: an open-set image, no class

    def _stand_in(self, item: tuple[str, bytes, Label, int], epoch: int) -> Any:
        """A decodable sample again, in place of an undecodable one (training, --skip-bad-images): batches keep
        their size, so every rank runs the same steps and BatchNorm never sees a batch of one."""
        key, image, _, index = item
        return seeded_transform(self.transform, EncodedFile(image, key), sample_seed(self.seed, epoch, index))

    def _read(self, plan: list[Segment]) -> Iterator[tuple[str, bytes, Label, int]]:
        src = self.source
        for seg in plan:
            url = src.urls[seg.shard]
            # a segment that ends the shard reads on to its end: samples past the count pack.json gives would
            # otherwise go unseen, and the epoch plan is cut by those counts
            whole = seg.skip + seg.take == src.counts[seg.shard]
            n = 0
            for n, (key, image, label) in enumerate(tar_samples(url, seg.skip, None if whole else seg.take,
                                                                src.timeout, src.retries), 1):
                if n > seg.take:
                    continue  # counted for the message below
                # -1 marks an open-set image: scored by evaluation, never a training target
                for y in label if isinstance(label, tuple) else (label,):
                    if not (0 if self.train or isinstance(label, tuple) else -1) <= y < len(src.classes):
                        raise DataError(f"{url}: sample {key!r} has label {y}, outside 0..{len(src.classes) - 1}"
                                        + (" (-1, an open-set image, is not a training label)" if y == -1 else ""))
                yield f"{url}:{key}", image, label, src.firsts[seg.shard] + seg.skip + n - 1
            if n != seg.take:
                raise DataError(f"{url}: {plural(seg.skip + n, 'sample')} where {src.info} says "
                                f"{src.counts[seg.shard]}; the shard and its pack.json differ")
