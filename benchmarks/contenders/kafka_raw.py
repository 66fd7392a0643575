"""The baseline: aiokafka used directly, the way a careful user would for the same guarantees.

- publish: ``send_and_wait`` per message (waits for acks=all), or ``send`` a batch of messages
  and await their futures together;
- consume: a ``getmany`` loop calling the handler for each record, then ``commit()`` after the
  batch (at-least-once: what is committed was handled), auto-commit off;
- request-reply by hand: the requester sends with ``send_and_wait`` and headers naming its reply
  topic and partition and a correlation id, and reads that partition (assigned, no group) for
  the reply; the responder is a consumer-group ``getmany`` loop that answers each request with
  ``send`` to the partition it names (the replies of one fetch awaited together) and commits
  what it answered every 0.5 s, like eventbus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

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
from benchmarks.kafka_common import Order, body, filled_topic, kafka_topics, producer

__all__ = ["consume", "latency", "publish_batch", "publish_sequential", "request"]

WARM = 50


async def publish_sequential(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("pub")
    payload = body(settings.message_size)
    async with kafka_topics(settings, [topic]), producer(settings) as p:
        for _ in range(WARM):
            await p.send_and_wait(topic, payload)
        return await timed_calls(
            run.messages, lambda: p.send_and_wait(topic, payload), per_call=True
        )


async def publish_batch(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("pub")
    payload = body(settings.message_size)

    async def batch(p: Any, size: int) -> None:
        futures = [await p.send(topic, payload) for _ in range(size)]
        await asyncio.gather(*futures)

    async with kafka_topics(settings, [topic]), producer(settings) as p:
        await batch(p, WARM)
        return await timed_batches(run.messages, settings.batch_size, lambda n: batch(p, n))


@contextlib.asynccontextmanager
async def _consumer(run: Run, topic: str) -> AsyncIterator[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=run.settings.kafka_bootstrap,
        group_id=run.name("g"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def _loop(consumer: Any, handle: Callable[[bytes], Awaitable[None]], tally: Tally) -> None:
    while not tally.done.is_set():
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            for record in records:
                await handle(record.value)
                tally.hit()
        if batch:
            await consumer.commit()  # after handling: at-least-once


async def _noop(value: bytes) -> None:
    pass


async def _model(value: bytes) -> None:
    Order.model_validate_json(value)


async def consume(run: Run, payload: str = "bytes") -> Measurement:
    settings = run.settings
    topic = run.name("in")
    tally = Tally(run.messages, settings.max_seconds)
    handle = _model if payload == "json" else _noop
    async with (
        filled_topic(settings, topic, run.messages, payload=payload),
        _consumer(run, topic) as consumer,
        running(_loop(consumer, handle, tally)),
    ):
        return await tally.wait("aiokafka consume")


async def latency(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("lat")
    latencies = Latencies(run.messages)

    async def record(value: bytes) -> None:
        latencies.record(value)

    async def loop(consumer: Any) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    await record(r.value)
            if batch:
                await consumer.commit()

    async with (
        kafka_topics(settings, [topic]),
        producer(settings) as p,
        _consumer(run, topic) as consumer,
        running(loop(consumer)),
    ):
        return await paced(run, lambda b: p.send_and_wait(topic, b), latencies)


REPLY_TO = "reply-to"
CORRELATION = "correlation-id"
COMMIT_INTERVAL = 0.5


async def _respond(consumer: Any, p: Any) -> None:
    """The hand-written responder: answer every request of a fetch, await the replies'
    acknowledgements together, commit what was answered every `COMMIT_INTERVAL` seconds."""
    committed = time.monotonic()
    while True:
        batch = await consumer.getmany(timeout_ms=500)
        sent = []
        for records in batch.values():
            for r in records:
                headers = dict(r.headers)
                topic, _, partition = headers[REPLY_TO].decode().rpartition(":")
                sent.append(
                    await p.send(
                        topic,
                        raw_price(r.value),
                        partition=int(partition),
                        headers=[(CORRELATION, headers[CORRELATION])],
                    )
                )
        if sent:
            await asyncio.gather(*sent)
        if batch and time.monotonic() - committed >= COMMIT_INTERVAL:
            await consumer.commit()  # after answering: at-least-once
            committed = time.monotonic()


async def _collect(consumer: Any, waiting: dict[bytes, asyncio.Future[bytes]]) -> None:
    """The requester's reply reader: each reply to the future of its correlation id."""
    while True:
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            for r in records:
                for name, value in r.headers:
                    if name == CORRELATION:
                        future = waiting.pop(value, None)
                        if future is not None and not future.done():
                            future.set_result(r.value)
                        break


async def request(run: Run, in_flight: int = 1) -> Measurement:
    settings = run.settings
    queue, replies = run.name("req"), run.name("replies")
    servers = settings.kafka_bootstrap
    waiting: dict[bytes, asyncio.Future[bytes]] = {}
    reply_to = f"{replies}:0".encode()
    loop = asyncio.get_running_loop()
    responder = AIOKafkaConsumer(
        queue,
        bootstrap_servers=servers,
        group_id=run.name("g"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    inbox = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    reply_partition = TopicPartition(replies, 0)

    async with (
        kafka_topics(settings, [queue]),
        kafka_topics(settings, [replies], partitions=1),
        producer(settings) as answers,
        producer(settings) as requests,
    ):
        await responder.start()
        await inbox.start()
        try:
            inbox.assign([reply_partition])
            await inbox.seek_to_end(reply_partition)

            async def ask(i: int) -> int:
                correlation = uuid.uuid4().hex.encode()
                future = waiting[correlation] = loop.create_future()
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        await requests.send_and_wait(
                            queue,
                            raw_request(i),
                            headers=[(REPLY_TO, reply_to), (CORRELATION, correlation)],
                        )
                        reply = await future
                finally:
                    waiting.pop(correlation, None)
                return int(json.loads(reply)["order_id"])

            async with running(_respond(responder, answers)), running(_collect(inbox, waiting)):
                return await timed_requests(run, ask, in_flight)
        finally:
            await inbox.stop()
            await responder.stop()
