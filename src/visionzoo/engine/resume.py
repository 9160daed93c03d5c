"""What an exact resume needs besides the weights: every rank's RNG state, and which file to resume."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..config import TrainConfig, spelled
from ..core.distributed import DistInfo, all_gather_objects
from ..core.errors import ModelFileError
from ..core.precision import parse_precision
from ..models.checkpoint import Checkpoint


def rng_state() -> dict[str, Any]:
    np_state = cast(tuple, np.random.get_state())  # the legacy tuple form
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store it as a tensor
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng(dist: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state, so each rank resumes its own stream."""
    return all_gather_objects(rng_state())


def resume_path(cfg: TrainConfig, out: Path) -> Path | None:
    """--resume PATH, or OUTPUT/last.pth for --resume auto when there is one."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        p = out / "last.pth"
        return p if p.is_file() else None
    return Path(cfg.resume)


def load_resume(path: Path) -> Checkpoint:
    """The checkpoint to resume from; one that holds no training state is a ModelFileError naming it."""
    ckpt = Checkpoint.load(path)
    if not ckpt.has_training_state:
        # the command line's name for weights is --init-from when it starts a run from a checkpoint
        init = "--init-from" if spelled("weights").startswith("--") else spelled("weights")
        raise ModelFileError(f"{spelled('resume', str(path))}: the checkpoint holds no training state (optimizer, "
                             f"epoch); start a new run from its weights with {init} instead")
    return ckpt


def resumed_step_settings(cfg: TrainConfig, ckpt: Checkpoint | None) -> tuple[str, bool | None]:
    """precision and channels_last as asked, with "auto" / None taken from the resumed checkpoint's config."""
    precision, channels_last = cfg.precision, cfg.model.channels_last
    saved = (ckpt.config if ckpt is not None else None) or {}
    key = next((k for k in ("precision", "amp") if k in saved), None)  # amp: an earlier version's key
    if precision == "auto" and key is not None:
        precision = parse_precision(saved[key], what=f"the resumed checkpoint's {key}")
    if channels_last is None and "channels_last" in (saved.get("model") or {}):
        channels_last = saved["model"]["channels_last"]
    return precision, channels_last


def restore_rng(ckpt: Checkpoint, dist: DistInfo) -> None:
    states = ckpt.rng or []
    if states:
        set_rng_state(states[min(dist.rank, len(states) - 1)])
