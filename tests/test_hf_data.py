"""Hugging Face datasets as --data: save_to_disk folders and parquet files, trained and evaluated end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

datasets = pytest.importorskip("datasets")

from visionzoo.cli import main  # noqa: E402
from visionzoo.config import DataConfig  # noqa: E402
from visionzoo.core.errors import DataError  # noqa: E402
from visionzoo.data.datasets import ImageDataset  # noqa: E402
from visionzoo.data.hf import hf_samples, is_hf  # noqa: E402
from visionzoo.data.loader import find_samples, make_loader  # noqa: E402
from visionzoo.data.transforms import train_transform  # noqa: E402

# deliberately not sorted: the run's classes must be the ClassLabel's names in its order, not folder order
NAMES = ["triangle", "circle", "square"]


def _split_dataset(folder: Path, column: str = "image", label: str = "label"):
    paths, labels = [], []
    for name in NAMES:
        for p in sorted((folder / name).iterdir()):
            paths.append(str(p))
            labels.append(NAMES.index(name))
    features = datasets.Features({column: datasets.Image(), label: datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({column: paths, label: labels}, features=features)


@pytest.fixture(scope="module")
def hf_dict(tiny_imagefolder):
    """The tiny ImageFolder as a DatasetDict: train (36 images) and validation (12)."""
    return datasets.DatasetDict({"train": _split_dataset(tiny_imagefolder / "train"),
                                 "validation": _split_dataset(tiny_imagefolder / "val")})


@pytest.fixture(scope="module")
def hf_disk(hf_dict, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "disk"
    hf_dict.save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def hf_parquet(hf_dict, tmp_path_factory) -> Path:
    """DIR/train-00000-of-00001.parquet and DIR/val/part-0.parquet (the two layouts side by side)."""
    out = tmp_path_factory.mktemp("hf") / "parquet"
    (out / "val").mkdir(parents=True)
    hf_dict["train"].to_parquet(str(out / "train-00000-of-00001.parquet"))
    hf_dict["validation"].to_parquet(str(out / "val" / "part-0.parquet"))
    return out


@pytest.fixture(autouse=True)
def _private_hf_cache(monkeypatch, tmp_path):
    # load_dataset("parquet") converts into the datasets cache: keep it out of the user's home
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _train(data: Path, out: Path, epochs: int = 2) -> dict:
    # resnet10 at 12 a batch: 3 steps an epoch, enough for the colour-coded classes in 6 epochs (as
    # test_pipeline's learning test); 2 epochs only show that the data path runs
    assert main(["train", "--data", str(data), "--model", "resnet10", "--img-size", "32", "--epochs", str(epochs),
                 "--batch-size", "12", "--lr", "0.05", "--workers", "0", "--device", "cpu", "--seed", "0",
                 "--output", str(out), "--no-progress"]) == 0
    return json.loads((out / "summary.json").read_text())


def _last_eval(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "val_num_images" in r][-1]


def test_detection_needs_no_import(hf_disk, hf_parquet, tiny_imagefolder):
    assert is_hf(str(hf_disk)) and is_hf(str(hf_parquet)) and is_hf("hf:user/name")
    assert not is_hf(str(tiny_imagefolder)) and not is_hf(None) and not is_hf("builtin:digits")


def test_samples_carry_the_encoded_bytes_and_class_names(hf_disk, tiny_imagefolder):
    for split, folder in (("train", "train"), ("val", "val")):
        s = find_samples(DataConfig(data=str(hf_disk)), split)
        assert s.classes == NAMES
        assert len(s.items) == 3 * (12 if split == "train" else 4)
        # the rows' bytes are the original files', labels follow the ClassLabel order
        first = sorted((tiny_imagefolder / folder / NAMES[0]).iterdir())[0]
        assert s.encoded(0).data == first.read_bytes()
        assert s.targets()[0] == 0 and s.targets()[-1] == 2
        assert s.open(0).size == s.encoded(0).open().size
    # a model's class order remaps labels by name
    remapped = hf_samples(str(hf_disk), "val", classes=sorted(NAMES))
    assert remapped.classes == sorted(NAMES)
    assert remapped.targets()[0] == sorted(NAMES).index(NAMES[0])
    sub = remapped.subset([5, 0])
    assert sub.items == [remapped.items[5], remapped.items[0]]
    assert sub.encoded(1).data == remapped.encoded(0).data


def test_seeded_augmentation_is_the_same_in_workers(hf_disk):
    s = find_samples(DataConfig(data=str(hf_disk)), "train")
    ds = ImageDataset(s, train_transform(24))  # the fused transform: it takes the EncodedFile
    batches = [torch.cat([b[0] for b in make_loader(ds, 8, w, True, seed=3)]) for w in (0, 2)]
    assert torch.equal(*batches)


def test_train_and_eval_from_a_save_to_disk_folder(hf_disk, tmp_path):
    run = tmp_path / "run"
    summary = _train(hf_disk, run, epochs=6)
    ckpt = torch.load(run / "best.pth", map_location="cpu", weights_only=False)
    assert list(ckpt["classes"]) == NAMES
    last = _last_eval(run)
    assert last["val_num_images"] == 12  # every validation image once
    assert summary["best_top1"] > 60.0  # 3 colour-coded classes: chance is 33%
    # eval reads the same data through the same path: the training's numbers again
    given = ["--data", str(hf_disk), "--workers", "0"]
    for ckpt_name, data, expected in (("last.pth", given, last["val_top1"]),
                                      ("best.pth", given, summary["best_top1"]),
                                      ("best.pth", [], summary["best_top1"])):  # the data the file records
        js = tmp_path / "e.json"
        assert main(["eval", "--checkpoint", str(run / ckpt_name), *data, "--json", str(js), "--device", "cpu",
                     "--no-progress"]) == 0
        result = json.loads(js.read_text())
        assert result["num_images"] == 12
        assert result["top1"] == pytest.approx(expected, abs=1e-6), ckpt_name


def test_train_from_parquet_files(hf_parquet, tmp_path):
    run = tmp_path / "run"
    _train(hf_parquet, run)
    assert _last_eval(run)["val_num_images"] == 12
    assert list(torch.load(run / "best.pth", map_location="cpu", weights_only=False)["classes"]) == NAMES


def test_named_columns(hf_dict, tmp_path):
    out = tmp_path / "cols"
    datasets.DatasetDict({
        s: hf_dict[s].rename_columns({"image": "picture", "label": "kind"}).add_column("other", [0] * len(hf_dict[s]))
        for s in ("train", "validation")}).save_to_disk(str(out))
    s = find_samples(DataConfig(data=str(out), image_column="picture", label_column="kind"), "val")
    assert s.classes == NAMES and len(s.items) == 12
    # an integer column as labels: the numbers are the class names
    s = find_samples(DataConfig(data=str(out), label_column="other"), "val")
    assert s.classes == ["0"] and set(s.targets()) == {0}


def test_a_wrong_label_column_is_a_one_line_error_naming_the_columns(hf_disk, hf_dict, tmp_path, capsys):
    with pytest.raises(DataError, match=r"no column 'lbl' for --label-column \(columns: image, label\)"):
        find_samples(DataConfig(data=str(hf_disk), label_column="lbl"), "train")
    unlabeled = tmp_path / "unlabeled"
    datasets.DatasetDict({s: hf_dict[s].remove_columns("label") for s in ("train", "validation")}).save_to_disk(
        str(unlabeled))
    with pytest.raises(DataError, match=r"no ClassLabel column; name one with --label-column \(columns: image\)"):
        find_samples(DataConfig(data=str(unlabeled)), "train")
    capsys.readouterr()  # save_to_disk's progress bars
    assert main(["train", "--data", str(hf_disk), "--label-column", "lbl", "--epochs", "1", "--device", "cpu",
                 "--workers", "0", "--output", str(tmp_path / "r"), "--no-progress"]) == 1  # a DataError: 1
    err = capsys.readouterr().err.strip()
    assert "lbl" in err and "columns: image, label" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_a_missing_split_names_the_ones_there(hf_dict, tmp_path):
    out = tmp_path / "only-train"
    datasets.DatasetDict({"train": hf_dict["train"]}).save_to_disk(str(out))
    with pytest.raises(DataError, match=r"no validation or val split \(it has train\)"):
        find_samples(DataConfig(data=str(out)), "val")


def test_a_bad_image_is_skipped_like_any_other(hf_dict, tmp_path):
    out = tmp_path / "bad"
    train = hf_dict["train"].cast_column("image", datasets.Image(decode=False))
    rows = train.to_list()
    rows[0]["image"] = {"bytes": b"not an image", "path": "broken.jpg"}
    train = datasets.Dataset.from_list(rows, features=train.features).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": train, "validation": hf_dict["validation"]}).save_to_disk(str(out))
    s = find_samples(DataConfig(data=str(out)), "train")
    from visionzoo.core.errors import BadImageError

    with pytest.raises(BadImageError, match="broken.jpg"):
        ImageDataset(s, train_transform(24))[0]
    image, label, replaced = ImageDataset(s, train_transform(24), skip_bad=True, replace_bad=True)[0]
    assert replaced == 1 and label == s.targets()[1] and image.shape == (3, 24, 24)
