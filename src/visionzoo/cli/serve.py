"""visionzoo serve: a model file behind HTTP, as `predict` would run it.

POST /v1/predict takes images (multipart fields named `file`, JSON {"images": [base64, ...]}, or one raw image
body) and answers each one's top-k; concurrent requests are batched (up to --max-batch images, or after
--max-wait-ms). GET / is a web page; /v1/model, /health, /ready, /metrics (Prometheus) and /openapi.json
describe the server. Bad input (undecodable, too many pixels, too large, too many images, a wrong content type)
is a 4xx naming the fault, and never fails another request. SIGTERM answers every accepted request, then exits 0.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..core.errors import ConfigError
from .options import add_model_runtime_flags, add_model_source_flags, add_tta_flag, count_arg, size_arg


def add_parser(sub) -> None:
    p = sub.add_parser("serve", description=__doc__)
    p.add_argument("model_file", nargs="?", metavar="MODEL_FILE",
                   help="any file predict takes: checkpoint, .safetensors (with --model), TorchScript, .pt2, ONNX, "
                        "int8 files of each")
    add_model_source_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="auto: as the file is (onnxruntime for .onnx, torch for the rest); the others refuse a file "
                        "of the other kind")
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=count_arg, default=32, help="images per model call")
    g.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the oldest queued image waits for others before the model runs")
    g.add_argument("--max-queue", type=count_arg, default=256, help="images queued; beyond, 503 with Retry-After")
    g.add_argument("--max-body-mb", type=float, default=20.0, help="a request body's size limit (413 beyond)")
    g.add_argument("--max-images", type=count_arg, default=64, help="images in one request (413 beyond)")
    g.add_argument("--max-pixels", type=count_arg, default=40_000_000,
                   help="an image's width x height, read from its header before decoding (413 beyond: "
                        "decompression bombs)")
    g.add_argument("--decode-threads", type=count_arg, default=2, help="threads decoding uploads")
    g.add_argument("--workers", type=count_arg, default=1,
                   help="server processes (uvicorn's), each with its own model copy, batcher and metrics")
    g.add_argument("--drain-s", type=float, default=30.0, help="on SIGTERM, how long in-flight requests get")
    p.add_argument("--topk", "-k", type=int, default=5, help="classes per image when a request has no ?topk=")
    p.add_argument("--img-size", type=size_arg, help="override the model's evaluation size")
    p.add_argument("--decode", choices=["pil", "fast"], default=None,
                   help="pil (default): predict's reference pixels; fast: JPEGs decoded at a reduced DCT scale")
    add_tta_flag(p)
    add_model_runtime_flags(p, batch_size=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve.app import ServeSettings
    from ..serve.launch import ServeOptions
    from ..serve.launch import run as serve

    if args.model_file and args.checkpoint:
        raise ConfigError("give the model once: MODEL_FILE or --checkpoint, not both")
    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1 (got {args.topk})")
    if args.max_wait_ms < 0:
        raise ConfigError(f"--max-wait-ms must be 0 or more (got {args.max_wait_ms})")
    if args.max_body_mb <= 0:
        raise ConfigError(f"--max-body-mb must be above 0 (got {args.max_body_mb})")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: a port number is 0-65535")
    args.checkpoint = args.checkpoint or args.model_file
    from .options import model_source

    source = model_source(args)
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                             max_body_mb=args.max_body_mb, max_images=args.max_images, max_pixels=args.max_pixels,
                             topk=args.topk, decode=args.decode, tta=args.tta, decode_threads=args.decode_threads)
    options = ServeOptions(model_file=source if isinstance(source, str) else None,
                           spec=None if isinstance(source, str) or source is None else asdict(source),
                           backend=args.backend, device=args.device, precision=args.precision,
                           img_size=args.img_size, raw_weights=args.raw_weights, settings=asdict(settings))
    serve(options, args.host, args.port, args.workers, args.drain_s)
    return 0
