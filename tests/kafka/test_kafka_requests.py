"""Request-reply on a real Kafka: the conformance cases, reply-partition leases, and a
hand-written aiokafka responder."""

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from eventbus import EventBus, Message, RequestTimeoutError
from eventbus.testing.conformance import wait_for
from eventbus.testing.request_conformance import RequestReplySuite

pytestmark = pytest.mark.kafka


class TestKafkaRequestReply(RequestReplySuite):
    @pytest.fixture
    def bus_url(self, kafka_url: str) -> str:
        return kafka_url


def _with(url: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


async def test_each_bus_leases_its_own_reply_partition_and_keeps_it_through_rebalances(
    kafka_url: str,
) -> None:
    """Three requesters of one app share its reply topic, one partition each. Requests are in
    flight (their replies held back) while a fourth bus joins the reply group, which rebalances
    it: no lease moves, and the held replies, written after the rebalance to the addresses
    given before it, all arrive."""
    suffix = uuid.uuid4().hex[:8]
    url = _with(kafka_url, reply_topic=f"rr-replies-{suffix}", reply_partitions=4)
    queue = f"rr-lease-{suffix}"
    responder = EventBus(kafka_url)
    reply_tos: dict[int, set[str]] = {}
    hold = anyio.Event()
    held = 0

    @responder.consume(queue, concurrency=32)
    async def echo(n: int, message: Message) -> int:
        nonlocal held
        assert message.reply_to is not None
        reply_tos.setdefault(n // 1000, set()).add(message.reply_to)
        if n % 1000:  # the second wave waits until the fourth bus joined
            held += 1
            await hold.wait()
        return n

    requesters = [EventBus(url) for _ in range(4)]
    wave = [i * 1000 + j for i in range(3) for j in range(1, 6)]
    results: list[int] = []

    async def ask(bus: EventBus, n: int) -> None:
        results.append(await bus.request(queue, n, timeout=60))

    async with responder, contextlib.AsyncExitStack() as stack:
        for bus in requesters:
            await stack.enter_async_context(bus.publisher())
        for i, bus in enumerate(requesters[:3]):
            assert await bus.request(queue, i * 1000, timeout=30) == i * 1000
        before = {i: set(reply_tos[i]) for i in range(3)}
        assert len({address for s in before.values() for address in s}) == 3
        async with anyio.create_task_group() as tg:
            for n in wave:
                tg.start_soon(ask, requesters[n // 1000], n)
            await wait_for(lambda: held == len(wave), what="the wave in the handlers")
            # The fourth bus's first request joins the reply group: a rebalance of all four.
            assert await requesters[3].request(queue, 3000, timeout=30) == 3000
            hold.set()
    assert sorted(results) == wave
    for i in range(3):
        assert reply_tos[i] == before[i], "a lease moved in a rebalance"
    all_leases = {next(iter(reply_tos[i])) for i in range(4)}
    assert len(all_leases) == 4
    assert all(a.startswith(f"rr-replies-{suffix}:") for a in all_leases)


async def test_with_no_free_reply_partition_a_request_waits_for_one(kafka_url: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    url = _with(kafka_url, reply_topic=f"rr-replies-{suffix}", reply_partitions=1)
    queue = f"rr-full-{suffix}"
    responder, first, second = EventBus(kafka_url), EventBus(url), EventBus(url)

    @responder.consume(queue)
    async def echo(n: int) -> int:
        return n

    async with responder, second.publisher():
        async with first.publisher():
            assert await first.request(queue, 1, timeout=30) == 1
            with pytest.raises(RequestTimeoutError):
                await second.request(queue, 2, timeout=3)
        # The first bus stopped and left the group: its partition is free for the second.
        assert await second.request(queue, 3, timeout=30) == 3


async def test_a_raw_kafka_client_answers_a_request_by_hand(kafka_url: str) -> None:
    """A plain aiokafka responder reads ``eventbus-reply-to`` (``topic:partition``) and
    ``ce_correlationid`` and writes the reply there."""
    queue = f"rr-raw-{uuid.uuid4().hex[:10]}"
    servers = kafka_url.removeprefix("kafka://").split("?")[0]
    bus = EventBus(kafka_url)
    async with bus.publisher():
        consumer = AIOKafkaConsumer(
            queue, bootstrap_servers=servers, group_id=f"raw-{queue}", auto_offset_reset="earliest"
        )
        producer = AIOKafkaProducer(bootstrap_servers=servers)
        await producer.start()
        answered: list[tuple[str, int]] = []

        async def respond() -> None:
            await consumer.start()
            try:
                async for record in consumer:
                    headers = dict(record.headers)
                    topic, _, partition = headers["eventbus-reply-to"].decode().rpartition(":")
                    answered.append((topic, int(partition)))
                    total = json.loads(record.value)["qty"] * 2
                    await producer.send_and_wait(
                        topic,
                        json.dumps({"total": total}).encode(),
                        partition=int(partition),
                        headers=[
                            ("ce_correlationid", headers["ce_correlationid"]),
                            ("content-type", b"application/json"),
                        ],
                    )
                    return
            finally:
                await consumer.stop()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(respond)
                reply = await bus.request(queue, {"qty": 21}, response=dict, timeout=60)
        finally:
            await producer.stop()
    assert reply == {"total": 42}
    assert answered and answered[0][0].endswith(".replies")


async def test_an_eventbus_responder_answers_a_raw_kafka_requester(kafka_url: str) -> None:
    """A plain aiokafka requester names its reply topic (no partition) in
    ``eventbus-reply-to`` and gets the handler's return value there, with its correlation id."""
    suffix = uuid.uuid4().hex[:10]
    queue, replies = f"rr-rawreq-{suffix}", f"rr-rawreplies-{suffix}"
    servers = kafka_url.removeprefix("kafka://").split("?")[0]
    bus = EventBus(kafka_url)

    @bus.consume(queue)
    async def double(n: int) -> int:
        return n * 2

    await create_topic(servers, replies)  # the requester's own topic: the responder makes none
    async with bus:
        record = await raw_request(servers, queue, replies, b"21", b"c-21")
    assert record.value == b"42"
    assert dict(record.headers)["ce_correlationid"] == b"c-21"


async def test_a_reply_to_a_missing_topic_is_dropped_at_once_and_creates_nothing(
    kafka_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A raw requester names a reply topic that does not exist: the handler runs once, its
    reply is dropped with a warning (nobody could read it), the request is acked, not retried
    or dead-lettered, and the topic is not created, although this broker creates topics on
    first use."""
    suffix = uuid.uuid4().hex[:10]
    queue, replies = f"rr-missing-{suffix}", f"rr-nowhere-{suffix}"
    servers = kafka_url.removeprefix("kafka://").split("?")[0]
    bus = EventBus(_with(kafka_url, publish_timeout=60))
    calls: list[int] = []

    @bus.consume(queue)
    async def double(n: int) -> int:
        calls.append(n)
        return n * 2

    producer = AIOKafkaProducer(bootstrap_servers=servers)
    async with bus:
        await producer.start()
        try:
            for n in (1, 2):
                headers = reply_headers(replies, b"c")
                await producer.send_and_wait(queue, str(n).encode(), key=b"k", headers=headers)
        finally:
            await producer.stop()
        stats = bus.subscribers[0].stats
        # Well within publish_timeout: a wait for the topic would take a minute per request.
        await wait_for(lambda: stats.handled == 2, within=30, what="both handled")
    assert calls == [1, 2], "each handled once, not retried"
    assert (stats.retried, stats.dead_lettered) == (0, 0)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 2 and all(replies in line for line in dropped), dropped
    async with kafka_admin(servers) as admin:
        assert replies not in await admin.list_topics()


async def test_a_reply_topic_that_appears_within_the_grace_gets_the_reply(
    kafka_url: str,
) -> None:
    """The requester's reply topic shows up a moment after the responder first asked (as when
    the broker asked has not learned of it yet): the reply still goes there."""
    suffix = uuid.uuid4().hex[:10]
    queue, replies = f"rr-late-{suffix}", f"rr-latereplies-{suffix}"
    servers = kafka_url.removeprefix("kafka://").split("?")[0]
    bus = EventBus(kafka_url)
    asked = anyio.Event()

    @bus.consume(queue)
    async def double(n: int) -> int:
        asked.set()
        return n * 2

    async def create_it_late() -> None:
        with anyio.fail_after(30):
            await asked.wait()
        await anyio.sleep(0.5)  # the responder has found it missing by now
        await create_topic(servers, replies)

    async with bus:
        record = await raw_request(servers, queue, replies, b"4", b"c-4", create_it_late)
    assert record.value == b"8"
    assert bus.subscribers[0].stats.handled == 1


def reply_headers(replies: str, correlation_id: bytes) -> list[tuple[str, bytes]]:
    """What a raw requester puts on a request: where to reply, and the correlation id."""
    return [("eventbus-reply-to", replies.encode()), ("ce_correlationid", correlation_id)]


async def raw_request(
    servers: str,
    queue: str,
    replies: str,
    body: bytes,
    correlation_id: bytes,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> Any:
    """As a plain aiokafka requester: send ``body`` to ``queue`` asking for the reply on topic
    ``replies``, run ``meanwhile``, then return the first record on ``replies``."""
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    consumer = AIOKafkaConsumer(
        replies, bootstrap_servers=servers, group_id=f"raw-{replies}", auto_offset_reset="earliest"
    )
    await producer.start()
    try:
        await producer.send_and_wait(queue, body, headers=reply_headers(replies, correlation_id))
        if meanwhile is not None:
            await meanwhile()
        await consumer.start()
        with anyio.fail_after(60):
            return await consumer.getone()
    finally:
        await consumer.stop()
        await producer.stop()


@contextlib.asynccontextmanager
async def kafka_admin(servers: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def create_topic(servers: str, name: str) -> None:
    async with kafka_admin(servers) as admin:
        await admin.create_topics([NewTopic(name, 1, 1)])
