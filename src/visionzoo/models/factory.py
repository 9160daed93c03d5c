"""Building models by name: registered builders first, then timm; local weights on top."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import cast

from torch import nn

from ..core.errors import ConfigError, ModelFileError
from .registry import ModelCfg, get_model_cfg, model_cfg_of, registered_builder
from .weights import load_weights


def reset_classifier(model: nn.Module, cfg: ModelCfg, num_classes: int) -> None:
    """Replace the final Linear layer with a fresh one of num_classes outputs."""
    timm_reset = getattr(model, "reset_classifier", None)
    if timm_reset is not None and cfg.source == "timm":
        timm_reset(num_classes)
        return
    assert isinstance(cfg.classifier, str), "models with several heads are timm's (reset_classifier above)"
    parent_path, _, attr = cfg.classifier.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    # a numbered child is an index into a Sequential (vgg's classifier.6)
    old = getattr(parent, attr) if not attr.isdigit() else cast(nn.Sequential, parent)[int(attr)]
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"{cfg.classifier} is {type(old).__name__}, not a Linear classifier: it cannot be "
                          "replaced by a fresh head (--reset-classifier, or --pretrained with another class count)")
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    if attr.isdigit():
        cast(nn.Sequential, parent)[int(attr)] = new
    else:
        setattr(parent, attr, new)


def zero_head(model: nn.Module) -> None:
    """Zero the classifier(s) of a model whose head starts fresh on pretrained features (BiT's fine-tuning
    practice, Kolesnikov et al. 2020): the first logits are all 0 (loss ln C), and the backbone's first
    gradients come only once the head has learnt something, instead of from a random head's large logits."""
    cfg = model_cfg_of(model)
    heads = (cfg.classifier,) if isinstance(cfg.classifier, str) else tuple(cfg.classifier or ())
    for path in filter(None, heads):
        layer = model.get_submodule(path)
        if isinstance(layer, nn.Linear):
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def create_model(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = False,
    weights: str | None = None,
    drop_path: float | None = None,
    dropout: float | None = None,
) -> nn.Module:
    """Build a model by name.

    num_classes: size of the head (default: the model's 1000).
    pretrained: the library's hub weights (torchvision or timm; needs internet or a warm cache).
    weights: a local file (state dict, visionzoo/timm/torchvision checkpoint, or .safetensors).
    drop_path, dropout: stochastic depth and classifier dropout rates, for models that take them (a model
    that does not is a ConfigError naming the flag).
    The returned module carries `visionzoo_cfg` (a ModelCfg with num_classes set) and `visionzoo_name`.
    """
    cfg = get_model_cfg(name)
    n = cfg.num_classes if num_classes is None else num_classes
    options = {k: v for k, v in (("drop_path", drop_path), ("dropout", dropout)) if v is not None}
    builder = registered_builder(name)
    if builder is not None:
        # hub weights come with a 1000-way head: build that, load, then resize
        with _downloading(name, pretrained):
            model = _with_options(name, options, builder, num_classes=cfg.num_classes if pretrained else n,
                                  pretrained=pretrained)
        if pretrained and n != cfg.num_classes:
            reset_classifier(model, cfg, n)
    else:
        import timm

        timm_names = {"drop_path": "drop_path_rate", "dropout": "drop_rate"}
        with _downloading(name, pretrained):
            model = _with_options(name, {timm_names[k]: v for k, v in options.items()}, timm.create_model, name,
                                  pretrained=pretrained, num_classes=n)
        if not cfg.classifier:
            cfg = replace(cfg, classifier=getattr(model, "default_cfg", {}).get("classifier", ""))
    cfg = replace(cfg, num_classes=n)
    model.visionzoo_cfg = cfg  # type: ignore[assignment]
    model.visionzoo_name = name  # type: ignore[assignment]
    if weights:
        load_weights(model, weights)
    return model


@contextlib.contextmanager
def _downloading(name: str, pretrained: bool) -> Iterator[None]:
    """A hub download that fails (no network, a proxy, a server error: all OSErrors, urllib's URLError
    included) is one line naming the model and the way around it, not the HTTP client's traceback."""
    try:
        yield
    except OSError as e:
        if not pretrained:
            raise
        reason = getattr(e, "reason", None) or e.strerror or str(e) or type(e).__name__
        raise ModelFileError(f"--pretrained {name}: the weights could not be downloaded ({reason}); without a "
                             "network, pass a local weights file with --weights FILE") from None


def _with_options(name: str, options: dict[str, float], build, *args, **kwargs) -> nn.Module:
    """build(*args, **kwargs, **options); an option the model's constructor does not take is a ConfigError."""
    try:
        return build(*args, **kwargs, **options)
    except TypeError as e:
        unknown = [k for k in options if k in str(e)]
        if not unknown:
            raise
        flag = {"drop_path_rate": "--drop-path", "drop_path": "--drop-path", "drop_rate": "--dropout",
                "dropout": "--dropout"}[unknown[0]]
        raise ConfigError(f"{flag}: {name} takes no such rate (a model without it, e.g. no stochastic depth)") from None
