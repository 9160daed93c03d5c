"""Config layering (defaults < recipe < mode < --config YAML < flags), validation, lr rules, CLI listings."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

from visionzoo.cli import main
from visionzoo.config import (
    ConfigError,
    OptimConfig,
    SchedConfig,
    TrainConfig,
    apply_overrides,
    field_index,
    from_dict,
    save_yaml,
    to_dict,
)
from visionzoo.config.recipes import _parse, get_recipe, list_recipes
from visionzoo.engine.optim import build_scheduler, effective_lr, lr_factor
from visionzoo.models import list_models

RECIPES = list_recipes()
RECIPE_MODES = [(name, mode) for name in RECIPES for mode in get_recipe(name).modes]


def print_config(capsys, *argv: str) -> dict:
    assert main(["train", *argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def fails(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a user error (exit code 2); return stderr."""
    assert main(argv) == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# layering


def test_print_config_recipe_mode_and_flag(capsys):
    cfg = print_config(capsys, "--recipe", "resnet50", "--mode", "perf", "--batch-size", "64")
    assert cfg["batch_size"] == 64  # flag
    assert cfg["iters"] == 200 and cfg["epochs"] == 1 and cfg["eval_every"] == 0  # mode
    assert cfg["optim"]["lr_base"] == 0.1 and cfg["model"]["model"] == "resnet50"  # recipe
    assert cfg["optim"]["lr"] is None and cfg["seed"] == 0  # defaults
    assert (cfg["recipe"], cfg["mode"]) == ("resnet50", "perf")
    assert from_dict(cfg) == apply_overrides(get_recipe("resnet50").resolve("perf"), {"batch_size": 64}, "t")


def test_defaults_without_recipe(capsys):
    cfg = print_config(capsys)
    assert cfg == to_dict(TrainConfig())
    assert cfg["epochs"] == 90 and cfg["iters"] is None and cfg["recipe"] is None
    assert cfg["model"]["model"] == "resnet18" and cfg["optim"]["lr_base"] == 0.1


def test_recipe_default_mode_and_recipe_over_defaults(capsys):
    cfg = print_config(capsys, "--recipe", "resnet18")
    assert cfg["mode"] == "full"
    assert cfg["optim"]["lr_base"] == 0.2  # recipe beats the 0.1 default
    assert cfg["epochs"] == 150 and cfg["iters"] is None
    se = get_recipe("se_resnext50_32x4d")
    assert se.resolve("full").precision == "bf16" and se.resolve("full").model.channels_last is True
    assert se.resolve("fp32").precision == "fp32"  # a mode can override a recipe value
    assert se.resolve("perf").iters == 1000


def test_full_layering_order(tmp_path, capsys):
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"epochs": 7, "batch_size": 32, "optim": {"lr": 0.3}, "sched": "cosine",
                                    "data": {"scale": [0.5, 1.0]}, "model": "resnet18"}))
    cfg = print_config(capsys, "--recipe", "resnet50", "--mode", "perf", "--config", str(user),
                       "-b", "64", "--weight-decay", "5e-5")
    assert cfg["epochs"] == 7  # yaml beats mode (1) and recipe (100)
    assert cfg["batch_size"] == 64  # flag beats yaml
    assert cfg["optim"]["lr"] == 0.3 and cfg["optim"]["weight_decay"] == 5e-5
    assert cfg["sched"]["sched"] == "cosine"  # flat leaf named like its section
    assert cfg["model"]["model"] == "resnet18"
    assert cfg["data"]["scale"] == [0.5, 1.0]
    assert cfg["iters"] == 200  # mode value nobody overrode
    assert cfg["optim"]["momentum"] == 0.9


def test_flag_types_and_aliases(capsys):
    cfg = print_config(
        capsys, "-e", "3", "-j", "0", "--lr", "0.05", "--scale", "0.25,1", "--milestones", "2,4",
        "--channels-last", "--no-progress", "--amp", "bf16", "--clip-grad", "none", "--data", "/x",
        "--hflip", "0",
    )
    assert cfg["epochs"] == 3 and cfg["data"]["workers"] == 0
    assert cfg["optim"]["lr"] == 0.05 and cfg["optim"]["clip_grad"] is None
    assert cfg["data"]["scale"] == [0.25, 1.0] and cfg["sched"]["milestones"] == [2, 4]
    assert cfg["model"]["channels_last"] is True and cfg["progress"] is False
    assert cfg["precision"] == "bf16" and cfg["data"]["data"] == "/x" and cfg["data"]["hflip"] == 0.0


def test_saved_config_round_trips(tmp_path, capsys):
    cfg = apply_overrides(get_recipe("demo").resolve(), {"seed": 5, "data": {"data": "builtin:digits"}}, "t")
    path = tmp_path / "config.yaml"
    save_yaml(cfg, path)
    assert from_dict(yaml.safe_load(path.read_text())) == cfg
    assert print_config(capsys, "--config", str(path)) == to_dict(cfg)


def test_apply_overrides_does_not_mutate_input():
    base = TrainConfig()
    new = apply_overrides(base, {"optim": {"lr": 1.0}, "epochs": 2}, "t")
    assert (base.optim.lr, base.epochs) == (None, 90)
    assert (new.optim.lr, new.epochs) == (1.0, 2)


def test_every_field_is_a_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for name in field_index():
        if name not in ("recipe", "mode"):
            assert "--" + name.replace("_", "-") in help_text, name


# ------------------------------------------------------------------------------------------------
# recipes


@pytest.mark.parametrize("name, mode", RECIPE_MODES)
def test_every_recipe_resolves_in_every_mode(name, mode, capsys):
    recipe = get_recipe(name)
    cfg = recipe.resolve(mode)
    assert isinstance(cfg, TrainConfig)
    assert (cfg.recipe, cfg.mode) == (name, mode)
    assert cfg.model.model in list_models(include_timm=True)
    if name in list_models():  # a seed model's recipe is named after it
        assert cfg.model.model == name
    if name in ("resnet50_tv2", "resnet50_rsb_a3", "deit_small_patch16_224", "convnext_tiny", "finetune"):
        source = resources.files("visionzoo.config").joinpath("recipes", f"{name}.yaml").read_text()
        assert source.startswith("# Source:") and ("top-1" in source or "no published" in source)
    assert cfg.epochs > 0 and cfg.batch_size > 0 and cfg.optim.lr_base > 0
    assert recipe.description
    assert from_dict(to_dict(cfg)) == cfg
    assert print_config(capsys, "--recipe", name, "--mode", mode) == to_dict(cfg)


def test_recipe_list_and_modes():
    assert "resnet50" in RECIPES and "demo" in RECIPES and "se_resnext50_32x4d" in RECIPES
    from visionzoo.models.torchvision_models import SEED_MODELS

    assert set(SEED_MODELS) | {"se_resnext50_32x4d", "oltr_stage1", "oltr_stage2", "fixres_resnet50_train",
                               "fixres_resnet50_finetune"} <= set(RECIPES)  # every seed
    assert list(get_recipe("resnet50").modes) == ["full", "full_amp", "perf"]
    assert get_recipe("resnet50").default_mode == "full"


def test_unknown_recipe_and_mode(capsys):
    err = fails(capsys, ["train", "--recipe", "resnet05", "--print-config"])
    assert "unknown recipe 'resnet05'" in err and "resnet50" in err
    err = fails(capsys, ["train", "--recipe", "resnet50", "--mode", "fast", "--print-config"])
    assert "no mode 'fast'" in err and "perf" in err


def test_mode_without_recipe_is_a_user_error(capsys):
    err = fails(capsys, ["train", "--mode", "perf", "--print-config"])
    assert "--mode needs --recipe" in err


def test_broken_recipe_text_is_rejected():
    with pytest.raises(ConfigError, match="unknown top-level keys"):
        _parse("x", "descripton: typo\nconfig: {}\n")
    with pytest.raises(ConfigError, match="epochz") as info:
        _parse("x", "config: {epochz: 3}\nmodes: {full: {}}\n")
    assert "epochs" in str(info.value)
    with pytest.raises(ConfigError, match="mode perf"):
        _parse("x", "config: {epochs: 3}\nmodes: {full: {}, perf: {iters: many}}\n")


# ------------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "content, key, hint",
    [
        ({"epoch": 3}, "epoch", "epochs"),
        ({"optim": {"lr_bse": 0.2}}, "optim.lr_bse", "optim.lr_base"),
        ({"data": {"img_sise": 64}}, "data.img_sise", "data.img_size"),
        ({"sched": {"warmup": 2}}, "sched.warmup", "sched.warmup_steps, sched.warmup_epochs"),
    ],
)
def test_unknown_yaml_key_exits_2_naming_it(tmp_path, capsys, content, key, hint):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(content))
    err = fails(capsys, ["train", "--config", str(path), "--print-config"])
    assert f"unknown config key '{key}'" in err
    assert f"did you mean {hint}" in err
    assert str(path) in err
    assert capsys.readouterr().out == ""


def test_bad_yaml_files(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: abc\n")
    err = fails(capsys, ["train", "--config", str(path), "--print-config"])
    assert "epochs" in err and "'abc'" in err and "int" in err
    path.write_text("- 1\n- 2\n")
    assert "top level must be a mapping" in fails(capsys, ["train", "--config", str(path)])
    path.write_text("optim: 0.1\n")
    assert "section 'optim' must be a mapping" in fails(capsys, ["train", "--config", str(path)])
    path.write_text("epochs: [1\n")
    assert "invalid YAML" in fails(capsys, ["train", "--config", str(path)])
    assert "not found" in fails(capsys, ["train", "--config", str(tmp_path / "absent.yaml")])


def test_bad_choice_is_still_rejected(capsys):
    err = fails(capsys, ["train", "--sched", "cosin", "--print-config"])
    assert "'cosin' is not one of linear, step, multistep, cosine, constant" in err


@pytest.mark.parametrize(
    "argv, flag, detail",
    [
        (["--epochs", "abc"], "--epochs", "as int"),
        (["-e", "1.5"], "--epochs", "as int"),
        (["--lr", "fast"], "--lr", "as float"),
        (["--scale", "0.5,big"], "--scale", "as float"),
        (["--sched", "cosin"], "--sched", "not one of"),
        (["--amp", "fp8"], "--amp", "not one of"),
        (["--interpolation", "lanczos"], "--interpolation", "not one of"),
    ],
)
def test_bad_flag_value_names_the_flag(capsys, argv, flag, detail):
    err = fails(capsys, ["train", *argv, "--print-config"])
    assert f"{flag}:" in err and detail in err
    assert "Traceback" not in err


def test_coercion_of_yaml_values():
    cfg = from_dict({"epochs": 3.0, "deterministic": "yes", "optim": {"lr": 1}, "amp": "null"})
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.deterministic is True and cfg.optim.lr == 1.0 and cfg.precision == "fp32"  # amp: the old key
    with pytest.raises(ConfigError, match="epochs"):
        from_dict({"epochs": 2.5})
    with pytest.raises(ConfigError, match="deterministic"):
        from_dict({"deterministic": "maybe"})
    with pytest.raises(ConfigError, match="batch_size: may not be empty"):
        from_dict({"batch_size": None})
    with pytest.raises(ConfigError, match="epochs"):
        from_dict({"epochs": True})


# ------------------------------------------------------------------------------------------------
# learning rate


def test_effective_lr_scaling():
    assert effective_lr(OptimConfig(lr_base=0.1, lr_base_batch=256), 64) == pytest.approx(0.025)
    assert effective_lr(OptimConfig(lr_base=0.1, lr_base_batch=256), 1024) == pytest.approx(0.4)
    assert effective_lr(OptimConfig(lr_base=0.1, lr_base_batch=256, lr_scale="sqrt"), 1024) == pytest.approx(0.2)
    assert effective_lr(OptimConfig(lr_base=0.1, lr_base_batch=256, lr_scale="none"), 64) == pytest.approx(0.1)
    assert effective_lr(OptimConfig(lr=0.5, lr_base=0.1), 64) == 0.5  # explicit lr wins
    demo = get_recipe("demo").resolve()
    assert effective_lr(demo.optim, demo.batch_size) == pytest.approx(0.05)  # 0.1 @128 -> 64


SPE, EPOCHS = 10, 5  # 50 steps; 1 warm-up epoch = 10 steps


@pytest.mark.parametrize(
    "sched, extra, expected",
    [
        # warm-up 0.1 -> 1 over 10 steps, then linear to 0 at step 50
        ("linear", {}, {0: 0.1, 5: 0.55, 9: 0.91, 10: 1.0, 30: 0.5, 40: 0.25, 50: 0.0}),
        ("linear", {"min_lr_factor": 0.1}, {0: 0.1, 10: 1.0, 30: 0.55, 50: 0.1}),
        ("cosine", {}, {0: 0.1, 5: 0.55, 10: 1.0, 20: 0.5 * (1 + math.cos(math.pi / 4)), 30: 0.5, 50: 0.0}),
        ("cosine", {"min_lr_factor": 0.2}, {30: 0.6, 50: 0.2}),
        ("step", {"step_size": 2}, {5: 0.55, 10: 1.0, 19: 1.0, 20: 0.1, 39: 0.1, 40: 0.01}),
        ("multistep", {"milestones": [2, 4]}, {5: 0.55, 10: 1.0, 19: 1.0, 20: 0.1, 35: 0.1, 40: 0.01, 49: 0.01}),
        ("constant", {}, {0: 0.1, 5: 0.55, 10: 1.0, 49: 1.0}),
    ],
)
def test_lr_factor(sched, extra, expected):
    cfg = SchedConfig(sched=sched, warmup_epochs=1, warmup_start_factor=0.1, **extra)
    for step, value in expected.items():
        assert lr_factor(step, cfg, SPE, EPOCHS) == pytest.approx(value, abs=1e-12), f"step {step}"


def test_lr_factor_without_and_with_fractional_warmup():
    cfg = SchedConfig(sched="linear", warmup_epochs=0)
    assert lr_factor(0, cfg, SPE, EPOCHS) == 1.0
    assert lr_factor(25, cfg, SPE, EPOCHS) == pytest.approx(0.5)
    half = SchedConfig(sched="constant", warmup_epochs=0.5, warmup_start_factor=0.01)  # 5 steps
    assert lr_factor(0, half, SPE, EPOCHS) == pytest.approx(0.01)
    assert lr_factor(4, half, SPE, EPOCHS) == pytest.approx(0.01 + 0.99 * 4 / 5)
    assert lr_factor(5, half, SPE, EPOCHS) == 1.0


def test_scheduler_applies_lr_factor_per_step():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.4)
    cfg = SchedConfig(sched="cosine", warmup_epochs=1, warmup_start_factor=0.1)
    sched = build_scheduler(opt, cfg, SPE, EPOCHS)
    lrs = []
    for _ in range(SPE * EPOCHS):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.04)
    assert lrs[10] == pytest.approx(0.4)
    assert lrs[30] == pytest.approx(0.2)
    assert lrs == pytest.approx([0.4 * lr_factor(s, cfg, SPE, EPOCHS) for s in range(SPE * EPOCHS)])


# ------------------------------------------------------------------------------------------------
# listings


def test_recipes_cli_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in RECIPES:
        assert any(line.split()[0] == name for line in lines if line.strip()), name
    assert "full*" in out and "perf" in out


def test_recipes_cli_shows_one_resolved(capsys):
    assert main(["recipes", "resnet50", "--mode", "perf"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg == to_dict(get_recipe("resnet50").resolve("perf"))
    assert cfg["iters"] == 200
    assert "unknown recipe" in fails(capsys, ["recipes", "nope"])


def test_models_cli_lists_registered_models(capsys):
    assert main(["models"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == list_models()
    assert len(lines) == 16  # 11 seed models, se_resnext50_32x4d, resnet10 and 3 OLTR stage-2 models
    assert "input 224" in lines[0]


def test_models_cli_pattern_and_timm(capsys):
    assert main(["models", "vgg*"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["vgg16", "vgg16_bn", "vgg19"]
    assert main(["models", "--timm", "resnet10*"]) == 0
    names = capsys.readouterr().out.split()
    assert "resnet10t" in names and "resnet101" in names
    assert all(n.startswith("resnet10") for n in names)


def test_readme_recipe_table_commands_resolve():
    """Every `--recipe X --mode Y` command in the README names a recipe mode that exists."""
    import re

    from visionzoo.config.recipes import get_recipe

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    pairs = re.findall(r"visionzoo train --recipe (\S+) --mode (\S+) --data", readme)
    assert len(pairs) >= 25
    for name, mode in pairs:
        get_recipe(name).resolve(mode)
