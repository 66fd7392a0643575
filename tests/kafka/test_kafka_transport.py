"""The Kafka transport through its SPI on a real broker: publish, subscribe, settle, depth."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]
from eventbus_kafka import KafkaTransport
from eventbus_kafka.wire import NOT_BEFORE, TARGET_GROUP
from kafka_helpers import group_of, messages, nothing_more, subscribe, take, wait_until

from eventbus.dlq import dlq_depths, dlq_purge, dlq_show
from eventbus.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    MessageTooLargeError,
    PublishError,
)
from eventbus.message import Message
from eventbus.transports.base import Destination, RawDelivery, SubscriptionSpec

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

Name = Callable[[str], str]


def topic_spec(topic: str, group: str | None = "", prefetch: int = 100) -> SubscriptionSpec:
    """``group=""``: the test's own group (see `group_of`); None: a broadcast."""
    return SubscriptionSpec(topic, "topic", group_of(topic) if group == "" else group, prefetch)


def queue_spec(queue: str, prefetch: int = 100) -> SubscriptionSpec:
    return SubscriptionSpec(queue, "queue", None, prefetch)


def partition_of(key: str, partitions: int = 6) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def keys_on_distinct_partitions(count: int) -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < count:
        found.setdefault(partition_of(f"key-{i}"), f"key-{i}")
        i += 1
    return list(found.values())


async def committed(transport: KafkaTransport, group: str) -> dict[tuple[str, int], int]:
    offsets = await transport._admin.group_offsets(group)
    return {tp: offset for tp, (offset, _) in offsets.items()}


# -- publishing and the wire format --------------------------------------------------------


async def test_round_trip_keeps_every_field(transport: KafkaTransport, name: Name) -> None:
    topic = name("meta")
    sub = await subscribe(transport, topic_spec(topic))
    sent = Message(
        id="id-1",
        topic=topic,
        body=bytes(range(256)),
        key="clé",
        headers={"tenant": "ünï ✓"},
        content_type="application/octet-stream",
        type="Thing",
        timestamp=datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        correlation_id="corr",
        reply_to="replies",
    )
    big = Message(id="big", topic=topic, body=b"\x01" * transport.capabilities.max_message_size)
    await transport.publish(Destination(topic), [sent, big])
    got = {d.message.id: d for d in await take(sub, 2)}
    assert got["id-1"].message == sent
    assert got["big"].message.body == big.body
    assert got["id-1"].native == {"partition": str(partition_of("clé")), "offset": "0"}
    assert got["id-1"].redelivered is False
    await sub.close()


async def test_foreign_records_are_consumed(
    transport: KafkaTransport, name: Name, kafka_url: str
) -> None:
    topic = name("foreign")
    sub = await subscribe(transport, topic_spec(topic))
    producer = AIOKafkaProducer(bootstrap_servers=transport.settings.address)
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            topic, b"{}", key=b"\xffk", headers=[("x-bin", b"\xfe\xff"), ("plain", b"v")]
        )
    finally:
        await producer.stop()
    (delivery,) = await take(sub, 1)
    message = delivery.message
    assert message.id == f"{topic}/{meta.partition}/{meta.offset}"
    assert message.topic == topic
    assert message.body == b"{}"
    assert message.headers == {"x-bin": "\xfe\xff", "plain": "v"}
    assert message.timestamp == datetime.fromtimestamp(meta.timestamp / 1000, UTC)
    await delivery.ack()
    await sub.close()


async def test_a_record_time_no_datetime_can_hold_is_delivered_with_the_time_read(
    transport: KafkaTransport, name: Name
) -> None:
    """Kafka refuses far-future timestamps by default, but a topic whose
    ``message.timestamp.after.max.ms`` was raised takes any: such a record used to fail
    decoding in the adapter. It is delivered, its time being when it was read."""
    topic = name("far-future")
    admin = AIOKafkaAdminClient(bootstrap_servers=transport.settings.address)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=1,
                    replication_factor=1,
                    topic_configs={"message.timestamp.after.max.ms": str(2**63 - 1)},
                )
            ]
        )
    finally:
        await admin.close()
    sub = await subscribe(transport, topic_spec(topic))
    producer = AIOKafkaProducer(bootstrap_servers=transport.settings.address)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"{}", timestamp_ms=2**62)
    finally:
        await producer.stop()
    assert meta.timestamp == 2**62, "the broker kept the far-future time"
    before = datetime.now(UTC)
    (delivery,) = await take(sub, 1)
    assert delivery.defect is None
    assert delivery.message.body == b"{}"
    assert before <= delivery.message.timestamp <= datetime.now(UTC)
    await delivery.ack()
    await sub.close()


async def test_batch_reports_failures_per_index(transport: KafkaTransport, name: Name) -> None:
    topic = name("batch")
    sub = await subscribe(transport, topic_spec(topic))
    too_big = b"x" * (transport.capabilities.max_message_size + 1)
    batch = messages(topic, 5)
    batch[3] = Message(id="m3", topic=topic, body=too_big)
    with pytest.raises(PublishError) as caught:
        await transport.publish(Destination(topic), batch)
    assert isinstance(caught.value, MessageTooLargeError)
    assert set(caught.value.failures) == {3}
    assert isinstance(caught.value.failures[3], MessageTooLargeError)
    got = await take(sub, 4)
    assert sorted(d.message.id for d in got) == ["m0", "m1", "m2", "m4"]
    assert await nothing_more(sub, 1.0) == []
    await sub.close()


async def test_many_messages_in_one_publish_keep_per_key_order(
    transport: KafkaTransport, name: Name
) -> None:
    topic = name("bulk")
    sub = await subscribe(transport, topic_spec(topic, prefetch=2000))
    await transport.publish(Destination(topic), messages(topic, 2000, key=lambda i: f"k{i % 7}"))
    got = await take(sub, 2000)
    by_key: dict[str | None, list[int]] = {}
    for d in got:
        by_key.setdefault(d.message.key, []).append(int(d.message.body))
    assert sorted(i for ids in by_key.values() for i in ids) == list(range(2000))
    assert all(ids == sorted(ids) for ids in by_key.values())
    await sub.close()


# -- groups, queues, broadcast -------------------------------------------------------------


async def test_every_group_gets_every_message(transport: KafkaTransport, name: Name) -> None:
    topic = name("fanout")
    a = await subscribe(transport, topic_spec(topic, group_of(topic, "a")))
    b = await subscribe(transport, topic_spec(topic, group_of(topic, "b")))
    await transport.publish(Destination(topic), messages(topic, 10))
    for sub in (a, b):
        got = await take(sub, 10)
        assert sorted(d.message.id for d in got) == sorted(f"m{i}" for i in range(10))
        await sub.close()


async def test_competing_consumers_split_without_overlap(
    transport: KafkaTransport, open_transport: Callable[..., KafkaTransport], name: Name
) -> None:
    topic = name("compete")
    other = open_transport()
    await other.connect()
    try:
        first = await subscribe(transport, topic_spec(topic))
        second = await subscribe(other, topic_spec(topic))  # live: has its partitions now
        await transport.publish(Destination(topic), messages(topic, 60, key=lambda i: f"k{i}"))
        seen: dict[int, list[str]] = {0: [], 1: []}

        async def drain(index: int, sub: object) -> None:
            async for d in sub:  # type: ignore[attr-defined]
                seen[index].append(d.message.id)
                await d.ack()

        tasks = [asyncio.create_task(drain(i, s)) for i, s in enumerate((first, second))]
        await wait_until(lambda: len(seen[0]) + len(seen[1]) >= 60)
        await asyncio.sleep(1.0)  # anything extra (a duplicate) would show up now
        for sub in (first, second):
            await sub.stop()
        await asyncio.gather(*tasks)
        assert sorted(seen[0] + seen[1]) == sorted(f"m{i}" for i in range(60))
        assert seen[0] and seen[1]
        await first.close()
        await second.close()
    finally:
        await other.close()


async def test_queue_messages_wait_for_their_first_consumer(
    transport: KafkaTransport, name: Name
) -> None:
    queue = name("queue")
    await transport.publish(Destination(queue, "queue"), messages(queue, 5))
    sub = await subscribe(transport, queue_spec(queue))
    got = await take(sub, 5)
    assert sorted(d.message.id for d in got) == [f"m{i}" for i in range(5)]
    assert all(d.message.topic == queue for d in got)
    for d in got:
        await d.ack()
    await sub.close()
    groups = await committed(transport, f"eventbus.queue.{queue}")
    assert sum(o for (t, _), o in groups.items() if t == queue) == 5


async def test_broadcast_is_live_from_the_end_and_commits_nothing(
    transport: KafkaTransport, name: Name
) -> None:
    topic = name("broadcast")
    await transport.publish(Destination(topic), [Message(id="before", topic=topic, body=b"")])
    one = await subscribe(transport, topic_spec(topic, None))
    two = await subscribe(transport, topic_spec(topic, None))
    await transport.publish(Destination(topic), [Message(id="after", topic=topic, body=b"")])
    for sub in (one, two):
        (d,) = await take(sub, 1)
        assert d.message.id == "after"
        await d.ack()
        assert await nothing_more(sub, 1.0) == []
        await sub.close()


# -- the commit rule -----------------------------------------------------------------------


async def test_slow_message_holds_the_commit_and_comes_back_after_a_restart(
    transport: KafkaTransport, open_transport: Callable[..., KafkaTransport], name: Name
) -> None:
    """(a) A slow message at offset k while later offsets finish; the consumer goes away
    without acking it; a new consumer of the group gets k again, and only the unfinished."""
    topic, k = name("slow"), 3
    sub = await subscribe(transport, topic_spec(topic))
    await transport.publish(Destination(topic), messages(topic, 10, key=lambda i: "one-key"))
    got = await take(sub, 10)
    assert [int(d.native["offset"]) for d in got] == list(range(10))
    for d in reversed(got):  # finish out of order, all but k
        if int(d.native["offset"]) != k:
            await d.ack()
    await sub.close()  # k never settled: closing must not commit past it
    tp = (topic, partition_of("one-key"))
    assert (await committed(transport, group_of(topic)))[tp] == k

    later = open_transport()
    await later.connect()
    try:
        again = await subscribe(later, topic_spec(topic))
        (redelivered,) = await take(again, 1)
        assert redelivered.message.id == f"m{k}"
        assert int(redelivered.native["offset"]) == k
        assert await nothing_more(again, 2.0) == []  # the finished ones are not redelivered
        await redelivered.ack()
        await again.close()
        assert (await committed(later, group_of(topic)))[tp] == 10
    finally:
        await later.close()


async def test_release_hands_the_message_out_again(transport: KafkaTransport, name: Name) -> None:
    topic = name("release")
    sub = await subscribe(transport, topic_spec(topic))
    await transport.publish(Destination(topic), messages(topic, 1))
    (first,) = await take(sub, 1)
    await first.release()
    (second,) = await take(sub, 1)
    assert second.message.id == first.message.id
    assert second.redelivered is True
    await second.release()  # released while stopping: stays unfinished until the next owner
    await sub.stop()
    await sub.close()
    sub = await subscribe(transport, topic_spec(topic))
    (third,) = await take(sub, 1)
    assert third.message.id == first.message.id
    await third.ack()
    await sub.close()


async def test_settling_after_stop_is_committed_at_close(
    transport: KafkaTransport, name: Name
) -> None:
    topic = name("stop")
    sub = await subscribe(transport, topic_spec(topic))
    await transport.publish(Destination(topic), messages(topic, 3, key=lambda i: "k"))
    got = await take(sub, 3)
    await sub.stop()
    assert [d async for d in sub] == []  # iteration ends after stop
    for d in got:
        await d.ack()
    await sub.close()
    assert (await committed(transport, group_of(topic)))[(topic, partition_of("k"))] == 3
    again = await subscribe(transport, topic_spec(topic))
    assert await nothing_more(again, 2.0) == []
    await again.close()


async def test_prefetch_bounds_unsettled_deliveries(transport: KafkaTransport, name: Name) -> None:
    topic = name("prefetch")
    sub = await subscribe(transport, topic_spec(topic, prefetch=5))
    await transport.publish(Destination(topic), messages(topic, 50))
    got = await take(sub, 5)
    assert await nothing_more(sub, 2.5) == []  # five unsettled: nothing more is handed out
    await got[0].ack()
    assert len(await take(sub, 1)) == 1
    assert sub.sub._handed_out.count == 5  # type: ignore[attr-defined]
    assert await nothing_more(sub, 1.0) == []
    await sub.close()


# -- retries through the broker ------------------------------------------------------------


async def test_delayed_retry_waits_while_other_partitions_flow(
    transport: KafkaTransport, name: Name
) -> None:
    """The late one goes through the delay tiers and the forwarder a started bus runs."""
    topic = name("delay")
    slow_key, fast_key = keys_on_distinct_partitions(2)
    sub = await subscribe(transport, topic_spec(topic))
    forwarder = asyncio.create_task(transport.forward_scheduled())
    start = time.time()
    due = {"late": start + 8.0, "soon": start + 0.2}
    await transport.publish(
        Destination(topic, group=group_of(topic), not_before=due["late"]),
        [Message(id="late", topic=topic, body=b"", key=slow_key)],
    )
    await transport.publish(
        Destination(topic, group=group_of(topic), not_before=due["soon"]),
        [Message(id="soon", topic=topic, body=b"", key=fast_key)],
    )
    await transport.publish(Destination(topic), [Message(id="now", topic=topic, body=b"")])
    got: list[RawDelivery] = []
    at: dict[str, float] = {}
    for _ in range(3):
        (d,) = await take(sub, 1)
        got.append(d)
        at[d.message.id] = time.time()
    assert [d.message.id for d in got][2] == "late"
    assert {d.message.id for d in got[:2]} == {"soon", "now"}
    for d in got:
        assert d.message.topic == topic
        assert d.message.headers == {}, "routing headers never reach the core"
        if d.message.id in due:
            assert at[d.message.id] >= due[d.message.id]  # never handed out before it is due
    assert at["late"] - start < 8.0 + 5.0, "the partition is resumed once the record is due"
    forwarder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await forwarder
    await sub.close()


async def test_group_targeted_message_reaches_only_that_group(
    transport: KafkaTransport, name: Name
) -> None:
    topic = name("target")
    billing = await subscribe(transport, topic_spec(topic, group_of(topic, "billing")))
    shipping = await subscribe(transport, topic_spec(topic, group_of(topic, "shipping")))
    await transport.publish(
        Destination(topic, group=group_of(topic, "billing")),
        [Message(id="replay", topic=topic, body=b"", headers={"tenant": "t1"})],
    )
    await transport.publish(Destination(topic), [Message(id="all", topic=topic, body=b"")])
    got = {d.message.id: d for d in await take(billing, 2)}
    assert sorted(got) == ["all", "replay"]
    assert got["replay"].message.headers == {"tenant": "t1"}  # no routing header left
    assert [d.message.id for d in await take(shipping, 1)] == ["all"]
    assert await nothing_more(shipping, 1.5) == []
    # A handler that republishes what it got to everyone: every group gets it.
    await transport.publish(Destination(topic), [got["replay"].message])
    assert [d.message.id for d in await take(shipping, 1)] == ["replay"]
    assert [d.message.id for d in await take(billing, 1)] == ["replay"]
    await billing.close()
    await shipping.close()


async def test_record_for_another_group_is_finished_without_being_handed_out(
    transport: KafkaTransport, name: Name
) -> None:
    """Records a 0.1 worker wrote with its routing headers among the message's: the header
    names are the same on the wire, and a group they do not name skips (and commits) them."""
    topic = name("legacy")
    mine, other = group_of(topic, "mine"), group_of(topic, "other")
    await transport._admin.ensure_topics([topic])
    producer = AIOKafkaProducer(bootstrap_servers=transport.settings.address)
    await producer.start()
    try:
        for i, headers in enumerate(
            [[(TARGET_GROUP, other.encode())], [], [(TARGET_GROUP, mine.encode())]]
        ):
            await producer.send_and_wait(
                topic, b"", key=b"k", headers=[("ce_id", f"r{i}".encode()), *headers]
            )
    finally:
        await producer.stop()
    sub = await subscribe(transport, topic_spec(topic, mine))
    got = await take(sub, 2)
    assert [d.message.id for d in got] == ["r1", "r2"]
    assert all(d.message.headers == {} for d in got)
    assert await nothing_more(sub, 1.0) == []
    for d in got:
        await d.ack()
    await sub.close()
    assert (await committed(transport, mine))[(topic, partition_of("k"))] == 3
    theirs = await subscribe(transport, topic_spec(topic, other))
    assert [d.message.id for d in await take(theirs, 2)] == ["r0", "r1"]
    await theirs.close()


async def test_queue_delay_goes_through_the_queue_retry_topic(
    transport: KafkaTransport, name: Name
) -> None:
    queue = name("qdelay")
    sub = await subscribe(transport, queue_spec(queue))
    due = time.time() + 0.5
    await transport.publish(
        Destination(queue, "queue", not_before=due), [Message(id="q", topic=queue, body=b"")]
    )
    (d,) = await take(sub, 1)
    assert time.time() >= due
    assert d.message.id == "q"
    assert d.message.topic == queue
    assert NOT_BEFORE not in d.message.headers
    await d.ack()
    await sub.close()
    found = await transport._admin.group_offsets(f"eventbus.queue.{queue}")
    assert sum(o for (t, _), (o, _) in found.items() if t == f"{queue}.retry") == 1


# -- inspection and errors -----------------------------------------------------------------


async def test_depth_counts_what_the_queue_group_has_not_committed(
    transport: KafkaTransport, name: Name
) -> None:
    queue = name("depth")
    assert await transport.depth(queue, "queue") is None
    await transport.publish(Destination(queue, "queue"), messages(queue, 5, key=lambda i: "k"))
    assert await transport.depth(queue, "queue") == 5
    sub = await subscribe(transport, queue_spec(queue))
    got = await take(sub, 5)
    for d in got[:2]:
        await d.ack()
    await sub.close()
    assert await transport.depth(queue, "queue") == 3
    assert await transport.depth(queue, "topic") is None


async def test_unreachable_broker_is_named(name: Name) -> None:
    transport = KafkaTransport("kafka://127.0.0.1:1?connect_timeout=1")
    with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1:1"):
        await transport.connect()
    await transport.close()


async def test_topic_that_cannot_be_created_is_a_clear_error(kafka_url: str, name: Name) -> None:
    transport = KafkaTransport(kafka_url + "?replication_factor=3")
    await transport.connect()
    try:
        topic = name("rf3")
        with pytest.raises(ConfigurationError, match=rf"{topic}.*replication factor 3"):
            await transport.publish(Destination(topic), messages(topic, 1))
        with pytest.raises(ConfigurationError, match="invalid Kafka topic name"):
            await transport.publish(Destination("bad name!"), messages("x", 1))
        with pytest.raises(ConfigurationError, match="invalid Kafka group name"):
            await subscribe(transport, topic_spec(name("t"), "bad group"))
    finally:
        await transport.close()


async def test_topics_are_created_with_the_configured_partitions(
    kafka_url: str, name: Name
) -> None:
    transport = KafkaTransport(kafka_url + "?partitions=3")
    await transport.connect()
    try:
        topic = name("parts")
        sub = await subscribe(transport, topic_spec(topic))
        assert await transport._admin.topic_partitions(topic) == [0, 1, 2]
        retry = f"{topic}.{group_of(topic)}.retry"
        assert await transport._admin.topic_partitions(retry) == [0, 1, 2]
        await sub.close()
    finally:
        await transport.close()


async def test_dlq_commands_work_on_a_kafka_queue(transport: KafkaTransport, name: Name) -> None:
    dlq = f"{name('orders')}.billing.dlq"
    letters = messages(dlq, 3, key=lambda i: f"k{i}")
    await transport.publish(Destination(dlq, "queue"), letters)
    assert await dlq_depths(transport, [dlq]) == {dlq: 3}
    shown = await dlq_show(transport, dlq, idle=2.0)
    assert sorted(m.id for m in shown) == ["m0", "m1", "m2"]
    assert await transport.depth(dlq, "queue") == 3  # showing leaves them in the queue
    assert await dlq_purge(transport, dlq, idle=2.0) == 3
    assert await transport.depth(dlq, "queue") == 0


async def test_dlq_show_lists_more_letters_than_one_prefetch(
    transport: KafkaTransport, name: Name
) -> None:
    """Showing settles nothing, so every letter asked for must be handed out at once: it once
    stopped at the 500 of its prefetch."""
    dlq = f"{name('many')}.dlq"
    await transport.publish(Destination(dlq, "queue"), messages(dlq, 620))
    shown = await dlq_show(transport, dlq, limit=700, idle=2.0)
    assert len({m.id for m in shown}) == 620


async def test_offset_reset_latest_starts_at_the_end_and_then_keeps_its_place(
    kafka_url: str, name: Name
) -> None:
    transport = KafkaTransport(kafka_url + "?offset_reset=latest")
    await transport.connect()
    try:
        topic = name("latest")
        await transport.publish(Destination(topic), [Message(id="old", topic=topic, body=b"")])
        sub = await subscribe(transport, topic_spec(topic))
        await transport.publish(Destination(topic), [Message(id="new", topic=topic, body=b"")])
        (d,) = await take(sub, 1)
        assert d.message.id == "new"
        await d.ack()
        await sub.close()
        # The group's start was committed when it joined: published while it was away is kept.
        await transport.publish(Destination(topic), messages(topic, 6, key=lambda i: f"k{i}"))
        sub = await subscribe(transport, topic_spec(topic))
        got = await take(sub, 6)
        assert sorted(d.message.id for d in got) == [f"m{i}" for i in range(6)]
        assert await nothing_more(sub, 1.0) == []
        await sub.close()
    finally:
        await transport.close()
