"""Recipes: YAML files shipped in `visionzoo/config/recipes/`, one per seed model, each with run modes;
and layer_config, which stacks a run's layers: defaults < recipe < mode < config < settings.

A recipe file holds `description`, `source`, `config` (overrides of TrainConfig defaults) and
`modes` (named overrides on top of `config`, e.g. a full accuracy run and a short performance run).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from .schema import SECTIONS, ConfigError, TrainConfig, apply_overrides, load_yaml, spelled

# what a run's config layer may be: a TrainConfig, a mapping like a YAML config, or a YAML file's path
ConfigLike = TrainConfig | Mapping[str, Any] | str | os.PathLike[str] | None

_TOP_KEYS = {"description", "source", "default_mode", "config", "modes"}


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    source: str
    default_mode: str
    config: dict[str, Any]
    modes: dict[str, dict[str, Any]]

    def resolve(self, mode: str | None = None, base: TrainConfig | None = None) -> TrainConfig:
        mode = mode or self.default_mode
        if mode not in self.modes:
            raise ConfigError(
                f"recipe {self.name!r} has no mode {mode!r}; modes: {', '.join(self.modes)}"
            )
        cfg = apply_overrides(base or TrainConfig(), self.config, f"recipe {self.name}")
        cfg = apply_overrides(cfg, self.modes[mode] or {}, f"recipe {self.name} mode {mode}")
        cfg.recipe, cfg.mode = self.name, mode
        return cfg


def _parse(name: str, text: str) -> Recipe:
    data = yaml.safe_load(text) or {}
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"recipe {name}: unknown top-level keys {sorted(unknown)}")
    modes = data.get("modes") or {"full": {}}
    recipe = Recipe(
        name=name,
        description=data.get("description", ""),
        source=data.get("source", ""),
        default_mode=data.get("default_mode", next(iter(modes))),
        config=data.get("config") or {},
        modes=modes,
    )
    for mode in recipe.modes:  # validate every mode eagerly: a broken recipe fails at listing time
        recipe.resolve(mode)
    return recipe


def list_recipes() -> list[str]:
    files = resources.files("visionzoo.config").joinpath("recipes")
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def get_recipe(name: str) -> Recipe:
    names = list_recipes()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ConfigError(f"unknown recipe {name!r}{hint} (see `visionzoo recipes`)")
    text = resources.files("visionzoo.config").joinpath("recipes", f"{name}.yaml").read_text()
    return _parse(name, text)


def layer_config(recipe: str | None = None, mode: str | None = None, config: ConfigLike = None,
                 overrides: Mapping[str, Any] | None = None, source: str = "settings") -> TrainConfig:
    """The run config, layered: built-in defaults < recipe < recipe mode < config < overrides; not yet validated
    (training does that). The one layering `visionzoo train` (flags) and `visionzoo.train(**settings)` share.

    config: a YAML file's path (`--config`), a mapping like a YAML config (nested sections or flat field names),
    or a TrainConfig, taken whole as the layers below overrides (copied: the run writes into its config) and so
    refused with a recipe. overrides: field names of any section, or a whole section (optim=OptimConfig(...)
    replaces the section). source names the overrides (and a mapping config) in messages; unknown names are a
    ConfigError with the close matches.
    """
    python = not spelled("mode").startswith("--")  # the library's callers know these as arguments, not flags
    if recipe is not None and isinstance(config, TrainConfig):
        raise ConfigError(f"{source}: recipe={recipe!r} and a TrainConfig both say what to run; pass one" if python
                          else "--recipe and a whole config both say what to run; pass one")
    if mode is not None and recipe is None:
        raise ConfigError(f"{source}: mode={mode!r} needs recipe=NAME" if python else "--mode needs --recipe")
    cfg = get_recipe(recipe).resolve(mode) if recipe is not None else TrainConfig()
    if isinstance(config, TrainConfig):
        cfg = apply_overrides(config, {}, source)  # a copy, sections included
    elif isinstance(config, Mapping):
        cfg = apply_overrides(cfg, dict(config), source)
    elif isinstance(config, str | os.PathLike):
        cfg = apply_overrides(cfg, load_yaml(os.fspath(config)), os.fspath(config))
    elif config is not None:
        raise ConfigError(f"config: expected a TrainConfig, a mapping or a YAML file's path, got "
                          f"{type(config).__name__} {config!r}")
    overrides = dict(overrides or {})
    # a section given whole replaces the section (its type checked by TrainConfig, naming the field); every
    # other setting goes through the same coercion and did-you-mean as a YAML key
    whole: dict[str, Any] = {k: copy.copy(v) for k, v in overrides.items()
                             if k in SECTIONS and dataclasses.is_dataclass(v)}
    if whole:
        cfg = dataclasses.replace(cfg, **whole)
    return apply_overrides(cfg, {k: v for k, v in overrides.items() if k not in whole}, source)
