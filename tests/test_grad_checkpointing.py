"""Issue 26, `--grad-checkpointing`: the same losses and gradients as without it (timm's set_grad_checkpointing
recomputes the blocks' activations in the backward pass), a one-line error for a model without it, and bench's
train mode running with it. The memory it saves is a benchmark (tools/grad_ckpt_memory.sh, docs/performance.md)."""

from __future__ import annotations

import json

import torch

from visionzoo import create_model
from visionzoo.cli import main

RUN = ["--data", "builtin:digits", "--img-size", "32", "--epochs", "1", "--iters", "3", "--batch-size", "8",
       "--workers", "0", "--device", "cpu", "--seed", "0", "--no-progress", "--log-interval", "1"]


def test_gradients_equal_without_it():
    torch.manual_seed(0)
    model = create_model("test_vit", num_classes=5)
    x, y = torch.randn(4, 3, 160, 160), torch.tensor([0, 1, 2, 3])
    grads = []
    for on in (False, True):
        model.set_grad_checkpointing(on)
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (loss_off, g_off), (loss_on, g_on) = grads
    assert abs(loss_off - loss_on) < 1e-5
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_off, g_on, strict=True))


def _losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["type"] == "train_step"]


def test_a_run_with_it_has_the_same_losses(digits_data, tmp_path, monkeypatch):
    from timm.models.vision_transformer import VisionTransformer

    turned_on = []  # the flag reaches the model (equal losses alone would hold for a flag that did nothing)
    real = VisionTransformer.set_grad_checkpointing
    monkeypatch.setattr(VisionTransformer, "set_grad_checkpointing",
                        lambda self, enable=True: (turned_on.append(enable), real(self, enable))[1])
    for name, extra in (("off", []), ("on", ["--grad-checkpointing"])):
        assert main(["train", "--model", "test_vit", *RUN, "--output", str(tmp_path / name), *extra]) == 0
        assert turned_on == ([True] if extra else [])
    off, on = _losses(tmp_path / "off"), _losses(tmp_path / "on")
    assert len(off) == 3 and all(abs(a - b) < 1e-5 for a, b in zip(off, on, strict=True))
    assert "grad_checkpointing: true" in (tmp_path / "on" / "config.yaml").read_text()


def test_a_model_without_it_is_refused_in_one_line(digits_data, tmp_path, capsys):
    assert main(["train", "--model", "resnet18", *RUN, "--output", str(tmp_path / "r"), "--grad-checkpointing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--grad-checkpointing: resnet18 does not support it" in err[0]


def test_bench_train_mode_runs_with_it(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--model", "test_vit", "--mode", "train", "--batch-sizes", "2", "--img-size", "160",
                 "--warmup", "0", "--iters", "1", "--device", "cpu", "--grad-checkpointing", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["grad_checkpointing"] is True and result["rows"][0]["images_per_s"] > 0
    assert main(["bench", "--model", "test_vit", "--grad-checkpointing", "--device", "cpu"]) == 2
    assert "add --mode train" in capsys.readouterr().err
