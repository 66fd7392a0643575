"""Settling through the broker: dead letters and redeliveries, each as *publish, then ack*.

A crash between the two duplicates the message (the original comes back), never loses it
(DESIGN 3.1). Redeliveries go to this subscription's group only (`Destination.group`) and
carry the next attempt number in ``eventbus-attempt``, so the count travels with the message
whichever process handles it next (DESIGN 3.3). The transport implements the group targeting
and the not-before time; no routing header is the core's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import anyio

from eventbus import headers as h
from eventbus.backoff import Backoff
from eventbus.dispatch.deadletter import DeadLetterReason, dead_letter_message
from eventbus.dispatch.returns import error_reply
from eventbus.dispatch.subscriber import Subscriber
from eventbus.errors import AuthorizationError, MessageTooLargeError, PublishError
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus.transports.base import Destination, RawDelivery, Transport

__all__ = ["Republisher"]

log = get_logger("eventbus.dispatch")

_REQUEUED_LIMIT = 10_000
_ERROR_REPLY_TIMEOUT = 5.0


class Republisher:
    def __init__(
        self,
        subscriber: Subscriber,
        transport: Transport,
        stopping: Callable[[], bool],
        refused: Callable[[str | None], None] = lambda _why: None,
    ) -> None:
        self._sub = subscriber
        self._transport = transport
        self._stopping = stopping
        self._requeued: dict[str, int] = {}
        """Next attempt of broadcast messages sent back by `redeliver`, by message id."""
        self._refused = refused
        """Told why when the broker starts refusing our republishes (permissions), and None
        when none is refused any more: the runner pauses fetching and reports not ready."""
        self._refusing: dict[object, str] = {}
        """Republishes the broker refuses now (one entry per call): why."""

    def requeued_attempt(self, message_id: str) -> int:
        """The attempt a broadcast message requeued by this process comes back for (0 if not)."""
        return self._requeued.pop(message_id, 0) if self._requeued else 0

    async def dead_letter(
        self,
        raw: RawDelivery,
        attempt: int,
        reason: DeadLetterReason,
        error: BaseException,
        gone: Callable[[], bool],
    ) -> None:
        settled = await self._dead_letter(raw, attempt, reason, error, gone)
        if settled and raw.message.reply_to is not None and reason != "expired":
            await self._answer_failed(raw.message, reason, error)

    async def _dead_letter(
        self,
        raw: RawDelivery,
        attempt: int,
        reason: DeadLetterReason,
        error: BaseException,
        gone: Callable[[], bool],
    ) -> bool:
        """False when the dead letter could not be published and the message was released."""
        sub = self._sub
        queue = sub.dead_letter
        if queue is None:
            log.error(
                "%s: dropping message %s (%s; dead_letter=None): %r",
                sub.describe(),
                raw.message.id,
                reason,
                error,
            )
            await raw.ack()
            sub.stats.count_dead_letter(reason)
            return True
        letter = dead_letter_message(
            raw.message,
            reason=reason,
            error=error,
            kind=sub.kind,
            group=sub.group,
            attempts=attempt,
            native=raw.native,
        )
        if not await self._publish_then_ack(raw, Destination(queue, "queue"), letter, gone):
            return False
        # Counted once the dead letter is confirmed in its queue, so that whoever waits for
        # the count (tests, the DLQ commands) finds it there.
        sub.stats.count_dead_letter(reason)
        return True

    async def _answer_failed(self, request: Message, reason: str, error: BaseException) -> None:
        """Tell the requester its request failed (`error_reply`): one try, since a requester
        that does not get it times out, and the request itself is already dead-lettered."""
        to, reply = error_reply(request, reason, error)
        try:
            # Bounded: it holds the delivery's settle, and a requester waits seconds, not
            # a publish timeout.
            with anyio.fail_after(_ERROR_REPLY_TIMEOUT):
                await self._transport.publish(to, [reply])
        except Exception as exc:
            log.warning(
                "%s: could not tell the requester of %s that it failed (reply-to %s): %r",
                self._sub.describe(),
                request.id,
                to.name,
                exc,
            )

    async def redeliver(
        self, raw: RawDelivery, attempt: int, delay: float, gone: Callable[[], bool]
    ) -> None:
        """Send the message back for ``attempt + 1``, to this group only, not before ``delay``.
        A broadcast has no group to target: the transport requeues it instead."""
        sub = self._sub
        if sub.broadcast:
            # A requeued message comes back unchanged, so the attempt count cannot travel in it;
            # this process lives as long as the ephemeral subscription and keeps it instead.
            # Without it a nack or ack_timeout loop on a broadcast never ends (DESIGN 3.4).
            self._requeued[raw.message.id] = attempt + 1
            if len(self._requeued) > _REQUEUED_LIMIT:  # a message that never came back
                del self._requeued[next(iter(self._requeued))]
            await raw.release()
            return
        sub.stats.redelivered += 1
        message = raw.message
        to = Destination(
            sub.name,
            sub.kind,
            group=sub.group,
            not_before=time.time() + delay if delay > 0 else None,
        )
        again = message.replace_headers({**message.headers, h.ATTEMPT: str(attempt + 1)})
        await self._publish_then_ack(raw, to, again, gone)

    async def _publish_then_ack(
        self, raw: RawDelivery, to: Destination, message: Message, gone: Callable[[], bool]
    ) -> bool:
        """Publish until confirmed, then ack. A failed publish never re-runs the handler: only
        the publish is tried again, with capped backoff (DESIGN 8), until it goes through, the
        subscription stops or the delivery is lost (``gone``); in those two cases the message
        is released and its next owner handles it."""
        backoff = Backoff(0.2, 5.0)
        token = object()  # this call's refusal entry: ids repeat, foreign ones especially
        try:
            while True:
                try:
                    await self._transport.publish(to, [message])
                    break
                except Exception as exc:
                    if _refused(exc):
                        self._refusal(token, to, exc)
                    if await self._wait_or_give_up(raw, to, message, exc, backoff, gone):
                        return False
                    if (
                        isinstance(exc, MessageTooLargeError)
                        and h.ERROR_TRACEBACK in message.headers
                    ):
                        # The original filled the size limit; the dead letter's diagnostics
                        # must not keep it from getting out.
                        message = message.replace_headers(_without_diagnostics(message.headers))
        finally:
            self._allowed(token)
        await raw.ack()
        return True

    def _refusal(self, token: object, to: Destination, error: BaseException) -> None:
        """The broker refuses this republish (permissions): DESIGN 13 wants the subscription
        paused and not ready, naming the destination and the user, until someone fixes it."""
        first = not self._refusing
        why = f"the broker refuses publishes to {to.kind} {to.name!r}: {error}"
        if token not in self._refusing:
            log.error(
                "%s: %s; fetching paused (not ready) until it accepts them",
                self._sub.describe(),
                why,
            )
        self._refusing[token] = why
        if first:
            self._refused(why)

    def _allowed(self, token: object) -> None:
        if self._refusing.pop(token, None) is not None and not self._refusing:
            log.info("%s: the broker accepts republishes again; fetching", self._sub.describe())
            self._refused(None)

    async def _wait_or_give_up(
        self,
        raw: RawDelivery,
        to: Destination,
        message: Message,
        exc: BaseException,
        backoff: Backoff,
        gone: Callable[[], bool],
    ) -> bool:
        """After a failed publish: release the message and return True when the subscription
        stops or the delivery is lost; else wait out the backoff and return False."""
        self._sub.stats.republish_failures += 1
        if self._stopping() or gone():
            log.error(
                "%s: cannot publish %s to %s (%r); leaving it unacked for redelivery",
                self._sub.describe(),
                message.id,
                to.name,
                exc,
            )
            await raw.release()
            return True
        wait = backoff.next()
        log.warning(
            "%s: publish of %s to %s failed (%d so far, next try in %.1fs): %r",
            self._sub.describe(),
            message.id,
            to.name,
            backoff.failures,
            wait,
            exc,
        )
        await anyio.sleep(wait)
        return False


def _refused(error: BaseException) -> bool:
    """A refusal for lack of permissions: an `AuthorizationError`, or a publish error whose
    every failure is one (Kafka reports a refused write per message)."""
    if isinstance(error, AuthorizationError):
        return True
    if not isinstance(error, PublishError) or not error.failures:
        return False
    return all(isinstance(f, AuthorizationError) for f in error.failures.values())


def _without_diagnostics(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in (h.ERROR_TRACEBACK, h.ERROR_MESSAGE)}
