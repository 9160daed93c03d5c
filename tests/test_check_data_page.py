"""report.html of `visionzoo check-data` opened in headless Chromium through playwright: it shows the duplicate
pairs (both thumbnails decoded, side by side), the suspects' section and the per-class plot, loads nothing but
itself, and a screenshot of it is a real picture.

Needs playwright's Python package and a system Chromium (playwright cannot download its own browsers here);
skipped when either is missing.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from visionzoo.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no system Chromium (/usr/bin/chromium or chromium on PATH)")


def test_report_page_shows_the_duplicate_pairs(chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    from test_check_data import near_copy, write_photos  # the same photo tiles and near copy as the default suite

    data = write_photos(tmp_path / "DATA")
    shutil.copyfile(data / "train/astronaut/astronaut_03.jpg", data / "val/astronaut/copy.jpg")
    (data / "val/chelsea/near.jpg").write_bytes(near_copy((data / "train/chelsea/chelsea_05.jpg").read_bytes()))
    (data / "train/coffee/broken.jpg").write_bytes(b"<html>not an image</html>")
    assert main(["check-data", str(data), "--report", str(tmp_path / "report"), "--workers", "0",
                 "--no-progress"]) == 0
    page_file = tmp_path / "report" / "report.html"
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requested: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            page.goto(page_file.as_uri())
            pairs = page.locator(".pair")
            assert pairs.count() >= 2
            texts = [pairs.nth(i).inner_text() for i in range(pairs.count())]
            assert any("exact" in t and "copy.jpg" in t and "astronaut_03.jpg" in t for t in texts)
            assert any("near" in t and "near.jpg" in t and "chelsea_05.jpg" in t for t in texts)
            # every thumbnail of every pair decoded by the browser: a real picture, not a broken image
            widths = page.eval_on_selector_all(".pair img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert len(widths) == 2 * pairs.count() and min(widths) > 0
            assert page.locator("img[alt='images per class']").count() == 1
            assert "broken.jpg" in page.locator("body").inner_text()
            page.locator(".pair").first.scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    outside = [u for u in requested if not u.startswith(("data:", page_file.as_uri()))]
    assert not outside, f"the report loaded other URLs: {outside}"
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape[0] >= 900 and pixels.std() > 10  # a page with pictures, not a blank screen
