"""The core's imports go one way (STYLE: a module that calls back into its caller is one module
split in the wrong place): no import cycle in src/eventbus, ``TYPE_CHECKING`` blocks included."""

import ast
from pathlib import Path

import eventbus

ROOT = Path(eventbus.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n for n in names if n in modules}
    return found


def test_no_import_cycle_in_the_core() -> None:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    # A package's __init__ re-exports its modules; it is not what they depend on.
    graph = {
        name: {m for m in _imports(path, modules) if not name.startswith(m + ".")}
        for name, path in files.items()
        if path.name != "__init__.py"
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], f"import cycles: {cycles}"
