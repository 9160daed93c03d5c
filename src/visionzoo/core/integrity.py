"""Content digests of saved objects: a file damaged on disk or in transit is refused, not silently used.

The digest covers the loaded content, not the file's bytes: every tensor's dtype, shape and data, and
every plain value (dict keys and order, lists, numbers, strings), so it is the same for a byte copy and
for a re-save, and any flipped byte of a tensor or of the pickle shows.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from .errors import ModelFileError

log = logging.getLogger("visionzoo")

ALGORITHM = "sha256-content-v1"
DIGEST = "digest"  # the key a saved dict keeps its digest under
_WARNED: set[str] = set()


def content_digest(obj: Any) -> str:
    h = hashlib.sha256()
    _feed(h, obj)
    return f"{ALGORITHM}:{h.hexdigest()}"


def _feed(h: Any, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}|".encode())
        for v in obj:
            _feed(h, v)
    else:  # None, bool, int, float (repr is exact), str, bytes, torch.Size, dtypes and other plain values
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())


def verify_digest(d: Any, path: str | Path) -> Any:
    """A loaded checkpoint dict without its digest, which must match the content. A dict without one (an
    earlier version's checkpoint, or another tool's file) passes with a warning that it is unverified."""
    if not isinstance(d, dict) or "model" not in d:
        return d
    d = dict(d)
    digest = d.pop(DIGEST, None)
    if digest is None:
        if str(path) not in _WARNED:  # once per file: a command may read it more than once
            _WARNED.add(str(path))
            log.warning("%s has no content digest (an earlier visionzoo's file, or another tool's): it is "
                        "unverified", path)
    elif digest != content_digest(d):
        raise ModelFileError(f"{path} is damaged: its content does not match the digest written with it "
                             "(a partial copy, or bytes changed on disk); use another copy")
    return d
