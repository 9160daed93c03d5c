"""Model registry in the style of timm: `@register_model` builders with a `default_cfg`.

Registered names are the seed models; any other name is looked up in timm, so every timm
model is available under its timm name. Building a model is `factory.create_model`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from ..core.errors import ConfigError, VisionZooError


@dataclass(frozen=True)
class ModelCfg:
    """What the data pipeline and the weight loader need to know about a model."""

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    num_classes: int = 1000
    classifier: str | tuple[str, ...] = "fc"  # dotted path(s) of the final Linear layer(s)
    source: str = "torchvision"  # torchvision | timm
    drop_keys: tuple[str, ...] = field(default_factory=tuple)  # key prefixes ignored on load
    # the norm layer right before pooling, whose statistics FixRes fine-tuning re-estimates at the new
    # test size (ResNets); None: only the classifier adapts
    final_norm: str | None = None
    # class names in label order, where the model's own config has them (a hub folder's label_names)
    label_names: tuple[str, ...] | None = None
    # a hub model's (local-dir:/hf-hub:) architecture, where that name alone rebuilds the same model: what a
    # checkpoint records (model_name_of), since a folder's path does not travel with it
    architecture: str | None = None


Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, tuple[Builder, ModelCfg]] = {}


def register_model(cfg: ModelCfg) -> Callable[[Builder], Builder]:
    """Register `fn(num_classes, pretrained) -> nn.Module` under its function name."""

    def wrap(fn: Builder) -> Builder:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__} registered twice")
        _REGISTRY[fn.__name__] = (fn, cfg)
        return fn

    return wrap


def list_models(include_timm: bool = False, pattern: str | None = None) -> list[str]:
    """Registered model names; with include_timm, every timm architecture too."""
    names = sorted(_REGISTRY)
    if include_timm:
        import timm

        names += [n for n in timm.list_models() if n not in _REGISTRY]
    if pattern:
        import fnmatch

        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


class UnknownModelError(ConfigError):
    """No registered or timm model has this name; the message lists close matches."""


# timm's model-name schemes: a folder in the hub layout (config.json, model.safetensors) or a hub repository
HUB_SCHEMES = ("local-dir", "hf-hub")
# registered names whose definition is timm's architecture of that name: the same modules, parameter names and
# forward (torchvision's ResNets); the others that timm also has (vgg16, ...) are different models
TIMM_TWINS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def is_hub_name(name: str) -> bool:
    """local-dir:DIR or hf-hub:ORG/NAME: a model whose architecture, weights and preprocessing come from its
    config.json, read by timm."""
    scheme, sep, rest = name.partition(":")
    return bool(sep and rest) and scheme.lower() in HUB_SCHEMES


def _hub_cfg(name: str) -> ModelCfg:
    """The ModelCfg of a hub-layout model, from its config.json (hf-hub: downloaded, so the network)."""
    import timm
    from timm.models._hub import load_model_config_from_hf, load_model_config_from_path

    scheme, _, ident = name.partition(":")
    try:
        if scheme.lower() == "local-dir":
            if not (Path(ident) / "config.json").is_file():
                raise ConfigError(f"--model {name}: no config.json in {ident} (write one with "
                                  "`visionzoo export --format hub`)")
            pcfg, arch, model_args = load_model_config_from_path(ident)
        else:
            pcfg, arch, model_args = load_model_config_from_hf(ident)
    except VisionZooError:
        raise
    except Exception as e:  # bad JSON, missing keys, no network, no such repository: all the user's to fix
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ConfigError(f"--model {name}: cannot read its config.json ({type(e).__name__}: {first})") from None
    if not timm.is_model(arch):
        raise ConfigError(f"--model {name}: its config.json names architecture {arch!r}, which this timm lacks")
    labels = pcfg.get("label_names")
    cfg = _cfg_from_pretrained(pcfg)
    return replace(cfg, label_names=tuple(str(n) for n in labels) if isinstance(labels, list | tuple) else None,
                   architecture=arch if _rebuilds(arch, model_args, cfg) else None)


def _rebuilds(arch: str, model_args: dict[str, Any], cfg: ModelCfg) -> bool:
    """Whether create_model(arch) builds the model a hub config describes: no constructor arguments beyond the
    architecture's (a checkpoint records the head size itself), a name visionzoo does not register as another
    model, and the same normalisation (a checkpoint records size, crop and interpolation, not mean and std)."""
    if set(model_args) - {"num_classes"} or (arch in _REGISTRY and arch not in TIMM_TWINS):
        return False
    own = get_model_cfg(arch)
    return (tuple(own.mean), tuple(own.std)) == (tuple(cfg.mean), tuple(cfg.std))


def _timm_cfg(name: str) -> ModelCfg:
    import timm

    pcfg = timm.models.get_pretrained_cfg(name)
    if pcfg is None:
        return ModelCfg(source="timm", classifier="")
    return _cfg_from_pretrained(pcfg.to_dict())


def _cfg_from_pretrained(d: dict[str, Any]) -> ModelCfg:
    """A ModelCfg from a timm pretrained_cfg dict."""
    classifier = d.get("classifier")
    return ModelCfg(
        input_size=int(d.get("input_size", (3, 224, 224))[-1]),
        crop_pct=float(d.get("crop_pct", 0.875)),
        interpolation=d.get("interpolation") or "bilinear",
        mean=tuple(d.get("mean", ModelCfg.mean)),
        std=tuple(d.get("std", ModelCfg.std)),
        num_classes=int(d.get("num_classes", 1000)),
        classifier=classifier if isinstance(classifier, str) else "",
        source="timm",
    )


def registered_builder(name: str) -> Builder | None:
    """The builder registered under name, or None (a timm name, or unknown)."""
    entry = _REGISTRY.get(name)
    return entry[0] if entry else None


def get_model_cfg(name: str) -> ModelCfg:
    if name in _REGISTRY:
        return _REGISTRY[name][1]
    if is_hub_name(name):
        return _hub_cfg(name)
    import timm

    if timm.is_model(name):
        return _timm_cfg(name)
    # the registered names first: they are what most typos aim at
    close = difflib.get_close_matches(name, sorted(_REGISTRY), n=3, cutoff=0.6)
    close += [n for n in difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6) if n not in close]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (see `visionzoo models`)")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_cfg_of(model: nn.Module) -> ModelCfg:
    cfg = getattr(unwrap_model(model), "visionzoo_cfg", None)
    if not isinstance(cfg, ModelCfg):
        raise ValueError("model was not built by visionzoo.create_model")
    return cfg


def model_name_of(model: nn.Module) -> str:
    """The name that rebuilds the model (what checkpoints and exported files record): the name create_model built
    it under, or for a model from a hub folder or repository (local-dir:DIR, hf-hub:ORG/NAME) its architecture,
    where that name rebuilds it (ModelCfg.architecture): a fine-tuned copy must not need the folder it began from."""
    inner = unwrap_model(model)
    name = getattr(inner, "visionzoo_name", None)
    if not isinstance(name, str):
        raise ValueError("model was not built by visionzoo.create_model")
    cfg = getattr(inner, "visionzoo_cfg", None)
    return cfg.architecture if isinstance(cfg, ModelCfg) and cfg.architecture and is_hub_name(name) else name


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP (`module.`) and torch.compile (`_orig_mod.`) wrappers, in any order."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__ == "DataParallel":
            assert isinstance(inner, nn.Module)
            model = inner
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]  # checked just above
        else:
            return model

