"""Issue 24, hardening round 3: the command line and inference findings, each with the case that showed it."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest
from torchvision.datasets.folder import IMG_EXTENSIONS

from visionzoo.cli import main
from visionzoo.core.errors import DataError

# ------------------------------------------------------------------------------------------------
# 1. a checkpoint whose config records a relative data path, evaluated from another folder


def _relative_run(tiny_ckpt: Path, project: Path, data: str = "shapes", output: str = "runs/x") -> Path:
    """tiny_ckpt as if trained in `project` with `--data shapes --output runs/x` (relative paths, as users type
    them): the checkpoint at project/runs/x/best.pth, its config recording the paths."""
    from visionzoo.models.checkpoint import Checkpoint

    ckpt = Checkpoint.load(tiny_ckpt)
    config = dict(ckpt.config or {})
    config["data"] = {**config["data"], "data": data}
    config["output"] = output
    ckpt.config = config
    path = project / "runs" / "x" / "best.pth"
    path.parent.mkdir(parents=True)
    ckpt.save(path)
    return path


def test_eval_finds_the_relative_data_where_training_ran(tiny_ckpt, tiny_imagefolder, tmp_path, monkeypatch,
                                                         capsys):
    project = tmp_path / "project"
    path = _relative_run(tiny_ckpt, project)
    (project / "shapes").symlink_to(tiny_imagefolder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", "--checkpoint", str(path), "--no-progress"]) == 0
    assert "images 12" in capsys.readouterr().out
    # relative to the run folder itself also works (a run folder moved with its data inside)
    moved = _relative_run(tiny_ckpt, tmp_path / "moved", output="/somewhere/else")
    (moved.parent / "shapes").symlink_to(tiny_imagefolder)
    assert main(["eval", "--checkpoint", str(moved), "--no-progress"]) == 0


def test_eval_says_to_pass_data_when_the_relative_data_is_gone(tiny_ckpt, tmp_path, monkeypatch, capsys):
    path = _relative_run(tiny_ckpt, tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == (f"visionzoo eval: error: {path} records its data as 'shapes' (relative to where it was trained), "
                   "not found from here: pass --data DIR\n")
    # the library names the field
    from visionzoo import evaluate

    with pytest.raises(DataError, match=r"records its data as 'shapes' .* pass data=DIR$"):
        evaluate(str(path), device="cpu", progress=False)


# ------------------------------------------------------------------------------------------------
# 2. predict takes a folder


def test_predict_takes_a_folder_recursively(tiny_ckpt, tiny_imagefolder, tmp_path, capsys):
    val = tiny_imagefolder / "val"
    images = sorted(p for p in val.rglob("*") if p.is_file())
    (tmp_path / "empty").mkdir()
    report = tmp_path / "preds.json"
    assert main(["predict", str(val), str(tmp_path / "empty"), "--checkpoint", str(tiny_ckpt), "--device", "cpu",
                 "--topk", "2", "--json", str(report)]) == 1  # the empty folder is a failed input
    captured = capsys.readouterr()
    preds = json.loads(report.read_text())["predictions"]
    assert [p["file"] for p in preds] == [*map(str, images), str(tmp_path / "empty")]
    assert all(len(p["top"]) == 2 and p["error"] is None for p in preds[:-1])
    assert [line.split(":")[0] for line in captured.out.splitlines()[:-1]] == list(map(str, images))
    assert captured.err == (f"visionzoo predict: error: {tmp_path / 'empty'}: a folder with no images in it "
                            f"({', '.join(IMG_EXTENSIONS)})\n")


# ------------------------------------------------------------------------------------------------
# 3. an export file name whose extension does not fit the format


def test_export_refuses_an_extension_that_does_not_fit_the_format(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", str(tiny_ckpt), "--format", "onnx", "--output", str(out)]) == 2
    assert capsys.readouterr().err == (f"visionzoo export: error: --output {out}: a .pt2 name does not fit the onnx "
                                       f"format, whose files end in .onnx: use {tmp_path / 'm.onnx'}\n")
    assert main(["export", "--checkpoint", str(tiny_ckpt), "--format", "torchscript", "--output",
                 str(tmp_path / "m")]) == 2
    assert "a name without an extension does not fit the torchscript format, whose files end in .ts or " \
           ".torchscript" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


# ------------------------------------------------------------------------------------------------
# 4. another tool's spelling of a flag gets ours as its did-you-mean


@pytest.mark.parametrize(("argv", "want"), [
    (["train", "--learning-rate", "0.1"], "--lr"),  # difflib alone: nothing close
    (["train", "--model-ema"], "--ema"),
    (["train", "--wd", "0"], "--weight-decay"),  # difflib alone: --wandb, --mode, --seed
    (["train", "--aa", "ra"], "--auto-augment"),
    (["train", "--reprob", "0.2"], "--random-erase"),
    (["train", "--bs", "2"], "--batch-size"),
    (["eval", "--arch", "resnet18"], "--model"),
])
def test_other_tools_flag_spellings_suggest_ours(capsys, argv, want):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visionzoo {argv[0]}: error: unrecognized argument {argv[1]}; did you mean {want}")
    assert err.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# 5. bench --help (and every command's) shows the defaults, as train --help does


def test_bench_help_shows_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    flat = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--batch-sizes N,N,... the batch sizes to time [default: 1,4,8,16,32,64]" in flat
    assert "--warmup N untimed iterations first (and compilation) [default: 10]" in flat
    assert "--iters N timed iterations per batch size [default: 50]" in flat
    assert "--backend NAME,... one or a comma list of eager, compile, torchscript, onnxruntime, tensorrt " \
           "[default: eager]" in flat


def test_every_command_flag_with_a_default_says_it():
    import argparse

    from visionzoo.cli import COMMANDS, build_parser

    parser = build_parser(COMMANDS)
    for name, sub in parser.commands.items():
        for a in sub._actions:
            if (a.option_strings and a.default not in (None, argparse.SUPPRESS) and a.help != argparse.SUPPRESS
                    and not isinstance(a, argparse._StoreFalseAction)):
                assert "[default: " in (a.help or ""), f"visionzoo {name} {a.option_strings[0]}"


# ------------------------------------------------------------------------------------------------
# 6. eval's per-class table has the columns the README lists: accuracy, precision, recall, F1, support


def test_eval_table_has_the_readme_columns(tiny_ckpt, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "per-class table (accuracy, precision, recall, F1, support)" in readme
    assert main(["eval", "--checkpoint", str(tiny_ckpt), "--no-progress", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["class", "accuracy", "precision", "recall", "f1", "support"]
    rows = [line.split() for line in lines[2:5]]
    assert [r[0] for r in rows] == ["circle", "square", "triangle"]
    assert all(r[1] == r[3] for r in rows) and sum(int(r[5]) for r in rows) == 12  # accuracy is recall


# ------------------------------------------------------------------------------------------------
# 7. the base install's demo: the matplotlib note once, at the end, not between the epoch lines


def _without_matplotlib(monkeypatch) -> None:
    """The base install: no matplotlib (every submodule too, so no cached import slips through)."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_demo_holds_back_the_note_training_logs_without_matplotlib(tmp_path, monkeypatch, caplog):
    """The note as training's run log says it (engine.runlog), held back by the demo's filter."""
    from visionzoo.cli.demo import _held_notes
    from visionzoo.engine.runlog import RunLog

    _without_matplotlib(monkeypatch)
    caplog.set_level(logging.INFO, logger="visionzoo")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"type": "epoch", "epoch": 1, "train_loss": 1.0}) + "\n")
    run_log = RunLog(tmp_path)
    try:
        with _held_notes() as held:
            run_log.finish({"epochs_run": 1}, None)
    finally:
        run_log.close()
    assert held.plots_missing
    assert [r.getMessage() for r in caplog.records if "curves.png" in r.getMessage()] == []
    assert "curves.png" not in (tmp_path / "train.log").read_text()


@pytest.mark.slow  # a real demo run: about 15 s on an idle 2-core machine, a minute on a busy one
def test_demo_without_matplotlib_says_so_once_at_the_end(digits_data, tmp_path, monkeypatch, capsys, caplog):
    _without_matplotlib(monkeypatch)
    caplog.set_level(logging.INFO, logger="visionzoo")
    assert main(["demo", "--epochs", "1", "--model", "test_resnet", "--device", "cpu", "--output",
                 str(tmp_path / "demo")]) == 0
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("epoch 1 |") for m in logged)
    assert not [m for m in logged if "visionzoo[plots]" in m or "curves.png skipped" in m]
    out = capsys.readouterr().out.rstrip().splitlines()
    assert out[-1] == "  curves.png (loss, top-1, lr per epoch) was not drawn: pip install 'visionzoo[plots]' draws it"
    assert sum("visionzoo[plots]" in line for line in out) == 1


# ------------------------------------------------------------------------------------------------
# 8. a 1000-class evaluation: no million-number confusion matrix unless asked; metrics from bincounts


def test_a_thousand_class_eval_json_has_no_confusion_matrix_unless_asked(tiny_imagefolder, tmp_path, capsys):
    import torch

    from visionzoo.models import create_model

    weights = tmp_path / "r18_1000.pth"
    torch.manual_seed(0)
    torch.save(create_model("resnet18", num_classes=1000).state_dict(), weights)
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(["circle", "square", "triangle", *(f"c{i}" for i in range(3, 1000))]) + "\n")
    base = ["eval", "--model", "resnet18", "--weights", str(weights), "--classes", str(names), "--data",
            str(tiny_imagefolder), "--img-size", "32", "--device", "cpu", "--no-progress"]
    assert main([*base, "--json", str(tmp_path / "eval.json")]) == 0
    r = json.loads((tmp_path / "eval.json").read_text())
    assert "confusion_matrix" not in r and len(r["per_class"]) == 1000
    assert sum(row["total"] for row in r["per_class"]) == r["num_images"] == 12
    # asked for: the matrix, and the per-class numbers the bincounts gave agree with it
    assert main([*base, "--json", str(tmp_path / "asked.json"), "--confusion", str(tmp_path / "cm")]) == 0
    asked = json.loads((tmp_path / "asked.json").read_text())
    cm = torch.tensor(asked["confusion_matrix"])
    assert cm.shape == (1000, 1000) and cm.sum() == 12
    from visionzoo.inference.reports import per_class_metrics

    for row, want in zip(r["per_class"], per_class_metrics(cm, [row["class"] for row in r["per_class"]])):
        assert (row["precision"], row["recall"], row["f1"]) == \
            (pytest.approx(want["precision"]), pytest.approx(want["recall"]), pytest.approx(want["f1"]))
    assert (tmp_path / "cm.csv").is_file() and "wrote" in capsys.readouterr().out


def test_per_class_metrics_from_counts_need_no_matrix():
    import torch

    from visionzoo.inference.reports import class_counts, confusion_matrix, metrics_from_counts, per_class_metrics

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 1000, (5000,), generator=g)  # -1: open-set images, in no class
    preds = torch.randint(0, 1000, (5000,), generator=g)
    names = [str(i) for i in range(1000)]
    fast = metrics_from_counts(*class_counts(labels, preds, 1000), names)
    assert fast == per_class_metrics(confusion_matrix(labels, preds, 1000), names)


# ------------------------------------------------------------------------------------------------
# 9. one layering (defaults < recipe < mode < config < settings) for the command line and visionzoo.train


def test_cli_and_library_layer_configs_through_one_function(tmp_path, capsys):
    import yaml

    from visionzoo.api import build_config
    from visionzoo.config import ConfigError, layer_config, to_dict

    config = tmp_path / "run.yaml"
    config.write_text("optim: {lr: 0.3}\nepochs: 7\ndata: {img_size: 48}\n")
    want = to_dict(layer_config("demo", "full", str(config), {"epochs": 2, "data": {"img_size": 24}}, "command line"))
    assert (want["recipe"], want["epochs"], want["optim"]["lr"], want["data"]["img_size"]) == ("demo", 2, 0.3, 24)
    assert main(["train", "--recipe", "demo", "--mode", "full", "--config", str(config), "--epochs", "2",
                 "--img-size", "24", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == want
    assert to_dict(build_config(str(config), recipe="demo", mode="full", epochs=2, img_size=24)) == want
    # the same refusal, worded for each caller
    with pytest.raises(ConfigError, match=r"^visionzoo.train: mode='full' needs recipe=NAME$"):
        build_config(mode="full")
    assert main(["train", "--mode", "full", "--print-config"]) == 2
    assert capsys.readouterr().err == "visionzoo train: error: --mode needs --recipe\n"


# ------------------------------------------------------------------------------------------------
# 10. a command's help line is written once (cli.COMMANDS), not again in its module


def test_command_help_lines_have_one_source():
    import importlib

    from visionzoo.cli import COMMANDS, Parser, build_parser

    class Recorder:  # stands in for argparse's subparsers action: what each module passes for its command
        def __init__(self) -> None:
            self.given: dict[str, dict] = {}

        def add_parser(self, name: str, **kwargs):
            self.given[name] = dict(kwargs)
            kwargs.pop("help", None)
            return Parser(prog=f"visionzoo {name}", **kwargs)

    sub = Recorder()
    for name, (module, _) in COMMANDS.items():
        if name != "quantize":  # cli/quantize.py is another change's; its own line is overridden below anyway
            importlib.import_module(f"visionzoo.cli.{module}").add_parser(sub)
    assert {name: "help" in kw for name, kw in sub.given.items()} == {name: False for name in sub.given}
    parser = build_parser(COMMANDS)
    helps = {a.dest: a.help for a in parser._subparsers._group_actions[0]._choices_actions}
    assert helps == {name: line for name, (_, line) in COMMANDS.items()}


# ------------------------------------------------------------------------------------------------
# 11. inference's defaults defined once (inference.defaults), not copied into cli/bench and cli/export


def test_cli_shows_the_inference_defaults_themselves():
    import inspect

    from visionzoo.cli import build_parser
    from visionzoo.inference import defaults
    from visionzoo.inference.export import export_model
    from visionzoo.inference.model_bench import bench
    from visionzoo.inference.predict import predict

    parser = build_parser(["bench", "export", "predict"])

    def flag(command: str, dest: str):
        return next(a for a in parser.commands[command]._actions if a.dest == dest)

    def default(fn, name: str):
        return inspect.signature(fn).parameters[name].default

    # the very objects (`is`: for tuples and floats not true of equal copies; small ints are shared anyway): a
    # change to a default in inference.defaults reaches the help, the flags and the library
    assert flag("bench", "batch_sizes").default is defaults.BENCH_BATCH_SIZES is default(bench, "batch_sizes")
    assert flag("bench", "mode").choices is defaults.BENCH_MODES
    assert flag("bench", "warmup").default is defaults.BENCH_WARMUP is default(bench, "warmup")
    assert flag("bench", "iters").default is defaults.BENCH_ITERS is default(bench, "iters")
    assert flag("export", "opset").default is defaults.DEFAULT_OPSET is default(export_model, "opset")
    assert flag("export", "atol").default is defaults.DEFAULT_ATOL is default(export_model, "atol")
    assert flag("export", "rtol").default is defaults.DEFAULT_RTOL is default(export_model, "rtol")
    assert flag("export", "batch_size").default is defaults.EXPORT_BATCH_SIZE is default(export_model, "batch_size")
    assert flag("export", "format").choices == list(defaults.EXPORT_FORMATS)
    assert parser.commands["predict"].get_default("batch_size") is defaults.PREDICT_BATCH_SIZE \
        is default(predict, "batch_size")


# ------------------------------------------------------------------------------------------------
# 12. the hub folder's files are written through core.files' atomic writes


def test_hub_export_writes_through_core_files(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """A full disk is one line naming the file (not an OSError traceback) and leaves nothing; a written folder
    and its files have the modes plain writes give (what the old hand-written chmods did, kept)."""
    import errno

    import safetensors.torch

    old = os.umask(0o022)
    try:
        assert main(["export", "--checkpoint", str(tiny_ckpt), "--format", "hub", "--output",
                     str(tmp_path / "m-hub")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "m-hub", *(tmp_path / "m-hub").iterdir()]}
    assert modes == {"m-hub": 0o755, "config.json": 0o644, "model.safetensors": 0o644}
    capsys.readouterr()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "out" / "m-hub"
    assert main(["export", "--checkpoint", str(tiny_ckpt), "--format", "hub", "--output", str(out)]) == 1
    assert capsys.readouterr().err == (f"visionzoo export: error: cannot write {out / 'model.safetensors'}: No space "
                                       "left on device; nothing was written\n")
    assert list((tmp_path / "out").iterdir()) == []  # no folder, no temp folder


# ------------------------------------------------------------------------------------------------
# 13. a model fine-tuned from a hub folder records its architecture, not the folder's path


def test_a_run_from_a_hub_folder_records_the_architecture(tiny_ckpt, tiny_imagefolder, tmp_path, capsys):
    import shutil

    from visionzoo.models.checkpoint import Checkpoint

    hub = tmp_path / "r18-hub"
    assert main(["export", "--checkpoint", str(tiny_ckpt), "--format", "hub", "--output", str(hub)]) == 0
    out = tmp_path / "run"
    assert main(["train", "--model", f"local-dir:{hub}", "--pretrained", "--data", str(tiny_imagefolder),
                 "--img-size", "32", "--epochs", "1", "--batch-size", "16", "--workers", "0", "--device", "cpu",
                 "--output", str(out), "--no-progress"]) == 0
    assert Checkpoint.load(out / "best.pth").model_name == "resnet18"
    # the fine-tuned model stands alone: the folder it began from can go, and exports record the name too
    shutil.rmtree(hub)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.pth"), "--no-progress", "--device", "cpu"]) == 0
    assert "images 12" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(out / "best.pth"), "--format", "hub", "--output", str(hub)]) == 0
    assert main(["export", "--model", f"local-dir:{hub}", "--format", "safetensors", "--output",
                 str(tmp_path / "m.safetensors"), "--data", str(tiny_imagefolder)]) == 0
    shutil.rmtree(hub)
    assert main(["eval", "--checkpoint", str(tmp_path / "m.safetensors"), "--no-progress", "--device", "cpu",
                 "--data", str(tiny_imagefolder)]) == 0


def test_a_hub_config_the_architecture_alone_would_not_rebuild_keeps_its_name(tmp_path):
    from visionzoo.models.registry import get_model_cfg

    def folder(name: str, **config) -> str:
        (tmp_path / name).mkdir()
        pcfg = {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                "num_classes": 3, **config.pop("pretrained_cfg", {})}
        (tmp_path / name / "config.json").write_text(json.dumps({"num_classes": 3, **config,
                                                                "pretrained_cfg": pcfg}))
        return f"local-dir:{tmp_path / name}"

    assert get_model_cfg(folder("plain", architecture="resnet18")).architecture == "resnet18"
    assert get_model_cfg(folder("timm", architecture="convnext_atto")).architecture == "convnext_atto"
    # other normalisation than the architecture's (a checkpoint does not record mean/std), constructor
    # arguments, a name visionzoo registers as another model (torchvision's vgg16 is not timm's)
    assert get_model_cfg(folder("mean", architecture="resnet18", pretrained_cfg={"mean": [0.5] * 3})).architecture \
        is None
    assert get_model_cfg(folder("args", architecture="resnet18", model_args={"global_pool": "max"})).architecture \
        is None
    assert get_model_cfg(folder("vgg", architecture="vgg16")).architecture is None


# ------------------------------------------------------------------------------------------------
# 14. ImageNet's class names are unique, the shared ones named by what they are


def test_imagenet_class_names_are_unique_and_readable():
    from visionzoo.inference.model_spec import imagenet_classes

    names = imagenet_classes()
    assert len(names) == len(set(names)) == 1000
    assert (names[134], names[517], names[638], names[639]) == \
        ("crane (bird)", "crane (machine)", "maillot", "maillot (tank suit)")
    assert names[0] == "tench" and not any("(n0" in n or "(n1" in n for n in names)  # no synset ids shown


def test_data_flags_without_a_data_set_refine_the_recorded_one(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """`eval --checkpoint X --workers 0` (or --img-size) still evaluates on the checkpoint's own data, found as
    above, instead of "no data given"."""
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(tiny_ckpt), "--no-progress", "--device", "cpu", "--workers", "0",
                 "--img-size", "48", "--json", "e.json"]) == 0
    r = json.loads((tmp_path / "e.json").read_text())
    assert (r["num_images"], r["img_size"]) == (12, 48)
