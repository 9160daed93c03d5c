"""visionzoo bench-serve (serve.loadgen): the bad payloads, the loopback guard, the metrics and percentile
arithmetic, the request plan; and one run against a real `visionzoo serve` started on a tiny checkpoint."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionzoo.cli import main
from visionzoo.core.errors import ConfigError
from visionzoo.serve import loadgen

METRICS = """\
# HELP visionzoo_batch_size images per model call
# TYPE visionzoo_batch_size histogram
visionzoo_batch_size_bucket{le="1.0"} 3.0
visionzoo_batch_size_bucket{le="+Inf"} 5.0
visionzoo_batch_size_count 5.0
visionzoo_batch_size_sum 17.0
visionzoo_requests_total{code="200"} 12.0
visionzoo_requests_total{code="413"} 3.0
visionzoo_errors_total{kind="a label { with } braces and spaces"} 2.0 1712345678000
visionzoo_queue_depth 0.0
process_resident_memory_bytes 1.048576e+08
a broken line
"""


def test_png_bomb_is_20000_px_square_and_tiny(monkeypatch):
    bomb = loadgen.png_bomb()
    assert len(bomb) < 200_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Image.open itself refuses a bomb: read the header only
    with Image.open(io.BytesIO(bomb)) as im:
        assert im.format == "PNG" and im.size == (20_000, 20_000) and im.mode == "1"
    # the one IDAT inflates to exactly 20,000 zero scanlines (filter byte + 2,500 bytes), read a MB at a time
    length = struct.unpack(">I", bomb[33:37])[0]
    crc = struct.unpack(">I", bomb[41 + length:45 + length])[0]
    assert bomb[37:41] == b"IDAT" and zlib.crc32(bomb[37:41 + length]) == crc
    d, data, total = zlib.decompressobj(), bomb[41:41 + length], 0
    while data or not d.eof:
        out = d.decompress(data, 1 << 20)
        data = d.unconsumed_tail
        assert not out.strip(b"\0")
        total += len(out)
        if not out and not data:
            break
    assert d.eof and total == 20_000 * 2_501
    assert bomb.endswith(b"IEND\xaeB`\x82")


def test_a_small_bomb_decodes_as_a_black_image():
    with Image.open(io.BytesIO(loadgen.png_bomb(37))) as im:
        im.load()
        assert im.size == (37, 37) and im.getextrema() == (0, 0)


def test_bad_payloads_are_the_three_kinds():
    good = [loadgen.Payload("a.png", b"\x89PNG" + bytes(60), "image/png"),
            loadgen.Payload("b.jpg", b"\xff\xd8" + bytes(300), "image/jpeg")]
    garbage, truncated, bomb = loadgen.bad_payloads(good)
    assert all(p.bad for p in (garbage, truncated, bomb))
    assert len(garbage.body) == 2048 and garbage.content_type == "image/jpeg"
    assert garbage.body == loadgen.bad_payloads(good)[0].body  # seeded
    assert truncated.body == good[1].body[:100] and truncated.content_type == "image/jpeg"
    assert bomb.content_type == "image/png"


def test_plan_is_exact_seeded_and_cycles():
    images = [loadgen.Payload(f"{i}.jpg", b"", "image/jpeg") for i in range(3)]
    bad = [loadgen.Payload(f"bad{i}", b"", "image/jpeg", bad=True) for i in range(3)]
    todo = loadgen.plan(images, bad, 40, 0.25)
    assert len(todo) == 40 and sum(p.bad for p in todo) == 10
    assert todo == loadgen.plan(images, bad, 40, 0.25)
    assert [p.name for p in todo if p.bad] == [f"bad{i % 3}" for i in range(10)]
    assert [p.name for p in todo if not p.bad] == [f"{i % 3}.jpg" for i in range(30)]
    assert loadgen.plan(images, [], 5, 0.0) == [images[i % 3] for i in range(5)]


def test_non_loopback_url_is_refused_without_allow_remote(tmp_path, capsys, monkeypatch):
    # refused from the URL's text alone: nothing may be opened (a reserved .invalid name, and a guard on httpx)
    import httpx

    def no_network(*args, **kwargs):
        raise AssertionError("bench-serve opened a connection for a refused URL")

    monkeypatch.setattr(httpx.Client, "__init__", no_network)
    monkeypatch.setattr(httpx.AsyncClient, "__init__", no_network)
    assert main(["bench-serve", "http://remote.invalid:8000", "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-remote" in err and "remote.invalid" in err
    assert loadgen.check_url("http://remote.invalid:8000/", allow_remote=True) == "http://remote.invalid:8000"
    for url in ("http://127.0.0.1:8000", "http://localhost:1/", "http://[::1]:8000"):
        assert loadgen.check_url(url, allow_remote=False) == url.rstrip("/")
    with pytest.raises(ConfigError, match="not an http"):
        loadgen.check_url("ftp://127.0.0.1", allow_remote=False)


def test_usage_errors_are_one_line(tmp_path, capsys):
    assert main(["bench-serve", str(tmp_path / "missing.pth"), "--images", str(tmp_path)]) == 2
    assert main(["bench-serve", "http://127.0.0.1:1", "--images", str(tmp_path), "--bad-fraction", "1.5"]) == 2
    assert main(["bench-serve", "http://127.0.0.1:1", "--images", str(tmp_path)]) == 1  # no images in the folder
    (tmp_path / "m.pth").write_bytes(b"")  # refused before any server starts
    assert main(["bench-serve", str(tmp_path / "m.pth"), "--images", str(tmp_path), "--server-args", "--x 'y"]) == 2
    assert main(["bench-serve", "http://127.0.0.1:1", "--images", str(tmp_path), "--server-args=--x"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 5 and "model file" in lines[0] and "--bad-fraction" in lines[1] and "no image" in lines[2]
    assert "--server-args" in lines[3] and "quotation" in lines[3] and "--server-args" in lines[4]


def test_metrics_parse_and_percentiles():
    m = loadgen.parse_metrics(METRICS)
    assert m["visionzoo_batch_size_count"] == 5 and m["visionzoo_batch_size_sum"] == 17
    assert m["visionzoo_requests_total"] == 15  # summed over label sets
    assert m["visionzoo_errors_total"] == 2 and m["process_resident_memory_bytes"] == 104857600
    assert "a" not in m and "visionzoo_batch_size_bucket" in m
    assert loadgen.delta({"x": 1.0}, {"x": 4.0}, "x") == 3 and loadgen.delta({}, {"x": 4.0}, "x") is None
    values = [float(v) for v in np.random.default_rng(0).exponential(10, 101)]
    for q in (0, 50, 95, 99, 100):
        assert loadgen.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert loadgen.percentile([3.0], 99) == 3.0 and loadgen.percentile([], 50) is None


def test_answers_match_within_tolerance_and_ties_may_swap():
    ref = [(2, 0.5), (0, 0.3), (1, 0.2)]
    assert loadgen.same_answer([(2, 0.50005), (0, 0.29995), (1, 0.2)], ref)
    assert not loadgen.same_answer([(2, 0.5002), (0, 0.2998), (1, 0.2)], ref)
    assert not loadgen.same_answer([(0, 0.5), (2, 0.3), (1, 0.2)], ref)  # a real swap
    tie = [(2, 0.5), (0, 0.25), (1, 0.25)]
    assert loadgen.same_answer([(2, 0.5), (1, 0.25), (0, 0.25)], tie)  # tied classes swapped by rounding
    assert not loadgen.same_answer([(2, 0.5), (0, 0.3)], ref)


def write_images(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        side = 32 + 6 * i
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        pixels[side // 4:3 * side // 4, side // 4:3 * side // 4] = [(200, 30, 30), (30, 200, 30), (30, 30, 200)][i % 3]
        Image.fromarray(pixels).save(folder / f"img{i}.jpg", quality=90)
    return folder


def test_bench_serve_against_a_real_server(tiny_ckpt, tmp_path, capsys):
    pytest.importorskip("visionzoo.serve.app", reason="visionzoo serve is not written yet")
    images = write_images(tmp_path / "images")
    out = tmp_path / "report.json"
    code = main(["bench-serve", str(tiny_ckpt), "--images", str(images), "--concurrency", "1,4", "--requests", "40",
                 "--bad-fraction", "0.25", "--topk", "3", "--json", str(out), "--no-progress",
                 "--server-args", "--device cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    report = json.loads(out.read_text())
    assert report["images"] == 6 and report["url"].startswith("http://127.0.0.1:")
    assert report["server"]["model"] is not None
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 4]
    for lv in report["levels"]:
        assert (lv["requests"], lv["good"], lv["bad"]) == (40, 30, 10)
        assert (lv["ok"], lv["4xx"], lv["errors"], lv["wrong"]) == (30, 10, 0, 0), lv
        assert lv["error_kinds"] == {}
        assert lv["server_batch_mean"] is not None and lv["server_batch_mean"] >= 1
        assert lv["p50_ms"] <= lv["p95_ms"] <= lv["p99_ms"]
        assert lv["server_rss_after_mb"] > 0
    assert report["levels"][0]["server_batch_mean"] == pytest.approx(1.0)  # one request at a time: batches of one
    rows = [line.split() for line in printed.out.splitlines() if line.split()[:1] in (["1"], ["4"])]
    assert [r[:6] for r in rows] == [["1", "40", "30", "10", "0", "0"], ["4", "40", "30", "10", "0", "0"]]
