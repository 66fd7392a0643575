"""Scheduled messages on brokers without native timers: delay tiers and the forwarder that
moves messages on between them (DESIGN 11). One copy for the adapters that use it (RabbitMQ,
Kafka); they keep only where a tier lives.

A message due in ``r`` seconds, ``r`` at least the shortest tier, waits in the tier ``t``, the
largest not longer than ``r``: a RabbitMQ queue with a queue-wide TTL of ``t``, or a Kafka topic
whose records each wait ``t`` after they were written. Every message of a tier waits as long,
so its head is always its first due message: a message scheduled for tomorrow never holds back
one due in a second, whatever order they were published in (per-message expirations in one
queue would: RabbitMQ expires only at the head; a Kafka partition paused until tomorrow would).
When the tier's time is up the `Forwarder` -- run by every started bus, competing consumers --
publishes the message again toward its destination: into the next tier if time is left, else
to the real topic or queue. It acks or commits only once that publish is confirmed
(at-least-once: a crash in between forwards it twice, never loses it). A topic message is
published to its topic when it falls due, so it reaches the groups bound *then*. With less than
the shortest tier left, the forwarder waits the rest in process, holding the delivery unacked,
then publishes plainly: on time, and refused at once (so dead-lettered, not silently dropped) if
nothing would receive it. A publish with less than the shortest tier to begin with uses the
adapter's own short delay (RabbitMQ per-message-expiration queues, Kafka's paused retry topic),
or goes straight to the forwarder (a RabbitMQ topic publish: a delay queue would expire it into
an exchange that may have no queue bound by then, which drops it silently).

Never early: a message enters a tier of ``t`` only with at least ``t`` left, and the final hop
is published only once the due time, carried in a header, has passed. Where the message goes
and when it is due travel in the ``eventbus-schedule-*`` headers; the forwarder removes them
before the last hop, so handlers never see them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio
from anyio.abc import TaskStatus

from eventbus.errors import (
    ConfigurationError,
    MessageTooLargeError,
    PublishError,
    UnroutableError,
)
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus.transports.base import (
    DeliveryOwner,
    Destination,
    RawDelivery,
    Subscription,
)

__all__ = ["PREFETCH", "TIERS", "Forwarder", "scheduled", "stamp", "tier_for"]

log = get_logger("eventbus")

TIERS = (1, 5, 30, 120, 600, 3_600, 6 * 3_600, 24 * 3_600)
"""Delay tiers, in seconds. Roughly x5 apart, so a delay takes a few hops per order of
magnitude; a delay beyond a day goes round the one-day tier."""

DUE = "eventbus-schedule-due"
NAME = "eventbus-schedule-name"
KIND = "eventbus-schedule-kind"
GROUP = "eventbus-schedule-group"
_HEADERS = (DUE, NAME, KIND, GROUP)

PREFETCH = 64
"""Deliveries a forwarder works on at once."""
_MAX_BACKOFF = 30.0
_PERMANENT = (UnroutableError, MessageTooLargeError, ConfigurationError)
"""Publish failures that say something about the message: another try would fail the same way.
Any other failure (an outage, a broker's nack) leaves the message unacked, to be forwarded
again."""


def tier_for(remaining: float) -> int | None:
    """The largest tier not longer than ``remaining`` seconds, or None below the shortest."""
    fitting = [t for t in TIERS if t <= remaining]
    return fitting[-1] if fitting else None


def stamp(message: Message, to: Destination) -> Message:
    """``message`` with where it goes and when it is due, for its stay in a tier."""
    assert to.not_before is not None
    headers = {k: v for k, v in message.headers.items() if k not in _HEADERS}
    headers[DUE] = repr(to.not_before)
    headers[NAME] = to.name
    headers[KIND] = to.kind
    if to.group is not None:
        headers[GROUP] = to.group
    return dataclasses.replace(message, headers=headers)


def scheduled(message: Message) -> tuple[Destination, Message]:
    """Where a message read from the scheduled queue goes, and the message to publish there
    (scheduling headers removed). Raises KeyError or ValueError for a message without them."""
    headers = dict(message.headers)
    due = float(headers.pop(DUE))
    name = headers.pop(NAME)
    kind = headers.pop(KIND)
    group = headers.pop(GROUP, None)
    if kind not in ("topic", "queue") or not math.isfinite(due):
        raise ValueError(f"bad schedule headers: kind {kind!r}, due {due!r}")
    to = Destination(name, kind, group, not_before=due)  # type: ignore[arg-type]
    return to, dataclasses.replace(message, topic=name, headers=headers)


class _Nobody:
    """The forwarder's `DeliveryOwner`: it forwards one delivery at a time per task and a lost
    one is simply redelivered (its ack becomes a no-op), so there is nothing to stop."""

    async def lost(self, deliveries: Sequence[RawDelivery]) -> None:
        return None


class Forwarder:
    """Reads what left the tiers and publishes each message on; runs in a started bus's task
    group (`EventBus` starts the transport's ``forward_scheduled``). ``subscribe`` opens the
    adapter's subscription to what left the tiers; ``dead_letters`` names the queue for what
    cannot be forwarded (no schedule headers; nothing would receive it)."""

    def __init__(
        self,
        subscribe: Callable[[DeliveryOwner], Awaitable[Subscription]],
        publish: Callable[[Destination, Sequence[Message]], Awaitable[None]],
        *,
        dead_letters: str,
    ) -> None:
        self._subscribe = subscribe
        self._publish = publish
        self._dead_letters = dead_letters

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Forward until cancelled; a broken subscription is opened again with backoff.
        Reports started at once: a bus's start never waits for a group join (Kafka) here."""
        backoff = 0.5
        task_status.started()
        while True:
            try:
                subscription = await self._subscribe(_Nobody())
                try:
                    async with anyio.create_task_group() as tg:
                        await tg.start(subscription.run)
                        backoff = 0.5
                        # One task per delivery; the subscription's prefetch bounds how many.
                        async with anyio.create_task_group() as work:
                            async for batch in subscription:
                                for raw in batch:
                                    work.start_soon(self._forward, raw)
                        await subscription.close()  # iteration ended: let `run` return
                finally:
                    with anyio.CancelScope(shield=True):
                        await subscription.close()
            except* Exception as group:
                # Never ends the bus: what was not acked is redelivered to the next attempt.
                log.warning(
                    "scheduled-message forwarder: %r; retrying in %.1f s",
                    group.exceptions[0],
                    backoff,
                )
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _forward(self, raw: RawDelivery) -> None:
        try:
            to, message = scheduled(raw.message)
        except (KeyError, ValueError) as e:
            await self._dead_letter(raw, f"not a scheduled message ({e})")
            return
        if to.not_before is not None and tier_for(to.delay) is None:
            # Less than the shortest tier left: wait here, holding the delivery unacked (if
            # this process dies, it is forwarded again), so that the last hop is a plain
            # publish: on time, and refused now if nothing would receive the message.
            # A clock, not an event: the loop catches a sleep that ends a hair early.
            while (left := to.not_before - time.time()) > 0:  # noqa: ASYNC110
                await anyio.sleep(left)
            to = dataclasses.replace(to, not_before=None)
        # Due: to the real destination. Not yet: `publish` picks the next tier.
        failure = await self._send(to, message)
        if failure is not None:
            # Nothing would receive it now (a topic with no group bound when it fell due,
            # a group since deleted, a name refused): kept in a dead-letter queue, not dropped.
            await self._dead_letter(raw, f"{type(failure).__name__}: {failure}")
            return
        await raw.ack()  # only after the next hop was confirmed

    async def _send(self, to: Destination, message: Message) -> BaseException | None:
        """Publish until confirmed; return a failure that is the message's own (`_PERMANENT`).
        Any other (an outage, a broker's nack) is waited out: the delivery stays unacked."""
        backoff = 0.5
        while True:
            try:
                await self._publish(to, [message])
                return None
            except Exception as e:
                cause = e.failures.get(0, e) if isinstance(e, PublishError) and e.failures else e
                if isinstance(cause, _PERMANENT):
                    return cause
                log.warning(
                    "scheduled message %s not forwarded to %r: %r; trying again in %.1f s",
                    message.id,
                    to.name,
                    cause,
                    backoff,
                )
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _dead_letter(self, raw: RawDelivery, why: str) -> None:
        log.error("scheduled message %s sent to %s: %s", raw.message.id, self._dead_letters, why)
        headers = dict(raw.message.headers)
        headers["eventbus-dlq-reason"] = "unroutable"
        headers["eventbus-error-message"] = why[:1000]
        message = dataclasses.replace(raw.message, topic=self._dead_letters, headers=headers)
        failure = await self._send(Destination(self._dead_letters, "queue"), message)
        if failure is not None:
            log.error("scheduled message %s kept waiting: %r", raw.message.id, failure)
            return  # never acked without a copy somewhere
        await raw.ack()
