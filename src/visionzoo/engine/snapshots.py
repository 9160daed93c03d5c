"""`--keep-last K`: each epoch's inference checkpoint kept as OUTPUT/epoch-N.pth, the last K of them.

The files hold what best.pth holds (weights, EMA weights, classes, preprocessing, config, the epoch's metrics)
and no training state, so `visionzoo average` (inference.average) and every command that reads a checkpoint
take them as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..core.files import atomic_copy
from ..models.checkpoint import Checkpoint

EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pth$")


def snapshot_name(epoch: int) -> str:
    """epoch is 1-based, as the run's log and metrics count it."""
    return f"epoch-{epoch}.pth"


def epoch_snapshots(folder: str | Path) -> list[tuple[int, Path]]:
    """The folder's epoch-N.pth files as (N, path), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := EPOCH_FILE.match(p.name)) and p.is_file()]
    return sorted(found)


def save_snapshot(ckpt: Checkpoint, folder: Path, epoch: int, keep: int, same_as: Path | None = None) -> Path:
    """Write epoch-N.pth (atomically; a hard link to same_as, a file just written with the same content, where
    there is one) and prune the folder to the epochs (epoch - keep, epoch]. Files of later epochs go too: they
    are left by a run that was resumed from an earlier checkpoint and no longer belong to it."""
    path = folder / snapshot_name(epoch)
    if same_as is not None:
        atomic_copy(same_as, path)
    else:
        ckpt.save(path)
    prune_snapshots(folder, epoch, keep)
    return path


def prune_snapshots(folder: Path, epoch: int, keep: int) -> list[Path]:
    """Remove the epoch-N.pth files outside (epoch - keep, epoch]; returns what was removed."""
    removed = []
    for n, path in epoch_snapshots(folder):
        if not epoch - keep < n <= epoch:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
