"""The baseline: aio-pika used directly, with the same guarantees as everyone else.

- publish: a confirming channel, persistent messages, ``mandatory=True``; awaited one by one,
  or a batch of publishes in flight together (``asyncio.gather``);
- consume: prefetch on the channel, a queue iterator calling the handler for each message, then
  ``ack()`` (manual acks, at-least-once).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aio_pika

from benchmarks.contenders.common import (
    Latencies,
    Tally,
    paced,
    running,
    timed_batches,
    timed_calls,
)
from benchmarks.harness import Measurement, Run
from benchmarks.rabbit_common import connection, declared, filled_queue

__all__ = ["consume", "latency", "publish_batch", "publish_sequential"]

WARM = 50


def _message(payload: bytes) -> aio_pika.Message:
    return aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


async def publish_sequential(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("pub")
    payload = os.urandom(settings.message_size)
    async with declared(settings, topic=topic, queues=[f"{topic}.g"]), connection(settings) as c:
        channel = await c.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topic)

        async def publish() -> Any:
            return await exchange.publish(_message(payload), routing_key="", mandatory=True)

        for _ in range(WARM):
            await publish()
        return await timed_calls(run.messages, publish, per_call=True)


async def publish_batch(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("pub")
    payload = os.urandom(settings.message_size)
    async with declared(settings, topic=topic, queues=[f"{topic}.g"]), connection(settings) as c:
        channel = await c.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topic)

        async def batch(size: int) -> None:
            await asyncio.gather(
                *(
                    exchange.publish(_message(payload), routing_key="", mandatory=True)
                    for _ in range(size)
                )
            )

        await batch(WARM)
        return await timed_batches(run.messages, settings.batch_size, batch)


async def _noop(body: bytes) -> None:
    pass


async def consume(run: Run) -> Measurement:
    settings = run.settings
    queue_name = run.name("in")
    tally = Tally(run.messages, settings.max_seconds)

    async def loop(queue: Any) -> None:
        async with queue.iterator() as messages:
            async for m in messages:
                await _noop(m.body)
                tally.hit()
                await m.ack()  # after handling: at-least-once

    async with filled_queue(settings, queue_name, run.messages), connection(settings) as c:
        channel = await c.channel()
        await channel.set_qos(prefetch_count=settings.prefetch)
        queue = await channel.get_queue(queue_name)
        async with running(loop(queue)):
            return await tally.wait("aio-pika consume")


async def latency(run: Run) -> Measurement:
    settings = run.settings
    queue_name = run.name("lat")
    latencies = Latencies(run.messages)

    async def on_message(m: Any) -> None:
        latencies.record(m.body)
        await m.ack()

    async with (
        declared(settings, queues=[queue_name]),
        connection(settings) as consuming,
        connection(settings) as publishing,
    ):
        channel = await consuming.channel()
        await channel.set_qos(prefetch_count=settings.prefetch)
        queue = await channel.get_queue(queue_name)
        await queue.consume(on_message)
        out = await publishing.channel(publisher_confirms=True)

        async def publish(body: bytes) -> Any:
            return await out.default_exchange.publish(
                _message(body), routing_key=queue_name, mandatory=True
            )

        return await paced(run, publish, latencies)
