"""visionzoo: train, evaluate, benchmark and export image classifiers in PyTorch.

The library API: `create_model`, `train(model=..., data=..., **settings)` or `train(config)`,
`evaluate(model_file, data)`, `predict(model_file, images)`, `average(run_or_files, output)`;
`docs/architecture.md` maps the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import TrainConfig
from .core import __version__
from .core.errors import ConfigError, DataError, ModelFileError, VisionZooError

if TYPE_CHECKING:
    from .api import train
    from .inference.average import average
    from .inference.evaluate import evaluate
    from .inference.predict import predict
    from .models import create_model, list_models, register_model

# the names that need torch, imported on first use: `import visionzoo` (and so `visionzoo --help`) stays light
_LAZY = {"train": ".api", "evaluate": ".inference.evaluate", "predict": ".inference.predict",
         "average": ".inference.average",
         "create_model": ".models", "list_models": ".models",
         "register_model": ".models"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # once: later lookups do not come back here
        return value
    raise AttributeError(f"module 'visionzoo' has no attribute {name!r}")


__all__ = ["ConfigError", "DataError", "ModelFileError", "TrainConfig", "VisionZooError", "__version__",
           "average", "create_model", "evaluate", "list_models", "predict", "register_model", "train"]
