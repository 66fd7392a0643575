"""The transport SPI, version 2: the few operations a broker adapter implements.

A transport only moves bytes and settles deliveries natively. Everything with a policy in it --
decoding, retries and backoff, dead letters, deduplication, key lanes, in-flight bounds, graceful
shutdown -- lives once in `eventbus.dispatch`, above this interface, so it behaves the same on
every broker.

The core uses a transport like this::

    transport = Factory(url)                  # entry point in group "eventbus.transports"
    assert transport.spi_version == SPI_VERSION
    await transport.connect()
    sub = await transport.subscribe(spec, owner)
    await task_group.start(sub.run)           # background work; started() once live
    async for batch in sub:                   # at most spec.prefetch unsettled at a time
        for raw in batch: ...; await raw.ack()  # or publish elsewhere, then ack
    await sub.stop(); ...; await sub.close()  # close() makes run() return
    await transport.close()

Three things a transport tells or is told beyond moving messages:

- **Ownership.** When deliveries it handed out stop being this process's (Kafka partitions
  revoked, an AMQP channel lost), it awaits ``owner.lost(deliveries)``: the core stops work on
  them and returns once no handler runs any of them. Settling them afterwards is a no-op.
- **Lifecycle.** Fetch loops and timers live in `Subscription.run`, which the core runs in its
  own task group: no detached task. If ``run`` raises, the core treats every delivery of the
  subscription as lost, closes it and subscribes again with backoff.
- **Flow.** `Subscription.pause`/`resume` stop and restart fetching without leaving the group.

Redelivery through the broker (retry with delay, ``nack``, ``ack_timeout``) and dead-lettering
are done by the core as *publish, then ack*: the transport needs no native retry or dead-letter
machinery, only `Destination.group` and `Destination.not_before` on publish.

Third-party transports prove themselves with `eventbus.testing.conformance`
(docs/conformance.md).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from anyio.abc import TaskStatus

from eventbus.message import Message

__all__ = [
    "SPI_VERSION",
    "Backlog",
    "Capabilities",
    "DeliveryOwner",
    "Destination",
    "Kind",
    "RawDelivery",
    "ReplyInbox",
    "Subscription",
    "SubscriptionSpec",
    "Transport",
    "TransportFactory",
]

SPI_VERSION = 2
"""The version of this interface. A transport states the one it implements as
``spi_version``; the core refuses a transport built for another one (`transport_for_url`)."""

Kind = Literal["topic", "queue"]
"""``topic``: every group gets every message, one consumer per group (pub/sub).
``queue``: each message goes to exactly one consumer (point-to-point; dead-letter queues too)."""


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a publish goes.

    ``group`` (topics only): deliver to that group's subscription of the topic and to no other
    group; used for retries through the broker and for dead-letter replays. The group's
    subscription must receive it even if the transport implements this with a separate
    per-group destination.

    ``not_before``: absolute Unix time (seconds) before which the message must not be
    delivered; ``None`` for at once. An absolute time rather than a delay, so that a publish
    that waits (a reconnect, a retried publish) does not push the due time further out.
    Delayed messages must not block other messages (of other keys) of the same group or queue
    while they wait. Ordering relative to other messages is not kept for delayed or
    group-targeted messages. A delayed topic publish without a group applies for every group.

    ``reply``: ``name`` is a reply address taken from a request's reply-to (a `ReplyInbox`'s,
    or a foreign requester's): publish there the broker's native way (RabbitMQ: the default
    exchange, routed by the name), creating nothing. `eventbus.UnroutableError` when nobody
    listens there any more.
    """

    name: str
    kind: Kind = "topic"
    group: str | None = None
    not_before: float | None = None
    reply: bool = False

    @property
    def delay(self) -> float:
        """Seconds from now until ``not_before`` (0 when due or not delayed)."""
        if self.not_before is None:
            return 0.0
        return max(0.0, self.not_before - time.time())


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """What to consume.

    ``group``: for topics, the consumer group (every group gets every message; within a group
    each message goes to one subscription, across processes). ``None`` is an ephemeral
    broadcast subscription: it receives what is published while it exists, and nothing it
    leaves unsettled is kept for anyone. Always ``None`` for queues.

    ``prefetch``: the most deliveries the subscription may have yielded and not yet settled;
    the core never holds more. Transports use it for prefetch/pause so memory stays bounded.

    Messages with the same key must be yielded in publish order within a group (Kafka:
    partitions; RabbitMQ: hash partitioning over single-active-consumer queues). The core keeps
    that order while it handles them concurrently.
    """

    name: str
    kind: Kind
    group: str | None
    prefetch: int


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport does natively; the conformance suite gates its cases on these flags,
    never on the URL.

    ``durable``: messages and group positions outlive the client process (false for memory,
    whose broker lives in the process). ``redelivered_flag``: `RawDelivery.redelivered` is
    reported by the broker. ``max_message_size``: largest body the broker accepts, if known.
    ``unbound_topic``: what a topic publish does before any group subscribed to the topic:
    ``"keep"`` (Kafka: the log keeps it; a group created later with ``offset_reset=earliest``
    reads it. Memory: each topic keeps its last ``retention`` messages, 10 000 by default, and
    a group's first subscription starts with them) or ``"refuse"`` (RabbitMQ: nothing would
    receive it, so the publish raises `eventbus.UnroutableError`). Either way a broadcast
    subscription (no group) gets only what is published while it exists. ``native``: the
    `RawDelivery.native` facts every delivery carries (copied into dead letters as
    ``eventbus-original-<name>``). ``backlog``: what `Transport.backlog` counts: ``"lag"``
    (Kafka: the group's offsets behind the log's end, keyed by partition; the
    ``eventbus_consumer_lag_messages`` metric) or ``"depth"`` (RabbitMQ, memory: messages ready
    in a queue, keyed by queue; ``eventbus_queue_depth_messages``).
    """

    durable: bool = True
    redelivered_flag: bool = True
    max_message_size: int | None = None
    unbound_topic: Literal["keep", "refuse"] = "keep"
    native: tuple[str, ...] = ()
    backlog: Literal["lag", "depth"] = "depth"


@runtime_checkable
class RawDelivery(Protocol):
    """One message handed to the core, with the native settle operations.

    Settle operations are idempotent: only the first call of either has an effect (later calls
    return at once). They may be called from any task of the loop, in any order across
    deliveries; the transport maps them to its native model (Kafka: commit only up to the lowest
    unsettled offset of a partition). After the subscription was closed, or once the delivery
    was reported lost (`DeliveryOwner.lost`), settling is a no-op (the message will be
    redelivered to whoever owns it now).
    """

    message: Message
    redelivered: bool
    native: Mapping[str, str]
    """Transport facts copied into dead letters as ``eventbus-original-<name>``
    (Kafka: ``partition`` and ``offset``); the names are `Capabilities.native`."""
    defect: str | None
    """What the transport could not read of this delivery (a property out of range, a record
    its client library could not parse), or None. The core dead-letters a delivery with a
    defect as ``undecodable``, with what could be recovered of it in ``message``: one bad
    delivery must neither stop the subscription nor be handled as if it were whole."""

    async def ack(self) -> None:
        """Done: never deliver this message to this group or queue again."""
        ...

    async def release(self) -> None:
        """Not done: deliver it again later, to this or another subscriber (at the latest once
        this subscription is closed and a new one opened). Never treated as done. The core calls
        it only while stopping (unstarted and cancelled work) and for non-destructive reads."""
        ...


@runtime_checkable
class DeliveryOwner(Protocol):
    """The core's side of a subscription, given to `Transport.subscribe`."""

    async def lost(self, deliveries: Sequence[RawDelivery]) -> None:
        """These handed-out deliveries are no longer this process's (partitions revoked, channel
        lost): another consumer may get them now or soon. Returns once no handler runs any of
        them: unstarted ones never start, async handlers still running them are cancelled, and
        a synchronous handler (a thread, which cannot be cancelled) is waited for. Never raises.
        A transport calls it before it lets the deliveries go when it can (Kafka: inside the
        revocation, before the commit), so that no key is handled in two places at once."""
        ...


@runtime_checkable
class Subscription(Protocol):
    """A live subscription: an async iterator of batches of `RawDelivery`.

    Each batch is a non-empty sequence in fetch order (a transport that fetches one at a time
    yields one-element batches); the deliveries of all batches yielded and not settled never
    exceed ``spec.prefetch``. Iterate from one task only. Iteration ends after `stop`; it raises
    `eventbus.BrokerUnavailableError` only when the transport gave up reconnecting (the core
    then subscribes again with backoff).
    """

    def __aiter__(self) -> AsyncIterator[Sequence[RawDelivery]]: ...

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """The subscription's background work (fetch loops, commit timers, connection
        watchers), run by the core in its task group. Calls ``task_status.started()`` once the
        subscription is live (a message published after that is delivered to it, group joined
        included); returns after `close`. Raising means the subscription is broken: the core
        reports its deliveries lost, closes it and subscribes again with backoff."""
        ...

    def pause(self) -> None:
        """Yield nothing more until `resume`, and stop fetching, keeping the group membership
        (heartbeats, partitions, consumers): a circuit breaker or rate limit above it must not
        cause a rebalance. Deliveries already yielded can still be settled. Idempotent."""
        ...

    def resume(self) -> None:
        """Undo `pause`. Idempotent."""
        ...

    async def stop(self) -> None:
        """Stop fetching for good. Deliveries already yielded can still be settled. Idempotent."""
        ...

    @property
    def connected(self) -> bool:
        """Whether the subscription can receive now: False while its connection is lost and
        being re-established (health checks report the process not ready meanwhile)."""
        ...

    async def close(self) -> None:
        """Release every unsettled delivery, leave the group, free resources, end `run`.
        Idempotent."""
        ...


@runtime_checkable
class ReplyInbox(Protocol):
    """Where the replies to one bus's requests arrive (DESIGN 12), from `Transport.reply_inbox`.

    The core starts `run` in its task group on the bus's first `EventBus.request` and cancels
    it when the bus stops. Replies are not handled like deliveries: no retry, dedup or dead
    letter. Each is given to ``deliver`` once, settled at once, and matched by its
    ``correlation_id`` (one that matches no waiting request is counted and dropped).
    """

    async def address(self) -> str:
        """The reply-to for a request sent now. Waits while the inbox holds none (Kafka: no
        partition of the reply topic is leased to this bus yet)."""
        ...

    async def run(
        self, deliver: Callable[[Message], None], *, task_status: TaskStatus[None]
    ) -> None:
        """Receive replies until cancelled; ``task_status.started()`` once receiving."""
        ...


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits for one group or queue, as the broker sees it (``eventbus status``, the lag
    and depth metrics). Read from outside the consumers: any process can ask."""

    waiting: Mapping[str, int]
    """Messages not yet handled, per partition: on Kafka each partition's consumer lag (end
    offset minus the group's committed offset), keyed by partition number; on RabbitMQ the ready
    messages of each queue of the group (one, or a partitioned group's N), keyed by queue name."""
    consumers: int | None
    """Members of the group, or consumers of its queue(s); None when the broker cannot say."""

    @property
    def total(self) -> int:
        return sum(self.waiting.values())


@runtime_checkable
class Transport(Protocol):
    """A broker connection. One per `EventBus`; shared by all its subscriptions.

    Methods are safe to call concurrently from many tasks. ``connect`` raises
    `eventbus.BrokerUnavailableError` naming the address; after that, lost connections are
    re-established with backoff and publishes wait (bounded) instead of failing at once.

    Optionally a transport names its broker for tracing in a ``messaging_system`` attribute
    (OpenTelemetry's ``messaging.system``: ``"kafka"``, ``"rabbitmq"``); without it a traced bus
    uses the URL scheme.

    Optionally, a transport whose delayed messages need moving on by a client (delay tiers:
    RabbitMQ) has ``async def forward_scheduled(*, task_status)``: every bus started with its
    consumers runs it in its task group, calls ``task_status.started()`` once it forwards, and
    cancels it when it stops. It must settle a message only once its next hop is confirmed.

    Optionally, ``asyncapi_bindings(kind, name, group) -> dict`` describes a topic or queue in
    AsyncAPI 3 protocol bindings, for ``eventbus asyncapi``: ``{"channel": {...}, "receive":
    {...}, "message": {...}}``, each keyed by protocol (``{"kafka": {...}}``).

    Optionally, ``reply_inbox() -> ReplyInbox`` gives a new inbox for the replies to one bus's
    requests (`EventBus.request`); without it a bus on this transport cannot make requests. Its
    ``publish`` must then also honour `Destination.reply`.
    """

    spi_version: int
    """`SPI_VERSION` the transport implements."""
    capabilities: Capabilities

    async def connect(self) -> None: ...

    async def close(self) -> None:
        """Close every subscription (releasing unsettled deliveries) and the connection."""
        ...

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        """Publish and return after the broker confirmed every message (durably where the
        broker can). Creates the topic or queue if needed. On failure raise
        `eventbus.PublishError` whose ``failures`` maps the indices of unconfirmed messages to
        their causes (`UnroutableError` when nothing would receive the message,
        `MessageTooLargeError` when it is too big)."""
        ...

    async def subscribe(self, spec: SubscriptionSpec, owner: DeliveryOwner) -> Subscription:
        """Declare what is needed and return the subscription, not yet live: the core then
        starts `Subscription.run`, which joins and fetches. ``owner`` is told of lost
        deliveries."""
        ...

    async def depth(self, name: str, kind: Kind) -> int | None:
        """Messages waiting in a queue (or unread by a topic's queue reader); None for a topic,
        or a queue that does not exist. Never creates it (no declare, no broker
        auto-creation). Used by the ``eventbus dlq`` commands, which refuse a queue whose depth
        is None (`eventbus.NotFoundError`) rather than subscribe and so create it."""
        ...

    async def backlog(self, spec: SubscriptionSpec) -> Backlog | None:
        """What waits for the group or queue ``spec`` names (``spec.prefetch`` is ignored);
        None when it does not exist yet. A broadcast subscription (no group) has none."""
        ...


class TransportFactory(Protocol):
    """What an ``eventbus.transports`` entry point loads: usually the transport class."""

    def __call__(self, url: str) -> Transport: ...
