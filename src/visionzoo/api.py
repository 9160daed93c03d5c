"""The library's training entry point for notebooks and scripts: `visionzoo.train(...)`.

    visionzoo.train(model="resnet18", data="builtin:digits", epochs=1, img_size=32, output="runs/nb")
    visionzoo.train(cfg)                                  # a TrainConfig, as built or loaded
    visionzoo.train("runs/x/config.yaml", lr=0.05)        # a YAML config (a run's config.yaml), settings on top
    visionzoo.train(recipe="resnet50", mode="perf", data="/data/imagenet")

Settings are config field names from any section (lr, img_size, sched, ...), resolved as the command line
resolves its flags: defaults < recipe < mode < config < settings. Errors name the fields, not flags.
"""

from __future__ import annotations

from typing import Any

from .config import ConfigLike, TrainConfig, layer_config

SOURCE = "visionzoo.train"  # how messages about the settings passed here start


def build_config(config: ConfigLike = None, /, **settings: Any) -> TrainConfig:
    """The TrainConfig `train(config, **settings)` would run, not yet validated (train does that).

    config: a TrainConfig (copied: the caller's object is left as it is), a mapping like a YAML config
    (nested sections or flat field names), or a YAML file's path. settings: field names of any section, or a
    whole section (optim=OptimConfig(...) or optim={"lr": 0.1}); recipe= and mode= start from a recipe.
    An unknown name is a ConfigError with the close matches.
    """
    recipe, mode = settings.pop("recipe", None), settings.pop("mode", None)
    return layer_config(recipe, mode, config, settings, SOURCE)  # the layering the command line uses too


def train(config: ConfigLike = None, /, **settings: Any) -> dict[str, Any]:
    """Train (and evaluate) a model; returns the run's summary: output folder, best top-1, checkpoint, epochs run.

    `train(model="resnet18", data="builtin:digits", epochs=1)` or `train(cfg)`; see build_config for what
    config and settings may be.
    """
    from .engine.trainer import train as run_training

    return run_training(build_config(config, **settings))
