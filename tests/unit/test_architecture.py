"""The module graph of `harness/`: no import cycles, no implementation imported by name, one owner
of the row schema. Read statically (every import statement, lazy ones inside functions included).
"""

from __future__ import annotations

import ast
from pathlib import Path

HARNESS = Path(__file__).parents[2] / "harness"


def _module_name(path: Path) -> str:
    parts = path.relative_to(HARNESS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in HARNESS.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # an edge to a module (not to a package's __init__ just for being its parent)
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ importing its own submodules is how a package is assembled, not a
    # cycle of ideas; submodules must never import their package's __init__ back for names.
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_implementation_imported_by_name():
    for path in HARNESS.rglob("*.py"):
        bad = {
            m for m in _imports(path) if m == "implementations" or m.startswith("implementations.")
        }
        assert not bad, f"{path}: imports {sorted(bad)}; use the registry (Impl fields and hooks)"


def test_the_row_schema_has_one_owner():
    for path in HARNESS.rglob("*.py"):
        if path.name == "rows.py":
            continue
        text = path.read_text()
        assert "SCHEMA_VERSION =" not in text, path
        assert '("ok", "skipped", "unsupported", "oom", "timeout", "error")' not in text, path
