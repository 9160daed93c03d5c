"""`visionzoo bench-serve`'s load generator: a bounded number of POST /v1/predict requests per concurrency level
against a running `visionzoo serve` (or one started here), with throughput, latency percentiles, the server's
mean batch size and RSS from /metrics, answers checked against a sequential reference, and bad payloads
(garbage, a truncated JPEG, a PNG decompression bomb) that must be refused with a 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from tqdm import tqdm

from ..core.errors import ConfigError, DataError, VisionZooError

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                 ".bmp": "image/bmp"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
BOMB_SIDE = 20_000  # 400 Mpixel: over Pillow's refusal limit (2 x 89 Mpixel), ~50 KB once deflated
TOLERANCE = 1e-4  # a batched answer's probabilities may differ from a batch of one's by float rounding
START_TIMEOUT_S = 300.0  # a model file can take minutes to load on a busy CPU
Top = list[tuple[int, float]]  # (class index, probability), best first


@dataclass(frozen=True)
class Payload:
    name: str
    body: bytes
    content_type: str
    bad: bool = False


def check_url(url: str, allow_remote: bool) -> str:
    """The base URL without a trailing slash; a host other than this machine's loopback is refused unless allowed
    (a load test aimed at someone else's server by a typo is a denial of service)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} is not an http://host:port URL")
    if parts.hostname not in LOOPBACK and not allow_remote:
        raise ConfigError(f"{url} is not on this machine (127.0.0.1, localhost, ::1): add --allow-remote to "
                          "load-test another host")
    return url.rstrip("/")


def load_images(folder: str | Path) -> list[Payload]:
    """Every image file under folder (recursively, sorted by path), read once: requests cycle through them."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in CONTENT_TYPES)
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(CONTENT_TYPES)})")
    return [Payload(str(p.relative_to(root)), p.read_bytes(), CONTENT_TYPES[p.suffix.lower()]) for p in files]


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A side x side 1-bit grayscale PNG, all black, that is tiny on disk: the zero scanlines are deflated a block
    at a time, so the 50 MB of raw rows never exist at once."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (side + 7) // 8)  # filter byte 0 (none), then 8 pixels a byte
    z = zlib.compressobj(9)
    block_rows = 256
    full, rest = divmod(side, block_rows)
    block = row * block_rows
    idat = b"".join([*(z.compress(block) for _ in range(full)), z.compress(row * rest), z.flush()])
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, colour type 0 (grayscale)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_payloads(images: list[Payload], seed: int = 0) -> list[Payload]:
    """The three bad kinds, in the order requests cycle through them."""
    jpeg = next((p for p in images if p.content_type == "image/jpeg"), images[0])
    return [Payload("garbage", random.Random(seed).randbytes(2048), "image/jpeg", bad=True),
            Payload(f"truncated {jpeg.name}", jpeg.body[:len(jpeg.body) // 3], jpeg.content_type, bad=True),
            Payload(f"png bomb {BOMB_SIDE}x{BOMB_SIDE}", png_bomb(), "image/png", bad=True)]


def plan(images: list[Payload], bad: list[Payload], n: int, bad_fraction: float, seed: int = 0) -> list[Payload]:
    """n requests: round(n * bad_fraction) of them, at seeded places, bad (cycling through the kinds); the others
    cycle through the images. The same for every level, so levels differ only in concurrency."""
    where = set(random.Random(seed).sample(range(n), round(n * bad_fraction)))
    taken = {True: 0, False: 0}  # how many of each pool so far
    out: list[Payload] = []
    for i in range(n):
        pool = bad if i in where else images
        out.append(pool[taken[i in where] % len(pool)])
        taken[i in where] += 1
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {sample name: value}, summed over label sets (`visionzoo_batch_size_sum`,
    `process_resident_memory_bytes`, ...). Comments and unparseable lines are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, brace, rest = line.partition("{")
        if brace:
            rest = rest[rest.rfind("}") + 1:]  # a label value may hold spaces; the value follows the last brace
        else:
            name, _, rest = line.partition(" ")
        fields = rest.split()
        try:
            value = float(fields[0])
        except (IndexError, ValueError):
            continue
        out[name.strip()] = out.get(name.strip(), 0.0) + value
    return out


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between closest ranks (numpy.percentile's default)."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def top_of(answer: Any) -> Top:
    return [(int(t["index"]), float(t["prob"])) for t in answer["predictions"][0]["top"]]


def same_answer(got: Top, ref: Top, tol: float = TOLERANCE) -> bool:
    """Same probabilities (within tol) at each rank, and the same classes, except that classes whose reference
    probabilities tie within 2 tol may swap ranks: batching changes the float rounding that broke the tie. A
    class outside the reference's top-k ties only with its last probability."""
    if len(got) != len(ref):
        return False
    ref_prob = dict(ref)
    for (gi, gp), (ri, rp) in zip(got, ref):
        if abs(gp - rp) > tol or (gi != ri and abs(ref_prob.get(gi, ref[-1][1]) - rp) > 2 * tol):
            return False
    return True


async def post(client: httpx.AsyncClient, p: Payload, topk: int) -> tuple[str, Top | None, float]:
    """One request: its outcome ("ok", "rejected" for a bad payload's 4xx, else an error kind), the top-k of an
    ok answer, and the latency in ms."""
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/predict", params={"topk": topk}, content=p.body,
                              headers={"content-type": p.content_type})
    except httpx.TimeoutException:
        return "timeout", None, 0.0
    except httpx.TransportError:
        return "connection", None, 0.0
    ms = (time.perf_counter() - t0) * 1e3
    if r.status_code == 503:
        return "overloaded", None, ms
    if r.status_code >= 500:
        return "server_error", None, ms
    if 400 <= r.status_code < 500:
        return ("rejected" if p.bad else "refused_good_image"), None, ms
    if r.status_code != 200:
        return f"status_{r.status_code}", None, ms
    if p.bad:
        return "accepted_bad_payload", None, ms
    try:
        return "ok", top_of(r.json()), ms
    except (ValueError, KeyError, IndexError, TypeError):
        return "unreadable_answer", None, ms


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    """The server's /metrics, parsed; {} when it has none or cannot say (the report then has nulls)."""
    with contextlib.suppress(httpx.HTTPError):
        r = await client.get("/metrics")
        if r.status_code == 200:
            return parse_metrics(r.text)
    return {}


async def reference(client: httpx.AsyncClient, images: list[Payload], topk: int) -> dict[str, Top]:
    """Each image's answer alone on an idle server (a batch of one): what every answer under load must match."""
    answers: dict[str, Top] = {}
    for p in images:
        outcome, top, _ = await post(client, p, topk)
        if top is None:
            raise VisionZooError(f"{p.name}: the server's reference answer failed ({outcome}); the load test needs "
                                 "every image answered")
        answers[p.name] = top
    return answers


async def run_level(client: httpx.AsyncClient, requests: list[Payload], concurrency: int, topk: int,
                    answers: dict[str, Top], progress: bool) -> dict[str, Any]:
    """All requests with at most `concurrency` in flight: that many workers, each taking the next request."""
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    wrong = 0
    todo = iter(requests)  # shared by the workers; asyncio runs one at a time, so next() needs no lock
    bar = tqdm(total=len(requests), desc=f"concurrency {concurrency}", file=sys.stderr, leave=False,
               disable=None if progress else True)

    async def worker() -> None:
        nonlocal wrong
        for p in todo:
            outcome, top, ms = await post(client, p, topk)
            outcomes[outcome] += 1
            if top is not None:
                latencies.append(ms)
                wrong += not same_answer(top, answers[p.name])
            bar.update()

    before = await scrape(client)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    bar.close()
    after = await scrape(client)
    calls = delta(before, after, "visionzoo_batch_size_count")
    images = delta(before, after, "visionzoo_batch_size_sum")
    rss = [m.get("process_resident_memory_bytes") for m in (before, after)]
    errors = {k: v for k, v in sorted(outcomes.items()) if k not in ("ok", "rejected")}
    return {"concurrency": concurrency, "requests": len(requests), "good": sum(not p.bad for p in requests),
            "bad": sum(p.bad for p in requests), "ok": outcomes["ok"], "4xx": outcomes["rejected"],
            "errors": sum(errors.values()), "error_kinds": errors, "wrong": wrong, "wall_s": round(wall, 3),
            "req_per_s": round(len(requests) / wall, 2), "images_per_s": round(outcomes["ok"] / wall, 2),
            **{f"p{q}_ms": rounded(percentile(latencies, q), 3) for q in (50, 95, 99)},
            "server_batch_mean": rounded(images / calls if images is not None and calls else None, 3),
            "server_rss_before_mb": rounded(rss[0] / 2**20 if rss[0] is not None else None, 1),
            "server_rss_after_mb": rounded(rss[1] / 2**20 if rss[1] is not None else None, 1)}


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float | None:
    return after[name] - before[name] if name in before and name in after else None


async def benchmark(url: str, images: list[Payload], concurrency: list[int], requests: int, topk: int,
                    bad_fraction: float, timeout_s: float, progress: bool = True,
                    on_level: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The reference pass, then one level per concurrency; the report's JSON form."""
    todo = plan(images, bad_payloads(images) if bad_fraction else [], requests, bad_fraction)
    # one pool with a connection per worker, so no request waits for a connection rather than for the server;
    # trust_env off: a proxy from the environment would be measured too
    limits = httpx.Limits(max_connections=max(concurrency), max_keepalive_connections=max(concurrency))
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits, trust_env=False) as client:
        try:  # a server still loading its model would answer 503s, which are not what is measured
            status = (await client.get("/ready")).status_code
        except httpx.TransportError as e:
            raise VisionZooError(f"{url}: no server answers ({type(e).__name__}: {e})") from None
        if status != 200:
            raise VisionZooError(f"{url}/ready answered {status}: the server is not ready")
        model: Any = None
        with contextlib.suppress(httpx.HTTPError, ValueError):
            model = (await client.get("/v1/model")).json()
        answers = await reference(client, images, topk)
        levels = []
        for c in concurrency:
            levels.append(await run_level(client, todo, c, topk, answers, progress))
            if on_level:
                on_level(levels[-1])
    return {"url": url, "images": len(images), "requests_per_level": requests, "topk": topk,
            "bad_fraction": bad_fraction, "timeout_s": timeout_s, "levels": levels, "server": {"model": model}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_server(model: str, server_args: list[str], start_timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """`visionzoo serve MODEL` on a free loopback port for the duration; yields its base URL. Its output goes to
    a temporary file (a pipe nobody reads would fill and stall it), whose tail explains a failed start."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "visionzoo", "serve", model, "--host", "127.0.0.1", "--port", str(port), *server_args]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def tail() -> str:
            log.seek(0)
            lines = [x for x in log.read().decode(errors="replace").splitlines() if x.strip()]
            return " | ".join(lines[-5:]) or "(no output)"

        try:
            deadline = time.monotonic() + start_timeout_s
            with httpx.Client(base_url=url, timeout=2.0, trust_env=False) as client:
                while not is_ready(client):
                    if proc.poll() is not None:
                        raise VisionZooError(f"`visionzoo serve {model}` exited with status {proc.returncode} "
                                             f"before it was ready: {tail()}")
                    if time.monotonic() > deadline:
                        raise VisionZooError(f"`visionzoo serve {model}` was not ready after {start_timeout_s:g} s: "
                                             f"{tail()}")
                    time.sleep(0.2)
            yield url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:  # a server that ignores SIGTERM must not outlive the benchmark
                    proc.kill()
                    proc.wait()


def is_ready(client: httpx.Client) -> bool:
    try:
        return client.get("/ready").status_code == 200
    except httpx.TransportError:
        return False


def serving(target: str, server_args: str, allow_remote: bool) -> contextlib.AbstractContextManager[str]:
    """The base URL to load: target itself when it is a URL, else a server started here on the model file."""
    if target.startswith(("http://", "https://")):
        if server_args:
            raise ConfigError("--server-args starts a server: give a model file, not a URL")
        return contextlib.nullcontext(check_url(target, allow_remote))
    if not Path(target).is_file():
        raise ConfigError(f"{target}: neither an http://host:port URL nor a model file")
    try:
        return local_server(target, shlex.split(server_args))
    except ValueError as e:  # unbalanced quotes
        raise ConfigError(f"--server-args {server_args!r}: {e}") from None
