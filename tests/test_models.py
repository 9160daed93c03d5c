"""Model registry, timm fall-through and local weight loading."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

import visionzoo
from visionzoo.core.errors import ConfigError, ModelFileError
from visionzoo.models import (
    UnknownModelError,
    create_model,
    get_model_cfg,
    load_state_dict_file,
    model_cfg_of,
    reset_classifier,
    strip_prefixes,
    unwrap_model,
)

SEED_MODELS = [
    "alexnet",
    "googlenet",
    "mobilenet_v2",
    "resnet101",
    "resnet18",
    "resnet50",
    "se_resnext50_32x4d",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "vgg16",
    "vgg16_bn",
    "vgg19",
]

# Smallest square input each architecture accepts (measured): alexnet's three 3x3/2 max-pools need
# 63 px; every other model runs at 32 (vgg: five 2x2 pools -> 1x1, then adaptive 7x7 pooling).
MIN_SIDE = {"alexnet": 63}


OLTR_MODELS = ["oltr_resnet10", "oltr_resnet18", "oltr_resnet50", "resnet10"]


def test_registry_lists_the_twelve_seed_models_and_oltr():
    assert visionzoo.list_models() == sorted(SEED_MODELS + OLTR_MODELS)
    assert visionzoo.list_models(pattern="resnet*") == ["resnet10", "resnet101", "resnet18", "resnet50"]


# OLTR stage-2 models return (logits, features) in train mode: tested in test_longtail.py
@pytest.mark.parametrize("name", [m for m in visionzoo.list_models() if not m.startswith("oltr_")])
def test_seed_model_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    cfg = model_cfg_of(model)
    assert cfg.num_classes == 7
    assert model.visionzoo_name == name
    head = model.get_submodule(cfg.classifier)
    assert isinstance(head, nn.Linear) and head.out_features == 7

    side = MIN_SIDE.get(name, 32)
    model.train()
    x = torch.randn(2, 3, side, side, requires_grad=True)
    out = model(x)
    assert isinstance(out, torch.Tensor), f"{name} returned {type(out).__name__} in train mode"
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([1, 6])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad[:5]}"
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert head.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        assert model(x.detach()).shape == (2, 7)


def test_alexnet_rejects_inputs_below_its_minimum():
    model = create_model("alexnet", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 63, 63)).shape == (1, 3)
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, 62, 62))


@pytest.mark.parametrize("timm_name, classifier", [("resnet10t", "fc"), ("mobilenetv3_small_050", "classifier")])
def test_timm_model_by_timm_name(timm_name, classifier):
    assert timm_name not in visionzoo.list_models()
    model = create_model(timm_name, num_classes=5)
    cfg = model_cfg_of(model)
    assert cfg.source == "timm"
    assert cfg.num_classes == 5
    assert cfg.classifier == classifier
    assert model.get_submodule(classifier).out_features == 5
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_timm_model_default_cfg_comes_from_timm():
    import timm

    pcfg = timm.models.get_pretrained_cfg("resnet10t")
    cfg = get_model_cfg("resnet10t")
    assert cfg.source == "timm"
    assert cfg.num_classes == 1000
    assert (cfg.input_size, cfg.crop_pct, cfg.interpolation) == (pcfg.input_size[-1], pcfg.crop_pct, pcfg.interpolation)
    assert (cfg.input_size, cfg.interpolation) != (224, "bilinear")  # not just our defaults


def test_seed_model_default_cfg():
    cfg = get_model_cfg("vgg16")
    assert (cfg.input_size, cfg.crop_pct, cfg.num_classes, cfg.classifier) == (224, 0.875, 1000, "classifier.6")
    assert get_model_cfg("se_resnext50_32x4d").classifier == "last_linear"
    assert get_model_cfg("googlenet").drop_keys == ("aux1.", "aux2.")
    assert create_model("shufflenet_v2_x0_5").fc.out_features == 1000  # num_classes default


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet5")
    msg = str(info.value)
    assert "'resnet5'" in msg
    assert "resnet50" in msg
    assert "close matches" in msg
    assert not msg.startswith('"')  # plain message, not KeyError's repr-quoting


def test_unknown_model_without_close_match():
    with pytest.raises(UnknownModelError) as info:
        create_model("qqqqqqqqqqqqqq")
    assert "close matches" not in str(info.value)
    assert isinstance(info.value, ConfigError)  # a usage error: the CLI prints it and exits 2


# ------------------------------------------------------------------------------------------------
# weights


def _assert_same_state(model: nn.Module, sd: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    own = model.state_dict()
    checked = 0
    for k, v in sd.items():
        if k.startswith(skip):
            continue
        assert k in own, k
        assert torch.equal(own[k], v), f"{k} differs"
        checked += 1
    assert checked > 0


@pytest.fixture(scope="module")
def resnet18_10() -> dict[str, torch.Tensor]:
    """A trained-looking (non-default) torchvision resnet18 state dict with a 10-way head."""
    torch.manual_seed(123)
    m = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():  # make BN buffers differ from a fresh model's too
        for name, buf in m.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_fresh_models_differ_so_weight_tests_mean_something(resnet18_10):
    fresh = create_model("resnet18", num_classes=10).state_dict()
    assert not torch.equal(fresh["conv1.weight"], resnet18_10["conv1.weight"])
    assert not torch.equal(fresh["bn1.running_var"], resnet18_10["bn1.running_var"])


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_weights_with_wrapper_prefixes(tmp_path, resnet18_10, prefix):
    path = tmp_path / "w.pth"
    torch.save({prefix + k: v for k, v in resnet18_10.items()}, path)
    model = create_model("resnet18", num_classes=10, weights=str(path))
    _assert_same_state(model, resnet18_10)


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "model_state_dict"])
def test_weights_inside_training_checkpoints(tmp_path, resnet18_10, wrapper):
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: {"module." + k: v for k, v in resnet18_10.items()}, "epoch": 3, "optimizer": {}}, path)
    model = create_model("resnet18", num_classes=10, weights=str(path))
    _assert_same_state(model, resnet18_10)


def test_strip_prefixes_keeps_inner_names():
    sd = {"module._orig_mod.layer1.0.conv1.weight": torch.zeros(1), "fc.module.x": torch.ones(1)}
    assert list(strip_prefixes(sd)) == ["layer1.0.conv1.weight", "fc.module.x"]


def test_1000_class_weights_into_10_class_model(tmp_path, caplog):
    torch.manual_seed(1)
    src = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path / "imagenet.pth"
    torch.save(src, path)
    torch.manual_seed(2)
    expected_fresh = create_model("resnet18", num_classes=10).fc.weight.detach().clone()
    torch.manual_seed(2)
    with caplog.at_level(logging.WARNING, logger="visionzoo.models.weights"):
        model = create_model("resnet18", num_classes=10, weights=str(path))
    assert model.fc.weight.shape == (10, 512) and model.fc.bias.shape == (10,)
    assert torch.equal(model.fc.weight, expected_fresh)  # left at its initialisation
    assert not torch.equal(model.fc.weight, src["fc.weight"][:10])
    _assert_same_state(model, src, skip=("fc.",))
    assert "fc.weight (1000, 512) -> (10, 512)" in caplog.text


def test_1000_class_weights_into_indexed_classifier(tmp_path):
    """mobilenet_v2's head is classifier.1: the dotted-index path is resolved too."""
    torch.manual_seed(3)
    src = torchvision.models.mobilenet_v2(num_classes=1000).state_dict()
    path = tmp_path / "mnv2.pth"
    torch.save(src, path)
    model = create_model("mobilenet_v2", num_classes=4, weights=str(path))
    assert model.classifier[1].out_features == 4
    _assert_same_state(model, src, skip=("classifier.1.",))


def test_safetensors_weights(tmp_path, resnet18_10):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"module." + k: v.contiguous() for k, v in resnet18_10.items()}, str(path))
    model = create_model("resnet18", num_classes=10, weights=str(path))
    _assert_same_state(model, resnet18_10)


def test_unexpected_key_is_an_error(tmp_path, resnet18_10):
    path = tmp_path / "extra.pth"
    torch.save({**resnet18_10, "head.extra.weight": torch.zeros(3)}, path)
    with pytest.raises(ModelFileError, match=r"head\.extra\.weight"):
        create_model("resnet18", num_classes=10, weights=str(path))


@pytest.mark.parametrize("source_classes, key", [(10, "layer2.1.bn2.running_mean"), (1000, "layer3.0.conv1.weight")])
def test_missing_key_is_an_error(tmp_path, source_classes, key):
    """Also when the classifier is being resized (1000 -> 10) at the same time."""
    sd = torchvision.models.resnet18(num_classes=source_classes).state_dict()
    del sd[key]
    path = tmp_path / "missing.pth"
    torch.save(sd, path)
    with pytest.raises(ModelFileError, match=key.replace(".", r"\.")):
        create_model("resnet18", num_classes=10, weights=str(path))


def test_other_architecture_with_extra_keys_is_an_error(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), path)
    with pytest.raises(ModelFileError, match="does not fit resnet18"):
        create_model("resnet18", num_classes=10, weights=str(path))


def test_shape_mismatch_outside_classifier_is_a_weights_error(tmp_path, resnet18_10):
    sd = dict(resnet18_10)
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)  # resnet18's stem is 7x7
    path = tmp_path / "shape.pth"
    torch.save(sd, path)
    with pytest.raises(ModelFileError, match=r"conv1\.weight"):
        create_model("resnet18", num_classes=10, weights=str(path))


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_state_dict_file(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a pickle at all" * 10)
    with pytest.raises(ModelFileError, match="cannot read weights"):
        load_state_dict_file(junk)
    nontensor = tmp_path / "list.pth"
    torch.save([1, 2, 3], nontensor)
    with pytest.raises(ModelFileError, match="no state dict"):
        load_state_dict_file(nontensor)


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a file that needs arbitrary globals is rejected, not executed."""
    path = tmp_path / "obj.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "cfg": logging.Formatter()}, path)
    with pytest.raises(ModelFileError, match="cannot read weights"):
        load_state_dict_file(path)


def test_corrupt_safetensors_is_a_weights_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(ModelFileError):
        load_state_dict_file(path)


def test_se_resnext_has_cadene_state_dict_keys():
    keys = set(create_model("se_resnext50_32x4d", num_classes=5).state_dict())
    for k in (
        "layer0.conv1.weight",
        "layer0.bn1.running_mean",
        "layer1.0.se_module.fc1.weight",
        "layer1.0.se_module.fc2.bias",
        "layer1.0.downsample.0.weight",
        "layer4.2.conv3.weight",
        "last_linear.weight",
        "last_linear.bias",
    ):
        assert k in keys, k
    assert not any(k.startswith(("fc.", "conv1.", "stem.")) for k in keys)


def test_se_resnext_cadene_weights_into_new_head(tmp_path):
    torch.manual_seed(4)
    src = create_model("se_resnext50_32x4d").state_dict()  # 1000 classes, Cadene layout
    path = tmp_path / "se_resnext50_32x4d-cadene.pth"
    torch.save(src, path)
    model = create_model("se_resnext50_32x4d", num_classes=5, weights=str(path))
    assert model.last_linear.out_features == 5
    _assert_same_state(model, src, skip=("last_linear.",))


@pytest.mark.parametrize("src_classes", [7, 1000])
def test_googlenet_drops_torchvision_aux_heads(tmp_path, src_classes):
    torch.manual_seed(5)
    tv = torchvision.models.googlenet(aux_logits=True, init_weights=True, num_classes=src_classes)
    sd = tv.state_dict()
    assert any(k.startswith("aux1.") for k in sd) and any(k.startswith("aux2.") for k in sd)
    path = tmp_path / "googlenet.pth"
    torch.save({"module." + k: v for k, v in sd.items()}, path)
    model = create_model("googlenet", num_classes=7, weights=str(path))
    assert not any(k.startswith("aux") for k in model.state_dict())
    skip = ("aux1.", "aux2.") + (("fc.",) if src_classes != 7 else ())
    _assert_same_state(model, sd, skip=skip)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 7)


def test_reset_classifier_and_unwrap():
    model = create_model("mobilenet_v2", num_classes=1000)
    reset_classifier(model, model_cfg_of(model), 3)
    assert model.classifier[1].out_features == 3
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    assert model_cfg_of(wrapped).classifier == "classifier.1"
    with pytest.raises(ValueError, match="create_model"):
        model_cfg_of(nn.Linear(2, 2))
