"""Settling one delivery: ack, redeliver through the broker, or dead-letter. Idempotent."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from eventbus import headers as h
from eventbus.dispatch.deadletter import DeadLetterReason
from eventbus.errors import Reject
from eventbus.transports.base import RawDelivery

if TYPE_CHECKING:
    from eventbus.dispatch.runner import SubscriptionRunner

__all__ = ["DeliveryState", "NackedError", "attempt_of"]

log = logging.getLogger("eventbus.dispatch")


class NackedError(Exception):
    """Stands for the cause of a dead letter when the last attempt ended in ``nack()``."""


class AckTimeoutError(Exception):
    """Stands for the cause when a manual-ack delivery was not settled within ``ack_timeout``."""


def attempt_of(raw: RawDelivery) -> int:
    try:
        return max(1, int(raw.message.headers.get(h.ATTEMPT, "1")))
    except ValueError:
        return 1


class DeliveryState:
    """The settlement of one raw delivery, shared by the runtime and every `Delivery` handed to
    the handler for it. The first settle call wins; later ones are no-ops (STYLE 3).

    Until settled the delivery counts against ``max_in_flight``; whatever is still unsettled
    when the subscription stops is released (redelivered later), never acked.
    """

    __slots__ = (
        "_runner",
        "_settled_event",
        "ack_deferred",
        "attempt",
        "claim_owner",
        "inbox_done",
        "inbox_open",
        "raw",
        "settled",
    )

    def __init__(self, runner: SubscriptionRunner, raw: RawDelivery) -> None:
        self._runner = runner
        self.raw = raw
        self.attempt = attempt_of(raw)
        self.settled = False
        self._settled_event: anyio.Event | None = None
        self.claim_owner: str | None = None
        """Owner token of the dedup claim this attempt holds, if any."""
        self.inbox_done = False
        self.inbox_open = False
        """The handler runs inside an inbox transaction that has not committed yet."""
        self.ack_deferred = False
        """``ack()`` was called inside the open inbox: applied once it commits."""
        """The handler's inbox transaction already recorded the key as done."""

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

    async def ack(self) -> None:
        if self.inbox_open:
            # Acking now would mark the key done before the handler's writes commit; if the
            # handler then raised, the effect would be lost and its redelivery skipped.
            self.ack_deferred = True
            return
        if not self._settle():
            return
        try:
            await self._runner.complete_claim(self)
            await self.raw.ack()
        finally:
            self._runner.forget(self)

    async def nack(self, delay: float | None, error: Exception | None = None) -> None:
        self._refuse_inside_inbox("nack")
        if not self._settle():
            return
        try:
            await self._runner.release_claim(self)
            if self.attempt >= self._runner.subscriber.retry.max_attempts:
                error = error or NackedError(f"nacked on attempt {self.attempt}")
                await self._runner.dead_letter(self, "retries-exhausted", error)
            else:
                await self._runner.redeliver(self, delay or 0.0)
        finally:
            self._runner.forget(self)

    async def reject(self, reason: str | None) -> None:
        self._refuse_inside_inbox("reject")
        await self.fail("rejected", Reject(reason))

    def _refuse_inside_inbox(self, what: str) -> None:
        if self.inbox_open:
            raise RuntimeError(
                f"{what}() inside an inbox transaction would settle before it commits; raise "
                "eventbus.Retry or eventbus.Reject instead (the transaction then rolls back)"
            )

    async def fail(self, reason: DeadLetterReason, error: BaseException) -> None:
        """Dead-letter (the runtime's path for exceptions and poison messages)."""
        if not self._settle():
            return
        try:
            await self._runner.release_claim(self)
            await self._runner.dead_letter(self, reason, error)
        finally:
            self._runner.forget(self)

    async def retry_via_broker(self, delay: float) -> None:
        if not self._settle():
            return
        try:
            await self._runner.release_claim(self)
            await self._runner.redeliver(self, delay)
        finally:
            self._runner.forget(self)

    async def expire(self) -> None:
        """``ack_timeout`` ran out on a manual-ack delivery: counts as a failed attempt."""
        if self.settled:
            return
        log.warning(
            "%s: message %s not settled within ack_timeout; redelivering",
            self._runner.subscriber.describe(),
            self.raw.message.id,
        )
        await self.nack(
            None, AckTimeoutError(f"not settled within ack_timeout on attempt {self.attempt}")
        )
