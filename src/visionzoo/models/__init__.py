"""Models: the registry (timm-style `@register_model`), building by name, weights files and checkpoints."""

from . import oltr, senet, torchvision_models  # noqa: F401  (registers the models)
from .checkpoint import Checkpoint, model_from_checkpoint
from .factory import create_model, reset_classifier, zero_head
from .registry import (
    ModelCfg,
    UnknownModelError,
    count_params,
    get_model_cfg,
    is_hub_name,
    list_models,
    model_cfg_of,
    model_name_of,
    register_model,
    unwrap_model,
)
from .weights import load_state_dict_file, load_weights, strip_prefixes

__all__ = [
    "Checkpoint",
    "ModelCfg",
    "UnknownModelError",
    "count_params",
    "create_model",
    "get_model_cfg",
    "is_hub_name",
    "list_models",
    "load_state_dict_file",
    "load_weights",
    "model_cfg_of",
    "model_from_checkpoint",
    "model_name_of",
    "register_model",
    "reset_classifier",
    "zero_head",
    "strip_prefixes",
    "unwrap_model",
]
