"""Graceful shutdown (DESIGN 3.8) edge cases beyond the conformance suite: what is pending in a
retry backoff, a dedup wait or a key lane, manual settlement during the drain, startup hooks,
and cutting the drain short."""

import logging
from collections.abc import Callable

import anyio
import pydantic
import pytest

from eventbus import Delivery, EventBus, MemoryDedupStore, RetryPolicy
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for


class Order(pydantic.BaseModel):
    id: int


def _drain_timed_out(caplog: pytest.LogCaptureFixture) -> bool:
    return any("graceful timeout reached" in r.getMessage() for r in caplog.records)


async def _collect_next(
    make_bus: Callable[..., EventBus], expect: int
) -> list[tuple[int, int, bool]]:
    """Start a fresh bus in the same group and return (id, attempt, redelivered) of what it gets."""
    got: list[tuple[int, int, bool]] = []
    bus = make_bus()

    @bus.subscribe("orders", group="g")
    async def rest(order: Order, delivery: Delivery) -> None:
        got.append((order.id, delivery.attempt, delivery.redelivered))

    async with bus:
        await wait_for(lambda: len(got) >= expect, what=f"{expect} redelivered message(s)")
        await anyio.sleep(0.2)
    return got


async def test_message_in_retry_backoff_is_released_at_shutdown(
    make_bus: Callable[..., EventBus], broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus(graceful_timeout=60.0)
    calls: list[int] = []

    @bus.subscribe("orders", group="g", retry=RetryPolicy(initial_delay=120.0, jitter=False))
    async def flaky(order: Order, delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        raise ConnectionError("down")

    with caplog.at_level(logging.INFO, logger="eventbus"):
        async with bus:
            await bus.publish("orders", Order(id=1))
            await wait_for(lambda: bus.subscribers[0].stats.retried == 1, what="the backoff")
    # The drain did not wait for the 120 s backoff (nor hit the 60 s graceful timeout)...
    assert not _drain_timed_out(caplog)
    assert calls == [1]
    # ...and the message was neither acked nor dead-lettered: it is back in the group.
    assert [m.id for m in broker.ready("orders", "g")] == [broker.published("orders")[0].id]
    assert broker.published("orders.g.dlq") == []
    [(order_id, attempt, redelivered)] = await _collect_next(make_bus, 1)
    assert order_id == 1 and redelivered
    assert attempt in (1, 2)


async def test_unstarted_messages_of_a_key_keep_their_order_for_the_next_worker(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    finished: list[int] = []

    @bus.subscribe("orders", group="g", max_in_flight=10)
    async def slow(order: Order) -> None:
        await anyio.sleep(0.3)
        finished.append(order.id)

    async with bus:
        for i in range(10):
            await bus.publish("orders", Order(id=i), key="k")
        await wait_for(lambda: bus.subscribers[0].stats.received == 10)
    assert finished == [0]
    got = await _collect_next(make_bus, 9)
    assert [order_id for order_id, _, _ in got] == list(range(1, 10))


async def test_dedup_wait_at_shutdown_releases_the_message(
    make_bus: Callable[..., EventBus], caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryDedupStore()
    bus = make_bus(dedup_store=store, graceful_timeout=60.0)
    calls: list[int] = []

    @bus.subscribe("orders", group="g", dedup=True)
    async def handler(order: Order) -> None:
        calls.append(order.id)

    await store.claim("orders/g", "m-1", owner="other-worker", lease=300)
    with caplog.at_level(logging.INFO, logger="eventbus"):
        async with bus:
            await bus.publish("orders", Order(id=1), message_id="m-1")
            await wait_for(lambda: bus.subscribers[0].stats.received == 1)
            await anyio.sleep(0.2)
    assert calls == []
    assert not _drain_timed_out(caplog)
    assert bus.subscribers[0].stats.duplicates == 0
    await store.release("orders/g", "m-1", owner="other-worker")  # the other worker failed
    [(order_id, _, redelivered)] = await _collect_next(make_bus, 1)
    assert order_id == 1 and redelivered


async def test_drain_waits_for_manual_settlement_after_the_handler_returned(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus(graceful_timeout=30.0)
    acked: list[int] = []

    async def ack_later(order: Order, delivery: Delivery) -> None:
        await anyio.sleep(0.5)
        await delivery.ack()
        acked.append(order.id)

    async with anyio.create_task_group() as tg:

        @bus.subscribe("orders", group="g", ack="manual")
        async def handler(order: Order, delivery: Delivery) -> None:
            tg.start_soon(ack_later, order, delivery)

        async with bus:
            await bus.publish("orders", Order(id=1))
            await wait_for(lambda: bus.subscribers[0].stats.handled == 1)
        # Leaving the block returned only once the delivery was settled.
        assert acked == [1]
    assert broker.ready("orders", "g") == []


async def test_startup_hooks_run_when_live_and_are_cancelled_first_at_shutdown(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    events: list[str] = []
    produced = 0

    @bus.subscribe("orders", group="g")
    async def handler(order: Order) -> None:
        if order.id == 0:
            events.append("handled-first")
        if order.id == 99:
            events.append("slow-started")
            await anyio.sleep(0.5)
            events.append("slow-finished")

    @bus.on_startup
    async def producer() -> None:
        nonlocal produced
        # Every subscription is live already: the first message is not lost.
        await bus.publish("orders", Order(id=0))
        try:
            while True:
                await anyio.sleep(0.01)
                produced += 1
        except anyio.get_cancelled_exc_class():
            events.append("producer-cancelled")
            raise

    @bus.on_startup
    async def one_shot() -> None:
        events.append("one-shot-done")

    async with bus:
        await wait_for(lambda: "handled-first" in events and produced > 3)
        await bus.publish("orders", Order(id=99))
        await wait_for(lambda: "slow-started" in events)
    assert events.count("producer-cancelled") == 1
    assert "one-shot-done" in events
    assert events.index("producer-cancelled") < events.index("slow-finished"), events


async def test_abort_drain_cuts_the_drain_short_and_the_message_is_redelivered(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    # A graceful timeout far beyond the handler: only abort_drain() can end the drain early.
    bus = make_bus(graceful_timeout=1000.0)
    events: list[str] = []
    leaving = False
    left = False

    @bus.subscribe("orders", group="g")
    async def slow(order: Order) -> None:
        events.append("started")
        try:
            await anyio.sleep(20)
        except anyio.get_cancelled_exc_class():
            events.append("cancelled")
            raise
        events.append("finished")

    async def second_signal() -> None:
        await wait_for(lambda: leaving)
        while not left:
            bus.abort_drain()
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(second_signal)
        async with bus:
            await bus.publish("orders", Order(id=1))
            await wait_for(lambda: events == ["started"])
            leaving = True
        left = True
    assert events == ["started", "cancelled"]
    assert bus.subscribers[0].stats.handled == 0
    assert broker.published("orders.g.dlq") == []
    assert len(broker.ready("orders", "g")) == 1, "released, never acked"
    [(order_id, _, redelivered)] = await _collect_next(make_bus, 1)
    assert order_id == 1 and redelivered


async def test_cancelling_run_drains_in_flight_handlers(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    # bus.run() "until cancelled" (how the CLI stops on SIGTERM): the in-flight handler
    # finishes and is acked; it is not cancelled with the scope that hosts the bus.
    bus = make_bus(graceful_timeout=60.0)
    events: list[str] = []

    @bus.subscribe("orders", group="g")
    async def slow(order: Order) -> None:
        events.append("started")
        await anyio.sleep(0.5)
        events.append("finished")

    live = anyio.Event()

    @bus.on_startup
    async def started() -> None:
        live.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(bus.run)
        await live.wait()
        await bus.publish("orders", Order(id=1))
        await wait_for(lambda: events == ["started"])
        tg.cancel_scope.cancel()
    assert events == ["started", "finished"]
    assert bus.subscribers[0].stats.handled == 1
    assert broker.ready("orders", "g") == [], "acked, not released"


async def test_cancelled_async_with_body_still_drains(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus(graceful_timeout=60.0)
    events: list[str] = []

    @bus.consume("jobs")
    async def slow(order: Order) -> None:
        events.append("started")
        await anyio.sleep(0.5)
        events.append("finished")

    with anyio.CancelScope() as scope:
        async with bus:
            await bus.send("jobs", Order(id=1))
            await wait_for(lambda: events == ["started"])
            scope.cancel()
            await anyio.sleep_forever()
    assert events == ["started", "finished"]
    assert broker.ready("jobs") == []
