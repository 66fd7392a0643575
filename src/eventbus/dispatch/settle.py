"""Settling one delivery: the first settle wins, later ones are no-ops (STYLE 3).

`DeliveryState` is shared by the runtime and every `Delivery` handed to the handler for one raw
delivery. Its settle operations decide nothing themselves: failures go through
`outcome.decide`, broker-side work through `Republisher`, dedup bookkeeping through
`DedupGuard`; whatever happens, the delivery leaves `InFlight` once settled.

A delivery the transport reported lost (`DeliveryOwner.lost`) is settled *as dropped*: nothing
goes to the broker, since the message now belongs to another consumer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import anyio

from eventbus import headers as h
from eventbus.dispatch.deadletter import DeadLetterReason
from eventbus.dispatch.dedup_guard import DedupGuard
from eventbus.dispatch.inflight import InFlight
from eventbus.dispatch.observe import Settled, Settlement
from eventbus.dispatch.outcome import DeadLetter, Failure, Outcome, RetryViaBroker, decide
from eventbus.dispatch.republish import Republisher
from eventbus.dispatch.subscriber import Subscriber
from eventbus.errors import Reject
from eventbus.loggers import get_logger
from eventbus.transports.base import RawDelivery

__all__ = ["AckTimeoutError", "DeliveryState", "NackedError", "Settling", "attempt_of"]

log = get_logger("eventbus.dispatch")


class NackedError(Exception):
    """Stands for the cause of a dead letter when the last attempt ended in ``nack()``."""


class AckTimeoutError(Exception):
    """Stands for the cause when a manual-ack delivery was not settled within ``ack_timeout``."""


def attempt_of(raw: RawDelivery) -> int:
    """The attempt number the message carries; anything unreadable counts as the first."""
    value = raw.message.headers.get(h.ATTEMPT)
    if value is None:
        return 1
    try:
        return max(1, int(value))
    except ValueError:
        return 1


@dataclass(frozen=True, slots=True)
class Settling:
    """What every `DeliveryState` of one subscription settles through."""

    subscriber: Subscriber
    in_flight: InFlight[DeliveryState]
    republisher: Republisher
    guard: DedupGuard | None
    rng: random.Random


class DeliveryState:
    """The settlement of one raw delivery. Until settled it counts against ``max_in_flight``;
    whatever is still unsettled when the subscription stops is released (redelivered later),
    never acked."""

    __slots__ = (
        "_finished",
        "_left",
        "_settled_event",
        "_settling",
        "ack_deferred",
        "attempt",
        "claim_owner",
        "dedup_key",
        "inbox_done",
        "inbox_open",
        "lost",
        "raw",
        "settled",
    )

    def __init__(self, settling: Settling, raw: RawDelivery) -> None:
        self._settling = settling
        self.raw = raw
        self.attempt = attempt_of(raw)
        self.settled = False
        self._settled_event: anyio.Event | None = None
        self.dedup_key: str | None = None
        self.claim_owner: str | None = None
        """Owner token of the dedup claim this attempt holds, if any."""
        self.inbox_open = False
        """The handler runs inside an inbox transaction that has not committed yet."""
        self.inbox_done = False
        """The handler's inbox transaction already recorded the key as done."""
        self.ack_deferred = False
        """``ack()`` was called inside the open inbox: applied once it commits."""
        self.lost = False
        """The transport took it back: no handler may start for it, settling does nothing."""
        self._finished: anyio.Event | None = None
        self._left: anyio.Event | None = None

    def _settle(self) -> bool:
        if self.settled:
            return False
        self.settled = True
        if self._settled_event is not None:
            self._settled_event.set()
        return True

    async def wait_settled(self) -> None:
        if not self.settled:
            if self._settled_event is None:
                self._settled_event = anyio.Event()
            await self._settled_event.wait()

    # -- the user's operations (through `Delivery`) -----------------------------------------

    async def ack(self, tell: Settled = "acked") -> None:
        """Acknowledge (``tell``: how an observer hears of it; ``expired`` for a dropped
        expired message)."""
        if self.inbox_open:
            # Acking now would mark the key done before the handler's writes commit; if the
            # handler then raised, the effect would be lost and its redelivery skipped.
            self.ack_deferred = True
            return
        if not self._settle():
            return
        # Runs once per message: the checks are inlined, no coroutine where none is needed.
        try:
            if self.claim_owner is not None:
                await self._complete_claim()
            await self.raw.ack()
            if self._settling.subscriber.observer is not None:
                self._tell(tell)
        finally:
            self.leave()

    async def nack(self, delay: float | None) -> None:
        """Always back through the broker, after ``delay`` or the policy's backoff (DESIGN 8);
        dead-lettered once the attempts are spent."""
        self.refuse_inside_inbox("nack")
        error = NackedError(f"nacked on attempt {self.attempt}")
        await self.fail("nacked", error, delay=delay)

    async def reject(self, reason: str | None) -> None:
        self.refuse_inside_inbox("reject")
        await self.carry_out(DeadLetter("rejected"), Reject(reason))

    def refuse_inside_inbox(self, what: str) -> None:
        if self.inbox_open:
            raise RuntimeError(
                f"{what}() inside an inbox transaction would settle before it commits; raise "
                "eventbus.Retry or eventbus.Reject instead (the transaction then rolls back)"
            )

    # -- the runtime's operations -----------------------------------------------------------

    async def fail(self, how: Failure, error: BaseException, *, delay: float | None = None) -> None:
        """A failed attempt that is settled now: decided by `decide`, carried out here. An
        in-process retry cannot be carried out by a settle, so it goes through the broker."""
        s = self._settling
        policy = s.subscriber.options.retry
        outcome = decide(policy, self.attempt, error, how, delay=delay, rng=s.rng)
        if not isinstance(outcome, DeadLetter | RetryViaBroker):
            outcome = RetryViaBroker(outcome.delay)
        await self.carry_out(outcome, error)

    async def carry_out(self, outcome: Outcome, error: BaseException) -> None:
        """Settle with a broker-side outcome: a dead letter or a redelivery."""
        if not self._settle():
            return
        s = self._settling
        try:
            await self.release_claim()
            if isinstance(outcome, DeadLetter):
                reason: DeadLetterReason = outcome.reason
                log.warning(
                    "%s: dead-lettering %s after attempt %d (%s): %r",
                    s.subscriber.describe(),
                    self.raw.message.id,
                    self.attempt,
                    reason,
                    error,
                )
                await s.republisher.dead_letter(self.raw, self.attempt, reason, error, self._gone)
                self._tell("dead-lettered", reason=reason, error=error)
            else:
                await s.republisher.redeliver(self.raw, self.attempt, outcome.delay, self._gone)
                self._tell("redelivered", error=error)
        finally:
            self.leave()

    async def put_back(self, delay: float) -> None:
        """Back through the broker after ``delay`` without spending an attempt: a batch item
        behind a same-key item that was nacked comes back after it, in order (DESIGN 11)."""
        if not self._settle():
            return
        try:
            await self.release_claim()
            # `redeliver` sends attempt + 1: this attempt did not count.
            await self._settling.republisher.redeliver(
                self.raw, self.attempt - 1, delay, self._gone
            )
            self._tell("redelivered")
        finally:
            self.leave()

    async def expire(self) -> None:
        """``ack_timeout`` ran out on a manual-ack delivery: a failed attempt."""
        if self.settled:
            return
        log.warning(
            "%s: message %s not settled within ack_timeout; redelivering",
            self._settling.subscriber.describe(),
            self.raw.message.id,
        )
        await self.fail(
            "ack-timeout",
            AckTimeoutError(f"not settled within ack_timeout on attempt {self.attempt}"),
        )

    def _gone(self) -> bool:
        return self.lost

    def drop(self) -> None:
        """Lost to the transport: settled without touching the broker. The runner forgets it
        once no work runs on it any more."""
        self.lost = True
        self._settle()

    def leave(self) -> None:
        """Settled and done with: frees its in-flight room."""
        self._settling.in_flight.forget(self.raw)
        if self._left is not None:
            self._left.set()

    async def wait_left(self) -> None:
        """Return once a settle already under way (a publish, say) is over."""
        if self._settling.in_flight.get(self.raw) is self:
            if self._left is None:
                self._left = anyio.Event()
            await self._left.wait()

    def expect_finish(self) -> None:
        """Before cancelling the work on it: `wait_finished` then returns once it stopped."""
        self._finished = anyio.Event()

    async def wait_finished(self) -> None:
        if self._finished is not None:
            await self._finished.wait()

    def finish(self) -> None:
        """The work on it stopped (the runner calls this when its attempts end)."""
        if self._finished is not None:
            self._finished.set()

    async def release(self) -> None:
        """Stopping: not done, deliver it again later (never acked)."""
        if not self._settle():
            return
        try:
            await self.release_claim()
            await self.raw.release()
            self._tell("released")
        finally:
            self.leave()

    # -- observing (`observe.py`) -----------------------------------------------------------

    def tell_unsettled(self) -> None:
        """A manual-ack handler returned and left the delivery unsettled."""
        self._tell("unsettled")

    def _tell(
        self,
        how: Settled,
        *,
        reason: DeadLetterReason | None = None,
        error: BaseException | None = None,
    ) -> None:
        observer = self._settling.subscriber.observer
        if observer is not None:
            release = self.release if how == "unsettled" else None
            observer(Settlement(self.raw, how, self.attempt, reason, error, release))

    # -- dedup bookkeeping ------------------------------------------------------------------

    async def _complete_claim(self) -> None:
        guard, owner = self._settling.guard, self.claim_owner
        if guard is None or owner is None or self.dedup_key is None:
            return
        self.claim_owner = None
        if not self.inbox_done:
            await guard.complete(self.dedup_key, owner)

    async def release_claim(self) -> None:
        guard, owner = self._settling.guard, self.claim_owner
        if guard is None or owner is None or self.dedup_key is None:
            return
        self.claim_owner = None
        await guard.release(self.dedup_key, owner)
