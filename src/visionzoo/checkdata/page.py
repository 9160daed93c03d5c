"""report.html: one self-contained page a person opens in a browser, offline.

Thumbnails are data: URIs (JPEG, made with the loader's own decoder), the per-class plot an inline PNG; no script,
no request leaves the page (its Content-Security-Policy allows data: images and inline style only). Every name on
it (files, classes, reasons) comes from the data and is HTML-escaped: a file named `<img onerror=...>.jpg` is text.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from PIL import Image

from ..core.errors import VisionZooError
from ..data.images import decode_rgb
from .check import Findings

THUMB = 128  # px, the longer side
PAGE_PAIRS = 200  # duplicate pairs shown (all are in report.json)
PAGE_SUSPECTS = 100
PAGE_ROWS = 200  # rows of the other tables

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: 3px 8px;
  text-align: left; vertical-align: top; }
pre { white-space: pre-wrap; }
th { background: #f4f4f4; } .num { text-align: right; } .headline { font-size: 1.2em; font-weight: 600; }
.pair { display: inline-block; margin: 6px; padding: 6px; border: 1px solid #ccc; border-radius: 4px; }
.pair figure { display: inline-block; margin: 0 4px; text-align: center; max-width: 160px; }
.pair img, .suspect img { max-width: 128px; max-height: 128px; image-rendering: auto; }
figcaption { font-size: 11px; word-break: break-all; } .exact { border-color: #c33; } .near { border-color: #e90; }
.suspect { display: inline-block; margin: 6px; width: 150px; vertical-align: top; font-size: 12px;
  word-break: break-all; } .missing { width: 128px; height: 64px; background: #eee; display: inline-block; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def thumbnail(found: Findings, pos: int) -> str | None:
    """A data: URI of the entry's thumbnail, decoded as the loader decodes it (a JPEG at a reduced DCT scale)."""
    split = found.data.splits[int(found.res.split[pos])]
    try:
        img = decode_rgb(split.encoded(int(found.res.index[pos])).open(), min_size=(THUMB, THUMB))
        img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
    except (VisionZooError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(found: Findings, pos: int, caption: str) -> str:
    uri = thumbnail(found, pos)
    img = f'<img src="{uri}" alt="{esc(caption)}">' if uri else '<span class="missing"></span>'
    return f"<figure>{img}<figcaption>{esc(caption)}</figcaption></figure>"


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    if not rows:
        return "<p>None found.</p>"
    numeric = numeric or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{esc(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows[:PAGE_ROWS])
    more = f"<p>{len(rows) - PAGE_ROWS} more in report.json</p>" if len(rows) > PAGE_ROWS else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _pairs(found: Findings) -> str:
    pairs = found.duplicates.get("duplicates", [])
    if not pairs:
        return "<p>No duplicates found.</p>"
    cross_first = sorted(pairs, key=lambda p: (not p["cross_split"], p["kind"] != "exact", p["distance"]))
    out = []
    for p in cross_first[:PAGE_PAIRS]:
        a, b = p["pos"]
        what = f"{p['kind']} ({p['method']}, distance {p['distance']})" + (" across splits" if p["cross_split"] else "")
        figures = "".join(_figure(found, q, f"{s}: {f} [{c}]") for q, s, f, c in
                          zip((a, b), p["splits"], p["files"], p["labels"]))
        out.append(f'<div class="pair {esc(p["kind"])}"><div>{esc(what)}</div>{figures}</div>')
    more = f"<p>{len(pairs) - PAGE_PAIRS} more pairs in report.json</p>" if len(pairs) > PAGE_PAIRS else ""
    return "".join(out) + more


def _suspects(found: Findings) -> str:
    if not found.suspects:
        return f"<p>{esc(found.suspects_note)}</p>"
    cells = [f'<div class="suspect">{_figure(found, s["pos"], s["file"])}given <b>{esc(s["given"])}</b>, model says '
             f'<b>{esc(s["suggested"])}</b> ({s["suggested_prob"]:.2f}); score {s["score"]:.3f}'
             f'{"; flagged" if s["flagged"] else ""}</div>'
             for s in found.suspects[:PAGE_SUSPECTS]]
    return f"<p>{esc(found.suspects_note)}; most suspect first.</p>" + "".join(cells)


def class_plot(report: dict[str, Any]) -> str:
    """The per-class counts as an inline PNG (horizontal bars per split); a line saying why not without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "<p>The per-class plot needs matplotlib: pip install 'visionzoo[plots]'.</p>"
    counts = report["class_counts"]
    classes = list(next(iter(counts.values()), {}))
    fig = Figure(figsize=(7, 0.6 + 0.22 * max(len(classes), 1)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    left = [0] * len(classes)
    for split, per_class in counts.items():
        values = [per_class.get(c, 0) for c in classes]
        ax.barh(range(len(classes)), values, left=left, label=split)
        left = [a + b for a, b in zip(left, values)]
    ax.set_yticks(range(len(classes)), [c[:30] for c in classes], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return f'<img alt="images per class" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _sections(found: Findings, report: dict[str, Any], summary: list[str]) -> list[tuple[str, str]]:
    odd_rows = [[kind, o["count"], o["loader"]] for kind, o in report["odd_images"].items()]
    counts = report["class_counts"]
    count_rows = [[c, *(counts[s].get(c, 0) for s in counts)] for c in report["classes"]]
    conflict_rows = [[c["kind"], " | ".join(c["files"]), " | ".join(map(str, c["labels"]))]
                     for c in report["label_conflicts"]]
    sizes = report["sizes"]
    size_rows = [[k, *(sizes[k].get(q, "") for q in ("min", "p5", "median", "p95", "max"))]
                 for k in ("width", "height", "aspect_ratio") if sizes[k]]
    return [
        ("Summary", "<pre>" + esc("\n".join(summary)) + "</pre>"),
        ("Duplicate pairs", _pairs(found)),
        ("Unreadable files", _table(["file", "split", "kind", "reason"],
                                    [[u["file"], u["split"], u["kind"], u["reason"]] for u in report["unreadable"]])),
        ("Same image, different labels", _table(["kind", "files", "labels"], conflict_rows)),
        ("Label suspects", _suspects(found)),
        ("Images per class", class_plot(report) + _table(["class", *counts], count_rows,
                                                         set(range(1, 1 + len(counts))))),
        ("Odd images (decoded, with what the loader does)", _table(["kind", "images", "what the loader does"],
                                                                   odd_rows)),
        ("Image sizes", _table(["", "min", "5%", "median", "95%", "max"], size_rows) + _table(
            ["aspect w/h", "images"], list(map(list, sizes["aspect_histogram"].items())), {1})),
        (f"Tiny images (a side under {report['tiny']['min_side']} px)", _table(
            ["file", "width", "height"], [[t["file"], t["width"], t["height"]] for t in report["tiny"]["files"]])),
    ]


def render_page(found: Findings, report: dict[str, Any], summary: list[str]) -> str:
    """The page of a report; summary: the terminal summary's lines (report.summary_lines), shown on top."""
    leak = report["leakage"]
    headline = (f"{leak['val_images_with_train_copy']} of {leak['val_images']} validation images "
                f"({100 * leak['fraction']:.1f}%) have a copy in training") if leak.get("val_images") else \
        "no validation split: leakage not measured"
    body = "".join(f"<h2>{esc(title)}</h2>{content}" for title, content in _sections(found, report, summary))
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>check-data: {esc(report['description'])}</title><style>{STYLE}</style></head><body>"
            f"<h1>check-data: {esc(report['description'])}</h1><p class=headline>{esc(headline)}</p>{body}"
            "</body></html>\n")
