"""The package's structure: no import cycles, and every import goes down the layers docs/architecture.md states.

Imports are read from the source (function-level ones included), so a lazy import inside a function
counts like any other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "visionzoo"
DOC = ROOT / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports, resolved to the deepest module that exists."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from . import x` / `from .a import b`: b may be a module or a name in a
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def documented_layers() -> dict[str, int]:
    """unit -> layer number, from the table in docs/architecture.md (`| N | `unit`, `unit` | ...`)."""
    layers: dict[str, int] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for unit in re.findall(r"`([\w.]+)`", m.group(2)):
                layers[unit] = int(m.group(1))
    return layers


def unit_of(module: str) -> str:
    """visionzoo.engine.trainer -> engine; the package's own __init__/__main__ -> visionzoo."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else "visionzoo"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_sees_function_level_and_relative_imports():
    graph = import_graph()
    # engine.trainer imports the models package and its own step module at module level; cli.train imports
    # engine.trainer inside run()
    assert {"visionzoo.models", "visionzoo.engine.step"} <= graph["visionzoo.engine.trainer"]
    assert "visionzoo.engine.trainer" in graph["visionzoo.cli.train"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_every_module_belongs_to_a_documented_layer():
    layers = documented_layers()
    assert layers["core"] == 0 and layers["cli"] > layers["engine"] > layers["data"] > layers["core"]
    missing = sorted({unit_of(m) for m in package_modules()} - set(layers))
    assert not missing, f"units without a layer in {DOC.name}: {missing}"


def test_imports_go_down_the_layers():
    """A module imports its own unit and lower layers only: never up, never sideways to another unit."""
    layers = documented_layers()
    bad = []
    for module, targets in import_graph().items():
        src = unit_of(module)
        for target in targets:
            dst = unit_of(target)
            if dst != src and layers[dst] >= layers[src]:
                bad.append(f"{module} (layer {layers[src]}) imports {target} (layer {layers[dst]})")
    assert not bad, "\n".join(bad)


def test_the_bottom_layer_imports_nothing_else_from_the_package():
    graph = import_graph()
    core = {m for m in graph if unit_of(m) == "core"}
    assert core and all(graph[m] <= core for m in core)
