"""Test-time augmentation (engine.tta): the averaged logits, eval/predict/train reporting them beside the plain
numbers, the flip built into exported files, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from visionzoo.cli import main
from visionzoo.core.errors import ConfigError
from visionzoo.data.loader import DeviceNormalizer
from visionzoo.engine.evaluate import evaluate_model
from visionzoo.engine.tta import FlipTTA, tta_forward
from visionzoo.inference.eval_data import eval_loader, resolve_data
from visionzoo.inference.evaluate import evaluate
from visionzoo.inference.export import export_model
from visionzoo.inference.runtime import load_runner
from visionzoo.models import create_model

CPU = torch.device("cpu")


def tiny_model(num_classes: int = 4, seed: int = 0) -> torch.nn.Module:
    """resnet18 with random, non-trivial BN statistics and head: logits that differ per image and per view."""
    torch.manual_seed(seed)
    model = create_model("resnet18", num_classes=num_classes)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        elif isinstance(m, torch.nn.Linear):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
    return model.eval()


def hand_views(x: torch.Tensor, crops: bool) -> list[torch.Tensor]:
    """The views the docs define, written out: x and its flip; with crops also the 4 corner crops of 7/8 the
    side, resized back (bilinear), and their flips."""
    views = [x, torch.flip(x, dims=[3])]
    if crops:
        s = x.shape[-1]
        c = round(s * 0.875)
        for top, left in ((0, 0), (0, s - c), (s - c, 0), (s - c, s - c)):
            crop = F.interpolate(x[:, :, top:top + c, left:left + c], size=(s, s), mode="bilinear",
                                 align_corners=False)
            views += [crop, torch.flip(crop, dims=[3])]
    return views


@pytest.mark.parametrize("mode", ["flip", "flip+crops"])
def test_tta_logits_are_the_hand_computed_average(mode):
    model = tiny_model()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    views = hand_views(x, crops=mode == "flip+crops")
    assert len(views) == {"flip": 2, "flip+crops": 10}[mode]
    with torch.no_grad():
        expected = torch.stack([model(v) for v in views]).mean(0)
        plain, averaged = tta_forward(model, x, mode, CPU)
        assert averaged is not None
        torch.testing.assert_close(plain, model(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(averaged, expected, atol=1e-5, rtol=1e-5)
        assert (averaged - plain).abs().max() > 1e-3  # the views change the logits: the check above means something
        if mode == "flip":  # the export wrapper is the same average
            torch.testing.assert_close(FlipTTA(model)(x), expected, atol=1e-5, rtol=1e-5)


def test_evaluate_model_reports_tta_beside_the_plain_numbers():
    model = tiny_model(num_classes=4)
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g),
                torch.randint(0, 4, (6,), generator=g), 0) for _ in range(3)]
    normalizer = DeviceNormalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), CPU)
    plain = evaluate_model(model, batches, normalizer, 4)
    r = evaluate_model(model, batches, normalizer, 4, tta="flip")
    assert "tta" not in plain
    assert r["top1"] == plain["top1"] and r["loss"] == pytest.approx(plain["loss"])  # the plain number stays
    # by hand: accuracy and loss of the averaged logits
    hits, loss, n = 0, 0.0, 0
    with torch.no_grad():
        for images, target, _ in batches:
            x = normalizer(images)
            logits = (model(x) + model(x.flip(-1))) / 2
            hits += int((logits.argmax(1) == target).sum())
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            n += len(target)
    assert r["tta"]["mode"] == "flip" and r["tta"]["views"] == 2
    assert r["tta"]["top1"] == pytest.approx(100.0 * hits / n)
    assert r["tta"]["loss"] == pytest.approx(loss / n, rel=1e-5)
    assert r["tta"]["top5"] == pytest.approx(100.0)  # 4 classes: every image is a top-5 hit


def _eval_batch(ckpt: Path) -> torch.Tensor:
    """The first normalised batch of the checkpoint's own validation split, as eval reads it."""
    runner = load_runner(ckpt)
    loader, _, info = eval_loader(runner.info, resolve_data(runner.info, None, ckpt), "val", 12)
    images, _, _ = next(iter(loader))
    return DeviceNormalizer(info.mean, info.std, CPU)(images)


def test_eval_tta_flip_writes_both_numbers(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tiny_ckpt), "--tta", "flip", "--device", "cpu", "--no-progress",
                 "--workers", "0", "--json", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    r = json.loads(out.read_text())
    plain = evaluate(str(tiny_ckpt), device="cpu", progress=False)
    assert r["top1"] == plain["top1"] and "tta" not in plain
    assert set(r["tta"]) == {"mode", "views", "top1", "top5", "loss"}
    assert r["tta"]["views"] == 2 and 0.0 <= r["tta"]["top1"] <= 100.0
    assert r["tta"]["loss"] != pytest.approx(r["loss"])  # measured on other logits
    assert f"top-1 {r['top1']:.2f}" in line and f"TTA flip (2 views): top-1 {r['tta']['top1']:.2f}" in line
    # the library API takes it too, flip+crops included
    lib = evaluate(str(tiny_ckpt), device="cpu", progress=False, tta="flip+crops")
    assert lib["tta"]["views"] == 10 and lib["top1"] == plain["top1"]


def test_exported_flip_tta_onnx_equals_eval_tta_logits(tiny_ckpt, tmp_path):
    onnx_file = tmp_path / "tta.onnx"
    assert main(["export", "--checkpoint", str(tiny_ckpt), "--format", "onnx", "--output", str(onnx_file),
                 "--tta", "flip", "--dynamic-batch"]) == 0
    x = _eval_batch(tiny_ckpt)
    eager = load_runner(tiny_ckpt)
    plain, averaged = tta_forward(eager, x, "flip", CPU)  # what eval --tta flip averages
    exported = load_runner(onnx_file)
    assert exported.info.extra["tta"] == "flip"  # recorded in the file's metadata
    got = exported(x)
    assert averaged is not None
    torch.testing.assert_close(got, averaged, atol=1e-4, rtol=0)
    assert (got - plain).abs().max() > 1e-4  # the flip is really in the file
    # eval of the file gives eval's TTA numbers as its plain ones, and says the TTA is built in
    r = evaluate(str(onnx_file), device="cpu", progress=False)
    ref = evaluate(str(tiny_ckpt), device="cpu", progress=False, tta="flip")
    assert r["built_in_tta"] == "flip"
    assert r["top1"] == pytest.approx(ref["tta"]["top1"], abs=100 / r["num_images"] + 1e-9)
    assert r["loss"] == pytest.approx(ref["tta"]["loss"], abs=1e-4)
    # TTA on top of the built-in one is refused, in one line naming the flag
    with pytest.raises(ConfigError, match=r"^tta='flip': .*built in"):
        evaluate(str(onnx_file), device="cpu", progress=False, tta="flip")


@pytest.mark.parametrize("fmt,suffix", [("torchscript", ".ts"), ("export", ".pt2")])
def test_flip_tta_bakes_into_torchscript_and_pt2(tiny_ckpt, tmp_path, fmt, suffix):
    out = tmp_path / f"tta{suffix}"
    report = export_model(tiny_ckpt, fmt, out, tta="flip", dynamic_batch=True)
    assert report["tta"] == "flip"
    x = _eval_batch(tiny_ckpt)
    _, averaged = tta_forward(load_runner(tiny_ckpt), x, "flip", CPU)
    runner = load_runner(out)
    assert runner.info.extra["tta"] == "flip"
    assert averaged is not None
    torch.testing.assert_close(runner(x), averaged, atol=1e-4, rtol=0)


def test_eval_tta_on_a_plain_onnx_file_matches_the_checkpoint(tiny_ckpt, tmp_path):
    """Non-torch runners take the normalised batch too, so the views run through onnxruntime unchanged."""
    onnx_file = tmp_path / "plain.onnx"
    export_model(tiny_ckpt, "onnx", onnx_file, batch_size=4)  # a fixed batch: the views run in its chunks
    r = evaluate(str(onnx_file), device="cpu", progress=False, tta="flip")
    ref = evaluate(str(tiny_ckpt), device="cpu", progress=False, tta="flip")
    assert r["tta"]["top1"] == pytest.approx(ref["tta"]["top1"], abs=100 / r["num_images"] + 1e-9)
    assert r["tta"]["loss"] == pytest.approx(ref["tta"]["loss"], abs=1e-4)


def test_predict_tta_probabilities_are_the_softmax_of_averaged_logits(tiny_ckpt, tiny_imagefolder, tmp_path):
    from visionzoo.inference.predict import predict

    image = next((tiny_imagefolder / "val" / "circle").iterdir())
    top = predict(tiny_ckpt, image, topk=3, device="cpu", tta="flip")[0]["top"]
    plain = predict(tiny_ckpt, image, topk=3, device="cpu")[0]["top"]
    x = _single(tiny_ckpt, image)
    runner = load_runner(tiny_ckpt)
    probs = ((runner(x) + runner(x.flip(-1))) / 2).softmax(1)[0]
    for t in top:
        assert t["prob"] == pytest.approx(float(probs[t["index"]]), abs=1e-5)
    assert [t["prob"] for t in top] != pytest.approx([t["prob"] for t in plain], abs=1e-6)


def _single(ckpt: Path, image: Path) -> torch.Tensor:
    from visionzoo.data.transforms import eval_transform, transform_file

    info = load_runner(ckpt).info
    pixels = transform_file(eval_transform(info.img_size, info.crop_pct, info.interpolation), image)
    return DeviceNormalizer(info.mean, info.std, CPU)(pixels[None])


def test_train_tta_flip_puts_the_tta_number_in_the_summary(tiny_imagefolder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--data", str(tiny_imagefolder), "--img-size", "32",
                 "--epochs", "1", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--seed", "0",
                 "--output", str(out), "--no-progress", "--tta", "flip"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    evaluation = json.loads((out / "eval.json").read_text())
    assert summary["tta"]["mode"] == "flip" and summary["tta"]["views"] == 2
    assert evaluation["tta"]["top1"] == summary["tta"]["top1"]
    assert summary["tta"]["plain_top1"] == evaluation["top1"] == summary["last"]["val_top1"]
    assert f"with TTA flip {summary['tta']['top1']:.2f}" in capsys.readouterr().out
    # the numbers are the checkpoint's: eval --tta flip of last.pth reproduces them
    again = evaluate(str(out / "last.pth"), device="cpu", progress=False, tta="flip")
    assert again["tta"]["top1"] == pytest.approx(summary["tta"]["top1"])


@pytest.mark.parametrize("argv", [
    ["eval", "--tta", "mirror"],
    ["predict", "x.jpg", "--tta", "mirror"],
    ["export", "--format", "onnx", "--output", "m.onnx", "--tta", "flip+crops"],
    ["train", "--model", "resnet18", "--data", "builtin:digits", "--tta", "mirror", "--print-config"],
])
def test_a_bad_tta_value_is_a_one_line_error(capsys, argv):
    argv = argv if argv[0] == "train" else argv[:1] + ["--checkpoint", "nowhere.pth"] + argv[1:]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage error (a value not among the flag's choices)
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "--tta" in err, err


def test_bad_tta_via_the_library_and_unbakeable_formats(tiny_ckpt, tmp_path):
    with pytest.raises(ConfigError, match=r"^tta='mirror': not one of flip, flip\+crops$"):
        evaluate(str(tiny_ckpt), device="cpu", progress=False, tta="mirror")
    with pytest.raises(ConfigError, match="--tta flip: a safetensors export holds weights only"):
        export_model(tiny_ckpt, "safetensors", tmp_path / "m.safetensors", tta="flip")
    assert not (tmp_path / "m.safetensors").exists()
