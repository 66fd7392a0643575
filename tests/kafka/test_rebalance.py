"""(b) Consumers joining and leaving a group under load lose nothing; a revoked partition's
late acks are not committed by its old owner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from eventbus_kafka import KafkaTransport
from kafka_helpers import (
    Live,
    RecordingOwner,
    Worker,
    group_of,
    messages,
    nothing_more,
    subscribe,
    take,
    wait_until,
)

from eventbus.transports.base import Destination, RawDelivery, SubscriptionSpec

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
        a = Worker(await subscribe(transport, spec(topic)), seed=1)
        publisher = asyncio.create_task(publish_all())
        await wait_until(lambda: len(published) >= total // 3)
        b = Worker(await subscribe(second, spec(topic)), seed=2)  # joins under load
        await wait_until(lambda: len(published) >= 2 * total // 3 and len(b.received) > 0)
        await a.close(finish=False)  # leaves with work in flight, never acked
        c = Worker(await subscribe(third, spec(topic)), seed=3)  # joins under load
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


async def test_revocation_reports_what_outlives_the_drain_lost_and_ignores_its_acks(
    open_transport: Callable[..., KafkaTransport], name: Callable[[str], str]
) -> None:
    """After the drain, exactly the deliveries still unsettled are reported to the owner,
    before the partitions go; an ack during the drain still counts, their late acks do not."""
    topic, drain = name("revoke"), 2.0
    first_transport = open_transport(f"revoke_drain_timeout={drain}")
    other = open_transport()
    await first_transport.connect()
    await other.connect()
    try:
        owner = RecordingOwner()
        first = await subscribe(first_transport, spec(topic), owner)
        batch = messages(topic, 12, key=lambda i: f"key-{i}")
        await first_transport.publish(Destination(topic), batch)
        held = await take(first, 12)
        early, during, late = held[:3], held[3], held[4:]
        for delivery in early:
            await delivery.ack()  # settled before the rebalance

        started = time.monotonic()
        joining = asyncio.create_task(subscribe(other, spec(topic)))  # first loses everything
        await asyncio.sleep(drain / 4)
        await during.ack()  # settled while the revocation drains: still counts
        second = await joining
        assert len(owner.lost_calls) == 1
        lost = owner.lost_calls[0]
        assert sorted(map(id, lost)) == sorted(map(id, late)), "exactly the unsettled ones"
        assert owner.lost_at[0] - started >= drain * 0.9, "reported only after the drain"
        for delivery in late:
            await delivery.ack()  # no-ops: no longer this consumer's

        # Every partition is owned by someone again; only the unsettled ones come back.
        again = await nothing_more(first, 3.0) + await nothing_more(second, 0.5)
        assert sorted(d.message.id for d in again) == sorted(d.message.id for d in late)
        for delivery in again:
            await delivery.ack()
        await second.close()
        await first.close()
        offsets = await first_transport._admin.group_offsets(group_of(topic))
        assert sum(o for (t, _), (o, _) in offsets.items() if t == topic) == 12
    finally:
        await other.close()
        await first_transport.close()


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

        def __init__(self, who: str, sub: Live, slow: float) -> None:
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
        first = KeyWorker("A", await subscribe(transport, spec(topic, prefetch=64)), slow=0.25)
        batch = messages(topic, keys * per_key, key=lambda i: f"k{i % keys}")
        await transport.publish(Destination(topic), batch)
        await wait_until(lambda: sum(map(len, handled.values())) >= keys)  # A is busy
        second = KeyWorker("B", await subscribe(other, spec(topic, prefetch=64)), slow=0.05)
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
