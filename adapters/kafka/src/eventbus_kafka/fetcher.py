"""The fetch loop: ``getmany`` into the read-ahead buffer, and which partitions are paused.

It runs in the subscription's task group (`KafkaSubscription.run`) and never blocks on the
handlers: when the buffer is full it waits a little, then pauses every partition and keeps
polling, because a consumer that stops polling for ``max_poll_interval_ms`` is dropped from the
group (PITFALLS). It adopts new assignments before taking their records, gives back (seeks)
what it cannot take yet, finishes without handing out records meant for another group, and
holds a partition whose head record is a retry that is not due.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import anyio
from aiokafka.errors import IllegalStateError  # type: ignore[import-untyped]

from eventbus.backoff import Backoff
from eventbus.errors import EventBusError
from eventbus.loggers import get_logger
from eventbus.message import Message
from eventbus.transports.base import SubscriptionSpec
from eventbus.transports.scheduling import TIERS
from eventbus_kafka.assignment import Adopter
from eventbus_kafka.delivery import Taken
from eventbus_kafka.errors import is_fatal, translate
from eventbus_kafka.ownership import Ownership
from eventbus_kafka.pauses import Pauses
from eventbus_kafka.readahead import ReadAhead
from eventbus_kafka.wire import decode, routing

__all__ = ["Fetcher"]

log = get_logger(__name__)

TP = Any  # aiokafka TopicPartition

_POLL_SECONDS = 0.5
"""Longest ``getmany`` wait: bounds how late a due retry partition is resumed."""
_FULL_GRACE = 1.0
"""Full this long with nothing handed out: pause every partition rather than keep aiokafka's
prefetched records around; resumed as soon as there is room."""
_MAX_BACKOFF = 5.0


_MAIN_TOPIC_WAIT = TIERS[0] + 10.0
"""The longest a main topic's record waits for its due time (seconds): the shortest delay
tier, plus room for the producer's clock running ahead."""


class Fetcher:
    def __init__(
        self,
        spec: SubscriptionSpec,
        *,
        address: str,
        user: str,
        owned: Ownership,
        pauses: Pauses,
        buffer: ReadAhead,
        adopter: Adopter,
        describe: str,
        offset_window: int,
    ) -> None:
        self._spec = spec
        self._window = offset_window
        self._address = address
        self._user = user
        self._owned = owned
        self._pauses = pauses
        self._buffer = buffer
        self._adopter = adopter
        self._describe = describe
        # Records another group's retry or replay: finished here without being handed out.
        self._group = spec.group if spec.kind == "topic" else None
        self.consumer: Any = None
        self.live = anyio.Event()
        """Set once the first assignment is adopted (a message published after that is
        delivered), or when the loop gave up (then `failure` says why)."""
        self.failure: EventBusError | None = None
        self.failing = False
        """The last fetch raised (it is retried with backoff)."""

    @property
    def connected(self) -> bool:
        """Fetching works and the group coordinator is known. aiokafka reconnects by itself
        and a fetch during an outage just returns nothing, so the coordinator is what tells:
        aiokafka forgets it (``coordinator_id`` None) when a heartbeat or commit fails to
        reach it, and finds it again once the broker is back."""
        if self.consumer is None or self.failing or not self.live.is_set():
            return False
        coordinator = getattr(self.consumer, "_coordinator", None)
        return getattr(coordinator, "coordinator_id", 0) is not None

    def apply_pauses(self) -> None:
        if self.consumer is not None:
            self._pauses.apply(self.consumer, self._owned.assigned)

    async def run(self) -> None:
        """Fetch until cancelled. Returns early only when retrying cannot help (credentials,
        ACLs: `failure`); every other error is retried with backoff, since aiokafka
        reconnects by itself after broker restarts, leader moves and coordinator changes."""
        backoff = Backoff(0.1, _MAX_BACKOFF)
        while True:
            try:
                await self._fetch_once()
                if self.failing:
                    self.failing = False
                    backoff.up()  # the waits reset once fetching has worked for a while
            except Exception as exc:
                if is_fatal(exc):
                    log.error("%s: giving up: %r", self._describe, exc)
                    self.failure = translate(exc, self._address, self._user)
                    self.failure.__cause__ = exc
                    self.live.set()
                    return
                self.failing = True
                wait = backoff.next()
                log.warning("%s: fetch failed, retrying in %.1fs: %r", self._describe, wait, exc)
                await anyio.sleep(wait)

    async def _fetch_once(self) -> None:
        owned, pauses = self._owned, self._pauses
        adopting = owned.adopt_needed and not owned.rebalancing
        if adopting and await self._adopter.adopt(self.consumer):
            self.apply_pauses()
            self.live.set()
        if pauses.release_due():
            self.apply_pauses()
        if pauses.held and pauses.release_held(self._window_has_room):
            self.apply_pauses()
        free = self._buffer.free()
        if free <= 0:
            await self._wait_for_room()
            return
        if pauses.full:
            pauses.full = False
            self.apply_pauses()
        batch = await self.consumer.getmany(
            timeout_ms=int(min(_POLL_SECONDS, pauses.due_in()) * 1000), max_records=free
        )
        self.take(batch, free)

    async def _wait_for_room(self) -> None:
        buffer, pauses = self._buffer, self._pauses
        buffer.room.clear()
        if not pauses.full:
            taken_out = buffer.taken_out
            with anyio.move_on_after(min(_FULL_GRACE, pauses.due_in())) as waited:
                await buffer.room.wait()
            # Full, and nothing taken from the buffer meanwhile: the handlers are stuck.
            if waited.cancelled_caught and buffer.free() <= 0 and buffer.taken_out == taken_out:
                pauses.full = True
                self.apply_pauses()
            return
        # Everything is paused; polling still counts as activity for max_poll_interval_ms.
        self.apply_pauses()
        self.take(await self.consumer.getmany(timeout_ms=0), 0)
        with anyio.move_on_after(min(_POLL_SECONDS * 2, pauses.due_in())):
            await buffer.room.wait()

    def _window_has_room(self, tp: TP) -> bool:
        # Resumed at half, not at one below the limit: one pause per window, not per record.
        tracker = self._owned.trackers.get(tp)
        return tracker is None or tracker.window <= self._window // 2

    def take(self, batch: dict[TP, list[Any]], limit: int) -> None:
        """Buffer up to ``limit`` records; give the rest back (seek) so they are fetched again.

        Each record is decoded here, once (`wire.decode` reads the routing headers and the
        message in one pass). A record that cannot be decoded is routed by `routing` alone and
        becomes a defect when it is handed out (`KafkaSubscription._message_of`); one whose
        time is when it is read is decoded again then."""
        now = time.time()
        delayed = False
        owned, consumer = self._owned, self.consumer
        window, group, name = self._window, self._group, self._spec.name
        taken: list[Taken] = []
        add = taken.append
        try:
            for tp, records in batch.items():
                if not records:
                    continue
                tracker = owned.trackers.get(tp)
                if tracker is None:
                    if owned.grouped:
                        if tp in owned.assigned:
                            # Assigned during this getmany and not adopted yet: the previous
                            # owner's commit metadata (what it finished above its commit) is
                            # not read yet. Give the records back; they are taken once adopted.
                            owned.adopt_needed = True
                            with contextlib.suppress(IllegalStateError):
                                consumer.seek(tp, records[0].offset)
                        continue
                    tracker = owned.tracker_for(tp, records[0].offset)
                if not owned.current(tracker):
                    continue  # being revoked: the new owner gets these from the commit
                partition = tp.partition
                skipping = tracker.skipping
                for record in records:
                    if limit <= 0:
                        consumer.seek(tp, record.offset)
                        break
                    if tracker.window >= window:
                        # Bounded memory (DESIGN 8): one stuck record would make the
                        # bookkeeping behind it grow without end. This partition waits, paused,
                        # until it moves; the others keep flowing.
                        consumer.seek(tp, record.offset)
                        self._pauses.hold(tp)
                        delayed = True
                        log.warning(
                            "%s: partition %s holds %d offsets behind unfinished offset %d; "
                            "pausing it until that one is settled",
                            self._describe,
                            partition,
                            tracker.window,
                            tracker.committable,
                        )
                        break
                    offset = record.offset
                    if skipping and tracker.skip(offset):
                        continue  # finished by the previous owner (its commit metadata says so)
                    try:
                        message: Message | None
                        message, target, due = decode(
                            name,
                            record.topic,
                            record.partition,
                            offset,
                            record.key,
                            record.value,
                            record.headers,
                            record.timestamp,
                            defer=True,
                        )
                    except Exception:
                        message = None  # a defect once handed out (`Taken.to_message` says why)
                        target, due = routing(record.headers or ())
                    if target is not None and group is not None and target != group:
                        # Another group's retry or replay (a 0.1 worker may have published it
                        # to the main topic): done for this group, whenever it is due.
                        if tracker.track(offset):
                            tracker.finish(offset)
                        continue
                    if due is not None and due > now + _MAIN_TOPIC_WAIT and record.topic == name:
                        # eventbus puts due times on a main topic only within the shortest
                        # delay tier (`destination_topic`): a later one is a foreign producer's
                        # header, and must not hold the partition for years. Due now.
                        due = None
                    if due is not None and due > now:
                        # A retry that is not due: this partition waits (paused, no busy loop)
                        # from this record on; every other partition keeps flowing.
                        consumer.seek(tp, offset)
                        self._pauses.delay(tp, due)
                        delayed = True
                        break
                    # A re-read after an offset reset is not tracked again, but still delivered.
                    tracker.track(offset)
                    add(Taken(tracker, partition, record, message))
                    limit -= 1
        finally:
            if taken:
                self._buffer.extend(taken)  # what was tracked, even if a seek failed after it
        if delayed:
            self.apply_pauses()
