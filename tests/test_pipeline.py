"""The fast input pipeline: decoding fused with the crop must frame the same pixels as torchvision's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionzoo.core.errors import BadImageError
from visionzoo.data.images import load_rgb, open_image
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


@pytest.mark.parametrize("w, h", [(1500, 1000), (1501, 1003), (333, 501)])
def test_fast_eval_frames_exactly_when_the_dct_scale_does_not_divide_the_size(photo, tmp_path, w, h):
    path = tmp_path / "odd.jpg"
    Image.open(photo).resize((w, h)).save(path, quality=92)
    for size, crop_pct in ((224, 0.875), (128, 1.0)):
        fast = eval_transform(size, crop_pct)(open_image(path)).float()
        ref = eval_transform(size, crop_pct, decode="pil")(load_rgb(path)).float()
        assert (fast - ref).abs().mean() < 1.5  # aligned sizes give 0.4-1.3 here; a third of a pixel off, 1.8+


def test_fast_fixres_crop_with_padding_ratio_keeps_its_shape(photo):
    assert train_transform(224, crop="fixres", crop_pct=1.15)(open_image(photo)).shape == (3, 224, 224)


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
    for extra in (["--no-normalize"], ["--decode", "device"]):  # uint8 as delivered; decoded on the device
        assert main(["bench-data", "--data", str(root), "--img-size", "32", "--workers", "0", "--batch-size", "4",
                     "--batches", "2", "--warmup", "0", "--json", str(js), "--no-progress", *extra]) == 0
        r = json.loads(js.read_text())
        assert r["visionzoo"]["images"] == 8 and r["normalized"] == (extra[0] != "--no-normalize")
    assert main(["bench-data", "--img-size", "32"]) == 2  # no data: one line, no traceback


def test_bench_data_baseline_runs_the_same_policy_in_the_reference_order(tiny_imagefolder, tmp_path):
    import json

    from torchvision.transforms import v2

    from visionzoo.cli import main
    from visionzoo.config import AugConfig, DataConfig
    from visionzoo.data.pipeline_bench import torchvision_loader

    aug = AugConfig(auto_augment="ta_wide", random_erase=0.1)
    tf = torchvision_loader(tiny_imagefolder, "train", 32, 0, 4, DataConfig(), aug=aug).dataset.transform
    names = [type(t).__name__ for t in tf.transforms]  # torchvision's own classes, not visionzoo's wrappers
    # torchvision's reference presets: crop, flip, policy on the PIL image, to tensor, normalise, then erase
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "TrivialAugmentWide", "PILToTensor", "ToDtype",
                     "Normalize", "RandomErasing"]
    assert isinstance(tf.transforms[-1], v2.RandomErasing) and tf.transforms[-1].p == 0.1
    val = torchvision_loader(tiny_imagefolder, "val", 32, 0, 4, DataConfig(), aug=aug).dataset.transform
    assert not any(isinstance(t, (v2.TrivialAugmentWide, v2.RandomErasing)) for t in val.transforms)
    js = tmp_path / "b.json"
    assert main(["bench-data", "--data", str(tiny_imagefolder), "--img-size", "32", "--workers", "0",
                 "--batch-size", "4", "--batches", "2", "--warmup", "0", "--baseline", "--json", str(js),
                 "--no-progress", "--auto-augment", "ta_wide", "--random-erase", "0.1"]) == 0
    r = json.loads(js.read_text())
    assert r["visionzoo"]["images"] == r["torchvision"]["images"] == 8


# ---------------------------------------------------------------- packed data sets

def test_pack_round_trip_and_training_read_it(tiny_imagefolder, tmp_path):
    import json
    import shutil

    from visionzoo.cli import main
    from visionzoo.config import DataConfig
    from visionzoo.data.datasets import ImageDataset
    from visionzoo.data.loader import find_samples, make_loader
    from visionzoo.data.packed import packed_samples

    src = tmp_path / "src"
    shutil.copytree(tiny_imagefolder, src)
    big = src / "train" / "circle" / "big.jpg"
    Image.new("RGB", (90, 60), (200, 30, 30)).save(big, quality=95)
    small = next((src / "val" / "square").glob("*.jpg"))  # JPEGs within the cap are copied as they are
    out = tmp_path / "pack"
    assert main(["pack", "--data", str(src), "--output", str(out), "--max-size", "48", "--shard-mb", "1",
                 "--workers", "1", "--no-progress"]) == 0
    meta = json.loads((out / "pack.json").read_text())
    plain = {s: find_samples(DataConfig(data=str(src)), s) for s in ("train", "val")}
    for split in ("train", "val"):
        packed = packed_samples(out, split)
        assert meta[split]["images"] == len(packed.items) == len(plain[split].items)
        assert packed.classes == plain[split].classes
        assert sorted(packed.items) == sorted((str(Path(p).relative_to(src)), y) for p, y in plain[split].items)
    train = packed_samples(out, "train")
    i = [n for n, _ in train.items].index("train/circle/big.jpg")
    assert train.open(i).size == (48, 32)  # the longer side capped, the aspect kept
    val = packed_samples(out, "val")
    j = [n for n, _ in val.items].index(str(small.relative_to(src)))
    assert val.store.read(j) == small.read_bytes()
    sub = val.subset([j, 0])  # e.g. a calibration subset: entries follow their images
    assert sub.items[0] == val.items[j] and sub.store.read(0) == small.read_bytes()
    # workers read the memory-mapped shards themselves: the same batches as the main process
    ds = ImageDataset(train, train_transform(24))
    batches = [torch.cat([b[0] for b in make_loader(ds, 8, w, True, seed=3)]) for w in (0, 2)]
    assert torch.equal(*batches)
    # train and evaluate straight from the pack
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet10", "--data", str(out), "--img-size", "24", "--epochs", "1",
                 "--batch-size", "8", "--workers", "0", "--device", "cpu", "--output", str(run), "--no-progress"]) == 0
    js = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(run / "last.pth"), "--json", str(js), "--no-progress"]) == 0
    assert json.loads(js.read_text())["num_images"] == len(plain["val"].items)
    assert main(["pack", "--data", str(src), "--output", str(out)]) == 2  # never over an existing pack


def test_pack_names_a_bad_image_or_leaves_it_out(tiny_imagefolder, tmp_path, capsys):
    import json
    import shutil

    from visionzoo.cli import main

    src = tmp_path / "src"
    shutil.copytree(tiny_imagefolder, src)
    (src / "train" / "square" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["pack", "--data", str(src), "--output", str(tmp_path / "a"), "--workers", "1", "--no-progress"]) == 1
    assert "broken.jpg" in capsys.readouterr().err and not (tmp_path / "a" / "pack.json").exists()
    assert not list((tmp_path / "a").rglob("*.tmp"))  # no half-written shards left behind
    assert main(["pack", "--data", str(src), "--output", str(tmp_path / "b"), "--workers", "1", "--no-progress",
                 "--skip-bad-images"]) == 0
    assert json.loads((tmp_path / "b" / "pack.json").read_text())["train"]["skipped"] == 1
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "b" / "pack.json").stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() makes


# ---------------------------------------------------------------- decoding on the device (nvJPEG on CUDA)

def _device_decoded(tf, paths, device="cpu"):
    from visionzoo.data.device_decode import EncodedBatch
    from visionzoo.data.loader import collate_skipping

    images, labels, skipped = collate_skipping([(tf(open_image(p)), i) for i, p in enumerate(paths)])
    assert isinstance(images, EncodedBatch) and labels.tolist() == list(range(len(paths))) and skipped == 0
    return images.decode(torch.device(device)).cpu().float()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="nvJPEG needs a CUDA device"))])
def test_device_decode_frames_the_same_pixels_as_the_cpu_pipelines(photo, tmp_path, device):
    png = tmp_path / "photo.png"  # not a JPEG: the workers decode it and it joins the batch as pixels
    Image.open(photo).save(png)
    for size in (224, 96):
        ref = eval_transform(size, decode="pil")(load_rgb(photo)).float()
        got = _device_decoded(eval_transform(size, decode="device"), [photo, png], device)
        assert got.shape == (2, 3, size, size)
        assert (got[0] - ref).abs().mean() < 1.5 and (got[1] - ref).abs().mean() < 6.0
    for seed in range(3):  # the same per-sample window and flip as the CPU pipelines draw
        torch.manual_seed(seed)
        got = _device_decoded(train_transform(128, hflip=0.5, decode="device"), [photo], device)[0]
        torch.manual_seed(seed)
        ref = train_transform(128, hflip=0.5, decode="pil")(load_rgb(photo)).float()
        assert (got - ref).abs().mean() < 10.0  # a wrong window or flip differs by 40+


def test_device_decode_names_a_bad_file_and_refuses_what_it_cannot_do(photo, tmp_path, capsys):
    from visionzoo.config import ConfigError, TrainConfig, apply_overrides, validate

    bad = tmp_path / "cut.jpg"
    bad.write_bytes(photo.read_bytes()[:4000])
    with pytest.raises(BadImageError, match="cut.jpg"):
        _device_decoded(eval_transform(64, decode="device"), [photo, bad])
    with pytest.raises(ValueError, match="color-jitter"):
        train_transform(64, color_jitter=0.4, decode="device")
    in_memory = eval_transform(64, decode="device")(Image.open(photo).convert("RGB"))  # no file: worker decodes
    assert in_memory.data is None and in_memory.pixels.shape == (3, 64, 64)
    cfg = apply_overrides(TrainConfig(), {"data": {"decode": "device", "skip_bad_images": True}}, "test")
    with pytest.raises(ConfigError, match="skip_bad_images"):
        validate(cfg)
    from visionzoo.cli import main

    for flags in (["--crop-pct", "1.15"], ["--skip-bad-images"]):  # every data command checks, not only train
        for cmd in (["eval", "--checkpoint", str(tmp_path / "none.pth")], ["train"]):
            capsys.readouterr()
            assert main([*cmd, "--data", str(tmp_path), "--decode", "device", *flags]) == 2
            assert "does not combine with " + flags[0] in capsys.readouterr().err


def test_training_with_device_decode_learns(tiny_imagefolder, tmp_path):
    import json

    from visionzoo.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "resnet10", "--data", str(tiny_imagefolder), "--img-size", "32", "--epochs", "6",
                 "--batch-size", "12", "--lr", "0.05", "--workers", "2", "--decode", "device", "--device", "cpu",
                 "--seed", "0", "--output", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_top1"] > 60.0  # 3 colour-coded classes: chance is 33%


def test_fused_transforms_read_jpeg_bytes_without_pillow(photo, tmp_path):
    from visionzoo.data.images import read_file

    png, cmyk, cut = tmp_path / "p.png", tmp_path / "c.jpg", tmp_path / "cut.jpg"
    Image.open(photo).save(png)
    Image.open(photo).convert("CMYK").save(cmyk, quality=95)
    cut.write_bytes(photo.read_bytes()[:4000])
    assert read_file(photo).jpeg_size() == (500, 375)
    assert read_file(png).jpeg_size() is None and read_file(cmyk).jpeg_size() is None  # Pillow's to decode
    for path in (photo, png, cmyk):  # bytes or an opened image: the same pixels from the same seed
        for tf in (train_transform(96, hflip=0.5), eval_transform(96, decode="fast")):
            torch.manual_seed(5)
            from_bytes = tf(read_file(path))
            torch.manual_seed(5)
            assert torch.equal(from_bytes, tf(open_image(path))), path.name
    with pytest.raises(BadImageError, match="cut.jpg"):
        train_transform(64)(read_file(cut))
    with pytest.raises(BadImageError, match="missing.jpg"):
        read_file(tmp_path / "missing.jpg")


def test_random_window_is_torchvisions_sampler_draw_for_draw():
    from torchvision.transforms import v2

    from visionzoo.data.crops import DecodeCrop

    for scale, ratio in (((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (2.0, 3.0)), ((0.5, 1.0), (0.2, 0.3))):
        ours = DecodeCrop(64, "random_resized", scale=scale, ratio=ratio)
        ref = v2.RandomResizedCrop(64, scale=scale, ratio=ratio)
        for seed in range(200):  # includes the central-crop fallback for the extreme ratios
            w, h = 100 + seed % 37 * 11, 80 + seed % 23 * 13
            torch.manual_seed(seed)
            got = ours.random_window(w, h)
            torch.manual_seed(seed)
            p = ref.make_params([torch.empty(0, h, w)])
            assert got == (p["top"], p["left"], p["height"], p["width"])
        torch.manual_seed(0)
        ours.random_window(300, 200)
        after_ours = torch.rand(1)
        torch.manual_seed(0)
        ref.make_params([torch.empty(0, 200, 300)])
        assert torch.equal(after_ours, torch.rand(1))  # the same number of draws consumed


def test_pack_list_file_splits_with_open_set_entries(tiny_imagefolder, tmp_path, capsys):
    from visionzoo.cli import main
    from visionzoo.data.packed import packed_samples

    lists = tmp_path / "lists"
    lists.mkdir()
    classes = ["square", "circle", "triangle"]  # list order, not folder order
    (lists / "classes.txt").write_text("\n".join(classes) + "\n")
    rows = {split: [] for split in ("train", "val", "open")}
    for label, name in enumerate(classes[:2]):  # triangle's images become the open set
        for p in sorted((tiny_imagefolder / "train" / name).iterdir())[:5]:
            rows["train"].append(f"{p.relative_to(tiny_imagefolder)} {label}")
        for p in sorted((tiny_imagefolder / "val" / name).iterdir()):
            rows["val"].append(f"{p.relative_to(tiny_imagefolder)} {label}")
    rows["open"] = [f"{p.relative_to(tiny_imagefolder)} -1" for p in (tiny_imagefolder / "val" / "triangle").iterdir()]
    for split, lines in rows.items():
        (lists / f"{split}.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "pack"
    assert main(["pack", "--data", str(tiny_imagefolder), "--output", str(out), "--workers", "1", "--no-progress",
                 *[a for s in rows for a in ("--list", f"{s}={lists / (s + '.txt')}")]]) == 0
    for split, lines in rows.items():
        packed = packed_samples(out, split)
        assert packed.classes == classes
        listed = [(ln.rsplit(" ", 1)[0], int(ln.rsplit(" ", 1)[1])) for ln in lines]
        # the train split is written in a seeded random order (streaming mixes classes), the others as listed
        assert (sorted(packed.items) == sorted(listed)) if split == "train" else packed.items == listed
    assert {y for _, y in packed_samples(out, "open", classes=list(reversed(classes))).items} == {-1}
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet10", "--data", str(out), "--img-size", "24", "--epochs", "1",
                 "--batch-size", "5", "--workers", "0", "--device", "cpu", "--output", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["pack", "--data", str(tiny_imagefolder), "--output", str(tmp_path / "p2"), "--list", "train"]) == 2
    assert "SPLIT=FILE" in capsys.readouterr().err
    assert main(["pack", "--data", str(tiny_imagefolder), "--output", str(tmp_path / "p3"),
                 "--list", f"../x={lists / 'train.txt'}"]) == 2


def test_fused_crops_stack_into_a_channels_last_batch_as_they_are(tiny_imagefolder):
    """The fused crop's samples keep their HWC memory; the loader stacks them into a channels-last batch
    (plain copies, no transpose in the workers) holding the same pixels as a stack of CHW copies."""
    from visionzoo.config import DataConfig
    from visionzoo.data.datasets import ImageDataset
    from visionzoo.data.loader import find_samples, make_loader, stack_images

    ds = ImageDataset(find_samples(DataConfig(data=str(tiny_imagefolder)), "train"), train_transform(24))
    samples = [ds[(i, 100 + i)][0] for i in range(0, 36, 5)]  # JPEGs and PNGs
    assert all(s.permute(1, 2, 0).is_contiguous() and not s.is_contiguous() for s in samples)
    batch = stack_images(samples)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, torch.stack([s.contiguous() for s in samples]))
    batches = [next(iter(make_loader(ds, 8, w, True, seed=3)))[0] for w in (0, 2)]  # 2: shared-memory buffer
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b in batches)
    assert torch.equal(*batches)
    eval_like = [s.contiguous() for s in samples]  # CHW samples (the eval transforms) stack as before
    assert stack_images(eval_like).is_contiguous()
