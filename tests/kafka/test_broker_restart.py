"""(d) A broker restart mid-stream: publishing waits it out, consuming resumes, nothing lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from eventbus_kafka import KafkaTransport
from kafka_helpers import Worker, group_of, subscribe, wait_until

from eventbus.message import Message
from eventbus.transports.base import Destination, SubscriptionSpec

pytestmark = [pytest.mark.kafka, pytest.mark.reliability, pytest.mark.timeout(600)]

BROKERS = Path(__file__).resolve().parents[2] / "scripts" / "brokers"


async def brokers(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        str(BROKERS), *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    assert process.returncode == 0, err.decode()


@pytest.mark.skipif(not BROKERS.exists(), reason="needs scripts/brokers to restart Kafka")
async def test_broker_restart_mid_stream_loses_nothing(
    open_transport: Callable[..., KafkaTransport], name: Callable[[str], str]
) -> None:
    # A loaded test machine can take a minute to restart Kafka: publishes wait that long.
    transport = open_transport("publish_timeout=300")
    await transport.connect()
    try:
        await _restart_mid_stream(transport, name("restart"))
    finally:
        await transport.close()


async def _restart_mid_stream(transport: KafkaTransport, topic: str) -> None:
    total = 400
    worker = Worker(
        await subscribe(transport, SubscriptionSpec(topic, "topic", group_of(topic), 32)), seed=4
    )
    confirmed: list[str] = []

    async def publish_all() -> None:
        for i in range(total):
            message = Message(id=f"m{i}", topic=topic, body=str(i).encode(), key=f"k{i % 13}")
            await transport.publish(Destination(topic), [message])  # waits out the restart
            confirmed.append(message.id)
            await asyncio.sleep(0.01)

    publisher = asyncio.create_task(publish_all())
    try:
        await wait_until(lambda: len(worker.received) >= total // 4)
        await brokers("restart", "kafka")
        await asyncio.wait_for(publisher, 300)
    finally:
        if not publisher.done():
            publisher.cancel()
    # The same producer keeps publishing after the restart, one by one and concurrently
    # (aiokafka can be left out of sequence with the broker: the producer is then replaced).
    after = [
        Message(id=f"a{i}", topic=topic, body=str(i).encode(), key=f"k{i % 13}") for i in range(200)
    ]
    for message in after[:50]:
        await transport.publish(Destination(topic), [message])
        confirmed.append(message.id)

    async def publish_one(message: Message) -> None:
        await transport.publish(Destination(topic), [message])
        confirmed.append(message.id)

    await asyncio.wait_for(asyncio.gather(*(publish_one(m) for m in after[50:150])), 120)
    await asyncio.wait_for(transport.publish(Destination(topic), after[150:]), 120)
    confirmed.extend(m.id for m in after[150:])
    expected = {f"m{i}" for i in range(total)} | {m.id for m in after}
    assert set(confirmed) == expected
    await wait_until(lambda: set(worker.received) >= expected, within=180)
    await worker.close()

    # The group's position survived the restart: a new subscription has nothing left to read.
    again = Worker(
        await subscribe(transport, SubscriptionSpec(topic, "topic", group_of(topic), 32)), seed=5
    )
    await asyncio.sleep(2.0)
    await again.close()
    assert again.received == []
