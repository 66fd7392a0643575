"""`KafkaSubscription`: one consumer, a fetch task feeding a bounded buffer, and the commits.

Tasks: the fetch task calls ``getmany`` for at most the free room of a read-ahead buffer that
the iterator drains (records aiokafka has already fetched; the iterator hands out at most
``prefetch`` unsettled ones); the commit task commits every ``commit_interval`` what
`PartitionOffsets` allows. Both belong to the subscription: `stop` cancels and awaits the
fetch task, `close` the commit task, then commits one last time and leaves the group (aiokafka
calls no revoke hook on stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.errors import IllegalStateError  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]

from eventbus.errors import BrokerUnavailableError, EventBusError
from eventbus.message import Message
from eventbus.transports.base import RawDelivery, SubscriptionSpec
from eventbus_kafka.admin import HEADROOM, TopicAdmin
from eventbus_kafka.committer import Committer, pending_commits
from eventbus_kafka.delivery import KafkaDelivery, Taken
from eventbus_kafka.errors import is_fatal, translate
from eventbus_kafka.offsets import PartitionOffsets
from eventbus_kafka.ownership import Ownership
from eventbus_kafka.pauses import Pauses
from eventbus_kafka.url import KafkaSettings
from eventbus_kafka.wire import not_before

__all__ = ["KafkaSubscription"]

log = logging.getLogger(__name__)

TP = Any  # aiokafka TopicPartition: a named tuple (topic, partition)

_POLL_SECONDS = 0.5
"""Longest ``getmany`` wait: bounds how late a due retry partition is resumed."""
_FULL_GRACE = 1.0
"""Full this long with nothing handed out: pause every partition rather than keep aiokafka's
prefetched records around; resumed as soon as there is room."""
_READ_AHEAD_RECORDS = 256
_READ_AHEAD_BYTES = 4 * 1024 * 1024
"""The read-ahead buffer holds at most this many records and (roughly) bytes of values. Taking
records from aiokafka in batches rather than a few at a time (as many as the core has room for)
makes each ``getmany`` worth its cost; benchmarks/ measured it."""
_COMMIT_TIMEOUT = 10.0
_REVOKE_COMMIT_TIMEOUT = 5.0
_REVOKE_DRAIN_TIMEOUT = 10.0
"""On revocation, how long to wait for the deliveries already handed out for the revoked
partitions to be settled before committing and letting them go: the new owner must not
handle a key while this process still does. Drain plus commit stay well inside the group's
rebalance timeout (see ``rebalance_timeout_ms``)."""
_LEAVE_TIMEOUT = 15.0
_MAX_BACKOFF = 5.0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: KafkaSubscription) -> None:
        self._sub = sub

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._sub._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._sub._on_assigned(set(assigned))


class KafkaSubscription:
    """A live subscription (`eventbus.transports.base.Subscription`) on one consumer."""

    def __init__(
        self,
        settings: KafkaSettings,
        spec: SubscriptionSpec,
        *,
        topics: list[str],
        group: str | None,
        admin: TopicAdmin,
        on_close: Callable[[KafkaSubscription], None] | None = None,
    ) -> None:
        self._settings = settings
        self._spec = spec
        self._topics = topics
        self._group = group
        self._admin = admin
        self._on_close = on_close
        self._prefetch = max(1, spec.prefetch)
        self._consumer: Any = None
        self._owned = Ownership(grouped=group is not None)
        self._pauses = Pauses()
        self._committer = Committer(self._describe())
        self._buffer: deque[Taken] = deque()
        self._buffered_bytes = 0
        self._read_ahead = max(self._prefetch, _READ_AHEAD_RECORDS)
        self._low_water = self._read_ahead // 2
        """The fetch task waits until the buffer is down to this many records."""
        self._held = 0
        """Handed out and not settled."""
        self._handed_out = 0
        """Deliveries yielded so far (progress, for the full-pause decision)."""
        self._held_by: dict[PartitionOffsets, int] = {}
        """Handed out and not settled, per partition tracker."""
        self._draining: set[PartitionOffsets] = set()
        """Trackers of partitions being revoked: nothing more of them is handed out."""
        self._settle = asyncio.Event()
        self._live = asyncio.Event()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._failure: BaseException | None = None
        self._stopped = False
        self._closed = False
        self._fetch_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group (or assign every partition, for a broadcast), resolve positions,
        and return once a message published afterwards is sure to be delivered."""
        settings = self._settings
        try:
            async with asyncio.timeout(settings.join_timeout):
                await self._start_consumer()
                self._fetch_task = asyncio.create_task(
                    self._fetch_loop(), name=f"eventbus-kafka-fetch {self._describe()}"
                )
                if self._group is not None:
                    self._commit_task = asyncio.create_task(
                        self._commit_loop(), name=f"eventbus-kafka-commit {self._describe()}"
                    )
                await self._live.wait()
            if self._failure is not None:
                raise self._failure
        except BaseException as exc:
            await self._abandon()
            if isinstance(exc, TimeoutError):
                what = f"join consumer group {self._group!r}" if self._group else "assign"
                raise BrokerUnavailableError(
                    settings.address,
                    f"could not {what} for topics {self._topics} within "
                    f"join_timeout={settings.join_timeout}s",
                ) from exc
            if isinstance(exc, Exception) and not isinstance(exc, EventBusError):
                raise translate(exc, settings.address) from exc
            raise

    async def _start_consumer(self) -> None:
        settings = self._settings
        consumer = AIOKafkaConsumer(
            **settings.client_options(),
            group_id=self._group,
            enable_auto_commit=False,
            # Queues and retry topics must never skip what was published before the group
            # existed; offset_reset=latest is applied by hand to a topic group's main topic.
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=settings.max_message_size + HEADROOM,
            heartbeat_interval_ms=1000,
            rebalance_timeout_ms=int((_REVOKE_DRAIN_TIMEOUT + _REVOKE_COMMIT_TIMEOUT + 15) * 1000),
        )
        self._consumer = consumer
        if self._group is not None:
            consumer.subscribe(self._topics, listener=_Listener(self))
            await consumer.start()  # returns once the group is joined and partitions assigned
            return
        await consumer.start()
        tps = [
            TopicPartition(topic, p)
            for topic in self._topics
            for p in await self._admin.topic_partitions(topic) or ()
        ]
        consumer.assign(tps)
        # A broadcast receives what is published from now on: start at the end, commit nothing.
        if tps:
            while not await consumer.seek_to_end(*tps):
                pass
        self._owned.assign(tps)

    def __aiter__(self) -> AsyncIterator[RawDelivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RawDelivery]:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._stopped:
                return
            if not self._buffer:
                self._ready.clear()
                await self._ready.wait()
                continue
            if self._held >= self._prefetch:
                # The core never holds more than ``prefetch``; this keeps the promise for any
                # other caller of the SPI.
                self._settle.clear()
                await self._settle.wait()
                continue
            taken = self._buffer.popleft()
            self._buffered_bytes -= taken.size
            if len(self._buffer) <= self._low_water:
                self._room.set()
            tracker = taken.tracker
            if tracker.revoked or tracker in self._draining:
                continue  # its partition is being revoked: the new owner has it
            self._held += 1
            self._handed_out += 1
            self._held_by[tracker] = self._held_by.get(tracker, 0) + 1
            yield KafkaDelivery(self, taken, self._message_of(taken))

    def _message_of(self, taken: Taken) -> Message:
        try:
            return taken.to_message(self._spec.name)
        except Exception:  # never lose a record to a decoding bug: the core dead-letters it
            log.exception("%s: cannot read record %r", self._describe(), taken.record)
            record = taken.record
            return Message(
                id=f"{record.topic}/{record.partition}/{record.offset}",
                topic=self._spec.name,
                body=record.value or b"",
            )

    async def stop(self) -> None:
        """Stop fetching; deliveries handed out can still be settled, and are committed."""
        if self._stopped:
            return
        self._stopped = True
        self._ready.set()
        self._settle.set()  # an iterator waiting for a settle sees the stop
        await _cancel(self._fetch_task)
        if self._consumer is not None and self._owned.assigned:
            try:  # no more network fetches; heartbeats go on, so the group keeps us
                self._consumer.pause(*self._owned.assigned)
            except Exception:
                log.debug("%s: pause on stop failed", self._describe(), exc_info=True)

    async def close(self) -> None:
        """Commit what is safe, leave the group. Unsettled records stay uncommitted and are
        redelivered to whoever consumes their partition next."""
        if self._closed:
            return
        await self.stop()
        await _cancel(self._commit_task)
        if self._group is not None and not self._owned.rebalancing:
            pending = pending_commits(self._owned.trackers)
            await self._committer.commit(self._consumer, pending, _COMMIT_TIMEOUT)
        self._closed = True
        await self._abandon()
        if self._on_close is not None:
            self._on_close(self)

    async def _abandon(self) -> None:
        """Forget every tracked record and stop the consumer (leaving the group)."""
        self._stopped = True
        self._ready.set()
        self._settle.set()  # an iterator waiting for a settle sees the stop
        await _cancel(self._fetch_task)
        await _cancel(self._commit_task)
        self._owned.revoke_all()
        self._buffer.clear()
        self._buffered_bytes = 0
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await asyncio.wait_for(consumer.stop(), _LEAVE_TIMEOUT)
            except Exception:
                log.warning("%s: consumer did not stop cleanly", self._describe(), exc_info=True)

    # -- settling (called by KafkaDelivery) --------------------------------------------------

    def settled(self, taken: Taken, *, done: bool) -> None:
        self._held -= 1
        tracker = taken.tracker
        left = self._held_by.get(tracker, 0) - 1
        if left > 0:
            self._held_by[tracker] = left
        else:
            self._held_by.pop(tracker, None)
        self._settle.set()
        if done:
            tracker.finish(taken.offset)
        elif not (tracker.revoked or tracker in self._draining or self._stopped):
            # Released while running: hand it out again. It stays unfinished meanwhile, so no
            # commit passes it; after stop it just stays unfinished (redelivered after restart).
            taken.redelivered = True
            self._buffer.appendleft(taken)
            self._buffered_bytes += taken.size
            self._ready.set()

    # -- fetching ---------------------------------------------------------------------------

    def _free(self) -> int:
        """Records the fetch task may take now: none until the buffer is down to low water."""
        if self._buffered_bytes >= _READ_AHEAD_BYTES or len(self._buffer) > self._low_water:
            return 0
        return self._read_ahead - len(self._buffer)

    async def _fetch_loop(self) -> None:
        backoff = 0.1
        while not self._stopped:
            try:
                if self._owned.adopt_needed and not self._owned.rebalancing:
                    await self._adopt_assignment()
                if self._pauses.release_due():
                    self._apply_pauses()
                free = self._free()
                if free <= 0:
                    await self._wait_for_room()
                    continue
                if self._pauses.full:
                    self._pauses.full = False
                    self._apply_pauses()
                batch = await self._consumer.getmany(
                    timeout_ms=int(min(_POLL_SECONDS, self._pauses.due_in()) * 1000),
                    max_records=free,
                )
                self._take(batch, free)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_fatal(exc):
                    log.error("%s: giving up: %r", self._describe(), exc)
                    self._failure = translate(exc, self._settings.address)
                    self._failure.__cause__ = exc
                    self._ready.set()
                    self._live.set()
                    return
                # Broker restarts, leader moves, coordinator changes: aiokafka reconnects on
                # its own; this loop just tries again a little later.
                log.warning(
                    "%s: fetch failed, retrying in %.1fs: %r", self._describe(), backoff, exc
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _wait_for_room(self) -> None:
        self._room.clear()
        if not self._pauses.full:
            handed_out = self._handed_out
            try:
                async with asyncio.timeout(min(_FULL_GRACE, self._pauses.due_in())):
                    await self._room.wait()
            except TimeoutError:
                # Full, and nothing taken from the buffer meanwhile: the handlers are stuck.
                if self._free() <= 0 and self._handed_out == handed_out:
                    self._pauses.full = True
                    self._apply_pauses()
            return
        # Everything is paused; polling still counts as activity for max_poll_interval_ms.
        self._apply_pauses()
        self._take(await self._consumer.getmany(timeout_ms=0), 0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(_POLL_SECONDS * 2, self._pauses.due_in())):
                await self._room.wait()

    def _take(self, batch: dict[TP, list[Any]], limit: int) -> None:
        """Buffer up to ``limit`` records; give the rest back (seek) so they are fetched again."""
        now = time.time()
        delayed = False
        for tp, records in batch.items():
            if not records:
                continue
            tracker = self._owned.trackers.get(tp)
            if tracker is None:
                if self._group is not None:
                    if tp in self._owned.assigned:
                        # Assigned during this getmany and not adopted yet: the previous
                        # owner's commit metadata (what it finished above its commit) is not
                        # read yet. Give the records back; they are taken once adopted.
                        self._owned.adopt_needed = True
                        with contextlib.suppress(IllegalStateError):
                            self._consumer.seek(tp, records[0].offset)
                    continue
                tracker = self._owned.tracker_for(tp, records[0].offset)
            if tracker.revoked or tracker in self._draining:
                continue  # being revoked: the new owner gets these from the commit
            for record in records:
                if limit <= 0:
                    self._consumer.seek(tp, record.offset)
                    break
                if tracker.skip(record.offset):
                    continue  # finished by the previous owner (its commit metadata says so)
                due = not_before(record.headers or ())
                if due is not None and due > now:
                    # A retry that is not due: this partition waits (paused, no busy loop)
                    # from this record on; every other partition keeps flowing.
                    self._consumer.seek(tp, record.offset)
                    self._pauses.delay(tp, due)
                    delayed = True
                    break
                # A re-read after an offset reset is not tracked again, but still delivered.
                tracker.track(record.offset)
                taken = Taken(tracker, tp.partition, record)
                self._buffer.append(taken)
                self._buffered_bytes += taken.size
                limit -= 1
        if delayed:
            self._apply_pauses()
        if self._buffer:
            self._ready.set()

    def _apply_pauses(self) -> None:
        self._pauses.apply(self._consumer, self._owned.assigned)

    # -- rebalancing ------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TP]) -> None:
        """Before a rebalance: commit what is safe for the partitions we lose; from now on
        their late settles are no-ops and the new owner redelivers what was unfinished.

        First, for at most `_REVOKE_DRAIN_TIMEOUT`, wait until the deliveries already handed
        out for those partitions are settled: the new owner must not get (and handle) a key
        this process is still handling. Settling never needs the fetch loop, so waiting here,
        inside aiokafka's rebalance, cannot deadlock with it."""
        draining = {t for tp in revoked if (t := self._owned.trackers.get(tp)) is not None}
        if draining and self._group is not None:
            self._draining |= draining
            self._drop_revoked_from_buffer()
            try:
                await self._drain(draining)
            finally:
                self._draining -= draining
        frozen = self._owned.revoke(revoked)
        self._pauses.forget(revoked)
        self._drop_revoked_from_buffer()
        if frozen and self._consumer is not None:
            await self._committer.commit(self._consumer, frozen, _REVOKE_COMMIT_TIMEOUT)

    async def _drain(self, trackers: set[PartitionOffsets]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _REVOKE_DRAIN_TIMEOUT
        while any(self._held_by.get(t, 0) > 0 for t in trackers):
            left = deadline - loop.time()
            if left <= 0 or self._closed:
                held = sum(self._held_by.get(t, 0) for t in trackers)
                log.warning(
                    "%s: %d deliveries of revoked partitions still unsettled after %.0fs; "
                    "the new owner gets them again",
                    self._describe(),
                    held,
                    _REVOKE_DRAIN_TIMEOUT,
                )
                return
            self._settle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settle.wait(), left)

    def _on_assigned(self, assigned: set[TP]) -> None:
        self._owned.assign(assigned)
        self._drop_revoked_from_buffer()

    def _drop_revoked_from_buffer(self) -> None:
        """Fetched but not handed out yet, from partitions we lost: the new owner has them."""
        before = len(self._buffer)
        self._buffer = deque(
            t for t in self._buffer if not (t.tracker.revoked or t.tracker in self._draining)
        )
        self._buffered_bytes = sum(t.size for t in self._buffer)
        if len(self._buffer) != before:
            self._room.set()

    async def _adopt_assignment(self) -> None:
        """Resolve the positions of newly assigned partitions, then track them (see
        `Ownership.adopt`) and commit the starts that were never committed."""
        epoch = self._owned.epoch
        consumer = self._consumer
        new = self._owned.unadopted()
        positions: dict[TP, int] = {}
        committed: dict[tuple[str, int], tuple[int, str]] = {}
        async with asyncio.timeout(self._settings.join_timeout):
            if new and self._group is not None:
                committed = await self._admin.group_offsets(self._group)
            never_committed = [
                tp for tp in new if committed.get((tp.topic, tp.partition), (-1, ""))[0] < 0
            ]
            fresh = [tp for tp in never_committed if self._starts_at_end(tp)]
            if fresh:
                await consumer.seek_to_end(*fresh)
            for tp in new:
                try:
                    positions[tp] = await consumer.position(tp)
                except IllegalStateError:
                    if epoch != self._owned.epoch:
                        return  # revoked while resolving: the next assignment is adopted
                    raise
        if epoch != self._owned.epoch:
            return  # rebalanced meanwhile: adopt the new assignment on the next turn
        pins = self._owned.adopt(positions, committed)
        if pins and self._group is not None:
            await self._committer.commit(consumer, pins, _COMMIT_TIMEOUT)
        if epoch == self._owned.epoch:
            self._owned.adopt_needed = False
            self._apply_pauses()
            self._live.set()

    def _starts_at_end(self, tp: TP) -> bool:
        """``offset_reset=latest``: only for a topic group's main topic, never for queues or
        retry topics (what waits there must not be skipped)."""
        return (
            self._settings.offset_reset == "latest"
            and self._spec.kind == "topic"
            and self._group is not None
            and tp.topic == self._spec.name
        )

    # -- committing -------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.commit_interval)
            if not self._owned.rebalancing:
                pending = pending_commits(self._owned.trackers)
                await self._committer.commit(self._consumer, pending, None)

    def _describe(self) -> str:
        who = f"group {self._group}" if self._group else "broadcast"
        return f"kafka {self._spec.kind} {self._spec.name} ({who})"


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel an owned task and wait until it is over. Our own cancellation (while waiting)
    propagates; the task's outcome is consumed here so nothing is left unretrieved."""
    if task is None:
        return
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.error("eventbus-kafka task %s failed", task.get_name(), exc_info=task.exception())
