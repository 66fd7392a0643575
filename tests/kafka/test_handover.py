"""A rebalance while handlers outlive the revocation drain, through the whole bus (DESIGN 8,
"Ownership is explicit in the SPI"): the transport reports what is still running lost, the
core cancels it before the partitions go, and the new owner starts from the commit.

Asserted per key: no two handlings overlap in time (across both consumers), the handlings that
completed are exactly the publish order, once each, and nothing is lost."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Callable

import anyio
import pydantic
import pytest
from eventbus_kafka.wire import NOT_BEFORE, TARGET_GROUP
from kafka_helpers import wait_until

from eventbus import Delivery, EventBus, Message, RetryPolicy

pytestmark = [pytest.mark.kafka, pytest.mark.reliability, pytest.mark.timeout(300)]

DRAIN = 2.0
SLOW = 8.0
"""A key's slow handler outlives the drain by far: without the ownership hand-over it would
still run when the new owner handles the same key."""


class Order(pydantic.BaseModel):
    seq: int


class Interval(pydantic.BaseModel):
    who: str
    seq: int
    start: float
    end: float
    completed: bool


async def test_rebalance_with_a_handler_outliving_the_drain_keeps_keys_apart_and_ordered(
    kafka_url: str, name: Callable[[str], str]
) -> None:
    topic, keys, per_key = name("handover"), [f"key-{k}" for k in range(6)], 10
    group = f"{topic}-g"
    url = f"{kafka_url}?revoke_drain_timeout={DRAIN}"
    intervals: dict[str, list[Interval]] = defaultdict(list)
    completed: dict[str, list[int]] = defaultdict(list)
    slowed: set[str] = set()

    def register(bus: EventBus, who: str) -> None:
        @bus.subscribe(topic, group=group, concurrency=16)
        async def handle(order: Order, delivery: Delivery) -> None:
            key = delivery.message.key or ""
            slow = order.seq == 2 and key not in slowed  # the first handling of seq 2 only
            if slow:
                slowed.add(key)
            start, done = time.monotonic(), False
            try:
                await anyio.sleep(SLOW if slow else 0.02)
                done = True
            finally:
                intervals[key].append(Interval(who=who, seq=order.seq, start=start,
                                               end=time.monotonic(), completed=done))  # fmt: skip
                if done:
                    completed[key].append(order.seq)

    first, second = EventBus(url, graceful_timeout=20.0), EventBus(url, graceful_timeout=20.0)
    register(first, "A")
    register(second, "B")
    async with first:
        for seq in range(per_key):
            for key in keys:
                await first.publish(topic, Order(seq=seq), key=key)
        await wait_until(lambda: len(slowed) == len(keys))  # every slow handler runs in A
        async with second:  # joins: A's partitions are revoked while the slow handlers run
            await wait_until(
                lambda: all(set(completed[k]) == set(range(per_key)) for k in keys), within=120
            )
            await anyio.sleep(1.0)  # a duplicate or a late handling would show up now

    for key in keys:
        spans = sorted(intervals[key], key=lambda i: i.start)
        for earlier, later in itertools.pairwise(spans):
            assert later.start >= earlier.end, (
                f"{key}: seq {later.seq} in {later.who} started while seq {earlier.seq} "
                f"ran in {earlier.who}"
            )
        assert completed[key] == list(range(per_key)), f"{key}: {completed[key]}"
    # The scenario happened: the slow handlings were cut short by the hand-over.
    cancelled = [i for k in keys for i in intervals[k] if not i.completed]
    assert {i.seq for i in cancelled} == {2}, "only the slow handlings were cut short"
    assert all(i.who == "A" for i in cancelled)
    assert all(i.end - i.start < SLOW for i in cancelled), "cancelled, not run to the end"
    assert any(i.who == "B" and i.completed for k in keys for i in intervals[k])


async def test_a_retried_message_and_its_dead_letter_carry_no_routing_header(
    kafka_url: str, name: Callable[[str], str]
) -> None:
    """Retried through the broker, the message reaches its handler through the group's retry
    topic (it carried both routing headers there); neither the handler nor the dead letter,
    built by the core from what the transport handed out, sees them."""
    topic = name("routing")
    group = f"{topic}-g"
    seen: list[dict[str, str]] = []
    dead: list[Message] = []
    bus = EventBus(kafka_url, graceful_timeout=10.0)
    policy = RetryPolicy(max_attempts=2, initial_delay=0.2, jitter=False, via_broker=True)

    @bus.subscribe(topic, group=group, retry=policy)
    async def flaky(order: Order, message: Message) -> None:
        seen.append(dict(message.headers))
        raise ConnectionError("down")

    @bus.consume(f"{topic}.{group}.dlq")
    async def letters(message: Message) -> None:
        dead.append(message)

    async with bus:
        await bus.publish(topic, Order(seq=1))
        await wait_until(lambda: len(dead) == 1)
    assert len(seen) == 2
    assert seen[1]["eventbus-attempt"] == "2"  # the second came through the retry topic
    for headers in [*seen, dict(dead[0].headers)]:
        assert not {TARGET_GROUP, NOT_BEFORE} & set(headers), headers
    assert dead[0].headers["eventbus-dlq-reason"] == "retries-exhausted"
