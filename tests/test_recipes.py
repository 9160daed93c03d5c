"""Modern training recipes (issue 14): optimizers, augmentation policies, mixup/cutmix, EMA, repeated
augmentation, each against the maintained reference for the same inputs and draws."""

from __future__ import annotations

import copy

import pytest
import torch

from visionzoo.config import OptimConfig
from visionzoo.engine.optim import build_optimizer


def _steps(model, opt, n: int = 4) -> None:
    for step in range(n):
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(step))
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))


@pytest.mark.parametrize("opt, extra", [("lamb", {"betas": [0.9, 0.99], "eps": 1e-6}),
                                        ("lars", {"momentum": 0.9, "eps": 1e-8}),
                                        ("adamw", {"betas": [0.9, 0.95], "eps": 1e-8})])
def test_optimizer_steps_match_timms(opt, extra):
    from timm.optim import create_optimizer_v2

    ours_model = _net()
    ref_model = copy.deepcopy(ours_model)
    cfg = OptimConfig(opt=opt, weight_decay=0.05, no_decay_norm_bias=True, **extra)
    ours = build_optimizer(ours_model, cfg, 0.01, torch.device("cpu"))
    kwargs = {"betas": tuple(extra["betas"])} if "betas" in extra else {}
    ref = create_optimizer_v2(ref_model, opt=opt, lr=0.01, weight_decay=0.05, eps=extra["eps"],
                              momentum=extra.get("momentum", 0.9), **kwargs)
    _steps(ours_model, ours)
    _steps(ref_model, ref)
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(next(ours_model.parameters()), next(_net().parameters()))  # it moved


def test_no_decay_by_name_and_layer_decay_for_a_vit():
    from visionzoo.engine.optim import layer_decay_groups, param_groups
    from visionzoo.models import create_model

    vit = create_model("vit_tiny_patch16_224", num_classes=3)
    groups = param_groups(vit, 0.05, True)
    undecayed = {id(p) for p in groups[1]["params"]}
    assert id(vit.pos_embed) in undecayed and id(vit.cls_token) in undecayed
    assert id(vit.patch_embed.proj.weight) not in undecayed
    layered = layer_decay_groups(vit, OptimConfig(weight_decay=0.05, layer_decay=0.65, no_decay_norm_bias=True), 1.0)
    lrs = sorted({round(g["lr"], 8) for g in layered})
    assert lrs[-1] == 1.0 and lrs[0] == pytest.approx(0.65 ** (len(lrs) - 1), rel=1e-5)  # head 1, stem lowest


# ------------------------------------------------------------------------------------------------
# batch mixing and losses against torchvision's and timm's


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixup_and_cutmix_are_torchvisions_for_the_same_draws(mixup, cutmix):
    from torchvision.transforms import v2

    from visionzoo.config import AugConfig
    from visionzoo.engine.mixing import BatchMix

    x = torch.randn(8, 3, 16, 16)
    y = torch.randint(0, 5, (8,))
    mix = BatchMix(AugConfig(mixup=mixup, cutmix=cutmix, mixup_prob=1.0, mixup_switch_prob=0.5), num_classes=5)
    for seed in range(6):
        torch.manual_seed(seed)
        got_x, got_y = mix(x.clone(), y, epoch=0)
        torch.manual_seed(seed)  # the same draws: apply, which op, then the op's own
        torch.rand(())
        use_cutmix = cutmix > 0 and (mixup == 0 or torch.rand(()).item() < 0.5)
        op = v2.CutMix(alpha=cutmix, num_classes=5) if use_cutmix else v2.MixUp(alpha=mixup, num_classes=5)
        ref_x, ref_y = op(x.clone(), y)
        assert torch.equal(got_x, ref_x) and torch.equal(got_y, ref_y)
        assert torch.allclose(got_y.sum(1), torch.ones(8))
    off = BatchMix(AugConfig(mixup=0.2, mixup_off_epoch=3), num_classes=5)
    unmixed, soft = off(x, y, epoch=2)  # epoch 3 (1-based): off
    assert torch.equal(unmixed, x) and torch.equal(soft.argmax(1), y)


def test_losses_on_soft_targets_match_timms():
    from timm.data import Mixup
    from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

    from visionzoo.engine.objective import Criterion

    torch.manual_seed(0)
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    # hard targets with smoothing
    torch.testing.assert_close(Criterion(label_smoothing=0.1, kind="bce")(logits, y)[0],
                               BinaryCrossEntropy(smoothing=0.1)(logits, y))
    # mixed targets: timm smooths inside the mix, visionzoo in the loss; the same linear map
    timm_mix = Mixup(mixup_alpha=0.2, label_smoothing=0.1, num_classes=5)
    lam = 0.7
    soft = lam * torch.nn.functional.one_hot(y, 5) + (1 - lam) * torch.nn.functional.one_hot(y.flip(0), 5)
    from timm.data.mixup import mixup_target

    smoothed = mixup_target(y, 5, lam=lam, smoothing=0.1)
    assert timm_mix.label_smoothing == 0.1
    torch.testing.assert_close(Criterion(label_smoothing=0.1, kind="bce")(logits, soft.float())[0],
                               BinaryCrossEntropy(smoothing=0.0)(logits, smoothed))
    torch.testing.assert_close(Criterion(label_smoothing=0.1)(logits, soft.float())[0],
                               SoftTargetCrossEntropy()(logits, smoothed))
    torch.testing.assert_close(Criterion(label_smoothing=0.1)(logits, y)[0],  # unmixed: torch's own smoothing
                               torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1))


# ------------------------------------------------------------------------------------------------
# EMA, repeated augmentation, per-sample policies


@pytest.mark.parametrize("every", [1, 3])
def test_ema_is_swa_utils_ema(every):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from visionzoo.engine.ema import WeightEMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))
    ours = WeightEMA(model, 0.9, every=every)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 8):
        model(torch.randn(16, 6)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ours.update(model)
        if step % every == 0:
            ref.update_parameters(model)
    for a, b in zip(ours.module.state_dict().values(), ref.module.state_dict().values()):
        assert torch.equal(a, b)
    assert ours.updates == 7 // every
    warm = WeightEMA(model, 0.9999, warmup=True)
    warm.update(model)
    before = warm.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    warm.update(model)  # decay min(0.9999, 2 / 11): the average moves most of the way
    torch.testing.assert_close(warm.module[0].weight, before + (1 - 2 / 11))


def test_repeated_augmentation_sampler_is_timms_and_spreads_copies_over_ranks():
    from timm.data.distributed_sampler import RepeatAugSampler

    from visionzoo.data.samplers import RepeatedAugSampler

    class Sized:
        def __len__(self):
            return 600

    shards = []
    for rank in range(2):
        ours = list(RepeatedAugSampler(600, 3, 0, rank, 2))
        assert [i for i, _ in ours] == list(RepeatAugSampler(Sized(), num_replicas=2, rank=rank, num_repeats=3))
        shards.append(ours)
    first = shards[0][0][0]
    assert [i for i, _ in shards[1]][0] == first  # the second copy of the first image: on the other rank
    seeds = [s for shard in shards for _, s in shard]
    assert len(set(seeds)) == len(seeds)  # every copy its own augmentation
    assert len(shards[0]) == 600 // 256 * 256 // 2  # an epoch keeps its length


@pytest.mark.parametrize("policy, cls, params", [("ta_wide", "TrivialAugmentWide", {}),
                                                 ("ra", "RandAugment", {"num_ops": 3, "magnitude": 7}),
                                                 ("augmix", "AugMix", {"severity": 4}),
                                                 ("imagenet", "AutoAugment", {})])
def test_policies_are_torchvisions_on_the_fast_pipeline(policy, cls, params, tmp_path):
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2

    from visionzoo.data.images import read_file
    from visionzoo.data.transforms import augment_ops, train_transform

    ops = augment_ops(policy, ra_magnitude=7, ra_ops=3, augmix_severity=4, random_erase=0.5)
    assert [type(o.op if hasattr(o, "op") else o).__name__ for o in ops] == [cls, "RandomErasing"]
    op = ops[0].op
    for name, value in params.items():
        assert getattr(op, name) == value
    if policy == "imagenet":
        assert op.policy == v2.AutoAugmentPolicy.IMAGENET
    assert ops[1].value == [124, 116, 104]  # the mean colour: zero after normalisation, as the reference erases
    img = tmp_path / "x.jpg"
    Image.radial_gradient("L").convert("RGB").resize((120, 90)).save(img, quality=95)
    fused = train_transform(48, decode="fast", policy=ops)
    plain = train_transform(48, decode="fast")
    changed = 0
    for seed in range(6):  # the crop's draws, then the policy's and the erasing's, as torchvision would draw them
        torch.manual_seed(seed)
        got = fused(read_file(img))
        torch.manual_seed(seed)
        crop = plain(read_file(img))
        # the reference scripts' order: the policy on the PIL image (AugMix: on the tensor), then erasing
        if policy == "augmix":
            expected = op(crop)
        else:
            expected = torch.from_numpy(np.array(op(Image.fromarray(crop.permute(1, 2, 0).numpy())))).permute(2, 0, 1)
        expected = ops[1](expected)
        assert torch.equal(got, expected)
        # stacked as it is: the Pillow policies hand back HWC memory (a channels-last batch), AugMix CHW
        assert got.permute(1, 2, 0).is_contiguous() if policy != "augmix" else got.is_contiguous()
        changed += not torch.equal(got, crop)
    assert changed >= 3  # the policy and the erasing did act


# ------------------------------------------------------------------------------------------------
# end to end: exact resume with everything on, torchrun, EMA weights in inference


import json  # noqa: E402
from pathlib import Path  # noqa: E402

from visionzoo.cli import main  # noqa: E402

MODERN = ["--opt", "adamw", "--lr", "0.002", "--weight-decay", "0.05", "--no-decay-norm-bias", "--label-smoothing",
          "0.1", "--mixup", "0.2", "--cutmix", "1.0", "--auto-augment", "ra", "--random-erase", "0.25", "--ema",
          "--ema-decay", "0.9", "--accum-steps", "2", "--sched", "cosine", "--warmup-epochs", "0.5"]


def _modern_args(data, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "resnet18", "--data", str(data), "--img-size", "16", "--eval-img-size", "24",
            "--batch-size", "16", "--iters", "3", "--epochs", "3", "--workers", "0", "--device", "cpu", "--seed", "4",
            "--deterministic", "--no-progress", "--output", str(out), *MODERN, *extra]


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_modern_run_resumes_bitwise_weights_and_ema_alike(digits_data, tmp_path, monkeypatch):
    from visionzoo.engine import trainer as trainer_mod

    assert main(_modern_args(digits_data, tmp_path / "full")) == 0
    real_epoch = trainer_mod.RunLog.epoch

    def crash_after_two(self, record):
        real_epoch(self, record)
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.RunLog, "epoch", crash_after_two)
    assert main(_modern_args(digits_data, tmp_path / "broken")) == 130  # Ctrl-C: one line, exit status 130
    monkeypatch.setattr(trainer_mod.RunLog, "epoch", real_epoch)
    # resumed with another worker count: per-sample seeds, and batch mixing drawn in the main process
    assert main(_modern_args(digits_data, tmp_path / "broken", "--resume", "auto", "--workers", "2")) == 0
    a, b = _state(tmp_path / "full" / "last.pth"), _state(tmp_path / "broken" / "last.pth")
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 9
    for part in ("model",):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert all(torch.equal(a["ema"]["state_dict"][k], b["ema"]["state_dict"][k]) for k in a["ema"]["state_dict"])
    assert a["ema"]["updates"] == b["ema"]["updates"] == 9
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["type"] == "epoch"]
    assert "val_ema_top1" in epochs[-1] and epochs[-1]["best_top1"] == max(r["val_ema_top1"] for r in epochs)
    assert a["img_size"] == 24  # the evaluation size is what inference uses


@pytest.mark.slow
def test_torchrun_with_repeated_augmentation_ema_and_mixup_counts_every_val_image_once(digits_data, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "visionzoo",
           "train", "--model", "resnet18", "--data", str(digits_data), "--img-size", "16", "--epochs", "1",
           "--iters", "3", "--batch-size", "32", "--workers", "0", "--device", "cpu", "--aug-repeats", "3", "--ema",
           "--mixup", "0.2", "--accum-steps", "2", "--output", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    assert row["val_num_images"] == row["val_ema_num_images"] == 355 and row["steps"] == 3
    assert "global batch 64 (32 x 2 accumulated) over 2 processes" in (out / "train.log").read_text()


def test_inference_uses_a_checkpoints_ema_weights_unless_raw(digits_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--data", str(digits_data), "--img-size", "16", "--epochs", "1",
                 "--iters", "4", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--no-progress",
                 "--ema", "--ema-decay", "0.5", "--output", str(out)]) == 0
    record = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x][-1]
    results = {}
    for name, extra in (("ema", []), ("raw", ["--raw-weights"])):
        js = tmp_path / f"{name}.json"
        assert main(["eval", "--checkpoint", str(out / "last.pth"), "--json", str(js), "--no-progress", *extra]) == 0
        results[name] = json.loads(js.read_text())
        assert results[name]["weights"] == name
    assert results["ema"]["loss"] == pytest.approx(record["val_ema_loss"], rel=1e-5)
    assert results["raw"]["loss"] == pytest.approx(record["val_loss"], rel=1e-5)
    assert results["ema"]["loss"] != results["raw"]["loss"]
    exported = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(out / "last.pth"), "--format", "onnx", "--output", str(exported)]) == 0
    from visionzoo.inference.runtime import load_runner

    assert load_runner(exported).info.extra["weights_used"] == "ema"
    capsys.readouterr()


def test_drop_path_and_dropout_reach_models_that_take_them(tmp_path, capsys):
    from visionzoo.models import create_model

    vit = create_model("vit_tiny_patch16_224", num_classes=3, drop_path=0.1, dropout=0.2)
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1) and vit.head_drop.p == 0.2
    assert create_model("vgg16", num_classes=3, dropout=0.3).classifier[2].p == 0.3
    assert main(["train", "--model", "resnet18", "--dummy", "--drop-path", "0.1", "--output", str(tmp_path / "x")]) == 2
    assert "--drop-path" in capsys.readouterr().err
