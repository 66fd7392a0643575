"""Consuming: one channel per subscription, manual acks, deliveries yielded in arrival order.

The broker pushes up to ``prefetch`` unacked deliveries per consumer into a local buffer; the
iterator yields from it. Settling maps to ``basic.ack`` (coalesced per channel, see acks.py) /
``basic.nack(requeue=True)`` on the channel the delivery came from, and is idempotent. If
that channel is gone, RabbitMQ has already requeued the message, so settling is a no-op: it
will be redelivered, never lost, and a dead channel never raises into the worker.

A lost channel or connection is restored by the iterator itself (no background task): it
reconnects with backoff, declares again, consumes again, and drops what was buffered from the
old channel (the broker redelivers it).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiormq import exceptions as amqp
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from eventbus.errors import BrokerUnavailableError
from eventbus.transports.base import RawDelivery, SubscriptionSpec
from eventbus_rabbitmq import wire
from eventbus_rabbitmq.acks import ChannelAcks
from eventbus_rabbitmq.connection import Connector, open_channel
from eventbus_rabbitmq.delivery import SETTLE_FAILURES as _SETTLE_FAILURES
from eventbus_rabbitmq.delivery import AmqpDelivery
from eventbus_rabbitmq.errors import is_connection_lost, translate
from eventbus_rabbitmq.partitions import Balancer, Locks
from eventbus_rabbitmq.topology import Topology
from eventbus_rabbitmq.url import Settings

__all__ = ["RabbitSubscription"]

log = logging.getLogger("eventbus.rabbitmq")

_RESTORE_STEP = 5.0  # seconds per reconnect wait, so that stop() can interrupt a restore
_REQUEUE_WAIT = 5.0  # seconds close() waits for requeued messages to count as ready


class RabbitSubscription:
    """`Subscription` over one AMQP channel; see the module docstring."""

    def __init__(
        self,
        spec: SubscriptionSpec,
        *,
        settings: Settings,
        connector: Connector,
        topology: Topology,
        locks: Locks,
        on_closed: Callable[[RabbitSubscription], None] = lambda _sub: None,
    ) -> None:
        self._spec = spec
        self._on_closed = on_closed
        self._settings = settings
        self._connector = connector
        self._topology = topology
        self._prefetch = settings.prefetch or spec.prefetch
        self._channel: AbstractChannel | None = None
        self._acks: ChannelAcks | None = None  # of the current channel
        self._abandoned: ChannelAcks | None = None  # of a channel the broker cancelled us on
        self._consumers: dict[str, str] = {}  # queue -> consumer tag
        self._queues: list[str] = []  # consumed through the current channel
        self._unsettled: dict[int, str] = {}  # delivery tag -> queue, on the current channel
        self._buffer: deque[AmqpDelivery] = deque()
        self._in_flight: dict[str, int] = {}  # queue -> yielded, not settled
        self._wakeup = asyncio.Event()
        self._stopped = False
        self._closed = False
        # Partitioned groups: which partition queues this subscription consumes is negotiated
        # with the other subscribers of the group (see partitions.py).
        self._balancer: Balancer | None = None
        if spec.kind == "topic" and spec.group is not None and settings.partitions > 1:
            self._balancer = Balancer(
                spec.name, spec.group, settings.partitions, locks=locks, consumer=self
            )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Declare and consume; return once the broker confirmed the consumers (live)."""
        try:
            await self._open(within=self._settings.publish_timeout)
        except _SETTLE_FAILURES as e:
            what = f"subscribe to {self._spec.name!r}"
            raise translate(e, address=self._settings.address, what=what) from e

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._wakeup.set()
        channel = self._channel
        if self._balancer is not None or channel is None or channel.is_closed:
            # Partition queues keep their single active consumer until close(): cancelling now
            # would hand the partition to the next subscriber while our in-flight messages of
            # the same keys are still being handled, breaking per-key order.
            return
        for tag in list(self._consumers.values()):
            try:
                await channel.basic_cancel(tag)
            except _SETTLE_FAILURES:
                log.debug("basic.cancel failed", exc_info=True)
        self._consumers.clear()
        # Nothing buffered will be yielded any more: let other consumers have it now.
        await self._release_buffered(lambda _delivery: True)
        await self._flush_acks(self._acks)

    async def close(self) -> None:
        if self._closed:
            return
        await self.stop()
        self._closed = True
        channel, self._channel = self._channel, None
        acks, self._acks = self._acks, None
        if channel is not None and not channel.is_closed:
            try:
                # Acks recorded since stop() (handlers that finished meanwhile) go out before
                # the requeue below and the close, which would otherwise requeue them too.
                # From then on settling is a no-op: an ack written after the requeue would
                # name a tag the broker no longer knows, and it would fail the channel.
                await self._flush_acks(acks)
                if acks is not None:
                    acks.abandon()
                if self._balancer is None:
                    await self._requeue_all(channel)
                # Closing the channel makes RabbitMQ requeue everything unacked on it, in order.
                # For single-active-consumer queues this is the only safe way: the queue drops
                # our consumer and requeues our messages in one step, then activates the next.
                await channel.close()
            except _SETTLE_FAILURES:
                log.debug("channel close failed", exc_info=True)
        self._buffer.clear()
        if self._balancer is not None:
            # Only now that our unacked messages are back in their queues may another
            # subscriber take over our partitions.
            await self._balancer.close()
        self._on_closed(self)

    async def _requeue_all(self, channel: AbstractChannel) -> None:
        """Requeue every unacked delivery (consumers are already cancelled), then wait until
        each queue counts them as ready again, so that close() returns with them back in
        place (the DLQ commands read the depth right after a non-destructive read; a quorum
        queue applies a requeue only after its log write, so there is no cheaper barrier)."""
        if not self._unsettled:
            return
        # Settling is a no-op by now (acks abandoned): every tag here is still unacked.
        top = max(self._unsettled)
        returning: dict[str, int] = {}
        for queue in self._unsettled.values():
            returning[queue] = returning.get(queue, 0) + 1
        expected = {}
        for queue, count in returning.items():
            ok = await channel.queue_declare(queue, passive=True)
            expected[queue] = (ok.message_count or 0) + count
        # "multiple" covers every unacked tag up to this one; acked tags are not touched.
        await channel.basic_nack(top, multiple=True, requeue=True)
        self._unsettled.clear()
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

    # -- iteration --------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[RawDelivery]:
        return self

    async def __anext__(self) -> RawDelivery:
        while True:
            if self._stopped:
                raise StopAsyncIteration
            channel = self._channel
            if channel is None or channel.is_closed:
                await self._restore()
                continue
            if self._balancer is not None and self._balancer.due:
                # Also under load (the buffer never empty), or partitions are never handed on.
                await self._rebalance()
                continue
            if self._buffer:
                delivery = self._buffer.popleft()
                if delivery.channel is not channel:
                    continue  # from a channel that died: the broker redelivers it
                self._in_flight[delivery.queue] = self._in_flight.get(delivery.queue, 0) + 1
                return delivery
            self._wakeup.clear()
            if self._balancer is None:
                await self._wakeup.wait()
                continue
            try:
                async with asyncio.timeout(self._balancer.seconds_to_next_tick()):
                    await self._wakeup.wait()
            except TimeoutError:
                await self._rebalance()

    async def _rebalance(self) -> None:
        assert self._balancer is not None
        try:
            await self._balancer.tick()
        except _SETTLE_FAILURES as e:
            if not is_connection_lost(e) and not isinstance(e, amqp.ChannelClosed):
                raise
            log.info("rebalancing %s interrupted: %r", self._spec.name, e)

    # -- used by the balancer ---------------------------------------------------------------

    @property
    def channel(self) -> AbstractChannel | None:
        return self._channel

    def in_flight(self, queue: str) -> int:
        return self._in_flight.get(queue, 0) + sum(1 for d in self._buffer if d.queue == queue)

    async def flush_acks(self) -> None:
        """Send the acks recorded so far (before a partition is handed to someone else)."""
        await self._flush_acks(self._acks)

    async def consume(self, queue: str) -> None:
        channel = self._channel
        if channel is None or channel.is_closed:
            raise amqp.ChannelInvalidStateError("subscription channel is closed")
        assert self._acks is not None and self._acks.channel is channel
        ok = await channel.basic_consume(queue, self._receiver(self._acks, queue))
        assert ok.consumer_tag is not None
        self._consumers[queue] = ok.consumer_tag

    async def cancel(self, queue: str) -> None:
        """Stop consuming ``queue`` and give back what is buffered from it, in order."""
        channel = self._channel
        tag = self._consumers.pop(queue, None)
        if channel is None or channel.is_closed or tag is None:
            return
        await channel.basic_cancel(tag)
        await self._release_buffered(lambda delivery: delivery.queue == queue)
        await self._flush_acks(self._acks)

    # -- internals --------------------------------------------------------------------------

    async def _open(self, within: float | None) -> None:
        conn = await self._connector.get(within=within)
        generation = self._connector.generation
        channel = await open_channel(conn, publisher_confirms=False)
        try:
            # Per consumer (RabbitMQ's global=false): quorum queues support no other kind.
            await channel.basic_qos(prefetch_count=self._prefetch)
            queues = await self._declare(channel)
        except BaseException:
            if not channel.is_closed:
                await channel.close()
            raise
        channel.closing.add_done_callback(lambda _f: self._wakeup.set())
        channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        self._channel = channel
        self._acks = ChannelAcks(channel, batch=self._prefetch // 10)
        self._consumers.clear()
        self._in_flight.clear()
        self._queues = queues
        self._unsettled = {}
        if self._balancer is None:
            for queue in queues:
                await self.consume(queue)
        else:
            await self._balancer.start(channel, generation, queues)

    async def _declare(self, channel: AbstractChannel) -> list[str]:
        spec = self._spec
        try:
            if spec.kind == "queue":
                await self._topology.queue(channel, spec.name)
                return [spec.name]
            if spec.group is None:
                return [await self._topology.broadcast(channel, spec.name)]
            return await self._topology.group(channel, spec.name, spec.group)
        except (amqp.ChannelNotFoundEntity, amqp.ChannelPreconditionFailed):
            self._topology.forget()
            raise

    async def _restore(self) -> None:
        """Open a fresh channel (and connection if needed) and consume again."""
        abandoned, self._abandoned = self._abandoned, None
        if abandoned is not None and not abandoned.channel.is_closed:
            # Closing it makes the broker requeue what we had unacked on it; what was acked
            # goes out first.
            await self._flush_acks(abandoned)
            try:
                await abandoned.channel.close()
            except _SETTLE_FAILURES:
                log.debug("closing an abandoned channel failed", exc_info=True)
        self._buffer.clear()  # their channel is gone; the broker redelivers them
        self._in_flight.clear()
        self._topology.forget()  # the broker may have restarted without our entities
        delay = 0.1
        while not self._stopped:
            try:
                await self._open(within=_RESTORE_STEP)
                log.info("subscription to %s resumed", self._spec.name)
                return
            except BrokerUnavailableError:
                if self._connector.closed:
                    raise
                continue  # the connector backs off; check _stopped between waits
            except _SETTLE_FAILURES as e:
                if not is_connection_lost(e) and not isinstance(e, amqp.ChannelNotFoundEntity):
                    raise translate(
                        e, address=self._settings.address, what=f"consume {self._spec.name!r}"
                    ) from e
                log.info("restoring subscription to %s failed (%r); retrying", self._spec.name, e)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, 5.0)

    def _receiver(
        self, acks: ChannelAcks, queue: str
    ) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        topic = self._spec.name
        channel = acks.channel

        async def receive(raw: DeliveredMessage) -> None:
            # aiormq runs this in a new task per delivery, in arrival order; nothing here awaits,
            # so the buffer keeps the broker's order.
            delivery = raw.delivery
            assert isinstance(delivery, Basic.Deliver)
            tag = delivery.delivery_tag or 0
            # Every tag of the channel, even one never handed out: an ack with multiple=True
            # must not pass over a tag it does not know is settled.
            acks.delivered(tag)
            if channel is self._channel:
                self._unsettled[tag] = queue
            message = wire.decode(
                topic,
                raw.body,
                raw.header.properties,
                exchange=delivery.exchange or "",
                routing_key=delivery.routing_key or "",
            )
            self._buffer.append(
                AmqpDelivery(
                    message,
                    redelivered=bool(delivery.redelivered),
                    acks=acks,
                    tag=tag,
                    queue=queue,
                    on_settled=self._settled,
                )
            )
            self._wakeup.set()

        return receive

    def _settled(self, delivery: AmqpDelivery) -> None:
        if delivery.channel is self._channel:
            self._unsettled.pop(delivery.tag, None)
            count = self._in_flight.get(delivery.queue, 0)
            if count > 0:
                self._in_flight[delivery.queue] = count - 1

    def _on_broker_cancel(self, frame: Basic.Cancel) -> None:
        # The broker cancelled a consumer (its queue was deleted, ...): the iterator starts
        # over on a fresh channel, which declares the queue again.
        log.warning("RabbitMQ cancelled consumer %s of %s", frame.consumer_tag, self._spec.name)
        if self._channel is not None and not self._stopped:
            self._abandoned, self._acks, self._channel = self._acks, None, None
            self._wakeup.set()

    async def _release_buffered(self, which: Callable[[AmqpDelivery], bool]) -> None:
        keep: deque[AmqpDelivery] = deque()
        give_back: list[AmqpDelivery] = []
        for delivery in self._buffer:
            (give_back if which(delivery) else keep).append(delivery)
        self._buffer = keep
        for delivery in give_back:
            self._in_flight[delivery.queue] = self._in_flight.get(delivery.queue, 0) + 1
            await delivery.release()

    async def _flush_acks(self, acks: ChannelAcks | None) -> None:
        if acks is None or acks.channel.is_closed:
            return  # the broker requeued what was unacked on it; it comes back redelivered
        try:
            await acks.flush()
        except _SETTLE_FAILURES:
            log.debug("flushing acks failed; the broker will redeliver them", exc_info=True)
