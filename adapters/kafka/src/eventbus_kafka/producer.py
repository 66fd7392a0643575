"""Publishing: one idempotent ``acks=all`` producer per transport.

The batch path is the only path: every record of a `publish` is handed to the producer first,
then all their acknowledgements are awaited together, so N messages cost about one round trip
per partition instead of N (PITFALLS: awaiting sends one by one from many tasks wakes up
quadratically). Failures are reported per message index. The key picks the partition with
aiokafka's default partitioner: murmur2 of the key bytes, as Java clients do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)

from eventbus.errors import BrokerUnavailableError, MessageTooLargeError
from eventbus_kafka.admin import HEADROOM
from eventbus_kafka.errors import translate
from eventbus_kafka.url import KafkaSettings
from eventbus_kafka.wire import KafkaRecord

__all__ = ["Producer"]

log = logging.getLogger(__name__)

_BATCH_BYTES = 256 * 1024
"""Per-partition batch size: big enough that a burst of small messages goes in few requests."""
_STUCK: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
)
"""The idempotent producer's state is out of step with the broker (after a broker restart
aiokafka burns sequence numbers on failed batches and never resets its producer id, aiokafka
issue #1017): every later send fails the same way until a new producer id is obtained."""
_STOP_OLD_TIMEOUT = 10.0


class Producer:
    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: Any = None
        self._generation = 0
        """Bumped each time the producer is replaced: concurrent failures replace it once."""
        self._replace_lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()

    def _new_producer(self) -> Any:
        settings = self._settings
        return AIOKafkaProducer(
            **settings.client_options(),
            acks="all",
            enable_idempotence=True,
            max_request_size=settings.max_message_size + HEADROOM,
            max_batch_size=_BATCH_BYTES,
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
        if self._retired:
            await asyncio.wait(set(self._retired))

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
        task = asyncio.create_task(self._retire(old), name="eventbus-kafka-retire-producer")
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _retire(self, producer: Any) -> None:
        try:
            await asyncio.wait_for(producer.stop(), _STOP_OLD_TIMEOUT)
        except Exception:
            log.debug("retired kafka producer did not stop cleanly", exc_info=True)

    async def send_all(
        self, topic: str, records: Sequence[KafkaRecord]
    ) -> dict[int, BaseException]:
        """Send every record to ``topic``, wait for all acknowledgements (bounded by
        ``publish_timeout``) and return the failures by index (empty when all confirmed).

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
            failed = await self._send_once(producer, topic, records, todo, deadline)
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
    ) -> dict[int, tuple[BaseException, BaseException]]:
        """Send ``records[i]`` for each index; the failures as (translated, raw) by index."""
        settings = self._settings
        loop = asyncio.get_running_loop()
        failures: dict[int, tuple[BaseException, BaseException]] = {}
        pending: dict[asyncio.Future[Any], int] = {}
        for index in indexes:
            record = records[index]
            if len(record.value) > settings.max_message_size:
                error: BaseException = MessageTooLargeError(
                    f"message body of {len(record.value)} bytes exceeds max_message_size "
                    f"({settings.max_message_size} bytes; set it in the kafka:// URL)"
                )
                failures[index] = (error, error)
                continue
            try:
                async with asyncio.timeout_at(deadline):
                    future = await producer.send(
                        topic, record.value, key=record.key, headers=record.headers
                    )
            except TimeoutError:
                error = BrokerUnavailableError(
                    settings.address,
                    f"could not queue the message within {settings.publish_timeout}s",
                )
                failures[index] = (error, error)
                continue
            except Exception as exc:
                failures[index] = (_translated(exc, settings.address), exc)
                continue
            pending[future] = index
        if pending:
            # asyncio.wait does not cancel what is still in flight: a message confirmed after
            # the deadline is a duplicate when the caller retries, never a loss.
            done, not_done = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            for future in done:
                raised = future.exception()
                if raised is not None:
                    failures[pending[future]] = (_translated(raised, settings.address), raised)
            for future in not_done:
                error = BrokerUnavailableError(
                    settings.address,
                    f"no acknowledgement within publish_timeout={settings.publish_timeout}s",
                )
                failures[pending[future]] = (error, error)
        return failures


def _translated(exc: BaseException, address: str) -> BaseException:
    translated = translate(exc, address)
    if translated is not exc:
        translated.__cause__ = exc
    return translated
