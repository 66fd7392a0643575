"""Names and declarations of everything eventbus creates on the broker (drawn in the README).

Every declaration is idempotent (same name, same arguments) and cached per transport, so the
hot publish path pays one broker round trip per entity per process. The cache is dropped when
the broker says an entity is gone (someone deleted it, or the broker was reset).

    topic            durable fanout exchange  <topic>
    group            durable queue            <topic>.<group>          bound to <topic>
    partitioned      x-modulus-hash exchange  <topic>.<group>          bound to <topic>
      group          N durable queues         <topic>.<group>.<i>      single-active-consumer
    queue            durable queue            <name>                   (default exchange)
    broadcast        exclusive auto-delete    (server-named)           bound to <topic>
    delay            fanout exchange + queue  eventbus.delay.<ms>[.<exchange>]
                     dead-lettering to <exchange> (default: "") with the original routing key
                     (only for what is due in less than the shortest tier)
    delay tier       durable queue            eventbus.tier[.quorum].<seconds>s
                     x-message-ttl = the tier, dead-lettering to eventbus.scheduled[.quorum]
    scheduled        durable queue            eventbus.scheduled[.quorum]
                     read by every started bus, which sends each message on
                     (`eventbus.transports.scheduling`)
"""

from __future__ import annotations

import math
from typing import Any

from aiormq import exceptions as amqp
from aiormq.abc import AbstractChannel, AbstractConnection

from eventbus.errors import ConfigurationError
from eventbus.loggers import get_logger
from eventbus_rabbitmq.connection import open_channel
from eventbus_rabbitmq.url import Settings

__all__ = ["Topology", "check_name", "delay_bucket", "group_queue", "partition_queue"]

log = get_logger("eventbus.rabbitmq")

# Delay queue buckets (ms). Each message carries its exact delay as per-message expiration, so
# it is never delivered early; the bucket only bounds how late it can be when a message with a
# longer delay is ahead of it in the same queue (expiry happens at the head). A short, fixed
# list keeps the number of queues small.
_BUCKETS_MS = (
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    150_000,
    300_000,
    900_000,
    1_800_000,
    3_600_000,
    3 * 3_600_000,
    6 * 3_600_000,
    12 * 3_600_000,
    24 * 3_600_000,
    7 * 24 * 3_600_000,
)
# RabbitMQ rejects per-message TTLs above 2^32-1 ms.
MAX_DELAY_MS = 2**32 - 1

_FANOUT = "fanout"
# Partitioned groups route with x-modulus-hash (plugin rabbitmq_sharding): the queue is
# hash(routing key) mod N over the bound queues *sorted by name*, so a key maps to the same
# queue whatever order the bindings were made or recovered in. x-consistent-hash (used by 0.1)
# numbers its buckets in binding order and rebuilds them when the broker restarts, in the
# order it recovers the bindings: keys move to other queues, and a key's next messages can be
# handled before the ones still queued in its old partition.
_MODULUS_HASH = "x-modulus-hash"
_CONSISTENT_HASH = "x-consistent-hash"


_MAX_NAME = 255  # bytes, AMQP short string


def check_name(name: str, *, group: str | None = None, partitions: int = 1) -> None:
    """Reject names RabbitMQ would refuse (empty, reserved ``amq.``, too long with suffixes)."""
    for part, what in ((name, "name"), (group, "group")):
        if part is None:
            continue
        if not part:
            raise ConfigurationError(f"RabbitMQ {what} must not be empty")
        if part.startswith("amq."):
            raise ConfigurationError(f"RabbitMQ reserves names starting with 'amq.': {part!r}")
    longest = name
    if group is not None:
        # The longest name derived from it: "<topic>.<group>.<i>.owner" or ".dlq"/".members".
        longest = f"{name}.{group}.{max(partitions - 1, 0)}.members"
    if len(longest.encode()) > _MAX_NAME:
        raise ConfigurationError(
            f"RabbitMQ names are limited to {_MAX_NAME} bytes; {longest!r} would be longer"
        )


def group_queue(topic: str, group: str) -> str:
    return f"{topic}.{group}"


def partition_queue(topic: str, group: str, index: int) -> str:
    return f"{topic}.{group}.{index}"


def delay_ms(seconds: float) -> int:
    """Delay in whole ms, rounded up: a message must never arrive early."""
    ms = math.ceil(seconds * 1000)
    if ms > MAX_DELAY_MS:
        raise ConfigurationError(
            f"delay {seconds} s is longer than RabbitMQ's maximum message TTL ({MAX_DELAY_MS} ms)"
        )
    return max(ms, 1)


def delay_bucket(ms: int) -> int:
    for bucket in _BUCKETS_MS:
        if ms <= bucket:
            return bucket
    return _BUCKETS_MS[-1]


class Topology:
    """Declares entities on a channel given by the caller and remembers what exists."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._declared: set[tuple[str, str]] = set()

    def declared(self, kind: str, name: str) -> bool:
        """Whether ``name`` is known to exist (``kind``: "x" topic, "q" queue)."""
        return (kind, name) in self._declared

    def forget(self) -> None:
        """Something we declared is gone: declare again from now on."""
        self._declared.clear()

    # -- arguments --------------------------------------------------------------------------

    def queue_arguments(self, *, single_active: bool = False) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self._settings.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
            if self._settings.delivery_limit is not None:
                args["x-delivery-limit"] = self._settings.delivery_limit
        if single_active:
            args["x-single-active-consumer"] = True
        return args

    # -- entities ---------------------------------------------------------------------------

    async def topic(self, channel: AbstractChannel, topic: str) -> None:
        if ("x", topic) in self._declared:
            return
        await channel.exchange_declare(topic, exchange_type=_FANOUT, durable=True)
        self._mark("x", topic)

    async def queue(self, channel: AbstractChannel, name: str) -> None:
        if ("q", name) in self._declared:
            return
        await channel.queue_declare(name, durable=True, arguments=self.queue_arguments())
        self._mark("q", name)

    async def group(
        self, conn: AbstractConnection, channel: AbstractChannel, topic: str, group: str
    ) -> list[str]:
        """Declare a group's queue(s) on ``channel``, bound to the topic; return the queue
        names. ``conn`` is ``channel``'s connection (for a partitioned group's exchange)."""
        await self.topic(channel, topic)
        partitions = self._settings.partitions
        if partitions == 1:
            name = group_queue(topic, group)
            if ("g", name) not in self._declared:
                await channel.queue_declare(name, durable=True, arguments=self.queue_arguments())
                await channel.queue_bind(name, topic)
                self._mark("g", name)
            return [name]
        # Partitioned: the topic fans out to a hashing exchange, which spreads routing keys
        # (message keys) over the partition queues; one key always lands in one queue.
        hub = group_queue(topic, group)
        names = [partition_queue(topic, group, i) for i in range(partitions)]
        if ("p", hub) not in self._declared:
            binding_key = await self._hub(conn, hub, partitions)
            arguments = self.queue_arguments(single_active=True)
            for name in names:
                await channel.queue_declare(name, durable=True, arguments=arguments)
                await channel.queue_bind(name, hub, routing_key=binding_key)
            # Fed only once every partition is bound: a message routed over some of them would
            # sit in a queue its key no longer maps to once all are.
            await channel.exchange_bind(destination=hub, source=topic, routing_key="")
            self._mark("p", hub)
        return names

    async def _hub(self, conn: AbstractConnection, hub: str, partitions: int) -> str:
        """Declare a partitioned group's exchange; return the binding key of its queues.

        A group created by 0.1 has an x-consistent-hash exchange, whose binding key is the
        queue's weight ("1"): it is kept, with a warning, as its workers may still run. Each
        try is made on a channel of its own: a refused declaration closes its channel."""
        scratch = await open_channel(conn, publisher_confirms=False)
        try:
            await scratch.exchange_declare(hub, exchange_type=_MODULUS_HASH, durable=True)
            return ""
        except amqp.ChannelPreconditionFailed:
            pass  # it exists with another type
        except amqp.ConnectionCommandInvalid as e:
            # An unknown exchange type closes the whole connection (503).
            raise ConfigurationError(
                f"partitions={partitions} needs the RabbitMQ plugin rabbitmq_sharding "
                f"(rabbitmq-plugins enable rabbitmq_sharding): {e}"
            ) from e
        finally:
            if not scratch.is_closed:
                await scratch.close()
        scratch = await open_channel(conn, publisher_confirms=False)
        try:
            await scratch.exchange_declare(hub, exchange_type=_CONSISTENT_HASH, durable=True)
        except amqp.ChannelPreconditionFailed as e:
            raise ConfigurationError(
                f"exchange {hub!r} exists with a type a partitioned group cannot use; "
                f"delete it or use another group name: {e}"
            ) from e
        finally:
            if not scratch.is_closed:
                await scratch.close()
        log.warning(
            "partitioned group exchange %r is an x-consistent-hash exchange made by eventbus "
            "0.1: a RabbitMQ restart may move keys to other partitions and break per-key order "
            "for the messages queued then; see docs/upgrading.md to move it to x-modulus-hash",
            hub,
        )
        return "1"

    async def broadcast(self, channel: AbstractChannel, topic: str) -> str:
        """A fresh server-named queue that lives as long as this connection (never cached)."""
        await self.topic(channel, topic)
        ok = await channel.queue_declare("", exclusive=True, auto_delete=True)
        assert ok.queue is not None
        await channel.queue_bind(ok.queue, topic)
        return ok.queue

    async def delay(self, channel: AbstractChannel, ms: int, target_exchange: str) -> str:
        """The exchange to publish to for a message due in ``ms`` that must then go to
        ``target_exchange`` (with its original routing key). Returns the exchange name."""
        bucket = delay_bucket(ms)
        quorum = self._settings.queue_type == "quorum"
        name = f"eventbus.delay{'.quorum' if quorum else ''}.{bucket}"
        if target_exchange:
            name = f"{name}.{target_exchange}"
        if ("d", name) in self._declared:
            return name
        args: dict[str, Any] = {"x-dead-letter-exchange": target_exchange}
        if quorum:
            # Quorum queues can dead-letter at-least-once (3.10+): the message leaves the delay
            # queue only once the target confirmed it. That needs reject-publish overflow.
            args.update(
                {
                    "x-queue-type": "quorum",
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            )
        await channel.exchange_declare(name, exchange_type=_FANOUT, durable=True)
        await channel.queue_declare(name, durable=True, arguments=args)
        await channel.queue_bind(name, name)
        self._mark("d", name)
        return name

    def scheduled_queue(self) -> str:
        """Where delay tiers dead-letter to, read by the forwarder of every started bus."""
        return (
            "eventbus.scheduled.quorum"
            if self._settings.queue_type == "quorum"
            else ("eventbus.scheduled")
        )

    async def tier(self, channel: AbstractChannel, seconds: int) -> str:
        """The queue where a message waits exactly ``seconds`` (a queue-wide TTL: every
        message waits as long, so the head is always the first due and nothing waits behind a
        longer delay), then is dead-lettered to `scheduled_queue`, declared first so that a
        message never expires into nothing. Returns the tier queue's name."""
        quorum = self._settings.queue_type == "quorum"
        name = f"eventbus.tier{'.quorum' if quorum else ''}.{seconds}s"
        if ("q", name) in self._declared:
            return name
        await self.queue(channel, self.scheduled_queue())
        # A quorum queue whatever `queue_type` says: only quorum queues dead-letter at least
        # once (3.10+), the message leaving the tier only once the scheduled queue confirmed
        # it. A classic queue dead-letters at most once, and a broker crash at that moment
        # would lose a message that waited, possibly for days, to be delivered.
        args: dict[str, Any] = {
            "x-message-ttl": seconds * 1000,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.scheduled_queue(),
            "x-queue-type": "quorum",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        await channel.queue_declare(name, durable=True, arguments=args)
        self._mark("q", name)
        return name

    def _mark(self, kind: str, name: str) -> None:
        self._declared.add((kind, name))
