"""The adapter's modules import one way (STYLE: a module that calls back into its caller is
one module split in the wrong place), and only the adapter imports the driver."""

import ast
from pathlib import Path

import eventbus_kafka

ROOT = Path(eventbus_kafka.__file__).parent


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_no_import_cycle_in_the_adapter() -> None:
    graph = {
        f"eventbus_kafka.{p.stem}": {m for m in _imports(p) if m.startswith("eventbus_kafka.")}
        for p in ROOT.glob("*.py")
        if p.name != "__init__.py"
    }
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            assert nxt not in trail, f"import cycle: {[*trail[trail.index(nxt) :], nxt]}"
            if nxt not in done:
                visit(nxt, [*trail, nxt])
        done.add(node)

    for name in sorted(graph):
        visit(name, [name])
    assert "eventbus_kafka.subscription" in graph
