"""The consumer circuit breaker at work (DESIGN 11): closed, open, half-open.

`Breaker.guard` wraps the handler chain once per subscription, outermost (a bus without
``breaker=`` runs the very same chain as before, and the runner pays nothing for it). While
closed it records each attempt's outcome in a sliding window; when it trips, and for every
attempt while it is not closed, it raises `HeldError` instead of the attempt's own error. The
runner treats that as "spend no attempt": it parks the delivery (its key lane waits, no
concurrency slot held) in `Breaker.wait` and tries the same attempt again. So an outage never
runs a message out of attempts, and nothing behind it of the same key overtakes it.

Opening pauses the transport subscription (it stays in its group); closing resumes it. Only
the probe's outcome and the outcomes of attempts started while closed count: an attempt
started before the breaker opened that ends afterwards is held if it failed and ignored if it
succeeded -- one late success says less than the failures that tripped it.

The window is kept in ``BUCKETS`` buckets of ``window / BUCKETS`` seconds, so memory stays
bounded at any rate; outcomes leave it one bucket at a time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import anyio
from anyio.abc import TaskGroup

from eventbus.breaker import CircuitBreaker
from eventbus.dispatch.outcome import DeadLetter, decide
from eventbus.dispatch.subscriber import Subscriber
from eventbus.errors import LeaseLostError
from eventbus.loggers import get_logger

__all__ = ["HELD_FAILURES", "Breaker", "BreakerState", "HeldError"]

log = get_logger("eventbus.dispatch")

T = TypeVar("T")

HELD_FAILURES = 2
"""Failures per ``max_attempts`` that one message may have while the circuit breaker holds it
(spending no attempt) before its failures count again: enough to ride out an outage in which
the held messages take turns as the probe, bounded so that one message failing for its own
reasons cannot hold the subscription forever."""

BreakerState = Literal["closed", "open", "half-open"]


class HeldError(Exception):
    """An attempt the breaker held back: it did not run (``error`` None), or it failed while
    the breaker tripped or was open (``error``). It spends no attempt."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__("held by the open circuit breaker")
        self.error = error


class Breaker:
    BUCKETS = 20

    def __init__(
        self,
        config: CircuitBreaker,
        subscriber: Subscriber,
        pause: Callable[[], None],
        resume: Callable[[], None],
        task_group: Callable[[], TaskGroup | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._sub = subscriber
        self._pause = pause
        self._resume = resume
        self._task_group = task_group
        self._clock = clock
        self._width = config.window / self.BUCKETS
        self._buckets: deque[list[float]] = deque()
        """``[start, calls, failures]`` per bucket, oldest first."""
        self._calls = 0
        self._failures = 0
        self._state: BreakerState = "closed"
        self._probing = False
        self._opened = 0
        """Openings so far: tells a stale half-open timer from the current one."""
        self._waiting = 0
        self._changed = anyio.Event()
        subscriber.stats.breaker_state = "closed"

    @property
    def state(self) -> BreakerState:
        return self._state

    # -- the handler chain ------------------------------------------------------------------

    def guard(self, handler: Callable[[T], Awaitable[None]]) -> Callable[[T], Awaitable[None]]:
        """``handler`` (the chain for one message, or a batch handler's call) behind the
        breaker."""
        cancelled = anyio.get_cancelled_exc_class()

        async def call(delivery: T) -> None:
            probe = False
            if self._state != "closed":
                if not self._admit():
                    raise HeldError(None)
                probe = True
            try:
                await handler(delivery)
            except cancelled:
                if probe:  # the bus's own cancellation says nothing: someone else probes
                    self._void_probe()
                raise
            except BaseException as exc:
                if not self._counts(exc):
                    if probe:
                        self._void_probe()
                    raise
                if probe:
                    self._open(f"the probe attempt failed ({exc!r})")
                    raise HeldError(exc) from exc
                if self._state != "closed" or self._record(True, exc):
                    raise HeldError(exc) from exc
                raise
            if probe:
                self._close()
            elif self._state == "closed":
                self._record(False, None)

        return call

    def _counts(self, error: BaseException) -> bool:
        """An outage signal: an error the retry policy would try again. `Reject` and what the
        policy gives up on dead-letter as ``rejected`` at once: one message's fault."""
        if isinstance(error, LeaseLostError):
            return False  # another worker took the key: not a failure at all
        outcome = decide(self._sub.options.retry, 1, error, "raised", delay=0.0)
        return not (isinstance(outcome, DeadLetter) and outcome.reason == "rejected")

    async def wait(self, stop: anyio.Event) -> None:
        """Park until the breaker changes state (closed, or half-open with no probe out) or
        ``stop`` is set."""
        self._waiting += 1
        try:
            while not stop.is_set() and not self._may_admit():
                changed = self._changed
                async with anyio.create_task_group() as tg:

                    async def until(event: anyio.Event) -> None:
                        await event.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(until, stop)
                    tg.start_soon(until, changed)
        finally:
            self._waiting -= 1

    def _may_admit(self) -> bool:
        return self._state == "closed" or (self._state == "half-open" and not self._probing)

    # -- the state machine ------------------------------------------------------------------

    def _admit(self) -> bool:
        """Not closed: whether this attempt may be the probe."""
        if self._state != "half-open" or self._probing:
            return False
        self._probing = True
        return True

    def _record(self, failed: bool, error: BaseException | None) -> bool:
        """Closed: count one outcome; True if it tripped the breaker."""
        now = self._clock()
        buckets = self._buckets
        if not buckets or now - buckets[-1][0] >= self._width:
            buckets.append([now, 0, 0])
        bucket = buckets[-1]
        bucket[1] += 1
        self._calls += 1
        if failed:
            bucket[2] += 1
            self._failures += 1
        horizon = now - self._config.window
        while buckets[0][0] <= horizon:
            _, calls, failures = buckets.popleft()
            self._calls -= int(calls)
            self._failures -= int(failures)
        config = self._config
        if (
            failed
            and self._calls >= config.min_calls
            and self._failures / self._calls >= config.failure_ratio
        ):
            self._open(
                f"{self._failures} of {self._calls} attempts failed in the last "
                f"{config.window:g}s, the last with {error!r}"
            )
            return True
        return False

    def _open(self, why: str) -> None:
        self._set("open")
        self._probing = False
        self._opened += 1
        self._sub.stats.breaker_opened += 1
        self._pause()
        log.warning(
            "%s: circuit breaker open: %s; fetching paused, handlers wait %gs before a probe",
            self._sub.describe(),
            why,
            self._config.open_for,
        )
        tg = self._task_group()
        if tg is not None:
            tg.start_soon(self._half_open_later, self._opened)

    async def _half_open_later(self, opening: int) -> None:
        await anyio.sleep(self._config.open_for)
        if self._state != "open" or self._opened != opening:
            return
        self._set("half-open")
        log.info("%s: circuit breaker half-open: one probe attempt", self._sub.describe())
        if not self._waiting:
            # Nothing fetched is waiting (all of it was taken back, say): fetch again so a
            # message can come and be the probe.
            self._resume()

    def _void_probe(self) -> None:
        """The probe ended without a verdict (cancelled, rejected): another attempt probes."""
        self._probing = False
        self._notify()

    def _close(self) -> None:
        self._buckets.clear()
        self._calls = self._failures = 0
        self._probing = False
        self._set("closed")
        self._resume()
        log.warning(
            "%s: circuit breaker closed: the probe attempt succeeded; fetching resumed",
            self._sub.describe(),
        )

    def _set(self, state: BreakerState) -> None:
        self._state = state
        self._sub.stats.breaker_state = state
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
