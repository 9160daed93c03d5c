"""Multi-label data: CSV lists in both layouts, the metrics against scikit-learn, the losses by hand, label
vectors mixed with their images, and a short run end to end (mAP, best.pth by mAP, predict's label sets, an
exact resume)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from visionzoo.cli import main
from visionzoo.core.errors import ConfigError, DataError
from visionzoo.data.datasets import list_samples
from visionzoo.engine.multilabel import (
    MultilabelCriterion,
    asymmetric_loss,
    average_precision,
    f1_scores,
    multilabel_metrics,
    pos_weights,
    tune_thresholds,
)

TOOLS = Path(__file__).resolve().parents[1] / "tools"
BASE = ["--model", "resnet18", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--seed", "0",
        "--no-progress", "--img-size", "32"]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Mosaics of 2-3 of 4 scikit-image photos, labels = the photos present (tools/make_multilabel_photos.py)."""
    pytest.importorskip("skimage")
    return _tool("make_multilabel_photos").make(tmp_path_factory.mktemp("ml") / "data", 96, 32, 4, 32, seed=0)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    from PIL import Image
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    return tmp_path


def test_both_csv_layouts_read_to_the_same_label_sets(images):
    names = _write(images / "names.csv", "path,labels\na.jpg,dog car\nb.jpg,\nc.jpg,car\n")
    flags = _write(images / "flags.csv", "path,dog,car\na.jpg,1,1\nb.jpg,0,0\nc.jpg,0,1\n")
    a, b = list_samples(names, images, "train"), list_samples(flags, images, "train")
    assert a.classes == b.classes == ["car", "dog"] and a.multilabel and b.multilabel  # sorted by name
    assert [y for _, y in a.items] == [y for _, y in b.items] == [(0, 1), (), (0,)]
    ordered = list_samples(names, images, "train", classes_file=_write(images / "c.txt", "dog\ncar\n"))
    assert ordered.classes == ["dog", "car"] and [y for _, y in ordered.items] == [(0, 1), (), (1,)]


def test_bad_lists_are_one_line_errors_naming_file_and_line(images):
    classes = _write(images / "classes.txt", "car\ndog\n")
    cases = {
        "path,labels\na.jpg,dog\nb.jpg,cat\n": ("unknown.csv:3", "'cat' is not among"),
        "path,dog,car\na.jpg,1,2\n": ("unknown.csv:2", "'2' in a 0/1 class column"),
        "file,labels\na.jpg,dog\n": ("unknown.csv:1", "expected a header"),
        "path,labels\na.jpg,dog dog\n": ("unknown.csv:2", "repeated"),
    }
    for text, (where, what) in cases.items():
        with pytest.raises(DataError) as e:
            list_samples(_write(images / "unknown.csv", text), images, "train", classes_file=classes)
        assert where in str(e.value) and what in str(e.value) and "\n" not in str(e.value), str(e.value)
    single = _write(images / "single.csv", "path,labels\na.jpg,dog\nb.jpg,\n")
    with pytest.raises(DataError, match=r"single.csv:3: an empty label set"):
        list_samples(single, images, "train", task="single")
    ok = list_samples(_write(images / "one.csv", "path,labels\na.jpg,dog\nb.jpg,car\n"), images, "train",
                      task="single")
    assert not ok.multilabel and [y for _, y in ok.items] == [1, 0]


def test_ap_and_f1_equal_scikit_learn():
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(0)
    for _ in range(30):
        n, c = int(rng.integers(5, 80)), int(rng.integers(2, 9))
        y = (rng.random((n, c)) < 0.3).astype(np.float64)
        y[0] = 1  # every class has a positive (AP is undefined without one)
        s = np.round(rng.random((n, c)), int(rng.integers(1, 4)))  # ties, as real scores have
        ours = multilabel_metrics(s, y, [str(i) for i in range(c)])
        assert ours["mAP"] == pytest.approx(average_precision_score(y, s, average="macro"), abs=1e-6)
        assert ours["f1_micro"] == pytest.approx(f1_score(y, s >= 0.5, average="micro", zero_division=0), abs=1e-6)
        assert ours["f1_macro"] == pytest.approx(f1_score(y, s >= 0.5, average="macro", zero_division=0), abs=1e-6)
        tuned = tune_thresholds(s, y)
        assert f1_scores(s, y, tuned)[1] >= ours["f1_macro"] - 1e-12  # tuning never lowers F1 on its own split
    assert average_precision(np.array([0.3, 0.2]), np.array([False, False])) is None


def test_losses_by_hand():
    logits, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    p = torch.sigmoid(logits)[0].tolist()
    # ASL: positives log(p) (1-p)^gp, negatives log(1 - pm) pm^gn with pm = max(p - clip, 0)
    pm = max(float(p[1]) - 0.05, 0.0)
    expected = -(math.log(p[0]) * (1 - p[0]) ** 1 + math.log(1 - pm) * pm ** 4)
    assert float(asymmetric_loss(logits, y, gamma_neg=4, gamma_pos=1, clip=0.05)) == pytest.approx(expected, rel=1e-6)
    # BCE with pos_weight: negatives / positives per class
    w = pos_weights([(0,), (0, 1), (), (0,)], 2)
    assert w.tolist() == [pytest.approx(1 / 3), 3.0]
    loss, _ = MultilabelCriterion("bce", pos_weight=w)(logits, y)
    by_hand = -(float(w[0]) * math.log(p[0]) + math.log(1 - p[1])) / 2
    assert float(loss) == pytest.approx(by_hand, rel=1e-6)


def test_mixup_mixes_label_vectors_with_the_images_weights():
    from visionzoo.config import AugConfig
    from visionzoo.engine.mixing import BatchMix

    x = torch.rand(4, 3, 8, 8)
    target = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    mix = BatchMix(AugConfig(mixup=0.8, cutmix=0.0), 3)
    torch.manual_seed(3)
    mixed, soft = mix(x, target, 0)
    torch.manual_seed(3)
    same, onehot = mix(x, torch.tensor([0, 1, 2, 1]), 0)  # the same draws on class indices
    assert torch.equal(mixed, same)
    lam = float(onehot[0, 0])  # image 0 = lam x image 0 + (1 - lam) x image 3 (torchvision rolls the batch)
    assert torch.allclose(soft[0], lam * target[0] + (1 - lam) * target[3])


def test_asl_and_pos_weight_refused_on_single_label(tiny_imagefolder, tmp_path):
    args = ["train", "--data", str(tiny_imagefolder), "--epochs", "1", *BASE, "--output", str(tmp_path / "r")]
    assert main([*args, "--loss", "asl"]) == 2
    assert main([*args, "--pos-weight", "auto"]) == 2


def test_a_short_multilabel_run_end_to_end(photos, tmp_path, caplog):
    out = tmp_path / "run"
    args = ["train", "--data", str(photos), "--train-list", "train.csv", "--val-list", "val.csv", "--epochs", "6",
            "--lr", "0.05", *BASE, "--output", str(out)]
    with caplog.at_level("INFO", logger="visionzoo"):
        assert main(args) == 0
    assert "(4 classes, multi-label)" in caplog.text  # said in the run's first line
    records = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "epoch"]
    maps = [r["val_mAP"] for r in records]
    chance = np.mean([len(ls.split()) for ls in (photos / "val.csv").read_text().splitlines()[1:]
                      for ls in [ls.split(",")[1]]]) / 4
    assert max(maps) > chance + 0.1 and max(maps) > maps[0]  # it learns (random scores: mAP ~ chance)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_mAP"] == pytest.approx(max(maps)) and "best_top1" not in summary
    ev = json.loads((out / "eval.json").read_text())
    assert {"mAP", "f1_micro", "f1_macro", "per_class"} <= ev.keys() and len(ev["per_class"]) == 4
    assert "val_mAP" in (out / "summary.csv").read_text().splitlines()[0]
    best = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    assert best["task"] == "multilabel" and best["metrics"]["val_mAP"] == pytest.approx(max(maps))
    from visionzoo.inference.predict import predict

    val = sorted((photos / "images" / "val").glob("*.jpg"))[:4]
    answers = predict(out / "best.pth", val, topk=4, device="cpu")
    for a in answers:
        assert all(0 <= t["prob"] <= 1 for t in a["top"]) and "labels" in a
        assert [t["index"] for t in a["labels"]] == [t["index"] for t in a["top"] if t["prob"] >= 0.5]


def test_multilabel_resume_equals_the_unbroken_run_bitwise(photos, tmp_path, killed_then_resumed):
    args = ["train", "--data", str(photos), "--train-list", "train.csv", "--val-list", "val.csv", "--epochs", "2",
            "--mixup", "0.2", "--cutmix", "1.0", "--ema", "--deterministic", "--pos-weight", "auto", *BASE]
    assert main([*args, "--output", str(tmp_path / "unbroken")]) == 0
    killed_then_resumed([*args, "--output", str(tmp_path / "resumed")])
    a, b = (torch.load(tmp_path / k / "last.pth", map_location="cpu", weights_only=True)
            for k in ("unbroken", "resumed"))
    for part in ("model", "ema"):
        for key in a[part] if part == "model" else a[part]["state_dict"]:
            x = a[part][key] if part == "model" else a[part]["state_dict"][key]
            y = b[part][key] if part == "model" else b[part]["state_dict"][key]
            assert torch.equal(x, y), (part, key)
    assert a["metrics"]["val_mAP"] == b["metrics"]["val_mAP"]


def test_task_multilabel_on_class_folders_and_refusals(tiny_imagefolder, tmp_path):
    out = tmp_path / "folders"
    assert main(["train", "--data", str(tiny_imagefolder), "--epochs", "1", "--task", "multilabel", *BASE,
                 "--output", str(out)]) == 0
    assert "mAP" in json.loads((out / "eval.json").read_text())
    with pytest.raises(ConfigError):
        from visionzoo.config import TrainConfig
        from visionzoo.engine.multilabel import check_single_label
        cfg = TrainConfig()
        cfg.lt.loss = "asl"
        check_single_label(cfg)


def test_tuned_thresholds_are_stored_used_by_predict_and_checked(photos, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    assert main(["train", "--data", str(photos), "--train-list", "train.csv", "--val-list", "val.csv", "--epochs", "2",
                 *BASE, "--output", str(out)]) == 0
    ckpt = tmp_path / "model.pth"
    shutil.copy(out / "best.pth", ckpt)
    assert main(["eval", "--checkpoint", str(ckpt), "--tune-thresholds", "--json", str(tmp_path / "e.json"),
                 "--no-progress"]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    tuned = ev["tuned"]["thresholds"]
    assert len(tuned) == 4 and ev["tuned"]["f1_macro"] >= ev["f1_macro"] - 1e-12  # on the split it was tuned on
    assert "mAP" in capsys.readouterr().out
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored["thresholds"] == pytest.approx(tuned)
    before = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    assert torch.equal(stored["model"]["fc.weight"], before["model"]["fc.weight"])
    from visionzoo.inference.predict import predict

    img = sorted((photos / "images" / "val").glob("*.jpg"))[0]
    answer = predict(ckpt, [img], topk=4, device="cpu")[0]
    kept = [t["index"] for t in answer["top"] if t["prob"] >= tuned[t["index"]]]
    assert [t["index"] for t in answer["labels"]] == kept
    # the thresholds file eval wrote beside it, and one of another model
    text = Path(f"{ckpt}.thresholds.txt")
    assert len(text.read_text().splitlines()) == 4
    assert main(["predict", str(img), "--checkpoint", str(out / "best.pth"), "--thresholds", str(text)]) == 0
    other = tmp_path / "other.txt"
    other.write_text("cat\t0.5\ndog\t0.5\n")
    capsys.readouterr()
    assert main(["predict", str(img), "--checkpoint", str(out / "best.pth"), "--thresholds", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "other.txt:1" in err and "another model" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_torchrun_two_processes_give_the_one_process_map(photos, tmp_path):
    """The mAP a 2-process run records (every rank's scores gathered first) equals a 1-process evaluation of the
    same weights on the same split."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "visionzoo", "train", "--data", str(photos), "--train-list", "train.csv",
                           "--val-list", "val.csv", "--epochs", "1", *BASE, "--output", str(run)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((run / "eval.json").read_text())
    assert main(["eval", "--checkpoint", str(run / "last.pth"), "--json", str(tmp_path / "one.json"),
                 "--no-progress"]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["num_images"] == two["num_images"] == 32
    assert one["mAP"] == pytest.approx(two["mAP"], abs=1e-6)
    assert one["f1_micro"] == pytest.approx(two["f1_micro"], abs=1e-6)


def _hf_multilabel(photos: Path, out: Path) -> Path:
    """The photos' CSV lists as a save_to_disk DatasetDict with a Sequence(ClassLabel) column, classes in reverse
    name order (the run must take the ClassLabel's order)."""
    datasets = pytest.importorskip("datasets")
    names = sorted((photos / "classes.txt").read_text().split(), reverse=True)
    features = datasets.Features({"image": datasets.Image(),
                                  "tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    splits = {}
    for split, csv_name in (("train", "train.csv"), ("validation", "val.csv")):
        rows = [line.split(",") for line in (photos / csv_name).read_text().splitlines()[1:]]
        splits[split] = datasets.Dataset.from_dict(
            {"image": [str(photos / p) for p, _ in rows], "tags": [[names.index(n) for n in ls.split()]
                                                                    for _, ls in rows]}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return out


def test_a_hugging_face_label_list_column_is_multilabel_data(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    from visionzoo.data.hf import hf_samples

    data = _hf_multilabel(photos, tmp_path / "hf")
    csv = list_samples(photos / "train.csv", photos, "train")
    hf = hf_samples(str(data), "train")
    assert hf.multilabel and hf.classes == sorted(csv.classes, reverse=True)
    by_name = [tuple(sorted(hf.classes.index(csv.classes[y]) for y in ys)) for _, ys in csv.items]
    assert [ys for _, ys in hf.items] == by_name  # the same label sets, in the ClassLabel's order
    remapped = hf_samples(str(data), "val", classes=csv.classes)
    assert [ys for _, ys in remapped.items] == [ys for _, ys in list_samples(photos / "val.csv", photos, "val").items]
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--epochs", "2", "--lr", "0.05", *BASE, "--output", str(out)]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert len(ev["per_class"]) == 4 and 0 < ev["mAP"] <= 1
    with pytest.raises(DataError, match=r"row \d+ \(column 'tags'\): \d labels where every image needs exactly one"):
        hf_samples(str(data), "train", task="single")


def test_a_multilabel_pack_read_at_random_and_streamed_keeps_the_label_sets(photos, tmp_path):
    from visionzoo.data.packed import packed_samples
    from visionzoo.data.streaming import ShardStream, pack_split_source, sample_label

    pack = tmp_path / "pack"
    lists = ["--list", f"train={photos / 'train.csv'}", "--list", f"val={photos / 'val.csv'}"]
    assert main(["pack", "--data", str(photos), *lists, "--output", str(pack), "--max-size", "32",
                 "--shard-images", "40", "--workers", "1", "--no-progress"]) == 0
    assert json.loads((pack / "pack.json").read_text())["multilabel"] is True
    csv = {Path(p).name: ys for p, ys in list_samples(photos / "val.csv", photos, "val").items}
    packed = packed_samples(pack, "val")
    assert packed.multilabel and {Path(p).name: ys for p, ys in packed.items} == csv
    # streamed: every sample's target is the multi-hot vector of its CSV label set
    stream = ShardStream(pack_split_source(str(pack), "val"), transform=None, train=False)
    stream.keys = True
    assert stream.multilabel
    got = {k.rsplit(":", 1)[1]: tuple(torch.nonzero(y).flatten().tolist()) for k, y in stream}
    assert sorted(got.values()) == sorted(csv.values()) and len(got) == len(csv)
    # a run streams the pack (random access for validation) and scores mAP
    out = tmp_path / "run"
    assert main(["train", "--train-urls", f"{pack}/train-{{000000..000002}}.tar", "--data", str(pack),
                 "--epochs", "1", *BASE, "--output", str(out)]) == 0
    assert len(json.loads((out / "eval.json").read_text())["per_class"]) == 4
    assert sample_label({"cls": b"3"}, "x") == 3 and sample_label({"cls": b"2, 0"}, "x") == (0, 2)
    assert sample_label({"labels.json": b"[]"}, "x") == ()
    with pytest.raises(DataError, match="not a JSON list"):
        sample_label({"labels.json": b'{"a": 1}'}, "x")
