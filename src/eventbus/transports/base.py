"""The transport SPI: the few operations a broker adapter implements.

A transport only moves bytes and settles deliveries natively. Everything with a policy in it --
decoding, retries and backoff, dead letters, deduplication, key lanes, in-flight bounds, graceful
shutdown -- lives once in `eventbus.dispatch`, above this interface, so it behaves the same on
every broker.

The core uses a transport like this::

    transport = Factory(url)                  # entry point in group "eventbus.transports"
    await transport.connect()
    sub = await transport.subscribe(spec)     # returns once the subscription is live
    async for raw in sub:                     # at most spec.prefetch unsettled at a time
        ...; await raw.ack()                  # or publish elsewhere, then ack
    await sub.stop(); ...; await sub.close()
    await transport.close()

Redelivery through the broker (retry with delay, ``nack``, ``ack_timeout``) and dead-lettering
are done by the core as *publish, then ack*: the transport needs no native retry or dead-letter
machinery, only `Destination.group` and `Destination.delay` on publish.

Third-party transports prove themselves with `eventbus.testing.conformance`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from eventbus.message import Message

__all__ = [
    "Capabilities",
    "Destination",
    "Kind",
    "RawDelivery",
    "Subscription",
    "SubscriptionSpec",
    "Transport",
    "TransportFactory",
]

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

    ``delay``: do not deliver before ``delay`` seconds from now. Delayed messages must not block
    other messages (of other keys) of the same group or queue while they wait. Ordering
    relative to other messages is not kept for delayed or group-targeted messages. The core
    only delays group-targeted or queue messages; a delayed topic publish without a group
    applies the delay for every group.
    """

    name: str
    kind: Kind = "topic"
    group: str | None = None
    delay: float = 0.0


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
    partitions; RabbitMQ: consistent hashing over single-active-consumer queues). The core keeps
    that order while it handles them concurrently.
    """

    name: str
    kind: Kind
    group: str | None
    prefetch: int


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport can do natively; the conformance suite reads these flags.

    ``durable``: messages and group positions outlive the client process (false for memory,
    whose broker lives in the process). ``redelivered_flag``: `RawDelivery.redelivered` is
    reported by the broker. ``max_message_size``: largest body the broker accepts, if known.
    """

    durable: bool = True
    redelivered_flag: bool = True
    max_message_size: int | None = None


@runtime_checkable
class RawDelivery(Protocol):
    """One message handed to the core, with the native settle operations.

    Settle operations are idempotent: only the first call of either has an effect (later calls
    return at once). They may be called from any task of the loop, in any order across
    deliveries; the transport maps them to its native model (Kafka: commit only up to the lowest
    unsettled offset of a partition). After the subscription was closed, or the partition was
    revoked, settling is a no-op (the message will be redelivered to whoever owns it now).
    """

    message: Message
    redelivered: bool
    native: Mapping[str, str]
    """Transport facts copied into dead letters as ``eventbus-original-<name>``
    (Kafka: ``partition`` and ``offset``)."""

    async def ack(self) -> None:
        """Done: never deliver this message to this group or queue again."""
        ...

    async def release(self) -> None:
        """Not done: deliver it again later, to this or another subscriber (at the latest once
        this subscription is closed and a new one opened). Never treated as done. The core calls
        it only while stopping (unstarted and cancelled work) and for non-destructive reads."""
        ...


@runtime_checkable
class Subscription(Protocol):
    """A live subscription: an async iterator of `RawDelivery`.

    Iterate it from one task only. Iteration ends after `stop`. Raises
    `eventbus.BrokerUnavailableError` only when the transport gave up reconnecting.
    """

    def __aiter__(self) -> AsyncIterator[RawDelivery]: ...

    async def stop(self) -> None:
        """Stop fetching. Deliveries already yielded can still be settled. Idempotent."""
        ...

    async def close(self) -> None:
        """Release every unsettled delivery, leave the group, free resources. Idempotent."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A broker connection. One per `EventBus`; shared by all its subscriptions.

    Methods are safe to call concurrently from many tasks. ``connect`` raises
    `eventbus.BrokerUnavailableError` naming the address; after that, lost connections are
    re-established with backoff and publishes wait (bounded) instead of failing at once.
    """

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

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        """Declare what is needed and start consuming; return once the subscription is live
        (a message published after this returns is delivered to it, group joined included)."""
        ...

    async def depth(self, name: str, kind: Kind) -> int | None:
        """Messages waiting in a queue (or unread by a topic's queue reader); None if unknown
        or if it does not exist. Used by the ``eventbus dlq`` commands."""
        ...


class TransportFactory(Protocol):
    """What an ``eventbus.transports`` entry point loads: usually the transport class."""

    def __call__(self, url: str) -> Transport: ...
