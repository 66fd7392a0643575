"""Ack modes (DESIGN 3.2): manual settlement, ``ack_timeout``, idempotent settling, and what a
handler's own settlement means in auto mode."""

import itertools
import time
from collections import defaultdict
from collections.abc import Callable

import anyio
import pydantic

from eventbus import Delivery, EventBus, Message, RetryPolicy
from eventbus import headers as h
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for


class Order(pydantic.BaseModel):
    id: int


FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05, jitter=False)


async def test_ack_timeout_redelivers_with_the_next_attempt_then_dead_letters(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    seen: list[tuple[int, bool, float]] = []
    held: list[Delivery] = []

    @bus.subscribe("orders", group="g", ack="manual", ack_timeout=0.2, retry=FAST)
    async def forgetful(order: Order, delivery: Delivery) -> None:
        seen.append((delivery.attempt, delivery.redelivered, time.monotonic()))
        held.append(delivery)  # never settled

    async with bus:
        await bus.publish("orders", Order(id=1), message_id="slow-1")
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1)
        # Settling after the timeout took over is a no-op, not an error.
        for delivery in held:
            assert delivery.settled
            await delivery.ack()
        await anyio.sleep(0.4)
    assert [(a, r) for a, r, _ in seen] == [(1, False), (2, True), (3, True)]
    assert all(b[2] - a[2] >= 0.19 for a, b in itertools.pairwise(seen))
    [letter] = broker.published("orders.g.dlq")
    assert letter.id == "slow-1"
    assert letter.headers[h.DLQ_REASON] == "retries-exhausted"
    assert letter.headers[h.ATTEMPTS] == "3"
    stats = bus.subscribers[0].stats
    assert stats.redelivered == 2 and stats.dead_lettered == 1 and stats.handled == 3


async def test_settled_before_the_timeout_is_not_redelivered(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    seen: list[int] = []

    async def ack_later(delivery: Delivery) -> None:
        await anyio.sleep(0.05)
        await delivery.ack()

    async with anyio.create_task_group() as tg:

        @bus.subscribe("orders", group="g", ack="manual", ack_timeout=0.3)
        async def handler(order: Order, delivery: Delivery) -> None:
            seen.append(delivery.attempt)
            tg.start_soon(ack_later, delivery)

        async with bus:
            await bus.publish("orders", Order(id=1))
            await wait_for(lambda: seen == [1])
            await anyio.sleep(0.8)
    assert seen == [1]
    assert len(broker.published("orders")) == 1
    assert broker.published("orders.g.dlq") == []


async def test_settling_twice_is_a_no_op(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: dict[str, list[int]] = defaultdict(list)

    @bus.consume("jobs", ack="manual", retry=FAST)
    async def handler(message: Message, delivery: Delivery) -> None:
        calls[message.id].append(delivery.attempt)
        assert not delivery.settled
        if message.id == "ack-ack":
            await delivery.ack()
            await delivery.ack()
        elif message.id == "ack-then-others":
            await delivery.ack()
            await delivery.nack()
            await delivery.reject("too late")
        elif message.id == "reject-then-others":
            await delivery.reject("first")
            await delivery.ack()
            await delivery.nack(delay=0.01)
        elif message.id == "nack-then-others":
            if delivery.attempt == 1:
                await delivery.nack()
                await delivery.reject("ignored")
                await delivery.ack()
            else:
                await delivery.ack()
        assert delivery.settled

    async with bus:
        for message_id in ("ack-ack", "ack-then-others", "reject-then-others", "nack-then-others"):
            await bus.send("jobs", b"x", message_id=message_id)
        await wait_for(lambda: len(calls["nack-then-others"]) == 2)
        await wait_for(lambda: len(broker.published("jobs.dlq")) == 1)
        await anyio.sleep(0.3)
    assert calls == {
        "ack-ack": [1],
        "ack-then-others": [1],
        "reject-then-others": [1],
        "nack-then-others": [1, 2],
    }
    [letter] = broker.published("jobs.dlq")
    assert letter.id == "reject-then-others"
    assert letter.headers[h.ERROR_MESSAGE] == "first"
    assert [m.id for m in broker.published("jobs")].count("nack-then-others") == 2
    assert broker.ready("jobs") == []


async def test_reject_with_a_reason_from_a_manual_handler(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", group="billing", ack="manual", retry=FAST)
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(order.id)
        await delivery.reject("card declined" if order.id == 1 else None)

    async with bus:
        await bus.publish("orders", Order(id=1), message_id="with-reason", headers={"t": "a"})
        await bus.publish("orders", Order(id=2), message_id="without-reason")
        await wait_for(lambda: len(broker.published("orders.billing.dlq")) == 2)
    assert sorted(calls) == [1, 2]
    letters = {m.id: m for m in broker.published("orders.billing.dlq")}
    assert letters["with-reason"].headers[h.DLQ_REASON] == "rejected"
    assert letters["with-reason"].headers[h.ERROR_MESSAGE] == "card declined"
    assert letters["with-reason"].headers[h.ERROR_TYPE] == "eventbus.errors.Reject"
    assert letters["with-reason"].headers["t"] == "a"
    assert letters["with-reason"].headers[h.ORIGINAL_GROUP] == "billing"
    assert letters["without-reason"].headers[h.ERROR_MESSAGE] == "rejected by handler"


async def test_nack_on_the_last_attempt_dead_letters(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", group="g", ack="manual", retry=RetryPolicy(max_attempts=2))
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        await delivery.nack()

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1)
        await anyio.sleep(0.2)
    assert calls == [1, 2]
    [letter] = broker.published("orders.g.dlq")
    assert letter.headers[h.DLQ_REASON] == "retries-exhausted"
    assert letter.headers[h.ATTEMPTS] == "2"


async def test_broadcast_nack_is_bounded_by_the_retry_policy(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    # A broadcast subscription has no group to re-publish to, so a nack is a broker requeue;
    # the attempt count must still grow, or a nacking handler loops forever (DESIGN 3.4).
    bus = make_bus()
    calls: list[tuple[int, bool]] = []

    @bus.subscribe("orders", ack="manual", retry=FAST)
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append((delivery.attempt, delivery.redelivered))
        await delivery.nack()

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(broker.published("orders.broadcast.dlq")) == 1)
        await anyio.sleep(0.3)
    assert calls == [(1, False), (2, True), (3, True)]
    [letter] = broker.published("orders.broadcast.dlq")
    assert letter.headers[h.ATTEMPTS] == "3"


async def test_broadcast_ack_timeout_is_bounded(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", ack="manual", ack_timeout=0.1, retry=FAST)
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(broker.published("orders.broadcast.dlq")) == 1)
        await anyio.sleep(0.4)
    assert calls == [1, 2, 3]


async def test_manual_handler_raising_unsettled_follows_the_retry_policy(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", group="g", ack="manual", retry=FAST)
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        if delivery.attempt == 1:
            raise ConnectionError
        await delivery.ack()

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: calls == [1, 2])
        await wait_for(lambda: bus.subscribers[0].stats.handled == 1)
    assert bus.subscribers[0].stats.dead_lettered == 0


# -- a handler that raises after it settled: the settlement stands ------------------------------


async def test_auto_handler_raising_after_ack_is_not_retried(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", group="g", retry=FAST)
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        await delivery.ack()
        raise ValueError("after the ack")

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: bus.subscribers[0].stats.failed_attempts == 1)
        await anyio.sleep(0.3)
    assert calls == [1]
    assert broker.published("orders.g.dlq") == []
    assert len(broker.published("orders")) == 1


async def test_manual_handler_raising_after_reject_keeps_the_reject(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", group="g", ack="manual", retry=FAST)
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        await delivery.reject("bad data")
        raise ValueError("after the reject")

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: len(broker.published("orders.g.dlq")) == 1)
        await anyio.sleep(0.3)
    assert calls == [1]
    [letter] = broker.published("orders.g.dlq")
    assert letter.headers[h.ERROR_MESSAGE] == "bad data"
    assert letter.headers[h.ERROR_TYPE] == "eventbus.errors.Reject"


async def test_handler_raising_after_nack_is_redelivered_once(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.subscribe("orders", group="g", retry=FAST)  # auto mode: the handler settled first
    async def handler(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        if delivery.attempt == 1:
            await delivery.nack(delay=0.05)
            raise ValueError("after the nack")

    async with bus:
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: calls == [1, 2])
        await wait_for(lambda: bus.subscribers[0].stats.handled == 1)
        await anyio.sleep(0.3)
    assert calls == [1, 2]
    assert broker.published("orders.g.dlq") == []
    [_, (to, retry)] = [(d, m) for d, m in broker.log if d.name == "orders"]
    assert retry.headers[h.ATTEMPT] == "2" and to.group == "g"
