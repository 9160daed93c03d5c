"""What a training run leaves and shows: summary.csv and curves.png in the run folder, a lean best.pth
(inference only) beside last.pth (resume), the progress bar's read-out, top-5 only where it means something."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from visionzoo.cli import main
from visionzoo.engine import step as step_mod
from visionzoo.engine.runlog import RunLog, _epoch_ticks, summary_csv
from visionzoo.engine.step import format_duration, progress_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def _epoch_lines(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "epoch"]


@pytest.fixture(scope="module")
def run(digits_data, tmp_path_factory) -> tuple[Path, str]:
    """A 2-epoch EMA run on the digits (10 classes) with progress on; the epoch bars write to a buffer
    (pytest's stderr is no terminal, where the bars are off)."""
    out = tmp_path_factory.mktemp("reports") / "run"
    buf = io.StringIO()

    def bar(total: int, desc: str, progress: bool) -> tqdm:
        return tqdm(total=total, desc=desc, disable=not progress, leave=True, file=buf, ncols=200,
                    mininterval=0, bar_format=step_mod.BAR_FORMAT, postfix=step_mod.WAITING)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(step_mod, "progress_bar", bar)
        assert main(["train", "--model", "resnet18", "--data", str(digits_data), "--img-size", "16", "--batch-size",
                     "32", "--iters", "4", "--log-interval", "2", "--epochs", "2", "--workers", "0", "--device", "cpu",
                     "--seed", "1", "--ema", "--ema-decay", "0.5", "--output", str(out)]) == 0
    return out, buf.getvalue()


def test_summary_csv_has_one_row_per_epoch_from_the_metrics(run):
    out, _ = run
    rows, records = _rows(out / "summary.csv"), _epoch_lines(out)
    assert list(rows[0]) == ["epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "val_ema_top1",
                             "lr", "epoch_time_s", "images_per_sec"]  # 10 classes and --ema: top-5 and EMA columns
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row, rec in zip(rows, records):
        for col, key in (("train_loss", "train_loss"), ("val_top1", "val_top1"), ("val_ema_top1", "val_ema_top1"),
                         ("lr", "lr"), ("epoch_time_s", "epoch_time"), ("images_per_sec", "images_per_sec")):
            assert float(row[col]) == pytest.approx(rec[key], rel=1e-5), col
    assert not list(out.glob(".*vztmp*"))  # written through a temp file, none left over


def test_curves_png_is_written(run):
    out, _ = run
    data = (out / "curves.png").read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 2 * height > 600  # three panels side by side


def test_best_pth_holds_what_inference_needs_and_last_pth_what_resume_needs(run, digits_data, tmp_path, capsys):
    out, _ = run
    best = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(best)
    assert {"model", "ema", "classes", "config", "img_size", "crop_pct", "interpolation", "model_name"} <= set(best)
    assert best["ema"] is not None and len(best["classes"]) == 10
    assert {"optimizer", "scheduler", "scaler", "rng", "ema"} <= set(last)
    # weights and EMA weights, against those and SGD's momentum buffers (one more copy of the weights)
    assert (out / "best.pth").stat().st_size < 0.75 * (out / "last.pth").stat().st_size
    # the seed's name: the same file as last.pth (linked), not a third copy
    assert os.path.samefile(out / "final_model_checkpoint.pth", out / "last.pth")

    report = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out / "best.pth"), "--json", str(report), "--no-progress"]) == 0
    best_epoch = max(_epoch_lines(out), key=lambda r: r["val_ema_top1"])
    assert json.loads(report.read_text())["top1"] == pytest.approx(best_epoch["val_ema_top1"], abs=1e-6)

    # a checkpoint for inference is no resume point: the error says what to do instead
    capsys.readouterr()
    assert main(["train", "--model", "resnet18", "--data", str(digits_data), "--output", str(tmp_path / "r"),
                 "--resume", str(out / "best.pth"), "--no-progress", "--device", "cpu"]) != 0
    assert "--init-from" in capsys.readouterr().err


def test_the_progress_bar_shows_loss_lr_speed_and_eta(run):
    _, text = run
    frames = text.replace("\r", "\n").splitlines()
    first = next(f for f in frames if f.startswith("epoch 1/2"))
    assert step_mod.WAITING in first  # drawn before the first batch, saying what is slow
    shown = [f for f in frames if "loss " in f]
    assert any(f.startswith("epoch 2/2") for f in shown)
    for key in ("lr ", " img/s", "ETA "):
        assert all(key in f for f in shown), key


def test_progress_text_and_durations():
    assert progress_text(2.28741, 0.013067, 121.46, 14.2) == "loss 2.2874, lr 0.01307, 121 img/s, ETA 0:14"
    assert format_duration(3725) == "1:02:05" and format_duration(59.6) == "1:00" and format_duration(-1) == "0:00"


def _record(epoch: int, val: bool = True) -> dict:
    rec = {"epoch": epoch, "step": 10 * epoch, "train_loss": 1.5 / epoch, "train_top1": 40.0 + epoch,
           "images_per_sec": 100.0, "epoch_time": 3.0, "lr": 0.1 / epoch, "skipped_images": 0}
    if val:
        rec.update(val_top1=50.0 + epoch, val_top5=100.0, val_loss=1.0 / epoch, val_num_images=12)
    return rec


def test_top5_is_left_out_with_5_classes_or_fewer(tmp_path, caplog):
    for classes, shown in ((3, False), (5, False), (6, True)):
        runlog = RunLog(tmp_path / str(classes))
        runlog.num_classes = classes
        with caplog.at_level(logging.INFO, logger="visionzoo"):
            caplog.clear()
            runlog.epoch(_record(1))
        line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1 |"))
        assert ("top-5" in line) == shown, line
        assert ("val_top5" in (tmp_path / str(classes) / "summary.csv").read_text()) == shown
        runlog.close()


def test_summary_csv_leaves_an_epoch_without_evaluation_empty():
    rows = list(csv.DictReader(summary_csv([_record(1, val=False), _record(2)]).splitlines()))
    assert rows[0]["val_top1"] == "" and float(rows[1]["val_top1"]) == 52.0
    assert "val_ema_top1" not in rows[0]  # no EMA: no column
    no_eval = summary_csv([_record(1, val=False)])
    assert no_eval.splitlines()[0] == "epoch,train_loss,train_top1,lr,epoch_time_s,images_per_sec"


def test_summary_csv_is_rewritten_each_epoch(tmp_path):
    runlog = RunLog(tmp_path)
    runlog.epoch(_record(1))
    assert len(_rows(tmp_path / "summary.csv")) == 1
    runlog.epoch(_record(2))
    assert [r["epoch"] for r in _rows(tmp_path / "summary.csv")] == ["1", "2"]
    runlog.close()


def test_without_matplotlib_curves_are_skipped_with_one_line(tmp_path, monkeypatch, caplog):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib... raises ImportError
    runlog = RunLog(tmp_path)
    with caplog.at_level(logging.INFO, logger="visionzoo"):
        runlog.epoch(_record(1))
        runlog.finish({"best_top1": 51.0}, None)
    said = [r.getMessage() for r in caplog.records if "curves.png" in r.getMessage()]
    assert said == ["curves.png skipped: matplotlib is not installed (pip install 'visionzoo[plots]')"]
    assert (tmp_path / "summary.csv").exists() and not (tmp_path / "curves.png").exists()


def test_epoch_ticks_are_measured_integer_epochs():
    assert _epoch_ticks([1, 2, 3]) == [1, 2, 3]
    assert _epoch_ticks(list(range(1, 91))) == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    every5 = list(range(5, 301, 5))
    assert set(_epoch_ticks(every5)) <= set(every5) and len(_epoch_ticks(every5)) <= 12
