"""tau-normalisation (Kang et al., "Decoupling Representation and Classifier", ICLR 2020).

Each class's classifier weight vector w_i becomes w_i / |w_i|^tau and the bias is dropped, which
evens out the larger norms head classes acquire under instance-balanced training (tau = 0: unchanged
weights, bias removed; tau = 1: fully normalised).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError, ModelFileError
from ..models.checkpoint import Checkpoint
from ..models.registry import get_model_cfg


def classifier_keys(model_name: str, state: dict[str, torch.Tensor]) -> tuple[str, str | None]:
    if model_name.startswith("oltr_"):
        raise ConfigError(f"{model_name}: OLTR's classifier is cosine-normalised already; tau-norm is for plain heads")
    cls = get_model_cfg(model_name).classifier
    name = cls if isinstance(cls, str) else cls[-1]
    if not name or f"{name}.weight" not in state:
        raise ConfigError(f"{model_name}: no plain Linear classifier to tau-normalise")
    return f"{name}.weight", (f"{name}.bias" if f"{name}.bias" in state else None)


def tau_normalise(state: dict[str, torch.Tensor], weight_key: str, bias_key: str | None, tau: float) -> dict:
    out = dict(state)
    w = state[weight_key]
    out[weight_key] = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau)
    if bias_key:
        out[bias_key] = torch.zeros_like(state[bias_key])
    return out


def tau_norm_checkpoint(checkpoint: str | Path, tau: float, output: str | Path) -> dict[str, Any]:
    """Write a copy of a visionzoo checkpoint with a tau-normalised classifier (training state dropped)."""
    ckpt = Checkpoint.load(checkpoint)
    if not ckpt.model_name:
        raise ModelFileError(f"{checkpoint} has no model name: tau-norm needs a checkpoint visionzoo trained")
    wk, bk = classifier_keys(ckpt.model_name, ckpt.model)
    out = ckpt.without_training_state()
    out.model = tau_normalise(ckpt.model, wk, bk, tau)
    out.tau_norm = {"tau": tau, "source": str(checkpoint)}
    out.save(output)
    return {"output": str(output), "tau": tau, "classifier": wk}
