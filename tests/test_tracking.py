"""train --mlflow: the run as MLflow records it (params, per-epoch and per-step metrics, artifacts, status),
read back from a local file store; and the one-line error without the package."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from visionzoo.cli import main

mlflow = pytest.importorskip("mlflow")  # the test extra installs it (visionzoo[all])


def _train_args(data, out) -> list[str]:
    return ["train", "--data", str(data), "--model", "resnet18", "--img-size", "32", "--batch-size", "16",
            "--epochs", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--log-interval", "1",
            "--mlflow", "--output", str(out)]


@pytest.mark.slow
def test_mlflow_records_the_run(tiny_imagefolder, tmp_path, monkeypatch):
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


def test_mlflow_without_the_package(tiny_imagefolder, tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails as if not installed
    out = tmp_path / "no-mlflow"
    rc = main(_train_args(tiny_imagefolder, out))
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1
    assert err.endswith("--mlflow needs mlflow: pip install 'visionzoo[mlflow]'")
    assert not (out / "metrics.jsonl").exists() and not (out / "last.pth").exists()  # refused before training
