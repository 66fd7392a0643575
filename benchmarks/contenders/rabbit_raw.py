"""The baseline: aio-pika used directly, with the same guarantees as everyone else.

- publish: a confirming channel, persistent messages, ``mandatory=True``; awaited one by one,
  or a batch of publishes in flight together (``asyncio.gather``);
- consume: prefetch on the channel, a queue iterator calling the handler for each message, then
  ``ack()`` (manual acks, at-least-once);
- request-reply by hand (the RabbitMQ tutorial's RPC pattern, with confirms): the requester
  consumes an exclusive auto-deleted reply queue (automatic acks) and publishes each request
  with ``reply_to`` and a fresh ``correlation_id``; the responder consumes the request queue,
  publishes the reply to the default exchange with the request's ``correlation_id``, then acks.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any

import aio_pika

from benchmarks.contenders.common import (
    REQUEST_TIMEOUT,
    Latencies,
    Tally,
    paced,
    raw_price,
    raw_request,
    running,
    timed_batches,
    timed_calls,
    timed_requests,
)
from benchmarks.harness import Measurement, Run
from benchmarks.rabbit_common import connection, declared, filled_queue

__all__ = ["consume", "latency", "publish_batch", "publish_sequential", "request"]

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


async def request(run: Run, in_flight: int = 1) -> Measurement:
    settings = run.settings
    queue_name = run.name("req")
    waiting: dict[str, asyncio.Future[bytes]] = {}
    loop = asyncio.get_running_loop()

    async with (
        declared(settings, queues=[queue_name]),
        connection(settings) as responding,
        connection(settings) as requesting,
    ):
        # The responder: prefetch on a confirming channel; reply, then ack.
        serving = await responding.channel(publisher_confirms=True)
        await serving.set_qos(prefetch_count=settings.prefetch)

        async def respond(m: Any) -> None:
            reply = aio_pika.Message(
                raw_price(m.body),
                correlation_id=m.correlation_id,
                content_type="application/json",
            )
            await serving.default_exchange.publish(reply, routing_key=m.reply_to, mandatory=True)
            await m.ack()

        await (await serving.get_queue(queue_name)).consume(respond)

        # The requester: its exclusive reply queue, read with automatic acks.
        channel = await requesting.channel(publisher_confirms=True)
        inbox = await channel.declare_queue(exclusive=True, auto_delete=True)

        async def collect(m: Any) -> None:
            future = waiting.pop(m.correlation_id, None)
            if future is not None and not future.done():
                future.set_result(m.body)

        await inbox.consume(collect, no_ack=True)

        async def ask(i: int) -> int:
            correlation = uuid.uuid4().hex
            future = waiting[correlation] = loop.create_future()
            message = aio_pika.Message(
                raw_request(i),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                correlation_id=correlation,
                reply_to=inbox.name,
                content_type="application/json",
            )
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await channel.default_exchange.publish(
                        message, routing_key=queue_name, mandatory=True
                    )
                    reply = await future
            finally:
                waiting.pop(correlation, None)
            return int(json.loads(reply)["order_id"])

        return await timed_requests(run, ask, in_flight)
