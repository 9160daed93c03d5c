"""--class-weights (issue 28, single-label imbalance): the weights against scikit-learn and by hand, the weighted
cross-entropy by hand for class indices and soft targets, the weights file's one-line errors, the refused
combinations, and a tiny run that logs its weights and resumes bitwise."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visionzoo.cli import main
from visionzoo.config import TrainConfig, apply_overrides
from visionzoo.config.schema import validate
from visionzoo.core.errors import ConfigError
from visionzoo.engine.objective import Criterion, build_class_weights, class_weights, read_class_weights

LABELS = [0] * 50 + [1] * 20 + [2] * 5 + [3] * 1


def test_balanced_weights_equal_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight

    expected = compute_class_weight("balanced", classes=np.arange(4), y=np.array(LABELS))
    got = class_weights(LABELS, 4, "balanced")
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), [76 / 200, 76 / 80, 76 / 20, 76 / 4], atol=1e-12)  # n / (C x count)
    assert float((got * torch.bincount(torch.tensor(LABELS))).sum()) == pytest.approx(len(LABELS))


def test_sqrt_weights_have_mean_one():
    got = class_weights(LABELS, 4, "sqrt")
    inv = 1 / np.sqrt([50, 20, 5, 1])
    np.testing.assert_allclose(got.numpy(), inv / inv.mean(), atol=1e-12)
    assert float(got.mean()) == pytest.approx(1.0, abs=1e-12)
    assert got[3] / got[0] == pytest.approx(np.sqrt(50))


def test_a_class_without_training_images_gets_weight_zero(caplog):
    """Class 2 of 4 has no image (a head wider than the data): weight 0, the others balanced among themselves, as
    scikit-learn balances the classes present."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = [0] * 6 + [1] * 3 + [3] * 1
    balanced = class_weights(labels, 4, "balanced")
    assert balanced[2] == 0
    present = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=np.array(labels))
    np.testing.assert_allclose(balanced[[0, 1, 3]].numpy(), present, atol=1e-6)
    sqrt = class_weights(labels, 4, "sqrt")
    assert sqrt[2] == 0 and float(sqrt[[0, 1, 3]].mean()) == pytest.approx(1.0)
    with caplog.at_level(logging.INFO, logger="visionzoo"):
        build_class_weights("balanced", labels, 4, ["cat", "dog", "eel", "fox"])
    line = caplog.records[-1].getMessage()
    assert line.startswith("class weights balanced: min 0.5556 (class cat), max 3.333 (class fox)")
    assert "weight 0 for 1 class without training images (eel)" in line


def _hand_ce(logits: torch.Tensor, soft: torch.Tensor, w: torch.Tensor, label_weight: torch.Tensor) -> torch.Tensor:
    """sum_i sum_c -w_c t_ic log p_ic / sum_i w(label_i), written out."""
    logp = logits.double().log_softmax(1)
    total = sum(-w[c].double() * soft[i, c].double() * logp[i, c] for i in range(len(logits))
                for c in range(logits.shape[1]))
    return total / label_weight.double().sum()


W = torch.tensor([0.5, 1.0, 4.0, 2.0])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_loss_for_class_indices_by_hand(smoothing):
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 2, 2, 3, 1, 0])
    loss, out = Criterion(label_smoothing=smoothing, class_weight=W)(logits, y)
    soft = F.one_hot(y, 4).double() * (1 - smoothing) + smoothing / 4
    torch.testing.assert_close(loss.double(), _hand_ce(logits, soft, W, W[y]), rtol=1e-6, atol=1e-6)
    assert out is logits
    if smoothing == 0:  # the weighted mean: sum_i w_yi * CE_i / sum_i w_yi
        ce = F.cross_entropy(logits, y, reduction="none")
        torch.testing.assert_close(loss, (W[y] * ce).sum() / W[y].sum())
    # all weights equal: plain cross-entropy, whatever their scale (only the ratios matter)
    torch.testing.assert_close(Criterion(label_smoothing=smoothing, class_weight=torch.full((4,), 3.0))(logits, y)[0],
                               F.cross_entropy(logits, y, label_smoothing=smoothing))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_loss_for_soft_targets_by_hand(smoothing):
    """Mixed targets: each image weighs lam * w_a + (1 - lam) * w_b (its label before smoothing); one-hot soft
    targets give exactly the class-index loss (torch's soft-target weighted CE divides by the batch size)."""
    torch.manual_seed(1)
    logits = torch.randn(5, 4)
    a, b, lam = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([3, 3, 0, 1, 2]), 0.7
    mixed = lam * F.one_hot(a, 4).float() + (1 - lam) * F.one_hot(b, 4).float()
    loss, _ = Criterion(label_smoothing=smoothing, class_weight=W)(logits, mixed)
    smoothed = mixed.double() * (1 - smoothing) + smoothing / 4
    torch.testing.assert_close(loss.double(), _hand_ce(logits, smoothed, W, lam * W[a] + (1 - lam) * W[b]),
                               rtol=1e-6, atol=1e-6)
    onehot, _ = Criterion(label_smoothing=smoothing, class_weight=W)(logits, F.one_hot(a, 4).float())
    torch.testing.assert_close(onehot, Criterion(label_smoothing=smoothing, class_weight=W)(logits, a)[0])
    if smoothing == 0:  # torch's own: the same sum over the batch size
        torch.testing.assert_close(loss * (lam * W[a] + (1 - lam) * W[b]).sum() / len(a),
                                   F.cross_entropy(logits, mixed, weight=W))


def test_weights_file_is_read_in_class_order(tmp_path):
    f = tmp_path / "w.txt"
    f.write_text("# one weight per class\n1.0\n\n  2.5  # dog\n0.25\n")
    torch.testing.assert_close(read_class_weights(f, 3), torch.tensor([1.0, 2.5, 0.25], dtype=torch.float64))


@pytest.mark.parametrize("text, expected", [
    ("1\nabc\n2\n", "w.txt:2: 'abc' is not a number"),
    ("1\n\n0\n2\n", "w.txt:3: class weight 0 must be a positive number"),
    ("1\n-2\n3\n", "w.txt:2: class weight -2 must be a positive number"),
    ("1\nnan\n3\n", "w.txt:2: class weight nan must be a positive number"),
    ("# c\n1\n2\n", "w.txt: 2 weights for 3 classes"),
    ("1\n2\n3\n# extra\n4\n", "w.txt:5: more weights than the 3 classes"),
])
def test_weights_file_errors_name_the_file_and_line(tmp_path, text, expected):
    f = tmp_path / "w.txt"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_class_weights(f, 3)
    message = str(e.value)
    assert expected in message and str(tmp_path) in message and "\n" not in message


def test_a_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_class_weights(tmp_path / "nope.txt", 3)


def _cfg(**lt) -> TrainConfig:
    return apply_overrides(TrainConfig(), {"data": {"dummy": True}, "lt": lt}, "test")


@pytest.mark.parametrize("loss, says", [("balanced_softmax", "both correct for the class sizes"),
                                        ("bce", "not loss='bce'"), ("asl", "not loss='asl'")])
def test_refused_combinations(loss, says):
    with pytest.raises(ConfigError, match=says):
        validate(_cfg(class_weights="balanced", loss=loss))
    validate(_cfg(class_weights="sqrt"))  # with plain cross-entropy: fine
    validate(_cfg(loss=loss))  # and the loss alone


def test_refused_on_the_command_line_in_one_line(tmp_path, capsys):
    rc = main(["train", "--dummy", "--class-weights", "balanced", "--loss", "balanced_softmax",
               "--output", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--class-weights balanced and --loss balanced_softmax" in err and "\n" not in err
    rc = main(["train", "--dummy", "--class-weights", "balance", "--output", str(tmp_path / "y")])  # a typo
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--class-weights balance: not balanced, sqrt or an existing file" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ------------------------------------------------------------------------------------------------
# end to end: an imbalanced list over the tiny ImageFolder (circle 12, square 6, triangle 2 training images)

@pytest.fixture(scope="module")
def imbalanced(tiny_imagefolder, tmp_path_factory) -> tuple[Path, Path]:
    lists = tmp_path_factory.mktemp("cw-lists")
    keep = {"circle": 12, "square": 6, "triangle": 2}
    train, val = [], []
    for label, name in enumerate(keep):
        files = sorted((tiny_imagefolder / "train" / name).iterdir())[:keep[name]]
        train += [f"train/{name}/{f.name} {label}" for f in files]
        val += [f"val/{name}/{f.name} {label}" for f in sorted((tiny_imagefolder / "val" / name).iterdir())]
    (lists / "train.txt").write_text("\n".join(train) + "\n")
    (lists / "val.txt").write_text("\n".join(val) + "\n")
    (lists / "classes.txt").write_text("\n".join(keep) + "\n")
    return tiny_imagefolder, lists


def _args(data: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    root, lists = data
    return ["train", "--model", "resnet10", "--data", str(root), "--train-list", str(lists / "train.txt"),
            "--val-list", str(lists / "val.txt"), "--img-size", "16", "--crop-pct", "1.0", "--batch-size", "8",
            "--epochs", "2", "--workers", "0", "--device", "cpu", "--seed", "0", "--no-progress", "--output",
            str(out), *extra]


def test_a_run_logs_its_weights_and_resumes_bitwise(imbalanced, tmp_path, killed_then_resumed):
    """balanced: n / (3 x count) = 20/36, 20/18, 20/6, said in the run's first lines; a resumed run (mixup: the
    soft-target path) recomputes them from the same labels and equals the unbroken run bitwise."""
    flags = ("--class-weights", "balanced", "--mixup", "0.4", "--deterministic")
    assert main(_args(imbalanced, tmp_path / "unbroken", *flags)) == 0
    killed_then_resumed(_args(imbalanced, tmp_path / "resumed", *flags))
    log = (tmp_path / "unbroken" / "train.log").read_text().splitlines()
    line = next(i for i, text in enumerate(log) if "class weights" in text)
    assert line < next(i for i, text in enumerate(log) if "epoch 1" in text)
    assert "class weights balanced: min 0.5556 (class circle), max 3.333 (class triangle), max/min 6" in log[line]
    assert sum("class weights balanced" in text for text in (tmp_path / "resumed" / "train.log").read_text()
               .splitlines()) == 2  # the resumed session says them again
    a, b = (torch.load(tmp_path / k / "last.pth", map_location="cpu", weights_only=True)
            for k in ("unbroken", "resumed"))
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    assert a["config"]["lt"]["class_weights"] == "balanced"
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    rows = [[json.loads(x) for x in (tmp_path / k / "metrics.jsonl").read_text().splitlines()]
            for k in ("unbroken", "resumed")]
    last = [[r for r in rs if r["type"] == "epoch"][-1] for rs in rows]
    assert last[0]["train_loss"] == last[1]["train_loss"]


def test_a_weights_file_of_the_wrong_length_stops_the_run_in_one_line(imbalanced, tmp_path, capsys):
    f = tmp_path / "w.txt"
    f.write_text("1\n2\n")
    assert main(_args(imbalanced, tmp_path / "run", "--class-weights", str(f), "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"{f}: 2 weights for 3 classes (one weight per class, in class order)")


def test_per_class_delta_says_which_classes_gained(tmp_path):
    """tools/per_class_delta.py on a plain eval report and a --longtail one (per_class[].top1 is the recall)."""
    import subprocess
    import sys

    plain = {"per_class": [{"class": "cat", "top1": 50.0}, {"class": "dog", "top1": 90.0}, {"class": "eel",
                                                                                             "top1": None}]}
    lt = {"per_class": [{"class": "cat", "train_images": 3, "group": "few", "top1": 75.0},
                        {"class": "dog", "train_images": 300, "group": "many", "top1": 85.0},
                        {"class": "eel", "train_images": 40, "group": "medium", "top1": None}]}
    (tmp_path / "a.json").write_text(json.dumps(plain))
    (tmp_path / "b.json").write_text(json.dumps(lt))
    tool = Path(__file__).parents[1] / "tools" / "per_class_delta.py"
    out = subprocess.run([sys.executable, str(tool), str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                          "--names", "CE,balanced"], capture_output=True, text=True, check=True).stdout
    assert "| cat | 50.0 | 75.0 | +25.0 |" in out and "| dog | 90.0 | 85.0 | -5.0 |" in out
    assert "| eel | - | - | - |" in out and "balanced vs CE: 1 class gained, 1 lost" in out
    out = subprocess.run([sys.executable, str(tool), str(tmp_path / "b.json"), str(tmp_path / "a.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "| cat | 3 | few | 75.0 | 50.0 | -25.0 |" in out
