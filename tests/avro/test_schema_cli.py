"""``eventbus schema export|register|check`` on apps written to a temporary folder: against a
committed folder of ``.avsc`` files and against the real registry; a break exits 9 and names
the subject and the field."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import anyio
import pytest

from eventbus.avro import SchemaRegistry
from eventbus.cli import main

APP = """
from pydantic import BaseModel
from eventbus import EventBus
from eventbus.avro import AvroCodec, SchemaRegistry

class Order(BaseModel):
    id: str
    amount: {amount}
{extra}

class Invoice(BaseModel):
    order_id: str

bus = EventBus("memory://", codec=AvroCodec(SchemaRegistry("{registry}"), namespace="shop"))

@bus.subscribe("{topic}", group="billing", publish_to="{topic}-invoices")
async def bill(order: Order) -> Invoice:
    return Invoice(order_id=order.id)

@bus.subscribe("{topic}", group="audit")
async def audit(order: Order) -> None:
    pass
"""


@pytest.fixture
def write_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_url: str):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    topic = f"orders{uuid.uuid4().hex[:8]}"

    def write(name: str, amount: str = "float", extra: str = "") -> str:
        source = APP.format(
            amount=amount, extra=textwrap.indent(extra, "    "), registry=registry_url, topic=topic
        )
        module = f"{name}_{topic}"  # imported once per process: a name per test
        (tmp_path / f"{module}.py").write_text(source)
        return f"{module}:bus"

    write.topic = topic  # type: ignore[attr-defined]
    return write


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_export_writes_what_the_app_consumes_and_publishes(
    write_app, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    app = write_app("v1")
    topic = write_app.topic
    code, out = _run(["schema", "export", app, "--dir", "schemas"], capsys)
    assert code == 0, out
    files = sorted(p.name for p in (tmp_path / "schemas").iterdir())
    assert files == [f"{topic}-invoices-value.avsc", f"{topic}-value.avsc"]
    order = json.loads((tmp_path / "schemas" / f"{topic}-value.avsc").read_text())
    assert order["name"] == "Order" and order["namespace"] == "shop"
    code, out = _run(["schema", "export", app], capsys)
    assert code == 0 and set(json.loads(out)) == {f"{topic}-value", f"{topic}-invoices-value"}


def test_check_against_a_committed_folder(write_app, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert _run(["schema", "export", write_app("v1"), "--dir", "schemas"], capsys)[0] == 0
    topic = write_app.topic

    # A field added with a default: compatible both ways.
    added = write_app("v2", extra='currency: str = "EUR"')
    code, out = _run(["schema", "check", added, "--dir", "schemas", "--level", "FULL"], capsys)
    assert code == 0, out
    assert f"ok      {topic}-value (Order): FULL against schemas/{topic}-value.avsc" in out

    # A field added without a default: new readers cannot read old records (BACKWARD breaks),
    # old readers skip it (FORWARD holds).
    required = write_app("v3", extra="currency: str")
    code, out = _run(["schema", "check", required, "--dir", "schemas"], capsys)
    assert code == 9, out
    assert f"BREAKS  {topic}-value (Order): BACKWARD" in out
    assert "field currency" in out
    assert "consumes topic" in out and "handler bill" in out
    code, out = _run(
        ["schema", "check", required, "--dir", "schemas", "--level", "forward"], capsys
    )
    assert code == 0, out

    # A type change breaks in both directions, naming the field.
    changed = write_app("v4", amount="str")
    code, out = _run(["schema", "check", changed, "--dir", "schemas", "--level", "FULL"], capsys)
    assert code == 9, out
    assert "field amount" in out and "1 of 2 schemas break FULL" in out
    assert _run(["schema", "check", changed, "--dir", "schemas", "--level", "NONE"], capsys)[0] == 0


def test_register_then_check_against_the_registry(
    write_app, registry_url: str, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    topic = write_app.topic
    v1 = write_app("v1")
    changed = write_app("v4", amount="str")
    # Nothing registered yet: every subject is new, and passes.
    code, out = _run(["schema", "check", changed, "--registry", registry_url], capsys)
    assert code == 0 and "nothing (new subject)" in out, out

    code, out = _run(["schema", "register", v1, "--registry", registry_url], capsys)
    assert code == 0, out

    async def latest_of(subject: str) -> tuple[int, str] | None:
        async with SchemaRegistry(registry_url) as registry:
            return await registry.latest(subject)

    latest = anyio.run(latest_of, f"{topic}-value")
    assert latest is not None and f"{topic}-value\tid {latest[0]}\tOrder" in out

    code, out = _run(["schema", "check", changed, "--registry", registry_url], capsys)
    assert code == 9 and "field amount" in out and "registry version 1" in out, out
    added = write_app("v2", extra='currency: str = "EUR"')
    code, out = _run(["schema", "check", added, "--registry", registry_url], capsys)
    assert code == 0, out


def test_check_needs_a_registry_or_a_folder(
    write_app, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("EVENTBUS_SCHEMA_REGISTRY", raising=False)
    code, out = _run(["schema", "check", write_app("v1")], capsys)
    assert code == 2 and "give --registry URL (or --dir" in out
    code, out = _run(
        ["schema", "check", write_app("v1"), "--dir", "x", "--level", "SIDEWAYS"], capsys
    )
    assert code == 2 and "--level SIDEWAYS" in out


def test_a_wrong_registry_path_or_folder_fails_instead_of_passing_everything(
    write_app, registry_url: str, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    app = write_app("v1")
    wrong = registry_url.rsplit("/apis", 1)[0] + "/not-the-api"
    code, out = _run(["schema", "check", app, "--registry", wrong], capsys)
    assert code == 1 and "schema registry at" in out and "Traceback" not in out, out
    code, out = _run(["schema", "check", app, "--dir", "no-such-folder"], capsys)
    assert code == 2 and "no such folder" in out
