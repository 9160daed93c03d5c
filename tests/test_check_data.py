"""visionzoo check-data (issue 29): every broken kind reported and the data left as it was; exact copies (the same
pixels under other bytes too), near copies and train/val leakage; the same image under two labels; --fix's lists;
report.json's keys and report.html's escaping; label suspects (confident learning) from a checkpoint and from
cross-validated probes; one-line errors. Data: non-overlapping 48 px tiles of scikit-image's photos, one class a
photo (distinct base images, so every duplicate found is one a test made).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from visionzoo.checkdata import CheckOptions, check_data
from visionzoo.checkdata.duplicates import hamming_pairs
from visionzoo.checkdata.labels import probe_probabilities, rank_suspects
from visionzoo.cli import main
from visionzoo.config import DataConfig
from visionzoo.serve.loadgen import png_bomb

skimage_data = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "coffee", "chelsea")
TILE = 48


def photo_tiles(name: str, offset: int = 0) -> list[np.ndarray]:
    pixels = np.asarray(Image.fromarray(getattr(skimage_data, name)()).convert("RGB"))
    h, w = pixels.shape[:2]
    tiles = [pixels[y:y + TILE, x:x + TILE] for y in range(0, h - TILE + 1, TILE) for x in range(0, w - TILE + 1, TILE)]
    # textured tiles only, spread over the photo: no two alike by construction
    return [t for t in tiles if np.asarray(Image.fromarray(t).convert("L"), np.float32).std() > 25][offset::3][:11]


def jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def near_copy(data: bytes) -> bytes:
    """Cropped 5%, resized to 80%, brightened 10%, re-encoded at quality 40 (the issue's near duplicate)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    img = img.crop((1, 1, 1 + round(w * 0.95), 1 + round(h * 0.95)))
    img = ImageEnhance.Brightness(img.resize((round(img.width * 0.8), round(img.height * 0.8)))).enhance(1.1)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=40)
    return buf.getvalue()


def write_photos(root: Path) -> Path:
    """root/{train,val}/<photo>/<photo>_NN.jpg: 8 train and 3 val tiles a photo."""
    for name in PHOTOS:
        for k, tile in enumerate(photo_tiles(name)):
            split = "val" if k < 3 else "train"
            (root / split / name).mkdir(parents=True, exist_ok=True)
            (root / split / name / f"{name}_{k:02d}.jpg").write_bytes(jpeg(tile))
    return root


def broken_files() -> dict[str, bytes]:
    good = jpeg(photo_tiles("coffee")[0])
    png = io.BytesIO()
    Image.fromarray(photo_tiles("coffee")[1]).save(png, "PNG")
    return {"zero.jpg": b"", "truncated.jpg": good[: len(good) // 2], "truncated.png": png.getvalue()[:300],
            "random.jpg": np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
            "notes.jpg": b"not a picture\n" * 40, "page.jpg": b"<!DOCTYPE html><html><body>x</body></html>",
            "bomb.png": png_bomb(), "signature_only.png": b"\x89PNG\r\n\x1a\n"}


def odd_files() -> dict[str, bytes]:
    tiles = photo_tiles("chelsea", 1)  # tiles between the base set's: no copy of a base image
    out = {}
    for name, (mode, fmt) in {"cmyk.jpg": ("CMYK", "JPEG"), "gray.jpg": ("L", "JPEG"),
                              "palette.png": ("P", "PNG")}.items():
        buf = io.BytesIO()
        Image.fromarray(tiles[len(out)]).convert(mode).save(buf, fmt, **({"transparency": 0} if mode == "P" else {}))
        out[name] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(np.asarray(Image.fromarray(tiles[3]).convert("L"), np.uint16) * 257).save(buf, "PNG")
    out["sixteen.png"] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(tiles[4]).save(buf, "JPEG", exif=exif.tobytes())
    out["rotated.jpg"] = buf.getvalue()
    return out


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> Path:
    """The photo tiles with: a byte copy and a PNG re-save (same pixels) of two train images in val, a near copy
    of a third in val, a train image copied into another class (two labels), every broken kind and every odd
    kind in train/coffee, and a file whose name is HTML."""
    root = write_photos(tmp_path_factory.mktemp("faulty") / "DATA")
    shutil.copyfile(root / "train/astronaut/astronaut_03.jpg", root / "val/astronaut/copy.jpg")
    Image.open(root / "train/coffee/coffee_04.jpg").save(root / "val/coffee/resaved.png")
    (root / "val/chelsea/near.jpg").write_bytes(near_copy((root / "train/chelsea/chelsea_05.jpg").read_bytes()))
    shutil.copyfile(root / "train/astronaut/astronaut_06.jpg", root / "train/coffee/relabelled.jpg")
    for name, blob in {**broken_files(), **odd_files()}.items():
        (root / "train/coffee" / name).write_bytes(blob)
    shutil.copyfile(root / "train/chelsea/chelsea_07.jpg", root / "train/chelsea/<b>x&y<i>.jpg")
    return root


@pytest.fixture(scope="module")
def checked(faulty, tmp_path_factory) -> dict:
    """check-data over the faulty set with --report, --json and --fix; the data's bytes and mtimes before and after."""
    out = tmp_path_factory.mktemp("checked")
    before = snapshot(faulty)
    code = main(["check-data", str(faulty), "--report", str(out / "report"), "--json", str(out / "r.json"),
                 "--fix", str(out / "fix"), "--workers", "0", "--no-progress"])
    return {"code": code, "out": out, "before": before, "after": snapshot(faulty),
            "report": json.loads((out / "r.json").read_text())}


def test_every_broken_file_is_reported_with_a_reason_and_the_data_is_unchanged(checked):
    assert checked["code"] == 0
    assert checked["before"] == checked["after"]  # bytes and mtimes, and no file added or removed
    report = checked["report"]
    bad = {Path(u["file"]).name: u for u in report["unreadable"]}
    assert set(bad) == set(broken_files())
    assert all(u["reason"] and u["split"] == "train" for u in bad.values())
    assert bad["zero.jpg"]["kind"] == "zero_byte"
    assert bad["bomb.png"]["kind"] == "decompression_bomb"
    assert bad["truncated.jpg"]["kind"] == "truncated"
    assert bad["notes.jpg"]["reason"] == "a text file, not an image"
    assert bad["page.jpg"]["reason"] == "an HTML page, not an image"
    assert bad["random.jpg"]["kind"] == "not_image"
    assert all(u["file"].startswith("train/coffee/") for u in report["unreadable"])  # relative to DATA


def test_odd_images_are_counted_with_what_the_loader_does(checked):
    odd = checked["report"]["odd_images"]
    files = {kind: {Path(f["file"]).name for f in o["files"]} for kind, o in odd.items()}
    assert "cmyk.jpg" in files["cmyk"] and "sixteen.png" in files["16bit"] and "gray.jpg" in files["grayscale"]
    assert "palette.png" in files["palette_transparency"] and "rotated.jpg" in files["exif_rotated"]
    assert "NOT applied" in odd["exif_rotated"]["loader"]  # the loader keeps the stored pixels (data/images.py)
    assert not set(odd_files()) & {Path(u["file"]).name for u in checked["report"]["unreadable"]}


def test_exact_and_near_duplicates_and_leakage(checked):
    report = checked["report"]
    pairs = {(d["kind"], frozenset(d["files"])) for d in report["duplicates"]}
    assert ("exact", frozenset({"train/astronaut/astronaut_03.jpg", "val/astronaut/copy.jpg"})) in pairs
    # a PNG of the same pixels: other bytes, the same decoded image
    assert ("exact", frozenset({"train/coffee/coffee_04.jpg", "val/coffee/resaved.png"})) in pairs
    assert ("near", frozenset({"train/chelsea/chelsea_05.jpg", "val/chelsea/near.jpg"})) in pairs
    near = [d for d in report["duplicates"] if d["kind"] == "near"]
    assert all(d["method"] == "phash" and 0 <= d["distance"] <= 22 for d in near)
    assert len(near) <= 2  # the near copy, at most once more (no other tile pair is alike)
    leak = report["leakage"]
    assert leak["val_images_with_train_copy"] == 3 and leak["exact"] == 2 and leak["near_only"] == 1
    conflict = {frozenset(c["files"]) for c in report["label_conflicts"]}
    assert frozenset({"train/astronaut/astronaut_06.jpg", "train/coffee/relabelled.jpg"}) in conflict


def test_report_json_keys_counts_and_scan_rate(checked):
    report = checked["report"]
    for key in ("unreadable", "duplicates", "label_conflicts", "label_suspects", "class_counts", "leakage", "sizes",
                "tiny", "odd_images", "scan"):
        assert key in report
    assert report["class_counts"]["val"] == {"astronaut": 4, "chelsea": 4, "coffee": 4}
    assert report["class_counts"]["train"]["astronaut"] == 8
    assert report["scan"]["images"] == sum(s["images"] for s in report["splits"].values())
    assert report["scan"]["images_per_sec"] > 0
    assert report["label_suspects"] == [] and "no model given" in report["label_suspects_note"]
    assert report["sizes"]["width"]["max"] == 48  # the bomb refused on its header: no size, no pixels
    bomb = next(u for u in report["unreadable"] if u["file"].endswith("bomb.png"))
    assert "400000000 pixels" in bomb["reason"]


def test_report_html_is_self_contained_and_escapes_names(checked):
    html = (checked["out"] / "report" / "report.html").read_text()
    assert html.count('src="data:image/jpeg;base64,') >= 6  # both sides of each duplicate pair
    assert "data:image/png;base64," in html  # the per-class plot
    assert "&lt;b&gt;x&amp;y&lt;i&gt;.jpg" in html and "<b>x&y<i>" not in html
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_fix_writes_lists_without_the_bad_files_and_the_train_side_of_leaks(checked, faulty):
    fix = checked["out"] / "fix"
    excluded = (fix / "excluded.csv").read_text()
    for name in broken_files():
        assert f"train/coffee/{name}," in excluded
    for train_copy in ("train/astronaut/astronaut_03.jpg", "train/coffee/coffee_04.jpg",
                       "train/chelsea/chelsea_05.jpg"):
        assert f"train,{train_copy}," in excluded
    train = (fix / "train.txt").read_text().splitlines()
    val = (fix / "val.txt").read_text().splitlines()
    assert "train/astronaut/astronaut_04.jpg 0" in train and not any("zero.jpg" in line for line in train)
    assert "train/astronaut/astronaut_03.jpg 0" not in train and "val/astronaut/copy.jpg 0" in val  # val side kept
    assert (fix / "classes.txt").read_text().split() == ["astronaut", "chelsea", "coffee"]
    # the lists read back through the project's own list source: nothing broken, no leak left
    found = check_data(DataConfig(data=str(faulty), train_list=str(fix / "train.txt"), val_list=str(fix / "val.txt")),
                       CheckOptions(progress=False))
    assert not found.res.bad
    assert found.duplicates["leakage"]["val_images_with_train_copy"] == 0


def test_a_bare_class_tree_is_one_split(tmp_path):
    root = write_photos(tmp_path / "DATA") / "train"
    shutil.copyfile(root / "coffee/coffee_05.jpg", root / "coffee/again.jpg")
    found = check_data(DataConfig(data=str(root)), CheckOptions(progress=False))
    assert [s.name for s in found.data.splits] == ["train"]
    assert [d["files"] for d in found.duplicates["duplicates"]] == [["coffee/again.jpg", "coffee/coffee_05.jpg"]]


def test_a_pack_is_checked_by_its_entry_names(tmp_path):
    data = write_photos(tmp_path / "DATA")
    shutil.copyfile(data / "train/coffee/coffee_05.jpg", data / "val/coffee/leak.jpg")
    assert main(["pack", "--data", str(data), "--output", str(tmp_path / "pack"), "--workers", "0"]) == 0
    found = check_data(DataConfig(data=str(tmp_path / "pack")), CheckOptions(progress=False))
    assert found.data.description.startswith("pack")
    exact = [d for d in found.duplicates["duplicates"] if d["kind"] == "exact"]
    assert len(exact) == 1 and exact[0]["cross_split"]
    assert sorted(Path(f).name for f in exact[0]["files"]) == ["coffee_05.jpg", "leak.jpg"]


def test_flat_images_are_left_out_of_the_near_search_but_exact_copies_are_found(tmp_path):
    for split in ("train", "val"):
        for k, grey in enumerate((120, 124, 128)):
            (tmp_path / split / "blank").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40), (grey, grey, grey)).save(tmp_path / split / "blank" / f"{k}.png")
    found = check_data(DataConfig(data=str(tmp_path)), CheckOptions(progress=False))
    assert int(found.res.flat.sum()) == 6
    kinds = [d["kind"] for d in found.duplicates["duplicates"]]
    assert kinds == ["exact"] * 3  # each grey in train and in val; different greys never paired


def test_hamming_pairs_match_brute_force():
    hashes = np.random.default_rng(0).integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    hashes[7] = hashes[3] ^ np.uint64(0b1011)  # 3 bits from another
    i, j, d = hamming_pairs(hashes, 24)
    brute = {(a, b) for a in range(300) for b in range(a + 1, 300)
             if bin(int(hashes[a]) ^ int(hashes[b])).count("1") <= 24}
    assert set(zip(i.tolist(), j.tolist())) == brute and (3, 7) in brute
    assert int(d[list(zip(i.tolist(), j.tolist())).index((3, 7))]) == 3


def test_probes_and_confident_learning_rank_flipped_labels_first():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32)) * 3
    labels = np.repeat(np.arange(4), 40)
    emb = centres[labels] + rng.normal(size=(160, 32))
    flipped = np.array([5, 50, 90, 130, 155])
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1) % 4
    rows, probs = probe_probabilities(emb, given, 4)
    assert len(rows) == 160 and probs.shape == (160, 4)
    issues, quality = rank_suspects(given[rows], probs)
    assert set(flipped) <= set(issues[:8].tolist())
    assert quality[flipped].max() < np.median(quality)


def test_label_suspects_from_a_checkpoint(tiny_imagefolder, tiny_ckpt, tmp_path):
    data = tmp_path / "DATA"
    shutil.copytree(tiny_imagefolder, data)
    moved = sorted((data / "train" / "circle").glob("*.jpg"))[0]
    moved.rename(data / "train" / "square" / "moved.jpg")
    found = check_data(DataConfig(data=str(data)), CheckOptions(progress=False, model=str(tiny_ckpt), device="cpu"))
    suspects = found.suspects
    assert suspects and "confident learning" in found.suspects_note and "probes" in found.suspects_note
    assert {"file", "split", "given", "suggested", "score"} <= set(suspects[0])
    flagged = [s["flagged"] for s in suspects]
    assert flagged == sorted(flagged, reverse=True)  # confident learning's verdict first, then the others
    rest = [s["score"] for s in suspects if not s["flagged"]]
    assert rest == sorted(rest)
    assert all(s["given"] in ("circle", "square", "triangle") for s in suspects)


@pytest.mark.parametrize("args, code, text", [
    (["/no/such/folder"], 1, "no such file or folder"),
    ([], 2, "give DATA"),
    (["https://host/pack"], 2, "streamed shards"),
    (["{data}", "--near-cosine", "0.9"], 2, "--near-cosine compares a model's embeddings"),
    (["{data}", "--report", "{data}/report"], 2, "inside the data folder"),
    (["{data}", "--fix", "{data}/train/fix"], 2, "inside the data folder"),
    (["{data}", "--val", "/no/such/val"], 2, "--val /no/such/val: no such file or folder"),
    (["{data}", "--phash-threshold", "80"], 2, "--phash-threshold 80: bits of a 64-bit hash"),
])
def test_errors_are_one_line(args, code, text, tmp_path, capsys):
    data = write_photos(tmp_path / "DATA")
    assert main(["check-data", *[a.format(data=data) for a in args], "--no-progress"]) == code
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1
    assert not (data / "report").exists() and not (data / "train" / "fix").exists()


def test_help_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; from visionzoo.cli import main\ntry:\n    main(['check-data', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert out.stdout.strip().endswith("False")


def test_embedding_pairs_add_what_the_hash_missed(faulty):
    from visionzoo.checkdata.duplicates import Pairs, embedding_pairs, merge_near
    from visionzoo.checkdata.inputs import open_data
    from visionzoo.checkdata.scan import scan

    res = scan(open_data(DataConfig(data=str(faulty))), 0, progress=False)
    pos = np.flatnonzero(res.decoded)[:6]
    emb = np.eye(6, 8)
    emb[4] = emb[1] * 2 + 0.05  # 4 points where 1 does: cosine ~1
    found = embedding_pairs(emb, pos, res, 0.99)
    assert list(zip(found.a.tolist(), found.b.tolist())) == [(int(pos[1]), int(pos[4]))]
    phash = Pairs.of(np.array([int(pos[0])]), np.array([int(pos[2])]), np.array([3]), "phash")
    merged = merge_near(phash, found)
    assert merged.method.tolist() == ["phash", "embedding"] and len(merge_near(merged, found)) == 2
