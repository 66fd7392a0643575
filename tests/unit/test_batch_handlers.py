"""Batch handlers (DESIGN 11) on the in-memory transport: how batches form, what returning and
raising settle, per-item settling with the rule for later items of a nacked key, per-key order
with several batches running at once, and what is refused at decoration time."""

import random
from collections import defaultdict
from collections.abc import Callable

import anyio
import pytest
from pydantic import BaseModel

from eventbus import (
    Batch,
    CircuitBreaker,
    ConfigurationError,
    Delivery,
    EventBus,
    HandlerSignatureError,
    HandlerTimeoutError,
    Message,
    RetryPolicy,
)
from eventbus import headers as h
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02, jitter=False)


class Order(BaseModel):
    n: int


def test_batch_validated() -> None:
    for size in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigurationError, match="max_size"):
            Batch(max_size=size)  # type: ignore[arg-type]
    for wait in (-0.1, float("inf"), float("nan"), "1"):
        with pytest.raises(ConfigurationError, match="max_wait"):
            Batch(max_size=2, max_wait=wait)  # type: ignore[arg-type]


def test_max_size_over_max_in_flight_is_refused(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    with pytest.raises(ConfigurationError, match=r"max_size=100.*max_in_flight \(50\)"):
        bus.subscribe("t", group="g", batch=Batch(100), max_in_flight=50)
    # Without max_in_flight there is room for two full batches per concurrent handler.
    bus.subscribe("t", group="g", batch=Batch(100), concurrency=2)(_noop)
    assert bus.subscribers[0].options.max_in_flight == 400


async def _noop(orders: list[Order]) -> None:
    pass


def test_what_cannot_be_combined_with_batch_is_refused(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    with pytest.raises(ConfigurationError, match="ack='manual'"):
        bus.consume("q", batch=Batch(10), ack="manual")
    with pytest.raises(ConfigurationError, match="publish_to"):
        bus.consume("q", batch=Batch(10), publish_to="out")
    with pytest.raises(ConfigurationError, match="batch must be a Batch"):
        bus.consume("q", batch=10)  # type: ignore[arg-type]


def test_batch_handler_parameters_must_be_lists(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()

    async def one_by_one_handler(order: Order) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match=r"one_by_one_handler.*'order'.*list\["):
        bus.consume("q", batch=Batch(10))(one_by_one_handler)
    assert bus.subscribers == ()


async def test_batches_fill_up_to_max_size_in_order(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    batches: list[list[int]] = []

    @bus.consume("jobs", batch=Batch(max_size=4, max_wait=5.0))
    async def handler(orders: list[Order]) -> None:
        batches.append([o.n for o in orders])

    async with bus:
        for n in range(10):
            await bus.send("jobs", Order(n=n))
        await wait_for(lambda: sum(map(len, batches)) == 8)
        assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]], "full batches go at once"
        # The last two wait for max_wait (5 s) since no more come; stop instead: they are
        # released, not handled, and come back next time.
    assert bus.subscribers[0].stats.handled == 8
    async with bus:
        await wait_for(lambda: sum(map(len, batches)) == 10, within=10)
    assert batches[2] == [8, 9]


async def test_a_partial_batch_goes_after_max_wait(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    batches: list[tuple[float, list[bytes]]] = []

    @bus.consume("jobs", batch=Batch(max_size=100, max_wait=0.3))
    async def handler(bodies: list[bytes]) -> None:
        batches.append((anyio.current_time(), bodies))

    async with bus:
        sent = anyio.current_time()
        for n in range(3):
            await bus.send("jobs", f"{n}".encode())
        await wait_for(lambda: len(batches) == 1, within=5)
    at, bodies = batches[0]
    assert bodies == [b"0", b"1", b"2"]
    assert at - sent >= 0.3 - 0.01, "not before max_wait"


async def test_messages_and_deliveries_are_injected_as_lists(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    seen: list[tuple[list[Order], list[str], list[int]]] = []

    @bus.subscribe("orders", group="g", batch=Batch(max_size=3, max_wait=5.0))
    def sync_handler(
        orders: list[Order], messages: list[Message], deliveries: list[Delivery]
    ) -> None:
        seen.append(([*orders], [m.id for m in messages], [d.attempt for d in deliveries]))

    async with bus:
        for n in range(3):
            await bus.publish("orders", Order(n=n), message_id=f"m{n}")
        await wait_for(lambda: len(seen) == 1)
    assert seen == [([Order(n=0), Order(n=1), Order(n=2)], ["m0", "m1", "m2"], [1, 1, 1])]


async def test_raising_retries_the_batch_then_dead_letters_it(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls: list[list[int]] = []

    @bus.consume("jobs", batch=Batch(max_size=3, max_wait=5.0), retry=FAST)
    async def handler(orders: list[Order], deliveries: list[Delivery]) -> None:
        calls.append([d.attempt for d in deliveries])
        raise RuntimeError("database down")

    async with bus:
        for n in range(3):
            await bus.send("jobs", Order(n=n), message_id=f"m{n}")
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 3, within=10)
    assert calls == [[1, 1, 1], [2, 2, 2], [3, 3, 3]], "the batch retried together"
    letters = broker.published("jobs.dlq")
    assert [m.id for m in letters] == ["m0", "m1", "m2"]
    assert {m.headers[h.DLQ_REASON] for m in letters} == {"retries-exhausted"}
    stats = bus.subscribers[0].stats
    assert stats.handled == 0 and stats.failed_attempts == 9


async def test_a_batch_that_fails_once_is_handled_on_its_retry(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    calls: list[list[int]] = []

    @bus.consume("jobs", batch=Batch(max_size=2, max_wait=5.0), retry=FAST)
    async def handler(orders: list[Order]) -> None:
        calls.append([o.n for o in orders])
        if len(calls) == 1:
            raise RuntimeError("once")

    async with bus:
        await bus.send("jobs", Order(n=1))
        await bus.send("jobs", Order(n=2))
        await wait_for(lambda: bus.subscribers[0].stats.handled == 2)
    assert calls == [[1, 2], [1, 2]]


async def test_items_settled_one_by_one(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    """Item 1 (key a) is nacked: it comes back on attempt 2, and item 3, a later item of key a,
    comes back after it on its own attempt 1. Item 2 (key b) is rejected: dead-lettered. The
    rest is acked."""
    bus = make_bus()
    seen: list[tuple[str, int]] = []

    @bus.subscribe("orders", group="g", batch=Batch(max_size=5, max_wait=0.2), retry=FAST)
    async def handler(orders: list[Order], deliveries: list[Delivery]) -> None:
        for order, delivery in zip(orders, deliveries, strict=True):
            seen.append((delivery.message.id, delivery.attempt))
            if order.n == 1 and delivery.attempt == 1:
                await delivery.nack(delay=0.05)
            elif order.n == 2:
                await delivery.reject("bad order")

    async with bus:
        for n, key in enumerate(["a", "a", "b", "a", "c"]):
            await bus.publish("orders", Order(n=n), key=key, message_id=f"m{n}")
        await wait_for(lambda: len(seen) == 7, within=10)
        await anyio.sleep(0.3)
    assert sorted(seen[:5]) == [("m0", 1), ("m1", 1), ("m2", 1), ("m3", 1), ("m4", 1)]
    assert [i for i, _ in seen[:5] if i in ("m0", "m1", "m3")] == ["m0", "m1", "m3"], "key a"
    assert seen[5:] == [("m1", 2), ("m3", 1)], "m3 comes back after m1, spending no attempt"
    letters = broker.published("orders.g.dlq")
    assert [(m.id, m.headers[h.DLQ_REASON]) for m in letters] == [("m2", "rejected")]
    stats = bus.subscribers[0].stats
    assert stats.redelivered == 2 and stats.dead_lettered == 1


async def test_poison_items_are_dead_lettered_and_the_rest_handled(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    handled: list[int] = []

    @bus.consume("jobs", batch=Batch(max_size=3, max_wait=5.0))
    async def handler(orders: list[Order]) -> None:
        handled.extend(o.n for o in orders)

    async with bus:
        await bus.send("jobs", Order(n=1))
        await bus.send("jobs", {"n": "not a number"}, message_id="poison")
        await bus.send("jobs", Order(n=2))
        await bus.send("jobs", Order(n=3))
        await wait_for(lambda: len(handled) == 3)
    assert handled == [1, 2, 3]
    assert [m.id for m in broker.published("jobs.dlq")] == ["poison"]


async def test_dedup_works_per_item(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    handled: list[str] = []

    @bus.consume("jobs", batch=Batch(max_size=2, max_wait=0.05), dedup=True)
    async def handler(messages: list[Message]) -> None:
        handled.extend(m.id for m in messages)

    async with bus:
        for message_id in ["a", "b", "a", "c", "b"]:
            await bus.send("jobs", b"x", message_id=message_id)
        await wait_for(lambda: bus.subscribers[0].stats.duplicates == 2)
        await wait_for(lambda: len(handled) == 3)
    assert sorted(handled) == ["a", "b", "c"]


async def test_timeout_applies_to_the_batch(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    calls: list[int] = []

    @bus.consume("jobs", batch=Batch(max_size=2, max_wait=5.0), timeout=0.1, retry=FAST)
    async def handler(orders: list[Order]) -> None:
        calls.append(len(orders))
        if len(calls) == 1:
            await anyio.sleep(10)

    async with bus:
        await bus.send("jobs", Order(n=1))
        await bus.send("jobs", Order(n=2))
        await wait_for(lambda: bus.subscribers[0].stats.handled == 2, within=5)
    stats = bus.subscribers[0].stats
    assert calls == [2, 2] and stats.timed_out == 1
    assert HandlerTimeoutError.__name__  # the error type a timed-out batch raised (logged)


async def test_per_key_order_with_concurrent_batches(make_bus: Callable[..., EventBus]) -> None:
    """Four batches run at once; a key is never in two of them, and each key's messages are
    handled in publish order."""
    bus = make_bus()
    rng = random.Random(7)
    handled: dict[str, list[int]] = defaultdict(list)
    running: set[str] = set()
    overlaps: list[str] = []
    sizes: list[int] = []
    at_once = 0
    peak = 0

    @bus.subscribe("orders", group="g", concurrency=4, batch=Batch(max_size=8, max_wait=0.01))
    async def handler(messages: list[Message]) -> None:
        nonlocal at_once, peak
        keys = {m.key or "" for m in messages}
        overlaps.extend(keys & running)
        running.update(keys)
        at_once += 1
        peak = max(peak, at_once)
        sizes.append(len(messages))
        await anyio.sleep(rng.uniform(0, 0.01))
        for m in messages:
            handled[m.key or ""].append(int(m.body))
        running.difference_update(keys)
        at_once -= 1

    total = 600
    async with bus:
        for n in range(total):
            await bus.publish("orders", str(n).encode(), key=f"k{rng.randrange(30)}")
        await wait_for(lambda: sum(map(len, handled.values())) == total, within=30)
    assert overlaps == [], "a key was in two running batches"
    for key, seqs in handled.items():
        assert seqs == sorted(seqs), f"{key} out of order"
    assert peak > 1, "batches ran concurrently"
    assert max(sizes) > 1


async def test_test_bus_reports_batch_outcomes(make_bus: Callable[..., EventBus]) -> None:
    from eventbus.testing import TestBus

    bus = make_bus()

    @bus.consume("jobs", batch=Batch(max_size=10, max_wait=0.01))
    async def handler(orders: list[Order], deliveries: list[Delivery]) -> None:
        for order, delivery in zip(orders, deliveries, strict=True):
            if order.n < 0:
                await delivery.reject("negative")

    async with TestBus(bus) as client:
        handled = await client.send("jobs", Order(n=1))
        assert handled.status == "handled" and handled.handled_with == Order(n=1)
        rejected = await client.send("jobs", Order(n=-1))
        assert rejected.status == "dead-lettered" and rejected.reason == "rejected"


async def test_stopping_lets_the_running_batch_finish_and_releases_the_rest(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    """Graceful shutdown (DESIGN 3.8): the batch that runs finishes and is acked; what waits
    for a batch is released, never acked, and handled by the next run, in order."""
    bus = make_bus()
    handled: list[list[int]] = []
    started = anyio.Event()

    @bus.consume("jobs", batch=Batch(max_size=3, max_wait=1.0), max_in_flight=6)
    async def handler(orders: list[Order]) -> None:
        started.set()
        await anyio.sleep(0.3)
        handled.append([o.n for o in orders])

    async with bus:
        for n in range(5):
            await bus.send("jobs", Order(n=n))
        await started.wait()
    assert handled == [[0, 1, 2]], "the running batch finished; 3 and 4 waited for more"
    assert [m.body for m in broker.ready("jobs")] == [b'{"n":3}', b'{"n":4}'], "released"
    async with bus:
        await wait_for(lambda: len(handled) == 2, within=10)
    assert handled[1] == [3, 4]


async def test_a_message_twice_in_one_batch_is_claimed_once_and_skipped_once(
    make_bus: Callable[..., EventBus],
) -> None:
    """The second copy would wait for the batch's own claim until the lease ran out; it goes
    into the next batch instead and is skipped there as done."""
    bus = make_bus()
    calls: list[list[str]] = []

    @bus.consume("jobs", batch=Batch(max_size=2, max_wait=0.05), dedup=True, dedup_lease=30)
    async def handler(messages: list[Message]) -> None:
        calls.append([m.id for m in messages])

    async with bus:
        with anyio.fail_after(5):
            await bus.send("jobs", b"x", message_id="a")
            await bus.send("jobs", b"x", message_id="a")  # a producer's retry, say
            await wait_for(lambda: bus.subscribers[0].stats.duplicates == 1)
    assert calls == [["a"]]


async def test_later_nacks_of_a_key_never_come_back_sooner(
    make_bus: Callable[..., EventBus],
) -> None:
    """m0 nacked with 0.3 s, m2 with 0: m2 (and m3 behind it) still come back after m0, m1."""
    bus = make_bus()
    seen: list[str] = []

    @bus.subscribe("orders", group="g", batch=Batch(max_size=4, max_wait=0.05), retry=FAST)
    async def handler(messages: list[Message], deliveries: list[Delivery]) -> None:
        for message, delivery in zip(messages, deliveries, strict=True):
            seen.append(message.id)
            if delivery.attempt == 1 and message.id == "m0":
                await delivery.nack(delay=0.3)
            elif delivery.attempt == 1 and message.id == "m2":
                await delivery.nack(delay=0.0)

    async with bus:
        for n in range(4):
            await bus.publish("orders", str(n).encode(), key="k", message_id=f"m{n}")
        await wait_for(lambda: len(seen) == 8, within=10)
    assert seen[4:] == ["m0", "m1", "m2", "m3"]


async def test_a_broadcast_put_back_comes_back_behind_the_nacked_item(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    seen: list[tuple[str, int]] = []

    @bus.subscribe("orders", batch=Batch(max_size=2, max_wait=0.05))
    async def handler(messages: list[Message], deliveries: list[Delivery]) -> None:
        for message, delivery in zip(messages, deliveries, strict=True):
            seen.append((message.id, delivery.attempt))
            if message.id == "m0" and delivery.attempt == 1:
                await delivery.nack()

    async with bus:
        for n in range(2):
            await bus.publish("orders", str(n).encode(), key="k", message_id=f"m{n}")
        await wait_for(lambda: len(seen) == 4, within=10)
    assert [i for i, _ in seen[2:]] == ["m0", "m1"]


async def test_test_bus_does_not_wait_for_a_batch_handlers_retry_delay(
    make_bus: Callable[..., EventBus],
) -> None:
    from eventbus import Retry
    from eventbus.testing import TestBus

    bus = make_bus()

    @bus.consume("jobs", batch=Batch(max_size=1, max_wait=0.0))
    async def handler(orders: list[Order], deliveries: list[Delivery]) -> None:
        if deliveries[0].attempt == 1:
            raise Retry(30.0)

    async with TestBus(bus, timeout=5) as client:
        result = await client.send("jobs", Order(n=1))
    assert result.status == "handled" and len(result.attempts) == 2


async def test_the_breaker_holds_batches_through_an_outage(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    """The handler fails for a second (its database is down): the breaker opens, batches wait
    spending no attempt, and once it recovers every message is handled, none dead-lettered.
    Without the breaker the same outage dead-letters them."""

    async def run(breaker: CircuitBreaker | None) -> tuple[int, int]:
        bus = make_bus()
        down_until = anyio.current_time() + 1.0
        handled: list[int] = []

        @bus.subscribe(
            "orders",
            group=f"g-{breaker is not None}",
            batch=Batch(max_size=5, max_wait=0.02),
            retry=FAST,
            breaker=breaker,
        )
        async def handler(orders: list[Order]) -> None:
            if anyio.current_time() < down_until:
                raise ConnectionError("database down")
            handled.extend(o.n for o in orders)

        async with bus:
            for n in range(20):
                await bus.publish("orders", Order(n=n))
            stats = bus.subscribers[0].stats
            await wait_for(lambda: len(handled) + stats.dead_lettered == 20, within=15)
        return len(handled), stats.dead_lettered

    held = CircuitBreaker(failure_ratio=0.5, min_calls=2, window=10.0, open_for=0.3)
    assert await run(held) == (20, 0), "nothing dead-lettered because of the outage"
    assert await run(None) == (0, 20), "without it, the retries run out"


async def test_an_item_that_expires_before_the_batch_is_retried_is_dead_lettered(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    """The retry is in process, after 2 s: the item with a 1 s ttl expired meanwhile and is
    dead-lettered as ``expired`` instead of running again; the other item runs again."""
    bus = make_bus()
    calls: list[list[str]] = []
    slow = RetryPolicy(max_attempts=3, initial_delay=2.0, max_delay=2.0, jitter=False)

    @bus.consume("jobs", batch=Batch(max_size=2, max_wait=5.0), retry=slow)
    async def handler(messages: list[Message]) -> None:
        calls.append([m.id for m in messages])
        if len(calls) == 1:
            raise RuntimeError("once")

    async with bus:
        await bus.send("jobs", Order(n=1), message_id="short", ttl=1.0)
        await bus.send("jobs", Order(n=2), message_id="long", ttl=60.0)
        await wait_for(lambda: bus.subscribers[0].stats.handled == 1, within=10)
    assert calls == [["short", "long"], ["long"]]
    letters = broker.published("jobs.dlq")
    assert [(m.id, m.headers[h.DLQ_REASON]) for m in letters] == [("short", "expired")]
    stats = bus.subscribers[0].stats
    assert stats.expired == 1 and stats.dead_letter_reasons == {"expired": 1}
