"""The web page at `GET /` of `visionzoo serve`, driven in headless Chromium through playwright: an upload gets
the same top-1 class as `visionzoo predict`, an undecodable file shows the server's message, and the page loads
nothing from outside the server (it must work offline).

Needs playwright's Python package and a system Chromium (playwright cannot download its own browsers here);
skipped when either is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
START_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system Chromium's path; skips without it or playwright. Session-scoped so that pytest sets it up
    before the (session-scoped) tiny checkpoint: a skip costs no training."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no system Chromium (/usr/bin/chromium or chromium on PATH)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tiny_ckpt, tmp_path) -> Iterator[str]:
    """`visionzoo serve` on the tiny checkpoint, in its own process; yields its base URL once /ready says 200."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "visionzoo", "serve", str(tiny_ckpt), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=subprocess.DEVNULL, stderr=err, env=ENV)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"visionzoo serve exited with status {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"visionzoo serve not ready after {START_TIMEOUT_S} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser_page(chromium):
    """A fresh Chromium page and the list of every URL it requested."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            requested: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            yield page, requested
        finally:
            browser.close()


def test_page_predicts_like_the_cli_and_stays_offline(browser_page, server, tiny_imagefolder, tiny_ckpt, tmp_path):
    page, requested = browser_page
    img = tmp_path / "circle.jpg"
    with Image.open(next((tiny_imagefolder / "val" / "circle").glob("*.jpg"))) as src:
        src.convert("RGB").resize((48, 40)).save(img, quality=90)

    out = tmp_path / "predict.json"
    cli = subprocess.run([sys.executable, "-m", "visionzoo", "predict", str(img), "--checkpoint", str(tiny_ckpt),
                          "--json", str(out)], capture_output=True, text=True, env=ENV, timeout=300)
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(out.read_text())["predictions"][0]["top"][0]

    page.goto(f"{server}/")
    page.wait_for_function("document.getElementById('model').textContent.includes('3 classes')", timeout=30_000)
    page.set_input_files("#file", str(img))
    page.wait_for_selector("#results .pred", timeout=60_000)

    rows = page.locator("#results .pred")
    assert rows.count() == 3  # topk=5, but the tiny model has 3 classes
    assert rows.first.locator(".label").inner_text() == expected["class"]
    shown = float(rows.first.locator(".prob").inner_text().rstrip("%"))
    assert shown == pytest.approx(100 * expected["prob"], abs=0.5)
    latency = page.locator("#latency").inner_text()
    assert "round trip" in latency and "server" in latency and "ms" in latency
    assert page.locator("#error").is_hidden()
    assert page.locator("#preview").get_attribute("alt")

    # an undecodable "image": the server's message in the visible error box, the old rows gone
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    page.set_input_files("#file", str(broken))
    page.wait_for_selector("#error", state="visible", timeout=60_000)
    req = urllib.request.Request(f"{server}/v1/predict?topk=5", data=broken.read_bytes(),
                                 headers={"Content-Type": "image/jpeg"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(req, timeout=30)
    assert page.locator("#error").inner_text() == json.loads(answer.value.read())["error"]["message"]
    assert page.locator("#results .pred").count() == 0

    local = [u for u in requested if not u.startswith(("data:", "blob:"))]
    assert local, "the page made no request at all"
    outside = [u for u in local if not u.startswith(server + "/")]
    assert not outside, f"the page loaded external URLs: {outside}"
