"""Dead-letter queue operations through the transport SPI: list, show, replay, purge.

They work on every transport because a dead-letter destination is an ordinary queue. Reading
stops after the queue's depth at the start (so a replayed message that fails again is not
replayed twice in one run) or after ``idle`` seconds without a message.

A queue that does not exist raises `NotFoundError` before anything subscribes: subscribing
declares (RabbitMQ) or creates (Kafka) what it reads, and a mistyped name must not leave an
empty dead-letter queue behind. The depth tells: `Transport.depth` is None for a missing queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio

from eventbus import headers as h
from eventbus.errors import NotFoundError
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus.transports.base import Destination, Kind, RawDelivery, SubscriptionSpec, Transport

__all__ = ["dlq_depths", "dlq_purge", "dlq_replay", "dlq_show", "replay_destination"]

log = get_logger("eventbus")

DEFAULT_IDLE = 3.0
_MAX_HELD = 65_535
"""The most letters ``show`` lists in one run: AMQP's largest prefetch count."""

Progress = Callable[[int, int], None]
"""Called after each dead letter with (done so far, at most how many this run moves)."""


async def dlq_depths(transport: Transport, names: Sequence[str]) -> dict[str, int | None]:
    """Messages waiting in each dead-letter queue (None: it does not exist)."""
    return {name: await transport.depth(name, "queue") for name in names}


class _Reader:
    """The owner of a DLQ command's subscription: each letter is visited and settled in turn,
    so a lost one has nothing running to stop (its settle is then a no-op)."""

    async def lost(self, deliveries: Sequence[RawDelivery]) -> None:
        pass


async def _each(
    transport: Transport,
    name: str,
    limit: int | None,
    idle: float,
    visit: Callable[[RawDelivery], Awaitable[None]],
    progress: Progress | None = None,
    *,
    holds: bool = False,
) -> int:
    """Visit up to ``limit`` letters of ``name`` in turn. ``holds``: ``visit`` leaves them
    unsettled (``show``), so all of them must be handed out at once: the broker hands out no
    more than the prefetch before some are settled."""
    depth = await transport.depth(name, "queue")
    if depth is None:
        raise NotFoundError("dead-letter queue", name)
    # No idle wait for letters that are not there.
    limit = depth if limit is None else min(limit, depth)
    if limit <= 0:
        return 0
    prefetch = min(limit, _MAX_HELD if holds else 500)
    spec = SubscriptionSpec(name, "queue", None, prefetch=prefetch)
    sub = await transport.subscribe(spec, _Reader())
    seen = 0
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(sub.run)
            batches = sub.__aiter__()
            while seen < limit:
                batch: Sequence[RawDelivery] | None = None
                with anyio.move_on_after(idle):
                    batch = await anext(batches, None)
                if batch is None:
                    break
                for raw in batch[: limit - seen]:
                    seen += 1
                    await visit(raw)
                    if progress is not None:
                        progress(seen, limit)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await sub.close()  # releases whatever was read and not acked
    if holds and seen < limit:
        # The transport hands out no more than it bounds unsettled (Kafka's offset_window per
        # partition, RabbitMQ's read_ahead_bytes): say so rather than look complete.
        log.warning(
            "dlq show %s: %d of %d letters handed out, then none for %.0f s (the transport "
            "bounds unsettled messages); the rest show once these are replayed or purged",
            name,
            seen,
            limit,
            idle,
        )
    return seen


async def dlq_show(
    transport: Transport, name: str, *, limit: int = 20, idle: float = DEFAULT_IDLE
) -> list[Message]:
    """The first ``limit`` dead letters, left in the queue."""
    found: list[Message] = []

    async def keep(raw: RawDelivery) -> None:
        found.append(raw.message)

    await _each(transport, name, limit, idle, keep, holds=True)
    return found


def replay_destination(letter: Message) -> tuple[Destination, Message]:
    """Where a dead letter goes back to (the group that failed it only) and what is sent: the
    original message with the dead-letter headers removed, a fresh attempt count, and no
    expiry: replaying is asking for it to be handled, and an ``expired`` dead letter would
    otherwise only be dead-lettered again (the dead letter keeps it as
    ``eventbus-original-expires-at``, removed with the other ``eventbus-original-*``)."""
    kind: Kind = "queue" if letter.headers.get(h.ORIGINAL_KIND) == "queue" else "topic"
    topic = letter.headers.get(h.ORIGINAL_TOPIC) or letter.topic
    group = letter.headers.get(h.ORIGINAL_GROUP) or None
    kept = {
        k: v
        for k, v in letter.headers.items()
        if k not in h.DEAD_LETTER_HEADERS
        and k != h.ATTEMPT
        and k != h.EXPIRES_AT
        and not k.startswith("eventbus-original-")
    }
    original = Message(
        id=letter.id,
        topic=topic,
        body=letter.body,
        key=letter.key,
        headers=kept,
        content_type=letter.content_type,
        type=letter.type,
        timestamp=letter.timestamp,
        correlation_id=letter.correlation_id,
        reply_to=letter.reply_to,
    )
    return Destination(topic, kind, group=group), original


async def dlq_replay(
    transport: Transport,
    name: str,
    *,
    limit: int | None = None,
    idle: float = DEFAULT_IDLE,
    progress: Progress | None = None,
) -> int:
    """Send dead letters back to the group (or queue) that failed them; returns how many.
    Each is published (and confirmed) before it is removed from the dead-letter queue.
    ``progress`` is told after each one (the CLI draws a progress bar with it)."""
    moved = 0

    async def replay(raw: RawDelivery) -> None:
        nonlocal moved
        to, original = replay_destination(raw.message)
        await transport.publish(to, [original])
        await raw.ack()
        moved += 1

    await _each(transport, name, limit, idle, replay, progress)
    return moved


async def dlq_purge(
    transport: Transport, name: str, *, limit: int | None = None, idle: float = DEFAULT_IDLE
) -> int:
    """Delete dead letters; returns how many."""

    async def drop(raw: RawDelivery) -> None:
        await raw.ack()

    return await _each(transport, name, limit, idle, drop)
