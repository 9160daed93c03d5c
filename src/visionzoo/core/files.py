"""Atomic file writes and JSON output: a reader, a crash or a kill never sees half a file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask can only be read by setting it


def _default_mode(tmp: str | Path) -> None:
    """mkstemp makes 0600 files: give the result the mode a plain open() would (0666 less the umask)."""
    os.chmod(tmp, 0o666 & ~_UMASK)


def _temp_beside(dst: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """mkstemp in dst's folder; a folder that is missing or not writable is the user's path to fix."""
    try:
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dst.parent)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        raise ConfigError(f"cannot write {dst}: {e.strerror} ({dst.parent})") from None


@contextlib.contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """A temp path next to dst (same suffix, for writers that look at it); renamed over dst on success.

    On any error the temp file is removed and dst is left as it was.
    """
    dst = Path(dst)
    fd, tmp = _temp_beside(dst, f".{dst.stem}.", dst.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        _default_mode(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over path.

    A crash or kill mid-write leaves the previous file intact and at worst a stray temp file.
    """
    import torch

    path = Path(path)
    fd, tmp = _temp_beside(path, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def json_safe(v: Any) -> Any:
    """NaN and infinities as None: JSON has no NaN, and null keeps every line parseable."""
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def write_json(path: str | Path, obj: Any) -> None:
    """Write obj as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """A matplotlib figure to path, atomically (the temp file keeps the suffix, which picks the format)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
