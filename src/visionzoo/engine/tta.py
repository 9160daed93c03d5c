"""Test-time augmentation: a model's logits averaged over views of the normalised batch, on its device.

The one definition every path uses (training's end-of-run evaluation, `eval`, `predict`, `visionzoo.evaluate`
and the flip that `export --tta flip` bakes into a file), so their numbers agree:

- flip: the image and its horizontal flip (2 views).
- flip+crops: flip, plus the 4 corner crops of side 7/8 of the evaluated image (top-left, top-right,
  bottom-left, bottom-right), each resized back to the evaluated size (bilinear) and each with its flip
  (10 views). The evaluated image itself is the centre view, so every view has the model's input size and a
  file exported at a fixed size runs them as it runs the plain batch.

Logits (not probabilities) are averaged, in float32; the first view is the plain batch, so the plain logits
come with the TTA ones at no extra cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CHOICES, spelled
from ..core.errors import ConfigError
from ..core.precision import autocast

TTA_MODES: tuple[str, ...] = CHOICES["tta"]  # flip, flip+crops: the config field's choices, the one list
CORNER_CROP = 0.875  # corner crops' side, as a fraction of the evaluated image's (the usual crop_pct)
VIEWS = {"flip": 2, "flip+crops": 10}


def check_tta(mode: str | None, baked: str | None = None, source: object = None) -> str | None:
    """mode as given (None: off), or a one-line ConfigError naming the flag: an unknown mode, or any TTA on a
    file that already has flip TTA built in (`export --tta flip`), where it would be applied twice."""
    if mode is None:
        return None
    if mode not in TTA_MODES:
        raise ConfigError(f"{spelled('tta', mode)}: not one of {', '.join(TTA_MODES)}")
    if baked:
        raise ConfigError(f"{spelled('tta', mode)}: {source or 'the model file'} has {baked} TTA built in "
                          f"(exported with --tta {baked}); evaluate it without {spelled('tta')}")
    return mode


def tta_views(x: torch.Tensor, mode: str) -> Iterator[torch.Tensor]:
    """The views of a normalised NCHW batch, one at a time (the batch's memory, not views x batch): the batch
    itself first, then its flip; for flip+crops the corner crops and their flips."""
    yield x
    yield x.flip(-1)
    if mode == "flip":
        return
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * CORNER_CROP)), max(1, round(w * CORNER_CROP))
    for top, left in ((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)):
        crop = F.interpolate(x[..., top:top + ch, left:left + cw].float(), size=(h, w), mode="bilinear",
                             align_corners=False).to(x.dtype)
        yield crop
        yield crop.flip(-1)


def tta_forward(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str | None,
                device: torch.device, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(plain logits, TTA logits or None without a mode), float32. The model runs each view under autocast
    in precision; the views are made outside it, so the crops' resize is float32 whatever the precision."""
    if not mode:
        with autocast(device, precision):
            return model(x).float(), None
    plain: torch.Tensor | None = None
    total = torch.zeros((), device=x.device)  # float32, broadcast against the first view's logits
    n = 0
    for view in tta_views(x, mode):
        with autocast(device, precision):
            logits = model(view).float()
        plain = logits if plain is None else plain
        total = total + logits
        n += 1
    assert plain is not None
    return plain, total / n


class FlipTTA(nn.Module):
    """The model with flip TTA built in, for export: (m(x) + m(x.flip(-1))) / 2, as tta_forward averages."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x).float() + self.model(x.flip(-1)).float()) / 2
