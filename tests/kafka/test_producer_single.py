"""One record (an awaited ``publish``) takes its own path through the producer: one timeout
for queueing and the acknowledgement. Its outcomes are those of the many-record path: a send
the producer refuses, an error from the broker, a send that cannot be queued in time and an
acknowledgement that does not come in time each fail that record with the same error, and a
caller's cancellation stays a cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import NotEnoughReplicasError  # type: ignore[import-untyped]
from eventbus_kafka.producer import Producer
from eventbus_kafka.url import parse_url
from eventbus_kafka.wire import KafkaRecord

from eventbus.errors import BrokerUnavailableError, EventBusError, MessageTooLargeError


class FakeProducer:
    """``send`` queues at once (or never, with ``queue=False``); each future is resolved by
    the test, or never."""

    def __init__(self, *, queue: bool = True, refuse: BaseException | None = None) -> None:
        self.queue = queue
        self.refuse = refuse
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[Any]:
        if self.refuse is not None:
            raise self.refuse
        if not self.queue:
            await asyncio.Event().wait()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    async def stop(self) -> None:
        pass


def producer(fake: FakeProducer, options: str = "publish_timeout=0.2") -> Producer:
    p = Producer(parse_url(f"kafka://127.0.0.1:9092?{options}"))
    p._producer = fake
    return p


def record(value: bytes = b"x") -> list[KafkaRecord]:
    return [KafkaRecord(key=None, value=value, headers=[])]


async def test_confirmed() -> None:
    fake = FakeProducer()
    sending = asyncio.create_task(producer(fake).send_all("t", record()))
    await asyncio.sleep(0.01)
    fake.futures[0].set_result(None)
    assert await sending == {}


async def test_an_error_from_the_broker_fails_the_record_translated() -> None:
    fake = FakeProducer()
    sending = asyncio.create_task(producer(fake).send_all("t", record()))
    await asyncio.sleep(0.01)
    raw = NotEnoughReplicasError()
    fake.futures[0].set_exception(raw)
    failures = await sending
    assert list(failures) == [0]
    assert isinstance(failures[0], EventBusError) and failures[0].__cause__ is raw


async def test_a_refused_send_fails_the_record_translated() -> None:
    failures = await producer(FakeProducer(refuse=ValueError("boom"))).send_all("t", record())
    assert list(failures) == [0] and isinstance(failures[0], EventBusError)


async def test_a_body_over_max_message_size_is_not_sent() -> None:
    fake = FakeProducer()
    failures = await producer(fake, "max_message_size=4").send_all("t", record(b"too big"))
    assert isinstance(failures[0], MessageTooLargeError) and not fake.futures


async def test_a_send_not_queued_in_time_fails() -> None:
    failures = await producer(FakeProducer(queue=False)).send_all("t", record())
    assert isinstance(failures[0], BrokerUnavailableError)
    assert "could not queue the message within 0.2s" in str(failures[0])


async def test_no_acknowledgement_in_time_fails_and_leaves_the_record_sent() -> None:
    fake = FakeProducer()
    failures = await producer(fake).send_all("t", record())
    assert isinstance(failures[0], BrokerUnavailableError)
    assert "no acknowledgement within publish_timeout=0.2s" in str(failures[0])
    # Only this publish's wait for its acknowledgement ended: the record is not taken back.
    assert len(fake.futures) == 1


async def test_a_callers_cancellation_is_not_a_timeout() -> None:
    fake = FakeProducer()
    sending = asyncio.create_task(producer(fake, "publish_timeout=5").send_all("t", record()))
    await asyncio.sleep(0.01)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending


async def test_the_many_record_path_agrees() -> None:
    """The same outcomes for two records, through `_await_acks`."""
    fake = FakeProducer()
    sending = asyncio.create_task(producer(fake).send_all("t", record(b"a") + record(b"b")))
    await asyncio.sleep(0.01)
    raw = NotEnoughReplicasError()
    fake.futures[0].set_exception(raw)
    failures = await sending
    assert isinstance(failures[0], EventBusError) and failures[0].__cause__ is raw
    assert isinstance(failures[1], BrokerUnavailableError)
    assert "no acknowledgement within publish_timeout=0.2s" in str(failures[1])
