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
from eventbus_kafka.producer import Producer, _Deadlines
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


async def test_each_send_gets_its_own_deadline_from_one_timer() -> None:
    """Deadlines share one timer: one that fires for a send that finished is set again for
    the next, which still gets its whole publish_timeout, and overdue sends fail together."""
    fake = FakeProducer()
    p = producer(fake, "publish_timeout=0.3")
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(p.send_all("t", record(b"1")))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(p.send_all("t", record(b"2")))
    third = asyncio.create_task(p.send_all("t", record(b"3")))
    await asyncio.sleep(0.01)
    fake.futures[0].set_result(None)
    assert await first == {}
    started = loop.time()
    failures = await second
    waited = loop.time() - started
    assert isinstance(failures[0], BrokerUnavailableError)
    assert 0.15 < waited < 0.35, waited  # its own 0.3 s from when it began, not the first's
    assert isinstance((await third)[0], BrokerUnavailableError)
    assert not p._deadlines._queue and p._deadlines._timer is None


async def test_a_cancelled_send_leaves_no_deadline_behind() -> None:
    fake = FakeProducer()
    p = producer(fake, "publish_timeout=5")
    sending = asyncio.create_task(p.send_all("t", record()))
    await asyncio.sleep(0.01)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert not p._deadlines._queue
    # The timer set for it fires at its deadline for nothing; a later send is unaffected.
    later = asyncio.create_task(p.send_all("t", record()))
    await asyncio.sleep(0.01)
    fake.futures[-1].set_result(None)
    assert await later == {}


def test_deadlines_follow_the_transport_to_a_new_event_loop() -> None:
    """A send confirmed at once leaves the timer set on its loop; a transport connected again
    on a new loop sets one there, or an unacknowledged send would never time out."""
    fake = FakeProducer()
    p = producer(fake, "publish_timeout=0.2")

    async def confirmed() -> dict[int, BaseException]:
        sending = asyncio.create_task(p.send_all("t", record()))
        await asyncio.sleep(0.01)
        fake.futures[-1].set_result(None)
        return await sending

    async def unacknowledged() -> dict[int, BaseException]:
        return await asyncio.wait_for(p.send_all("t", record()), 2)

    assert asyncio.run(confirmed()) == {}
    failures = asyncio.run(unacknowledged())
    assert isinstance(failures[0], BrokerUnavailableError)


async def test_a_deadline_earlier_than_those_queued_still_fires_on_time() -> None:
    """A send retried on a new producer keeps its first deadline, earlier than those of sends
    that began since: it is put in order and the timer is set for it."""
    deadlines = _Deadlines()
    loop = asyncio.get_running_loop()

    async def wait(when: float) -> tuple[bool, float]:
        task = asyncio.current_task()
        assert task is not None
        entry = deadlines.start(loop, when, task)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            task.uncancel()
            return entry.expired, loop.time()
        finally:
            deadlines.finish(entry)
        return False, loop.time()

    now = loop.time()
    late = asyncio.create_task(wait(now + 0.5))
    await asyncio.sleep(0)
    early = asyncio.create_task(wait(now + 0.1))
    expired, at = await early
    assert expired and at - now < 0.3
    expired, at = await late
    assert expired and at - now >= 0.5
    assert not deadlines._queue
