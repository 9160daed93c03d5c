"""train --mlflow and --wandb: the run as MLflow records it (params, per-epoch and per-step metrics, artifacts,
status), read back from a local file store, and as W&B records it, read back from an offline run's files; and
the one-line error without either package."""

from __future__ import annotations

import json
import logging
import struct
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from visionzoo.cli import main
from visionzoo.core.errors import ConfigError


def _train_args(data, out) -> list[str]:
    return ["train", "--data", str(data), "--model", "resnet18", "--img-size", "32", "--batch-size", "16",
            "--epochs", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--log-interval", "1",
            "--mlflow", "--output", str(out)]


@pytest.mark.slow
def test_mlflow_records_the_run(tiny_imagefolder, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")  # the test extra installs it (visionzoo[all])
    uri = (tmp_path / "mlruns").as_uri()  # file:///...
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # mlflow 3.x refuses the file store unless asked (it wants a database; mlflow-skinny has no sqlalchemy
    # for sqlite:// URIs); older releases ignore the variable
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "run-mlflow"
    assert main(_train_args(tiny_imagefolder, out)) == 0

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("visionzoo")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == out.name and run.info.status == "FINISHED"

    config = yaml.safe_load((out / "config.yaml").read_text())
    params = run.data.params
    assert params["model.model"] == str(config["model"]["model"]) == "resnet18"
    assert params["optim.lr"] == str(config["optim"]["lr"])
    assert params["epochs"] == "2" and params["mlflow"] == "True"

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["type"] == "epoch"]
    history = client.get_metric_history(run.info.run_id, "val_top1")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
        [(r["epoch"], pytest.approx(r["val_top1"])) for r in epochs]
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    # the log-interval read-outs, at their global steps
    steps = [r for r in lines if r["type"] == "train_step"]
    assert steps
    loss_history = client.get_metric_history(run.info.run_id, "train_step/loss")
    assert sorted(m.step for m in loss_history) == [r["step"] for r in steps]

    summary = json.loads((out / "summary.json").read_text())
    assert run.data.metrics["best_top1"] == pytest.approx(summary["best_top1"])
    assert run.data.metrics["epochs_run"] == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.yaml"} <= artifacts


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_tracker_without_its_package(package, tiny_imagefolder, tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)  # `import <package>` now fails as if not installed
    out = tmp_path / f"no-{package}"
    rc = main([a if a != "--mlflow" else f"--{package}" for a in _train_args(tiny_imagefolder, out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1
    assert err.endswith(f"--{package} needs {package}: pip install 'visionzoo[{package}]'")
    assert not (out / "metrics.jsonl").exists() and not (out / "last.pth").exists()  # refused before training


# --- train --wandb ------------------------------------------------------------------------------------------

def _wandb_records(path: Path) -> list[Any]:
    """The records of an offline run's run-ID.wandb file, as wandb's protobuf Records.

    wandb (0.2x/0.3x) no longer ships a Python reader for the file: its framing is LevelDB's log format (a
    7-byte file header ':W&B', 0xBEE1, version; then 32 KiB blocks of chunks, each with a 7-byte header:
    crc32c, length, type FULL/FIRST/MIDDLE/LAST; a block's tail shorter than a header is padding)."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", raw[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    block, header = 32768, 7
    records, chunks, pos = [], b"", 7
    while pos + header <= len(raw):
        if block - pos % block < header:  # padding at the block's end
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + header])
        if kind == 0:  # zeroed space: the end of what was written
            break
        chunks += raw[pos + header:pos + header + length]
        pos += header + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def _offline_run(out: Path) -> tuple[Path, dict[str, Any]]:
    """The run's offline folder and what its records hold: config, history rows, summary, saved files, exit."""
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1
    found: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "files": set(), "exit": None, "name": None}
    for record in _wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found["name"], found["project"] = record.run.display_name, record.run.project
            found["config"].update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            found["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            found["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                     for i in record.history.item})
        elif kind == "summary":
            found["summary"].update({"/".join(u.nested_key) or u.key: json.loads(u.value_json)
                                     for u in record.summary.update})
        elif kind == "files":
            found["files"].update(f.path for f in record.files.files)
        elif kind == "exit":
            found["exit"] = record.exit.exit_code
    return runs[0], found


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """wandb offline, silent and kept inside tmp_path (its settings, cache and artifacts too): no network."""
    pytest.importorskip("wandb")
    for name in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # were anything to try the network: refused at once
    for name, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                      ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / sub))


def _wandb_args(data, out) -> list[str]:
    return [a if a != "--mlflow" else "--wandb" for a in _train_args(data, out)]


@pytest.mark.slow
def test_wandb_records_the_run(tiny_imagefolder, tmp_path, wandb_offline):
    out = tmp_path / "run-wandb"
    assert main(_wandb_args(tiny_imagefolder, out)) == 0
    folder, run = _offline_run(out)  # no WANDB_DIR: under the run folder
    assert run["name"] == out.name and run["project"] == "visionzoo"
    assert run["exit"] == 0  # finished

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert run["config"]["model"]["model"] == config["model"]["model"] == "resnet18"
    assert run["config"]["optim"]["lr"] == pytest.approx(config["optim"]["lr"])
    assert run["config"]["epochs"] == 2 and run["config"]["wandb"] is True

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["type"] == "epoch"]
    rows = [r for r in run["history"] if "epoch/val_top1" in r]
    assert [(r["epoch"], r["epoch/val_top1"]) for r in rows] == \
        [(e["epoch"], pytest.approx(e["val_top1"])) for e in epochs]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all("epoch/train_loss" in r and "global_step" not in r for r in rows)
    # the log-interval read-outs, at their global steps (W&B's other x-axis)
    steps = [r for r in lines if r["type"] == "train_step"]
    logged = [r for r in run["history"] if "train_step/loss" in r]
    assert steps and [r["global_step"] for r in logged] == [r["step"] for r in steps]
    assert [r["train_step/loss"] for r in logged] == [pytest.approx(r["loss"]) for r in steps]

    summary = json.loads((out / "summary.json").read_text())
    assert run["summary"]["best_top1"] == pytest.approx(summary["best_top1"])
    assert run["summary"]["epochs_run"] == 2
    assert {"summary.json", "config.yaml"} <= run["files"]
    assert json.loads((folder / "files" / "summary.json").read_text()) == summary


class _FakeRun:
    """What WandbTracker uses of a wandb Run; log raises once told to."""

    def __init__(self, **init: Any):
        self.init, self.logged, self.metrics, self.exit_code = init, [], [], None
        self.summary: dict[str, Any] = {}
        self.id, self.dir, self.offline, self.fail = "abc123", "/nowhere", True, False

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.metrics.append((name, step_metric))

    def log(self, values: dict[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("the service went away\nsecond line")
        self.logged.append(values)

    def save(self, *args: Any, **kwargs: Any) -> None:
        pass

    def finish(self, exit_code: int | None = None) -> None:
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch):
    runs: list[_FakeRun] = []

    def init(**kwargs: Any) -> _FakeRun:
        if kwargs.get("project") == "refused":
            raise RuntimeError("No API key configured. Use `wandb login` to log in.")
        runs.append(_FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    for name in ("WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    return runs


def test_wandb_tracker_init_steps_and_end_status(fake_wandb, tmp_path, monkeypatch):
    from visionzoo.engine.tracking_wandb import WandbTracker

    tracker = WandbTracker(tmp_path / "r1")
    tracker.start({"epochs": 2})
    run = fake_wandb[0]
    assert run.init == {"project": "visionzoo", "name": "r1", "config": {"epochs": 2}, "dir": str(tmp_path / "r1"),
                        "reinit": "create_new"}
    # two x-axes, so the steps never have to be one increasing sequence
    assert ("epoch/*", "epoch") in run.metrics and ("train_step/*", "global_step") in run.metrics
    tracker.scalars("train_step", {"loss": 1.5}, 20)
    tracker.epoch({"val_top1": 50.0}, 1)
    tracker.flush()  # the calls are made on the tracking thread
    assert run.logged == [{"global_step": 20, "train_step/loss": 1.5}, {"epoch": 1, "epoch/val_top1": 50.0}]
    tracker.end("KILLED")
    tracker.end("FINISHED")  # a second end is a no-op
    assert run.exit_code == 255

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # wandb's own choice of folder
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    tracker = WandbTracker(tmp_path / "r2")
    tracker.start({})
    assert fake_wandb[1].init["dir"] is None and fake_wandb[1].init["project"] == "mine"
    tracker.end("FAILED")
    assert fake_wandb[1].exit_code == 1


def test_wandb_failing_log_call_warns_once_and_stops(fake_wandb, tmp_path, caplog):
    from visionzoo.engine.tracking_wandb import WandbTracker

    tracker = WandbTracker(tmp_path / "r")
    tracker.start({})
    fake_wandb[0].fail = True
    with caplog.at_level(logging.WARNING, logger="visionzoo"):
        tracker.epoch({"val_top1": 1.0}, 1)
        tracker.epoch({"val_top1": 2.0}, 2)
        tracker.summary({"best_top1": 2.0})
        tracker.end()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["W&B logging stopped (RuntimeError: the service went away); metrics.jsonl has the run's "
                        "numbers"]
    # the run is still finished, here (wandb's exit hook would print a traceback after the command's last line)
    assert fake_wandb[0].summary == {} and fake_wandb[0].exit_code == 0


def test_wandb_run_that_cannot_start_is_one_line(fake_wandb, tmp_path, monkeypatch):
    from visionzoo.engine.tracking_wandb import WandbTracker

    monkeypatch.setenv("WANDB_PROJECT", "refused")
    with pytest.raises(ConfigError) as e:
        WandbTracker(tmp_path / "r").start({})
    # the library names the setting (the command line names its flag, --wandb)
    assert str(e.value) == ("wandb: cannot start a run in project refused: No API key configured. "
                            "Use `wandb login` to log in.")


