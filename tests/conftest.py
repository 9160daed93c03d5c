"""Shared fixtures: a tiny real-image ImageFolder, the built-in digits set, and a run killed after its first
epoch then resumed.

Both are session-scoped and cheap (the ImageFolder is ~50 small files, the digits set is written
once into a temporary VISIONZOO_CACHE).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

# class name -> (foreground colour, shape). Each class differs in both colour and shape.
TINY_CLASSES = {
    "circle": ((220, 40, 40), "ellipse"),
    "square": ((40, 200, 60), "rectangle"),
    "triangle": ((50, 70, 230), "polygon"),
}
TINY_TRAIN_PER_CLASS = 12
TINY_VAL_PER_CLASS = 4


def draw_sample(shape: str, colour: tuple[int, int, int], rng: random.Random) -> Image.Image:
    """A small, noisy, non-square RGB picture of one coloured shape on a light background."""
    w, h = rng.randint(24, 40), rng.randint(24, 40)
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    px = img.load()
    for _ in range(w * h // 6):  # sensor-ish speckle
        x, y = rng.randrange(w), rng.randrange(h)
        px[x, y] = tuple(max(0, c - rng.randint(0, 60)) for c in bg)
    d = ImageDraw.Draw(img)
    m = rng.randint(2, 5)
    fill = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in colour)
    box = (m, m, w - 1 - m, h - 1 - m)
    if shape == "ellipse":
        d.ellipse(box, fill=fill)
    elif shape == "rectangle":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(w // 2, m), (w - 1 - m, h - 1 - m), (m, h - 1 - m)], fill=fill)
    return img


def write_tiny_imagefolder(root: Path, seed: int = 0) -> Path:
    """root/train/<class>/*.{jpg,png} and root/val/<class>/*.{jpg,png}; returns root."""
    rng = random.Random(seed)
    png_modes = ("RGB", "LA", "RGBA", "P")  # decoding must turn each of them into RGB
    n_png = n_jpeg = 0
    for split, n in (("train", TINY_TRAIN_PER_CLASS), ("val", TINY_VAL_PER_CLASS)):
        for cls, (colour, shape) in TINY_CLASSES.items():
            out = root / split / cls
            out.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = draw_sample(shape, colour, rng)
                if i % 3 == 2:  # a third PNG, the rest JPEG
                    img.convert(png_modes[n_png % len(png_modes)]).save(out / f"{cls}_{split}_{i:03d}.png")
                    n_png += 1
                else:
                    mode = "L" if n_jpeg % 7 == 6 else "RGB"  # the odd grayscale JPEG
                    img.convert(mode).save(out / f"{cls}_{split}_{i:03d}.jpg", quality=90)
                    n_jpeg += 1
    return root


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_imagefolder, tmp_path_factory) -> Path:
    """best.pth of resnet18 trained one epoch on the 3-class tiny ImageFolder at 32 px (seconds on a CPU).
    Read-only: shared by the whole session."""
    from visionzoo.cli import main

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    assert main(["train", "--model", "resnet18", "--data", str(tiny_imagefolder), "--img-size", "32",
                 "--epochs", "1", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--seed", "0",
                 "--output", str(out), "--no-progress"]) == 0
    return out / "best.pth"


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory) -> Path:
    """Path DATA with DATA/train/<class>/* (12 per class) and DATA/val/<class>/* (4 per class).

    Classes: circle (red), square (green), triangle (blue). Treat it as read-only: tests that
    need to modify files copy them first.
    """
    return write_tiny_imagefolder(tmp_path_factory.mktemp("tiny") / "DATA")


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory) -> Iterator[Path]:
    """The built-in digits ImageFolder, materialised into a temporary VISIONZOO_CACHE.

    VISIONZOO_CACHE stays set for the rest of the session (so `--data builtin:digits` in any test
    finds the same copy) and is restored at the end.
    """
    from visionzoo.data.builtin import materialize

    cache = tmp_path_factory.mktemp("visionzoo-cache")
    old = os.environ.get("VISIONZOO_CACHE")
    os.environ["VISIONZOO_CACHE"] = str(cache)
    try:
        yield materialize("digits")
    finally:
        if old is None:
            os.environ.pop("VISIONZOO_CACHE", None)
        else:
            os.environ["VISIONZOO_CACHE"] = old


@pytest.fixture
def hanging_mlflow_server() -> Iterator[tuple[str, dict]]:
    """A loopback MLflow tracking server that hangs. Yields its URI and its state: state["create"] True (the
    default): it finds the experiment and creates the run as MLflow's REST API does, then never answers another
    call; False: it answers nothing at all. state["asked"] lists the paths it was asked for. Released and stopped
    at the test's end."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    release, state = threading.Event(), {"create": True, "asked": []}
    answers = {  # what a real server says to the calls that start a run
        "/experiments/get-by-name": {"experiment": {"experiment_id": "1", "name": "visionzoo",
                                                    "artifact_location": "mlflow-artifacts:/1",
                                                    "lifecycle_stage": "active"}},
        "/runs/create": {"run": {"info": {"run_id": "r1", "run_uuid": "r1", "experiment_id": "1", "user_id": "u",
                                          "status": "RUNNING", "start_time": 1,
                                          "artifact_uri": "mlflow-artifacts:/1/r1/artifacts",
                                          "lifecycle_stage": "active", "run_name": "run"}, "data": {}}},
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def handle(self):
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped waiting, as it should: no traceback from the server thread

        def _serve(self) -> None:
            state["asked"].append(self.path)
            body = next((b for p, b in answers.items() if p in self.path), None) if state["create"] else None
            status = 200
            if body is None:
                release.wait(120)
                body, status = {"error_code": "INTERNAL_ERROR", "message": "gone"}, 500
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._serve()

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._serve()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        release.set()
        server.shutdown()
        server.server_close()


class _KilledAfterEpoch1(BaseException):
    """A kill right after epoch 1 is logged (its last.pth written): nothing after it runs."""


def _killed_then_resumed(args: list[str]) -> dict:
    """`visionzoo ARGS` (with --output) killed after its first epoch, then `--resume auto` with the same args, so
    both sessions see the same --epochs and schedule. Returns the epoch-1 last.pth."""
    import torch

    from visionzoo.cli import main
    from visionzoo.engine import runlog

    real = runlog.RunLog.epoch

    def epoch(self, record, *a, **k):
        real(self, record, *a, **k)
        if record["epoch"] == 1:
            raise _KilledAfterEpoch1

    with pytest.MonkeyPatch.context() as m:
        m.setattr(runlog.RunLog, "epoch", epoch)
        with pytest.raises(_KilledAfterEpoch1):
            main(args)
    first = torch.load(Path(args[args.index("--output") + 1]) / "last.pth", map_location="cpu", weights_only=True)
    assert first["epoch"] == 1
    assert main([*args, "--resume", "auto"]) == 0
    return first


@pytest.fixture(scope="session")
def killed_then_resumed():
    """The function that runs a training command killed after epoch 1, then resumed (the exact-resume tests)."""
    return _killed_then_resumed
