"""Rate limits (DESIGN 11) on memory://: handler starts stay within ``per_second`` and
``burst``, waiting is never a nack, long waits pause fetching, and a shared limiter's outage
waits without spending attempts."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import eventbus.dispatch.throttle as throttle
from eventbus import ConfigurationError, EventBus, RateLimit, RedisRateLimiter, RetryPolicy
from eventbus.errors import BrokerUnavailableError
from eventbus.ratelimit.gcra import Gcra


async def wait_for(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await anyio.sleep(0.01)


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        {"per_second": 0},
        {"per_second": -1.0},
        {"per_second": math.nan},
        {"per_second": math.inf},
        {"per_second": True},
        {"per_second": "10"},
        {"per_second": 10, "burst": 0},
        {"per_second": 10, "burst": 1.5},
        {"per_second": 10, "burst": True},
        {"per_second": 10, "shared": object()},
    ],
)
def test_bad_values_are_refused(args: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="RateLimit"):
        RateLimit(**args)


def test_subscribe_refuses_what_is_not_a_rate_limit(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    with pytest.raises(ConfigurationError, match="rate_limit"):
        bus.subscribe("t", group="g", rate_limit=10)  # type: ignore[arg-type]


def test_gcra_lets_a_burst_through_then_one_per_interval() -> None:
    gcra = Gcra(per_second=10, burst=3)
    assert [gcra.reserve(100.0) for _ in range(5)] == pytest.approx([0, 0, 0, 0.1, 0.2])
    # Idle long enough: the burst is back, never more than it.
    assert [gcra.reserve(200.0) for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])


def test_importing_eventbus_does_not_import_redis() -> None:
    code = "import sys, eventbus; assert 'redis' not in sys.modules, 'redis imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_redis_limiter_without_redis_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"eventbus\[redis\]"):
        RedisRateLimiter("redis://127.0.0.1:6379/0")


def test_redis_limiter_config() -> None:
    with pytest.raises(ConfigurationError, match="redis://"):
        RedisRateLimiter("http://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="key"):
        RedisRateLimiter("redis://127.0.0.1:6379/0", key="")
    limiter = RedisRateLimiter("redis://user:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in repr(limiter)
    assert limiter.key_for("orders/billing:eu") == "eventbus:ratelimit:orders/billing%3Aeu"
    assert RedisRateLimiter("redis://h", key="api", prefix="p").key_for("x") == "p:api"


# -- local limits through the bus ------------------------------------------------------------


async def test_handler_starts_stay_within_the_limit_and_nothing_is_nacked(
    make_bus: Callable[..., EventBus],
) -> None:
    per_second, burst, count = 20.0, 5, 60
    bus = make_bus()
    starts: list[float] = []
    seen: list[int] = []

    @bus.subscribe("rl-orders", group="g", concurrency=4, rate_limit=RateLimit(per_second, burst))
    async def handle(payload: dict[str, int]) -> None:
        starts.append(time.monotonic())
        seen.append(payload["n"])

    async with bus:
        await bus.publish_many("rl-orders", [{"n": i} for i in range(count)])
        await wait_for(lambda: len(seen) >= count, "every message handled")
        await anyio.sleep(0.1)  # nothing more arrives (no redelivery)
    [sub] = bus.subscribers
    took = starts[-1] - starts[0]
    minimum = (count - burst) / per_second
    print(f"{count} starts at {per_second}/s burst {burst}: {took:.3f}s (minimum {minimum}s)")
    assert took >= minimum - 0.002, f"{count} starts took {took:.3f}s, below {minimum}s"
    assert took <= minimum + 3.0, f"{count} starts took {took:.3f}s: the limit stalls"
    # Over any window of t seconds at most burst + t * per_second starts.
    for i, start in enumerate(starts):
        inside = sum(1 for s in starts[i:] if s - start < 1.0)
        assert inside <= burst + per_second + 1
    assert sorted(seen) == list(range(count)), "every message handled exactly once"
    assert sub.stats.handled == count
    assert sub.stats.redelivered == 0
    assert sub.stats.dead_lettered == 0
    assert sub.stats.throttled > 0
    assert sub.stats.throttled_seconds > 0


async def test_retries_in_process_take_turns_too(make_bus: Callable[..., EventBus]) -> None:
    per_second, count = 20.0, 8
    bus = make_bus()
    starts: list[float] = []
    failed: set[int] = set()

    @bus.subscribe(
        "rl-retry",
        group="g",
        concurrency=4,
        retry=RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=False),
        rate_limit=RateLimit(per_second, burst=1),
    )
    async def handle(payload: dict[str, int]) -> None:
        starts.append(time.monotonic())
        if payload["n"] not in failed:
            failed.add(payload["n"])
            raise RuntimeError("first attempt fails")

    async with bus:
        await bus.publish_many("rl-retry", [{"n": i} for i in range(count)])
        await wait_for(lambda: bus.subscribers[0].stats.handled == count, "all handled")
    assert len(starts) == 2 * count
    minimum = (2 * count - 1) / per_second
    assert starts[-1] - starts[0] >= minimum - 0.002
    assert bus.subscribers[0].stats.dead_lettered == 0


async def test_a_long_wait_pauses_fetching_and_resumes_after(
    make_bus: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(throttle, "PAUSE_AFTER", 0.2)
    bus = make_bus()
    handled: list[int] = []
    paused_seen: list[bool] = []

    @bus.consume("rl-slow", rate_limit=RateLimit(per_second=3.0, burst=1))
    async def handle(payload: dict[str, int]) -> None:
        handled.append(payload["n"])

    async with bus:
        [runner] = bus._runners
        for i in range(3):
            await bus.send("rl-slow", {"n": i})

        def paused() -> bool:
            current = runner._consume.current
            state = bool(current is not None and getattr(current, "paused", False))
            paused_seen.append(state)
            return state

        await wait_for(paused, "the subscription paused during a long wait")
        await wait_for(lambda: len(handled) == 3, "every message handled")
        await wait_for(lambda: not paused(), "fetching resumed once nobody waits")
        # Fetching works again: a new message is received and handled.
        await bus.send("rl-slow", {"n": 3})
        await wait_for(lambda: len(handled) == 4, "a message sent after the waits")
    assert handled == [0, 1, 2, 3]
    assert bus.subscribers[0].stats.redelivered == 0


async def test_a_user_pause_survives_the_rate_limit_resuming(
    make_bus: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(throttle, "PAUSE_AFTER", 0.05)
    bus = make_bus()
    handled: list[int] = []

    @bus.consume("rl-user-pause", rate_limit=RateLimit(per_second=10.0, burst=1))
    async def handle(payload: dict[str, int]) -> None:
        handled.append(payload["n"])

    async with bus:
        [runner] = bus._runners
        for i in range(3):
            await bus.send("rl-user-pause", {"n": i})
        await wait_for(lambda: len(handled) == 3, "first three handled")
        runner.pause()
        await bus.send("rl-user-pause", {"n": 3})
        await anyio.sleep(0.3)
        assert handled == [0, 1, 2], "paused by the user: nothing more is handed out"
        runner.resume()
        await wait_for(lambda: len(handled) == 4, "handled after resume")


async def test_stopping_ends_a_wait_and_releases_the_message(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    handled: list[int] = []

    @bus.consume("rl-stop", rate_limit=RateLimit(per_second=0.1, burst=1))
    async def handle(payload: dict[str, int]) -> None:
        handled.append(payload["n"])

    async with bus:
        await bus.send("rl-stop", {"n": 0})
        await bus.send("rl-stop", {"n": 1})
        await wait_for(lambda: handled == [0], "the first message")
        await wait_for(lambda: bus.subscribers[0].stats.throttled == 1, "the second waits")
        started = time.monotonic()
    assert time.monotonic() - started < 3.0, "a drain does not wait for a turn 10s away"
    assert handled == [0]
    stats = bus.subscribers[0].stats
    assert stats.failed_attempts == 0 and stats.redelivered == 0 and stats.dead_lettered == 0

    # The released message is still there for the next consumer.
    again = make_bus()
    got: list[int] = []

    @again.consume("rl-stop")
    async def handle_again(payload: dict[str, int]) -> None:
        got.append(payload["n"])

    async with again:
        await wait_for(lambda: got == [1], "the released message handled by the next consumer")


class FlakySharedLimiter:
    """A `SharedRateLimiter` that is unreachable for its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[str, float, int]] = []
        self.closed = 0

    async def reserve(self, scope: str, per_second: float, burst: int) -> float:
        self.calls.append((scope, per_second, burst))
        if len(self.calls) <= self.failures:
            raise BrokerUnavailableError("redis://limiter", "connection refused")
        return 0.0

    async def close(self) -> None:
        self.closed += 1


async def test_a_shared_limiter_outage_waits_without_spending_attempts(
    make_bus: Callable[..., EventBus], caplog: pytest.LogCaptureFixture
) -> None:
    limiter = FlakySharedLimiter(failures=4)
    bus = make_bus()
    handled: list[int] = []

    @bus.subscribe(
        "rl-shared",
        group="billing",
        retry=RetryPolicy(max_attempts=1),
        rate_limit=RateLimit(50.0, 2, shared=limiter),
    )
    async def handle(payload: dict[str, int]) -> None:
        handled.append(payload["n"])

    with caplog.at_level(logging.WARNING, logger="eventbus.dispatch"):
        async with bus:
            await bus.publish("rl-shared", {"n": 1})
            await bus.publish("rl-shared", {"n": 2})
            await wait_for(lambda: handled == [1, 2], "handled once the limiter answers")
    stats = bus.subscribers[0].stats
    assert stats.failed_attempts == 0 and stats.dead_lettered == 0 and stats.redelivered == 0
    assert limiter.calls[0] == ("rl-shared/billing", 50.0, 2)
    outage_logs = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(outage_logs) == 1, "the outage is logged once"
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert limiter.closed == 1, "the bus closes the limiter when the subscription stops"


class HangingSharedLimiter(FlakySharedLimiter):
    """Its first call never answers (a network path lost without a reset)."""

    async def reserve(self, scope: str, per_second: float, burst: int) -> float:
        self.calls.append((scope, per_second, burst))
        if len(self.calls) == 1:
            await anyio.sleep_forever()
        return 0.0


async def test_a_shared_limiter_that_hangs_counts_as_an_outage(
    make_bus: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(throttle, "CALL_TIMEOUT", 0.2)
    limiter = HangingSharedLimiter(failures=0)
    bus = make_bus()
    handled: list[int] = []

    @bus.consume("rl-hang", rate_limit=RateLimit(5.0, shared=limiter))
    async def handle(payload: dict[str, int]) -> None:
        handled.append(payload["n"])

    async with bus:
        await bus.send("rl-hang", {"n": 1})
        await wait_for(lambda: handled == [1], "handled after the hung call timed out", 5)
    assert len(limiter.calls) == 2
    assert bus.subscribers[0].stats.failed_attempts == 0


async def test_no_rate_limit_no_throttle(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()

    @bus.subscribe("rl-none", group="g")
    async def handle(payload: dict[str, int]) -> None: ...

    async with bus:
        assert bus._runners[0]._throttle is None  # the hot path's one `is None` check
