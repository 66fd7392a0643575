"""OpenTelemetry tracing on the memory transport (DESIGN 9), with the real SDK: the scenarios
the Kafka and RabbitMQ tests run too (tests/tracing_helpers.py), and what needs no broker."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable

import anyio
import pytest
import tracing_helpers as th
from opentelemetry.trace import SpanKind

from eventbus import Batch, ConfigurationError, Delivery, EventBus, Message
from eventbus.logs import JsonFormatter
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for
from eventbus.transports.base import Destination
from eventbus.transports.memory import MemoryTransport

MakeBus = Callable[..., EventBus]


async def test_one_trace_across_two_buses_and_a_handler_that_publishes(make_bus: MakeBus) -> None:
    await th.one_trace_across_buses(make_bus, "orders", "invoices", "billing", "memory")


async def test_retry_via_broker_dead_letter_and_replay_keep_the_trace(make_bus: MakeBus) -> None:
    await th.retry_dead_letter_replay_keep_the_trace(make_bus, "orders", "billing")


async def test_in_process_retry_keeps_the_trace(make_bus: MakeBus) -> None:
    await th.in_process_retry_keeps_the_trace(make_bus, "orders", "billing")


async def test_tracing_off_writes_and_records_nothing(make_bus: MakeBus) -> None:
    await th.tracing_off_writes_and_records_nothing(make_bus, "orders", "billing")


@pytest.mark.parametrize(
    "header",
    ["traceparent", "ce_traceparent", "cloudEvents_traceparent", "cloudEvents:traceparent"],
)
async def test_a_foreign_traceparent_joins_its_trace(make_bus: MakeBus, header: str) -> None:
    """Bare, or as the CloudEvents Kafka and AMQP bindings name the extension; the handler's
    own publish continues that trace."""
    provider, exporter = th.recorder()
    bus = make_bus(tracing=provider)

    @bus.subscribe("orders", group="g")
    async def handler(payload: dict[str, int]) -> None:
        await bus.publish("audit", payload)

    @bus.subscribe("audit", group="g")
    async def audit(payload: dict[str, int]) -> None:
        pass

    foreign = Message(
        id="foreign-1", topic="orders", body=b'{"n": 1}', headers={header: th.FOREIGN_TRACEPARENT}
    )
    async with bus:
        await bus.transport.publish(Destination("orders"), [foreign])  # no eventbus publish
        consumed = await th.foreign_traceparent_joins(exporter, "orders")
        [audit_span] = await th.wait_spans(exporter, 1, SpanKind.CONSUMER, "process audit")
    assert th.trace_id(audit_span) == th.trace_id(consumed)


async def test_publish_many_is_one_span_injected_into_every_message(
    make_bus: MakeBus, broker: MemoryBroker
) -> None:
    provider, exporter = th.recorder()
    bus = make_bus(tracing=provider)
    async with bus:
        await bus.publish_many("orders", [{"n": 1}, {"n": 2}], headers={"traceparent": "stale"})
    [span] = th.spans(exporter, SpanKind.PRODUCER, "publish orders")
    assert (span.attributes or {})["messaging.batch.message_count"] == 2
    parents = {m.headers["traceparent"][:52] for m in broker.published("orders")}
    assert parents == {f"00-{th.trace_id(span):032x}-{th.span_id(span):016x}"}


async def test_send_to_a_queue_is_traced(make_bus: MakeBus) -> None:
    provider, exporter = th.recorder()
    bus = make_bus(tracing=provider)
    done: list[int] = []

    @bus.consume("jobs")
    async def job(payload: dict[str, int]) -> None:
        done.append(payload["n"])

    async with bus:
        await bus.send("jobs", {"n": 1})
        [consumed] = await th.wait_spans(exporter, 1, SpanKind.CONSUMER, "process jobs")
    [sent] = th.spans(exporter, SpanKind.PRODUCER, "publish jobs")
    assert th.parent_id(consumed) == th.span_id(sent)
    attributes = consumed.attributes or {}
    assert attributes["eventbus.destination.kind"] == "queue"
    assert "messaging.consumer.group.name" not in attributes
    assert attributes["messaging.destination.partition.id"] == "0"


async def test_a_synchronous_handler_publishes_inside_its_span(make_bus: MakeBus) -> None:
    """A plain ``def`` handler runs in a worker thread; its span is still the current one there
    (the context follows the thread), so what it publishes continues the trace; and the JSON log
    format tags its lines with that trace."""
    provider, exporter = th.recorder()
    bus = make_bus(tracing=provider)
    logged: list[dict[str, object]] = []

    @bus.subscribe("orders", group="g")
    def blocking(payload: dict[str, int]) -> None:
        record = logging.LogRecord("app", logging.INFO, __file__, 1, "working", None, None)
        logged.append(json.loads(JsonFormatter().format(record)))
        anyio.from_thread.run(bus.publish, "audit", payload)

    @bus.subscribe("audit", group="g")
    async def audit(payload: dict[str, int]) -> None:
        pass

    async with bus:
        await bus.publish("orders", {"n": 1})
        [audited] = await th.wait_spans(exporter, 1, SpanKind.CONSUMER, "process audit")
    [handled] = th.spans(exporter, SpanKind.CONSUMER, "process orders")
    [published] = th.spans(exporter, SpanKind.PRODUCER, "publish audit")
    assert th.parent_id(published) == th.span_id(handled)
    assert th.trace_id(audited) == th.trace_id(handled)
    assert logged[0]["trace_id"] == f"{th.trace_id(handled):032x}"
    assert str(logged[0]["handler"]).endswith("blocking")


async def test_tracing_true_uses_the_global_provider(make_bus: MakeBus) -> None:
    exporter = th.global_recorder()
    exporter.clear()
    bus = make_bus(tracing=True)
    async with bus:
        await bus.publish("orders", {"n": 1})
    [span] = th.spans(exporter, SpanKind.PRODUCER)
    assert span.name == "publish orders"


async def test_the_tracing_span_is_outside_the_users_middleware(make_bus: MakeBus) -> None:
    from opentelemetry import trace

    provider, _ = th.recorder()
    current: list[str] = []

    def middleware(handler: Callable[[Delivery], object]) -> Callable[[Delivery], object]:
        async def wrapped(d: Delivery) -> None:
            current.append(getattr(trace.get_current_span(), "name", ""))
            await handler(d)  # type: ignore[misc]

        return wrapped

    bus = make_bus(tracing=provider, middleware=[middleware])

    @bus.subscribe("orders", group="g")
    async def handler(payload: dict[str, int]) -> None:
        pass

    async with bus:
        await bus.publish("orders", {"n": 1})
        await wait_for(lambda: len(current) == 1)
    assert current == ["process orders"]


def test_messaging_system_from_transport_or_url() -> None:
    from eventbus.tracing import messaging_system

    assert messaging_system(MemoryTransport(), None) == "memory"

    class Custom(MemoryTransport):
        messaging_system = ""

    assert messaging_system(Custom(), "amqps://h/") == "rabbitmq"
    assert messaging_system(Custom(), None) == "custom"


def test_a_bad_tracing_value_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="TracerProvider"):
        EventBus("memory://", tracing="yes")  # type: ignore[arg-type]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_without_the_extra_enabling_tracing_names_it() -> None:
    result = _run(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
        from eventbus import ConfigurationError, EventBus
        EventBus("memory://")  # off: fine
        try:
            EventBus("memory://", tracing=True)
        except ConfigurationError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "eventbus[otel]" in result.stdout


def test_off_imports_no_opentelemetry() -> None:
    result = _run(
        """
        import sys, anyio
        from eventbus import EventBus
        bus = EventBus("memory://")

        @bus.subscribe("orders", group="g")
        async def handler(payload: dict) -> None:
            pass

        async def main() -> None:
            async with bus:
                await bus.publish("orders", {"n": 1})

        anyio.run(main)
        print(sorted(m for m in sys.modules if m.startswith(("opentelemetry", "eventbus.tracing"))))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_a_batch_call_is_one_span_linked_to_each_publisher(make_bus: MakeBus) -> None:
    provider, exporter = th.recorder()
    bus = make_bus(tracing=provider)
    calls: list[int] = []

    @bus.subscribe("orders", group="g", batch=Batch(max_size=3, max_wait=5.0))
    async def handle(payloads: list[dict[str, int]]) -> None:
        calls.append(len(payloads))
        await bus.publish("audit", {"n": len(payloads)})

    async with bus:
        for n in range(3):
            await bus.publish("orders", {"n": n}, key="k")
        await wait_for(lambda: calls == [3])
    spans = exporter.get_finished_spans()
    published = [s for s in spans if s.name == "publish orders"]
    [batch] = [s for s in spans if s.kind == SpanKind.CONSUMER]
    [audit] = [s for s in spans if s.name == "publish audit"]
    assert batch.name == "process orders" and batch.parent is None, "a root of its own"
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert batch.attributes["eventbus.attempt"] == 1
    assert batch.attributes["messaging.consumer.group.name"] == "g"
    assert {(link.context.trace_id, link.context.span_id) for link in batch.links} == {
        (s.context.trace_id, s.context.span_id) for s in published
    }, "linked to each message's publisher"
    assert audit.parent is not None and audit.parent.span_id == batch.context.span_id
    assert audit.context.trace_id == batch.context.trace_id, "what it publishes continues it"
