"""Calibration (inference.calibration, `eval --calibrate`): ECE/NLL/Brier against their definitions and
torchmetrics, the temperature fit, T stored in the checkpoint and nothing else changed, predict/export returning
the calibrated probabilities, and the one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from visionzoo.cli import main
from visionzoo.core.distributed import DistInfo
from visionzoo.core.errors import DataError
from visionzoo.data.loader import DeviceNormalizer
from visionzoo.engine.evaluate import evaluate_model
from visionzoo.inference.calibration import (
    TemperatureScaled,
    brier,
    calibration_report,
    ece,
    fit_temperature,
    nll,
    reliability_plot,
)
from visionzoo.inference.eval_data import eval_loader, resolve_data
from visionzoo.inference.evaluate import evaluate, evaluate_runner
from visionzoo.inference.export import export_model
from visionzoo.inference.model_info import ModelInfo
from visionzoo.inference.runtime import load_runner
from visionzoo.models.checkpoint import Checkpoint

CPU = torch.device("cpu")
KEYS = {"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "brier_before", "brier_after", "bins",
        "num_images"}


def calibrated_logits(n: int = 3000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is calibrated by construction: each label is drawn from the softmax itself."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 1.5
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("scale,seed", [(1.0, 0), (3.0, 1), (5.0, 2), (12.0, 3)])
def test_ece_nll_brier_match_torchmetrics_and_their_definitions(scale, seed):
    from torchmetrics.classification import MulticlassCalibrationError

    g = torch.Generator().manual_seed(seed)
    num_classes = 7
    logits = torch.randn(2000, num_classes, generator=g) * scale
    labels = torch.randint(0, num_classes, (2000,), generator=g)
    metric = MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1")
    expected = float(metric(logits.softmax(1), labels))
    assert ece(logits, labels) == pytest.approx(expected, abs=1e-6)
    # with a temperature: the ECE of softmax(logits / T)
    expected_t = float(MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1")(
        (logits / 2.5).softmax(1), labels))
    assert ece(logits, labels, 2.5) == pytest.approx(expected_t, abs=1e-6)
    # NLL and Brier by hand
    p = (logits.double() / 2.5).softmax(1)
    assert nll(logits, labels, 2.5) == pytest.approx(float(-p[torch.arange(2000), labels].log().mean()), rel=1e-9)
    hand = sum(float(((p[i] - F.one_hot(labels[i], num_classes).double()) ** 2).sum()) for i in range(2000)) / 2000
    assert brier(logits, labels, 2.5) == pytest.approx(hand, rel=1e-9)


def test_fitted_temperature_undoes_overconfidence_and_keeps_top1():
    logits, labels = calibrated_logits()
    hot = logits * 5  # overconfident: the same ranking, five times the margins
    r = calibration_report(hot, labels)
    assert set(r) >= KEYS and r["bins"] == 15 and r["num_images"] == len(labels)
    assert r["temperature"] == pytest.approx(5.0, rel=0.1)  # the scale the logits were blown up by
    assert r["nll_after"] < r["nll_before"] and r["brier_after"] < r["brier_before"]
    assert r["ece_after"] <= r["ece_before"] / 2
    assert torch.equal((hot / r["temperature"]).argmax(1), hot.argmax(1))  # top-1 never changes
    # the fit is the NLL minimum: T a little either way is worse
    t = r["temperature"]
    assert nll(hot, labels, t) < min(nll(hot, labels, t * 1.02), nll(hot, labels, t / 1.02))
    # already calibrated logits keep T near 1; an all-correct split is bounded, not sent to 0
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)
    assert 1e-2 <= fit_temperature(torch.eye(4) * 10, torch.arange(4)) < 1.0
    # the bins of the report add up to the images
    assert sum(r["reliability"]["before"]["count"]) == sum(r["reliability"]["after"]["count"]) == len(labels)


def test_reliability_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    logits, labels = calibrated_logits(500)
    path = reliability_plot(calibration_report(logits * 4, labels), tmp_path / "rel.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unlabelled_images_are_left_out_and_none_is_an_error():
    logits, labels = calibrated_logits(400)
    with_open = torch.cat([labels[:300], torch.full((100,), -1)])
    r = calibration_report(logits, with_open)
    assert r["num_images"] == 300
    assert r["temperature"] == pytest.approx(calibration_report(logits[:300], labels[:300])["temperature"])
    with pytest.raises(DataError, match=r"^calibration needs labelled images: val.txt has none \(all 400"):
        calibration_report(logits, torch.full((400,), -1), "val.txt")


@pytest.fixture()
def calibrated_ckpt(tiny_ckpt, tmp_path, capsys) -> tuple[Path, dict, str]:
    """A copy of tiny_ckpt after `eval --calibrate --json`, the JSON it wrote and what it printed."""
    capsys.readouterr()
    ckpt = tmp_path / "model.pth"
    shutil.copyfile(tiny_ckpt, ckpt)
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--calibrate", "--device", "cpu", "--no-progress",
                 "--workers", "0", "--json", str(out), "--plot", str(tmp_path / "rel.png")]) == 0
    return ckpt, json.loads(out.read_text()), capsys.readouterr().out


def _state_equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


def test_eval_calibrate_reports_stores_t_and_changes_nothing_else(tiny_ckpt, calibrated_ckpt, tmp_path):
    ckpt, r, out = calibrated_ckpt
    c = r["calibration"]
    assert set(c) >= KEYS and c["bins"] == 15 and c["num_images"] == r["num_images"] == 12
    assert c["stored"] == str(ckpt) and 0.01 <= c["temperature"] <= 100
    assert f"calibration: T {c['temperature']:.4f}  ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}" in out
    assert f"stored T {c['temperature']:.4f} in {ckpt}" in out and "rel.png" in out
    assert (tmp_path / "rel.png").is_file()
    # eval's own numbers are the model's: the same as the uncalibrated original's, before and after storing T
    plain = evaluate(str(tiny_ckpt), device="cpu", progress=False)
    again = evaluate(str(ckpt), device="cpu", progress=False)
    assert r["top1"] == plain["top1"] == again["top1"]
    assert r["loss"] == pytest.approx(plain["loss"], abs=1e-6)
    assert again["loss"] == pytest.approx(plain["loss"], abs=1e-6)
    assert again["stored_temperature"] == c["temperature"] and "stored_temperature" not in plain
    # the file: T added, every other entry as it was (the digest, over the new content, verifies on load)
    before = torch.load(tiny_ckpt, weights_only=True)
    after = torch.load(ckpt, weights_only=True)
    assert after["temperature"] == c["temperature"]
    assert _state_equal({k: v for k, v in before.items() if k != "digest"},
                        {k: v for k, v in after.items() if k not in ("digest", "temperature")})
    loaded = Checkpoint.load(ckpt)
    assert loaded.temperature == c["temperature"]
    assert _state_equal(loaded.model, Checkpoint.load(tiny_ckpt).model)
    # calibrating again refits on the model's own logits: the same T, stored in place
    lib = evaluate(str(ckpt), device="cpu", progress=False, calibrate=True)
    assert set(lib["calibration"]) == set(c)
    assert lib["calibration"]["temperature"] == pytest.approx(c["temperature"], rel=1e-6)
    assert lib["calibration"]["ece_before"] == pytest.approx(c["ece_before"], abs=1e-9)
    # store=False reports without writing
    mtime = ckpt.stat().st_mtime_ns
    dry = evaluate(str(tiny_ckpt), device="cpu", progress=False, calibrate=True, store=False)
    assert dry["calibration"]["stored"] is None and "store=False" in dry["calibration"]["not_stored"]
    assert "temperature" not in torch.load(tiny_ckpt, weights_only=True) and ckpt.stat().st_mtime_ns == mtime


def test_predict_returns_softmax_of_logits_over_t(tiny_ckpt, calibrated_ckpt, tiny_imagefolder):
    from visionzoo.data.transforms import eval_transform, transform_file
    from visionzoo.inference.predict import predict

    ckpt, r, _ = calibrated_ckpt
    t = r["calibration"]["temperature"]
    image = next((tiny_imagefolder / "val" / "square").iterdir())
    runner = load_runner(tiny_ckpt)
    info = runner.info
    pixels = transform_file(eval_transform(info.img_size, info.crop_pct, info.interpolation), image)
    logits = runner(DeviceNormalizer(info.mean, info.std, CPU)(pixels[None]))
    expected = (logits.double() / t).softmax(1)[0]
    top = predict(ckpt, image, topk=3, device="cpu")[0]["top"]
    assert [x["index"] for x in top] == expected.argsort(descending=True)[:3].tolist()
    for x in top:
        assert x["prob"] == pytest.approx(float(expected[x["index"]]), abs=1e-6)
    plain = predict(tiny_ckpt, image, topk=3, device="cpu")[0]["top"]
    assert [x["index"] for x in plain] == [x["index"] for x in top]  # the same classes, other probabilities
    if abs(t - 1) > 1e-3:
        assert [x["prob"] for x in plain] != pytest.approx([x["prob"] for x in top], abs=1e-6)


def _eval_logits(runner, ckpt: Path) -> torch.Tensor:
    """The logits of every image of the checkpoint's validation split, in eval's order, as the runner gives them."""
    loader, _, info = eval_loader(runner.info, resolve_data(runner.info, None, ckpt), "val", 5)
    out = evaluate_model(runner, loader, DeviceNormalizer(info.mean, info.std, CPU), info.num_classes,
                         collect_logits=True)
    return torch.from_numpy(out["logits"]["logits"])


def test_onnx_export_bakes_t_and_equals_evals_calibrated_probabilities(calibrated_ckpt, tmp_path):
    ckpt, r, _ = calibrated_ckpt
    t = r["calibration"]["temperature"]
    onnx_file = tmp_path / "m.onnx"
    report = export_model(ckpt, "onnx", onnx_file, dynamic_batch=True)
    assert report["temperature"] == t and report["temperature_baked"] is True
    exported = load_runner(onnx_file)
    assert exported.info.temperature == t and exported.info.temperature_baked
    # eval's calibrated probabilities: softmax of the logits eval collects (the model's own) over T
    raw, _ = evaluate_runner(load_runner(ckpt), resolve_data(load_runner(ckpt).info, None, ckpt), DistInfo(),
                             batch_size=5, progress=False, collect_logits=True)
    calibrated = (torch.from_numpy(raw["logits"]["logits"]).double() / t).softmax(1)
    got = _eval_logits(exported, ckpt).softmax(1)  # the file's own outputs: T is in its graph, divided once
    assert got.shape == calibrated.shape
    torch.testing.assert_close(got.double(), calibrated, atol=1e-5, rtol=0)
    # eval of the file measures the model's own logits too (T undone), as eval of the checkpoint
    on_file = evaluate(str(onnx_file), device="cpu", progress=False, calibrate=True)
    assert on_file["top1"] == r["top1"] and on_file["loss"] == pytest.approx(r["loss"], abs=1e-4)
    assert on_file["calibration"]["temperature"] == pytest.approx(t, rel=1e-3)
    assert on_file["calibration"]["stored"] is None and "onnx file" in on_file["calibration"]["not_stored"]


def test_safetensors_export_carries_t_for_the_runner(calibrated_ckpt, tmp_path):
    ckpt, r, _ = calibrated_ckpt
    t = r["calibration"]["temperature"]
    out = tmp_path / "m.safetensors"
    report = export_model(ckpt, "safetensors", out)
    assert report["temperature"] == t and report["temperature_baked"] is False
    runner = load_runner(out)
    x = torch.randn(2, 3, runner.info.img_size, runner.info.img_size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(runner(x), load_runner(ckpt).uncalibrated()(x) / t, atol=1e-5, rtol=1e-5)


def test_schema_older_files_and_derived_checkpoints():
    sd = {"w": torch.ones(2)}
    old = Checkpoint.from_dict({"model": sd, "model_name": "resnet18"})
    assert old.temperature is None and "temperature" not in old.to_dict()  # absent: uncalibrated, not written
    ckpt = Checkpoint.from_dict({"model": sd, "temperature": 1.7})
    assert ckpt.temperature == 1.7 and ckpt.to_dict()["temperature"] == 1.7 and not ckpt.extra
    assert ckpt.without_training_state().temperature is None  # other weights (tau-norm, average): T does not fit
    # metadata of files exported before calibration existed loads as uncalibrated
    info = ModelInfo("resnet18", 3, 32, 1.0, "bilinear", (0.5,) * 3, (0.5,) * 3, temperature=2.0)
    d = json.loads(info.to_json())
    assert d["temperature"] == 2.0 and d["temperature_baked"] is False
    for key in ("temperature", "temperature_baked"):
        d.pop(key)
    assert ModelInfo.from_json(json.dumps(d), "old.onnx").temperature is None
    # the export wrapper divides once
    model = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    torch.testing.assert_close(TemperatureScaled(model, 2.0)(x), model(x) / 2.0)


def test_calibrate_on_a_split_without_labelled_images_is_one_line(tiny_ckpt, tiny_imagefolder, tmp_path, capsys):
    """A pack whose validation split is all open-set images (label -1): nothing to fit T on."""
    ckpt = tmp_path / "model.pth"
    shutil.copyfile(tiny_ckpt, ckpt)
    names = ["circle", "square", "triangle"]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    files = {split: sorted(p.relative_to(tiny_imagefolder) for p in (tiny_imagefolder / split).rglob("*.jpg"))
             for split in ("train", "val")}
    (tmp_path / "train.txt").write_text("".join(f"{p} {names.index(p.parent.name)}\n" for p in files["train"]))
    (tmp_path / "open.txt").write_text("".join(f"{p} -1\n" for p in files["val"]))
    pack = tmp_path / "pack"
    assert main(["pack", "--data", str(tiny_imagefolder), "--list", f"train={tmp_path / 'train.txt'}", "--list",
                 f"val={tmp_path / 'open.txt'}", "--output", str(pack), "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    code = main(["eval", "--checkpoint", str(ckpt), "--calibrate", "--data", str(pack), "--device", "cpu",
                 "--no-progress", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1, err
    assert f"calibration needs labelled images: the evaluated split ({pack}) has none (all {len(files['val'])} " \
           "are unlabelled, label -1)" in err, err
    assert Checkpoint.load(ckpt).temperature is None  # nothing stored
    # and --calibrate is for a plain evaluation
    code = main(["eval", "--checkpoint", str(ckpt), "--calibrate", "--sizes", "32,40"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--calibrate" in err, err
