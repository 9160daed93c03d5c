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


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask can only be read by setting it


def _default_mode(tmp: str | Path) -> None:
    """mkstemp makes 0600 files: give the result the mode a plain open() would (0666 less the umask)."""
    os.chmod(tmp, 0o666 & ~_UMASK)


@contextlib.contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """A temp path next to dst (same suffix, for writers that look at it); renamed over dst on success.

    On any error the temp file is removed and dst is left as it was.
    """
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=dst.suffix, dir=dst.parent)
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
