"""The HTTP app behind `visionzoo serve` (Starlette, run by uvicorn): predict, model card, health, readiness,
Prometheus metrics, the OpenAPI description and a web page.

Starlette rather than FastAPI: /v1/predict takes three body kinds (multipart, JSON, a raw image) and refuses
each kind of bad input with its own status; plain Starlette reads the body once, under our limits, where
FastAPI's declared parameters would parse it before we can count bytes or images. The OpenAPI text is written
out below instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive

from ..core.errors import BadImageError
from ..data.loader import DeviceNormalizer
from ..inference.predict import top_classes
from ..inference.runtime import Runner
from .batcher import Answer, Batcher, Overloaded
from .decode import TooManyPixels, upload_decoder
from .metrics import CONTENT_TYPE, ServerMetrics

log = logging.getLogger("visionzoo")
MB = 1 << 20
MAX_TOPK = 100  # ?topk= beyond it (and below the class count) is refused: 1,000 probabilities per image is a dump


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 32  # images per model call
    max_wait_ms: float = 5.0  # how long the oldest queued image waits for others before the model runs
    max_queue: int = 256  # images queued; beyond, 503 + Retry-After
    max_body_mb: float = 20.0  # a request body's size limit
    max_images: int = 64  # images in one request
    max_pixels: int = 40_000_000  # an image's width x height, read from its header before decoding
    topk: int = 5
    decode: str | None = None  # pil (predict's default, the reference pixels) | fast
    tta: str | None = None
    decode_threads: int = 2
    retry_after_s: int = 1


class Problem(Exception):
    """A request refused: its HTTP status, a kind (the errors metric's label) and a message naming the fault."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"kind": self.kind, "message": self.message}}, self.status, self.headers)


@dataclass(frozen=True)
class ModelCard:
    """What GET /v1/model says: the model and how it reads images (predict's preprocessing)."""

    model: str
    num_classes: int
    classes: list[str] | None
    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    digest: str  # sha256 of the model file (with --model: of the weights file)
    source: str
    format: str
    precision: str
    device: str
    tta: str | None
    max_batch: int


def card_of(runner: Runner, source: str, digest: str, settings: ServeSettings) -> ModelCard:
    info = runner.info
    return ModelCard(info.model_name, info.num_classes, info.classes, info.img_size, info.crop_pct,
                     info.interpolation, info.mean, info.std, digest, source, runner.fmt, runner.precision,
                     str(runner.device), settings.tta, settings.max_batch)


def batch_runner(runner: Runner, k: int, tta: str | None) -> Callable[[Sequence[torch.Tensor]], list[Answer]]:
    """A batch of uint8 images -> each one's top-k, through predict's own computation (top_classes)."""
    normalizer = DeviceNormalizer(runner.info.mean, runner.info.std, runner.device)

    def run(images: Sequence[torch.Tensor]) -> list[Answer]:
        probs, idx = top_classes(runner, normalizer, list(images), k, tta)
        return list(zip(probs, idx))

    return run


class _Limited:
    """The ASGI receive of a request, refusing (413) once more than `limit` body bytes have arrived: a body
    sent without a Content-Length (chunked) is held to the same limit as one with it."""

    def __init__(self, receive: Receive, limit: int, flag_mb: float):
        self.receive, self.limit, self.flag_mb, self.seen = receive, limit, flag_mb, 0

    async def __call__(self) -> Message:
        message = await self.receive()
        self.seen += len(message.get("body", b""))
        if self.seen > self.limit:
            raise Problem(413, "too_large", f"request body over {self.flag_mb:g} MB (--max-body-mb)")
        return message


async def read_images(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in the request, in order: multipart `file` fields, JSON {"images": [base64]}
    or one raw image body."""
    limit = int(settings.max_body_mb * MB)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise Problem(413, "too_large", f"request body of {int(length) / MB:.1f} MB is over {settings.max_body_mb:g} "
                                        "MB (--max-body-mb)")
    request = Request(request.scope, _Limited(request.receive, limit, settings.max_body_mb))
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        images = await _multipart(request, settings)
    elif ctype == "application/json":
        images = _json_images(await request.body(), settings)
    elif ctype.startswith("image/"):
        images = [("image", await request.body())]
    else:
        raise Problem(415, "unsupported_media_type",
                      f"content type {ctype or 'missing'!r}: send multipart/form-data (fields named 'file'), "
                      "application/json ({\"images\": [base64, ...]}) or one image with an image/* type")
    if not images:
        raise Problem(400, "bad_request", "no image in the request")
    if len(images) > settings.max_images:
        raise Problem(413, "too_many_images", f"{len(images)} images in one request; at most {settings.max_images} "
                                              "(--max-images)")
    return images


async def _multipart(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    limit = int(settings.max_body_mb * MB)
    try:
        form = await request.form(max_files=settings.max_images, max_fields=settings.max_images, max_part_size=limit)
    except (MultiPartException, HTTPException) as e:
        detail = getattr(e, "message", None) or getattr(e, "detail", str(e))
        if "Too many files" in str(detail):
            raise Problem(413, "too_many_images", f"more than {settings.max_images} images in one request "
                                                  "(--max-images)") from None
        raise Problem(400, "bad_request", f"unreadable multipart body: {detail}") from None
    try:
        files = form.getlist("file")
        other = [key for key in form.keys() if key != "file"]
        if other:
            raise Problem(400, "bad_request", f"unexpected form field {other[0]!r}: images go in fields named 'file'")
        out = []
        for i, f in enumerate(files):
            if isinstance(f, str):
                raise Problem(400, "bad_request", f"form field 'file' #{i + 1} is text, not an uploaded file")
            out.append((f.filename or f"file #{i + 1}", await f.read()))
        return out
    finally:
        await form.close()


def _json_images(body: bytes, settings: ServeSettings) -> list[tuple[str, bytes]]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise Problem(400, "bad_request", f"body is not JSON ({e})") from None
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
        raise Problem(400, "bad_request", 'JSON body must be {"images": [<base64 string>, ...]}')
    if len(images) > settings.max_images:  # before decoding any of them
        raise Problem(413, "too_many_images", f"{len(images)} images in one request; at most {settings.max_images} "
                                              "(--max-images)")
    out = []
    for i, text in enumerate(images):
        try:
            out.append((f"images[{i}]", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise Problem(400, "bad_request", f"images[{i}] is not valid base64") from None
    return out


def _topk(request: Request, settings: ServeSettings, num_classes: int, most: int) -> int:
    given = request.query_params.get("topk")
    if given is None:
        return min(settings.topk, num_classes)
    if not given.isdigit() or not 1 <= min(int(given), num_classes) <= most:
        raise Problem(400, "bad_request", f"topk={given!r}: a whole number from 1 to {most}")
    return min(int(given), num_classes)


class Server:
    """One loaded model and its batcher, decode pool and metrics; `app` is the ASGI application."""

    def __init__(self, runner: Runner, settings: ServeSettings, source: str = "", digest: str = ""):
        self.runner, self.settings = runner, settings
        self.card = card_of(runner, source, digest, settings)
        self.metrics = ServerMetrics()
        self.decode = upload_decoder(runner.info, settings.max_pixels, settings.decode)
        self.ready = False
        self.decoding = 0  # images of read requests not yet queued (decoding): what the batcher may wait for
        self.batcher: Batcher | None = None
        self.pool: ThreadPoolExecutor | None = None
        # the model call computes the most classes a request may ask for (topk=); each answer is cut to its own
        self.k = min(runner.info.num_classes, max(settings.topk, MAX_TOPK))
        self.app = Starlette(routes=[
            Route("/", self.page), Route("/v1/predict", self.predict, methods=["POST"]),
            Route("/v1/model", self.model), Route("/health", self.health), Route("/ready", self.ready_check),
            Route("/metrics", self.prometheus), Route("/openapi.json", self.openapi), Route("/docs", self.docs),
        ], lifespan=self.lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        s = self.settings
        self.pool = ThreadPoolExecutor(s.decode_threads, thread_name_prefix="visionzoo-decode")
        self.batcher = Batcher(batch_runner(self.runner, self.k, s.tta), s.max_batch, s.max_wait_ms, s.max_queue,
                               self.metrics, lambda: self.decoding)
        info = self.runner.info
        blank = torch.zeros(3, info.img_size, info.img_size, dtype=torch.uint8)
        for n in sorted({1, s.max_batch}):  # the first calls allocate and pick kernels: not a user's latency
            await self.batcher.call_model([blank] * n)
        self.batcher.start()
        self.ready = True
        log.info(f"visionzoo serve: {info.model_name} ({self.card.format}, {self.runner.precision}) ready")
        try:
            yield
        finally:  # uvicorn has stopped taking requests and answered the ones in flight
            self.ready = False
            await self.batcher.close()
            self.pool.shutdown(wait=True)

    async def predict(self, request: Request) -> Response:
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            response = await self._predict(request, started)
        except Problem as p:
            self.metrics.errors.labels(p.kind).inc()
            response = p.response()
        except Exception:  # a bug or a model failure: the request gets a 500, the server stays up
            log.exception("visionzoo serve: predict failed")
            self.metrics.errors.labels("internal").inc()
            response = Problem(500, "internal", "the model failed on this request (see the server log)").response()
        finally:
            self.metrics.in_flight.dec()
        self.metrics.requests.labels(str(response.status_code)).inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _predict(self, request: Request, started: float) -> Response:
        assert self.batcher is not None and self.pool is not None
        if not self.ready:
            raise Problem(503, "not_ready", "the model is not loaded yet", {"Retry-After": "1"})
        k = _topk(request, self.settings, self.runner.info.num_classes, self.k)
        payloads = await read_images(request, self.settings)
        loop = asyncio.get_running_loop()
        self.decoding += len(payloads)
        try:
            decoded = await asyncio.gather(*(loop.run_in_executor(self.pool, self.decode, data, name)
                                             for name, data in payloads), return_exceptions=True)
        finally:
            self.decoding -= len(payloads)
        failed = [(i, e) for i, e in enumerate(decoded) if isinstance(e, BaseException)]
        for _, e in failed:
            if not isinstance(e, BadImageError):
                raise e
        if failed:
            i, e = failed[0]
            kind = "too_many_pixels" if isinstance(e, TooManyPixels) else "bad_image"
            where = f"image {i + 1} of {len(payloads)}: " if len(payloads) > 1 else ""
            raise Problem(413 if kind == "too_many_pixels" else 422, kind, f"{where}{e}")
        try:
            answers = await self.batcher.submit([d for d in decoded if isinstance(d, torch.Tensor)])
        except Overloaded as e:
            raise Problem(503, "overloaded", f"server busy: {e}; retry later",
                          {"Retry-After": str(self.settings.retry_after_s)}) from None
        info = self.runner.info
        predictions = [{"file": name, "top": [{"index": c, "label": info.class_name(c), "prob": p}
                                              for p, c in zip(probs[:k], idx[:k])]}
                       for (name, _), (probs, idx) in zip(payloads, answers)]
        return JSONResponse({"model": info.model_name, "predictions": predictions,
                             "latency_ms": round((time.perf_counter() - started) * 1000, 3)})

    async def model(self, request: Request) -> Response:
        return JSONResponse(asdict(self.card))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready_check(self, request: Request) -> Response:
        if self.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "loading"}, 503, {"Retry-After": "1"})

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def page(self, request: Request) -> Response:
        return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI | {"info": {**OPENAPI["info"], "description": f"model {self.card.model}"}})

    async def docs(self, request: Request) -> Response:
        """The OpenAPI description as a plain page (Swagger UI would load its scripts from a CDN: none offline)."""
        rows = "".join(f"<li><code>{m.upper()} {path}</code>: {op['summary']}</li>"
                       for path, ops in OPENAPI["paths"].items() for m, op in ops.items())
        return HTMLResponse(f"<!doctype html><title>visionzoo serve API</title><h1>visionzoo serve</h1><ul>{rows}</ul>"
                            '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a></p>')


def create_app(runner: Runner, settings: ServeSettings | None = None, source: str = "", digest: str = "") -> Starlette:
    """The ASGI app serving `runner` (inference.runtime.load_runner's): run it with uvicorn, or Starlette's
    TestClient in tests (its lifespan warms the model up)."""
    return Server(runner, settings or ServeSettings(), source, digest).app


_ERROR = {"description": "refused: {\"error\": {\"kind\", \"message\"}}"}
_TOP = {"type": "object", "properties": {"index": {"type": "integer"}, "label": {"type": "string"},
                                         "prob": {"type": "number"}}}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "visionzoo serve", "version": "1"},
    "paths": {
        "/v1/predict": {"post": {
            "summary": "top-k classes of images (multipart fields 'file', a JSON base64 list, or a raw image)",
            "parameters": [{"name": "topk", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
            "requestBody": {"content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
                "application/json": {"schema": {"type": "object", "properties": {
                    "images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}}}}},
                "image/*": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {
                "200": {"description": "one prediction per image, in order", "content": {"application/json": {
                    "schema": {"type": "object", "properties": {
                        "model": {"type": "string"}, "latency_ms": {"type": "number"},
                        "predictions": {"type": "array", "items": {"type": "object", "properties": {
                            "file": {"type": "string"}, "top": {"type": "array", "items": _TOP}}}}}}}}},
                "400": _ERROR, "413": _ERROR, "415": _ERROR, "422": _ERROR,
                "503": {"description": "queue full or not ready: retry after Retry-After seconds"}}}},
        "/v1/model": {"get": {"summary": "the model: name, classes, input size, preprocessing, file digest"}},
        "/health": {"get": {"summary": "the process is up"}},
        "/ready": {"get": {"summary": "200 once the model is loaded and warmed up, else 503"}},
        "/metrics": {"get": {"summary": "Prometheus metrics: requests, errors by kind, latency, batch size, queue"}},
        "/": {"get": {"summary": "a web page: drop an image, see its top-5"}},
    },
}
