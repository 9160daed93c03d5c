"""Issue 24 (hardening round 3), the training path: small data sets, offline --pretrained, Ctrl-C, failed setups,
skipped images named, the library's own log lines, plurals, resumed summaries, the run's ETA, divergence's exit
status, tracking that never stalls training, and library errors naming config keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from visionzoo.cli import main

COLOURS = ((220, 40, 40), (40, 60, 220), (40, 200, 60))


def write_folder(root: Path, train_per_class: int, val_per_class: int = 2, classes: int = 2, size: int = 20) -> Path:
    """root/{train,val}/c<i>/*.png: flat colour squares with a little per-image shade, one colour per class."""
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                colour = tuple(max(0, v - 3 * (i % 10)) for v in COLOURS[c])
                Image.new("RGB", (size, size), colour).save(folder / f"{i:03d}.png")
    return root


def epoch_rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "epoch"]


@pytest.fixture(scope="module")
def r18_weights(tmp_path_factory) -> Path:
    """A resnet18 state dict (random weights, no network): what --init-from takes for a linear probe."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    return path


BASE = ["--img-size", "32", "--workers", "0", "--device", "cpu", "--no-progress"]


# ------------------------------------------------------------------------------------------------
# 1. small data: the batch adapts so an epoch has steps, said in the first line, recorded in config.yaml


def test_linear_probe_on_sixty_images_adapts_the_batch(tmp_path, r18_weights):
    import yaml

    data = write_folder(tmp_path / "data", 30)
    out = tmp_path / "probe"
    rc = main(["train", "--recipe", "finetune", "--mode", "linear_probe", "--data", str(data), "--model", "resnet18",
               "--init-from", str(r18_weights), "--epochs", "1", *BASE, "--output", str(out)])
    assert rc == 0
    log = (out / "train.log").read_text()
    first = next(line for line in log.splitlines() if " INFO model resnet18 " in line)  # the run's header line
    assert "global batch 8 (was 64: 60 training images)" in first, first
    (row,) = epoch_rows(out)
    assert row["steps"] == 7
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["batch_size"] < 64 and 60 // saved["batch_size"] == row["steps"]
    # the lr follows the batch that ran (linear rule: lr_base 1e-3 per 256)
    assert saved["optim"]["lr"] is None and f"lr {1e-3 * saved['batch_size'] / 256:.4g}" in first


def test_small_batch_resumes_to_the_same_batch(tmp_path):
    data = write_folder(tmp_path / "data", 20)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--model", "resnet18", "--batch-size", "64", *BASE, "--output", str(out)]
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "2", "--resume", "auto"]) == 0
    rows = epoch_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["steps"] == rows[1]["steps"] > 1


def one_line(capsys, allowed: tuple[str, ...] = ()) -> str:
    """The one line of stderr (lines starting with an allowed prefix aside, e.g. torch.hub's "Downloading:")."""
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if line.strip() and not line.startswith(allowed)]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# ------------------------------------------------------------------------------------------------
# 2. --pretrained without a network: one line naming the model and --weights FILE


def test_pretrained_torchvision_model_offline_is_one_line(tmp_path, monkeypatch, capsys):
    import urllib.error

    import torch.hub

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached weights
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    data = write_folder(tmp_path / "data", 4)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--model", "resnet18", "--pretrained", "--epochs", "1", *BASE,
               "--output", str(out)])
    err = one_line(capsys, allowed=("Downloading: ",))  # torch.hub's line before it tries
    assert rc == 1, err
    assert "resnet18" in err and "could not be downloaded" in err and "--weights FILE" in err
    assert "Network is unreachable" in err


# ------------------------------------------------------------------------------------------------
# 3. Ctrl-C: one line saying how to resume, exit status 130, last.pth kept


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, monkeypatch, capsys):
    from visionzoo.engine import trainer as trainer_mod

    real = trainer_mod.train_one_epoch
    calls = []

    def interrupted_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", interrupted_in_epoch_two)
    data = write_folder(tmp_path / "data", 8)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--model", "resnet18", "--batch-size", "8", "--epochs", "2", *BASE,
               "--output", str(out)])
    err = one_line(capsys)
    assert rc == 130, err
    command = f"visionzoo train --config {out / 'config.yaml'} --resume auto"
    assert "interrupted" in err and err.endswith(command), err
    assert (out / "last.pth").is_file() and len(epoch_rows(out)) == 1
    monkeypatch.setattr(trainer_mod, "train_one_epoch", real)
    assert main(command.split()[1:]) == 0  # the command it names resumes the run
    assert [r["epoch"] for r in epoch_rows(out)] == [1, 2]
