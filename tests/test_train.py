"""End-to-end training behaviour: learning, exact resume, atomic checkpoints, torchrun, bad images."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from visionzoo.cli import main
from visionzoo.config import TrainConfig, apply_overrides
from visionzoo.core.errors import ModelFileError
from visionzoo.core.files import atomic_save
from visionzoo.engine import trainer as trainer_mod
from visionzoo.engine.trainer import train
from visionzoo.models import Checkpoint, model_from_checkpoint


def load_checkpoint(path: Path) -> dict:
    """The checkpoint as the dict it was saved as."""
    return Checkpoint.load(path).to_dict()


def read_metrics(run: Path, kind: str = "epoch") -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def small_cfg(data_root: Path, out: Path, **over) -> TrainConfig:
    base = {
        "model": {"model": "resnet18"},
        "data": {"data": str(data_root), "img_size": 16, "workers": 0},
        "epochs": 3, "batch_size": 16, "iters": 3, "seed": 3, "deterministic": True,
        "device": "cpu", "output": str(out), "progress": False, "log_interval": 2,
    }
    cfg = apply_overrides(TrainConfig(), base, "test")
    return apply_overrides(cfg, over, "test")


def test_cli_train_learns_and_eval_agrees(digits_data, tmp_path):
    """The issue's acceptance command: resnet18, real small images, 32 px, 5 epochs."""
    out = tmp_path / "run"
    rc = main(["train", "--model", "resnet18", "--data", str(digits_data), "--img-size", "32",
               "--epochs", "5", "--output", str(out), "--no-progress"])
    assert rc == 0
    epochs = read_metrics(out)
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5]
    assert epochs[-1]["val_top1"] > 60.0  # chance is 10%
    assert epochs[-1]["val_num_images"] == 355
    assert all(r["images_per_sec"] > 0 for r in epochs)
    assert (out / "config.yaml").exists() and (out / "last.pth").exists() and (out / "best.pth").exists()

    report = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out / "best.pth"), "--data", str(digits_data),
                 "--json", str(report), "--no-progress"]) == 0
    result = json.loads(report.read_text())
    assert {"top1", "top5", "loss", "num_images", "per_class"} <= set(result)
    assert result["num_images"] == 355
    assert result["top1"] == pytest.approx(max(r["val_top1"] for r in epochs), abs=1e-6)
    assert sum(c["total"] for c in result["per_class"]) == 355


def test_resume_matches_unbroken_run_bitwise(digits_data, tmp_path, monkeypatch):
    full = train(small_cfg(digits_data, tmp_path / "full"))
    assert full["epochs_run"] == 3

    # crash right after epoch 2's checkpoint is written
    real_epoch = trainer_mod.RunLog.epoch

    def crash_after_two(self, record, *args):
        real_epoch(self, record, *args)
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.RunLog, "epoch", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(digits_data, tmp_path / "broken"))
    monkeypatch.setattr(trainer_mod.RunLog, "epoch", real_epoch)
    assert load_checkpoint(tmp_path / "broken" / "last.pth")["epoch"] == 2

    # resume with another worker count: augmentation is seeded per sample, so it must not matter
    resumed = train(small_cfg(digits_data, tmp_path / "broken", resume="auto", data={"workers": 2}))
    assert resumed["epochs_run"] == 1

    a = load_checkpoint(tmp_path / "full" / "last.pth")
    b = load_checkpoint(tmp_path / "broken" / "last.pth")
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 9
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    ra, rb = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "broken")
    assert ra[-1]["val_top1"] == rb[-1]["val_top1"] and ra[-1]["train_loss"] == rb[-1]["train_loss"]


def test_atomic_save_survives_exception(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_save({"model": {"w": torch.ones(3)}, "epoch": 1}, path)

    def failing_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(ModelFileError, match="previous last.pth is intact"):  # one line for the CLI
        atomic_save({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # temp file cleaned up


def test_killed_writer_never_replaces_good_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    atomic_save({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from visionzoo.core.files import atomic_save
        real = torch.save
        def dying_save(obj, f, *a, **k):
            f.write(b"half a checkpoint" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # the writer dies mid-write
        torch.save = dying_save
        atomic_save({{"model": {{"w": torch.zeros(3)}}, "epoch": 2}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(3))


def test_checkpoint_with_wrapper_prefixes_loads(digits_data, tmp_path):
    out = tmp_path / "run"
    train(small_cfg(digits_data, out, epochs=1))
    ckpt = load_checkpoint(out / "last.pth")
    ckpt["model"] = {f"module._orig_mod.{k}": v for k, v in ckpt["model"].items()}
    atomic_save(ckpt, tmp_path / "wrapped.pth")
    model, _ = model_from_checkpoint(tmp_path / "wrapped.pth")
    ref, _ = model_from_checkpoint(out / "last.pth")
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_target_top1_and_eval_schedule(digits_data, tmp_path):
    cfg = small_cfg(digits_data, tmp_path / "sched", epochs=4, eval_every=2, eval_start=1, deterministic=False)
    train(cfg)
    rows = read_metrics(tmp_path / "sched")
    assert ["val_top1" in r for r in rows] == [True, False, True, True]  # 1, 3 and the last epoch

    summary = train(small_cfg(digits_data, tmp_path / "target", epochs=4, target_top1=0.0))
    assert summary["epochs_run"] == 1 and summary["target_reached"]


def test_dummy_data_bf16_channels_last(tmp_path):
    out = tmp_path / "dummy"
    rc = main(["train", "--dummy", "--model", "resnet18", "--img-size", "32", "--batch-size", "8",
               "--epochs", "1", "--iters", "3", "--dummy-classes", "5", "--dummy-val-size", "8",
               "--amp", "bf16", "--channels-last", "--device", "cpu", "--output", str(out), "--no-progress"])
    assert rc == 0
    (row,) = read_metrics(out)
    assert row["steps"] == 3 and row["val_num_images"] == 8


def test_step_defaults_per_device(monkeypatch, tmp_path):
    from visionzoo.core.precision import resolve_channels_last, resolve_precision
    from visionzoo.engine.resume import resumed_step_settings

    def step_defaults(precision, channels_last, device):
        return resolve_precision(precision, device), resolve_channels_last(channels_last, device)

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert step_defaults("auto", None, cpu) == ("fp32", False)  # CPU runs stay fp32/NCHW unless asked
    assert step_defaults("bf16", True, cpu) == ("bf16", True)  # explicit choices are kept
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))  # Ampere
    assert step_defaults("auto", None, cuda) == ("bf16", True)
    assert step_defaults("none", False, cuda) == ("fp32", False)  # --amp none --no-channels-last
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 0))  # V100: bf16 only emulated
    assert step_defaults("auto", None, cuda) == ("fp16", True)  # pre-Ampere GPUs: fp16 with loss scaling
    # a resumed run left at auto keeps the precision and layout it began with; explicit flags still win
    began = Checkpoint(model={}, config={"amp": None, "model": {"channels_last": False}})  # an earlier version's
    assert resumed_step_settings(TrainConfig(), began) == ("fp32", False)
    asked = apply_overrides(TrainConfig(), {"amp": "bf16", "model": {"channels_last": True}}, "test")
    assert resumed_step_settings(asked, began) == ("bf16", True)
    assert resumed_step_settings(TrainConfig(), None) == ("auto", None)
    # the run records what it resolved to, not "auto"
    out = tmp_path / "run"
    assert main(["train", "--dummy", "--model", "resnet18", "--img-size", "16", "--batch-size", "4", "--epochs", "1",
                 "--iters", "1", "--dummy-classes", "3", "--eval-every", "0", "--workers", "0", "--device", "cpu",
                 "--output", str(out), "--no-progress"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["precision"] == "fp32" and saved["model"]["channels_last"] is False


def test_fused_sgd_matches_the_reference_update():
    from visionzoo.config import OptimConfig
    from visionzoo.engine.optim import build_optimizer

    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))
    plain_model = copy.deepcopy(fused_model)
    start = copy.deepcopy(fused_model)
    cfg = OptimConfig(momentum=0.9, nesterov=True, weight_decay=1e-3)
    fused = build_optimizer(fused_model, cfg, 0.1, torch.device("cpu"))
    assert fused.defaults["fused"] is True
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3,
                            foreach=False)
    for step in range(4):
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(step))
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(fused_model[0].weight, start[0].weight)  # the updates were not no-ops


def _corrupt_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    victim = sorted((dst / "train" / "3").iterdir())[0]
    bad = victim.with_name("broken.jpg")
    img = Image.open(victim).convert("RGB").resize((64, 64))
    img.save(bad, quality=90)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # truncated mid-scan
    return bad


def test_corrupt_image_named_or_skipped(digits_data, tmp_path, capsys):
    data = tmp_path / "data"
    bad = _corrupt_copy(digits_data, data)
    args = ["train", "--data", str(data), "--model", "resnet18", "--img-size", "16", "--epochs", "1",
            "--batch-size", "256", "--workers", "0", "--device", "cpu", "--no-progress", "--eval-every", "0"]
    rc = main(args + ["--output", str(tmp_path / "fail")])
    assert rc == 1  # a failure (the data), not a usage error
    assert str(bad) in capsys.readouterr().err

    rc = main(args + ["--output", str(tmp_path / "skip"), "--skip-bad-images"])
    assert rc == 0
    (row,) = read_metrics(tmp_path / "skip")
    assert row["skipped_images"] == 1
    assert row["skipped_files"] == [str(bad)]
    log = (tmp_path / "skip" / "train.log").read_text()
    assert "skipped 1 unreadable image\n" in log and f"skipped unreadable image {bad} " in log


def test_wrong_model_name_lists_close_matches(capsys, tmp_path):
    rc = main(["train", "--model", "resnet5", "--dummy", "--output", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet5'" in err and "resnet50" in err


@pytest.mark.slow
def test_torchrun_two_processes_count_every_val_image_once(digits_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "visionzoo", "train", "--data", str(digits_data), "--model", "resnet18", "--img-size", "16",
           "--epochs", "2", "--iters", "4", "--batch-size", "32", "--workers", "1", "--device", "cpu",
           "--output", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    # 355 is odd: a padded sampler would count 356
    assert all(r["val_num_images"] == 355 for r in rows)
    ckpt = load_checkpoint(out / "last.pth")
    assert len(ckpt["rng"]) == 2 and not any(k.startswith("module.") for k in ckpt["model"])
    result = json.loads((out / "eval.json").read_text())
    assert sum(c["total"] for c in result["per_class"]) == 355
    # the logged evaluation describes the saved weights (BatchNorm statistics synced from rank 0)
    fresh = tmp_path / "fresh.json"
    assert main(["eval", "--checkpoint", str(out / "last.pth"), "--json", str(fresh), "--no-progress"]) == 0
    again = json.loads(fresh.read_text())
    assert again["num_images"] == 355 and again["top1"] == pytest.approx(rows[-1]["val_top1"])
    assert again["loss"] == pytest.approx(rows[-1]["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_compile_trains_and_saves_plain_keys(tmp_path):
    """torch.compile (inductor on CPU): the run completes and the checkpoint has no _orig_mod. prefix."""
    out = tmp_path / "compiled"
    rc = main(["train", "--dummy", "--model", "resnet18", "--img-size", "16", "--batch-size", "8", "--epochs", "1",
               "--iters", "2", "--dummy-classes", "5", "--dummy-val-size", "8", "--compile", "--device", "cpu",
               "--workers", "0", "--output", str(out), "--no-progress"])
    assert rc == 0
    ckpt = load_checkpoint(out / "last.pth")
    assert "conv1.weight" in ckpt["model"] and not any("_orig_mod" in k for k in ckpt["model"])
    assert ckpt["config"]["model"]["compile"] is True


@pytest.mark.slow
def test_torchrun_skip_bad_images_keeps_ranks_in_step(tmp_path):
    """6 of 8 training images are garbage: some local batches would be all-bad. Ranks must not hang."""
    data = tmp_path / "bad"
    for split in ("train", "val"):
        for cls, colour in (("a", (250, 20, 20)), ("b", (20, 20, 250))):
            (data / split / cls).mkdir(parents=True)
            for i in range(4 if split == "train" else 2):
                Image.new("RGB", (20, 20), colour).save(data / split / cls / f"{i}.png")
    bad = [data / "train" / "a" / f"{i}.png" for i in range(4)] + [data / "train" / "b" / f"{i}.png" for i in (0, 1)]
    for p in bad:
        p.write_bytes(b"not an image at all")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "visionzoo", "train", "--data", str(data), "--model", "resnet18", "--img-size", "16",
           "--epochs", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--skip-bad-images",
           "--output", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out)
    assert [r["skipped_images"] for r in rows] == [6, 6]  # every bad sample, counted over both ranks
    assert all(r["steps"] == 2 and r["val_num_images"] == 4 for r in rows)


def test_output_reuse_and_head_larger_than_data(digits_data, tmp_path, capsys):
    out = tmp_path / "wide"
    summary = train(small_cfg(digits_data, out, epochs=1, model={"num_classes": 12}))
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["num_classes"] == 12 and summary["epochs_run"] == 1
    result = json.loads((out / "eval.json").read_text())
    assert [c["class"] for c in result["per_class"]][-3:] == ["9", "10", "11"]
    # the same folder again without --resume would mix two runs' logs: refused
    rc = main(["train", "--data", str(digits_data), "--output", str(out), "--epochs", "1", "--device", "cpu"])
    assert rc == 2 and "--resume auto" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--log-interval", "0"), ("--step-size", "0"), ("--iters", "0"),
                                         ("--hflip", "1.5"), ("--scale", "0.9,0.1")])
def test_out_of_range_values_are_refused(flag, value, tmp_path, capsys):
    rc = main(["train", "--dummy", flag, value, "--output", str(tmp_path / "x")])
    assert rc == 2 and "out of range" in capsys.readouterr().err
