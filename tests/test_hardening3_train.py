"""Issue 24 (hardening round 3), the training path: small data sets, offline --pretrained, Ctrl-C, failed setups,
skipped images named, the library's own log lines, plurals, resumed summaries, the run's ETA, divergence's exit
status, tracking that never stalls training, and library errors naming config keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from visionzoo.cli import main

COLOURS = ((220, 40, 40), (40, 60, 220), (40, 200, 60))


def write_folder(root: Path, train_per_class: int, val_per_class: int = 2, classes: int = 2, size: int = 20) -> Path:
    """root/{train,val}/c<i>/*.png: flat colour squares with a little per-image shade, one colour per class."""
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                colour = tuple(max(0, v - 3 * (i % 10)) for v in COLOURS[c])
                Image.new("RGB", (size, size), colour).save(folder / f"{i:03d}.png")
    return root


def epoch_rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "epoch"]


@pytest.fixture(scope="module")
def r18_weights(tmp_path_factory) -> Path:
    """A resnet18 state dict (random weights, no network): what --init-from takes for a linear probe."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    return path


BASE = ["--img-size", "32", "--workers", "0", "--device", "cpu", "--no-progress"]


# ------------------------------------------------------------------------------------------------
# 1. small data: the batch adapts so an epoch has steps, said in the first line, recorded in config.yaml


def test_linear_probe_on_sixty_images_adapts_the_batch(tmp_path, r18_weights):
    import yaml

    data = write_folder(tmp_path / "data", 30)
    out = tmp_path / "probe"
    rc = main(["train", "--recipe", "finetune", "--mode", "linear_probe", "--data", str(data), "--model", "resnet18",
               "--init-from", str(r18_weights), "--epochs", "1", *BASE, "--output", str(out)])
    assert rc == 0
    log = (out / "train.log").read_text()
    first = next(line for line in log.splitlines() if " INFO model resnet18 " in line)  # the run's header line
    assert "global batch 8 (was 64: 60 training images)" in first, first
    (row,) = epoch_rows(out)
    assert row["steps"] == 7
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["batch_size"] < 64 and 60 // saved["batch_size"] == row["steps"]
    # the lr follows the batch that ran (the probe's AdamW: lr_base 1e-2 per 256, square-root rule)
    expected = 1e-2 * (saved["batch_size"] / 256) ** 0.5
    assert saved["optim"]["lr"] is None and f"lr {expected:.4g} (0.01 per 256, sqrt scaling to 8)" in first, first


def test_small_batch_resumes_to_the_same_batch(tmp_path):
    data = write_folder(tmp_path / "data", 12)  # 24 images: batch 64 -> 8, 3 steps an epoch
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--model", "resnet18", "--batch-size", "64", *BASE, "--output", str(out)]
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "2", "--resume", "auto"]) == 0
    rows = epoch_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["steps"] == rows[1]["steps"] > 1


def one_line(capsys, allowed: tuple[str, ...] = ()) -> str:
    """The one line of stderr (lines starting with an allowed prefix aside, e.g. torch.hub's "Downloading:")."""
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if line.strip() and not line.startswith(allowed)]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# ------------------------------------------------------------------------------------------------
# 2. --pretrained without a network: one line naming the model and --weights FILE


def test_pretrained_torchvision_model_offline_is_one_line(tmp_path, monkeypatch, capsys):
    import urllib.error

    import torch.hub

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached weights
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    data = write_folder(tmp_path / "data", 4)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--model", "resnet18", "--pretrained", "--epochs", "1", *BASE,
               "--output", str(out)])
    err = one_line(capsys, allowed=("Downloading: ",))  # torch.hub's line before it tries
    assert rc == 1, err
    assert "resnet18" in err and "could not be downloaded" in err and "--weights FILE" in err
    assert "Network is unreachable" in err


# ------------------------------------------------------------------------------------------------
# 3. Ctrl-C: one line saying how to resume, exit status 130, last.pth kept


def mlflow_file_store(tmp_path: Path, monkeypatch) -> list[str]:
    """--mlflow against a local file store (no server), or no flag where mlflow is not installed."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        return []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return ["--mlflow"]


def mlflow_status(tmp_path: Path) -> str:
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("visionzoo").experiment_id])
    return run.info.status


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, monkeypatch, capsys):
    from visionzoo.engine import trainer as trainer_mod

    real = trainer_mod.train_one_epoch
    calls = []

    def interrupted_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", interrupted_in_epoch_two)
    data = write_folder(tmp_path / "data", 8)
    out = tmp_path / "run"
    mlflow = mlflow_file_store(tmp_path, monkeypatch)
    rc = main(["train", "--data", str(data), "--model", "resnet18", "--batch-size", "8", "--epochs", "2", *BASE,
               "--output", str(out), *mlflow])
    err = one_line(capsys)
    assert rc == 130, err
    if mlflow:
        assert mlflow_status(tmp_path) == "KILLED"
    command = f"visionzoo train --config {out / 'config.yaml'} --resume auto"
    assert err.startswith("visionzoo train: interrupted in epoch 2/2;") and err.endswith(command), err
    assert (out / "last.pth").is_file() and len(epoch_rows(out)) == 1
    monkeypatch.setattr(trainer_mod, "train_one_epoch", real)
    assert main(command.split()[1:]) == 0  # the command it names resumes the run
    assert [r["epoch"] for r in epoch_rows(out)] == [1, 2]


# ------------------------------------------------------------------------------------------------
# 4. a failed setup leaves the folder reusable; a finished run leaves no .lock


@pytest.mark.parametrize("made_by", ["run", "user"])
def test_a_failed_setup_leaves_the_output_reusable(tmp_path, made_by, capsys):
    data = write_folder(tmp_path / "data", 4)
    out = tmp_path / "run"
    if made_by == "user":
        out.mkdir()
    args = ["train", "--model", "resnet18", "--epochs", "1", "--batch-size", "8", *BASE, "--output", str(out)]
    assert main([*args, "--data", str(tmp_path / "no-such-data")]) == 1  # fails while reading the data
    assert "no-such-data" in one_line(capsys)
    assert (not out.exists()) if made_by == "run" else list(out.iterdir()) == []
    bad_weights = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad_weights)
    assert main([*args, "--data", str(data), "--init-from", str(bad_weights)]) == 1  # weights that do not fit
    assert "other.pth" in one_line(capsys)
    assert (not out.exists()) if made_by == "run" else list(out.iterdir()) == []
    assert main([*args, "--data", str(data)]) == 0  # the corrected command is not refused
    assert not (out / ".lock").exists()  # nor is a finished run's folder left locked
    if made_by == "user":
        return
    # a resumed run's failed setup removes nothing of the run it resumes
    before = {p.name: p.stat().st_size for p in out.iterdir() if p.name != "train.log"}
    assert main([*args, "--data", str(tmp_path / "missing"), "--epochs", "2", "--resume", "auto"]) == 1
    capsys.readouterr()
    assert {p.name: p.stat().st_size for p in out.iterdir() if p.name != "train.log"} == before
    assert main([*args, "--data", str(data), "--epochs", "2", "--resume", "auto"]) == 0
    assert [r["epoch"] for r in epoch_rows(out)] == [1, 2]


# ------------------------------------------------------------------------------------------------
# 5. --skip-bad-images names what it skipped; the error without it names the flag


def test_skipped_images_are_named_in_the_log_and_metrics(tmp_path):
    data = write_folder(tmp_path / "data", 12)
    bad = sorted((data / "train" / "c0").iterdir())[:12]  # every c0 image: 12 named, more than the 10 warnings
    for p in bad:
        p.write_bytes(b"not an image")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "resnet18", "--batch-size", "8", "--epochs", "2", *BASE,
                 "--skip-bad-images", "--output", str(out)]) == 0
    rows = epoch_rows(out)
    for row in rows:  # every image is read once an epoch, less the few the last partial batch drops
        assert set(row["skipped_files"]) <= {str(p) for p in bad} and row["skipped_images"] >= 8
        assert len(row["skipped_files"]) == row["skipped_images"]
    log = (out / "train.log").read_text()
    named = [line for line in log.splitlines() if "WARNING skipped unreadable image " in line]
    assert len(named) == 10  # once per file in the run, not again each epoch
    assert all(any(str(p) in line for p in bad) for line in named)
    first_seen = set(rows[0]["skipped_files"]) | set(rows[1]["skipped_files"])
    assert f"and {len(first_seen) - 10} more unreadable image" in log


def test_a_bad_image_error_names_the_flag(tmp_path, capsys):
    data = write_folder(tmp_path / "data", 4)
    bad = data / "train" / "c1" / "001.png"
    bad.write_bytes(b"not an image")
    rc = main(["train", "--data", str(data), "--model", "resnet18", "--batch-size", "8", "--epochs", "1", *BASE,
               "--output", str(tmp_path / "run")])
    err = one_line(capsys)
    assert rc == 1 and str(bad) in err
    assert err.endswith("(--skip-bad-images replaces unreadable images and names them)"), err


# ------------------------------------------------------------------------------------------------
# 6. visionzoo.train from a script shows its progress lines, once, whoever configured logging


@pytest.mark.parametrize("setup", ["none", "basicConfig", "cli"])
def test_library_train_shows_its_lines_once(tmp_path, setup):
    import os
    import subprocess
    import sys
    import textwrap

    data = write_folder(tmp_path / "data", 4)
    out = tmp_path / "run"
    if setup == "cli":
        cmd = [sys.executable, "-m", "visionzoo", "train", "--data", str(data), "--model", "resnet18",
               "--batch-size", "8", "--epochs", "1", *BASE, "--output", str(out)]
    else:
        script = textwrap.dedent(f"""
            import logging
            import visionzoo
            if {setup == "basicConfig"}:
                logging.basicConfig(level=logging.INFO, format="caller: %(message)s")
            visionzoo.train(model="resnet18", data={str(data)!r}, epochs=1, img_size=32, batch_size=8, workers=0,
                            device="cpu", progress=False, output={str(out)!r})
        """)
        cmd = [sys.executable, "-c", script]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert sum("model resnet18 (2 classes)" in line for line in lines) == 1, proc.stderr
    assert sum("epoch 1 | loss" in line for line in lines) == 1, proc.stderr
    if setup == "basicConfig":  # the caller's format, not a second handler of ours
        assert all(line.startswith("caller: ") for line in lines if "epoch 1 | loss" in line)


# ------------------------------------------------------------------------------------------------
# 7. counts with the noun in the right number


def test_counts_of_one_read_right(tmp_path):
    from visionzoo.core.errors import DataError
    from visionzoo.data.datasets import image_folder

    data = write_folder(tmp_path / "data", 8, val_per_class=1)
    (data / "val" / "c1" / "000.png").unlink()
    (data / "val" / "c1").rmdir()  # one validation image in all
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "resnet18", "--batch-size", "8", "--epochs", "1",
                 "--iters", "1", *BASE, "--output", str(out)]) == 0
    log = (out / "train.log").read_text()
    assert "| 1 step/epoch x 1 epoch |" in log and "over 1 process," in log and "(1 image)" in log
    with pytest.raises(DataError, match="are not among the 1 training class;"):
        image_folder(data / "train", ["c0"])


# ------------------------------------------------------------------------------------------------
# 8. a resumed run's summary counts the run's epochs


def test_resumed_run_summary_counts_the_runs_epochs(tmp_path, capsys):
    data = write_folder(tmp_path / "data", 4)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--model", "resnet18", "--batch-size", "8", *BASE, "--output", str(out)]
    assert main([*args, "--epochs", "1"]) == 0
    assert "done: 1 epoch, best" in capsys.readouterr().out
    assert main([*args, "--epochs", "3", "--resume", "auto"]) == 0
    assert "done: 3 epochs (2 in this session, resumed at epoch 1), best" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["epochs_run"] == 2 and summary["resumed_at_epoch"] == 1
    assert "3 epochs (2 in this session, resumed at epoch 1) done; results in" in (out / "train.log").read_text()


# ------------------------------------------------------------------------------------------------
# 9. the progress shows the run's ETA beside the epoch's


def test_progress_and_epoch_lines_show_the_runs_eta(tmp_path, monkeypatch):
    import io

    from tqdm import tqdm

    from visionzoo.engine import step as step_mod

    buf = io.StringIO()

    def bar(total: int, desc: str, progress: bool) -> tqdm:  # the bar, drawn into a buffer (no terminal here)
        return tqdm(total=total, desc=desc, disable=not progress, leave=True, file=buf, ncols=200, mininterval=0,
                    bar_format=step_mod.BAR_FORMAT, postfix=step_mod.WAITING)

    monkeypatch.setattr(step_mod, "progress_bar", bar)
    data = write_folder(tmp_path / "data", 16)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "resnet18", "--batch-size", "8", "--epochs", "2",
                 "--iters", "4", "--log-interval", "2", "--img-size", "32", "--workers", "0", "--device", "cpu",
                 "--output", str(out)]) == 0
    frames = [f for f in buf.getvalue().replace("\r", "\n").splitlines() if "loss " in f]
    first, last = [f for f in frames if f.startswith("epoch 1/2")], [f for f in frames if f.startswith("epoch 2/2")]
    assert first and all("ETA " in f and ", run " in f for f in first), first
    assert last and all("ETA " in f and ", run " not in f for f in last), last  # the last epoch's ETA is the run's
    log = [line for line in (out / "train.log").read_text().splitlines() if " INFO epoch " in line]
    assert "| run ETA " in log[0] and "ETA" not in log[1]
    assert step_mod.progress_text(1.0, 0.1, 100.0, 14.2, 151.0) == "loss 1.0000, lr 0.1, 100 img/s, ETA 0:14, run 2:31"


# ------------------------------------------------------------------------------------------------
# 10. a diverged run is a failure (exit 1), not a usage error (2)


def test_a_diverged_run_exits_1_naming_the_lr(tmp_path, monkeypatch, capsys):
    data = write_folder(tmp_path / "data", 8)
    out = tmp_path / "run"
    mlflow = mlflow_file_store(tmp_path, monkeypatch)
    rc = main(["train", "--data", str(data), "--model", "resnet18", "--batch-size", "8", "--epochs", "1",
               "--lr", "1e30", "--log-interval", "1", *BASE, "--output", str(out), *mlflow])
    err = one_line(capsys)
    assert rc == 1, err
    if mlflow:
        assert mlflow_status(tmp_path) == "FAILED"
    assert "diverged" in err and "--lr" in err and "--clip-grad" in err
    assert not (out / "last.pth").exists()  # nothing of the diverged epoch was saved


# ------------------------------------------------------------------------------------------------
# 11. a tracking server that hangs never stalls training; the run ends with a warning naming it


def test_a_hanging_tracking_server_never_stalls_training(tmp_path, monkeypatch, hanging_mlflow_server):
    import threading
    import time

    pytest.importorskip("mlflow")
    from visionzoo.engine import tracking

    uri, state = hanging_mlflow_server
    asked = state["asked"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracking, "CLOSE_WAIT_S", 2.0, raising=False)  # how long the end waits for the server
    spent: list[float] = []  # what handing each read-out to the tracker costs the training loop
    real = tracking.MlflowTracker.metrics

    def timed(self, values, step):
        t = time.perf_counter()
        real(self, values, step)
        spent.append(time.perf_counter() - t)

    monkeypatch.setattr(tracking.MlflowTracker, "metrics", timed)
    data = write_folder(tmp_path / "data", 8)
    out = tmp_path / "run"
    result: dict[str, int] = {}
    args = ["train", "--data", str(data), "--model", "resnet18", "--batch-size", "8", "--epochs", "2",
            "--log-interval", "1", "--mlflow", *BASE, "--output", str(out)]
    worker = threading.Thread(target=lambda: result.setdefault("rc", main(args)), daemon=True)
    worker.start()
    worker.join(120)  # unbounded before: MLflow's client waits 120 s a call, 7 times over
    assert not worker.is_alive(), f"training stalled on the tracking server (it was asked {asked})"
    assert result["rc"] == 0
    assert any("/runs/log-batch" in p for p in asked)
    assert len(spent) >= 4 and sum(spent) < 1.0, spent  # the steps were not held up
    warnings = [line for line in (out / "train.log").read_text().splitlines() if " WARNING MLflow" in line]
    assert warnings and any("did not answer within 2 s" in w or "logging stopped" in w for w in warnings), warnings


# ------------------------------------------------------------------------------------------------
# 12. library errors name config keys; the command line names flags


def test_library_errors_name_settings_not_flags(tmp_path):
    import visionzoo
    from visionzoo.core.errors import ConfigError

    data = write_folder(tmp_path / "data", 4)
    settings = dict(model="resnet18", data=str(data), epochs=1, img_size=32, batch_size=8, workers=0, device="cpu",
                    progress=False)
    with pytest.raises(ConfigError) as e:
        visionzoo.train(**settings, aug_repeats=2, sampler="class_aware", output=str(tmp_path / "a"))
    assert str(e.value).startswith("aug_repeats and sampler (class-aware sampling)") and "--" not in str(e.value)
    out = tmp_path / "b"
    out.mkdir()
    (out / "config.yaml").write_text("from another run\n")
    with pytest.raises(ConfigError) as e:
        visionzoo.train(**settings, output=str(out))
    assert f"output={str(out)!r} already holds a run" in str(e.value) and "resume='auto'" in str(e.value)
    assert "--" not in str(e.value)
