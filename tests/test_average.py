"""`train --keep-last K` (epoch-N.pth, pruned, across a resume) and `visionzoo average`: the uniform mean, the
greedy soup (never below the best single checkpoint on the split it was built on), BatchNorm recomputation, and
the result loading in eval, predict and export like any checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from visionzoo.cli import main
from visionzoo.config import TrainConfig, apply_overrides
from visionzoo.core.errors import ConfigError, ModelFileError
from visionzoo.engine import trainer as trainer_mod
from visionzoo.engine.trainer import train
from visionzoo.inference.average import average, average_state_dicts
from visionzoo.models import Checkpoint

SMALL = {"model": "shufflenet_v2_x0_5"}  # where nothing needs to be learnt: its checkpoints save quickly


def run_cfg(data: Path, out: Path, **over) -> TrainConfig:
    base = {
        "model": {"model": "resnet18"},
        "data": {"data": str(data), "img_size": 16, "workers": 0},
        "epochs": 5, "batch_size": 8, "iters": 2, "seed": 1, "deterministic": True, "device": "cpu",
        "output": str(out), "progress": False, "log_interval": 1,
    }
    return apply_overrides(apply_overrides(TrainConfig(), base, "test"), over, "test")


def snapshots(run: Path) -> list[str]:
    return sorted((p.name for p in run.glob("epoch-*.pth")), key=lambda n: int(n[6:-4]))


@pytest.fixture(scope="module")
def ema_run(tiny_imagefolder, tmp_path_factory) -> Path:
    """resnet18, 5 epochs at 16 px with EMA, every epoch kept (epoch-1.pth .. epoch-5.pth); it learns in the last
    two (EMA top-1 33, 33, 33, 42, 92 on the 12 val images). Read-only."""
    out = tmp_path_factory.mktemp("avg") / "run"
    train(run_cfg(tiny_imagefolder, out, iters=None, keep_last=5, optim={"ema": True, "ema_decay": 0.3, "lr": 0.05}))
    return out


def ema_weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = Checkpoint.load(path)
    assert ckpt.ema is not None
    return ckpt.ema["state_dict"]


# ------------------------------------------------------------------------------------------------
# --keep-last


def test_keep_last_files_hold_the_epochs_inference_checkpoint(ema_run):
    assert snapshots(ema_run) == [f"epoch-{n}.pth" for n in range(1, 6)]
    last, fifth = Checkpoint.load(ema_run / "last.pth"), Checkpoint.load(ema_run / "epoch-5.pth")
    assert not fifth.has_training_state and fifth.rng is None and fifth.epoch == 5
    assert fifth.metrics is not None and fifth.metrics["epoch"] == 5 and "val_ema_top1" in fifth.metrics
    assert fifth.classes == last.classes and fifth.model_name == last.model_name == "resnet18"
    for k, v in last.model.items():
        assert torch.equal(v, fifth.model[k]), k
    assert fifth.ema is not None and last.ema is not None
    for k, v in last.ema["state_dict"].items():
        assert torch.equal(v, fifth.ema["state_dict"][k]), k
    # best.pth is one of them: the epoch that set the best metric
    best = Checkpoint.load(ema_run / "best.pth")
    same = Checkpoint.load(ema_run / f"epoch-{best.epoch}.pth")
    assert all(torch.equal(v, same.model[k]) for k, v in best.model.items())


def test_keep_last_keeps_exactly_k_across_a_resume(tiny_imagefolder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_epoch = trainer_mod.RunLog.epoch

    def crash_after_three(self, record, *args):
        real_epoch(self, record, *args)
        if record["epoch"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.RunLog, "epoch", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        train(run_cfg(tiny_imagefolder, out, keep_last=2, iters=1, model=SMALL))
    monkeypatch.setattr(trainer_mod.RunLog, "epoch", real_epoch)
    assert snapshots(out) == ["epoch-2.pth", "epoch-3.pth"]

    # a stale file from elsewhere (a later epoch of an earlier attempt) does not survive the resume
    shutil.copy(out / "epoch-3.pth", out / "epoch-9.pth")
    summary = train(run_cfg(tiny_imagefolder, out, keep_last=2, iters=1, model=SMALL, resume="auto"))
    assert summary["epochs_run"] == 2
    assert snapshots(out) == ["epoch-4.pth", "epoch-5.pth"]
    assert Checkpoint.load(out / "epoch-5.pth").epoch == 5 and Checkpoint.load(out / "epoch-4.pth").epoch == 4


def test_keep_last_after_a_kill_between_the_snapshot_and_last_pth(tiny_imagefolder, tmp_path, monkeypatch):
    """epoch-3.pth written, last.pth still at epoch 2: the resumed run redoes epoch 3 and its file."""
    out = tmp_path / "run"
    real_save = Checkpoint.save

    def dying_save(self, path):
        if Path(path).name == "last.pth" and self.epoch == 3:
            raise KeyboardInterrupt
        real_save(self, path)

    monkeypatch.setattr(Checkpoint, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(run_cfg(tiny_imagefolder, out, epochs=4, iters=1, keep_last=3, model=SMALL))
    monkeypatch.setattr(Checkpoint, "save", real_save)
    assert snapshots(out) == ["epoch-1.pth", "epoch-2.pth", "epoch-3.pth"]
    assert Checkpoint.load(out / "last.pth").epoch == 2
    train(run_cfg(tiny_imagefolder, out, epochs=4, iters=1, keep_last=3, model=SMALL, resume="auto"))
    assert snapshots(out) == ["epoch-2.pth", "epoch-3.pth", "epoch-4.pth"]

    # the unbroken run writes the same files
    ref = tmp_path / "ref"
    train(run_cfg(tiny_imagefolder, ref, epochs=4, iters=1, keep_last=3, model=SMALL))
    for name in snapshots(ref):
        a, b = Checkpoint.load(out / name), Checkpoint.load(ref / name)
        assert all(torch.equal(v, b.model[k]) for k, v in a.model.items()), name


def test_negative_keep_last_is_refused(tiny_imagefolder, tmp_path, capsys):
    with pytest.raises(ConfigError, match="keep_last"):
        train(run_cfg(tiny_imagefolder, tmp_path / "a", keep_last=-1))
    assert main(["train", "--data", str(tiny_imagefolder), "--keep-last", "-2", "--output", str(tmp_path / "b"),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keep_last" in err[0] and ">= 0" in err[0]


# ------------------------------------------------------------------------------------------------
# averaging


def test_average_state_dicts_is_the_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([2.0], dtype=torch.float16), "n": torch.tensor(7)}
    out = average_state_dicts([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["h"].dtype == torch.float16 and out["h"].item() == 1.5
    assert out["n"].item() == 7  # non-float buffers: the newest's


def test_uniform_average_of_a_run_is_the_mean_of_its_ema_weights(ema_run, tmp_path):
    out = tmp_path / "avg.pth"
    summary = average([ema_run], out, last=3, evaluate=False)
    assert summary["weights"] == "ema" and summary["top1"] is None
    assert [c["checkpoint"] for c in summary["candidates"]] == [str(ema_run / f"epoch-{n}.pth") for n in (3, 4, 5)]
    inputs = [ema_weights(ema_run / f"epoch-{n}.pth") for n in (3, 4, 5)]
    raw = Checkpoint.load(ema_run / "epoch-5.pth").model
    got = Checkpoint.load(out)
    assert got.ema is None and not got.has_training_state
    assert got.classes == ["circle", "square", "triangle"] and got.model_name == "resnet18"
    assert got.img_size == Checkpoint.load(ema_run / "epoch-5.pth").img_size
    assert got.extra["average"]["method"] == "uniform" and len(got.extra["average"]["checkpoints"]) == 3
    moved = False
    for k, v in got.model.items():
        if v.is_floating_point():
            mean = torch.stack([sd[k].double() for sd in inputs]).mean(0).float()
            torch.testing.assert_close(v, mean, rtol=0, atol=1e-6)
            moved |= not torch.allclose(v, raw[k].float())
        else:
            assert torch.equal(v, inputs[-1][k]), k  # num_batches_tracked from the newest
    assert moved  # the EMA weights were averaged, not the raw ones


def test_best_k_follows_the_recorded_metric(ema_run, tmp_path):
    recorded = {n: Checkpoint.load(ema_run / f"epoch-{n}.pth").metrics["val_ema_top1"] for n in range(1, 6)}
    summary = average([ema_run], tmp_path / "b.pth", best=2, evaluate=False)
    got = {c["epoch"] for c in summary["candidates"]}
    top = sorted(recorded.values(), reverse=True)[:2]
    assert len(got) == 2 and sorted((recorded[n] for n in got), reverse=True) == top


def test_greedy_soup_is_never_below_the_best_single_checkpoint(ema_run, tiny_imagefolder, tmp_path):
    # a sixth candidate that is ruined (its weights scaled): a uniform average with it drops, the soup leaves it out
    files = [ema_run / f"epoch-{n}.pth" for n in range(1, 6)]
    bad = Checkpoint.load(files[0])
    assert bad.ema is not None
    g = torch.Generator().manual_seed(0)
    bad.ema["state_dict"] = {k: v + 3 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                             for k, v in bad.ema["state_dict"].items()}
    bad.epoch = 0
    bad.save(tmp_path / "ruined.pth")
    summary = average([tmp_path / "ruined.pth", *files], tmp_path / "soup.pth", greedy=True,
                      data=str(tiny_imagefolder), progress=False)
    singles = [c["top1"] for c in summary["candidates"]]
    assert all(t is not None for t in singles)
    assert summary["top1"] >= max(singles)
    used = {c["checkpoint"]: c["used"] for c in summary["candidates"]}
    assert used[str(tmp_path / "ruined.pth")] is False
    assert summary["steps"][0]["kept"] and summary["steps"][0]["top1"] == max(singles)
    kept = [s for s in summary["steps"] if s["kept"]]
    assert len(kept) == sum(used.values())
    # the file holds what was measured: evaluating it again gives the soup's top-1
    report = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "soup.pth"), "--data", str(tiny_imagefolder), "--json",
                 str(report), "--no-progress", "--device", "cpu"]) == 0
    assert json.loads(report.read_text())["top1"] == pytest.approx(summary["top1"], abs=1e-9)


def test_greedy_soup_keeps_what_does_not_lower_top1():
    """The greedy rule on weights whose top-1 is known: 100 within 0.15 of w = 3, else 100 - 10 |w - 3|."""
    from types import SimpleNamespace

    from visionzoo.inference.average import Candidate, _greedy

    values = {"a": 3.2, "b": 2.6, "c": 5.0, "d": 2.9, "e": 10.0}

    def top1(sd, desc=""):
        off = abs(sd["w"].item() - 3)
        return 100.0 if off <= 0.15 else 100 - 10 * off

    chosen = [Candidate(Path(n), i, i + 1, None, "raw") for i, n in enumerate(values)]
    for c in chosen:
        c.top1 = top1({"w": torch.tensor([values[str(c.path)]], dtype=torch.float64)})
    loaded = SimpleNamespace(weights=lambda c: {"w": torch.tensor([values[str(c.path)]], dtype=torch.float64),
                                                "n": torch.tensor(c.order)})
    ctx = SimpleNamespace(bn_batches=0, top1=top1)
    steps: list = []
    members, sd, best = _greedy(chosen, loaded, ctx, steps)
    # d (100) first; + a: mean 3.05, 100, a tie: kept (top-1 did not drop); + b: mean 2.9, 100, kept;
    # + c: mean 3.425 (95.75) and + e: mean 4.675 (83.25) lower it: left out
    assert [str(c.path) for c in members] == ["a", "b", "d"]
    assert [(s["added"], s["kept"]) for s in steps] == [("d", True), ("a", True), ("b", True), ("c", False),
                                                         ("e", False)]
    assert best == 100.0 and sd["w"].item() == pytest.approx(2.9)
    assert sd["n"].item() == 3  # the newest member's (d, order 3) non-float tensors
    # the uniform average of all five would have dropped to 82.6
    assert top1({"w": torch.tensor([sum(values.values()) / 5])}) < max(c.top1 for c in chosen)


def test_greedy_soup_with_recomputed_batchnorm(ema_run, tiny_imagefolder, tmp_path):
    summary = average([ema_run], tmp_path / "soup.pth", last=5, greedy=True, recompute_bn=2, batch_size=8,
                      data=str(tiny_imagefolder), progress=False)
    assert summary["top1"] >= max(c["top1"] for c in summary["candidates"])
    assert summary["recompute_bn"] == 2


def test_recompute_bn_estimates_the_statistics_again(ema_run, tiny_imagefolder, tmp_path):
    plain, recomputed = tmp_path / "plain.pth", tmp_path / "bn.pth"
    average([ema_run], plain, last=2, data=str(tiny_imagefolder), progress=False)
    average([ema_run], recomputed, last=2, recompute_bn=3, batch_size=8, data=str(tiny_imagefolder),
            progress=False)
    a, b = Checkpoint.load(plain).model, Checkpoint.load(recomputed).model
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.allclose(a[k], b[k]) for k in stats[:3])
    params = [k for k in a if k.endswith(".weight")]
    assert all(torch.equal(a[k], b[k]) for k in params)  # only the statistics change
    assert b["bn1.num_batches_tracked"].item() == 3  # a cumulative average over the 3 batches asked for
    # without evaluation too (no validation split read): the same statistics
    summary = average([ema_run], tmp_path / "noeval.pth", last=2, recompute_bn=3, batch_size=8,
                      data=str(tiny_imagefolder), evaluate=False)
    assert summary["top1"] is None
    c = Checkpoint.load(tmp_path / "noeval.pth").model
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_cli_average_loads_in_eval_predict_and_export(ema_run, tiny_imagefolder, tmp_path, capsys):
    out, report = tmp_path / "avg.pth", tmp_path / "avg.json"
    assert main(["average", str(ema_run), "--last", "3", "--output", str(out), "--json", str(report),
                 "--device", "cpu", "--no-progress"]) == 0  # the data the checkpoints record
    printed = capsys.readouterr().out
    assert "uniform average of 3 checkpoints (EMA weights)" in printed and f"wrote {out}" in printed
    summary = json.loads(report.read_text())
    assert [c["used"] for c in summary["candidates"]] == [True, True, True]
    assert summary["num_images"] == 12 and summary["top1"] is not None

    eval_json = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out), "--json", str(eval_json), "--no-progress", "--device", "cpu"]) == 0
    assert json.loads(eval_json.read_text())["top1"] == pytest.approx(summary["top1"], abs=1e-9)

    import visionzoo

    image = next((tiny_imagefolder / "val" / "circle").iterdir())
    (pred,) = visionzoo.predict(out, [image], topk=1, device="cpu")
    assert pred["error"] is None and pred["top"][0]["class"] in ("circle", "square", "triangle")

    onnx = tmp_path / "avg.onnx"
    assert main(["export", "--checkpoint", str(out), "--format", "onnx", "--output", str(onnx)]) == 0
    assert onnx.stat().st_size > 0
    assert main(["eval", "--checkpoint", str(onnx), "--no-progress", "--device", "cpu"]) == 0


def test_average_errors_name_the_file(ema_run, tiny_imagefolder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["average", str(empty), "--output", str(tmp_path / "x.pth")]) == 1
    assert "no epoch-N.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a usage error, said by argparse
        main(["average", str(ema_run), "--last", "2", "--best", "2", "--output", str(tmp_path / "x.pth")])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert main(["average", str(ema_run), "--output", str(tmp_path / "no" / "x.pth"), "--no-eval"]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["average", str(ema_run), "--greedy", "--no-eval", "--output", str(tmp_path / "x.pth")]) == 2
    # another model's checkpoint does not average with these
    other = tmp_path / "other"
    train(run_cfg(tiny_imagefolder, other, model=SMALL, epochs=1))
    with pytest.raises(ModelFileError, match="model shufflenet_v2_x0_5 \\(not resnet18\\)"):
        average([ema_run / "epoch-5.pth", other / "best.pth"], tmp_path / "x.pth", evaluate=False)
    assert not (tmp_path / "x.pth").exists()
