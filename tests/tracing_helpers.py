"""Tracing scenarios shared by the memory, Kafka and RabbitMQ tracing tests (imported by module
name: tests are no package). Spans are recorded with the real OpenTelemetry SDK.

Each scenario takes ``make_bus(**options)``, which returns an `EventBus` on the broker under
test, and names unique to the test; it asserts on the spans and returns nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from eventbus import Delivery, EventBus, RetryPolicy
from eventbus.dlq import dlq_replay
from eventbus.testing.conformance import wait_for

MakeBus = Callable[..., EventBus]

FOREIGN_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
FOREIGN_SPAN = "00f067aa0ba902b7"
FOREIGN_TRACEPARENT = f"00-{FOREIGN_TRACE}-{FOREIGN_SPAN}-01"


def recorder() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A provider of this test only, and what it recorded."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@functools.cache
def global_recorder() -> InMemorySpanExporter:
    """The process's global tracer provider, set once (OpenTelemetry allows no second time);
    clear the exporter before use."""
    provider, exporter = recorder()
    trace.set_tracer_provider(provider)
    return exporter


def spans(
    exporter: InMemorySpanExporter, kind: SpanKind | None = None, name: str | None = None
) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if (kind is None or s.kind == kind) and (name is None or s.name == name)
    ]


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def wait_spans(
    exporter: InMemorySpanExporter, count: int, kind: SpanKind, name: str
) -> list[ReadableSpan]:
    await wait_for(lambda: len(spans(exporter, kind, name)) >= count, what=f"{count} {name}")
    return spans(exporter, kind, name)


async def one_trace_across_buses(
    make_bus: MakeBus, topic: str, follow_up: str, group: str, system: str
) -> None:
    """A publish on one bus, its handler on another, which publishes again: one trace, each
    span the child of the one before; messaging attributes on both kinds of span."""
    provider, exporter = recorder()
    publisher, handler_bus = make_bus(tracing=provider), make_bus(tracing=provider)
    seen: list[dict[str, str]] = []

    @handler_bus.subscribe(topic, group=group)
    async def first(payload: dict[str, int], delivery: Delivery) -> None:
        await handler_bus.publish(follow_up, {"n": payload["n"] + 1}, key="k-2")

    @handler_bus.subscribe(follow_up, group=group)
    async def second(payload: dict[str, int], delivery: Delivery) -> None:
        seen.append(dict(delivery.message.headers))

    async with handler_bus, publisher:
        message_id = await publisher.publish(topic, {"n": 1}, key="k-1")
        await wait_for(lambda: len(seen) == 1, what="the follow-up handled")
        [consumed] = await wait_spans(exporter, 1, SpanKind.CONSUMER, f"process {topic}")
        [published] = spans(exporter, SpanKind.PRODUCER, f"publish {topic}")
        [republished] = spans(exporter, SpanKind.PRODUCER, f"publish {follow_up}")
        [followed] = await wait_spans(exporter, 1, SpanKind.CONSUMER, f"process {follow_up}")

    chain = [published, consumed, republished, followed]
    assert {trace_id(s) for s in chain} == {trace_id(published)}, "one trace"
    assert [parent_id(s) for s in chain] == [None, *[span_id(s) for s in chain[:-1]]]
    assert seen[0]["traceparent"].split("-")[2] == f"{span_id(republished):016x}"

    p, c = published.attributes or {}, consumed.attributes or {}
    assert p["messaging.system"] == c["messaging.system"] == system
    assert p["messaging.destination.name"] == c["messaging.destination.name"] == topic
    assert p["messaging.operation.type"] == "send"
    assert p["messaging.message.id"] == c["messaging.message.id"] == message_id
    assert c["messaging.operation.type"] == c["messaging.operation.name"] == "process"
    assert c["messaging.consumer.group.name"] == group
    assert c["eventbus.attempt"] == 1
    assert consumed.status.status_code == StatusCode.UNSET
    if system == "kafka":
        assert p["messaging.kafka.message.key"] == c["messaging.kafka.message.key"] == "k-1"
        assert isinstance(c["messaging.kafka.offset"], int)
        assert str(c["messaging.destination.partition.id"]).isdigit()


async def retry_dead_letter_replay_keep_the_trace(
    make_bus: MakeBus, topic: str, group: str
) -> None:
    """A retry through the broker, then a dead letter, then a `dlq_replay`: every attempt's
    span is in the publisher's trace, its child, with its attempt number, failures marked."""
    provider, exporter = recorder()
    bus = make_bus(tracing=provider)
    calls: list[int] = []
    policy = RetryPolicy(
        max_attempts=2, initial_delay=0.05, max_delay=0.1, jitter=False, via_broker=True
    )

    @bus.subscribe(topic, group=group, retry=policy)
    async def handler(payload: dict[str, int], delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        if len(calls) <= 2:
            raise RuntimeError(f"failure {len(calls)}")

    async with bus:
        await bus.publish(topic, {"n": 1})
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 1, what="dead letter")
        assert await dlq_replay(bus.transport, f"{topic}.{group}.dlq", idle=1.0) == 1
        await wait_for(lambda: len(calls) == 3, what="the replayed message handled")
        attempts = await wait_spans(exporter, 3, SpanKind.CONSUMER, f"process {topic}")
    [published] = spans(exporter, SpanKind.PRODUCER, f"publish {topic}")
    assert calls == [1, 2, 1]
    assert [(s.attributes or {})["eventbus.attempt"] for s in attempts] == [1, 2, 1]
    assert {trace_id(s) for s in attempts} == {trace_id(published)}
    assert {parent_id(s) for s in attempts} == {span_id(published)}
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR] * 2 + [StatusCode.UNSET]
    for failed in attempts[:2]:
        [event] = failed.events
        assert event.name == "exception"
        assert (event.attributes or {})["exception.type"] == "RuntimeError"


async def in_process_retry_keeps_the_trace(make_bus: MakeBus, topic: str, group: str) -> None:
    provider, exporter = recorder()
    bus = make_bus(tracing=provider)

    @bus.subscribe(topic, group=group, retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    async def handler(payload: dict[str, int], delivery: Delivery) -> None:
        if delivery.attempt == 1:
            raise RuntimeError("once")

    async with bus:
        await bus.publish(topic, {"n": 1})
        attempts = await wait_spans(exporter, 2, SpanKind.CONSUMER, f"process {topic}")
    [published] = spans(exporter, SpanKind.PRODUCER, f"publish {topic}")
    assert [(s.attributes or {})["eventbus.attempt"] for s in attempts] == [1, 2]
    assert {parent_id(s) for s in attempts} == {span_id(published)}
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.UNSET]


async def tracing_off_writes_and_records_nothing(make_bus: MakeBus, topic: str, group: str) -> None:
    """Off (the default): no span, even with a global provider set, and no trace header."""
    exporter = global_recorder()
    exporter.clear()
    bus = make_bus()
    seen: list[dict[str, str]] = []

    @bus.subscribe(topic, group=group)
    async def handler(payload: dict[str, int], delivery: Delivery) -> None:
        seen.append(dict(delivery.message.headers))

    async with bus:
        await bus.publish(topic, {"n": 1}, headers={"app": "1"})
        await bus.publish_many(topic, [{"n": 2}, {"n": 3}])
        await wait_for(lambda: len(seen) == 3, what="three handled")
        await anyio.sleep(0.1)
    assert exporter.get_finished_spans() == ()
    assert not any("traceparent" in headers for headers in seen), seen
    # Keyless on Kafka: the three may arrive in any order (partitions).
    assert [headers.get("app") for headers in seen].count("1") == 1


async def foreign_traceparent_joins(exporter: InMemorySpanExporter, topic: str) -> ReadableSpan:
    """The CONSUMER span of a message a foreign producer sent with ``FOREIGN_TRACEPARENT``:
    checked to be in that trace, the child of the foreign span."""
    [consumed] = await wait_spans(exporter, 1, SpanKind.CONSUMER, f"process {topic}")
    assert f"{trace_id(consumed):032x}" == FOREIGN_TRACE
    assert f"{parent_id(consumed):016x}" == FOREIGN_SPAN
    assert consumed.parent is not None and consumed.parent.is_remote
    return consumed
