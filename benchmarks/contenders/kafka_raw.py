"""The baseline: aiokafka used directly, the way a careful user would for the same guarantees.

- publish: ``send_and_wait`` per message (waits for acks=all), or ``send`` a batch of messages
  and await their futures together;
- consume: a ``getmany`` loop calling the handler for each record, then ``commit()`` after the
  batch (at-least-once: what is committed was handled), auto-commit off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

from benchmarks.contenders.common import (
    Latencies,
    Tally,
    paced,
    running,
    timed_batches,
    timed_calls,
)
from benchmarks.harness import Measurement, Run
from benchmarks.kafka_common import Order, body, filled_topic, kafka_topics, producer

__all__ = ["consume", "latency", "publish_batch", "publish_sequential"]

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
