"""Batch handlers (DESIGN 11) on real Kafka and RabbitMQ: every message handled once, in order
per key with four batches running at once, poison items dead-lettered; and per-item settling,
where the later items of a nacked item's key come back after it, in order."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import anyio
from pydantic import BaseModel

from eventbus import Batch, Delivery, EventBus, RetryPolicy
from eventbus.testing.conformance import wait_for

FAST = RetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=0.1, jitter=False)


class Order(BaseModel):
    n: int


async def test_batches_keep_key_order_under_concurrency(
    broker: str, url: str, name: Callable[[str], str]
) -> None:
    topic, group = name("batch-order"), name("g")
    bus = EventBus(url)
    handled: dict[str, list[int]] = defaultdict(list)
    sizes: list[int] = []
    running: set[str] = set()
    overlaps: list[str] = []

    @bus.subscribe(topic, group=group, concurrency=4, batch=Batch(max_size=50, max_wait=0.05))
    async def handle(orders: list[Order], deliveries: list[Delivery]) -> None:
        keys = {d.message.key or "" for d in deliveries}
        overlaps.extend(keys & running)
        running.update(keys)
        sizes.append(len(orders))
        await anyio.sleep(0.002 * len(orders))  # some work, so that batches overlap
        for order, delivery in zip(orders, deliveries, strict=True):
            handled[delivery.message.key or ""].append(order.n)
        running.difference_update(keys)

    total = 1500
    async with bus:
        for start in range(0, total, 100):
            await bus.publish_many(
                topic,
                [Order(n=n) for n in range(start, start + 100)],
                keys=[f"k{n % 40}" for n in range(start, start + 100)],
            )
            if start == 700:
                for poison in range(3):
                    await bus.publish(topic, {"n": "not a number"}, key=f"k{poison}")
        await wait_for(lambda: sum(map(len, handled.values())) == total, within=60)
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 3, within=10)
    stats = bus.subscribers[0].stats
    print(f"\n{broker}: {len(sizes)} batches, sizes max {max(sizes)}")
    assert sorted(n for ns in handled.values() for n in ns) == list(range(total)), "each once"
    for key, ns in handled.items():
        assert ns == sorted(ns), f"{key} out of order"
    assert overlaps == [], "a key was in two running batches"
    assert stats.dead_letter_reasons == {"undecodable": 3}
    assert stats.handled == total and stats.redelivered == 0
    assert max(sizes) == 50, "full batches under a backlog"


async def test_items_settled_one_by_one_on_a_broker(
    broker: str, url: str, name: Callable[[str], str]
) -> None:
    """One key, one batch of six: 1 is nacked, 4 rejected. 1 comes back on attempt 2, then 2, 3
    and 5 (later items of its key) on their attempt 1, in order; 0 is acked, 4 dead-lettered."""
    topic, group = name("batch-items"), name("g")
    bus = EventBus(url)
    seen: list[tuple[int, int]] = []

    @bus.subscribe(topic, group=group, batch=Batch(max_size=6, max_wait=2.0), retry=FAST)
    async def handle(orders: list[Order], deliveries: list[Delivery]) -> None:
        for order, delivery in zip(orders, deliveries, strict=True):
            seen.append((order.n, delivery.attempt))
            if order.n == 1 and delivery.attempt == 1:
                await delivery.nack()
            elif order.n == 4:
                await delivery.reject("bad")

    async with bus:
        await bus.publish_many(topic, [Order(n=n) for n in range(6)], keys=["a"] * 6)
        await wait_for(lambda: len(seen) == 10, within=30)
        await anyio.sleep(0.5)  # nothing else comes
    assert seen[:6] == [(n, 1) for n in range(6)]
    assert seen[6:] == [(1, 2), (2, 1), (3, 1), (5, 1)]
    stats = bus.subscribers[0].stats
    assert stats.dead_letter_reasons == {"rejected": 1}
    assert stats.redelivered == 4 and stats.handled == 10
