"""Optional dependencies: what only some commands need is an install extra, imported where it is used.

`require` imports such a module or says, in one line, which extra installs it, instead of a traceback
ending in ModuleNotFoundError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import VisionZooError

# extra -> the distributions it installs (kept in step with pyproject.toml's optional-dependencies)
EXTRAS = {
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "quantize": ("torchao", "onnx", "onnxruntime"),
    "plots": ("matplotlib",),
    "hf": ("datasets",),
    "mlflow": ("mlflow-skinny",),
    "wandb": ("wandb",),
    "hub": ("huggingface_hub",),
    "stream": ("braceexpand", "fsspec", "aiohttp"),
    "webdataset": ("webdataset",),
    "serve": ("starlette", "uvicorn", "python-multipart", "prometheus-client", "httpx"),
    "check": ("imagehash", "cleanlab"),
}


class MissingExtraError(VisionZooError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that installs it.

    An ImportError too, so callers that treat a missing package as "unavailable" keep doing so."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """import module, or raise MissingExtraError: "<purpose> needs <package>: pip install 'visionzoo[<extra>]'".

    Only the module itself (or its top-level package) being absent is reported that way: an ImportError
    from inside an installed package is a broken install, and its own message says more.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name != top and not module.startswith(f"{e.name}."):
            raise
        raise MissingExtraError(f"{purpose} needs {top}: pip install 'visionzoo[{extra}]'") from None
