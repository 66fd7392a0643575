"""(b) Consumers joining and leaving a group under load lose nothing; a revoked partition's
late acks are not committed by its old owner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from eventbus_kafka import KafkaTransport
from kafka_helpers import Worker, group_of, messages, nothing_more, take, wait_until

from eventbus.transports.base import Destination, SubscriptionSpec

pytestmark = [pytest.mark.kafka, pytest.mark.reliability, pytest.mark.timeout(300)]


def spec(topic: str, prefetch: int = 32) -> SubscriptionSpec:
    return SubscriptionSpec(topic, "topic", group_of(topic), prefetch)


async def test_rebalancing_under_load_loses_nothing(
    transport: KafkaTransport,
    open_transport: Callable[..., KafkaTransport],
    name: Callable[[str], str],
) -> None:
    topic, total = name("rebalance"), 1800
    second, third = open_transport(), open_transport()
    await second.connect()
    await third.connect()
    published: list[str] = []

    async def publish_all() -> None:
        for start in range(0, total, 30):
            batch = messages(topic, total, key=lambda i: f"k{i % 50}")[start : start + 30]
            await transport.publish(Destination(topic), batch)
            published.extend(m.id for m in batch)
            await asyncio.sleep(0.05)

    try:
        a = Worker(await transport.subscribe(spec(topic)), seed=1)
        publisher = asyncio.create_task(publish_all())
        await wait_until(lambda: len(published) >= total // 3)
        b = Worker(await second.subscribe(spec(topic)), seed=2)  # joins under load
        await wait_until(lambda: len(published) >= 2 * total // 3 and len(b.received) > 0)
        await a.close(finish=False)  # leaves with work in flight, never acked
        c = Worker(await third.subscribe(spec(topic)), seed=3)  # joins under load
        await publisher
        workers = (a, b, c)
        expected = {f"m{i}" for i in range(total)}
        await wait_until(lambda: {i for w in workers for i in w.received} >= expected, within=120)
        assert set(published) == expected

        async with asyncio.timeout(60):  # every ack reaches a commit, on every partition
            while True:
                offsets = await transport._admin.group_offsets(group_of(topic))
                if sum(o for (t, _), (o, _) in offsets.items() if t == topic) == total:
                    break
                await asyncio.sleep(0.2)
        await b.close()
        await c.close()
        assert {i for w in workers for i in w.received} == expected
    finally:
        await second.close()
        await third.close()


async def test_late_ack_after_revocation_is_not_committed(
    transport: KafkaTransport,
    open_transport: Callable[..., KafkaTransport],
    name: Callable[[str], str],
) -> None:
    topic = name("revoke")
    first = await transport.subscribe(spec(topic))
    await transport.publish(Destination(topic), messages(topic, 12, key=lambda i: f"key-{i}"))
    held = await take(first, 12)
    other = open_transport()
    await other.connect()
    try:
        second = await other.subscribe(spec(topic))  # the group rebalances: first loses all
        for delivery in held:
            await delivery.ack()  # too late: the partitions were revoked meanwhile
        again = await take(first, 0) + await nothing_more(first, 3.0)
        moved = await nothing_more(second, 0.5)
        redelivered = sorted(d.message.id for d in again + moved)
        assert redelivered == sorted(d.message.id for d in held)
        assert moved, "the joiner owns some partitions and gets their unacked messages"
        for delivery in again + moved:
            await delivery.ack()
        await second.close()
    finally:
        await other.close()
    await first.close()
