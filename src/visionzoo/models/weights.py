"""Loading weights from local files in any of the layouts users bring.

Accepted: a bare state dict, a visionzoo checkpoint (`model`), a pytorch/examples or timm
training checkpoint (`state_dict`), or a .safetensors file; keys may carry DDP `module.` or
torch.compile `_orig_mod.` prefixes. Files are read with `weights_only=True`: no code runs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ModelFileError
from ..core.integrity import verify_digest
from .registry import model_cfg_of

log = logging.getLogger(__name__)

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6 is a zip archive
PICKLE_PROTO = b"\x80"  # the first byte of a pickle (protocol 2+): torch's legacy format


def unreadable_reason(path: Path, error: Exception) -> str:
    """Why torch.load(weights_only=True) could not read a file, in words: not PyTorch's internal miniz or
    unpickler text (which blames the checkpoint's saving and suggests weights_only=False)."""
    text = str(error)
    with path.open("rb") as f:
        head = f.read(len(ZIP_MAGIC))
    # the first bytes before torch's message: a text file's letters read as pickle opcodes, which torch's
    # unpickler reports as unsupported objects
    if head != ZIP_MAGIC and not head.startswith(PICKLE_PROTO):
        return "not a PyTorch checkpoint (neither the zip archive torch.save writes nor a pickle)"
    if "Weights only load failed" in text:  # torch's refusal of anything but tensors and plain containers
        m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        detail = m.group(1).split(" Please use")[0].strip().rstrip(".") if m else type(error).__name__
        return f"holds objects other than tensors and plain containers ({detail}), which visionzoo does not unpickle"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    if head == ZIP_MAGIC:
        m = re.search(r"failed reading zip archive: ([^.]+)", text)
        # "[enforce fail at inline_container.cc:180] . file in archive ..." -> "file in archive ..."
        detail = m.group(1) if m else re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", first)
        return f"truncated or not a PyTorch checkpoint (zip archive: {detail[:200]})"
    if head.startswith(PICKLE_PROTO):
        return f"truncated or not a PyTorch checkpoint (legacy pickle format: {first[:200]})"
    return "not a PyTorch checkpoint (neither the zip archive torch.save writes nor a pickle)"


def read_weights_only(path: Path, unreadable: str, empty: str) -> Any:
    """torch.load(weights_only=True: no code runs) of a file, its content digest checked where it has one; an
    empty or unreadable file is a ModelFileError: `empty`, or `unreadable` followed by why."""
    if path.stat().st_size == 0:
        raise ModelFileError(empty)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, text files, truncated files, disallowed globals
        raise ModelFileError(f"{unreadable}: {unreadable_reason(path, e)}") from None
    return verify_digest(obj, path)


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP/compile wrapper prefixes, however they are nested (module._orig_mod.x -> x)."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p) :], True
        out[key] = value
    return out


def load_state_dict_file(path: str | Path, raw: bool = False) -> dict[str, torch.Tensor]:
    """Read a weights file and return a plain, prefix-free state dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes): not a weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as e:  # safetensors' own error type for corrupt headers
            raise ModelFileError(f"cannot read weights from {path}: {e}") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors, truncated files, disallowed globals
            raise ModelFileError(f"cannot read weights from {path}: {unreadable_reason(path, e)}") from None
        obj = verify_digest(obj, path)  # a visionzoo checkpoint carries its content digest
        sd = obj
        if isinstance(obj, dict) and isinstance(obj.get("ema"), dict) and not raw:
            sd = obj["ema"].get("state_dict")  # a visionzoo checkpoint's EMA weights, unless raw ones are asked
        elif isinstance(obj, dict):
            for key in ("model", "state_dict", "model_state_dict"):
                if isinstance(obj.get(key), dict):
                    sd = obj[key]
                    break
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ModelFileError(f"{path} holds no state dict of tensors")
    return strip_prefixes(sd)


def check_tensors(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights the model would load silently and then predict `nan` with: a tensor of another shape
    (named, with both shapes), integer values where the model's are float, NaN or infinity."""
    for key, value in sd.items():
        mine = own.get(key)
        if mine is not None and value.shape != mine.shape:
            raise ModelFileError(f"{path}: {key} has shape {tuple(value.shape)}, the model's {tuple(mine.shape)}")
        if mine is not None and mine.is_floating_point() and not value.is_floating_point():
            raise ModelFileError(f"{path}: {key} holds {value.dtype} values where the model's are {mine.dtype} "
                                 "(not trained weights)")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(f"{path}: {key} holds NaN or infinite values (weights of a diverged run?)")


def head_size(state_dict: dict[str, torch.Tensor], classifier: str | tuple[str, ...]) -> int | None:
    """The output size of the classifier (a ModelCfg.classifier path) in a state dict, if it is there."""
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for head in filter(None, heads):
        weight = state_dict.get(f"{head}.weight")
        if weight is not None and weight.ndim >= 1:
            return int(weight.shape[0])
    return None


def load_weights(model: nn.Module, path: str | Path, strict: bool = True, keep_head: bool = False,
                 raw: bool = False) -> bool:
    """Load a local weights file into a model built by create_model.

    A classifier of another size than the model's (e.g. 1000-way ImageNet weights into a
    10-class model) is left at its fresh initialisation and reported, or with keep_head (inference:
    the file's classifier is the point) refused; any other missing or unexpected key is an error. A
    visionzoo checkpoint with EMA weights gives those, unless raw.
    A model with its own initialisation from other weights (`init_from_state_dict`, e.g. OLTR stage 2
    from a stage-1 checkpoint) takes the state dict itself.
    Returns whether the classifier was left fresh (the file's is of another size).
    """
    cfg = model_cfg_of(model)
    sd = load_state_dict_file(path, raw)
    init_from = getattr(model, "init_from_state_dict", None)
    if init_from is not None:
        init_from(sd, str(path))
        return False
    sd = {k: v for k, v in sd.items() if not any(k.startswith(p) for p in cfg.drop_keys)}
    own = model.state_dict()
    skipped = []
    heads = (cfg.classifier,) if isinstance(cfg.classifier, str) else tuple(cfg.classifier or ())
    for head in filter(None, heads):  # timm's distilled models have two heads
        for suffix in ("weight", "bias"):
            key = f"{head}.{suffix}"
            if key in sd and key in own and sd[key].shape != own[key].shape:
                skipped.append(f"{key} {tuple(sd[key].shape)} -> {tuple(own[key].shape)}")
                del sd[key]
    wrong = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise ModelFileError(f"{path} does not fit {getattr(model, 'visionzoo_name', type(model).__name__)}: "
                           f"{len(wrong)} tensors of another shape, e.g. {'; '.join(wrong[:3])}")
    check_tensors(sd, own, path)
    result = model.load_state_dict(sd, strict=False)
    dropped = {s.split(" ")[0] for s in skipped}
    missing = [k for k in result.missing_keys if k not in dropped]
    if strict and (missing or result.unexpected_keys):
        raise ModelFileError(
            f"{path} does not fit {getattr(model, 'visionzoo_name', type(model).__name__)}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {result.unexpected_keys[:5]}"
            f"{'...' if len(result.unexpected_keys) > 5 else ''} ({len(result.unexpected_keys)})"
        )
    if skipped and keep_head:
        raise ModelFileError(f"{path}: its classifier does not fit the model's ({'; '.join(skipped)}); give the "
                             "file's class count with --num-classes")
    if skipped:
        log.warning("classifier left freshly initialised (shape differs): %s", "; ".join(skipped))
    log.info("loaded weights from %s", path)
    return bool(skipped)
