"""Long-tail benchmark building, shot-group and open-set metrics, and `eval --longtail`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from visionzoo.cli import main
from visionzoo.longtail.make_lt import make_lt, pareto_sizes
from visionzoo.longtail.metrics import open_set_f_measure, shot_accuracy, shot_group


def test_shot_groups_use_the_papers_strict_thresholds():
    assert [shot_group(n) for n in (101, 100, 20, 19)] == ["many", "medium", "medium", "few"]
    assert shot_group(50, many=40, few=10) == "many"
    r = shot_accuracy(correct=[9, 8, 7, 5, 4, 1, 0, 3], total=[10, 10, 10, 10, 10, 10, 10, 0],
                      train_counts=[150, 101, 100, 50, 20, 19, 5, 500])
    # many: 90, 80; medium: 70, 50, 40; few: 10, 0; the last class has no test images and is left out
    assert r["many_shot"] == pytest.approx(85.0)
    assert r["medium_shot"] == pytest.approx(160 / 3)
    assert r["few_shot"] == pytest.approx(5.0)
    assert (r["many_classes"], r["medium_classes"], r["few_classes"]) == (2, 3, 2)


def test_open_set_f_measure_counts_rejected_known_samples():
    labels = np.array([0, 1, 2, 0, -1, -1])
    pred = np.array([0, 1, 0, 0, 1, 2])
    conf = np.array([0.9, 0.05, 0.8, 0.5, 0.6, 0.05])  # sample 1 (known) and 5 (open) fall below 0.1
    r = open_set_f_measure(pred, conf, labels, 0.1)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 1)  # fp: one wrong + one rejected known; fn: one accepted open
    p, rec = 2 / 4, 2 / 3
    assert r["f_measure"] == pytest.approx(100 * 2 * p * rec / (p + rec))  # 57.14
    assert r["f_measure"] < 66.6  # the original's exclusion of rejected samples would give 66.67
    assert (r["known_rejected"], r["open_rejected"]) == (1, 1)


def test_pareto_sizes_are_long_tailed():
    sizes = pareto_sizes(50, 6.0, 500, 5, seed=0)
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 500 and sizes[-1] == 5
    assert np.median(sizes) < 250  # most classes sit in the tail


def test_make_lt_lists(digits_data, tmp_path):
    out = tmp_path / "lt"
    s = make_lt(digits_data, out, alpha=6, open_classes=2, val_per_class=10, seed=1)
    assert s["known_classes"] == 8 and len(s["open_classes"]) == 2 and s["imbalance"] >= 20
    rows = {k: (out / f"{k}.txt").read_text().split("\n")[:-1] for k in ("train", "val", "test", "open")}
    train_paths = {r.rsplit(" ", 1)[0] for r in rows["train"]}
    val_paths = {r.rsplit(" ", 1)[0] for r in rows["val"]}
    assert not train_paths & val_paths  # val images are left-over training images
    assert all(r.endswith(" -1") for r in rows["open"]) and rows["open"]
    open_names = set(s["open_classes"])
    assert not any(Path(p).parts[1] in open_names for p in train_paths | val_paths)
    classes = (out / "classes.txt").read_text().split()
    assert len(classes) == 8 and not open_names & set(classes)
    counts = np.bincount([int(r.rsplit(" ", 1)[1]) for r in rows["train"]], minlength=8)
    assert sorted(counts.tolist(), reverse=True) == sorted(s["class_sizes"].values(), reverse=True)
    # the lists resolve as training data, with class names from classes.txt
    from visionzoo.config import DataConfig
    from visionzoo.data.loader import find_samples

    samples = find_samples(DataConfig(data=str(digits_data), train_list=str(out / "train.txt")), "train")
    assert samples.classes == classes and len(samples.items) == s["train_images"]


def test_eval_longtail_end_to_end(digits_data, tmp_path, capsys):
    lt = tmp_path / "lt"
    make_lt(digits_data, lt, alpha=6, open_classes=2, val_per_class=10, seed=0)
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--data", str(digits_data), "--train-list", str(lt / "train.txt"),
                 "--val-list", str(lt / "test.txt"), "--img-size", "32", "--crop-pct", "1.0", "--epochs", "2",
                 "--batch-size", "32", "--lr", "0.05", "--workers", "0", "--device", "cpu", "--output", str(run),
                 "--no-progress"]) == 0
    js, png = tmp_path / "lt.json", tmp_path / "lt.png"
    assert main(["eval", "--checkpoint", str(run / "last.pth"), "--longtail", "--open-list", str(lt / "open.txt"),
                 "--many", "60", "--few", "20", "--json", str(js), "--plot", str(png), "--no-progress"]) == 0
    r = json.loads(js.read_text())
    assert r["num_images"] == len((lt / "test.txt").read_text().split("\n")) - 1
    assert r["open_images"] == len((lt / "open.txt").read_text().split("\n")) - 1
    groups = [c["group"] for c in r["per_class"]]
    assert sum(g == "few" for g in groups) == r["few_classes"] >= 1
    o = r["open_set"]
    assert o["tp"] + o["fp"] == r["num_images"] and 0 <= o["f_measure"] <= 100
    assert png.stat().st_size > 10_000
    assert "open-set F-measure" in capsys.readouterr().out
