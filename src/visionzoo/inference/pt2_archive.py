"""What a torch.export (.pt2) file may hold, checked before torch reads any of it.

torch.export.load unpickles with code execution in several places: a legacy `data/weights/<model>.pt` or
`data/constants/<model>.pt` entry, weights or constants marked `use_pickle`, custom-object and
opaque-object constants, sample inputs that a weights-only load refuses (it falls back to a full
unpickle), AOTInductor libraries, and the older 2.7 archive layout. A file `visionzoo export` or
`quantize` writes holds none of them: only the entries below, in these formats. Anything else is
refused with one line naming the file and the entry.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ModelFileError

MODEL = "model"  # the program's name inside the archive: torch.export.save always writes "model"
# entry (below the archive's root folder) -> how it is read
ALLOWED: dict[str, str] = {
    r"archive_format": "text",
    r"archive_version": "text",
    r"byteorder": "text",
    r"\.data/version": "text",
    r"\.data/serialization_id": "text",
    rf"models/{MODEL}\.json": "json",
    rf"data/weights/{MODEL}_weights_config\.json": "json",
    r"data/weights/weight_\d+": "raw",
    rf"data/constants/{MODEL}_constants_config\.json": "json",
    r"data/constants/tensor_\d+": "raw",
    rf"data/sample_inputs/{MODEL}\.pt": "tensors",
    r"extra/visionzoo\.json": "json",
}
# a payload config's path names: raw tensor bytes only, never pickles
PAYLOAD_NAMES = {"data/weights/": r"weight_\d+", "data/constants/": r"tensor_\d+"}
MAX_TEXT = 1 << 16


def check_pt2(path: str | Path) -> None:
    """Refuse (ModelFileError) a .pt2 that holds anything torch would unpickle or execute."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            archive = _Archive(path, z)
            for rel, kind in archive.entries.items():
                archive.check_entry(rel, kind)
            for folder, pattern in PAYLOAD_NAMES.items():
                config = f"{folder}{MODEL}_{folder.split('/')[1]}_config.json"
                if config in archive.entries:
                    archive.check_payload_config(folder, config, pattern)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a torch.export archive ({type(e).__name__}: {e})") from None


class _Archive:
    """The archive's entries below its one root folder, each with its kind from the allow-list."""

    def __init__(self, path: Path, z: zipfile.ZipFile):
        self.path, self.z = path, z
        names = z.namelist()
        if not names or len(set(names)) != len(names):
            raise ModelFileError(f"{path}: an empty archive, or one with duplicate entries; refusing to load it")
        self.root = names[0].split("/")[0]
        self.entries: dict[str, str] = {}
        for name in names:
            head, _, rel = name.partition("/")
            kind = next((k for pattern, k in ALLOWED.items() if re.fullmatch(pattern, rel)), None)
            if head != self.root or kind is None:
                raise ModelFileError(f"{path}: holds {name!r}, which a visionzoo export never writes (pickled "
                                     "code, compiled libraries or an older archive layout); refusing to load it")
            self.entries[rel] = kind
        for required in ("archive_format", f"models/{MODEL}.json"):
            if required not in self.entries:
                raise ModelFileError(f"{path}: no {required} entry: not a torch.export archive this version reads")

    def read(self, rel: str) -> bytes:
        return self.z.read(f"{self.root}/{rel}")

    def check_entry(self, rel: str, kind: str) -> None:
        if kind == "raw":  # tensor bytes, read with frombuffer: any content is harmless
            return
        data = self.read(rel)
        if kind == "text" and (len(data) > MAX_TEXT or not data.isascii()):
            raise ModelFileError(f"{self.path}: {rel} is not the short text it should be; refusing to load it")
        if kind == "json":
            try:
                json.loads(data)
            except ValueError:
                raise ModelFileError(f"{self.path}: {rel} is not JSON; refusing to load it") from None
        if kind == "tensors" and data:  # empty: a program saved without example inputs
            # torch falls back to a full unpickle where a weights-only load fails: that load must succeed
            try:
                torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as e:
                raise ModelFileError(f"{self.path}: {rel} holds pickled objects that are not plain tensors "
                                     f"({type(e).__name__}); refusing to load it") from None

    def check_payload_config(self, folder: str, config: str, pattern: str) -> None:
        """Every weight or constant is raw tensor bytes named as torch names them, present in the archive."""
        meta: Any = json.loads(self.read(config)).get("config", {})
        if not isinstance(meta, dict):
            raise ModelFileError(f"{self.path}: {config} is not a payload config; refusing to load it")
        for fqn, item in meta.items():
            name = item.get("path_name", "") if isinstance(item, dict) else ""
            if not isinstance(item, dict) or item.get("use_pickle") or not re.fullmatch(pattern, str(name)):
                raise ModelFileError(f"{self.path}: {config} stores {fqn!r} as {name!r}, not as raw tensor bytes "
                                     "(a pickled or custom object); refusing to load it")
            if f"{folder}{name}" not in self.entries:
                raise ModelFileError(f"{self.path}: {config} names {folder}{name}, which the archive lacks")
