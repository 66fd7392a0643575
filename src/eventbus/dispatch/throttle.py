"""The rate limit of one subscription at work (DESIGN 11): each handler start waits its turn.

`Throttle.take` runs before every handler start (retries in process included) and before the
dedup claim, so a claim's lease never runs while its message waits. The waiting handler keeps
its key lane's worker but no concurrency slot, and its message stays in flight: nothing is
nacked or redelivered, the in-flight bound (`inflight.py`) stops the fetch loop once the buffer
is full, and a wait longer than `PAUSE_AFTER` also pauses the transport subscription
(`Subscription.pause`: no more read-ahead, the group membership and partitions stay) until no
such wait is left.

A shared limiter (`RedisRateLimiter`) that cannot be reached is an outage, not the message's
fault: the handler waits and asks again with backoff, spending no attempt, and fetching pauses
meanwhile; the outage is logged once, and its end once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import anyio

from eventbus.dispatch.subscriber import Subscriber
from eventbus.loggers import get_logger
from eventbus.ratelimit.config import RateLimit
from eventbus.ratelimit.gcra import Gcra

__all__ = ["CALL_TIMEOUT", "PAUSE_AFTER", "Throttle"]

log = get_logger("eventbus.dispatch")

PAUSE_AFTER = 1.0
"""Seconds of waiting for a turn from which fetching is paused. Shorter waits are the steady
state of a busy limited subscription: the in-flight bound throttles fetching then, and pausing
and resuming for each would only add broker round trips."""

_OUTAGE_BACKOFF = (0.05, 5.0)
CALL_TIMEOUT = 5.0
"""Seconds a shared limiter may take to answer before the call counts as an outage: a Redis
that hangs (a lost network path) must neither hold a handler start nor a drain for longer."""


class Throttle:
    def __init__(
        self,
        subscriber: Subscriber,
        limit: RateLimit,
        stopping: anyio.Event,
        pause: Callable[[], None],
        resume: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``stopping`` is set when the subscription stops: waits end then. ``pause``/``resume``
        stop and restart fetching (the consume loop's, for this throttle only)."""
        self._sub = subscriber
        self._limit = limit
        self._stopping = stopping
        self._pause = pause
        self._resume = resume
        self._clock = clock
        self._local = Gcra(limit.per_second, limit.burst) if limit.shared is None else None
        self._long_waits = 0
        self._outage = False

    async def take(self) -> bool:
        """Wait for this handler start's turn. True when the subscription started stopping
        meanwhile: the handler must not start (its message is released, not settled)."""
        if self._local is not None:
            wait = self._local.reserve(self._clock())
        else:
            reserved = await self._reserve_shared()
            if reserved is None:
                return True
            wait = reserved
        if wait <= 0.0:
            return self._stopping.is_set()
        stats = self._sub.stats
        stats.throttled += 1
        stats.throttled_seconds += wait
        with self._paused_if(wait >= PAUSE_AFTER):
            return await self._sleep(wait)

    async def close(self) -> None:
        if self._limit.shared is not None:
            await self._limit.shared.close()

    async def _reserve_shared(self) -> float | None:
        """The turn's wait from the shared limiter; None if stopping during an outage."""
        shared = self._limit.shared
        assert shared is not None
        delay, cap = _OUTAGE_BACKOFF
        paused = False
        with contextlib.ExitStack() as outage:
            while True:
                try:
                    with anyio.fail_after(CALL_TIMEOUT):
                        wait = await shared.reserve(
                            self._sub.scope, self._limit.per_second, self._limit.burst
                        )
                except Exception as exc:
                    if not self._outage:
                        self._outage = True
                        log.warning(
                            "%s: the shared rate limiter cannot be reached (%r); handlers wait "
                            "and fetching pauses until it answers",
                            self._sub.describe(),
                            exc,
                        )
                    if not paused:  # this waiter's first failure: fetching pauses meanwhile
                        paused = True
                        outage.enter_context(self._paused_if(True))
                    if await self._sleep(delay):
                        return None
                    delay = min(delay * 2, cap)
                    continue
                if self._outage:
                    self._outage = False
                    log.warning("%s: the shared rate limiter answers again", self._sub.describe())
                return wait

    @contextlib.contextmanager
    def _paused_if(self, long: bool) -> Iterator[None]:
        if not long:
            yield
            return
        self._long_waits += 1
        if self._long_waits == 1:
            self._pause()
        try:
            yield
        finally:
            self._long_waits -= 1
            if self._long_waits == 0 and not self._stopping.is_set():
                self._resume()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, unless the subscription stops first; True if it did."""
        with anyio.move_on_after(seconds):
            await self._stopping.wait()
        return self._stopping.is_set()
