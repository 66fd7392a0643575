"""The reply inbox of one bus (request-reply, DESIGN 12): a leased partition of the app's reply
topic.

Kafka has no per-client queue, and a topic per process would leave topics behind every
restart. So each application has one reply topic (``<client_id>.replies``, or the URL's
``reply_topic``) of ``reply_partitions`` partitions, and every bus that makes requests joins
its consumer group (named like the topic) and reads exactly one partition: its lease. A
request's reply-to is ``<topic>:<partition>``; a responder (ours, or any client) writes the
reply to that partition with the request's ``ce_correlationid`` header.

The lease is kept by `LeaseAssignor`, the group's assignment strategy: each member states the
partition it holds in its join metadata and keeps it through every rebalance; a member that
holds none gets the lowest free one. A rebalance (another bus joining or leaving) therefore
never moves a lease, and the inbox resumes its partition where it stopped, so replies written
meanwhile are still read. A lease ends when its bus stops or its session times out (a bus that
died); a new owner starts at the partition's end, skipping replies meant for the old one.

Nothing is committed: replies matter only to the bus that is waiting for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.coordinator.protocol import (  # type: ignore[import-untyped]
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from anyio.abc import TaskStatus

from eventbus.backoff import Backoff
from eventbus.errors import BrokerUnavailableError
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus_kafka.admin import HEADROOM, TopicAdmin
from eventbus_kafka.errors import is_fatal, translate
from eventbus_kafka.url import KafkaSettings
from eventbus_kafka.wire import from_record

__all__ = ["KafkaReplyInbox", "LeaseAssignor", "reply_partition"]

log = get_logger("eventbus.kafka")

TP = Any  # aiokafka TopicPartition
_STOP_TIMEOUT = 5.0


def reply_partition(address: str) -> tuple[str, int | None]:
    """``topic:partition`` -> (topic, partition); a plain topic (a foreign requester's) has
    no partition: the reply is then partitioned by key like any publish."""
    topic, sep, partition = address.rpartition(":")
    if sep and partition.isdigit():
        return topic, int(partition)
    return address, None


class LeaseAssignor:
    """Assignment strategy of a reply topic's group: one partition per member, kept by its
    holder through rebalances (module docstring). Partitions beyond the members stay
    unassigned; members beyond the partitions get none and wait for one to be free.

    Each member states in its join metadata the partition it holds and when it got it
    (``"<partition>:<unix ms>"``). Two members claim one partition only when one of them lost
    it (its session timed out, say, while its loop was blocked) and it was leased again: the
    later lease wins, so the bus that holds it now keeps it."""

    name = "eventbus-reply-lease"
    version = 0

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self.held: int | None = None
        """The partition leased to this member by the last assignment."""
        self._since = 0
        """When this member got ``held`` (Unix ms)."""

    def metadata(self, topics: Iterable[str]) -> Any:
        claim = b"" if self.held is None else f"{self.held}:{self._since}".encode()
        return ConsumerProtocolMemberMetadata(self.version, list(topics), claim)

    def assign(self, cluster: Any, members: Mapping[str, Any]) -> dict[str, Any]:
        partitions = set(cluster.partitions_for_topic(self._topic) or ())
        claims: dict[int, tuple[int, str]] = {}  # partition -> (since, member): latest wins
        for member in sorted(members):
            claim = _claim(members[member].user_data)
            if claim is not None and claim[0] in partitions:
                partition, since = claim
                if partition not in claims or since > claims[partition][0]:
                    claims[partition] = (since, member)
        leases = {member: partition for partition, (_, member) in claims.items()}
        free = sorted(partitions - set(claims))
        for member in sorted(members):
            if member not in leases and free:
                leases[member] = free.pop(0)
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version,
                [(self._topic, [leases[member]])] if member in leases else [],
                b"",
            )
            for member in members
        }

    def on_assignment(self, assignment: Any) -> None:
        held = [p for topic, parts in assignment.assignment for p in parts if topic == self._topic]
        now = held[0] if held else None
        if now != self.held:
            self.held = now
            self._since = int(time.time() * 1000)


def _claim(user_data: bytes | None) -> tuple[int, int] | None:
    partition, _, since = (user_data or b"").decode("ascii", "replace").partition(":")
    if not partition.isdigit():
        return None
    return int(partition), int(since) if since.isdigit() else 0


class KafkaReplyInbox:
    def __init__(self, settings: KafkaSettings, admin: TopicAdmin) -> None:
        self._settings = settings
        self._admin = admin
        self.topic = settings.replies
        self._assignor = LeaseAssignor(self.topic)
        self._address: str | None = None
        self._leased = anyio.Event()
        self._next: dict[int, int] = {}
        """The next offset to read in the leased partition: where reading resumes when a
        rebalance gives it back (it always does, unless this bus's session expired)."""

    async def address(self) -> str:
        while self._address is None:
            await self._leased.wait()
        return self._address

    async def run(
        self, deliver: Callable[[Message], None], *, task_status: TaskStatus[None]
    ) -> None:
        settings = self._settings
        try:
            with anyio.fail_after(settings.connect_timeout):
                await self._admin.ensure_topics([self.topic], settings.reply_partitions)
        except TimeoutError:
            raise BrokerUnavailableError(
                settings.address, f"cannot create the reply topic {self.topic!r}"
            ) from None
        consumer = AIOKafkaConsumer(
            **settings.client_options(),
            group_id=self.topic,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            partition_assignment_strategy=(self._assignor,),
            max_partition_fetch_bytes=settings.max_message_size + HEADROOM,
            heartbeat_interval_ms=1000,
        )
        consumer.subscribe([self.topic], listener=_Listener(self, consumer))
        try:
            try:
                await consumer.start()
            except Exception as exc:
                raise translate(exc, settings.address, settings.user) from exc
            task_status.started()
            await self._receive(consumer, deliver)
        finally:
            with anyio.move_on_after(_STOP_TIMEOUT, shield=True):
                try:
                    await consumer.stop()  # leaves the group: the lease is free at once
                except Exception:
                    log.warning("stopping the reply consumer failed", exc_info=True)

    async def _receive(self, consumer: Any, deliver: Callable[[Message], None]) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aiokafka reconnects by itself; keep reading
                if is_fatal(exc):  # refused credentials or ACLs: a new inbox must start over
                    raise translate(exc, self._settings.address, self._settings.user) from exc
                wait = backoff.next()
                log.warning("reply inbox %s: %r; reading again in %.1fs", self.topic, exc, wait)
                await anyio.sleep(wait)
                continue
            backoff.up()
            for tp, records in batches.items():
                for record in records:
                    try:
                        message = from_record(
                            topic=self.topic,
                            record_topic=tp.topic,
                            partition=tp.partition,
                            offset=record.offset,
                            key=record.key,
                            value=record.value,
                            headers=record.headers,
                            timestamp_ms=record.timestamp,
                        )
                    except Exception:
                        log.exception("cannot read a reply at %s:%d", tp, record.offset)
                        continue
                    deliver(message)
                if records:
                    self._next[tp.partition] = records[-1].offset + 1

    # -- the lease, from the rebalance listener ----------------------------------------------

    async def assigned(self, consumer: Any, assigned: Iterable[TP]) -> None:
        assigned = list(assigned)
        if not assigned:
            self._address = None  # no lease: requests wait for one
            if self._leased.is_set():
                self._leased = anyio.Event()
        self._next = {
            tp.partition: self._next[tp.partition] for tp in assigned if tp.partition in self._next
        }
        for tp in assigned:
            resume = self._next.get(tp.partition)
            if resume is not None:
                consumer.seek(tp, resume)
            else:
                # A new lease starts at the end: what is there was meant for an earlier holder.
                # No request carries this address before the end is known.
                while not await consumer.seek_to_end(tp):
                    if tp not in consumer.assignment():
                        return  # a newer rebalance took it: its assignment comes next
                self._next[tp.partition] = await consumer.position(tp)
            self._address = f"{self.topic}:{tp.partition}"
            self._leased.set()
        if self._address is None:
            log.warning(
                "no free partition of reply topic %s (%d partitions): requests wait for one; "
                "raise reply_partitions in the kafka:// URL if more buses make requests",
                self.topic,
                self._settings.reply_partitions,
            )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """A rebalance keeps the lease (`LeaseAssignor`), so the address stays valid while it
    runs: requests go on being sent, and their replies are read once it is over."""

    def __init__(self, inbox: KafkaReplyInbox, consumer: Any) -> None:
        self._inbox = inbox
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Iterable[TP]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Iterable[TP]) -> None:
        await self._inbox.assigned(self._consumer, assigned)
