"""A producer left out of sequence with the broker (aiokafka issue #1017, after a broker
restart) is replaced once, however many publishes fail concurrently, and the failed records
are sent again on the new one; other failures are still reported per message."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import (  # type: ignore[import-untyped]
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from eventbus_kafka.producer import Producer
from eventbus_kafka.url import parse_url
from eventbus_kafka.wire import KafkaRecord

from eventbus.errors import EventBusError, MessageTooLargeError


class FakeProducer:
    """Fails every send with ``error`` (a stuck producer), or confirms it."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.sent: list[bytes] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        await asyncio.sleep(0.01)
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.error is not None:
            future.set_exception(self.error)
        else:
            self.sent.append(value)
            future.set_result(None)
        return future


def records(*values: bytes) -> list[KafkaRecord]:
    return [KafkaRecord(key=None, value=v, headers=[]) for v in values]


@pytest.mark.parametrize("error", [OutOfOrderSequenceNumber, UnknownProducerId])
async def test_stuck_producer_is_replaced_once_and_records_resent(
    error: type[BaseException],
) -> None:
    producer = Producer(parse_url("kafka://127.0.0.1:9092?publish_timeout=5"))
    stuck = FakeProducer(error())
    created: list[FakeProducer] = []

    def new_producer() -> FakeProducer:
        fresh = FakeProducer(None)
        created.append(fresh)
        return fresh

    producer._new_producer = new_producer  # type: ignore[method-assign]
    producer._producer = stuck
    results = await asyncio.gather(
        *(producer.send_all("t", records(b"a%d" % i, b"b%d" % i)) for i in range(10))
    )
    assert results == [{}] * 10
    assert len(created) == 1, "concurrent failures replace the producer once"
    assert sorted(created[0].sent) == sorted(
        [b"a%d" % i for i in range(10)] + [b"b%d" % i for i in range(10)]
    )
    await producer.stop()
    assert stuck.stopped and created[0].stopped


async def test_other_failures_are_still_reported_per_message() -> None:
    producer = Producer(parse_url("kafka://127.0.0.1:9092?publish_timeout=5&max_message_size=4"))
    created: list[FakeProducer] = []

    def new_producer() -> FakeProducer:
        fresh = FakeProducer(None)
        created.append(fresh)
        return fresh

    producer._new_producer = new_producer  # type: ignore[method-assign]
    producer._producer = FakeProducer(OutOfOrderSequenceNumber())
    failures = await producer.send_all("t", records(b"ok", b"far too big", b"ok2"))
    assert list(failures) == [1]
    assert isinstance(failures[1], MessageTooLargeError)
    assert created[0].sent == [b"ok", b"ok2"]

    producer._producer = FakeProducer(ValueError("boom"))  # not a sequence problem
    failures = await producer.send_all("t", records(b"x"))
    assert list(failures) == [0] and isinstance(failures[0], EventBusError)
    assert len(created) == 1
    await producer.stop()
