"""The batch publish path on a real broker: a large `publish_many` builds one record batch per
partition itself (aiokafka's ``create_batch``/``send_batch``) instead of ``send`` per record.
It must keep what ``send`` gave: the partition aiokafka's default partitioner picks, per-key
order, every message exactly once, and failures reported per message index."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]
from eventbus_kafka import KafkaTransport
from eventbus_kafka.producer import _MIN_BATCH
from kafka_helpers import Live, group_of, subscribe, take

from eventbus import EventBus
from eventbus.errors import MessageTooLargeError, PublishError
from eventbus.message import Message, new_message_id
from eventbus.transports.base import Destination, RawDelivery, SubscriptionSpec

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

Name = Callable[[str], str]
PARTITIONS = 6  # the transport's default partition count


def spec(topic: str, prefetch: int = 5000) -> SubscriptionSpec:
    return SubscriptionSpec(topic, "topic", group_of(topic), prefetch)


async def take_acked(sub: Live, count: int) -> list[RawDelivery]:
    got = await take(sub, count)
    for d in got:
        await d.ack()
    return got


def java_partition(key: str) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


async def test_keyed_batch_lands_like_aiokafka_send_once_each_in_key_order(
    kafka_url: str, transport: KafkaTransport, name: Name
) -> None:
    topic, raw_topic = name("keyed"), name("keyed-raw")
    keys = [f"order-{i}" for i in range(40)] + ["ключ", "日本", ""]
    count = 1200
    assert count > _MIN_BATCH
    sub = await subscribe(transport, spec(topic))
    raw_sub = await subscribe(transport, spec(raw_topic))
    bus = EventBus(kafka_url)
    async with bus:
        ids = await bus.publish_many(
            topic,
            [str(i).encode() for i in range(count)],
            keys=[keys[i % len(keys)] for i in range(count)],
        )
    # The same keys through aiokafka's own send(): where its default partitioner puts them.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_url.removeprefix("kafka://"))
    await producer.start()
    try:
        for key in keys:
            await producer.send_and_wait(raw_topic, b"x", key=key.encode())
    finally:
        await producer.stop()
    aiokafka_partition = {
        d.message.key: int(d.native["partition"]) for d in await take_acked(raw_sub, len(keys))
    }

    got = await take_acked(sub, count)
    assert sorted(d.message.id for d in got) == sorted(ids), "each message exactly once"
    assert len(set(ids)) == count
    by_key: dict[str | None, list[int]] = {}
    for d in got:
        key = d.message.key
        assert int(d.native["partition"]) == aiokafka_partition[key] == java_partition(key or "")
        by_key.setdefault(key, []).append(int(d.message.body))
    assert all(bodies == sorted(bodies) for bodies in by_key.values()), "per-key order"
    assert len(by_key) == len(keys)
    await sub.close()
    await raw_sub.close()


async def test_batches_bigger_than_one_record_batch_keep_order(
    kafka_url: str, transport: KafkaTransport, name: Name
) -> None:
    """2 MB for one key: several 256 KiB record batches on one partition, submitted in order."""
    topic = name("big")
    count = 400
    sub = await subscribe(transport, spec(topic))
    async with EventBus(kafka_url) as bus:
        await bus.publish_many(
            topic, [b"%06d" % i + b"." * 5000 for i in range(count)], keys=["one"] * count
        )
    got = await take_acked(sub, count)
    assert [int(d.message.body[:6]) for d in got] == list(range(count))
    assert {int(d.native["partition"]) for d in got} == {java_partition("one")}
    offsets = [int(d.native["offset"]) for d in got]
    assert offsets == sorted(offsets) and len(set(offsets)) == count
    await sub.close()


async def test_keyless_batch_spreads_over_partitions(
    kafka_url: str, transport: KafkaTransport, name: Name
) -> None:
    """No key: a random available partition per message, as aiokafka's partitioner does (not
    one partition for the whole batch)."""
    topic = name("keyless")
    count = 600
    sub = await subscribe(transport, spec(topic))
    async with EventBus(kafka_url) as bus:
        ids = await bus.publish_many(topic, [b"%d" % i for i in range(count)])
    got = await take_acked(sub, count)
    assert sorted(d.message.id for d in got) == sorted(ids)
    per_partition: dict[int, int] = {}
    for d in got:
        per_partition[int(d.native["partition"])] = (
            per_partition.get(int(d.native["partition"]), 0) + 1
        )
    assert len(per_partition) == PARTITIONS  # P(a partition gets none of 600) ~ 6e-48
    await sub.close()


async def test_oversize_body_in_a_batch_fails_alone(
    kafka_url: str, transport: KafkaTransport, name: Name
) -> None:
    topic = name("oversize")
    count, bad = 40, 17
    sub = await subscribe(transport, spec(topic))
    payloads = [b"%d" % i for i in range(count)]
    payloads[bad] = b"x" * 2000
    async with EventBus(f"{kafka_url}?max_message_size=1000") as bus:
        with pytest.raises(PublishError) as caught:
            await bus.publish_many(topic, payloads, keys=[f"k{i % 3}" for i in range(count)])
    assert isinstance(caught.value, MessageTooLargeError)
    assert set(caught.value.failures) == {bad}
    assert isinstance(caught.value.failures[bad], MessageTooLargeError)
    got = await take_acked(sub, count - 1)
    assert sorted(int(d.message.body) for d in got) == [i for i in range(count) if i != bad]
    await sub.close()


async def test_oversize_record_by_headers_fails_alone_among_others(
    open_transport: Callable[..., KafkaTransport], name: Name
) -> None:
    """One record too large only because of its headers (the record limit aiokafka's send()
    checks: key, body and headers against max_request_size), amid fine ones. It is smaller
    than a record batch, so unchecked it would share a batch with others and the broker would
    refuse them all."""
    small = open_transport("max_message_size=1000")  # topics it creates take 1000 + 64 KiB
    await small.connect()
    topic = name("oversize-header")
    count, bad = 30, 11
    sub = await subscribe(small, spec(topic))
    batch = [
        Message(
            id=new_message_id(),
            topic=topic,
            body=b"%d" % i,
            key="same",
            headers={"huge": "h" * (70 * 1024)} if i == bad else {},
        )
        for i in range(count)
    ]
    try:
        with pytest.raises(MessageTooLargeError) as caught:
            await small.publish(Destination(topic), batch)
        assert set(caught.value.failures) == {bad}
        got = await take_acked(sub, count - 1)
        assert [int(d.message.body) for d in got] == [i for i in range(count) if i != bad]
    finally:
        await small.close()


async def test_concurrent_batches_all_land_in_key_order(
    kafka_url: str, transport: KafkaTransport, name: Name
) -> None:
    topic = name("concurrent")
    calls, per_call = 8, 250
    sub = await subscribe(transport, spec(topic))
    async with EventBus(kafka_url) as bus:
        results = await asyncio.gather(
            *(
                bus.publish_many(
                    topic,
                    [b"%d:%d" % (c, i) for i in range(per_call)],
                    keys=[f"c{c}-k{i % 5}" for i in range(per_call)],
                )
                for c in range(calls)
            )
        )
    ids = [i for r in results for i in r]
    got = await take_acked(sub, calls * per_call)
    assert sorted(d.message.id for d in got) == sorted(ids)
    by_key: dict[str | None, list[int]] = {}
    for d in got:
        by_key.setdefault(d.message.key, []).append(int(d.message.body.split(b":")[1]))
    assert len(by_key) == calls * 5
    assert all(bodies == sorted(bodies) for bodies in by_key.values())
    await sub.close()


async def test_ids_are_unique_valid_uuids(kafka_url: str, name: Name) -> None:
    topic = name("ids")
    async with EventBus(kafka_url) as bus:
        ids = await bus.publish_many(topic, [b"x"] * 500)
        ids += [await bus.publish(topic, b"y") for _ in range(3)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 for i in ids)


async def test_batches_refused_out_of_sequence_are_resent_on_a_new_producer(
    transport: KafkaTransport, name: Name
) -> None:
    """The idempotent producer out of step with the broker (aiokafka issue #1017): provoked
    for real by skipping the sequence numbers aiokafka keeps; the broker refuses the batches
    with OutOfOrderSequenceNumber, the producer is replaced and every record sent again."""
    topic = name("out-of-sequence")
    sub = await subscribe(transport, spec(topic))
    await transport.publish(Destination(topic), [Message(id="first", topic=topic, body=b"-1")])
    producer = transport._producer
    generation = producer._generation
    sequences = producer._producer._txn_manager._sequence_numbers
    assert sequences, "the first publish set a sequence number"
    for tp in list(sequences):
        sequences[tp] += 1000  # the broker expects the next one: this is out of order
    count = 300
    batch = [
        Message(id=f"m{i}", topic=topic, body=b"%d" % i, key=f"k{i % 9}") for i in range(count)
    ]
    await transport.publish(Destination(topic), batch)  # no PublishError: all resent
    assert producer._generation == generation + 1
    got = await take_acked(sub, count + 1)
    assert sorted(d.message.id for d in got) == sorted(["first"] + [m.id for m in batch])
    by_key: dict[str | None, list[int]] = {}
    for d in got:
        if d.message.id != "first":
            by_key.setdefault(d.message.key, []).append(int(d.message.body))
    assert all(bodies == sorted(bodies) for bodies in by_key.values())
    await sub.close()
