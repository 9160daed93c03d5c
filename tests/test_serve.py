"""visionzoo serve: answers equal predict's, dynamic batching, bad input refused without hurting others,
back-pressure, the describing endpoints, and a SIGTERM that answers every accepted request."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from visionzoo.cli import main  # noqa: E402
from visionzoo.inference.predict import predict  # noqa: E402
from visionzoo.inference.runtime import load_runner  # noqa: E402
from visionzoo.serve.app import ServeSettings, create_app  # noqa: E402
from visionzoo.serve.loadgen import free_port, png_bomb  # noqa: E402

CTYPE = {".jpg": "image/jpeg", ".png": "image/png"}


@pytest.fixture(scope="module")
def images(tiny_imagefolder) -> list[Path]:
    return sorted((tiny_imagefolder / "val").rglob("*.*"))[:6]


@pytest.fixture(scope="module")
def model_files(tiny_ckpt, tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint, its ONNX export and that file quantised to int8 (ONNX Runtime QDQ)."""
    d = tmp_path_factory.mktemp("serve-models")
    onnx_file, int8 = d / "m.onnx", d / "m-int8.onnx"
    assert main(["export", "--checkpoint", str(tiny_ckpt), "--format", "onnx", "--output", str(onnx_file)]) == 0
    assert main(["quantize", "--checkpoint", str(onnx_file), "--output", str(int8), "--calib-batches", "1",
                 "--batch-size", "8", "--no-eval"]) == 0
    return {"checkpoint": tiny_ckpt, "onnx": onnx_file, "int8": int8}


def client(model: Path, **settings) -> TestClient:
    return TestClient(create_app(load_runner(model, "cpu"), ServeSettings(**settings)))


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def assert_same(served: list[dict], expected: list[dict]) -> None:
    assert len(served) == len(expected)
    for s, e in zip(served, expected):
        assert [t["index"] for t in s["top"]] == [t["index"] for t in e["top"]]
        assert [t["label"] for t in s["top"]] == [t["class"] for t in e["top"]]
        for a, b in zip(s["top"], e["top"]):
            assert a["prob"] == pytest.approx(b["prob"], abs=1e-5)


@pytest.mark.parametrize("kind", ["checkpoint", "onnx", "int8"])
def test_answers_equal_predict_for_every_body_kind(kind, model_files, images):
    expected = predict(model_files[kind], images, topk=3, device="cpu")
    with client(model_files[kind]) as c:
        raw = [c.post("/v1/predict?topk=3", content=p.read_bytes(), headers={"content-type": CTYPE[p.suffix]})
               for p in images]
        assert all(r.status_code == 200 for r in raw), raw[0].text
        assert_same([r.json()["predictions"][0] for r in raw], expected)
        multi = c.post("/v1/predict?topk=3", files=[("file", (p.name, p.read_bytes(), CTYPE[p.suffix]))
                                                    for p in images])
        assert multi.status_code == 200, multi.text
        assert [p["file"] for p in multi.json()["predictions"]] == [p.name for p in images]  # in order
        assert_same(multi.json()["predictions"], expected)
        as_json = c.post("/v1/predict?topk=3", json={"images": [base64.b64encode(p.read_bytes()).decode()
                                                                for p in images]})
        assert as_json.status_code == 200, as_json.text
        assert_same(as_json.json()["predictions"], expected)
        assert as_json.json()["model"] == "resnet18" and as_json.json()["latency_ms"] > 0


def slow(model: Path, seconds: float):
    """The model's runner, each call taking `seconds` more: requests pile up while it runs."""
    runner = load_runner(model, "cpu")
    fast = runner.fn
    runner.fn = lambda x: (time.sleep(seconds), fast(x))[1]
    return runner


def test_concurrent_requests_share_model_calls(tiny_ckpt, images):
    with TestClient(create_app(slow(tiny_ckpt, 0.2), ServeSettings(max_batch=8, max_wait_ms=300))) as c:
        body = images[0].read_bytes()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: c.post("/v1/predict", content=body,
                                                   headers={"content-type": "image/jpeg"}).status_code, range(8)))
        assert codes == [200] * 8
        text = c.get("/metrics").text
    calls, served = metric(text, "visionzoo_batch_size_count"), metric(text, "visionzoo_batch_size_sum")
    assert served == 8 and calls < 8  # at least two requests answered by one model call
    assert metric(text, 'visionzoo_requests_total{code="200"}') == 8


def test_a_lone_request_does_not_wait_out_max_wait(tiny_ckpt, images):
    with client(tiny_ckpt, max_batch=32, max_wait_ms=5000) as c:
        started = time.perf_counter()
        r = c.post("/v1/predict", content=images[0].read_bytes(), headers={"content-type": "image/jpeg"})
        took = time.perf_counter() - started
    assert r.status_code == 200 and took < 2.5  # no other image on its way: the model ran without waiting 5 s


def test_bad_input_is_a_4xx_naming_it_and_good_requests_in_the_same_batch_succeed(tiny_ckpt, images):
    good = images[0].read_bytes()
    truncated = good[: len(good) // 3] if images[0].suffix == ".jpg" else None
    jpg = next(p for p in images if p.suffix == ".jpg").read_bytes()
    bad = {  # name -> (request kwargs, expected status, expected kind)
        "garbage": ({"content": b"\x13\x37" * 1000, "headers": {"content-type": "image/jpeg"}}, 422, "bad_image"),
        "truncated": ({"content": truncated or jpg[: len(jpg) // 3], "headers": {"content-type": "image/jpeg"}},
                      422, "bad_image"),
        "bomb": ({"content": png_bomb(), "headers": {"content-type": "image/png"}}, 413, "too_many_pixels"),
        "big": ({"content": b"\0" * (2 << 20), "headers": {"content-type": "image/jpeg"}}, 413, "too_large"),
        "many": ({"json": {"images": ["AAAA"] * 1000}}, 413, "too_many_images"),
        "many-files": ({"files": [("file", ("a.jpg", good, "image/jpeg"))] * 20}, 413, "too_many_images"),
        "text": ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        "b64": ({"json": {"images": ["not base64!"]}}, 400, "bad_request"),
        "topk": ({"content": good, "headers": {"content-type": "image/jpeg"}, "params": {"topk": "0"}}, 400,
                 "bad_request"),
    }
    with client(tiny_ckpt, max_batch=16, max_wait_ms=200, max_body_mb=1, max_images=16) as c:
        def send(name):
            if name.startswith("good"):
                return c.post("/v1/predict", content=good, headers={"content-type": "image/jpeg"})
            return c.post("/v1/predict", **bad[name][0])
        names = [n for pair in zip([f"good{i}" for i in range(len(bad))], bad) for n in pair]
        with ThreadPoolExecutor(8) as pool:
            answers = dict(zip(names, pool.map(send, names)))
        alive = c.get("/health").status_code
        text = c.get("/metrics").text
    for name, (_, status, kind) in bad.items():
        r = answers[name]
        assert (r.status_code, r.json()["error"]["kind"]) == (status, kind), (name, r.text)
    assert "20000x20000" in answers["bomb"].json()["error"]["message"] or "bomb" in answers["bomb"].text
    assert "1000 images" in answers["many"].json()["error"]["message"]
    assert all(answers[n].status_code == 200 for n in names if n.startswith("good"))
    assert alive == 200
    assert metric(text, 'visionzoo_errors_total{kind="bad_image"}') == 2


def test_a_full_queue_answers_503_with_retry_after(tiny_ckpt, images):
    runner = slow(tiny_ckpt, 0.8)
    body = images[0].read_bytes()
    two = [("file", ("a.jpg", body, "image/jpeg"))] * 2
    with TestClient(create_app(runner, ServeSettings(max_batch=2, max_queue=3))) as c:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(c.post, "/v1/predict", files=two)  # in the model for 0.8 s
            time.sleep(0.25)
            second = pool.submit(c.post, "/v1/predict", files=two)  # queued: 2 of 3 places
            time.sleep(0.25)
            third = c.post("/v1/predict", files=two)  # 4 > 3: refused at once
            assert third.status_code == 503 and third.headers["retry-after"] == "1"
            assert third.json()["error"]["kind"] == "overloaded"
            assert first.result().status_code == 200 and second.result().status_code == 200


def test_model_card_health_ready_metrics_openapi_page(tiny_ckpt):
    with client(tiny_ckpt) as c:
        card = c.get("/v1/model").json()
        assert (card["model"], card["num_classes"], card["input_size"]) == ("resnet18", 3, 32)
        assert card["classes"] == ["circle", "square", "triangle"]
        assert c.get("/health").json() == {"status": "ok"} and c.get("/ready").json() == {"status": "ready"}
        text = c.get("/metrics").text
        for name in ("visionzoo_requests_total", "visionzoo_errors_total", "visionzoo_request_seconds_bucket",
                     "visionzoo_batch_size_bucket", "visionzoo_queue_depth", "process_resident_memory_bytes"):
            assert name in text or name.replace("_total", "") in text, name
        spec = c.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.") and "/v1/predict" in spec["paths"]
        assert "/v1/predict" in c.get("/docs").text
        page = c.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline


def test_serve_refuses_bad_flags_in_one_line(tiny_ckpt, capsys):
    assert main(["serve"]) == 2
    assert "give a model" in capsys.readouterr().err
    assert main(["serve", str(tiny_ckpt), "--backend", "onnxruntime", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "visionzoo export" in err


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise AssertionError("server not ready in time")


def test_sigterm_answers_every_accepted_request_and_exits_0(tiny_ckpt, images):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "visionzoo", "serve", str(tiny_ckpt), "--port", str(port),
                             "--max-wait-ms", "1500", "--max-batch", "64"], stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(proc, url)
        body = images[0].read_bytes()

        def send(_):
            req = urllib.request.Request(url + "/v1/predict", data=body, headers={"content-type": "image/jpeg"})
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(send, i) for i in range(6)]
            time.sleep(0.7)  # all six are in the batcher's queue, waiting out --max-wait-ms
            proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert [status for status, _ in answers] == [200] * 6
        assert all(len(a["predictions"]) == 1 for _, a in answers)
        assert proc.wait(timeout=60) == 0
        with pytest.raises(urllib.error.URLError):  # gone: new connections are refused
            urllib.request.urlopen(url + "/health", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
