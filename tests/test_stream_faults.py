"""Streamed shards against a faulty HTTP server (issue 30): stalls, resets and 5xx answers are tried again and
resume at the byte reached (Range); a slow but steady server is no failure; running out of tries, a refused
connection and a shard longer than its pack.json says are one line naming the URL. The server is a thread on
127.0.0.1 that the fixture starts and stops; every fault is bounded in time (timeouts scaled down by flags)."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionzoo.cli import main
from visionzoo.config import DataConfig
from visionzoo.config.schema import TrainConfig, validate
from visionzoo.core.errors import ConfigError, DataError
from visionzoo.data.loader import build_data, make_loader, set_loader_epoch
from visionzoo.data.streaming import ShardStream, stream_source
from visionzoo.models import get_model_cfg

pytest.importorskip("braceexpand")


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory) -> Path:
    """A pack of 3 classes x 4 train / 2 val JPEGs (16 px), 4 samples a shard: 3 train shards, 2 val."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c, cls in enumerate(("ant", "bee", "cat")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (16, 16, 3)) + np.eye(3, dtype=np.int64)[c] * 180
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{cls}_{i}.jpg", quality=90)
    out = tmp_path_factory.mktemp("packs") / "pack"
    assert main(["pack", "--data", str(root), "--output", str(out), "--shard-images", "4", "--workers", "1",
                 "--no-progress"]) == 0
    return out


class FaultyServer:
    """Serves a folder with Range support; `faults[name]` is a list of faults, one used up per GET of that file:
    ("stall", seconds), ("reset",), ("status", code), ("trickle", seconds between 1 KiB chunks), ("no_range",)
    (the whole body, 200, whatever the Range header asks), ("new_etag",) (the file changed: another ETag).
    Stalls and resets happen halfway through the body. `asked` records (name, Range header) per GET."""

    def __init__(self, root: Path) -> None:
        self.root, self.faults, self.asked = root, {}, []
        self.stop = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.handle(self)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the resets and broken pipes are this server's point

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        name = h.path.lstrip("/")
        self.asked.append((name, h.headers.get("Range")))
        path = self.root / name
        if not path.is_file():
            h.send_error(404)
            return
        fault = self.faults.get(name, []).pop(0) if self.faults.get(name) else None
        if fault and fault[0] == "status":
            h.send_error(fault[1])
            return
        body = path.read_bytes()
        start = int(re.match(r"bytes=(\d+)-", h.headers["Range"]).group(1)) if h.headers.get("Range") else 0
        if fault and fault[0] == "no_range":
            start, fault = 0, None
        etag = '"v2"' if fault and fault[0] == "new_etag" else '"v1"'
        fault = None if fault and fault[0] == "new_etag" else fault
        h.send_response(206 if start else 200)
        h.send_header("ETag", etag)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        h.send_header("Content-Length", str(len(body) - start))
        h.end_headers()
        body = body[start:]
        if fault is None:
            h.wfile.write(body)
            return
        if fault[0] == "trickle":
            for i in range(0, len(body), 1024):
                h.wfile.write(body[i:i + 1024])
                h.wfile.flush()
                self.stop.wait(fault[1])
            return
        h.wfile.write(body[:len(body) // 2])
        h.wfile.flush()
        if fault[0] == "stall":
            self.stop.wait(fault[1])  # the client gives up first; ends early when the test stops the server
        else:  # reset: SO_LINGER 0 makes close() send RST
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
        h.close_connection = True

    def gets(self, name: str) -> list[str | None]:
        return [r for n, r in self.asked if n == name]


@pytest.fixture
def server(pack_dir):
    s = FaultyServer(pack_dir.parent)
    s.thread.start()
    yield s
    s.stop.set()
    s.server.shutdown()
    s.server.server_close()


def _keys(url: str, **kw) -> list[str]:
    """Every streamed training key of one epoch (no shuffle buffer, one process)."""
    cfg = DataConfig(data=url, img_size=16, workers=0, shuffle_buffer=1, **kw)
    ds = build_data(cfg, get_model_cfg("resnet10"), seed=0).split("train")
    assert isinstance(ds, ShardStream)
    ds.keys = True
    loader = make_loader(ds, 1, 0, False, seed=0)
    set_loader_epoch(loader, 0)
    return [k for batch in loader for k in batch[0]]


def test_stalls_resets_and_a_503_resume_and_read_every_sample_once(server):
    url = f"{server.url}/pack"
    # the stall (10 s) outlasts the whole read: only a timeout between bytes ends it in time
    server.faults = {"pack/train-000000.tar": [("stall", 10.0)], "pack/train-000001.tar": [("reset",), ("reset",)],
                     "pack/train-000002.tar": [("status", 503)], "pack/pack.json": [("reset",)]}
    t0 = time.monotonic()
    keys = _keys(url, stream_timeout=0.5, stream_retries=3)
    assert time.monotonic() - t0 < 9.5
    assert len(keys) == 12 and all(n == 1 for n in Counter(keys).values())
    assert keys == _keys(url)  # the same samples in the same order as an undisturbed read
    first, *resumed = server.gets("pack/train-000001.tar")[:3]
    assert first is None and len(resumed) == 2 and all(r and r != "bytes=0-" for r in resumed)
    assert server.gets("pack/train-000000.tar")[1].startswith("bytes=")  # the stalled read resumed at its byte


def test_a_server_that_ignores_range_is_read_on_from_the_byte_reached(server):
    server.faults = {"pack/train-000001.tar": [("reset",), ("no_range",)]}
    keys = _keys(f"{server.url}/pack", stream_timeout=0.5, stream_retries=1)
    assert len(keys) == len(set(keys)) == 12 and keys == _keys(f"{server.url}/pack")
    assert server.gets("pack/train-000001.tar")[1].startswith("bytes=")  # asked, and sent the whole body


def test_a_shard_that_changes_between_tries_is_not_spliced(server):
    server.faults = {"pack/train-000001.tar": [("reset",), ("new_etag",)]}
    with pytest.raises(DataError, match=r"pack/train-000001\.tar: the file changed on the server while it was read"):
        _keys(f"{server.url}/pack", stream_timeout=0.5, stream_retries=1)


def test_a_slow_steady_server_is_no_failure(server):
    """No total time limit: a shard that takes longer than --stream-timeout to arrive, a byte at a time within
    it, is read in one GET."""
    server.faults = {"pack/train-000000.tar": [("trickle", 0.1)]}
    size = (server.root / "pack" / "train-000000.tar").stat().st_size
    assert size // 1024 * 0.1 > 0.5  # the trickle outlasts the timeout
    assert len(_keys(f"{server.url}/pack", stream_timeout=0.5, stream_retries=0)) == 12
    assert server.gets("pack/train-000000.tar") == [None]  # one GET, never tried again


def test_running_out_of_tries_is_one_line_naming_the_shard(server, tmp_path, capsys):
    server.faults = {"pack/train-000001.tar": [("status", 503)] * 10}
    rc = main(["train", "--model", "resnet10", "--data", f"{server.url}/pack", "--img-size", "16", "--epochs", "1",
               "--batch-size", "4", "--workers", "0", "--device", "cpu", "--stream-retries", "2",
               "--output", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert f"{server.url}/pack/train-000001.tar: HTTP 503" in err[0] and "3 tries" in err[0]


def test_a_refused_connection_says_so(tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["train", "--model", "resnet10", "--data", f"http://127.0.0.1:{port}/pack", "--img-size", "16",
               "--device", "cpu", "--stream-retries", "1", "--output", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert f"http://127.0.0.1:{port}/pack/pack.json: the server refused the connection" in err[0]


def test_a_shard_longer_than_its_pack_json_says_is_refused(pack_dir, tmp_path):
    copy = tmp_path / "pack"
    shutil.copytree(pack_dir, copy)
    meta = json.loads((copy / "pack.json").read_text())
    meta["val"]["files"][0]["samples"] -= 1
    (copy / "pack.json").write_text(json.dumps(meta))
    ds = ShardStream(stream_source([str(copy / "val-000000.tar"), str(copy / "val-000001.tar")], None, "val"),
                     lambda x: x, train=False)
    ds.keys = True
    with pytest.raises(DataError, match=r"val-000000\.tar: 4 samples where .*pack\.json says 3"):
        list(ds)


@pytest.mark.parametrize("value", [0, -5])
def test_shuffle_buffer_below_1_is_refused(value, capsys):
    cfg = TrainConfig()
    cfg.data.shuffle_buffer = value
    with pytest.raises(ConfigError, match="shuffle_buffer"):
        validate(cfg)
    assert main(["train", "--dummy", "--shuffle-buffer", str(value), "--epochs", "1"]) == 2
    assert "--shuffle-buffer" in capsys.readouterr().err


@pytest.mark.slow
def test_a_streamed_run_through_stalls_and_resets_ends_with_the_same_weights(server, tmp_path):
    """The acceptance check: a stall past the timeout, two resets and a trickle slower than the timeout over
    the whole shard change nothing in the trained weights."""
    def run(name: str) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        assert main(["train", "--model", "resnet10", "--data", f"{server.url}/pack", "--img-size", "16",
                     "--epochs", "2", "--batch-size", "4", "--workers", "1", "--device", "cpu", "--seed", "1",
                     "--stream-timeout", "1", "--stream-retries", "3", "--output", str(out), "--no-progress"]) == 0
        return torch.load(out / "last.pth", map_location="cpu", weights_only=False)["model"]

    plain = run("plain")
    server.faults = {"pack/train-000000.tar": [("stall", 4.0)], "pack/train-000001.tar": [("reset",), ("reset",)],
                     "pack/train-000002.tar": [("trickle", 0.2)]}
    faulty = run("faulty")
    assert not any(server.faults.values())  # every fault was met
    assert plain.keys() == faulty.keys() and all(torch.equal(plain[k], faulty[k]) for k in plain)


def test_the_first_pipe_command_is_logged(pack_dir, monkeypatch, caplog):
    """A shared config with a pipe: URL runs a shell command: the log says so, once a process."""
    from visionzoo.data import streaming

    monkeypatch.setattr(streaming, "_pipe_logged", False)
    caplog.set_level("INFO", logger="visionzoo.data.streaming")
    for _ in range(2):
        with streaming.open_url(f"pipe:cat {pack_dir / 'pack.json'}") as f:
            assert json.loads(f.read())["splits"]
    said = [r.getMessage() for r in caplog.records if "pipe:" in r.getMessage()]
    assert said == [f"running the shell command of a pipe: URL: cat {pack_dir / 'pack.json'}"]


def test_a_streamed_training_shard_with_an_open_set_label_is_one_line(pack_dir, tmp_path):
    """-1 (an open-set image) is scored by evaluation but is no training target: a streamed training shard that
    carries one is refused naming the shard and the sample, where the bare loss would raise an IndexError."""
    import io
    import tarfile

    copy = tmp_path / "pack"
    shutil.copytree(pack_dir, copy)
    shard = copy / "train-000000.tar"
    with tarfile.open(shard) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]  # type: ignore[union-attr]
    first_cls = next(m.name for m, _ in members if m.name.endswith(".cls"))
    with tarfile.open(shard, "w") as out:
        for m, data in members:
            data = b"-1" if m.name == first_cls else data
            m.size = len(data)
            out.addfile(m, io.BytesIO(data))
    urls = [str(p) for p in sorted(copy.glob("train-*.tar"))]
    train = ShardStream(stream_source(urls, None, "train"), lambda x: x, train=True)
    train.keys = True
    with pytest.raises(DataError, match=rf"train-000000\.tar: sample '{first_cls[:-4]}' has label -1.*open-set"):
        list(train)
    scored = ShardStream(stream_source(urls, None, "train"), lambda x: x, train=False)
    scored.keys = True
    assert -1 in [label for _, label in scored]  # evaluation keeps open-set images
