"""The library's training entry point for notebooks and scripts: `visionzoo.train(...)`.

    visionzoo.train(model="resnet18", data="builtin:digits", epochs=1, img_size=32, output="runs/nb")
    visionzoo.train(cfg)                                  # a TrainConfig, as built or loaded
    visionzoo.train("runs/x/config.yaml", lr=0.05)        # a YAML config (a run's config.yaml), settings on top
    visionzoo.train(recipe="resnet50", mode="perf", data="/data/imagenet")

Settings are config field names from any section (lr, img_size, sched, ...), resolved as the command line
resolves its flags: defaults < recipe < mode < config < settings. Errors name the fields, not flags.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from .config import SECTIONS, TrainConfig, apply_overrides, load_yaml
from .core.errors import ConfigError

SOURCE = "visionzoo.train"  # how messages about the settings passed here start

ConfigLike = TrainConfig | Mapping[str, Any] | str | os.PathLike[str] | None


def build_config(config: ConfigLike = None, /, **settings: Any) -> TrainConfig:
    """The TrainConfig `train(config, **settings)` would run, not yet validated (train does that).

    config: a TrainConfig (copied: the caller's object is left as it is), a mapping like a YAML config
    (nested sections or flat field names), or a YAML file's path. settings: field names of any section, or a
    whole section (optim=OptimConfig(...) or optim={"lr": 0.1}); recipe= and mode= start from a recipe.
    An unknown name is a ConfigError with the close matches.
    """
    recipe, mode = settings.pop("recipe", None), settings.pop("mode", None)
    if recipe is not None and isinstance(config, TrainConfig):
        raise ConfigError(f"{SOURCE}: recipe={recipe!r} and a TrainConfig both say what to run; pass one")
    if recipe is not None:
        from .config.recipes import get_recipe

        cfg = get_recipe(recipe).resolve(mode)
    elif mode is not None:
        raise ConfigError(f"{SOURCE}: mode={mode!r} needs recipe=NAME")
    else:
        cfg = TrainConfig()

    if isinstance(config, TrainConfig):
        cfg = apply_overrides(config, {}, SOURCE)  # a copy: the run writes its output folder into its config
    elif isinstance(config, Mapping):
        cfg = apply_overrides(cfg, dict(config), SOURCE)
    elif isinstance(config, str | os.PathLike):
        cfg = apply_overrides(cfg, load_yaml(os.fspath(config)), os.fspath(config))
    elif config is not None:
        raise ConfigError(f"config: expected a TrainConfig, a mapping or a YAML file's path, got "
                          f"{type(config).__name__} {config!r}")

    # a section given whole replaces the section (its type checked by TrainConfig, naming the field); every
    # other setting goes through the same coercion and did-you-mean as a YAML key
    whole: dict[str, Any] = {k: copy.copy(v) for k, v in settings.items()
                             if k in SECTIONS and dataclasses.is_dataclass(v)}
    if whole:
        cfg = dataclasses.replace(cfg, **whole)
    return apply_overrides(cfg, {k: v for k, v in settings.items() if k not in whole}, SOURCE)


def train(config: ConfigLike = None, /, **settings: Any) -> dict[str, Any]:
    """Train (and evaluate) a model; returns the run's summary: output folder, best top-1, checkpoint, epochs run.

    `train(model="resnet18", data="builtin:digits", epochs=1)` or `train(cfg)`; see build_config for what
    config and settings may be.
    """
    from .engine.trainer import train as run_training

    return run_training(build_config(config, **settings))
