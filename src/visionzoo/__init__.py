"""visionzoo: train, evaluate, benchmark and export image classifiers in PyTorch."""

__version__ = "0.1.0"

from .config import TrainConfig  # noqa: E402
from .engine import evaluate, train  # noqa: E402
from .models import create_model, list_models, register_model  # noqa: E402

__all__ = ["TrainConfig", "__version__", "create_model", "evaluate", "list_models", "register_model", "train"]
