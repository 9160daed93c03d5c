"""Device resolution and torch.distributed set-up from torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_*). Single-process runs need none of it and get a DistInfo of world size 1."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(pref: str | torch.device, local_rank: int = 0) -> torch.device:
    """auto | cpu | cuda | cuda:N (or a torch.device) -> the device; cuda without a GPU is a ConfigError."""
    if isinstance(pref, torch.device):
        return pref
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    number = pref.removeprefix("cuda:")
    if pref in ("auto", "cuda") or (pref.startswith("cuda:") and number.isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {pref}: torch sees no CUDA device here (use --device cpu or auto)")
        return torch.device("cuda", int(number) if number.isdigit() else local_rank)
    raise ConfigError(f"--device {pref!r}: expected auto, cpu, cuda or cuda:N")


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU); single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if world_size <= 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def is_main_process() -> bool:
    """Rank 0 (or no torchrun), from the environment: for reporting before or after a process group."""
    return int(os.environ.get("RANK", "0")) == 0


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's obj, in rank order ([obj] in a single process)."""
    if not _initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _initialized():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    if _initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def cleanup() -> None:
    if _initialized():
        dist.destroy_process_group()
