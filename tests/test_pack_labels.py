"""Issue 30 (packs and labels): labels outside 0..C-1 are refused where each source reads them, naming the file or
row; `pack` locks its output and writes a pack as a whole; damaged packs and Hugging Face data are one line."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import shutil
import signal
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionzoo.cli import main
from visionzoo.config import DataConfig
from visionzoo.core.errors import ConfigError, DataError
from visionzoo.data import packed
from visionzoo.data.loader import build_data
from visionzoo.data.packed import index_name, packed_samples
from visionzoo.models.registry import ModelCfg

CLASSES = ("ant", "bee", "cat")
SMALL = ModelCfg(input_size=16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """DATA/train/<class>/ (4 JPEGs, 16x16) and DATA/val/<class>/ (2) for three colour-coded classes."""
    root = tmp_path_factory.mktemp("labels") / "data"
    for split, n in (("train", 4), ("val", 2)):
        for c, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                colour = [30 + 5 * i] * 3
                colour[c] = 220
                Image.new("RGB", (16, 16), tuple(colour)).save(root / split / cls / f"{cls}{i}.jpg")
    return root


def _pack(data: Path, out: Path, *extra: str) -> int:
    return main(["pack", "--data", str(data), "--output", str(out), "--max-size", "16", "--workers", "1",
                 "--no-progress", "--shard-images", "4", *extra])


@pytest.fixture(scope="module")
def pack_dir(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "pack"
    assert _pack(folder, out) == 0
    return out


def _copy(pack_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(pack_dir, out)
    return out


def _rewrite_index(root: Path, split: str, **arrays) -> None:
    path = root / index_name(split)
    with np.load(path) as index:
        cols = {k: index[k] for k in index.files}
    cols.update(arrays)
    path.unlink()
    np.savez(path, **cols)


def _one_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


# ------------------------------------------------------------------------------------------------ item 1: labels


def test_pack_refuses_a_train_list_with_open_set_labels_and_keeps_them_elsewhere(folder, tmp_path, capsys):
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    train = tmp_path / "train.txt"
    train.write_text("train/ant/ant0.jpg 0\ntrain/bee/bee0.jpg 1\ntrain/cat/cat0.jpg -1\n")
    assert _pack(folder, tmp_path / "out", "--list", f"train={train}") != 0
    _one_line(capsys, f"{train}:3", "label -1")
    assert not (tmp_path / "out" / "pack.json").exists()
    # open-set entries of another split are packed and read back as -1 (OLTR's open-set evaluation)
    train.write_text("train/ant/ant0.jpg 0\ntrain/bee/bee0.jpg 1\ntrain/cat/cat0.jpg 2\n")
    (tmp_path / "open.txt").write_text("val/ant/ant0.jpg 0\nval/cat/cat1.jpg -1\n")
    assert _pack(folder, tmp_path / "lt", "--list", f"train={train}", "--list", f"open={tmp_path / 'open.txt'}") == 0
    assert [y for _, y in packed_samples(tmp_path / "lt", "open").items] == [0, -1]


@pytest.mark.parametrize(("split", "bad"), [("train", 99), ("train", -5), ("train", -1), ("val", 99), ("val", -5)])
def test_index_labels_outside_the_classes_name_the_index_entry(pack_dir, tmp_path, split, bad):
    root = _copy(pack_dir, tmp_path)
    with np.load(root / index_name(split)) as index:
        labels = index["label"].copy()
    labels[2] = bad
    _rewrite_index(root, split, label=labels)
    with pytest.raises(DataError, match=rf"{index_name(split)}: entry 2 .*label {bad}"):
        packed_samples(root, split)


def test_val_open_set_entries_of_a_pack_stay_allowed(pack_dir, tmp_path):
    root = _copy(pack_dir, tmp_path)
    with np.load(root / index_name("val")) as index:
        labels = index["label"].copy()
    labels[0] = -1
    _rewrite_index(root, "val", label=labels)
    assert packed_samples(root, "val").targets()[0] == -1


def test_a_short_classes_json_is_refused(pack_dir, tmp_path):
    root = _copy(pack_dir, tmp_path)
    (root / "classes.json").write_text('["ant", "bee"]\n')
    with pytest.raises(DataError, match="classes.json.*label 2 outside 0..1"):
        packed_samples(root, "train")


def test_training_on_a_pack_with_label_99_is_one_line(pack_dir, tmp_path, capsys):
    root = _copy(pack_dir, tmp_path)
    with np.load(root / index_name("train")) as index:
        labels = index["label"].copy()
    labels[0] = 99
    _rewrite_index(root, "train", label=labels)
    assert main(["train", "--data", str(root), "--model", "resnet10", "--img-size", "16", "--epochs", "1",
                 "--batch-size", "4", "--workers", "0", "--device", "cpu", "--output", str(tmp_path / "run"),
                 "--no-progress"]) != 0
    _one_line(capsys, "train.index.npz: entry 0", "label 99")


datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def _private_hf_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _hf(folder: Path, split: str, labels: list[int] | None = None, int_labels: bool = False):
    paths = sorted(str(p) for p in (folder / split).rglob("*.jpg"))
    ys = labels if labels is not None else [CLASSES.index(Path(p).parent.name) for p in paths]
    label = datasets.Value("int64") if int_labels else datasets.ClassLabel(names=list(CLASSES))
    feats = datasets.Features({"image": datasets.Image(), "label": label})
    return datasets.Dataset.from_dict({"image": paths, "label": ys[:len(paths)]}, features=feats)


def _save(folder: Path, out: Path, train_labels=None, val_labels=None, int_labels: bool = False) -> Path:
    dd = datasets.DatasetDict({"train": _hf(folder, "train", train_labels, int_labels),
                               "validation": _hf(folder, "val", val_labels, int_labels)})
    dd.save_to_disk(str(out))
    return out


def test_hf_no_label_minus_one_is_refused_for_training_and_named(folder, tmp_path):
    from visionzoo.data.hf import hf_samples

    labels = [0, 1, 2] * 4
    labels[5] = -1
    data = str(_save(folder, tmp_path / "hf", train_labels=labels))
    with pytest.raises(DataError, match=r"\[train\] row 5 .*label -1"):
        hf_samples(data, "train")
    assert hf_samples(data, "val").targets()  # the validation split's labels are fine


@pytest.mark.parametrize("bad", [-3, -7])
def test_hf_parquet_int_labels_outside_the_classes_are_refused(folder, tmp_path, bad):
    from visionzoo.data.hf import hf_samples

    root = tmp_path / "pq"
    root.mkdir()
    _hf(folder, "train", [0, 1, 2] * 4, int_labels=True).to_parquet(str(root / "train.parquet"))
    val = [0, 1, 2, 0, 1, 2]
    val[1] = bad
    _hf(folder, "val", val, int_labels=True).to_parquet(str(root / "validation.parquet"))
    train = hf_samples(str(root), "train", label_column="label")
    with pytest.raises(DataError, match=rf"label {bad}|\['{bad}'\]"):
        hf_samples(str(root), "val", train.classes, label_column="label")
    if bad < 0:
        with pytest.raises(DataError, match=rf"row 1 .*label {bad}"):
            hf_samples(str(root), "val", label_column="label")


# ------------------------------------------------------------------------------------------------ item 2: pack lock

def _held_pack(folder: Path, out: Path, go: Path) -> None:
    """A pack (in a forked process) that, after each image, waits (at most 60 s) for the file go."""
    os.setpgrp()  # its own process group: a kill of the group takes its encoding workers too
    add = packed.ShardWriter.add

    def held(self, *a):
        add(self, *a)
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    packed.ShardWriter.add = held  # type: ignore[method-assign]
    packed.pack(folder, out, max_size=16, workers=1, progress=False, shard_images=4)


def test_two_packs_into_one_output_one_is_refused_the_other_complete(folder, tmp_path, capsys):
    out, go = tmp_path / "shared", tmp_path / "go"
    first = multiprocessing.get_context("fork").Process(target=_held_pack, args=(folder, out, go))
    first.start()
    try:
        deadline = time.monotonic() + 30
        while not list(out.rglob("*.tar.tmp")) and first.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)  # until the first pack is writing its shards
        assert first.is_alive()
        assert _pack(folder, out) != 0  # this process is the second pack into the same output
        _one_line(capsys, "in use", str(out))
    finally:
        go.touch()
        first.join(60)
    assert first.exitcode == 0
    assert not list(out.glob("*.tmp")) and not list(out.glob(".pack-partial-*")) and not (out / ".lock").exists()
    for split, n in (("train", 12), ("val", 6)):
        s = packed_samples(out, split)
        assert len(s.items) == n
        for i in range(n):  # every entry decodes, and its bytes are its own member's
            s.open(i).load()
            assert s.store._header_at(i)[0] == bytes(s.store.keys[i]) + b".jpg"


class Boom(Exception):
    pass


def test_an_interrupted_pack_leaves_no_half_pack(folder, tmp_path, monkeypatch):
    add, calls = packed.ShardWriter.add, []

    def failing(self, *a):
        calls.append(1)
        if len(calls) > 14:  # in the val split, after the train split is complete
            raise Boom
        add(self, *a)

    monkeypatch.setattr(packed.ShardWriter, "add", failing)
    out = tmp_path / "out"
    with pytest.raises(Boom):
        packed.pack(folder, out, max_size=16, workers=1, progress=False, shard_images=4)
    assert not out.exists() or not [p.name for p in out.iterdir()]  # no shards, index, staging folder or lock


def test_a_killed_pack_leaves_no_visible_files_and_the_next_pack_completes(folder, tmp_path):
    out, go = tmp_path / "killed", tmp_path / "never"
    first = multiprocessing.get_context("fork").Process(target=_held_pack, args=(folder, out, go))
    first.start()
    deadline = time.monotonic() + 30
    while not list(out.rglob("*.tar.tmp")) and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # midway through its shards (and its workers): no finally runs
    first.join(30)
    with contextlib.suppress(ProcessLookupError):  # a worker forked as the group was killed
        os.killpg(first.pid, signal.SIGKILL)
    assert not packed.is_packed(out)
    assert not [p.name for p in out.iterdir() if not p.name.startswith(".")]  # only its private staging folder
    assert _pack(folder, out) == 0  # takes the dead pack's lock and clears its staging folder
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert len(packed_samples(out, "train").items) == 12


def test_a_read_only_output_is_one_line(folder, tmp_path, monkeypatch, capsys):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tarfile, "open", read_only)
    assert _pack(folder, tmp_path / "ro") != 0
    _one_line(capsys, "Read-only file system", str(tmp_path / "ro"))


# ------------------------------------------------------------------------------------------------ item 3: minors


def test_a_missing_shard_is_one_line(pack_dir, tmp_path):
    root = _copy(pack_dir, tmp_path)
    (root / "train-000001.tar").unlink()
    with pytest.raises(DataError, match="train-000001.tar"):
        packed_samples(root, "train")


@pytest.mark.parametrize("damage", ["garbage", "no_key", "short"])
def test_a_damaged_index_is_one_line(pack_dir, tmp_path, damage):
    root = _copy(pack_dir, tmp_path)
    path = root / index_name("train")
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 not a zip at all")
    elif damage == "short":
        path.write_bytes(path.read_bytes()[:300])
    else:
        with np.load(path) as index:
            cols = {k: index[k] for k in index.files if k != "key"}
        path.unlink()
        np.savez(path, **cols)
    with pytest.raises(DataError, match="train.index.npz: a damaged pack index"):
        packed_samples(root, "train")


def test_an_index_with_offsets_rotated_by_one_sample_is_refused(pack_dir, tmp_path):
    root = _copy(pack_dir, tmp_path)
    with np.load(root / index_name("train")) as index:
        cols = {k: np.roll(index[k], 1) for k in ("shard", "start", "offset", "length")}
    _rewrite_index(root, "train", **cols)
    with pytest.raises(DataError, match="train.index.npz: entry 0 .*not at its own image"):
        packed_samples(root, "train")


def test_truncated_parquet_and_a_missing_state_json_are_one_line(folder, tmp_path):
    from visionzoo.data.hf import hf_samples

    root = tmp_path / "pq"
    root.mkdir()
    _hf(folder, "train").to_parquet(str(root / "train.parquet"))
    data = (root / "train.parquet").read_bytes()
    (root / "train.parquet").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match="not a readable Hugging Face dataset"):
        hf_samples(str(root), "train")
    disk = _save(folder, tmp_path / "disk")
    (disk / "train" / "state.json").unlink()
    with pytest.raises(DataError, match="not a readable Hugging Face dataset"):
        hf_samples(str(disk), "train")


@pytest.mark.parametrize("name", ["hf:", "hf:../../etc", "hf:a/../../b", "hf:/etc"])
def test_hf_names_that_are_not_hub_ids_are_refused(name):
    from visionzoo.data.hf import hf_samples

    with pytest.raises(ConfigError, match="hub id"):
        hf_samples(name, "train")


def test_hf_without_network_is_one_line(monkeypatch):
    import huggingface_hub.constants

    from visionzoo.data.hf import hf_samples

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="cannot load 'nobody-here/no-such-set' from the Hugging Face hub"):
        hf_samples("hf:nobody-here/no-such-set", "train")


def test_an_all_unlabelled_val_split_is_refused(folder, tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    train = tmp_path / "train.txt"
    train.write_text("train/ant/ant0.jpg 0\ntrain/bee/bee0.jpg 1\ntrain/cat/cat0.jpg 2\n")
    (tmp_path / "val.txt").write_text("val/ant/ant0.jpg -1\nval/cat/cat1.jpg -1\n")
    out = tmp_path / "p"
    assert _pack(folder, out, "--list", f"train={train}", "--list", f"val={tmp_path / 'val.txt'}") == 0
    with pytest.raises(DataError, match="the val split has no labelled image"):
        build_data(DataConfig(data=str(out), workers=0), SMALL)


def test_one_class_data_is_refused_for_training(folder, tmp_path, capsys):
    data = tmp_path / "one"
    for split in ("train", "val"):
        shutil.copytree(folder / split / "ant", data / split / "ant")
    assert main(["train", "--data", str(data), "--model", "resnet10", "--img-size", "16", "--epochs", "1",
                 "--batch-size", "2", "--workers", "0", "--device", "cpu", "--output", str(tmp_path / "run"),
                 "--no-progress"]) != 0
    _one_line(capsys, "one class learns nothing")
    assert not (tmp_path / "run" / "best.pth").exists()


def test_eval_on_a_pack_whose_val_index_says_99_is_one_line(tiny_imagefolder, tiny_ckpt, tmp_path, capsys):
    root = tmp_path / "tiny-pack"
    assert _pack(tiny_imagefolder, root) == 0
    with np.load(root / index_name("val")) as index:
        labels = index["label"].copy()
    labels[3] = 99
    _rewrite_index(root, "val", label=labels)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tiny_ckpt), "--data", str(root), "--device", "cpu",
                 "--no-progress"]) != 0
    _one_line(capsys, "val.index.npz: entry 3", "label 99")
