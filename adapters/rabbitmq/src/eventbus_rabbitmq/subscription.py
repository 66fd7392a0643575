"""Consuming: one channel per subscription, manual acks, deliveries handed out in batches.

The broker pushes up to ``prefetch`` unacked deliveries per consumer into the channel's buffer
(consuming_channel.py); the iterator hands out what is buffered in one batch, in arrival order,
so that the deliveries yielded and not settled never exceed ``spec.prefetch``. Settling maps to
``basic.ack`` (coalesced per channel, see acks.py) / ``basic.nack(requeue=True)`` on the channel
the delivery came from, and is idempotent. If that channel is gone, RabbitMQ has already
requeued the message, so settling is a no-op: it will be redelivered, never lost, and a dead
channel never raises into the worker.

`run` holds the subscription's background work, in the core's task group: the channel watcher
(channel_watch.py), which reports the deliveries a lost channel takes away and restores the
channel, the read-ahead regulator, which cancels and re-registers the channel's consumers to
keep the bytes outstanding within ``read_ahead_bytes`` (consuming_channel.py), and for
partitioned groups the balancer's ticks (partitions.py). A restore, a regulation and a tick
each hold one lock, so opening a channel, throttling and handing a partition over never
interleave; reporting a loss takes no lock, so that it is never delayed by either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import anyio
from aiormq import exceptions as amqp
from aiormq.abc import AbstractChannel, AbstractConnection
from anyio.abc import TaskStatus

from eventbus.errors import BrokerUnavailableError
from eventbus.loggers import get_logger
from eventbus.transports.base import DeliveryOwner, RawDelivery, SubscriptionSpec
from eventbus_rabbitmq.channel_watch import watch
from eventbus_rabbitmq.connection import Connector, open_channel
from eventbus_rabbitmq.consuming_channel import ConsumingChannel
from eventbus_rabbitmq.delivery import SETTLE_FAILURES
from eventbus_rabbitmq.errors import is_connection_lost, translate
from eventbus_rabbitmq.partitions import JOIN_SECONDS, Balancer, Locks
from eventbus_rabbitmq.topology import Topology
from eventbus_rabbitmq.url import Settings

__all__ = ["RabbitSubscription"]

log = get_logger("eventbus.rabbitmq")

_CLEANUP_SECONDS = 5.0  # bound on closing a half-open channel while being cancelled


class RabbitSubscription:
    """`Subscription` over one AMQP channel at a time; see the module docstring."""

    def __init__(
        self,
        spec: SubscriptionSpec,
        owner: DeliveryOwner,
        *,
        settings: Settings,
        connector: Connector,
        topology: Topology,
        locks: Locks,
        on_closed: Callable[[RabbitSubscription], None] = lambda _sub: None,
    ) -> None:
        self._spec = spec
        self._owner = owner
        self._on_closed = on_closed
        self._settings = settings
        self._connector = connector
        self._topology = topology
        # Broker-side prefetch, per consumer; may exceed spec.prefetch (then the surplus waits
        # in the buffer), the iterator never hands out more than spec.prefetch.
        self._prefetch = settings.prefetch or spec.prefetch
        self._current: ConsumingChannel | None = None
        self._wakeup = asyncio.Event()  # the iterator may be able to hand something out
        self._flow = asyncio.Event()  # the read-ahead crossed its byte budget (either way)
        self.throttles = 0  # how often the read-ahead went over its byte budget
        self._lock = asyncio.Lock()  # (re)opening, throttling and balancing, one at a time
        self._paused = False
        self._stopped = False
        self._closing = False
        self._broken = False  # run() failed: the core subscribes again
        self._opening = False
        self._run_scope: anyio.CancelScope | None = None
        self._run_ended: asyncio.Event | None = None
        # Partitioned groups: which partition queues this subscription consumes is negotiated
        # with the other subscribers of the group (see partitions.py).
        self._balancer: Balancer | None = None
        if spec.kind == "topic" and spec.group is not None and settings.partitions > 1:
            self._balancer = Balancer(
                spec.name, spec.group, settings.partitions, locks=locks, consumer=self
            )

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Declare and consume, report live once the broker confirmed the consumers, then
        watch the channel (and balance partitions) until `close`."""
        if self._closing:
            task_status.started()
            return
        ended = self._run_ended = asyncio.Event()
        try:
            with anyio.CancelScope() as scope:
                self._run_scope = scope
                try:
                    await self.reopen(within=self._settings.publish_timeout)
                except SETTLE_FAILURES as e:
                    what = f"subscribe to {self._spec.name!r} as {self._settings.user!r}"
                    raise translate(e, address=self._settings.address, what=what) from e
                task_status.started()
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._watch)
                    tasks.start_soon(self._regulate)
                    if self._balancer is not None:
                        tasks.start_soon(self._balance)
        except BaseException:
            if not self._closing:
                self._broken = True
            raise
        finally:
            ended.set()
            self._wakeup.set()

    @property
    def connected(self) -> bool:
        current = self._current
        return current is not None and current.live and current.usable and not self._broken

    def pause(self) -> None:
        """Stop handing out deliveries; the consumers stay, so the subscription keeps its place
        (a single-active-consumer partition does not move to another subscriber), and the
        broker's prefetch and ``read_ahead_bytes`` bound what it pushes into the buffer
        meanwhile (a throttle cancels consumers, but the partition's lock stays ours).

        A pause longer than RabbitMQ's ``consumer_timeout`` (30 minutes by default) makes the
        broker close the channel over the buffered, unacked deliveries: they are requeued, the
        channel is restored (same partitions: their locks live on the connection), and the
        buffer fills again."""
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._wakeup.set()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._wakeup.set()
        current = self._current
        if current is None or not current.usable or self._opening:
            return  # a channel being opened is stopped by reopen() once it is open
        if self._balancer is None:
            await self._bounded("cancelling its consumers", current.cancel_all)
        # else: partition queues keep their single active consumer until close(): cancelling
        # now would hand the partition to the next subscriber while our in-flight messages of
        # the same keys are still being handled, breaking per-key order.
        current.hold_releases()

    async def close(self) -> None:
        if self._closing:
            return
        await self.stop()
        self._closing = True
        # First end the background work, so that no restore or hand-over runs concurrently.
        if self._run_scope is not None:
            self._run_scope.cancel()
        if self._run_ended is not None:
            await self._run_ended.wait()
        current, self._current = self._current, None
        if current is not None:
            # Unacked deliveries go back to their queues (in order); a partition queue does that
            # itself when our channel closes, and only then activates the next consumer.
            requeue_first = self._balancer is None
            await self._bounded("closing", lambda: current.close(requeue_first=requeue_first))
        if self._balancer is not None:
            # Only now that our unacked messages are back in their queues may another
            # subscriber take over our partitions.
            await self._bounded("leaving its partitions", self._balancer.close)
        self._on_closed(self)

    @contextlib.contextmanager
    def _answered(self, doing: str, within: float | None = None) -> Iterator[None]:
        """Bound a step that waits for the broker and holds the lock (opening the channel, a
        rebalancing tick, a regulation) by ``within``, ``publish_timeout`` by default. Past it
        the channels the step used are given up (a call cancelled on one leaves it half-closed;
        the watcher restores a fresh one) and the step fails with `BrokerUnavailableError`:
        the lock is released instead of held forever against every restore."""
        bound = self._settings.publish_timeout if within is None else within
        try:
            with anyio.fail_after(bound):
                yield
        except TimeoutError:
            log.warning(
                "RabbitMQ at %s did not answer within %g s while %s %s",
                self._settings.address,
                bound,
                doing,
                self._spec.name,
            )
            if self._current is not None:
                self._current.end()
            if self._balancer is not None:
                self._balancer.forget_lock_channel()
            raise BrokerUnavailableError(
                self._settings.address,
                f"no answer within {bound:g} s while {doing} {self._spec.name!r}",
            ) from None

    async def _bounded(self, doing: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step``, a part of stopping or closing, within ``publish_timeout``: a broker
        that never answers must not hold up the bus's shutdown. What a cut-short close leaves
        unacked is requeued when the connection closes."""
        with anyio.move_on_after(self._settings.publish_timeout) as scope:
            await step()
        if scope.cancelled_caught:
            log.warning(
                "RabbitMQ at %s did not answer within %g s while %s subscription %s; going on",
                self._settings.address,
                self._settings.publish_timeout,
                doing,
                self._spec.name,
            )

    # -- iteration --------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Sequence[RawDelivery]]:
        return self

    async def __anext__(self) -> Sequence[RawDelivery]:
        while True:
            if self._stopped or self._broken:
                raise StopAsyncIteration
            current = self._current
            if current is not None and current.live and current.usable and not self._paused:
                room = self._spec.prefetch - len(current.handed_out)
                if room > 0 and current.buffer:
                    return current.hand_out(room)
            self._wakeup.clear()
            await self._wakeup.wait()

    # -- used by the channel watcher --------------------------------------------------------

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def current(self) -> ConsumingChannel | None:
        return self._current

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def reopen(self, within: float) -> None:
        async with self._lock:
            if self._stopped and self._current is not None:
                return
            if self._current is not None:
                self._topology.forget()  # the broker may have restarted without our entities
            self._opening = True
            try:
                await self._open(within)
            finally:
                self._opening = False
            current = self._current
            if self._stopped and current is not None:  # stop() came while it was being opened
                if self._balancer is None:
                    await self._bounded("cancelling its consumers", current.cancel_all)
                current.hold_releases()

    # -- used by the balancer ---------------------------------------------------------------

    @property
    def channel(self) -> AbstractChannel | None:
        current = self._current
        return current.channel if current is not None else None

    def in_flight(self, queue: str) -> int:
        current = self._current
        return current.outstanding(queue) if current is not None else 0

    async def flush_acks(self) -> None:
        """Send the acks recorded so far (before a partition is handed to someone else)."""
        if self._current is not None:
            await self._current.flush_acks()

    async def consume(self, queue: str) -> None:
        current = self._current
        if current is None or not current.usable:
            raise amqp.ChannelInvalidStateError("subscription channel is closed")
        await current.consume(queue)

    async def cancel(self, queue: str) -> None:
        """Stop consuming ``queue`` and give back what is buffered from it, in order."""
        if self._current is not None:
            await self._current.cancel(queue)

    # -- internals --------------------------------------------------------------------------

    async def _watch(self) -> None:
        await watch(self, self._owner, connector=self._connector, address=self._settings.address)

    async def _balance(self) -> None:
        assert self._balancer is not None
        while not self._stopped:
            await anyio.sleep(self._balancer.seconds_to_next_tick())
            async with self._lock:
                if self._stopped:
                    return  # partitions stay until close() hands them on
                try:
                    # Paused: keep the partitions where they are (see pause()).
                    with self._answered("rebalancing subscription"):
                        await self._balancer.tick(hold=self._paused)
                except SETTLE_FAILURES as e:
                    if not is_connection_lost(e) and not isinstance(e, amqp.ChannelClosed):
                        what = f"balance the partitions of {self._spec.name!r}"
                        raise translate(e, address=self._settings.address, what=what) from e
                    # The watcher restores the channel; the next tick goes on from there.
                    log.info("rebalancing %s interrupted: %r", self._spec.name, e)

    async def _regulate(self) -> None:
        while True:
            await self._flow.wait()
            self._flow.clear()
            async with self._lock:
                current = self._current
                if self._stopped:
                    return  # nothing is consumed again after stop()
                if current is None or not current.live:
                    continue  # a fresh channel starts unthrottled
                before = current.throttles
                try:
                    with self._answered("regulating the read-ahead of subscription"):
                        await current.regulate()
                except SETTLE_FAILURES as e:
                    if not is_connection_lost(e) and not isinstance(e, amqp.ChannelClosed):
                        what = f"consume {self._spec.name!r} as {self._settings.user!r}"
                        raise translate(e, address=self._settings.address, what=what) from e
                    # The watcher restores the channel, unthrottled.
                    log.info("regulating the read-ahead of %s interrupted: %r", self.name, e)
                finally:
                    self.throttles += current.throttles - before

    async def _open(self, within: float | None) -> None:
        conn = await self._connector.get(within=within)
        generation = self._connector.generation
        # A broker that keeps the connection up but never answers (just after a restart, say)
        # must fail the open, not hang it: a restore holds the lock, a bus's start waits for
        # the first open, and the scheduled-message forwarder opens this way too.
        bound = self._settings.publish_timeout + (JOIN_SECONDS if self._balancer else 0.0)
        with self._answered("subscribing to", bound):
            channel = await open_channel(conn, publisher_confirms=False)
            current = ConsumingChannel(
                channel,
                topic=self._spec.name,
                ack_batch=self._prefetch // 10,
                wakeup=self._wakeup.set,
                delivery_limit=(
                    self._settings.delivery_limit if self._settings.queue_type == "quorum" else None
                ),
                read_ahead_bytes=self._settings.read_ahead_bytes,
                prefetch=self._prefetch,
                # Quorum queues return what they assigned to a cancelled consumer
                # (broadcast queues are always classic).
                cancel_returns=self._settings.queue_type == "quorum"
                and (self._spec.kind == "queue" or self._spec.group is not None),
                on_flow=self._flow.set,
            )
            try:
                # Per consumer (RabbitMQ's global=false): quorum queues support no other.
                await channel.basic_qos(prefetch_count=self._prefetch)
                queues = await self._declare(conn, channel)
                self._current = current
                if self._balancer is None:
                    for queue in queues:
                        await current.consume(queue)
                else:
                    await self._balancer.start(channel, generation, queues)
            except BaseException:
                # Nothing was handed out from it (not live yet): closing it requeues what
                # arrived.
                with anyio.move_on_after(_CLEANUP_SECONDS, shield=True):
                    await current.close(requeue_first=False)
                raise
        current.live = True
        self._wakeup.set()

    async def _declare(self, conn: AbstractConnection, channel: AbstractChannel) -> list[str]:
        spec = self._spec
        try:
            if spec.kind == "queue":
                await self._topology.queue(channel, spec.name)
                return [spec.name]
            if spec.group is None:
                return [await self._topology.broadcast(channel, spec.name)]
            return await self._topology.group(conn, channel, spec.name, spec.group)
        except (amqp.ChannelNotFoundEntity, amqp.ChannelPreconditionFailed):
            self._topology.forget()
            raise
