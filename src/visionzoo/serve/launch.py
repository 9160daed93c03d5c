"""From `serve`'s options to a running server: the model loaded with predict's loader, the app, uvicorn.

uvicorn runs it: in this process for one worker; for several, uvicorn's own supervisor starts the processes,
each building its app from the options passed in an environment variable (`app_from_env`, a factory that
uvicorn imports by name), so no home-made process management."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..inference.model_info import with_preprocessing
from ..inference.model_spec import ModelSpec
from ..inference.runtime import detect_format, load_runner
from .app import Server, ServeSettings

ENV = "VISIONZOO_SERVE_OPTIONS"
BACKENDS = ("auto", "torch", "onnxruntime")


@dataclass
class ServeOptions:
    """Everything a worker needs to build the same server: the model, how it runs, the app's settings."""

    model_file: str | None = None
    spec: dict[str, Any] | None = None  # a ModelSpec's fields (--model NAME --weights FILE)
    backend: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    img_size: int | None = None
    raw_weights: bool = False
    settings: dict[str, Any] = field(default_factory=dict)  # ServeSettings' fields

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> ServeOptions:
        return cls(**json.loads(text))


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_backend(backend: str, source: str, fmt: str) -> None:
    """--backend torch|onnxruntime is a promise about the file: refused in one line when the file is the other kind."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: choose {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and fmt != "onnx":
        raise ConfigError(f"--backend onnxruntime: {source} is a {fmt} file; export it first "
                          f"(visionzoo export --checkpoint {source} --format onnx) and serve the .onnx")
    if backend == "torch" and fmt == "onnx":
        raise ConfigError(f"--backend torch: {source} is an ONNX file, which runs on onnxruntime (--backend auto)")


def build_server(options: ServeOptions) -> Server:
    if options.spec is not None:
        source: Any = ModelSpec(**options.spec)
        label, fmt, digest_of = source.label, "weights", source.weights
    elif options.model_file:
        source = label = options.model_file
        fmt, digest_of = detect_format(options.model_file), options.model_file
    else:
        raise ConfigError("serve needs a model: MODEL_FILE, or --model NAME with --weights FILE or --pretrained")
    check_backend(options.backend, label, fmt)
    runner = load_runner(source, options.device, options.precision, raw_weights=options.raw_weights)
    runner.info = with_preprocessing(runner.info, options.img_size)
    digest = file_digest(digest_of) if digest_of else ""
    return Server(runner, ServeSettings(**options.settings), label, digest)


def app_from_env() -> Any:
    """uvicorn's factory in each worker process (--workers N)."""
    return build_server(ServeOptions.from_env(os.environ[ENV])).app


def run(options: ServeOptions, host: str, port: int, workers: int = 1, drain_s: float = 30.0) -> None:
    """Serve until SIGTERM or Ctrl-C; on SIGTERM uvicorn stops accepting, answers what it accepted, then the
    batcher empties its queue (Server.lifespan), and the process exits 0."""
    import uvicorn

    common: dict[str, Any] = {"host": host, "port": port, "timeout_graceful_shutdown": drain_s,
                              "log_level": "warning", "access_log": False}
    if workers > 1:
        os.environ[ENV] = options.to_env()
        uvicorn.run("visionzoo.serve.launch:app_from_env", factory=True, workers=workers, **common)
        return
    server = build_server(options)
    # uvicorn re-raises the signal it drained on once it is done: with the default handler a drained SIGTERM
    # would still end the process as killed (143); this one makes the drained exit the clean one it is
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.Server(uvicorn.Config(server.app, **common)).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
