"""visionzoo: train, evaluate, benchmark and export image classifiers in PyTorch.

The library API: `create_model`, `train(config)`, `evaluate(model_file)`; `docs/architecture.md` maps
the package.
"""

from .config import TrainConfig
from .core import __version__
from .core.errors import ConfigError, DataError, ModelFileError, VisionZooError
from .engine.trainer import train
from .inference.evaluate import evaluate
from .models import create_model, list_models, register_model

__all__ = ["ConfigError", "DataError", "ModelFileError", "TrainConfig", "VisionZooError", "__version__",
           "create_model", "evaluate", "list_models", "register_model", "train"]
