"""The layering rules of docs/architecture.md, checked on the source (AST, no imports executed).

- no import cycles between modules (package ``__init__`` re-exports excluded);
- analyses (connect, align, landscape) import neither ``zoo``, ``studies`` nor ``cli``;
- ``data`` and ``models`` are leaves: they import no other zooscape package;
- no module over ~500 lines unless its docstring says why it must be one piece.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "zooscape"
ANALYSES = ("connect", "align", "landscape", "sparsify")
LEAVES = ("data", "models")
MAX_LINES = 500


def _modules():
    mods = {}
    for f in ROOT.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = f
    return mods


def _edges(mods):
    edges = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != m:
                    edges[m].add(t)
    return edges


def _top(m):
    return m.split(".")[1] if m.count(".") else ""


def test_analyses_and_leaves_respect_the_layers():
    bad = []
    for m, targets in _edges(_modules()).items():
        for t in targets:
            if _top(m) in ANALYSES and _top(t) in ("zoo", "studies", "cli"):
                bad.append(f"analysis {m} imports {t}")
            if _top(m) in LEAVES and _top(t) not in ("", _top(m)):
                bad.append(f"leaf {m} imports {t}")
    assert not bad, bad


def test_no_import_cycles():
    mods = _modules()
    graph = {m: {t for t in ts if mods[t].name != "__init__.py"}
             for m, ts in _edges(mods).items() if mods[m].name != "__init__.py"}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_small_or_say_why(path):
    lines = path.read_text().count("\n")
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "one piece" in doc.lower(), f"{path.name} has {lines} lines; split it or say in its docstring why it " \
                                       "must be one piece"
