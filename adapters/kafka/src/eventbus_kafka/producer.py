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

from eventbus.errors import BrokerUnavailableError, MessageTooLargeError
from eventbus_kafka.admin import HEADROOM
from eventbus_kafka.errors import translate
from eventbus_kafka.url import KafkaSettings
from eventbus_kafka.wire import KafkaRecord

__all__ = ["Producer"]

log = logging.getLogger(__name__)

_BATCH_BYTES = 256 * 1024
"""Per-partition batch size: big enough that a burst of small messages goes in few requests."""


class Producer:
    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: Any = None

    async def start(self) -> None:
        settings = self._settings
        producer = AIOKafkaProducer(
            **settings.client_options(),
            acks="all",
            enable_idempotence=True,
            max_request_size=settings.max_message_size + HEADROOM,
            max_batch_size=_BATCH_BYTES,
            # Bounded waits for metadata and full batches; the whole publish is bounded too.
            request_timeout_ms=int(settings.publish_timeout * 1000),
        )
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

    async def send_all(
        self, topic: str, records: Sequence[KafkaRecord]
    ) -> dict[int, BaseException]:
        """Send every record to ``topic``, wait for all acknowledgements (bounded by
        ``publish_timeout``) and return the failures by index (empty when all confirmed)."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("the Kafka transport is not connected; call connect() first")
        settings = self._settings
        failures: dict[int, BaseException] = {}
        pending: dict[asyncio.Future[Any], int] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.publish_timeout
        for index, record in enumerate(records):
            if len(record.value) > settings.max_message_size:
                failures[index] = MessageTooLargeError(
                    f"message body of {len(record.value)} bytes exceeds max_message_size "
                    f"({settings.max_message_size} bytes; set it in the kafka:// URL)"
                )
                continue
            try:
                async with asyncio.timeout_at(deadline):
                    future = await producer.send(
                        topic, record.value, key=record.key, headers=record.headers
                    )
            except TimeoutError:
                failures[index] = BrokerUnavailableError(
                    settings.address,
                    f"could not queue the message within {settings.publish_timeout}s",
                )
                continue
            except Exception as exc:
                failures[index] = _translated(exc, settings.address)
                continue
            pending[future] = index
        if pending:
            # asyncio.wait does not cancel what is still in flight: a message confirmed after
            # the deadline is a duplicate when the caller retries, never a loss.
            done, not_done = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            for future in done:
                error = future.exception()
                if error is not None:
                    failures[pending[future]] = _translated(error, settings.address)
            for future in not_done:
                failures[pending[future]] = BrokerUnavailableError(
                    settings.address,
                    f"no acknowledgement within publish_timeout={settings.publish_timeout}s",
                )
        return failures


def _translated(exc: BaseException, address: str) -> BaseException:
    translated = translate(exc, address)
    if translated is not exc:
        translated.__cause__ = exc
    return translated
