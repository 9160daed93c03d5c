"""Issue 25 end to end: `visionzoo train --teacher` through the real command line and the library API.

A resnet18 teacher is trained once on the tiny 3-class ImageFolder (32 px, CPU); students are tiny too. What is
checked: a resumed distillation run (mixup, cutmix, EMA) equals the unbroken one bitwise, in logit and feature
mode (the feature projection restored); distillation changes the student, and kd_alpha 0 does not; the one-line
errors (teacher of other classes / another class order / not a model, teacher settings without a teacher, a
resume with another teacher or none); token mode on a tiny distilled DeiT; the help and the library's keys; a
teacher at its own input size.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from visionzoo.cli import main

BASE = ["--img-size", "32", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--seed", "0",
        "--no-progress"]
MIXED = ["--mixup", "0.2", "--cutmix", "1.0", "--ema", "--ema-warmup", "--deterministic"]
CLASSES = ["circle", "square", "triangle"]


def _train(data: Path, out: Path, *extra: str, model: str = "resnet18", epochs: int = 2) -> list[str]:
    return ["train", "--model", model, "--data", str(data), "--epochs", str(epochs), *BASE, "--output", str(out),
            *extra]


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_equal_states(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{what}: {k}"
        elif isinstance(a[k], dict):
            _assert_equal_states(a[k], b[k], f"{what}.{k}")
        else:
            assert a[k] == b[k], f"{what}: {k}"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for this module's runs: tiny 32 px batches gain nothing from more, and on a shared
    2-core machine two threads spin against other processes (a run took 3x as long). Every run here, so the
    bitwise comparisons compare like with like; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# the teachers


@pytest.fixture(scope="module")
def teacher(tiny_imagefolder, tmp_path_factory) -> Path:
    """A resnet18 run folder trained 2 epochs on the tiny ImageFolder: the teacher of every test here."""
    out = tmp_path_factory.mktemp("kd-teacher") / "teacher"
    assert main(_train(tiny_imagefolder, out)) == 0
    return out


@pytest.fixture(scope="module")
def other_teacher(teacher, tmp_path_factory) -> Path:
    """Another teacher file of the same classes: the first one's weights, its head's bias moved."""
    from visionzoo.models.checkpoint import Checkpoint

    ckpt = Checkpoint.load(teacher / "best.pth")
    ckpt.model = {k: v + 0.01 if k == "fc.bias" else v for k, v in ckpt.model.items()}
    path = tmp_path_factory.mktemp("kd-teacher2") / "teacher2.pth"
    ckpt.save(path)
    return path


# ------------------------------------------------------------------------------------------------
# 1. a resumed distillation run equals the unbroken one bitwise (mixup, cutmix, EMA)


@pytest.fixture(scope="module")
def logit_runs(teacher, tiny_imagefolder, tmp_path_factory, killed_then_resumed) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kd-logit")
    runs = {"unbroken": root / "unbroken", "resumed": root / "resumed"}
    assert main(_train(tiny_imagefolder, runs["unbroken"], "--teacher", str(teacher), *MIXED)) == 0
    killed_then_resumed(_train(tiny_imagefolder, runs["resumed"], "--teacher", str(teacher), *MIXED))
    return runs


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    _assert_equal_states(a["model"], b["model"], "model")
    assert a["ema"] is not None and b["ema"] is not None
    _assert_equal_states(a["ema"], b["ema"], "ema")
    _assert_equal_states(a["optimizer"], b["optimizer"], "optimizer")


def test_resumed_logit_distillation_equals_the_unbroken_run_bitwise(logit_runs, teacher):
    a, b = (_ckpt(logit_runs[k] / "last.pth") for k in ("unbroken", "resumed"))
    _assert_same_run(a, b)
    digest = _sha256(teacher / "best.pth")
    assert a["teacher"] == b["teacher"] == {"source": str(teacher), "digest": digest, "mode": "logit"}
    assert "distill_projection" not in a
    rows = [[json.loads(line) for line in (logit_runs[k] / "metrics.jsonl").read_text().splitlines()]
            for k in ("unbroken", "resumed")]
    last = [[r for r in rs if r["type"] == "epoch"][-1] for rs in rows]
    assert last[0]["train_loss"] == last[1]["train_loss"] and last[0]["val_top1"] == last[1]["val_top1"]


def test_resumed_feature_distillation_restores_its_projection_bitwise(teacher, tiny_imagefolder, tmp_path,
                                                                      killed_then_resumed):
    # a mobilenet student (1024 pooled features) of the resnet18 teacher (512): a trained Linear projection
    args = ["--teacher", str(teacher), "--distill", "feature", *MIXED]
    model = "mobilenetv3_small_050"
    assert main(_train(tiny_imagefolder, tmp_path / "unbroken", *args, model=model)) == 0
    first = killed_then_resumed(_train(tiny_imagefolder, tmp_path / "resumed", *args, model=model))
    a, b = (_ckpt(tmp_path / k / "last.pth") for k in ("unbroken", "resumed"))
    _assert_same_run(a, b)
    assert a["teacher"]["mode"] == "feature"
    proj = a["distill_projection"]
    assert proj["weight"].shape == (512, 1024)
    _assert_equal_states(proj, b["distill_projection"], "distill_projection")
    assert not torch.equal(proj["weight"], first["distill_projection"]["weight"])  # it trains in epoch 2


# ------------------------------------------------------------------------------------------------
# 2. distillation changes the result; kd_alpha 0 is the run without a teacher, bitwise


def test_distillation_changes_the_student_and_kd_alpha_0_does_not(logit_runs, teacher, tiny_imagefolder,
                                                                  tmp_path):
    assert main(_train(tiny_imagefolder, tmp_path / "alone", *MIXED)) == 0
    assert main(_train(tiny_imagefolder, tmp_path / "alpha0", "--teacher", str(teacher), "--kd-alpha", "0",
                       *MIXED)) == 0
    alone, alpha0 = (_ckpt(tmp_path / k / "last.pth") for k in ("alone", "alpha0"))
    taught = _ckpt(logit_runs["unbroken"] / "last.pth")
    assert alone["model"].keys() == taught["model"].keys()
    assert any(not torch.equal(alone["model"][k], taught["model"][k]) for k in alone["model"]
               if alone["model"][k].is_floating_point())
    # the teacher present but weighted 0: its forward (no RNG, no grads) leaves the run exactly as it was
    _assert_equal_states(alone["model"], alpha0["model"], "model")
    _assert_equal_states(alone["ema"], alpha0["ema"], "ema")
    assert alpha0["teacher"]["digest"] == _sha256(teacher / "best.pth") and "teacher" not in alone


# ------------------------------------------------------------------------------------------------
# 3. one-line errors


def _quick_teacher(data: Path, out: Path) -> Path:
    assert main(["train", "--model", "resnet18", "--data", str(data), "--epochs", "1", "--iters", "1", *BASE,
                 "--output", str(out)]) == 0
    return out


def test_a_teacher_of_other_classes_is_refused_naming_the_first_difference(tiny_imagefolder, tmp_path, capsys):
    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_imagefolder, renamed)
    for split in ("train", "val"):
        (renamed / split / "triangle").rename(renamed / split / "tri")
    extra = tmp_path / "extra"
    shutil.copytree(tiny_imagefolder, extra)
    for split in ("train", "val"):
        shutil.copytree(extra / split / "circle", extra / split / "disc")
    t_renamed = _quick_teacher(renamed, tmp_path / "t-renamed")
    t_extra = _quick_teacher(extra, tmp_path / "t-extra")
    capsys.readouterr()

    assert main(_train(tiny_imagefolder, tmp_path / "s1", "--teacher", str(t_renamed))) == 2
    err = _one_line(capsys)
    assert "teacher class 2 is 'tri', the data's class 2 is 'triangle'" in err and str(t_renamed) in err, err
    assert main(_train(tiny_imagefolder, tmp_path / "s2", "--teacher", str(t_extra))) == 2
    err = _one_line(capsys)
    assert "has 4 classes, the data has 3" in err and str(t_extra) in err, err
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()  # refused before the run began


def test_a_teacher_with_the_classes_in_another_order_is_refused(teacher, tiny_imagefolder, tmp_path, capsys):
    # the same teacher, its classes listed (and its head's rows ordered) square, circle, triangle: the same
    # function under another labelling, as a teacher trained from a pack or hub folder of another order is
    from visionzoo.models.checkpoint import Checkpoint

    ckpt = Checkpoint.load(teacher / "best.pth")
    order = [1, 0, 2]
    ckpt.model = {k: v[order] if k in ("fc.weight", "fc.bias") else v for k, v in ckpt.model.items()}
    ckpt.classes = [CLASSES[i] for i in order]
    path = tmp_path / "permuted.pth"
    ckpt.save(path)
    assert main(_train(tiny_imagefolder, tmp_path / "s", "--teacher", str(path))) == 2
    err = _one_line(capsys)
    assert "teacher class 0 is 'square', the data's class 0 is 'circle'" in err and str(path) in err, err


@pytest.mark.parametrize("content", [
    "hello\n",
    "not a model\n",  # its first byte is a pickle opcode: the file's head decides, not torch's unpickler error
])
def test_a_teacher_that_is_not_a_model_is_one_line(content, tiny_imagefolder, tmp_path, capsys):
    text = tmp_path / "teacher.txt"
    text.write_text(content)
    assert main(_train(tiny_imagefolder, tmp_path / "s", "--teacher", str(text))) == 1  # a model-file error: 1
    err = _one_line(capsys)
    assert f"teacher {text}: not a PyTorch checkpoint" in err, err
    assert main(_train(tiny_imagefolder, tmp_path / "s", "--teacher", str(tmp_path / "missing.pth"))) == 1
    assert "no such file or folder" in _one_line(capsys)


def test_teacher_settings_without_a_teacher_are_refused(tiny_imagefolder, tmp_path, capsys):
    assert main(_train(tiny_imagefolder, tmp_path / "s", "--distill", "hard")) == 2
    assert _one_line(capsys) == "visionzoo train: error: --distill hard needs a teacher (--teacher)"
    assert main(_train(tiny_imagefolder, tmp_path / "s", "--teacher-img-size", "64")) == 2
    assert "needs a teacher" in _one_line(capsys)


def test_resume_with_another_teacher_or_none_is_refused(logit_runs, teacher, other_teacher, tiny_imagefolder,
                                                        tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(logit_runs["unbroken"], run)
    before = (run / "last.pth").read_bytes()
    resume = ["--resume", "auto", "--epochs", "3"]

    def args(*extra: str) -> list[str]:
        return [*_train(tiny_imagefolder, run, *extra, *MIXED), *resume]

    assert main(args("--teacher", str(other_teacher))) == 2
    err = _one_line(capsys)
    digest, other = _sha256(teacher / "best.pth"), _sha256(other_teacher)
    assert (f"was distilled from {teacher} (sha256 {digest[:12]}), not {other_teacher} (sha256 {other[:12]})"
            in err), err
    assert main(args()) == 2
    err = _one_line(capsys)
    assert f"was distilled from {teacher}" in err and "--teacher" in err, err
    assert main(args("--teacher", str(teacher), "--distill", "hard")) == 2
    assert "was distilled with --distill logit, not hard" in _one_line(capsys)
    assert (run / "last.pth").read_bytes() == before  # nothing of the run changed

    # a run trained without a teacher cannot start distilling half-way
    plain = tmp_path / "plain"
    assert main(_train(tiny_imagefolder, plain, "--epochs", "1", "--iters", "1")) == 0
    capsys.readouterr()
    assert main([*_train(tiny_imagefolder, plain, "--teacher", str(teacher)), "--resume", "auto"]) == 2
    assert "was trained without a teacher" in _one_line(capsys)


# ------------------------------------------------------------------------------------------------
# 4. token mode: a tiny distilled DeiT (2 blocks, 32 px) as a hub-layout folder


def test_token_distillation_trains_a_distilled_deit_and_refuses_other_students(teacher, tiny_imagefolder, tmp_path,
                                                                              capsys):
    import timm
    from safetensors.torch import load_file
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model_args = {"img_size": 32, "depth": 2, "num_classes": 3}
    deit = timm.create_model("deit_tiny_distilled_patch16_224", **model_args)
    folder = tmp_path / "deit"
    save_for_hf(deit, str(folder), model_config={"label_names": CLASSES}, model_args=model_args,
                safe_serialization=True)
    out = tmp_path / "token"
    assert main(_train(tiny_imagefolder, out, "--teacher", str(teacher), "--distill", "token",
                       model=f"local-dir:{folder}", epochs=1)) == 0
    ckpt = _ckpt(out / "last.pth")
    assert ckpt["teacher"]["mode"] == "token"
    start = load_file(folder / "model.safetensors")
    for head in ("head.weight", "head_dist.weight"):  # both heads learn: the labels and the teacher
        assert not torch.equal(start[head], ckpt["model"][head]), head
    assert "distillation: token (T 4)" in (out / "train.log").read_text()

    capsys.readouterr()
    assert main(_train(tiny_imagefolder, tmp_path / "r18", "--teacher", str(teacher), "--distill", "token",
                       epochs=1)) == 2
    assert _one_line(capsys) == ("visionzoo train: error: --distill token needs a student with a distillation "
                                 "token (deit_*_distilled), not resnet18")


# ------------------------------------------------------------------------------------------------
# 5. the help and the library API


def test_help_shows_the_distillation_group(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    group = out[out.index("kd options:"):]
    assert group.index("Knowledge distillation") < 100
    for flag in ("--teacher TEACHER", "--teacher-model", "--teacher-pretrained", "--teacher-img-size",
                 "--distill logit|hard|token|feature", "--kd-alpha", "--kd-temperature", "--kd-token-hard"):
        assert flag in group.split("options:", 2)[1], flag  # inside the kd group, before the next one


def test_the_library_takes_the_same_keys(teacher, tiny_imagefolder, tmp_path):
    import visionzoo
    from visionzoo.api import build_config
    from visionzoo.core.errors import ConfigError

    nested = build_config({"kd": {"teacher": str(teacher), "distill": "hard", "kd_alpha": 0.3}})
    flat = build_config(teacher=str(teacher), distill="hard", kd_alpha=0.3)
    assert nested.kd == flat.kd and flat.kd.teacher == str(teacher) and flat.kd.distill == "hard"
    with pytest.raises(ConfigError, match="needs a teacher"):
        visionzoo.train(model="resnet18", data=str(tiny_imagefolder), distill="hard", output=str(tmp_path / "x"))

    out = tmp_path / "api"
    summary = visionzoo.train({"kd": {"teacher": str(teacher), "distill": "logit"}}, model="resnet18",
                              data=str(tiny_imagefolder), epochs=1, iters=2, img_size=32, batch_size=16, workers=0,
                              device="cpu", seed=0, progress=False, output=str(out))
    assert summary["epochs_run"] == 1
    ckpt = _ckpt(out / "last.pth")
    assert ckpt["teacher"] == {"source": str(teacher), "digest": _sha256(teacher / "best.pth"), "mode": "logit"}


# ------------------------------------------------------------------------------------------------
# 6. a teacher at its own input size


def test_a_teacher_at_another_input_size_sees_its_size(teacher, tiny_imagefolder, tmp_path, monkeypatch):
    from visionzoo.engine import distill

    seen: list[tuple[int, ...]] = []
    real = distill.Teacher.teacher_input

    def teacher_input(self, x):
        out = real(self, x)
        seen.append((tuple(x.shape[-2:]), tuple(out.shape[-2:])))
        return out

    monkeypatch.setattr(distill.Teacher, "teacher_input", teacher_input)
    out = tmp_path / "s"
    assert main(_train(tiny_imagefolder, out, "--teacher", str(teacher), "--teacher-img-size", "48", "--mixup",
                       "0.2", epochs=1)) == 0
    assert seen and set(seen) == {((32, 32), (48, 48))}
    line = next(line for line in (out / "train.log").read_text().splitlines() if " INFO teacher " in line)
    assert f"teacher {teacher} (resnet18, 48 px) | distillation: logit, alpha 0.5, T 4" in line, line
