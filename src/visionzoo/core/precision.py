"""The one precision vocabulary, for training and inference alike.

    fp32   no autocast
    fp16   autocast to float16 (training adds loss scaling)
    bf16   autocast to bfloat16
    int8   a quantised model (inference only; runs as stored, no autocast)
    auto   resolved per device: bf16 on CUDA GPUs with native bf16 (compute capability 8+), fp16 on
           older GPUs, fp32 on CPUs (so a CPU run's numbers do not depend on which CPU it lands on)

The older spellings stay accepted: `none` (and null in YAML) for fp32, and torch's dtype names.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: parsing a precision word needs none of it
    import torch

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
AUTO = "auto"
ALIASES = {"none": "fp32", "null": "fp32", "": "fp32", "float32": "fp32", "float16": "fp16", "half": "fp16",
           "bfloat16": "bf16"}


def parse_precision(value: Any, allowed: tuple[str, ...] = (AUTO, *PRECISIONS), what: str = "precision") -> str:
    """A precision word (aliases mapped: None and 'none' are fp32); ConfigError naming `what` otherwise (the
    field by default: the command line passes its flag)."""
    word = "fp32" if value is None else ALIASES.get(str(value).lower(), str(value).lower())
    if word not in allowed:
        raise ConfigError(f"{what}: {value!r} is not one of {', '.join(allowed)}")
    return word


def native_bf16(device: torch.device) -> bool:
    import torch

    # compute capability 8 (Ampere) and later: torch.cuda.is_bf16_supported() also says yes on older
    # GPUs, where bf16 is emulated and slow
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> what suits the device (see the module doc); any other word as it is."""
    precision = parse_precision(precision)
    if precision != AUTO:
        return precision
    if device.type == "cuda":
        return "bf16" if native_bf16(device) else "fp16"
    return "fp32"


def resolve_channels_last(channels_last: bool | None, device: torch.device) -> bool:
    """None -> on for CUDA devices (tensor-core convolutions want NHWC), off on CPUs."""
    return device.type == "cuda" if channels_last is None else channels_last


def cpu_has_amx() -> bool:
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # a private probe: absent is "no"
    return bool(probe and probe())


def autocast(device: torch.device, precision: str | None) -> contextlib.AbstractContextManager:
    """Autocast for fp16/bf16; fp32 and int8 (and None) run as they are."""
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision or "fp32")
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
