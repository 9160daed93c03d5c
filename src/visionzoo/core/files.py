"""Atomic file writes and JSON output: a reader, a crash or a kill never sees half a file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelFileError, VisionZooError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask can only be read by setting it


def _default_mode(tmp: str | Path) -> None:
    """mkstemp makes 0600 files: give the result the mode a plain open() would (0666 less the umask)."""
    os.chmod(tmp, 0o666 & ~_UMASK)


# a write that failed for want of room or a working disk (not a path mistake): one line, the old file kept
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
TEMP_MARK = ".vztmp-"  # in every temp file's name: what remove_stale_temps may delete
_TEMP_NAME = re.compile(rf"^\..*{re.escape(TEMP_MARK)}[a-z0-9_]{{8}}(\.[A-Za-z0-9]+)?$")


def _temp_beside(dst: Path, suffix: str) -> tuple[int, str]:
    """mkstemp in dst's folder; a folder that is missing or not writable is the user's path to fix."""
    try:
        return tempfile.mkstemp(prefix=f".{dst.name}{TEMP_MARK}", suffix=suffix, dir=dst.parent)
    except OSError as e:  # missing, not a folder, not writable, a read-only file system (EROFS)
        raise ConfigError(f"cannot write {dst}: {e.strerror or e} ({dst.parent})") from None


@contextlib.contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """A temp path next to dst (same suffix, for writers that look at it); renamed over dst on success.

    On any error the temp file is removed and dst is left as it was.
    """
    dst = Path(dst)
    fd, tmp = _temp_beside(dst, dst.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        _default_mode(tmp)
        try:
            os.replace(tmp, dst)
        except OSError as e:  # dst itself refused (a folder, a read-only entry): the user's path to fix
            if e.errno not in _DISK_ERRORS:
                raise ConfigError(f"cannot write {dst}: {e.strerror or e}") from None
            raise
    except OSError as e:
        if e.errno not in _DISK_ERRORS:
            raise
        kept = f"the previous {dst.name} is intact" if dst.exists() else "nothing was written"
        raise VisionZooError(f"cannot write {dst}: {e.strerror}; {kept}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _failed_write(e: RuntimeError) -> bool:
    """torch's zip writer reports a failed write (a full disk, a quota) as a RuntimeError, not an OSError."""
    text = str(e)
    return "PytorchStreamWriter failed" in text or "file write failed" in text or "unexpected pos" in text


def _write_reason(e: BaseException) -> str:
    """One line: the OS's words where there is an errno, else the first line of torch's message."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"the write failed, is the disk full? ({first[:200]})"


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over path.

    A crash or kill mid-write leaves the previous file intact and at worst a stray temp file.
    """
    import torch

    path = Path(path)
    fd, tmp = _temp_beside(path, ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        _default_mode(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk, a quota, an I/O error: the replaced file stays
        if isinstance(e, RuntimeError) and not _failed_write(e):
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if os.path.exists(tmp):
            os.unlink(tmp)
        kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
        raise ModelFileError(f"cannot write {path}: {_write_reason(e)}; {kept} (the temp file was removed)") from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """dst becomes a copy of src, atomically. Where the file system allows, a hard link: our files are only
    ever replaced by a rename, never rewritten in place, so the two names stay independent (a run's 180 MB
    best.pth -> last.pth costs nothing instead of a third of a second). Else a byte copy."""
    with atomic_path(dst) as tmp:
        os.unlink(tmp)  # the random name stays ours: link wants it free
        try:
            os.link(src, tmp)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EACCES):
                raise
            shutil.copyfile(src, tmp)


def json_safe(v: Any) -> Any:
    """NaN and infinities as None: JSON has no NaN, and null keeps every line parseable."""
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def write_text(path: str | Path, text: str) -> None:
    """Write text as UTF-8, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write obj as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """A matplotlib figure to path, atomically (the temp file keeps the suffix, which picks the format)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files an interrupted atomic write left in folder (only ours, by their name)."""
    removed = []
    for p in Path(folder).iterdir() if Path(folder).is_dir() else []:
        if _TEMP_NAME.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class FolderLock:
    """An exclusive lock on a folder (a POSIX record lock on FOLDER/.lock, which records the holder's pid).

    It is the kernel's lock, so it is released when the holder exits, however it exits; and a POSIX lock
    belongs to the process, not to the open file, so forked DataLoader workers do not keep it alive after
    a kill. A second holder is refused with a ConfigError naming the folder and the pid that holds it.
    release() removes the file (a finished run's folder holds no stale .lock); a killed holder leaves it,
    unlocked, for the next holder to take.
    """

    NAME = ".lock"

    def __init__(self, folder: str | Path, what: str = "--output"):
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        path = self.folder / self.NAME
        while True:
            fd = self._open(path)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # EACCES or EAGAIN: another process holds it
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ConfigError(f"{self.what} {self.folder} is in use by another run (pid {holder}); wait for "
                                  f"it to finish or choose another {self.what}") from None
            # the holder we waited on may have removed the file between our open and our lock: a lock on that
            # unlinked file excludes no one, so lock the file the name now points to instead
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def _open(self, path: Path) -> int:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a file where the folder should be, a read-only parent, ...
            raise ConfigError(f"{self.what} {self.folder}: cannot use it as a run folder ({e.strerror})") from None

    def release(self) -> None:
        if self._fd is not None:
            # removed while still locked, so no one can lock the name in between (acquire checks the inode)
            with contextlib.suppress(OSError):
                os.unlink(self.folder / self.NAME)
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
