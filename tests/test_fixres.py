"""FixRes: shifted-crop fine-tuning transform, what finetune-res trains and freezes, the stored test
size driving eval, and the test-resolution sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from visionzoo.cli import main
from visionzoo.data.crops import ShiftedCenterCrop
from visionzoo.data.transforms import train_transform
from visionzoo.models import Checkpoint, create_model, list_models
from visionzoo.models.registry import get_model_cfg


def load_checkpoint(path: Path) -> dict:
    """The checkpoint as the dict it was saved as."""
    return Checkpoint.load(path).to_dict()


def test_shifted_center_crop_moves_horizontally_within_the_image():
    img = torch.arange(40, dtype=torch.uint8).repeat(3, 20, 1)  # 3 x 20 x 40, each column holds its index
    starts = set()
    for seed in range(200):
        torch.manual_seed(seed)
        out = ShiftedCenterCrop(16)(img)
        assert out.shape == (3, 16, 16)
        assert torch.equal(out[0, :, 0], out[0, 0, 0].repeat(16))  # a column, so rows are the centred ones
        starts.add(int(out[0, 0, 0]))
    assert min(starts) == 0 and max(starts) == 24  # the whole margin on both sides (centre start 12)
    torch.manual_seed(0)
    tall = torch.arange(16, dtype=torch.uint8).repeat(3, 30, 1)  # no horizontal margin: a plain centre crop
    assert torch.equal(ShiftedCenterCrop(16)(tall), tall[:, 7:23, :])
    odd = torch.arange(41, dtype=torch.uint8).repeat(3, 16, 1)  # an odd margin (25) never crops past the edge
    starts = set()
    for seed in range(300):
        torch.manual_seed(seed)
        out = ShiftedCenterCrop(16)(odd)
        start = int(out[0, 0, 0])
        assert torch.equal(out, odd[:, :, start:start + 16])
        starts.add(start)
    assert (min(starts), max(starts)) == (0, 25)


def test_fixres_train_transform_is_the_test_framing():
    from PIL import Image

    tf = train_transform(32, hflip=0.0, crop="fixres", crop_pct=0.875, decode="pil")
    out = tf(Image.new("RGB", (80, 60)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    # resize to 32 / 0.875 = 36 on the short side first: the FixRes 256:224 ratio
    assert tf.transforms[0].size == [36]
    # the fused decoder frames the same window: a horizontal ramp keeps its centre column
    ramp = Image.fromarray(torch.arange(80, dtype=torch.uint8).repeat(60, 1)[:, :, None].repeat(1, 1, 3).numpy())
    fused = train_transform(32, hflip=0.0, crop="fixres", crop_pct=0.875)
    for seed in range(5):
        torch.manual_seed(seed)
        a = fused(ramp).float()
        torch.manual_seed(seed)
        b = tf(ramp).float()
        assert (a - b).abs().mean() < 1.0


@pytest.mark.parametrize("name", [n for n in list_models() if get_model_cfg(n).final_norm])
def test_final_norm_is_the_last_batchnorm_of_each_resnet(name):
    model = create_model(name, num_classes=3)
    # the residual branch's last BN (FixRes's layer4[2].bn3); shortcut BNs do not count
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and "downsample" not in n]
    assert bns[-1] == get_model_cfg(name).final_norm


def test_fixres_scope_runs_only_the_classifier_and_final_bn_in_training_mode():
    from visionzoo.engine.scope import apply_train_scope

    # SE-ResNeXt applies dropout on its root module (timm's drop_rate): the root must stay in eval mode
    model = create_model("se_resnext50_32x4d", num_classes=3)
    scope = apply_train_scope(model, "fixres")
    scope.set_mode(model)
    training = {name for name, m in model.named_modules() if m.training}
    assert training == {"last_linear", "layer4.2.bn3"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"last_linear.weight", "last_linear.bias"}
    # cRT: the model trains, only the backbone's norm layers keep their statistics
    model = create_model("resnet10", num_classes=3)
    scope = apply_train_scope(model, "classifier")
    scope.set_mode(model)
    bns = {name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert model.training and not {name for name, m in model.named_modules() if m.training} & bns


@pytest.fixture(scope="module")
def source(digits_data, tmp_path_factory):
    """A resnet10 trained briefly at 16 px on the digits."""
    out = tmp_path_factory.mktemp("fixres") / "s1"
    assert main(["train", "--model", "resnet10", "--data", str(digits_data), "--img-size", "16", "--epochs", "1",
                 "--iters", "6", "--batch-size", "32", "--lr", "0.1", "--workers", "0", "--device", "cpu",
                 "--output", str(out), "--no-progress"]) == 0
    return out


def finetune(ckpt: Path, out: Path, *flags: str) -> int:
    return main(["finetune-res", "--checkpoint", str(ckpt), "--test-size", "24", "--epochs", "1", "--iters", "3",
                 "--batch-size", "16", "--lr", "0.05", "--workers", "0", "--device", "cpu", "--output", str(out),
                 "--no-progress", *flags])


def test_finetune_res_trains_the_classifier_and_the_last_bn_statistics_only(source, tmp_path):
    out = tmp_path / "ft"
    assert finetune(source / "last.pth", out) == 0
    before, ckpt = load_checkpoint(source / "last.pth"), load_checkpoint(out / "last.pth")
    a, b = before["model"], ckpt["model"]
    stats = {f"layer4.0.bn2.{k}" for k in ("running_mean", "running_var", "num_batches_tracked")}
    for key in a:
        if key.startswith("fc.") or key in stats:
            assert not torch.equal(a[key], b[key]), f"{key} should have changed"
        else:
            assert torch.equal(a[key], b[key]), f"{key} changed"  # BN affine, other statistics: untouched
    assert ckpt["img_size"] == 24 and ckpt["crop_pct"] == before["crop_pct"]
    cfg = ckpt["config"]
    assert (cfg["model"]["train_scope"], cfg["data"]["train_crop"], cfg["recipe"]) == (
        "fixres", "fixres", "fixres_resnet50_finetune")
    assert cfg["model"]["model"] == "resnet10" and cfg["data"]["color_jitter"] == 0.05  # the model's, the recipe's
    # the source model's accuracy at the new size is measured before fine-tuning
    assert json.loads((out / "before_finetune.json").read_text())["img_size"] == 24


def test_finetune_res_without_a_final_norm_trains_the_classifier_only(digits_data, tmp_path):
    src = tmp_path / "s1"
    assert main(["train", "--model", "mobilenet_v2", "--data", str(digits_data), "--img-size", "16", "--epochs", "1",
                 "--iters", "2", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--output", str(src),
                 "--no-progress", "--eval-every", "0"]) == 0
    out = tmp_path / "ft"
    assert finetune(src / "last.pth", out, "--eval-every", "0") == 0
    a, b = load_checkpoint(src / "last.pth")["model"], load_checkpoint(out / "last.pth")["model"]
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed == {"classifier.1.weight", "classifier.1.bias"}


def test_stored_test_size_drives_eval_and_the_sweep(source, tmp_path):
    out = tmp_path / "ft"
    assert finetune(source / "last.pth", out) == 0
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    js = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(out / "last.pth"), "--json", str(js), "--no-progress"]) == 0
    r = json.loads(js.read_text())
    assert r["img_size"] == 24 and r["top1"] == pytest.approx(logged["val_top1"])  # eval at the fine-tune size
    sweep, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    assert main(["eval", "--checkpoint", str(source / "last.pth"), "--checkpoint", str(out / "last.pth"),
                 "--sizes", "24,16,32", "--json", str(sweep), "--plot", str(png), "--no-progress"]) == 0
    s = json.loads(sweep.read_text())
    assert s["sizes"] == [16, 24, 32]
    src_row, ft_row = s["models"]
    assert (src_row["stored_size"], ft_row["stored_size"], ft_row["fixres_finetuned"]) == (16, 24, True)
    assert ft_row["top1"][1] == pytest.approx(r["top1"])  # the sweep at 24 is eval at 24
    assert ft_row["best_size"] == s["sizes"][ft_row["top1"].index(max(ft_row["top1"]))]
    e16 = tmp_path / "e16.json"
    assert main(["eval", "--checkpoint", str(source / "last.pth"), "--json", str(e16), "--no-progress"]) == 0
    assert src_row["top1"][0] == pytest.approx(json.loads(e16.read_text())["top1"])
    assert png.stat().st_size > 10_000


def test_fixres_scope_and_sweep_refuse_bad_combinations(source, digits_data, tiny_imagefolder, tmp_path, capsys):
    # a fine-tuning scope with nothing to fine-tune
    assert main(["train", "--model", "resnet10", "--data", str(digits_data), "--train-scope", "fixres",
                 "--output", str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main(["finetune-res", "--checkpoint", str(source / "last.pth"), "--output", str(tmp_path / "y")]) == 2
    assert "--test-size" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(source / "last.pth"), "--sizes", "16", "--img-size", "16"]) == 2
    assert "--sizes" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(source / "last.pth"), "--checkpoint", str(source / "last.pth")]) == 2
    assert "only with --sizes" in capsys.readouterr().err
    # a file that is no checkpoint, and data whose classes are not the checkpoint's: one line each, no run
    # (failures of the files given, exit status 1, where the usage errors above give 2)
    bogus = tmp_path / "bogus.pth"
    bogus.write_text("not a checkpoint")
    assert finetune(bogus, tmp_path / "z") == 1
    assert "bogus.pth" in capsys.readouterr().err
    assert finetune(source / "last.pth", tmp_path / "w", "--data", str(tiny_imagefolder)) == 1
    assert "classes differ" in capsys.readouterr().err and not (tmp_path / "w").exists()


@pytest.mark.slow
def test_finetune_res_under_torchrun(source, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "ft2"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "visionzoo", "finetune-res", "--checkpoint", str(source / "last.pth"), "--test-size",
                           "24", "--epochs", "1", "--iters", "3", "--batch-size", "16", "--lr", "0.05", "--workers",
                           "0", "--device", "cpu", "--output", str(out), "--no-progress"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_checkpoint(source / "last.pth")["model"], load_checkpoint(out / "last.pth")
    assert b["img_size"] == 24
    changed = {k for k in a if not torch.equal(a[k], b["model"][k])}
    assert changed == {"fc.weight", "fc.bias", "layer4.0.bn2.running_mean", "layer4.0.bn2.running_var",
                       "layer4.0.bn2.num_batches_tracked"}
