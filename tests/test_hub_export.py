"""`export --format hub`: the Hugging Face hub folder timm reads, `--model local-dir:DIR` reading it back, and
`--push-to-hub` uploading it (to a fake HfApi: no network here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from visionzoo.cli import main
from visionzoo.core.errors import ConfigError
from visionzoo.core.files import atomic_save
from visionzoo.inference.model_spec import spec_or_none
from visionzoo.inference.runtime import load_runner
from visionzoo.models import create_model

CLASSES = ["ant", "bee", "cat", "dog", "eel"]


def randomised(name: str, seed: int) -> torch.nn.Module:
    """A 5-class model with non-trivial BN statistics and a strong head, so logits differ per image and seed."""
    model = create_model(name, num_classes=len(CLASSES))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
    return model.eval()


def save_ckpt(path: Path, name: str) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """A checkpoint with raw and EMA weights (different ones), recording 48 px, bicubic, crop 0.9."""
    raw, ema = randomised(name, 0), randomised(name, 1)
    atomic_save({"model": raw.state_dict(), "ema": {"state_dict": ema.state_dict(), "steps": 10, "updates": 10},
                 "model_name": name, "num_classes": len(CLASSES), "classes": CLASSES, "img_size": 48,
                 "crop_pct": 0.9, "interpolation": "bicubic"}, path)
    return path, raw, ema


def batch(seed: int = 0) -> torch.Tensor:
    """A normalised batch (the input every visionzoo model and timm's take)."""
    return torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


# resnet18: visionzoo's torchvision ResNet as timm's resnet18; resnet10t: a timm-only model, as it is;
# se_resnext50_32x4d: visionzoo's Cadene layout, which is timm's legacy_seresnext50_32x4d
@pytest.mark.parametrize(("name", "architecture"), [("resnet18", "resnet18"), ("resnet10t", "resnet10t"),
                                                    ("se_resnext50_32x4d", "legacy_seresnext50_32x4d")])
def test_hub_folder_loads_in_timm_with_the_checkpoints_logits_and_config(name, architecture, tmp_path, capsys):
    ckpt, raw, ema = save_ckpt(tmp_path / f"{name}.pth", name)
    out = tmp_path / "hub" / name
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hub", "--output", str(out)]) == 0
    assert "check vs eager" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left

    theirs = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
    assert type(theirs).__module__.startswith("timm.")
    x = batch()
    ours = load_runner(ckpt)  # visionzoo's own model: the EMA weights
    with torch.no_grad():
        want, got = ours(x), theirs(x)
        raw_logits = raw(x)
    assert want.std() > 0.1  # not a comparison of near-zero outputs
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, raw_logits, atol=1e-3)  # the EMA weights went out, not the raw ones

    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == architecture
    assert config["num_classes"] == 5 and config["label_names"] == CLASSES
    assert config["num_features"] == theirs.num_features
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 48, 48] and pcfg["crop_pct"] == 0.9 and pcfg["interpolation"] == "bicubic"
    assert pcfg["num_classes"] == 5 and pcfg["crop_mode"] == "center" and pcfg["custom_load"] is False
    # mean/std: the checkpoint's model config's (ImageNet's for these models), as visionzoo evaluates with
    assert pcfg["mean"] == pytest.approx(list(ours.info.mean))
    assert pcfg["std"] == pytest.approx(list(ours.info.std))
    assert not {"url", "hf_hub_id", "file", "test_input_size", "license"} & set(pcfg)  # timm's weights' source
    # timm reads the same preprocessing back
    data = timm.data.resolve_data_config({}, model=theirs)
    assert tuple(data["input_size"]) == (3, 48, 48) and data["crop_pct"] == 0.9 and data["interpolation"] == "bicubic"
    assert theirs.pretrained_cfg["label_names"] == CLASSES


def test_raw_weights_flag_exports_the_trained_weights_and_a_second_export_replaces_the_files(tmp_path):
    ckpt, raw, _ = save_ckpt(tmp_path / "r18.pth", "resnet18")
    out = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hub", "--output", str(out)]) == 0
    (out / "README.md").write_text("kept")
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hub", "--output", str(out),
                 "--raw-weights"]) == 0
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = batch(1)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), raw(x), atol=1e-5, rtol=0)
    assert json.loads((out / "config.json").read_text())["visionzoo"]["weights"] == "raw"
    assert (out / "README.md").read_text() == "kept"  # an existing folder keeps files that are not ours


def test_eval_and_predict_take_the_folder_as_model_local_dir(tiny_ckpt, tiny_imagefolder, tmp_path, capsys):
    out = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(tiny_ckpt), "--format", "hub", "--output", str(out)]) == 0
    results = {}
    for flags in (["--checkpoint", str(tiny_ckpt)], ["--model", f"local-dir:{out}"]):  # no --weights for the folder
        report = tmp_path / f"eval{len(results)}.json"
        assert main(["eval", *flags, "--data", str(tiny_imagefolder), "--device", "cpu", "--no-progress",
                     "--json", str(report)]) == 0
        results[flags[0]] = json.loads(report.read_text())
    ours, theirs = results["--checkpoint"], results["--model"]
    assert theirs["num_images"] == ours["num_images"] == 12
    assert theirs["top1"] == ours["top1"]
    assert theirs["loss"] == pytest.approx(ours["loss"], abs=1e-5)
    # class names from config.json's label_names
    assert [r["class"] for r in theirs["per_class"]] == ["circle", "square", "triangle"]

    image = next((tiny_imagefolder / "val" / "square").iterdir())
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tiny_ckpt), str(image), "--topk", "3", "--device", "cpu"]) == 0
    want = capsys.readouterr().out
    assert main(["predict", "--model", f"local-dir:{out}", str(image), "--topk", "3", "--device", "cpu"]) == 0
    got = capsys.readouterr().out
    assert got == want and got.startswith(f"{image}: ")


def test_an_architecture_timm_lacks_is_a_one_line_error(tmp_path, capsys):
    ckpt, _, _ = save_ckpt(tmp_path / "mnv2.pth", "mobilenet_v2")
    out = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hub", "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "needs an architecture timm has" in err and "mobilenet_v2" in err and "MobileNetV2" in err
    assert not out.exists() and not list(tmp_path.glob(".hub*"))


def test_local_dir_needs_a_config_and_no_weights_flag(tmp_path, capsys):
    # the hub names carry their weights: no --weights/--pretrained needed, --weights refused
    spec = spec_or_none(f"local-dir:{tmp_path}", None, False, None, None, False)
    assert spec is not None and spec.pretrained and spec.label == f"local-dir:{tmp_path}"
    assert spec_or_none("hf-hub:timm/resnet18.a1_in1k", None, False, None, None, False).pretrained
    with pytest.raises(ConfigError, match="carries its own weights"):
        spec_or_none(f"local-dir:{tmp_path}", "w.pth", False, None, None, False)
    with pytest.raises(ConfigError, match="needs its weights"):  # a plain name still needs them
        spec_or_none("resnet18", None, False, None, None, False)

    image = tmp_path / "x.png"
    image.write_bytes(b"")
    assert main(["predict", "--model", f"local-dir:{tmp_path / 'nowhere'}", str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no config.json in" in err and "nowhere" in err


# --- export --push-to-hub: a fake HfApi (the hub cannot be reached from the tests) ------------------------------

class FakeHfApi:
    """What push_hub calls of huggingface_hub.HfApi; records the calls and what the uploaded folder held."""

    calls: list[tuple[str, Any]] = []
    fail: Exception | None = None

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        FakeHfApi.calls.append(("create_repo", (repo_id, kwargs)))
        return f"https://huggingface.co/{repo_id}"  # as HfApi's RepoUrl reads as a str

    def upload_folder(self, *, repo_id: str, folder_path: str, **kwargs: Any) -> None:
        if FakeHfApi.fail is not None:
            raise FakeHfApi.fail
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        FakeHfApi.calls.append(("upload_folder", (repo_id, folder_path, files, kwargs)))


@pytest.fixture
def fake_hub(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "calls", [])
    monkeypatch.setattr(FakeHfApi, "fail", None)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # the login check: a token is there
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # anything that still tried the network would fail at once
    return FakeHfApi.calls


def test_push_to_hub_uploads_the_checked_folder(fake_hub, tmp_path, capsys):
    ckpt, _, _ = save_ckpt(tmp_path / "r18.pth", "resnet18")
    out = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hub", "--output", str(out),
                 "--push-to-hub", "me/r18-test", "--private", "--commit-message", "first weights"]) == 0
    printed = capsys.readouterr().out
    assert "check vs eager" in printed
    assert printed.splitlines()[-1] == (f"pushed {out} to https://huggingface.co/me/r18-test "
                                        "(load it with --model hf-hub:me/r18-test)")
    (kind, (repo_id, created)), (kind2, (repo_id2, folder, files, uploaded)) = fake_hub
    assert (kind, kind2) == ("create_repo", "upload_folder")
    assert repo_id == repo_id2 == "me/r18-test"
    assert created == {"repo_type": "model", "exist_ok": True, "private": True}
    assert folder == str(out) and uploaded == {"repo_type": "model", "commit_message": "first weights"}
    # what went up is the folder export wrote and checked
    assert sorted(files) == ["config.json", "model.safetensors"]
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert json.loads(files["config.json"])["architecture"] == "resnet18"


def test_push_to_hub_defaults_and_a_failed_upload_is_one_line(fake_hub, tmp_path, capsys):
    ckpt, _, _ = save_ckpt(tmp_path / "r18.pth", "resnet18")
    out = tmp_path / "hub"
    FakeHfApi.fail = RuntimeError("401 Client Error: Unauthorized for url\nmore detail")
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hub", "--output", str(out),
                 "--push-to-hub", "r18-test"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--push-to-hub r18-test: upload failed (RuntimeError: 401 Client Error: Unauthorized for url)" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # written, kept
    # no --private: the hub's default visibility; the default commit message
    assert fake_hub[0] == ("create_repo", ("r18-test", {"repo_type": "model", "exist_ok": True, "private": None}))


@pytest.mark.parametrize(("flags", "message"), [
    (["--format", "onnx", "--push-to-hub", "me/x"], "--push-to-hub uploads a hub folder: it needs --format hub, "
                                                    "not --format onnx"),
    (["--format", "hub", "--private"], "--private needs --push-to-hub REPO"),
    (["--format", "hub", "--commit-message", "m"], "--commit-message needs --push-to-hub REPO"),
    (["--format", "hub", "--push-to-hub", "me/bad--name"], "--push-to-hub 'me/bad--name': "),
])
def test_push_to_hub_usage_errors_are_one_line_before_any_work(flags, message, fake_hub, tmp_path, capsys):
    out = tmp_path / "out"
    # the checkpoint is never read: the flags are refused first
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pth"), "--output", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("visionzoo export: error: ") and message in err
    assert not out.exists() and fake_hub == []


def test_push_to_hub_needs_a_login_and_the_package(fake_hub, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # not logged in
    args = ["export", "--checkpoint", str(tmp_path / "missing.pth"), "--format", "hub", "--output",
            str(tmp_path / "out"), "--push-to-hub", "me/x"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("visionzoo export: error: --push-to-hub needs a Hugging Face login: `hf auth login` "
                   "(`huggingface-cli login` before huggingface_hub 1.0) or HF_TOKEN")

    for name in [m for m in sys.modules if m == "huggingface_hub" or m.startswith("huggingface_hub.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` fails: not installed
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err == "visionzoo export: error: --push-to-hub needs huggingface_hub: pip install 'visionzoo[hub]'"
    assert not (tmp_path / "out").exists()
