"""The layout's dependency rule, read from the imports (``ast``; nothing is imported or run).

Layers, lowest first; a module may import its own layer and the layers below, never above:

0. ``utils``                           helpers that know nothing of the project
1. ``datamodules``                     assets, caches, dataset sources, DataModules
2. ``backbone``                        plain ``nn.Module`` models (no Lightning) and their losses
3. ``lightning_modules.evaluation``    evaluation protocols, published numbers, report tables
4. ``lightning_modules``               the LightningModules (training logic) and their tools
5. ``callbacks``, ``cli.py``, ``sweep.py``, ``studio.py``, ``benchmarks``

Every import counts, also one inside a function, and no module may reach itself through its
imports (no circles, also inside one layer).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    ("utils",),
    ("datamodules",),
    ("backbone",),
    ("lightning_modules.evaluation",),
    ("lightning_modules",),
    ("callbacks", "cli", "sweep", "studio", "benchmarks"),
]
TOP = {name.split(".")[0] for names in LAYERS for name in names}
MAX_LINES = 500


def layer(module: str) -> int:
    """The layer of a dotted module name (the longest matching prefix wins)."""
    best, depth = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = index, name.count(".")
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best


def source_files() -> dict[str, Path]:
    files = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in TOP and rel.with_suffix("").as_posix() not in TOP:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from pkg import name`` counts ``pkg.name`` when it is a module)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] not in TOP:
                continue
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != module:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = source_files()
    return {module: imports(path, module, set(files)) for module, path in files.items()}


def test_nothing_imports_upward(graph):
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in sorted(graph.items()) for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "imports against the layers of tests/test_layout.py:\n" + "\n".join(upward)


def test_no_import_cycles(graph):
    cycles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if dep.startswith(module + "."):  # a package's __init__ re-exporting its own modules
                continue
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in source_files().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these files (at most {MAX_LINES} lines): {long}"


def test_backbone_has_no_lightning():
    for path in (ROOT / "backbone").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("pytorch_lightning", "lightning") for n in names), f"{path.name} imports Lightning"


def test_the_rule_sees_a_violation(tmp_path):
    """The walker itself: an upward import and a function-level import are both found."""
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from lightning_modules.base import SceneMotionModule\n")
    assert imports(path, "datamodules.mod", {"lightning_modules.base", "datamodules.mod"}) == {"lightning_modules.base"}
    assert layer("lightning_modules.evaluation.scene") == 3 and layer("lightning_modules.base") == 4 and layer("utils.io") == 0
