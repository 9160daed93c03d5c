"""Data sources (ImageFolder, list files, flat val + label file, built-in digits), decoding errors,
transforms, the seeded sampler and the device-side normaliser."""

from __future__ import annotations

import io
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from visionzoo.cli import main
from visionzoo.config import (
    ConfigError,
    DataConfig,
    TrainConfig,
    apply_overrides,
    validate,
)
from visionzoo.data import (
    BadImageError,
    DataError,
    DeviceNormalizer,
    DummyDataset,
    ImageDataset,
    Samples,
    SeededSampler,
    build_data,
    collate_skipping,
    device_batches,
    eval_transform,
    find_samples,
    image_folder,
    list_samples,
    load_rgb,
    make_loader,
    read_list_file,
    train_transform,
)
from visionzoo.data.builtin import materialize
from visionzoo.data.crops import eval_resize_size
from visionzoo.models import ModelCfg

CLASSES = ["circle", "square", "triangle"]  # as written by conftest.tiny_imagefolder
TINY_TRAIN_PER_CLASS, TINY_VAL_PER_CLASS = 12, 4
SMALL = ModelCfg(input_size=32, crop_pct=0.875)


@pytest.fixture
def tiny_copy(tiny_imagefolder, tmp_path) -> Path:
    """A writable copy of the tiny ImageFolder."""
    return Path(shutil.copytree(tiny_imagefolder, tmp_path / "DATA"))


@pytest.fixture
def flat_val(tiny_imagefolder, tmp_path):
    """ILSVRC2012-style flat val folder + `FILE LABEL` file made from the tiny val split.

    Returns (flat_dir, label_file, {file name: label}); labels are train-class indices, files
    are shuffled so that file order says nothing about the label.
    """
    flat = tmp_path / "val_flat"
    flat.mkdir()
    entries = []
    for label, cls in enumerate(CLASSES):
        for f in sorted((tiny_imagefolder / "val" / cls).iterdir()):
            entries.append((f, label))
    random.Random(1).shuffle(entries)
    expected = {}
    lines = []
    for i, (src, label) in enumerate(entries, 1):
        name = f"ILSVRC2012_val_{i:08d}{src.suffix}"
        shutil.copy(src, flat / name)
        expected[name] = label
        lines.append(f"{name} {label}")
    labels = tmp_path / "val_labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    return flat, labels, expected


def _by_name(samples: Samples) -> dict[str, int]:
    return {Path(p).name: label for p, label in samples.items}


# ------------------------------------------------------------------------------------------------
# ImageFolder


def test_image_folder_samples(tiny_imagefolder):
    s = image_folder(tiny_imagefolder / "train")
    assert s.classes == CLASSES
    assert s.num_classes == 3
    assert len(s.items) == 3 * TINY_TRAIN_PER_CLASS
    for path, label in s.items:
        assert Path(path).parent.name == CLASSES[label]
        assert Path(path).is_file()
    assert sorted(s.targets()) == [0] * 12 + [1] * 12 + [2] * 12
    assert {Path(p).suffix for p, _ in s.items} == {".jpg", ".png"}
    assert image_folder(tiny_imagefolder / "train").items == s.items  # deterministic order


def test_image_folder_ignores_hidden_dirs_and_non_images(tiny_copy):
    (tiny_copy / "train" / ".cache").mkdir()
    (tiny_copy / "train" / "circle" / "notes.txt").write_text("not an image")
    nested = tiny_copy / "train" / "square" / "more"
    nested.mkdir()
    shutil.copy(next((tiny_copy / "train" / "square").glob("*.jpg")), nested / "deep.jpg")
    s = image_folder(tiny_copy / "train")
    assert s.classes == CLASSES
    assert len(s.items) == 3 * TINY_TRAIN_PER_CLASS + 1
    assert _by_name(s)["deep.jpg"] == 1
    assert not any(p.endswith(".txt") for p, _ in s.items)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        image_folder(tmp_path / "flat")
    (tmp_path / "flat" / "a").mkdir()
    with pytest.raises(DataError, match="no images"):
        image_folder(tmp_path / "flat")


def test_all_image_modes_decode_to_rgb(tiny_imagefolder):
    modes = set()
    for p, _ in image_folder(tiny_imagefolder / "train").items + image_folder(tiny_imagefolder / "val").items:
        with Image.open(p) as raw:
            modes.add(raw.mode)
        assert load_rgb(p).mode == "RGB"
    assert modes == {"RGB", "L", "LA", "RGBA", "P"}  # the fixture really does exercise conversion


# ------------------------------------------------------------------------------------------------
# list files


def _write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_list_file_paths_under_root_split(tiny_imagefolder, tmp_path):
    ref = image_folder(tiny_imagefolder / "train")
    lines = [f"{Path(p).parent.name}/{Path(p).name} {label}" for p, label in ref.items]
    lst = _write_list(tmp_path / "train.txt", ["# comment", ""] + lines)
    s = list_samples(lst, tiny_imagefolder, "train")
    assert [(Path(p), label) for p, label in s.items] == [(Path(p), label) for p, label in ref.items]
    assert s.classes == ["0", "1", "2"]  # no names given: label numbers


def test_list_file_paths_under_root(tiny_imagefolder, tmp_path):
    ref = image_folder(tiny_imagefolder / "val")
    lines = [f"val/{Path(p).parent.name}/{Path(p).name} {label}" for p, label in ref.items]
    s = list_samples(_write_list(tmp_path / "v.txt", lines), tiny_imagefolder, "val", classes=CLASSES)
    assert [(Path(p), label) for p, label in s.items] == [(Path(p), label) for p, label in ref.items]
    assert s.classes == CLASSES


def test_list_file_root_defaults_to_its_folder_and_allows_spaces(tiny_imagefolder, tmp_path):
    src = next((tiny_imagefolder / "train" / "triangle").glob("*.jpg"))
    (tmp_path / "my images").mkdir()
    shutil.copy(src, tmp_path / "my images" / "tri 1.jpg")
    lst = _write_list(tmp_path / "list.txt", ["my images/tri 1.jpg   2"])
    assert read_list_file(lst) == [("my images/tri 1.jpg", 2)]
    s = list_samples(lst, None, "train", classes=CLASSES)
    assert s.items == [(str(tmp_path / "my images" / "tri 1.jpg"), 2)]


def test_find_samples_with_train_list_relative_to_data(tiny_copy):
    ref = image_folder(tiny_copy / "train")
    lines = [f"{Path(p).parent.name}/{Path(p).name} {label}" for p, label in ref.items[::3]]
    _write_list(tiny_copy / "train_subset.txt", lines)
    cfg = DataConfig(data=str(tiny_copy), train_list="train_subset.txt")  # found under --data
    s = find_samples(cfg, "train", classes=CLASSES)
    assert [(Path(p), label) for p, label in s.items] == [(Path(p), label) for p, label in ref.items[::3]]


@pytest.mark.parametrize(
    "bad_line",
    ["circle/a.jpg", "circle/a.jpg cat", "circle/a.jpg 1.5", " 3"],
)
def test_malformed_list_line_names_file_and_line(tmp_path, bad_line):
    lst = _write_list(tmp_path / "bad.txt", ["circle/x.jpg 0", "", bad_line, "circle/y.jpg 1"])
    with pytest.raises(DataError) as info:
        read_list_file(lst)
    assert f"{lst}:3:" in str(info.value)


def test_empty_or_missing_list_file(tmp_path):
    with pytest.raises(DataError, match="empty list file"):
        read_list_file(_write_list(tmp_path / "empty.txt", ["# nothing", ""]))
    with pytest.raises(DataError, match="not found"):
        read_list_file(tmp_path / "absent.txt")


def test_list_entry_not_found_says_where_it_looked(tiny_imagefolder, tmp_path):
    lst = _write_list(tmp_path / "l.txt", ["circle/does_not_exist.jpg 0"])
    with pytest.raises(DataError, match="not found") as info:
        list_samples(lst, tiny_imagefolder, "train")
    assert str(lst) in str(info.value)
    assert str(tiny_imagefolder / "train" / "circle" / "does_not_exist.jpg") in str(info.value)


def test_out_of_range_label(tiny_imagefolder, tmp_path):
    name = next((tiny_imagefolder / "train" / "circle").iterdir()).name
    lst = _write_list(tmp_path / "l.txt", [f"circle/{name} 0", f"circle/{name} 3"])
    with pytest.raises(DataError, match=r"label 3 outside 0\.\.2") as info:
        list_samples(lst, tiny_imagefolder, "train", classes=CLASSES)
    assert str(lst) in str(info.value)
    with pytest.raises(DataError, match=r"label 3 outside 0\.\.1"):
        list_samples(lst, tiny_imagefolder, "train", num_classes=2)


def test_negative_label_only_with_allow_open(tiny_imagefolder, tmp_path):
    name = next((tiny_imagefolder / "train" / "circle").iterdir()).name
    lst = _write_list(tmp_path / "l.txt", [f"circle/{name} -1", f"circle/{name} 2"])
    with pytest.raises(DataError, match="label -1"):
        list_samples(lst, tiny_imagefolder, "train", classes=CLASSES)
    s = list_samples(lst, tiny_imagefolder, "train", classes=CLASSES, allow_open=True)
    assert s.targets() == [-1, 2]


# ------------------------------------------------------------------------------------------------
# flat validation folder + label file, valprep


def test_flat_val_folder_with_label_file(tiny_imagefolder, flat_val):
    flat, labels, expected = flat_val
    cfg = DataConfig(data=str(tiny_imagefolder), val_root=str(flat), val_list=str(labels))
    s = find_samples(cfg, "val", classes=CLASSES)
    assert _by_name(s) == expected
    assert all(Path(p).parent == flat for p, _ in s.items)

    bundle = build_data(cfg, SMALL)
    assert bundle.classes == CLASSES
    assert len(bundle.train) == 3 * TINY_TRAIN_PER_CLASS
    assert len(bundle.val) == 3 * TINY_VAL_PER_CLASS
    for i in range(len(bundle.val)):
        img, label = bundle.val[i]
        assert label == expected[Path(bundle.val.samples.items[i][0]).name]
        assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)


def test_flat_val_without_data_root(flat_val):
    flat, labels, expected = flat_val
    bundle = build_data(DataConfig(val_root=str(flat), val_list=str(labels)), SMALL, splits=("val",))
    assert bundle.train is None
    assert _by_name(bundle.val.samples) == expected
    assert bundle.classes == ["0", "1", "2"]


def test_val_label_beyond_train_classes_is_an_error(tiny_imagefolder, flat_val, tmp_path):
    flat, labels, _ = flat_val
    bad = tmp_path / "labels_bad.txt"
    lines = labels.read_text().splitlines()
    lines[5] = lines[5].rsplit(" ", 1)[0] + " 3"
    bad.write_text("\n".join(lines))
    cfg = DataConfig(data=str(tiny_imagefolder), val_root=str(flat), val_list=str(bad))
    with pytest.raises(DataError, match=r"label 3 outside 0\.\.2"):
        build_data(cfg, SMALL)


def test_valprep_cli_zero_padded_folders(flat_val, tmp_path, capsys):
    flat, labels, expected = flat_val
    out = tmp_path / "val_sorted"
    assert main(["valprep", "--val-dir", str(flat), "--labels", str(labels), "--output", str(out)]) == 0
    assert "12 images into 3 class folders" in capsys.readouterr().out
    s = image_folder(out)
    assert s.classes == ["0000", "0001", "0002"]
    assert _by_name(s) == expected
    assert sorted(os.listdir(flat)) == sorted(expected)  # copy leaves the source alone


def test_valprep_cli_train_dir_names(tiny_imagefolder, flat_val, tmp_path):
    flat, labels, expected = flat_val
    out = tmp_path / "val_sorted"
    rc = main(["valprep", "--val-dir", str(flat), "--labels", str(labels), "--output", str(out),
               "--train-dir", str(tiny_imagefolder / "train"), "--method", "symlink"])
    assert rc == 0
    assert sorted(os.listdir(out)) == CLASSES
    assert all((out / c / n).is_symlink() for c in CLASSES for n in os.listdir(out / c))
    # an ImageFolder over the result, mapped through the training classes, keeps every label
    bundle = build_data(DataConfig(train_root=str(tiny_imagefolder / "train"), val_root=str(out)), SMALL)
    assert bundle.classes == CLASSES
    assert _by_name(bundle.val.samples) == expected
    img, label = bundle.val[0]
    assert img.shape == (3, 32, 32)


def test_valprep_cli_class_names_file_and_move(flat_val, tmp_path):
    flat, labels, expected = flat_val
    names = tmp_path / "names.txt"
    names.write_text("n01 circle\nn02 square\nn03 triangle\n")
    out = tmp_path / "out"
    rc = main(["valprep", "--val-dir", str(flat), "--labels", str(labels), "--output", str(out),
               "--class-names", str(names), "--method", "move"])
    assert rc == 0
    s = image_folder(out)
    assert s.classes == ["n01", "n02", "n03"]
    assert _by_name(s) == expected
    assert os.listdir(flat) == []


def test_valprep_cli_errors(flat_val, tmp_path, capsys):
    flat, labels, expected = flat_val
    os.remove(flat / next(iter(expected)))
    rc = main(["valprep", "--val-dir", str(flat), "--labels", str(labels), "--output", str(tmp_path / "o")])
    assert rc == 1  # the data is at fault: a failure, not a usage error
    assert "1 listed file missing" in capsys.readouterr().err
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")  # labels go up to 2
    rc = main(["valprep", "--val-dir", str(flat), "--labels", str(labels), "--output", str(tmp_path / "o"),
               "--class-names", str(names)])
    assert rc == 1
    assert "2 class names, but labels go up to 2" in capsys.readouterr().err


def test_val_class_not_in_train_is_an_error(tiny_copy):
    zebra = tiny_copy / "val" / "zebra"
    zebra.mkdir()
    shutil.copy(next((tiny_copy / "val" / "circle").iterdir()), zebra / "z.jpg")
    with pytest.raises(DataError, match="zebra") as info:
        build_data(DataConfig(data=str(tiny_copy)), SMALL)
    assert "labels would shift" in str(info.value)


def test_val_subset_of_train_classes_keeps_train_labels(tiny_copy):
    shutil.rmtree(tiny_copy / "val" / "circle")  # val now has square + triangle only
    bundle = build_data(DataConfig(data=str(tiny_copy)), SMALL)
    assert bundle.classes == CLASSES
    assert sorted(set(bundle.val.samples.targets())) == [1, 2]  # not shifted down to 0, 1
    for p, label in bundle.val.samples.items:
        assert Path(p).parent.name == CLASSES[label]


def test_eval_on_bare_class_tree_and_missing_split(tiny_imagefolder, tmp_path):
    s = find_samples(DataConfig(data=str(tiny_imagefolder / "val")), "val", classes=CLASSES)
    assert len(s.items) == 3 * TINY_VAL_PER_CLASS
    with pytest.raises(DataError, match="no train/ folder"):
        find_samples(DataConfig(data=str(tiny_imagefolder / "val")), "train")
    with pytest.raises(ConfigError, match="no data given"):  # a usage error: the flag is missing
        find_samples(DataConfig(), "train")


# ------------------------------------------------------------------------------------------------
# undecodable images


@pytest.fixture
def with_bad_images(tiny_imagefolder, tmp_path):
    """A val Samples list of 4 good images followed by a truncated JPEG, random bytes and an empty file."""
    good = image_folder(tiny_imagefolder / "val").items[:4]
    src = next(p for p, _ in good if p.endswith(".jpg"))
    data = Path(src).read_bytes()
    half = tmp_path / "half.jpg"
    half.write_bytes(data[: len(data) // 2])
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(random.Random(0).randbytes(2000))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    return Samples(good + [(str(half), 0), (str(noise), 1), (str(empty), 2)], CLASSES)


def test_corrupt_images_raise_bad_image_error_naming_the_file(with_bad_images):
    ds = ImageDataset(with_bad_images, eval_transform(32))
    for i in range(4):
        assert ds[i][0].shape == (3, 32, 32)
    for i in (4, 5, 6):
        path = with_bad_images.items[i][0]
        with pytest.raises(BadImageError) as info:
            ds[i]
        assert str(info.value).startswith(path)
        with pytest.raises(BadImageError):
            ds[(i, 123)]  # seeded index path too


def test_skip_bad_yields_none_and_collate_counts(with_bad_images):
    ds = ImageDataset(with_bad_images, eval_transform(32), skip_bad=True)
    items = [ds[i] for i in range(len(ds))]
    assert items[4] is None and items[5] is None and items[6] is None
    images, labels, skipped = collate_skipping([items[0], items[4], items[1], items[5]])
    assert skipped == 2
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [items[0][1], items[1][1]]
    images, labels, skipped = collate_skipping([None, None])
    assert skipped == 2 and images.numel() == 0 and labels.numel() == 0


def test_loader_skips_and_counts_bad_images(with_bad_images):
    ds = ImageDataset(with_bad_images, eval_transform(32), skip_bad=True)
    loader = make_loader(ds, batch_size=3, workers=0, train=False)
    seen = skipped = 0
    labels = []
    for images, y, n_bad in loader:
        seen += images.shape[0]
        skipped += n_bad
        labels += y.tolist()
    assert (seen, skipped) == (4, 3)
    assert labels == [label for _, label in with_bad_images.items[:4]]


# ------------------------------------------------------------------------------------------------
# transforms


@pytest.mark.parametrize("size", [16, 24, 48])
def test_transforms_output_uint8_chw(size):
    img = Image.new("RGB", (40, 27), (10, 200, 30))
    for tf in (train_transform(size, color_jitter=0.3), eval_transform(size, 0.875, "bicubic")):
        out = tf(img)
        assert out.dtype == torch.uint8
        assert out.shape == (3, size, size)
    # eval centre crop of a uniform image keeps its colour exactly
    assert eval_transform(size)(img)[:, size // 2, size // 2].tolist() == [10, 200, 30]


def test_eval_resize_size():
    assert eval_resize_size(224, 0.875) == 256
    assert eval_resize_size(32, 1.0) == 32


def test_seeded_augmentation_is_reproducible_and_leaves_global_rng(tiny_imagefolder):
    ds = ImageDataset(image_folder(tiny_imagefolder / "train"), train_transform(24))
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    a = ds[(5, 1234)][0]
    b = ds[(5, 1234)][0]
    assert torch.equal(torch.rand(3), expected_next)  # the global generator was not consumed
    assert torch.equal(a, b)
    others = [ds[(5, s)][0] for s in range(1235, 1240)]
    assert any(not torch.equal(a, o) for o in others)


def test_train_loader_is_independent_of_worker_count(tiny_imagefolder):
    ds = ImageDataset(image_folder(tiny_imagefolder / "train"), train_transform(16))

    def batches(workers):
        loader = make_loader(ds, batch_size=8, workers=workers, train=True, seed=3)
        loader.sampler.set_epoch(2)
        return [(x.clone(), y.clone()) for x, y, _ in loader]

    b0, b2 = batches(0), batches(2)
    assert len(b0) == len(b2) == 36 // 8  # drop_last in training
    for (x0, y0), (x2, y2) in zip(b0, b2):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


# ------------------------------------------------------------------------------------------------
# SeededSampler


def test_seeded_sampler_same_seed_and_epoch_replays():
    a = SeededSampler(50, shuffle=True, seed=7)
    b = SeededSampler(50, shuffle=True, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    first = list(a)
    assert first == list(a) == list(b)
    assert sorted(i for i, _ in first) == list(range(50))
    assert len({s for _, s in first}) == 50
    assert len(a) == 50


def test_seeded_sampler_epochs_and_seeds_differ():
    s = SeededSampler(50, shuffle=True, seed=7)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert [i for i, _ in e0] != [i for i, _ in e1]
    assert set(dict(e0).values()).isdisjoint(dict(e1).values())  # fresh augmentation seeds
    other = SeededSampler(50, shuffle=True, seed=8)
    assert [i for i, _ in other] != [i for i, _ in SeededSampler(50, shuffle=True, seed=7)]


def test_seeded_sampler_no_shuffle_is_in_order():
    s = SeededSampler(5, shuffle=False, seed=1)
    s.set_epoch(4)
    assert [i for i, _ in s] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("size", [10, 11, 1])
def test_seeded_sampler_eval_shards_cover_each_index_once(size):
    shards = [list(SeededSampler(size, shuffle=False, rank=r, world_size=2, pad=False)) for r in range(2)]
    indices = [i for shard in shards for i, _ in shard]
    assert sorted(indices) == list(range(size))
    for r in range(2):
        assert len(SeededSampler(size, shuffle=False, rank=r, world_size=2, pad=False)) == len(shards[r])


def test_seeded_sampler_train_shards_are_padded_equal():
    shards = []
    for r in range(2):
        s = SeededSampler(11, shuffle=True, seed=2, rank=r, world_size=2, pad=True)
        s.set_epoch(5)
        shards.append([i for i, _ in s])
        assert len(s) == len(shards[-1]) == 6
    assert set(shards[0]) | set(shards[1]) == set(range(11))
    assert len(set(shards[0]) & set(shards[1])) == 1  # one index repeated as padding


# ------------------------------------------------------------------------------------------------
# DeviceNormalizer, dummy data


def test_device_normalizer_matches_torchvision_normalize():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = torch.randint(0, 256, (4, 3, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = DeviceNormalizer(mean, std, torch.device("cpu"))(images)
    ref = torchvision.transforms.Normalize(mean, std)(images.float() / 255)
    assert out.dtype == torch.float32 and out.shape == images.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    cl = DeviceNormalizer(mean, std, torch.device("cpu"), channels_last=True)(images)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)
    for channels_last in (False, True):  # the CPU buffer-reusing path gives the same values, in its buffer
        norm = DeviceNormalizer(mean, std, torch.device("cpu"), channels_last=channels_last, reuse=True)
        first = norm(images)
        torch.testing.assert_close(first, ref, rtol=1e-5, atol=1e-5)
        assert first.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        second = norm(images.flip(0))
        assert second.data_ptr() == first.data_ptr()  # no new 4-d float batch per step
        torch.testing.assert_close(second, ref.flip(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(norm(images[:3]), ref[:3], rtol=1e-5, atol=1e-5)  # a short last batch
    floats = images.float()
    DeviceNormalizer(mean, std, torch.device("cpu"), reuse=True)(floats)
    assert torch.equal(floats, images.float())  # the caller's float batch is never modified


def test_dummy_data():
    bundle = build_data(DataConfig(dummy=True, dummy_train_size=20, dummy_val_size=6, dummy_classes=4), SMALL)
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (20, 6, 4)
    img, label = bundle.train[(13, 99)]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32) and label == 13 % 4
    assert torch.equal(DummyDataset(5, 3, 8, seed=1)[2][0], DummyDataset(5, 3, 8, seed=1)[2][0])


# ------------------------------------------------------------------------------------------------
# built-in digits


def test_builtin_digits(digits_data):
    root = digits_data
    assert root.name == "digits-v1"
    train, val = image_folder(root / "train"), image_folder(root / "val")
    assert train.classes == val.classes == [str(i) for i in range(10)]
    assert (len(train.items), len(val.items)) == (1442, 355)
    assert not {Path(p).name for p, _ in train.items} & {Path(p).name for p, _ in val.items}
    img = load_rgb(val.items[0][0])
    assert img.size == (32, 32) and img.mode == "RGB"
    # stratified: every fifth image of each class is in val
    for c in range(10):
        n_train, n_val = train.targets().count(c), val.targets().count(c)
        assert n_val == (n_train + n_val) // 5 > 30


def test_builtin_digits_via_data_config_and_cached(digits_data):
    mtime = (digits_data / "val").stat().st_mtime_ns
    assert materialize("digits") == digits_data
    assert (digits_data / "val").stat().st_mtime_ns == mtime  # not rewritten
    s = find_samples(DataConfig(data="builtin:digits"), "val", classes=[str(i) for i in range(10)])
    assert len(s.items) == 355 and s.items[0][0].startswith(str(digits_data))
    with pytest.raises(DataError, match="unknown built-in"):
        materialize("mnist")


def test_valprep_keeps_labels_when_a_class_is_absent(flat_val, tmp_path):
    """Labels {0, 2} only: the empty 0001 folder keeps label 2 at index 2 for an ImageFolder."""
    flat, labels, expected = flat_val
    kept = [ln for ln in labels.read_text().splitlines() if not ln.endswith(" 1")]
    sub = tmp_path / "labels_02.txt"
    sub.write_text("\t\n".join(kept).replace(" ", "\t") + "\n")  # tab-separated lines read too
    out = tmp_path / "val_02"
    assert main(["valprep", "--val-dir", str(flat), "--labels", str(sub), "--output", str(out)]) == 0
    s = image_folder(out)
    assert s.classes == ["0000", "0001", "0002"]
    assert _by_name(s) == {k: v for k, v in expected.items() if v != 1}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the side-stream prefetch runs on CUDA only"))])
def test_device_batches_deliver_every_batch_normalised(device):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(4) + i, i)
               for i in range(5)]
    norm = DeviceNormalizer(mean, std, torch.device(device))
    got = [(x.cpu(), t.cpu(), s) for x, t, s in device_batches(batches, norm)]
    assert len(got) == len(batches)
    for (x, t, s), (images, labels, skipped) in zip(got, batches):
        ref = torchvision.transforms.Normalize(mean, std)(images.float() / 255)
        torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(t, labels) and s == skipped


class _Niceness(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return torch.zeros(1, 1, 1, dtype=torch.uint8), os.nice(0)


def test_loader_workers_run_at_low_cpu_priority():
    base = os.nice(0)
    if base > 15:
        pytest.skip(f"the test process already runs at niceness {base}")
    # the worker reaches the niceness asked for (not base + it); asking for less than base changes nothing
    for nice, expected in ((19, 19), (base + 3, base + 3), (0, base)):
        loader = make_loader(_Niceness(), 2, 1, train=False, nice=nice)
        (_, niceness, _), = list(loader)
        assert niceness.tolist() == [expected, expected]
    with pytest.raises(ConfigError, match="worker_nice"):
        validate(apply_overrides(TrainConfig(), {"data": {"worker_nice": 20}}, "test"))


def test_a_jpeg_over_pillows_pixel_limit_is_refused_on_the_fast_path_too(monkeypatch):
    """The simplejpeg path reads only the header: a JPEG over MAX_IMAGE_PIXELS must still meet Pillow's bomb
    check (a 64x64 file under a limit of 1,000 pixels is over twice it: DecompressionBombError)."""
    from visionzoo.core.errors import BadImageError
    from visionzoo.data.crops import DecodeCrop
    from visionzoo.data.images import EncodedFile

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buf, "JPEG")
    file = EncodedFile(buf.getvalue(), "big.jpg")
    assert file.jpeg_size() == (64, 64) or file.jpeg_size() is None  # None only without simplejpeg
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert file.jpeg_size() is None
    with pytest.raises(BadImageError, match="big.jpg.*DecompressionBomb"):
        DecodeCrop(32)(file)
