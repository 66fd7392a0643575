"""Which partition queues of a partitioned group this subscription consumes.

A partitioned group is a hashing exchange over N queues with single-active-consumer
(SAC), so one key is always in one queue and one queue is handled by one consumer at a time:
per-key order holds across processes. SAC alone does not spread the work, though: on RabbitMQ
3.10 the first consumer registered on a queue stays active until it goes away, so the first
worker started would own every partition and the others would only wait.

So subscribers share the partitions out among themselves, through the broker only:

* **Membership.** Every subscription of the group consumes an (always empty) queue
  ``<topic>.<group>.members``; its consumer count is the number of live members M. Members
  that own fewer than their share also consume ``<topic>.<group>.hungry``.
* **Ownership.** Before consuming partition queue ``i`` a member takes its lock: an *exclusive*
  queue ``<topic>.<group>.<i>.owner``. Only one connection can hold it, and the broker deletes
  it when that connection dies, so a crashed member's partitions become free by themselves.
* **Balancing.** Every second or so a member computes lo = N // M and hi = ceil(N / M); it takes
  free partitions while it owns fewer than hi (only up to lo while others are hungry), and gives
  one back while it owns more than hi, or more than lo while others are hungry.
* **Safe hand-over.** Giving a partition back is: cancel the consumer (no new deliveries),
  return what is buffered (requeued in order), wait until every message of that partition the
  worker is still handling is settled, and only then delete the lock. The next owner can consume
  only after that, so it never handles a key's next message while we still handle the previous
  one. When a member dies instead, its unacked messages are requeued in order by the broker;
  SAC makes a new owner that registered meanwhile wait until that requeue is done.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Protocol

from aiormq import exceptions as amqp
from aiormq.abc import AbstractChannel, DeliveredMessage

from eventbus.loggers import get_logger
from eventbus_rabbitmq.connection import open_channel

__all__ = ["Balancer", "Locks"]

log = get_logger("eventbus.rabbitmq")

TICK_SECONDS = 0.5
# How long a new subscriber waits, before it reports itself live, for the others to hand it a
# share (like a Kafka group join). Bounded: a peer that is stuck must not block a start.
JOIN_SECONDS = 10.0
# The empty coordination queues vanish an hour after the group's last subscriber left.
_AUX_ARGUMENTS: dict[str, Any] = {"x-expires": 3_600_000}


class _Consumer(Protocol):
    """What the balancer needs from the subscription that owns it."""

    @property
    def channel(self) -> AbstractChannel | None: ...
    def in_flight(self, queue: str) -> int: ...
    async def consume(self, queue: str) -> None: ...
    async def cancel(self, queue: str) -> None: ...
    async def flush_acks(self) -> None: ...


class Locks:
    """Partition locks held through this transport's connection.

    An exclusive queue shuts out other connections only; two subscriptions of one transport
    share a connection, so they must not both believe they own the same partition."""

    def __init__(self) -> None:
        self._owners: dict[str, object] = {}

    def claim(self, name: str, owner: object) -> bool:
        return self._owners.setdefault(name, owner) is owner

    def release(self, name: str, owner: object) -> None:
        if self._owners.get(name) is owner:
            del self._owners[name]

    def release_all(self, owner: object) -> None:
        for name in [n for n, o in self._owners.items() if o is owner]:
            del self._owners[name]


class Balancer:
    def __init__(
        self, topic: str, group: str, partitions: int, *, locks: Locks, consumer: _Consumer
    ) -> None:
        self._base = f"{topic}.{group}"
        self._n = partitions
        self._locks = locks
        self._consumer = consumer
        self._owned: set[int] = set()
        self._draining: set[int] = set()
        self._hungry_tag: str | None = None
        self._lock_channel: AbstractChannel | None = None
        self._generation = -1
        self._next_tick = 0.0
        self._low = 0
        self._closed = False

    def _queue(self, index: int) -> str:
        return f"{self._base}.{index}"

    def _lock_name(self, index: int) -> str:
        return f"{self._base}.{index}.owner"

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._owned)

    @property
    def due(self) -> bool:
        return self.seconds_to_next_tick() == 0.0

    def seconds_to_next_tick(self) -> float:
        return max(self._next_tick - asyncio.get_running_loop().time(), 0.0)

    async def start(self, channel: AbstractChannel, generation: int, queues: list[str]) -> None:
        """(Re)join on a fresh channel; take a first share before the subscription is live."""
        assert queues == [self._queue(i) for i in range(self._n)]
        for name in (self._members, self._hungry):
            await channel.queue_declare(name, arguments=_AUX_ARGUMENTS)
        await channel.basic_consume(self._members, _ignore)
        self._hungry_tag = None
        if generation != self._generation:
            # A new connection: every lock we held died with the old one.
            self._generation = generation
            self._owned.clear()
            self._draining.clear()
            self._lock_channel = None
            self._locks.release_all(self)
        else:
            # Same connection, new channel: our locks survive. What was being handed over can
            # go now (its unacked messages were requeued when the old channel closed).
            for index in sorted(self._draining):
                await self._unlock(index)
            for index in sorted(self._owned):
                await self._consumer.consume(self._queue(index))
        await self.tick()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + JOIN_SECONDS
        while len(self._owned) < self._low and loop.time() < deadline:
            await asyncio.sleep(0.1)
            await self.tick()

    @property
    def _members(self) -> str:
        return f"{self._base}.members"

    @property
    def _hungry(self) -> str:
        return f"{self._base}.hungry"

    async def tick(self, *, hold: bool = False) -> None:
        """Finish hand-overs whose messages are all settled, then take or give back one share.
        ``hold`` (the subscription is paused): take and give back nothing, so that partitions
        stay where they are while paused; hand-overs already begun still finish."""
        loop = asyncio.get_running_loop()
        self._next_tick = loop.time() + random.uniform(0.5, 1.0) * TICK_SECONDS
        channel = self._consumer.channel
        if channel is None or channel.is_closed or self._closed:
            return
        for index in sorted(self._draining):
            if self._consumer.in_flight(self._queue(index)) == 0:
                await self._unlock(index)
        if hold:
            return

        members = max(
            (await channel.queue_declare(self._members, passive=True)).consumer_count or 0, 1
        )
        hungry = (await channel.queue_declare(self._hungry, passive=True)).consumer_count or 0
        hungry_others = hungry - (1 if self._hungry_tag is not None else 0)
        low, high = self._n // members, -(-self._n // members)
        self._low = low

        mine = len(self._owned)
        if mine > high or (hungry_others > 0 and mine > low):
            await self._give_back(random.choice(sorted(self._owned)))
        else:
            want = (low if hungry_others > 0 else high) - mine
            if want > 0:
                await self._take(channel, want)
        await self._set_hungry(len(self._owned) < low)

    async def close(self) -> None:
        """Called after the subscription's channel closed (its unacked messages are requeued)."""
        self._closed = True
        try:
            for index in sorted(self._owned | self._draining):
                try:
                    await self._unlock(index)
                except (amqp.AMQPError, amqp.ChannelInvalidStateError, OSError, RuntimeError):
                    break  # the connection is gone, and our locks with it
        finally:  # also when cut short (a broker that does not answer): the locks go with it
            self._owned.clear()
            self._draining.clear()
            self._locks.release_all(self)
        channel, self._lock_channel = self._lock_channel, None
        if channel is not None and not channel.is_closed:
            try:
                await channel.close()
            except (amqp.AMQPError, amqp.ChannelInvalidStateError, OSError, RuntimeError):
                log.debug("closing the lock channel failed", exc_info=True)

    # -- internals --------------------------------------------------------------------------

    async def _take(self, channel: AbstractChannel, want: int) -> None:
        candidates = [i for i in range(self._n) if i not in self._owned and i not in self._draining]
        random.shuffle(candidates)
        for index in candidates:
            if want == 0:
                return
            # Cheap pre-check on a channel that survives it; only then try the lock, whose
            # failure costs a channel.
            ok = await channel.queue_declare(self._queue(index), passive=True)
            if ok.consumer_count:
                continue
            if not await self._lock(index):
                continue
            if self._closed:  # close() ran while we were taking it
                await self._unlock(index)
                return
            # Owned before consuming: if consuming fails (channel lost), the restore on this
            # connection consumes it again instead of leaving the lock held by nobody.
            self._owned.add(index)
            await self._consumer.consume(self._queue(index))
            want -= 1
            log.debug("took partition %s", self._queue(index))

    async def _give_back(self, index: int) -> None:
        self._owned.discard(index)
        self._draining.add(index)
        await self._consumer.cancel(self._queue(index))
        log.debug("handing over partition %s", self._queue(index))
        if self._consumer.in_flight(self._queue(index)) == 0:
            await self._unlock(index)

    async def _lock(self, index: int) -> bool:
        name = self._lock_name(index)
        if not self._locks.claim(name, self):
            return False
        channel = await self._get_lock_channel()
        try:
            await channel.queue_declare(name, exclusive=True)
        except amqp.ChannelLockedResource:
            self._locks.release(name, self)
            return False  # another member owns it (this closed the lock channel)
        except BaseException:
            self._locks.release(name, self)
            raise
        return True

    async def _unlock(self, index: int) -> None:
        # Our acks reach the broker before the next owner may consume: were our channel to die
        # with them unsent, those messages would come back after ones it already handled.
        await self._consumer.flush_acks()
        name = self._lock_name(index)
        channel = await self._get_lock_channel()
        await channel.queue_delete(name)
        self._locks.release(name, self)
        self._draining.discard(index)

    def forget_lock_channel(self) -> None:
        """A call on the lock channel went unanswered (so aiormq left it half-closed): open a
        fresh one next time. The locks are exclusive queues of the connection, not of the
        channel: they stay ours."""
        self._lock_channel = None

    async def _get_lock_channel(self) -> AbstractChannel:
        channel = self._lock_channel
        if channel is None or channel.is_closed:
            data = self._consumer.channel
            if data is None or data.is_closed:
                raise amqp.ChannelInvalidStateError("subscription channel is closed")
            channel = await open_channel(data.connection, publisher_confirms=False)
            self._lock_channel = channel
        return channel

    async def _set_hungry(self, hungry: bool) -> None:
        channel = self._consumer.channel
        if channel is None or channel.is_closed:
            return
        if hungry and self._hungry_tag is None:
            ok = await channel.basic_consume(self._hungry, _ignore)
            self._hungry_tag = ok.consumer_tag
        elif not hungry and self._hungry_tag is not None:
            tag, self._hungry_tag = self._hungry_tag, None
            await channel.basic_cancel(tag)


async def _ignore(_message: DeliveredMessage) -> None:
    """Coordination queues never hold messages; nothing to do."""
