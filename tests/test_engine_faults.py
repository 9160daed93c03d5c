"""Faults around the training engine (issue 30): a full disk while saving, a batch of 1 with BatchNorm,
weights that turned non-finite, a tracking server that is down or hangs."""

from __future__ import annotations

import errno

import pytest
import torch

from visionzoo.core.errors import ModelFileError
from visionzoo.core.files import atomic_save
from visionzoo.models import Checkpoint


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    OSError(errno.EROFS, "Read-only file system"),
    RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                 "data/0: file write failed"),
])
def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    path = tmp_path / "last.pth"
    Checkpoint(model={"w": torch.ones(3)}, epoch=1).save(path)

    def failing_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(ModelFileError) as info:
        Checkpoint(model={"w": torch.zeros(3)}, epoch=2).save(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "previous last.pth is intact" in message
    monkeypatch.undo()
    assert Checkpoint.load(path).epoch == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # the temp file removed


def test_other_runtime_errors_while_saving_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def failing_save(obj, f, *a, **k):
        raise RuntimeError("cannot pickle this")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="cannot pickle") as info:
        atomic_save({"w": torch.ones(1)}, tmp_path / "x.pth")
    assert not isinstance(info.value, ModelFileError)
    assert list(tmp_path.iterdir()) == []


def _tiny_train(data, out, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "resnet18", "--img-size", "16", "--epochs", "1",
            "--workers", "0", "--device", "cpu", "--no-progress", "--output", str(out), *extra]


def test_batch_of_one_with_batchnorm_is_one_line_naming_the_batch(tiny_imagefolder, tmp_path, capsys):
    from visionzoo.cli import main

    assert main(_tiny_train(tiny_imagefolder, tmp_path / "run", "--batch-size", "1", "--iters", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size 1" in err[0] and "BatchNorm" in err[0], err
    assert "Expected more than 1 value" not in err[0]
    assert not (tmp_path / "run" / "last.pth").exists()


def test_weights_that_turned_non_finite_are_not_saved(tiny_imagefolder, tmp_path, capsys):
    from visionzoo.cli import main

    # the training loss of the only step is read before its update: only the weights show the divergence
    out = tmp_path / "run"
    assert main(_tiny_train(tiny_imagefolder, out, "--batch-size", "8", "--iters", "1", "--lr", "1e300",
                            "--ema")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "NaN or infinite in epoch 1/1" in err[-1] and "--lr" in err[-1], err
    assert not (out / "last.pth").exists() and not (out / "best.pth").exists()
