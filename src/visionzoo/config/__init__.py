"""The run configuration: typed sections (schema) and the shipped recipes (recipes, YAML in recipes/)."""

from ..core.errors import ConfigError
from .recipes import ConfigLike, Recipe, get_recipe, layer_config, list_recipes
from .schema import (
    CHOICES,
    KEY_ALIASES,
    KEYWORDS,
    SECTIONS,
    AugConfig,
    DataConfig,
    DistillConfig,
    LongTailConfig,
    ModelConfig,
    OptimConfig,
    SchedConfig,
    TrainConfig,
    apply_overrides,
    check_data,
    check_decode,
    coerce,
    default_workers,
    field_help,
    field_index,
    field_type,
    flag_names,
    flatten,
    from_dict,
    getattr_path,
    load_yaml,
    save_yaml,
    spelled,
    suggest,
    to_dict,
    validate,
)
from .sizes import SizeSchedule, eval_size, fixres_eval_size, parse_size_schedule

__all__ = [
    "CHOICES", "KEY_ALIASES", "KEYWORDS", "SECTIONS", "AugConfig", "ConfigError", "ConfigLike", "DataConfig",
    "DistillConfig", "LongTailConfig",
    "ModelConfig", "OptimConfig", "Recipe", "SchedConfig", "TrainConfig", "apply_overrides", "check_data",
    "check_decode", "coerce", "default_workers", "field_help", "field_index", "field_type", "flag_names", "flatten",
    "from_dict", "get_recipe", "getattr_path", "layer_config", "list_recipes", "load_yaml", "save_yaml", "spelled",
    "suggest", "to_dict", "validate", "SizeSchedule", "eval_size", "fixres_eval_size", "parse_size_schedule",
]
