"""The consumer circuit breaker (DESIGN 11) on memory: trip at the failure ratio, hold handlers
and fetching while open, probe half-open, open again or close; an outage spends no attempt."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventbus import (
    CircuitBreaker,
    ConfigurationError,
    Delivery,
    EventBus,
    Message,
    MetricsConfig,
    Reject,
    RetryPolicy,
)
from eventbus.dispatch.breaker import Breaker, HeldError
from eventbus.metrics.merge import merge, render
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for

FAST = RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.02, jitter=False)
QUICK = CircuitBreaker(failure_ratio=0.5, min_calls=2, window=10.0, open_for=0.3)


class Outage:
    """A dependency that is down until `recover`."""

    def __init__(self) -> None:
        self.down = True

    def check(self) -> None:
        if self.down:
            raise ConnectionError("the database is down")


def test_circuit_breaker_is_validated() -> None:
    assert CircuitBreaker() == CircuitBreaker(0.5, 10, 30.0, 10.0)
    for bad in (
        {"failure_ratio": 0},
        {"failure_ratio": 1.5},
        {"failure_ratio": float("nan")},
        {"min_calls": 0},
        {"min_calls": 2.5},
        {"window": 0},
        {"window": float("inf")},
        {"open_for": -1},
    ):
        with pytest.raises(ConfigurationError):
            CircuitBreaker(**bad)
    bus = EventBus("memory://breaker-validation")
    with pytest.raises(ConfigurationError, match="CircuitBreaker"):
        bus.consume("q", breaker=cast(Any, 0.5))


async def test_an_outage_opens_it_holds_handlers_and_spends_no_attempt(
    make_bus: Callable[..., EventBus], caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus()
    outage = Outage()
    states_at_call: list[str | None] = []
    attempts: dict[str, list[int]] = {}
    handled: list[tuple[str | None, str]] = []

    @bus.consume("jobs", concurrency=2, retry=FAST, breaker=QUICK)
    async def work(message: Message, delivery: Delivery) -> None:
        states_at_call.append(stats.breaker_state)
        attempts.setdefault(message.id, []).append(delivery.attempt)
        outage.check()
        handled.append((message.key, message.id))

    stats = bus.subscribers[0].stats
    ids = [f"m{i}" for i in range(12)]
    with caplog.at_level(logging.INFO, logger="eventbus"):
        async with bus:
            for i, mid in enumerate(ids):
                await bus.send("jobs", {"n": i}, key=f"k{i % 3}", message_id=mid)
            await wait_for(lambda: stats.breaker_opened >= 2, what="a failed probe re-opens")
            assert stats.dead_lettered == 0
            outage.down = False
            await wait_for(lambda: len(handled) == len(ids), what="everything handled")
            assert stats.breaker_state == "closed"
    assert stats.dead_lettered == 0, "an outage dead-letters nothing"
    assert sorted(mid for _, mid in handled) == sorted(ids)
    assert "open" not in states_at_call, "no handler runs while the breaker is open"
    assert max(a for tries in attempts.values() for a in tries) <= FAST.max_attempts
    assert any(len(tries) > FAST.max_attempts for tries in attempts.values()), attempts
    for key in ("k0", "k1", "k2"):  # held deliveries kept their key's order
        order = [mid for k, mid in handled if k == key]
        assert order == sorted(order, key=lambda m: int(m[1:])), order
    lines = [r.getMessage() for r in caplog.records]
    assert any("circuit breaker open" in line and "jobs" in line for line in lines)
    assert any("circuit breaker half-open" in line for line in lines)
    assert any("circuit breaker closed" in line for line in lines)
    assert any("spends no attempt" in line for line in lines)


async def test_in_process_retries_park_and_fetching_pauses(
    make_bus: Callable[..., EventBus], broker: MemoryBroker
) -> None:
    bus = make_bus()
    outage = Outage()
    calls: list[tuple[str, int]] = []
    breaker = CircuitBreaker(failure_ratio=1.0, min_calls=3, window=10.0, open_for=60.0)

    @bus.consume("jobs", max_in_flight=4, retry=RetryPolicy(3, 0.01, jitter=False), breaker=breaker)
    async def work(message: Message, delivery: Delivery) -> None:
        calls.append((message.id, delivery.attempt))
        outage.check()

    stats = bus.subscribers[0].stats
    async with bus:
        await bus.send("jobs", {}, message_id="first")
        # Attempts 1 and 2 fail and retry in process; attempt 3 trips the breaker, spending
        # nothing: no dead letter although the policy's attempts are all used.
        await wait_for(lambda: stats.breaker_state == "open", what="the trip")
        assert calls == [("first", 1), ("first", 2), ("first", 3)]
        received = stats.received
        for i in range(10):
            await bus.send("jobs", {}, message_id=f"later-{i}")
        await anyio.sleep(0.3)  # give a paused fetcher the chance to misbehave
        assert stats.received == received, "paused: nothing more fetched"
        assert len(broker.ready("jobs", None)) == 10
        assert calls[-1] == ("first", 3) and stats.dead_lettered == 0
    # Stopping while open releases the held delivery (redelivered later), never acks it.
    assert stats.handled == 0 and stats.dead_lettered == 0
    assert "first" in [m.id for m in broker.ready("jobs", None)]


async def test_reject_and_given_up_errors_dead_letter_and_do_not_count(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()

    @bus.consume(
        "jobs",
        retry=RetryPolicy(max_attempts=2, initial_delay=0.01, give_up_on=(KeyError,)),
        breaker=CircuitBreaker(failure_ratio=0.5, min_calls=2, window=10.0, open_for=60.0),
    )
    async def work(message: Message) -> None:
        if message.id.startswith("reject"):
            raise Reject("bad input")
        raise KeyError("given up on")

    stats = bus.subscribers[0].stats
    async with bus:
        for i in range(6):
            await bus.send("jobs", {}, message_id=f"{'reject' if i % 2 else 'key'}-{i}")
        await wait_for(lambda: stats.dead_lettered == 6, what="six dead letters")
    assert stats.dead_letter_reasons == {"rejected": 6}
    assert stats.breaker_opened == 0 and stats.breaker_state == "closed"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_window_slides_and_successes_dilute_the_ratio() -> None:
    bus = EventBus("memory://breaker-window")

    @bus.consume("q", breaker=CircuitBreaker(failure_ratio=0.5, min_calls=4, window=10.0))
    async def work(message: Message) -> None: ...

    sub = bus.subscribers[0]
    assert sub.options.breaker is not None
    paused: list[str] = []
    clock = Clock()
    gate = Breaker(
        sub.options.breaker,
        sub,
        lambda: paused.append("pause"),
        lambda: paused.append("resume"),
        lambda: None,
        clock,
    )
    fail = True

    async def handler(_: Delivery) -> None:
        if fail:
            raise ConnectionError("down")

    call = gate.guard(handler)
    attempt = cast(Callable[[Any], Awaitable[None]], call)

    # 3 failures: below min_calls.
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await attempt(None)
    fail = False
    for _ in range(3):
        await attempt(None)  # 3 of 6 failed: ratio 0.5, but the last outcome was a success
    clock.now += 11  # all of it left the window
    fail = True
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await attempt(None)
    assert gate.state == "closed" and paused == []
    with pytest.raises(HeldError) as held:
        await attempt(None)  # the 4th failure of 4: trips, held
    assert isinstance(held.value.error, ConnectionError)
    assert gate.state == "open" and paused == ["pause"] and sub.stats.breaker_opened == 1
    with pytest.raises(HeldError) as held:
        await attempt(None)  # open: does not run
    assert held.value.error is None


async def test_metrics_show_the_state_and_the_trips(url: str) -> None:
    bus = EventBus(url, metrics=MetricsConfig(port=0, host="127.0.0.1"))
    outage = Outage()

    @bus.consume(
        "jobs",
        retry=FAST,
        breaker=CircuitBreaker(failure_ratio=1.0, min_calls=2, window=10.0, open_for=60.0),
    )
    async def work(message: Message) -> None:
        outage.check()

    @bus.consume("other")
    async def plain(message: Message) -> None: ...

    stats = bus.subscribers[0].stats
    async with bus:
        await bus.send("jobs", {}, message_id="x")
        await wait_for(lambda: stats.breaker_state == "open", what="the trip")
        assert bus.metrics_port is not None
        text = await anyio.to_thread.run_sync(_get, bus.metrics_port)
    samples = {
        (s.name, s.labels.get("destination")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("eventbus_breaker_state", "jobs")] == 2
    assert ("eventbus_breaker_state", "other") not in samples, "no breaker, no state"
    assert samples[("eventbus_breaker_opened_total", "jobs")] == 1
    assert samples[("eventbus_breaker_opened_total", "other")] == 0


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def test_with_several_workers_the_most_open_state_wins_and_trips_add_up() -> None:
    labels = 'destination="jobs",kind="queue",group="",handler="work"'

    def worker(state: int, opened: int) -> str:
        return (
            "# HELP eventbus_breaker_state x\n# TYPE eventbus_breaker_state gauge\n"
            f"eventbus_breaker_state{{{labels}}} {state}\n"
            "# HELP eventbus_breaker_opened x\n# TYPE eventbus_breaker_opened counter\n"
            f"eventbus_breaker_opened_total{{{labels}}} {opened}\n"
        )

    merged = {
        s.name: s.value
        for family in text_string_to_metric_families(
            render(merge([worker(0, 1), worker(2, 3), worker(1, 0)])).decode()
        )
        for s in family.samples
    }
    assert merged == {"eventbus_breaker_state": 2, "eventbus_breaker_opened_total": 4}


async def test_half_open_with_nothing_waiting_fetches_a_probe_and_a_void_probe_passes_on() -> None:
    bus = EventBus("memory://breaker-nothing-waits")

    @bus.consume("q", breaker=CircuitBreaker(failure_ratio=1.0, min_calls=1, open_for=0.05))
    async def work(message: Message) -> None: ...

    sub = bus.subscribers[0]
    assert sub.options.breaker is not None
    calls: list[str] = []
    outcome: list[BaseException] = [ConnectionError("down")]

    async def handler(_: Delivery) -> None:
        if outcome:
            raise outcome[0]

    async with anyio.create_task_group() as tg:
        gate = Breaker(
            sub.options.breaker,
            sub,
            lambda: calls.append("pause"),
            lambda: calls.append("resume"),
            lambda: tg,
        )
        attempt = cast(Callable[[Any], Awaitable[None]], gate.guard(handler))
        with pytest.raises(HeldError):
            await attempt(None)  # trips: open, paused
        await wait_for(lambda: gate.state == "half-open", what="half-open")
        assert calls == ["pause", "resume"], "nobody waits: fetch a message to probe with"
        outcome[:] = [Reject("one bad message")]
        with pytest.raises(Reject):
            await attempt(None)  # a probe without a verdict
        assert gate.state == "half-open"
        outcome.clear()
        await attempt(None)  # the next probe succeeds
        assert gate.state == "closed" and calls == ["pause", "resume", "resume"]
        assert sub.stats.breaker_opened == 1


async def test_a_message_that_always_fails_cannot_hold_the_subscription(
    url: str, broker: MemoryBroker
) -> None:
    # min_calls <= max_attempts: one poison message trips the breaker on its own and would be
    # the probe after every open_for, failing, forever. Past HELD_FAILURES * max_attempts held
    # failures its failures spend attempts again, so it ends dead-lettered and the next flows.
    bus = EventBus(url)
    handled: list[str] = []
    calls: list[str] = []

    @bus.consume("jobs", retry=FAST, breaker=QUICK)
    async def job(message: Message) -> None:
        calls.append(message.id)
        if message.id == "poison":
            raise ValueError("this input can never be handled")
        handled.append(message.id)

    async with bus:
        await bus.send("jobs", {}, message_id="poison")
        await wait_for(lambda: len(broker.published("jobs.dlq")) == 1, within=20)
        await bus.send("jobs", {}, message_id="fine")
        await wait_for(lambda: handled == ["fine"], within=20)
    (letter,) = broker.published("jobs.dlq")
    assert letter.id == "poison" and letter.headers["eventbus-dlq-reason"] == "retries-exhausted"
    # 2 * max_attempts held failures, then max_attempts that count.
    assert calls.count("poison") == 2 * FAST.max_attempts + FAST.max_attempts
