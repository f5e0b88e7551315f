"""The layers of ../shared/DESIGN.md, enforced on the source: every import statement (lazy ones inside functions
included) of every module is read with `ast` and checked against the layer order.

    app  ->  trainer  ->  engine features  ->  engine.store  ->  engine basics

A module may import its own layer or any layer to its right, never one to its left; engine/ and trainer/ never
import Qt (PySide6, pyqtgraph) or app/. Within a layer, imports must not form a cycle. A module longer than
MAX_LINES says why at its top (a line starting "Why this file is long:").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "engine", "trainer")
QT = ("PySide6", "pyqtgraph", "shiboken6")
MAX_LINES = 450

# Lazy (function-level) imports that close a cycle, each with the reason it stays. Anything else fails.
ALLOWED_CYCLES = {
    ("engine.imageio", "engine.raw"): "imageio hands camera RAW files to raw, and raw decodes a RAW's embedded JPEG "
                                      "preview with imageio's JPEG path; both imports are inside functions",
}

# engine basics: what everything stands on (image I/O, transforms, atomic writes, the vocabulary of long tasks,
# where bundled assets live, the backbone and its inference); they import nothing of the engine but each other
BASICS = {"engine.imageio", "engine.transforms", "engine.preprocess", "engine.atomic", "engine.progress",
          "engine.data_home", "engine.assets", "engine.device", "engine.faiss_runtime", "engine.raw",
          "engine.extract"}
LAYERS = {"app": 4, "trainer": 3, "features": 2, "store": 1, "basics": 0}


def layer_of(module: str) -> str:
    top = module.split(".")[0]
    if top in ("app", "trainer"):
        return top
    if module in BASICS or module == "engine" or module.startswith(("engine.models", "engine.runtime")):
        return "basics"  # the backbone and its inference (extract, runtime/) are basics: the store indexes with them
    if module.startswith("engine.store"):
        return "store"
    return "features"


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(path: Path, module: str) -> set[str]:
    """Every module a file imports, at any depth of the file (lazy imports count), resolved to full names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _project_imports() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        graph[name] = {m for m in imports(path, name) if m in known and m != name}
    return graph


GRAPH = _project_imports()
SOURCES = modules()


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if m.split(".")[0] in ("engine", "trainer")))
def test_engine_and_trainer_never_import_qt_or_app(module: str) -> None:
    bad = sorted(m for m in imports(SOURCES[module], module) if m.split(".")[0] in (*QT, "app"))
    assert not bad, f"{module} imports {bad}: engine/ and trainer/ are Qt-free and never import app/"


def test_no_module_imports_a_layer_above_it() -> None:
    wrong = [f"{src} ({layer_of(src)}) imports {dst} ({layer_of(dst)})"
             for src, targets in GRAPH.items() for dst in targets
             if LAYERS[layer_of(dst)] > LAYERS[layer_of(src)]]
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    """Package __init__ files re-export their modules; an edge into a package's own __init__ is not a cycle."""
    graph = {src: {d for d in dsts if not src.startswith(d + ".") and (d, src) not in ALLOWED_CYCLES}
             for src, dsts in GRAPH.items()}  # an allowed pair keeps one direction: a third module closing it fails
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_long_modules_say_why() -> None:
    long = []
    for name, path in SOURCES.items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES and "Why this file is long:" not in text[:4000]:
            long.append(f"{name}: {text.count(chr(10))} lines")
    assert not long, f"modules over {MAX_LINES} lines without a reason at the top:\n" + "\n".join(long)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The rules above are only as good as the import reader: it must see imports inside functions."""
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from PySide6.QtWidgets import QWidget\n    import app.cli\n"
                 "from . import sibling\n")
    found = imports(f, "engine.viz.mod")
    assert {"PySide6.QtWidgets", "app.cli", "engine.viz", "engine.viz.sibling"} <= found
    assert layer_of("engine.store.vectors") == "store" and layer_of("engine.query") == "features"
