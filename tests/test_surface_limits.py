"""Issue 30, the command-line and inference surfaces: every size, batch, worker and seed flag goes through one
check, an absurd batch is refused before it allocates, unwritable outputs and bad weights are one line."""

from __future__ import annotations

import errno
import inspect
import logging
import os
import tempfile
from pathlib import Path

import pytest
import torch

from visionzoo.cli import build_parser, main
from visionzoo.config import limits
from visionzoo.core.errors import ConfigError, ModelFileError

MISSING = "no-such-model.pth"  # argparse refuses before the file is looked at


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture
def image(tiny_imagefolder) -> str:
    return str(next((tiny_imagefolder / "val" / "circle").glob("*.jpg")))


# 1. sizes: the same range check for every command's size flags

@pytest.mark.parametrize("argv, flag", [
    (["predict", "x.jpg", "--checkpoint", MISSING, "--img-size", "100000"], "--img-size"),
    (["predict", "x.jpg", "--checkpoint", MISSING, "--img-size", "-5"], "--img-size"),
    (["predict", "x.jpg", "--checkpoint", MISSING, "--img-size", "0"], "--img-size"),
    (["bench", "--checkpoint", MISSING, "--img-size", "100000"], "--img-size"),
    (["eval", "--checkpoint", MISSING, "--sizes", "64,100000"], "--sizes"),
])
def test_size_flags_refused_by_argparse(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    _one_line_error(capsys, flag, "out of range (1..4096 px)")


@pytest.mark.parametrize("argv, flag", [
    (["eval", "--checkpoint", MISSING, "--img-size", "100000"], "--img-size"),
    (["preprocess", "--output", "out", "--img-size", "100000"], "--img-size"),
    (["export", "--checkpoint", MISSING, "--format", "onnx", "--output", "x.onnx", "--img-size", "0"], "--img-size"),
    (["finetune-res", "--checkpoint", MISSING, "--test-size", "100000"], "--test-size"),
])
def test_config_size_flags_refused(argv, flag, capsys):
    assert main(argv) == 2
    _one_line_error(capsys, flag, "out of range")


def test_absurd_batch_memory_refused_up_front(tiny_ckpt, tiny_imagefolder, image, monkeypatch, capsys):
    # a machine with 64 KiB free: 2 images of 32 px with their activations (~200 KiB) must be refused, not run
    monkeypatch.setattr(limits, "available_memory", lambda: 64 * 2**10)
    argv = ["predict", image, image, "--checkpoint", str(tiny_ckpt), "--device", "cpu", "--img-size", "32"]
    assert main(argv) == 2
    _one_line_error(capsys, "--batch-size and --img-size", "GiB")
    assert main(["eval", "--checkpoint", str(tiny_ckpt), "--data", str(tiny_imagefolder), "--device", "cpu",
                 "--workers", "0", "--no-progress"]) == 2
    _one_line_error(capsys, "--batch-size and --img-size")
    assert main(["bench", "--model", "resnet18", "--num-classes", "3", "--img-size", "32", "--batch-sizes", "8",
                 "--device", "cpu", "--iters", "1", "--warmup", "0"]) == 2
    _one_line_error(capsys, "--batch-sizes and --img-size")


# 2. batch sizes

@pytest.mark.parametrize("argv", [
    ["predict", "x.jpg", "--checkpoint", MISSING, "--batch-size", "0"],
    ["predict", "x.jpg", "--checkpoint", MISSING, "--batch-size", "-3"],
    ["predict", "x.jpg", "--checkpoint", MISSING, "--batch-size", "-1"],
    ["eval", "--checkpoint", MISSING, "--batch-size", "0"],
    ["infer", "--model", MISSING, "--input", "i", "--output", "o", "--batch-size", "-1"],
    ["preprocess", "--output", "o", "--batch-size", "0"],
    ["export", "--checkpoint", MISSING, "--format", "onnx", "--output", "x.onnx", "--batch-size", "0"],
    ["quantize", "--checkpoint", MISSING, "--output", "x.pt2", "--batch-size", "-2"],
])
def test_batch_size_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    _one_line_error(capsys, "--batch-size", "out of range (>= 1)")


def test_library_predict_refuses_negative_batch(tiny_ckpt, image):
    import visionzoo

    with pytest.raises(ConfigError, match="batch_size"):  # it returned no predictions at all
        visionzoo.predict(str(tiny_ckpt), [image], device="cpu", batch_size=-1)


# 3. workers: capped at the CPUs, for every command, said in the log

@pytest.mark.parametrize("command", [["eval", "--checkpoint", MISSING], ["preprocess", "--output", "o"],
                                     ["tau-norm", "--checkpoint", MISSING, "--output", "o"]])
def test_workers_capped_at_cpus(command, caplog):
    from visionzoo.cli.options import cli_overrides

    args = build_parser([command[0]]).parse_args([*command, "--workers", "100000"])
    with caplog.at_level(logging.INFO, logger="visionzoo"):
        assert cli_overrides(args)["data.workers"] == limits.cpu_count()
    assert "--workers (data.workers) 100000 is more than" in caplog.text


def test_train_workers_capped(capsys):
    import yaml

    assert main(["train", "--workers", "100000", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["workers"] == limits.cpu_count()


# 4. seed

def test_seed_overflow_refused(capsys):
    assert main(["train", "--seed", str(2**70), "--print-config"]) == 2
    _one_line_error(capsys, "--seed", "out of range")


# 5. outputs that cannot be written

def _read_only(monkeypatch, folder: Path) -> None:
    """mkstemp in `folder` fails as on a read-only file system (a test run as root ignores chmod)."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir") or "") == folder:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_read_only_json_outputs(tiny_ckpt, tiny_imagefolder, image, tmp_path, monkeypatch, capsys):
    _read_only(monkeypatch, tmp_path)
    out = tmp_path / "p.json"
    assert main(["predict", image, "--checkpoint", str(tiny_ckpt), "--device", "cpu", "--json", str(out)]) == 2
    _one_line_error(capsys, "--json", str(out), "Read-only file system")
    assert main(["eval", "--checkpoint", str(tiny_ckpt), "--data", str(tiny_imagefolder), "--device", "cpu",
                 "--workers", "0", "--no-progress", "--json", str(out)]) == 2
    _one_line_error(capsys, "--json", str(out))


def test_rename_refused_is_one_error(tmp_path, monkeypatch):
    from visionzoo.core.files import write_json

    def replace(src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ConfigError, match="cannot write .*r.json"):
        write_json(tmp_path / "r.json", {})
    assert not list(tmp_path.iterdir())  # the temp file is gone


# 6. weights that would predict nan

def _weights(tmp_path: Path, name: str, change) -> str:
    from visionzoo.models import create_model

    sd = create_model("resnet18", num_classes=3).state_dict()
    change(sd)
    path = tmp_path / name
    torch.save(sd, path)
    return str(path)


@pytest.mark.parametrize("change, words", [
    (lambda sd: sd["conv1.weight"].view(-1)[0].fill_(float("nan")), ["conv1.weight", "NaN"]),
    (lambda sd: sd.__setitem__("fc.weight", sd["fc.weight"].long()), ["fc.weight", "torch.int64"]),
])
def test_bad_weights_refused(change, words, tmp_path, image, capsys):
    path = _weights(tmp_path, "w.pth", change)
    assert main(["predict", image, "--model", "resnet18", "--weights", path, "--device", "cpu"]) == 1
    _one_line_error(capsys, path, *words)


def test_safetensors_shape_error_names_key(tiny_ckpt, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from visionzoo.inference.runtime import load_runner

    good = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(tiny_ckpt), "--format", "safetensors", "--output", str(good)]) == 0
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(good))
    sd["fc.weight"] = torch.zeros(5, sd["fc.weight"].shape[1])
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad), metadata=meta)
    with pytest.raises(ModelFileError, match=r"fc\.weight has shape \(5, 512\), the model's \(3, 512\)"):
        load_runner(str(bad), "cpu")


# 7. follow-ups

def test_eval_export_quantize_take_val_split():
    for argv in (["eval", "--checkpoint", MISSING], ["quantize", "--checkpoint", MISSING, "--output", "x.pt2"],
                 ["export", "--checkpoint", MISSING, "--format", "onnx", "--output", "x.onnx"]):
        args = build_parser([argv[0]]).parse_args([*argv, "--val-split", "test"])
        assert args.cfg__val_split == "test"


def test_quantize_help_from_commands_list():
    from visionzoo.cli import quantize

    assert "help=" not in inspect.getsource(quantize.add_parser).split("description")[0]


@pytest.mark.parametrize("module, call", [
    ("visionzoo.fixres.sweep", lambda m, ckpt: m.evaluate_sizes([ckpt], [32], None, device="cpu")),
    ("visionzoo.longtail.evaluate", lambda m, ckpt: m.evaluate_longtail(ckpt, "train.txt", device="cpu")),
])
def test_resolve_data_gets_the_model_file(module, call, tiny_ckpt, monkeypatch):
    import importlib

    m = importlib.import_module(module)
    seen = []

    def resolve_data(info, data, source=None):
        seen.append(source)
        raise ConfigError("stop here")

    monkeypatch.setattr(m, "resolve_data", resolve_data)
    with pytest.raises(ConfigError, match="stop here"):
        call(m, str(tiny_ckpt))
    assert seen == [str(tiny_ckpt)]


def test_suffix_formats_derived_from_export_suffixes():
    from visionzoo.inference.defaults import EXPORT_SUFFIXES
    from visionzoo.inference.runtime import SUFFIX_FORMATS

    for fmt, suffix in EXPORT_SUFFIXES.items():
        if suffix:
            assert SUFFIX_FORMATS[suffix] == fmt


def test_library_seed_overflow_refused():
    from visionzoo.config import TrainConfig, validate

    with pytest.raises(ConfigError, match="seed"):
        validate(TrainConfig(seed=2**70))


def test_quantize_batch_memory_refused(tiny_ckpt, tiny_imagefolder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(limits, "available_memory", lambda: 64 * 2**10)
    assert main(["quantize", "--checkpoint", str(tiny_ckpt), "--output", str(tmp_path / "q.pt2"), "--data",
                 str(tiny_imagefolder), "--workers", "0", "--no-eval"]) == 2
    _one_line_error(capsys, "--batch-size and the model's input size")


def test_export_keeps_val_split(tiny_ckpt, tmp_path, monkeypatch):
    import visionzoo.inference.export as export

    seen = []

    def export_model(source, fmt, output, img_size, dynamic, opset, batch, data, *rest):
        seen.append(data)
        raise ConfigError("stop here")

    monkeypatch.setattr(export, "export_model", export_model)
    assert main(["export", "--checkpoint", str(tiny_ckpt), "--format", "onnx", "--output", str(tmp_path / "m.onnx"),
                 "--val-split", "train"]) == 2
    assert seen[0] is not None and seen[0].val_split == "train"


def test_infer_and_bench_data_batch_refused(tiny_ckpt, tiny_imagefolder, tmp_path, monkeypatch, capsys):
    prep = tmp_path / "prep"
    assert main(["preprocess", "--output", str(prep), "--checkpoint", str(tiny_ckpt), "--data", str(tiny_imagefolder),
                 "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(limits, "available_memory", lambda: 64 * 2**10)
    assert main(["infer", "--model", str(tiny_ckpt), "--input", str(prep), "--output", str(tmp_path / "dump"),
                 "--device", "cpu", "--no-progress"]) == 2
    _one_line_error(capsys, "--batch-size and the preprocessed size")
    assert not (tmp_path / "dump").exists()
    assert main(["bench-data", "--data", str(tiny_imagefolder), "--img-size", "32", "--workers", "0",
                 "--batches", "1", "--warmup", "0", "--no-progress"]) == 2
    _one_line_error(capsys, "--batch-size and --img-size")
