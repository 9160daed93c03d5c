"""Progressive resizing: the training crop size of each epoch (`--img-size-schedule`), and the FixRes rule for
the evaluation size (`--eval-img-size auto`).

Two spellings of a schedule:
- `START:END` (e.g. `96:128`): ffcv-imagenet's shape. START px up to the ramp's first epoch, then linear in
  epochs up to END px at the ramp's last epoch, rounded to a multiple of `size_step` (32 as ffcv, or a ViT's
  patch size), END px for the rest of the run. By default the ramp runs over the same part of the run as
  ffcv's ResNet-50 configs (epochs 65 to 76 of 88: from 74% to 86% of the run); `size_start_epochs` and
  `size_end_epochs` place it (epochs at START before it, epochs at END after it).
- `SIZE@EPOCH,...` (e.g. `64@1,96@4,128@8`): SIZE px from that 1-based epoch on; the first entry is epoch 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.errors import ConfigError
from .limits import MAX_IMG_SIZE

# ffcv-imagenet rn50 configs (88 epochs): start_ramp 65, end_ramp 76
FFCV_RAMP = (65 / 88, 76 / 88)
# FixRes (Touvron et al. 2019): testing at a higher resolution than the training crops makes up for the
# apparent object size RandomResizedCrop changes; ~1.15x is the gain without fine-tuning at the test size
FIXRES_FACTOR = 1.15


@dataclass(frozen=True)
class SizeSchedule:
    """The training crop size per epoch (0-based epochs): `starts` holds (first epoch, size) in order."""

    starts: tuple[tuple[int, int], ...]

    def at(self, epoch: int) -> int:
        size = self.starts[0][1]
        for first, s in self.starts:
            if epoch >= first:
                size = s
        return size

    @property
    def final(self) -> int:
        return self.starts[-1][1]

    @property
    def largest(self) -> int:
        return max(s for _, s in self.starts)

    def describe(self, epochs: int) -> str:
        """`96 px (epochs 1-5), 128 px (6-10)`: what the first line of a run says."""
        parts = []
        for i, (first, size) in enumerate(self.starts):
            last = self.starts[i + 1][0] if i + 1 < len(self.starts) else epochs
            if first >= epochs:
                break
            span = f"{first + 1}" if last - first == 1 else f"{first + 1}-{last}"
            parts.append(f"{size} px ({'epoch' if last - first == 1 else 'epochs'} {span})")
        return ", ".join(parts)


def parse_size_schedule(text: str, epochs: int, start_epochs: int | None = None, end_epochs: int | None = None,
                        step: int = 32, flag: str = "img_size_schedule") -> SizeSchedule:
    """A SizeSchedule from either spelling (module doc); ConfigError naming `flag` when the text is not one."""
    text = text.strip()
    if "@" in text:
        return _explicit(text, epochs, flag)
    parts = text.split(":")
    try:
        start, end = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected START:END (e.g. 96:128) or SIZE@EPOCH,... "
                          "(e.g. 64@1,96@4,128@8)") from None
    for size in (start, end):
        _check_size(size, text, flag)
    if step < 1:
        raise ConfigError(f"size_step {step} is out of range (>= 1)")
    # ramp_first: the last epoch at START; ramp_last: the first at END (0-based), at least the run's last epoch
    ramp_first = round(epochs * FFCV_RAMP[0]) if start_epochs is None else start_epochs - 1
    ramp_last = max(ramp_first, round(epochs * FFCV_RAMP[1])) if end_epochs is None else epochs - end_epochs
    ramp_last = min(ramp_last, epochs - 1)
    if start_epochs is None:  # a short run: the default ramp shrinks to fit
        ramp_first = min(ramp_first, ramp_last)
    if end_epochs is not None and end_epochs < 1 or start_epochs is not None and start_epochs < 0 or \
            ramp_first > ramp_last:
        raise ConfigError(f"{flag} {text!r}: {start_epochs} epochs at {start} px and {end_epochs} at {end} px do not "
                          f"fit in {epochs} epochs (at least one epoch at {end} px)")
    lo, hi = min(start, end), max(start, end)
    sizes = []
    for epoch in range(epochs):
        if epoch >= ramp_last:
            size = end
        elif epoch <= ramp_first:
            size = start
        else:  # as ffcv: linear in epochs, rounded to the step, within START..END
            linear = start + (end - start) * (epoch - ramp_first) / (ramp_last - ramp_first)
            size = min(hi, max(lo, int(round(linear / step)) * step))
        sizes.append(size)
    return _from_sizes(sizes or [end])


def _explicit(text: str, epochs: int, flag: str) -> SizeSchedule:
    starts: list[tuple[int, int]] = []
    for item in text.split(","):
        try:
            size_text, epoch_text = item.split("@")
            size, first = int(size_text), int(epoch_text)
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: {item.strip()!r} is not SIZE@EPOCH (e.g. 128@5)") from None
        _check_size(size, text, flag)
        if not starts and first != 1:
            raise ConfigError(f"{flag} {text!r}: the first size starts at epoch 1 (got {first})")
        if starts and first <= starts[-1][0] + 1:
            raise ConfigError(f"{flag} {text!r}: epochs must increase ({first} after {starts[-1][0] + 1})")
        if first > max(epochs, 1):
            raise ConfigError(f"{flag} {text!r}: epoch {first} is after the run's last ({epochs})")
        starts.append((first - 1, size))
    return SizeSchedule(tuple(starts))


def _check_size(size: int, text: str, flag: str) -> None:
    if not 1 <= size <= MAX_IMG_SIZE:
        raise ConfigError(f"{flag} {text!r}: {size} px is out of range (1..{MAX_IMG_SIZE} px)")


def _from_sizes(sizes: list[int]) -> SizeSchedule:
    """(first epoch, size) of each run of equal sizes."""
    starts = [(0, sizes[0])]
    for epoch, size in enumerate(sizes):
        if size != starts[-1][1]:
            starts.append((epoch, size))
    return SizeSchedule(tuple(starts))


def fixres_eval_size(train_size: int, multiple: int = 8) -> int:
    """`--eval-img-size auto`: ~1.15x the final training crop, to a multiple of 8 (128 -> 144, 224 -> 256)."""
    return max(multiple, int(math.floor(train_size * FIXRES_FACTOR / multiple + 0.5)) * multiple)


def eval_size(eval_img_size: int | str | None, train_size: int | None) -> int | None:
    """A data config's evaluation size: the one given, auto's FixRes size of train_size, or train_size."""
    if eval_img_size == "auto":
        return fixres_eval_size(train_size) if train_size else None
    return eval_img_size if isinstance(eval_img_size, int) else train_size


def scaled_batch(batch: int, size: int, largest: int, most: int) -> int:
    """--batch-size-schedule auto: the batch at `size` that holds the pixels of `batch` at `largest`
    ((largest / size)^2 x batch), down to a multiple of 8 (never below batch), and at most `most` (so an epoch
    keeps a step)."""
    scaled = max(batch, int(batch * (largest / size) ** 2))
    if scaled > batch and scaled >= 8:
        scaled = max(batch, scaled // 8 * 8)
    return max(1, min(scaled, max(batch, most)))
