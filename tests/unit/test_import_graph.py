"""Imports go one way (STYLE: a module that calls back into its caller is one module split in
the wrong place): no import cycle in the core or in either adapter, ``TYPE_CHECKING`` blocks
included; and only an adapter imports its driver."""

import ast
from pathlib import Path
from types import ModuleType

import eventbus_kafka
import eventbus_rabbitmq
import pytest

import eventbus


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def import_graph(package: ModuleType) -> dict[str, set[str]]:
    """Each module of ``package`` (its ``__init__`` re-exports aside) -> the package's modules
    it imports."""
    root = Path(package.__file__ or "").parent
    files = {_module_name(root, p): p for p in root.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in files and not name.startswith(m + ".")}
        for name, path in files.items()
        if path.name != "__init__.py"
    }


@pytest.mark.parametrize("package", [eventbus, eventbus_kafka, eventbus_rabbitmq])
def test_no_import_cycle(package: ModuleType) -> None:
    graph = import_graph(package)
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


def test_the_layers_named_in_the_docs_hold() -> None:
    core = import_graph(eventbus)
    assert "eventbus.dispatch.runner" not in core["eventbus.dispatch.settle"]
    assert not {m for m in core["eventbus.transports.base"] if m.startswith("eventbus.dispatch")}
    rabbit = import_graph(eventbus_rabbitmq)
    # The channel watcher and the channel bookkeeping sit below the subscription.
    assert "eventbus_rabbitmq.subscription" not in rabbit["eventbus_rabbitmq.channel_watch"]
    assert "eventbus_rabbitmq.subscription" not in rabbit["eventbus_rabbitmq.consuming_channel"]
    kafka = import_graph(eventbus_kafka)
    assert "eventbus_kafka.subscription" not in kafka["eventbus_kafka.revocation"]


@pytest.mark.parametrize("drivers", [("aiokafka", "kafka"), ("aiormq", "pamqp")])
def test_only_an_adapter_imports_its_driver(drivers: tuple[str, ...]) -> None:
    root = Path(eventbus.__file__).parent
    for path in root.rglob("*.py"):
        leaked = {m for m in _imports(path) if m.split(".")[0] in drivers}
        assert not leaked, f"{path.relative_to(root)} imports {leaked}"
