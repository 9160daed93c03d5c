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
