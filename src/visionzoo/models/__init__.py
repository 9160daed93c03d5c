from . import oltr, senet, torchvision_models  # noqa: F401  (registers the models)
from .registry import (
    ModelCfg,
    UnknownModelError,
    count_params,
    create_model,
    get_model_cfg,
    list_models,
    model_cfg_of,
    register_model,
    reset_classifier,
    unwrap_model,
)
from .weights import load_state_dict_file, load_weights, strip_prefixes

__all__ = [
    "ModelCfg",
    "UnknownModelError",
    "count_params",
    "create_model",
    "get_model_cfg",
    "list_models",
    "load_state_dict_file",
    "load_weights",
    "model_cfg_of",
    "register_model",
    "reset_classifier",
    "strip_prefixes",
    "unwrap_model",
]
