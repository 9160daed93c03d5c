"""The fast input pipeline: decoding fused with the crop must frame the same pixels as torchvision's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visionzoo.data.images import BadImageError, load_rgb, open_image
from visionzoo.data.transforms import eval_transform, train_transform


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A real photograph (scikit-learn's sample image) as an ImageNet-size JPEG, quality 90."""
    from sklearn.datasets import load_sample_images

    path = tmp_path_factory.mktemp("photo") / "china.jpg"
    Image.fromarray(load_sample_images().images[0]).resize((500, 375)).save(path, quality=90)
    return path


@pytest.mark.parametrize("size, crop_pct, tol", [(224, 0.875, 0.5), (128, 0.875, 6.0), (64, 1.0, 6.0)])
def test_fast_eval_matches_the_torchvision_pipeline(photo, size, crop_pct, tol):
    fast = eval_transform(size, crop_pct)(open_image(photo)).float()
    ref = eval_transform(size, crop_pct, decode="pil")(load_rgb(photo)).float()
    assert fast.shape == ref.shape == (3, size, size)
    # 224: full-scale decode, same window, same filter; smaller: a 1/2..1/8 DCT-scaled decode first
    assert (fast - ref).abs().mean() < tol


@pytest.mark.parametrize("size", [224, 128])
def test_fast_train_crop_draws_torchvisions_window(photo, size):
    for seed in range(4):
        torch.manual_seed(seed)
        fast = train_transform(size, hflip=0.5)(open_image(photo)).float()
        torch.manual_seed(seed)
        ref = train_transform(size, hflip=0.5, decode="pil")(load_rgb(photo)).float()
        assert (fast - ref).abs().mean() < 10.0  # the same window and flip (a wrong one differs by 40+)


def test_dct_scaling_only_when_the_window_allows(photo):
    img = open_image(photo)
    from visionzoo.data.images import decode_rgb

    assert decode_rgb(img, (100, 80)).size == (125, 94)  # 1/4 still covers 100 x 80
    assert decode_rgb(open_image(photo), (300, 300)).size == (500, 375)  # no reduction would keep 300


def test_fast_path_names_a_truncated_jpeg(photo, tmp_path):
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(photo.read_bytes()[:4000])
    with pytest.raises(BadImageError, match="cut.jpg"):
        train_transform(64)(open_image(bad))
    assert np.asarray(load_rgb(photo)).shape == (375, 500, 3)


def test_cmyk_and_gray_jpegs_decode_like_pillow(photo, tmp_path):
    from visionzoo.data.images import decode_rgb_array

    src = Image.open(photo)
    for mode in ("CMYK", "L"):
        path = tmp_path / f"{mode}.jpg"
        src.convert(mode).save(path, quality=95)
        ours = decode_rgb_array(open_image(path)).astype(np.int16)
        pillow = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
        assert ours.shape == pillow.shape and np.abs(ours - pillow).mean() < 2.0


def test_bench_data_reports_both_pipelines(tiny_imagefolder, tmp_path, capsys):
    import json

    from visionzoo.cli import main

    root = tiny_imagefolder
    js = tmp_path / "b.json"
    assert main(["bench-data", "--data", str(root), "--img-size", "32", "--workers", "0", "--batch-size", "4",
                 "--batches", "3", "--warmup", "1", "--baseline", "--json", str(js), "--no-progress"]) == 0
    r = json.loads(js.read_text())
    assert r["visionzoo"]["images"] == r["torchvision"]["images"] == 12
    assert r["ratio"] == pytest.approx(r["visionzoo"]["images_per_sec"] / r["torchvision"]["images_per_sec"])
    assert "ratio" in capsys.readouterr().out
    assert main(["bench-data", "--img-size", "32"]) == 2  # no data: one line, no traceback
