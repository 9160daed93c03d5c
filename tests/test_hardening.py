"""Hardening (issue 13): no code from model files, no silent damage, one run per folder, bad values refused."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from visionzoo.cli import main
from visionzoo.core.errors import ModelFileError
from visionzoo.core.files import atomic_save
from visionzoo.inference.export import export_model
from visionzoo.inference.runtime import load_runner
from visionzoo.models import create_model


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def tiny_checkpoint(path: Path, name: str = "resnet18", classes: int = 3, img_size: int = 32) -> Path:
    model = create_model(name, num_classes=classes)
    atomic_save({"model": model.state_dict(), "model_name": name, "num_classes": classes,
                 "classes": [f"c{i}" for i in range(classes)], "img_size": img_size, "crop_pct": 0.875,
                 "interpolation": "bilinear"}, path)
    return path


# ------------------------------------------------------------------------------------------------
# 1. a tampered torch.export file must never run code


class _Payload:
    """Unpickling this creates the marker file: what an attacker's pickle would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pt2")
    out = d / "good.pt2"
    export_model(tiny_checkpoint(d / "r18.pth"), "export", out, dynamic_batch=True)
    return out


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of the archive; change(rel_name, data) returns new data (None drops it), and may add entries
    through the returned dict of extra entries."""
    extra: dict[str, bytes] = {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            rel = item.filename[len(root) + 1:]
            data = change(rel, zin.read(item.filename), extra)
            if data is not None:
                zout.writestr(item, data)
        for rel, data in extra.items():
            zout.writestr(f"{root}/{rel}", data)
    return dst


def _legacy_weights(marker):
    def change(rel, data, extra):
        if rel == "archive_format":
            extra["data/weights/model.pt"] = _pickle({"w": _Payload(marker)})
        return data
    return change


def _legacy_constants(marker):
    def change(rel, data, extra):
        if rel == "archive_format":
            extra["data/constants/model.pt"] = _pickle({"c": _Payload(marker)})
        return data
    return change


def _config_entry(kind: str, prefix: str, payload: bytes):
    """A constant named in the constants config whose payload is a pickle (custom or opaque object)."""
    def change(rel, data, extra):
        if rel == "data/constants/model_constants_config.json":
            config = json.loads(data)
            # use_pickle false: torch reads custom and opaque objects by their name's prefix, whatever it says
            config.setdefault("config", {})[f"evil_{kind}"] = {"path_name": f"{prefix}0", "is_param": False,
                                                              "use_pickle": False, "tensor_meta": None}
            extra[f"data/constants/{prefix}0"] = payload
            return json.dumps(config).encode()
        return data
    return change


def _pickled_weight(marker):
    def change(rel, data, extra):
        if rel == "data/weights/model_weights_config.json":
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first.update(use_pickle=True, path_name="weight_999")
            extra["data/weights/weight_999"] = _pickle(_Payload(marker))
            return json.dumps(config).encode()
        return data
    return change


def _sample_inputs(marker):
    def change(rel, data, extra):
        return _pickle({"x": _Payload(marker)}) if rel.startswith("data/sample_inputs/") else data
    return change


def _aoti(marker):
    def change(rel, data, extra):
        if rel == "archive_format":
            extra["data/aotinductor/model/model.so"] = b"\x7fELF not really"
        return data
    return change


def _graph_edit(edit):
    def change(rel, data, extra):
        if rel == "models/model.json":
            program = json.loads(data)
            edit(program)
            return json.dumps(program).encode()
        return data
    return change


def _first(program, key):
    """The first dict in the program holding key (a node's target, a symbolic size)."""
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if key in item:
                return item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    raise AssertionError(f"no {key} in the program")


def _sympy_payload(marker):
    """sympy.sympify evaluates shape expressions with Python's eval."""
    def edit(program):
        _first(program, "expr_str")["expr_str"] = f"__import__('builtins').open({str(marker)!r}, 'w') and s0"
    return _graph_edit(edit)


def _torch_load_call(marker):
    """A node that calls torch.load on a pickle of the attacker's when the model runs."""
    def edit(program):
        _first(program, "target")["target"] = "torch.serialization.load"
    return _graph_edit(edit)


PLACES = {
    "legacy weights (data/weights/model.pt)": _legacy_weights,
    "legacy constants (data/constants/model.pt)": _legacy_constants,
    "pickled weight (use_pickle)": _pickled_weight,
    "custom object constant": lambda m: _config_entry("custom", "custom_obj_", _pickle(_Payload(m))),
    "opaque object constant": lambda m: _config_entry("opaque", "opaque_obj_",
                                                      __import__("pickle").dumps(_Payload(m))),
    "sample inputs": _sample_inputs,
    "AOTInductor library": _aoti,
    "shape expression (sympify)": _sympy_payload,
    "graph call to torch.load": _torch_load_call,
}


@pytest.mark.parametrize("place", list(PLACES))
def test_a_pt2_with_a_payload_is_refused_before_torch_reads_it(place, good_pt2, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = _rewrite(good_pt2, tmp_path / "evil.pt2", PLACES[place](marker))
    with pytest.raises(ModelFileError, match="evil.pt2"):
        load_runner(evil)
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    assert main(["predict", str(img), "--checkpoint", str(evil)]) == 1
    assert "evil.pt2" in one_line_error(capsys)
    assert main(["eval", "--checkpoint", str(evil), "--dummy", "--no-progress"]) == 1
    assert "evil.pt2" in one_line_error(capsys)
    assert not marker.exists()


def test_an_old_format_export_archive_is_refused(good_pt2, tmp_path):
    """torch.export.load still reads 2.7's layout (serialized_*.pt, unpickled with a fallback to full pickle)."""
    marker = tmp_path / "PWNED"
    old = tmp_path / "old.pt2"
    with zipfile.ZipFile(old, "w") as z:
        z.writestr("version", "8.0")
        z.writestr("serialized_exported_program.json", "{}")
        z.writestr("serialized_state_dict.pt", _pickle({"w": _Payload(marker)}))
    with pytest.raises(ModelFileError, match="old.pt2"):
        load_runner(old)
    assert not marker.exists()


def test_a_pt2_whose_zip_readers_disagree_is_refused(good_pt2, tmp_path):
    """Data in front of the archive, or a second zip directory: what Python's zipfile lists would not be what
    torch's reader loads."""
    marker = tmp_path / "PWNED"
    prefixed = tmp_path / "prefixed.pt2"
    prefixed.write_bytes(_pickle({"w": _Payload(marker)}) + good_pt2.read_bytes())
    with pytest.raises(ModelFileError, match="prefixed.pt2"):
        load_runner(prefixed)
    assert not marker.exists()


def test_the_untouched_export_still_loads_and_runs(good_pt2):
    runner = load_runner(good_pt2)
    assert runner(torch.randn(2, 3, 32, 32)).shape == (2, 3)


# ------------------------------------------------------------------------------------------------
# 2. a damaged checkpoint is refused, naming the file


@pytest.fixture(scope="module")
def trained(digits_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--model", "resnet18", "--data", str(digits_data), "--epochs", "1", "--img-size", "16",
                 "--batch-size", "16", "--iters", "2", "--workers", "0", "--device", "cpu", "--no-progress",
                 "--output", str(out)]) == 0
    return out


def _flip_bytes_in_largest_tensor(src: Path, dst: Path, count: int = 200) -> Path:
    """A copy with `count` bytes inverted in the middle of the largest tensor's data (the zip stays readable)."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    header = info.header_offset
    name_len = int.from_bytes(data[header + 26:header + 28], "little")
    extra_len = int.from_bytes(data[header + 28:header + 30], "little")
    start = header + 30 + name_len + extra_len + info.file_size // 2
    for k in range(count):
        data[start + 7 * k] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_a_damaged_checkpoint_is_refused_by_every_command(trained, digits_data, tmp_path, capsys):
    bad = _flip_bytes_in_largest_tensor(trained / "last.pth", tmp_path / "flipped.pth")
    img = next((Path(digits_data) / "val" / "3").iterdir())
    commands = {
        "eval": ["eval", "--checkpoint", str(bad), "--no-progress"],
        "predict": ["predict", str(img), "--checkpoint", str(bad)],
        "export": ["export", "--checkpoint", str(bad), "--format", "onnx", "--output", str(tmp_path / "m.onnx")],
        "quantize": ["quantize", "--checkpoint", str(bad), "--output", str(tmp_path / "q.pt2"), "--no-eval"],
        "resume": ["train", "--model", "resnet18", "--data", str(digits_data), "--epochs", "2", "--img-size", "16",
                   "--output", str(tmp_path / "r"), "--resume", str(bad), "--workers", "0", "--device", "cpu"],
        "weights": ["train", "--model", "resnet18", "--data", str(digits_data), "--epochs", "1", "--img-size", "16",
                    "--output", str(tmp_path / "w"), "--init-from", str(bad), "--workers", "0", "--device", "cpu"],
        "finetune-res": ["finetune-res", "--checkpoint", str(bad), "--test-size", "24", "--output",
                         str(tmp_path / "f")],
    }
    for name, argv in commands.items():
        assert main(argv) == 1, name
        err = one_line_error(capsys)
        assert str(bad) in err and "damaged" in err, (name, err)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "q.pt2").exists()


def test_checkpoints_without_a_digest_load_with_a_warning(trained, tmp_path, caplog):
    d = torch.load(trained / "last.pth", map_location="cpu", weights_only=True)
    assert d["digest"].startswith("sha256-content-v1:")
    del d["digest"]
    old = tmp_path / "old.pth"
    torch.save(d, old)
    with caplog.at_level("WARNING", logger="visionzoo"):
        assert load_runner(old)(torch.zeros(1, 3, 16, 16)).shape == (1, 10)
    assert any("unverified" in r.getMessage() and str(old) in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------------
# 3. a kill at any write of the last epoch resumes to the unbroken run's files


def _train_args(data, out: Path, *extra: str) -> list[str]:
    return ["train", "--recipe", "demo", "--data", str(data), "--epochs", "2", "--img-size", "24", "--batch-size",
            "32", "--iters", "12", "--workers", "0", "--device", "cpu", "--seed", "2", "--deterministic",
            "--no-progress", "--log-interval", "4", "--output", str(out), *extra]


def _epoch_lines(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "epoch"]


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def unbroken(digits_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unbroken") / "run"
    assert main(_train_args(digits_data, out)) == 0
    rows = _epoch_lines(out)
    assert rows[1]["val_top1"] > rows[0]["val_top1"]  # the last epoch improves: best.pth is rewritten in it
    return out


class _Killed(BaseException):
    """What SIGKILL does to the Python code: nothing after it runs (not even except Exception)."""


def _kill_at_write(monkeypatch, k: int) -> None:
    """Stop the run at the k-th file write of the last epoch, before it happens (writes are atomic, so a
    kill during one is a kill before it)."""
    from visionzoo.engine import runlog, trainer
    from visionzoo.models import checkpoint

    calls = {"n": 0}

    def wrap(owner, name):
        real = getattr(owner, name)

        def writer(*args, **kwargs):
            if trainer_epoch["last"]:
                calls["n"] += 1
                if calls["n"] == k:
                    raise _Killed(f"write {k}: {name}")
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, writer)

    trainer_epoch = {"last": False}
    real_run_epoch = trainer._run_epoch

    def run_epoch(run, epoch):
        trainer_epoch["last"] = epoch + 1 == run.cfg.epochs
        return real_run_epoch(run, epoch)

    monkeypatch.setattr(trainer, "_run_epoch", run_epoch)
    wrap(checkpoint.Checkpoint, "save")
    wrap(trainer, "atomic_copy")
    wrap(runlog.RunLog, "epoch")
    wrap(runlog.RunLog, "finish")


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_a_kill_at_any_write_of_the_last_epoch_resumes_to_the_unbroken_runs_files(k, unbroken, digits_data,
                                                                                   tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _kill_at_write(m, k)
        with pytest.raises(_Killed):
            main(_train_args(digits_data, out))
    (out / ".last.pth.vztmp-abcd1234.tmp").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    assert main(_train_args(digits_data, out, "--resume", "auto")) == 0
    assert [r["epoch"] for r in _epoch_lines(out)] == [1, 2]  # one line per epoch
    assert [r["val_top1"] for r in _epoch_lines(out)] == [r["val_top1"] for r in _epoch_lines(unbroken)]
    for name in ("best.pth", "last.pth", "final_model_checkpoint.pth"):
        ref, got = _weights(unbroken / name), _weights(out / name)
        assert all(torch.equal(ref[key], got[key]) for key in ref), name
    ref_eval, got_eval = (json.loads((d / "eval.json").read_text()) for d in (unbroken, out))
    assert got_eval["top1"] == ref_eval["top1"]
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if r["type"] == "train_step"]
    assert steps == sorted(set(steps))  # no step line twice
    assert not list(out.glob(".*vztmp*"))  # the leftover temp file was removed at start


def test_an_interrupted_first_epoch_leaves_no_step_lines_behind(digits_data, tmp_path, monkeypatch):
    from visionzoo.engine import runlog

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(runlog.RunLog, "epoch", lambda self, record: (_ for _ in ()).throw(_Killed()))
        with pytest.raises(_Killed):
            main(_train_args(digits_data, out))
    assert main(_train_args(digits_data, out, "--resume", "auto", "--epochs", "1")) == 0
    rows = list(map(json.loads, (out / "metrics.jsonl").read_text().splitlines()))
    assert [r["step"] for r in rows if r["type"] == "train_step"] == [4, 8, 12]
    assert [r["epoch"] for r in rows if r["type"] == "epoch"] == [1]


# ------------------------------------------------------------------------------------------------
# 4. one run per folder


def test_a_second_run_on_a_folder_is_refused_naming_the_holder(digits_data, tmp_path, capsys):
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from visionzoo.core.files import FolderLock; "
        f"FolderLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--resume", "auto"]):
            assert main(_train_args(digits_data, out, *extra)) == 2
            err = one_line_error(capsys)
            assert str(out) in err and f"pid {holder.pid}" in err
        assert not (out / "train.log").exists() and not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(_train_args(digits_data, out, "--epochs", "1")) == 0  # the lock goes with its holder


def test_a_folder_with_any_run_file_counts_as_a_run(digits_data, tmp_path, capsys):
    for name in ("config.yaml", "train.log"):
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        (out / name).write_text("from a run that stopped early\n")
        assert main(_train_args(digits_data, out)) == 2
        assert "--resume auto" in one_line_error(capsys)


# ------------------------------------------------------------------------------------------------
# 5. one line instead of a traceback


def test_resume_from_a_truncated_corrupt_or_mismatched_checkpoint(trained, digits_data, tmp_path, capsys):
    good = trained / "last.pth"
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 40)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    base = ["train", "--data", str(digits_data), "--epochs", "2", "--img-size", "16", "--workers", "0",
            "--device", "cpu", "--no-progress"]
    cases = {
        truncated: ["--model", "resnet18"],
        corrupt: ["--model", "resnet18"],
        empty: ["--model", "resnet18"],
        good: ["--model", "resnet10"],  # another model
    }
    for i, (path, model) in enumerate(cases.items()):
        assert main([*base, *model, "--output", str(tmp_path / f"r{i}"), "--resume", str(path)]) == 1
        err = one_line_error(capsys)
        assert str(path) in err, err
        if path == empty:
            assert "0 bytes" in err  # the reason, not just "cannot read"
    # another class count: the digits' 10 classes into a head sized for 12
    assert main([*base, "--model", "resnet18", "--num-classes", "12", "--output", str(tmp_path / "r9"),
                 "--resume", str(good)]) == 1
    assert "does not fit" in one_line_error(capsys)


def test_a_full_disk_while_writing_a_checkpoint(digits_data, tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "run"
    real_save = torch.save
    writes = {"n": 0}

    def save(obj, f, *a, **k):
        writes["n"] += 1
        if writes["n"] == 2:  # the second epoch's checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    rc = main(["train", "--model", "resnet18", "--data", str(digits_data), "--epochs", "2", "--img-size", "16",
               "--iters", "2", "--eval-every", "0", "--workers", "0", "--device", "cpu", "--no-progress",
               "--output", str(out)])
    monkeypatch.undo()
    err = one_line_error(capsys)
    assert rc == 1 and "No space left on device" in err and "intact" in err and str(out / "last.pth") in err
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1  # the previous checkpoint, intact


def test_a_bad_image_read_by_a_worker_is_named_in_one_line(tiny_imagefolder, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_imagefolder, data)
    bad = data / "train" / "square" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not the rest of a png")
    # 37 training images in one batch of 37: the broken one is read, by the one worker
    rc = main(["train", "--model", "resnet18", "--data", str(data), "--epochs", "1", "--img-size", "16",
               "--batch-size", "37", "--workers", "1", "--device", "cpu", "--no-progress", "--eval-every", "0",
               "--output", str(tmp_path / "run")])
    err = one_line_error(capsys)
    assert rc == 1 and err.startswith(f"visionzoo train: error: {bad}: cannot decode image")


# ------------------------------------------------------------------------------------------------
# 6. values that must be refused, with the key named


@pytest.mark.parametrize("flag, value, key", [
    ("--lr", "-1", "optim.lr"), ("--lr", "nan", "optim.lr"), ("--lr", "inf", "optim.lr"),
    ("--momentum", "nan", "optim.momentum"), ("--gamma", "inf", "sched.gamma"),
    ("--weight-decay", "-0.1", "optim.weight_decay"), ("--crop-pct", "0", "data.crop_pct"),
    ("--crop-pct", "1.6", "data.crop_pct"), ("--img-size", "100000", "data.img_size"),
])
def test_bad_values_are_refused_naming_the_key(flag, value, key, tmp_path, capsys):
    assert main(["train", "--dummy", flag, value, "--output", str(tmp_path / "x")]) == 2
    err = one_line_error(capsys)
    assert key in err and "Traceback" not in err
    if flag == "--img-size":
        assert "4096" in err  # the limit is said
    assert not (tmp_path / "x").exists()


def test_eval_refuses_an_image_size_beyond_the_limit(trained, capsys):
    assert main(["eval", "--checkpoint", str(trained / "last.pth"), "--img-size", "50000"]) == 2
    assert "4096" in one_line_error(capsys)


def test_a_diverging_run_stops_with_a_named_error_and_keeps_best(digits_data, tmp_path, capsys):
    out = tmp_path / "run"
    # epoch 1 trains at lr 0.01; epoch 2 at 1e28 (multistep, gamma 1e30): its loss overflows
    rc = main(["train", "--model", "resnet18", "--data", str(digits_data), "--img-size", "16", "--batch-size", "32",
               "--iters", "4", "--log-interval", "2", "--workers", "0", "--device", "cpu", "--no-progress",
               "--epochs", "2", "--lr", "0.01", "--sched", "multistep", "--milestones", "1", "--gamma", "1e30",
               "--output", str(out)])
    err = one_line_error(capsys)
    assert rc == 1 and "loss" in err and ("nan" in err or "inf" in err) and "--lr" in err
    assert [r["epoch"] for r in _epoch_lines(out)] == [1]
    best, last = _weights(out / "best.pth"), _weights(out / "last.pth")  # both epoch 1's, finite
    assert all(torch.equal(best[k], last[k]) for k in best)
    assert all(torch.isfinite(v).all() for v in last.values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------------
# 7. 16-bit grayscale images, empty class folders


def test_a_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    import numpy as np

    from visionzoo.data.images import load_rgb, read_file
    from visionzoo.data.transforms import eval_transform

    path = tmp_path / "g16.png"
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_rgb(path))
    expected = (ramp >> 8).astype(np.uint8)
    assert rgb.shape == (64, 64, 3) and (rgb == expected[..., None]).all()
    for decode in ("fast", "pil"):
        tf = eval_transform(64, 1.0, "bilinear", decode)
        out = tf(read_file(path)) if getattr(tf, "takes_encoded_file", False) else tf(load_rgb(path))
        assert out.float().mean() < 200  # a clipped image is all 255


def test_an_empty_class_folder_is_a_warning_naming_it(tiny_imagefolder, tmp_path, caplog):
    import shutil

    from visionzoo.data.datasets import image_folder

    data = tmp_path / "data"
    shutil.copytree(tiny_imagefolder / "train", data)
    (data / "zebra").mkdir()
    with caplog.at_level("WARNING", logger="visionzoo"):
        s = image_folder(data)
    assert "zebra" in s.classes
    assert any("zebra" in r.getMessage() and "no images" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------------
# 9. no argument abbreviations


@pytest.mark.parametrize("argv", [
    ["train", "--epoch", "3", "--dummy", "--print-config"],  # --epochs
    ["eval", "--checkpoint", "x.pth", "--backen", "eager"],  # --backend
    ["predict", "x.png", "--checkpoint", "x.pth", "--top", "3"],  # --topk
    ["bench", "--mod", "resnet18"],  # --model
])
def test_abbreviated_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "unrecognized argument" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# 11. quantised files hold int8 weights; quantize says one line, not onnxruntime's per-tensor notes


def test_an_int8_program_is_smaller_than_the_fp32_one(trained, tmp_path):
    fp32, int8 = tmp_path / "m.pt2", tmp_path / "q.pt2"
    export_model(trained / "last.pth", "export", fp32, dynamic_batch=True)
    assert main(["quantize", "--checkpoint", str(trained / "last.pth"), "--output", str(int8), "--calib-batches",
                 "1", "--batch-size", "8", "--no-eval"]) == 0
    assert int8.stat().st_size < 0.35 * fp32.stat().st_size  # int8 weights: about a quarter, plus scales
    with zipfile.ZipFile(int8) as z:
        root = z.namelist()[0].split("/")[0]
        weights = json.loads(z.read(f"{root}/data/weights/model_weights_config.json"))["config"]
    assert "conv1.weight" not in weights  # the fp32 copy the folded int8 weight replaced
    runner = load_runner(int8)
    assert runner(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_onnxruntime_notes_become_one_line(trained, tmp_path, caplog, monkeypatch):
    import logging

    import onnxruntime.quantization as ortq

    onnx_file = tmp_path / "m.onnx"
    export_model(trained / "last.pth", "onnx", onnx_file, dynamic_batch=True)
    real = ortq.quantize_static

    def noisy(*args, **kwargs):  # what onnxruntime does for a model with tiny bias scales, tensor by tensor
        for i in range(80):
            logging.warning(f"Quantized bias `b{i}` exceeds the range of a int32. The bias scale is too small.")
        return real(*args, **kwargs)

    monkeypatch.setattr(ortq, "quantize_static", noisy)
    with caplog.at_level("INFO"):
        assert main(["quantize", "--checkpoint", str(onnx_file), "--output", str(tmp_path / "q.onnx"),
                     "--calib-batches", "1", "--batch-size", "8", "--no-eval"]) == 0
    shown = [r.getMessage() for r in caplog.records]
    assert sum("exceeds the range" in m for m in shown) == 1 and any("more notes like it" in m for m in shown)
    assert not any("Performing symbolic shape inference" in m for m in shown)


def test_a_top1_gain_is_worded_as_a_gain():
    from visionzoo.cli.quantize import top1_change

    assert top1_change(-11.11) == "gain 11.11 points"
    assert top1_change(1.5) == "drop 1.50 points" and top1_change(0.0) == "no change"


# ------------------------------------------------------------------------------------------------
# 10. eval and predict see the reference pixels by default


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """A real photograph (scikit-learn's sample image) as a JPEG in a one-class val folder."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photo")
    (root / "val" / "temple").mkdir(parents=True)
    Image.fromarray(load_sample_images().images[0]).save(root / "val" / "temple" / "china.jpg", quality=90)
    return root


def _reference(path: Path, size: int = 224, crop_pct: float = 0.875) -> torch.Tensor:
    """torchvision's evaluation transform on a fully decoded image, as published accuracies assume."""
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(int(size / crop_pct), transforms.InterpolationMode.BILINEAR),
                             transforms.CenterCrop(size), transforms.PILToTensor()])
    return tf(Image.open(path).convert("RGB"))


def test_eval_reads_the_reference_pixels_by_default(photo_folder):
    from visionzoo.config import DataConfig
    from visionzoo.inference.eval_data import eval_dataset
    from visionzoo.inference.model_info import ModelInfo

    info = ModelInfo("resnet18", 1, 224, 0.875, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), ["temple"])
    ds, _, _ = eval_dataset(info, DataConfig(data=str(photo_folder)), "val")
    reference = _reference(photo_folder / "val" / "temple" / "china.jpg")
    assert torch.equal(ds[0][0], reference)
    fast, _, _ = eval_dataset(info, DataConfig(data=str(photo_folder), decode="fast"), "val")
    assert not torch.equal(fast[0][0], reference)  # the option that differs is still there


def test_predict_reads_the_reference_pixels_by_default(photo_folder):
    from visionzoo.data.loader import DeviceNormalizer
    from visionzoo.inference.model_info import ModelInfo
    from visionzoo.inference.predict import predict_files

    class Recorder:  # a model that records its input
        info = ModelInfo("resnet18", 3, 224, 0.875, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        device = torch.device("cpu")
        seen: list[torch.Tensor] = []

        def __call__(self, x):
            self.seen.append(x)
            return torch.zeros(len(x), 3)

    runner = Recorder()
    predict_files(runner, [photo_folder / "val" / "temple" / "china.jpg"])
    info = runner.info
    expected = DeviceNormalizer(info.mean, info.std, torch.device("cpu"))(
        _reference(photo_folder / "val" / "temple" / "china.jpg")[None])
    assert torch.equal(runner.seen[0], expected)


# ------------------------------------------------------------------------------------------------
# 8. weights as users have them: no visionzoo checkpoint in between


def _photos(root: Path, classes: list[str], n: int = 2) -> Path:
    """root/{train,val}/<class>/*.jpg from the real sample photograph, a few crops per class."""
    from sklearn.datasets import load_sample_images

    photo = Image.fromarray(load_sample_images().images[1])
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                box = (40 * c + 10 * i, 30 * i, 40 * c + 10 * i + 300, 30 * i + 260)
                photo.crop(box).save(root / split / name / f"{i}.jpg", quality=90)
    return root


def test_a_torchvision_state_dict_runs_predict_eval_export_quantize_bench(tmp_path, capsys):
    import torchvision

    from visionzoo.inference.model_spec import imagenet_classes

    torch.manual_seed(0)
    weights = tmp_path / "resnet18_torchvision.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # a bare state dict, 1000 classes
    data = _photos(tmp_path / "data", ["tench", "goldfish"])
    img = data / "val" / "tench" / "0.jpg"
    names = imagenet_classes()
    assert len(set(names)) == 1000 and names[0] == "tench" and "crane (bird)" in names
    model = ["--model", "resnet18", "--weights", str(weights)]

    assert main(["predict", str(img), *model, "--topk", "3", "--json", str(tmp_path / "p.json")]) == 0
    top = json.loads((tmp_path / "p.json").read_text())["predictions"][0]["top"]
    assert len(top) == 3 and all(t["class"] == names[t["index"]] for t in top)  # ImageNet's names

    assert main(["eval", *model, "--data", str(data), "--json", str(tmp_path / "e.json"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["num_images"] == 4

    onnx_file = tmp_path / "m.onnx"
    assert main(["export", *model, "--format", "onnx", "--output", str(onnx_file), "--img-size", "64"]) == 0
    assert load_runner(onnx_file).info.classes == names

    int8 = tmp_path / "q.pt2"
    assert main(["quantize", *model, "--data", str(data), "--output", str(int8), "--calib-batches", "1",
                 "--batch-size", "2", "--no-eval"]) == 0
    assert load_runner(int8).info.quantized == "int8"

    assert main(["bench", *model, "--batch-sizes", "1", "--iters", "1", "--warmup", "0", "--img-size", "64"]) == 0
    capsys.readouterr()


def test_a_timm_safetensors_file_with_its_class_names(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet10t.safetensors"
    net = timm.create_model("resnet10t", num_classes=5)
    save_file({f"module.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(weights))  # DDP keys
    names = tmp_path / "classes.txt"
    names.write_text("ant\nbee\ncat\ndog\neel\n")
    data = _photos(tmp_path / "data", ["bee", "eel"])
    img = data / "val" / "bee" / "0.jpg"
    model = ["--model", "resnet10t", "--weights", str(weights), "--classes", str(names)]

    assert main(["predict", str(img), *model, "--json", str(tmp_path / "p.json")]) == 0
    top = json.loads((tmp_path / "p.json").read_text())["predictions"][0]["top"]
    assert sorted(t["class"] for t in top) == ["ant", "bee", "cat", "dog", "eel"]
    # the file's logits, as timm computes them
    runner = load_runner(__import__("visionzoo.inference.model_spec", fromlist=["x"]).ModelSpec(
        "resnet10t", str(weights), classes=str(names)))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(runner(x), net.eval()(x))

    assert main(["export", *model, "--format", "export", "--output", str(tmp_path / "m.pt2"), "--dynamic-batch",
                 "--img-size", "64"]) == 0
    assert main(["quantize", *model, "--data", str(data), "--output", str(tmp_path / "q.pt2"), "--calib-batches",
                 "1", "--batch-size", "2", "--no-eval"]) == 0
    capsys.readouterr()
    bad_names = tmp_path / "three.txt"
    bad_names.write_text("a\nb\nc\n")
    assert main(["predict", str(img), "--model", "resnet10t", "--weights", str(weights), "--classes",
                 str(bad_names)]) == 1
    assert "3 class names for a 5-class model" in one_line_error(capsys)
    assert main(["predict", str(img), "--checkpoint", str(weights), "--weights", str(weights)]) == 2
    assert "--model" in one_line_error(capsys)


# ------------------------------------------------------------------------------------------------
# review follow-ups: the lock outlives no killed holder, paths that are not folders, disk errors, mode "I"


def test_the_lock_goes_with_a_killed_holder_even_if_its_forked_children_live(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from visionzoo.core.files import FolderLock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, time; from visionzoo.core.files import FolderLock; "
        f"FolderLock({str(tmp_path)!r}).acquire()\n"
        "if os.fork() == 0:\n    time.sleep(30); os._exit(0)\n"  # a DataLoader worker, forked with the lock open
        "print('locked', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(Exception, match=f"pid {holder.pid}"):
        FolderLock(tmp_path).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    time.sleep(0.2)
    FolderLock(tmp_path).acquire().release()  # at once: the forked child does not hold it


def test_an_output_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    where = tmp_path / "notes.txt"
    where.write_text("not a folder")
    assert main(["train", "--dummy", "--epochs", "1", "--output", str(where)]) == 2
    assert str(where) in one_line_error(capsys)


def test_a_disk_error_while_replacing_a_file_keeps_the_old_one(tmp_path, monkeypatch):
    import errno
    import os
    import shutil

    from visionzoo.core.errors import VisionZooError
    from visionzoo.core.files import atomic_copy, atomic_path

    src, dst = tmp_path / "best.pth", tmp_path / "last.pth"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    for link in (full, no_links):  # a full disk on the hard link, or on the copy it falls back to
        monkeypatch.setattr(os, "link", link)
        monkeypatch.setattr(shutil, "copyfile", full)
        with pytest.raises(VisionZooError, match="previous last.pth is intact"):
            atomic_copy(src, dst)
        assert dst.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]
    monkeypatch.undo()
    atomic_copy(src, dst)  # linked: replacing src later (by rename, as every write here) leaves dst as it was
    assert dst.read_bytes() == b"new" and dst.stat().st_ino == src.stat().st_ino
    with atomic_path(src) as tmp:
        tmp.write_bytes(b"newer")
    assert (src.read_bytes(), dst.read_bytes()) == (b"newer", b"new")


def test_a_32_bit_integer_image_within_8_bits_is_kept(tmp_path):
    import numpy as np

    from visionzoo.data.images import load_rgb

    path = tmp_path / "i32.tif"
    values = np.arange(64 * 64, dtype=np.int32).reshape(64, 64) % 256
    Image.fromarray(values, "I").save(path)
    assert (np.asarray(load_rgb(path))[..., 0] == values).all()


def test_model_without_weights_is_refused_outside_bench(tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(img)
    assert main(["predict", str(img), "--model", "resnet18"]) == 2
    assert "--weights FILE or --pretrained" in one_line_error(capsys)
