"""Partition keys, ordering and concurrency (DESIGN 3.5) and the in-flight bound (3.7)."""

from collections import Counter
from collections.abc import Callable

import anyio
import pydantic

from eventbus import Delivery, EventBus, RetryPolicy
from eventbus.testing.conformance import wait_for


class Order(pydantic.BaseModel):
    id: int


async def test_other_keys_flow_while_a_key_waits_for_its_retry(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    events: list[tuple[str, int, str]] = []
    running: Counter[str] = Counter()
    overlaps: list[str] = []
    # concurrency=1: a lane waiting for its backoff must not hold the only slot.
    policy = RetryPolicy(max_attempts=3, initial_delay=2.0, jitter=False)

    @bus.subscribe("orders", group="g", concurrency=1, retry=policy)
    async def handler(order: Order, delivery: Delivery) -> None:
        key = delivery.message.key or ""
        name = f"{key}{order.id}"
        running[key] += 1
        if running.total() > 1:  # concurrency=1: never two handlers at once, whatever the key
            overlaps.append(name)
        events.append((name, delivery.attempt, "start"))
        await anyio.sleep(0.01)
        running[key] -= 1
        if name == "A1" and delivery.attempt == 1:
            events.append((name, delivery.attempt, "failed"))
            raise ConnectionError("transient")
        events.append((name, delivery.attempt, "done"))

    async with bus:
        await bus.publish("orders", Order(id=1), key="A")
        await bus.publish("orders", Order(id=2), key="A")
        await bus.publish("orders", Order(id=1), key="B")  # published after the failing A1
        await wait_for(lambda: ("A2", 1, "done") in events, what="A2")
    assert not overlaps
    at = events.index
    assert at(("B1", 1, "done")) < at(("A1", 2, "start")), f"B waited for A's retry: {events}"
    # Key A stays in order: A2 only after A1 finally succeeded.
    assert at(("A1", 2, "done")) < at(("A2", 1, "start")), events
    assert [e for e in events if e[0].startswith("A")] == [
        ("A1", 1, "start"),
        ("A1", 1, "failed"),
        ("A1", 2, "start"),
        ("A1", 2, "done"),
        ("A2", 1, "start"),
        ("A2", 1, "done"),
    ]


async def test_same_key_stays_in_order_through_retries(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    seen: list[tuple[int, int]] = []
    running = 0
    overlaps = 0
    policy = RetryPolicy(max_attempts=3, initial_delay=0.05, jitter=False)

    @bus.subscribe("orders", group="g", concurrency=8, retry=policy)
    async def handler(order: Order, delivery: Delivery) -> None:
        nonlocal running, overlaps
        running += 1
        overlaps += running > 1
        seen.append((order.id, delivery.attempt))
        await anyio.sleep(0.005)
        running -= 1
        if order.id == 3 and delivery.attempt < 3:
            raise ConnectionError

    async with bus:
        for i in range(10):
            await bus.publish("orders", Order(id=i), key="one-key")
        await wait_for(lambda: len(seen) == 12)
    assert overlaps == 0, "the same key ran concurrently"
    assert seen == [(0, 1), (1, 1), (2, 1), (3, 1), (3, 2), (3, 3)] + [(i, 1) for i in range(4, 10)]


async def _peak_concurrency(bus: EventBus, keys: list[str | None], concurrency: int) -> int:
    running = 0
    peak = 0
    finished = 0
    gate = anyio.Event()

    @bus.subscribe("orders", group="g", concurrency=concurrency, max_in_flight=len(keys))
    async def handler(order: Order) -> None:
        nonlocal running, peak, finished
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        finished += 1

    async with bus:
        for i, key in enumerate(keys):
            await bus.publish("orders", Order(id=i), key=key)
        await wait_for(lambda: running == concurrency, what=f"{concurrency} running")
        await anyio.sleep(0.3)  # room for a wrongly admitted extra handler to start
        assert running == concurrency
        gate.set()
        await wait_for(lambda: finished == len(keys))
    return peak


async def test_keyless_messages_run_concurrently_up_to_the_limit(
    make_bus: Callable[..., EventBus],
) -> None:
    assert await _peak_concurrency(make_bus(), [None] * 20, concurrency=4) == 4


async def test_distinct_keys_run_concurrently_up_to_the_limit(
    make_bus: Callable[..., EventBus],
) -> None:
    keys: list[str | None] = [f"k{i}" for i in range(12)]
    assert await _peak_concurrency(make_bus(), keys, concurrency=3) == 3


async def test_concurrency_one_is_sequential(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    running = 0
    peak = 0
    done: list[int] = []

    @bus.consume("jobs")
    async def handler(order: Order) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1
        done.append(order.id)

    async with bus:
        for i in range(10):
            await bus.send("jobs", Order(id=i))
        await wait_for(lambda: len(done) == 10)
    assert peak == 1
    assert sorted(done) == list(range(10))


async def test_fetching_stops_at_max_in_flight(make_bus: Callable[..., EventBus]) -> None:
    # Memory stays bounded with any backlog: a stuck handler stops the fetching.
    bus = make_bus()
    gate = anyio.Event()
    seen: list[int] = []

    @bus.subscribe("orders", group="g", concurrency=2, max_in_flight=5)
    async def handler(order: Order) -> None:
        await gate.wait()
        seen.append(order.id)

    async with bus:
        for i in range(50):
            await bus.publish("orders", Order(id=i), key="same")
        stats = bus.subscribers[0].stats
        await wait_for(lambda: stats.received == 5)
        await anyio.sleep(0.3)
        assert stats.received == 5
        gate.set()
        await wait_for(lambda: len(seen) == 50)
    assert seen == list(range(50))


async def test_keyless_messages_flow_while_one_waits_for_its_retry(
    make_bus: Callable[..., EventBus],
) -> None:
    # Keyless messages share a small pool of workers; the one waiting for its backoff must not
    # keep the only worker (concurrency=1) from the messages behind it.
    bus = make_bus()
    done: list[tuple[int, int]] = []
    policy = RetryPolicy(max_attempts=2, initial_delay=2.0, jitter=False)

    @bus.subscribe("orders", group="g", concurrency=1, retry=policy)
    async def handler(order: Order, delivery: Delivery) -> None:
        if order.id == 1 and delivery.attempt == 1:
            raise ConnectionError("transient")
        done.append((order.id, delivery.attempt))

    async with bus:
        for i in range(1, 6):
            await bus.publish("orders", Order(id=i))
        await wait_for(lambda: len(done) == 5, what="all five handled")
    assert done[:4] == [(2, 1), (3, 1), (4, 1), (5, 1)], done
    assert done[4] == (1, 2)
