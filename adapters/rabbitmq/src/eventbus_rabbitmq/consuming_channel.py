"""`ConsumingChannel`: one consuming channel of a subscription and what is outstanding on it.

Everything the broker pushed on the channel and nobody settled yet is in exactly one of three
places: ``buffer`` (arrived, not handed out; arrival order), ``handed_out`` (yielded to the
core, not settled) or, once the subscription stopped, the held releases (released by the core,
left for the close to requeue in order; see acks.py). When the channel closes -- the broker
closed it, the connection died, or we closed it -- RabbitMQ requeues all of them at once, and
another consumer may get them right away:

* the buffered ones are simply dropped here (nobody started on them);
* the handed-out ones are no longer this process's. `give_up` returns them (for
  ``DeliveryOwner.lost``) and turns their settling into a no-op: an ack written after the
  requeue would name a delivery tag the broker no longer knows, and it would kill the channel.

A channel object is used for one channel only: a restored subscription gets a new one, so
nothing of a dead channel (tags, counts, buffer) can leak into the live one. No I/O happens
here except the channel operations the subscription asks for.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from eventbus.message import Message, new_message_id
from eventbus_rabbitmq import wire
from eventbus_rabbitmq.acks import ChannelAcks
from eventbus_rabbitmq.delivery import SETTLE_FAILURES, AmqpDelivery

__all__ = ["ConsumingChannel"]

log = logging.getLogger("eventbus.rabbitmq")

_REQUEUE_WAIT = 5.0  # seconds `close` waits for requeued messages to count as ready


class ConsumingChannel:
    """One AMQP channel a subscription consumes through; see the module docstring.

    ``live`` is set once the channel is fully set up (declared, consumers confirmed): only a
    live channel hands out deliveries, so a channel that fails while being opened has nothing
    handed out to report. ``wakeup`` is called whenever handing out may have become possible
    (a delivery arrived, one was settled, the channel ended)."""

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        topic: str,
        ack_batch: int,
        wakeup: Callable[[], None],
        delivery_limit: int | None = None,
    ) -> None:
        self.channel = channel
        self._delivery_limit = delivery_limit
        self.acks = ChannelAcks(channel, batch=ack_batch)
        self.consumers: dict[str, str] = {}  # queue -> consumer tag
        self.buffer: deque[AmqpDelivery] = deque()
        self.handed_out: dict[int, AmqpDelivery] = {}  # delivery tag -> delivery
        self.live = False
        self._topic = topic
        self._wakeup = wakeup
        self._given_up = False
        self._holding = False
        self._held: dict[int, str] = {}  # released after hold_releases(): tag -> queue
        # Set when the channel closed or the broker cancelled one of its consumers: both mean
        # the channel's deliveries are (or are about to be) requeued.
        self._ended = asyncio.Event()
        channel.closing.add_done_callback(lambda _closing: self._end())
        channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)

    @property
    def usable(self) -> bool:
        """Open and not given up: its consumers and deliveries are still ours."""
        return not self._given_up and not self.channel.is_closed

    # -- consumers --------------------------------------------------------------------------

    async def consume(self, queue: str) -> None:
        ok = await self.channel.basic_consume(queue, self._receiver(queue))
        assert ok.consumer_tag is not None
        self.consumers[queue] = ok.consumer_tag

    async def cancel(self, queue: str) -> None:
        """Stop consuming ``queue`` and give back what is buffered from it, in order."""
        tag = self.consumers.pop(queue, None)
        if tag is None or not self.usable:
            return
        await self.channel.basic_cancel(tag)
        await self.release_buffered(lambda delivery: delivery.queue == queue)
        await self.flush_acks()

    async def cancel_all(self) -> None:
        """Stop every consumer and give back everything buffered (others may have it now)."""
        for queue in list(self.consumers):
            try:
                await self.cancel(queue)
            except SETTLE_FAILURES:
                log.debug("basic.cancel failed", exc_info=True)
        await self.release_buffered(lambda _delivery: True)
        await self.flush_acks()

    # -- handing out ------------------------------------------------------------------------

    def hand_out(self, room: int) -> list[AmqpDelivery]:
        """Up to ``room`` buffered deliveries, oldest first, now counted as handed out."""
        batch: list[AmqpDelivery] = []
        while self.buffer and len(batch) < room:
            delivery = self.buffer.popleft()
            self.handed_out[delivery.tag] = delivery
            batch.append(delivery)
        return batch

    def outstanding(self, queue: str) -> int:
        """Deliveries of ``queue`` pushed on this channel and not settled (buffered included):
        a partition may be handed to another subscriber only once this is 0."""
        buffered = sum(1 for d in self.buffer if d.queue == queue)
        return buffered + sum(1 for d in self.handed_out.values() if d.queue == queue)

    def hold_releases(self) -> None:
        """The subscription stopped: from now on releases wait for `close`, which requeues
        them in delivery order whatever order they were released in (see acks.py)."""
        self.acks.hold_releases()
        self._holding = True

    async def release_buffered(self, which: Callable[[AmqpDelivery], bool]) -> None:
        keep: deque[AmqpDelivery] = deque()
        give_back: list[AmqpDelivery] = []
        for delivery in self.buffer:
            (give_back if which(delivery) else keep).append(delivery)
        self.buffer = keep
        for delivery in give_back:
            await delivery.release()

    # -- the end of the channel -------------------------------------------------------------

    async def ended(self) -> None:
        """Return once the channel closed or the broker cancelled one of its consumers."""
        await self._ended.wait()

    def give_up(self) -> list[AmqpDelivery]:
        """The channel is (being) lost: return the handed-out, unsettled deliveries, whose
        settling is a no-op from now on, and drop the buffer (the broker requeues all of it)."""
        self._given_up = True
        lost = list(self.handed_out.values())
        for delivery in lost:
            delivery.forget()
        self.handed_out.clear()
        self.buffer.clear()
        self._wakeup()
        return lost

    async def flush_acks(self) -> None:
        if self.channel.is_closed:
            return  # the broker requeued what was unacked on it; it comes back redelivered
        try:
            await self.acks.flush()
        except SETTLE_FAILURES:
            log.debug("flushing acks failed; the broker will redeliver them", exc_info=True)

    async def close(self, *, requeue_first: bool) -> None:
        """Write the recorded acks, then close the channel: RabbitMQ requeues everything
        unacked on it, in order. From then on settling is a no-op. ``requeue_first``: requeue
        explicitly before closing and wait until the queues count the messages as ready again
        (so that a queue's depth is right when this returns)."""
        channel = self.channel
        if not channel.is_closed:
            try:
                # Acks recorded until now (handlers that finished meanwhile) go out before the
                # requeue, which would otherwise requeue them too.
                await self.flush_acks()
                unacked = self._unacked()
                self.acks.abandon()
                if requeue_first:
                    await _requeue(channel, unacked)
                await channel.close()
            except SETTLE_FAILURES:
                log.debug("closing a consuming channel failed", exc_info=True)
        self._given_up = True
        self.buffer.clear()
        self.handed_out.clear()

    # -- internals --------------------------------------------------------------------------

    def _unacked(self) -> dict[int, str]:
        """Delivery tag -> queue of every delivery on this channel not settled yet."""
        unacked = {d.tag: d.queue for d in self.buffer}
        unacked.update((tag, d.queue) for tag, d in self.handed_out.items())
        unacked.update(self._held)
        return unacked

    def _end(self) -> None:
        self._ended.set()
        self._wakeup()

    def _on_broker_cancel(self, frame: Basic.Cancel) -> None:
        # The broker cancelled a consumer (its queue was deleted, ...): the subscription starts
        # over on a fresh channel, which declares the queue again. This channel is closed then,
        # which requeues what is unacked on it.
        log.warning("RabbitMQ cancelled consumer %s of %s", frame.consumer_tag, self._topic)
        self._end()

    def _receiver(self, queue: str) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        topic = self._topic

        async def receive(raw: DeliveredMessage) -> None:
            # aiormq runs this in a new task per delivery, in arrival order; nothing here awaits,
            # so the buffer keeps the broker's order.
            delivery = raw.delivery
            assert isinstance(delivery, Basic.Deliver)
            tag = delivery.delivery_tag or 0
            # Every tag of the channel, even one never handed out: an ack with multiple=True
            # must not pass over a tag it does not know is settled.
            self.acks.delivered(tag)
            if self._given_up:
                return  # its channel is gone or going: the broker requeues it
            properties = raw.header.properties
            try:
                message = wire.decode(
                    topic,
                    raw.body,
                    properties,
                    exchange=delivery.exchange or "",
                    routing_key=delivery.routing_key or "",
                )
                defect = wire.defect_of(properties) or self._at_delivery_limit(properties)
            except Exception as exc:
                # Never strand a delivery (unacked until the channel closes) on a bug here:
                # the core dead-letters it with what could be recovered.
                log.exception("cannot read a delivery from %s", queue)
                message = Message(id=new_message_id(), topic=topic, body=raw.body or b"")
                defect = f"cannot read the delivery: {exc!r}"
            self.buffer.append(
                AmqpDelivery(
                    message,
                    redelivered=bool(delivery.redelivered),
                    acks=self.acks,
                    tag=tag,
                    queue=queue,
                    on_settled=self._settled,
                    defect=defect,
                )
            )
            self._wakeup()

        return receive

    def _at_delivery_limit(self, properties: Basic.Properties) -> str | None:
        """A quorum queue drops (or dead-letters elsewhere) a message returned more often than
        its ``x-delivery-limit``. At its last allowed delivery it must not come back once more
        -- a release, a lost channel -- so the core dead-letters it now, with its headers,
        instead of the broker dropping it silently."""
        count = (properties.headers or {}).get("x-delivery-count")
        limit = self._delivery_limit
        if limit is None or not isinstance(count, int) or count < limit:
            return None
        return (
            f"returned {count} times: the queue's delivery limit ({limit}) drops it if it "
            "comes back once more"
        )

    def _settled(self, delivery: AmqpDelivery, acked: bool) -> None:
        if self.handed_out.pop(delivery.tag, None) is not None:
            self._wakeup()  # room for another delivery
        if not acked and self._holding:
            self._held[delivery.tag] = delivery.queue


async def _requeue(channel: AbstractChannel, unacked: dict[int, str]) -> None:
    """Requeue every unacked delivery (consumers are already cancelled), then wait until each
    queue counts them as ready again (the DLQ commands read the depth right after a
    non-destructive read; a quorum queue applies a requeue only after its log write, so there
    is no cheaper barrier)."""
    if not unacked:
        return
    returning: dict[str, int] = {}
    for queue in unacked.values():
        returning[queue] = returning.get(queue, 0) + 1
    expected = {}
    for queue, count in returning.items():
        ok = await channel.queue_declare(queue, passive=True)
        expected[queue] = (ok.message_count or 0) + count
    # "multiple" covers every unacked tag up to this one; acked tags are not touched.
    await channel.basic_nack(max(unacked), multiple=True, requeue=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _REQUEUE_WAIT
    for queue, count in expected.items():
        # Bounded: another consumer may take them meanwhile, and then the count never gets
        # there. That is fine; this only makes the common case deterministic.
        while loop.time() < deadline:
            ok = await channel.queue_declare(queue, passive=True)
            if (ok.message_count or 0) >= count:
                break
            await asyncio.sleep(0.01)
