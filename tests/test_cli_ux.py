"""A CLI and API that explain themselves: help from the schema, did-you-mean, light --help, quiet pipes,
visionzoo.train(**settings), configs that check their fields."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import visionzoo
from visionzoo.cli import COMMANDS, build_parser, main
from visionzoo.config import (
    SECTIONS,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    default_workers,
    field_index,
    to_dict,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnx", "onnxruntime", "timm", "torchvision", "numpy")


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120, **kwargs)


def usage_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting argparse's usage error (exit 2); return stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def train_parser():
    return build_parser(["train"]).commands["train"]


# ------------------------------------------------------------------------------------------------
# help generated from the schema


def test_every_config_field_has_a_one_line_help():
    for section in (TrainConfig, *(type(getattr(TrainConfig(), s)) for s in SECTIONS)):
        for f in dataclasses.fields(section):
            text = f.metadata.get("help", "")
            assert text.strip() and "\n" not in text, f"{section.__name__}.{f.name}"


def test_every_train_flag_has_help_and_shows_its_default(capsys):
    actions = [a for a in train_parser()._actions if a.option_strings and a.dest != "help"]
    assert len(actions) > 80
    for a in actions:
        assert a.help and "[default: " in a.help, a.option_strings
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # argparse wraps lines
    assert "--lr X absolute learning rate; none: lr_base scaled to the global batch size [default: none]" in flat
    assert "--epochs N, -e N epochs to train [default: 90]" in flat
    assert "--opt sgd|adamw|lamb|lars|rmsprop optimizer [default: sgd]" in flat
    assert "--scale X,X RandomResizedCrop area range (min,max) [default: 0.08,1]" in flat
    assert f"[default: {default_workers()}]" in flat and "[default: on]" in flat  # workers; --progress
    # grouped by section, each flag in its own section's group
    starts = {s: out.index(f"\n{s} options:") for s in (*SECTIONS, "run")}
    assert list(starts) == sorted(starts, key=starts.get)
    assert starts["optim"] < out.index("\n  --lr X") < starts["sched"]
    assert starts["run"] < out.index("\n  --epochs N")


def test_boolean_flags_read_cleanly(capsys):
    flags = {s for a in train_parser()._actions for s in a.option_strings}
    assert {"--no-decay-norm-bias", "--decay-norm-bias", "--progress", "--no-progress", "--ema", "--no-ema"} <= flags
    assert not any(s.startswith("--no-no-") for s in flags)

    def printed(*argv: str) -> dict:
        assert main(["train", *argv, "--print-config"]) == 0
        return yaml.safe_load(capsys.readouterr().out)

    assert printed("--no-decay-norm-bias")["optim"]["no_decay_norm_bias"] is True
    assert printed("--no-decay-norm-bias", "--decay-norm-bias")["optim"]["no_decay_norm_bias"] is False
    cfg = printed("--no-progress", "--channels-last", "--ema")
    assert cfg["progress"] is False and cfg["model"]["channels_last"] is True and cfg["optim"]["ema"] is True
    assert printed("--no-channels-last")["model"]["channels_last"] is False


# ------------------------------------------------------------------------------------------------
# did you mean


def test_misspelt_flag_is_one_line_with_close_matches(capsys):
    err = usage_error(capsys, ["train", "--lr-scheduler", "cosine"])
    assert err.count("\n") == 1
    assert err.startswith("visionzoo train: error: unrecognized argument --lr-scheduler; did you mean --sched")
    err = usage_error(capsys, ["train", "--epoch=3"])
    assert err.startswith("visionzoo train: error: unrecognized argument --epoch; did you mean --epochs")
    err = usage_error(capsys, ["eval", "--checkpoin", "x.pth"])
    assert err == "visionzoo eval: error: unrecognized argument --checkpoin; did you mean --checkpoint?\n"
    err = usage_error(capsys, ["models", "--zzzz"])
    assert err == "visionzoo models: error: unrecognized argument --zzzz; see `visionzoo models --help`\n"


def test_unknown_command_has_close_matches(capsys):
    assert usage_error(capsys, ["trian", "--epochs", "1"]) == \
        "visionzoo: error: unknown command 'trian'; did you mean train?\n"
    assert "did you mean eval?" in usage_error(capsys, ["evl"])
    assert "a command is required: train, eval" in usage_error(capsys, [])


def test_command_table_matches_the_command_modules():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    assert {a.dest: a.help for a in sub._choices_actions} == {name: help for name, (_, help) in COMMANDS.items()}


def test_help_constants_match_what_the_library_runs():
    from visionzoo.inference import defaults, model_bench
    from visionzoo.inference import export as export_lib

    # the names the CLI offers (inference.defaults, torch-free) are what the library has builders for
    assert tuple(model_bench.FORWARD_BUILDERS) == defaults.BENCH_BACKENDS == model_bench.BACKENDS
    assert tuple(export_lib.FORMATS) == defaults.EXPORT_FORMATS


# ------------------------------------------------------------------------------------------------
# --help and argument errors import no torch

# records, for each heavy module, the visionzoo module whose import statement pulled it in
_TRACE = """
import json, sys, traceback
HEAVY = {heavy!r}
culprits = {{}}

class Tracer:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in HEAVY and top not in culprits:
            ours = [f.filename for f in traceback.extract_stack() if "/visionzoo/" in f.filename]
            culprits[top] = ours[-1].split("/src/")[-1] if ours else "outside visionzoo"
        return None

sys.meta_path.insert(0, Tracer())
from visionzoo.cli import main
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit:
        pass
print(json.dumps(culprits))
"""


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_and_usage_errors_import_no_heavy_module(command):
    argvs = [["--help"], ["trian"]] if not command else [[command, "--help"], [command, "--no-such-flag"]]
    r = run_python(_TRACE.format(heavy=HEAVY, argvs=argvs))
    assert r.returncode == 0, r.stderr
    culprits = json.loads(r.stdout.strip().splitlines()[-1])
    assert culprits == {}, f"`visionzoo {command} --help` imports {culprits} (module: importing file)"


# ------------------------------------------------------------------------------------------------
# --workers default, quiet pipes


def test_workers_default_follows_the_cpus_this_process_may_use():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert DataConfig().workers == default_workers() == min(4, cpus)
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    r = run_python("""
        import os
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from visionzoo.config import TrainConfig
        print(TrainConfig().data.workers)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"


def test_output_into_a_closed_pipe_ends_quietly():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write fails with EPIPE
    try:
        r = subprocess.run([sys.executable, "-m", "visionzoo", "recipes"], stdout=write_end, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    finally:
        os.close(write_end)
    assert r.stderr == ""
    assert r.returncode == 141


def test_models_piped_to_head():
    r = subprocess.run(f"'{sys.executable}' -m visionzoo models | head -1", shell=True, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=300)
    assert r.stderr == ""
    assert r.stdout.split()[0] == visionzoo.list_models()[0]
    assert r.stdout.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# the Python API


def test_trainconfig_checks_its_fields_when_built():
    with pytest.raises(ConfigError, match=r"^model: expected a ModelConfig, got str 'resnet18'") as info:
        TrainConfig(model="resnet18")  # type: ignore[arg-type]
    assert "TrainConfig(model=ModelConfig(model=...))" in str(info.value)
    assert "visionzoo.train(model='resnet18')" in str(info.value)
    with pytest.raises(ConfigError, match=r"^optim: expected an OptimConfig"):
        TrainConfig(optim={"lr": 0.1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^opt: 'adam' is not one of sgd, adamw"):
        OptimConfig(opt="adam")
    with pytest.raises(ConfigError, match=r"^num_classes: expected an integer or None, got str '10'"):
        ModelConfig(num_classes="10")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^epochs = 0 is out of range \(>= 1\)"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match=r"^scale: expected a number, got str 'x'"):
        DataConfig(scale=[0.5, "x"])  # type: ignore[list-item]
    # what is fine stays fine, normalised as YAML would give it
    cfg = DataConfig(data=Path("/d"), scale=(0.5, 1), img_size=32)  # type: ignore[arg-type]
    assert cfg.data == "/d" and cfg.scale == [0.5, 1.0] and isinstance(cfg.scale[1], float)
    assert TrainConfig(precision="none").precision == "fp32"  # the old spelling, as from YAML


def test_api_settings_resolve_like_flags_and_name_fields():
    from visionzoo.api import build_config

    cfg = build_config(model="resnet10", data="builtin:digits", epochs=1, img_size=16, lr=0.1, sched="cosine",
                       optim={"momentum": 0.8}, amp="bf16")
    assert (cfg.model.model, cfg.data.data, cfg.epochs, cfg.data.img_size) == ("resnet10", "builtin:digits", 1, 16)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.sched.sched, cfg.precision) == (0.1, 0.8, "cosine", "bf16")
    base = TrainConfig()
    assert build_config(base, epochs=3).epochs == 3 and base.epochs == 90  # the caller's config is not changed
    assert build_config(recipe="demo").recipe == "demo"
    assert build_config(optim=OptimConfig(lr=0.5)).optim.lr == 0.5

    with pytest.raises(ConfigError, match=r"unknown config key 'lrr' \(did you mean lr"):
        build_config(lrr=0.1)
    with pytest.raises(ConfigError, match=r"unknown config key 'img_sise' \(did you mean img_size"):
        visionzoo.train(img_sise=32)  # refused before any training
    with pytest.raises(ConfigError, match="optim.lr: cannot read 'fast' as float") as info:
        build_config(lr="fast")
    assert "--" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^train_scope='classifier' fine-tunes a trained model") as info:
        validate(build_config(train_scope="classifier"))
    assert "--" not in str(info.value)
    with pytest.raises(ConfigError, match=r"does not combine with skip_bad_images \(use decode='fast'\)"):
        validate(build_config(decode="device", skip_bad_images=True))


def test_cli_errors_still_name_flags(capsys, tmp_path):
    assert main(["train", "--train-scope", "classifier", "--data", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--train-scope classifier fine-tunes a trained model: pass --init-from CKPT" in err
    assert main(["train", "--lr", "fast", "--print-config"]) == 2
    assert "--lr: cannot read 'fast' as float" in capsys.readouterr().err


def test_api_trains_with_keyword_settings(digits_data, tmp_path):
    """One epoch of resnet18 on the built-in digits at 16 px, settings from three sections as keywords (the demo
    recipe's milder crop and no flip: digits are centred, and a flipped digit is another one)."""
    out = tmp_path / "run"
    summary = visionzoo.train(model="resnet18", data="builtin:digits", epochs=1, img_size=16, scale=[0.5, 1.0],
                              hflip=0.0, crop_pct=1.0, batch_size=32, lr=0.05, workers=0, device="cpu",
                              output=str(out), progress=False, seed=0)
    assert summary["epochs_run"] == 1 and Path(summary["checkpoint"]).exists()
    assert summary["last"]["val_num_images"] == 355
    assert summary["best_top1"] > 30.0 and summary["last"]["train_top1"] > 20.0  # chance is 10%
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["model"]["model"], saved["data"]["img_size"], saved["optim"]["lr"]) == ("resnet18", 16, 0.05)

    # evaluate and predict return plain results, a data set given as a path
    result = visionzoo.evaluate(summary["checkpoint"], data="builtin:digits", device="cpu", progress=False)
    assert result["num_images"] == 355 and result["top1"] == pytest.approx(summary["best_top1"], abs=0.3)
    assert len(result["confusion_matrix"]) == 10 and sum(map(sum, result["confusion_matrix"])) == 355
    images = sorted((digits_data / "val").rglob("*.png"))[:3]
    preds = visionzoo.predict(summary["checkpoint"], [*images, tmp_path / "missing.png"], topk=2, device="cpu")
    assert [p["file"] for p in preds] == [str(p) for p in [*images, tmp_path / "missing.png"]]
    assert all(len(p["top"]) == 2 and p["error"] is None for p in preds[:3])
    assert preds[3]["top"] == [] and "missing.png" in preds[3]["error"]

    cfg = TrainConfig(model=ModelConfig(model="resnet18"), data=DataConfig(data=str(digits_data), img_size=16,
                                                                           workers=0),
                      epochs=1, iters=2, batch_size=16, eval_every=0, device="cpu", output=str(tmp_path / "cfg"),
                      progress=False)
    before = to_dict(cfg)
    assert visionzoo.train(cfg)["epochs_run"] == 1
    assert to_dict(cfg) == before  # the run worked on a copy
    assert set(field_index()) >= {"lr", "img_size", "output"}


def test_library_layers_name_fields_and_the_cli_names_flags():
    """An error raised below the config layer (here: the data layer's policy choice) names the field in Python
    and the flag when the command line is being served."""
    from visionzoo.config.schema import flag_names
    from visionzoo.core.errors import ConfigError
    from visionzoo.data.transforms import augment_ops

    with pytest.raises(ConfigError, match=r"^auto_augment='bogus': choose ta_wide"):
        augment_ops("bogus")
    with flag_names(), pytest.raises(ConfigError, match=r"^--auto-augment bogus: choose ta_wide"):
        augment_ops("bogus")
