"""`--early-stop PATIENCE`: the run stops after PATIENCE evaluations without a better best metric (EMA's top-1
with EMA), says why in summary.json and in one log line, and a resumed run stops at the same epoch as an
unbroken one.

The validation top-1 is scripted per epoch (the real evaluation runs, its top-1 is replaced), so the epoch
the run must stop at is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visionzoo.cli import main
from visionzoo.config import TrainConfig, apply_overrides
from visionzoo.core.errors import ConfigError
from visionzoo.engine import trainer as trainer_mod
from visionzoo.engine.trainer import train
from visionzoo.models import Checkpoint

# epoch -> top-1: the best at epoch 2, then three evaluations without a better one (epoch 4 ties, not better)
PLAIN = {1: 40.0, 2: 60.0, 3: 50.0, 4: 60.0, 5: 55.0, 6: 90.0, 7: 95.0, 8: 96.0}


def cfg(data: Path, out: Path, **over) -> TrainConfig:
    base = {
        "model": {"model": "shufflenet_v2_x0_5"},  # small: these tests are about the epoch loop; its saves are quick
        "data": {"data": str(data), "img_size": 16, "workers": 0},
        "epochs": 8, "batch_size": 8, "iters": 1, "seed": 2, "deterministic": True, "device": "cpu",
        "output": str(out), "progress": False, "log_interval": 1,
    }
    return apply_overrides(apply_overrides(TrainConfig(), base, "test"), over, "test")


@pytest.fixture
def scripted(monkeypatch):
    """Replace the top-1 of each epoch's evaluation: PLAIN for the raw weights, the dict given for EMA's."""
    real = trainer_mod.evaluate_model
    tables = {"plain": PLAIN, "ema": PLAIN}

    def fake(*args, **kwargs):
        result = real(*args, **kwargs)
        desc = kwargs.get("desc", args[7] if len(args) > 7 else "")
        if desc.split()[-1].isdigit():  # "eval 3", "eval EMA 3": an epoch's evaluation
            table = tables["ema" if "EMA" in desc else "plain"]
            result["top1"] = table[int(desc.split()[-1])]
        return result

    monkeypatch.setattr(trainer_mod, "evaluate_model", fake)
    return tables


def epochs_of(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == "epoch"]


def test_early_stop_stops_after_patience_evaluations(tiny_imagefolder, tmp_path, scripted):
    out = tmp_path / "run"
    summary = train(cfg(tiny_imagefolder, out, early_stop=3))
    # best at epoch 2; epochs 3, 4 (a tie is no improvement), 5 without a better one: stop after 5 of 8
    assert summary["epochs_run"] == 5 and summary["epochs"] == 5
    stopped = {"reason": "early_stop", "epoch": 5, "best_epoch": 2, "patience": 3}
    assert summary["stopped"] == stopped
    assert json.loads((out / "summary.json").read_text())["stopped"] == stopped
    rows = epochs_of(out)
    assert [r["evals_since_best"] for r in rows] == [0, 0, 1, 2, 3]
    assert [r["best_epoch"] for r in rows] == [1, 2, 2, 2, 2]
    assert Checkpoint.load(out / "best.pth").epoch == 2 and Checkpoint.load(out / "last.pth").epoch == 5
    lines = [line for line in (out / "train.log").read_text().splitlines() if "early stop" in line]
    assert len(lines) == 1 and "after epoch 5/8" in lines[0] and "3 evaluations" in lines[0]


def test_early_stop_off_and_patience_reached_at_the_last_epoch(tiny_imagefolder, tmp_path, scripted):
    summary = train(cfg(tiny_imagefolder, tmp_path / "off", epochs=6))
    assert summary["epochs_run"] == 6 and "stopped" not in summary
    # patience 3 runs out after epoch 5, the run's last: it ended, it did not stop
    summary = train(cfg(tiny_imagefolder, tmp_path / "end", epochs=5, early_stop=3))
    assert summary["epochs_run"] == 5 and "stopped" not in summary


def test_early_stop_counts_evaluations_not_epochs(tiny_imagefolder, tmp_path, scripted):
    # evaluated at epochs 1, 3, 5, 7 (and 8, the last): 40, 50, 55, 95 -> each one better, no stop
    summary = train(cfg(tiny_imagefolder, tmp_path / "every2", eval_every=2, early_stop=1))
    assert summary["epochs_run"] == 8 and "stopped" not in summary
    rows = epochs_of(tmp_path / "every2")
    assert [r["evals_since_best"] for r in rows] == [0, 0, 0, 0, 0, 0, 0, 0]
    scripted["plain"] = {**PLAIN, 3: 30.0}  # epoch 3's evaluation is worse than epoch 1's: stop there
    summary = train(cfg(tiny_imagefolder, tmp_path / "worse", eval_every=2, early_stop=1))
    assert summary["stopped"] == {"reason": "early_stop", "epoch": 3, "best_epoch": 1, "patience": 1}


def test_early_stop_follows_the_ema_metric_with_ema(tiny_imagefolder, tmp_path, scripted):
    # the raw weights keep improving; the EMA's (what best.pth and inference use) stop improving after epoch 1
    scripted["plain"] = {e: 10.0 * e for e in range(1, 9)}
    scripted["ema"] = {1: 70.0, **{e: 65.0 for e in range(2, 9)}}
    summary = train(cfg(tiny_imagefolder, tmp_path / "ema", early_stop=2, optim={"ema": True}))
    assert summary["stopped"] == {"reason": "early_stop", "epoch": 3, "best_epoch": 1, "patience": 2}


def test_resumed_run_stops_at_the_same_epoch(tiny_imagefolder, tmp_path, scripted, monkeypatch):
    full = train(cfg(tiny_imagefolder, tmp_path / "full", early_stop=3))

    # killed after epoch 4 was saved (two evaluations without a better best so far)
    real_epoch = trainer_mod.RunLog.epoch

    def crash_after_four(self, record, *args):
        real_epoch(self, record, *args)
        if record["epoch"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.RunLog, "epoch", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tiny_imagefolder, tmp_path / "broken", early_stop=3))
    monkeypatch.setattr(trainer_mod.RunLog, "epoch", real_epoch)
    resumed = train(cfg(tiny_imagefolder, tmp_path / "broken", early_stop=3, resume="auto"))
    assert resumed["epochs_run"] == 1 and resumed["stopped"] == full["stopped"]
    keys = ("epoch", "train_loss", "val_top1", "best_top1", "best_epoch", "evals_since_best")
    assert [[r[k] for k in keys] for r in epochs_of(tmp_path / "broken")] == \
        [[r[k] for k in keys] for r in epochs_of(tmp_path / "full")]

    # resuming the stopped run trains nothing more and says again why it stopped
    again = train(cfg(tiny_imagefolder, tmp_path / "broken", early_stop=3, resume="auto"))
    assert again["epochs_run"] == 0 and again["stopped"] == full["stopped"]
    # with more patience it goes on, counting from where it was: 4 without a better one after epoch 5, until 6
    more = train(cfg(tiny_imagefolder, tmp_path / "broken", early_stop=4, resume="auto"))
    assert more["epochs_run"] == 3 and "stopped" not in more  # epoch 6 improved; 7, 8 too


def test_negative_early_stop_is_refused(tiny_imagefolder, tmp_path, capsys):
    with pytest.raises(ConfigError, match="early_stop"):
        train(cfg(tiny_imagefolder, tmp_path / "a", early_stop=-1))
    assert main(["train", "--data", str(tiny_imagefolder), "--early-stop", "-3", "--output", str(tmp_path / "b"),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "early_stop" in err[0] and ">= 0" in err[0]
    assert not (tmp_path / "b").exists()
