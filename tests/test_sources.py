"""The data layer's one Source interface: kinds chosen once per config, a new kind in a few lines, and the
data-layer errors and choices that came with it (a missing --data, --val-split, comma-joined URLs)."""

from __future__ import annotations

import io
import json
import logging
import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import visionzoo
from visionzoo.cli import main
from visionzoo.config import DataConfig
from visionzoo.core.errors import ConfigError, DataError
from visionzoo.data import sources
from visionzoo.data.datasets import Samples
from visionzoo.data.images import EncodedFile
from visionzoo.data.loader import build_data, find_samples
from visionzoo.data.sources import (
    FolderSource,
    ListSource,
    PackSource,
    ShardsSource,
    Source,
    SplitSources,
    open_source,
    register_source,
)
from visionzoo.data.streaming import comma_joined, expand_urls
from visionzoo.models.registry import ModelCfg

CLASSES = ["circle", "square", "triangle"]
SMALL = ModelCfg(input_size=32)


@pytest.fixture(scope="module")
def tiny_pack(tiny_imagefolder, tmp_path_factory) -> Path:
    from visionzoo.data.packed import pack

    out = tmp_path_factory.mktemp("pack") / "p"
    pack(tiny_imagefolder, out, max_size=40, workers=1, progress=False)
    return out


def _count_calls(monkeypatch, calls: Counter) -> None:
    """Every registered kind's matches/samples/stream, counted as calls[(kind, method, split)]."""
    for kind in sources.KINDS:
        for name in ("matches", "samples", "stream"):
            raw = kind.__dict__.get(name)
            if raw is None:
                continue
            if isinstance(raw, classmethod):
                def counted_cm(cls, cfg, split, _f=raw.__func__, _key=(kind.kind, name)):
                    calls[(*_key, split)] += 1
                    return _f(cls, cfg, split)
                monkeypatch.setattr(kind, name, classmethod(counted_cm))
            else:
                def counted(self, split, *args, _f=raw, _key=(kind.kind, name), **kwargs):
                    calls[(*_key, split)] += 1
                    return _f(self, split, *args, **kwargs)
                monkeypatch.setattr(kind, name, counted)


@pytest.mark.parametrize("kind", ["folders", "pack"])
def test_a_config_enters_each_source_once(kind, tiny_imagefolder, tiny_pack, monkeypatch):
    data = tiny_imagefolder if kind == "folders" else tiny_pack
    calls: Counter = Counter()
    _count_calls(monkeypatch, calls)
    opened: list[Source] = []
    real_open = sources.open_source

    def counting_open(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr("visionzoo.data.loader.open_source", counting_open)
    # the modules behind the kinds: entered once per split, and only the chosen kind's
    entries: Counter = Counter()
    for module, fn in (("folders", "image_folder"), ("pack", "packed_samples"), ("hf", "is_hf"),
                       ("pack", "is_packed")):
        target = f"visionzoo.data.sources.{module}.{fn}"
        real = getattr(getattr(sources, module), fn)

        def entry(*args, _real=real, _fn=fn, **kwargs):
            entries[_fn] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(target, entry)

    bundle = build_data(DataConfig(data=str(data), img_size=16), SMALL)

    assert len(opened) == 1 and opened[0].kind == kind  # chosen once, for both splits
    assert bundle.classes == CLASSES and len(bundle.train) == 36 and len(bundle.val) == 12
    for (_, method, split), n in calls.items():
        assert n == 1, (method, split, n)  # no kind is asked twice about a split, no split read twice
    read = {(k, split) for (k, method, split) in calls if method == "samples"}
    assert read == {(kind, "train"), (kind, "val")}  # only the chosen kind reads, each split once
    assert entries["image_folder" if kind == "folders" else "packed_samples"] == 2
    assert entries["image_folder" if kind == "pack" else "packed_samples"] == 0
    assert entries["is_hf"] <= 2 and entries["is_packed"] <= 2  # once per split at most, while choosing


def test_kinds_are_chosen_per_split(tiny_imagefolder, tmp_path):
    # streamed training shards with local validation folders: one config, two kinds, chosen without reading
    mixed = open_source(DataConfig(train_urls="http://127.0.0.1:9/train-{000000..000001}.tar",
                                   data=str(tiny_imagefolder)))
    assert isinstance(mixed, SplitSources)
    assert isinstance(mixed.by_split["train"], ShardsSource) and isinstance(mixed.by_split["val"], FolderSource)
    assert mixed.describe().startswith("train: streamed shards http://127.0.0.1:9/")
    assert f"val: class folders under {tiny_imagefolder}" in mixed.describe()
    lists = open_source(DataConfig(data=str(tiny_imagefolder), val_list="v.txt"))
    assert type(lists.by_split["train"]) is FolderSource and type(lists.by_split["val"]) is ListSource
    folders = open_source(DataConfig(data=str(tiny_imagefolder)))
    assert type(folders) is FolderSource and folders.classes() == CLASSES
    # commands that read files one by one never pick a streamed kind: a URL is their one-line error
    with pytest.raises(ConfigError, match="this command reads local data only"):
        find_samples(DataConfig(data="http://127.0.0.1:9/pack"), "val")


def test_a_pack_source_names_its_classes(tiny_pack):
    source = open_source(DataConfig(data=str(tiny_pack)))
    assert isinstance(source, PackSource) and source.classes() == CLASSES
    assert source.describe() == f"pack {tiny_pack}"


# ------------------------------------------------------------------------------------------------ a new kind


COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]


class _MemoryStore:
    """Encoded images held in memory: the `store` of a Samples (as packs and Hugging Face datasets have)."""

    def __init__(self, blobs: list[bytes], names: list[str]):
        self.blobs, self.names = blobs, names

    def __len__(self) -> int:
        return len(self.blobs)

    def subset(self, indices):
        return _MemoryStore([self.blobs[i] for i in indices], [self.names[i] for i in indices])

    def encoded(self, i: int) -> EncodedFile:
        return EncodedFile(self.blobs[i], self.names[i])

    def open(self, i: int):
        return self.encoded(i).open()


class SquaresSource(Source):
    """data='squares:N': N coloured squares per class on grey, drawn in memory; the colour is the class."""

    kind = "squares"

    @classmethod
    def matches(cls, cfg, split):
        return bool(cfg.data and cfg.data.startswith("squares:"))

    def samples(self, split, classes=None, num_classes=None):
        n = int(self.cfg.data.split(":")[1]) // (1 if split == "train" else 4)
        rng = random.Random(split)
        items, blobs = [], []
        for i in range(n * len(COLOURS)):
            label = i % len(COLOURS)
            img = Image.new("RGB", (32, 32), (128, 128, 128))
            x, y = rng.randint(0, 12), rng.randint(0, 12)
            img.paste(COLOURS[label], (x, y, x + 20, y + 20))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            blobs.append(buf.getvalue())
            items.append((f"squares/{split}/{i}.png", label))
        names = ["red", "green", "blue"]
        return Samples(items, names, store=_MemoryStore(blobs, [p for p, _ in items]))

    def describe(self):
        return f"coloured squares ({self.cfg.data})"


def test_a_new_kind_in_a_few_lines_trains(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "KINDS", list(sources.KINDS))  # the registration ends with the test
    register_source(SquaresSource)
    with pytest.raises(ValueError, match="registered already"):
        register_source(SquaresSource)
    assert open_source(DataConfig(data="squares:8")).classes() == ["red", "green", "blue"]

    out = tmp_path / "run"
    summary = visionzoo.train(model="resnet10", data="squares:16", img_size=32, epochs=2, batch_size=8, lr=0.05,
                              workers=0, device="cpu", seed=0, output=str(out), progress=False)
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["num_images"] == 12
    assert [c["class"] for c in evaluation["per_class"]] == ["red", "green", "blue"]
    assert summary["epochs_run"] == 2


# ------------------------------------------------------------------------------------------------ errors, choices


def test_missing_data_folder_says_it_does_not_exist(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^data='missing': .*missing does not exist$"):
        build_data(DataConfig(data="missing"), SMALL)
    assert main(["train", "--data", "missing", "--model", "resnet10", "--epochs", "1", "--device", "cpu",
                 "--workers", "0", "--output", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"visionzoo train: error: --data missing: {tmp_path / 'missing'} does not exist"]


def test_val_split_chooses_a_folder_or_a_pack_split(tiny_imagefolder, tiny_pack):
    bundle = build_data(DataConfig(data=str(tiny_imagefolder), val_split="train"), SMALL)
    assert len(bundle.val) == 36 and bundle.classes == CLASSES
    with pytest.raises(DataError, match=r"no test/ folder \(expected .*/test/<class>/<image>\) and no val_list"):
        build_data(DataConfig(data=str(tiny_imagefolder), val_split="test"), SMALL)
    assert len(build_data(DataConfig(data=str(tiny_pack), val_split="train"), SMALL).val) == 36
    with pytest.raises(DataError, match=r"the pack has no test split \(it holds train, val\)"):
        build_data(DataConfig(data=str(tiny_pack), val_split="test"), SMALL)


def test_comma_joined_urls_suggest_the_double_colon(capsys, tmp_path):
    assert comma_joined("a.tar,b.tar") == ["a.tar", "b.tar"]
    assert comma_joined("train-{a,b}.tar") is None and comma_joined("x/a.tar") is None
    assert comma_joined("https://h/a.tar?s=1,https://h/b-{0..3}.tar") == ["https://h/a.tar?s=1", "https://h/b-{0..3}.tar"]
    with pytest.raises(ConfigError, match=r"joined with '::', not ',': --train-urls 'a\.tar::b\.tar'"):
        expand_urls("a.tar,b.tar", "--train-urls")
    with pytest.raises(ConfigError, match=r"train_urls 'http://x/a\.tar::http://x/b\.tar' \(joined with '::'"):
        build_data(DataConfig(data="http://x/a.tar,http://x/b.tar"), SMALL)
    for i, flags in enumerate((["--train-urls", "a.tar,b.tar"], ["--data", "http://x/a.tar,http://x/b.tar"])):
        assert main(["train", *flags, "--model", "resnet10", "--epochs", "1", "--device", "cpu", "--workers", "0",
                     "--output", str(tmp_path / f"run{i}"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "::" in err and "Traceback" not in err, err
        assert "--train-urls '" in err


# ------------------------------------------------------------------------------------------------ Hugging Face


@pytest.fixture
def hf_train_test(tiny_imagefolder, tmp_path, monkeypatch):
    """The tiny ImageFolder as a Hugging Face dataset with train and test splits only (as many on the hub)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))

    def split(folder: Path):
        paths = [str(p) for c in CLASSES for p in sorted((folder / c).iterdir())]
        labels = [i for i, c in enumerate(CLASSES) for _ in sorted((folder / c).iterdir())]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
        return datasets.Dataset.from_dict({"image": paths, "label": labels}, features=features)

    out = tmp_path / "hf"
    datasets.DatasetDict({"train": split(tiny_imagefolder / "train"),
                          "test": split(tiny_imagefolder / "val")}).save_to_disk(str(out))
    return out


def test_hf_train_and_test_only_validates_on_test(hf_train_test, tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="visionzoo"):
        s = find_samples(DataConfig(data=str(hf_train_test)), "val")
    assert len(s.items) == 12 and s.classes == CLASSES
    assert any(r.levelno == logging.INFO and "has no validation split (it has train, test): validating on test "
               "(val_split chooses another)" in r.getMessage() for r in caplog.records)
    assert len(find_samples(DataConfig(data=str(hf_train_test), val_split="train"), "val").items) == 36
    with pytest.raises(DataError, match=r"no 'holdout' split for val_split \(it has train, test\)$"):
        find_samples(DataConfig(data=str(hf_train_test), val_split="holdout"), "val")

    run = tmp_path / "run"
    capsys.readouterr()  # save_to_disk's progress bars
    assert main(["train", "--data", str(hf_train_test), "--model", "resnet10", "--img-size", "32", "--epochs", "1",
                 "--batch-size", "12", "--workers", "0", "--device", "cpu", "--output", str(run),
                 "--no-progress"]) == 0
    first = (run / "train.log").read_text().splitlines()[:3]
    assert any("INFO" in line and "validating on test (--val-split chooses another)" in line for line in first), first
    assert main(["train", "--data", str(hf_train_test), "--val-split", "holdout", "--epochs", "1", "--device", "cpu",
                 "--workers", "0", "--output", str(tmp_path / "r2"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == (f"visionzoo train: error: {hf_train_test}: no 'holdout' split for --val-split "
                                    "(it has train, test)")


def test_hf_parquet_with_a_test_split_is_found(hf_train_test, tmp_path):
    import datasets

    dd = datasets.load_from_disk(str(hf_train_test))
    out = tmp_path / "parquet"
    out.mkdir()
    dd["train"].to_parquet(str(out / "train-00000-of-00001.parquet"))
    dd["test"].to_parquet(str(out / "test-00000-of-00001.parquet"))
    s = find_samples(DataConfig(data=str(out)), "val")
    assert len(s.items) == 12 and s.classes == CLASSES
