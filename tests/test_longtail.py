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


# ---------------------------------------------------------------- training methods and OLTR

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

from visionzoo.data.samplers import ClassSampler  # noqa: E402
from visionzoo.models import Checkpoint, create_model  # noqa: E402
from visionzoo.models.oltr import DiscCentroidsLoss, ModulatedAttention  # noqa: E402


def load_checkpoint(path: Path) -> dict:
    """The checkpoint as the dict it was saved as."""
    return Checkpoint.load(path).to_dict()


@pytest.mark.parametrize("size", [32, 224, 448])
def test_modulated_attention_any_resolution(size):
    att = ModulatedAttention(64).eval()
    x = torch.randn(2, 64, size // 32, size // 32)  # the last stage's map at this input size
    torch.testing.assert_close(att(x), x)  # zero-initialised output conv: the identity at start
    nn_init = torch.nn.init
    nn_init.normal_(att.conv_mask.weight, std=0.1)
    y = att(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    s = att.spatial_attention(x)
    assert s.shape == (2, 1, size // 32, size // 32)
    # the per-position scale of the original 7x7 softmax (mean 1/49) at every map size
    torch.testing.assert_close(s.mean(dim=(2, 3)), torch.full((2, 1), 1 / 49), rtol=0.05, atol=0)
    if size == 224:  # exactly the original there: a softmax over the 7x7 positions
        torch.testing.assert_close(s.sum(dim=(2, 3)), torch.ones(2, 1))
    model = create_model("oltr_resnet10", num_classes=3).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 3)


def test_centroid_loss_gradients_follow_the_center_loss_rule():
    feat = torch.randn(5, 4, requires_grad=True)
    centroids = torch.randn(3, 4, requires_grad=True)
    target = torch.tensor([0, 0, 1, 1, 1])
    loss = DiscCentroidsLoss(repel_weight=0.0)(feat, target, centroids, weight=0.01)
    (3.0 * loss).backward()  # an outer factor (a GradScaler's scale) reaches both gradients
    diff = feat.detach() - centroids.detach()[target]
    assert loss.item() == pytest.approx(0.01 * diff.pow(2).sum().item() / 2 / 5, rel=1e-5)
    torch.testing.assert_close(feat.grad, 3.0 * 0.01 * diff / 5)  # features: weighted like any loss
    # centroids: not scaled by the 0.01 weight (the original's backward); averaged over 1 + class count
    expected = torch.stack([-diff[:2].sum(0) / 3, -diff[2:].sum(0) / 4, torch.zeros(4)]) / 5
    torch.testing.assert_close(centroids.grad, 3.0 * expected)


def test_stage2_starts_from_stage1_classifier_and_class_mean_centroids(tiny_imagefolder):
    from visionzoo.core.distributed import DistInfo
    from visionzoo.data.datasets import ImageDataset, image_folder
    from visionzoo.data.loader import DeviceNormalizer
    from visionzoo.data.transforms import eval_transform
    from visionzoo.engine.objective import init_centroids

    s1 = create_model("resnet10", num_classes=3)
    s2 = create_model("oltr_resnet10", num_classes=3)
    fresh = s2.load_stage1(s1.state_dict())
    assert torch.equal(s2.meta_classifier.fc_hallucinator.weight, s1.fc.weight)
    assert torch.equal(s2.layer4[0].conv2.weight, s1.layer4[0].conv2.weight)
    assert "centroids" in fresh and not any(k.startswith("layer") for k in fresh)
    samples = image_folder(tiny_imagefolder / "train")
    ds = ImageDataset(samples, eval_transform(32, 1.0, decode="fast"))  # as init_centroids reads them
    norm = DeviceNormalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    init_centroids(s2, ds, 32, 1.0, "bilinear", norm, 8, 0, DistInfo())
    s2.eval()
    with torch.no_grad():
        feats = s2.features(norm(torch.stack([ds[i][0] for i in range(len(ds))])))
    labels = torch.tensor(samples.targets())
    expected = torch.stack([feats[labels == c].mean(0) for c in range(3)])
    torch.testing.assert_close(s2.centroids.data, expected, rtol=1e-4, atol=1e-5)


def test_class_samplers_balance_and_shard():
    labels = [0] * 80 + [1] * 15 + [2] * 5
    counts = {}
    for mode in ("class_balanced", "sqrt", "class_aware"):
        s = ClassSampler(labels, mode, samples_per_class=4, seed=1)
        idx = [i for i, _ in s]
        assert len(idx) == 100 and idx == [i for i, _ in s]  # deterministic per epoch
        counts[mode] = np.bincount([labels[i] for i in idx], minlength=3)
        s.set_epoch(1)
        assert [i for i, _ in s] != idx
    assert max(counts["class_aware"]) - min(counts["class_aware"]) <= 4  # whole classes in turn, 4 at a time
    assert min(counts["class_balanced"]) > 15  # the 5-image class drawn about a third of the time
    assert counts["sqrt"][0] > counts["sqrt"][1] > counts["sqrt"][2]
    run = [labels[i] for i, _ in ClassSampler(labels, "class_aware", 4, seed=2)][:12]
    assert all(len(set(run[k:k + 4])) == 1 for k in (0, 4, 8))  # 4 images of one class per draw
    shards = [[i for i, _ in ClassSampler(labels, "class_balanced", seed=3, rank=r, world_size=2)] for r in (0, 1)]
    whole = [i for i, _ in ClassSampler(labels, "class_balanced", seed=3)]
    assert len(shards[0]) == len(shards[1]) == 50 and sorted(shards[0] + shards[1]) == sorted(whole)


@pytest.fixture(scope="module")
def lt_data(digits_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lt")
    make_lt(digits_data, out, alpha=6, open_classes=2, val_per_class=10, seed=0)
    return digits_data, out


def lt_train(lt_data, out: Path, *flags: str) -> int:
    root, lt = lt_data
    return main(["train", "--data", str(root), "--train-list", str(lt / "train.txt"), "--val-list",
                 str(lt / "val.txt"), "--img-size", "16", "--crop-pct", "1.0", "--batch-size", "32", "--workers", "0",
                 "--device", "cpu", "--output", str(out), "--no-progress", "--seed", "0", *flags])


@pytest.fixture(scope="module")
def stage1(lt_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1") / "run"
    assert lt_train(lt_data, out, "--recipe", "oltr_stage1", "--epochs", "3", "--lr", "0.1", "--sched", "constant") == 0
    return out


def test_stage1_writes_the_seed_checkpoint_names(stage1):
    for name in ("last.pth", "best.pth", "final_model_checkpoint.pth"):
        assert (stage1 / name).is_file()
    assert load_checkpoint(stage1 / "final_model_checkpoint.pth")["model_name"] == "resnet10"


def test_oltr_stage2_trains_from_stage1(stage1, lt_data, tmp_path):
    out = tmp_path / "s2"
    assert lt_train(lt_data, out, "--recipe", "oltr_stage2", "--init-from", str(stage1 / "final_model_checkpoint.pth"),
                    "--epochs", "2", "--lr", "0.01") == 0
    s1 = load_checkpoint(stage1 / "last.pth")["model"]
    ckpt = load_checkpoint(out / "final_model_checkpoint.pth")
    assert ckpt["model_name"] == "oltr_resnet10" and ckpt["config"]["lt"]["sampler"] == "class_aware"
    c = ckpt["model"]["centroids"]
    assert c.shape == (8, 512) and c.abs().sum() > 0  # initialised from class means, then learned
    assert not torch.equal(ckpt["model"]["layer1.0.conv1.weight"], s1["layer1.0.conv1.weight"])  # fine-tuned
    assert main(["eval", "--checkpoint", str(out / "last.pth"), "--longtail", "--no-progress", "--many", "60"]) == 0
    # OLTR's head is cosine-normalised: tau-norm refuses instead of rescaling the hallucinator
    assert main(["tau-norm", "--checkpoint", str(out / "last.pth"), "--output", str(tmp_path / "t.pth")]) == 2
    assert not (tmp_path / "t.pth").exists()


@pytest.mark.parametrize("flags", [("--loss", "balanced_softmax"), ("--sampler", "class_balanced"),
                                   ("--sampler", "sqrt")])
def test_rebalancing_methods_train_and_evaluate(lt_data, tmp_path, flags):
    out = tmp_path / "run"
    assert lt_train(lt_data, out, "--model", "resnet10", "--epochs", "1", *flags) == 0
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["config"]["lt"][flags[0].lstrip("-")] == flags[1]
    js = tmp_path / "lt.json"
    assert main(["eval", "--checkpoint", str(out / "last.pth"), "--longtail", "--logit-adjust", "1", "--many", "60",
                 "--json", str(js), "--no-progress"]) == 0
    assert json.loads(js.read_text())["logit_adjust"] == 1.0


def test_post_hoc_logit_adjustment_moves_predictions_to_rare_classes(stage1, tmp_path):
    runs = {}
    for tau in ("0", "2"):
        js = tmp_path / f"la{tau}.json"
        assert main(["eval", "--checkpoint", str(stage1 / "last.pth"), "--longtail", "--logit-adjust", tau,
                     "--many", "60", "--json", str(js), "--no-progress"]) == 0
        runs[tau] = json.loads(js.read_text())
    # subtracting 2 * log prior lifts the rarest classes' logits by up to 2 * log(65): they get predicted
    assert runs["2"]["few_shot"] > runs["0"]["few_shot"]


def test_crt_and_tau_norm(stage1, lt_data, tmp_path):
    crt = tmp_path / "crt"
    assert lt_train(lt_data, crt, "--model", "resnet10", "--init-from", str(stage1 / "last.pth"), "--train-scope",
                    "classifier", "--reset-classifier", "--sampler", "class_balanced", "--epochs", "1",
                    "--lr", "0.1") == 0
    before, after = load_checkpoint(stage1 / "last.pth")["model"], load_checkpoint(crt / "last.pth")["model"]
    for k, v in before.items():
        if k.startswith("fc."):
            assert not torch.equal(v, after[k])  # the classifier re-trained
        else:
            assert torch.equal(v, after[k]), k  # backbone weights and BN statistics untouched
    tau = tmp_path / "tau.pth"
    assert main(["tau-norm", "--checkpoint", str(stage1 / "last.pth"), "--tau", "1", "--output", str(tau)]) == 0
    w = load_checkpoint(tau)["model"]
    torch.testing.assert_close(w["fc.weight"].norm(dim=1), torch.ones(8))
    assert not w["fc.bias"].any()


@pytest.mark.slow
def test_oltr_stage2_under_torchrun_matches_one_process(stage1, lt_data, tmp_path):
    root, lt = lt_data
    args = ["train", "--data", str(root), "--train-list", str(lt / "train.txt"), "--val-list", str(lt / "val.txt"),
            "--img-size", "16", "--crop-pct", "1.0", "--batch-size", "32", "--workers", "0", "--device", "cpu",
            "--no-progress", "--seed", "0", "--recipe", "oltr_stage2", "--epochs", "2", "--lr", "0.01",
            "--init-from", str(stage1 / "final_model_checkpoint.pth")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--output", str(one)]) == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "visionzoo", *args, "--output", str(two)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
    e1, e2 = ([r for r in rs if r["type"] == "epoch"] for rs in rows)
    assert len(e1) == len(e2) == 2
    # the same global batches (the sampler shards one global order); only per-rank BatchNorm differs
    assert e2[0]["train_loss"] == pytest.approx(e1[0]["train_loss"], rel=0.15)
    assert abs(e2[-1]["val_top1"] - e1[-1]["val_top1"]) <= 15
    assert e2[-1]["val_num_images"] == e1[-1]["val_num_images"] == 80


@pytest.mark.slow
def test_longtail_evaluation_under_torchrun_matches_one_process(stage1, lt_data, tmp_path):
    """eval --longtail runs through the one evaluation path: sharded over ranks, every image counted once."""
    root, lt = lt_data
    args = ["eval", "--checkpoint", str(stage1 / "last.pth"), "--data", str(root), "--val-list", str(lt / "test.txt"),
            "--longtail", "--train-list", str(lt / "train.txt"), "--open-list", str(lt / "open.txt"), "--many", "60",
            "--no-progress", "--device", "cpu", "--workers", "0", "--batch-size", "16"]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main([*args, "--json", str(one)]) == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "visionzoo", *args, "--json", str(two)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("top-1") == 1  # rank 0 reports for both
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["num_images"] == b["num_images"] > 0 and a["open_images"] == b["open_images"] > 0
    for key in ("top1", "mean_class_accuracy", "many_shot", "medium_shot", "few_shot"):
        assert b[key] == pytest.approx(a[key]), key
    assert b["open_set"] == a["open_set"]
    assert [c["test_images"] for c in b["per_class"]] == [c["test_images"] for c in a["per_class"]]
