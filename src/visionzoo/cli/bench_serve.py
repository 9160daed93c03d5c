"""visionzoo bench-serve: load-test a `visionzoo serve` server: throughput, latency p50/p95/p99, the server's mean
batch size and memory, per concurrency level.

URL_OR_MODEL is the http://host:port of a running server, or a model file: a server is then started on a free
loopback port (with --server-args), and stopped after. Each level sends exactly --requests POST /v1/predict
requests, one image each (every image under --images, in turn), with at most CONCURRENCY in flight. First every
image is sent once alone: each answer under load must match it (probabilities within 1e-4), else it counts as
wrong. --bad-fraction of the requests carry garbage, a truncated JPEG or a PNG decompression bomb, which the
server must refuse with a 4xx. Columns: ok = good images answered (wrong ones included), 4xx = bad payloads
refused, errors = 5xx (503: overloaded), connection errors, timeouts, a good image refused or a bad one accepted;
latency of the answered good images; batch = the server's mean images per model call (from /metrics). Exit status
1 when a level had errors or wrong answers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..core.errors import ConfigError
from ..core.extras import require
from ..core.files import write_json
from .options import output_flag

# the table's columns: header, width, the level's field in the report, its format
COLUMNS = [("conc", 5, "concurrency", "d"), ("requests", 8, "requests", "d"), ("ok", 6, "ok", "d"),
           ("4xx", 5, "4xx", "d"), ("errors", 6, "errors", "d"), ("wrong", 5, "wrong", "d"),
           ("req/s", 8, "req_per_s", ".1f"), ("img/s", 8, "images_per_s", ".1f"), ("p50 ms", 8, "p50_ms", ".1f"),
           ("p95 ms", 8, "p95_ms", ".1f"), ("p99 ms", 8, "p99_ms", ".1f"), ("batch", 6, "server_batch_mean", ".2f"),
           ("RSS MB", 7, "server_rss_after_mb", ".0f")]


def table_row(level: dict) -> str:
    """The level's row ('-' for what the server did not say), and its errors by kind under it."""
    row = " ".join(f"{'-' if level[key] is None else format(level[key], fmt):>{width}}"
                   for _, width, key, fmt in COLUMNS)
    if level["error_kinds"]:
        kinds = level["error_kinds"].items()
        row += "\n      errors: " + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in kinds)
    return row


def _levels(text: str) -> list[int]:
    try:
        levels = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return levels


def add_parser(sub) -> None:
    p = sub.add_parser("bench-serve", description=__doc__)
    p.add_argument("target", metavar="URL_OR_MODEL",
                   help="http://host:port of a running `visionzoo serve`, or a model file to serve for the test")
    p.add_argument("--images", required=True, metavar="DIR",
                   help="the images to send (every jpg/jpeg/png/webp/bmp under DIR, read once)")
    p.add_argument("--concurrency", type=_levels, default=[1, 8, 32], metavar="N,N,...",
                   help="requests in flight, one level each")
    p.add_argument("--requests", type=int, default=200, metavar="N", help="requests per level")
    p.add_argument("--topk", "-k", type=int, default=5, metavar="K", help="classes per answer (?topk=)")
    p.add_argument("--bad-fraction", type=float, default=0.0, metavar="F",
                   help="share of requests with a bad payload (seeded places), which must get a 4xx")
    p.add_argument("--timeout-s", type=float, default=30.0, metavar="S", help="per request")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--server-args", metavar="ARGS",
                   help="more flags for the server started on a model file, as one string: "
                        "--server-args='--max-batch 16 --device cpu'")
    p.add_argument("--allow-remote", action="store_true", help="allow a URL that is not this machine's loopback")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for flag, value, low in (("--requests", args.requests, 1), ("--topk", args.topk, 1)):
        if value < low:
            raise ConfigError(f"{flag} must be at least {low} (got {value})")
    if not 0.0 <= args.bad_fraction <= 1.0:
        raise ConfigError(f"--bad-fraction must be from 0 to 1 (got {args.bad_fraction:g})")
    if not args.timeout_s > 0:
        raise ConfigError(f"--timeout-s must be positive (got {args.timeout_s:g})")
    require("httpx", "serve", "bench-serve")
    from ..serve import loadgen

    # the URL is checked here, before the images are read; a server is started only on entering the block
    server = loadgen.serving(args.target, args.server_args or "", args.allow_remote)
    images = loadgen.load_images(args.images)
    with server as url:
        print(f"{url}: {len(images)} images, {args.requests} requests per level, bad fraction {args.bad_fraction:g}")

        header = [" ".join(f"{name:>{width}}" for name, width, _, _ in COLUMNS)]

        def show(level: dict) -> None:  # each row as its level ends; the header with the first, not before a failure
            print(*header, table_row(level), sep="\n", flush=True)
            header.clear()

        report = asyncio.run(loadgen.benchmark(
            url, images, args.concurrency, args.requests, args.topk, args.bad_fraction, args.timeout_s,
            progress=args.progress, on_level=show))
    if args.json:
        with output_flag("--json"):
            write_json(args.json, report)
        print(f"wrote {args.json}")
    failed = [lv["concurrency"] for lv in report["levels"] if lv["errors"] or lv["wrong"]]
    if failed:
        print(f"visionzoo bench-serve: errors or wrong answers at concurrency {', '.join(map(str, failed))}",
              file=sys.stderr)
    return 1 if failed else 0
