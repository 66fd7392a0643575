"""`RabbitMQTransport`: the eventbus transport SPI over RabbitMQ (AMQP 0-9-1, via aiormq).

Entry points ``amqp`` and ``amqps`` load this class; the core builds it as
``RabbitMQTransport(url)``. See the package README for topology and URL options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import anyio
from aiormq import exceptions as amqp
from anyio.abc import TaskStatus

from eventbus.errors import BrokerUnavailableError, ConfigurationError
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus.transports.base import (
    Backlog,
    Capabilities,
    DeliveryOwner,
    Destination,
    Kind,
    Subscription,
    SubscriptionSpec,
)
from eventbus.transports.scheduling import PREFETCH, Forwarder
from eventbus_rabbitmq.connection import Connector, open_channel
from eventbus_rabbitmq.errors import translate
from eventbus_rabbitmq.partitions import Locks
from eventbus_rabbitmq.publisher import Publisher
from eventbus_rabbitmq.replies import RabbitReplyInbox
from eventbus_rabbitmq.subscription import RabbitSubscription
from eventbus_rabbitmq.topology import Topology, check_name, group_queue, partition_queue
from eventbus_rabbitmq.url import parse_url

__all__ = ["RabbitMQTransport"]

log = get_logger("eventbus.rabbitmq")

# RabbitMQ's default max_message_size: 128 MiB up to 3.13, 16 MiB from 4.0.
_MIB = 1024 * 1024


class RabbitMQTransport:
    """See `eventbus.transports.base.Transport` for the contract."""

    spi_version = 2
    """The transport SPI version this adapter implements (a literal: the core compares it with
    its own `SPI_VERSION` and refuses a mismatch)."""
    messaging_system = "rabbitmq"
    """OpenTelemetry's ``messaging.system`` for the spans of a traced bus."""

    def __init__(self, url: str) -> None:
        self._settings = parse_url(url)
        self._publishing = Connector(self._settings, "publisher")
        # Consumers get their own connection: RabbitMQ blocks publishing connections under
        # resource alarms, and acks must still flow then.
        self._consuming = Connector(self._settings, "consumer")
        self._topology = Topology(self._settings)
        self._publisher = Publisher(self._publishing, self._topology, self._settings)
        self._locks = Locks()
        self._subscriptions: list[RabbitSubscription] = []
        self.capabilities = Capabilities(
            durable=True,
            redelivered_flag=True,
            max_message_size=self._settings.max_message_size or 128 * _MIB,
            # A topic is a fanout exchange: with no group's queue bound, nothing would receive
            # a message, so a publish is returned (mandatory) and raises UnroutableError.
            unbound_topic="refuse",
            native=("queue",),
        )
        self._publisher.max_message_size = self.capabilities.max_message_size

    def __repr__(self) -> str:
        return f"<RabbitMQTransport {self._settings.address}>"

    async def connect(self) -> None:
        conn = await self._publishing.get(within=self._settings.connect_timeout)
        if self._settings.max_message_size is None:
            version = conn.server_properties.get("version", b"")
            if isinstance(version, bytes):
                version = version.decode(errors="replace")
            major = str(version).split(".", 1)[0]
            if major.isdigit() and int(major) >= 4:
                self.capabilities = dataclasses.replace(
                    self.capabilities, max_message_size=16 * _MIB
                )
                self._publisher.max_message_size = 16 * _MIB

    async def close(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.close()
        await self._publishing.close()
        await self._consuming.close()

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        if not messages:
            return
        if not to.reply:  # a reply address is the requester's, whatever its name
            check_name(to.name, group=to.group, partitions=self._settings.partitions)
        if to.kind == "queue" and to.group is not None:
            raise ConfigurationError(f"queue {to.name!r}: groups apply to topics only")
        await self._publisher.publish(to, messages)

    def reply_inbox(self) -> RabbitReplyInbox:
        """An exclusive reply queue for one bus's requests (`eventbus_rabbitmq.replies`)."""
        return RabbitReplyInbox(self._consuming, self._settings)

    async def forward_scheduled(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Move scheduled messages on from the delay tiers until cancelled (`scheduling`).
        Every started bus runs it; a bus that only publishes does not need to."""
        queue = self._topology.scheduled_queue()
        spec = SubscriptionSpec(queue, "queue", None, PREFETCH)

        async def subscribe(owner: DeliveryOwner) -> Subscription:
            return await self.subscribe(spec, owner)

        forwarder = Forwarder(subscribe, self.publish, dead_letters=f"{queue}.dlq")
        await forwarder.run(task_status=task_status)

    async def subscribe(self, spec: SubscriptionSpec, owner: DeliveryOwner) -> Subscription:
        """Validate and return the subscription; it declares and consumes in its ``run``."""
        check_name(spec.name, group=spec.group, partitions=self._settings.partitions)
        if spec.kind == "queue" and spec.group is not None:
            raise ConfigurationError(f"queue {spec.name!r}: groups apply to topics only")
        if spec.prefetch < 1:
            raise ConfigurationError(f"prefetch must be >= 1, got {spec.prefetch}")
        subscription = RabbitSubscription(
            spec,
            owner,
            settings=self._settings,
            connector=self._consuming,
            topology=self._topology,
            locks=self._locks,
            on_closed=self._forget,
        )
        self._subscriptions.append(subscription)
        return subscription

    def _forget(self, subscription: RabbitSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def asyncapi_bindings(
        self, kind: Kind, name: str, group: str | None
    ) -> dict[str, dict[str, Any]]:
        """AsyncAPI AMQP bindings (0.3.0): a topic is a durable fanout exchange, a queue a
        durable queue on the default exchange; a group reads its own queue ``<topic>.<group>``
        (`eventbus.asyncapi`)."""
        version = {"bindingVersion": "0.3.0"}
        vhost = self._settings.vhost
        channel: dict[str, Any]
        if kind == "topic":
            exchange = {"name": name, "type": "fanout", "durable": True, "autoDelete": False}
            channel = {"is": "routingKey", "exchange": {**exchange, "vhost": vhost}}
        else:
            queue = {"name": name, "durable": True, "exclusive": False, "autoDelete": False}
            channel = {"is": "queue", "queue": {**queue, "vhost": vhost}}
        return {
            "channel": {"amqp": {**channel, **version}},
            "receive": {"amqp": {"ack": True, **version}},
            "message": {"amqp": {"contentEncoding": "identity", **version}},
        }

    async def depth(self, name: str, kind: Kind) -> int | None:
        """Messages ready in queue ``name`` (not those delivered and unacked); None for topics,
        which hold nothing themselves, and for queues that do not exist."""
        if kind != "queue":
            return None
        found = await self._inspect(name)
        return found[0] if found is not None else None

    async def backlog(self, spec: SubscriptionSpec) -> Backlog | None:
        """Ready messages per queue of the group (or of the queue), and its consumers. Whether
        a group is partitioned, and into how many queues, is read from the broker, so any
        process can ask (``eventbus status`` has no ``partitions`` option)."""
        if spec.kind == "queue":
            queues = [spec.name]
        elif spec.group is None:
            return None  # a broadcast queue is private to its subscriber
        else:
            queues = [group_queue(spec.name, spec.group)]
        found = await self._inspect(queues[0])
        if found is not None:
            return Backlog(waiting={queues[0]: found[0]}, consumers=found[1])
        if spec.group is None:
            return None
        waiting: dict[str, int] = {}
        while found := await self._inspect(partition_queue(spec.name, spec.group, len(waiting))):
            waiting[partition_queue(spec.name, spec.group, len(waiting))] = found[0]
        if not waiting:
            return None
        # Every member consumes the group's membership queue (partitions.py).
        members = await self._inspect(f"{group_queue(spec.name, spec.group)}.members")
        return Backlog(waiting=waiting, consumers=members[1] if members is not None else None)

    async def _inspect(self, queue: str) -> tuple[int, int] | None:
        """A queue's ready messages and consumers; None if it does not exist."""
        bound = self._settings.publish_timeout
        conn = await self._publishing.get(within=bound)
        try:
            # Bounded: `eventbus status` and `dlq` must not hang on a broker that never answers.
            with anyio.fail_after(bound):
                # A passive declare of a missing queue closes the channel: use a throwaway one.
                channel = await open_channel(conn, publisher_confirms=False)
                try:
                    ok = await channel.queue_declare(queue, passive=True)
                except amqp.ChannelNotFoundEntity:
                    return None
                except (amqp.AMQPError, amqp.ChannelInvalidStateError, OSError) as e:
                    what = f"inspect {queue!r}"
                    raise translate(e, address=self._settings.address, what=what) from e
                finally:
                    if not channel.is_closed:
                        with anyio.move_on_after(1.0, shield=True):
                            await channel.close()
        except TimeoutError:
            raise BrokerUnavailableError(
                self._settings.address, f"no answer within {bound:g} s inspecting {queue!r}"
            ) from None
        return ok.message_count or 0, ok.consumer_count or 0
