"""One message's attempts: the checks before the first, then claim, call, and what follows.

`Attempts.run` is what a key lane worker does with one delivery (`runner.py` hands it over):
the checks of `prepare.py`, then until the message is settled or parked: the expiry check
before a later attempt, a rate-limit turn, the dedup claim, the handler within the
concurrency limit (and ``timeout=``), and on failure what `outcome.decide` says -- a retry in
process (the lane waits without a concurrency slot), or a redelivery or dead letter through
`DeliveryState.carry_out`. A circuit breaker that holds the attempt parks the message until it
closes, spending no attempt. `batches.py` is the same for a batch.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from eventbus import headers as h
from eventbus.dispatch.breaker import HELD_FAILURES, Breaker, HeldError
from eventbus.dispatch.decode import Decoder
from eventbus.dispatch.dedup_guard import DedupGuard, KeyRefusedError
from eventbus.dispatch.expiry import settled_expired
from eventbus.dispatch.invoke import Handler
from eventbus.dispatch.outcome import DeadLetter, RetryInProcess, decide
from eventbus.dispatch.prepare import NOT_HANDLED, prepare
from eventbus.dispatch.settle import DeliveryState
from eventbus.dispatch.slots import Slots
from eventbus.dispatch.subscriber import Subscriber
from eventbus.dispatch.throttle import Throttle
from eventbus.dispatch.timeout import within
from eventbus.errors import LeaseLostError
from eventbus.loggers import get_logger
from eventbus.message import Delivery

__all__ = ["Attempts"]

log = get_logger("eventbus.dispatch")


@dataclass(slots=True)
class Attempts:
    """Carries single messages of one subscription through their attempts (see the module doc)."""

    subscriber: Subscriber
    decoder: Decoder
    guard: DedupGuard | None
    throttle: Throttle | None
    limiter: Slots
    handler: Handler
    """The whole chain, built once by the runner."""
    rng: random.Random
    stopping: Callable[[], bool]
    sleep: Callable[[float], Awaitable[bool]]
    """Sleep without a worker's turn unless stopping; True when stopping began meanwhile."""
    parked: Callable[[], AbstractContextManager[object]]
    """Around a wait that holds the lane worker but no concurrency slot (`KeyLanes.parked`)."""
    aborted: Callable[[], bool]
    """Past the graceful timeout: a cancellation now is the bus's own, not the handler's."""
    breaker: Breaker | None
    stop: anyio.Event
    """Set when the subscription starts stopping (ends a wait for the breaker)."""
    work: Callable[[], TaskGroup | None]
    """Where the ``ack_timeout`` timer of a manual-ack delivery runs."""

    async def run(self, state: DeliveryState) -> bool:
        """Run attempts until the message is settled or parked. Returns True when a manual-ack
        delivery is left for the user to settle (it stays busy for graceful shutdown)."""
        sub = self.subscriber
        options = sub.options
        message = state.raw.message
        guard = self.guard
        payload = await prepare(sub, state, self.decoder, guard)
        if payload is NOT_HANDLED:
            return False
        expires = h.EXPIRES_AT in message.headers

        checked = True  # just now, above
        held_failures = 0  # failures the circuit breaker held, spending no attempt
        max_attempts = options.retry.max_attempts
        while True:
            if self.stopping():
                return False
            if expires and not checked and await settled_expired(sub, state):
                return False
            checked = False
            # Rate limit: a turn per handler start, retries included, taken before the claim.
            if self.throttle is not None and await self.throttle.take():
                return False  # stopping while waiting: released, not started
            if guard is not None:
                assert state.dedup_key is not None
                try:
                    claim, state.claim_owner = await guard.claim(state.dedup_key)
                except KeyRefusedError as exc:
                    log.error("%s: %s", sub.describe(), exc)
                    await state.fail("internal", exc)
                    return False
                if claim == "done":
                    await state.ack()
                if claim != "run":
                    return False
            delivery = Delivery(
                message,
                attempt=state.attempt,
                redelivered=state.raw.redelivered or state.attempt > 1,
                settler=state,
                payload=payload,
            )
            try:
                await self.limiter.acquire()
                try:
                    if options.timeout is None:
                        await self.handler(delivery)
                    else:
                        call = functools.partial(self.handler, delivery)
                        await within(options.timeout, call, sub, delivery.attempt)
                finally:
                    self.limiter.release()
            except BaseException as exc:
                if self.is_ours(state, exc):
                    raise
                if state.lost:
                    return False  # no longer ours: its next owner handles it
                state.ack_deferred = False  # an ack inside a rolled-back inbox never happened
                if isinstance(exc, LeaseLostError):
                    # Another worker took the key over while this one worked; nothing was
                    # committed. Claim again without spending an attempt: DONE or BUSY decides.
                    log.info("%s: lease lost on %s; claiming again", sub.describe(), message.id)
                    state.claim_owner = None
                    continue
                if isinstance(exc, HeldError):
                    held_failures += exc.error is not None
                    if exc.error is None or held_failures <= HELD_FAILURES * max_attempts:
                        # The circuit breaker is open: the same attempt runs again once it
                        # closes, spending no attempt.
                        if exc.error is not None:
                            sub.stats.failed_attempts += 1
                        if state.settled or await self._wait_for_breaker(state, exc):
                            return False
                        continue
                    # Past its share of free failures: a message that fails on its own (a
                    # poison message that keeps tripping the breaker and failing as its probe)
                    # would otherwise hold the subscription forever. From now on its failures
                    # spend attempts, so it ends dead-lettered like any other.
                    assert exc.error is not None
                    exc = exc.error
                sub.stats.failed_attempts += 1
                if state.settled:
                    log.warning(
                        "%s: handler raised after settling %s: %r", sub.describe(), message.id, exc
                    )
                    return False
                outcome = decide(
                    options.retry,
                    state.attempt,
                    exc,
                    "raised",
                    broadcast=sub.broadcast,
                    rng=self.rng,
                )
                if not isinstance(outcome, DeadLetter):
                    sub.stats.retried += 1
                if not isinstance(outcome, RetryInProcess):
                    await state.carry_out(outcome, exc)
                    return False
                await state.release_claim()
                log.info(
                    "%s: attempt %d of %s failed (%r); retrying in %.3fs",
                    sub.describe(),
                    state.attempt,
                    message.id,
                    exc,
                    outcome.delay,
                )
                # The key lane waits here without a concurrency slot; other keys flow.
                if await self.sleep(outcome.delay):
                    return False
                state.attempt += 1
                continue
            if state.lost:
                return False  # a thread that could not be interrupted: it counts for nothing
            sub.stats.handled += 1
            if state.settled:
                return False
            if options.ack == "auto" or state.ack_deferred:
                await state.ack()
                return False
            work = self.work()
            if work is not None:
                work.start_soon(_expire, state, options.ack_timeout)
            state.tell_unsettled()
            return True

    def is_ours(self, state: DeliveryState, exc: BaseException) -> bool:
        """The bus's own cancellation -- shutdown past the graceful timeout, or the delivery
        lost -- as opposed to a ``CancelledError`` the handler's code raised (awaiting a
        cancelled future, say), which is a failed attempt like any other."""
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return False
        return self.aborted() or state.lost

    async def _wait_for_breaker(self, state: DeliveryState, held: HeldError) -> bool:
        """Park until the breaker lets attempts through, spending no attempt (DESIGN 11); True
        if the subscription started stopping meanwhile."""
        assert self.breaker is not None
        await state.release_claim()
        if held.error is not None:
            log.info(
                "%s: attempt %d of %s failed (%r) while the circuit breaker is open; it waits "
                "and spends no attempt",
                self.subscriber.describe(),
                state.attempt,
                state.raw.message.id,
                held.error,
            )
        with self.parked():
            await self.breaker.wait(self.stop)
        return self.stopping()


async def _expire(state: DeliveryState, after: float) -> None:
    """The ``ack_timeout`` of a manual-ack delivery. Ends as soon as the delivery is settled,
    so timers do not pile up under load."""
    with anyio.move_on_after(after):
        await state.wait_settled()
    await state.expire()
