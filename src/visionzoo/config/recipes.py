"""Recipes: YAML files shipped in `visionzoo/config/recipes/`, one per seed model, each with run modes.

A recipe file holds `description`, `source`, `config` (overrides of TrainConfig defaults) and
`modes` (named overrides on top of `config`, e.g. a full accuracy run and a short performance run).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from .schema import ConfigError, TrainConfig, apply_overrides

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
