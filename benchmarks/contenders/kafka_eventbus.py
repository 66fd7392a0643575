"""eventbus on Kafka, through its public API only (``EventBus("kafka://...")``).

Its producer is always idempotent with ``acks=all``; its consumer always commits only what was
handled (at-least-once), batched on a timer (``commit_interval``, 0.5 s by default).
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks.contenders.common import (
    REQUEST_TIMEOUT,
    Latencies,
    PriceReply,
    PriceRequest,
    Tally,
    paced,
    price,
    price_request,
    timed_batches,
    timed_calls,
    timed_requests,
)
from benchmarks.harness import Measurement, Run
from benchmarks.kafka_common import Order, body, delete_topics, filled_topic, kafka_topics
from eventbus import Batch, EventBus, MetricsConfig

__all__ = [
    "consume",
    "consume_batch",
    "keyed",
    "latency",
    "publish_batch",
    "publish_sequential",
    "request",
]

WARM = 50


def _bus(run: Run, metrics: bool = False, tracing: bool = False) -> EventBus:
    # Metrics on as `eventbus run --metrics-port` turns them on: endpoints served, backlog read.
    config = MetricsConfig(port=0, host="127.0.0.1") if metrics else False
    return EventBus(
        run.settings.kafka_url, metrics=config, tracing=_tracer_provider() if tracing else False
    )


def _tracer_provider() -> Any:
    """Every span sampled and exported the way a service would (a batch processor), to an
    exporter that drops them: what is measured is eventbus's tracing, not a collector."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    return provider


async def publish_sequential(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("pub")
    payload = body(settings.message_size)
    async with kafka_topics(settings, [topic]), _bus(run) as bus:
        for _ in range(WARM):
            await bus.publish(topic, payload)
        return await timed_calls(run.messages, lambda: bus.publish(topic, payload), per_call=True)


async def publish_batch(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("pub")
    payload = body(settings.message_size)
    async with kafka_topics(settings, [topic]), _bus(run) as bus:
        await bus.publish_many(topic, [payload] * WARM)
        return await timed_batches(
            run.messages, settings.batch_size, lambda n: bus.publish_many(topic, [payload] * n)
        )


async def consume(
    run: Run, payload: str = "bytes", metrics: bool = False, tracing: bool = False, **options: Any
) -> Measurement:
    """``options`` go to ``bus.subscribe`` (e.g. ``max_in_flight``); ``metrics`` turns on
    Prometheus metrics, ``tracing`` OpenTelemetry tracing (every span sampled)."""
    settings = run.settings
    topic, group = run.name("in"), run.name("g")
    tally = Tally(run.messages, settings.max_seconds)
    bus = _bus(run, metrics, tracing)
    subscribe = bus.subscribe(topic, group=group, **options)
    if payload == "json":

        @subscribe
        async def handle_model(order: Order) -> None:
            tally.hit()

    else:

        @subscribe
        async def handle(value: bytes) -> None:
            tally.hit()

    try:
        async with filled_topic(settings, topic, run.messages, payload=payload), bus:
            return await tally.wait("eventbus consume")
    finally:
        await delete_topics(settings, [f"{topic}.{group}.retry"])


async def consume_batch(run: Run, max_size: int = 500) -> Measurement:
    """A batch handler (``batch=Batch(max_size)``) of ``list[bytes]``."""
    settings = run.settings
    topic, group = run.name("in"), run.name("g")
    tally = Tally(run.messages, settings.max_seconds)
    bus = _bus(run)

    @bus.subscribe(topic, group=group, batch=Batch(max_size=max_size, max_wait=0.05))
    async def handle(values: list[bytes]) -> None:
        for _ in values:
            tally.hit()

    try:
        async with filled_topic(settings, topic, run.messages, payload="bytes"), bus:
            return await tally.wait("eventbus batch consume")
    finally:
        await delete_topics(settings, [f"{topic}.{group}.retry"])


async def keyed(run: Run, concurrency: int) -> Measurement:
    """Scenario (e): one partition, 64 keys, a 2 ms handler; key lanes give concurrency
    inside the partition while keeping each key's order."""
    settings = run.settings
    topic, group = run.name("keyed"), run.name("g")
    tally = Tally(run.messages, settings.max_seconds)
    bus = _bus(run)

    @bus.subscribe(topic, group=group, concurrency=concurrency)
    async def handle(value: bytes) -> None:
        await asyncio.sleep(settings.handler_seconds)
        tally.hit()

    try:
        async with (
            filled_topic(settings, topic, run.messages, partitions=1, keys=settings.keys),
            bus,
        ):
            return await tally.wait("eventbus keyed")
    finally:
        await delete_topics(settings, [f"{topic}.{group}.retry"])


async def latency(run: Run) -> Measurement:
    settings = run.settings
    topic, group = run.name("lat"), run.name("g")
    latencies = Latencies(run.messages)
    bus = _bus(run)

    @bus.subscribe(topic, group=group)
    async def handle(value: bytes) -> None:
        latencies.record(value)

    try:
        async with kafka_topics(settings, [topic]), bus:
            return await paced(run, lambda b: bus.publish(topic, b), latencies)
    finally:
        await delete_topics(settings, [f"{topic}.{group}.retry"])


async def request(run: Run, in_flight: int = 1) -> Measurement:
    """Scenario (i): ``bus.request`` from a publisher-only bus to a typed handler on a second
    bus of the same process, whose return value is the reply. The requester's reply topic is
    this run's own (one partition: the one lease it needs), deleted afterwards."""
    settings = run.settings
    queue, replies = run.name("req"), run.name("replies")
    url = settings.kafka_url
    requester = EventBus(
        f"{url}{'&' if '?' in url else '?'}reply_topic={replies}&reply_partitions=1"
    )
    responder = _bus(run)

    @responder.consume(queue, concurrency=in_flight, max_in_flight=max(4, in_flight))
    async def respond(ask: PriceRequest) -> PriceReply:
        return price(ask)

    async def ask(i: int) -> int:
        reply = await requester.request(
            queue, price_request(i), response=PriceReply, timeout=REQUEST_TIMEOUT
        )
        return int(reply.order_id)

    try:
        async with kafka_topics(settings, [queue]), responder, requester.publisher():
            return await timed_requests(run, ask, in_flight)
    finally:
        await delete_topics(settings, [replies, f"{queue}.retry"])
