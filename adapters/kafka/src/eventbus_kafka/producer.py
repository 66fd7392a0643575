"""Publishing: one idempotent ``acks=all`` producer per transport.

The batch path is the only path: every record of a `publish` is handed to the producer first,
then all their acknowledgements are awaited together, so N messages cost about one round trip
per partition instead of N (PITFALLS: awaiting sends one by one from many tasks wakes up
quadratically). A large publish builds its record batches itself, one per partition, and
submits them whole; a small one uses ``send`` per record. Failures are reported per message
index. The key picks the partition with aiokafka's default partitioner: murmur2 of the key
bytes, as Java clients do.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from random import choice
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    InvalidProducerEpoch,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]
from aiokafka.record.default_records import (  # type: ignore[import-untyped]
    DefaultRecordBatchBuilder,
)

from eventbus.backoff import Backoff
from eventbus.errors import BrokerUnavailableError, MessageTooLargeError
from eventbus.loggers import get_logger
from eventbus_kafka.admin import HEADROOM
from eventbus_kafka.errors import is_transient, translate
from eventbus_kafka.url import KafkaSettings
from eventbus_kafka.wire import KafkaRecord

__all__ = ["Producer"]

log = get_logger(__name__)

_BATCH_BYTES = 256 * 1024
"""Per-partition batch size: big enough that a burst of small messages goes in few requests."""
_MIN_BATCH = 16
"""From this many records in one call, build the record batches ourselves (`_queue_batches`),
unless another call is doing so; below it, ``send`` each (`_queue_each`)."""
_PARTITIONER = DefaultPartitioner()
"""Given to every producer and used by `_queue_batches` too, so both paths agree."""
_estimate_size = DefaultRecordBatchBuilder.estimate_size_in_bytes
_STUCK: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
)
"""The idempotent producer's state is out of step with the broker (after a broker restart
aiokafka burns sequence numbers on failed batches and never resets its producer id, aiokafka
issue #1017): every later send fails the same way until a new producer id is obtained."""
_STOP_OLD_TIMEOUT = 10.0


def _when(entry: _Deadline) -> float:
    return entry.when


class _Deadline:
    """One single-record send in flight (`Producer._send_one`)."""

    __slots__ = ("expired", "task", "when")

    def __init__(self, when: float, task: asyncio.Task[Any]) -> None:
        self.when = when
        self.task: asyncio.Task[Any] | None = task
        """None once the send finished (or was cancelled for being overdue)."""
        self.expired = False


class _Deadlines:
    """The deadlines of a producer's single-record sends, on one timer.

    Every send is given ``publish_timeout`` from when it began, so the deadlines fall due in
    the order the sends began: a queue in that order and one timer, set for the earliest send
    still running, do what a timer per send did (``asyncio.timeout``: a timer handle pushed
    onto the event loop's heap and cancelled, about a fifth of the CPU an awaited publish
    spent in eventbus). Finished sends leave the front of the queue as they finish; the timer,
    when it fires for one that finished meanwhile, is set again for the earliest still running.
    An overdue send's task is cancelled, as ``asyncio.timeout`` does, and the send tells that
    cancellation from any other by its entry's ``expired``."""

    def __init__(self) -> None:
        self._queue: deque[_Deadline] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    def start(
        self, loop: asyncio.AbstractEventLoop, when: float, task: asyncio.Task[Any]
    ) -> _Deadline:
        if loop is not self._loop:  # a transport connected again on another event loop
            if self._timer is not None:
                self._timer.cancel()
            self._queue.clear()
            self._loop, self._timer = loop, None
        entry = _Deadline(when, task)
        queue = self._queue
        if not queue or queue[-1].when <= when:
            queue.append(entry)
        else:  # a send retried on a new producer keeps its first deadline: rare, put in order
            queue.insert(bisect_right(queue, when, key=_when), entry)
        if self._timer is None or self._timer_when > queue[0].when:
            self._arm(loop, queue[0].when)
        return entry

    def finish(self, entry: _Deadline) -> None:
        entry.task = None
        queue = self._queue
        while queue and queue[0].task is None:
            queue.popleft()

    def _fire(self, due: float) -> None:
        """The timer set for ``due``: every send due by then is overdue."""
        self._timer = None
        queue = self._queue
        while queue:
            entry = queue[0]
            task = entry.task
            if task is not None:
                if entry.when > due:
                    break
                entry.expired = True
                entry.task = None
                task.cancel()
            queue.popleft()
        if queue and self._loop is not None:
            self._arm(self._loop, queue[0].when)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire, when)
        self._timer_when = when


class Producer:
    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: Any = None
        self._generation = 0
        """Bumped each time the producer is replaced: concurrent failures replace it once."""
        self._replace_lock = asyncio.Lock()
        self._deadlines = _Deadlines()
        self._batching = False
        """A publish is queueing record batches of its own. Others meanwhile ``send`` each
        record: ``send_batch`` waits for the partition's previous batch to leave, so
        concurrent batch builders would queue up behind each other, one request each, and
        wake each other up quadratically (measured: 50 tasks publishing 20 messages each
        went from ~30k to ~10k msg/s), where ``send`` shares the open batch."""

    def _new_producer(self) -> Any:
        settings = self._settings
        return AIOKafkaProducer(
            **settings.client_options(),
            acks="all",
            enable_idempotence=True,
            max_request_size=settings.max_message_size + HEADROOM,
            max_batch_size=_BATCH_BYTES,
            partitioner=_PARTITIONER,
            # Bounded waits for metadata and full batches; the whole publish is bounded too.
            request_timeout_ms=int(settings.publish_timeout * 1000),
        )

    async def start(self) -> None:
        producer = self._new_producer()
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            # Flushes what is queued: a publish still waiting gets its confirmation or error.
            await producer.stop()

    async def _replace(self, generation: int, deadline: float) -> None:
        """Replace the producer of ``generation`` by a new one (a new producer id, sequence
        numbers from zero). Once per generation: a caller that lost the race just returns,
        and its resend goes to the producer the winner started."""
        async with asyncio.timeout_at(deadline), self._replace_lock:
            if generation != self._generation or self._producer is None:
                return
            log.warning(
                "kafka producer at %s is out of sequence with the broker; starting a new one",
                self._settings.address,
            )
            fresh = self._new_producer()
            try:
                await fresh.start()
            except BaseException:
                await fresh.stop()
                raise
            if self._producer is None:  # the transport closed meanwhile
                await fresh.stop()
                return
            old, self._producer = self._producer, fresh
            self._generation += 1
        # The old producer fails what it still holds (those publishes resend on the new one).
        # Stopped here, by the publish that replaced it, rather than in a detached task: it
        # is rare, bounded, and nothing outlives the call that started it.
        await self._retire(old)

    async def _retire(self, producer: Any) -> None:
        try:
            await asyncio.wait_for(producer.stop(), _STOP_OLD_TIMEOUT)
        except Exception:
            log.debug("retired kafka producer did not stop cleanly", exc_info=True)

    async def send_all(
        self, topic: str, records: Sequence[KafkaRecord], partition: int | None = None
    ) -> dict[int, BaseException]:
        """Send every record to ``topic`` (to ``partition``, else by key), wait for all
        acknowledgements (bounded by ``publish_timeout``) and return the failures by index
        (empty when all confirmed).

        Records refused because the producer's idempotence state is out of step with the
        broker are sent again on a new producer, within the same ``publish_timeout``."""
        if self._producer is None:
            raise RuntimeError("the Kafka transport is not connected; call connect() first")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.publish_timeout
        failures: dict[int, BaseException] = {}
        todo = list(range(len(records)))
        while True:
            producer, generation = self._producer, self._generation
            if producer is None:
                raise RuntimeError("the Kafka transport is not connected; call connect() first")
            failed = await self._send_once(producer, topic, records, todo, deadline, partition)
            if not failed:
                return failures
            replaced = generation != self._generation
            # Out of sequence, or failed by a producer another publish has replaced meanwhile
            # (stopping it fails what it still held): send again on the current producer.
            stuck = [
                i
                for i, (_, raw) in failed.items()
                if isinstance(raw, _STUCK) or (replaced and isinstance(raw, KafkaError))
            ]
            for index, (error, _) in failed.items():
                failures[index] = error
            if not stuck or loop.time() >= deadline:
                return failures
            try:
                await self._replace(generation, deadline)
            except Exception as exc:
                log.warning("could not replace the kafka producer: %r", exc)
                return failures
            for index in stuck:
                del failures[index]
            todo = sorted(stuck)  # in the caller's order: per-key order holds

    async def _send_once(
        self,
        producer: Any,
        topic: str,
        records: Sequence[KafkaRecord],
        indexes: Sequence[int],
        deadline: float,
        partition: int | None = None,
    ) -> dict[int, tuple[BaseException, BaseException]]:
        """Send ``records[i]`` for each index; the failures as (translated, raw) by index."""
        if len(indexes) == 1:
            index = indexes[0]
            return await self._send_one(producer, topic, records[index], index, deadline, partition)
        failures: dict[int, tuple[BaseException, BaseException]] = {}
        pending: dict[asyncio.Future[Any], list[int]] = {}
        refused: dict[int, BaseException] = {}  # by the producer, before being queued
        todo = [i for i in indexes if self._fits(records[i], i, failures)]
        # One deadline for queueing the whole call (not a timeout per record: that was a
        # seventh of the CPU of a large publish). What is not queued by then fails.
        try:
            async with asyncio.timeout_at(deadline):
                if len(todo) < _MIN_BATCH or self._batching or partition is not None:
                    await self._queue_each(
                        producer, topic, records, todo, pending, refused, partition
                    )
                else:
                    self._batching = True
                    try:
                        await self._queue_batches(producer, topic, records, todo, pending, refused)
                    finally:
                        self._batching = False
        except Exception as exc:
            raw: BaseException = exc
            error: BaseException
            if isinstance(exc, TimeoutError):
                error = raw = BrokerUnavailableError(
                    self._settings.address,
                    f"could not queue the message within {self._settings.publish_timeout}s",
                )
            else:  # before the records could be partitioned (e.g. no metadata)
                error = _translated(exc, self._settings)
            accounted = {i for members in pending.values() for i in members}
            for index in todo:
                if index not in accounted and index not in refused:
                    failures[index] = (error, raw)
        for index, cause in refused.items():
            failures[index] = (_translated(cause, self._settings), cause)
        if pending:
            await self._await_acks(pending, deadline, failures)
        return failures

    async def _send_one(
        self,
        producer: Any,
        topic: str,
        record: KafkaRecord,
        index: int,
        deadline: float,
        partition: int | None = None,
    ) -> dict[int, tuple[BaseException, BaseException]]:
        """`_send_once` for one record (an awaited ``publish``), with the same outcomes: one
        deadline (`_Deadlines`) covers queueing and the acknowledgement, which is awaited
        directly. Through `_await_acks` an awaited publish paid for a second timer,
        ``asyncio.wait``'s waiter future and callbacks, and one more turn of the event loop
        before the caller resumed.

        An overdue send cancels the producer's future if it is still pending: that does not
        stop the record (aiokafka resolves only the futures not done yet), so, as with
        ``asyncio.wait``, a record confirmed after the deadline is a duplicate when the caller
        retries, never a loss."""
        failures: dict[int, tuple[BaseException, BaseException]] = {}
        if not self._fits(record, index, failures):
            return failures
        settings = self._settings
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Kafka publish must run in an asyncio task")
        cancelling = task.cancelling()
        entry = self._deadlines.start(asyncio.get_running_loop(), deadline, task)
        future: asyncio.Future[Any] | None = None
        try:
            try:
                future = await producer.send(
                    topic,
                    record.value,
                    key=record.key,
                    headers=record.headers,
                    partition=partition,
                )
            except Exception as exc:  # refused by the producer, before being queued
                failures[index] = (_translated(exc, settings), exc)
                return failures
            await future
            return failures
        except asyncio.CancelledError:
            if not entry.expired or task.uncancel() > cancelling:
                raise  # the caller's cancellation, not the deadline
        except Exception as exc:  # the broker's answer was an error
            failures[index] = (_translated(exc, settings), exc)
            return failures
        finally:
            self._deadlines.finish(entry)
        # The deadline passed: while queueing, or before an acknowledgement came (one that
        # came in the same turn of the loop as the deadline counts, as with asyncio.wait).
        error: BaseException
        if future is None:
            error = BrokerUnavailableError(
                settings.address,
                f"could not queue the message within {settings.publish_timeout}s",
            )
        elif future.done() and not future.cancelled():
            raised = future.exception()
            if raised is None:
                return failures
            failures[index] = (_translated(raised, settings), raised)
            return failures
        else:
            error = BrokerUnavailableError(
                settings.address,
                f"no acknowledgement within publish_timeout={settings.publish_timeout}s",
            )
        failures[index] = (error, error)
        return failures

    def _fits(
        self,
        record: KafkaRecord,
        index: int,
        failures: dict[int, tuple[BaseException, BaseException]],
    ) -> bool:
        """The size checks ``AIOKafkaProducer.send`` makes, done before partitioning so a too
        large record fails alone in a batch path too (aiokafka's batch builder does not check)."""
        settings = self._settings
        if len(record.value) > settings.max_message_size:
            error: BaseException = MessageTooLargeError(
                f"message body of {len(record.value)} bytes exceeds max_message_size "
                f"({settings.max_message_size} bytes; set it in the kafka:// URL)"
            )
            failures[index] = (error, error)
            return False
        size = _estimate_size(record.key, record.value, record.headers)
        if size > settings.max_message_size + HEADROOM:
            raw = MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized which is larger than the "
                "maximum request size you have configured with the max_request_size "
                "configuration"
            )
            failures[index] = (_translated(raw, settings), raw)
            return False
        return True

    async def _queue_each(
        self,
        producer: Any,
        topic: str,
        records: Sequence[KafkaRecord],
        indexes: Sequence[int],
        pending: dict[asyncio.Future[Any], list[int]],
        refused: dict[int, BaseException],
        partition: int | None = None,
    ) -> None:
        """A few records (or records for one given partition): ``send`` each, so concurrent
        small publishes share the producer's open batch (a batch of our own per call would
        wait for the previous one to drain: one round trip per publish)."""
        for index in indexes:
            record = records[index]
            try:
                future = await producer.send(
                    topic,
                    record.value,
                    key=record.key,
                    headers=record.headers,
                    partition=partition,
                )
            except Exception as exc:
                refused[index] = exc
                continue
            pending[future] = [index]

    async def _queue_batches(
        self,
        producer: Any,
        topic: str,
        records: Sequence[KafkaRecord],
        indexes: Sequence[int],
        pending: dict[asyncio.Future[Any], list[int]],
        refused: dict[int, BaseException],
    ) -> None:
        """Many records: build one record batch per partition ourselves (``create_batch``) and
        submit it whole (``send_batch``): no future, metadata tuple or coroutine per record.

        The partition is chosen exactly as ``AIOKafkaProducer.send`` chooses it: for a key,
        the same partitioner object called with the same lists (murmur2, Java-compatible),
        once per distinct key; for no key, a random available partition per record. Within a
        partition records keep the caller's order and batches are submitted in order, so
        per-key order holds."""
        await producer.partitions_for(topic)  # waits for the topic's metadata, as send() does
        cluster = producer.client.cluster
        all_partitions = list(cluster.partitions_for_topic(topic))
        available = list(cluster.available_partitions_for_topic(topic) or ())
        # No key: what DefaultPartitioner does for None, without its call per record.
        keyless = available or all_partitions
        by_key: dict[bytes, int] = {}
        open_batches: dict[int, tuple[Any, list[int]]] = {}
        full: list[tuple[int, Any, list[int]]] = []
        for index in indexes:
            record = records[index]
            key = record.key
            if key is None:
                partition = choice(keyless)
            else:
                partition = by_key.get(key)
                if partition is None:
                    partition = by_key[key] = _PARTITIONER(key, all_partitions, available)
            entry = open_batches.get(partition)
            if entry is None:
                entry = open_batches[partition] = (producer.create_batch(), [])
            builder, members = entry
            if (
                builder.append(timestamp=None, key=key, value=record.value, headers=record.headers)
                is None
            ):
                # Full (a builder always takes its first record, whatever its size).
                full.append((partition, builder, members))
                builder, members = producer.create_batch(), []
                open_batches[partition] = (builder, members)
                builder.append(timestamp=None, key=key, value=record.value, headers=record.headers)
            members.append(index)
        batches = full + [(p, b, m) for p, (b, m) in open_batches.items()]
        failed: dict[int, BaseException] = {}
        for partition, builder, members in batches:
            # Left open, as aiokafka advises for mixing both interfaces: a concurrent send()
            # to this partition appends to it instead of waiting for it to leave.
            if partition not in failed:
                try:
                    pending[await _submit(producer, builder, topic, partition)] = members
                    continue
                except Exception as exc:
                    failed[partition] = exc
            # This batch, or an earlier one of its partition, was refused: later records of
            # its keys must not overtake the refused ones.
            refused.update(dict.fromkeys(members, failed[partition]))

    async def _await_acks(
        self,
        pending: dict[asyncio.Future[Any], list[int]],
        deadline: float,
        failures: dict[int, tuple[BaseException, BaseException]],
    ) -> None:
        settings = self._settings
        loop = asyncio.get_running_loop()
        # asyncio.wait does not cancel what is still in flight: a message confirmed after
        # the deadline is a duplicate when the caller retries, never a loss.
        done, not_done = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        for future in done:
            raised = future.exception()
            if raised is not None:
                translated = _translated(raised, settings)
                for index in pending[future]:
                    failures[index] = (translated, raised)
        if not_done:
            error = BrokerUnavailableError(
                settings.address,
                f"no acknowledgement within publish_timeout={settings.publish_timeout}s",
            )
            for future in not_done:
                for index in pending[future]:
                    failures[index] = (error, error)


async def _submit(producer: Any, builder: Any, topic: str, partition: int) -> Any:
    """``send_batch``, tried again while it fails transiently; the caller bounds the whole.

    ``send_batch`` waits for the partition's previous batch to be taken by the sender, and
    gives up with ``KafkaTimeoutError`` well before its ``request_timeout_ms`` when several
    publishes compete for a partition during a leader election or a broker restart (each turn
    of its wait loop subtracts the whole time waited so far). It also raises the error of
    *that* batch when it failed. In both cases our batch was not queued, so submitting it again
    is safe; ``send`` (one record into the open batch) rarely waits at all, so without this a
    broker restart failed large publishes that small ones rode out (DESIGN 3.9)."""
    backoff = Backoff(0.05, 1.0)
    while True:
        try:
            return await producer.send_batch(builder, topic, partition=partition)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.debug("kafka batch for %s/%d not queued yet: %r", topic, partition, exc)
        await asyncio.sleep(backoff.next())


def _translated(exc: BaseException, settings: KafkaSettings) -> BaseException:
    translated = translate(exc, settings.address, settings.user)
    if translated is not exc:
        translated.__cause__ = exc
    return translated
