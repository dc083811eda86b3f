"""engine/ and trainer/ must stay usable without a display: no Qt import anywhere in them."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
QT_MODULES = {"PySide6", "qtawesome", "shiboken6", "PyQt5", "PyQt6", "qtpy"}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_and_trainer_source_never_import_qt():
    offenders = []
    for pkg in ("engine", "trainer"):
        for path in (ROOT / pkg).rglob("*.py"):
            bad = _imports(path) & QT_MODULES
            if bad:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, offenders


def test_engine_import_does_not_load_qt_or_torchvision():
    code = ("import sys, engine, trainer, deeplab_gui.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('PySide6', 'qtawesome', 'shiboken6', 'torchvision')]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------ the import graph
# Imports run one way: cli -> widgets -> state -> editing -> engine <- trainer (and the app's own entry
# modules on top).  A module may import its own room and any room below it, never one above.
LAYERS = {
    "engine": 0,
    "trainer": 1,
    "deeplab_gui.editing": 1,
    "deeplab_gui.state": 2,
    "deeplab_gui.widgets": 3,
    "deeplab_gui.app": 3.5,  # starts the window; the command line's default subcommand
    "deeplab_gui.cli": 4,
    "deeplab_gui": 5,  # __main__.py and the package itself
}
# Rooms that sit side by side on one level and must not use each other.
APART = {("trainer", "deeplab_gui.editing"), ("deeplab_gui.editing", "trainer")}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _room(module: str) -> str:
    return max((r for r in LAYERS if module == r or module.startswith(r + ".")), key=len)


def _graph() -> dict[str, set[str]]:
    """module -> modules of ours it imports (at any depth of the file: lazy imports count too)."""
    modules = {}
    for pkg in ("engine", "trainer", "deeplab_gui"):
        for path in (ROOT / pkg).rglob("*.py"):
            modules[_module_name(path)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    anchor = base[:len(base) - node.level + 1]
                    mod = ".".join(anchor + ([mod] if mod else []))
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def _is_ancestor_package(a: str, b: str) -> bool:
    """A package's __init__ importing its own submodules (its public face) is not a cycle."""
    return b.startswith(a + ".")


def test_imports_follow_the_layer_order():
    wrong = []
    for mod, deps in _graph().items():
        for dep in deps:
            ra, rb = _room(mod), _room(dep)
            if LAYERS[rb] > LAYERS[ra] or (ra, rb) in APART:
                wrong.append(f"{mod} ({ra}) imports {dep} ({rb})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    edges = {m: {d for d in deps if not _is_ancestor_package(m, d)} for m, deps in graph.items()}
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    import sys
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in list(edges):
        if v not in index:
            visit(v)
    assert not cycles, cycles
