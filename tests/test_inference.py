"""Inference side: exported files match eager, the offline pipeline reproduces eval, quantisation,
bench, and predict's handling of bad images."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionzoo.cli import main
from visionzoo.config import TrainConfig, apply_overrides
from visionzoo.core.files import atomic_save
from visionzoo.engine.trainer import train
from visionzoo.inference.evaluate import evaluate
from visionzoo.inference.export import ExportCheckError, export_model
from visionzoo.inference.runtime import load_runner
from visionzoo.models import create_model

EXPORT_SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "export": ".pt2", "safetensors": ".safetensors"}


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and a strong head, so logits are far from zero and differ per image."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        elif isinstance(m, torch.nn.Linear):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
    return model.eval()


def save_ckpt(path: Path, name: str, num_classes: int = 5, img_size: int = 32) -> tuple[Path, torch.nn.Module]:
    """A checkpoint as training writes it (no data recorded: export checks fall back to random pixels)."""
    model = randomise(create_model(name, num_classes=num_classes))
    atomic_save({"model": model.state_dict(), "model_name": name, "num_classes": num_classes,
                 "classes": [f"c{i}" for i in range(num_classes)], "img_size": img_size, "crop_pct": 0.875,
                 "interpolation": "bilinear"}, path)
    return path, model


@pytest.fixture(scope="module")
def digits_ckpt(digits_data, tmp_path_factory) -> Path:
    """resnet18 trained 2 epochs on the built-in digits at 32 px (well above chance)."""
    out = tmp_path_factory.mktemp("digits-run")
    cfg = apply_overrides(TrainConfig(), {
        "model": {"model": "resnet18"},
        "data": {"data": "builtin:digits", "img_size": 32, "crop_pct": 1.0, "scale": [0.5, 1.0], "hflip": 0.0,
                 "workers": 0},
        "optim": {"lr": 0.05, "weight_decay": 5e-4}, "sched": {"sched": "cosine"},
        "epochs": 2, "batch_size": 64, "seed": 0, "device": "cpu", "output": str(out / "run"), "progress": False,
    }, "test")
    return Path(train(cfg)["checkpoint"])


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "se_resnext50_32x4d"])
def test_exported_files_match_eager(name, tmp_path):
    ckpt, eager = save_ckpt(tmp_path / f"{name}.pth", name)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = eager(x)
    assert ref.std() > 0.1  # the comparison below is not between near-zero outputs
    for fmt in ("onnx", "torchscript", "export"):
        out = tmp_path / f"{name}{EXPORT_SUFFIX[fmt]}"
        report = export_model(ckpt, fmt, out, dynamic_batch=True)
        assert report["check"]["max_abs_diff"] <= report["check"]["limit"]
        runner = load_runner(out)
        got = runner(x)  # a batch size the export never saw
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4, msg=f"{fmt} differs from eager")
        assert runner.info.model_name == name and runner.info.classes == [f"c{i}" for i in range(5)]
        assert runner.info.img_size == 32


def test_dynamic_batch_onnx_runs_at_1_and_7_and_static_file_is_chunked(tmp_path):
    import onnxruntime as ort

    ckpt, eager = save_ckpt(tmp_path / "r18.pth", "resnet18")
    export_model(ckpt, "onnx", tmp_path / "dyn.onnx", dynamic_batch=True)
    session = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"])
    for bs in (1, 7):
        x = torch.randn(bs, 3, 32, 32)
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert out.shape == (bs, 5)
        np.testing.assert_allclose(out, eager(x).detach().numpy(), atol=1e-4, rtol=1e-4)
    # a fixed batch-1 file still serves a batch of 3 (run one by one)
    export_model(ckpt, "onnx", tmp_path / "b1.onnx", batch_size=1)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(load_runner(tmp_path / "b1.onnx")(x), eager(x).detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("opset", [11, 20])
def test_onnx_opset_is_the_one_asked_for(tmp_path, opset):
    import onnx

    ckpt, eager = save_ckpt(tmp_path / "r18.pth", "resnet18")
    out = tmp_path / f"op{opset}.onnx"
    export_model(ckpt, "onnx", out, dynamic_batch=True, opset=opset)  # 11: the seed's ATC opset
    assert {o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")} == {opset}
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(load_runner(out)(x), eager(x).detach(), atol=1e-4, rtol=1e-4)


def test_failed_export_check_leaves_no_file(tmp_path):
    ckpt, _ = save_ckpt(tmp_path / "r18.pth", "resnet18")
    with pytest.raises(ExportCheckError, match="file not written"):
        export_model(ckpt, "onnx", tmp_path / "bad.onnx", atol=-1.0, rtol=0.0)  # no difference passes a negative limit
    assert not (tmp_path / "bad.onnx").exists()
    assert not list(tmp_path.glob(".bad*"))  # no temp file left either


def test_eval_accepts_every_exported_format(digits_ckpt, tmp_path):
    base = evaluate(str(digits_ckpt), batch_size=128, device="cpu", progress=False)
    assert base["top1"] > 50  # trained: the comparisons below are between meaningful predictions
    for fmt, suffix in EXPORT_SUFFIX.items():
        out = tmp_path / f"m{suffix}"
        assert main(["export", "--checkpoint", str(digits_ckpt), "--format", fmt, "--output", str(out),
                     "--dynamic-batch"]) == 0
        r = evaluate(str(out), batch_size=128, device="cpu", progress=False)  # data: recorded in the file
        assert r["num_images"] == base["num_images"]
        # other kernels (BN folded into conv, ONNX Runtime) may at most flip one near-tie image
        assert r["top1"] == pytest.approx(base["top1"], abs=100 / r["num_images"] + 1e-9), fmt
        assert r["format"] == fmt


@pytest.mark.parametrize("model_file", ["checkpoint", "onnx"])
def test_preprocess_infer_metric_reproduces_eval_top1(digits_ckpt, digits_data, tmp_path, model_file):
    path = str(digits_ckpt)
    if model_file == "onnx":
        path = str(tmp_path / "m.onnx")
        export_model(digits_ckpt, "onnx", path, dynamic_batch=True)
    eval_json = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", path, "--data", str(digits_data), "--json", str(eval_json),
                 "--no-progress"]) == 0
    prep, dump, result = tmp_path / "prep", tmp_path / "dump", tmp_path / "result.json"
    assert main(["preprocess", "--data", str(digits_data), "--checkpoint", path, "--output", str(prep),
                 "--no-progress"]) == 0
    rows = (prep / "info.tsv").read_text().splitlines()
    assert rows[0] == "file\tlabel\tshape\tsource" and len(rows) - 1 == json.loads(eval_json.read_text())["num_images"]
    first = rows[1].split("\t")
    assert first[2] == "3,32,32" and (prep / first[0]).stat().st_size == 3 * 32 * 32 * 4
    # the same batches as eval (its default 128), so even batch-dependent kernels see identical input
    assert main(["infer", "--model", path, "--input", str(prep), "--output", str(dump), "--batch-size", "128",
                 "--no-progress"]) == 0
    assert main(["metric", "--pred", str(dump), "--labels", str(prep / "info.tsv"), "--output", str(result)]) == 0
    ours, theirs = json.loads(result.read_text()), json.loads(eval_json.read_text())
    assert ours["num_images"] == theirs["num_images"]
    assert ours["top1"] == theirs["top1"]  # exactly: same pixels, same model
    assert ours["top5"] == theirs["top5"]


def test_metric_matches_hand_computed_values(tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    # 4 images, 3 classes: a top-1 hit, a top-2 hit, a top-3 hit, a top-1 hit (as .bin and .txt too)
    np.save(dump / "a.npy", np.array([3.0, 1.0, 0.0], np.float32))
    np.save(dump / "b.npy", np.array([3.0, 1.0, 0.0], np.float32))
    np.array([0.0, 1.0, 3.0], np.float32).tofile(dump / "c.bin")
    (dump / "d.txt").write_text("0.1 0.9 0.2\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("a.JPEG 0\nb.JPEG 1\nc.JPEG 0\nd.JPEG 1\ne.JPEG 2\n")
    assert main(["metric", "--pred", str(dump), "--labels", str(labels), "--output", str(tmp_path / "r.json"),
                 "--topk", "3"]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert (r["top1"], r["top2"], r["top3"]) == (50.0, 75.0, 100.0)
    assert r["num_images"] == 4 and r["missing"] == 1


def write_bad_files(root: Path, good: Image.Image) -> dict[str, Path]:
    files = {}
    files["truncated"] = root / "truncated.jpg"
    good.resize((64, 64)).save(root / "full.jpg", quality=95)
    data = (root / "full.jpg").read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["text"] = root / "notes.jpg"
    files["text"].write_text("this is not an image\n")

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    files["bomb"] = root / "huge.png"  # a valid PNG header claiming 20000x20000 RGB
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    files["bomb"].write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                              + chunk(b"IEND", b""))
    return files


def test_predict_names_bad_files_and_answers_the_rest(digits_ckpt, digits_data, tmp_path, capsys):
    src = Image.open(sorted((digits_data / "val" / "7").glob("*.png"))[0]).convert("RGB").resize((32, 32))
    good = {
        "rgb.png": src, "rgb.jpg": src, "gray.png": src.convert("L"), "cmyk.jpg": src.convert("CMYK"),
        "alpha.png": src.convert("RGBA"), "photo.webp": src,
    }
    for name, img in good.items():
        img.save(tmp_path / name)
    bad = write_bad_files(tmp_path, src)
    paths = [str(tmp_path / n) for n in good] + [str(p) for p in bad.values()]
    paths.insert(2, str(bad["text"]))  # a bad file in the middle of a batch
    out = tmp_path / "pred.json"
    code = main(["predict", *paths, "--checkpoint", str(digits_ckpt), "--topk", "3", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 1  # some files failed
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("visionzoo predict: error: ")]
    assert len(errors) == 4  # one line per bad file (the text file is given twice)
    for kind, path in bad.items():
        assert any(str(path) in line for line in errors), kind
    assert "DecompressionBombError" in next(e for e in errors if "huge.png" in e)
    preds = json.loads(out.read_text())["predictions"]
    assert [p["file"] for p in preds] == paths
    answered = {Path(p["file"]).name: p for p in preds if p["error"] is None}
    assert set(answered) == set(good)
    for p in answered.values():
        assert len(p["top"]) == 3 and sum(t["prob"] for t in p["top"]) <= 1 + 1e-6
        assert p["top"][0]["prob"] > 1 / 10  # better than a uniform guess over the 10 digits
        assert p["top"][0]["prob"] >= p["top"][1]["prob"]
    # the digit is grey, so lossless grayscale and opaque RGBA files decode to the RGB original's pixels
    for name in ("gray.png", "alpha.png"):
        assert [t["index"] for t in answered[name]["top"]] == [t["index"] for t in answered["rgb.png"]["top"]]
        expected = [t["prob"] for t in answered["rgb.png"]["top"]]
        assert [t["prob"] for t in answered[name]["top"]] == pytest.approx(expected)
    for name in good:
        assert f"{tmp_path / name}:" in captured.out


def test_quantize_pt2e_int8_keeps_accuracy(digits_ckpt, digits_data, tmp_path):
    out, report = tmp_path / "int8.pt2", tmp_path / "q.json"
    assert main(["quantize", "--checkpoint", str(digits_ckpt), "--data", str(digits_data), "--output", str(out),
                 "--calib-batches", "3", "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["calib_batches"] == 3 and r["calib_images"] == 96
    assert r["original"]["num_images"] == r["quantized"]["num_images"] == 355
    assert r["quantized"]["top1"] >= r["original"]["top1"] - 2.0
    runner = load_runner(out)
    assert runner.info.quantized == "int8"
    # the program really is quantised: it holds int8 weights
    graph_ops = {str(n.target) for n in runner.fn.graph.nodes if n.op == "call_function"}
    assert any("dequantize_per_channel" in op for op in graph_ops)


@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_quantize_onnx(digits_ckpt, digits_data, tmp_path, dtype):
    import onnx

    fp32 = tmp_path / "m.onnx"
    export_model(digits_ckpt, "onnx", fp32, dynamic_batch=True)
    out, report = tmp_path / f"{dtype}.onnx", tmp_path / "q.json"
    assert main(["quantize", "--checkpoint", str(fp32), "--data", str(digits_data), "--output", str(out),
                 "--dtype", dtype, "--calib-batches", "2", "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["quantized"]["top1"] >= r["original"]["top1"] - 2.0
    proto = onnx.load(str(out))
    zero_points = [init for init in proto.graph.initializer if init.name.endswith("zero_point")]
    # activations and weights in the asked type; biases are int32 in both
    want = {onnx.TensorProto.INT16} if dtype == "int16" else {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    types = {z.data_type for z in zero_points}
    assert want & types and types <= want | {onnx.TensorProto.INT32}
    assert load_runner(out).info.quantized == dtype


def test_pt2e_refuses_int16_with_a_reason(digits_ckpt, digits_data, tmp_path, capsys):
    assert main(["quantize", "--checkpoint", str(digits_ckpt), "--data", str(digits_data), "--output",
                 str(tmp_path / "x.pt2"), "--dtype", "int16"]) == 2
    assert "int8 kernels only" in capsys.readouterr().err


def test_bench_table_files_and_unavailable_backends(tmp_path, capsys):
    js, cs, png = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.png"
    assert main(["bench", "--model", "resnet18", "--num-classes", "4", "--img-size", "32", "--batch-sizes", "1,3",
                 "--backend", "eager,onnxruntime,tensorrt", "--precision", "fp32,fp16", "--warmup", "1",
                 "--iters", "3", "--device", "cpu", "--json", str(js), "--csv", str(cs), "--plot", str(png)]) == 0
    rows = json.loads(js.read_text())["rows"]
    assert len(rows) == 3 * 2 * 2
    by = {(r["backend"], r["precision"], r["batch_size"]): r for r in rows}
    for key in [("eager", "fp32", 1), ("eager", "fp32", 3), ("onnxruntime", "fp32", 3), ("eager", "fp16", 3)]:
        r = by[key]
        assert r["status"] == "ok" and r["images_per_s"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["peak_mem_mb"] > 0
    assert by[("tensorrt", "fp32", 1)]["status"].startswith("unavailable: TensorRT needs a CUDA device")
    assert by[("onnxruntime", "fp16", 1)]["status"].startswith("unavailable")
    for group in [("eager", "fp32"), ("onnxruntime", "fp32")]:
        best = [r for r in rows if (r["backend"], r["precision"]) == group and r["best"]]
        assert len(best) == 1
        in_group = [r["images_per_s"] for r in rows if (r["backend"], r["precision"]) == group]
        assert best[0]["images_per_s"] == max(in_group)
    assert len(list(csv.DictReader(cs.open()))) == len(rows)
    assert png.stat().st_size > 10_000
    assert "best batch for eager fp32" in capsys.readouterr().out


def test_bench_train_mode_and_exported_file(tmp_path):
    ckpt, _ = save_ckpt(tmp_path / "r18.pth", "resnet18")
    export_model(ckpt, "onnx", tmp_path / "m.onnx", dynamic_batch=True)
    js = tmp_path / "b.json"
    assert main(["bench", "--checkpoint", str(ckpt), "--batch-sizes", "2", "--mode", "train", "--warmup", "1",
                 "--iters", "2", "--device", "cpu", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["rows"][0]["status"] == "ok"
    assert main(["bench", "--checkpoint", str(tmp_path / "m.onnx"), "--backend", "onnxruntime,eager",
                 "--batch-sizes", "2", "--warmup", "1", "--iters", "2", "--device", "cpu", "--json", str(js)]) == 0
    rows = json.loads(js.read_text())["rows"]
    assert rows[0]["status"] == "ok" and rows[1]["status"].startswith("unavailable: an ONNX file")


def test_preprocess_without_a_model_uses_imagenet_preprocessing(tiny_imagefolder, tmp_path):
    prep = tmp_path / "prep"
    assert main(["preprocess", "--data", str(tiny_imagefolder), "--output", str(prep), "--img-size", "24",
                 "--no-progress"]) == 0
    meta = json.loads((prep / "preprocess.json").read_text())
    assert meta["classes"] == ["circle", "square", "triangle"] and meta["mean"] == [0.485, 0.456, 0.406]
    rows = (prep / "info.tsv").read_text().splitlines()[1:]
    assert len(rows) == 12 and {r.split("\t")[1] for r in rows} == {"0", "1", "2"}
    name, label, shape, source = rows[0].split("\t")
    assert shape == "3,24,24" and name.startswith("circle/") and Path(source).parent.name == "circle"
    x = np.fromfile(prep / name, dtype="<f4")
    assert x.size == 3 * 24 * 24 and -3 < x.min() < x.max() < 3  # normalised, not 0..255
    assert main(["preprocess", "--data", str(tiny_imagefolder), "--output", str(prep)]) == 2  # never overwritten


@pytest.mark.parametrize("suffix", [".onnx", ".pt2", ".ts", ".safetensors", ".pth"])
def test_corrupt_model_file_is_a_one_line_error(tmp_path, capsys, suffix):
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(b"definitely not a model" * 10)
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    assert main(["predict", str(img), "--checkpoint", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "Traceback" not in err[0]


def test_pt2_with_pickled_code_is_refused(tmp_path):
    import zipfile

    from visionzoo.core.errors import ModelFileError

    ckpt, _ = save_ckpt(tmp_path / "r18.pth", "resnet18")
    good = tmp_path / "m.pt2"
    export_model(ckpt, "export", good, dynamic_batch=True)
    # replace the sample inputs with a pickle that would call os.system when unpickled
    evil = tmp_path / "evil.pt2"

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if "/data/sample_inputs/" in item.filename:
                import io

                buf = io.BytesIO()
                torch.save({"x": Boom()}, buf)
                data = buf.getvalue()
            dst.writestr(item, data)
    with pytest.raises(ModelFileError, match="not plain tensors"):
        load_runner(evil)
    load_runner(good)  # the untouched file loads


def test_bench_refuses_to_fake_int8_or_batch_sizes(tmp_path):
    ckpt, _ = save_ckpt(tmp_path / "r18.pth", "resnet18")
    export_model(ckpt, "onnx", tmp_path / "b2.onnx", batch_size=2)
    js = tmp_path / "b.json"
    assert main(["bench", "--checkpoint", str(tmp_path / "b2.onnx"), "--backend", "onnxruntime",
                 "--precision", "fp32,int8", "--batch-sizes", "2,4", "--warmup", "0", "--iters", "2",
                 "--device", "cpu", "--json", str(js)]) == 0
    rows = {(r["precision"], r["batch_size"]): r["status"] for r in json.loads(js.read_text())["rows"]}
    assert rows[("fp32", 2)] == "ok"
    assert rows[("fp32", 4)] == "unavailable: the ONNX file has a fixed batch size of 2"
    assert rows[("int8", 2)].startswith("unavailable: the onnx file is not quantised")
