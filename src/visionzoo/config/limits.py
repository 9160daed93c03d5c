"""The one range check of every command's sizes and counts (image size, batch size, workers, seed) and the
up-front estimate of a batch's memory: an absurd request stops with one line naming the flag, before it
allocates gigabytes or forks thousands of processes."""

from __future__ import annotations

import logging
import os

from ..core.errors import ConfigError

MAX_IMG_SIZE = 4096  # px: a batch of 64 such images is 12 GB of uint8 already

MAX_SEED = 2**63 - 1  # torch.manual_seed takes at most a signed 64-bit integer (numpy's: 2**32 - 1, reduced)
# the batch's float input times this: the normalised copy and the first layers' activations (a ResNet stem's
# output alone is 64 channels at half the size: ~5x the input), so the estimate is a floor, not a guess high
ACTIVATION_FACTOR = 8

log = logging.getLogger("visionzoo")


def _named(flag: str, value: object) -> str:
    """`--img-size = 0`, or the value alone where argparse names the flag itself (flag "")."""
    return f"{flag} = {value!r}" if flag else repr(value)


def check_size(value: int, flag: str = "--img-size") -> int:
    """An image size in px, 1..MAX_IMG_SIZE, else a ConfigError naming the flag (every size flag goes here)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMG_SIZE:
        raise ConfigError(f"{_named(flag, value)} is out of range (1..{MAX_IMG_SIZE} px)")
    return value


def check_count(value: int, flag: str, low: int = 1) -> int:
    """A count (a batch size, iterations) of at least `low`, else a ConfigError naming the flag."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{_named(flag, value)} is out of range (>= {low})")
    return value


def check_seed(value: int, flag: str = "--seed") -> int:
    """A seed torch.manual_seed accepts: 0..2**63-1."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{_named(flag, value)} is out of range (0..2**63-1)")
    return value


def cpu_count() -> int:
    """The CPUs this process may run on (a container's or taskset's share, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cap_workers(value: int, flag: str = "--workers") -> int:
    """Loader workers, at most one per CPU: more only contend, and 100000 is a fork storm. Said in the log."""
    check_count(value, flag, low=0)
    cpus = cpu_count()
    if value > cpus:
        log.info("%s %d is more than the %d CPUs here: using %d", flag, value, cpus, cpus)
        return cpus
    return value


def available_memory() -> int | None:
    """Bytes of RAM available now (None where the platform does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def batch_bytes(batch: int, size: int, factor: int = ACTIVATION_FACTOR) -> int:
    """A floor on what one float32 batch of batch x 3 x size x size needs with its first activations."""
    return batch * 3 * size * size * 4 * factor


def check_batch_memory(batch: int, size: int, flags: str = "--batch-size and --img-size") -> None:
    """Refuse up front a batch whose input and first activations alone exceed the RAM available."""
    need, have = batch_bytes(batch, size), available_memory()
    if have is not None and need > have:
        raise ConfigError(f"{flags}: a batch of {batch} images of {size}x{size} px needs at least "
                          f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB of memory available; "
                          "lower them")
