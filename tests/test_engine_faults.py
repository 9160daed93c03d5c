"""Faults around the training engine (issue 30): a full disk while saving, a batch of 1 with BatchNorm,
weights that turned non-finite, a tracking server that is down or hangs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from visionzoo.core.errors import ModelFileError
from visionzoo.core.files import atomic_save
from visionzoo.models import Checkpoint


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    OSError(errno.EROFS, "Read-only file system"),
    RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                 "data/0: file write failed"),
])
def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    path = tmp_path / "last.pth"
    Checkpoint(model={"w": torch.ones(3)}, epoch=1).save(path)

    def failing_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(ModelFileError) as info:
        Checkpoint(model={"w": torch.zeros(3)}, epoch=2).save(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "previous last.pth is intact" in message
    monkeypatch.undo()
    assert Checkpoint.load(path).epoch == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # the temp file removed


def test_other_runtime_errors_while_saving_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def failing_save(obj, f, *a, **k):
        raise RuntimeError("cannot pickle this")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="cannot pickle") as info:
        atomic_save({"w": torch.ones(1)}, tmp_path / "x.pth")
    assert not isinstance(info.value, ModelFileError)
    assert list(tmp_path.iterdir()) == []


def _tiny_train(data, out, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "resnet18", "--img-size", "16", "--epochs", "1",
            "--workers", "0", "--device", "cpu", "--no-progress", "--output", str(out), *extra]


def test_batch_of_one_with_batchnorm_is_one_line_naming_the_batch(tiny_imagefolder, tmp_path, capsys):
    from visionzoo.cli import main

    assert main(_tiny_train(tiny_imagefolder, tmp_path / "run", "--batch-size", "1", "--iters", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size 1" in err[0] and "BatchNorm" in err[0], err
    assert "Expected more than 1 value" not in err[0]
    assert not (tmp_path / "run" / "last.pth").exists()


def test_weights_that_turned_non_finite_are_not_saved(tiny_imagefolder, tmp_path, capsys):
    from visionzoo.cli import main

    # the training loss of the only step is read before its update: only the weights show the divergence
    out = tmp_path / "run"
    assert main(_tiny_train(tiny_imagefolder, out, "--batch-size", "8", "--iters", "1", "--lr", "1e300",
                            "--ema")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "NaN or infinite in epoch 1/1" in err[-1] and "--lr" in err[-1], err
    assert not (out / "last.pth").exists() and not (out / "best.pth").exists()


# ------------------------------------------------------------------------------------------------
# MLflow / W&B: a tracking server that is down or hangs


def _mlflow_env(monkeypatch, uri: str) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)


def test_a_tracking_uri_that_never_answers_is_one_line_within_seconds(tiny_imagefolder, tmp_path, monkeypatch,
                                                                       capsys, hanging_mlflow_server):
    import time

    from visionzoo.cli import main

    uri, state = hanging_mlflow_server
    state["create"] = False  # not even the run starts
    _mlflow_env(monkeypatch, uri)
    t = time.monotonic()
    rc = main(_tiny_train(tiny_imagefolder, tmp_path / "run", "--batch-size", "8", "--iters", "1", "--mlflow"))
    took = time.monotonic() - t
    err = capsys.readouterr().err.strip().splitlines()
    # checked once, with START_HTTP's 5 s and no retries (MLflow's own: 120 s a request, 7 retries)
    assert rc == 2 and took < 20, (rc, took, err)
    assert len(err) == 1 and "--mlflow" in err[0] and uri in err[0], err


def test_an_mlflow_run_is_marked_ended_even_when_the_queue_is_stuck(tmp_path, monkeypatch):
    import os
    import threading

    pytest.importorskip("mlflow")
    from visionzoo.engine import tracking

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    hung, marked = threading.Event(), []

    class Client:  # a server that hangs on a logging call, then answers the end status
        def log_batch(self, *args, **kwargs):
            hung.wait(30)

        def set_terminated(self, run_id, status):
            marked.append((run_id, status, os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")))

    tracker = tracking.MlflowTracker(tmp_path / "run")
    tracker._client, tracker.run_id, tracker._calls = Client(), "r1", tracking.CallQueue("MLflow")
    try:
        tracker._call("log_batch", "r1", metrics=[])
        tracker.end("FAILED", wait_s=0.5)
        # marked from the end of the run, with the start's short timeout, not left RUNNING
        assert marked[:1] == [("r1", "FAILED", tracking.START_HTTP["MLFLOW_HTTP_REQUEST_TIMEOUT"])]
    finally:
        hung.set()


@pytest.mark.slow
def test_a_hanging_mlflow_server_costs_training_no_images_per_second(tiny_imagefolder, tmp_path, monkeypatch,
                                                                      hanging_mlflow_server):
    import visionzoo
    from visionzoo.engine import tracking

    uri, _ = hanging_mlflow_server  # the run starts; every call after it hangs
    _mlflow_env(monkeypatch, uri)
    monkeypatch.setattr(tracking, "CLOSE_WAIT_S", 1.0)  # the end's bounded wait, short for the test
    settings = dict(model="resnet18", data=str(tiny_imagefolder), img_size=16, batch_size=8, epochs=1, iters=40,
                    workers=0, device="cpu", progress=False, log_interval=1, eval_every=0)
    rates: dict[bool, list[float]] = {False: [], True: []}
    for i, mlflow in enumerate([False, True, False, True]):  # interleaved: load on the machine hits both alike
        summary = visionzoo.train(**settings, mlflow=mlflow, output=str(tmp_path / f"run{i}"))
        rates[mlflow].append(summary["last"]["images_per_sec"])
    without, with_tracking = max(rates[False]), max(rates[True])
    assert with_tracking >= 0.9 * without, rates


def test_batch_of_one_per_process_under_torchrun_and_frozen_norms():
    from visionzoo.config import TrainConfig
    from visionzoo.core.distributed import DistInfo
    from visionzoo.core.errors import ConfigError
    from visionzoo.engine.scope import apply_train_scope
    from visionzoo.engine.trainer import _refuse_batch_of_one
    from visionzoo.models import create_model

    model = create_model("resnet18", num_classes=3)
    cfg = TrainConfig()
    cfg.batch_size = 2
    with pytest.raises(ConfigError) as info:  # 2 over 2 processes: 1 image each
        _refuse_batch_of_one(cfg, model, apply_train_scope(model, "all"), DistInfo(world_size=2))
    assert "1 image per process over 2 processes" in str(info.value) and "use batch_size=4" in str(info.value)
    # cRT keeps the backbone's norms in eval mode: a batch of 1 trains the linear head fine
    cfg.batch_size = 1
    _refuse_batch_of_one(cfg, model, apply_train_scope(model, "classifier"), DistInfo())


def test_a_full_disk_in_epoch_2_is_one_line_and_keeps_epoch_1(tiny_imagefolder, tmp_path, monkeypatch, capsys):
    from visionzoo.cli import main

    real, writes = torch.save, []

    def save(obj, f, *args, **kwargs):
        writes.append(Path(os.readlink(f"/proc/self/fd/{f.fileno()}")).name)  # a temp file beside the target
        if sum(".last.pth" in w for w in writes) == 2:  # epoch 2's last.pth: the disk is full
            f.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    assert main(_tiny_train(tiny_imagefolder, out, "--batch-size", "8", "--iters", "1", "--epochs", "2")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert str(out / "last.pth") in err[-1] and "previous last.pth is intact" in err[-1], err
    assert "Traceback" not in "\n".join(err)
    monkeypatch.undo()
    assert Checkpoint.load(out / "last.pth").epoch == 1
    assert not [p for p in out.iterdir() if ".vztmp-" in p.name]  # the temp file removed


def test_a_non_finite_val_loss_stops_the_run_before_saving():
    from types import SimpleNamespace

    from visionzoo.core.errors import DivergedError
    from visionzoo.engine.trainer import _check_finite

    model = torch.nn.Linear(2, 2)
    run = SimpleNamespace(model=model, cfg=SimpleNamespace(epochs=3),
                          state=SimpleNamespace(ema=None, optimizer=torch.optim.SGD(model.parameters(), lr=0.5)))
    _check_finite(run, 0, {"val_loss": 0.7, "val_num_images": 4})  # finite: nothing to say
    _check_finite(run, 0, {"val_loss": float("nan"), "val_num_images": 0})  # no val images: no loss to judge
    with pytest.raises(DivergedError, match=r"the val loss \(inf\) turned NaN or infinite in epoch 2/3.*now 0.5"):
        _check_finite(run, 1, {"val_loss": float("inf"), "val_num_images": 4})


def test_workers_from_python_are_capped_at_the_cpu_count(tiny_imagefolder, tmp_path, caplog):
    """The command line caps --workers as it parses it; visionzoo.train(workers=...) and YAML configs are capped by
    the trainer (100000 would be a fork storm), and config.yaml records what ran. Two over the count here: should
    the cap regress, the test starts only two workers too many."""
    import logging

    import yaml

    import visionzoo
    from visionzoo.config.limits import cpu_count

    out, cpus = tmp_path / "run", cpu_count()
    with caplog.at_level(logging.INFO, logger="visionzoo"):
        visionzoo.train(model="resnet10", data=str(tiny_imagefolder), epochs=1, iters=1, img_size=16, batch_size=8,
                        workers=cpus + 2, device="cpu", output=str(out), progress=False)
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["workers"] == cpus
    assert f"workers {cpus + 2} is more than the {cpus} CPUs here" in caplog.text
