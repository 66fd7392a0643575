"""The adapter's modules import one way (STYLE: a module that calls back into its caller is
one module split in the wrong place), and only the adapter imports the AMQP driver."""

import ast
from pathlib import Path

import eventbus_rabbitmq

import eventbus

ROOT = Path(eventbus_rabbitmq.__file__).parent
DRIVERS = ("aiormq", "pamqp")


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
        f"eventbus_rabbitmq.{p.stem}": {
            m for m in _imports(p) if m.startswith("eventbus_rabbitmq.")
        }
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
    # The watcher and the channel bookkeeping sit below the subscription, never above it.
    assert "eventbus_rabbitmq.subscription" not in graph["eventbus_rabbitmq.channel_watch"]
    assert "eventbus_rabbitmq.subscription" not in graph["eventbus_rabbitmq.consuming_channel"]


def test_only_the_adapter_imports_the_driver() -> None:
    core = Path(eventbus.__file__).parent
    for path in core.rglob("*.py"):
        leaked = {m for m in _imports(path) if m.split(".")[0] in DRIVERS}
        assert not leaked, f"{path.relative_to(core)} imports {leaked}"
