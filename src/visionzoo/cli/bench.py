"""visionzoo bench: images/s and latency p50/p90/p99 by batch size, per backend and precision.

Warm-up (and compilation) is excluded, the input already lives on the device, and each timed step
ends with a device sync. Without --checkpoint the model has random weights, like timm's
benchmark.py. Combinations that cannot run here (TensorRT without a GPU, fp16 on onnxruntime, ...)
are reported as unavailable, not skipped silently. The fastest batch size of each group is marked *.
int8 rows quantise the model on the fly with PT2E (compile) or ONNX Runtime (onnxruntime),
calibrated on random pixels: they measure speed, not accuracy (use `visionzoo quantize` for that).
"""

from __future__ import annotations

import argparse
import csv

from ..core.errors import ConfigError
from ..core.files import write_json
from ..inference.defaults import BENCH_BACKENDS, BENCH_BATCH_SIZES, BENCH_ITERS, BENCH_MODES, BENCH_WARMUP
from .options import add_model_source_flags, model_source, size_arg


def _csv_list(kind, choices=None):
    def parse(text: str):
        try:
            items = [kind(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
        bad = [i for i in items if (choices and i not in choices) or (kind is int and i < 1)]
        if not items or bad:
            what = ", ".join(choices) if choices else "positive integers"
            raise argparse.ArgumentTypeError(f"expected a comma list of {what}")
        return tuple(items)

    return parse


def _precision(text: str) -> str:
    from ..core.precision import ALIASES

    return ALIASES.get(text.strip().lower(), text.strip().lower())  # none = fp32, as everywhere


def add_parser(sub) -> None:
    from ..core.precision import PRECISIONS

    p = sub.add_parser("bench", description=__doc__)
    add_model_source_flags(p)  # --model NAME alone: random weights, as timm's benchmark.py
    p.add_argument("--batch-sizes", type=_csv_list(int), default=BENCH_BATCH_SIZES, metavar="N,N,...",
                   help="the batch sizes to time")
    p.add_argument("--img-size", type=size_arg, metavar="N", help="input size in px [default: the model's]")
    p.add_argument("--backend", type=_csv_list(str, BENCH_BACKENDS), default=("eager",), metavar="NAME,...",
                   help=f"one or a comma list of {', '.join(BENCH_BACKENDS)}")
    p.add_argument("--precision", type=_csv_list(_precision, PRECISIONS), default=("fp32",), metavar="NAME,...",
                   help=f"one or a comma list of {', '.join(PRECISIONS)}")
    p.add_argument("--mode", default="infer", choices=BENCH_MODES, help="time inference, or training steps")
    p.add_argument("--warmup", type=int, default=BENCH_WARMUP, metavar="N",
                   help="untimed iterations first (and compilation)")
    p.add_argument("--iters", type=int, default=BENCH_ITERS, metavar="N", help="timed iterations per batch size")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="--mode train: recompute activations in the backward pass (timm models); compare its peak "
                        "MB with a run without it (tools/grad_ckpt_memory.sh runs both)")
    p.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    p.add_argument("--json", metavar="FILE", help="write the table and the environment as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="throughput and latency against batch size")
    p.set_defaults(func=run)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def run(args: argparse.Namespace) -> int:
    from ..core.distributed import resolve_device
    from ..inference.model_bench import (
        bench,
        bench_model,
        environment,
        plot,
        rows_as_dicts,
    )

    if args.grad_checkpointing and args.mode != "train":
        raise ConfigError("--grad-checkpointing changes training steps only: add --mode train")
    if args.warmup < 0 or args.iters < 1:
        raise ConfigError(f"--warmup must be >= 0 and --iters >= 1 (got {args.warmup}, {args.iters})")
    device = resolve_device(args.device)
    bm = bench_model(model_source(args, random_weights=True), args.raw_weights)
    img_size = args.img_size or bm.info.img_size
    print(f"{bm.info.model_name} {args.mode} at {img_size} px on {device}, warm-up {args.warmup}, "
          f"{args.iters} timed iters")
    print(f"{'backend':<12}{'prec':<6}{'batch':>6}{'images/s':>11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
          f"{'peak MB':>9}")

    said: set[tuple[str, str, str]] = set()

    def show(r) -> None:
        if r.status != "ok":  # an unavailable combination is said once, not once per batch size
            if (r.backend, r.precision, r.status) not in said:
                said.add((r.backend, r.precision, r.status))
                print(f"{r.backend:<12}{r.precision:<6}{'all' if r.status.startswith('unavail') else r.batch_size:>6}"
                      f"  {r.status}", flush=True)
            return
        print(f"{r.backend:<12}{r.precision:<6}{r.batch_size:>6}{r.images_per_s:>11.1f}{r.p50_ms:>9.2f}"
              f"{r.p90_ms:>9.2f}{r.p99_ms:>9.2f}{_fmt(r.peak_mem_mb, '9.0f')}", flush=True)

    rows = bench(bm, args.backend, args.precision, args.batch_sizes, img_size, args.mode, args.warmup, args.iters,
                 device, args.channels_last, on_row=show, grad_checkpointing=args.grad_checkpointing)
    for r in rows:
        if r.best:
            print(f"best batch for {r.backend} {r.precision}: {r.batch_size} ({r.images_per_s:.1f} images/s)  *")
    table = rows_as_dicts(rows)
    if args.json:
        write_json(args.json, {"model": bm.info.model_name, "checkpoint": args.checkpoint or args.weights,
                               "img_size": img_size,
                               "mode": args.mode, "warmup": args.warmup, "iters": args.iters,
                               "grad_checkpointing": args.grad_checkpointing,
                               "environment": environment(device), "rows": table})
    if args.csv:
        from ..core.files import atomic_path

        with atomic_path(args.csv) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    if args.plot:
        plot(rows, args.plot, f"{bm.info.model_name} {args.mode}, {img_size} px, {device}")
    return 0 if any(r.status == "ok" for r in rows) else 1
