"""Handler timeouts (DESIGN 11): ``timeout=`` cancels an attempt that runs too long, and that
attempt is a failed one that follows the retry policy. Refused on synchronous handlers
(DESIGN 8)."""

from collections.abc import Callable

import anyio
import pytest

from eventbus import (
    ConfigurationError,
    Delivery,
    EventBus,
    EventBusError,
    HandlerSignatureError,
    HandlerTimeoutError,
    RetryPolicy,
)
from eventbus import headers as h
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02, jitter=False)


def test_handler_timeout_error_is_a_timeout_error() -> None:
    error = HandlerTimeoutError("mod.handler", 0.5, 2)
    assert isinstance(error, TimeoutError) and isinstance(error, EventBusError)
    assert "mod.handler" in str(error) and "0.5" in str(error)


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), "1"])
def test_timeout_must_be_finite_and_positive(
    make_bus: Callable[..., EventBus], value: object
) -> None:
    bus = make_bus()
    with pytest.raises(ConfigurationError, match="timeout"):
        bus.subscribe("t", group="g", timeout=value)  # type: ignore[arg-type]


def test_timeout_refused_on_a_sync_handler_naming_it(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()

    def blocking_handler(body: bytes) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match="blocking_handler"):
        bus.consume("jobs", timeout=1.0)(blocking_handler)
    with pytest.raises(HandlerSignatureError, match="blocking_handler"):
        bus.subscribe("t", group="g", timeout=1.0)(blocking_handler)
    assert bus.subscribers == ()
    bus.consume("jobs")(blocking_handler)  # without timeout= it is fine


async def test_a_hanging_handler_is_cancelled_retried_then_dead_lettered(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    attempts: list[tuple[str, int]] = []
    cancelled: list[int] = []
    handled: list[str] = []

    @bus.consume("jobs", timeout=0.2, retry=FAST)
    async def handler(body: str, delivery: Delivery) -> None:
        attempts.append((body, delivery.attempt))
        if body == "hang":
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append(delivery.attempt)
                raise
        handled.append(body)

    async with bus:
        await bus.send("jobs", "hang", message_id="hang-1")
        await bus.send("jobs", "next", message_id="next-1")
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 1, within=10)
        await wait_for(lambda: handled == ["next"], within=5)
    stats = bus.subscribers[0].stats
    assert [a for b, a in attempts if b == "hang"] == [1, 2, 3]
    assert cancelled == [1, 2, 3], "each attempt was cancelled, not abandoned"
    assert stats.timed_out == 3 and stats.failed_attempts == 3 and stats.retried == 2
    [letter] = broker.published("jobs.dlq")
    assert letter.id == "hang-1"
    assert letter.headers[h.DLQ_REASON] == "retries-exhausted"
    assert letter.headers[h.ERROR_TYPE] == "eventbus.errors.HandlerTimeoutError"
    assert letter.headers[h.ATTEMPTS] == "3"


async def test_the_next_message_of_another_key_flows_while_one_hangs(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    done: list[str] = []

    @bus.subscribe("t", group="g", timeout=0.3, concurrency=2, retry=RetryPolicy(max_attempts=1))
    async def handler(body: str) -> None:
        if body == "hang":
            await anyio.sleep_forever()
        done.append(body)

    async with bus:
        await bus.publish("t", "hang", key="a")
        await bus.publish("t", "fine", key="b")
        await bus.publish("t", "after", key="a")  # same key: waits for the timeout only
        await wait_for(lambda: done == ["fine", "after"] or sorted(done) == ["after", "fine"])
    assert bus.subscribers[0].stats.dead_letter_reasons == {"retries-exhausted": 1}


async def test_give_up_on_timeouts_dead_letters_as_rejected(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    calls = 0

    @bus.consume("jobs", timeout=0.1, retry=RetryPolicy(max_attempts=5, give_up_on=(TimeoutError,)))
    async def handler(body: str) -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep(10)

    async with bus:
        await bus.send("jobs", "x")
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 1, within=5)
    assert calls == 1
    assert broker.published("jobs.dlq")[0].headers[h.DLQ_REASON] == "rejected"


async def test_a_handler_that_swallows_the_cancellation_still_timed_out(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    calls = 0

    @bus.consume("jobs", timeout=0.1, retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    async def handler(body: str) -> None:
        nonlocal calls
        calls += 1
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            return  # not acked: the attempt ran past its timeout

    async with bus:
        await bus.send("jobs", "x")
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 1, within=5)
    stats = bus.subscribers[0].stats
    assert calls == 2 and stats.handled == 0 and stats.timed_out == 2


async def test_an_error_raised_while_unwinding_is_still_a_timeout(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()

    @bus.consume("jobs", timeout=0.1, retry=RetryPolicy(max_attempts=1))
    async def handler(body: str) -> None:
        try:
            await anyio.sleep(10)
        finally:
            raise RuntimeError("connection closed under me")

    async with bus:
        await bus.send("jobs", "x")
        await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == 1, within=5)
    [letter] = broker.published("jobs.dlq")
    assert letter.headers[h.ERROR_TYPE] == "eventbus.errors.HandlerTimeoutError"
    assert "connection closed under me" in letter.headers[h.ERROR_TRACEBACK]
    assert bus.subscribers[0].stats.timed_out == 1


async def test_a_quick_handler_is_not_affected(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    seen: list[int] = []

    @bus.consume("jobs", timeout=5.0)
    async def handler(body: dict[str, int]) -> None:
        await anyio.sleep(0.01)
        seen.append(body["n"])

    async with bus:
        for n in range(5):
            await bus.send("jobs", {"n": n})
        await wait_for(lambda: len(seen) == 5)
    stats = bus.subscribers[0].stats
    assert stats.handled == 5 and stats.timed_out == 0 and stats.failed_attempts == 0


async def test_shutdown_cancellation_is_not_a_timeout(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    """Past the graceful timeout the bus cancels the handler itself: released for redelivery,
    not counted as a timed-out or failed attempt."""
    bus = make_bus(graceful_timeout=0.2)
    started = anyio.Event()

    @bus.consume("jobs", timeout=30.0)
    async def handler(body: str) -> None:
        started.set()
        await anyio.sleep_forever()

    async with bus:
        await bus.send("jobs", "x", message_id="slow-1")
        await started.wait()
    stats = bus.subscribers[0].stats
    assert stats.timed_out == 0 and stats.failed_attempts == 0 and stats.dead_lettered == 0
    assert [m.id for m in broker.ready("jobs")] == ["slow-1"], "released, not acked"
