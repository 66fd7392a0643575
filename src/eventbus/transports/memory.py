"""The in-memory transport: a broker inside the process, for tests, demos and examples.

``memory://`` buses of one process share one broker, so two buses behave like two service
instances (competing consumers within a group, fan-out across groups); ``memory://NAME`` gives a
broker of its own, shared only by buses with the same NAME. Nothing outlives the process.

It models a partitioned log with groups: a topic's group (and a queue) holds 16 partitions, a
key always maps to the same one, and each partition has one owner subscription at a time. A
partition changes owner only when its previous owner has nothing of it in flight, so per-key
order holds across subscriptions, as on Kafka.

Retention, as on Kafka with ``auto.offset.reset=earliest``: each topic keeps its last
``retention`` messages (`RETENTION` unless the URL says ``memory://NAME?retention=N``), and a
group that subscribes for the first time starts with them, in publish order. So a message
published before its consumer group first subscribed still reaches it
(`Capabilities.unbound_topic` ``"keep"``). Older messages are forgotten, so memory stays
bounded. A broadcast subscription (no group) starts at the end, as its DESIGN promises.

Replies (request-reply) go straight to the inbox of the requesting bus, named
``eventbus.reply.<random>``; a reply to an inbox that is gone is unroutable. A reply-to of
another name is a plain queue.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskStatus

from eventbus.errors import ConfigurationError, UnroutableError
from eventbus.message import Message
from eventbus.transports.base import (
    SPI_VERSION,
    Backlog,
    Capabilities,
    DeliveryOwner,
    Destination,
    Kind,
    RawDelivery,
    ReplyInbox,
    Subscription,
    SubscriptionSpec,
)
from eventbus.transports.urls import parse_options

__all__ = [
    "LOG_LIMIT",
    "RETENTION",
    "MemoryBroker",
    "MemoryTransport",
    "existing_memory_broker",
    "memory_broker",
]

PARTITIONS = 16
LOG_LIMIT = 100_000
"""Publishes `MemoryBroker.log` keeps (the oldest are forgotten first)."""
RETENTION = 10_000
"""Messages per topic kept for groups that subscribe later (the oldest are forgotten first)."""
_seq = itertools.count()
_INBOX_PREFIX = "eventbus.reply."


@dataclass(slots=True)
class _Entry:
    message: Message
    partition: int
    redelivered: bool = False
    taken: int = 0


@dataclass(slots=True)
class _Group:
    """A topic's consumer group, a queue, or one broadcast subscriber's private queue."""

    partitions: list[deque[_Entry]] = field(
        default_factory=lambda: [deque() for _ in range(PARTITIONS)]
    )
    owners: list[_MemorySubscription | None] = field(default_factory=lambda: [None] * PARTITIONS)
    next_owners: list[_MemorySubscription | None] = field(
        default_factory=lambda: [None] * PARTITIONS
    )
    in_flight: list[int] = field(default_factory=lambda: [0] * PARTITIONS)
    delayed: list[tuple[float, int, _Entry]] = field(default_factory=list)
    subs: list[_MemorySubscription] = field(default_factory=list)
    round_robin: int = 0

    def put(self, message: Message, delay: float = 0.0) -> None:
        if message.key is None:
            partition = self.round_robin % PARTITIONS
            self.round_robin += 1
        else:
            partition = zlib.crc32(message.key.encode()) % PARTITIONS
        entry = _Entry(message, partition)
        if delay > 0:
            heapq.heappush(self.delayed, (time.monotonic() + delay, next(_seq), entry))
        else:
            self.partitions[partition].append(entry)
        self.wake()

    def take(self, sub: _MemorySubscription) -> _Entry | None:
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, entry = heapq.heappop(self.delayed)
            self.partitions[entry.partition].append(entry)
        for i in range(PARTITIONS):
            p = (sub.cursor + i) % PARTITIONS
            # A partition promised to another subscription gets no new takes: its in-flight
            # count must reach zero for the handoff, which never happens under steady load
            # if the old owner keeps taking (a joining consumer would get nothing).
            handing_over = self.next_owners[p] not in (None, sub)
            if self.owners[p] is sub and self.partitions[p] and not handing_over:
                sub.cursor = p + 1
                entry = self.partitions[p].popleft()
                entry.taken = next(_seq)
                self.in_flight[p] += 1
                return entry
        return None

    def seconds_to_next_due(self) -> float:
        if not self.delayed:
            return math.inf
        return max(0.0, self.delayed[0][0] - time.monotonic())

    def done(self, entry: _Entry) -> None:
        p = entry.partition
        self.in_flight[p] -= 1
        if self.in_flight[p] == 0 and self.next_owners[p] is not None:
            self.owners[p], self.next_owners[p] = self.next_owners[p], None
        self.wake()

    def requeue(self, entry: _Entry) -> None:
        entry.redelivered = True
        self.partitions[entry.partition].appendleft(entry)
        self.done(entry)

    def join(self, sub: _MemorySubscription) -> None:
        self.subs.append(sub)
        self.rebalance()

    def leave(self, sub: _MemorySubscription) -> None:
        self.subs.remove(sub)
        self.rebalance()

    def rebalance(self) -> None:
        for p in range(PARTITIONS):
            desired = self.subs[p % len(self.subs)] if self.subs else None
            if self.owners[p] is None or self.in_flight[p] == 0:
                self.owners[p], self.next_owners[p] = desired, None
            else:
                # Hand over only once the old owner has nothing of this partition in flight.
                self.next_owners[p] = desired
        self.wake()

    def wake(self) -> None:
        for sub in self.subs:
            sub.wakeup.set()

    def backlog(self) -> Backlog:
        waiting = {str(p): len(part) for p, part in enumerate(self.partitions)}
        for _, _, entry in self.delayed:
            waiting[str(entry.partition)] += 1
        return Backlog(waiting=waiting, consumers=len(self.subs))

    def ready(self) -> list[Message]:
        entries = [e for part in self.partitions for e in part]
        entries += [e for _, _, e in sorted(self.delayed)]
        return [e.message for e in entries]


class MemoryBroker:
    """An in-process broker. Its inspection methods are meant for users' unit tests.

    ``retention``: messages kept per topic for consumer groups that subscribe for the first
    time later (module docstring); 0 keeps none, so new groups start at the end."""

    def __init__(self, retention: int = RETENTION) -> None:
        self.log: deque[tuple[Destination, Message]] = deque(maxlen=LOG_LIMIT)
        """The last `LOG_LIMIT` publishes, in order: where each went and what it was. Bounded,
        so that a long-running process on ``memory://`` does not grow without end."""
        self._retained: dict[str, deque[tuple[Destination, Message]]] = {}
        self.retention = retention
        self._topics: dict[str, dict[str, _Group]] = {}
        self._broadcasts: dict[str, list[_Group]] = {}
        self._queues: dict[str, _Group] = {}
        self._inboxes: dict[str, Callable[[Message], None]] = {}
        """Reply inboxes of running buses, by address."""
        self._scheduled: dict[str, list[tuple[float, Message]]] = {}
        """Delayed topic publishes not yet due (monotonic due time): a group created before
        they fall due gets them even when retention does not keep them (DESIGN 11)."""

    def published(self, name: str) -> list[Message]:
        """Messages published to topic or queue ``name`` (dead letters included), in order."""
        return [m for d, m in self.log if d.name == name]

    def ready(self, name: str, group: str | None = None) -> list[Message]:
        """Messages not yet delivered in queue ``name``, or in ``group`` of topic ``name``."""
        found = self._topics.get(name, {}).get(group) if group else self._queues.get(name)
        return found.ready() if found else []

    @property
    def retention(self) -> int:
        return self._retention

    @retention.setter
    def retention(self, value: int) -> None:
        if not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"memory retention must be an integer >= 0, got {value!r}")
        self._retention = value
        for name, kept in self._retained.items():
            self._retained[name] = deque(kept, maxlen=value)

    def retained(self, topic: str) -> list[Message]:
        """What a group subscribing to ``topic`` for the first time would start with."""
        return [m for _, m in self._retained.get(topic, ())]

    def bound(self, topic: str) -> bool:
        """Whether a publish to ``topic`` now reaches anyone: a group exists or a broadcast
        subscription listens (what a RabbitMQ exchange with a bound queue would say)."""
        return bool(self._topics.get(topic) or self._broadcasts.get(topic))

    def reset(self) -> None:
        self.log.clear()
        self._retained.clear()
        self._topics.clear()
        self._broadcasts.clear()
        self._queues.clear()
        self._scheduled.clear()

    def publish(self, to: Destination, message: Message) -> None:
        if to.reply and to.name.startswith(_INBOX_PREFIX):
            deliver = self._inboxes.get(to.name)
            if deliver is None:
                raise UnroutableError(f"no reply inbox {to.name!r} (its bus stopped)")
            self.log.append((to, message))
            deliver(message)
            return
        self.log.append((to, message))
        if to.kind == "queue":
            self._queues.setdefault(to.name, _Group()).put(message, to.delay)
            return
        if to.group is not None:
            # A retry or a replay for one group: not part of the topic's log.
            self._group(to.name, to.group).put(message, to.delay)
            return
        if self._retention:
            kept = self._retained.setdefault(to.name, deque(maxlen=self._retention))
            kept.append((to, message))
        for group in (*self._topics.get(to.name, {}).values(), *self._broadcasts.get(to.name, ())):
            group.put(message, to.delay)
        if to.delay > 0:
            now = time.monotonic()
            pending = self._scheduled.setdefault(to.name, [])
            pending.append((now + to.delay, message))
            if len(pending) & (len(pending) - 1) == 0:  # at powers of two: amortized O(1)
                pending[:] = [(due, m) for due, m in pending if due > now]

    def _group(self, topic: str, name: str) -> _Group:
        """Group ``name`` of ``topic``; a new one starts with what the topic retained, like a
        Kafka group with no committed offset and ``auto.offset.reset=earliest``."""
        groups = self._topics.setdefault(topic, {})
        group = groups.get(name)
        if group is None:
            group = groups[name] = _Group()
            kept = self._retained.get(topic, ())
            for to, message in kept:
                group.put(message, to.delay)  # a delayed one keeps what is left of its delay
            now = time.monotonic()
            pending = [(due, m) for due, m in self._scheduled.pop(topic, []) if due > now]
            if pending:
                self._scheduled[topic] = pending
                retained = {id(m) for _, m in kept}
                for due, message in pending:
                    if id(message) not in retained:  # not kept: still due to the groups bound
                        group.put(message, due - now)
        return group

    def group_for(self, spec: SubscriptionSpec) -> _Group:
        if spec.kind == "queue":
            return self._queues.setdefault(spec.name, _Group())
        if spec.group is not None:
            return self._group(spec.name, spec.group)
        group = _Group()
        self._broadcasts.setdefault(spec.name, []).append(group)
        return group

    def open_inbox(self, address: str, deliver: Callable[[Message], None]) -> None:
        self._inboxes[address] = deliver

    def close_inbox(self, address: str) -> None:
        self._inboxes.pop(address, None)

    def drop_broadcast(self, name: str, group: _Group) -> None:
        self._broadcasts[name].remove(group)

    def depth(self, name: str, kind: Kind) -> int | None:
        found = self._queues.get(name) if kind == "queue" else None
        return len(found.ready()) if found else None

    def backlog(self, spec: SubscriptionSpec) -> Backlog | None:
        if spec.kind == "queue":
            found = self._queues.get(spec.name)
        elif spec.group is not None:
            found = self._topics.get(spec.name, {}).get(spec.group)
        else:
            found = None
        return found.backlog() if found else None


_brokers: dict[str, MemoryBroker] = {}


def memory_broker(name: str = "default") -> MemoryBroker:
    """The process's broker ``name`` (``memory://NAME``; plain ``memory://`` is "default")."""
    return _brokers.setdefault(name, MemoryBroker())


def existing_memory_broker(url: str) -> MemoryBroker | None:
    """The broker a ``memory://`` URL names, if something in this process made it; never
    makes one (the ``eventbus`` command refuses a broker that would be born empty in it)."""
    return _brokers.get(urlsplit(url).netloc or "default")


class _MemoryDelivery:
    __slots__ = ("_entry", "_sub", "defect", "message", "native", "redelivered", "settled")

    def __init__(self, sub: _MemorySubscription, entry: _Entry) -> None:
        self._sub = sub
        self._entry = entry
        self.message = entry.message
        self.redelivered = entry.redelivered
        self.native: Mapping[str, str] = {"partition": str(entry.partition)}
        self.defect: str | None = None
        self.settled = False

    async def ack(self) -> None:
        if self._settle():
            self._sub.group.done(self._entry)

    async def release(self) -> None:
        if self._settle():
            self._sub.group.requeue(self._entry)

    def _settle(self) -> bool:
        if self.settled or self._sub.closed:
            return False
        self.settled = True
        self._sub.unsettled.pop(self._entry.taken, None)
        return True


class _MemorySubscription:
    def __init__(self, broker: MemoryBroker, spec: SubscriptionSpec) -> None:
        self.spec = spec
        self._broker = broker
        self.group = broker.group_for(spec)
        self.unsettled: dict[int, _MemoryDelivery] = {}
        self.wakeup = anyio.Event()
        self.cursor = 0
        self.stopped = False
        self.paused = False
        self.closed = False
        self.closed_event = anyio.Event()
        self.group.join(self)

    def __aiter__(self) -> AsyncIterator[Sequence[RawDelivery]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Sequence[RawDelivery]]:
        while not self.stopped:
            room = self.spec.prefetch - len(self.unsettled)
            batch: list[RawDelivery] = []
            while not self.paused and len(batch) < room:
                entry = self.group.take(self)
                if entry is None:
                    break
                delivery = _MemoryDelivery(self, entry)
                self.unsettled[entry.taken] = delivery
                batch.append(delivery)
            if batch:
                yield batch
                continue
            self.wakeup = anyio.Event()
            with anyio.move_on_after(self.group.seconds_to_next_due()):
                await self.wakeup.wait()

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        # Nothing runs in the background: the broker is in this process.
        task_status.started()
        await self.closed_event.wait()

    @property
    def connected(self) -> bool:
        return True  # the broker is in this process

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.wakeup.set()

    async def stop(self) -> None:
        self.stopped = True
        self.wakeup.set()

    async def close(self) -> None:
        if self.closed:
            return
        await self.stop()
        # Newest first, each to the front of its partition: the original order is restored.
        for taken in sorted(self.unsettled, reverse=True):
            await self.unsettled[taken].release()
        self.closed = True
        self.closed_event.set()
        self.group.leave(self)
        if self.spec.kind == "topic" and self.spec.group is None:
            self._broker.drop_broadcast(self.spec.name, self.group)


class MemoryTransport:
    """`Transport` over a `MemoryBroker`. URL: ``memory://`` or ``memory://NAME``, optionally
    with ``?retention=N``: messages each topic keeps for groups that subscribe later (default
    `RETENTION`; 0 for none). It sets the retention of the named broker, which every bus on
    that name shares."""

    spi_version = SPI_VERSION
    messaging_system = "memory"
    """``messaging.system`` for the spans of a traced bus (not an OpenTelemetry-listed one)."""
    capabilities = Capabilities(
        durable=False,
        redelivered_flag=True,
        max_message_size=None,
        unbound_topic="keep",  # the topic keeps its last `retention` messages for new groups
        native=("partition",),
    )

    def __init__(self, url: str = "memory://", *, broker: MemoryBroker | None = None) -> None:
        """``broker``: use this broker instead of the URL's named one (a private broker no
        other bus can reach, as `eventbus.testing.TestBus` uses)."""
        parts = urlsplit(url)
        if parts.scheme != "memory" or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"bad memory transport URL {url!r}; use memory:// or memory://NAME"
            )
        options, _ = parse_options("memory", parts.query, {"retention": _retention})
        self.broker = broker or memory_broker(parts.netloc or "default")
        if "retention" in options:
            self.broker.retention = options["retention"]
        self._subscriptions: list[_MemorySubscription] = []

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        for sub in self._subscriptions:
            await sub.close()
        self._subscriptions.clear()

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        for message in messages:
            self.broker.publish(to, message)

    def reply_inbox(self) -> ReplyInbox:
        return _MemoryReplyInbox(self.broker)

    async def subscribe(self, spec: SubscriptionSpec, owner: DeliveryOwner) -> Subscription:
        sub = _MemorySubscription(self.broker, spec)
        self._subscriptions.append(sub)
        return sub

    async def depth(self, name: str, kind: Kind) -> int | None:
        return self.broker.depth(name, kind)

    async def backlog(self, spec: SubscriptionSpec) -> Backlog | None:
        return self.broker.backlog(spec)


class _MemoryReplyInbox:
    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self._address = f"{_INBOX_PREFIX}{uuid.uuid4().hex}"

    async def address(self) -> str:
        return self._address

    async def run(
        self, deliver: Callable[[Message], None], *, task_status: TaskStatus[None]
    ) -> None:
        self._broker.open_inbox(self._address, deliver)
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._broker.close_inbox(self._address)


def _retention(label: str, name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigurationError(f"{label} URL option {name}={raw!r}: expected an integer >= 0")
    return value
