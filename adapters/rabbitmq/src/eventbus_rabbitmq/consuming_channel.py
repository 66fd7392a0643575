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

**Read-ahead in bytes.** RabbitMQ bounds what it pushes by count only (per-consumer prefetch;
it does not implement ``prefetch-size``), so with large messages the buffer could hold
prefetch x max_message_size. The bytes of the bodies outstanding here (buffered, handed out,
not settled) are therefore counted -- one int add per delivery, one subtract per settle -- and
once they pass ``read_ahead_bytes`` the subscription's regulator (`regulate`) cancels the
channel's consumers, and consumes again once they fall below half of it. A cancel releases
nothing: what is buffered and handed out stays ours and is settled as usual (acks work after
``basic.cancel``), and deliveries the broker sent before it saw the cancel still arrive (AMQP
sends them before ``cancel-ok``, while aiormq still knows the consumer); they are counted
and kept. This is safe for each kind of queue:

* a plain queue or a group's queue: competing consumers only get the new messages meanwhile;
* a partition queue (single active consumer): it is consumed only while this process holds
  the partition's lock (partitions.py), so no other member has a consumer on it that the
  cancel could activate. A partition taken while throttled is only noted (``suspended``) and
  consumed at the resume; one handed over while throttled is simply not consumed again.

Once the subscription stopped (`cancel_all`, `hold_releases`), nothing is consumed again.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from eventbus.loggers import get_logger
from eventbus.message import Message, new_message_id
from eventbus_rabbitmq import wire
from eventbus_rabbitmq.acks import ChannelAcks
from eventbus_rabbitmq.delivery import SETTLE_FAILURES, AmqpDelivery

__all__ = ["ConsumingChannel"]

log = get_logger("eventbus.rabbitmq")

_REQUEUE_WAIT = 5.0  # seconds `close` waits for requeued messages to count as ready


class ConsumingChannel:
    """One AMQP channel a subscription consumes through; see the module docstring.

    ``live`` is set once the channel is fully set up (declared, consumers confirmed): only a
    live channel hands out deliveries, so a channel that fails while being opened has nothing
    handed out to report. ``wakeup`` is called whenever handing out may have become possible
    (a delivery arrived, one was settled, the channel ended); ``on_flow`` whenever `regulate`
    has something to do (the bytes outstanding crossed the budget or fell below half of it).
    ``prefetch`` is the broker's per-consumer prefetch (``basic.qos`` of the channel);
    ``cancel_returns``: the queues return what they assigned to a cancelled consumer but did not
    send yet (quorum queues), see `regulate`."""

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        topic: str,
        ack_batch: int,
        wakeup: Callable[[], None],
        delivery_limit: int | None = None,
        read_ahead_bytes: int | None = None,
        prefetch: int = 1,
        cancel_returns: bool = False,
        on_flow: Callable[[], None] = lambda: None,
    ) -> None:
        self.channel = channel
        self._delivery_limit = delivery_limit
        self.acks = ChannelAcks(channel, batch=ack_batch)
        self.consumers: dict[str, str] = {}  # queue -> consumer tag (registered consumers)
        # Read-ahead in bytes (module docstring): the queues whose consumer is cancelled while
        # ``throttled``; ``throttles`` counts how often that happened on this channel.
        self.outstanding_bytes = 0
        self.throttled = False
        self.suspended: set[str] = set()
        self.throttles = 0
        self._budget = sys.maxsize if read_ahead_bytes is None else read_ahead_bytes
        self._resume_below = self._budget // 2
        self._prefetch = prefetch  # of the consumers registered from now on
        self._fit_prefetch = cancel_returns
        self._refit: int | None = None  # the prefetch to consume again with
        self._on_flow = on_flow
        self._halted = False  # the subscription stopped: never consume again
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

    @property
    def queues(self) -> frozenset[str]:
        """The queues consumed on this channel, whether or not throttled right now."""
        return frozenset(self.consumers.keys() | self.suspended)

    async def consume(self, queue: str) -> None:
        """Consume ``queue``; while throttled, only once the read-ahead fell below half."""
        if self.throttled:
            self.suspended.add(queue)
            return
        await self._consume(queue)

    async def cancel(self, queue: str) -> None:
        """Stop consuming ``queue`` and give back what is buffered from it, in order."""
        was_suspended = queue in self.suspended
        self.suspended.discard(queue)
        tag = self.consumers.pop(queue, None)
        if (tag is None and not was_suspended) or not self.usable:
            return
        if tag is not None:
            await self.channel.basic_cancel(tag)
        await self.release_buffered(lambda delivery: delivery.queue == queue)
        await self.flush_acks()

    async def cancel_all(self) -> None:
        """Stop every consumer and give back everything buffered (others may have it now)."""
        self._halted = True
        self.suspended.clear()
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
        self._halted = True

    # -- read-ahead in bytes ------------------------------------------------------------------

    async def regulate(self) -> None:
        """Cancel the consumers while the bytes outstanding exceed the budget; consume again
        once they fell below half of it (and the deliveries outstanding below half of what the
        consumers' prefetch allows: each new consumer gets a fresh prefetch, so this keeps the
        count within 1.5 x prefetch per consumer too). Run by one task at a time, the
        subscription's regulator, never concurrently with the balancer.

        A quorum queue assigns up to the prefetch to a consumer at once, and a cancel returns
        what it assigned but had not sent yet: those come back first, but marked redelivered
        and with their ``x-delivery-count`` raised by one, which a ``delivery_limit`` counts. So
        that this happens once per change of message size, not on every cycle, the consumers
        of such queues come back with a prefetch that fits half the budget at the mean size
        outstanding when it was exceeded (``basic.qos`` applies to consumers registered after
        it); the count bound then keeps the bytes within the budget. A fresh channel starts
        with the configured prefetch again."""
        while self.usable and not self._halted:
            if not self.throttled and self.outstanding_bytes > self._budget:
                await self._throttle()
            elif self.throttled and self._may_resume():
                await self._unthrottle()
            else:
                return

    def _may_resume(self) -> bool:
        if self.outstanding_bytes >= self._resume_below:
            return False
        records = len(self.buffer) + len(self.handed_out)
        return not self.suspended or records <= self._prefetch * len(self.suspended) // 2

    async def _throttle(self) -> None:
        self.throttled = True
        self.throttles += 1
        if self._fit_prefetch:
            records = max(len(self.buffer) + len(self.handed_out), 1)
            mean = max(self.outstanding_bytes // records, 1)
            per_consumer = self._resume_below // mean // max(len(self.consumers), 1)
            self._refit = max(1, min(self._prefetch, per_consumer))
        log.debug(
            "read-ahead of %s is %d bytes, over %d: consumers cancelled until below half",
            self._topic,
            self.outstanding_bytes,
            self._budget,
        )
        for queue in list(self.consumers):
            # Suspended before the await: a cancel(queue) meanwhile must find it somewhere.
            tag = self.consumers.pop(queue)
            self.suspended.add(queue)
            await self.channel.basic_cancel(tag)

    async def _unthrottle(self) -> None:
        self.throttled = False
        log.debug(
            "read-ahead of %s is %d bytes: consuming again", self._topic, self.outstanding_bytes
        )
        if self._refit is not None and self._refit != self._prefetch:
            await self.channel.basic_qos(prefetch_count=self._refit)
            log.debug("consumers of %s now prefetch %d", self._topic, self._refit)
            self._prefetch = self._refit
        while self.suspended and not self._halted and self.usable:
            # Suspended until consumed: `queues` never misses it while basic.consume is on
            # the wire.
            queue = next(iter(self.suspended))
            await self._consume(queue)
            self.suspended.discard(queue)
            if self._halted:  # stopped while consuming: stop() did not see this consumer
                await self.cancel(queue)

    async def _consume(self, queue: str) -> None:
        ok = await self.channel.basic_consume(queue, self._receiver(queue))
        assert ok.consumer_tag is not None
        self.consumers[queue] = ok.consumer_tag

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

    def end(self) -> None:
        """Count the channel as ended although aiormq does not (an answer the broker never
        sent: a call cancelled on the channel leaves it half-closed): its subscription's watcher
        gives it up and restores a fresh one."""
        self._end()

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
            size = len(raw.body)
            self.outstanding_bytes += size
            if self.outstanding_bytes > self._budget and not self.throttled:
                self._on_flow()
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
                    size=size,
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
        self.outstanding_bytes -= delivery.size
        if self.handed_out.pop(delivery.tag, None) is not None:
            self._wakeup()  # room for another delivery
        if self.throttled and self._may_resume():
            self._on_flow()
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
