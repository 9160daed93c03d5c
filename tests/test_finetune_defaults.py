"""Fine-tuning defaults (issue 31): the lr rule fits the optimizer, warm-up is counted in steps and never eats a
short run, a fresh head on pretrained weights starts at zero, and the first line says the lr it resolved."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml

from visionzoo.cli import main
from visionzoo.config import ConfigError, OptimConfig, SchedConfig, from_dict, get_recipe, validate
from visionzoo.engine.optim import describe_lr, effective_lr, lr_factor, lr_scale_rule, warmup_steps
from visionzoo.models import create_model, zero_head


@pytest.mark.parametrize(
    "opt, batch, expected",
    [
        # SGD scales linearly (Goyal et al. 2017): 0.1 per 256 -> 0.025 at 64, 0.4 at 1024
        ("sgd", 64, 0.025), ("sgd", 1024, 0.4),
        # AdamW by the square root (timm's --lr-base-scale default): 1e-3 per 256 -> 5e-4 at 64, 2e-3 at 1024
        ("adamw", 64, 5e-4), ("adamw", 1024, 2e-3),
        ("lamb", 64, 5e-4), ("lars", 64, 0.025), ("rmsprop", 64, 0.025),
    ],
)
def test_resolved_lr_fits_the_optimizer(opt, batch, expected):
    base = 0.1 if opt in ("sgd", "lars", "rmsprop") else 1e-3
    cfg = OptimConfig(opt=opt, lr_base=base, lr_base_batch=256)  # lr_scale auto
    assert effective_lr(cfg, batch) == pytest.approx(expected, rel=1e-12)


def test_an_explicit_scale_rule_or_lr_wins_over_auto():
    assert effective_lr(OptimConfig(opt="adamw", lr_base=1e-3, lr_scale="linear"), 64) == pytest.approx(2.5e-4)
    assert effective_lr(OptimConfig(opt="sgd", lr_base=0.1, lr_scale="sqrt"), 64) == pytest.approx(0.05)
    assert effective_lr(OptimConfig(opt="adamw", lr=3e-4), 64) == 3e-4
    assert lr_scale_rule(OptimConfig(opt="adamw", lr_scale="none")) == "none"


def test_the_first_line_says_the_lr_and_its_rule():
    assert describe_lr(OptimConfig(opt="adamw", lr_base=1e-3), 64) == "0.0005 (0.001 per 256, sqrt scaling to 64)"
    assert describe_lr(OptimConfig(opt="sgd", lr_base=0.1), 64) == "0.025 (0.1 per 256, linear scaling to 64)"
    assert describe_lr(OptimConfig(lr=0.01), 64).startswith("0.01 (")


def test_recipes_whose_source_scales_linearly_keep_linear():
    """The DeiT, ConvNeXt and RSB recipes are AdamW/LAMB with a linear rule in their papers' code."""
    for name in ("deit_small_patch16_224", "convnext_tiny", "resnet50_rsb_a3"):
        assert get_recipe(name).resolve().optim.lr_scale == "linear", name
    assert get_recipe("finetune").resolve().optim.lr_scale == "auto"


def test_warmup_in_steps_and_capped_at_a_fifth_of_the_run():
    # 11 steps an epoch, 10 epochs: warmup_steps counts steps whatever the epoch length
    assert warmup_steps(SchedConfig(warmup_steps=10), 11, 10) == (10, 10)
    assert warmup_steps(SchedConfig(warmup_epochs=1), 11, 10) == (11, 11)
    # a 20-step run asked for a 10-step (or 5-epoch) warm-up spends 4 steps on it
    assert warmup_steps(SchedConfig(warmup_steps=10), 2, 10) == (4, 10)
    assert warmup_steps(SchedConfig(warmup_epochs=5), 2, 10) == (4, 10)
    cfg = SchedConfig(sched="constant", warmup_steps=10, warmup_start_factor=0.1)
    assert [round(lr_factor(s, cfg, 2, 10), 6) for s in range(6)] == [0.1, 0.325, 0.55, 0.775, 1.0, 1.0]


def test_warmup_steps_from_yaml_and_its_range():
    assert from_dict({"sched": {"warmup_steps": 50}}).sched.warmup_steps == 50
    with pytest.raises(ConfigError, match="warmup_steps"):
        validate(from_dict({"sched": {"warmup_steps": -1}}))


def test_zero_head_zeroes_every_classifier_and_nothing_else():
    model = create_model("resnet18", num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    zero_head(model)
    after = model.state_dict()
    assert torch.count_nonzero(after["fc.weight"]) == 0 and torch.count_nonzero(after["fc.bias"]) == 0
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fc."))


def _first_lines(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_a_fresh_head_on_local_weights_starts_at_zero_unless_asked(tmp_path, tiny_imagefolder, caplog):
    """ImageNet-sized weights into a 3-class model: the head is left fresh and zeroed (--head-init zero, the
    default), so the first loss is ln 3 exactly; --head-init random keeps the model's own initialisation."""
    weights = tmp_path / "w.pth"
    torch.save(create_model("resnet18", num_classes=1000).state_dict(), weights)
    common = ["train", "--model", "resnet18", "--data", str(tiny_imagefolder), "--img-size", "32", "--epochs", "1",
              "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress", "--iters", "1",
              "--init-from", str(weights), "--opt", "adamw", "--lr", "1e-9", "--log-interval", "1",
              "--eval-every", "0"]
    losses = {}
    for init in ("zero", "random"):
        out = tmp_path / init
        with caplog.at_level(logging.INFO, logger="visionzoo"):
            assert main([*common, "--head-init", init, "--output", str(out)]) == 0
        rows = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"train_step"' in line]
        losses[init] = float(rows[0].split('"loss": ')[1].split(",")[0])
    assert losses["zero"] == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=1e-6)
    assert abs(losses["random"] - losses["zero"]) > 1e-3
    assert "sqrt scaling" not in _first_lines(caplog)  # an explicit --lr says so instead


@pytest.mark.parametrize("images, batch, steps", [(180, 16, 11), (540, 16, 33), (2700, 64, 42)])
def test_min_steps_picks_a_smaller_batch_down_to_16(images, batch, steps, tmp_path):
    """min_steps 30 in one epoch: 540 images go from batch 64 (8 steps) to 16 (33); 180 images stop at 16 (11
    steps: 8 per step lost accuracy when measured); 2700 images keep 64 (42 steps)."""
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--dummy", "--dummy-train-size", str(images), "--img-size", "16",
                 "--epochs", "1", "--min-steps", "30", "--workers", "0", "--device", "cpu", "--no-progress",
                 "--eval-every", "0", "--num-classes", "3", "--output", str(out)]) == 0
    assert from_dict(yaml.safe_load((out / "config.yaml").read_text())).batch_size == batch
    epoch = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line][0]
    assert f'"steps": {steps},' in epoch
