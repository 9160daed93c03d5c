"""Issue 26, progressive resizing: the size schedule's shape (ffcv's), `--eval-img-size auto` (FixRes' rule),
runs whose loader follows the schedule on folder and pack data, a resume at a size change that equals the
unbroken run bitwise, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visionzoo.cli import main
from visionzoo.config import TrainConfig, fixres_eval_size, parse_size_schedule, validate
from visionzoo.core.errors import ConfigError

BASE = ["--model", "resnet18", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--seed", "0",
        "--no-progress"]


def _ffcv_resolution(epoch: int, min_res: int, max_res: int, end_ramp: int, start_ramp: int) -> int:
    """ffcv-imagenet's train_imagenet.py get_resolution, as its README's runs use it (0-based epochs)."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


@pytest.mark.parametrize("epochs,start,end", [(88, 65, 76), (40, 30, 35), (16, 12, 14)])
def test_the_default_ramp_is_ffcvs(epochs, start, end):
    schedule = parse_size_schedule("160:192", epochs)
    assert [schedule.at(e) for e in range(epochs)] == [_ffcv_resolution(e, 160, 192, end, start)
                                                      for e in range(epochs)]
    assert schedule.final == 192


def test_placed_ramp_rounds_to_the_step_and_ends_at_the_final_size():
    schedule = parse_size_schedule("64:128", 10, start_epochs=2, end_epochs=2)
    sizes = [schedule.at(e) for e in range(10)]
    assert sizes[:2] == [64, 64] and sizes[-2:] == [128, 128]
    assert all(s % 32 == 0 for s in sizes) and sizes == sorted(sizes)
    assert schedule.describe(10) == "64 px (epochs 1-3), 96 px (epochs 4-7), 128 px (epochs 8-10)"
    # a patch-16 model's step
    sizes16 = [parse_size_schedule("64:128", 10, 2, 2, step=16).at(e) for e in range(10)]
    assert set(sizes16) - {64, 128} and all(s % 16 == 0 for s in sizes16)


def test_explicit_sizes_from_their_epochs():
    schedule = parse_size_schedule("64@1,96@4,128@8", 10)
    assert [schedule.at(e) for e in range(10)] == [64] * 3 + [96] * 4 + [128] * 3


@pytest.mark.parametrize("text,words", [
    ("96-128", "expected START:END"), ("64@2,96@4", "starts at epoch 1"), ("64@1,96@1", "must increase"),
    ("64@1,96@40", "after the run's last"), ("0:128", "out of range"), ("64@1,x@3", "is not SIZE@EPOCH"),
])
def test_bad_schedules_are_refused(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_size_schedule(text, 10)


def test_fixres_eval_size():
    assert [fixres_eval_size(s) for s in (128, 160, 192, 224)] == [144, 184, 224, 256]


def test_conflicting_and_orphan_settings_are_refused():
    cfg = TrainConfig()
    cfg.data.img_size, cfg.data.img_size_schedule = 128, "96:128"
    with pytest.raises(ConfigError, match="both set the training size"):
        validate(cfg)
    cfg = TrainConfig()
    cfg.data.size_end_epochs = 2
    with pytest.raises(ConfigError, match="size_end_epochs=2 needs img_size_schedule"):
        validate(cfg)
    cfg = TrainConfig(epochs=4)
    cfg.data.img_size_schedule, cfg.data.size_start_epochs, cfg.data.size_end_epochs = "64:128", 3, 3
    with pytest.raises(ConfigError, match="do not fit in 4 epochs"):
        validate(cfg)


def test_command_line_errors_name_the_flag(tiny_imagefolder, tmp_path, capsys):
    args = ["train", "--data", str(tiny_imagefolder), "--epochs", "2", *BASE, "--output", str(tmp_path / "r")]
    assert main([*args, "--img-size-schedule", "16-32"]) == 2
    assert "--img-size-schedule '16-32': expected START:END" in capsys.readouterr().err
    assert main([*args, "--eval-img-size", "big"]) == 2
    assert "--eval-img-size" in capsys.readouterr().err


def _records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "epoch"]


@pytest.fixture
def seen(monkeypatch) -> list[tuple[int, ...]]:
    """Every batch's (height, width), as the step and evaluation get it from the loader."""
    from visionzoo.data import loader as loader_mod

    sizes: list[tuple[int, ...]] = []
    normalise = loader_mod.DeviceNormalizer.__call__

    def spy(self, images):
        out = normalise(self, images)
        sizes.append(tuple(out.shape[-2:]))
        return out

    monkeypatch.setattr(loader_mod.DeviceNormalizer, "__call__", spy)
    return sizes


def test_the_loader_follows_the_schedule_and_eval_uses_the_auto_size(tiny_imagefolder, tmp_path, seen):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_imagefolder), "--epochs", "3", "--img-size-schedule", "16@1,24@2,32@3",
                 "--eval-img-size", "auto", *BASE, "--output", str(run)]) == 0
    assert [r["img_size"] for r in _records(run)] == [16, 24, 32]
    # training batches at each epoch's size, evaluation at 1.15 x 32 -> 40 px
    train_sizes = [s for s in seen if s != (40, 40)]
    assert train_sizes[0] == (16, 16) and (24, 24) in train_sizes and train_sizes[-1] == (32, 32)
    assert (40, 40) in seen
    ckpt = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    assert ckpt["img_size"] == 40
    assert "eval_img_size: 40" in (run / "config.yaml").read_text()
    log = (run / "train.log").read_text()
    assert "training crops 16 px (epoch 1), 24 px (epoch 2), 32 px (epoch 3)" in log
    assert "epoch 2: training crops 24 px (was 16" in log


@pytest.fixture(scope="module")
def pack(tiny_imagefolder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("progressive") / "pack"
    assert main(["pack", "--data", str(tiny_imagefolder), "--output", str(out), "--shard-images", "12",
                 "--no-progress"]) == 0
    return out


def test_a_pack_and_streamed_shards_resize_too(pack, tmp_path, seen):
    run = tmp_path / "pack"
    assert main(["train", "--data", str(pack), "--epochs", "2", "--img-size-schedule", "16@1,24@2", *BASE,
                 "--output", str(run)]) == 0
    assert [r["img_size"] for r in _records(run)] == [16, 24]
    assert {(16, 16), (24, 24)} <= set(seen)
    seen.clear()
    shards = "::".join(str(p) for p in sorted(pack.glob("train-*.tar")))
    run = tmp_path / "stream"
    assert main(["train", "--train-urls", shards, "--pack-info", str(pack / "pack.json"), "--val-urls",
                 "::".join(str(p) for p in sorted(pack.glob("val-*.tar"))), "--epochs", "2",
                 "--img-size-schedule", "16@1,24@2", *BASE, "--output", str(run)]) == 0
    assert [r["img_size"] for r in _records(run)] == [16, 24]
    assert {(16, 16), (24, 24)} <= set(seen)


@pytest.mark.slow
def test_under_torchrun(tiny_imagefolder, tmp_path):
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "visionzoo", "train", "--data", str(tiny_imagefolder), "--epochs", "2",
                           "--img-size-schedule", "16@1,32@2", *BASE, "--output", str(run)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["img_size"] for r in _records(run)] == [16, 32]


def _assert_equal(a, b, what: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _assert_equal(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{what}[{i}]")
    else:
        assert a == b, what


def test_a_resume_at_a_size_change_equals_the_unbroken_run_bitwise(tiny_imagefolder, tmp_path, killed_then_resumed):
    # resumed at epoch 2, whose size (24) is neither the first nor the final one
    args = ["train", "--data", str(tiny_imagefolder), "--epochs", "3", "--img-size-schedule", "16@1,24@2,32@3",
            "--mixup", "0.2", "--ema", "--deterministic", *BASE]
    assert main([*args, "--output", str(tmp_path / "unbroken")]) == 0
    killed_then_resumed([*args, "--output", str(tmp_path / "resumed")])
    a, b = (torch.load(tmp_path / k / "last.pth", map_location="cpu", weights_only=True)
            for k in ("unbroken", "resumed"))
    assert a["epoch"] == b["epoch"] == 3
    for part in ("model", "ema", "optimizer"):
        _assert_equal(a[part], b[part], part)
    assert [r["img_size"] for r in _records(tmp_path / "resumed")] == [16, 24, 32]
    assert [r["train_loss"] for r in _records(tmp_path / "resumed")] == [
        r["train_loss"] for r in _records(tmp_path / "unbroken")]


def test_scaled_batch_keeps_the_pixels_of_the_largest_size():
    from visionzoo.config.sizes import scaled_batch

    assert scaled_batch(64, 48, 64, 10_000) == 112  # 64 x (64/48)^2 = 113.8, down to a multiple of 8
    assert scaled_batch(64, 64, 64, 10_000) == 64
    assert scaled_batch(8, 16, 32, 10_000) == 32
    assert scaled_batch(8, 16, 32, 20) == 20  # at most one epoch's images (a step per epoch stays)
    assert scaled_batch(3, 16, 24, 100) == 6  # under 8: not rounded


def test_a_varying_step_count_keeps_the_lr_on_the_epochs():
    from visionzoo.config import SchedConfig
    from visionzoo.engine.optim import build_scheduler, lr_factor

    cfg = SchedConfig(sched="cosine", warmup_epochs=0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, cfg, 4, 2, epoch_steps=[2, 4])  # epoch 1 in 2 big steps, epoch 2 in 4
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # step 1 is half of epoch 1: nominal step 2 of 4; steps 2-5 are epoch 2's quarters: nominal 4, 5, 6, 7
    assert lrs == pytest.approx([lr_factor(n, cfg, 4, 2) for n in (0, 2, 4, 5, 6, 7)])


def test_batch_size_schedule_scales_the_batch_at_small_sizes_and_resumes_exactly(tiny_imagefolder, tmp_path,
                                                                                 killed_then_resumed):
    from visionzoo.data import loader as loader_mod

    batches: list[int] = []
    normalise = loader_mod.DeviceNormalizer.__call__

    def spy(self, images):
        out = normalise(self, images)
        batches.append(out.shape[0])
        return out

    args = ["train", "--data", str(tiny_imagefolder), "--epochs", "2", "--img-size-schedule", "16@1,32@2",
            "--batch-size-schedule", "auto", "--mixup", "0.2", "--deterministic", *BASE]
    run = tmp_path / "unbroken"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(loader_mod.DeviceNormalizer, "__call__", spy)
        assert main([*args, "--output", str(run)]) == 0
    records = _records(run)
    # 36 training images: epoch 1 at 16 px takes batches of 32 (8 x (32/16)^2), 1 step; epoch 2 at 32 px, 8: 4 steps
    assert [r["step"] for r in records] == [1, 5]
    assert 32 in batches
    assert "epoch 2: training crops 32 px, batch 8" in (run / "train.log").read_text()
    killed_then_resumed([*args, "--output", str(tmp_path / "resumed")])
    a, b = (torch.load(tmp_path / k / "last.pth", map_location="cpu", weights_only=True)
            for k in ("unbroken", "resumed"))
    for part in ("model", "optimizer", "scheduler"):
        _assert_equal(a[part], b[part], part)


def test_batch_size_schedule_needs_a_size_schedule(tiny_imagefolder, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_imagefolder), "--epochs", "1", "--batch-size-schedule", "auto", *BASE,
                 "--output", str(tmp_path / "r")]) == 2
    assert "--img-size-schedule" in capsys.readouterr().err
