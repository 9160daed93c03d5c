"""Per-device defaults of the training step: autocast precision and memory format."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def step_defaults(amp: str | None, channels_last: bool | None, device: torch.device) -> tuple[str | None, bool]:
    """Resolve amp "auto" and channels_last None for a device: (amp or None for fp32, channels_last).

    CUDA: bf16 autocast where the GPU supports it (Ampere and later; no loss scaling needed), else fp16
    with loss scaling, and channels_last (tensor-core convolutions want NHWC). CPU: fp32 and NCHW, so a
    CPU run's numbers do not depend on which CPU it lands on; bf16 + channels_last are one flag away and
    pay off on CPUs with AMX (1.4x for resnet18 on the development machine, docs/performance.md).
    """
    cuda = device.type == "cuda"
    if amp == "auto":
        amp = ("bf16" if _native_bf16(device) else "fp16") if cuda else None
        if not cuda and _cpu_has_amx():
            log.info("this CPU has AMX: --amp bf16 --channels-last usually trains faster here")
    if channels_last is None:
        channels_last = cuda
    return amp, channels_last


def _native_bf16(device: torch.device) -> bool:
    # compute capability 8 (Ampere) and later: torch.cuda.is_bf16_supported() also says yes on older
    # GPUs, where bf16 is emulated and slow
    return torch.cuda.get_device_capability(device)[0] >= 8


def _cpu_has_amx() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # a private probe: absent is "no"
    return bool(probe and probe())
