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

__all__ = ["consume", "keyed", "latency", "publish_batch", "publish_sequential", "request"]

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


async def request(run: Run, in_flight: int = 1) -> Measurement:
    """Scenario (i): ``broker.request`` (RabbitMQ's direct reply-to,
    ``amq.rabbitmq.reply-to``) from a second broker to a typed subscriber whose return value is
    the reply. FastStream 0.7 holds a lock around each request (one consumer of the reply
    pseudo-queue per broker), so a broker's requests run one at a time whatever the callers."""
    settings = run.settings
    queue = run.name("req")
    responder, requester = _broker(run), _broker(run)

    @_subscriber(responder, queue, settings.prefetch)
    async def respond(ask: PriceRequest) -> PriceReply:
        return price(ask)

    async def ask(i: int) -> int:
        reply = await requester.request(
            price_request(i),
            queue=queue,
            persist=True,
            mandatory=True,
            timeout=REQUEST_TIMEOUT,
        )
        return PriceReply.model_validate_json(reply.body).order_id

    async with declared(settings, queues=[queue]), _started(responder), _started(requester):
        return await timed_requests(run, ask, in_flight)
