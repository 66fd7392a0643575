"""(b) Consumers joining and leaving a group under load lose nothing; a revoked partition's
late acks are not committed by its old owner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from eventbus_kafka import KafkaTransport
from kafka_helpers import Worker, group_of, messages, nothing_more, take, wait_until

from eventbus.transports.base import Destination, RawDelivery, Subscription, SubscriptionSpec

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


async def test_rebalance_never_handles_a_key_in_two_consumers_at_once(
    transport: KafkaTransport,
    open_transport: Callable[..., KafkaTransport],
    name: Callable[[str], str],
) -> None:
    """A slow handler holds a key when a second consumer joins: the revocation waits for what
    was handed out, so the new owner never handles that key concurrently, and per-key order
    (by sequence number) is kept across the move."""
    topic, keys, per_key = name("keyorder"), 8, 12
    active: dict[str, str] = {}  # key -> consumer handling it now
    overlaps: list[str] = []
    handled: dict[str, list[int]] = {}

    class KeyWorker:
        """Handles each key's messages one at a time, in order, like the core's key lanes."""

        def __init__(self, who: str, sub: Subscription, slow: float) -> None:
            self.who, self.sub, self.slow = who, sub, slow
            self.lanes: dict[str, asyncio.Queue[RawDelivery]] = {}
            self.tasks: list[asyncio.Task[None]] = []
            self.runner = asyncio.create_task(self._run())

        async def _run(self) -> None:
            async for delivery in self.sub:
                key = delivery.message.key or ""
                if key not in self.lanes:
                    self.lanes[key] = asyncio.Queue()
                    self.tasks.append(asyncio.create_task(self._lane(self.lanes[key])))
                self.lanes[key].put_nowait(delivery)

        async def _lane(self, lane: asyncio.Queue[RawDelivery]) -> None:
            while True:
                delivery = await lane.get()
                key = delivery.message.key or ""
                if key in active:
                    overlaps.append(f"{key}: {active[key]} and {self.who}")
                active[key] = self.who
                try:
                    await asyncio.sleep(self.slow)
                    handled.setdefault(key, []).append(int(delivery.message.body) // keys)
                finally:
                    if active.get(key) == self.who:
                        del active[key]
                await delivery.ack()

        async def close(self) -> None:
            await self.sub.stop()
            await self.runner
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.sub.close()

    other = open_transport()
    await other.connect()
    try:
        first = KeyWorker("A", await transport.subscribe(spec(topic, prefetch=64)), slow=0.25)
        batch = messages(topic, keys * per_key, key=lambda i: f"k{i % keys}")
        await transport.publish(Destination(topic), batch)
        await wait_until(lambda: sum(map(len, handled.values())) >= keys)  # A is busy
        second = KeyWorker("B", await other.subscribe(spec(topic, prefetch=64)), slow=0.05)
        await wait_until(
            lambda: len(handled) == keys and all(len(set(v)) == per_key for v in handled.values()),
            within=120,
        )
        await first.close()
        await second.close()
        assert not overlaps, overlaps
        for key, seqs in handled.items():
            firsts = [seqs.index(n) for n in range(per_key)]
            assert firsts == sorted(firsts), f"{key} handled out of order: {seqs}"
    finally:
        await other.close()
