"""FastStream 0.7 on RabbitMQ, configured for the same guarantees as everyone else.

Publisher confirms are on by default on its channels; messages are published with
``persist=True`` and ``mandatory=True``. Consumers use ``ack_policy=AckPolicy.ACK`` (ack after
the handler) and ``prefetch_count`` on the subscriber's channel. aio-pika runs each delivery's
callback in its own task, so FastStream handles up to ``prefetch_count`` messages at once, in
no particular order. ``logger=None``: no per-message log lines (the others write none either).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from faststream import AckPolicy
from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

from benchmarks.contenders.common import Latencies, Tally, paced, timed_batches, timed_calls
from benchmarks.harness import Measurement, Run
from benchmarks.rabbit_common import declared, filled_queue

__all__ = ["consume", "keyed", "latency", "publish_batch", "publish_sequential"]

WARM = 50


@contextlib.asynccontextmanager
async def _started(broker: RabbitBroker) -> AsyncIterator[RabbitBroker]:
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def _broker(run: Run) -> RabbitBroker:
    return RabbitBroker(run.settings.amqp_url, logger=None)


async def publish_sequential(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("pub")
    payload = os.urandom(settings.message_size)
    exchange = RabbitExchange(topic, type=ExchangeType.FANOUT, durable=True)
    async with (
        declared(settings, topic=topic, queues=[f"{topic}.g"]),
        _started(_broker(run)) as broker,
    ):

        async def publish() -> Any:
            return await broker.publish(payload, exchange=exchange, persist=True, mandatory=True)

        for _ in range(WARM):
            await publish()
        return await timed_calls(run.messages, publish, per_call=True)


async def publish_batch(run: Run) -> Measurement:
    """FastStream has no batch publish for RabbitMQ: publishes run concurrently instead."""
    settings = run.settings
    topic = run.name("pub")
    payload = os.urandom(settings.message_size)
    exchange = RabbitExchange(topic, type=ExchangeType.FANOUT, durable=True)
    async with (
        declared(settings, topic=topic, queues=[f"{topic}.g"]),
        _started(_broker(run)) as broker,
    ):

        async def batch(size: int) -> None:
            await asyncio.gather(
                *(
                    broker.publish(payload, exchange=exchange, persist=True, mandatory=True)
                    for _ in range(size)
                )
            )

        await batch(WARM)
        return await timed_batches(run.messages, settings.batch_size, batch)


def _subscriber(broker: RabbitBroker, queue: str, prefetch: int) -> Any:
    return broker.subscriber(
        RabbitQueue(queue, durable=True),
        channel=Channel(prefetch_count=prefetch),
        ack_policy=AckPolicy.ACK,
    )


async def consume(run: Run) -> Measurement:
    settings = run.settings
    queue = run.name("in")
    tally = Tally(run.messages, settings.max_seconds)
    broker = _broker(run)

    @_subscriber(broker, queue, settings.prefetch)
    async def handle(value: bytes) -> None:
        tally.hit()

    async with filled_queue(settings, queue, run.messages), _started(broker):
        return await tally.wait("faststream consume")


async def keyed(run: Run, prefetch: int) -> Measurement:
    """Scenario (e): FastStream has no ``max_workers`` on RabbitMQ; its concurrency is the
    prefetch count (one task per delivery), with no per-key order."""
    settings = run.settings
    queue = run.name("keyed")
    tally = Tally(run.messages, settings.max_seconds)
    broker = _broker(run)

    @_subscriber(broker, queue, prefetch)
    async def handle(value: bytes) -> None:
        await asyncio.sleep(settings.handler_seconds)
        tally.hit()

    async with filled_queue(settings, queue, run.messages, keys=settings.keys), _started(broker):
        return await tally.wait("faststream keyed")


async def latency(run: Run) -> Measurement:
    settings = run.settings
    queue = run.name("lat")
    latencies = Latencies(run.messages)
    broker = _broker(run)

    @_subscriber(broker, queue, settings.prefetch)
    async def handle(value: bytes) -> None:
        latencies.record(value)

    async with declared(settings, queues=[queue]), _started(broker):
        return await paced(
            run,
            lambda b: broker.publish(b, queue=queue, persist=True, mandatory=True),
            latencies,
        )
