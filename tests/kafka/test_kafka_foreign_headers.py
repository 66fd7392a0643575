"""Records from foreign producers whose eventbus headers claim what eventbus never writes."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from eventbus import EventBus
from eventbus.testing.conformance import wait_for

pytestmark = pytest.mark.kafka


async def test_a_far_future_due_time_on_a_main_topic_does_not_hold_the_partition(
    kafka_url: str,
) -> None:
    """eventbus writes due times on a main topic only within the shortest delay tier; a record
    due in the year 3000 would otherwise pause its partition, and everything behind it, for
    ever."""
    queue = f"foreign-due-{uuid.uuid4().hex[:8]}"
    bus = EventBus(kafka_url + "?partitions=1")
    got: list[int] = []

    @bus.consume(queue)
    async def handle(n: int) -> None:
        got.append(n)

    producer = AIOKafkaProducer(bootstrap_servers=kafka_url.split("://", 1)[1])
    async with bus:
        await producer.start()
        try:
            for n, due in ((1, b"32503680000"), (2, None)):
                headers = [("eventbus-not-before", due)] if due else []
                await producer.send_and_wait(queue, str(n).encode(), headers=headers)
        finally:
            await producer.stop()
        await wait_for(lambda: got == [1, 2], within=20, what="both, in order")
