"""User errors end as one line naming the file or flag (exit 2 for usage, 1 for failures), and
checkpoints written by earlier versions still load."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from visionzoo.cli import main
from visionzoo.core.errors import (
    BadImageError,
    ConfigError,
    DataError,
    ModelFileError,
    VisionZooError,
)
from visionzoo.models import Checkpoint

TINY = ["--img-size", "16", "--batch-size", "16", "--iters", "2", "--workers", "0", "--device", "cpu",
        "--no-progress", "--seed", "1"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def run(digits_data, tmp_path_factory) -> Path:
    """A one-epoch resnet18 run on the digits (its last.pth is the checkpoint the tests start from)."""
    out = tmp_path_factory.mktemp("errors") / "run"
    assert main(["train", "--model", "resnet18", "--data", str(digits_data), "--epochs", "1", *TINY,
                 "--output", str(out)]) == 0
    return out


def test_the_four_kinds_share_one_base_and_say_their_exit_status():
    for kind, status in ((ConfigError, 2), (DataError, 1), (BadImageError, 1), (ModelFileError, 1)):
        assert issubclass(kind, VisionZooError) and kind.exit_code == status


def test_resume_from_a_file_that_is_not_a_checkpoint(digits_data, tmp_path, capsys):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("these are not weights")
    rc = main(["train", "--model", "resnet18", "--data", str(digits_data), "--epochs", "1", *TINY,
               "--output", str(tmp_path / "r"), "--resume", str(bogus)])
    assert rc == 1 and str(bogus) in one_line_error(capsys)
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_resume_from_weights_without_training_state(run, digits_data, tmp_path, capsys):
    bare = tmp_path / "bare.pth"
    Checkpoint.load(run / "last.pth").without_training_state().save(bare)
    rc = main(["train", "--model", "resnet18", "--data", str(digits_data), "--epochs", "2", *TINY,
               "--output", str(tmp_path / "r"), "--resume", str(bare)])
    err = one_line_error(capsys)
    assert rc == 1 and str(bare) in err and "--init-from" in err


def test_resume_from_another_models_checkpoint(run, digits_data, tmp_path, capsys):
    rc = main(["train", "--model", "resnet10", "--data", str(digits_data), "--epochs", "2", *TINY,
               "--output", str(tmp_path / "r"), "--resume", str(run / "last.pth")])
    err = one_line_error(capsys)
    assert rc == 1 and "--resume" in err and "does not fit" in err


def test_tau_norm_of_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "x.pth"
    torch.save({"weights": [1, 2, 3]}, bogus)  # a readable pickle, just not a checkpoint
    rc = main(["tau-norm", "--checkpoint", str(bogus), "--output", str(tmp_path / "t.pth")])
    assert rc == 1 and str(bogus) in one_line_error(capsys)
    missing = tmp_path / "missing.pth"
    assert main(["tau-norm", "--checkpoint", str(missing), "--output", str(tmp_path / "t.pth")]) == 1
    assert str(missing) in one_line_error(capsys)
    assert not (tmp_path / "t.pth").exists()


@pytest.mark.parametrize("command", [
    ["train", "--dummy", "--epochs", "1"],
    ["eval", "--checkpoint", "{ckpt}"],
    ["predict", "{img}", "--checkpoint", "{ckpt}"],
    ["bench", "--model", "resnet18", "--batch-sizes", "1", "--iters", "1"],
])
def test_device_cuda_without_a_gpu(command, run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (20, 20)).save(img)
    argv = [a.format(ckpt=run / "last.pth", img=img) for a in command]
    rc = main([*argv, "--device", "cuda", *(["--output", str(tmp_path / "o")] if argv[0] == "train" else [])])
    err = one_line_error(capsys)
    assert rc == 2 and "--device cuda" in err


def test_tensorboard_without_the_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it now fails
    out = tmp_path / "tb"
    rc = main(["train", "--dummy", "--epochs", "1", "--iters", "1", "--batch-size", "4", "--img-size", "16",
               "--workers", "0", "--device", "cpu", "--no-progress", "--tensorboard", "--output", str(out)])
    err = one_line_error(capsys)
    assert rc == 2 and "--tensorboard" in err and "pip install" in err
    assert not out.exists()  # nothing written before the refusal


def test_unknown_precision_word_is_a_usage_error(run, capsys):
    with pytest.raises(SystemExit) as info:  # argparse's own usage error, before any model is loaded
        main(["eval", "--checkpoint", str(run / "last.pth"), "--precision", "fp8"])
    assert info.value.code == 2 and "fp8" in capsys.readouterr().err


def test_precision_words_are_one_vocabulary(run, digits_data, tmp_path):
    """Training's old spelling (--amp none) and inference's (fp32) mean the same, in both commands."""
    out = tmp_path / "p"
    assert main(["train", "--model", "resnet18", "--data", str(digits_data), "--epochs", "1", *TINY,
                 "--amp", "none", "--output", str(out)]) == 0
    assert "precision: fp32" in (out / "config.yaml").read_text()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["eval", "--checkpoint", str(out / "last.pth"), "--amp", "none", "--json", str(a),
                 "--no-progress", "--device", "cpu"]) == 0
    assert main(["eval", "--checkpoint", str(out / "last.pth"), "--precision", "fp32", "--json", str(b),
                 "--no-progress", "--device", "cpu"]) == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["precision"] == rb["precision"] == "fp32" and ra["top1"] == rb["top1"]


# ------------------------------------------------------------------------------------------------
# checkpoints of earlier versions


def _as_written_by_0_1(ckpt: dict) -> dict:
    """The dict the trainer wrote before this version: `amp` (null for fp32) where `precision` is now,
    and a DDP-wrapped key layout as some runs saved."""
    old = dict(ckpt)
    old.pop("digest")  # checkpoints carry a content digest since the next version
    config = dict(old["config"])
    config["amp"] = None if config.pop("precision") == "fp32" else "bf16"
    old["config"] = config
    old["model"] = {f"module.{k}": v for k, v in old["model"].items()}
    return old


def test_a_checkpoint_of_an_earlier_version_evaluates_resumes_and_initialises(run, digits_data, tmp_path):
    saved = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    old = tmp_path / "old.pth"
    torch.save(_as_written_by_0_1(saved), old)

    ref, got = tmp_path / "ref.json", tmp_path / "got.json"
    assert main(["eval", "--checkpoint", str(run / "last.pth"), "--json", str(ref), "--no-progress"]) == 0
    assert main(["eval", "--checkpoint", str(old), "--json", str(got), "--no-progress"]) == 0
    assert json.loads(got.read_text())["top1"] == json.loads(ref.read_text())["top1"]

    # resumed: the saved `amp: null` is read as fp32, and the run goes on from epoch 1
    resumed = tmp_path / "resumed"
    assert main(["train", "--model", "resnet18", "--data", str(digits_data), "--epochs", "2", *TINY,
                 "--output", str(resumed), "--resume", str(old)]) == 0
    ckpt = Checkpoint.load(resumed / "last.pth")
    assert ckpt.epoch == 2 and ckpt.config["precision"] == "fp32"

    # as initial weights, and as a tau-norm source
    assert main(["train", "--model", "resnet18", "--data", str(digits_data), "--epochs", "1", *TINY,
                 "--output", str(tmp_path / "init"), "--init-from", str(old)]) == 0
    assert main(["tau-norm", "--checkpoint", str(old), "--output", str(tmp_path / "tau.pth")]) == 0


def test_a_checkpoint_without_preprocessing_keys_uses_the_models_defaults(run, tmp_path):
    saved = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    for key in ("img_size", "crop_pct", "interpolation", "visionzoo_version", "metrics", "digest"):
        saved.pop(key)
    old = tmp_path / "older.pth"
    torch.save(saved, old)
    ckpt = Checkpoint.load(old)
    assert ckpt.img_size is None and ckpt.extra == {}
    from visionzoo.inference.runtime import load_runner

    info = load_runner(old).info
    assert (info.img_size, info.crop_pct, info.interpolation) == (224, 0.875, "bilinear")  # resnet18's


def test_checkpoint_round_trip_keeps_key_order_and_unknown_keys(run, tmp_path):
    saved = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert list(saved)[:9] == ["model", "optimizer", "scheduler", "scaler", "epoch", "step", "best_top1", "rng",
                               "config"]
    from visionzoo.core.integrity import content_digest

    del saved["digest"]
    saved["from_the_future"] = {"x": 1}  # a later version's key, covered by its digest
    saved["digest"] = content_digest(saved)
    path = tmp_path / "future.pth"
    torch.save(saved, path)
    again = tmp_path / "again.pth"
    Checkpoint.load(path).save(again)
    back = torch.load(again, map_location="cpu", weights_only=True)
    assert list(back) == list(saved) and back["from_the_future"] == {"x": 1}


def test_outputs_into_a_missing_folder_name_the_path(run, tmp_path, capsys):
    target = tmp_path / "no" / "such" / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "last.pth"), "--json", str(target), "--no-progress"]) == 2
    assert str(target) in one_line_error(capsys)
    plot = tmp_path / "nowhere" / "sweep.png"
    assert main(["eval", "--checkpoint", str(run / "last.pth"), "--sizes", "16", "--plot", str(plot),
                 "--no-progress"]) == 2
    assert str(plot) in one_line_error(capsys)
    tau = tmp_path / "missing" / "t.pth"
    assert main(["tau-norm", "--checkpoint", str(run / "last.pth"), "--output", str(tau)]) == 2
    assert str(tau) in one_line_error(capsys)


@pytest.mark.parametrize("device", ["cuda:x", "tpu"])
def test_an_unknown_device_is_a_usage_error(device, tmp_path, capsys):
    assert main(["bench", "--model", "resnet18", "--batch-sizes", "1", "--iters", "1", "--device", device]) == 2
    assert f"--device {device!r}" in one_line_error(capsys)


def test_pretrained_oltr_is_a_usage_error(tmp_path, capsys):
    rc = main(["train", "--model", "oltr_resnet10", "--pretrained", "--dummy", "--output", str(tmp_path / "o")])
    assert rc == 2 and "--pretrained" in one_line_error(capsys)
