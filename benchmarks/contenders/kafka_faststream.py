"""FastStream 0.7 on Kafka, configured for the same guarantees as everyone else.

Producer: ``acks="all"``, ``enable_idempotence=True`` and the same batch size. Consumer:
``ack_policy=AckPolicy.ACK`` (commit after the handler returned: at-least-once), which commits
once per message. ``logger=None``: FastStream otherwise logs two INFO lines per message, which
the other contenders do not do; switching it off gives FastStream its best showing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker

from benchmarks.contenders.common import Latencies, Tally, paced, timed_batches, timed_calls
from benchmarks.harness import Measurement, Run
from benchmarks.kafka_common import PRODUCER_OPTIONS, Order, body, filled_topic, kafka_topics

__all__ = ["consume", "keyed", "latency", "publish_batch", "publish_sequential"]

WARM = 50


def _broker(run: Run) -> KafkaBroker:
    return KafkaBroker(run.settings.kafka_bootstrap, logger=None, **PRODUCER_OPTIONS)


@contextlib.asynccontextmanager
async def _running(broker: KafkaBroker) -> AsyncIterator[KafkaBroker]:
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def publish_sequential(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("pub")
    payload = body(settings.message_size)
    async with kafka_topics(settings, [topic]), _running(_broker(run)) as broker:
        for _ in range(WARM):
            await broker.publish(payload, topic)
        return await timed_calls(
            run.messages, lambda: broker.publish(payload, topic), per_call=True
        )


async def publish_batch(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("pub")
    payload = body(settings.message_size)
    async with kafka_topics(settings, [topic]), _running(_broker(run)) as broker:
        await broker.publish_batch(*[payload] * WARM, topic=topic)
        return await timed_batches(
            run.messages,
            settings.batch_size,
            lambda n: broker.publish_batch(*[payload] * n, topic=topic),
        )


async def consume(run: Run, payload: str = "bytes") -> Measurement:
    settings = run.settings
    topic = run.name("in")
    tally = Tally(run.messages, settings.max_seconds)
    broker = _broker(run)
    subscriber = broker.subscriber(
        topic, group_id=run.name("g"), auto_offset_reset="earliest", ack_policy=AckPolicy.ACK
    )
    if payload == "json":

        @subscriber
        async def handle_model(order: Order) -> None:
            tally.hit()

    else:

        @subscriber
        async def handle(value: bytes) -> None:
            tally.hit()

    async with filled_topic(settings, topic, run.messages, payload=payload), _running(broker):
        return await tally.wait("faststream consume")


async def keyed(run: Run, workers: int, ack_policy: Any = AckPolicy.ACK) -> Measurement:
    """Scenario (e): ``max_workers`` over one partition. With ``AckPolicy.ACK`` FastStream runs
    one consumer per worker in the group (concurrency *between partitions* only); with
    ``ACK_FIRST`` it runs workers concurrently but commits on a timer before handling."""
    settings = run.settings
    topic = run.name("keyed")
    tally = Tally(run.messages, settings.max_seconds)
    broker = _broker(run)
    options: dict[str, Any] = {"max_workers": workers} if workers > 1 else {}

    @broker.subscriber(
        topic,
        group_id=run.name("g"),
        auto_offset_reset="earliest",
        ack_policy=ack_policy,
        **options,
    )
    async def handle(value: bytes) -> None:
        await asyncio.sleep(settings.handler_seconds)
        tally.hit()

    async with (
        filled_topic(settings, topic, run.messages, partitions=1, keys=settings.keys),
        _running(broker),
    ):
        return await tally.wait("faststream keyed")


async def latency(run: Run) -> Measurement:
    settings = run.settings
    topic = run.name("lat")
    latencies = Latencies(run.messages)
    broker = _broker(run)

    @broker.subscriber(
        topic, group_id=run.name("g"), auto_offset_reset="earliest", ack_policy=AckPolicy.ACK
    )
    async def handle(value: bytes) -> None:
        latencies.record(value)

    async with kafka_topics(settings, [topic]), _running(broker):
        return await paced(run, lambda b: broker.publish(b, topic), latencies)
