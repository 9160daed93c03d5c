"""What a torch.export (.pt2) file may hold, checked before torch reads any of it.

torch.export.load runs code from a file in several ways: it unpickles a legacy `data/weights/<model>.pt`
or `data/constants/<model>.pt`, payloads marked `use_pickle`, custom-object and opaque-object constants,
and sample inputs a weights-only load refuses (it falls back to a full unpickle); it loads AOTInductor
libraries; it reads the older 2.7 layout; it evaluates every symbolic-shape expression of the graph with
sympy (Python's eval); and the graph may call any `torch.*`, `operator.*` or `math.*` function when the
model runs. A file `visionzoo export` or `quantize` writes needs none of that, so the check allows only:

- the entries in ALLOWED, in their formats, seen alike by Python's zip reader and by torch's own;
- raw tensor payloads, never pickles (weights and constants configs);
- sample inputs that a weights-only load reads as torch itself would try it first (or none);
- graph calls to operator overloads (`torch.ops.<namespace>.<op>.<overload>`) and plain arithmetic, and
  shape expressions made of symbols, numbers, arithmetic and sympy's shape functions.

The file is read once: `read_checked_pt2` returns the bytes it checked, and those are what torch loads.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

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
    rf"models/{MODEL}\.json": "program",
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
# what a graph node may call: operator overloads of these namespaces, and arithmetic on sizes
OP_NAMESPACES = ("aten", "prims", "quantized_decomposed", "higher_order")
TARGET = re.compile(rf"torch\.ops\.(?:{'|'.join(OP_NAMESPACES)})\.\w+(?:\.\w+)?"
                    r"|_operator\.(?:getitem|add|sub|mul|floordiv|truediv|mod|neg|pos|pow|eq|ne|lt|le|gt|ge|and_|or_"
                    r"|not_)"
                    r"|torch\.sym_(?:max|min|not|float|int|ite|sum|sqrt)|math\.(?:ceil|floor|trunc|sqrt)")
# what a symbolic-shape expression (evaluated by sympy.sympify) may contain
EXPR_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_]\w*)|(?P<text>'[a-z]+\d+')|(?P<number>\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
                        r"|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%(),=<>]))")
EXPR_NAMES = {"Symbol", "Integer", "Float", "Rational", "Max", "Min", "Mod", "FloorDiv", "CeilDiv", "PythonMod",
              "CleanDiv", "CeilToInt", "FloorToInt", "ModularIndexing", "Where", "TruncToInt", "IntTrueDiv",
              "FloatTrueDiv", "ToFloat", "PowByNatural", "LShift", "RShift", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
              "And", "Or", "Not", "True", "False", "positive", "integer", "real", "nonnegative", "negative",
              "finite", "oo"}


@dataclass(frozen=True)
class CheckedPt2:
    """A checked file's bytes (what torch is to load) and the operator namespaces its graph calls."""

    data: bytes
    namespaces: frozenset[str]


def check_and_read_pt2(path: str | Path) -> CheckedPt2:
    """The file's bytes, refused (ModelFileError) if they hold anything torch would unpickle or execute."""
    path = Path(path)
    data = path.read_bytes()  # once: what is checked is what torch loads
    try:
        archive = _Archive(path, data)
        archive.check()
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as e:  # not a zip, or one torch cannot read
        raise ModelFileError(f"{path}: not a torch.export archive ({type(e).__name__}: {e})") from None
    return CheckedPt2(data, frozenset(archive.namespaces))


def read_checked_pt2(path: str | Path) -> bytes:
    """The file's bytes, refused (ModelFileError) if they hold anything torch would unpickle or execute."""
    return check_and_read_pt2(path).data


def check_pt2(path: str | Path) -> None:
    read_checked_pt2(path)


class _Archive:
    """The archive as torch's reader sees it (entries below its root folder), checked against the allow-list."""

    def __init__(self, path: Path, data: bytes):
        self.path = path
        self.reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        names = list(self.reader.get_all_records())
        self._same_as_zipfile(data, names)
        self.entries: dict[str, str] = {}
        self.namespaces: set[str] = set()  # of the operator overloads the graph calls (torch.ops.<namespace>...)
        for rel in names:
            kind = next((k for pattern, k in ALLOWED.items() if re.fullmatch(pattern, rel)), None)
            if kind is None:
                self.refuse(f"holds {rel!r}, which a visionzoo export never writes (pickled code, compiled "
                            "libraries or an older archive layout)")
            self.entries[rel] = kind
        for required in ("archive_format", f"models/{MODEL}.json"):
            if required not in self.entries:
                self.refuse(f"has no {required} entry: not a torch.export archive this version reads")

    def refuse(self, why: str) -> NoReturn:
        raise ModelFileError(f"{self.path}: {why}; refusing to load it")

    def _same_as_zipfile(self, data: bytes, names: list[str]) -> None:
        """Two zip readers that disagree (a second directory, data in front of the first entry, duplicate
        names) would let the checked entries differ from the loaded ones: such a file is refused."""
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
        listed = [i.filename.partition("/")[2] for i in infos]
        roots = {i.filename.partition("/")[0] for i in infos}
        first = min((i.header_offset for i in infos), default=-1)
        if len(roots) != 1 or len(set(listed)) != len(listed) or sorted(listed) != sorted(names) or first != 0:
            self.refuse("its zip directory is ambiguous (readers would see different entries)")

    def read(self, rel: str) -> bytes:
        return bytes(self.reader.get_record(rel))

    def check(self) -> None:
        for rel, kind in self.entries.items():
            self.check_entry(rel, kind)
        for folder, pattern in PAYLOAD_NAMES.items():
            config = f"{folder}{MODEL}_{folder.split('/')[1]}_config.json"
            if config in self.entries:
                self.check_payload_config(folder, config, pattern)

    def check_entry(self, rel: str, kind: str) -> None:
        if kind == "raw":  # tensor bytes, read with frombuffer: any content is harmless
            return
        data = self.read(rel)
        if kind == "text" and (len(data) > MAX_TEXT or not data.isascii()):
            self.refuse(f"{rel} is not the short text it should be")
        if kind in ("json", "program"):
            try:
                parsed = json.loads(data)
            except ValueError:
                self.refuse(f"{rel} is not JSON")
            if kind == "program":
                self.check_program(rel, parsed)
        if kind == "tensors" and data:  # empty: a program saved without example inputs
            # torch tries a weights-only load, as here, and falls back to a full unpickle where it fails
            try:
                torch.load(io.BytesIO(data), weights_only=True)
            except Exception as e:
                self.refuse(f"{rel} holds pickled objects that are not plain tensors ({type(e).__name__})")

    def check_program(self, rel: str, program: Any) -> None:
        """Every call in the graph is an operator overload or arithmetic; every shape expression is plain."""
        for key, value in _strings(program):
            if key == "target" and not TARGET.fullmatch(value):
                self.refuse(f"{rel} calls {value!r}, which is not an operator a visionzoo export uses")
            if key == "target" and value.startswith("torch.ops."):
                self.namespaces.add(value.split(".")[2])
            if key == "expr_str" and not _plain_expression(value):
                self.refuse(f"{rel} has the shape expression {value[:80]!r}, which is not plain arithmetic")

    def check_payload_config(self, folder: str, config: str, pattern: str) -> None:
        """Every weight or constant is raw tensor bytes named as torch names them, present in the archive."""
        meta: Any = json.loads(self.read(config)).get("config", {})
        if not isinstance(meta, dict):
            self.refuse(f"{config} is not a payload config")
        for fqn, item in meta.items():
            name = item.get("path_name", "") if isinstance(item, dict) else ""
            if not isinstance(item, dict) or item.get("use_pickle") or not re.fullmatch(pattern, str(name)):
                self.refuse(f"{config} stores {fqn!r} as {name!r}, not as raw tensor bytes (a pickled or custom "
                            "object)")
            if f"{folder}{name}" not in self.entries:
                self.refuse(f"{config} names {folder}{name}, which the archive lacks")


def _strings(obj: Any, key: str = "") -> list[tuple[str, str]]:
    """Every (key, string value) pair of a JSON document, at any depth."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [(key, obj)]
    while stack:
        k, v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.items())
        elif isinstance(v, list):
            stack.extend((k, item) for item in v)
        elif isinstance(v, str):
            out.append((k, v))
    return out


def _plain_expression(text: str) -> bool:
    """Symbols, numbers, arithmetic and sympy's shape functions only: nothing sympify's eval could run."""
    pos = 0
    while pos < len(text):
        m = EXPR_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            return text[pos:].strip() == ""
        name = m.group("name")
        if name is not None and name not in EXPR_NAMES and not re.fullmatch(r"[a-z]+\d+", name):
            return False
        pos = m.end()
    return True
