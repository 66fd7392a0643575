"""`ChannelAcks`: the acks of one consuming channel, coalesced into few ``basic.ack`` frames.

A frame per ack costs a trip through aiormq's writer task and a socket send: on a 2-core machine
that was a large share of the consume path's CPU. Here an ack only records its delivery tag;
the recorded acks go out together `WINDOW` seconds after the first of them (or at once when
`batch` of them are waiting, PITFALLS: ack in batches of 5-10 % of the prefetch), as one
write holding:

* one ``basic.ack(multiple=True)`` for the acked tags below the lowest unsettled one.
  ``multiple`` acks *every* outstanding tag up to the one given, so it may only cover tags that
  are all settled: an unsettled tag under it would be acked before its handler finished (lost
  on a crash), a released one would be acked instead of redelivered;
* one plain ``basic.ack`` for each acked tag above the lowest unsettled one, so that a slow
  message does not keep the finished ones after it holding prefetch slots.

The frames are queued synchronously (no task, nothing to cancel), so they leave in the order
they were computed: a ``multiple`` ack overtaking an earlier one would make the earlier tag
unknown to the broker, which closes the channel.

A release (``basic.nack(requeue=True)``) is sent at once, never batched, and its tag counts as
settled only once its frame is queued: a ``multiple`` ack computed later may pass over it, but
it reaches the broker after the nack, when that tag is no longer outstanding.

Once the subscription stopped, releases are held instead (`hold_releases`): the tag stays
unacked and unsettled, so no ``multiple`` ack covers it, and closing the channel requeues it
with everything else unacked, in delivery order. The core releases what it did not finish while
stopping, in an order of its own; a quorum queue redelivers nacked messages in the order of the
nacks, so sending them one by one could put a key's messages out of order for the next owner.

Acks still recorded when the channel or connection dies are lost with it: RabbitMQ requeues
those messages and redelivers them (``redelivered=True``). At-least-once holds; they may be
handled twice, which is what dedup is for. `flush` runs before the channel is closed on purpose
(stop, close, partition hand-over), so that a clean shutdown redelivers nothing acked.
"""

from __future__ import annotations

import asyncio

from aiormq.abc import AbstractChannel, ChannelFrame
from pamqp.commands import Basic

__all__ = ["WINDOW", "ChannelAcks"]

WINDOW = 0.002
"""Seconds an ack may wait for others to share its write. Short against the broker's view of
the prefetch window (it only delays when the broker may send more), and it never delays a
handler: recording an ack does not wait."""

_FLUSH_PATIENCE = 5.0  # seconds `flush` waits for room in a stalled writer queue


class ChannelAcks:
    """Delivery tags of one channel: delivered and not settled, acks not yet written.

    Every tag the broker delivers on the channel is registered with `delivered` (a ``multiple``
    ack must never pass over a tag nobody told us is settled). Only the unsettled tags are
    kept, so memory is bounded by the prefetch however long one delivery stays unsettled and
    however many are settled after it (DESIGN 8): a registered tag that is not among them is
    settled. One event loop; not thread-safe.
    """

    __slots__ = (
        "_abandoned",
        "_batch",
        "_channel",
        "_holding",
        "_pending",
        "_timer",
        "_unsettled",
    )

    def __init__(self, channel: AbstractChannel, *, batch: int) -> None:
        self._channel = channel
        self._batch = max(batch, 1)
        self._unsettled: set[int] = set()  # delivered, neither acked nor released (nor held)
        self._pending: list[int] = []  # acked, frame not yet queued for the socket
        self._timer: asyncio.TimerHandle | None = None
        self._abandoned = False
        self._holding = False

    @property
    def channel(self) -> AbstractChannel:
        return self._channel

    @property
    def unsettled(self) -> int:
        """Tags delivered and not settled (bounded by the prefetch)."""
        return len(self._unsettled)

    @property
    def pending(self) -> int:
        """Acks recorded and not yet written."""
        return len(self._pending)

    def delivered(self, tag: int) -> None:
        self._unsettled.add(tag)

    def ack(self, tag: int) -> None:
        """Record the ack; it is written within `WINDOW` seconds."""
        if self._abandoned:
            return
        self._pending.append(tag)
        self._unsettled.discard(tag)
        if len(self._pending) >= self._batch:
            self._write()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(WINDOW, self._on_timer)

    async def release(self, tag: int) -> None:
        """``basic.nack(requeue=True)`` now; only then may a ``multiple`` ack pass over it."""
        if self._abandoned or self._holding:
            return  # held: requeued by the channel's close, in delivery order
        await self._channel.basic_nack(tag, requeue=True)
        self._unsettled.discard(tag)

    def hold_releases(self) -> None:
        """From now on `release` sends nothing and leaves the tag unacked (see the module
        docstring); the channel must be closed to requeue them."""
        self._holding = True

    async def flush(self) -> None:
        """Write every recorded ack now (a no-op on a closed channel: nothing to lose)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _FLUSH_PATIENCE
        while not self._write():
            if loop.time() >= deadline:
                return  # a stalled connection: the broker redelivers what stays unacked
            await asyncio.sleep(0.001)

    def abandon(self) -> None:
        """Everything unacked on the channel is being requeued (a ``nack(multiple=True)`` or
        the channel's close follows): from now on settling is a no-op, as on a closed channel.
        An ack written after that requeue would name a tag the broker no longer knows, and it
        would close the channel with an error; the message is redelivered either way."""
        self._abandoned = True
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if not self._write() and self._pending and not self._channel.is_closed:
            # The connection's writer queue is full: try again shortly.
            self._timer = asyncio.get_running_loop().call_later(WINDOW, self._on_timer)

    def _write(self) -> bool:
        """Queue the frames for the recorded acks; False if the writer queue is full (then
        nothing is queued and they stay recorded)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return True
        channel = self._channel
        if channel.is_closed:
            self._pending.clear()  # requeued by the broker with the channel
            return True
        # Every delivered tag below `lowest` is settled: acked (now or before) or nacked. A scan
        # of at most the prefetch per write (one per WINDOW or per batch of acks).
        lowest = min(self._unsettled) if self._unsettled else None
        frames: list[Basic.Ack] = []
        if lowest is None:
            covered, single = self._pending, []
        else:
            covered = [t for t in self._pending if t < lowest]
            single = [t for t in self._pending if t > lowest]
        if covered:
            # The highest *recorded* tag: still outstanding on the broker, so never an unknown
            # delivery tag even where higher settled tags were acked one by one before.
            frames.append(Basic.Ack(delivery_tag=max(covered), multiple=True))
        frames.extend(Basic.Ack(delivery_tag=t) for t in single)
        try:
            channel.connection.write_queue.put_nowait(
                ChannelFrame.marshall(channel_number=channel.number, frames=frames)
            )
        except asyncio.QueueFull:
            return False
        self._pending.clear()
        return True
