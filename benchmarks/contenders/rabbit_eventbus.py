"""eventbus on RabbitMQ, through its public API only (``EventBus("amqp://...")``).

Its publisher always waits for publisher confirms of persistent, mandatory messages; its
consumer acks each message after the handler returned. The broker prefetch is the
subscription's ``max_in_flight`` (set to the scenario's prefetch here).
"""

from __future__ import annotations

import asyncio
import os

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
from benchmarks.rabbit_common import declared, filled_queue
from eventbus import Batch, EventBus

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


def _bus(run: Run) -> EventBus:
    return EventBus(run.settings.amqp_url)


async def publish_sequential(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("pub")
    payload = os.urandom(settings.message_size)
    async with declared(settings, topic=topic, queues=[f"{topic}.g"]), _bus(run) as bus:
        for _ in range(WARM):
            await bus.publish(topic, payload)
        return await timed_calls(run.messages, lambda: bus.publish(topic, payload), per_call=True)


async def publish_batch(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("pub")
    payload = os.urandom(settings.message_size)
    async with declared(settings, topic=topic, queues=[f"{topic}.g"]), _bus(run) as bus:
        await bus.publish_many(topic, [payload] * WARM)
        return await timed_batches(
            run.messages, settings.batch_size, lambda n: bus.publish_many(topic, [payload] * n)
        )


async def consume(run: Run) -> Measurement:
    settings = run.settings
    queue = run.name("in")
    tally = Tally(run.messages, settings.max_seconds)
    bus = _bus(run)

    @bus.consume(queue, max_in_flight=settings.prefetch)
    async def handle(value: bytes) -> None:
        tally.hit()

    async with filled_queue(settings, queue, run.messages, also_delete=[f"{queue}.dlq"]), bus:
        return await tally.wait("eventbus consume")


async def consume_batch(run: Run) -> Measurement:
    """A batch handler of ``list[bytes]``, batches of half the prefetch (two fit in flight)."""
    settings = run.settings
    queue = run.name("in")
    tally = Tally(run.messages, settings.max_seconds)
    bus = _bus(run)
    batch = Batch(max_size=settings.prefetch // 2, max_wait=0.05)

    @bus.consume(queue, max_in_flight=settings.prefetch, batch=batch)
    async def handle(values: list[bytes]) -> None:
        for _ in values:
            tally.hit()

    async with filled_queue(settings, queue, run.messages, also_delete=[f"{queue}.dlq"]), bus:
        return await tally.wait("eventbus batch consume")


async def keyed(run: Run, concurrency: int) -> Measurement:
    """Scenario (e): one queue, 64 keys, a 2 ms handler; key lanes give concurrency while
    keeping each key's order."""
    settings = run.settings
    queue = run.name("keyed")
    tally = Tally(run.messages, settings.max_seconds)
    bus = _bus(run)

    @bus.consume(queue, concurrency=concurrency)
    async def handle(value: bytes) -> None:
        await asyncio.sleep(settings.handler_seconds)
        tally.hit()

    async with (
        filled_queue(
            settings, queue, run.messages, keys=settings.keys, also_delete=[f"{queue}.dlq"]
        ),
        bus,
    ):
        return await tally.wait("eventbus keyed")


async def latency(run: Run) -> Measurement:
    settings = run.settings
    queue = run.name("lat")
    latencies = Latencies(run.messages)
    bus = _bus(run)

    @bus.consume(queue, max_in_flight=settings.prefetch)
    async def handle(value: bytes) -> None:
        latencies.record(value)

    async with declared(settings, queues=[queue], also_delete=[f"{queue}.dlq"]), bus:
        return await paced(run, lambda b: bus.send(queue, b), latencies)


async def request(run: Run, in_flight: int = 1) -> Measurement:
    """Scenario (i): ``bus.request`` from a publisher-only bus to a typed handler on a second
    bus of the same process, whose return value is the reply (to the requester's exclusive
    reply queue)."""
    settings = run.settings
    queue = run.name("req")
    requester, responder = _bus(run), _bus(run)

    @responder.consume(queue, concurrency=in_flight, max_in_flight=settings.prefetch)
    async def respond(ask: PriceRequest) -> PriceReply:
        return price(ask)

    async def ask(i: int) -> int:
        reply = await requester.request(
            queue, price_request(i), response=PriceReply, timeout=REQUEST_TIMEOUT
        )
        return int(reply.order_id)

    async with (
        declared(settings, queues=[queue], also_delete=[f"{queue}.dlq"]),
        responder,
        requester.publisher(),
    ):
        return await timed_requests(run, ask, in_flight)
