"""`KafkaTransport`: the eventbus transport SPI over aiokafka (``kafka://`` URLs)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from eventbus.backoff import Backoff
from eventbus.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    EventBusError,
    PublishError,
    UnroutableError,
)
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus.transports import scheduling
from eventbus.transports.base import (
    Backlog,
    Capabilities,
    DeliveryOwner,
    Destination,
    Kind,
    Subscription,
    SubscriptionSpec,
)
from eventbus.transports.publishing import publish_error
from eventbus_kafka.admin import UNKNOWN_TOPIC, TopicAdmin
from eventbus_kafka.errors import is_fatal, translate
from eventbus_kafka.handshake import refusal
from eventbus_kafka.producer import Producer
from eventbus_kafka.replies import KafkaReplyInbox, reply_partition
from eventbus_kafka.subscription import KafkaSubscription
from eventbus_kafka.topology import (
    SCHEDULER_GROUP,
    consumer_group,
    destination_topic,
    retry_topic,
    subscribed_topics,
    tier_topic,
    validate_name,
)
from eventbus_kafka.url import KafkaSettings, parse_url
from eventbus_kafka.wire import KafkaRecord, to_record

__all__ = ["KafkaTransport"]

log = get_logger(__name__)

_CLIENT_CLOSE_TIMEOUT = 10.0
REPLY_TOPIC_GRACE = 2.0
"""Seconds a reply topic the broker calls missing is asked for again before a reply to it is
dropped: in a cluster, the brokers learn of a topic just created one after the other."""


class KafkaTransport:
    """Kafka through aiokafka. One idempotent producer and one admin connection per transport;
    one consumer per subscription (one consumer group per eventbus group).

    Safe to use from many tasks of one event loop. ``connect`` retries for
    ``connect_timeout`` seconds, then raises `BrokerUnavailableError` naming the bootstrap
    servers; later outages are ridden out by aiokafka's reconnects (publishes wait up to
    ``publish_timeout``).
    """

    spi_version = 2
    """The SPI this adapter was built for; checked by the registry. A literal, not the core's
    ``SPI_VERSION``, which would always match whatever core is installed."""
    messaging_system = "kafka"
    """OpenTelemetry's ``messaging.system`` for the spans of a traced bus."""

    def __init__(self, url: str) -> None:
        self.settings: KafkaSettings = parse_url(url)
        self.capabilities = Capabilities(
            durable=True,
            # Kafka does not say whether a record was delivered before.
            redelivered_flag=False,
            max_message_size=self.settings.max_message_size,
            # The log keeps what is published before any group exists; a group created later
            # with offset_reset=earliest reads it.
            unbound_topic="keep",
            native=("partition", "offset"),
            backlog="lag",
        )
        self._admin = TopicAdmin(self.settings)
        self._reply_topics: set[str] = set()  # reply topics known to exist
        self._producer = Producer(self.settings)
        self._subscriptions: set[KafkaSubscription] = set()
        self._offsets_reader: Any = None
        self._connected = False

    def __repr__(self) -> str:
        return f"<KafkaTransport {self.settings.address}>"

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connected:
            return
        settings = self.settings
        deadline = asyncio.get_running_loop().time() + settings.connect_timeout
        backoff = Backoff(0.2, 2.0)
        last: BaseException | None = None
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._producer.start()
                    await self._admin.start()
                self._connected = True
                return
            except TimeoutError as exc:
                last = last or exc
            except Exception as exc:
                if is_fatal(exc):
                    await self._stop_clients()
                    raise translate(exc, settings.address, settings.user) from exc
                last = exc
            await self._stop_clients()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):  # within connect_timeout, as promised
                    refused = await refusal(settings)
                    if refused is not None:
                        raise refused from last
            wait = backoff.next()
            if asyncio.get_running_loop().time() + wait >= deadline:
                raise BrokerUnavailableError(
                    settings.address,
                    f"no answer within connect_timeout={settings.connect_timeout}s ({last!r})",
                ) from last
            await asyncio.sleep(wait)

    async def close(self) -> None:
        subscriptions, self._subscriptions = list(self._subscriptions), set()
        for sub in subscriptions:
            try:
                await sub.close()
            except Exception:
                log.exception("closing %r failed", sub)
        await self._stop_clients()
        self._connected = False

    async def _stop_clients(self) -> None:
        # The producer flushes what is queued first; with the broker gone that is bounded by
        # publish_timeout (those publishes fail, their callers know).
        bounded = (
            (self._producer.stop, self.settings.publish_timeout),
            (self._admin.close, _CLIENT_CLOSE_TIMEOUT),
            (self._close_offsets_reader, _CLIENT_CLOSE_TIMEOUT),
        )
        for stop, within in bounded:
            try:
                await asyncio.wait_for(stop(), within)
            except Exception:
                log.warning("stopping a Kafka client failed", exc_info=True)

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, to: Destination, messages: Sequence[Message]) -> None:
        """Send every message and return once Kafka acknowledged all of them (``acks=all``).

        This is also the high-throughput path: pass many messages in one call and they are
        batched per partition, with one wait for all acknowledgements. On failure raises
        `PublishError` listing only the failed indices (`MessageTooLargeError` when every
        failure is a size error)."""
        if not messages:
            return
        if to.reply:
            await self._reply(to.name, messages)
            return
        if to.not_before is not None:
            tier = scheduling.tier_for(to.delay)
            if tier is not None:
                await self._publish_to_tier(to, tier, messages)
                return
        topic = destination_topic(to)
        # What the retry topic's consumer needs: the group the message is meant for (topics
        # only: a queue's retry topic has one reader) and when it is due.
        group = to.group if to.kind == "topic" else None
        not_before = to.not_before
        await self._send(
            topic,
            messages,
            lambda: [to_record(m, target_group=group, not_before=not_before) for m in messages],
        )

    async def _reply(self, address: str, messages: Sequence[Message]) -> None:
        """To a requester's leased partition of its reply topic (`eventbus_kafka.replies`), or
        a foreign requester's plain topic (partitioned by key). Nothing is created: the topic
        is the requester's, and a reply-to from a foreign producer must not make this service
        create topics (nor wait for one until ``publish_timeout``, where the broker does not
        create them, and run the handler again)."""
        topic, partition = reply_partition(address)
        try:
            validate_name(topic)
        except ConfigurationError as exc:
            # A foreign producer's reply-to that is no topic: nobody could ever read it there.
            raise UnroutableError(f"reply-to {address!r} is not a Kafka topic ({exc})") from None
        await self._check_reply_topic(topic)
        failures = await self._producer.send_all(topic, [to_record(m) for m in messages], partition)
        if failures:
            self._reply_topics.discard(topic)  # deleted meanwhile? the next reply asks again
            raise publish_error(failures, messages, f"reply topic {topic!r}")

    async def _check_reply_topic(self, topic: str) -> None:
        """`UnroutableError` when the broker says reply topic ``topic`` does not exist and
        still says so after `REPLY_TOPIC_GRACE`. A topic found is not asked for again (until
        a reply to it fails); any other answer, or none, leaves it to the send."""
        if topic in self._reply_topics:
            return
        deadline = time.monotonic() + REPLY_TOPIC_GRACE
        try:
            while True:
                code = await asyncio.wait_for(
                    self._admin.topic_error(topic), self.settings.publish_timeout
                )
                if code != UNKNOWN_TOPIC or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.25)
        except Exception:  # no answer: the send fails or succeeds on its own
            log.debug("cannot tell whether reply topic %r exists", topic, exc_info=True)
            return
        if code == UNKNOWN_TOPIC:
            raise UnroutableError(f"reply topic {topic!r} does not exist")
        if code == 0:
            self._reply_topics.add(topic)

    def reply_inbox(self) -> KafkaReplyInbox:
        """A lease on a partition of the app's reply topic (`eventbus_kafka.replies`)."""
        return KafkaReplyInbox(self.settings, self._admin)

    async def _publish_to_tier(
        self, to: Destination, tier: int, messages: Sequence[Message]
    ) -> None:
        """Into delay tier ``tier`` (`eventbus.transports.scheduling`): each record waits there
        ``tier`` seconds after it is written, stamped with its destination and due time. Every
        record of a tier topic waits as long, so its partitions are in due order and pausing one
        until its head is due holds back nothing due sooner."""
        destination_topic(to)  # the destination's names are checked now, not when due

        def records() -> list[KafkaRecord]:
            leaves = time.time() + tier  # never after the due time: tier <= the delay left
            return [to_record(scheduling.stamp(m, to), not_before=leaves) for m in messages]

        await self._send(tier_topic(tier), messages, records)

    async def _send(
        self,
        topic: str,
        messages: Sequence[Message],
        records: Callable[[], list[KafkaRecord]],
    ) -> None:
        """Make sure ``topic`` exists, send the ``records()`` of ``messages`` to it and wait
        for every acknowledgement; `PublishError` for the ones that failed (a topic that cannot
        be created fails them all). The records are built once the topic exists."""
        if not self._admin.ensured(topic):
            try:
                await self._admin.ensure_topics([topic])
            except BrokerUnavailableError as exc:
                raise PublishError(
                    f"cannot publish to {topic!r}: {exc}",
                    dict.fromkeys(range(len(messages)), exc),
                ) from exc
        failures = await self._producer.send_all(topic, records())
        if failures:
            raise publish_error(failures, messages, f"Kafka topic {topic!r}")

    async def forward_scheduled(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Move scheduled messages on from the delay tiers until cancelled, in consumer group
        ``eventbus-scheduler`` (`eventbus.transports.scheduling`). Every started bus runs it."""
        topics = [tier_topic(t) for t in scheduling.TIERS]
        spec = SubscriptionSpec("eventbus.scheduled", "queue", None, scheduling.PREFETCH)

        async def subscribe(owner: DeliveryOwner) -> Subscription:
            await self._admin.ensure_topics(topics)
            sub = KafkaSubscription(
                self.settings,
                spec,
                owner,
                topics=topics,
                group=SCHEDULER_GROUP,
                admin=self._admin,
                on_close=self._subscriptions.discard,
            )
            self._subscriptions.add(sub)
            return sub

        forwarder = scheduling.Forwarder(
            subscribe, self.publish, dead_letters="eventbus.scheduled.dlq"
        )
        await forwarder.run(task_status=task_status)

    # -- consuming --------------------------------------------------------------------------

    async def subscribe(self, spec: SubscriptionSpec, owner: DeliveryOwner) -> Subscription:
        """Create the topics and return the subscription, not live yet: its ``run`` (started
        by the core in its task group) joins the group and fetches."""
        topics = subscribed_topics(spec)
        await self._admin.ensure_topics(topics)
        sub = KafkaSubscription(
            self.settings,
            spec,
            owner,
            topics=topics,
            group=consumer_group(spec),
            admin=self._admin,
            on_close=self._subscriptions.discard,
        )
        self._subscriptions.add(sub)
        return sub

    # -- inspection -------------------------------------------------------------------------

    def asyncapi_bindings(
        self, kind: Kind, name: str, group: str | None
    ) -> dict[str, dict[str, Any]]:
        """AsyncAPI Kafka bindings (0.5.0) of a topic or queue: the topic with the partitions and
        replicas eventbus creates it with (a topic made beforehand keeps its own), the consumer
        group that reads it, and the record key (`eventbus.asyncapi`)."""
        version = {"bindingVersion": "0.5.0"}
        settings = self.settings
        topic = {
            "topic": name,
            "partitions": settings.partitions,
            "replicas": settings.replication_factor,
        }
        bindings: dict[str, dict[str, Any]] = {
            "channel": {"kafka": {**topic, **version}},
            "message": {"kafka": {"key": {"type": "string"}, **version}},
        }
        reader = consumer_group(SubscriptionSpec(name, kind, group, 1))
        if reader is not None:
            group_id = {"type": "string", "enum": [reader]}
            bindings["receive"] = {"kafka": {"groupId": group_id, **version}}
        return bindings

    async def depth(self, name: str, kind: Kind) -> int | None:
        """For a queue: records not yet committed by its consumer group, retry topic included.
        None for a topic (each group has its own backlog) or a queue that does not exist."""
        if kind != "queue":
            return None
        found = await self.backlog(SubscriptionSpec(name, "queue", None, 1))
        return found.total if found is not None else None

    async def backlog(self, spec: SubscriptionSpec) -> Backlog | None:
        """The group's lag per partition: end offset minus its committed offset (from the
        earliest offset where it committed nothing yet), keyed by partition number, and
        ``retry:N`` for its retry topic's partitions. Members from the group's description."""
        validate_name(spec.name)
        group = consumer_group(spec)
        if group is None:
            return None  # a broadcast reader has no group and commits nothing
        main = await self._admin.topic_partitions(spec.name)
        if main is None:
            return None
        retry = retry_topic(spec.name, spec.kind, spec.group)
        partitions = [TopicPartition(spec.name, p) for p in main]
        retries = await self._admin.topic_partitions(retry) or []
        partitions += [TopicPartition(retry, p) for p in retries]
        try:
            committed = await self._admin.group_offsets(group)
            reader = await self._reader()
            ends = await reader.end_offsets(partitions)
            starts = await reader.beginning_offsets(partitions)
            members = await self._admin.group_members(group)
        except EventBusError:
            raise
        except Exception as exc:
            raise translate(exc, self.settings.address, self.settings.user) from exc
        waiting: dict[str, int] = {}
        for tp in partitions:
            start = max(committed.get((tp.topic, tp.partition), (-1, ""))[0], starts[tp])
            label = str(tp.partition) if tp.topic == spec.name else f"retry:{tp.partition}"
            waiting[label] = max(0, ends[tp] - start)
        return Backlog(waiting=waiting, consumers=members)

    async def _reader(self) -> Any:
        """A group-less consumer, used only to look up partition offsets."""
        if self._offsets_reader is None:
            reader = AIOKafkaConsumer(**self.settings.client_options(), enable_auto_commit=False)
            await reader.start()
            self._offsets_reader = reader
        return self._offsets_reader

    async def _close_offsets_reader(self) -> None:
        reader, self._offsets_reader = self._offsets_reader, None
        if reader is not None:
            await reader.stop()
